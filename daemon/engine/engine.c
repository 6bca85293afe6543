/* The engine thread: lifecycle, the job queue, the main loop and the
 * helpers that build answers on the engine thread. */
#include "engine_internal.h"
#include "log.h"
#include "snapshot.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

uint64_t eng_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- jobs ------------------------------------------------------------------ */

sinkd_job *sinkd_job_new(sinkd_job_kind kind, uint64_t conn_id, uint64_t id, uint32_t uid,
                         bool admin)
{
    sinkd_job *j = calloc(1, sizeof *j);

    if (!j)
        return NULL;
    j->kind = kind;
    j->conn_id = conn_id;
    j->id = id;
    j->uid = uid;
    j->admin = admin;
    return j;
}

void sinkd_job_free(sinkd_job *j)
{
    if (!j)
        return;
    free(j->model);
    free(j->policy);
    free(j->params);
    free(j->text);
    free(j->ids);
    free(j->page_off);
    free(j->gen.stop_ids);
    for (size_t i = 0; i < j->gen.n_stop; i++)
        free(j->gen.stop[i]);
    free(j->gen.stop);
    sinkd_shm_unref(j->k.r);
    sinkd_shm_unref(j->v.r);
    sinkd_shm_unref(j->pos.r);
    sinkd_shm_unref(j->q.r);
    sinkd_shm_unref(j->out.r);
    sinkd_shm_unref(j->scores.r);
    free(j);
}

/* ---- answers ---------------------------------------------------------------- */

static void eng__emit(sinkd_engine *e, uint64_t conn_id, uint8_t *frame, size_t len)
{
    if (!frame) {
        sinkd_log(SINKD_LOG_ERR, "engine: out of memory building an answer for conn %llu",
                  (unsigned long long)conn_id);
        return;
    }
    e->emit(e->emit_ud, conn_id, frame, len);
}

static void eng__verror(sinkd_engine *e, const sinkd_job *j, sinkd_errcode code,
                        const char *fmt, va_list ap)
{
    char msg[512];
    uint8_t *frame;
    size_t len = 0;

    vsnprintf(msg, sizeof msg, fmt, ap);
    frame = sinkd_frame_error(j->id, true, code, msg, &len);
    eng__emit(e, j->conn_id, frame, len);
}

void eng_conn_finish(sinkd_engine *e, uint64_t conn_id)
{
    if (e->emit)
        e->emit(e->emit_ud, conn_id, NULL, 0);
}

void eng_error(sinkd_engine *e, const sinkd_job *j, sinkd_errcode code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    eng__verror(e, j, code, fmt, ap);
    va_end(ap);
}

const char *eng_quota_reason(const sinkd_engine *e)
{
    return sinkd_kv_last_quota(e->kv) == SINKD_KV_QUOTA_UID
               ? "[quota] pages_per_uid reached: this user's sessions hold all the KV pages it "
                 "allows"
               : "the session's KV budget is full (the budget it opened with, or [quota] "
                 "session_tokens)";
}

void eng_error_errno(sinkd_engine *e, const sinkd_job *j, int rc, const char *what)
{
    switch (rc) {
    case -EDQUOT:
        eng_error(e, j, SINKD_ERR_QUOTA_EXCEEDED, "%s: %s", what, eng_quota_reason(e));
        break;
    case -ENOMEM:
        eng_error(e, j, SINKD_ERR_NO_MEMORY, "%s: KV pool or memory exhausted", what);
        break;
    case -ERANGE:
        eng_error(e, j, SINKD_ERR_BAD_SHM, "%s: range outside the registered region", what);
        break;
    case -EFAULT:
        eng_error(e, j, SINKD_ERR_BAD_SHM, "%s: the region shrank under the copy", what);
        break;
    case -EINVAL:
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT, "%s: invalid argument", what);
        break;
    case -ECANCELED:
        eng_error(e, j, SINKD_ERR_CANCELLED, "%s: cancelled; its tokens were taken back out", what);
        break;
    default:
        eng_error(e, j, SINKD_ERR_INTERNAL, "%s: %s", what, strerror(-rc));
        break;
    }
}

int eng_begin_reply(sinkd_fw *w, const sinkd_job *j, uint32_t extra)
{
    int rc = sinkd_fw_init(w);

    if (rc == 0)
        sinkd_pack_reply_head(&w->pk, j->id, extra);
    return rc;
}

int eng_begin_event(sinkd_fw *w, const sinkd_job *j, const char *ev, uint32_t extra)
{
    int rc = sinkd_fw_init(w);

    if (rc == 0)
        sinkd_pack_event_head(&w->pk, j->id, ev, extra);
    return rc;
}

void eng_send(sinkd_engine *e, const sinkd_job *j, sinkd_fw *w, bool reply)
{
    long n = sinkd_fw_finish(w, e->max_frame);
    uint8_t *frame;
    size_t len;

    if (n < 0) {
        sinkd_fw_free(w);
        if (reply)
            eng_error(e, j, n == -EMSGSIZE ? SINKD_ERR_INTERNAL : SINKD_ERR_NO_MEMORY,
                      "reply does not fit max_frame");
        return;
    }
    frame = sinkd_fw_release(w, &len);
    sinkd_fw_free(w);
    /* status read after this reply sees what the request did */
    if (reply)
        eng_update_memory(e);
    eng__emit(e, j->conn_id, frame, len);
}

void eng_reply_empty(sinkd_engine *e, const sinkd_job *j)
{
    sinkd_fw w;

    if (eng_begin_reply(&w, j, 0) == 0)
        eng_send(e, j, &w, true);
}

/* ---- scratch ---------------------------------------------------------------- */

int eng_dev_reserve(sinkd_engine *e, int slot, size_t bytes)
{
    void *p;
    int rc;

    if (e->dcap[slot] >= bytes)
        return 0;
    bytes = bytes < 4096 ? 4096 : bytes + bytes / 2;
    if ((rc = e->be->ops->alloc(e->be, &p, bytes)) < 0)
        return rc;
    if (e->dbuf[slot])
        e->be->ops->free(e->be, e->dbuf[slot]);
    e->dbuf[slot] = p;
    e->dcap[slot] = bytes;
    return 0;
}

int eng_host_reserve(sinkd_engine *e, int slot, size_t floats)
{
    float *p;

    if (e->hcap[slot] >= floats)
        return 0;
    floats = floats < 1024 ? 1024 : floats + floats / 2;
    p = realloc(e->hbuf[slot], floats * sizeof *p);
    if (!p)
        return -ENOMEM;
    e->hbuf[slot] = p;
    e->hcap[slot] = floats;
    return 0;
}

void eng_update_memory(sinkd_engine *e)
{
    sinkd_kv_stats st;

    sinkd_kv_stats_get(e->kv, &st);
    atomic_store_explicit(&e->ctr.kv_pool_bytes, st.bytes_total, memory_order_relaxed);
    atomic_store_explicit(&e->ctr.kv_used_bytes, st.bytes_used, memory_order_relaxed);
    atomic_store_explicit(&e->ctr.sessions, e->n_sess, memory_order_relaxed);
}

/* ---- the thread ---------------------------------------------------------------- */

static void eng__run_job(sinkd_engine *e, sinkd_job *j)
{
    /* A generate job lives on in its session until the generation ends: its
     * handler owns it. Every other job ends here. */
    switch (j->kind) {
    case SINKD_JOB_SESSION_OPEN: eng_job_session_open(e, j); break;
    case SINKD_JOB_SESSION_CLOSE: eng_job_session_close(e, j); break;
    case SINKD_JOB_SESSION_LIST: eng_job_session_list(e, j); break;
    case SINKD_JOB_SESSION_STATS: eng_job_session_stats(e, j); break;
    case SINKD_JOB_SESSION_POLICY: eng_job_session_policy(e, j); break;
    case SINKD_JOB_SESSION_APPEND: eng_job_append(e, j); break;
    case SINKD_JOB_SESSION_GENERATE: eng_job_generate(e, j); return; /* owns j */
    case SINKD_JOB_SESSION_CANCEL: eng_job_cancel(e, j); break;
    case SINKD_JOB_SESSION_LOGITS: eng_job_logits(e, j); break;
    case SINKD_JOB_KV_APPEND: eng_job_kv_append(e, j); break;
    case SINKD_JOB_ATTEND: eng_job_attend(e, j); break;
    case SINKD_JOB_TOKENIZE: eng_job_tokenize(e, j); break;
    case SINKD_JOB_DETOKENIZE: eng_job_detokenize(e, j); break;
    case SINKD_JOB_POLICY_LIST:
    case SINKD_JOB_POLICY_LOAD:
    case SINKD_JOB_POLICY_RELOAD:
    case SINKD_JOB_POLICY_UNLOAD: eng_job_policy(e, j); break;
    case SINKD_JOB_CONN_CLOSED: eng_job_conn_closed(e, j); break;
    case SINKD_JOB_CONN_EOF: eng_job_conn_eof(e, j); break;
    case SINKD_JOB_DEBUG_STALL: eng_job_debug_stall(e, j); break;
    case SINKD_JOB_SESSION_ATTACH:
    case SINKD_JOB_SESSION_SAVE:
    case SINKD_JOB_SESSION_RESTORE:
    case SINKD_JOB_SESSION_FORGET: eng_job_persist(e, j); break;
    default: eng_error(e, j, SINKD_ERR_INTERNAL, "unknown job %d", (int)j->kind); break;
    }
    sinkd_job_free(j);
}

void eng_beat(sinkd_engine *e, bool busy)
{
    atomic_store_explicit(&e->ctr.heartbeat_ns, eng_now_ns(), memory_order_relaxed);
    atomic_store_explicit(&e->ctr.busy, busy, memory_order_relaxed);
}

/* A job about a connection, not a request: nobody waits for an answer. */
static bool eng__unanswered(const sinkd_job *j)
{
    return j->kind == SINKD_JOB_CONN_CLOSED || j->kind == SINKD_JOB_CONN_EOF;
}

/* Whether @j must run after the appends waiting in the batch: anything but
 * a job independent of their sessions (one naming another session, or one
 * that names none and reads no session's state). */
static bool eng__after_batch(const sinkd_engine *e, const sinkd_job *j, int32_t nb)
{
    switch (j->kind) {
    case SINKD_JOB_TOKENIZE:
    case SINKD_JOB_DETOKENIZE:
    case SINKD_JOB_SESSION_OPEN:
        return false;
    case SINKD_JOB_SESSION_CLOSE:
    case SINKD_JOB_SESSION_STATS:
    case SINKD_JOB_SESSION_POLICY:
    case SINKD_JOB_SESSION_APPEND:
    case SINKD_JOB_SESSION_GENERATE:
    case SINKD_JOB_SESSION_CANCEL:
    case SINKD_JOB_SESSION_LOGITS:
    case SINKD_JOB_KV_APPEND:
    case SINKD_JOB_ATTEND:
        for (int32_t i = 0; i < nb; i++)
            if (e->ab_jobs[i]->session == j->session)
                return true;
        return false;
    default:
        return true;
    }
}

static void eng__run_batch(sinkd_engine *e, int32_t nb)
{
    eng_append_batch(e, e->ab_sess, e->ab_jobs, nb);
    for (int32_t i = 0; i < nb; i++)
        sinkd_job_free(e->ab_jobs[i]);
}

/* Run the jobs of @list in order, except that one-token appends of
 * distinct sessions wait to run together (one decode call per compatible
 * group: clients streaming a token at a time share the GPU as generations
 * do) until a job that depends on them, or the end of the list. */
static void eng__run_jobs(sinkd_engine *e, sinkd_job *list, bool stop)
{
    int32_t nb = 0;

    /* run_rest is the list itself: a long prompt takes jobs out of it
     * (eng_run_waiting) */
    e->run_rest = list;
    while (e->run_rest) {
        sinkd_job *j = e->run_rest;
        e->run_rest = j->next;
        j->next = NULL;
        if (stop && !eng__unanswered(j)) {
            eng_error(e, j, SINKD_ERR_SHUTTING_DOWN, "sinkd is shutting down");
            sinkd_job_free(j);
            continue;
        }
        if (nb > 0 && (nb == e->max_batch || eng__after_batch(e, j, nb))) {
            eng__run_batch(e, nb);
            nb = 0;
        }
        eng_session *s = eng_append_single(e, j);
        if (s) {
            e->ab_sess[nb] = s;
            e->ab_jobs[nb++] = j;
            continue;
        }
        /* a prompt runs for long and lets waiting jobs run between its
         * chunks (eng_run_waiting): the appends that came before it first */
        if (nb > 0 && j->kind == SINKD_JOB_SESSION_APPEND) {
            eng__run_batch(e, nb);
            nb = 0;
        }
        eng__run_job(e, j);
    }
    e->run_rest = NULL;
    if (nb > 0)
        eng__run_batch(e, nb);
}

static void *eng__main(void *arg)
{
    sinkd_engine *e = arg;
    bool stop = false;

    while (!stop) {
        sinkd_job *list;
        bool gen = atomic_load_explicit(&e->ctr.generating, memory_order_relaxed) > 0;

        pthread_mutex_lock(&e->mu);
        while (!e->head && !e->stopping && !gen)
            pthread_cond_wait(&e->cv, &e->mu);
        list = e->head;
        e->head = e->tail = NULL;
        stop = e->stopping;
        pthread_mutex_unlock(&e->mu);

        eng_beat(e, true);
        eng__run_jobs(e, list, stop);
        if (!stop)
            eng_step(e);
        eng_update_memory(e);
        eng_beat(e, false);
    }
    /* the server flushes these before it closes the connections */
    for (size_t i = 0; i < e->n_sess; i++)
        if (e->sess[i]->gen)
            eng_gen_finish(e, e->sess[i], "cancelled", false);
    eng_persist_save_all(e);
    return NULL;
}

int sinkd_engine_start(sinkd_engine *e, sinkd_engine_emit_fn emit, void *ud)
{
    int rc;

    if (!e || !emit || e->started)
        return -EINVAL;
    e->emit = emit;
    e->emit_ud = ud;
    eng_beat(e, false);
    rc = pthread_create(&e->thr, NULL, eng__main, e);
    if (rc)
        return -rc;
    e->started = true;
    return 0;
}

void sinkd_engine_submit(sinkd_engine *e, sinkd_job *j)
{
    bool refused;

    pthread_mutex_lock(&e->mu);
    refused = e->stopping || !e->started;
    if (!refused) {
        if (e->tail)
            e->tail->next = j;
        else
            e->head = j;
        e->tail = j;
        pthread_cond_signal(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
    if (refused) {
        if (!eng__unanswered(j) && e->emit)
            eng_error(e, j, SINKD_ERR_SHUTTING_DOWN, "sinkd is shutting down");
        sinkd_job_free(j);
    }
}

/* Call @fn on every waiting job in the order they came: those this thread
 * took with the one it runs (run_rest), then the queue (under mu). Stops at
 * the first nonzero @fn returns, and returns it. */
static int eng__each_waiting(sinkd_engine *e, int (*fn)(sinkd_engine *, sinkd_job *, void *),
                             void *ctx)
{
    int rc = 0;

    for (sinkd_job *w = e->run_rest; w && !rc; w = w->next)
        rc = fn(e, w, ctx);
    pthread_mutex_lock(&e->mu);
    for (sinkd_job *w = e->head; w && !rc; w = w->next)
        rc = fn(e, w, ctx);
    pthread_mutex_unlock(&e->mu);
    return rc;
}

typedef struct eng_prefill_scan {
    const eng_session *s;
    const sinkd_job *req;
    bool gen_waits;               /* a generate of s came before: a cancel is its */
} eng_prefill_scan;

/* What waiting job @w means for a prefill (eng_prefill_stop): 0 nothing, or
 * its error. A job of the session from another uid is none (the test
 * eng_session_lookup makes); a cancel stops one prompt (it is spent). */
static int eng__stops_prefill(sinkd_engine *e, sinkd_job *w, void *ctx)
{
    eng_prefill_scan *x = ctx;

    (void)e;
    if (w->kind == SINKD_JOB_CONN_CLOSED)
        return x->req && w->conn_id == x->req->conn_id ? -ECONNABORTED : 0;
    if (w->session != x->s->id || (w->uid != x->s->uid && !w->admin))
        return 0;
    if (w->kind == SINKD_JOB_SESSION_GENERATE)
        x->gen_waits = true;
    if (w->kind == SINKD_JOB_SESSION_CLOSE)
        return -ECANCELED;
    if (w->kind != SINKD_JOB_SESSION_CANCEL || x->gen_waits || w->spent)
        return 0;
    w->spent = true;
    return -ECANCELED;
}

int eng_prefill_stop(sinkd_engine *e, const eng_session *s, const sinkd_job *req)
{
    eng_prefill_scan x = { s, req, false };

    return eng__each_waiting(e, eng__stops_prefill, &x);
}

/* What waiting job @w means for the generations in progress (see
 * eng_gen_stops_waiting). */
static int eng__stops_gens(sinkd_engine *e, sinkd_job *w, void *ctx)
{
    (void)ctx;
    if (w->kind == SINKD_JOB_CONN_CLOSED) {
        for (size_t i = 0; i < e->n_sess; i++)
            if (e->sess[i]->gen && e->sess[i]->gen->conn_id == w->conn_id)
                e->sess[i]->cancel = true;
        return 0;
    }
    if (w->kind != SINKD_JOB_SESSION_CANCEL && w->kind != SINKD_JOB_SESSION_CLOSE)
        return 0;
    eng_session *s = eng_session_lookup(e, w);
    if (!s || !s->gen || (w->kind == SINKD_JOB_SESSION_CANCEL && w->spent))
        return 0;
    s->cancel = true;
    if (w->kind == SINKD_JOB_SESSION_CANCEL)
        w->spent = true;
    return 0;
}

void eng_gen_stops_waiting(sinkd_engine *e)
{
    eng__each_waiting(e, eng__stops_gens, NULL);
}

bool eng_stopping(sinkd_engine *e)
{
    pthread_mutex_lock(&e->mu);
    bool stopping = e->stopping;
    pthread_mutex_unlock(&e->mu);
    return stopping;
}

/* A job that may run inside a long prompt, ahead of the jobs before it:
 * it reads, or creates a session, and names no existing session (so it
 * cannot see an append still waiting, or disturb the prompt's session).
 * After a waiting job that changes which sessions or policies exist
 * (*@barrier), only the model's tokenizer is read. */
static bool eng__runs_early(const sinkd_job *j, bool *barrier)
{
    switch (j->kind) {
    case SINKD_JOB_TOKENIZE:
    case SINKD_JOB_DETOKENIZE:
        return true;
    case SINKD_JOB_SESSION_LIST:
    case SINKD_JOB_POLICY_LIST:
    case SINKD_JOB_SESSION_OPEN:
        return !*barrier;
    case SINKD_JOB_CONN_CLOSED:
    case SINKD_JOB_SESSION_CLOSE:
    case SINKD_JOB_SESSION_POLICY:
    case SINKD_JOB_SESSION_ATTACH:
    case SINKD_JOB_SESSION_RESTORE:
    case SINKD_JOB_POLICY_LOAD:
    case SINKD_JOB_POLICY_RELOAD:
    case SINKD_JOB_POLICY_UNLOAD:
        *barrier = true;
        return false;
    default:
        return false;
    }
}

#define ENG_EARLY_CONNS 32

typedef struct eng_early {
    uint64_t held[ENG_EARLY_CONNS]; /* connections whose answers must wait */
    int n_held;
    bool barrier;
} eng_early;

/* Whether @w may run now; otherwise its connection is held (answers of one
 * connection keep their order). A job that waits still counts as a
 * barrier, and a session.open that waits is one for later opens (they
 * could take the last of its uid's sessions). */
static bool eng__take_early(const sinkd_job *w, eng_early *x)
{
    bool early = eng__runs_early(w, &x->barrier);

    for (int i = 0; i < x->n_held; i++) {
        if (x->held[i] == w->conn_id) {
            x->barrier |= w->kind == SINKD_JOB_SESSION_OPEN;
            return false;
        }
    }
    if (early)
        return true;
    if (x->n_held < ENG_EARLY_CONNS)
        x->held[x->n_held++] = w->conn_id;
    return false;
}

/* Move the jobs of the list at *@head that may run now to the list whose
 * end is *@tail (advanced). Returns whether any moved. */
static bool eng__take_from(sinkd_job **head, eng_early *x, sinkd_job ***tail)
{
    bool took = false;

    for (sinkd_job **p = head; *p && x->n_held < ENG_EARLY_CONNS;) {
        if (eng__take_early(*p, x)) {
            **tail = *p;
            *p = (*p)->next;
            *tail = &(**tail)->next;
            took = true;
        } else {
            p = &(*p)->next;
        }
    }
    return took;
}

void eng_run_waiting(sinkd_engine *e, const sinkd_job *req)
{
    eng_early x = { .n_held = 0 };
    sinkd_job *take = NULL, **tail = &take;

    if (req)
        x.held[x.n_held++] = req->conn_id;
    eng__take_from(&e->run_rest, &x, &tail);
    pthread_mutex_lock(&e->mu);
    /* once stopping, what waits in the queue is answered shutting_down;
     * the queue's last job may be taken */
    if (!e->stopping && eng__take_from(&e->head, &x, &tail))
        for (e->tail = e->head; e->tail && e->tail->next;)
            e->tail = e->tail->next;
    pthread_mutex_unlock(&e->mu);
    *tail = NULL;
    while (take) {
        sinkd_job *j = take;
        take = j->next;
        j->next = NULL;
        eng__run_job(e, j);
    }
}

void sinkd_engine_stop(sinkd_engine *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&e->mu);
    e->stopping = true;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    if (e->started) {
        pthread_join(e->thr, NULL);
        e->started = false;
    }
}

bool sinkd_engine_alive(sinkd_engine *e, uint64_t stall_ns)
{
    uint64_t beat = atomic_load_explicit(&e->ctr.heartbeat_ns, memory_order_relaxed);

    if (!atomic_load_explicit(&e->ctr.busy, memory_order_relaxed))
        return true;
    return eng_now_ns() - beat < stall_ns;
}

/* ---- open / close --------------------------------------------------------- */

static void eng__policy_log(int prio, const char *line)
{
    sinkd_log(prio, "policy: %s", line);
}

static int eng__load_model(sinkd_engine *e, sinkd_engine_model *em, const char *name,
                           const char *path, int32_t max_tokens, bool graphs, char *err,
                           size_t errlen)
{
    sinkd_model_config mc = SINKD_MODEL_CONFIG_INIT;
    const sinkd_gguf_tensor *t;
    char why[256] = "";
    sinkd_gguf *g = NULL;
    uint64_t t0 = eng_now_ns();
    int rc;

    sinkd_log(SINKD_LOG_NOTICE, "model %s: loading %s", name, path);
    em->name = strdup(name);
    if (!em->name)
        return -ENOMEM;
    mc.max_tokens = max_tokens;
    rc = sinkd_gguf_open(path, &g, why, sizeof why);
    if (rc == 0)
        rc = sinkd_model_load(e->be, g, &mc, &em->model, why, sizeof why);
    if (rc == 0)
        rc = sinkd_tokenizer_load(g, &em->tok, why, sizeof why);
    if (rc < 0) {
        snprintf(err, errlen, "model %s (%s): %s", name, path, why[0] ? why : strerror(-rc));
        sinkd_gguf_close(g);
        return rc;
    }
    em->hp = sinkd_model_hparams_get(em->model);
    /* every id the model can sample must decode: a shorter vocabulary
     * would stream some tokens as nothing (a longer one only means ids
     * that session.append refuses) */
    if (sinkd_tokenizer_n_vocab(em->tok) < em->hp->n_vocab) {
        snprintf(err, errlen, "model %s (%s): the tokenizer has %d tokens, fewer than the %d "
                 "rows of the output", name, path, sinkd_tokenizer_n_vocab(em->tok),
                 em->hp->n_vocab);
        sinkd_gguf_close(g);
        return -EINVAL;
    }
    if (!graphs)
        sinkd_model_graphs_set(em->model, false);
    em->add_bos = sinkd_tokenizer_kind(em->tok) == SINKD_TOK_SPM;
    sinkd_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &em->add_bos);
    if (sinkd_tokenizer_bos(em->tok) < 0)
        em->add_bos = false;
    t = sinkd_gguf_tensor_find(g, "blk.0.attn_q.weight");
    snprintf(em->dtype, sizeof em->dtype, "%s", t ? sinkd_ggml_type_name(t->type) : "?");
    sinkd_gguf_close(g);
    if ((rc = sinkd_snap_fingerprint(path, &em->file_size, &em->file_hash)) < 0) {
        snprintf(err, errlen, "model %s (%s): %s", name, path, strerror(-rc));
        return rc;
    }
    sinkd_log(SINKD_LOG_NOTICE,
              "model %s: %s, %d layers, %d/%d heads, head_dim %d, vocab %d, %.1f MiB in %.2f s",
              name, em->hp->name[0] ? em->hp->name : "unnamed", em->hp->n_layers,
              em->hp->n_heads, em->hp->n_kv_heads, em->hp->head_dim, em->hp->n_vocab,
              (double)sinkd_model_weight_bytes(em->model) / 1048576.0,
              (double)(eng_now_ns() - t0) / 1e9);
    return 0;
}

int sinkd_engine_open(const sinkd_engine_config *cfg, sinkd_engine **out, char *err,
                      size_t errlen)
{
    sinkd_kv_config kc;
    sinkd_engine *e;
    int32_t hd_max = 0;
    int rc;

    if (!cfg || !out || cfg->max_batch < 1 || cfg->prefill_chunk < 1)
        return -EINVAL;
    e = calloc(1, sizeof *e);
    if (!e)
        return -ENOMEM;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    e->prefill_chunk = cfg->prefill_chunk;
    const char *defer_env = getenv("SINKD_SCORE_DEFER");
    e->score_defer = !cfg->score_defer_off && !(defer_env && strcmp(defer_env, "0") == 0);
    e->max_batch = cfg->max_batch;
    e->sessions_per_uid = cfg->sessions_per_uid;
    e->generations_per_uid = cfg->generations_per_uid;
    e->session_tokens = cfg->session_tokens;
    e->request_bytes = cfg->request_bytes;
    e->snapshots_per_uid = cfg->snapshots_per_uid;
    e->max_frame = cfg->max_frame ? cfg->max_frame : SINKD_FRAME_MAX_DEFAULT;
    e->next_sess = 1;
    *out = e;

    rc = sinkd_backend_open(cfg->backend ? cfg->backend : "auto", cfg->threads, &e->be);
    if (rc < 0) {
        snprintf(err, errlen, "backend %s: %s", cfg->backend ? cfg->backend : "auto",
                 strerror(-rc));
        goto fail;
    }
    e->models = calloc(cfg->n_models ? cfg->n_models : 1, sizeof *e->models);
    if (!e->models) {
        rc = -ENOMEM;
        goto fail;
    }
    for (size_t i = 0; i < cfg->n_models; i++) {
        int32_t mt = cfg->prefill_chunk > cfg->max_batch ? cfg->prefill_chunk : cfg->max_batch;
        rc = eng__load_model(e, &e->models[i], cfg->model_names[i], cfg->model_paths[i], mt,
                             !cfg->cuda_graphs_off, err, errlen);
        e->n_models += e->models[i].name != NULL;
        if (rc < 0)
            goto fail;
        if (e->models[i].hp->head_dim > hd_max)
            hd_max = e->models[i].hp->head_dim;
        if (e->models[i].hp->n_vocab > e->n_vocab_max)
            e->n_vocab_max = e->models[i].hp->n_vocab;
    }
    kc = cfg->kv;
    kc.head_dim_max = hd_max ? hd_max : 128;
    if (cfg->head_dim_max) {
        /* every page is this wide: wider than the models only for raw
         * sessions that need it */
        if (cfg->head_dim_max % 16 || cfg->head_dim_max < hd_max) {
            snprintf(err, errlen, "[engine] head_dim_max = %d: must be a multiple of 16 and at "
                     "least the largest model's head_dim (%d)", cfg->head_dim_max, hd_max);
            rc = -EINVAL;
            goto fail;
        }
        kc.head_dim_max = cfg->head_dim_max;
    }
    if (kc.dtype == SINKD_KV_DTYPE_AUTO_ENGINE)
        kc.dtype = strcmp(e->be->info.name, "cpu") == 0 ? SINKD_F32 : SINKD_F16;
    if (kc.dtype == SINKD_F32 && strcmp(e->be->info.name, "cpu") != 0) {
        /* refused here, not by the first KV op of the first session */
        snprintf(err, errlen, "[engine] kv_dtype = f32 needs the cpu backend; the %s backend keeps "
                 "K/V in f16 or bf16", e->be->info.name);
        rc = -EINVAL;
        goto fail;
    }
    rc = sinkd_kv_open(e->be, &kc, &e->kv);
    if (rc < 0) {
        snprintf(err, errlen, "KV pool: %s", strerror(-rc));
        goto fail;
    }
    e->page_tokens = kc.page_tokens;
    e->batch = calloc((size_t)e->max_batch, sizeof *e->batch);
    e->ab_sess = calloc((size_t)e->max_batch, sizeof *e->ab_sess);
    e->ab_jobs = calloc((size_t)e->max_batch, sizeof *e->ab_jobs);
    e->seqs = calloc((size_t)e->max_batch, sizeof *e->seqs);
    e->ids = calloc((size_t)e->max_batch, sizeof *e->ids);
    e->pos = calloc((size_t)e->max_batch, sizeof *e->pos);
    e->picked = calloc((size_t)e->max_batch, sizeof *e->picked);
    e->defer_spare = calloc((size_t)e->max_batch, sizeof *e->defer_spare);
    e->logits = calloc((size_t)e->max_batch * (size_t)(e->n_vocab_max ? e->n_vocab_max : 1),
                       sizeof *e->logits);
    if (!e->batch || !e->ab_sess || !e->ab_jobs || !e->seqs || !e->ids || !e->pos || !e->picked ||
        !e->defer_spare || !e->logits) {
        rc = -ENOMEM;
        goto fail;
    }
    sinkd_policy_set_log(eng__policy_log);
    rc = sinkd_policy_registry_open(cfg->plugin_dirs, cfg->n_plugin_dirs, &e->reg);
    if (rc < 0) {
        snprintf(err, errlen, "policy registry: %s", strerror(-rc));
        goto fail;
    }
    rc = sinkd_policy_scan(e->reg, NULL);
    if (rc < 0) {
        snprintf(err, errlen, "policy scan: %s", strerror(-rc));
        goto fail;
    }
    if (cfg->state_dir)
        eng_persist_open(e, cfg->state_dir);
    eng_update_memory(e);
    return 0;
fail:
    sinkd_engine_close(e);
    *out = NULL;
    return rc;
}

void sinkd_engine_close(sinkd_engine *e)
{
    if (!e)
        return;
    sinkd_engine_stop(e);
    while (e->head) {
        sinkd_job *j = e->head;
        e->head = j->next;
        sinkd_job_free(j);
    }
    while (e->n_sess)
        eng_session_destroy(e, e->sess[e->n_sess - 1]);
    eng_defer_spares_free(e);
    free(e->sess);
    eng_persist_close(e);
    sinkd_policy_registry_close(e->reg);
    for (int i = 0; i < ENG_DBUF; i++)
        if (e->dbuf[i])
            e->be->ops->free(e->be, e->dbuf[i]);
    for (int i = 0; i < ENG_DBUF; i++)
        free(e->hbuf[i]);
    free(e->rules);
    free(e->sc.pos);
    free(e->sc.score);
    free(e->sc.keep);
    free(e->sc.keep_off);
    free(e->sc.lanes);
    eng_sched_free(e);
    free(e->batch);
    free(e->ab_sess);
    free(e->ab_jobs);
    free(e->seqs);
    free(e->ids);
    free(e->pos);
    free(e->picked);
    free(e->logits);
    sinkd_kv_close(e->kv);
    for (size_t i = 0; i < e->n_models; i++) {
        sinkd_tokenizer_free(e->models[i].tok);
        sinkd_model_free(e->models[i].model);
        free(e->models[i].name);
    }
    free(e->models);
    sinkd_backend_close(e->be);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

/* ---- read-only views ----------------------------------------------------------- */

sinkd_engine_counters *sinkd_engine_counters_get(sinkd_engine *e)
{
    return &e->ctr;
}

const sinkd_backend_info *sinkd_engine_backend_info(const sinkd_engine *e)
{
    return &e->be->info;
}

size_t sinkd_engine_n_models(const sinkd_engine *e)
{
    return e->n_models;
}

const sinkd_engine_model *sinkd_engine_model_at(const sinkd_engine *e, size_t i)
{
    return i < e->n_models ? &e->models[i] : NULL;
}

const sinkd_engine_model *sinkd_engine_model_find(const sinkd_engine *e, const char *name,
                                                  size_t len)
{
    if (len == 0)
        return e->n_models ? &e->models[0] : NULL;
    for (size_t i = 0; i < e->n_models; i++)
        if (strlen(e->models[i].name) == len && !memcmp(e->models[i].name, name, len))
            return &e->models[i];
    return NULL;
}
