/*
 * libsinkd: session control (session.open/close/list/append/cancel/stats/
 * policy/logits). Generation lives in client_gen.c, attach/save/restore/
 * forget in client_persist.c.
 */
#include "client_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int client__session_call(sinkd_client *c, const char *op, uint64_t session, int timeout_ms,
                         sinkd_client_reply *rep)
{
    client__args a;
    client__args_init(&a);
    msgpack_pack_uint64(client__arg(&a, "session"), session);
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.timeout_ms = timeout_ms;
    int rc = client__call(c, op, &a, &req, rep, false);
    client__args_free(&a);
    return rc;
}

static void session__geometry(msgpack_packer *pk, const sinkd_client_geometry *g)
{
    uint32_t n = 6 + (g->dtype != NULL) + (g->rope_style != NULL) + (g->rope_mode != NULL);
    msgpack_pack_map(pk, n);
    sinkd_pack_kv_u64(pk, "layers", g->layers);
    sinkd_pack_kv_u64(pk, "q_heads", g->q_heads);
    sinkd_pack_kv_u64(pk, "kv_heads", g->kv_heads);
    sinkd_pack_kv_u64(pk, "head_dim", g->head_dim);
    sinkd_pack_kv_f64(pk, "rope_theta", g->rope_theta);
    sinkd_pack_kv_f64(pk, "rope_scale", g->rope_scale);
    if (g->dtype != NULL)
        sinkd_pack_kv_str(pk, "dtype", g->dtype);
    if (g->rope_style != NULL)
        sinkd_pack_kv_str(pk, "rope_style", g->rope_style);
    if (g->rope_mode != NULL)
        sinkd_pack_kv_str(pk, "rope_mode", g->rope_mode);
}

int client__session_info(const msgpack_object *reply, sinkd_client_session_info *info)
{
    if (sinkd_map_u64(reply, "session", &info->session) != 0 ||
        client__copy_str(reply, "secret", info->secret, sizeof(info->secret)) != 0 ||
        client__copy_str(reply, "model", info->model, sizeof(info->model)) != 0 ||
        client__copy_str(reply, "policy", info->policy, sizeof(info->policy)) != 0 ||
        client__u32(reply, "n_layers", &info->n_layers) != 0 ||
        client__u32(reply, "n_kv_heads", &info->n_kv_heads) != 0 ||
        client__u32(reply, "head_dim", &info->head_dim) != 0 ||
        client__u32(reply, "n_vocab", &info->n_vocab) != 0)
        return -EPROTO;
    return 0;
}

int sinkd_client_session_open(sinkd_client *c, const sinkd_client_session_opts *opts,
                              int timeout_ms, sinkd_client_session_info *info)
{
    static const sinkd_client_session_opts defaults = SINKD_CLIENT_SESSION_OPTS_INIT;
    if (opts == NULL)
        opts = &defaults;
    if (c == NULL || info == NULL || (opts->model != NULL && opts->geometry != NULL))
        return -EINVAL;

    client__args a;
    client__args_init(&a);
    if (opts->model != NULL)
        sinkd_pack_str(client__arg(&a, "model"), opts->model);
    if (opts->geometry != NULL)
        session__geometry(client__arg(&a, "geometry"), opts->geometry);
    if (opts->policy != NULL)
        sinkd_pack_str(client__arg(&a, "policy"), opts->policy);
    if (opts->params != NULL)
        sinkd_pack_str(client__arg(&a, "params"), opts->params);
    if (opts->budget > 0)
        msgpack_pack_uint64(client__arg(&a, "budget"), opts->budget);
    if (opts->persist)
        msgpack_pack_true(client__arg(&a, "persist"));

    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.timeout_ms = timeout_ms;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = client__call(c, "session.open", &a, &req, &rep, false);
    if (rc == 0)
        rc = client__session_info(rep.map, info);
    sinkd_client_reply_free(&rep);
    client__args_free(&a);
    return rc;
}

int sinkd_client_session_close(sinkd_client *c, uint64_t session, int timeout_ms)
{
    if (c == NULL)
        return -EINVAL;
    return client__session_call(c, "session.close", session, timeout_ms, NULL);
}

int sinkd_client_session_cancel(sinkd_client *c, uint64_t session, int timeout_ms)
{
    if (c == NULL)
        return -EINVAL;
    return client__session_call(c, "session.cancel", session, timeout_ms, NULL);
}

static int session__entry(const msgpack_object *m, void *dst)
{
    sinkd_client_session_entry *e = dst;
    const char *state;
    size_t state_len;
    if (sinkd_map_u64(m, "session", &e->session) != 0 ||
        sinkd_map_u64(m, "uid", &e->uid) != 0 ||
        client__copy_str(m, "model", e->model, sizeof(e->model)) != 0 ||
        client__copy_str(m, "policy", e->policy, sizeof(e->policy)) != 0 ||
        sinkd_map_u64(m, "tokens", &e->tokens) != 0 ||
        sinkd_map_u64(m, "pages", &e->pages) != 0 ||
        sinkd_map_u64(m, "bytes", &e->bytes) != 0 ||
        sinkd_map_str(m, "state", &state, &state_len) != 0)
        return -EPROTO;
    e->generating = state_len == 10 && memcmp(state, "generating", 10) == 0;
    return 0;
}

int sinkd_client_session_list_decode(const msgpack_object *reply,
                                     sinkd_client_session_entry **sessions, size_t *n)
{
    if (reply == NULL || sessions == NULL || n == NULL)
        return -EINVAL;
    return client__decode_list(reply, "sessions", sizeof(**sessions), session__entry,
                               (void **)sessions, n);
}

int sinkd_client_session_list(sinkd_client *c, int timeout_ms,
                              sinkd_client_session_entry **sessions, size_t *n)
{
    return client__call_list(c, "session.list", timeout_ms, "sessions", sizeof(**sessions),
                             session__entry, (void **)sessions, n);
}

void client__on_fallback(void *arg, const char *ev, size_t ev_len, const msgpack_object *event)
{
    if (ev_len == 15 && memcmp(ev, "policy_fallback", 15) == 0 &&
        client__copy_str(event, "reason", arg, CLIENT_FALLBACK_MAX) != 0)
        snprintf(arg, CLIENT_FALLBACK_MAX, "%s", "unknown");
}

/* session.append with either ids or text. */
static int session__append(sinkd_client *c, uint64_t session, const int32_t *ids,
                           const char *text, size_t n, int bos, int timeout_ms,
                           sinkd_client_append_result *result)
{
    if (c == NULL || n > UINT32_MAX || bos < SINKD_CLIENT_BOS_DEFAULT || bos > 1)
        return -EINVAL;
    client__args a;
    client__args_init(&a);
    msgpack_pack_uint64(client__arg(&a, "session"), session);
    if (text != NULL) {
        sinkd_pack_strn(client__arg(&a, "text"), text, n);
    } else {
        msgpack_packer *pk = client__arg(&a, "ids");
        msgpack_pack_array(pk, n);
        for (size_t i = 0; i < n; i++)
            msgpack_pack_int32(pk, ids[i]);
    }
    if (bos != SINKD_CLIENT_BOS_DEFAULT)
        client__pack_bool(client__arg(&a, "bos"), bos);

    sinkd_client_append_result res = { 0 };
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.timeout_ms = timeout_ms;
    req.on_event = client__on_fallback;
    req.event_arg = res.fallback;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = client__call(c, "session.append", &a, &req, &rep, false);
    if (rc == 0 &&
        (sinkd_map_u64(rep.map, "n_tokens", &res.n_tokens) != 0 ||
         sinkd_map_u64(rep.map, "n_past", &res.n_past) != 0 ||
         sinkd_map_f64(rep.map, "prefill_ms", &res.prefill_ms) != 0))
        rc = -EPROTO;
    if (rc == 0 && result != NULL)
        *result = res;
    sinkd_client_reply_free(&rep);
    client__args_free(&a);
    return rc;
}

int sinkd_client_session_append(sinkd_client *c, uint64_t session, const int32_t *ids,
                                size_t n, int bos, int timeout_ms,
                                sinkd_client_append_result *result)
{
    if (ids == NULL && n > 0)
        return -EINVAL;
    static const int32_t none[1];
    return session__append(c, session, ids != NULL ? ids : none, NULL, n, bos,
                           timeout_ms, result);
}

int sinkd_client_session_append_text(sinkd_client *c, uint64_t session, const char *text,
                                     size_t len, int bos, int timeout_ms,
                                     sinkd_client_append_result *result)
{
    if (text == NULL && len > 0)
        return -EINVAL;
    return session__append(c, session, NULL, text != NULL ? text : "", len, bos,
                           timeout_ms, result);
}

int sinkd_client_session_logits(sinkd_client *c, uint64_t session,
                                sinkd_client_region dst, int timeout_ms,
                                uint32_t *n_vocab)
{
    if (c == NULL)
        return -EINVAL;
    client__args a;
    client__args_init(&a);
    msgpack_pack_uint64(client__arg(&a, "session"), session);
    msgpack_pack_uint64(client__arg(&a, "shm"), dst.shm);
    msgpack_pack_uint64(client__arg(&a, "offset"), dst.offset);
    uint64_t nv = 0;
    int rc = client__call_u64(c, "session.logits", &a, timeout_ms, "n_vocab", &nv);
    if (rc == 0 && nv > UINT32_MAX)
        rc = -EPROTO;
    if (rc == 0 && n_vocab != NULL)
        *n_vocab = (uint32_t)nv;
    client__args_free(&a);
    return rc;
}

void sinkd_client_session_stats_free(sinkd_client_session_stats *st)
{
    if (st == NULL)
        return;
    free(st->layers);
    *st = (sinkd_client_session_stats)SINKD_CLIENT_SESSION_STATS_INIT;
}

static int session__layer(const msgpack_object *m, void *dst)
{
    sinkd_client_layer_stats *l = dst;
    if (sinkd_map_u64(m, "len_min", &l->len_min) != 0 ||
        sinkd_map_f64(m, "len_mean", &l->len_mean) != 0 ||
        sinkd_map_u64(m, "len_max", &l->len_max) != 0 ||
        sinkd_map_u64(m, "pages", &l->pages) != 0)
        return -EPROTO;
    return 0;
}

int sinkd_client_session_stats_decode(const msgpack_object *reply,
                                      sinkd_client_session_stats *st)
{
    if (reply == NULL || st == NULL || st->layers != NULL)
        return -EINVAL;
    sinkd_client_session_stats s = SINKD_CLIENT_SESSION_STATS_INIT;
    if (sinkd_map_u64(reply, "session", &s.session) != 0 ||
        client__copy_str(reply, "model", s.model, sizeof(s.model)) != 0 ||
        client__copy_str(reply, "policy", s.policy, sizeof(s.policy)) != 0 ||
        sinkd_map_u64(reply, "tokens", &s.tokens) != 0 ||
        sinkd_map_u64(reply, "pages", &s.pages) != 0 ||
        sinkd_map_u64(reply, "bytes", &s.bytes) != 0 ||
        sinkd_map_u64(reply, "evictions", &s.evictions) != 0 ||
        sinkd_map_u64(reply, "evicted_tokens", &s.evicted_tokens) != 0)
        return -EPROTO;
    int rc = client__copy_str(reply, "fallback", s.fallback, sizeof(s.fallback));
    if (rc == -EINVAL)
        return -EPROTO;
    rc = client__decode_list(reply, "layers", sizeof(*s.layers), session__layer,
                             (void **)&s.layers, &s.n_layers);
    if (rc != 0)
        return rc;
    *st = s;
    return 0;
}

int sinkd_client_session_stats_get(sinkd_client *c, uint64_t session, int timeout_ms,
                                   sinkd_client_session_stats *st)
{
    if (c == NULL || st == NULL || st->layers != NULL)
        return -EINVAL;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = client__session_call(c, "session.stats", session, timeout_ms, &rep);
    if (rc == 0)
        rc = sinkd_client_session_stats_decode(rep.map, st);
    sinkd_client_reply_free(&rep);
    return rc;
}

int sinkd_client_session_policy(sinkd_client *c, uint64_t session, const char *policy,
                                const char *params, int timeout_ms,
                                char *name, size_t name_size)
{
    if (c == NULL || policy == NULL || policy[0] == '\0' || (name != NULL && name_size == 0))
        return -EINVAL;
    client__args a;
    client__args_init(&a);
    msgpack_pack_uint64(client__arg(&a, "session"), session);
    sinkd_pack_str(client__arg(&a, "policy"), policy);
    if (params != NULL)
        sinkd_pack_str(client__arg(&a, "params"), params);
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.timeout_ms = timeout_ms;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = client__call(c, "session.policy", &a, &req, &rep, false);
    char got[64];
    if (rc == 0 && client__copy_str(rep.map, "policy", got, sizeof(got)) != 0)
        rc = -EPROTO;
    if (rc == 0 && name != NULL)
        snprintf(name, name_size, "%s", got);
    sinkd_client_reply_free(&rep);
    client__args_free(&a);
    return rc;
}
