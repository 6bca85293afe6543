/*
 * The real sinkd (CPU backend, the tiny reference model) restarted over one
 * state directory: a greedy generation cut by a restart continues with
 * exactly the tokens an uninterrupted run produces (compared with a fresh
 * session on the restarted daemon), also when SIGTERM lands in the middle
 * of a generation; attach needs the id, the secret and the owner's uid;
 * truncated, garbage and stale-model snapshots are refused with a log line
 * and set aside while the daemon keeps serving; session.save and
 * session.restore roll a session back and reopen it after a restart;
 * [quota] snapshots_per_uid caps a uid's snapshots (across restarts) and
 * session.forget deletes only the owner's; a failed shutdown save sets the
 * older file aside (its id reserved) instead of restoring it as current.
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "sinkd_testd.h"

#define MODEL SINKD_TEST_DATA "/sinkd-ref-tiny-f32.gguf"
#define PROMPT "Once upon a time"
#define MAXTOK 4096

static char state[64];
static char model_copy[128];

static void setup(void)
{
    snprintf(state, sizeof state, "/tmp/sinkd-persist-XXXXXX");
    cr_assert(mkdtemp(state) != NULL);
    model_copy[0] = '\0';
}

static void teardown(void)
{
    sinkd_testd_rmtree(state);
    if (model_copy[0])
        remove(model_copy);
}

TestSuite(persist, .init = setup, .fini = teardown);

/* Start sinkd with [server] state_dir = state, model tiny at @model and
 * the config lines @extra. */
static void start_with(sinkd_testd *d, const char *model, const char *extra)
{
    char conf[640], arg[256];
    const char *args[] = { "--model", arg, NULL };

    snprintf(conf, sizeof conf,
             "[server]\nsocket_mode = 0666\nstate_dir = %s/state\n[engine]\nbackend = cpu\n"
             "threads = 1\nkv_pool_bytes = 16M\nkv_dtype = f32\n%s", state, extra);
    snprintf(arg, sizeof arg, "tiny=%s", model);
    *d = (sinkd_testd)SINKD_TESTD_INIT;
    cr_assert(sinkd_testd_start(d, conf, args) == 0, "sinkd did not start");
}

static void start(sinkd_testd *d, const char *model)
{
    start_with(d, model, "");
}

/* Stop cleanly and keep the daemon's log (caller frees). */
static char *stop(sinkd_testd *d)
{
    char *log;

    cr_assert_eq(sinkd_testd_stop(d), 0, "sinkd did not exit cleanly");
    log = sinkd_testd_log(d);
    cr_assert(log);
    sinkd_testd_free(d);
    return log;
}

static sinkd_client *conn(const sinkd_testd *d)
{
    sinkd_client *c;

    cr_assert(sinkd_client_connect(d->socket_path, 10000, &c) == 0);
    return c;
}

/* ---- requests ---------------------------------------------------------------- */

typedef struct req {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} req;

static void req_init(req *q, uint32_t n)
{
    msgpack_sbuffer_init(&q->sb);
    msgpack_packer_init(&q->pk, &q->sb, msgpack_sbuffer_write);
    msgpack_pack_map(&q->pk, n);
}

typedef struct tokens {
    atomic_int n;
    int32_t t[MAXTOK];
} tokens;

static void on_event(void *arg, const char *ev, size_t len, const msgpack_object *m)
{
    tokens *tk = arg;
    int64_t t;

    if (tk && len == 5 && !memcmp(ev, "token", 5) && sinkd_map_i64(m, "token", &t) == 0) {
        int i = atomic_load(&tk->n);
        if (i < MAXTOK)
            tk->t[i] = (int32_t)t;
        atomic_store(&tk->n, i + 1);
    }
}

static int call(sinkd_client *c, const char *op, req *q, sinkd_client_reply *rep, tokens *tk)
{
    sinkd_client_req r = SINKD_CLIENT_REQ_INIT;
    int rc;

    r.op = op;
    r.fields = q->sb.data;
    r.fields_len = q->sb.size;
    r.on_event = on_event;
    r.event_arg = tk;
    r.timeout_ms = 120000;
    rc = sinkd_client_request(c, &r, rep);
    msgpack_sbuffer_destroy(&q->sb);
    return rc;
}

static uint64_t rep_u64(const sinkd_client_reply *rep, const char *k)
{
    uint64_t v = 0;

    cr_assert(sinkd_map_u64(rep->map, k, &v) == 0, "reply lacks %s", k);
    return v;
}

typedef struct sess {
    uint64_t id;
    char secret[64];
    uint64_t n_past;              /* after the prompt */
} sess;

/* Open a session of tiny (persist as asked, window policy so that long
 * generations stay in a small pool) and append PROMPT. */
static sess open_session(sinkd_client *c, bool persist)
{
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    const char *s;
    size_t n;
    sess out;
    req q;

    req_init(&q, 4);
    sinkd_pack_kv_str(&q.pk, "model", "tiny");
    sinkd_pack_kv_bool(&q.pk, "persist", persist);
    sinkd_pack_kv_str(&q.pk, "policy", "window");
    sinkd_pack_kv_str(&q.pk, "params", "window=8");
    cr_assert_eq(call(c, "session.open", &q, &rep, NULL), 0, "%s", sinkd_client_errmsg(c));
    out.id = rep_u64(&rep, "session");
    cr_assert(sinkd_map_str(rep.map, "secret", &s, &n) == 0 && n == 32);
    memcpy(out.secret, s, n);
    out.secret[n] = '\0';
    sinkd_client_reply_free(&rep);
    req_init(&q, 2);
    sinkd_pack_kv_u64(&q.pk, "session", out.id);
    sinkd_pack_kv_str(&q.pk, "text", PROMPT);
    cr_assert_eq(call(c, "session.append", &q, &rep, NULL), 0, "%s", sinkd_client_errmsg(c));
    out.n_past = rep_u64(&rep, "n_past");
    sinkd_client_reply_free(&rep);
    return out;
}

/* Greedy generation of @n tokens (no EOS stop) into @tk; returns the rc. */
static int generate(sinkd_client *c, uint64_t s, int n, tokens *tk)
{
    req q;

    atomic_store(&tk->n, 0);
    req_init(&q, 3);
    sinkd_pack_kv_u64(&q.pk, "session", s);
    sinkd_pack_kv_u64(&q.pk, "max_tokens", (uint64_t)n);
    sinkd_pack_kv_bool(&q.pk, "ignore_eos", true);
    return call(c, "session.generate", &q, NULL, tk);
}

/* session.attach; the reply's n_past in *@n_past (may be NULL). */
static int attach(sinkd_client *c, uint64_t s, const char *secret, uint64_t *n_past)
{
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    req q;
    int rc;

    req_init(&q, 2);
    sinkd_pack_kv_u64(&q.pk, "session", s);
    sinkd_pack_kv_str(&q.pk, "secret", secret);
    rc = call(c, "session.attach", &q, &rep, NULL);
    if (rc == 0) {
        cr_assert_eq(rep_u64(&rep, "session"), s);
        cr_assert_eq(rep_u64(&rep, "n_vocab"), 260);
        if (n_past)
            *n_past = rep_u64(&rep, "n_past");
    }
    sinkd_client_reply_free(&rep);
    return rc;
}

/* An uninterrupted run of @n tokens after PROMPT in a fresh session. */
static void reference(sinkd_client *c, int n, tokens *ref)
{
    sess r = open_session(c, false);

    cr_assert_eq(generate(c, r.id, n, ref), 0, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(atomic_load(&ref->n), n);
}

/* Run @fn(@o, @arg) in a child connected as uid 65534, not an admin; it
 * must return true. Only root can switch: false (nothing run) otherwise.
 * @fn runs in the child, so it reports by its result, never cr_assert. */
static bool as_other_uid(const sinkd_testd *d, bool (*fn)(sinkd_client *o, const void *arg),
                         const void *arg)
{
    pid_t pid;
    int status;

    if (geteuid() != 0)
        return false;
    pid = fork();
    if (pid == 0) {
        sinkd_client *o;
        if (setgid(65534) || setuid(65534) || sinkd_client_connect(d->socket_path, 5000, &o))
            _exit(2);
        _exit(fn(o, arg) ? 0 : 1);
    }
    cr_assert(waitpid(pid, &status, 0) == pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "other uid: child status %d",
              status);
    return true;
}

static bool attach_not_found(sinkd_client *o, const void *arg)
{
    const sess *s = arg;

    return attach(o, s->id, s->secret, NULL) == SINKD_ERR_NOT_FOUND;
}

/* As another uid: attach with the right secret is not_found. */
static void other_uid_cannot_attach(const sinkd_testd *d, const sess *s)
{
    as_other_uid(d, attach_not_found, s);
}

/* An op whose only field is {session: @id} (close, save, forget). */
static int by_id(sinkd_client *c, const char *op, uint64_t id)
{
    req q;

    req_init(&q, 1);
    sinkd_pack_kv_u64(&q.pk, "session", id);
    return call(c, op, &q, NULL, NULL);
}

static bool exists(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static bool exists(const char *fmt, ...)
{
    char p[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(p, sizeof p, fmt, ap);
    va_end(ap);
    return access(p, F_OK) == 0;
}

/* Whether session.save's file of session @id is there. */
static bool snapshot_exists(uint64_t id)
{
    return exists("%s/state/snapshots/%llu.snap", state, (unsigned long long)id);
}

/* ---- tests -------------------------------------------------------------------- */

#define N1 12
#define N2 12

Test(persist, restart_continues_greedy_generation, .timeout = 200)
{
    static tokens t1, t2, ref;
    sinkd_testd d;
    sinkd_client *c;
    uint64_t n_past;
    char *log;
    sess s;

    start(&d, MODEL);
    c = conn(&d);
    s = open_session(c, true);
    cr_assert_eq(generate(c, s.id, N1, &t1), 0, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(atomic_load(&t1.n), N1);
    /* a persistent session outlives its connection */
    sinkd_client_close(c);
    log = stop(&d);
    cr_assert(strstr(log, "1 session(s) saved"), "no save logged:\n%s", log);
    free(log);
    cr_assert(exists("%s/state/sessions/%llu.snap", state, (unsigned long long)s.id));

    start(&d, MODEL);
    c = conn(&d);
    cr_assert_eq(attach(c, s.id, "00000000000000000000000000000000", NULL), SINKD_ERR_NOT_FOUND);
    cr_assert_eq(attach(c, s.id + 1, s.secret, NULL), SINKD_ERR_NOT_FOUND);
    other_uid_cannot_attach(&d, &s);
    cr_assert_eq(attach(c, s.id, s.secret, &n_past), 0, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(n_past, s.n_past + N1, "the conversation is prompt + %d tokens", N1);
    /* the lanes were evicted before the save: positions with holes came back */
    {
        sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
        req q;
        req_init(&q, 1);
        sinkd_pack_kv_u64(&q.pk, "session", s.id);
        cr_assert_eq(call(c, "session.stats", &q, &rep, NULL), 0);
        cr_assert_gt(rep_u64(&rep, "evictions"), 0);
        sinkd_client_reply_free(&rep);
    }
    cr_assert_eq(generate(c, s.id, N2, &t2), 0, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(atomic_load(&t2.n), N2);
    reference(c, N1 + N2, &ref);
    for (int i = 0; i < N1 + N2; i++) {
        int32_t got = i < N1 ? t1.t[i] : t2.t[i - N1];
        cr_assert_eq(got, ref.t[i], "token %d: %d after the restart, %d uninterrupted", i, got,
                     ref.t[i]);
    }
    sinkd_client_close(c);
    log = stop(&d);
    free(log);
}

/* The generating thread of the interrupted test. */
typedef struct gen_arg {
    sinkd_client *c;
    uint64_t s;
    tokens *tk;
} gen_arg;

static void *gen_thread(void *p)
{
    gen_arg *a = p;

    generate(a->c, a->s, 1 << 20, a->tk);
    return NULL;
}

Test(persist, sigterm_mid_generation_continues_exactly, .timeout = 200)
{
    static tokens got, t2, ref;
    sinkd_testd d;
    sinkd_client *c;
    pthread_t thr;
    uint64_t n_past;
    int k, k_all;
    char *log;
    sess s;

    start(&d, MODEL);
    c = conn(&d);
    s = open_session(c, true);
    gen_arg a = { c, s.id, &got };
    cr_assert_eq(pthread_create(&thr, NULL, gen_thread, &a), 0);
    while (atomic_load(&got.n) < 8)
        usleep(1000);
    /* SIGTERM while tokens stream; our hang-up lets the stop go at once */
    kill(d.pid, SIGTERM);
    shutdown(sinkd_client_fd(c), SHUT_RDWR);
    pthread_join(thr, NULL);
    sinkd_client_close(c);
    k = atomic_load(&got.n);
    /* one SIGTERM only: the stop is under way */
    cr_assert_eq(sinkd_testd_wait(&d, 60000), 0, "sinkd did not exit cleanly");
    log = sinkd_testd_log(&d);
    cr_assert(log);
    sinkd_testd_free(&d);
    cr_assert(strstr(log, "1 session(s) saved"), "no save logged:\n%s", log);
    free(log);

    start(&d, MODEL);
    c = conn(&d);
    cr_assert_eq(attach(c, s.id, s.secret, &n_past), 0, "%s", sinkd_client_errmsg(c));
    /* every token sent is in the conversation, received or not */
    k_all = (int)(n_past - s.n_past);
    cr_assert(k_all >= k && k_all + N2 <= MAXTOK, "%d tokens generated, %d received", k_all, k);
    cr_assert_eq(generate(c, s.id, N2, &t2), 0, "%s", sinkd_client_errmsg(c));
    reference(c, k_all + N2, &ref);
    for (int i = 0; i < k; i++)
        cr_assert_eq(got.t[i], ref.t[i], "token %d before the stop", i);
    for (int i = 0; i < N2; i++)
        cr_assert_eq(t2.t[i], ref.t[k_all + i], "token %d after the restart (%d before)", i,
                     k_all);
    sinkd_client_close(c);
    free(stop(&d));
}

/* Generate 3 tokens in a persistent session and stop: its snapshot is left
 * in state/sessions. */
static sess saved_session(const char *model)
{
    static tokens tk;
    sinkd_testd d;
    sinkd_client *c;
    sess s;

    start(&d, model);
    c = conn(&d);
    s = open_session(c, true);
    cr_assert_eq(generate(c, s.id, 3, &tk), 0);
    sinkd_client_close(c);
    free(stop(&d));
    return s;
}

/* The daemon answers and generates. */
static void serves(const sinkd_testd *d)
{
    static tokens tk;
    sinkd_client *c = conn(d);
    sess s = open_session(c, false);

    cr_assert_eq(generate(c, s.id, 2, &tk), 0, "%s", sinkd_client_errmsg(c));
    sinkd_client_close(c);
}

Test(persist, corrupt_snapshots_refused_daemon_serves, .timeout = 200)
{
    sinkd_testd d;
    sinkd_client *c;
    char p[256];
    struct stat st;
    char *log;
    FILE *f;
    sess s = saved_session(MODEL);

    /* cut the real snapshot in half; plant garbage beside it */
    snprintf(p, sizeof p, "%s/state/sessions/%llu.snap", state, (unsigned long long)s.id);
    cr_assert(stat(p, &st) == 0);
    cr_assert(truncate(p, st.st_size / 2) == 0);
    snprintf(p, sizeof p, "%s/state/sessions/999.snap", state);
    cr_assert((f = fopen(p, "w")) != NULL);
    fputs("not a snapshot", f);
    fclose(f);
    chmod(p, 0600);

    start(&d, MODEL);
    serves(&d);
    c = conn(&d);
    cr_assert_eq(attach(c, s.id, s.secret, NULL), SINKD_ERR_NOT_FOUND);
    sinkd_client_close(c);
    log = stop(&d);
    cr_assert(strstr(log, "<4>persist:") && strstr(log, "truncated"), "%s", log);
    cr_assert(strstr(log, "bad magic"), "%s", log);
    free(log);
    /* set aside, never deleted */
    cr_assert(exists("%s/state/sessions/%llu.snap.bad", state, (unsigned long long)s.id));
    cr_assert(exists("%s/state/sessions/999.snap.bad", state));
    cr_assert(!exists("%s/state/sessions/%llu.snap", state, (unsigned long long)s.id));
}

Test(persist, changed_model_refused, .timeout = 200)
{
    sinkd_testd d;
    char *log;
    FILE *in, *out;
    char buf[65536];
    size_t n;
    long size;

    snprintf(model_copy, sizeof model_copy, "%s/tiny.gguf", state);
    cr_assert((in = fopen(MODEL, "rb")) && (out = fopen(model_copy, "wb")));
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        cr_assert(fwrite(buf, 1, n, out) == n);
    fclose(in);
    fclose(out);
    sess s = saved_session(model_copy);
    /* the low byte of a weight near the end: the model still loads */
    cr_assert((out = fopen(model_copy, "r+b")));
    fseek(out, 0, SEEK_END);
    size = ftell(out);
    fseek(out, size - 64, SEEK_SET);
    int ch = fgetc(out);
    fseek(out, size - 64, SEEK_SET);
    fputc(ch ^ 1, out);
    fclose(out);

    start(&d, model_copy);
    serves(&d);
    log = stop(&d);
    cr_assert(strstr(log, "model 'tiny' changed"), "%s", log);
    free(log);
    cr_assert(exists("%s/state/sessions/%llu.snap.bad", state, (unsigned long long)s.id));
}

static int restore(sinkd_client *c, const char *key, uint64_t s, const char *path,
                   uint64_t *n_past)
{
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    req q;
    int rc;

    req_init(&q, 1);
    if (path)
        sinkd_pack_kv_str(&q.pk, key, path);
    else
        sinkd_pack_kv_u64(&q.pk, key, s);
    rc = call(c, "session.restore", &q, &rep, NULL);
    if (rc == 0 && n_past)
        *n_past = rep_u64(&rep, "n_past");
    sinkd_client_reply_free(&rep);
    return rc;
}

static void same_tokens(const tokens *a, const tokens *b, const char *what)
{
    cr_assert_eq(atomic_load(&a->n), atomic_load(&b->n), "%s: counts", what);
    for (int i = 0; i < atomic_load(&a->n); i++)
        cr_assert_eq(a->t[i], b->t[i], "%s: token %d", what, i);
}

Test(persist, save_and_restore_roll_back, .timeout = 200)
{
    static tokens t, a, b, r;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    char path[512], want[512];
    sinkd_testd d;
    sinkd_client *c;
    uint64_t n_past;
    const char *p;
    size_t pl;
    req q;

    start(&d, MODEL);
    c = conn(&d);
    sess s = open_session(c, false);
    cr_assert_eq(generate(c, s.id, 4, &t), 0);
    req_init(&q, 1);
    sinkd_pack_kv_u64(&q.pk, "session", s.id);
    cr_assert_eq(call(c, "session.save", &q, &rep, NULL), 0, "%s", sinkd_client_errmsg(c));
    cr_assert(sinkd_map_str(rep.map, "path", &p, &pl) == 0 && pl < sizeof path);
    memcpy(path, p, pl);
    path[pl] = '\0';
    sinkd_client_reply_free(&rep);
    snprintf(want, sizeof want, "%s/state/snapshots/%llu.snap", state, (unsigned long long)s.id);
    cr_assert_str_eq(path, want);
    cr_assert_eq(generate(c, s.id, 5, &a), 0);
    /* roll back to the snapshot: the same 5 tokens come again */
    cr_assert_eq(restore(c, "session", s.id, NULL, &n_past), 0, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(n_past, s.n_past + 4);
    cr_assert_eq(generate(c, s.id, 5, &b), 0);
    same_tokens(&a, &b, "after a rollback");
    cr_assert_eq(restore(c, "path", 0, path, NULL), 0, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(restore(c, "path", 0, "/etc/passwd", NULL), SINKD_ERR_INVALID_ARGUMENT);
    cr_assert_eq(restore(c, "session", s.id + 100, NULL, NULL), SINKD_ERR_NOT_FOUND);
    sinkd_client_close(c);
    free(stop(&d));

    /* a restart: the snapshot reopens the (non-persistent) session */
    start(&d, MODEL);
    c = conn(&d);
    cr_assert_eq(attach(c, s.id, s.secret, NULL), SINKD_ERR_NOT_FOUND);
    cr_assert_eq(restore(c, "session", s.id, NULL, NULL), 0, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(generate(c, s.id, 5, &r), 0, "%s", sinkd_client_errmsg(c));
    same_tokens(&a, &r, "after a restart");
    /* a new session does not take the saved id */
    sess n = open_session(c, false);
    cr_assert_gt(n.id, s.id);
    sinkd_client_close(c);
    free(stop(&d));
}

static int close_session(sinkd_client *c, uint64_t id)
{
    return by_id(c, "session.close", id);
}

/* A restore is checked like an open and reads only its own session's file:
 * a snapshot copied under another live session's name is refused and that
 * session lives on; a closed session comes back only within [quota]
 * sessions_per_uid; a rollback of a live one takes no extra session. */
Test(persist, restore_checks_the_file_and_the_session_quota, .timeout = 200)
{
    static tokens t;
    char from[512], to[512];
    sinkd_testd d;
    sinkd_client *c;
    req q;

    start_with(&d, MODEL, "[quota]\nsessions_per_uid = 2\n");
    c = conn(&d);
    sess a = open_session(c, false), b = open_session(c, false);
    req_init(&q, 1);
    sinkd_pack_kv_u64(&q.pk, "session", a.id);
    cr_assert_eq(call(c, "session.save", &q, NULL, NULL), 0, "%s", sinkd_client_errmsg(c));

    snprintf(from, sizeof from, "%s/state/snapshots/%llu.snap", state, (unsigned long long)a.id);
    snprintf(to, sizeof to, "%s/state/snapshots/%llu.snap", state, (unsigned long long)b.id);
    cr_assert_eq(link(from, to), 0, "%s", strerror(errno));
    cr_expect_eq(restore(c, "session", b.id, NULL, NULL), SINKD_ERR_INVALID_ARGUMENT);
    cr_expect_eq(generate(c, b.id, 2, &t), 0, "b after the refused restore: %s",
                 sinkd_client_errmsg(c));
    cr_assert_eq(unlink(to), 0);

    cr_expect_eq(restore(c, "session", a.id, NULL, NULL), 0, "a rollback: %s",
                 sinkd_client_errmsg(c));
    cr_assert_eq(close_session(c, a.id), 0, "%s", sinkd_client_errmsg(c));
    sess n = open_session(c, false); /* b and n: the quota is full */
    cr_expect_eq(restore(c, "session", a.id, NULL, NULL), SINKD_ERR_QUOTA_EXCEEDED);
    cr_assert_eq(close_session(c, n.id), 0, "%s", sinkd_client_errmsg(c));
    cr_expect_eq(restore(c, "session", a.id, NULL, NULL), 0, "%s", sinkd_client_errmsg(c));
    cr_expect_eq(generate(c, a.id, 2, &t), 0, "%s", sinkd_client_errmsg(c));
    sinkd_client_close(c);
    free(stop(&d));
}

/* session.append of @n copies of token 10, no BOS. */
static int append_ids(sinkd_client *c, uint64_t id, int n)
{
    req q;

    req_init(&q, 3);
    sinkd_pack_kv_u64(&q.pk, "session", id);
    sinkd_pack_kv_bool(&q.pk, "bos", false);
    msgpack_pack_str(&q.pk, 3);
    msgpack_pack_str_body(&q.pk, "ids", 3);
    msgpack_pack_array(&q.pk, (uint32_t)n);
    for (int i = 0; i < n; i++)
        msgpack_pack_int32(&q.pk, 10);
    return call(c, "session.append", &q, NULL, NULL);
}

/* A budget of 64 tokens a lane, saved from a pool of 16-token pages (4 a
 * lane) and restored into one of 32-token pages: still 64 tokens (2 pages),
 * not 4 pages' 128. */
Test(persist, restore_keeps_the_budget_in_tokens_across_page_sizes, .timeout = 200)
{
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    sinkd_testd d;
    sinkd_client *c;
    uint64_t id;
    req q;

    start(&d, MODEL);
    c = conn(&d);
    req_init(&q, 3);
    sinkd_pack_kv_str(&q.pk, "model", "tiny");
    sinkd_pack_kv_str(&q.pk, "policy", "full");
    sinkd_pack_kv_u64(&q.pk, "budget", 64);
    cr_assert_eq(call(c, "session.open", &q, &rep, NULL), 0, "%s", sinkd_client_errmsg(c));
    id = rep_u64(&rep, "session");
    sinkd_client_reply_free(&rep);
    cr_assert_eq(append_ids(c, id, 40), 0, "%s", sinkd_client_errmsg(c));
    req_init(&q, 1);
    sinkd_pack_kv_u64(&q.pk, "session", id);
    cr_assert_eq(call(c, "session.save", &q, NULL, NULL), 0, "%s", sinkd_client_errmsg(c));
    sinkd_client_close(c);
    free(stop(&d));

    start_with(&d, MODEL, "page_tokens = 32\n");
    c = conn(&d);
    cr_assert_eq(restore(c, "session", id, NULL, NULL), 0, "%s", sinkd_client_errmsg(c));
    cr_expect_eq(append_ids(c, id, 24), 0, "up to the budget: %s", sinkd_client_errmsg(c));
    cr_expect_eq(append_ids(c, id, 1), SINKD_ERR_QUOTA_EXCEEDED, "past the budget");
    sinkd_client_close(c);
    free(stop(&d));
}

/* A save cut short leaves a temporary file: the next start removes it from
 * snapshots/ as from sessions/, and the committed snapshot beside it stays. */
Test(persist, unfinished_saves_are_removed_at_start, .timeout = 200)
{
    char p[512];
    sinkd_testd d;
    sinkd_client *c;
    FILE *f;
    req q;

    start(&d, MODEL);
    c = conn(&d);
    sess s = open_session(c, false);
    req_init(&q, 1);
    sinkd_pack_kv_u64(&q.pk, "session", s.id);
    cr_assert_eq(call(c, "session.save", &q, NULL, NULL), 0, "%s", sinkd_client_errmsg(c));
    sinkd_client_close(c);
    free(stop(&d));
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/state/%s/.tmp.7.snap", state, i ? "sessions" : "snapshots");
        cr_assert((f = fopen(p, "w")) != NULL, "%s: %s", p, strerror(errno));
        fputs("half a snapshot", f);
        fclose(f);
    }
    start(&d, MODEL);
    free(stop(&d));
    cr_expect(!exists("%s/state/snapshots/.tmp.7.snap", state));
    cr_expect(!exists("%s/state/sessions/.tmp.7.snap", state));
    cr_expect(snapshot_exists(s.id));
}

/* ---- snapshots per uid, session.forget ---------------------------------------- */

#define SAVE(c, id) by_id((c), "session.save", (id))
#define FORGET(c, id) by_id((c), "session.forget", (id))

/* A file @text at @path, mode 0600 (as sinkd writes its own). */
static void plant(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    cr_assert(f, "%s: %s", path, strerror(errno));
    fputs(text, f);
    fclose(f);
    cr_assert_eq(chmod(path, 0600), 0);
}

static void quota_refused(sinkd_client *c, uint64_t id)
{
    cr_assert_eq(SAVE(c, id), SINKD_ERR_QUOTA_EXCEEDED, "session %llu saved past the quota",
                 (unsigned long long)id);
    cr_assert(strstr(sinkd_client_errmsg(c), "[quota] snapshots_per_uid (2)"), "message: %s",
              sinkd_client_errmsg(c));
    cr_assert(!snapshot_exists(id));
}

static bool forget_not_found(sinkd_client *o, const void *arg)
{
    const uint64_t *id = arg;

    return FORGET(o, *id) == SINKD_ERR_NOT_FOUND &&
           strstr(sinkd_client_errmsg(o), "no snapshot of session") != NULL;
}

/* With snapshots_per_uid = 2: a third new snapshot is refused, re-saving
 * one replaces it, a closed session's file still counts until forgotten;
 * a restarted daemon counts the files it finds, and a file whose HEAD does
 * not read counts for nobody, keeps its id and is only an admin's to
 * forget. */
Test(persist, snapshots_per_uid_caps_new_files_across_restarts, .timeout = 200)
{
    static const uint64_t garbage = 999;
    sinkd_testd d;
    sinkd_client *c;
    char *log;
    char p[512];

    start_with(&d, MODEL, "[quota]\nsnapshots_per_uid = 2\n");
    c = conn(&d);
    sess a = open_session(c, false), b = open_session(c, false), n = open_session(c, false);
    cr_assert_eq(SAVE(c, a.id), 0, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(SAVE(c, b.id), 0, "%s", sinkd_client_errmsg(c));
    quota_refused(c, n.id);
    cr_assert_eq(SAVE(c, a.id), 0, "a re-save replaces: %s", sinkd_client_errmsg(c));
    cr_assert_eq(close_session(c, b.id), 0, "%s", sinkd_client_errmsg(c));
    quota_refused(c, n.id);
    cr_assert_eq(FORGET(c, b.id), 0, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(SAVE(c, n.id), 0, "after a forget: %s", sinkd_client_errmsg(c));
    sinkd_client_close(c);
    free(stop(&d));

    snprintf(p, sizeof p, "%s/state/snapshots/%llu.snap", state, (unsigned long long)garbage);
    plant(p, "not a snapshot");
    start_with(&d, MODEL, "[quota]\nsnapshots_per_uid = 2\n");
    c = conn(&d);
    sess m = open_session(c, false);
    cr_assert_gt(m.id, garbage, "the unreadable file keeps its id");
    quota_refused(c, m.id); /* a and n, read back from their files */
    cr_assert_eq(restore(c, "session", a.id, NULL, NULL), 0, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(SAVE(c, a.id), 0, "a re-save after a restart: %s", sinkd_client_errmsg(c));
    cr_assert_eq(FORGET(c, n.id), 0, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(SAVE(c, m.id), 0, "the garbage file counts for nobody: %s",
                 sinkd_client_errmsg(c));
    if (as_other_uid(&d, forget_not_found, &garbage)) { /* as root, c is an admin */
        cr_assert(exists("%s", p));
        cr_assert_eq(FORGET(c, garbage), 0, "an admin forgets it: %s", sinkd_client_errmsg(c));
        cr_assert(!exists("%s", p));
    }
    sinkd_client_close(c);
    log = stop(&d);
    cr_assert(strstr(log, "owner unknown"), "%s", log);
    free(log);
}

/* A connection that is no admin (uid 65534) saves a session of its own and
 * forgets it; then there is nothing to forget or restore. */
static bool owner_forgets_own(sinkd_client *o, const void *arg)
{
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    uint64_t id = 0;
    bool ok;
    req q;

    (void)arg;
    req_init(&q, 1);
    sinkd_pack_kv_str(&q.pk, "model", "tiny");
    ok = call(o, "session.open", &q, &rep, NULL) == 0 && sinkd_map_u64(rep.map, "session", &id) == 0;
    sinkd_client_reply_free(&rep);
    return ok && SAVE(o, id) == 0 && FORGET(o, id) == 0 && FORGET(o, id) == SINKD_ERR_NOT_FOUND &&
           restore(o, "session", id, NULL, NULL) == SINKD_ERR_NOT_FOUND;
}

/* Files in the state directory's snapshots/ (temporary ones aside). */
static int snapshot_files(void)
{
    char dir[512];
    struct dirent *e;
    int n = 0;
    DIR *dp;

    snprintf(dir, sizeof dir, "%s/state/snapshots", state);
    cr_assert((dp = opendir(dir)) != NULL, "%s: %s", dir, strerror(errno));
    while ((e = readdir(dp)))
        n += e->d_name[0] != '.';
    closedir(dp);
    return n;
}

/* session.forget deletes the owner's snapshot and nothing else: another
 * uid's and a missing one read the same (not_found), and the live session
 * of the id lives on. It takes two uids, so root: the test's own
 * connection is then an admin, and the owner's forget runs as uid 65534. */
Test(persist, forget_deletes_only_the_owners_snapshot, .timeout = 200)
{
    static tokens t;
    static const uint64_t missing = 424242;
    sinkd_testd d;
    sinkd_client *c;

    if (geteuid() != 0)
        cr_skip_test("needs root to connect as a second uid");
    start(&d, MODEL);
    c = conn(&d);
    sess s = open_session(c, false), u = open_session(c, false);
    cr_assert_eq(SAVE(c, s.id), 0, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(SAVE(c, u.id), 0, "%s", sinkd_client_errmsg(c));
    as_other_uid(&d, forget_not_found, &s.id);
    as_other_uid(&d, forget_not_found, &missing);
    cr_assert(snapshot_exists(s.id));
    as_other_uid(&d, owner_forgets_own, NULL);
    cr_assert_eq(snapshot_files(), 2, "the owner's file is gone, root's two stay");

    cr_assert_eq(FORGET(c, s.id), 0, "%s", sinkd_client_errmsg(c));
    cr_assert(!snapshot_exists(s.id));
    cr_assert_eq(restore(c, "session", s.id, NULL, NULL), SINKD_ERR_NOT_FOUND);
    cr_assert_eq(FORGET(c, s.id), SINKD_ERR_NOT_FOUND, "forgotten twice");
    cr_assert_eq(FORGET(c, missing), SINKD_ERR_NOT_FOUND);
    cr_assert(snapshot_exists(u.id));
    cr_assert_eq(generate(c, s.id, 2, &t), 0, "the live session: %s", sinkd_client_errmsg(c));
    sinkd_client_close(c);
    free(stop(&d));
}

/* Without a usable state directory there is nothing to forget, and a
 * session asked to persist is refused when it opens (it could not survive
 * a restart), opening nothing; a plain session still opens. */
Test(persist, persistence_without_a_state_dir_is_unsupported, .timeout = 200)
{
    char p[512];
    sinkd_testd d;
    sinkd_client *c;
    sinkd_client_session_opts o = {.model = "tiny", .persist = true};
    sinkd_client_session_info info;
    sinkd_client_session_entry *list = NULL;
    size_t n = 1;

    snprintf(p, sizeof p, "%s/state", state);
    plant(p, "a file where the state directory goes");
    start(&d, MODEL);
    c = conn(&d);
    cr_assert_eq(FORGET(c, 1), SINKD_ERR_UNSUPPORTED, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(sinkd_client_session_open(c, &o, 120000, &info), SINKD_ERR_UNSUPPORTED);
    cr_assert_not_null(strstr(sinkd_client_errmsg(c), "[server] state_dir"), "%s",
                       sinkd_client_errmsg(c));
    cr_assert_eq(sinkd_client_session_list(c, 120000, &list, &n), 0);
    cr_assert_eq(n, 0, "the refused session opened");
    sinkd_client_free(list);
    o.persist = false;
    cr_assert_eq(sinkd_client_session_open(c, &o, 120000, &info), 0, "%s",
                 sinkd_client_errmsg(c));
    sinkd_client_close(c);
    free(stop(&d));
}

/* A shutdown whose save of a session fails must not leave the previous
 * shutdown's file to be restored as if current (the conversation would
 * lose its last turns without a word): it is set aside as .bad. The save
 * is made to fail by a directory where its temporary file goes, which
 * stops root as well as anyone. */
Test(persist, failed_shutdown_save_sets_the_older_file_aside, .timeout = 200)
{
    static tokens t;
    char tmp[512];
    sinkd_testd d;
    sinkd_client *c;
    char *log;
    sess s = saved_session(MODEL);

    start(&d, MODEL);
    c = conn(&d);
    cr_assert_eq(attach(c, s.id, s.secret, NULL), 0, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(generate(c, s.id, 3, &t), 0, "%s", sinkd_client_errmsg(c));
    snprintf(tmp, sizeof tmp, "%s/state/sessions/.tmp.%llu.snap", state,
             (unsigned long long)s.id);
    cr_assert_eq(mkdir(tmp, 0700), 0, "%s", strerror(errno));
    sinkd_client_close(c);
    log = stop(&d);
    cr_assert(strstr(log, "not saved") && strstr(log, "whose save failed"), "%s", log);
    free(log);
    cr_assert(!exists("%s/state/sessions/%llu.snap", state, (unsigned long long)s.id));
    cr_assert(exists("%s/state/sessions/%llu.snap.bad", state, (unsigned long long)s.id));
    cr_assert_eq(rmdir(tmp), 0, "%s", strerror(errno));

    start(&d, MODEL);
    c = conn(&d);
    cr_assert_eq(attach(c, s.id, s.secret, NULL), SINKD_ERR_NOT_FOUND, "restored as current");
    /* the set-aside file keeps its id: renamed back, it must not collide */
    sess n = open_session(c, false);
    cr_assert_gt(n.id, s.id, "a new session took the set-aside file's id");
    sinkd_client_close(c);
    free(stop(&d));
}
