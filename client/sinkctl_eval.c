/*
 * sinkctl eval: perplexity of a policy on a text (`eval ppl`) and its
 * fidelity to a reference (`eval fidelity`), streamed one decode step at a
 * time through the daemon. The work is in sinkctl_eval_run.c; this file
 * holds the command line, the progress bar and the printed table.
 */
#include "sinkctl.h"
#include "sinkctl_eval.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Prefill of a recompute step can take a while on the CPU: every request of
 * a stream waits at least this long, whatever --timeout says. */
#define EVAL_TIMEOUT_MIN_MS 60000
/* Bytes of text read per requested token: more than any tokenizer needs. */
#define EVAL_BYTES_PER_TOKEN 16

enum {
    OPT_MODEL = 0x200, OPT_POLICY, OPT_TEXT, OPT_TOKENS, OPT_JSON_OUT, OPT_REF,
    OPT_REF_CTX, OPT_REF_LOGITS, OPT_WINDOW, OPT_SAMPLE_EVERY,
};

static const struct option eval_opts[] = {
    { "model", required_argument, NULL, OPT_MODEL },
    { "policy", required_argument, NULL, OPT_POLICY },
    { "text", required_argument, NULL, OPT_TEXT },
    { "tokens", required_argument, NULL, OPT_TOKENS },
    { "json-out", required_argument, NULL, OPT_JSON_OUT },
    { "ref", required_argument, NULL, OPT_REF },
    { "ref-ctx", required_argument, NULL, OPT_REF_CTX },
    { "ref-logits", required_argument, NULL, OPT_REF_LOGITS },
    { "window", required_argument, NULL, OPT_WINDOW },
    { "sample-every", required_argument, NULL, OPT_SAMPLE_EVERY },
    { NULL, 0, NULL, 0 },
};

typedef struct eval_args {
    bool fidelity;
    const char *model, *policy, *text, *json_out, *ref, *ref_logits;
    uint32_t tokens, ref_ctx, window, sample_every;
    char params[256];
} eval_args;

static int eval__uint(const sinkctl_ctx *ctx, const char *opt, const char *s, uint32_t *v)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || x == 0 || x > INT32_MAX) {
        char msg[96];
        snprintf(msg, sizeof(msg), "--%s needs a positive integer", opt);
        return sinkctl_usage_error(ctx, msg);
    }
    *v = (uint32_t)x;
    return SINKCTL_EXIT_OK;
}

/* Options, then the mode operand and the policy's k=v operands. */
static int eval__parse(sinkctl_ctx *ctx, int argc, char **argv, eval_args *a)
{
    int code = SINKCTL_EXIT_OK, opt;
    while (code == SINKCTL_EXIT_OK &&
           (opt = sinkctl_getopt(ctx, argc, argv, "", eval_opts, &code)) != -1) {
        switch (opt) {
        case SINKCTL_OPT_EXIT: return code;
        case OPT_MODEL: a->model = optarg; break;
        case OPT_POLICY: a->policy = optarg; break;
        case OPT_TEXT: a->text = optarg; break;
        case OPT_JSON_OUT: a->json_out = optarg; break;
        case OPT_REF: a->ref = optarg; break;
        case OPT_REF_LOGITS: a->ref_logits = optarg; break;
        case OPT_TOKENS: code = eval__uint(ctx, "tokens", optarg, &a->tokens); break;
        case OPT_REF_CTX: code = eval__uint(ctx, "ref-ctx", optarg, &a->ref_ctx); break;
        case OPT_WINDOW: code = eval__uint(ctx, "window", optarg, &a->window); break;
        case OPT_SAMPLE_EVERY:
            code = eval__uint(ctx, "sample-every", optarg, &a->sample_every);
            break;
        default: code = sinkctl_usage_error(ctx, "unexpected option"); break;
        }
    }
    if (code != SINKCTL_EXIT_OK)
        return code;
    if (optind >= argc)
        return sinkctl_usage_error(ctx, "missing mode: ppl or fidelity");
    if (strcmp(argv[optind], "fidelity") == 0)
        a->fidelity = true;
    else if (strcmp(argv[optind], "ppl") != 0)
        return sinkctl_usage_error(ctx, "the mode is ppl or fidelity");
    for (int i = optind + 1; i < argc; i++) {
        size_t used = strlen(a->params);
        if (strchr(argv[i], '=') == NULL || argv[i][0] == '=')
            return sinkctl_usage_error(ctx, "policy parameters are key=value");
        if ((size_t)snprintf(a->params + used, sizeof(a->params) - used, "%s%s",
                             used > 0 ? " " : "", argv[i]) >= sizeof(a->params) - used)
            return sinkctl_usage_error(ctx, "policy parameters too long");
    }
    if (a->policy == NULL || a->text == NULL)
        return sinkctl_usage_error(ctx, "--policy and --text are required");
    if (!a->fidelity && (a->ref != NULL || a->ref_ctx > 0 || a->ref_logits != NULL))
        return sinkctl_usage_error(ctx, "--ref, --ref-ctx and --ref-logits belong to fidelity");
    if (a->fidelity && a->ref == NULL)
        a->ref = "recompute";
    if (a->ref != NULL && strcmp(a->ref, "full") != 0 && strcmp(a->ref, "recompute") != 0)
        return sinkctl_usage_error(ctx, "--ref is full or recompute");
    if (a->ref_ctx > 0 && strcmp(a->ref, "recompute") != 0)
        return sinkctl_usage_error(ctx, "--ref-ctx belongs to --ref recompute");
    return SINKCTL_EXIT_OK;
}

/* Read at most @max bytes of @path (cut at the last newline when cut at
 * all, so that no character is split). Prints why on failure. */
static char *eval__read(const char *path, size_t max, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "sinkctl: eval: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(max + 1);
    size_t n = buf != NULL ? fread(buf, 1, max + 1, f) : 0;
    bool bad = buf == NULL || ferror(f);
    fclose(f);
    if (bad) {
        fprintf(stderr, "sinkctl: eval: %s: %s\n", path, buf == NULL ? "out of memory" : "read error");
        free(buf);
        return NULL;
    }
    if (n > max) {
        char *nl = memrchr(buf, '\n', max);
        n = nl != NULL ? (size_t)(nl - buf) + 1 : max;
    }
    *len = n;
    return buf;
}

/* Progress on stderr, only when it is a terminal: one line redrawn. */
typedef struct eval_bar {
    double t0, last;
} eval_bar;

static double eval__clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void eval__progress(void *arg, const sinkctl_eval_report *r, uint64_t done, uint64_t total)
{
    eval_bar *b = arg;
    double now = eval__clock();
    if (done < total && now - b->last < 0.2)
        return;
    b->last = now;
    enum { WIDTH = 30 };
    int fill = (int)(WIDTH * done / total);
    fprintf(stderr, "\r[%.*s%*s] %3d%% %llu/%llu  %.0f tok/s  ppl %.3f\033[K",
            fill, "##############################", WIDTH - fill, "",
            (int)(100 * done / total), (unsigned long long)done, (unsigned long long)total,
            now > b->t0 ? (double)done / (now - b->t0) : 0.0, sinkctl_eval_ppl(&r->total));
    if (done == total)
        fputc('\n', stderr);
}

static void eval__print(const sinkctl_eval_report *r)
{
    const sinkctl_eval_sums *t = &r->total;
    printf("model %s, policy %s%s%s%s, %llu tokens (%llu scored)\n", r->model, r->policy,
           r->params[0] ? " (" : "", r->params, r->params[0] ? ")" : "",
           (unsigned long long)r->tokens, (unsigned long long)t->n);
    printf("perplexity   %.4f (%.4f nats/token)\n", sinkctl_eval_ppl(t),
           t->n > 0 ? t->nll / (double)t->n : NAN);
    if (r->fidelity) {
        printf("reference    %s", r->ref);
        if (r->ref_ctx > 0)
            printf(" (last %llu tokens)", (unsigned long long)r->ref_ctx);
        printf(": perplexity %.4f, mean KL %.5f nats, top-1 agreement %.2f%%\n",
               sinkctl_eval_ref_ppl(t), sinkctl_eval_mean_kl(t), 100 * sinkctl_eval_top1(t));
    }
    printf("speed        %.1f tokens/s (append + logits of the policy session)\n",
           r->seconds > 0 ? (double)r->tokens / r->seconds : 0.0);
    printf("KV bytes     %llu at the end, %llu at most\n",
           (unsigned long long)(r->n_samples ? r->samples[r->n_samples - 1].kv_bytes : 0),
           (unsigned long long)r->kv_bytes_max);
    if (r->fallback[0])
        printf("fallback     %s\n", r->fallback);
    printf("\n%-15s %10s %12s", "positions", "ppl", "KV bytes");
    if (r->fidelity)
        printf(" %10s %10s %7s", "ref ppl", "KL", "top-1");
    putchar('\n');
    for (size_t i = 0; i < r->n_windows; i++) {
        const sinkctl_eval_window *w = &r->windows[i];
        char span[32];
        uint64_t end = (i + 1) * (uint64_t)r->window;
        snprintf(span, sizeof(span), "%llu-%llu", (unsigned long long)(i * (uint64_t)r->window),
                 (unsigned long long)(end < r->tokens ? end : r->tokens));
        printf("%-15s %10.4f %12llu", span, sinkctl_eval_ppl(&w->sums),
               (unsigned long long)w->kv_bytes);
        if (r->fidelity)
            printf(" %10.4f %10.5f %6.2f%%", sinkctl_eval_ref_ppl(&w->sums),
                   sinkctl_eval_mean_kl(&w->sums), 100 * sinkctl_eval_top1(&w->sums));
        putchar('\n');
    }
}

static int eval__write_json(const sinkctl_eval_report *r, const char *path)
{
    FILE *f = fopen(path, "w");
    int rc = f != NULL ? sinkctl_eval_report_write_json(r, f) : -errno;
    if (f != NULL && fclose(f) != 0 && rc == 0)
        rc = -EIO;
    if (rc != 0)
        fprintf(stderr, "sinkctl: eval: %s: %s\n", path, strerror(-rc));
    return rc;
}

/* Connect, tokenize, stream, report. */
static int eval__run(sinkctl_ctx *ctx, const eval_args *a, sinkctl_eval_report *r)
{
    sinkd_client *c = NULL;
    int code = sinkctl_connect(ctx, &c);
    if (code != SINKCTL_EXIT_OK)
        return code;
    int timeout = ctx->timeout_ms > EVAL_TIMEOUT_MIN_MS ? ctx->timeout_ms : EVAL_TIMEOUT_MIN_MS;
    sinkctl_eval_model m;
    int32_t *ids = NULL;
    size_t n = 0, len = 0;
    char *text = NULL, err[160] = "";

    int rc = sinkctl_eval_model_get(c, a->model, timeout, &m);
    if (rc == -ENOENT) {
        fprintf(stderr, "sinkctl: eval: the daemon has no model %s%s%s\n",
                a->model ? "'" : "", a->model ? a->model : "loaded", a->model ? "'" : "");
        code = SINKCTL_EXIT_REPLY;
        goto out;
    }
    if (rc != 0)
        goto fail;
    /* The text travels in one frame: read what fits, and no more than the
     * requested tokens need. */
    size_t frame = sinkd_client_info_get(c)->max_frame;
    size_t max = frame > 8192 ? frame - 4096 : frame / 2; /* room for the request's other fields */
    if (a->tokens > 0 && (size_t)a->tokens * EVAL_BYTES_PER_TOKEN < max)
        max = (size_t)a->tokens * EVAL_BYTES_PER_TOKEN;
    if ((text = eval__read(a->text, max, &len)) == NULL) {
        code = SINKCTL_EXIT_USAGE;
        goto out;
    }
    if ((rc = sinkctl_eval_tokenize(c, m.name, text, len, a->tokens, timeout, &ids, &n)) != 0)
        goto fail;
    if (a->tokens > 0 && n < a->tokens)
        fprintf(stderr, "<4>sinkctl: eval: %s holds %zu tokens, fewer than --tokens %u\n",
                a->text, n, a->tokens);

    eval_bar bar = { eval__clock(), 0 };
    sinkctl_eval_opts o = {
        .model = &m, .policy = a->policy, .params = a->params, .ref = a->ref,
        .ref_ctx = a->ref_ctx, .ref_logits = a->ref_logits, .sample_every = a->sample_every, .timeout_ms = timeout,
        .progress = isatty(STDERR_FILENO) ? eval__progress : NULL, .progress_arg = &bar,
    };
    rc = sinkctl_eval_stream(c, &o, ids, n, r, err, sizeof(err));
    if (rc != 0 && err[0] != '\0') {
        fprintf(stderr, "sinkctl: eval: %s\n", err);
        code = rc == -EINVAL ? SINKCTL_EXIT_USAGE : SINKCTL_EXIT_REPLY;
        goto out;
    }
    if (rc != 0)
        goto fail;
    /* a local write that failed is an I/O error (3), not the daemon's (1) */
    if (ctx->json) {
        if (sinkctl_eval_report_write_json(r, stdout) != 0)
            code = SINKCTL_EXIT_TRANSPORT;
    } else {
        eval__print(r);
    }
    if (a->json_out != NULL && eval__write_json(r, a->json_out) != 0)
        code = SINKCTL_EXIT_TRANSPORT;
    goto out;
fail:
    code = sinkctl_fail(ctx, c, rc, NULL);
out:
    free(ids);
    free(text);
    sinkd_client_close(c);
    return code;
}

static int run_eval(sinkctl_ctx *ctx, int argc, char **argv)
{
    eval_args a = { 0 };
    int code = eval__parse(ctx, argc, argv, &a);
    if (code != SINKCTL_EXIT_OK)
        return code;
    sinkctl_eval_report r;
    sinkctl_eval_report_init(&r, a.window, a.fidelity);
    code = eval__run(ctx, &a, &r);
    sinkctl_eval_report_free(&r);
    return code;
}

const sinkctl_cmd sinkctl_cmd_eval = {
    .name = "eval",
    .summary = "Measure a KV policy's perplexity or fidelity on a text",
    .usage = "ppl|fidelity --policy P [KEY=VALUE ...] --text FILE [OPTIONS]",
    .help =
        "Streams the text's tokens through a session one decode step at a time\n"
        "(session.append of one token, then session.logits), as a long chat does.\n"
        "\n"
        "  ppl            perplexity overall and per window, KV bytes, tokens/s\n"
        "  fidelity       the same stream through a reference session in lock step:\n"
        "                 mean KL(reference || policy), top-1 agreement, both\n"
        "                 perplexities\n"
        "  --policy P     the policy under test; KEY=VALUE operands are its\n"
        "                 parameters (e.g. sinks=4 window=252 rope=cache)\n"
        "  --text FILE    the text to stream (tokenized by the daemon)\n"
        "  --model M      model name (default: the daemon's first model)\n"
        "  --tokens N     stream at most N tokens, BOS included (default: the\n"
        "                 whole text, as much as fits one frame)\n"
        "  --ref R        fidelity reference: recompute (default) or full\n"
        "                 recompute: for each position, attention over the last\n"
        "                 C tokens computed afresh with positions from 0\n"
        "                 full: a `full` session in lock step\n"
        "  --ref-ctx C    recompute context (default: the model's context length)\n"
        "  --ref-logits FILE  reference logits file: read when it exists and was\n"
        "                 made for this stream, else computed and written there\n"
        "                 (n_vocab f32 per position: size it before using it on\n"
        "                 a large vocabulary)\n"
        "  --window N     positions per reported window (default 1024)\n"
        "  --sample-every N  session.stats every N tokens (default 64)\n"
        "  --json-out FILE   write the report as JSON to FILE\n"
        "\n"
        "--json prints the report as JSON on stdout instead of the table. A progress\n"
        "bar is drawn on stderr when it is a terminal. Each request waits at least\n"
        "60 s, whatever --timeout says.\n",
    .run = run_eval,
};
