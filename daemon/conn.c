#include "conn.h"
#include "auth.h"
#include "log.h"
#include "ops.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define CONN__READ_CHUNK (64u * 1024u)
/* Reads per poll callback: a busy client must not starve the others. */
#define CONN__READS_PER_WAKEUP 16
#define CONN__IOV_MAX 64

struct sinkd_conn_out {
    sinkd_conn_out *next;
    uint8_t *data;
    size_t len;
    size_t off;   /* bytes already written */
};

static void conn__on_poll(uv_poll_t *h, int status, int events);

static void conn__update_poll(sinkd_conn *c)
{
    int want = (c->reading ? UV_READABLE : 0) | (c->out_head ? UV_WRITABLE : 0);

    if (c->closed || want == c->events)
        return;
    c->events = want;
    if (want)
        uv_poll_start(&c->poll, want, conn__on_poll);
    else
        uv_poll_stop(&c->poll);
}

static void conn__fd_drop(sinkd_conn *c, size_t i)
{
    memmove(&c->fds[i], &c->fds[i + 1], (c->n_fds - i - 1) * sizeof c->fds[0]);
    memmove(&c->fd_lo[i], &c->fd_lo[i + 1], (c->n_fds - i - 1) * sizeof c->fd_lo[0]);
    memmove(&c->fd_hi[i], &c->fd_hi[i + 1], (c->n_fds - i - 1) * sizeof c->fd_hi[0]);
    c->n_fds--;
}

/* Close the fds that no frame starting at @off or later can take. */
static void conn__close_fds_before(sinkd_conn *c, uint64_t off)
{
    for (size_t i = c->n_fds; i-- > 0;) {
        if (c->fd_hi[i] <= off) {
            close(c->fds[i]);
            conn__fd_drop(c, i);
        }
    }
}

static void conn__on_closed(uv_handle_t *h)
{
    sinkd_conn *c = h->data;

    close(c->fd);
    free(c);
}

void sinkd_conn_close(sinkd_conn *c)
{
    if (!c || c->closed)
        return;
    c->closed = true;
    c->reading = false;
    sinkd_server__conn_removed(c->srv, c);
    while (c->out_head) {
        sinkd_conn_out *o = c->out_head;
        c->out_head = o->next;
        free(o->data);
        free(o);
    }
    c->out_tail = NULL;
    c->out_bytes = 0;
    conn__close_fds_before(c, UINT64_MAX);
    sinkd_frame_reader_free(&c->rd);
    sinkd_log(SINKD_LOG_DEBUG, "conn %llu: closed", (unsigned long long)c->id);
    uv_close((uv_handle_t *)&c->poll, conn__on_closed);
}

/* Write as much queued output as the socket takes. 0, or -EPIPE after the
 * connection was closed for a write error. */
static int conn__flush(sinkd_conn *c)
{
    while (c->out_head) {
        struct iovec iov[CONN__IOV_MAX];
        struct msghdr mh = { 0 };
        sinkd_conn_out *o = c->out_head;
        size_t n = 0;
        ssize_t w;

        for (; o && n < CONN__IOV_MAX; o = o->next, n++) {
            iov[n].iov_base = o->data + o->off;
            iov[n].iov_len = o->len - o->off;
        }
        mh.msg_iov = iov;
        mh.msg_iovlen = n;
        w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            sinkd_log(SINKD_LOG_DEBUG, "conn %llu: write: %s", (unsigned long long)c->id,
                      strerror(errno));
            sinkd_conn_close(c);
            return -EPIPE;
        }
        c->out_bytes -= (size_t)w;
        while (w > 0) {
            o = c->out_head;
            size_t left = o->len - o->off;
            if ((size_t)w < left) {
                o->off += (size_t)w;
                break;
            }
            w -= (ssize_t)left;
            c->out_head = o->next;
            free(o->data);
            free(o);
        }
        if (!c->out_head)
            c->out_tail = NULL;
    }
    if (!c->out_head && c->closing) {
        sinkd_conn_close(c);
        return 0;
    }
    conn__update_poll(c);
    return 0;
}

int sinkd_conn_send(sinkd_conn *c, uint8_t *frame, size_t len)
{
    sinkd_conn_out *o;

    if (!c || !frame || !len) {
        free(frame);
        return -EINVAL;
    }
    if (c->closed) {
        free(frame);
        return -EPIPE;
    }
    o = malloc(sizeof *o);
    if (!o) {
        free(frame);
        sinkd_log(SINKD_LOG_ERR, "conn %llu: out of memory queueing output: dropping",
                  (unsigned long long)c->id);
        sinkd_conn_close(c);
        return -EPIPE;
    }
    *o = (sinkd_conn_out){ NULL, frame, len, 0 };
    if (c->out_tail)
        c->out_tail->next = o;
    else
        c->out_head = o;
    c->out_tail = o;
    c->out_bytes += len;
    if (conn__flush(c) < 0)
        return -EPIPE;
    if (!c->closed && c->out_bytes > c->srv->cfg.max_output) {
        sinkd_log(SINKD_LOG_WARNING,
                  "conn %llu (uid %u pid %d): %zu bytes of unsent output exceed max_output "
                  "(%llu): dropping the connection",
                  (unsigned long long)c->id, (unsigned)c->uid, (int)c->pid, c->out_bytes,
                  (unsigned long long)c->srv->cfg.max_output);
        sinkd_conn_close(c);
        return -EPIPE;
    }
    return c->closed ? -EPIPE : 0;
}

void sinkd_conn_finish(sinkd_conn *c)
{
    if (!c || c->closed)
        return;
    c->reading = false;
    c->closing = true;
    conn__flush(c);
}

int sinkd_conn_take_fd(sinkd_conn *c)
{
    int fd;

    if (!c)
        return -EINVAL;
    for (size_t i = 0; i < c->n_fds; i++) {
        if (c->frame_start < c->fd_lo[i] || c->frame_start >= c->fd_hi[i])
            continue;
        fd = c->fds[i];
        conn__fd_drop(c, i);
        return fd;
    }
    return -ENOENT;
}

void sinkd_conn_fail(sinkd_conn *c, sinkd_errcode code, const char *msg)
{
    size_t len;
    uint8_t *f = sinkd_frame_error(0, false, code, msg, &len);

    if (f)
        sinkd_conn_send(c, f, len);
    sinkd_conn_finish(c);
}

/* The fds of one read, of stream bytes [lo, hi). The kernel hands them
 * over with the first read that touches the data of the sendmsg that
 * carried them, and it may glue data sent before (without fds) in front of
 * it in that read: so they belong to a frame whose first byte was read
 * here, not necessarily the first such frame. Which one: the first
 * shm.register among them takes it (a client that follows PROTOCOL.md §9
 * sends every other register's fd with its own first byte, and a read
 * stops after the data that came with fds, so no earlier register can be
 * in this read). */
static void conn__queue_fds(sinkd_conn *c, struct msghdr *mh, uint64_t lo, uint64_t hi)
{
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
        size_t n;
        int *fds;
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        fds = (int *)CMSG_DATA(cm);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, &fds[i], sizeof fd);
            if (c->n_fds == SINKD_CONN_FDS_MAX) {
                sinkd_log(SINKD_LOG_NOTICE, "conn %llu: more than %d pending fds: closing one",
                          (unsigned long long)c->id, SINKD_CONN_FDS_MAX);
                close(fd);
                continue;
            }
            c->fds[c->n_fds] = fd;
            c->fd_lo[c->n_fds] = lo;
            c->fd_hi[c->n_fds++] = hi;
        }
    }
}

/* Dispatch every whole frame buffered. Stops when the connection closes or
 * stops reading. */
static void conn__drain_frames(sinkd_conn *c)
{
    while (c->reading) {
        const uint8_t *payload;
        size_t len;
        int rc = sinkd_frame_reader_next(&c->rd, &payload, &len);

        if (rc == 0)
            return;
        if (rc < 0) {
            sinkd_log(SINKD_LOG_NOTICE, "conn %llu: frame over max_frame (%llu): closing",
                      (unsigned long long)c->id, (unsigned long long)c->srv->cfg.max_frame);
            sinkd_conn_fail(c, SINKD_ERR_FRAME_TOO_LARGE, "frame larger than max_frame");
            return;
        }
        c->frame_end = c->frame_start + SINKD_FRAME_HEADER + len;
        conn__close_fds_before(c, c->frame_start);
        sinkd_ops_dispatch(c, payload, len);
        c->frame_start = c->frame_end;
    }
}

/* The peer will send nothing more. Closed altogether (POLLHUP: nothing
 * reads what we would answer): finish now, so that the engine drops its
 * work at once. Shut down for sending only (`cmd | socat`): it still reads,
 * so it gets every answer owed first, through the server's conn_eof. */
static void conn__eof(sinkd_conn *c)
{
    struct pollfd p = { .fd = c->fd, .events = 0 };
    sinkd_server *s = c->srv;

    if (!s->conn_eof || (poll(&p, 1, 0) == 1 && (p.revents & POLLHUP))) {
        sinkd_conn_finish(c);
        return;
    }
    c->reading = false;
    conn__update_poll(c);
    s->conn_eof(s->conn_eof_ud, c->id);
}

static void conn__read(sinkd_conn *c)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * SINKD_CONN_FDS_MAX)];
        struct cmsghdr align;
    } ctl;
    uint8_t *buf = malloc(CONN__READ_CHUNK);

    if (!buf) {
        sinkd_log(SINKD_LOG_ERR, "conn %llu: out of memory reading", (unsigned long long)c->id);
        sinkd_conn_close(c);
        return;
    }
    for (int i = 0; i < CONN__READS_PER_WAKEUP && c->reading; i++) {
        struct iovec iov = { buf, CONN__READ_CHUNK };
        struct msghdr mh = { 0 };
        ssize_t n;
        int rc;

        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof ctl.buf;
        n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n < 0) {
            sinkd_log(SINKD_LOG_DEBUG, "conn %llu: read: %s", (unsigned long long)c->id,
                      strerror(errno));
            sinkd_conn_close(c);
            break;
        }
        conn__queue_fds(c, &mh, c->rx_total, c->rx_total + (uint64_t)(n > 0 ? n : 0));
        if (mh.msg_flags & MSG_CTRUNC)
            sinkd_log(SINKD_LOG_NOTICE, "conn %llu: too many fds in one message: extra ones "
                      "closed", (unsigned long long)c->id);
        if (n == 0) {
            conn__eof(c);
            break;
        }
        rc = sinkd_frame_reader_feed(&c->rd, buf, (size_t)n);
        c->rx_total += (uint64_t)n;
        if (rc == -ENOMEM) {
            sinkd_log(SINKD_LOG_ERR, "conn %llu: out of memory buffering a frame: dropping",
                      (unsigned long long)c->id);
            sinkd_conn_close(c);
            break;
        }
        conn__drain_frames(c);
    }
    free(buf);
}

static void conn__on_poll(uv_poll_t *h, int status, int events)
{
    sinkd_conn *c = h->data;

    if (status < 0) {
        sinkd_log(SINKD_LOG_DEBUG, "conn %llu: poll: %s", (unsigned long long)c->id,
                  uv_strerror(status));
        sinkd_conn_close(c);
        return;
    }
    if ((events & UV_WRITABLE) && conn__flush(c) < 0)
        return;
    if ((events & UV_READABLE) && c->reading)
        conn__read(c);
}

int sinkd_conn_accept(sinkd_server *s, int fd)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    sinkd_conn *c;
    int rc;

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    c->srv = s;
    c->fd = fd;
    c->uid = cred.uid;
    c->gid = cred.gid;
    c->pid = cred.pid;
    c->admin = sinkd_auth_is_admin(cred.uid, cred.gid, &s->cfg.admin_group);
    c->proto = SINKD_PROTO_VERSION_MIN;
    sinkd_frame_reader_init(&c->rd, (size_t)s->cfg.max_frame);
    rc = uv_poll_init(s->loop, &c->poll, fd);
    if (rc < 0) {
        close(fd);
        free(c);
        return rc;
    }
    c->poll.data = c;
    c->reading = true;
    sinkd_server__conn_added(s, c);
    conn__update_poll(c);
    sinkd_log(SINKD_LOG_INFO, "conn %llu: accepted uid %u gid %u pid %d%s",
              (unsigned long long)c->id, (unsigned)c->uid, (unsigned)c->gid, (int)c->pid,
              c->admin ? " (admin)" : "");
    return 0;
}
