/*
 * libsinkd: session.generate. Token events go to the caller's callback; a
 * callback that asks to stop makes the library send session.cancel on the
 * same connection without waiting for its answer (that reply is dropped
 * like any frame of another id), then read on to the generate's reply.
 */
#include "client_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct gen__ctx {
    sinkd_client *c;
    uint64_t session;
    int timeout_ms;
    sinkd_client_token_fn on_token;
    void *arg;
    bool cancel_sent;
    size_t streamed;                 /* text bytes passed to on_token */
    int err;                         /* a token event we could not read */
    char fallback[CLIENT_FALLBACK_MAX];
} gen__ctx;

static void gen__cancel(gen__ctx *g)
{
    g->cancel_sent = true;
    client__args a;
    client__args_init(&a);
    msgpack_pack_uint64(client__arg(&a, "session"), g->session);
    /* A failed send is not reported here: a dead connection fails the
     * generate's own wait, and otherwise the generation just runs on. */
    (void)client__send_args(g->c, "session.cancel", &a, g->timeout_ms);
    client__args_free(&a);
}

static void gen__on_event(void *arg, const char *ev, size_t ev_len, const msgpack_object *event)
{
    gen__ctx *g = arg;
    if (ev_len != 5 || memcmp(ev, "token", 5) != 0) {
        client__on_fallback(g->fallback, ev, ev_len, event);
        return;
    }
    int64_t token;
    const char *text;
    size_t len;
    if (sinkd_map_i64(event, "token", &token) != 0 || token < INT32_MIN || token > INT32_MAX ||
        sinkd_map_str(event, "text", &text, &len) != 0) {
        g->err = -EPROTO;
        return;
    }
    if (g->on_token == NULL || g->cancel_sent || g->err != 0)
        return;
    g->streamed += len;
    if (g->on_token(g->arg, (int32_t)token, text, len) != 0)
        gen__cancel(g);
}

static void gen__pack_params(client__args *a, const sinkd_client_gen_params *p)
{
    msgpack_pack_uint32(client__arg(a, "max_tokens"), p->max_tokens);
    msgpack_pack_double(client__arg(a, "temperature"), p->temperature);
    msgpack_pack_uint32(client__arg(a, "top_k"), p->top_k);
    msgpack_pack_double(client__arg(a, "top_p"), p->top_p);
    msgpack_pack_double(client__arg(a, "min_p"), p->min_p);
    msgpack_pack_double(client__arg(a, "repeat_penalty"), p->repeat_penalty);
    msgpack_pack_uint32(client__arg(a, "repeat_last_n"), p->repeat_last_n);
    msgpack_pack_uint64(client__arg(a, "seed"), p->seed);
    client__pack_bool(client__arg(a, "stream"), p->stream);
    client__pack_bool(client__arg(a, "ignore_eos"), p->ignore_eos);
    if (p->n_stop_ids > 0) {
        msgpack_packer *pk = client__arg(a, "stop_ids");
        msgpack_pack_array(pk, p->n_stop_ids);
        for (size_t i = 0; i < p->n_stop_ids; i++)
            msgpack_pack_int32(pk, p->stop_ids[i]);
    }
    if (p->n_stop > 0) {
        msgpack_packer *pk = client__arg(a, "stop");
        msgpack_pack_array(pk, p->n_stop);
        for (size_t i = 0; i < p->n_stop; i++)
            sinkd_pack_str(pk, p->stop[i]);
    }
}

static int gen__reason(const msgpack_object *reply, sinkd_client_gen_result *r)
{
    static const char *const names[] = {
        [SINKD_CLIENT_GEN_LENGTH] = "length",
        [SINKD_CLIENT_GEN_STOP] = "stop",
        [SINKD_CLIENT_GEN_EOS] = "eos",
        [SINKD_CLIENT_GEN_CANCELLED] = "cancelled",
    };
    if (client__copy_str(reply, "reason", r->reason_name, sizeof(r->reason_name)) != 0)
        return -EPROTO;
    for (int i = SINKD_CLIENT_GEN_LENGTH; i <= SINKD_CLIENT_GEN_CANCELLED; i++) {
        if (strcmp(r->reason_name, names[i]) == 0) {
            r->reason = (sinkd_client_gen_reason)i;
            return 0;
        }
    }
    return -EPROTO;
}

static int gen__result(const msgpack_object *reply, sinkd_client_gen_result *r)
{
    const msgpack_object *t;
    const char *text;
    size_t len;
    if (gen__reason(reply, r) != 0 ||
        sinkd_map_u64(reply, "n_tokens", &r->n_tokens) != 0 ||
        sinkd_map_str(reply, "text", &text, &len) != 0 ||
        sinkd_map_map(reply, "timings", &t) != 0 ||
        sinkd_map_f64(t, "prefill_ms", &r->prefill_ms) != 0 ||
        sinkd_map_f64(t, "decode_ms", &r->decode_ms) != 0 ||
        sinkd_map_f64(t, "tokens_per_s", &r->tokens_per_s) != 0)
        return -EPROTO;
    r->text = malloc(len + 1);
    if (r->text == NULL)
        return -ENOMEM;
    memcpy(r->text, text, len);
    r->text[len] = '\0';
    r->text_len = len;
    return 0;
}

void sinkd_client_gen_result_free(sinkd_client_gen_result *r)
{
    if (r == NULL)
        return;
    free(r->text);
    *r = (sinkd_client_gen_result)SINKD_CLIENT_GEN_RESULT_INIT;
}

int sinkd_client_session_generate(sinkd_client *c, uint64_t session,
                                  const sinkd_client_gen_params *params,
                                  sinkd_client_token_fn on_token, void *arg,
                                  int timeout_ms, sinkd_client_gen_result *result)
{
    static const sinkd_client_gen_params defaults = SINKD_CLIENT_GEN_PARAMS_INIT;
    if (params == NULL)
        params = &defaults;
    if (c == NULL || (result != NULL && result->text != NULL) ||
        (params->stop_ids == NULL && params->n_stop_ids > 0) ||
        (params->stop == NULL && params->n_stop > 0) ||
        params->n_stop_ids > UINT32_MAX || params->n_stop > UINT32_MAX)
        return -EINVAL;
    for (size_t i = 0; i < params->n_stop; i++)
        if (params->stop[i] == NULL)
            return -EINVAL;

    client__args a;
    client__args_init(&a);
    msgpack_pack_uint64(client__arg(&a, "session"), session);
    gen__pack_params(&a, params);

    gen__ctx g = { .c = c, .session = session, .timeout_ms = timeout_ms,
                   .on_token = on_token, .arg = arg };
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.timeout_ms = timeout_ms;
    req.on_event = gen__on_event;
    req.event_arg = &g;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = client__call(c, "session.generate", &a, &req, &rep, true);
    if (rc == 0 && g.err != 0)
        rc = g.err;
    sinkd_client_gen_result res = SINKD_CLIENT_GEN_RESULT_INIT;
    if (rc == 0)
        rc = gen__result(rep.map, &res);
    /* the end of the text no event carried (PROTOCOL.md: the pieces are a
     * prefix of the reply's text) */
    if (rc == 0 && on_token != NULL && params->stream && !g.cancel_sent &&
        res.text_len > g.streamed)
        (void)on_token(arg, SINKD_CLIENT_TOKEN_TAIL, res.text + g.streamed,
                       res.text_len - g.streamed);
    if (rc == 0) {
        memcpy(res.fallback, g.fallback, sizeof(res.fallback));
        if (result != NULL)
            *result = res;
        else
            sinkd_client_gen_result_free(&res);
    }
    sinkd_client_reply_free(&rep);
    client__args_free(&a);
    return rc;
}
