/*
 * Each malformed request gets the error the protocol specifies; request
 * errors keep the connection, frame errors close it; the daemon serves the
 * next client either way. Payload bytes are written by hand (msgpack spec),
 * independently of the codec under test.
 */
#include "ipc_check.h"


/* max_frame at its minimum, so the too-large case costs no memory. */
static void daemon_start(void)
{
    ipc_daemon_start("[server]\nmax_frame = 1024\n");
}

TestSuite(malformed, .init = daemon_start, .fini = ipc_daemon_stop);

/* CHECK(EXPECT(fields of ipc_expect), payload bytes...) */
#define EXPECT(...) ((ipc_expect){ __VA_ARGS__ })
#define CHECK(expect, ...)                                                               \
    do {                                                                                 \
        static const uint8_t p_[] = { __VA_ARGS__ };                                     \
        ipc_expect e_ = expect;                                                          \
        ipc_check_frame(&ipc_daemon, p_, sizeof(p_), &e_);                                  \
    } while (0)

#define OP_PING 0xa2, 'o', 'p', 0xa4, 'p', 'i', 'n', 'g'
#define KEY_ID 0xa2, 'i', 'd'

Test(malformed, unknown_op)
{
    /* {"op":"nope","id":7} */
    CHECK(EXPECT(.code = SINKD_ERR_UNKNOWN_OP, .has_id = true, .id = 7),
          0x82, 0xa2, 'o', 'p', 0xa4, 'n', 'o', 'p', 'e', KEY_ID, 0x07);
}

Test(malformed, missing_id)
{
    /* {"op":"ping"} */
    CHECK(EXPECT(.code = SINKD_ERR_BAD_REQUEST, .has_id = false),
          0x81, OP_PING);
}

Test(malformed, id_not_uint)
{
    /* {"op":"ping","id":"x"} */
    CHECK(EXPECT(.code = SINKD_ERR_BAD_REQUEST),
          0x82, OP_PING, KEY_ID, 0xa1, 'x');
    /* {"op":"ping","id":-1} */
    CHECK(EXPECT(.code = SINKD_ERR_BAD_REQUEST),
          0x82, OP_PING, KEY_ID, 0xff);
    /* {"op":"ping","id":1.0} */
    CHECK(EXPECT(.code = SINKD_ERR_BAD_REQUEST),
          0x82, OP_PING, KEY_ID, 0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0);
    /* {"op":"ping","id":nil} */
    CHECK(EXPECT(.code = SINKD_ERR_BAD_REQUEST),
          0x82, OP_PING, KEY_ID, 0xc0);
}

Test(malformed, missing_op)
{
    /* {"id":3} */
    CHECK(EXPECT(.code = SINKD_ERR_BAD_REQUEST, .has_id = true, .id = 3),
          0x81, KEY_ID, 0x03);
}

Test(malformed, op_not_str)
{
    /* {"op":5,"id":4} */
    CHECK(EXPECT(.code = SINKD_ERR_BAD_REQUEST, .has_id = true, .id = 4),
          0x82, 0xa2, 'o', 'p', 0x05, KEY_ID, 0x04);
}

Test(malformed, field_of_wrong_type)
{
    /* {"op":"hello","id":5,"proto_min":"x"} */
    CHECK(EXPECT(.code = SINKD_ERR_BAD_REQUEST, .has_id = true, .id = 5, .in_message = "proto_min"),
          0x83, 0xa2, 'o', 'p', 0xa5, 'h', 'e', 'l', 'l', 'o', KEY_ID, 0x05,
             0xa9, 'p', 'r', 'o', 't', 'o', '_', 'm', 'i', 'n', 0xa1, 'x');
    /* {"op":"hello","id":6,"client":12} */
    CHECK(EXPECT(.code = SINKD_ERR_BAD_REQUEST, .has_id = true, .id = 6, .in_message = "client"),
          0x83, 0xa2, 'o', 'p', 0xa5, 'h', 'e', 'l', 'l', 'o', KEY_ID, 0x06,
             0xa6, 'c', 'l', 'i', 'e', 'n', 't', 0x0c);
}

Test(malformed, unknown_fields_are_ignored)
{
    /* {"op":"ping","id":9,"zzz":[1,2]} answers ok */
    static const uint8_t p[] = { 0x83, OP_PING, KEY_ID, 0x09, 0xa3, 'z', 'z', 'z', 0x92, 1, 2 };
    int fd = sinkd_testd_connect_raw(&ipc_daemon);
    cr_assert_geq(fd, 0);
    cr_assert_eq(sinkd_testwire_send_frame(fd, p, sizeof(p)), 0);
    sinkd_testwire_frame f = SINKD_TESTWIRE_FRAME_INIT;
    cr_assert_eq(sinkd_testwire_recv(fd, IPC_TIMEOUT_MS, &f), 0);
    bool ok = false;
    uint64_t t;
    cr_expect_eq(sinkd_map_bool(&f.msg.root, "ok", &ok), 0);
    cr_expect(ok);
    cr_expect_eq(sinkd_map_u64(&f.msg.root, "t_ns", &t), 0);
    sinkd_testwire_frame_free(&f);
    close(fd);
}

Test(malformed, undecodable_payload_closes)
{
    /* 0xc1 is never used by msgpack. */
    CHECK(EXPECT(.code = SINKD_ERR_BAD_FRAME, .closes = true),
          0xc1);
}

Test(malformed, root_not_a_map_closes)
{
    CHECK(EXPECT(.code = SINKD_ERR_BAD_FRAME, .closes = true),
          0x92, 0x01, 0x02);
}

Test(malformed, truncated_string_closes)
{
    /* {"op": <str of 4 bytes, 2 present> */
    CHECK(EXPECT(.code = SINKD_ERR_BAD_FRAME, .closes = true),
          0x82, 0xa2, 'o', 'p', 0xa4, 'p', 'i');
}

Test(malformed, trailing_bytes_close)
{
    CHECK(EXPECT(.code = SINKD_ERR_BAD_FRAME, .closes = true),
          0x82, OP_PING, KEY_ID, 0x01, 0xc0);
}

Test(malformed, empty_frame_closes)
{
    static const uint8_t zero[4] = { 0 };
    ipc_expect e = { .code = SINKD_ERR_BAD_FRAME, .closes = true };
    ipc_check_raw(&ipc_daemon, zero, sizeof(zero), &e);
}

Test(malformed, frame_over_max_frame_closes)
{
    /* 1025 > max_frame = 1024: refused on the prefix alone. */
    static const uint8_t head[4] = { 0x00, 0x00, 0x04, 0x01 };
    ipc_expect e = { .code = SINKD_ERR_FRAME_TOO_LARGE, .closes = true };
    ipc_check_raw(&ipc_daemon, head, sizeof(head), &e);

    /* Exactly max_frame is fine: a ping padded with a bin field to 1024
     * bytes. Its 20 bytes of header: map(1) op(8) id(4) "pad"(4) bin16(3). */
    uint8_t p[1024] = { 0x83, OP_PING, KEY_ID, 0x0b, 0xa3, 'p', 'a', 'd', 0xc5 };
    size_t pad = sizeof(p) - 20;
    p[18] = (uint8_t)(pad >> 8);
    p[19] = (uint8_t)pad;
    int fd = sinkd_testd_connect_raw(&ipc_daemon);
    cr_assert_geq(fd, 0);
    cr_assert_eq(sinkd_testwire_send_frame(fd, p, sizeof(p)), 0);
    sinkd_testwire_frame f = SINKD_TESTWIRE_FRAME_INIT;
    cr_assert_eq(sinkd_testwire_recv(fd, IPC_TIMEOUT_MS, &f), 0);
    bool ok = false;
    cr_expect_eq(sinkd_map_bool(&f.msg.root, "ok", &ok), 0, "a frame of exactly max_frame is refused");
    cr_expect(ok);
    sinkd_testwire_frame_free(&f);
    close(fd);
}
