/*
 * libsinkd core: connecting, framing requests, and waiting for replies.
 *
 * The socket stays in blocking mode (the fd is the caller's to poll); every
 * send and recv passes MSG_DONTWAIT and waits in poll(2) against a deadline,
 * so one timeout bounds the whole request (or, for streams, each wait). One
 * request is waited for at a time per handle: frames whose id is not the
 * pending one belong to requests that timed out earlier or were sent without
 * waiting (session.cancel from a token callback), and are dropped.
 */
#include "client_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Replies may be larger than what the daemon accepts; this only stops a
 * broken peer from making us buffer without bound. */
#define CLIENT_READ_MAX (256u * 1024u * 1024u)
#define CLIENT_RECV_CHUNK 65536

int sinkd_client_default_socket(char *buf, size_t size)
{
    if (buf == NULL || size == 0)
        return -EINVAL;
    size_t limit = sizeof(((struct sockaddr_un *)0)->sun_path);
    if (size < limit)
        limit = size;

    const char *env = getenv("SINKD_SOCKET");
    int n;
    if (env != NULL && env[0] != '\0') {
        n = snprintf(buf, size, "%s", env);
    } else {
        const char *xdg = getenv("XDG_RUNTIME_DIR");
        n = -1;
        if (xdg != NULL && xdg[0] != '\0') {
            n = snprintf(buf, size, "%s/%s", xdg, SINKD_CLIENT_SOCKET_XDG_NAME);
            if (n < 0 || (size_t)n >= limit || access(buf, F_OK) != 0)
                n = -1;
        }
        if (n < 0)
            n = snprintf(buf, size, "%s", SINKD_CLIENT_SOCKET_DEFAULT);
    }
    if (n < 0 || (size_t)n >= limit) {
        buf[0] = '\0';
        return -ENAMETOOLONG;
    }
    return 0;
}

static int64_t client__deadline(int timeout_ms)
{
    if (timeout_ms < 0)
        return -1;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + timeout_ms;
}

/* Milliseconds left until @deadline for poll(2): -1 = forever, 0 = expired. */
static int client__remaining(int64_t deadline)
{
    if (deadline < 0)
        return -1;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t left = deadline - ((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
    if (left <= 0)
        return 0;
    return left > INT32_MAX ? INT32_MAX : (int)left;
}

/* Wait until @fd is ready for @events. 0, -ETIMEDOUT or a poll errno. */
static int client__wait(int fd, short events, int64_t deadline)
{
    for (;;) {
        int left = client__remaining(deadline);
        if (left == 0)
            return -ETIMEDOUT;
        struct pollfd p = { .fd = fd, .events = events };
        int n = poll(&p, 1, left);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

/* Mark @c unusable with @err (first error wins) and return it. */
static int client__fail(sinkd_client *c, int err)
{
    if (c->dead == 0)
        c->dead = err;
    return c->dead;
}

static int client__send(sinkd_client *c, const uint8_t *buf, size_t len, int fd,
                 int64_t deadline)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n;
        if (off == 0 && fd >= 0) {
            /* The fd must ride with the frame's first byte (PROTOCOL.md). */
            union {
                struct cmsghdr h;
                char buf[CMSG_SPACE(sizeof(int))];
            } ctl;
            memset(&ctl, 0, sizeof(ctl));
            struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
            struct msghdr mh = {
                .msg_iov = &iov, .msg_iovlen = 1,
                .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf),
            };
            struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cm), &fd, sizeof(int));
            n = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        } else {
            n = send(c->fd, buf + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        if (n >= 0) {
            off += (size_t)n;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return client__fail(c, -errno);
        int rc = client__wait(c->fd, POLLOUT, deadline);
        if (rc < 0) {
            /* Half a frame on the wire poisons the stream for good. */
            return off > 0 ? client__fail(c, -ECONNABORTED) : rc;
        }
    }
    return 0;
}

static int client__recv_frame(sinkd_client *c, int64_t deadline,
                       const uint8_t **payload, size_t *len)
{
    for (;;) {
        int rc = sinkd_frame_reader_next(&c->rd, payload, len);
        if (rc == 1)
            return 0;
        if (rc < 0)
            return client__fail(c, -EPROTO);

        uint8_t chunk[CLIENT_RECV_CHUNK];
        ssize_t n = recv(c->fd, chunk, sizeof(chunk), MSG_DONTWAIT);
        if (n > 0) {
            rc = sinkd_frame_reader_feed(&c->rd, chunk, (size_t)n);
            if (rc == -ENOMEM) /* the chunk is off the socket: the stream has a hole */
                return client__fail(c, -ENOMEM);
            if (rc < 0)
                return client__fail(c, -EPROTO);
            continue;
        }
        if (n == 0)
            return client__fail(c, -ECONNRESET);
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return client__fail(c, -errno);
        rc = client__wait(c->fd, POLLIN, deadline);
        if (rc < 0)
            return rc;
    }
}

/* Locate the entries of the pre-packed map @p (@n bytes): *@body and
 * *@body_len get the bytes after its header, *@count their number of pairs.
 * -EINVAL unless @p is exactly one valid map. */
static int client__fields_body(const uint8_t *p, size_t n, const uint8_t **body,
                               size_t *body_len, uint32_t *count)
{
    const char *why;
    if (sinkd_msg_validate(p, n, &why) != 0)
        return -EINVAL;
    size_t head;
    if (p[0] >= 0x80 && p[0] <= 0x8f) {
        head = 1;
        *count = p[0] & 0x0f;
    } else if (p[0] == 0xde && n >= 3) {
        head = 3;
        *count = (uint32_t)p[1] << 8 | p[2];
    } else if (p[0] == 0xdf && n >= 5) {
        head = 5;
        *count = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
    } else {
        return -EINVAL;
    }
    *body = p + head;
    *body_len = n - head;
    return 0;
}

/* Build the frame of @req with @id into a malloc'ed buffer. */
static int client__build(const sinkd_client *c, const sinkd_client_req *req,
                         uint64_t id, uint8_t **frame, size_t *frame_len)
{
    const uint8_t *body = NULL;
    size_t body_len = 0;
    uint32_t nfields = 0;
    if (req->fields != NULL) {
        int rc = client__fields_body(req->fields, req->fields_len,
                                     &body, &body_len, &nfields);
        if (rc < 0)
            return rc;
    } else if (req->pack != NULL) {
        nfields = req->nfields;
    }

    sinkd_fw w;
    int rc = sinkd_fw_init(&w);
    if (rc < 0)
        return rc;
    sinkd_pack_request_head(&w.pk, req->op, id, nfields);
    if (body != NULL && body_len > 0 &&
        w.pk.callback(w.pk.data, (const char *)body, body_len) != 0) {
        rc = -ENOMEM;
        goto out;
    }
    if (req->pack != NULL) {
        rc = req->pack(&w.pk, req->pack_arg);
        if (rc < 0)
            goto out;
    }
    long total = sinkd_fw_finish(&w, c->info.max_frame);
    if (total < 0) {
        rc = (int)total;
        goto out;
    }
    *frame = sinkd_fw_release(&w, frame_len);
    rc = *frame != NULL ? 0 : -ENOMEM;
out:
    sinkd_fw_free(&w);
    return rc;
}

/* Turn a reply map into this library's return value. */
static int client__outcome(sinkd_client *c, const msgpack_object *map)
{
    const msgpack_object *err;
    if (sinkd_map_map(map, "error", &err) == 0) {
        const char *code = NULL, *msg = NULL;
        size_t code_len = 0, msg_len = 0;
        if (sinkd_map_str(err, "code", &code, &code_len) != 0)
            return -EPROTO;
        if (sinkd_map_str(err, "message", &msg, &msg_len) != 0)
            msg_len = 0;
        if (msg_len >= sizeof(c->errmsg))
            msg_len = sizeof(c->errmsg) - 1;
        if (msg_len > 0)
            memcpy(c->errmsg, msg, msg_len);
        c->errmsg[msg_len] = '\0';
        sinkd_errcode ec = sinkd_errcode_from_name(code, code_len);
        return ec == SINKD_ERR_NONE ? SINKD_ERR_INTERNAL : (int)ec;
    }
    bool ok = false;
    if (sinkd_map_bool(map, "ok", &ok) != 0 || !ok)
        return -EPROTO;
    return 0;
}

static int client__check_req(const sinkd_client *c, const sinkd_client_req *req)
{
    if (c == NULL || req == NULL || req->op == NULL || req->op[0] == '\0')
        return -EINVAL;
    if (req->fields != NULL && (req->pack != NULL || req->fields_len == 0))
        return -EINVAL;
    return 0;
}

/* Build and send @req under a fresh id; *@id gets it. */
static int client__post(sinkd_client *c, const sinkd_client_req *req, int64_t deadline,
                        uint64_t *id)
{
    *id = c->next_id++;
    uint8_t *frame = NULL;
    size_t frame_len = 0;
    int rc = client__build(c, req, *id, &frame, &frame_len);
    if (rc < 0)
        return rc;
    rc = client__send(c, frame, frame_len, req->fd, deadline);
    free(frame);
    return rc;
}

int client__send_nowait(sinkd_client *c, const sinkd_client_req *req)
{
    int rc = client__check_req(c, req);
    if (rc < 0)
        return rc;
    if (c->dead != 0)
        return c->dead;
    uint64_t id;
    return client__post(c, req, client__deadline(req->timeout_ms), &id);
}

int sinkd_client_request(sinkd_client *c, const sinkd_client_req *req,
                         sinkd_client_reply *reply)
{
    return client__request(c, req, reply, false);
}

int client__request(sinkd_client *c, const sinkd_client_req *req,
                    sinkd_client_reply *reply, bool idle)
{
    int rc = client__check_req(c, req);
    if (rc < 0)
        return rc;
    if (reply != NULL && reply->payload != NULL)
        return -EINVAL;
    c->errmsg[0] = '\0';
    if (c->dead != 0)
        return c->dead;

    int64_t deadline = client__deadline(req->timeout_ms);
    uint64_t id;
    rc = client__post(c, req, deadline, &id);
    if (rc < 0)
        return rc;

    for (;;) {
        const uint8_t *payload;
        size_t len;
        rc = client__recv_frame(c, deadline, &payload, &len);
        if (rc < 0)
            return rc;

        /* Decode from a copy: the reader's buffer moves on the next feed, and
         * a reply outlives this call. */
        uint8_t *copy = malloc(len > 0 ? len : 1);
        if (copy == NULL)
            return -ENOMEM;
        memcpy(copy, payload, len);
        sinkd_msg msg;
        if (sinkd_msg_decode(copy, len, &msg, NULL) != 0) {
            free(copy);
            return client__fail(c, -EPROTO);
        }
        const msgpack_object *map = &msg.root;
        uint64_t got;
        int idrc = sinkd_map_u64(map, "id", &got);
        /* An error without an id answers a frame the daemon could not read:
         * ours, since only one is in flight. Anything else not ours is late. */
        bool mine = idrc == 0 ? got == id : sinkd_map_get(map, "error") != NULL;
        const char *ev;
        size_t ev_len;
        if (mine && idrc == 0 && sinkd_map_str(map, "ev", &ev, &ev_len) == 0) {
            if (req->on_event != NULL)
                req->on_event(req->event_arg, ev, ev_len, map);
            if (idle)
                deadline = client__deadline(req->timeout_ms);
            mine = false;
        }
        if (!mine) {
            sinkd_msg_free(&msg);
            free(copy);
            continue;
        }
        rc = client__outcome(c, map);
        if (reply != NULL && rc >= 0) {
            reply->payload = copy;
            reply->msg = msg;
            reply->map = &reply->msg.root;
        } else {
            sinkd_msg_free(&msg);
            free(copy);
        }
        return rc;
    }
}

void sinkd_client_reply_free(sinkd_client_reply *r)
{
    if (r == NULL)
        return;
    if (r->payload != NULL)
        sinkd_msg_free(&r->msg);
    free(r->payload);
    *r = (sinkd_client_reply)SINKD_CLIENT_REPLY_INIT;
}

int client__copy_str(const msgpack_object *map, const char *key, char *dst, size_t size)
{
    const char *s;
    size_t n;
    int rc = sinkd_map_str(map, key, &s, &n);
    if (rc != 0)
        return rc;
    if (n >= size)
        n = size - 1;
    memcpy(dst, s, n);
    dst[n] = '\0';
    return 0;
}

static int client__pack_hello(msgpack_packer *pk, void *arg)
{
    (void)arg;
    sinkd_pack_kv_u64(pk, "proto_min", SINKD_PROTO_VERSION_MIN);
    sinkd_pack_kv_u64(pk, "proto_max", SINKD_PROTO_VERSION);
    sinkd_pack_kv_str(pk, "client", "libsinkd/" SINKD_VERSION);
    return 0;
}

static int client__hello(sinkd_client *c, int timeout_ms)
{
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.op = "hello";
    req.nfields = 3;
    req.pack = client__pack_hello;
    req.timeout_ms = timeout_ms;

    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = sinkd_client_request(c, &req, &rep);
    if (rc == SINKD_ERR_UNSUPPORTED_VERSION)
        rc = -EPROTONOSUPPORT;
    else if (rc > 0)
        rc = -EPROTO;
    if (rc < 0)
        goto out;

    uint64_t proto, max_frame;
    if (sinkd_map_u64(rep.map, "proto", &proto) != 0 ||
        proto < SINKD_PROTO_VERSION_MIN || proto > SINKD_PROTO_VERSION ||
        sinkd_map_u64(rep.map, "max_frame", &max_frame) != 0 ||
        sinkd_map_u64(rep.map, "uid", &c->info.uid) != 0 ||
        sinkd_map_bool(rep.map, "admin", &c->info.admin) != 0 ||
        client__copy_str(rep.map, "server", c->info.server, sizeof(c->info.server)) != 0 ||
        client__copy_str(rep.map, "version", c->info.version, sizeof(c->info.version)) != 0) {
        rc = -EPROTO;
        goto out;
    }
    c->info.proto = (uint32_t)proto;
    c->info.max_frame = max_frame;
out:
    sinkd_client_reply_free(&rep);
    return rc;
}

int sinkd_client_connect(const char *path, int timeout_ms, sinkd_client **out)
{
    if (out == NULL)
        return -EINVAL;
    *out = NULL;

    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    if (path == NULL) {
        int rc = sinkd_client_default_socket(addr.sun_path, sizeof(addr.sun_path));
        if (rc < 0)
            return rc;
    } else {
        if (path[0] == '\0')
            return -EINVAL;
        if (strlen(path) >= sizeof(addr.sun_path))
            return -ENAMETOOLONG;
        strcpy(addr.sun_path, path);
    }

    sinkd_client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    c->fd = -1;
    c->next_id = 1;
    c->info.max_frame = SINKD_FRAME_MAX_DEFAULT;
    sinkd_frame_reader_init(&c->rd, CLIENT_READ_MAX);

    int rc;
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        rc = -errno;
        goto fail;
    }
    /* A full listen backlog makes connect(2) sleep for up to SO_SNDTIMEO. */
    if (timeout_ms >= 0) {
        struct timeval tv = { .tv_sec = timeout_ms / 1000,
                              .tv_usec = (timeout_ms % 1000) * 1000 };
        if (tv.tv_sec == 0 && tv.tv_usec == 0)
            tv.tv_usec = 1;
        setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    while (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        if (errno == EINTR)
            continue;
        rc = errno == EAGAIN || errno == EINPROGRESS ? -ETIMEDOUT : -errno;
        goto fail;
    }
    rc = client__hello(c, timeout_ms);
    if (rc < 0)
        goto fail;
    *out = c;
    return 0;
fail:
    sinkd_client_close(c);
    return rc;
}

void sinkd_client_close(sinkd_client *c)
{
    if (c == NULL)
        return;
    if (c->fd >= 0)
        close(c->fd);
    sinkd_frame_reader_free(&c->rd);
    free(c);
}

const sinkd_client_info *sinkd_client_info_get(const sinkd_client *c)
{
    return &c->info;
}

int sinkd_client_fd(const sinkd_client *c)
{
    return c->fd;
}

const char *sinkd_client_errmsg(const sinkd_client *c)
{
    return c->errmsg;
}

const char *sinkd_client_strerror(int rc)
{
    static _Thread_local char buf[128];
    if (rc == 0)
        return "ok";
    if (rc > 0)
        return sinkd_errcode_name((sinkd_errcode)rc);
    return strerror_r(-rc, buf, sizeof(buf));
}
