/*
 * sinkd-soak: many clients doing mixed work against one sinkd for a while,
 * then an audit. Starts its own sinkd (tests/common's sinkd_testd) with the
 * tiny model on the CPU backend.
 *
 *   sinkd-soak [--clients N (64)] [--seconds T (60)] [--json FILE]
 *              [--max-rss-growth PCT (5)]
 *
 * Each client thread loops over: open a session (policy full or window),
 * append text, generate a few tokens, swap the policy, cancel, close, and
 * now and then drop its connection with sessions open (the daemon must close
 * them). One hostile thread keeps connecting and sending malformed frames
 * (garbage payloads, lengths over max_frame, truncated frames, unknown ops,
 * deep nesting). At the end, with every client still connected:
 *   - the daemon's session count equals the sessions the clients hold;
 *   - no request got an error or a timeout;
 * then every client disconnects and:
 *   - sessions and KV pool usage are back to zero (within 2 s);
 *   - RSS grew less than 5% (--max-rss-growth) from the end of the warm-up (a fifth of the run)
 *     to the end (skipped in an AddressSanitizer build: its quarantine grows
 *     RSS on purpose);
 *   - sinkd exits 0 on SIGTERM (under LeakSanitizer that means no leak).
 * Prints a table, writes JSON with --json, exits 0 when every check passed.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "sinkd_testd.h"
#include "sinkd_testwire.h"

#if defined(__SANITIZE_ADDRESS__)
#define SOAK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SOAK_ASAN 1
#endif
#endif
#ifndef SOAK_ASAN
#define SOAK_ASAN 0
#endif

#define SOAK_CONF                                                                    \
    "[server]\nmax_frame = 1M\n[engine]\nbackend = cpu\nthreads = 1\n"                \
    "kv_pool_bytes = 256M\nkv_dtype = f32\nmax_batch = 16\n"                         \
    "[quota]\nsessions_per_uid = 0\ngenerations_per_uid = 0\n"
#define SOAK_MAX_TOKENS 192   /* a session past this many tokens is closed */

enum { OP_OPEN, OP_APPEND, OP_GENERATE, OP_POLICY, OP_CANCEL, OP_CLOSE, OP_DROP, OP_N };
static const char *const op_names[OP_N] = { "open", "append", "generate", "policy",
                                            "cancel", "close", "disconnect" };

static struct {
    sinkd_testd d;
    atomic_bool stop, audit_done;
    atomic_int waiting;            /* workers parked for the audit */
    atomic_uint_fast64_t ops[OP_N], errors, hostile;
    atomic_int_fast64_t live;      /* sessions the clients hold */
    char first_error[256];
    pthread_mutex_t mu;
} g = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void soak__error(const char *op, int rc, sinkd_client *c)
{
    atomic_fetch_add(&g.errors, 1);
    pthread_mutex_lock(&g.mu);
    if (!g.first_error[0])
        snprintf(g.first_error, sizeof g.first_error, "%s: %d (%s)", op, rc,
                 rc > 0 ? sinkd_client_errmsg(c) : strerror(-rc));
    pthread_mutex_unlock(&g.mu);
}

static uint64_t soak__rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

typedef struct worker {
    pthread_t thr;
    uint64_t seed;
    sinkd_client *c;
    uint64_t sess[4];
    int n_sess;
    int64_t tokens[4];
} worker;

static int soak__connect(worker *w)
{
    int rc = sinkd_client_connect(g.d.socket_path, 10000, &w->c);

    if (rc < 0)
        soak__error("connect", rc, NULL);
    return rc;
}

static void soak__forget(worker *w, int i)
{
    w->sess[i] = w->sess[--w->n_sess];
    w->tokens[i] = w->tokens[w->n_sess];
    atomic_fetch_sub(&g.live, 1);
}

/* One random operation. */
static void soak__step(worker *w)
{
    static const char *const texts[] = { "Once upon a time", " and then", " the end.",
                                         " Hello, world!", " 12345" };
    static const char *const policies[] = { "full", "window" };
    uint64_t r = soak__rand(&w->seed);
    int i = w->n_sess ? (int)((r >> 8) % (uint64_t)w->n_sess) : -1, op, rc = 0;
    const char *text = texts[(r >> 16) % 5];

    op = w->n_sess == 0 ? OP_OPEN : (int)(r % 100) < 8 ? OP_OPEN : (int)(r % 100) < 30 ? OP_APPEND
       : (int)(r % 100) < 60 ? OP_GENERATE : (int)(r % 100) < 72 ? OP_POLICY
       : (int)(r % 100) < 82 ? OP_CANCEL : (int)(r % 100) < 97 ? OP_CLOSE : OP_DROP;
    if (op == OP_OPEN && w->n_sess == 4)
        op = OP_CLOSE, i = 0;
    if (i >= 0 && w->tokens[i] > SOAK_MAX_TOKENS)
        op = OP_CLOSE;
    atomic_fetch_add(&g.ops[op], 1);
    switch (op) {
    case OP_OPEN: {
        sinkd_client_session_opts o = SINKD_CLIENT_SESSION_OPTS_INIT;
        sinkd_client_session_info s;
        o.model = "tiny";
        o.policy = policies[(r >> 24) & 1];
        rc = sinkd_client_session_open(w->c, &o, 10000, &s);
        if (rc == 0) {
            w->sess[w->n_sess] = s.session;
            w->tokens[w->n_sess++] = 0;
            atomic_fetch_add(&g.live, 1);
        }
        break;
    }
    case OP_APPEND:
        rc = sinkd_client_session_append_text(w->c, w->sess[i], text, strlen(text), SINKD_CLIENT_BOS_DEFAULT, 10000,
                                              NULL);
        w->tokens[i] += (int64_t)strlen(text) + 1;
        break;
    case OP_GENERATE: {
        sinkd_client_gen_params o = SINKD_CLIENT_GEN_PARAMS_INIT;
        sinkd_client_gen_result res = SINKD_CLIENT_GEN_RESULT_INIT;
        o.max_tokens = 1 + (uint32_t)((r >> 20) % 8);
        o.ignore_eos = true;
        o.temperature = 0.7;
        o.seed = r;
        rc = sinkd_client_session_generate(w->c, w->sess[i], &o, NULL, NULL, 30000, &res);
        if (rc == 0)
            sinkd_client_gen_result_free(&res);
        else if (rc == SINKD_ERR_INVALID_ARGUMENT)
            rc = 0; /* nothing to continue yet: a fresh session, expected */
        w->tokens[i] += 9;
        break;
    }
    case OP_POLICY:
        rc = sinkd_client_session_policy(w->c, w->sess[i], policies[(r >> 24) & 1], NULL,
                                         10000, NULL, 0);
        break;
    case OP_CANCEL:
        rc = sinkd_client_session_cancel(w->c, w->sess[i], 10000);
        break;
    case OP_CLOSE:
        rc = sinkd_client_session_close(w->c, w->sess[i], 10000);
        soak__forget(w, i);
        break;
    case OP_DROP:
        /* the daemon closes what this connection opened */
        sinkd_client_close(w->c);
        w->c = NULL;
        while (w->n_sess)
            soak__forget(w, 0);
        soak__connect(w);
        break;
    }
    if (rc != 0)
        soak__error(op_names[op], rc, w->c);
}

static void *soak__worker(void *arg)
{
    worker *w = arg;

    if (soak__connect(w) < 0)
        return NULL;
    while (!atomic_load(&g.stop) && w->c)
        soak__step(w);
    atomic_fetch_add(&g.waiting, 1);
    while (!atomic_load(&g.audit_done))
        usleep(10000);
    sinkd_client_close(w->c);
    while (w->n_sess)
        soak__forget(w, 0);
    return NULL;
}

/* Malformed input, one connection per attempt. */
static void *soak__hostile(void *arg)
{
    uint64_t seed = 0x9e3779b97f4a7c15ull;

    (void)arg;
    while (!atomic_load(&g.stop)) {
        uint8_t buf[512];
        size_t n = 4 + soak__rand(&seed) % 200;
        uint64_t kind = soak__rand(&seed) % 5;
        int fd = sinkd_testd_connect_raw(&g.d);
        if (fd < 0)
            continue;
        for (size_t i = 0; i < n; i++)
            buf[i] = (uint8_t)soak__rand(&seed);
        if (kind == 0) {          /* a frame of garbage */
            sinkd_testwire_send_frame(fd, buf + 4, n - 4);
        } else if (kind == 1) {   /* a length over max_frame */
            memcpy(buf, "\x7f\xff\xff\xff", 4);
            sinkd_testwire_send(fd, buf, n);
        } else if (kind == 2) {   /* a truncated frame, then hang up */
            memcpy(buf, "\x00\x00\x01\x00", 4);
            sinkd_testwire_send(fd, buf, n < 200 ? n : 200);
        } else if (kind == 3) {   /* a well-formed request of an unknown op */
            static const uint8_t req[] = "\x82\xa2op\xa4nope\xa2id\x01";
            sinkd_testwire_send_frame(fd, req, sizeof req - 1);
        } else {                  /* nesting deeper than the decoder takes */
            memset(buf, 0x91, sizeof buf);
            buf[0] = 0x81, buf[1] = 0xa1, buf[2] = 'x';
            sinkd_testwire_send_frame(fd, buf, sizeof buf);
        }
        sinkd_testwire_closed(fd, 50);
        close(fd);
        atomic_fetch_add(&g.hostile, 1);
    }
    return NULL;
}

static int soak__status(sinkd_client_status *st)
{
    sinkd_client *c;
    int rc = sinkd_client_connect(g.d.socket_path, 10000, &c);

    if (rc == 0) {
        rc = sinkd_client_status_get(c, 10000, st);
        sinkd_client_close(c);
    }
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "clients", required_argument, NULL, 'c' },
        { "seconds", required_argument, NULL, 's' },
        { "json", required_argument, NULL, 'j' },
        { "max-rss-growth", required_argument, NULL, 'r' },
        { NULL, 0, NULL, 0 },
    };
    const char *args[] = { "--model", "tiny=" SINKD_SOAK_MODEL, NULL }, *json = NULL;
    int clients = 64, seconds = 60, o, fails = 0, exit_status;
    sinkd_client_status st0 = { 0 }, st1 = { 0 }, st2 = { 0 };
    pthread_t hostile;
    worker *ws;
    uint64_t total = 0;
    double growth, max_growth = 5.0;
    bool live_ok = false, drained = false;
    int64_t live;

    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 'c')
            clients = atoi(optarg);
        else if (o == 's')
            seconds = atoi(optarg);
        else if (o == 'j')
            json = optarg;
        else if (o == 'r')
            max_growth = atof(optarg);
        else
            return 2;
    }
    if (clients < 1 || clients > 1000 || seconds < 1) {
        fprintf(stderr, "sinkd-soak: need 1..1000 clients and >= 1 second\n");
        return 2;
    }
    g.d = (sinkd_testd)SINKD_TESTD_INIT;
    if (sinkd_testd_start(&g.d, SOAK_CONF, args) != 0) {
        fprintf(stderr, "sinkd-soak: sinkd did not start\n");
        return 1;
    }
    ws = calloc((size_t)clients, sizeof *ws);
    if (!ws)
        return 1;
    for (int i = 0; i < clients; i++) {
        ws[i].seed = 0x243f6a8885a308d3ull * (uint64_t)(i + 1) | 1;
        pthread_create(&ws[i].thr, NULL, soak__worker, &ws[i]);
    }
    pthread_create(&hostile, NULL, soak__hostile, NULL);
    /* RSS once a second; the warm-up ends at a fifth of the run */
    for (int t = 1; t <= seconds; t++) {
        sinkd_client_status st;
        sleep(1);
        if (soak__status(&st) != 0) {
            fails++;
            break;
        }
        if (t == (seconds / 5 > 0 ? seconds / 5 : 1))
            st0 = st;
        if (t % 10 == 0)
            printf("t=%3d s  rss %.2f MiB  sessions %llu  kv_used %.2f MiB\n", t,
                   st.rss_bytes / 1048576.0, (unsigned long long)st.sessions,
                   st.kv_used_bytes / 1048576.0);
    }
    atomic_store(&g.stop, true);
    pthread_join(hostile, NULL);
    while (atomic_load(&g.waiting) < clients)
        usleep(10000);
    /* every client parked, connected, holding what it holds */
    live = atomic_load(&g.live);
    /* a connection dropped just now may still own sessions: the daemon's
     * sweep finds closed connections every 100 ms */
    for (int i = 0; i < 100 && !live_ok; i++) {
        if (soak__status(&st1) != 0)
            break;
        live_ok = (int64_t)st1.sessions == live;
        if (!live_ok)
            usleep(10000);
    }
    atomic_store(&g.audit_done, true);
    for (int i = 0; i < clients; i++)
        pthread_join(ws[i].thr, NULL);
    for (int i = 0; i < 200 && !drained; i++) {
        usleep(10000);
        drained = soak__status(&st2) == 0 && st2.sessions == 0 && st2.kv_used_bytes == 0;
    }
    growth = st0.rss_bytes ? 100.0 * ((double)st2.rss_bytes - (double)st0.rss_bytes) /
                                 (double)st0.rss_bytes : 0.0;
    exit_status = sinkd_testd_stop(&g.d);

    printf("%-12s %10s\n", "op", "count");
    for (int i = 0; i < OP_N; i++) {
        printf("%-12s %10llu\n", op_names[i], (unsigned long long)atomic_load(&g.ops[i]));
        total += atomic_load(&g.ops[i]);
    }
    printf("%-12s %10llu\n%-12s %10llu\n", "hostile", (unsigned long long)atomic_load(&g.hostile),
           "total", (unsigned long long)total);
    printf("clients %d, %d s: %.0f ops/s\n", clients, seconds, (double)total / seconds);
    printf("errors: %llu%s%s\n", (unsigned long long)atomic_load(&g.errors),
           g.first_error[0] ? ", first: " : "", g.first_error);
    printf("sessions at the audit: daemon %llu, clients %lld: %s\n",
           (unsigned long long)st1.sessions, (long long)live, live_ok ? "ok" : "MISMATCH");
    printf("after disconnect: sessions %llu, kv_used_bytes %llu: %s\n",
           (unsigned long long)st2.sessions, (unsigned long long)st2.kv_used_bytes,
           drained ? "ok" : "NOT DRAINED");
    printf("rss: %.1f MiB after warm-up, %.1f MiB at the end (%+.2f%%)%s\n",
           st0.rss_bytes / 1048576.0, st2.rss_bytes / 1048576.0, growth,
           SOAK_ASAN ? " (not checked under ASan)" : growth < max_growth ? "" : " TOO MUCH");
    printf("sinkd exit status %d\n", exit_status);
    fails += atomic_load(&g.errors) != 0 || !live_ok || !drained || exit_status != 0 ||
             (!SOAK_ASAN && growth >= max_growth);
    if (json) {
        FILE *f = fopen(json, "w");
        if (f) {
            fprintf(f, "{\"clients\": %d, \"seconds\": %d, \"ops\": %llu, \"hostile\": %llu, "
                       "\"errors\": %llu, \"sessions_audit\": %llu, \"sessions_clients\": %lld, "
                       "\"sessions_end\": %llu, \"kv_used_end\": %llu, \"rss_warm\": %llu, "
                       "\"rss_end\": %llu, \"rss_growth_pct\": %.3f, \"exit_status\": %d, "
                       "\"pass\": %s}\n", clients, seconds, (unsigned long long)total,
                    (unsigned long long)atomic_load(&g.hostile),
                    (unsigned long long)atomic_load(&g.errors),
                    (unsigned long long)st1.sessions, (long long)live,
                    (unsigned long long)st2.sessions, (unsigned long long)st2.kv_used_bytes,
                    (unsigned long long)st0.rss_bytes, (unsigned long long)st2.rss_bytes,
                    growth, exit_status, fails ? "false" : "true");
            fclose(f);
        }
    }
    sinkd_testd_free(&g.d);
    free(ws);
    printf("%s\n", fails ? "FAIL" : "PASS");
    return fails ? 1 : 0;
}
