/*
 * libsinkd against the real daemon: hello, ping, status, generic requests,
 * shared memory, and sinkctl's output and exit codes.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ipc_check.h"

#define TIMEOUT_MS IPC_TIMEOUT_MS

TestSuite(roundtrip, .init = ipc_daemon_default, .fini = ipc_daemon_stop);

static sinkd_client *connect_ok(void)
{
    sinkd_client *c = NULL;
    int rc = sinkd_client_connect(ipc_daemon.socket_path, TIMEOUT_MS, &c);
    cr_assert_eq(rc, 0, "connect: %s", sinkd_client_strerror(rc));
    return c;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

Test(roundtrip, hello_fields)
{
    sinkd_client *c = connect_ok();
    const sinkd_client_info *info = sinkd_client_info_get(c);
    cr_expect_eq(info->proto, SINKD_PROTO_VERSION);
    cr_expect_str_eq(info->server, "sinkd");
    cr_expect_str_eq(info->version, "0.1.0");
    cr_expect_eq(info->max_frame, SINKD_FRAME_MAX_DEFAULT);
    cr_expect_eq(info->uid, (uint64_t)getuid());
    cr_expect_eq(info->admin, getuid() == 0);
    sinkd_client_close(c);
}

Test(roundtrip, ping_clock_is_monotonic_and_bracketed)
{
    sinkd_client *c = connect_ok();
    uint64_t last = 0;
    for (int i = 0; i < 50; i++) {
        uint64_t before = mono_ns(), t = 0;
        int rc = sinkd_client_ping(c, TIMEOUT_MS, &t);
        uint64_t after = mono_ns();
        cr_assert_eq(rc, 0, "ping %d: %s", i, sinkd_client_strerror(rc));
        /* Same machine, same CLOCK_MONOTONIC: the daemon read its clock
         * between our send and our receive. */
        cr_expect_geq(t, before);
        cr_expect_leq(t, after);
        cr_expect_geq(t, last);
        last = t;
    }
    sinkd_client_close(c);
}

Test(roundtrip, status_fields)
{
    sinkd_client *c = connect_ok();
    sinkd_client_status st;
    int rc = sinkd_client_status_get(c, TIMEOUT_MS, &st);
    cr_assert_eq(rc, 0, "status: %s", sinkd_client_strerror(rc));
    cr_expect_str_eq(st.version, "0.1.0");
    cr_expect_eq(st.proto, SINKD_PROTO_VERSION);
    cr_expect_eq(st.pid, (uint64_t)ipc_daemon.pid);
    cr_expect_geq(st.uptime_s, 0.0);
    cr_expect_neq(st.backend[0], '\0');
    cr_expect_eq(st.connections, 1, "only this test is connected");
    cr_expect_eq(st.sessions, 0);
    cr_expect_gt(st.rss_bytes, 0);
    cr_expect_leq(st.mem_free, st.mem_total);
    cr_expect_leq(st.kv_used_bytes, st.kv_pool_bytes);

    /* A second connection is counted; uptime does not go backwards. */
    sinkd_client *c2 = connect_ok();
    sinkd_client_status st2;
    cr_assert_eq(sinkd_client_status_get(c, TIMEOUT_MS, &st2), 0);
    cr_expect_eq(st2.connections, 2);
    cr_expect_geq(st2.uptime_s, st.uptime_s);
    sinkd_client_close(c2);
    sinkd_client_close(c);
}

Test(roundtrip, unknown_op_is_an_error_reply_and_the_handle_goes_on)
{
    sinkd_client *c = connect_ok();
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.op = "no.such.op";
    req.timeout_ms = TIMEOUT_MS;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = sinkd_client_request(c, &req, &rep);
    cr_expect_eq(rc, SINKD_ERR_UNKNOWN_OP, "got %d (%s)", rc, sinkd_client_strerror(rc));
    cr_expect_neq(sinkd_client_errmsg(c)[0], '\0', "the daemon explains the error");
    cr_assert_not_null(rep.map, "the error reply is handed back");
    cr_expect_not_null(sinkd_map_get(rep.map, "error"));
    sinkd_client_reply_free(&rep);
    cr_expect_eq(sinkd_client_ping(c, TIMEOUT_MS, NULL), 0);
    cr_expect_str_eq(sinkd_client_errmsg(c), "");
    sinkd_client_close(c);
}

/* hello with a pre-packed field map: no common version. */
Test(roundtrip, prepacked_fields_and_unsupported_version)
{
    sinkd_client *c = connect_ok();
    /* {"proto_min": 1000, "proto_max": 1001} */
    static const uint8_t fields[] = {
        0x82,
        0xa9, 'p', 'r', 'o', 't', 'o', '_', 'm', 'i', 'n', 0xcd, 0x03, 0xe8,
        0xa9, 'p', 'r', 'o', 't', 'o', '_', 'm', 'a', 'x', 0xcd, 0x03, 0xe9,
    };
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.op = "hello";
    req.fields = fields;
    req.fields_len = sizeof(fields);
    req.timeout_ms = TIMEOUT_MS;
    int rc = sinkd_client_request(c, &req, NULL);
    cr_expect_eq(rc, SINKD_ERR_UNSUPPORTED_VERSION, "got %d (%s)", rc, sinkd_client_strerror(rc));
    /* The connection stays and still speaks version 1. */
    cr_expect_eq(sinkd_client_ping(c, TIMEOUT_MS, NULL), 0);

    /* A field source that is not one map is refused before anything is sent. */
    static const uint8_t not_a_map[] = { 0x91, 0x01 };
    req.fields = not_a_map;
    req.fields_len = sizeof(not_a_map);
    cr_expect_eq(sinkd_client_request(c, &req, NULL), -EINVAL);
    cr_expect_eq(sinkd_client_ping(c, TIMEOUT_MS, NULL), 0);
    sinkd_client_close(c);
}

static int pack_shm(msgpack_packer *pk, void *arg)
{
    sinkd_pack_kv_u64(pk, "shm", *(const uint64_t *)arg);
    return 0;
}

Test(roundtrip, shm_register_and_unregister)
{
    sinkd_client *c = connect_ok();
    sinkd_client_shm shm = SINKD_CLIENT_SHM_INIT;
    int rc = sinkd_client_shm_create(c, 1 << 20, TIMEOUT_MS, &shm);
    if (rc == SINKD_ERR_UNKNOWN_OP) {
        sinkd_client_close(c);
        cr_skip_test("this sinkd does not implement shm.register");
    }
    cr_assert_eq(rc, 0, "shm.register: %s (%s)", sinkd_client_strerror(rc), sinkd_client_errmsg(c));
    cr_expect_geq(shm.fd, 0);
    cr_expect_not_null(shm.base);
    memset(shm.base, 0xab, shm.size);

    /* A second region gets a different handle. */
    sinkd_client_shm shm2 = SINKD_CLIENT_SHM_INIT;
    cr_assert_eq(sinkd_client_shm_create(c, 4096, TIMEOUT_MS, &shm2), 0);
    cr_expect_neq(shm2.handle, shm.handle);

    /* Registering less than the file holds is fine; more is not. */
    uint64_t h;
    cr_expect_eq(sinkd_client_shm_register(c, shm.fd, 4096, TIMEOUT_MS, &h), 0);
    rc = sinkd_client_shm_register(c, shm2.fd, 8192, TIMEOUT_MS, &h);
    cr_expect_gt(rc, 0, "size over the file: error reply expected, got %d", rc);

    uint64_t gone = shm2.handle;
    cr_expect_eq(sinkd_client_shm_free(c, &shm2, TIMEOUT_MS), 0);
    cr_expect_eq(shm2.fd, -1);
    /* The handle is gone after unregister. */
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.op = "shm.unregister";
    req.nfields = 1;
    req.pack = pack_shm;
    req.pack_arg = &gone;
    req.timeout_ms = TIMEOUT_MS;
    rc = sinkd_client_request(c, &req, NULL);
    cr_expect_eq(rc, SINKD_ERR_NOT_FOUND, "got %d (%s)", rc, sinkd_client_strerror(rc));
    cr_expect_eq(sinkd_client_shm_free(c, &shm, TIMEOUT_MS), 0);
    cr_expect_eq(sinkd_client_ping(c, TIMEOUT_MS, NULL), 0);
    sinkd_client_close(c);
}

/* {"op":"shm.register","id":@id,"size":4096} framed, with @fd (or none)
 * as SCM_RIGHTS on the one sendmsg that carries it all. */
static void send_register(int c, uint32_t id, int fd)
{
    static const uint8_t tmpl[] = {0, 0, 0, 0, 0x83, 0xa2, 'o', 'p', 0xac, 's', 'h', 'm', '.',
                                   'r', 'e', 'g', 'i', 's', 't', 'e', 'r', 0xa2, 'i', 'd', 0xce,
                                   0, 0, 0, 0, 0xa4, 's', 'i', 'z', 'e', 0xcd, 0x10, 0x00};
    uint8_t frame[sizeof tmpl];
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {frame, sizeof frame};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

    memcpy(frame, tmpl, sizeof tmpl);
    frame[3] = (uint8_t)(sizeof tmpl - 4);
    frame[25] = (uint8_t)(id >> 24), frame[26] = (uint8_t)(id >> 16);
    frame[27] = (uint8_t)(id >> 8), frame[28] = (uint8_t)id;
    if (fd >= 0) {
        memset(&ctl, 0, sizeof ctl);
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof ctl.buf;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    }
    cr_assert_eq(sendmsg(c, &mh, MSG_NOSIGNAL), (ssize_t)sizeof frame);
}

/* The next frame on @c: the reply of @id, an error or not. */
static bool reply_ok(int c, uint64_t id)
{
    sinkd_testwire_frame f = SINKD_TESTWIRE_FRAME_INIT;
    sinkd_errcode code;
    bool has_id;
    uint64_t got = 0;

    cr_assert_eq(sinkd_testwire_recv(c, TIMEOUT_MS, &f), 0);
    sinkd_testwire_error(&f, &code, &has_id, &got, NULL);
    if (code == SINKD_ERR_NONE)
        cr_assert(sinkd_map_u64(&f.msg.root, "id", &got) == 0);
    sinkd_testwire_frame_free(&f);
    cr_assert_eq(got, id);
    return code == SINKD_ERR_NONE;
}

/* A register whose fd rides with its own first byte (PROTOCOL.md §9), sent
 * right behind frames without one: the kernel hands the fd over with the
 * read that also brings those earlier frames, and it must still go to the
 * register, not be taken for theirs and closed. */
Test(roundtrip, shm_register_right_behind_other_frames)
{
    int c = sinkd_testd_connect_raw(&ipc_daemon);
    cr_assert_geq(c, 0);
    int fd = memfd_create("sinkd-test", MFD_CLOEXEC);
    cr_assert(fd >= 0 && ftruncate(fd, 4096) == 0);
    int lost = 0;
    for (uint32_t i = 0; i < 60; i++) {
        uint8_t ping[IPC_PING_FRAME];
        ipc_ping_frame(ping, 1000 + i);
        cr_assert_eq(sinkd_testwire_send(c, ping, sizeof ping), 0);
        send_register(c, 2000 + i, fd);
        cr_assert(reply_ok(c, 1000 + i));
        lost += !reply_ok(c, 2000 + i);
    }
    cr_expect_eq(lost, 0, "%d of 60 registers lost their fd", lost);
    /* a register without its fd is still refused */
    send_register(c, 3000, -1);
    cr_expect_not(reply_ok(c, 3000));
    send_register(c, 3001, fd);
    cr_expect(reply_ok(c, 3001));
    close(fd);
    close(c);
}

/* --- sinkctl --------------------------------------------------------------- */

/* Run sinkctl with @args (a shell-quoted string) against the test daemon;
 * *@out gets stdout (malloc'ed). Returns the exit status. */
static int sinkctl(const char *args, char **out, bool with_socket)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "%s/client/sinkctl %s%s%s %s 2>/dev/null",
             SINKD_BINARY_DIR, with_socket ? "--socket '" : "",
             with_socket ? ipc_daemon.socket_path : "", with_socket ? "'" : "", args);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    cr_assert_not_null(buf);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, p)) > 0)
        len += n;
    buf[len] = '\0';
    int ws = pclose(p);
    *out = buf;
    return WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
}

Test(roundtrip, sinkctl_status_and_ping)
{
    char *out;
    cr_expect_eq(sinkctl("status", &out, true), 0);
    cr_expect_not_null(strstr(out, "sinkd 0.1.0"), "%s", out);
    cr_expect_not_null(strstr(out, "connections  1"), "%s", out);
    free(out);

    cr_expect_eq(sinkctl("--json status", &out, true), 0);
    char pidfield[32];
    snprintf(pidfield, sizeof(pidfield), "\"pid\":%d", (int)ipc_daemon.pid);
    cr_expect_not_null(strstr(out, pidfield), "%s", out);
    cr_expect_eq(out[0], '{');
    free(out);

    cr_expect_eq(sinkctl("ping -c 3 -i 0", &out, true), 0);
    int replies = 0;
    for (const char *p = out; (p = strstr(p, "seq=")) != NULL; p++)
        replies++;
    cr_expect_eq(replies, 3, "%s", out);
    cr_expect_not_null(strstr(out, "3 requests sent, 3 replies received, 0% loss"), "%s", out);
    cr_expect_not_null(strstr(out, "rtt min/avg/max = "), "%s", out);
    free(out);

    cr_expect_eq(sinkctl("ping --json -c 2 -i 0", &out, true), 0);
    cr_expect_not_null(strstr(out, "\"sent\":2,\"received\":2"), "%s", out);
    free(out);

    /* more round trips than the list's first allocation holds */
    cr_expect_eq(sinkctl("ping --json -c 70 -i 0", &out, true), 0);
    const char *list = strstr(out, "\"rtt_ms\":[");
    cr_assert_not_null(list, "%s", out);
    size_t n = 1;
    for (const char *p = list; *p != ']' && *p != '\0'; p++)
        n += *p == ',';
    cr_expect_eq(n, 70, "%s", out);
    free(out);
}

Test(roundtrip, sinkctl_exit_codes_and_help)
{
    char *out;
    cr_expect_eq(sinkctl("--help", &out, false), 0);
    cr_expect_not_null(strstr(out, "Exit status:"), "%s", out);
    free(out);
    cr_expect_eq(sinkctl("help ping", &out, false), 0);
    cr_expect_not_null(strstr(out, "-c N"), "%s", out);
    free(out);
    cr_expect_eq(sinkctl("status --help", &out, false), 0);
    cr_expect_not_null(strstr(out, "usage: sinkctl"), "%s", out);
    free(out);

    cr_expect_eq(sinkctl("frobnicate", &out, true), 2);
    free(out);
    cr_expect_eq(sinkctl("ping -c 0", &out, true), 2);
    free(out);
    cr_expect_eq(sinkctl("status extra", &out, true), 2);
    free(out);
    cr_expect_eq(sinkctl("--timeout x status", &out, true), 2);
    free(out);

    char args[256];
    snprintf(args, sizeof(args), "--socket '%s/none.sock' status", ipc_daemon.dir);
    cr_expect_eq(sinkctl(args, &out, false), 3);
    free(out);
}
