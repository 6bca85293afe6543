/*
 * Hostile clients: absurd lengths and counts, deep nesting, a request
 * dribbled a byte at a time, and a client that never reads. Each is answered
 * as the protocol says and never stops the daemon from serving others.
 */
#include "ipc_check.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>


/* max_output at its minimum (64 KiB) for the client that never reads. */
static void daemon_start_small_output(void)
{
    ipc_daemon_start("[server]\nmax_output = 64K\n");
}

TestSuite(hostile, .init = ipc_daemon_default, .fini = ipc_daemon_stop);

static void sleep_ms(int ms)
{
    struct timespec ts = { 0, ms * 1000000L };
    nanosleep(&ts, NULL);
}

Test(hostile, length_prefix_4gib)
{
    static const uint8_t head[4] = { 0xff, 0xff, 0xff, 0xff };
    ipc_expect e = { .code = SINKD_ERR_FRAME_TOO_LARGE, .closes = true };
    ipc_check_raw(&ipc_daemon, head, sizeof(head), &e);
}

Test(hostile, map_claiming_2_32_entries)
{
    /* map32 with count 0xffffffff, then one entry's worth of bytes. */
    static const uint8_t p[] = { 0xdf, 0xff, 0xff, 0xff, 0xff, 0xa2, 'o', 'p', 0xa4, 'p', 'i', 'n', 'g' };
    ipc_expect e = { .code = SINKD_ERR_BAD_FRAME, .closes = true };
    ipc_check_frame(&ipc_daemon, p, sizeof(p), &e);
}

Test(hostile, array32_claiming_2_32_elements_inside_a_request)
{
    /* {"op":"ping","id":1,"x":array32(0xffffffff)} */
    static const uint8_t p[] = { 0x83, 0xa2, 'o', 'p', 0xa4, 'p', 'i', 'n', 'g', 0xa2, 'i', 'd', 0x01,
                                 0xa1, 'x', 0xdd, 0xff, 0xff, 0xff, 0xff };
    ipc_expect e = { .code = SINKD_ERR_BAD_FRAME, .closes = true };
    ipc_check_frame(&ipc_daemon, p, sizeof(p), &e);
}

Test(hostile, nested_arrays_10000)
{
    /* {"op":"ping","id":1,"x":[[[[...nil...]]]]} with 10,000 levels. */
    enum { DEPTH = 10000 };
    static const uint8_t head[] = { 0x83, 0xa2, 'o', 'p', 0xa4, 'p', 'i', 'n', 'g', 0xa2, 'i', 'd', 0x01,
                                    0xa1, 'x' };
    size_t n = sizeof(head) + DEPTH + 1;
    uint8_t *p = malloc(n);
    cr_assert_not_null(p);
    memcpy(p, head, sizeof(head));
    memset(p + sizeof(head), 0x91, DEPTH);
    p[n - 1] = 0xc0;
    ipc_expect e = { .code = SINKD_ERR_BAD_FRAME, .closes = true };
    ipc_check_frame(&ipc_daemon, p, n, &e);

    /* The same at the root, where it is not even a map. */
    memset(p, 0x91, DEPTH);
    p[DEPTH] = 0xc0;
    ipc_check_frame(&ipc_daemon, p, DEPTH + 1, &e);
    free(p);
}

Test(hostile, request_one_byte_at_a_time)
{
    /* frame of {"op":"ping","id":42} */
    static const uint8_t frame[] = { 0, 0, 0, 13, 0x82, 0xa2, 'o', 'p', 0xa4, 'p', 'i', 'n', 'g',
                                     0xa2, 'i', 'd', 0x2a };
    int fd = sinkd_testd_connect_raw(&ipc_daemon);
    cr_assert_geq(fd, 0);
    for (size_t i = 0; i < sizeof(frame); i++) {
        cr_assert_eq(sinkd_testwire_send(fd, &frame[i], 1), 0);
        sleep_ms(2);
        /* Half way, another client is served while this one dribbles. */
        if (i == sizeof(frame) / 2)
            ipc_ping_fresh(&ipc_daemon);
    }
    sinkd_testwire_frame f = SINKD_TESTWIRE_FRAME_INIT;
    cr_assert_eq(sinkd_testwire_recv(fd, IPC_TIMEOUT_MS, &f), 0);
    uint64_t id = 0, t = 0;
    bool ok = false;
    cr_expect_eq(sinkd_map_u64(&f.msg.root, "id", &id), 0);
    cr_expect_eq(id, 42);
    cr_expect_eq(sinkd_map_bool(&f.msg.root, "ok", &ok), 0);
    cr_expect(ok);
    cr_expect_eq(sinkd_map_u64(&f.msg.root, "t_ns", &t), 0);
    sinkd_testwire_frame_free(&f);
    close(fd);
}

TestSuite(slow_reader, .init = daemon_start_small_output, .fini = ipc_daemon_stop);

Test(slow_reader, client_that_never_reads_is_dropped)
{
    /* 1000 pipelined pings per write: {"op":"ping","id":uint32} each. */
    enum { BATCH = 1000 };
    static uint8_t batch[BATCH * IPC_PING_FRAME];
    for (uint32_t i = 0; i < BATCH; i++)
        ipc_ping_frame(batch + i * IPC_PING_FRAME, i);
    int fd = sinkd_testd_connect_raw(&ipc_daemon);
    cr_assert_geq(fd, 0);
    /* Never more than 64 MiB of requests: a daemon that buffers all of the
     * ~1.5x larger replies would be far over max_output by then. */
    size_t sent = 0, limit = 64u << 20;
    int err = 0;
    bool checked_other = false;
    while (sent < limit) {
        ssize_t n = send(fd, batch, sizeof(batch), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            err = errno;
            break;
        }
        /* Our send buffer is full: the daemon is behind. Others still get
         * served meanwhile. */
        if (!checked_other) {
            ipc_ping_fresh(&ipc_daemon);
            checked_other = true;
        }
        struct pollfd p = { .fd = fd, .events = POLLOUT };
        int r = poll(&p, 1, IPC_TIMEOUT_MS);
        cr_assert_gt(r, 0, "daemon neither read nor dropped the connection within %d ms "
                           "(%zu bytes sent)", IPC_TIMEOUT_MS, sent);
    }
    cr_expect(err == EPIPE || err == ECONNRESET,
              "connection not dropped after %zu bytes of requests (errno %d)", sent, err);
    close(fd);
    cr_expect(sinkd_testd_alive(&ipc_daemon), "daemon died");
    ipc_ping_fresh(&ipc_daemon);
}
