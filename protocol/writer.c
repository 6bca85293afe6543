/*
 * Frame building. The writer packs into a msgpack sbuffer through its own
 * write callback so that an allocation failure is remembered: the first
 * failed write frees the buffer and leaves data NULL, every later write
 * fails too, and sinkd_fw_finish reports -ENOMEM instead of a frame with a
 * hole in it.
 */
#include "proto.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define FW_INITIAL 256

static int fw_write(void *data, const char *buf, size_t len)
{
    msgpack_sbuffer *sb = data;

    if (sb->data == NULL)
        return -1;
    if (len == 0) /* msgpack-c passes NULL for an empty str body */
        return 0;
    if (sb->alloc - sb->size < len) {
        size_t cap = sb->alloc;
        while (cap - sb->size < len) {
            if (cap > SIZE_MAX / 2)
                goto fail;
            cap *= 2;
        }
        char *p = realloc(sb->data, cap);
        if (p == NULL)
            goto fail;
        sb->data = p;
        sb->alloc = cap;
    }
    memcpy(sb->data + sb->size, buf, len);
    sb->size += len;
    return 0;
fail:
    free(sb->data);
    sb->data = NULL;
    sb->size = 0;
    sb->alloc = 0;
    return -1;
}

int sinkd_fw_init(sinkd_fw *w)
{
    if (w == NULL)
        return -EINVAL;
    w->sb.data = malloc(FW_INITIAL);
    if (w->sb.data == NULL) {
        w->sb.size = w->sb.alloc = 0;
        return -ENOMEM;
    }
    memset(w->sb.data, 0, SINKD_FRAME_HEADER);
    w->sb.size = SINKD_FRAME_HEADER;
    w->sb.alloc = FW_INITIAL;
    msgpack_packer_init(&w->pk, &w->sb, fw_write);
    return 0;
}

void sinkd_fw_free(sinkd_fw *w)
{
    if (w == NULL)
        return;
    free(w->sb.data);
    w->sb.data = NULL;
    w->sb.size = w->sb.alloc = 0;
}

long sinkd_fw_finish(sinkd_fw *w, size_t max_frame)
{
    if (w == NULL)
        return -EINVAL;
    if (w->sb.data == NULL)
        return -ENOMEM;
    size_t payload = w->sb.size - SINKD_FRAME_HEADER;
    if (payload > UINT32_MAX || (max_frame && payload > max_frame))
        return -EMSGSIZE;
    uint8_t *h = (uint8_t *)w->sb.data;
    h[0] = (uint8_t)(payload >> 24);
    h[1] = (uint8_t)(payload >> 16);
    h[2] = (uint8_t)(payload >> 8);
    h[3] = (uint8_t)payload;
    return (long)w->sb.size;
}

uint8_t *sinkd_fw_release(sinkd_fw *w, size_t *len)
{
    if (w == NULL || len == NULL)
        return NULL;
    uint8_t *p = (uint8_t *)w->sb.data;
    *len = p ? w->sb.size : 0;
    w->sb.data = NULL;
    w->sb.size = w->sb.alloc = 0;
    return p;
}

void sinkd_pack_strn(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str_with_body(pk, s, n);
}

/* NULL packs as nil: "no value" stays distinguishable from "". */
void sinkd_pack_str(msgpack_packer *pk, const char *s)
{
    if (s == NULL)
        msgpack_pack_nil(pk);
    else
        sinkd_pack_strn(pk, s, strlen(s));
}

void sinkd_pack_kv_str(msgpack_packer *pk, const char *key, const char *val)
{
    sinkd_pack_str(pk, key);
    sinkd_pack_str(pk, val);
}

void sinkd_pack_kv_u64(msgpack_packer *pk, const char *key, uint64_t v)
{
    sinkd_pack_str(pk, key);
    msgpack_pack_uint64(pk, v);
}

void sinkd_pack_kv_i64(msgpack_packer *pk, const char *key, int64_t v)
{
    sinkd_pack_str(pk, key);
    msgpack_pack_int64(pk, v);
}

void sinkd_pack_kv_f64(msgpack_packer *pk, const char *key, double v)
{
    sinkd_pack_str(pk, key);
    msgpack_pack_double(pk, v);
}

void sinkd_pack_kv_bool(msgpack_packer *pk, const char *key, bool v)
{
    sinkd_pack_str(pk, key);
    if (v)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
}

void sinkd_pack_reply_head(msgpack_packer *pk, uint64_t id, uint32_t extra)
{
    msgpack_pack_map(pk, 2 + (size_t)extra);
    sinkd_pack_kv_u64(pk, "id", id);
    sinkd_pack_kv_bool(pk, "ok", true);
}

void sinkd_pack_event_head(msgpack_packer *pk, uint64_t id, const char *ev, uint32_t extra)
{
    msgpack_pack_map(pk, 2 + (size_t)extra);
    sinkd_pack_kv_u64(pk, "id", id);
    sinkd_pack_kv_str(pk, "ev", ev);
}

void sinkd_pack_request_head(msgpack_packer *pk, const char *op, uint64_t id, uint32_t extra)
{
    msgpack_pack_map(pk, 2 + (size_t)extra);
    sinkd_pack_kv_str(pk, "op", op);
    sinkd_pack_kv_u64(pk, "id", id);
}

uint8_t *sinkd_frame_error(uint64_t id, bool has_id, sinkd_errcode code,
                           const char *message, size_t *len)
{
    sinkd_fw w;

    if (len == NULL || sinkd_fw_init(&w) < 0)
        return NULL;
    msgpack_pack_map(&w.pk, has_id ? 2 : 1);
    if (has_id)
        sinkd_pack_kv_u64(&w.pk, "id", id);
    sinkd_pack_str(&w.pk, "error");
    msgpack_pack_map(&w.pk, 2);
    sinkd_pack_kv_str(&w.pk, "code", sinkd_errcode_name(code));
    sinkd_pack_kv_str(&w.pk, "message", message ? message : sinkd_errcode_name(code));
    if (sinkd_fw_finish(&w, 0) < 0) {
        sinkd_fw_free(&w);
        return NULL;
    }
    return sinkd_fw_release(&w, len);
}
