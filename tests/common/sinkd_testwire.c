/*
 * Raw frames for tests (see sinkd_testwire.h).
 */
#include "sinkd_testwire.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static int64_t wire__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int sinkd_testwire_send(int fd, const void *buf, size_t n)
{
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int sinkd_testwire_send_frame(int fd, const void *payload, size_t n)
{
    if (n > UINT32_MAX)
        return -EMSGSIZE;
    uint8_t head[4] = { (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n };
    int rc = sinkd_testwire_send(fd, head, sizeof(head));
    return rc == 0 ? sinkd_testwire_send(fd, payload, n) : rc;
}

/* Read exactly @n bytes before @deadline. */
static int wire__read(int fd, uint8_t *buf, size_t n, int64_t deadline)
{
    while (n > 0) {
        ssize_t r = recv(fd, buf, n, MSG_DONTWAIT);
        if (r > 0) {
            buf += r;
            n -= (size_t)r;
            continue;
        }
        if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            return r == 0 || errno == ECONNRESET ? -ECONNRESET : -errno;
        int64_t left = deadline - wire__now_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = { .fd = fd, .events = POLLIN };
        poll(&p, 1, (int)left);
    }
    return 0;
}

int sinkd_testwire_recv(int fd, int timeout_ms, sinkd_testwire_frame *f)
{
    int64_t deadline = wire__now_ms() + timeout_ms;
    uint8_t head[4];
    int rc = wire__read(fd, head, sizeof(head), deadline);
    if (rc < 0)
        return rc;
    size_t len = (size_t)head[0] << 24 | (size_t)head[1] << 16 | (size_t)head[2] << 8 | head[3];
    f->payload = malloc(len > 0 ? len : 1);
    if (f->payload == NULL)
        return -ENOMEM;
    f->len = len;
    rc = wire__read(fd, f->payload, len, deadline);
    if (rc == 0 && sinkd_msg_decode(f->payload, len, &f->msg, NULL) != 0)
        rc = -EBADMSG;
    if (rc < 0) {
        free(f->payload);
        *f = (sinkd_testwire_frame)SINKD_TESTWIRE_FRAME_INIT;
    }
    return rc;
}

void sinkd_testwire_frame_free(sinkd_testwire_frame *f)
{
    if (f->payload != NULL)
        sinkd_msg_free(&f->msg);
    free(f->payload);
    *f = (sinkd_testwire_frame)SINKD_TESTWIRE_FRAME_INIT;
}

bool sinkd_testwire_closed(int fd, int timeout_ms)
{
    uint8_t b;
    int rc = wire__read(fd, &b, 1, wire__now_ms() + timeout_ms);
    return rc == -ECONNRESET;
}

void sinkd_testwire_error(const sinkd_testwire_frame *f, sinkd_errcode *code,
                          bool *has_id, uint64_t *id, char **msg)
{
    const msgpack_object *err;
    const char *s;
    size_t n;
    *code = SINKD_ERR_NONE;
    *has_id = sinkd_map_u64(&f->msg.root, "id", id) == 0;
    if (msg != NULL)
        *msg = NULL;
    if (sinkd_map_map(&f->msg.root, "error", &err) != 0)
        return;
    if (sinkd_map_str(err, "code", &s, &n) == 0)
        *code = sinkd_errcode_from_name(s, n);
    if (msg != NULL && sinkd_map_str(err, "message", &s, &n) == 0)
        *msg = strndup(s, n);
}
