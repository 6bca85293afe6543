/*
 * sinkctl eval: streaming a token sequence through sessions of the daemon.
 *
 * Every step is what a long chat does: one session.append of one token,
 * then session.logits into a memfd registered once. Nothing is prefilled in
 * bulk for the policy under test, so its eviction runs exactly as it would
 * in a conversation.
 *
 * The references:
 *   full       a second session with policy `full`, in lock step.
 *   recompute  the sliding-window oracle: the logits after position t come
 *              from attention over the last C tokens, computed afresh with
 *              positions 0..C-1 (C = the model's context unless told). While
 *              t < C that context is the whole prefix, which a `full`
 *              session appended token by token already holds; from t = C on,
 *              each step opens a fresh session, prefills ids[t-C+1..t] and
 *              reads its last logits.
 * Requests are built with the generic sinkd_client_request.
 */
#include "sinkctl_eval.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EVAL_SAMPLE_EVERY_DEFAULT 64

/* The fields of one request; a field is sent when it is set. */
typedef struct eval_call {
    const char *model;        /* "model" */
    const char *policy;       /* "policy" */
    const char *params;       /* "params", when non-empty */
    const char *text;         /* "text" (text_len bytes) */
    size_t text_len;
    bool has_session;         /* "session" */
    uint64_t session;
    const int32_t *ids;       /* "ids" (n_ids) and "bos": false */
    size_t n_ids;
    bool has_shm;             /* "shm" and "offset" */
    uint64_t shm, offset;
} eval_call;

static uint32_t eval__nfields(const eval_call *a)
{
    return (a->model != NULL) + (a->policy != NULL) +
           (a->params != NULL && a->params[0] != '\0') + (a->text != NULL) +
           a->has_session + 2u * (a->ids != NULL) + 2u * a->has_shm;
}

static int eval__pack(msgpack_packer *pk, void *arg)
{
    const eval_call *a = arg;
    if (a->model != NULL)
        sinkd_pack_kv_str(pk, "model", a->model);
    if (a->policy != NULL)
        sinkd_pack_kv_str(pk, "policy", a->policy);
    if (a->params != NULL && a->params[0] != '\0')
        sinkd_pack_kv_str(pk, "params", a->params);
    if (a->text != NULL) {
        sinkd_pack_str(pk, "text");
        sinkd_pack_strn(pk, a->text, a->text_len);
    }
    if (a->has_session)
        sinkd_pack_kv_u64(pk, "session", a->session);
    if (a->ids != NULL) {
        sinkd_pack_str(pk, "ids");
        msgpack_pack_array(pk, (uint32_t)a->n_ids);
        for (size_t i = 0; i < a->n_ids; i++)
            msgpack_pack_int32(pk, a->ids[i]);
        sinkd_pack_kv_bool(pk, "bos", false);
    }
    if (a->has_shm) {
        sinkd_pack_kv_u64(pk, "shm", a->shm);
        sinkd_pack_kv_u64(pk, "offset", a->offset);
    }
    return 0;
}

/* policy_fallback events of an append: keep the reason for the report. */
static void eval__on_event(void *arg, const char *ev, size_t ev_len, const msgpack_object *event)
{
    sinkctl_eval_report *r = arg;
    const char *why;
    size_t len;
    if (ev_len != strlen("policy_fallback") || memcmp(ev, "policy_fallback", ev_len) != 0 ||
        r->fallback[0] != '\0')
        return;
    if (sinkd_map_str(event, "reason", &why, &len) != 0) {
        why = "(no reason given)";
        len = strlen(why);
    }
    snprintf(r->fallback, sizeof(r->fallback), "%.*s", (int)len, why);
}

static int eval__request(sinkd_client *c, const char *op, eval_call *a, int timeout_ms,
                         sinkctl_eval_report *events, sinkd_client_reply *rep)
{
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.op = op;
    req.nfields = eval__nfields(a);
    req.pack = eval__pack;
    req.pack_arg = a;
    req.timeout_ms = timeout_ms;
    if (events != NULL) {
        req.on_event = eval__on_event;
        req.event_arg = events;
    }
    return sinkd_client_request(c, &req, rep);
}

static void eval__copy(char *dst, size_t size, const char *s, size_t len)
{
    snprintf(dst, size, "%.*s", (int)(len < size ? len : size - 1), s);
}

int sinkctl_eval_model_get(sinkd_client *c, const char *name, int timeout_ms,
                           sinkctl_eval_model *m)
{
    if (c == NULL || m == NULL)
        return -EINVAL;
    eval_call a = { 0 };
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = eval__request(c, "model.list", &a, timeout_ms, NULL, &rep);
    const msgpack_object_array *models;
    if (rc == 0 && sinkd_map_array(rep.map, "models", &models) != 0)
        rc = -EPROTO;
    if (rc == 0) {
        rc = -ENOENT;
        for (uint32_t i = 0; i < models->size && rc == -ENOENT; i++) {
            const msgpack_object *mo = &models->ptr[i];
            const char *s;
            size_t len;
            uint64_t nv, ctx;
            if (sinkd_map_str(mo, "name", &s, &len) != 0 ||
                sinkd_map_u64(mo, "n_vocab", &nv) != 0 || nv == 0 || nv > UINT32_MAX ||
                sinkd_map_u64(mo, "ctx_len", &ctx) != 0 || ctx > UINT32_MAX) {
                rc = -EPROTO;
                break;
            }
            if (name != NULL && (strlen(name) != len || memcmp(name, s, len) != 0))
                continue;
            eval__copy(m->name, sizeof(m->name), s, len);
            m->n_vocab = (uint32_t)nv;
            m->ctx_len = (uint32_t)ctx;
            rc = 0;
        }
    }
    sinkd_client_reply_free(&rep);
    return rc;
}

int sinkctl_eval_tokenize(sinkd_client *c, const char *model, const char *text,
                          size_t len, size_t max_tokens, int timeout_ms,
                          int32_t **ids, size_t *n)
{
    if (c == NULL || text == NULL || ids == NULL || n == NULL)
        return -EINVAL;
    eval_call a = { .model = model, .text = text, .text_len = len };
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = eval__request(c, "tokenize", &a, timeout_ms, NULL, &rep);
    const msgpack_object_array *arr;
    int32_t *out = NULL;
    size_t k = 0;
    if (rc == 0 && sinkd_map_array(rep.map, "ids", &arr) != 0)
        rc = -EPROTO;
    if (rc == 0) {
        k = max_tokens > 0 && arr->size > max_tokens ? max_tokens : arr->size;
        out = malloc((k > 0 ? k : 1) * sizeof(*out));
        if (out == NULL)
            rc = -ENOMEM;
    }
    for (size_t i = 0; rc == 0 && i < k; i++) {
        const msgpack_object *o = &arr->ptr[i];
        if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > INT32_MAX)
            rc = -EPROTO;
        else
            out[i] = (int32_t)o->via.u64;
    }
    sinkd_client_reply_free(&rep);
    if (rc != 0) {
        free(out);
        return rc;
    }
    *ids = out;
    *n = k;
    return 0;
}

/* Open a session of @policy; *@id gets its number. */
static int eval__open(sinkd_client *c, const sinkctl_eval_opts *o, const char *policy,
                      const char *params, uint64_t *id)
{
    eval_call a = { .model = o->model->name, .policy = policy, .params = params };
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = eval__request(c, "session.open", &a, o->timeout_ms, NULL, &rep);
    uint64_t nv;
    if (rc == 0 && (sinkd_map_u64(rep.map, "session", id) != 0 ||
                    sinkd_map_u64(rep.map, "n_vocab", &nv) != 0 || nv != o->model->n_vocab))
        rc = -EPROTO;
    sinkd_client_reply_free(&rep);
    return rc;
}

static int eval__session_op(sinkd_client *c, const char *op, uint64_t id, int timeout_ms,
                            sinkd_client_reply *rep)
{
    eval_call a = { .has_session = true, .session = id };
    return eval__request(c, op, &a, timeout_ms, NULL, rep);
}

/* Close session *@id if it is open (a close that fails loses nothing: the
 * daemon closes it with the connection). */
static void eval__close(sinkd_client *c, uint64_t *id, bool *open, int timeout_ms)
{
    if (*open)
        (void)eval__session_op(c, "session.close", *id, timeout_ms, NULL);
    *open = false;
}

/* Append @n ids to session @id, then write its last logits at @offset. */
static int eval__step(sinkd_client *c, const sinkctl_eval_opts *o, uint64_t id,
                      const int32_t *ids, size_t n, const sinkd_client_shm *shm,
                      uint64_t offset, bool want_logits, sinkctl_eval_report *events)
{
    eval_call a = { .has_session = true, .session = id, .ids = ids, .n_ids = n };
    int rc = eval__request(c, "session.append", &a, o->timeout_ms, events, NULL);
    if (rc != 0 || !want_logits)
        return rc;
    eval_call l = { .has_session = true, .session = id, .has_shm = true,
                    .shm = shm->handle, .offset = offset };
    return eval__request(c, "session.logits", &l, o->timeout_ms, NULL, NULL);
}

/* The recompute oracle's logits after position @t >= @ctx: a fresh session
 * prefilled with the @ctx tokens ending at @t, written at @offset. */
static int eval__recompute(sinkd_client *c, const sinkctl_eval_opts *o, const int32_t *ids,
                           size_t t, uint32_t ctx, const sinkd_client_shm *shm, uint64_t offset)
{
    uint64_t id;
    bool open = false;
    int rc = eval__open(c, o, "full", NULL, &id);
    if (rc == 0) {
        open = true;
        rc = eval__step(c, o, id, ids + t + 1 - ctx, ctx, shm, offset, true, NULL);
    }
    eval__close(c, &id, &open, o->timeout_ms);
    return rc;
}

/* Reference state of one stream. */
typedef struct eval_ref {
    bool recompute;
    uint32_t ctx;                  /* recompute context */
    uint64_t session;              /* the lock-step `full` session */
    bool open;
    sinkctl_eval_refcache cache;   /* file in use, if any */
} eval_ref;

/* The reference's logits after position @t into @shm at @offset (nothing
 * after the last position: nothing is left to predict). */
static int eval__reference(sinkd_client *c, const sinkctl_eval_opts *o, const int32_t *ids,
                           size_t t, bool last, const sinkd_client_shm *shm, uint64_t offset,
                           eval_ref *ref)
{
    float *out = (float *)((char *)shm->base + offset);
    int rc;
    if (ref->cache.f != NULL && !ref->cache.writing)
        return last ? 0 : sinkctl_eval_refcache_read(&ref->cache, out);
    if (!ref->recompute || t < ref->ctx) {
        rc = eval__step(c, o, ref->session, ids + t, 1, shm, offset, !last, NULL);
    } else {
        /* The lock-step session is no longer needed: free its pages. */
        eval__close(c, &ref->session, &ref->open, o->timeout_ms);
        rc = last ? 0 : eval__recompute(c, o, ids, t, ref->ctx, shm, offset);
    }
    if (rc == 0 && !last && ref->cache.f != NULL)
        rc = sinkctl_eval_refcache_write(&ref->cache, out);
    return rc;
}

static int eval__stats(sinkd_client *c, const sinkctl_eval_opts *o, uint64_t id,
                       uint64_t tokens, sinkctl_eval_report *r)
{
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = eval__session_op(c, "session.stats", id, o->timeout_ms, &rep);
    uint64_t bytes, evicted = 0;
    if (rc == 0 && sinkd_map_u64(rep.map, "bytes", &bytes) != 0)
        rc = -EPROTO;
    if (rc == 0) {
        (void)sinkd_map_u64(rep.map, "evicted_tokens", &evicted);
        rc = sinkctl_eval_report_sample(r, tokens, bytes, evicted);
    }
    sinkd_client_reply_free(&rep);
    return rc;
}

static double eval__now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

__attribute__((format(printf, 4, 5)))
static int eval__errf(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* Score position @t + 1 from the logits in @shm (policy at 0, reference
 * after it). */
static int eval__score(const sinkctl_eval_opts *o, const int32_t *ids, size_t t,
                       const sinkd_client_shm *shm, sinkctl_eval_report *r,
                       char *err, size_t errlen)
{
    uint32_t nv = o->model->n_vocab;
    const float *pol = shm->base, *ref = (const float *)shm->base + nv;
    uint32_t next = (uint32_t)ids[t + 1];
    double nll = sinkctl_eval_nll(pol, nv, next), ref_nll = 0, kl = 0;
    bool agree = false;
    if (o->ref != NULL) {
        ref_nll = sinkctl_eval_nll(ref, nv, next);
        kl = sinkctl_eval_kl(ref, pol, nv);
        agree = sinkctl_eval_argmax(ref, nv) == sinkctl_eval_argmax(pol, nv);
    }
    if (!isfinite(nll) || !isfinite(ref_nll) || !isfinite(kl))
        return eval__errf(err, errlen, -EPROTO,
                          "non-finite logits or a token outside the vocabulary at position %zu",
                          t + 1);
    return sinkctl_eval_report_add(r, t + 1, nll, ref_nll, kl, agree);
}

static int eval__check(const sinkctl_eval_opts *o, const int32_t *ids, size_t n,
                       char *err, size_t errlen)
{
    if (o->model == NULL || o->policy == NULL || n < 2)
        return eval__errf(err, errlen, -EINVAL, "a stream needs a model, a policy and at "
                          "least 2 tokens (got %zu)", n);
    if (o->ref != NULL && strcmp(o->ref, "full") != 0 && strcmp(o->ref, "recompute") != 0)
        return eval__errf(err, errlen, -EINVAL, "reference '%s': not full or recompute", o->ref);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (uint32_t)ids[i] >= o->model->n_vocab)
            return eval__errf(err, errlen, -EINVAL, "token %zu is outside the vocabulary", i);
    return 0;
}

int sinkctl_eval_stream(sinkd_client *c, const sinkctl_eval_opts *o,
                        const int32_t *ids, size_t n, sinkctl_eval_report *r,
                        char *err, size_t errlen)
{
    if (c == NULL || o == NULL || ids == NULL || r == NULL)
        return -EINVAL;
    int rc = eval__check(o, ids, n, err, errlen);
    if (rc != 0)
        return rc;
    eval_ref ref = { .cache = SINKCTL_EVAL_REFCACHE_INIT };
    ref.recompute = o->ref != NULL && strcmp(o->ref, "recompute") == 0;
    ref.ctx = o->ref_ctx > 0 ? o->ref_ctx : o->model->ctx_len;
    uint32_t every = o->sample_every > 0 ? o->sample_every : EVAL_SAMPLE_EVERY_DEFAULT;
    if (ref.recompute && ref.ctx == 0)
        return eval__errf(err, errlen, -EINVAL, "recompute needs a context length: the model "
                          "reports none, pass one");

    snprintf(r->mode, sizeof(r->mode), "%s", o->ref != NULL ? "fidelity" : "ppl");
    snprintf(r->model, sizeof(r->model), "%s", o->model->name);
    snprintf(r->policy, sizeof(r->policy), "%s", o->policy);
    snprintf(r->params, sizeof(r->params), "%s", o->params != NULL ? o->params : "");
    snprintf(r->ref, sizeof(r->ref), "%s", o->ref != NULL ? o->ref : "");
    r->ref_ctx = ref.recompute ? ref.ctx : 0;
    r->ctx_len = o->model->ctx_len;
    r->tokens = n;

    if (o->ref != NULL && o->ref_logits != NULL) {
        rc = sinkctl_eval_refcache_open(&ref.cache, o->ref_logits, o->model->name, o->ref,
                                        (uint32_t)r->ref_ctx, o->model->n_vocab, ids, n,
                                        err, errlen);
        if (rc != 0 && (err == NULL || err[0] == '\0'))
            eval__errf(err, errlen, rc, "%s: %s", o->ref_logits, strerror(-rc));
        if (rc != 0)
            return rc;
    }
    size_t bytes = (size_t)o->model->n_vocab * sizeof(float);
    sinkd_client_shm shm = SINKD_CLIENT_SHM_INIT;
    uint64_t pol = 0;
    bool pol_open = false;
    double wall0 = eval__now();
    rc = sinkd_client_shm_create(c, 2 * bytes, o->timeout_ms, &shm);
    if (rc == 0 && (rc = eval__open(c, o, o->policy, o->params, &pol)) == 0)
        pol_open = true;
    if (rc == 0 && o->ref != NULL && (ref.cache.f == NULL || ref.cache.writing) &&
        (rc = eval__open(c, o, "full", NULL, &ref.session)) == 0)
        ref.open = true;

    for (size_t t = 0; rc == 0 && t < n; t++) {
        bool last = t + 1 == n;
        double t0 = eval__now();
        rc = eval__step(c, o, pol, ids + t, 1, &shm, 0, !last, r);
        r->seconds += eval__now() - t0;
        if (rc == 0 && o->ref != NULL &&
            (rc = eval__reference(c, o, ids, t, last, &shm, bytes, &ref)) == -EIO)
            eval__errf(err, errlen, rc, "%s: %s", o->ref_logits, "short file or write error");
        if (rc == 0 && !last)
            rc = eval__score(o, ids, t, &shm, r, err, errlen);
        if (rc == 0 && ((t + 1) % every == 0 || (t + 1) % r->window == 0 || last))
            rc = eval__stats(c, o, pol, t + 1, r);
        if (rc == 0 && o->progress != NULL)
            o->progress(o->progress_arg, r, t + 1, n);
    }
    r->wall_seconds = eval__now() - wall0;
    int frc = sinkctl_eval_refcache_finish(&ref.cache, rc == 0);
    if (rc == 0 && frc != 0)
        rc = eval__errf(err, errlen, frc, "%s: %s", o->ref_logits, strerror(-frc));
    eval__close(c, &ref.session, &ref.open, o->timeout_ms);
    eval__close(c, &pol, &pol_open, o->timeout_ms);
    (void)sinkd_client_shm_free(c, &shm, o->timeout_ms);
    return rc;
}
