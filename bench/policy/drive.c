/*
 * The engine in process, driven through engine.h as the daemon's op
 * handlers drive it: jobs in, frames out through the emit callback. The
 * callback runs on the engine thread; it stamps each frame with the time it
 * left (so that a step's period is measured where the engine works, not
 * where a client wakes up), keeps replies for their waiter and counts token
 * events into the generation's stamp array.
 *
 * One step for every generation: the engine runs all queued jobs, then one
 * decode step, then takes the queue again. Generate jobs submitted one by
 * one could straddle a turn (the first session would step alone). So the
 * bench holds the engine thread inside the reply of a session.stats request,
 * queues every generate job, and releases it: they are all in its next turn.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_policy.h"
#include "proto.h"

#define DRIVE_LOG "sinkd-bench-policy: "
#define REPLY_TIMEOUT_S 1800 /* a 32K-token prompt on the CPU backend is slow */

typedef struct reply {
    struct reply *next;
    uint64_t id;
    double t;                   /* left the engine thread */
    uint8_t *buf;
    sinkd_msg msg;
} reply;

struct pol_drive {
    sinkd_engine *e;
    uint64_t next_id;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    reply *replies;             /* under mu */
    /* the hold: the engine thread waits in the reply of hold_id */
    uint64_t hold_id;
    bool holding, held;
    /* the generation being stamped */
    const uint64_t *gen_ids;
    int gen_k;
    int32_t gen_n;
    double *stamps;
    int32_t *counts;
};

double pol_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static bool is_token_event(const sinkd_msg *m)
{
    const char *ev;
    size_t n;

    return sinkd_map_str(&m->root, "ev", &ev, &n) == 0 && n == 5 && !memcmp(ev, "token", 5);
}

static int collect(void *ud, uint64_t conn_id, uint8_t *buf, size_t len)
{
    pol_drive *d = ud;
    double t = pol_now_s();
    reply *r = calloc(1, sizeof *r);
    uint64_t id = 0;

    (void)conn_id;
    if (!buf) { /* a connection's finish: the bench half-closes nothing */
        free(r);
        return 0;
    }
    if (!r || len < 4 || sinkd_msg_decode(buf + 4, len - 4, &r->msg, NULL) != 0) {
        fprintf(stderr, "<3>" DRIVE_LOG "an engine frame did not decode\n");
        free(r);
        free(buf);
        return -EINVAL;
    }
    sinkd_map_u64(&r->msg.root, "id", &id);
    pthread_mutex_lock(&d->mu);
    if (sinkd_map_get(&r->msg.root, "ev")) {
        for (int i = 0; is_token_event(&r->msg) && i < d->gen_k; i++)
            if (d->gen_ids[i] == id && d->counts[i] < d->gen_n)
                d->stamps[(size_t)i * d->gen_n + d->counts[i]++] = t;
        pthread_mutex_unlock(&d->mu);
        sinkd_msg_free(&r->msg);
        free(r);
        free(buf);
        return 0;
    }
    r->id = id;
    r->t = t;
    r->buf = buf;
    r->next = d->replies;
    d->replies = r;
    pthread_cond_broadcast(&d->cv);
    if (d->holding && id == d->hold_id) {
        d->held = true;
        pthread_cond_broadcast(&d->cv);
        while (d->holding)
            pthread_cond_wait(&d->cv, &d->mu);
    }
    pthread_mutex_unlock(&d->mu);
    return 0;
}

static void reply_free(reply *r)
{
    if (!r)
        return;
    sinkd_msg_free(&r->msg);
    free(r->buf);
    free(r);
}

/* The reply of @id (the caller frees it), or NULL after the timeout. */
static reply *wait_reply(pol_drive *d, uint64_t id)
{
    struct timespec dl;
    reply *got = NULL;

    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += REPLY_TIMEOUT_S;
    pthread_mutex_lock(&d->mu);
    while (!got) {
        for (reply **pp = &d->replies; *pp; pp = &(*pp)->next) {
            if ((*pp)->id == id) {
                got = *pp;
                *pp = got->next;
                break;
            }
        }
        if (!got && pthread_cond_timedwait(&d->cv, &d->mu, &dl) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&d->mu);
    if (!got)
        fprintf(stderr, "<3>" DRIVE_LOG "no reply to request %llu in %d s\n",
                (unsigned long long)id, REPLY_TIMEOUT_S);
    return got;
}

/* 0 for an ok reply; the message of an error reply into @err, -EIO. */
static int reply_status(const reply *r, char *err)
{
    const msgpack_object *e;
    const char *m = "", *c = "";
    size_t mn = 0, cn = 0;

    if (!r) {
        if (err)
            snprintf(err, 256, "no reply");
        return -ETIMEDOUT;
    }
    if (!(e = sinkd_map_get(&r->msg.root, "error")))
        return 0;
    sinkd_map_str(e, "code", &c, &cn);
    sinkd_map_str(e, "message", &m, &mn);
    if (err)
        snprintf(err, 256, "%.*s: %.*s", (int)cn, c, (int)mn, m);
    return -EIO;
}

static sinkd_job *job_new(pol_drive *d, sinkd_job_kind kind, uint64_t session)
{
    sinkd_job *j = sinkd_job_new(kind, 1, ++d->next_id, 1000, false);

    if (j)
        j->session = session;
    return j;
}

/* Submit @j (NULL: out of memory) and wait for its reply: the status, the
 * reply in *@out when given (else freed), its time from submit in *@ms. */
static int round_trip(pol_drive *d, sinkd_job *j, reply **out, double *ms, char *err)
{
    if (!j) {
        if (err)
            snprintf(err, 256, "out of memory");
        return -ENOMEM;
    }
    uint64_t id = j->id;
    double t0 = pol_now_s();
    sinkd_engine_submit(d->e, j);
    reply *r = wait_reply(d, id);
    int rc = reply_status(r, err);
    if (ms && r)
        *ms = (r->t - t0) * 1e3;
    if (out && rc == 0)
        *out = r;
    else
        reply_free(r);
    return rc;
}

int pol_drive_open(const pol_opts *o, uint64_t pool_bytes, uint8_t kv_dtype, pol_drive **out)
{
    const char *names[] = {"bench"}, *paths[] = {o->model}, *dirs[1];
    sinkd_engine_config c = {0};
    char err[512] = "", dir[PATH_MAX];
    pol_drive *d;
    int rc;

    /* the registry takes absolute directories only */
    if (!realpath(o->plugin_dir, dir)) {
        rc = -errno;
        fprintf(stderr, "<3>" DRIVE_LOG "plugin directory %s: %s\n", o->plugin_dir, strerror(-rc));
        return rc;
    }
    dirs[0] = dir;
    if (!(d = calloc(1, sizeof *d)))
        return -ENOMEM;
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    c.backend = o->backend;
    c.threads = o->threads;
    c.kv = (sinkd_kv_config)SINKD_KV_CONFIG_INIT;
    c.kv.pool_bytes = pool_bytes;
    c.kv.dtype = kv_dtype;
    c.prefill_chunk = o->chunk;
    c.max_batch = o->batch;
    c.model_names = names;
    c.model_paths = paths;
    c.n_models = 1;
    c.plugin_dirs = dirs;
    c.n_plugin_dirs = 1;
    if ((rc = sinkd_engine_open(&c, &d->e, err, sizeof err)) < 0) {
        fprintf(stderr, "<3>" DRIVE_LOG "engine: %s\n", err[0] ? err : strerror(-rc));
        pol_drive_close(d);
        return rc;
    }
    if ((rc = sinkd_engine_start(d->e, collect, d)) < 0) {
        fprintf(stderr, "<3>" DRIVE_LOG "engine thread: %s\n", strerror(-rc));
        pol_drive_close(d);
        return rc;
    }
    *out = d;
    return 0;
}

void pol_drive_close(pol_drive *d)
{
    if (!d)
        return;
    sinkd_engine_close(d->e);
    while (d->replies) {
        reply *r = d->replies;
        d->replies = r->next;
        reply_free(r);
    }
    pthread_cond_destroy(&d->cv);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

sinkd_engine *pol_drive_engine(pol_drive *d)
{
    return d->e;
}

int pol_session_open(pol_drive *d, const char *policy, const char *params, uint64_t *session,
                     char *err)
{
    sinkd_job *j = job_new(d, SINKD_JOB_SESSION_OPEN, 0);
    reply *r = NULL;
    int rc;

    if (j && (!(j->policy = strdup(policy)) || (params && !(j->params = strdup(params))))) {
        sinkd_job_free(j);
        j = NULL;
    }
    if ((rc = round_trip(d, j, &r, NULL, err)) < 0)
        return rc;
    rc = sinkd_map_u64(&r->msg.root, "session", session) == 0 ? 0 : -EIO;
    reply_free(r);
    return rc;
}

int pol_session_close(pol_drive *d, uint64_t session)
{
    return round_trip(d, job_new(d, SINKD_JOB_SESSION_CLOSE, session), NULL, NULL, NULL);
}

int pol_session_policy(pol_drive *d, uint64_t session, const char *policy, const char *params,
                       double *ms, char *err)
{
    sinkd_job *j = job_new(d, SINKD_JOB_SESSION_POLICY, session);

    if (j && (!(j->policy = strdup(policy)) || (params && !(j->params = strdup(params))))) {
        sinkd_job_free(j);
        j = NULL;
    }
    return round_trip(d, j, NULL, ms, err);
}

int pol_session_append(pol_drive *d, uint64_t session, const int32_t *ids, size_t n, double *ms,
                       char *err)
{
    sinkd_job *j = job_new(d, SINKD_JOB_SESSION_APPEND, session);

    if (j && !(j->ids = malloc(n * sizeof *ids))) {
        sinkd_job_free(j);
        j = NULL;
    }
    if (j) {
        memcpy(j->ids, ids, n * sizeof *ids);
        j->n_ids = n;
        j->bos_set = true; /* bos = false: the ids are the whole prompt */
    }
    return round_trip(d, j, NULL, ms, err);
}

int pol_session_stats(pol_drive *d, uint64_t session, pol_stats *st)
{
    reply *r = NULL;
    const msgpack_object_array *layers;
    const char *fb;
    size_t fbn;
    int rc;

    memset(st, 0, sizeof *st);
    if ((rc = round_trip(d, job_new(d, SINKD_JOB_SESSION_STATS, session), &r, NULL, NULL)) < 0)
        return rc;
    const msgpack_object *m = &r->msg.root;
    if (sinkd_map_u64(m, "tokens", &st->tokens) || sinkd_map_u64(m, "pages", &st->pages) ||
        sinkd_map_u64(m, "bytes", &st->bytes) || sinkd_map_u64(m, "evictions", &st->evictions) ||
        sinkd_map_u64(m, "evicted_tokens", &st->evicted_tokens) ||
        sinkd_map_array(m, "layers", &layers) || layers->size == 0) {
        reply_free(r);
        return -EIO;
    }
    double sum = 0;
    for (uint32_t l = 0; l < layers->size; l++) {
        double v = 0;
        sinkd_map_f64(&layers->ptr[l], "len_mean", &v);
        sum += v;
    }
    st->len_mean = sum / layers->size;
    if (sinkd_map_str(m, "fallback", &fb, &fbn) == 0)
        snprintf(st->fallback, sizeof st->fallback, "%.*s", (int)fbn, fb);
    reply_free(r);
    return 0;
}

int pol_generate(pol_drive *d, const uint64_t *sessions, int k, int32_t n, double *stamps,
                 double *decode_ms, char *err)
{
    uint64_t *ids = calloc((size_t)k, sizeof *ids);
    int32_t *counts = calloc((size_t)k, sizeof *counts);
    sinkd_job **jobs = calloc((size_t)k, sizeof *jobs);
    int rc = 0;

    if (err)
        err[0] = '\0';
    for (int i = 0; ids && counts && jobs && i < k; i++) {
        if (!(jobs[i] = job_new(d, SINKD_JOB_SESSION_GENERATE, sessions[i])))
            break;
        jobs[i]->gen.max_tokens = n;
        jobs[i]->gen.sp = (sinkd_sample_params)SINKD_SAMPLE_PARAMS_INIT; /* greedy */
        jobs[i]->gen.stream = true;
        jobs[i]->gen.ignore_eos = true;
        ids[i] = jobs[i]->id;
    }
    sinkd_job *hold = jobs && jobs[k - 1] ? job_new(d, SINKD_JOB_SESSION_STATS, sessions[0]) : NULL;
    if (!hold) {
        for (int i = 0; jobs && i < k; i++)
            sinkd_job_free(jobs[i]);
        free(ids);
        free(counts);
        free(jobs);
        return -ENOMEM;
    }
    uint64_t hold_id = hold->id;
    pthread_mutex_lock(&d->mu);
    d->gen_ids = ids;
    d->gen_k = k;
    d->gen_n = n;
    d->stamps = stamps;
    d->counts = counts;
    d->hold_id = hold_id;
    d->holding = true;
    d->held = false;
    pthread_mutex_unlock(&d->mu);
    sinkd_engine_submit(d->e, hold);
    pthread_mutex_lock(&d->mu);
    while (!d->held)
        pthread_cond_wait(&d->cv, &d->mu);
    pthread_mutex_unlock(&d->mu);
    for (int i = 0; i < k; i++)
        sinkd_engine_submit(d->e, jobs[i]);
    pthread_mutex_lock(&d->mu);
    d->holding = false;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    reply_free(wait_reply(d, hold_id));
    for (int i = 0; i < k; i++) {
        char why[256];
        reply *r = wait_reply(d, ids[i]);
        int st = reply_status(r, why);
        uint64_t got = 0;
        const msgpack_object *tm = r ? sinkd_map_get(&r->msg.root, "timings") : NULL;
        decode_ms[i] = 0;
        if (tm)
            sinkd_map_f64(tm, "decode_ms", &decode_ms[i]);
        if (st == 0 && (sinkd_map_u64(&r->msg.root, "n_tokens", &got) || got != (uint64_t)n ||
                        counts[i] != n)) {
            snprintf(why, sizeof why, "session %llu: %llu tokens in the reply, %d events, asked %d",
                     (unsigned long long)sessions[i], (unsigned long long)got, counts[i], n);
            st = -EIO;
        }
        if (st < 0 && rc == 0) {
            rc = st;
            if (err)
                snprintf(err, 256, "%s", why);
        }
        reply_free(r);
    }
    pthread_mutex_lock(&d->mu);
    d->gen_k = 0;
    d->gen_ids = NULL;
    d->stamps = NULL;
    d->counts = NULL;
    pthread_mutex_unlock(&d->mu);
    free(ids);
    free(counts);
    free(jobs);
    return rc;
}
