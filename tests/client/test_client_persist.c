/*
 * Persistent sessions through the clients, against the real daemon serving
 * the tiny reference model and restarted (SIGTERM, which saves persistent
 * sessions) over one state directory: libsinkd's attach, save, restore and
 * forget; sinkctl's `chat --persist` and `chat --attach` as a user runs them
 * across a restart, and `session save|forget`. Expected token counts come
 * from the golden file and the model's documented byte vocabulary, never
 * from the call under test. The Python client's calls are in
 * test_python_client.c.
 */
#include "client_check.h"

#include <ctype.h>
#include <limits.h>

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
 * which every user can read in /proc. */
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

static char *slurp(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    char *s = check_slurp_fd(fd, NULL);
    close(fd);
    return s;
}

Test(client_persist, sinkctl_chat_persist_survives_a_restart_and_attach_continues)
{
    enum { N = 8 };
    check_golden_load(golden);
    char secret_file[128], input[256], n[8];
    snprintf(secret_file, sizeof(secret_file), "%s/chat.secret", dir);
    snprintf(input, sizeof(input), "%s\n", golden[0].prompt);
    snprintf(n, sizeof(n), "%d", N);

    /* turn one, in a new persistent session whose secret goes to a file */
    check_run r = SINKCTL(NULL, input, "chat", "--persist", "--secret-file", secret_file,
                          "-n", n, "--ignore-eos");
    cr_assert_eq(r.status, 0, "exit %d: %s", r.status, r.err);
    char reply1[N + 1];
    check_detok(golden[0].greedy, N, reply1, sizeof(reply1));
    char want[256];
    snprintf(want, sizeof(want), "%s\n", reply1);
    cr_expect_str_eq(r.out, want);
    const uint64_t id = number_after(r.err, "session ");
    cr_expect_not_null(strstr(r.err, " is persistent"), "%s", r.err);
    char hint[256];
    snprintf(hint, sizeof(hint), "chat --attach %llu --secret-file %s", (unsigned long long)id,
             secret_file);
    cr_expect_not_null(strstr(r.err, hint), "%s", r.err);
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
     * opens (the first chat's persistent session is the only one) */
    cr_assert_eq(sessions_open(), 1);
    r = SINKCTL(secret, "x\n", "chat", "--persist", "--secret-file", secret_file);
    cr_expect_eq(r.status, 2, "%s", r.err);
    cr_expect_not_null(strstr(r.err, "exists"), "%s", r.err);
    cr_expect_str_eq(r.out, "");
    check_run_free(&r);
    char *again = slurp(secret_file);
    cr_expect_str_eq(again, line, "the secret file was overwritten");
    free(again);
    free(line);
    cr_expect_eq(sessions_open(), 1);

    restart();

    /* no secret, a wrong one: refused */
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
    cr_expect_not_null(strstr(r.err, "not_found"), "%s", r.err);
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

/* Without --secret-file the secret is printed on stderr, once, with the
 * advice to keep it private, and it is the session's: it attaches. */
Test(client_persist, sinkctl_chat_persist_prints_the_secret_without_a_file)
{
    check_run r = SINKCTL(NULL, NULL, "chat", "--persist");
    cr_assert_eq(r.status, 0, "exit %d: %s", r.status, r.err);
    const uint64_t id = number_after(r.err, "session ");
    const char *key = "(keep it private): ";
    const char *p = strstr(r.err, key);
    cr_assert_not_null(p, "%s", r.err);
    cr_expect_null(strstr(p + 1, key), "printed twice: %s", r.err);
    char secret[SECRET_LEN + 1];
    p += strlen(key);
    cr_assert_eq(strcspn(p, "\n"), SECRET_LEN, "%s", r.err);
    memcpy(secret, p, SECRET_LEN);
    secret[SECRET_LEN] = '\0';
    cr_assert(is_secret(secret), "%s", secret);
    cr_expect_str_eq(r.out, "");
    check_run_free(&r);

    sinkd_client *c = check_connect();
    uint64_t n_past = 1;
    ASSERT_OK(c, sinkd_client_session_attach(c, id, secret, T, NULL, &n_past), "attach");
    cr_expect_eq(n_past, 0);
    sinkd_client_close(c);
}
