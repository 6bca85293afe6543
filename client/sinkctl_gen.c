/*
 * sinkctl run and chat: generate on a session, streaming text as it comes.
 *
 * Ctrl-C cancels the reply in progress. A handle belongs to one thread and
 * the main thread is inside generate, so the SIGINT handler only writes a
 * byte to a pipe; a watcher thread with its own connection reads it and
 * sends session.cancel. The generate then ends with reason "cancelled". A
 * second Ctrl-C before the first took effect kills sinkctl as usual.
 */
#include "sinkctl.h"
#include "sinkctl_resume.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GEN_STOP_MAX 16
#define GEN_EXIT_INTERRUPTED 130   /* the shell's code for SIGINT */

/* ---- Ctrl-C ---------------------------------------------------------------- */

typedef struct canceller {
    int pipe[2];
    pthread_t thread;
    bool running;
    sinkd_client *c;                 /* the watcher's own connection */
    atomic_int wait_ms;              /* the cancel's wait for its reply */
    atomic_bool active;              /* a reply is being produced */
    _Atomic uint64_t session;
    atomic_uint handled;             /* Ctrl-C's the watcher is done with */
} canceller;

static volatile sig_atomic_t gen_interrupted;
static atomic_uint gen_sigs;         /* Ctrl-C's caught (lock-free: the handler's) */
static int gen_sigfd = -1;

static void gen_on_sigint(int sig)
{
    if (gen_interrupted) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    gen_interrupted = 1;
    atomic_fetch_add(&gen_sigs, 1);
    int saved = errno;
    if (gen_sigfd >= 0 && write(gen_sigfd, "c", 1) < 0) {
        /* Nothing to do in a handler: the flag is still set. */
    }
    errno = saved;
}

static void *canceller_main(void *arg)
{
    canceller *k = arg;
    char ch;
    for (;;) {
        ssize_t n = read(k->pipe[0], &ch, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || ch == 'q')
            return NULL;
        if (atomic_load(&k->active)) {
            int rc = sinkd_client_session_cancel(k->c, atomic_load(&k->session),
                                                 atomic_load(&k->wait_ms));
            if (rc != 0)
                fprintf(stderr, "sinkctl: cancel: %s%s%s\n", sinkd_client_strerror(rc),
                        rc > 0 ? ": " : "", rc > 0 ? sinkd_client_errmsg(k->c) : "");
        }
        atomic_fetch_add(&k->handled, 1);
    }
}

/* Wait until the watcher is done with every Ctrl-C caught so far: a cancel
 * it sends after the next prompt went out would stop that prompt. */
static void canceller_settle(canceller *k)
{
    while (k->running && atomic_load(&k->handled) != atomic_load(&gen_sigs))
        usleep(1000);
}

/* Connect the watcher and install the SIGINT handler (no SA_RESTART: a
 * Ctrl-C at chat's prompt interrupts the read). Returns an exit code. */
static int canceller_start(canceller *k, const sinkctl_ctx *ctx)
{
    *k = (canceller){ .pipe = { -1, -1 }, .wait_ms = ctx->timeout_ms };
    int code = sinkctl_connect(ctx, &k->c);
    if (code != SINKCTL_EXIT_OK)
        return code;
    /* The watcher blocks SIGINT, so a Ctrl-C at chat's prompt reaches the
     * main thread and interrupts its read. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int err = pipe2(k->pipe, O_CLOEXEC) != 0 ? errno
              : pthread_create(&k->thread, NULL, canceller_main, k);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err != 0) {
        fprintf(stderr, "sinkctl: %s: cannot start the Ctrl-C watcher: %s\n",
                ctx->cmd->name, strerror(err));
        return SINKCTL_EXIT_TRANSPORT;
    }
    k->running = true;
    gen_sigfd = k->pipe[1];
    struct sigaction sa = { .sa_handler = gen_on_sigint };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    return SINKCTL_EXIT_OK;
}

static void canceller_stop(canceller *k)
{
    signal(SIGINT, SIG_DFL);
    gen_sigfd = -1;
    if (k->running) {
        if (write(k->pipe[1], "q", 1) == 1)
            pthread_join(k->thread, NULL);
        else
            pthread_detach(k->thread);
    }
    for (int i = 0; i < 2; i++)
        if (k->pipe[i] >= 0)
            close(k->pipe[i]);
    sinkd_client_close(k->c);
    *k = (canceller){ .pipe = { -1, -1 } };
}

/* ---- options shared by run and chat ------------------------------------------ */

typedef struct gen_opts {
    sinkd_client_session_opts open;
    sinkd_client_gen_params gen;
    const char *stop[GEN_STOP_MAX];
    bool verbose;
    char *params;                    /* owned: joined key=value operands */
    sinkctl_resume resume;           /* chat's --persist, --attach, --secret-file */
} gen_opts;

enum {
    OPT_MODEL = 0x200, OPT_POLICY, OPT_BUDGET, OPT_TEMP, OPT_TOP_K, OPT_TOP_P, OPT_MIN_P,
    OPT_REPEAT_PENALTY, OPT_SEED, OPT_STOP, OPT_IGNORE_EOS,
};

#define GEN_LONGOPTS \
    { "model", required_argument, NULL, OPT_MODEL }, \
    { "policy", required_argument, NULL, OPT_POLICY }, \
    { "budget", required_argument, NULL, OPT_BUDGET }, \
    { "temp", required_argument, NULL, OPT_TEMP }, \
    { "top-k", required_argument, NULL, OPT_TOP_K }, \
    { "top-p", required_argument, NULL, OPT_TOP_P }, \
    { "min-p", required_argument, NULL, OPT_MIN_P }, \
    { "repeat-penalty", required_argument, NULL, OPT_REPEAT_PENALTY }, \
    { "seed", required_argument, NULL, OPT_SEED }, \
    { "stop", required_argument, NULL, OPT_STOP }, \
    { "ignore-eos", no_argument, NULL, OPT_IGNORE_EOS }

static const struct option run_longopts[] = { GEN_LONGOPTS, { NULL, 0, NULL, 0 } };
/* Only chat resumes a session: run's session ends with it. */
static const struct option chat_longopts[] = {
    GEN_LONGOPTS, SINKCTL_RESUME_LONGOPTS, { NULL, 0, NULL, 0 },
};

#define GEN_OPTIONS_HELP \
    "  --model M            model to use (default: the daemon's first)\n" \
    "  --policy P           KV policy of the session (default: full); the\n" \
    "                       key=value operands are its parameters\n" \
    "  --budget N           max tokens kept per KV lane (default: none)\n" \
    "  -n N                 max tokens to generate per reply (default 128)\n" \
    "  --temp T             sampling temperature; 0 is greedy (default 0)\n" \
    "  --top-k K            keep the K most likely tokens (0: off)\n" \
    "  --top-p P            nucleus sampling threshold (1: off)\n" \
    "  --min-p P            drop tokens under P times the top one (0: off)\n" \
    "  --repeat-penalty R   penalise recent tokens (1: off)\n" \
    "  --seed S             sampler seed (default 0)\n" \
    "  --stop STR           end the reply at STR (repeatable, up to 16)\n" \
    "  --ignore-eos         do not stop at the model's end of sequence\n" \
    "  -v                   print the statistics line after every reply\n"

/* Apply one option of gen_longopts or -n/-v. Returns SINKCTL_EXIT_OK or a
 * usage error's exit code. */
static int gen_apply(const sinkctl_ctx *ctx, gen_opts *o, int opt, const char *arg)
{
    uint64_t u;
    double d;
    switch (opt) {
    case OPT_MODEL:
        o->open.model = arg;
        return SINKCTL_EXIT_OK;
    case OPT_POLICY:
        o->open.policy = arg;
        return SINKCTL_EXIT_OK;
    case OPT_BUDGET:
        if (sinkctl_parse_u64(arg, UINT64_MAX, &o->open.budget) != 0)
            return sinkctl_usage_error(ctx, "--budget needs a token count");
        return SINKCTL_EXIT_OK;
    case 'n':
        if (sinkctl_parse_u64(arg, 1u << 20, &u) != 0 || u == 0)
            return sinkctl_usage_error(ctx, "-n needs a token count from 1 to 1048576");
        o->gen.max_tokens = (uint32_t)u;
        return SINKCTL_EXIT_OK;
    case OPT_TEMP:
        if (sinkctl_parse_double(arg, 0, 1e6, &o->gen.temperature) != 0)
            return sinkctl_usage_error(ctx, "--temp needs a number >= 0");
        return SINKCTL_EXIT_OK;
    case OPT_TOP_K:
        if (sinkctl_parse_u64(arg, INT32_MAX, &u) != 0)
            return sinkctl_usage_error(ctx, "--top-k needs a count");
        o->gen.top_k = (uint32_t)u;
        return SINKCTL_EXIT_OK;
    case OPT_TOP_P:
        if (sinkctl_parse_double(arg, 0, 1, &o->gen.top_p) != 0)
            return sinkctl_usage_error(ctx, "--top-p needs a number from 0 to 1");
        return SINKCTL_EXIT_OK;
    case OPT_MIN_P:
        if (sinkctl_parse_double(arg, 0, 1, &o->gen.min_p) != 0)
            return sinkctl_usage_error(ctx, "--min-p needs a number from 0 to 1");
        return SINKCTL_EXIT_OK;
    case OPT_REPEAT_PENALTY:
        if (sinkctl_parse_double(arg, 0, 1e6, &d) != 0 || d == 0)
            return sinkctl_usage_error(ctx, "--repeat-penalty needs a number > 0");
        o->gen.repeat_penalty = d;
        return SINKCTL_EXIT_OK;
    case OPT_SEED:
        if (sinkctl_parse_u64(arg, UINT64_MAX, &o->gen.seed) != 0)
            return sinkctl_usage_error(ctx, "--seed needs an unsigned integer");
        return SINKCTL_EXIT_OK;
    case OPT_STOP:
        if (arg[0] == '\0' || o->gen.n_stop == GEN_STOP_MAX)
            return sinkctl_usage_error(ctx, "--stop needs a non-empty string (at most 16)");
        o->stop[o->gen.n_stop++] = arg;
        return SINKCTL_EXIT_OK;
    case OPT_IGNORE_EOS:
        o->gen.ignore_eos = true;
        return SINKCTL_EXIT_OK;
    case 'v':
        o->verbose = true;
        return SINKCTL_EXIT_OK;
    default:   /* getopt knows only these and chat's */
        return sinkctl_resume_option(ctx, &o->resume, opt, arg);
    }
}

/* Parse the options of @longopts; the operands from optind to @argc -
 * @n_tail are the policy's key=value parameters. Returns true to go on (the
 * caller then frees o->params), false to exit with *@code (help printed, or
 * an error). */
static bool gen_parse(sinkctl_ctx *ctx, int argc, char **argv, const struct option *longopts,
                      int n_tail, gen_opts *o, int *code)
{
    *o = (gen_opts){ .open = SINKD_CLIENT_SESSION_OPTS_INIT,
                     .gen = SINKD_CLIENT_GEN_PARAMS_INIT };
    o->gen.stop = o->stop;
    int opt;
    while ((opt = sinkctl_getopt(ctx, argc, argv, "n:v", longopts, code)) != -1) {
        if (opt == SINKCTL_OPT_EXIT)
            return false;
        *code = gen_apply(ctx, o, opt, optarg);
        if (*code != SINKCTL_EXIT_OK)
            return false;
    }
    int n_params = argc - optind - n_tail;
    if (n_params < 0) {
        *code = sinkctl_usage_error(ctx, "missing PROMPT");
        return false;
    }
    if (n_params > 0 && o->open.policy == NULL) {
        *code = sinkctl_usage_error(ctx, "policy parameters need --policy");
        return false;
    }
    *code = sinkctl_resume_check(ctx, &o->resume, &o->open);
    if (*code != SINKCTL_EXIT_OK)
        return false;
    int rc = sinkctl_join_params(argv + optind, n_params, &o->params);
    if (rc == -EINVAL)
        *code = sinkctl_usage_error(ctx, n_tail > 0
                                    ? "expected key=value policy parameters, then one PROMPT"
                                    : "expected key=value policy parameters");
    else if (rc != 0)
        *code = sinkctl_fail(ctx, NULL, rc, NULL);
    o->open.params = o->params;
    return rc == 0;
}

/* ---- one reply ------------------------------------------------------------------ */

typedef struct gen_out {
    const sinkctl_ctx *ctx;
    bool last_newline;               /* the reply so far ends with '\n' */
    bool appended;                   /* the prompt is in the conversation */
} gen_out;

static int gen_on_token(void *arg, int32_t token, const char *text, size_t len)
{
    gen_out *out = arg;
    /* Ctrl-C between the prefill and the daemon starting the generation:
     * the watcher's cancel found nothing to stop, so stop it from here */
    if (gen_interrupted)
        return 1;
    if (out->ctx->json) {
        if (token == SINKD_CLIENT_TOKEN_TAIL)
            fputs("{\"ev\":\"text\",\"text\":", stdout);
        else
            printf("{\"ev\":\"token\",\"token\":%d,\"text\":", (int)token);
        sinkctl_json_str(stdout, text, len);
        fputs("}\n", stdout);
    } else if (len > 0) {
        fwrite(text, 1, len, stdout);
        out->last_newline = text[len - 1] == '\n';
    }
    fflush(stdout);
    return 0;
}

static void gen_print_result(const sinkctl_ctx *ctx, uint64_t session,
                             const sinkd_client_append_result *ap,
                             const sinkd_client_gen_result *res, bool stats)
{
    if (ctx->json) {
        printf("{\"session\":%llu,\"reason\":", (unsigned long long)session);
        sinkctl_json_str(stdout, res->reason_name, strlen(res->reason_name));
        printf(",\"n_tokens\":%llu,\"prompt_tokens\":%llu,\"text\":",
               (unsigned long long)res->n_tokens, (unsigned long long)ap->n_tokens);
        sinkctl_json_str(stdout, res->text, res->text_len);
        printf(",\"timings\":{\"prefill_ms\":%.3f,\"decode_ms\":%.3f,\"tokens_per_s\":%.3f}",
               ap->prefill_ms, res->decode_ms, res->tokens_per_s);
        if (res->fallback[0] != '\0') {
            fputs(",\"fallback\":", stdout);
            sinkctl_json_str(stdout, res->fallback, strlen(res->fallback));
        }
        fputs("}\n", stdout);
        fflush(stdout);
        return;
    }
    if (res->fallback[0] != '\0' || ap->fallback[0] != '\0')
        fprintf(stderr, "sinkctl: the session's policy fell back to window: %s\n",
                res->fallback[0] != '\0' ? res->fallback : ap->fallback);
    if (stats)
        fprintf(stderr, "[%llu tokens, %.1f tokens/s, prompt %llu tokens in %.1f ms, %s]\n",
                (unsigned long long)res->n_tokens, res->tokens_per_s,
                (unsigned long long)ap->n_tokens, ap->prefill_ms, res->reason_name);
}

/* Append @len bytes of @text to @session (@bos as the library takes it) and
 * generate a reply, streaming it to stdout; @out (in its init state) tells
 * how the printed text ended. Returns an exit code. */
static int gen_reply(const sinkctl_ctx *ctx, sinkd_client *c, canceller *k, uint64_t session,
                     const gen_opts *o, const char *text, size_t len, int bos, bool stats,
                     gen_out *out)
{
    sinkd_client_append_result ap;
    canceller_settle(k);
    atomic_store(&k->session, session);
    /* No timeout: a big prompt's prefill takes what it takes. Ctrl-C's
     * session.cancel stops it between two layers, undone: no reply. The
     * daemon answers the cancel once the layer in progress ends (on a GPU,
     * the chunk), so its wait is unbounded too: that can outlast --timeout
     * (a big model on a CPU, a loaded machine). */
    atomic_store(&k->wait_ms, -1);
    atomic_store(&k->active, true);
    int rc = sinkd_client_session_append_text(c, session, text, len, bos, -1, &ap);
    if (rc != 0) {
        atomic_store(&k->active, false);
        if (rc == SINKD_ERR_CANCELLED && gen_interrupted)
            return GEN_EXIT_INTERRUPTED;
        return sinkctl_fail(ctx, c, rc, NULL);
    }
    out->appended = true;
    atomic_store(&k->wait_ms, ctx->timeout_ms);
    sinkd_client_gen_result res = SINKD_CLIENT_GEN_RESULT_INIT;
    if (gen_interrupted)
        rc = 0;   /* Ctrl-C during the prefill: no reply */
    else
        rc = sinkd_client_session_generate(c, session, &o->gen, gen_on_token, out,
                                           ctx->timeout_ms, &res);
    atomic_store(&k->active, false);
    if (rc != 0)
        return sinkctl_fail(ctx, c, rc, NULL);
    if (res.text != NULL)
        gen_print_result(ctx, session, &ap, &res, stats);
    sinkd_client_gen_result_free(&res);
    return gen_interrupted ? GEN_EXIT_INTERRUPTED : SINKCTL_EXIT_OK;
}

/* Connect, start the Ctrl-C watcher and open (or attach) the session;
 * *@n_past gets the tokens already in its conversation. Returns an exit
 * code; on success the caller owns *@c and @k. */
static int gen_begin(const sinkctl_ctx *ctx, const gen_opts *o, sinkd_client **c,
                     canceller *k, sinkd_client_session_info *info, uint64_t *n_past)
{
    int code = sinkctl_connect(ctx, c);
    if (code != SINKCTL_EXIT_OK)
        return code;
    code = canceller_start(k, ctx);
    if (code == SINKCTL_EXIT_OK)
        code = sinkctl_resume_open(ctx, *c, &o->resume, &o->open, info, n_past);
    if (code != SINKCTL_EXIT_OK) {
        canceller_stop(k);
        sinkd_client_close(*c);
        *c = NULL;
    }
    return code;
}

/* All of stdin into a new string. */
static int read_all(FILE *f, char **out, size_t *len)
{
    char *buf = NULL;
    size_t size = 0;
    FILE *mem = open_memstream(&buf, &size);
    if (mem == NULL)
        return -errno;
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        fwrite(chunk, 1, n, mem);
    int err = ferror(f) ? -EIO : 0;
    if (fclose(mem) != 0 && err == 0)
        err = -ENOMEM;
    if (err != 0) {
        free(buf);
        return err;
    }
    *out = buf;
    *len = size;
    return 0;
}

/* ---- run ------------------------------------------------------------------------ */

static int run_run(sinkctl_ctx *ctx, int argc, char **argv)
{
    gen_opts o;
    int code = SINKCTL_EXIT_OK;
    if (!gen_parse(ctx, argc, argv, run_longopts, 1, &o, &code))
        return code;
    const char *prompt = argv[argc - 1];
    char *input = NULL;
    size_t len = strlen(prompt);
    if (strcmp(prompt, "-") == 0) {
        int rc = read_all(stdin, &input, &len);
        if (rc != 0) {
            free(o.params);
            return sinkctl_fail(ctx, NULL, rc, NULL);
        }
        prompt = input;
    }

    sinkd_client *c = NULL;
    canceller k;
    sinkd_client_session_info info;
    uint64_t n_past;
    code = gen_begin(ctx, &o, &c, &k, &info, &n_past);
    if (code == SINKCTL_EXIT_OK) {
        gen_out out = { .ctx = ctx, .last_newline = true };
        code = gen_reply(ctx, c, &k, info.session, &o, prompt, len,
                         SINKD_CLIENT_BOS_DEFAULT, true, &out);
        if (!ctx->json && !out.last_newline && isatty(STDOUT_FILENO))
            putchar('\n');
        canceller_stop(&k);
        sinkd_client_close(c);   /* the session closes with the connection */
    }
    free(input);
    free(o.params);
    return code;
}

const sinkctl_cmd sinkctl_cmd_run = {
    .name = "run",
    .summary = "Generate a continuation of PROMPT, streaming it to stdout",
    .usage = "[OPTIONS] [key=value ...] PROMPT",
    .help = "Opens a session, feeds it PROMPT ('-' reads it from stdin) and prints\n"
            "the generated text as it arrives (a newline is added only on a\n"
            "terminal). A statistics line goes to stderr at the end.\n"
            "\n"
            "Options:\n"
            GEN_OPTIONS_HELP
            "\n"
            "--timeout bounds each wait for the next token; the prompt's prefill\n"
            "waits as long as it takes, and so does a Ctrl-C's cancel of it (the\n"
            "daemon stops a prompt between two layers). Ctrl-C cancels the\n"
            "generation (exit 130).\n"
            "With --json, prints one JSON object per token ({ev, token, text}),\n"
            "then the result {session, reason, n_tokens, prompt_tokens, text,\n"
            "timings}.\n"
            "\n"
            "Example: sinkctl run --policy window window=256 -n 64 \"Once upon a time\"\n",
    .run = run_run,
};

/* ---- chat ----------------------------------------------------------------------- */

static int run_chat(sinkctl_ctx *ctx, int argc, char **argv)
{
    gen_opts o;
    int code = SINKCTL_EXIT_OK;
    if (!gen_parse(ctx, argc, argv, chat_longopts, 0, &o, &code))
        return code;
    sinkd_client *c = NULL;
    canceller k;
    sinkd_client_session_info info;
    uint64_t n_past;
    code = gen_begin(ctx, &o, &c, &k, &info, &n_past);
    if (code != SINKCTL_EXIT_OK) {
        explicit_bzero(&info, sizeof(info));   /* a failed --persist had a secret */
        free(o.params);
        return code;
    }
    bool tty = isatty(STDIN_FILENO);
    if (tty)
        fprintf(stderr, "session %llu (%s, policy %s). Ctrl-C stops a reply, Ctrl-D ends.\n",
                (unsigned long long)info.session, info.model, info.policy);
    char *line = NULL;
    size_t cap = 0;
    /* a resumed conversation goes on: its start had the BOS it needed */
    int bos = n_past > 0 ? 0 : SINKD_CLIENT_BOS_DEFAULT;
    for (;;) {
        if (tty) {
            fputs("> ", stderr);
            fflush(stderr);
        }
        errno = 0;
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) {
            if (gen_interrupted)
                code = GEN_EXIT_INTERRUPTED;
            if (tty)
                fputc('\n', stderr);
            break;
        }
        /* The line continues the text; its newline only ends the input. */
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            n--;
        gen_out out = { .ctx = ctx, .last_newline = true };
        code = gen_reply(ctx, c, &k, info.session, &o, line, (size_t)n, bos, o.verbose, &out);
        if (out.appended) /* a prompt cancelled in its prefill was undone */
            bos = 0;
        if (code == GEN_EXIT_INTERRUPTED) {
            /* A cancelled reply ends the turn, not the chat. */
            gen_interrupted = 0;
            code = SINKCTL_EXIT_OK;
        }
        if (!ctx->json)
            putchar('\n');
        fflush(stdout);
        if (code != SINKCTL_EXIT_OK)
            break;
    }
    free(line);
    canceller_stop(&k);
    sinkd_client_close(c);
    /* info.secret resumes a persistent session: no copy outlives the chat */
    explicit_bzero(&info, sizeof(info));
    free(o.params);
    return code;
}

const sinkctl_cmd sinkctl_cmd_chat = {
    .name = "chat",
    .summary = "Talk to a model: one session, one reply per line of input",
    .usage = "[OPTIONS] [--persist [--secret-file PATH]] [key=value ...]\n"
             "       sinkctl [GLOBAL OPTIONS] chat [OPTIONS] --attach ID [--secret-file PATH]",
    .help = "Opens one session and reads stdin line by line. Each line (without\n"
            "its newline) is appended to the session's text and the model's\n"
            "continuation streams to stdout, followed by one newline; the next\n"
            "line continues after that reply. The conversation's KV cache stays\n"
            "in the daemon between turns. Works with stdin from a pipe too.\n"
            "Ctrl-C cancels the reply in progress; Ctrl-D (end of input) ends the\n"
            "chat, as does Ctrl-C at the prompt (exit 130).\n"
            "\n"
            "Options:\n"
            GEN_OPTIONS_HELP
            SINKCTL_RESUME_HELP
            "\n"
            "A session opened with --persist stays in the daemon when the chat\n"
            "ends and is saved when sinkd stops; `chat --attach ID` takes it back\n"
            "(stderr then says how many tokens it holds: n_past) and the next\n"
            "line continues the conversation. `sinkctl session close ID` ends it.\n"
            "Exit 2 also when the secret is missing or on the command line, when\n"
            "--persist has no --secret-file and stderr is not a terminal, and when\n"
            "--secret-file cannot be used: for --persist a path that exists (a\n"
            "file or a link: never overwritten) or leads nowhere; for --attach\n"
            "anything but a regular file of yours that others cannot read. Exit 1\n"
            "when sinkd keeps no state directory (it refuses a --persist session,\n"
            "which could not survive a restart). Exit 3 also for an I/O error\n"
            "reading or writing the secret file once it is open.\n"
            "\n"
            "With --json, prints token events and one result object per reply,\n"
            "as `sinkctl run --json` does.\n"
            "\n"
            "Example: sinkctl chat --persist --secret-file ~/.chat.secret\n"
            "         sinkctl chat --attach 7 --secret-file ~/.chat.secret\n",
    .run = run_chat,
};
