/*
 * libFuzzer target for the wire codec. The input is a byte stream as a
 * client would send it. It is fed to a frame reader in pieces whose sizes
 * derive from a hash of the input, every frame is decoded, every field is
 * read through the typed getters, and each decoded message is re-encoded
 * and decoded again. Checks (abort on failure):
 *   - the reader returns exactly the frames a naive whole-buffer parse finds,
 *     and refuses the stream exactly where that parse meets a length over
 *     max_frame;
 *   - the reader never holds more than one frame plus the current piece;
 *   - a getter that succeeds agrees with the object sinkd_map_get returns;
 *   - anything that decoded re-encodes into a payload that decodes, and
 *     re-encoding that gives the same bytes;
 *   - every error reply built on the way decodes back to its code.
 * tests/fuzz/replay.c runs the same function over the committed corpus.
 */
#include "proto.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                              \
    do {                                                                      \
        if (!(c)) {                                                           \
            fprintf(stderr, "fuzz_frame: check failed: %s (%s:%d)\n", #c,     \
                    __FILE__, __LINE__);                                      \
            abort();                                                          \
        }                                                                     \
    } while (0)

static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h | 1; /* xorshift state must not be 0 */
}

/* The frames of @data as a naive parse of the whole buffer sees them. */
typedef struct {
    size_t off[8192];
    size_t len[8192];
    size_t n;
    bool refused; /* a length over max_frame follows the n frames */
} frame_list;

static void naive_frames(const uint8_t *data, size_t size, size_t max_frame, frame_list *fl)
{
    size_t p = 0;
    fl->n = 0;
    fl->refused = false;
    while (size - p >= SINKD_FRAME_HEADER) {
        size_t declared = (size_t)data[p] << 24 | (size_t)data[p + 1] << 16 |
                          (size_t)data[p + 2] << 8 | data[p + 3];
        if (declared > max_frame) {
            fl->refused = true;
            return;
        }
        if (size - p - SINKD_FRAME_HEADER < declared)
            return;
        CHECK(fl->n < sizeof fl->off / sizeof fl->off[0]);
        fl->off[fl->n] = p + SINKD_FRAME_HEADER;
        fl->len[fl->n++] = declared;
        p += SINKD_FRAME_HEADER + declared;
    }
}

static void check_error_frame(sinkd_errcode code, const char *message)
{
    size_t len;
    uint8_t *f = sinkd_frame_error(7, true, code, message, &len);
    CHECK(f != NULL && len > SINKD_FRAME_HEADER);
    sinkd_msg m;
    CHECK(sinkd_msg_decode(f + SINKD_FRAME_HEADER, len - SINKD_FRAME_HEADER, &m, NULL) == 0);
    const msgpack_object *err;
    const char *name;
    size_t name_len;
    CHECK(sinkd_map_map(&m.root, "error", &err) == 0);
    CHECK(sinkd_map_str(err, "code", &name, &name_len) == 0);
    CHECK(sinkd_errcode_from_name(name, name_len) == code);
    sinkd_msg_free(&m);
    free(f);
}

/* Every getter on @key of @map must agree with sinkd_map_get. */
static void read_key(const msgpack_object *map, const char *key)
{
    const msgpack_object *o = sinkd_map_get(map, key);
    bool present = o && o->type != MSGPACK_OBJECT_NIL;
    const char *s;
    size_t n;
    uint64_t u;
    int64_t i;
    double d;
    bool b;
    const msgpack_object_array *a;
    const msgpack_object *m;
    const void *bin;
    int rc;

    rc = sinkd_map_str(map, key, &s, &n);
    CHECK(present ? (rc == 0) == (o->type == MSGPACK_OBJECT_STR) : rc == -ENOENT);
    CHECK(rc != 0 || (s != NULL && n == o->via.str.size &&
                      (n == 0 || memcmp(s, o->via.str.ptr, n) == 0)));
    rc = sinkd_map_u64(map, key, &u);
    CHECK(present ? (rc == 0) == (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) : rc == -ENOENT);
    CHECK(rc != 0 || u == o->via.u64);
    rc = sinkd_map_i64(map, key, &i);
    CHECK(present || rc == -ENOENT);
    CHECK(rc != 0 || (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ? i == o->via.i64
                                                                  : (uint64_t)i == o->via.u64));
    rc = sinkd_map_f64(map, key, &d);
    CHECK(present || rc == -ENOENT);
    rc = sinkd_map_bool(map, key, &b);
    CHECK(present ? (rc == 0) == (o->type == MSGPACK_OBJECT_BOOLEAN) : rc == -ENOENT);
    rc = sinkd_map_array(map, key, &a);
    CHECK(present ? (rc == 0) == (o->type == MSGPACK_OBJECT_ARRAY) : rc == -ENOENT);
    rc = sinkd_map_map(map, key, &m);
    CHECK(present ? (rc == 0) == (o->type == MSGPACK_OBJECT_MAP) : rc == -ENOENT);
    rc = sinkd_map_bin(map, key, &bin, &n);
    CHECK(present ? (rc == 0) == (o->type == MSGPACK_OBJECT_BIN) : rc == -ENOENT);
    CHECK(rc != 0 || (bin != NULL && n == o->via.bin.size));
}

/* Depth is bounded by the validator (SINKD_DEPTH_MAX), so recursion is too. */
static void read_map(const msgpack_object *map)
{
    static const char *const known[] = {
        "op", "id", "ok", "ev", "error", "code", "message", "proto_min", "proto_max",
        "client", "size", "shm", "offset", "length", "t_ns",
    };
    for (size_t k = 0; k < sizeof known / sizeof known[0]; k++)
        read_key(map, known[k]);

    for (uint32_t k = 0; k < map->via.map.size; k++) {
        const msgpack_object *key = &map->via.map.ptr[k].key;
        const msgpack_object *val = &map->via.map.ptr[k].val;
        char name[64];
        const char *s;
        size_t n;
        /* msgpack-c gives an empty str a NULL ptr: go through the getter */
        if (key->type == MSGPACK_OBJECT_STR && key->via.str.size < sizeof name) {
            s = key->via.str.size ? key->via.str.ptr : "";
            n = key->via.str.size;
            if (memchr(s, 0, n) == NULL) {
                memcpy(name, s, n);
                name[n] = 0;
                read_key(map, name);
            }
        }
        if (val->type == MSGPACK_OBJECT_MAP)
            read_map(val);
        if (val->type == MSGPACK_OBJECT_ARRAY)
            for (uint32_t e = 0; e < val->via.array.size; e++)
                if (val->via.array.ptr[e].type == MSGPACK_OBJECT_MAP)
                    read_map(&val->via.array.ptr[e]);
    }
}

/* Re-encode @root; returns the malloc'ed frame. */
static uint8_t *encode(const msgpack_object *root, size_t *len)
{
    sinkd_fw w;
    CHECK(sinkd_fw_init(&w) == 0);
    CHECK(msgpack_pack_object(&w.pk, *root) == 0);
    CHECK(sinkd_fw_finish(&w, 0) > 0);
    return sinkd_fw_release(&w, len);
}

static void round_trip(const msgpack_object *root)
{
    size_t len1, len2;
    uint8_t *f1 = encode(root, &len1);
    sinkd_msg m;
    const char *why = NULL;
    int rc = sinkd_msg_decode(f1 + SINKD_FRAME_HEADER, len1 - SINKD_FRAME_HEADER, &m, &why);
    if (rc != 0)
        fprintf(stderr, "fuzz_frame: re-encoded message refused: %s\n", why);
    CHECK(rc == 0);
    uint8_t *f2 = encode(&m.root, &len2);
    CHECK(len1 == len2 && memcmp(f1, f2, len1) == 0);
    sinkd_msg_free(&m);
    free(f1);
    free(f2);
}

static void handle_frame(const uint8_t *payload, size_t len)
{
    sinkd_msg m;
    const char *why = NULL;
    int rc = sinkd_msg_decode(payload, len, &m, &why);
    if (rc < 0) {
        CHECK(rc == -EBADMSG && why != NULL);
        CHECK(sinkd_msg_validate(payload, len, NULL) == -EBADMSG);
        check_error_frame(SINKD_ERR_BAD_FRAME, why);
        return;
    }
    CHECK(m.root.type == MSGPACK_OBJECT_MAP);
    CHECK(sinkd_msg_validate(payload, len, NULL) == 0);
    read_map(&m.root);
    round_trip(&m.root);
    sinkd_msg_free(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static frame_list expect;
    uint64_t seed = fnv1a(data, size);
    size_t max_frame = (seed & 2) ? SINKD_FRAME_MAX_MIN : SINKD_FRAME_MAX_DEFAULT;
    static const size_t piece_max[] = { 1, 3, 16, 256, 65536 };
    size_t piece_cap = piece_max[(seed >> 2) % 5];
    sinkd_frame_reader r;
    size_t got = 0, fed = 0;
    bool refused = false;

    naive_frames(data, size, max_frame, &expect);
    sinkd_frame_reader_init(&r, max_frame);
    while (fed < size && !refused) {
        size_t piece = 1 + next_rand(&seed) % piece_cap;
        if (piece > size - fed)
            piece = size - fed;
        int rc = sinkd_frame_reader_feed(&r, data + fed, piece);
        CHECK(rc == 0);
        fed += piece;
        CHECK(r.len - r.head <= r.max_frame + SINKD_FRAME_HEADER + piece);
        for (;;) {
            const uint8_t *payload;
            size_t len;
            rc = sinkd_frame_reader_next(&r, &payload, &len);
            if (rc == 0)
                break;
            if (rc < 0) {
                CHECK(rc == -EMSGSIZE && expect.refused && got == expect.n);
                CHECK(sinkd_frame_reader_feed(&r, "x", 1) == -EMSGSIZE);
                check_error_frame(SINKD_ERR_FRAME_TOO_LARGE, "frame too large");
                refused = true;
                break;
            }
            CHECK(got < expect.n && len == expect.len[got]);
            CHECK(len == 0 || memcmp(payload, data + expect.off[got], len) == 0);
            got++;
            handle_frame(payload, len);
        }
    }
    CHECK(got == expect.n && refused == expect.refused);
    sinkd_frame_reader_free(&r);
    return 0;
}
