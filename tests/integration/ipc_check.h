/*
 * Shared checks of the IPC integration tests: send raw bytes to a fresh
 * connection and assert on the error that comes back, then prove the daemon
 * still serves a new client. Header-only (static functions): each test
 * executable includes it once.
 */
#ifndef SINKD_IPC_CHECK_H
#define SINKD_IPC_CHECK_H

#include <criterion/criterion.h>

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "sinkd_testd.h"
#include "sinkd_testwire.h"

#define IPC_TIMEOUT_MS 10000

/* The daemon of the current test (Criterion runs each test in its own
 * process, so each test gets a fresh one from its suite's .init). */
static sinkd_testd ipc_daemon = SINKD_TESTD_INIT;

/* Start ipc_daemon with @config text (NULL: none). */
static inline void ipc_daemon_start(const char *config)
{
    cr_assert_eq(sinkd_testd_start(&ipc_daemon, config, NULL), 0, "sinkd did not start");
}

/* .init / .fini of the suites: a daemon with default settings, stopped with
 * SIGTERM at the end, which must make it exit 0. */
static inline void ipc_daemon_default(void)
{
    ipc_daemon_start(NULL);
}

static inline void ipc_daemon_stop(void)
{
    int status = ipc_daemon.pid > 0 ? sinkd_testd_stop(&ipc_daemon) : ipc_daemon.exit_status;
    sinkd_testd_free(&ipc_daemon);
    cr_expect_eq(status, 0, "sinkd exit status %d", status);
}

/* Frame of {"op":"ping","id":uint32(@id)}. */
#define IPC_PING_FRAME 21
static inline void ipc_ping_frame(uint8_t out[IPC_PING_FRAME], uint32_t id)
{
    static const uint8_t tmpl[IPC_PING_FRAME] = { 0, 0, 0, 17, 0x82, 0xa2, 'o', 'p', 0xa4, 'p', 'i',
                                                  'n', 'g', 0xa2, 'i', 'd', 0xce, 0, 0, 0, 0 };
    memcpy(out, tmpl, IPC_PING_FRAME);
    out[17] = (uint8_t)(id >> 24), out[18] = (uint8_t)(id >> 16);
    out[19] = (uint8_t)(id >> 8), out[20] = (uint8_t)id;
}

/* What an error reply must look like. */
typedef struct ipc_expect {
    sinkd_errcode code;
    bool has_id;
    uint64_t id;
    bool closes;            /* the daemon hangs up after the error */
    const char *in_message; /* substring of the message, or NULL */
} ipc_expect;

/* A fresh libsinkd client pings successfully. */
static inline void ipc_ping_fresh(const sinkd_testd *d)
{
    sinkd_client *c = NULL;
    int rc = sinkd_client_connect(d->socket_path, IPC_TIMEOUT_MS, &c);
    cr_assert_eq(rc, 0, "connect after the bad input: %s", sinkd_client_strerror(rc));
    rc = sinkd_client_ping(c, IPC_TIMEOUT_MS, NULL);
    cr_assert_eq(rc, 0, "ping after the bad input: %s", sinkd_client_strerror(rc));
    sinkd_client_close(c);
}

/* Read one frame from @fd and check it against @e. */
static inline void ipc_expect_error(int fd, const ipc_expect *e)
{
    sinkd_testwire_frame f = SINKD_TESTWIRE_FRAME_INIT;
    int rc = sinkd_testwire_recv(fd, IPC_TIMEOUT_MS, &f);
    cr_assert_eq(rc, 0, "no reply to the bad input: %s", strerror(-rc));
    sinkd_errcode code;
    bool has_id;
    uint64_t id = 0;
    char *msg;
    sinkd_testwire_error(&f, &code, &has_id, &id, &msg);
    cr_expect_eq(code, e->code, "error code %s, expected %s (message: %s)",
                 sinkd_errcode_name(code), sinkd_errcode_name(e->code), msg ? msg : "-");
    cr_expect_eq(has_id, e->has_id, "reply %s an id", has_id ? "has" : "lacks");
    if (e->has_id)
        cr_expect_eq(id, e->id);
    cr_expect_not_null(msg, "error without a message");
    if (e->in_message != NULL && msg != NULL)
        cr_expect_not_null(strstr(msg, e->in_message), "message '%s' does not mention '%s'",
                           msg, e->in_message);
    free(msg);
    sinkd_testwire_frame_free(&f);
}

/* Send @n raw bytes on a fresh connection, check the error reply, check the
 * connection's fate (closed, or still answering a ping), then ping on a
 * fresh connection. */
static inline void ipc_check_raw(const sinkd_testd *d, const void *bytes, size_t n,
                                 const ipc_expect *e)
{
    int fd = sinkd_testd_connect_raw(d);
    cr_assert_geq(fd, 0, "connect: %s", strerror(-fd));
    cr_assert_eq(sinkd_testwire_send(fd, bytes, n), 0);
    ipc_expect_error(fd, e);
    if (e->closes) {
        cr_expect(sinkd_testwire_closed(fd, IPC_TIMEOUT_MS), "connection not closed");
    } else {
        /* {"op":"ping","id":77} on the same connection */
        static const uint8_t ping[] = { 0x82, 0xa2, 'o', 'p', 0xa4, 'p', 'i', 'n', 'g',
                                        0xa2, 'i', 'd', 0x4d };
        cr_assert_eq(sinkd_testwire_send_frame(fd, ping, sizeof(ping)), 0);
        sinkd_testwire_frame f = SINKD_TESTWIRE_FRAME_INIT;
        cr_assert_eq(sinkd_testwire_recv(fd, IPC_TIMEOUT_MS, &f), 0, "connection died");
        uint64_t id = 0;
        bool ok = false;
        cr_expect_eq(sinkd_map_u64(&f.msg.root, "id", &id), 0);
        cr_expect_eq(id, 77);
        cr_expect_eq(sinkd_map_bool(&f.msg.root, "ok", &ok), 0);
        cr_expect(ok);
        sinkd_testwire_frame_free(&f);
    }
    close(fd);
    ipc_ping_fresh(d);
}

/* ipc_check_raw for a payload: the length prefix is added here. */
static inline void ipc_check_frame(const sinkd_testd *d, const void *payload, size_t n,
                                   const ipc_expect *e)
{
    uint8_t *buf = malloc(n + 4);
    cr_assert_not_null(buf);
    buf[0] = (uint8_t)(n >> 24);
    buf[1] = (uint8_t)(n >> 16);
    buf[2] = (uint8_t)(n >> 8);
    buf[3] = (uint8_t)n;
    memcpy(buf + 4, payload, n);
    ipc_check_raw(d, buf, n + 4, e);
    free(buf);
}

#endif /* SINKD_IPC_CHECK_H */
