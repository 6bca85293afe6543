/*
 * The socket part of sinkd-bench-e2e: what a client of sinkd sees. One
 * connection through libsinkd opens a session, appends `prompt` token ids
 * and streams a greedy generation of `socket_tokens` tokens (ignore_eos), time-
 * stamping each token event as it arrives. The gaps between consecutive
 * events are the client's time between tokens; the engine's own step time is
 * the reply's timings.step_ms, the mean time between two tokens sampled on
 * the engine thread (forward, sampling, eviction and the event handed to
 * the loop), over the same n - 1 gaps the client sees. The forward alone is
 * reported beside it: timings.decode_ms sums the decode calls, and the
 * first token comes from the prompt's logits without one, so n tokens cost
 * n - 1 of them.
 *
 * A short generation on another session warms the daemon up first (the
 * timed session starts fresh, so no token is pending in it). Without
 * socket_path the bench starts sinkd itself on a private socket with the
 * model, the backend and a KV pool sized for the two sessions.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "e2e.h"
#include "gguf.h"
#include "sinkd_testd.h"

#define E2E_LOG "sinkd-bench-e2e: "
#define TIMEOUT_MS 600000
#define WARM_TOKENS 16

typedef struct sock_run {
    sinkd_client *c;
    const e2e_opts *o;
    int32_t n_vocab;
    uint64_t session;
    /* token events of the current generate */
    double *t;
    int32_t n_t, cap_t;
} sock_run;

static void errmsg(const sock_run *s, const char *what, int rc)
{
    fprintf(stderr, "<3>" E2E_LOG "%s: %s%s%s\n", what, sinkd_client_strerror(rc),
            rc > 0 ? ": " : "", rc > 0 ? sinkd_client_errmsg(s->c) : "");
}

static int pack_session(msgpack_packer *pk, void *arg)
{
    sinkd_pack_kv_u64(pk, "session", ((const sock_run *)arg)->session);
    return 0;
}

/* session, ids (the prompt: random ids of the vocabulary), bos = false */
static int pack_append(msgpack_packer *pk, void *arg)
{
    const sock_run *s = arg;
    uint64_t x = 0x9e3779b97f4a7c15ull;

    sinkd_pack_kv_u64(pk, "session", s->session);
    sinkd_pack_str(pk, "ids");
    msgpack_pack_array(pk, (size_t)s->o->prompt);
    for (int32_t i = 0; i < s->o->prompt; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        msgpack_pack_int32(pk, (int32_t)(x % (uint64_t)s->n_vocab));
    }
    sinkd_pack_kv_bool(pk, "bos", false);
    return 0;
}

/* session, max_tokens, stream, ignore_eos, temperature 0 (greedy) */
static int pack_generate(msgpack_packer *pk, void *arg)
{
    const sock_run *s = arg;

    sinkd_pack_kv_u64(pk, "session", s->session);
    sinkd_pack_kv_u64(pk, "max_tokens", (uint64_t)s->cap_t);
    sinkd_pack_kv_bool(pk, "stream", true);
    sinkd_pack_kv_bool(pk, "ignore_eos", true);
    sinkd_pack_kv_f64(pk, "temperature", 0.0);
    return 0;
}

static void on_event(void *arg, const char *ev, size_t ev_len, const msgpack_object *event)
{
    sock_run *s = arg;
    double now = e2e_now_s();

    (void)event;
    if (ev_len == 5 && memcmp(ev, "token", 5) == 0 && s->n_t < s->cap_t)
        s->t[s->n_t++] = now;
}

static int request(sock_run *s, const char *op, uint32_t nfields, sinkd_client_pack_fn pack,
                   sinkd_client_reply *reply)
{
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;

    req.op = op;
    req.nfields = nfields;
    req.pack = pack;
    req.pack_arg = s;
    req.on_event = on_event;
    req.event_arg = s;
    req.timeout_ms = TIMEOUT_MS;
    int rc = sinkd_client_request(s->c, &req, reply);
    if (rc != 0)
        errmsg(s, op, rc);
    return rc;
}

/* Open a session on the default model, append the prompt (its prefill_ms
 * into *@prefill_ms), generate @tokens tokens into s->t, close. The
 * generate's reply is left in @gen for the caller to read and free. */
static int session_run(sock_run *s, int32_t tokens, double *prefill_ms, sinkd_client_reply *gen)
{
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    uint64_t nv = 0;
    int rc;

    if ((rc = request(s, "session.open", 0, NULL, &rep)) != 0)
        return rc;
    if (sinkd_map_u64(rep.map, "session", &s->session) != 0 ||
        sinkd_map_u64(rep.map, "n_vocab", &nv) != 0 || nv == 0 || nv > INT32_MAX) {
        sinkd_client_reply_free(&rep);
        fprintf(stderr, "<3>" E2E_LOG "session.open: reply without session or n_vocab\n");
        return -EPROTO;
    }
    sinkd_client_reply_free(&rep);
    s->n_vocab = (int32_t)nv;
    rc = request(s, "session.append", 3, pack_append, &rep);
    if (rc == 0 && sinkd_map_f64(rep.map, "prefill_ms", prefill_ms) != 0)
        rc = -EPROTO;
    sinkd_client_reply_free(&rep);
    s->n_t = 0;
    s->cap_t = tokens;
    if (rc == 0)
        rc = request(s, "session.generate", 5, pack_generate, gen);
    int rc2 = request(s, "session.close", 1, pack_session, NULL);
    return rc ? rc : rc2;
}

static int measure(sock_run *s, e2e_socket_result *r)
{
    sinkd_client_reply gen = SINKD_CLIENT_REPLY_INIT;
    sinkd_client_status st;
    const msgpack_object *timings = NULL;
    uint64_t n_tokens = 0;
    double prefill_ms;
    int rc;

    if ((rc = sinkd_client_status_get(s->c, TIMEOUT_MS, &st)) != 0) {
        errmsg(s, "status", rc);
        return rc;
    }
    snprintf(r->backend, sizeof r->backend, "%s", st.backend);
    snprintf(r->device, sizeof r->device, "%s", st.device);
    if ((rc = session_run(s, WARM_TOKENS, &prefill_ms, &gen)) != 0)
        return rc;
    sinkd_client_reply_free(&gen);
    if ((rc = session_run(s, s->o->socket_tokens, &r->prefill_ms, &gen)) != 0)
        return rc;
    if (sinkd_map_u64(gen.map, "n_tokens", &n_tokens) != 0 ||
        sinkd_map_map(gen.map, "timings", &timings) != 0 ||
        sinkd_map_f64(timings, "decode_ms", &r->engine_decode_ms) != 0 ||
        sinkd_map_f64(timings, "step_ms", &r->engine_step_ms) != 0) {
        sinkd_client_reply_free(&gen);
        fprintf(stderr, "<3>" E2E_LOG "session.generate: reply without n_tokens or timings\n");
        return -EPROTO;
    }
    sinkd_client_reply_free(&gen);
    if (n_tokens != (uint64_t)s->n_t || s->n_t < 3) {
        fprintf(stderr, "<3>" E2E_LOG "session.generate: %llu tokens, %d events (want %d)\n",
                (unsigned long long)n_tokens, s->n_t, s->o->socket_tokens);
        return -EPROTO;
    }
    int32_t n = s->n_t;
    double *gap = malloc((size_t)(n - 1) * sizeof *gap);
    if (!gap)
        return -ENOMEM;
    for (int32_t i = 1; i < n; i++)
        gap[i - 1] = (s->t[i] - s->t[i - 1]) * 1e3;
    r->prompt = s->o->prompt;
    r->tokens = n;
    r->engine_fwd_ms = r->engine_decode_ms / (n - 1);
    r->gap_ms_mean = (s->t[n - 1] - s->t[0]) * 1e3 / (n - 1);
    r->gap_ms_p90 = e2e_percentile(gap, (size_t)(n - 1), 90);
    r->gap_ms_med = e2e_percentile(gap, (size_t)(n - 1), 50);
    r->gap_ms_max = gap[n - 2];
    r->ratio_mean = r->gap_ms_mean / r->engine_step_ms;
    free(gap);
    return 0;
}

/* The daemon's config: the model, the backend, a pool for two sessions. */
static int daemon_config(const e2e_opts *o, char *buf, size_t size)
{
    char path[PATH_MAX], err[256] = "";
    sinkd_model_hparams hp;
    sinkd_gguf *g = NULL;
    int rc;

    if (!realpath(o->model, path)) {
        rc = -errno;
        fprintf(stderr, "<3>" E2E_LOG "%s: %s\n", o->model, strerror(errno));
        return rc;
    }
    rc = sinkd_gguf_open(path, &g, err, sizeof err);
    if (rc == 0)
        rc = sinkd_model_hparams_read(g, &hp, err, sizeof err);
    sinkd_gguf_close(g);
    if (rc != 0) {
        fprintf(stderr, "<3>" E2E_LOG "%s: %s\n", path, err[0] ? err : strerror(-rc));
        return rc;
    }
    sinkd_dtype kvd = e2e_kv_dtype(o, o->backend);
    uint64_t pool = e2e_kv_pool_bytes(&hp, kvd, o->page_tokens, 2,
                                      o->prompt + o->socket_tokens + WARM_TOKENS, NULL);
    int n = snprintf(buf, size,
                     "[server]\nlog_level = notice\n"
                     "[engine]\nbackend = %s\nthreads = %d\nkv_pool_bytes = %llu\n"
                     "kv_dtype = %s\npage_tokens = %d\nprefill_chunk = %d\n"
                     "[model \"bench\"]\npath = %s\n",
                     o->backend, o->threads, (unsigned long long)pool, sinkd_dtype_name(kvd),
                     o->page_tokens, o->chunk, path);
    return n > 0 && (size_t)n < size ? 0 : -ENAMETOOLONG;
}

int e2e_socket_run(const e2e_opts *o, e2e_socket_result *r)
{
    sinkd_testd d = SINKD_TESTD_INIT;
    sock_run s = { .o = o };
    const char *path = o->socket_path;
    char config[PATH_MAX + 512];
    int rc = 0;

    memset(r, 0, sizeof *r);
    if (!path) {
        if ((rc = daemon_config(o, config, sizeof config)) != 0)
            return rc;
        if ((rc = sinkd_testd_start(&d, config, NULL)) != 0) {
            fprintf(stderr, "<3>" E2E_LOG "cannot start sinkd: %s\n", strerror(-rc));
            sinkd_testd_free(&d);
            return rc;
        }
        path = d.socket_path;
        r->started = true;
    }
    s.t = malloc((size_t)(o->socket_tokens > WARM_TOKENS ? o->socket_tokens : WARM_TOKENS) *
                 sizeof *s.t);
    if (!s.t)
        rc = -ENOMEM;
    if (rc == 0 && (rc = sinkd_client_connect(path, 30000, &s.c)) != 0)
        fprintf(stderr, "<3>" E2E_LOG "connect %s: %s\n", path, sinkd_client_strerror(rc));
    if (rc == 0)
        rc = measure(&s, r);
    sinkd_client_close(s.c);
    free(s.t);
    if (d.pid > 0) {
        int st = sinkd_testd_stop(&d);
        if (st != 0 || rc != 0) {
            char *log = sinkd_testd_log(&d);
            fprintf(stderr, "<3>" E2E_LOG "sinkd exited with %d; its log:\n%s", st,
                    log ? log : "(unreadable)\n");
            free(log);
        }
    }
    sinkd_testd_free(&d);
    return rc;
}
