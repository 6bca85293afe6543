/*
 * libsinkd: models and text (model.list, tokenize, detokenize).
 */
#include "client_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int text__model(const msgpack_object *m, void *dst)
{
    sinkd_client_model *md = dst;
    if (client__copy_str(m, "name", md->name, sizeof(md->name)) != 0 ||
        client__copy_str(m, "arch", md->arch, sizeof(md->arch)) != 0 ||
        client__u32(m, "n_layers", &md->n_layers) != 0 ||
        client__u32(m, "n_heads", &md->n_heads) != 0 ||
        client__u32(m, "n_kv_heads", &md->n_kv_heads) != 0 ||
        client__u32(m, "head_dim", &md->head_dim) != 0 ||
        client__u32(m, "dim", &md->dim) != 0 ||
        client__u32(m, "n_vocab", &md->n_vocab) != 0 ||
        client__u32(m, "ctx_len", &md->ctx_len) != 0 ||
        sinkd_map_u64(m, "weight_bytes", &md->weight_bytes) != 0 ||
        client__copy_str(m, "dtype", md->dtype, sizeof(md->dtype)) != 0)
        return -EPROTO;
    return 0;
}

int sinkd_client_model_list_decode(const msgpack_object *reply,
                                   sinkd_client_model **models, size_t *n)
{
    if (reply == NULL || models == NULL || n == NULL)
        return -EINVAL;
    return client__decode_list(reply, "models", sizeof(**models), text__model,
                               (void **)models, n);
}

int sinkd_client_model_list(sinkd_client *c, int timeout_ms,
                            sinkd_client_model **models, size_t *n)
{
    return client__call_list(c, "model.list", timeout_ms, "models", sizeof(**models),
                             text__model, (void **)models, n);
}

/* The int32 array @key of @map into a new array. */
static int text__ids(const msgpack_object *map, const char *key, int32_t **ids, size_t *n)
{
    const msgpack_object_array *arr;
    if (sinkd_map_array(map, key, &arr) != 0)
        return -EPROTO;
    *ids = NULL;
    *n = 0;
    if (arr->size == 0)
        return 0;
    int32_t *v = malloc((size_t)arr->size * sizeof(*v));
    if (v == NULL)
        return -ENOMEM;
    for (uint32_t i = 0; i < arr->size; i++) {
        const msgpack_object *o = &arr->ptr[i];
        if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT32_MAX) {
            v[i] = (int32_t)o->via.u64;
        } else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && o->via.i64 >= INT32_MIN) {
            v[i] = (int32_t)o->via.i64;
        } else {
            free(v);
            return -EPROTO;
        }
    }
    *ids = v;
    *n = arr->size;
    return 0;
}

int sinkd_client_tokenize(sinkd_client *c, const char *model, const char *text,
                          size_t len, int bos, bool special, int timeout_ms,
                          int32_t **ids, size_t *n)
{
    if (c == NULL || (text == NULL && len > 0) || ids == NULL || n == NULL ||
        bos < SINKD_CLIENT_BOS_DEFAULT || bos > 1)
        return -EINVAL;
    client__args a;
    client__args_init(&a);
    if (model != NULL)
        sinkd_pack_str(client__arg(&a, "model"), model);
    sinkd_pack_strn(client__arg(&a, "text"), text != NULL ? text : "", len);
    if (bos != SINKD_CLIENT_BOS_DEFAULT)
        client__pack_bool(client__arg(&a, "bos"), bos);
    if (special)
        msgpack_pack_true(client__arg(&a, "special"));

    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.timeout_ms = timeout_ms;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = client__call(c, "tokenize", &a, &req, &rep, false);
    if (rc == 0)
        rc = text__ids(rep.map, "ids", ids, n);
    sinkd_client_reply_free(&rep);
    client__args_free(&a);
    return rc;
}

int sinkd_client_detokenize(sinkd_client *c, const char *model, const int32_t *ids,
                            size_t n, int timeout_ms, char **text, size_t *len)
{
    if (c == NULL || (ids == NULL && n > 0) || n > UINT32_MAX || text == NULL)
        return -EINVAL;
    client__args a;
    client__args_init(&a);
    if (model != NULL)
        sinkd_pack_str(client__arg(&a, "model"), model);
    msgpack_packer *pk = client__arg(&a, "ids");
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++)
        msgpack_pack_int32(pk, ids[i]);

    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.timeout_ms = timeout_ms;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = client__call(c, "detokenize", &a, &req, &rep, false);
    const char *s;
    size_t slen;
    if (rc == 0 && sinkd_map_str(rep.map, "text", &s, &slen) != 0)
        rc = -EPROTO;
    if (rc == 0) {
        *text = malloc(slen + 1);
        if (*text == NULL) {
            rc = -ENOMEM;
        } else {
            memcpy(*text, s, slen);
            (*text)[slen] = '\0';
            if (len != NULL)
                *len = slen;
        }
    }
    sinkd_client_reply_free(&rep);
    client__args_free(&a);
    return rc;
}
