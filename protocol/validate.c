/*
 * The guard in front of msgpack-c. msgpack_unpack allocates an array of
 * objects from each container's declared count before it has seen a single
 * element, and keeps open containers on a fixed 32-entry stack. So the payload is
 * walked here first, once, iteratively, with every length checked against
 * the bytes that are actually there. After this pass succeeds, every object
 * msgpack-c will create exists in the payload, which bounds its allocation
 * by a small multiple of the payload size.
 */
#include "proto.h"

#include <errno.h>

#define STR_(x) #x
#define STR(x) STR_(x)

typedef struct {
    const uint8_t *p;
    size_t len;
    size_t pos;
} cursor;

static uint64_t be_read(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Reads an n-byte big-endian length field; false when truncated. */
static bool take_uint(cursor *c, unsigned n, uint64_t *v)
{
    if (c->len - c->pos < n)
        return false;
    *v = be_read(c->p + c->pos, n);
    c->pos += n;
    return true;
}

static bool skip(cursor *c, uint64_t n)
{
    if (c->len - c->pos < n)
        return false;
    c->pos += (size_t)n;
    return true;
}

/* A timestamp (ext type -1) has 4, 8 or 12 bytes of data; the 64- and
 * 96-bit forms carry nanoseconds that must stay below one second. */
static bool timestamp_ok(const uint8_t *data, uint64_t n)
{
    if (n == 4)
        return true;
    if (n == 8)
        return (be_read(data, 4) >> 2) <= 999999999u;
    if (n == 12)
        return be_read(data, 4) <= 999999999u;
    return false;
}

/* Body of an ext whose @n data bytes follow a type byte at c->pos. */
static const char *take_ext(cursor *c, uint64_t n)
{
    if (c->len - c->pos < 1 || c->len - c->pos - 1 < n)
        return "ext data runs past the end of the payload";
    int8_t type = (int8_t)c->p[c->pos];
    const uint8_t *data = c->p + c->pos + 1;
    c->pos += 1 + (size_t)n;
    if (type == -1 && !timestamp_ok(data, n))
        return "malformed timestamp";
    return NULL;
}

/*
 * Classify the object at c->pos and step over its header (and over its body
 * for scalars). For a container, *@items gets the number of child objects it
 * holds (map entries count twice) and *@is_container is set. Returns NULL or
 * a static message.
 */
static const char *take_header(cursor *c, bool *is_container, bool *is_map, uint64_t *items)
{
    uint64_t n;
    uint8_t b = c->p[c->pos++];

    *is_container = false;
    *is_map = false;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
        return NULL; /* fixint, nil, false, true */
    if (b >= 0xa0 && b <= 0xbf)
        return skip(c, b & 0x1f) ? NULL : "str runs past the end of the payload";
    if (b >= 0x80 && b <= 0x9f) {
        *is_container = true;
        *is_map = b <= 0x8f;
        *items = *is_map ? 2u * (b & 0x0f) : (b & 0x0f);
        return NULL;
    }
    switch (b) {
    case 0xc1:
        return "reserved byte 0xc1";
    case 0xcc: case 0xd0: return skip(c, 1) ? NULL : "truncated integer";
    case 0xcd: case 0xd1: return skip(c, 2) ? NULL : "truncated integer";
    case 0xce: case 0xd2: return skip(c, 4) ? NULL : "truncated integer";
    case 0xcf: case 0xd3: return skip(c, 8) ? NULL : "truncated integer";
    case 0xca: return skip(c, 4) ? NULL : "truncated float";
    case 0xcb: return skip(c, 8) ? NULL : "truncated float";
    case 0xd9: case 0xda: case 0xdb:
        if (!take_uint(c, 1u << (b - 0xd9), &n) || !skip(c, n))
            return "str runs past the end of the payload";
        return NULL;
    case 0xc4: case 0xc5: case 0xc6:
        if (!take_uint(c, 1u << (b - 0xc4), &n) || !skip(c, n))
            return "bin runs past the end of the payload";
        return NULL;
    case 0xc7: case 0xc8: case 0xc9:
        if (!take_uint(c, 1u << (b - 0xc7), &n))
            return "ext data runs past the end of the payload";
        return take_ext(c, n);
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
        return take_ext(c, 1u << (b - 0xd4));
    case 0xdc: case 0xdd:
        if (!take_uint(c, b == 0xdc ? 2 : 4, &n))
            return "truncated array header";
        *is_container = true;
        *items = n;
        return NULL;
    default: /* 0xde, 0xdf: the only bytes left */
        if (!take_uint(c, b == 0xde ? 2 : 4, &n))
            return "truncated map header";
        *is_container = true;
        *is_map = true;
        *items = 2 * n;
        return NULL;
    }
}

int sinkd_msg_validate(const uint8_t *payload, size_t len, const char **why)
{
    /* left[d] = child objects still expected by the container at depth d+1 */
    uint64_t left[SINKD_DEPTH_MAX];
    unsigned depth = 0;
    cursor c = { payload, len, 0 };
    const char *err = NULL;

    if (payload == NULL && len > 0)
        err = "no payload";
    else if (len == 0)
        err = "empty payload";
    else if (payload[0] != 0xde && payload[0] != 0xdf && (payload[0] & 0xf0) != 0x80)
        err = "root object is not a map";

    while (err == NULL) {
        bool container, is_map;
        uint64_t items = 0;

        if (c.pos == c.len) {
            err = "payload ends inside an array or map";
            break;
        }
        err = take_header(&c, &container, &is_map, &items);
        if (err)
            break;
        if (container) {
            if (depth == SINKD_DEPTH_MAX) {
                err = "nesting deeper than " STR(SINKD_DEPTH_MAX) " levels";
                break;
            }
            /* Every child takes at least one byte (a map entry two). */
            if (items > c.len - c.pos) {
                err = is_map ? "map count exceeds the bytes left"
                             : "array count exceeds the bytes left";
                break;
            }
            if (items > 0) {
                left[depth++] = items;
                continue;
            }
        }
        /* One object complete: close every container it completes. */
        while (depth > 0 && --left[depth - 1] == 0)
            depth--;
        if (depth == 0)
            break;
    }
    if (err == NULL && c.pos != c.len)
        err = "trailing bytes after the root map";
    if (err) {
        if (why)
            *why = err;
        return -EBADMSG;
    }
    return 0;
}
