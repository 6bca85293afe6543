/*
 * libsinkd's own behaviour against a scripted in-test server on a real Unix
 * socket: events before the reply, stale replies dropped, timeouts, error
 * replies with and without id, fd passing, a lost connection, default
 * socket resolution. The daemon's side of these is tested elsewhere.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "client.h"

#define TIMEOUT_MS 10000

typedef struct server {
    char dir[64];
    char path[108];
    int listen_fd;
    pthread_t thread;
    int passed_fd;        /* last fd received with SCM_RIGHTS */
} server;

static server srv;

static void send_frame(int fd, sinkd_fw *w)
{
    size_t len;
    cr_assert_gt(sinkd_fw_finish(w, 0), 0);
    uint8_t *f = sinkd_fw_release(w, &len);
    cr_assert_not_null(f);
    cr_assert_eq(send(fd, f, len, MSG_NOSIGNAL), (ssize_t)len);
    free(f);
    sinkd_fw_free(w);
}

static void reply(int fd, uint64_t id, const char *key, uint64_t v)
{
    sinkd_fw w;
    cr_assert_eq(sinkd_fw_init(&w), 0);
    sinkd_pack_reply_head(&w.pk, id, key ? 1 : 0);
    if (key)
        sinkd_pack_kv_u64(&w.pk, key, v);
    send_frame(fd, &w);
}

static void error_reply(int fd, uint64_t id, bool has_id, sinkd_errcode code, const char *msg)
{
    size_t len;
    uint8_t *f = sinkd_frame_error(id, has_id, code, msg, &len);
    cr_assert_not_null(f);
    cr_assert_eq(send(fd, f, len, MSG_NOSIGNAL), (ssize_t)len);
    free(f);
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* Answer one request; false ends the conversation (closes the socket). */
static bool serve(int fd, const msgpack_object *req)
{
    uint64_t id = 0;
    const char *op;
    size_t n;
    cr_assert_eq(sinkd_map_u64(req, "id", &id), 0);
    cr_assert_eq(sinkd_map_str(req, "op", &op, &n), 0);
    char name[32];
    snprintf(name, sizeof(name), "%.*s", (int)n, op);

    if (strcmp(name, "hello") == 0) {
        sinkd_fw w;
        cr_assert_eq(sinkd_fw_init(&w), 0);
        sinkd_pack_reply_head(&w.pk, id, 6);
        sinkd_pack_kv_u64(&w.pk, "proto", 1);
        sinkd_pack_kv_str(&w.pk, "server", "sinkd");
        sinkd_pack_kv_str(&w.pk, "version", "9.9.9");
        sinkd_pack_kv_u64(&w.pk, "max_frame", 4096);
        sinkd_pack_kv_u64(&w.pk, "uid", 4242);
        sinkd_pack_kv_bool(&w.pk, "admin", false);
        send_frame(fd, &w);
    } else if (strcmp(name, "events") == 0) {
        /* A stale reply of an older id, three events, the reply. */
        reply(fd, id + 1000, "stale", 1);
        uint64_t count = 0;
        sinkd_map_u64(req, "count", &count);
        for (uint64_t i = 0; i < count; i++) {
            sinkd_fw w;
            cr_assert_eq(sinkd_fw_init(&w), 0);
            sinkd_pack_event_head(&w.pk, id, "token", 1);
            sinkd_pack_kv_u64(&w.pk, "n", i * 10);
            send_frame(fd, &w);
        }
        reply(fd, id, "count", count);
    } else if (strcmp(name, "slow") == 0) {
        sleep_ms(300);
        reply(fd, id, NULL, 0);
    } else if (strcmp(name, "fd") == 0) {
        /* Reply with the first byte of the passed file. */
        uint8_t b = 0;
        uint64_t got = srv.passed_fd >= 0 && pread(srv.passed_fd, &b, 1, 0) == 1 ? b : 999;
        if (srv.passed_fd >= 0)
            close(srv.passed_fd);
        srv.passed_fd = -1;
        reply(fd, id, "first", got);
    } else if (strcmp(name, "deny") == 0) {
        error_reply(fd, id, true, SINKD_ERR_PERMISSION_DENIED, "not for you");
    } else if (strcmp(name, "noid") == 0) {
        error_reply(fd, 0, false, SINKD_ERR_BAD_REQUEST, "no usable id");
    } else if (strcmp(name, "close") == 0) {
        return false;
    } else {
        reply(fd, id, NULL, 0);
    }
    return true;
}

static void *server_main(void *arg)
{
    (void)arg;
    int fd = accept(srv.listen_fd, NULL, NULL);
    cr_assert_geq(fd, 0);
    sinkd_frame_reader rd;
    sinkd_frame_reader_init(&rd, 0);
    bool go = true;
    while (go) {
        uint8_t buf[4096];
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(sizeof(int))];
        } ctl;
        struct iovec iov = { buf, sizeof(buf) };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                             .msg_control = ctl.b, .msg_controllen = sizeof(ctl.b) };
        ssize_t r = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
        if (r <= 0)
            break;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
                memcpy(&srv.passed_fd, CMSG_DATA(cm), sizeof(int));
        cr_assert_eq(sinkd_frame_reader_feed(&rd, buf, (size_t)r), 0);
        const uint8_t *p;
        size_t n;
        while (go && sinkd_frame_reader_next(&rd, &p, &n) == 1) {
            sinkd_msg m;
            cr_assert_eq(sinkd_msg_decode(p, n, &m, NULL), 0);
            go = serve(fd, &m.root);
            sinkd_msg_free(&m);
        }
    }
    sinkd_frame_reader_free(&rd);
    close(fd);
    return NULL;
}

static void server_start(void)
{
    snprintf(srv.dir, sizeof(srv.dir), "/tmp/sinkd-client-XXXXXX");
    cr_assert_not_null(mkdtemp(srv.dir));
    snprintf(srv.path, sizeof(srv.path), "%s/s.sock", srv.dir);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strcpy(a.sun_path, srv.path);
    srv.listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(srv.listen_fd, 0);
    cr_assert_eq(bind(srv.listen_fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(srv.listen_fd, 4), 0);
    srv.passed_fd = -1;
    cr_assert_eq(pthread_create(&srv.thread, NULL, server_main, NULL), 0);
}

static void server_stop(void)
{
    shutdown(srv.listen_fd, SHUT_RDWR);
    close(srv.listen_fd);
    pthread_join(srv.thread, NULL);
    unlink(srv.path);
    rmdir(srv.dir);
}

TestSuite(client_lib, .init = server_start, .fini = server_stop);

static sinkd_client *connect_ok(void)
{
    sinkd_client *c = NULL;
    int rc = sinkd_client_connect(srv.path, TIMEOUT_MS, &c);
    cr_assert_eq(rc, 0, "connect: %s", sinkd_client_strerror(rc));
    return c;
}

Test(client_lib, hello_is_recorded)
{
    sinkd_client *c = connect_ok();
    const sinkd_client_info *info = sinkd_client_info_get(c);
    cr_expect_eq(info->proto, 1);
    cr_expect_str_eq(info->version, "9.9.9");
    cr_expect_eq(info->max_frame, 4096);
    cr_expect_eq(info->uid, 4242);
    cr_expect_not(info->admin);
    cr_expect_geq(sinkd_client_fd(c), 0);
    sinkd_client_close(c);
}

typedef struct events_seen {
    int n;
    uint64_t values[8];
} events_seen;

static void on_event(void *arg, const char *ev, size_t ev_len, const msgpack_object *event)
{
    events_seen *s = arg;
    cr_expect_eq(ev_len, 5);
    cr_expect_eq(memcmp(ev, "token", 5), 0);
    if (s->n < 8)
        cr_expect_eq(sinkd_map_u64(event, "n", &s->values[s->n]), 0);
    s->n++;
}

static int pack_count(msgpack_packer *pk, void *arg)
{
    sinkd_pack_kv_u64(pk, "count", *(uint64_t *)arg);
    return 0;
}

Test(client_lib, events_then_reply_and_stale_frames_dropped)
{
    sinkd_client *c = connect_ok();
    uint64_t count = 3;
    events_seen seen = { 0 };
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.op = "events";
    req.nfields = 1;
    req.pack = pack_count;
    req.pack_arg = &count;
    req.on_event = on_event;
    req.event_arg = &seen;
    req.timeout_ms = TIMEOUT_MS;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    cr_assert_eq(sinkd_client_request(c, &req, &rep), 0);
    cr_expect_eq(seen.n, 3);
    cr_expect_eq(seen.values[0], 0);
    cr_expect_eq(seen.values[1], 10);
    cr_expect_eq(seen.values[2], 20);
    uint64_t v = 0;
    cr_expect_eq(sinkd_map_u64(rep.map, "count", &v), 0);
    cr_expect_eq(v, 3);
    cr_expect_null(sinkd_map_get(rep.map, "stale"));
    sinkd_client_reply_free(&rep);
    cr_expect_null(rep.payload);
    sinkd_client_reply_free(&rep);   /* twice is fine */
    sinkd_client_close(c);
}

Test(client_lib, timeout_then_late_reply_is_discarded)
{
    sinkd_client *c = connect_ok();
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.op = "slow";
    req.timeout_ms = 50;
    cr_expect_eq(sinkd_client_request(c, &req, NULL), -ETIMEDOUT);
    /* The late reply of "slow" arrives first and is skipped. */
    uint64_t count = 0;
    req.op = "events";
    req.nfields = 1;
    req.pack = pack_count;
    req.pack_arg = &count;
    req.timeout_ms = TIMEOUT_MS;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    cr_assert_eq(sinkd_client_request(c, &req, &rep), 0);
    uint64_t v = 99;
    cr_expect_eq(sinkd_map_u64(rep.map, "count", &v), 0);
    cr_expect_eq(v, 0);
    sinkd_client_reply_free(&rep);
    sinkd_client_close(c);
}

Test(client_lib, error_replies)
{
    sinkd_client *c = connect_ok();
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.op = "deny";
    req.timeout_ms = TIMEOUT_MS;
    cr_expect_eq(sinkd_client_request(c, &req, NULL), SINKD_ERR_PERMISSION_DENIED);
    cr_expect_str_eq(sinkd_client_errmsg(c), "not for you");
    cr_expect_str_eq(sinkd_client_strerror(SINKD_ERR_PERMISSION_DENIED), "permission_denied");

    /* An error without id answers the one request in flight. */
    req.op = "noid";
    cr_expect_eq(sinkd_client_request(c, &req, NULL), SINKD_ERR_BAD_REQUEST);
    cr_expect_str_eq(sinkd_client_errmsg(c), "no usable id");

    cr_expect_eq(sinkd_client_ping(c, TIMEOUT_MS, NULL), -EPROTO, "ping reply without t_ns");
    cr_expect_str_eq(sinkd_client_errmsg(c), "");
    sinkd_client_close(c);
}

Test(client_lib, fd_rides_with_the_request)
{
    sinkd_client *c = connect_ok();
    int fd = memfd_create("t", MFD_CLOEXEC);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "\x5a", 1), 1);
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.op = "fd";
    req.fd = fd;
    req.timeout_ms = TIMEOUT_MS;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    cr_assert_eq(sinkd_client_request(c, &req, &rep), 0);
    uint64_t first = 0;
    cr_expect_eq(sinkd_map_u64(rep.map, "first", &first), 0);
    cr_expect_eq(first, 0x5a);
    sinkd_client_reply_free(&rep);
    close(fd);
    sinkd_client_close(c);
}

Test(client_lib, request_over_max_frame_is_refused_locally)
{
    sinkd_client *c = connect_ok();
    static uint8_t big[5000];
    big[0] = 0x81, big[1] = 0xa1, big[2] = 'b', big[3] = 0xc5;
    big[4] = (uint8_t)((sizeof(big) - 6) >> 8), big[5] = (uint8_t)(sizeof(big) - 6);
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.op = "big";
    req.fields = big;
    req.fields_len = sizeof(big);
    cr_expect_eq(sinkd_client_request(c, &req, NULL), -EMSGSIZE, "server said max_frame 4096");
    cr_expect_eq(sinkd_client_request(c, &(sinkd_client_req){ .op = NULL }, NULL), -EINVAL);
    cr_expect_eq(sinkd_client_ping(c, TIMEOUT_MS, NULL), -EPROTO, "the handle still works");
    sinkd_client_close(c);
}

Test(client_lib, lost_connection_is_sticky)
{
    sinkd_client *c = connect_ok();
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.op = "close";
    req.timeout_ms = TIMEOUT_MS;
    int rc = sinkd_client_request(c, &req, NULL);
    cr_expect(rc == -ECONNRESET || rc == -EPIPE, "got %d", rc);
    cr_expect_eq(sinkd_client_ping(c, TIMEOUT_MS, NULL), rc);
    sinkd_client_close(c);
}

Test(client_lib, default_socket_resolution)
{
    char buf[108];
    setenv("SINKD_SOCKET", "/x/y.sock", 1);
    cr_expect_eq(sinkd_client_default_socket(buf, sizeof(buf)), 0);
    cr_expect_str_eq(buf, "/x/y.sock");

    unsetenv("SINKD_SOCKET");
    setenv("XDG_RUNTIME_DIR", srv.dir, 1);
    cr_expect_eq(sinkd_client_default_socket(buf, sizeof(buf)), 0);
    cr_expect_str_eq(buf, SINKD_CLIENT_SOCKET_DEFAULT, "no sinkd.sock in XDG_RUNTIME_DIR yet");
    char xdg_sock[128];
    snprintf(xdg_sock, sizeof(xdg_sock), "%s/sinkd.sock", srv.dir);
    cr_assert_eq(symlink(srv.path, xdg_sock), 0);
    cr_expect_eq(sinkd_client_default_socket(buf, sizeof(buf)), 0);
    cr_expect_str_eq(buf, xdg_sock);

    /* NULL path connects there. */
    sinkd_client *c = NULL;
    cr_expect_eq(sinkd_client_connect(NULL, TIMEOUT_MS, &c), 0);
    sinkd_client_close(c);
    unlink(xdg_sock);

    cr_expect_eq(sinkd_client_default_socket(buf, 4), -ENAMETOOLONG);
    cr_expect_eq(sinkd_client_connect("/nonexistent/sinkd.sock", 100, &c), -ENOENT);
    cr_expect_null(c);
}
