/*
 * libsinkd: building request fields and decoding reply lists, shared by the
 * typed calls of the session-level ops.
 */
#include "client_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int args__write(void *data, const char *buf, size_t len)
{
    client__args *a = data;
    if (a->err == 0 && msgpack_sbuffer_write(&a->sb, buf, len) != 0)
        a->err = -ENOMEM;
    return a->err == 0 ? 0 : -1;
}

void client__args_init(client__args *a)
{
    msgpack_sbuffer_init(&a->sb);
    msgpack_packer_init(&a->pk, a, args__write);
    a->n = 0;
    a->err = 0;
}

void client__args_free(client__args *a)
{
    msgpack_sbuffer_destroy(&a->sb);
    client__args_init(a);
}

msgpack_packer *client__arg(client__args *a, const char *key)
{
    sinkd_pack_str(&a->pk, key);
    a->n++;
    return &a->pk;
}

static int args__pack(msgpack_packer *pk, void *arg)
{
    const client__args *a = arg;
    if (a->err != 0)
        return a->err;
    if (a->sb.size > 0 && pk->callback(pk->data, a->sb.data, a->sb.size) != 0)
        return -ENOMEM;
    return 0;
}

int client__call(sinkd_client *c, const char *op, client__args *a, sinkd_client_req *req,
                 sinkd_client_reply *reply, bool idle)
{
    req->op = op;
    req->nfields = a != NULL ? a->n : 0;
    req->pack = a != NULL ? args__pack : NULL;
    req->pack_arg = a;
    return client__request(c, req, reply, idle);
}

int client__send_args(sinkd_client *c, const char *op, client__args *a, int timeout_ms)
{
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.op = op;
    req.nfields = a->n;
    req.pack = args__pack;
    req.pack_arg = a;
    req.timeout_ms = timeout_ms;
    return client__send_nowait(c, &req);
}

int client__call_u64(sinkd_client *c, const char *op, client__args *a, int timeout_ms,
                     const char *key, uint64_t *v)
{
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.timeout_ms = timeout_ms;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = client__call(c, op, a, &req, &rep, false);
    uint64_t got = 0;
    if (rc == 0 && sinkd_map_u64(rep.map, key, &got) != 0)
        rc = -EPROTO;
    if (rc == 0 && v != NULL)
        *v = got;
    sinkd_client_reply_free(&rep);
    return rc;
}

int client__call_list(sinkd_client *c, const char *op, int timeout_ms, const char *key,
                      size_t size, int (*one)(const msgpack_object *m, void *dst),
                      void **out, size_t *n)
{
    if (c == NULL || out == NULL || n == NULL)
        return -EINVAL;
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.timeout_ms = timeout_ms;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = client__call(c, op, NULL, &req, &rep, false);
    if (rc == 0)
        rc = client__decode_list(rep.map, key, size, one, out, n);
    sinkd_client_reply_free(&rep);
    return rc;
}

int client__u32(const msgpack_object *map, const char *key, uint32_t *v)
{
    uint64_t u;
    int rc = sinkd_map_u64(map, key, &u);
    if (rc != 0)
        return rc;
    if (u > UINT32_MAX)
        return -EINVAL;
    *v = (uint32_t)u;
    return 0;
}

int client__decode_list(const msgpack_object *reply, const char *key, size_t size,
                        int (*one)(const msgpack_object *m, void *dst),
                        void **out, size_t *n)
{
    const msgpack_object_array *arr;
    if (sinkd_map_array(reply, key, &arr) != 0)
        return -EPROTO;
    *out = NULL;
    *n = 0;
    if (arr->size == 0)
        return 0;
    /* The count comes from a decoded (validated) message: its items exist. */
    char *items = calloc(arr->size, size);
    if (items == NULL)
        return -ENOMEM;
    for (uint32_t i = 0; i < arr->size; i++) {
        if (arr->ptr[i].type != MSGPACK_OBJECT_MAP ||
            one(&arr->ptr[i], items + (size_t)i * size) != 0) {
            free(items);
            return -EPROTO;
        }
    }
    *out = items;
    *n = arr->size;
    return 0;
}

void sinkd_client_free(void *p)
{
    free(p);
}
