/* Frame building and the error-code table. Expected bytes are written out by
 * hand from the msgpack specification. */
#include "proto.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Decode a whole frame (header checked against its length). */
static void decode_frame(const uint8_t *f, size_t len, sinkd_msg *m)
{
    const char *why = NULL;
    cr_assert_geq(len, SINKD_FRAME_HEADER);
    size_t declared = (size_t)f[0] << 24 | (size_t)f[1] << 16 | (size_t)f[2] << 8 | f[3];
    cr_assert_eq(declared, len - SINKD_FRAME_HEADER);
    cr_assert_eq(sinkd_msg_decode(f + SINKD_FRAME_HEADER, declared, m, &why), 0, "%s", why);
}

Test(writer, error_frame_bytes_with_id)
{
    static const uint8_t want[] = {
        0x00, 0x00, 0x00, 0x2f,
        0x82, 0xa2, 'i', 'd', 0x07,
        0xa5, 'e', 'r', 'r', 'o', 'r', 0x82,
        0xa4, 'c', 'o', 'd', 'e', 0xa9, 'n', 'o', 't', '_', 'f', 'o', 'u', 'n', 'd',
        0xa7, 'm', 'e', 's', 's', 'a', 'g', 'e',
        0xab, 'n', 'o', ' ', 's', 'u', 'c', 'h', ' ', 's', 'h', 'm',
    };
    size_t len = 0;
    uint8_t *f = sinkd_frame_error(7, true, SINKD_ERR_NOT_FOUND, "no such shm", &len);
    cr_assert_not_null(f);
    cr_assert_eq(len, sizeof want);
    cr_assert_arr_eq(f, want, sizeof want);
    free(f);
}

Test(writer, error_frame_without_id)
{
    size_t len = 0;
    sinkd_msg m;
    const msgpack_object *err;
    const char *s;
    size_t n;
    uint64_t id;

    uint8_t *f = sinkd_frame_error(99, false, SINKD_ERR_BAD_FRAME, "payload is not a map", &len);
    cr_assert_not_null(f);
    decode_frame(f, len, &m);
    cr_assert_eq(m.root.via.map.size, 1);
    cr_assert_eq(sinkd_map_u64(&m.root, "id", &id), -ENOENT);
    cr_assert_eq(sinkd_map_map(&m.root, "error", &err), 0);
    cr_assert_eq(sinkd_map_str(err, "code", &s, &n), 0);
    cr_assert_eq(sinkd_errcode_from_name(s, n), SINKD_ERR_BAD_FRAME);
    cr_assert_eq(sinkd_map_str(err, "message", &s, &n), 0);
    cr_assert_eq(n, strlen("payload is not a map"));
    cr_assert_eq(memcmp(s, "payload is not a map", n), 0);
    sinkd_msg_free(&m);
    free(f);

    /* no message: the code's name stands in */
    f = sinkd_frame_error(1, true, SINKD_ERR_BUSY, NULL, &len);
    decode_frame(f, len, &m);
    cr_assert_eq(sinkd_map_map(&m.root, "error", &err), 0);
    cr_assert_eq(sinkd_map_str(err, "message", &s, &n), 0);
    cr_assert_eq(n, 4);
    cr_assert_eq(memcmp(s, "busy", 4), 0);
    sinkd_msg_free(&m);
    free(f);
    cr_assert_null(sinkd_frame_error(1, true, SINKD_ERR_BUSY, "x", NULL));
}

Test(writer, reply_head_bytes)
{
    static const uint8_t want[] = {
        0x00, 0x00, 0x00, 0x0e,
        0x83, 0xa2, 'i', 'd', 0xcd, 0x01, 0x2c, 0xa2, 'o', 'k', 0xc3, 0xa1, 'n', 0x01,
    };
    sinkd_fw w;
    size_t len;
    cr_assert_eq(sinkd_fw_init(&w), 0);
    sinkd_pack_reply_head(&w.pk, 300, 1);
    sinkd_pack_kv_u64(&w.pk, "n", 1);
    cr_assert_eq(sinkd_fw_finish(&w, 0), (long)sizeof want);
    uint8_t *f = sinkd_fw_release(&w, &len);
    cr_assert_eq(len, sizeof want);
    cr_assert_arr_eq(f, want, sizeof want);
    free(f);
    sinkd_fw_free(&w); /* released: nothing left to free */
}

Test(writer, request_round_trip_with_every_helper)
{
    sinkd_fw w;
    sinkd_msg m;
    size_t len, n;
    const char *s;
    uint64_t u;
    int64_t i;
    double d;
    bool b;

    cr_assert_eq(sinkd_fw_init(&w), 0);
    sinkd_pack_request_head(&w.pk, "shm.register", UINT64_MAX, 6);
    sinkd_pack_kv_u64(&w.pk, "size", 1u << 20);
    sinkd_pack_kv_i64(&w.pk, "delta", -40000);
    sinkd_pack_kv_f64(&w.pk, "temp", 0.7);
    sinkd_pack_kv_bool(&w.pk, "flag", false);
    sinkd_pack_kv_str(&w.pk, "client", "sinkctl");
    sinkd_pack_str(&w.pk, "none");
    sinkd_pack_str(&w.pk, NULL);
    cr_assert_gt(sinkd_fw_finish(&w, 0), 0);
    uint8_t *f = sinkd_fw_release(&w, &len);
    decode_frame(f, len, &m);

    cr_assert_eq(m.root.via.map.size, 8);
    cr_assert(sinkd_obj_streq(&m.root.via.map.ptr[0].key, "op"), "op comes first");
    cr_assert_eq(sinkd_map_str(&m.root, "op", &s, &n), 0);
    cr_assert_eq(n, strlen("shm.register"));
    cr_assert_eq(memcmp(s, "shm.register", n), 0);
    cr_assert_eq(sinkd_map_u64(&m.root, "id", &u), 0);
    cr_assert_eq(u, UINT64_MAX);
    cr_assert_eq(sinkd_map_u64(&m.root, "size", &u), 0);
    cr_assert_eq(u, 1u << 20);
    cr_assert_eq(sinkd_map_i64(&m.root, "delta", &i), 0);
    cr_assert_eq(i, -40000);
    cr_assert_eq(sinkd_map_f64(&m.root, "temp", &d), 0);
    cr_assert_float_eq(d, 0.7, 0.0);
    cr_assert_eq(sinkd_map_bool(&m.root, "flag", &b), 0);
    cr_assert_not(b);
    cr_assert_eq(sinkd_map_str(&m.root, "client", &s, &n), 0);
    cr_assert_eq(n, 7);
    cr_assert_eq(sinkd_map_str(&m.root, "none", &s, &n), -ENOENT, "NULL packs as nil");
    sinkd_msg_free(&m);
    free(f);
}

Test(writer, event_round_trip)
{
    sinkd_fw w;
    sinkd_msg m;
    size_t len, n;
    const char *s;
    uint64_t u;

    cr_assert_eq(sinkd_fw_init(&w), 0);
    sinkd_pack_event_head(&w.pk, 12, "token", 1);
    sinkd_pack_kv_u64(&w.pk, "token", 42);
    cr_assert_gt(sinkd_fw_finish(&w, 0), 0);
    uint8_t *f = sinkd_fw_release(&w, &len);
    decode_frame(f, len, &m);
    cr_assert_eq(m.root.via.map.size, 3);
    cr_assert(sinkd_obj_streq(&m.root.via.map.ptr[0].key, "id"));
    cr_assert(sinkd_obj_streq(&m.root.via.map.ptr[1].key, "ev"));
    cr_assert_eq(sinkd_map_str(&m.root, "ev", &s, &n), 0);
    cr_assert_eq(n, 5);
    cr_assert_eq(memcmp(s, "token", 5), 0);
    cr_assert_eq(sinkd_map_u64(&m.root, "id", &u), 0);
    cr_assert_eq(u, 12);
    cr_assert_eq(sinkd_map_u64(&m.root, "token", &u), 0);
    cr_assert_eq(u, 42);
    sinkd_msg_free(&m);
    free(f);
}

Test(writer, finish_enforces_max_frame)
{
    sinkd_fw w;
    char big[2000];
    memset(big, 'x', sizeof big);
    cr_assert_eq(sinkd_fw_init(&w), 0);
    msgpack_pack_map(&w.pk, 1);
    sinkd_pack_str(&w.pk, "pad");
    sinkd_pack_strn(&w.pk, big, sizeof big);
    /* payload: 1 + 4 + 3 + 2000 bytes */
    cr_assert_eq(sinkd_fw_finish(&w, 2007), -EMSGSIZE);
    cr_assert_eq(sinkd_fw_finish(&w, 2008), 2012);
    cr_assert_eq(sinkd_fw_finish(&w, 0), 2012);
    sinkd_fw_free(&w);
    sinkd_fw_free(&w);
    cr_assert_eq(sinkd_fw_finish(&w, 0), -ENOMEM, "a freed writer has no frame");
    cr_assert_eq(sinkd_fw_init(NULL), -EINVAL);
}

/* The contract's list (foundation ops), in enum order, written out
 * independently of protocol/errcode.c. */
static const char *const contract_names[] = {
    "bad_frame", "frame_too_large", "bad_request", "unknown_op", "unsupported_version",
    "permission_denied", "not_found", "no_memory", "quota_exceeded", "busy", "bad_shm",
    "cancelled", "shutting_down", "invalid_argument", "internal", "unsupported",
};

Test(errcode, names_match_the_contract_and_round_trip)
{
    cr_assert_eq(sizeof contract_names / sizeof contract_names[0], SINKD_ERR__COUNT - 1);
    for (int c = SINKD_ERR_NONE + 1; c < SINKD_ERR__COUNT; c++) {
        const char *name = sinkd_errcode_name((sinkd_errcode)c);
        cr_assert_str_eq(name, contract_names[c - 1]);
        cr_assert_eq((int)sinkd_errcode_from_name(name, strlen(name)), c, "%s", name);
    }
}

Test(errcode, unknown_names_and_codes)
{
    cr_assert_eq(sinkd_errcode_from_name("no_such_code", 12), SINKD_ERR_INTERNAL);
    cr_assert_eq(sinkd_errcode_from_name("busyx", 5), SINKD_ERR_INTERNAL);
    cr_assert_eq(sinkd_errcode_from_name("busy", 3), SINKD_ERR_INTERNAL, "prefix only");
    cr_assert_eq(sinkd_errcode_from_name("busy", 4), SINKD_ERR_BUSY);
    cr_assert_eq(sinkd_errcode_from_name("none", 4), SINKD_ERR_INTERNAL, "none is not an error");
    cr_assert_eq(sinkd_errcode_from_name(NULL, 0), SINKD_ERR_INTERNAL);
    cr_assert_str_eq(sinkd_errcode_name(SINKD_ERR__COUNT), "internal");
    cr_assert_str_eq(sinkd_errcode_name((sinkd_errcode)-1), "internal");
}

/* A write that cannot be buffered (here: a body no allocation could hold,
 * so nothing is allocated) poisons the frame: later small writes must not
 * produce a frame with a hole in it. */
Test(writer, failed_write_is_sticky)
{
    static const char body[16];
    sinkd_fw w;
    size_t len = 1;
    cr_assert_eq(sinkd_fw_init(&w), 0);
    msgpack_pack_map(&w.pk, 2);
    sinkd_pack_strn(&w.pk, body, SIZE_MAX - 8);
    sinkd_pack_kv_u64(&w.pk, "id", 1);
    cr_assert_eq(sinkd_fw_finish(&w, 0), -ENOMEM);
    cr_assert_null(sinkd_fw_release(&w, &len));
    cr_assert_eq(len, 0);
    sinkd_fw_free(&w);
}
