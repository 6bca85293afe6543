/*
 * Persistent sessions through the clients, against the real daemon serving
 * the tiny reference model and restarted (SIGTERM, which saves persistent
 * sessions) over one state directory: libsinkd's attach, save, restore and
 * forget; sinkctl's `chat --persist` and `chat --attach` as a user runs them
 * across a restart, and `session save|forget`; what sinkctl refuses (a
 * secret in argv or in a file others may read, --persist with the secret
 * bound for a non-terminal stderr, a daemon without a state directory)
 * and what it leaves after a failure. Expected token counts come
 * from the golden file and the model's documented byte vocabulary, never
 * from the call under test. The Python client's calls are in
 * test_python_client.c.
 */
#include "client_check.h"

#include <ctype.h>
#include <limits.h>
#include <sys/resource.h>

#define T CHECK_TIMEOUT_MS
#define SECRET_LEN 32 /* hex digits: PROTOCOL.md's 128 random bits */

#define ASSERT_OK(c, rc, what) \
    cr_assert_eq((rc), 0, "%s: %s %s", (what), sinkd_client_strerror(rc), sinkd_client_errmsg(c))

static check_golden golden[CHECK_GOLDEN_CASES];

/* The test's directory: state/ is the daemons' state_dir, beside it the
 * files sinkctl writes. */
static char dir[64];
static char state[96];

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/sinkd-client-persist-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(state, sizeof(state), "%s/state", dir);
    check_daemon_start_state(state);
}

static void teardown(void)
{
    check_daemon_stop();
    cr_expect_eq(sinkd_testd_rmtree(dir), 0, "%s left behind", dir);
}

TestSuite(client_persist, .init = setup, .fini = teardown, .timeout = 180);

/* SIGTERM, which saves the test's one persistent session (the log says
 * so), then a new daemon over the same state directory. */
static void restart(void)
{
    cr_assert_eq(sinkd_testd_stop(&check_daemon), 0, "sinkd did not exit cleanly");
    char *log = sinkd_testd_log(&check_daemon);
    cr_assert_not_null(log);
    cr_assert_not_null(strstr(log, "1 session(s) saved"), "%s", log);
    free(log);
    sinkd_testd_free(&check_daemon);
    check_daemon_start_state(state);
}

static bool is_secret(const char *s)
{
    size_t n = 0;
    while (isxdigit((unsigned char)s[n]))
        n++;
    return n == SECRET_LEN && s[n] == '\0';
}

/* Token ids as they stream. */
typedef struct streamed {
    int32_t *ids;
    size_t n, cap;
} streamed;

static int on_token(void *arg, int32_t token, const char *text, size_t len)
{
    (void)text, (void)len;
    streamed *t = arg;
    cr_assert_lt(t->n, t->cap);
    t->ids[t->n++] = token;
    return 0;
}

/* Greedy generation of @n tokens on @s; their ids into @ids[@n]. */
static void generate(sinkd_client *c, uint64_t s, uint32_t n, int32_t *ids)
{
    sinkd_client_gen_params p = SINKD_CLIENT_GEN_PARAMS_INIT;
    p.max_tokens = n;
    p.ignore_eos = true;
    streamed t = { ids, 0, n };
    ASSERT_OK(c, sinkd_client_session_generate(c, s, &p, on_token, &t, T, NULL), "generate");
    cr_assert_eq(t.n, n);
}

/* The greedy tokens [@from, @from + @n) of golden case 0 are @ids. */
static void expect_golden(const int32_t *ids, size_t from, size_t n, const char *when)
{
    cr_assert_leq(from + n, golden[0].n_greedy);
    for (size_t i = 0; i < n; i++)
        cr_expect_eq(ids[i], golden[0].greedy[from + i], "%s: token %zu", when, from + i);
}

Test(client_persist, libsinkd_attach_after_a_restart_save_restore_forget)
{
    enum { N = 8 };
    check_golden_load(golden);
    const size_t n_prompt = golden[0].n_prompt;
    int32_t ids[N];
    sinkd_client *c = check_connect();

    sinkd_client_session_opts opts = SINKD_CLIENT_SESSION_OPTS_INIT;
    opts.persist = true;
    sinkd_client_session_info info;
    ASSERT_OK(c, sinkd_client_session_open(c, &opts, T, &info), "session.open");
    cr_assert(is_secret(info.secret), "secret '%s'", info.secret);
    const uint64_t id = info.session;
    sinkd_client_append_result ap;
    ASSERT_OK(c, sinkd_client_session_append(c, id, golden[0].prompt_ids, n_prompt, 0, T, &ap),
              "append");
    cr_assert_eq(ap.n_past, n_prompt);
    generate(c, id, N, ids);
    expect_golden(ids, 0, N, "before the save");

    /* save: the file PROTOCOL.md names, there; a path that does not fit
     * is an error, never a cut path */
    char path[PATH_MAX], want[PATH_MAX], small[8] = "x";
    ASSERT_OK(c, sinkd_client_session_save(c, id, T, path, sizeof(path)), "save");
    snprintf(want, sizeof(want), "%s/snapshots/%llu.snap", state, (unsigned long long)id);
    cr_assert_str_eq(path, want);
    cr_assert_eq(access(path, F_OK), 0, "%s: %s", path, strerror(errno));
    cr_expect_eq(sinkd_client_session_save(c, id, T, small, sizeof(small)), -ENAMETOOLONG);
    cr_expect_str_eq(small, "");

    /* three tokens more, then restore rolls back to the save: by path and
     * by id, n_past is what it was then */
    generate(c, id, 3, ids);
    uint64_t n_past = 0;
    sinkd_client_session_info back;
    ASSERT_OK(c, sinkd_client_session_restore(c, 0, path, T, &back, &n_past), "restore path");
    cr_expect_eq(n_past, n_prompt + N);
    cr_expect_eq(back.session, id);
    cr_expect_str_eq(back.secret, info.secret);
    generate(c, id, 3, ids);
    ASSERT_OK(c, sinkd_client_session_restore(c, id, NULL, T, NULL, &n_past), "restore id");
    cr_expect_eq(n_past, n_prompt + N);
    cr_expect_eq(sinkd_client_session_restore(c, id, path, T, NULL, NULL), -EINVAL);
    cr_expect_eq(sinkd_client_session_restore(c, 0, NULL, T, NULL, NULL), -EINVAL);

    /* forget deletes the file, once; the live session stays */
    ASSERT_OK(c, sinkd_client_session_forget(c, id, T), "forget");
    cr_expect_neq(access(path, F_OK), 0, "%s is still there", path);
    cr_expect_eq(sinkd_client_session_forget(c, id, T), SINKD_ERR_NOT_FOUND);
    cr_expect_eq(sinkd_client_session_restore(c, id, NULL, T, NULL, NULL), SINKD_ERR_NOT_FOUND);
    sinkd_client_close(c);

    restart();

    c = check_connect();
    char wrong[sizeof(info.secret)];
    memcpy(wrong, info.secret, sizeof(wrong));
    wrong[0] = wrong[0] == '0' ? '1' : '0';
    cr_expect_eq(sinkd_client_session_attach(c, id, wrong, T, &back, &n_past),
                 SINKD_ERR_NOT_FOUND);
    cr_expect_eq(sinkd_client_session_attach(c, id, "", T, NULL, NULL), -EINVAL);
    cr_expect_eq(sinkd_client_session_attach(c, id, NULL, T, NULL, NULL), -EINVAL);
    n_past = 0;
    ASSERT_OK(c, sinkd_client_session_attach(c, id, info.secret, T, &back, &n_past), "attach");
    cr_expect_eq(n_past, n_prompt + N, "the prompt and the %d tokens before the save", N);
    cr_expect_eq(back.session, id);
    cr_expect_str_eq(back.secret, info.secret);
    cr_expect_str_eq(back.model, "tiny");
    cr_expect_eq(back.n_vocab, 260);
    /* the conversation goes on exactly where it stopped */
    generate(c, id, N, ids);
    expect_golden(ids, N, N, "after the restart");
    sinkd_client_close(c);
}

/* ---- sinkctl ------------------------------------------------------------------ */

/* CHECK_SINKCTL_RUN, after checking that no argument holds @secret (may be
 * NULL): every secret below travels by file or environment, never argv,
 * which every user can read in /proc. A guard of this file's own calls;
 * that sinkctl refuses a secret in argv is tested below. */
#define SINKCTL(secret, input, ...) \
    sinkctl_run((secret), (input), (const char *const[]){ __VA_ARGS__, NULL })

static check_run sinkctl_run(const char *secret, const char *input, const char *const *args)
{
    for (size_t i = 0; secret != NULL && args[i] != NULL; i++)
        cr_assert_null(strstr(args[i], secret), "the secret is in argument %zu", i);
    return check_sinkctl(input, args);
}

/* The number after @key in @s (which must hold it). */
static uint64_t number_after(const char *s, const char *key)
{
    const char *p = strstr(s, key);
    cr_assert_not_null(p, "no '%s' in: %s", key, s);
    unsigned long long v;
    cr_assert_eq(sscanf(p + strlen(key), "%llu", &v), 1, "%s", p);
    return v;
}

static size_t sessions_open(void)
{
    sinkd_client *c = check_connect();
    sinkd_client_session_entry *e;
    size_t n;
    ASSERT_OK(c, sinkd_client_session_list(c, T, &e, &n), "session.list");
    sinkd_client_free(e);
    sinkd_client_close(c);
    return n;
}

/* The id the daemon gives the next session, learnt by opening (and
 * closing) one. Ids count up from 1 and are never reused, so two calls
 * differ by exactly one across a command that opened no session, and by
 * more when it opened one, even one it closed again. */
static uint64_t probe_session_id(void)
{
    sinkd_client *c = check_connect();
    sinkd_client_session_info info;
    ASSERT_OK(c, sinkd_client_session_open(c, NULL, T, &info), "session.open");
    ASSERT_OK(c, sinkd_client_session_close(c, info.session, T), "session.close");
    sinkd_client_close(c);
    return info.session;
}

/* Run sinkctl with @args (as SINKCTL, no stdin), expect exit @status with
 * @says on stderr and nothing on stdout, and that no session opened
 * meanwhile. */
#define REFUSED(secret, status, says, ...) \
    refused((secret), (status), (says), (const char *const[]){ __VA_ARGS__, NULL })

static void refused(const char *secret, int status, const char *says, const char *const *args)
{
    const uint64_t before = probe_session_id();
    check_run r = sinkctl_run(secret, NULL, args);
    cr_expect_eq(r.status, status, "%s %s: exit %d: %s", args[0], args[1], r.status, r.err);
    cr_expect_not_null(strstr(r.err, says), "no '%s' in: %s", says, r.err);
    cr_expect_str_eq(r.out, "");
    check_run_free(&r);
    cr_expect_eq(probe_session_id(), before + 1, "%s %s opened a session", args[0], args[1]);
}

/* How many times the daemon's log says that session @id was attached. */
static size_t attaches_logged(uint64_t id)
{
    char line[64];
    snprintf(line, sizeof(line), "session %llu attached by", (unsigned long long)id);
    char *log = sinkd_testd_log(&check_daemon);
    cr_assert_not_null(log);
    size_t n = 0;
    for (const char *p = log; (p = strstr(p, line)) != NULL; p += strlen(line))
        n++;
    free(log);
    return n;
}

static char *slurp(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    char *s = check_slurp_fd(fd, NULL);
    close(fd);
    return s;
}

/* A new file @path of mode @mode holding @text. */
static void plant(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    cr_assert_eq(fchmod(fd, mode), 0);
    close(fd);
}

Test(client_persist, sinkctl_chat_persist_survives_a_restart_and_attach_continues)
{
    enum { N = 8 };
    check_golden_load(golden);
    /* a name that needs quoting in the hint, given relative to the
     * directory sinkctl runs in: the hint names it absolute */
    static const char name[] = "chat's.secret";
    char secret_file[128], input[256], n[8];
    snprintf(secret_file, sizeof(secret_file), "%s/%s", dir, name);
    snprintf(input, sizeof(input), "%s\n", golden[0].prompt);
    snprintf(n, sizeof(n), "%d", N);
    cr_assert_eq(chdir(dir), 0, "%s", strerror(errno));

    /* turn one, in a new persistent session whose secret goes to a file */
    check_run r = SINKCTL(NULL, input, "chat", "--persist", "--secret-file", name,
                          "-n", n, "--ignore-eos");
    cr_assert_eq(r.status, 0, "exit %d: %s", r.status, r.err);
    char reply1[N + 1];
    check_detok(golden[0].greedy, N, reply1, sizeof(reply1));
    char want[256];
    snprintf(want, sizeof(want), "%s\n", reply1);
    cr_expect_str_eq(r.out, want);
    const uint64_t id = number_after(r.err, "session ");
    cr_expect_not_null(strstr(r.err, " is persistent"), "%s", r.err);
    char real[PATH_MAX], hint[PATH_MAX + 64];
    cr_assert_not_null(realpath(dir, real));
    snprintf(hint, sizeof(hint), "chat --attach %llu --secret-file '%s/chat'\\''s.secret'\n",
             (unsigned long long)id, real);
    cr_expect_not_null(strstr(r.err, hint), "no \"%s\" in: %s", hint, r.err);
    check_run_free(&r);

    struct stat st;
    cr_assert_eq(stat(secret_file, &st), 0, "%s", strerror(errno));
    cr_expect(S_ISREG(st.st_mode) && (st.st_mode & 07777) == 0600, "mode %o", st.st_mode);
    char *line = slurp(secret_file);
    char secret[SECRET_LEN + 1];
    cr_assert_eq(strlen(line), SECRET_LEN + 1, "'%s'", line);
    cr_assert_eq(line[SECRET_LEN], '\n');
    memcpy(secret, line, SECRET_LEN);
    secret[SECRET_LEN] = '\0';
    cr_assert(is_secret(secret), "%s", secret);

    /* an existing --secret-file is refused, untouched, before any session
     * opens */
    cr_assert_eq(sessions_open(), 1);
    REFUSED(secret, 2, "exists", "chat", "--persist", "--secret-file", secret_file);
    char *again = slurp(secret_file);
    cr_expect_str_eq(again, line, "the secret file was overwritten");
    free(again);
    free(line);
    cr_expect_eq(sessions_open(), 1);

    restart();

    /* no secret, a wrong one: refused; the wrong one's message says that
     * the secret may be what is wrong, and still shows the daemon's code */
    cr_assert_eq(unsetenv("SINKD_SECRET"), 0);
    char id_arg[24];
    snprintf(id_arg, sizeof(id_arg), "%llu", (unsigned long long)id);
    r = SINKCTL(secret, "And then\n", "chat", "--attach", id_arg);
    cr_expect_eq(r.status, 2, "%s", r.err);
    cr_expect_not_null(strstr(r.err, "SINKD_SECRET"), "%s", r.err);
    check_run_free(&r);
    cr_assert_eq(setenv("SINKD_SECRET", "00000000000000000000000000000000", 1), 0);
    r = SINKCTL(secret, "And then\n", "chat", "--attach", id_arg);
    cr_expect_eq(r.status, 1, "%s", r.err);
    snprintf(want, sizeof(want), "not_found: no session %s (no such session of yours, or a "
             "wrong secret)\n", id_arg);
    cr_expect_not_null(strstr(r.err, want), "%s", r.err);
    check_run_free(&r);

    /* turn two after the restart, the secret in the environment: n_past is
     * the prompt and turn one's reply, and the reply is the one a fresh run
     * over the whole text gives, as if the chat had never stopped */
    cr_assert_eq(setenv("SINKD_SECRET", secret, 1), 0);
    r = SINKCTL(secret, "And then\n", "chat", "--attach", id_arg, "-n", n, "--ignore-eos");
    cr_assert_eq(r.status, 0, "exit %d: %s", r.status, r.err);
    cr_expect_eq(number_after(r.err, "attached: n_past "), golden[0].n_prompt + N, "%s", r.err);
    char whole[256];
    snprintf(whole, sizeof(whole), "%s%sAnd then", golden[0].prompt, reply1);
    check_run fresh = SINKCTL(secret, NULL, "run", "-n", n, "--ignore-eos", whole);
    cr_assert_eq(fresh.status, 0, "%s", fresh.err);
    cr_assert_eq(strlen(fresh.out), N, "'%s'", fresh.out);
    snprintf(want, sizeof(want), "%s\n", fresh.out);
    cr_expect_str_eq(r.out, want, "turn two");
    check_run_free(&fresh);
    check_run_free(&r);

    /* the secret from the file instead, no turn: n_past counts turn two
     * (one token a byte: the model's vocabulary) */
    cr_assert_eq(unsetenv("SINKD_SECRET"), 0);
    r = SINKCTL(secret, NULL, "chat", "--attach", id_arg, "--secret-file", secret_file);
    cr_assert_eq(r.status, 0, "exit %d: %s", r.status, r.err);
    cr_expect_eq(number_after(r.err, "attached: n_past "),
                 golden[0].n_prompt + N + strlen("And then") + N, "%s", r.err);
    check_run_free(&r);

    /* session save prints the snapshot's path; forget deletes it, once */
    r = SINKCTL(secret, NULL, "session", "save", id_arg);
    cr_assert_eq(r.status, 0, "%s", r.err);
    snprintf(want, sizeof(want), "%s/snapshots/%llu.snap\n", state, (unsigned long long)id);
    cr_expect_str_eq(r.out, want);
    want[strlen(want) - 1] = '\0';
    cr_expect_eq(access(want, F_OK), 0, "%s: %s", want, strerror(errno));
    check_run_free(&r);
    r = SINKCTL(secret, NULL, "session", "forget", id_arg);
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_str_eq(r.out, "");
    cr_expect_neq(access(want, F_OK), 0, "%s is still there", want);
    check_run_free(&r);
    r = SINKCTL(secret, NULL, "session", "forget", id_arg);
    cr_expect_eq(r.status, 1, "%s", r.err);
    cr_expect_not_null(strstr(r.err, "not_found"), "%s", r.err);
    check_run_free(&r);
}

/* Without --secret-file the secret would go to stderr, here a file (as
 * under nohup or a service manager): refused before any session opens. */
Test(client_persist, sinkctl_chat_persist_without_a_file_needs_a_terminal)
{
    REFUSED(NULL, 2, "name a --secret-file", "chat", "--persist");
    cr_expect_eq(sessions_open(), 0);
}

/* Run sinkctl with @args, its stderr a terminal (a pseudo-terminal's
 * slave side), stdin and stdout /dev/null. Returns what reached the
 * terminal (caller frees; the terminal writes "\r\n" for "\n") and the
 * exit status in *@status. */
static char *sinkctl_on_tty(const char *const *args, int *status)
{
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (m < 0)
        cr_skip_test("no pseudo-terminal: %s", strerror(errno));
    cr_assert(grantpt(m) == 0 && unlockpt(m) == 0, "%s", strerror(errno));
    int s = open(ptsname(m), O_RDWR | O_NOCTTY | O_CLOEXEC);
    cr_assert_geq(s, 0, "%s", strerror(errno));
    const char *argv[16] = { CHECK_SINKCTL, "--socket", check_daemon.socket_path };
    for (size_t i = 0; args[i] != NULL; i++) {
        cr_assert_lt(i + 4, sizeof(argv) / sizeof(argv[0]));
        argv[i + 3] = args[i];
    }
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        dup2(s, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int ws;
    cr_assert_eq(waitpid(pid, &ws, 0), pid);
    *status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
    /* Our slave fd is still open, so what the child wrote waits in the
     * terminal: read it without blocking, up to what is there. */
    cr_assert_eq(fcntl(m, F_SETFL, O_NONBLOCK), 0);
    char *out = calloc(1, 8192);
    cr_assert_not_null(out);
    size_t n = 0;
    ssize_t got;
    while (n + 1 < 8192 && (got = read(m, out + n, 8192 - 1 - n)) > 0)
        n += (size_t)got;
    close(s);
    close(m);
    return out;
}

/* On a terminal the secret is printed, once, with the advice to keep it
 * private, and it is the session's: it attaches. */
Test(client_persist, sinkctl_chat_persist_prints_the_secret_on_a_terminal)
{
    int status;
    char *tty = sinkctl_on_tty((const char *const[]){ "chat", "--persist", NULL }, &status);
    cr_assert_eq(status, 0, "exit %d: %s", status, tty);
    const uint64_t id = number_after(tty, "session ");
    const char *key = "(keep it private): ";
    const char *p = strstr(tty, key);
    cr_assert_not_null(p, "%s", tty);
    cr_expect_null(strstr(p + 1, key), "printed twice: %s", tty);
    char secret[SECRET_LEN + 1];
    p += strlen(key);
    cr_assert_eq(strcspn(p, "\r\n"), SECRET_LEN, "%s", tty);
    memcpy(secret, p, SECRET_LEN);
    secret[SECRET_LEN] = '\0';
    cr_assert(is_secret(secret), "%s", secret);
    free(tty);

    sinkd_client *c = check_connect();
    uint64_t n_past = 1;
    ASSERT_OK(c, sinkd_client_session_attach(c, id, secret, T, NULL, &n_past), "attach");
    cr_expect_eq(n_past, 0);
    sinkd_client_close(c);
}

/* --attach takes the secret from neither the command line nor a file
 * that is not the user's alone: refused though the secret is the right
 * one, and the daemon sees no attach. The same file made private then
 * attaches, which the daemon's log shows: the count can move. */
Test(client_persist, sinkctl_attach_takes_no_secret_from_argv_or_an_unsafe_file)
{
    sinkd_client *c = check_connect();
    sinkd_client_session_opts opts = SINKD_CLIENT_SESSION_OPTS_INIT;
    opts.persist = true;
    sinkd_client_session_info info;
    ASSERT_OK(c, sinkd_client_session_open(c, &opts, T, &info), "session.open");
    sinkd_client_close(c);
    const char *secret = info.secret;
    char id_arg[24], eq[96];
    snprintf(id_arg, sizeof(id_arg), "%llu", (unsigned long long)info.session);
    snprintf(eq, sizeof(eq), "--secret=%s", secret);
    cr_assert_eq(unsetenv("SINKD_SECRET"), 0);

    /* named --secret, not an abbreviation of --secret-file */
    REFUSED(NULL, 2, "never goes on the command line", "chat", "--attach", id_arg, "--secret",
            secret);
    REFUSED(NULL, 2, "never goes on the command line", "chat", "--attach", id_arg, eq);

    cr_assert(is_secret(secret), "%s", secret);
    char path[128], line[sizeof(info.secret) + 1];
    snprintf(path, sizeof(path), "%s/open.secret", dir);
    snprintf(line, sizeof(line), "%s\n", secret);
    plant(path, line, 0644);
    REFUSED(secret, 2, "mode 0644", "chat", "--attach", id_arg, "--secret-file", path);
    cr_assert_eq(chmod(path, 0640), 0);
    REFUSED(secret, 2, "mode 0640", "chat", "--attach", id_arg, "--secret-file", path);

    /* not regular files: a FIFO is refused at once, not waited on */
    char fifo[128];
    snprintf(fifo, sizeof(fifo), "%s/fifo.secret", dir);
    cr_assert_eq(mkfifo(fifo, 0600), 0, "%s", strerror(errno));
    REFUSED(secret, 2, "not a regular file", "chat", "--attach", id_arg, "--secret-file", fifo);
    REFUSED(secret, 2, "not a regular file", "chat", "--attach", id_arg, "--secret-file", dir);

    /* another user's file: only root can make one to test with */
    cr_assert_eq(chmod(path, 0600), 0);
    if (geteuid() == 0) {
        cr_assert_eq(chown(path, 65534, 65534), 0, "%s", strerror(errno));
        REFUSED(secret, 2, "owned by uid 65534", "chat", "--attach", id_arg, "--secret-file",
                path);
        cr_assert_eq(chown(path, 0, 0), 0, "%s", strerror(errno));
    }
    cr_expect_eq(attaches_logged(info.session), 0, "an attach went through");

    check_run r = SINKCTL(secret, NULL, "chat", "--attach", id_arg, "--secret-file", path);
    cr_expect_eq(r.status, 0, "exit %d: %s", r.status, r.err);
    cr_expect_eq(number_after(r.err, "attached: n_past "), 0, "%s", r.err);
    check_run_free(&r);
    cr_expect_eq(attaches_logged(info.session), 1);
}

/* --persist failures once the secret file exists (an error reply, an I/O
 * error writing it) take it away again and leave no session; a link where
 * the file goes is refused and its target never created. */
Test(client_persist, sinkctl_chat_persist_failures_leave_no_file_and_no_session)
{
    char file[128], link[128], target[128];
    snprintf(file, sizeof(file), "%s/new.secret", dir);
    check_run r = SINKCTL(NULL, NULL, "chat", "--persist", "--secret-file", file, "--policy",
                          "nosuch");
    cr_expect_eq(r.status, 1, "exit %d: %s", r.status, r.err);
    cr_expect_not_null(strstr(r.err, "nosuch"), "%s", r.err);
    check_run_free(&r);
    cr_expect_neq(access(file, F_OK), 0, "%s was left behind", file);
    cr_expect_eq(sessions_open(), 0);

    /* an I/O error writing the file once the session is open (a file size
     * limit of one byte: the write comes up short): exit 3, not 2, and
     * the file and the session go again. The limit cuts sinkctl's stderr
     * too, so only the exit status speaks. */
    struct rlimit was, one = { 1, 1 };
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &was), 0);
    one.rlim_max = was.rlim_max;
    signal(SIGXFSZ, SIG_IGN);   /* inherited: the write fails with EFBIG */
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &one), 0, "%s", strerror(errno));
    r = SINKCTL(NULL, NULL, "chat", "--persist", "--secret-file", file);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &was), 0, "%s", strerror(errno));
    signal(SIGXFSZ, SIG_DFL);
    cr_expect_eq(r.status, 3, "exit %d", r.status);
    check_run_free(&r);
    cr_expect_neq(access(file, F_OK), 0, "%s was left behind", file);
    cr_expect_eq(sessions_open(), 0);

    snprintf(link, sizeof(link), "%s/link.secret", dir);
    snprintf(target, sizeof(target), "%s/target", dir);
    cr_assert_eq(symlink(target, link), 0, "%s", strerror(errno));
    REFUSED(NULL, 2, "exists", "chat", "--persist", "--secret-file", link);
    struct stat st;
    cr_expect(lstat(link, &st) == 0 && S_ISLNK(st.st_mode), "the link was replaced");
    cr_expect_neq(access(target, F_OK), 0, "the link's target was created");
    cr_expect_eq(sessions_open(), 0);
}

/* A daemon whose state directory is unusable (a plain file where it goes)
 * opens a persistent session that could not survive a restart: sinkctl
 * says so, exits 1 and leaves neither the session nor the secret file. */
Test(client_persist, sinkctl_chat_persist_needs_a_state_dir)
{
    check_daemon_stop();
    char nostate[128], file[128];
    snprintf(nostate, sizeof(nostate), "%s/nostate", dir);
    plant(nostate, "a file where the state directory goes", 0600);
    check_daemon_start_state(nostate);

    snprintf(file, sizeof(file), "%s/chat.secret", dir);
    check_run r = SINKCTL(NULL, "Hello\n", "chat", "--persist", "--secret-file", file);
    cr_expect_eq(r.status, 1, "exit %d: %s", r.status, r.err);
    cr_expect_not_null(strstr(r.err, "sinkd keeps no state directory, so a --persist session "),
                       "%s", r.err);
    cr_expect_not_null(strstr(r.err, "could not survive a restart"), "%s", r.err);
    cr_expect_null(strstr(r.err, "is persistent"), "%s", r.err);
    cr_expect_str_eq(r.out, "", "the chat went on");
    check_run_free(&r);
    cr_expect_neq(access(file, F_OK), 0, "%s was left behind", file);
    cr_expect_eq(sessions_open(), 0);
}
