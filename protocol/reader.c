/*
 * Incremental frame reader. The buffer holds the unconsumed tail of the
 * stream, starting at a frame boundary. Each feed first drops what earlier
 * next calls consumed (so memory follows the largest pending frame, not the
 * life of the connection), then copies the new bytes, but never the bytes
 * after a length prefix over the limit: that header is kept, so next can
 * still hand out the frames before it and then report the refusal.
 */
#include "proto.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* A buffer grown past this by one large frame is shrunk back once the
 * frame has been consumed. */
#define READER_KEEP_CAP (64u * 1024u)

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

void sinkd_frame_reader_init(sinkd_frame_reader *r, size_t max_frame)
{
    if (max_frame == 0)
        max_frame = SINKD_FRAME_MAX_DEFAULT;
    if (max_frame < SINKD_FRAME_MAX_MIN)
        max_frame = SINKD_FRAME_MAX_MIN;
    if (max_frame > UINT32_MAX)
        max_frame = UINT32_MAX;
    *r = (sinkd_frame_reader){ NULL, 0, 0, 0, max_frame, 0 };
}

void sinkd_frame_reader_free(sinkd_frame_reader *r)
{
    if (r == NULL)
        return;
    free(r->buf);
    sinkd_frame_reader_init(r, r->max_frame);
}

/* The length byte @i of the stream formed by @pending buffered bytes and
 * then @data. */
static uint8_t stream_byte(const sinkd_frame_reader *r, size_t pending,
                           const uint8_t *data, size_t i)
{
    return i < pending ? r->buf[r->head + i] : data[i - pending];
}

/*
 * How many of the @n new bytes to keep: all of them, unless a length prefix
 * over the limit completes inside them; then up to the end of that prefix,
 * and the stream is marked dead.
 */
static size_t accept_len(sinkd_frame_reader *r, const uint8_t *data, size_t n)
{
    size_t pending = r->len - r->head;
    size_t total = pending + n;
    size_t p = 0;

    while (total - p >= SINKD_FRAME_HEADER) {
        uint8_t h[SINKD_FRAME_HEADER];
        for (size_t i = 0; i < SINKD_FRAME_HEADER; i++)
            h[i] = stream_byte(r, pending, data, p + i);
        uint32_t declared = be32(h);
        if (declared > r->max_frame) {
            r->error = -EMSGSIZE;
            return p + SINKD_FRAME_HEADER - pending;
        }
        if (total - p - SINKD_FRAME_HEADER < declared)
            break;
        p += SINKD_FRAME_HEADER + (size_t)declared;
    }
    return n;
}

static int reserve(sinkd_frame_reader *r, size_t need)
{
    size_t cap = r->cap;

    if (need <= READER_KEEP_CAP && cap > READER_KEEP_CAP)
        cap = READER_KEEP_CAP;
    else if (need > cap) {
        size_t one_frame = r->max_frame + SINKD_FRAME_HEADER;
        cap = cap < 4096 ? 4096 : cap;
        while (cap < need && cap < one_frame)
            cap *= 2;
        if (cap > one_frame)
            cap = one_frame;
        if (cap < need) /* many whole frames in one feed */
            cap = need;
    }
    if (cap == r->cap)
        return 0;
    uint8_t *buf = realloc(r->buf, cap);
    if (buf == NULL)
        return cap < r->cap ? 0 : -ENOMEM; /* a failed shrink is harmless */
    r->buf = buf;
    r->cap = cap;
    return 0;
}

int sinkd_frame_reader_feed(sinkd_frame_reader *r, const void *data, size_t n)
{
    if (r == NULL || (data == NULL && n > 0))
        return -EINVAL;
    if (r->error)
        return r->error;
    if (n == 0)
        return 0;

    size_t pending = r->len - r->head;
    if (r->head > 0) {
        memmove(r->buf, r->buf + r->head, pending);
        r->len = pending;
        r->head = 0;
    }
    size_t keep = accept_len(r, data, n);
    if (reserve(r, pending + keep) < 0) {
        r->error = 0; /* nothing was taken: the caller may retry */
        return -ENOMEM;
    }
    memcpy(r->buf + r->len, data, keep);
    r->len += keep;
    return 0;
}

int sinkd_frame_reader_next(sinkd_frame_reader *r, const uint8_t **payload, size_t *len)
{
    if (r == NULL || payload == NULL || len == NULL)
        return -EINVAL;

    size_t avail = r->len - r->head;
    if (avail < SINKD_FRAME_HEADER)
        return 0;
    uint32_t declared = be32(r->buf + r->head);
    if (declared > r->max_frame) {
        r->error = -EMSGSIZE;
        return -EMSGSIZE;
    }
    if (avail - SINKD_FRAME_HEADER < declared)
        return 0;
    *payload = r->buf + r->head + SINKD_FRAME_HEADER;
    *len = declared;
    r->head += SINKD_FRAME_HEADER + (size_t)declared;
    return 1;
}
