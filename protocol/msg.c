/*
 * Decoding a validated payload into a msgpack-c zone, and typed access to
 * the fields of a decoded map.
 */
#include "proto.h"

#include <errno.h>
#include <string.h>

/* Zone chunks grow on demand; most requests fit in the first one. */
#define MSG_ZONE_CHUNK 2048

int sinkd_msg_decode(const uint8_t *payload, size_t len, sinkd_msg *out, const char **why)
{
    const char *unused;

    if (why == NULL)
        why = &unused;
    if (out == NULL) {
        *why = "no message to decode into";
        return -EINVAL;
    }
    out->live = false;
    int rc = sinkd_msg_validate(payload, len, why);
    if (rc < 0)
        return rc;
    if (!msgpack_zone_init(&out->zone, MSG_ZONE_CHUNK)) {
        *why = "out of memory";
        return -ENOMEM;
    }
    out->live = true;
    size_t off = 0;
    switch (msgpack_unpack((const char *)payload, len, &off, &out->zone, &out->root)) {
    case MSGPACK_UNPACK_SUCCESS:
        /* The validator accepted exactly one map with no trailing bytes. */
        return 0;
    case MSGPACK_UNPACK_NOMEM_ERROR:
        *why = "out of memory";
        rc = -ENOMEM;
        break;
    default:
        /* Unreachable while the validator is at least as strict as msgpack-c. */
        *why = "msgpack decoder rejected the payload";
        rc = -EBADMSG;
        break;
    }
    sinkd_msg_free(out);
    return rc;
}

void sinkd_msg_free(sinkd_msg *m)
{
    if (m == NULL || !m->live)
        return;
    msgpack_zone_destroy(&m->zone);
    m->live = false;
    m->root.type = MSGPACK_OBJECT_NIL;
}

bool sinkd_obj_streq(const msgpack_object *o, const char *s)
{
    if (o == NULL || s == NULL || o->type != MSGPACK_OBJECT_STR)
        return false;
    size_t n = strlen(s);
    /* msgpack-c leaves ptr NULL for an empty str */
    return o->via.str.size == n && (n == 0 || memcmp(o->via.str.ptr, s, n) == 0);
}

/* The first entry wins when a map repeats a key. */
const msgpack_object *sinkd_map_get(const msgpack_object *map, const char *key)
{
    if (map == NULL || key == NULL || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (sinkd_obj_streq(&kv->key, key))
            return &kv->val;
    }
    return NULL;
}

/* Sets *@o to the value of @key. Returns 0, -ENOENT when it is absent or
 * nil, -EINVAL when @map is not a map or the caller gave nowhere to put the
 * value (@has_out false). */
static int lookup(const msgpack_object *map, const char *key, bool has_out,
                  const msgpack_object **o)
{
    *o = NULL;
    if (map == NULL || key == NULL || map->type != MSGPACK_OBJECT_MAP || !has_out)
        return -EINVAL;
    *o = sinkd_map_get(map, key);
    if (*o == NULL || (*o)->type == MSGPACK_OBJECT_NIL)
        return -ENOENT;
    return 0;
}

/* lookup, and -EINVAL unless the value has @type. */
static int typed(const msgpack_object *map, const char *key, msgpack_object_type type,
                 bool has_out, const msgpack_object **o)
{
    int rc = lookup(map, key, has_out, o);
    if (rc == 0 && (*o)->type != type)
        return -EINVAL;
    return rc;
}

/* str and bin share their shape; msgpack-c leaves ptr NULL when empty, and
 * callers get "" instead so that memcpy(dst, p, 0) stays defined. */
static int map_bytes(const msgpack_object *map, const char *key, msgpack_object_type type,
                     const char **p, size_t *len)
{
    const msgpack_object *o;
    int rc = typed(map, key, type, p && len, &o);
    if (rc == 0) {
        bool str = type == MSGPACK_OBJECT_STR;
        *len = str ? o->via.str.size : o->via.bin.size;
        *p = *len == 0 ? "" : str ? o->via.str.ptr : o->via.bin.ptr;
    }
    return rc;
}

int sinkd_map_str(const msgpack_object *map, const char *key, const char **s, size_t *len)
{
    return map_bytes(map, key, MSGPACK_OBJECT_STR, s, len);
}

int sinkd_map_u64(const msgpack_object *map, const char *key, uint64_t *v)
{
    const msgpack_object *o;
    int rc = typed(map, key, MSGPACK_OBJECT_POSITIVE_INTEGER, v, &o);
    if (rc == 0)
        *v = o->via.u64;
    return rc;
}

int sinkd_map_i64(const msgpack_object *map, const char *key, int64_t *v)
{
    const msgpack_object *o;
    int rc = lookup(map, key, v, &o);
    if (rc < 0)
        return rc;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *v = o->via.i64;
        return 0;
    }
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > INT64_MAX)
        return -EINVAL;
    *v = (int64_t)o->via.u64;
    return 0;
}

int sinkd_map_f64(const msgpack_object *map, const char *key, double *v)
{
    const msgpack_object *o;
    int rc = lookup(map, key, v, &o);
    if (rc < 0)
        return rc;
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        *v = o->via.f64;
        return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *v = (double)o->via.u64;
        return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *v = (double)o->via.i64;
        return 0;
    default:
        return -EINVAL;
    }
}

int sinkd_map_bool(const msgpack_object *map, const char *key, bool *v)
{
    const msgpack_object *o;
    int rc = typed(map, key, MSGPACK_OBJECT_BOOLEAN, v, &o);
    if (rc == 0)
        *v = o->via.boolean;
    return rc;
}

int sinkd_map_array(const msgpack_object *map, const char *key, const msgpack_object_array **a)
{
    const msgpack_object *o;
    int rc = typed(map, key, MSGPACK_OBJECT_ARRAY, a, &o);
    if (rc == 0)
        *a = &o->via.array;
    return rc;
}

int sinkd_map_map(const msgpack_object *map, const char *key, const msgpack_object **m)
{
    const msgpack_object *o;
    int rc = typed(map, key, MSGPACK_OBJECT_MAP, m, &o);
    if (rc == 0)
        *m = o;
    return rc;
}

int sinkd_map_bin(const msgpack_object *map, const char *key, const void **p, size_t *len)
{
    const char *bytes;
    int rc = map_bytes(map, key, MSGPACK_OBJECT_BIN, p ? &bytes : NULL, len);
    if (rc == 0)
        *p = bytes;
    return rc;
}
