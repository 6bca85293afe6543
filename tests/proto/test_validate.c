/* The guarded decoder: every msgpack format is accepted and decodes to the
 * right object; every hostile encoding is refused before msgpack-c runs. */
#include "proto.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

/* {"a": <value>}: the encodings below are written out by hand from the
 * msgpack specification. */
#define WRAP 0x81, 0xa1, 'a'

typedef struct {
    const char *name;
    uint8_t bytes[48];
    size_t len;
    msgpack_object_type type;
} format_case;

#define F(name, type, ...) \
    { name, { WRAP, __VA_ARGS__ }, sizeof((uint8_t[]){ WRAP, __VA_ARGS__ }), type }

static const format_case formats[] = {
    F("positive fixint", MSGPACK_OBJECT_POSITIVE_INTEGER, 0x7f),
    F("negative fixint", MSGPACK_OBJECT_NEGATIVE_INTEGER, 0xe0),
    F("nil", MSGPACK_OBJECT_NIL, 0xc0),
    F("false", MSGPACK_OBJECT_BOOLEAN, 0xc2),
    F("true", MSGPACK_OBJECT_BOOLEAN, 0xc3),
    F("uint8", MSGPACK_OBJECT_POSITIVE_INTEGER, 0xcc, 0xff),
    F("uint16", MSGPACK_OBJECT_POSITIVE_INTEGER, 0xcd, 0xff, 0xff),
    F("uint32", MSGPACK_OBJECT_POSITIVE_INTEGER, 0xce, 0xff, 0xff, 0xff, 0xff),
    F("uint64", MSGPACK_OBJECT_POSITIVE_INTEGER, 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
    F("int8", MSGPACK_OBJECT_NEGATIVE_INTEGER, 0xd0, 0x80),
    F("int16", MSGPACK_OBJECT_NEGATIVE_INTEGER, 0xd1, 0x80, 0x00),
    F("int32", MSGPACK_OBJECT_NEGATIVE_INTEGER, 0xd2, 0x80, 0x00, 0x00, 0x00),
    F("int64", MSGPACK_OBJECT_NEGATIVE_INTEGER, 0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0),
    F("float32", MSGPACK_OBJECT_FLOAT32, 0xca, 0x3f, 0xc0, 0x00, 0x00),
    F("float64", MSGPACK_OBJECT_FLOAT64, 0xcb, 0xc0, 0x02, 0, 0, 0, 0, 0, 0),
    F("fixstr", MSGPACK_OBJECT_STR, 0xa3, 'a', 'b', 'c'),
    F("empty fixstr", MSGPACK_OBJECT_STR, 0xa0),
    F("str8", MSGPACK_OBJECT_STR, 0xd9, 0x02, 'h', 'i'),
    F("str16", MSGPACK_OBJECT_STR, 0xda, 0x00, 0x01, 'z'),
    F("str32", MSGPACK_OBJECT_STR, 0xdb, 0x00, 0x00, 0x00, 0x01, 'z'),
    F("bin8", MSGPACK_OBJECT_BIN, 0xc4, 0x02, 0x01, 0x02),
    F("bin16", MSGPACK_OBJECT_BIN, 0xc5, 0x00, 0x01, 0x01),
    F("bin32", MSGPACK_OBJECT_BIN, 0xc6, 0x00, 0x00, 0x00, 0x00),
    F("fixarray", MSGPACK_OBJECT_ARRAY, 0x92, 0x01, 0x02),
    F("array16", MSGPACK_OBJECT_ARRAY, 0xdc, 0x00, 0x02, 0x01, 0x02),
    F("array32", MSGPACK_OBJECT_ARRAY, 0xdd, 0x00, 0x00, 0x00, 0x01, 0xc0),
    F("fixmap", MSGPACK_OBJECT_MAP, 0x81, 0x01, 0x02),
    F("map16", MSGPACK_OBJECT_MAP, 0xde, 0x00, 0x02, 0x01, 0x02, 0x03, 0x04),
    F("map32", MSGPACK_OBJECT_MAP, 0xdf, 0x00, 0x00, 0x00, 0x00),
    F("fixext1", MSGPACK_OBJECT_EXT, 0xd4, 0x05, 0xaa),
    F("fixext2", MSGPACK_OBJECT_EXT, 0xd5, 0x05, 0xaa, 0xbb),
    F("fixext4", MSGPACK_OBJECT_EXT, 0xd6, 0x05, 1, 2, 3, 4),
    F("fixext8", MSGPACK_OBJECT_EXT, 0xd7, 0x05, 1, 2, 3, 4, 5, 6, 7, 8),
    F("fixext16", MSGPACK_OBJECT_EXT, 0xd8, 0x05, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8),
    F("ext8", MSGPACK_OBJECT_EXT, 0xc7, 0x03, 0x02, 'a', 'b', 'c'),
    F("ext16", MSGPACK_OBJECT_EXT, 0xc8, 0x00, 0x01, 0x02, 'z'),
    F("ext32", MSGPACK_OBJECT_EXT, 0xc9, 0x00, 0x00, 0x00, 0x00, 0x02),
    F("timestamp32", MSGPACK_OBJECT_EXT, 0xd6, 0xff, 0x5f, 0x5e, 0x10, 0x00),
    F("timestamp64", MSGPACK_OBJECT_EXT, 0xd7, 0xff, 0xee, 0x6b, 0x27, 0xfc, 0x00, 0x00, 0x00, 0x01),
    F("timestamp96", MSGPACK_OBJECT_EXT, 0xc7, 0x0c, 0xff, 0x3b, 0x9a, 0xc9, 0xff,
      0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
};

Test(validate, every_format_is_accepted_and_decoded)
{
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++) {
        const format_case *c = &formats[i];
        const char *why = NULL;
        sinkd_msg m;

        cr_assert_eq(sinkd_msg_validate(c->bytes, c->len, &why), 0, "%s: %s", c->name, why);
        cr_assert_eq(sinkd_msg_decode(c->bytes, c->len, &m, &why), 0, "%s: %s", c->name, why);
        const msgpack_object *v = sinkd_map_get(&m.root, "a");
        cr_assert_not_null(v, "%s", c->name);
        cr_assert_eq(v->type, c->type, "%s: type %d", c->name, v->type);
        sinkd_msg_free(&m);
    }
}

/* Decoded values agree with what the hand-written bytes say. */
Test(validate, decoded_values)
{
    const char *why = NULL;
    sinkd_msg m;
    const msgpack_object *v;

    cr_assert_eq(sinkd_msg_decode(formats[8].bytes, formats[8].len, &m, &why), 0);
    v = sinkd_map_get(&m.root, "a");
    cr_assert_eq(v->via.u64, UINT64_MAX);
    sinkd_msg_free(&m);
    cr_assert_eq(sinkd_msg_decode(formats[12].bytes, formats[12].len, &m, &why), 0);
    v = sinkd_map_get(&m.root, "a");
    cr_assert_eq(v->via.i64, INT64_MIN);
    sinkd_msg_free(&m);
    cr_assert_eq(sinkd_msg_decode(formats[13].bytes, formats[13].len, &m, &why), 0);
    v = sinkd_map_get(&m.root, "a");
    cr_assert_float_eq(v->via.f64, 1.5, 0.0);
    sinkd_msg_free(&m);
    cr_assert_eq(sinkd_msg_decode(formats[14].bytes, formats[14].len, &m, &why), 0);
    v = sinkd_map_get(&m.root, "a");
    cr_assert_float_eq(v->via.f64, -2.25, 0.0);
    sinkd_msg_free(&m);
    cr_assert_eq(sinkd_msg_decode(formats[34].bytes, formats[34].len, &m, &why), 0);
    v = sinkd_map_get(&m.root, "a");
    cr_assert_eq(v->via.ext.type, 2);
    cr_assert_eq(v->via.ext.size, 3);
    cr_assert_eq(memcmp(v->via.ext.ptr, "abc", 3), 0);
    sinkd_msg_free(&m);
}

typedef struct {
    const char *name;
    uint8_t bytes[24];
    size_t len;
    const char *why;
} hostile_case;

#define H(name, why, ...) \
    { name, { __VA_ARGS__ }, sizeof((uint8_t[]){ __VA_ARGS__ }), why }

static const hostile_case hostile[] = {
    H("root array", "root object is not a map", 0x91, 0x01),
    H("root int", "root object is not a map", 0x01),
    H("root str", "root object is not a map", 0xa1, 'a'),
    H("root map32 claiming 2^32-1 entries", "map count exceeds the bytes left",
      0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'a', 0x01, 0x02, 0x03),
    H("fixarray over bytes", "array count exceeds the bytes left", WRAP, 0x93, 0x01, 0x02),
    H("array16 over bytes", "array count exceeds the bytes left", WRAP, 0xdc, 0x00, 0x03, 0x01, 0x02),
    H("array32 over bytes", "array count exceeds the bytes left",
      WRAP, 0xdd, 0xff, 0xff, 0xff, 0xff, 0x01),
    H("fixmap over bytes", "map count exceeds the bytes left", WRAP, 0x82, 0x01, 0x02, 0x03),
    H("map16 over bytes", "map count exceeds the bytes left", WRAP, 0xde, 0x00, 0x02, 0x01, 0x02, 0x03),
    H("map32 over bytes", "map count exceeds the bytes left",
      WRAP, 0xdf, 0x80, 0x00, 0x00, 0x00, 0x01, 0x02),
    H("str8 past end", "str runs past the end of the payload", WRAP, 0xd9, 0x05, 'a'),
    H("str16 past end", "str runs past the end of the payload", WRAP, 0xda, 0x01, 0x00, 'a'),
    H("str32 past end", "str runs past the end of the payload",
      WRAP, 0xdb, 0xff, 0xff, 0xff, 0xff, 'a', 'b'),
    H("fixstr past end", "str runs past the end of the payload", WRAP, 0xa5, 'a'),
    H("str32 length truncated", "str runs past the end of the payload", WRAP, 0xdb, 0x00, 0x00),
    H("bin8 past end", "bin runs past the end of the payload", WRAP, 0xc4, 0x02, 0x00),
    H("bin32 past end", "bin runs past the end of the payload", WRAP, 0xc6, 0x7f, 0, 0, 0, 0),
    H("ext8 past end", "ext data runs past the end of the payload", WRAP, 0xc7, 0x04, 0x01, 0x00),
    H("ext32 past end", "ext data runs past the end of the payload",
      WRAP, 0xc9, 0xff, 0xff, 0xff, 0xff, 0x01),
    H("ext without type", "ext data runs past the end of the payload", WRAP, 0xc7, 0x00),
    H("fixext16 past end", "ext data runs past the end of the payload", WRAP, 0xd8, 0x01, 0x00),
    H("timestamp of 2 bytes", "malformed timestamp", WRAP, 0xd5, 0xff, 0x00, 0x00),
    H("timestamp64 nanoseconds >= 1e9", "malformed timestamp",
      WRAP, 0xd7, 0xff, 0xff, 0xff, 0xff, 0xfc, 0, 0, 0, 0),
    H("reserved 0xc1", "reserved byte 0xc1", WRAP, 0xc1),
    H("trailing byte", "trailing bytes after the root map", 0x80, 0x00),
    H("two maps", "trailing bytes after the root map", 0x80, 0x80),
    H("truncated uint64", "truncated integer", WRAP, 0xcf, 0x00, 0x00),
    H("truncated int16", "truncated integer", WRAP, 0xd1, 0x00),
    H("truncated float32", "truncated float", WRAP, 0xca, 0x00),
    H("truncated float64", "truncated float", WRAP, 0xcb, 0x00),
    H("truncated array16 header", "truncated array header", WRAP, 0xdc, 0x00),
    H("truncated map32 header", "truncated map header", WRAP, 0xdf, 0x00, 0x00),
    H("map missing its last value", "payload ends inside an array or map", 0x81, 0xa1, 'a'),
};

Test(validate, hostile_encodings_are_refused)
{
    for (size_t i = 0; i < sizeof hostile / sizeof hostile[0]; i++) {
        const hostile_case *c = &hostile[i];
        const char *why = NULL;
        sinkd_msg m;

        cr_assert_eq(sinkd_msg_validate(c->bytes, c->len, &why), -EBADMSG, "%s accepted", c->name);
        cr_assert_str_eq(why, c->why, "%s", c->name);
        why = NULL;
        cr_assert_eq(sinkd_msg_decode(c->bytes, c->len, &m, &why), -EBADMSG, "%s", c->name);
        cr_assert_str_eq(why, c->why, "%s", c->name);
        cr_assert_not(m.live);
        sinkd_msg_free(&m); /* safe on a failed message */
    }
}

Test(validate, empty_and_null_payloads)
{
    const char *why = NULL;
    cr_assert_eq(sinkd_msg_validate(NULL, 0, &why), -EBADMSG);
    cr_assert_str_eq(why, "empty payload");
    cr_assert_eq(sinkd_msg_validate(NULL, 5, &why), -EBADMSG);
    cr_assert_eq(sinkd_msg_validate((const uint8_t *)"", 0, NULL), -EBADMSG);
}

/* Counts exactly equal to the bytes left are legal (one byte per element). */
Test(validate, counts_at_the_boundary)
{
    static const uint8_t arr[] = { WRAP, 0xdc, 0x00, 0x03, 0x01, 0x02, 0x03 };
    static const uint8_t map[] = { WRAP, 0xde, 0x00, 0x02, 0x01, 0x02, 0x03, 0x04 };
    cr_assert_eq(sinkd_msg_validate(arr, sizeof arr, NULL), 0);
    cr_assert_eq(sinkd_msg_validate(map, sizeof map, NULL), 0);
}

/* {"a": [[...[{}]...]]} with @levels containers in all, the root included. */
static uint8_t *nested(unsigned levels, size_t *len)
{
    uint8_t *p = malloc(levels + 3);
    size_t n = 0;
    p[n++] = 0x81;
    p[n++] = 0xa1;
    p[n++] = 'a';
    for (unsigned i = 0; i < levels - 2; i++)
        p[n++] = 0x91;
    p[n++] = 0x80;
    *len = n;
    return p;
}

Test(validate, depth_32_is_accepted_and_33_refused)
{
    size_t len;
    const char *why = NULL;
    sinkd_msg m;
    uint8_t *p = nested(SINKD_DEPTH_MAX, &len);

    /* msgpack-c's own stack holds 32 containers: the limit must still decode */
    cr_assert_eq(sinkd_msg_decode(p, len, &m, &why), 0, "%s", why);
    const msgpack_object *o = sinkd_map_get(&m.root, "a");
    int depth = 2;
    while (o->type == MSGPACK_OBJECT_ARRAY) {
        o = &o->via.array.ptr[0];
        depth++;
    }
    cr_assert_eq(o->type, MSGPACK_OBJECT_MAP);
    cr_assert_eq(depth, SINKD_DEPTH_MAX);
    sinkd_msg_free(&m);
    free(p);

    p = nested(SINKD_DEPTH_MAX + 1, &len);
    cr_assert_eq(sinkd_msg_validate(p, len, &why), -EBADMSG);
    cr_assert_str_eq(why, "nesting deeper than 32 levels");
    free(p);
}

Test(validate, ten_thousand_nested_arrays)
{
    size_t len;
    const char *why = NULL;
    sinkd_msg m;
    uint8_t *p = nested(10000, &len);
    cr_assert_eq(sinkd_msg_decode(p, len, &m, &why), -EBADMSG);
    cr_assert_str_eq(why, "nesting deeper than 32 levels");
    free(p);
}

/* A 10-byte payload claiming 2^32-1 entries: msgpack-c alone would try to
 * allocate 2^32 * 32 bytes. The guard refuses it with no allocation worth
 * measuring (the sanitizer's allocator does not report mallinfo). */
Test(validate, huge_count_is_refused_without_allocating)
{
    static const uint8_t p[] = { 0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'a', 0x01, 0x02, 0x03 };
    const char *why = NULL;
    sinkd_msg m;
    struct mallinfo2 before = mallinfo2();
    cr_assert_eq(sinkd_msg_decode(p, sizeof p, &m, &why), -EBADMSG);
    struct mallinfo2 after = mallinfo2();
    cr_assert_str_eq(why, "map count exceeds the bytes left");
#ifndef __SANITIZE_ADDRESS__
    cr_assert_lt(after.uordblks + after.hblkhd, before.uordblks + before.hblkhd + 4096);
#else
    (void)before;
    (void)after;
#endif
}
