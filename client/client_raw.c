/*
 * libsinkd: raw sessions (kv.append, attend). The bulk arrays never travel
 * in frames: requests name ranges of regions registered with shm.register.
 */
#include "client_internal.h"

#include <errno.h>

static void raw__region(client__args *a, const char *key, sinkd_client_region r)
{
    msgpack_packer *pk = client__arg(a, key);
    msgpack_pack_map(pk, 2);
    sinkd_pack_kv_u64(pk, "shm", r.shm);
    sinkd_pack_kv_u64(pk, "offset", r.offset);
}

int sinkd_client_kv_append(sinkd_client *c, uint64_t session, uint32_t layer, uint32_t n,
                           sinkd_client_region k, sinkd_client_region v,
                           const sinkd_client_region *pos, int timeout_ms, uint64_t *len)
{
    if (c == NULL)
        return -EINVAL;
    client__args a;
    client__args_init(&a);
    msgpack_pack_uint64(client__arg(&a, "session"), session);
    msgpack_pack_uint32(client__arg(&a, "layer"), layer);
    msgpack_pack_uint32(client__arg(&a, "n"), n);
    raw__region(&a, "k", k);
    raw__region(&a, "v", v);
    if (pos != NULL)
        raw__region(&a, "pos", *pos);

    int rc = client__call_u64(c, "kv.append", &a, timeout_ms, "len", len);
    client__args_free(&a);
    return rc;
}

int sinkd_client_attend(sinkd_client *c, uint64_t session,
                        const sinkd_client_attend_args *args, int timeout_ms,
                        uint64_t *lens, size_t cap, size_t *n_lens)
{
    if (c == NULL || args == NULL || (lens == NULL && cap > 0) ||
        (args->n_heads > 0 && (args->pages == NULL || args->n_pages == NULL)) ||
        args->n_heads > UINT32_MAX)
        return -EINVAL;
    for (size_t h = 0; h < args->n_heads; h++)
        if ((args->pages[h] == NULL && args->n_pages[h] > 0) || args->n_pages[h] > UINT32_MAX)
            return -EINVAL;

    client__args a;
    client__args_init(&a);
    msgpack_pack_uint64(client__arg(&a, "session"), session);
    msgpack_pack_uint32(client__arg(&a, "layer"), args->layer);
    msgpack_pack_uint32(client__arg(&a, "n"), args->n);
    raw__region(&a, "q", args->q);
    raw__region(&a, "out", args->out);
    if (args->scores != NULL)
        raw__region(&a, "scores", *args->scores);
    if (args->has_q_pos)
        msgpack_pack_int64(client__arg(&a, "q_pos"), args->q_pos);
    if (args->n_heads > 0) {
        msgpack_packer *pk = client__arg(&a, "pages");
        msgpack_pack_array(pk, args->n_heads);
        for (size_t h = 0; h < args->n_heads; h++) {
            msgpack_pack_array(pk, args->n_pages[h]);
            for (size_t i = 0; i < args->n_pages[h]; i++)
                msgpack_pack_uint32(pk, args->pages[h][i]);
        }
    }

    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.timeout_ms = timeout_ms;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = client__call(c, "attend", &a, &req, &rep, false);
    const msgpack_object_array *arr = NULL;
    if (rc == 0 && sinkd_map_array(rep.map, "len", &arr) != 0)
        rc = -EPROTO;
    for (uint32_t i = 0; rc == 0 && i < arr->size; i++) {
        if (arr->ptr[i].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            rc = -EPROTO;
        else if (i < cap)
            lens[i] = arr->ptr[i].via.u64;
    }
    if (rc == 0 && n_lens != NULL)
        *n_lens = arr->size;
    sinkd_client_reply_free(&rep);
    client__args_free(&a);
    return rc;
}
