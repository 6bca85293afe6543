/* The incremental frame reader: splits, merges, limits, sticky refusal and
 * bounded memory. */
#include "proto.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define NFRAMES 300

typedef struct {
    uint8_t *bytes;
    size_t len;
    size_t off[NFRAMES]; /* payload offsets */
    size_t plen[NFRAMES];
} stream;

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

/* NFRAMES frames with payload sizes 0..max_payload and random bytes. */
static void make_stream(stream *s, unsigned seed, size_t max_payload)
{
    srand(seed);
    s->bytes = malloc(NFRAMES * (max_payload + 4));
    cr_assert_not_null(s->bytes);
    s->len = 0;
    for (int i = 0; i < NFRAMES; i++) {
        size_t n = (size_t)rand() % (max_payload + 1);
        put_be32(s->bytes + s->len, (uint32_t)n);
        s->off[i] = s->len + 4;
        s->plen[i] = n;
        for (size_t j = 0; j < n; j++)
            s->bytes[s->len + 4 + j] = (uint8_t)rand();
        s->len += 4 + n;
    }
}

/* Drain every complete frame, comparing with the expected ones. */
static void drain(sinkd_frame_reader *r, const stream *s, int *got)
{
    const uint8_t *p;
    size_t n;
    int rc;
    while ((rc = sinkd_frame_reader_next(r, &p, &n)) == 1) {
        cr_assert_lt(*got, NFRAMES);
        cr_assert_eq(n, s->plen[*got], "frame %d: %zu bytes, expected %zu", *got, n, s->plen[*got]);
        cr_assert(n == 0 || memcmp(p, s->bytes + s->off[*got], n) == 0, "frame %d differs", *got);
        (*got)++;
    }
    cr_assert_eq(rc, 0);
}

/* Feed @s in pieces of 1..max_piece bytes (random split points). */
static void feed_split(const stream *s, unsigned seed, size_t max_piece)
{
    sinkd_frame_reader r;
    int got = 0;
    sinkd_frame_reader_init(&r, 0);
    srand(seed);
    for (size_t fed = 0; fed < s->len;) {
        size_t piece = 1 + (size_t)rand() % max_piece;
        if (piece > s->len - fed)
            piece = s->len - fed;
        cr_assert_eq(sinkd_frame_reader_feed(&r, s->bytes + fed, piece), 0);
        fed += piece;
        drain(&r, s, &got);
    }
    cr_assert_eq(got, NFRAMES);
    cr_assert_eq(r.len - r.head, 0);
    sinkd_frame_reader_free(&r);
}

Test(reader, random_splits_over_many_frames)
{
    for (unsigned seed = 1; seed <= 20; seed++) {
        stream s;
        make_stream(&s, seed, 700);
        feed_split(&s, seed * 7919, 1 + seed * 97); /* pieces from 1..98 to 1..1941 bytes */
        free(s.bytes);
    }
}

Test(reader, many_frames_in_one_feed)
{
    stream s;
    sinkd_frame_reader r;
    int got = 0;
    make_stream(&s, 42, 64);
    sinkd_frame_reader_init(&r, 0);
    cr_assert_eq(sinkd_frame_reader_feed(&r, s.bytes, s.len), 0);
    drain(&r, &s, &got);
    cr_assert_eq(got, NFRAMES);
    sinkd_frame_reader_free(&r);
    free(s.bytes);
}

Test(reader, byte_at_a_time)
{
    stream s;
    make_stream(&s, 3, 200);
    feed_split(&s, 1, 1);
    free(s.bytes);
}

Test(reader, zero_length_frame)
{
    static const uint8_t zero[] = { 0, 0, 0, 0, 0, 0, 0, 0 };
    sinkd_frame_reader r;
    const uint8_t *p = NULL;
    size_t n = 99;
    sinkd_msg m;
    const char *why = NULL;

    sinkd_frame_reader_init(&r, 0);
    cr_assert_eq(sinkd_frame_reader_feed(&r, zero, sizeof zero), 0);
    cr_assert_eq(sinkd_frame_reader_next(&r, &p, &n), 1);
    cr_assert_eq(n, 0);
    cr_assert_eq(sinkd_msg_decode(p, n, &m, &why), -EBADMSG);
    cr_assert_str_eq(why, "empty payload");
    cr_assert_eq(sinkd_frame_reader_next(&r, &p, &n), 1);
    cr_assert_eq(n, 0);
    cr_assert_eq(sinkd_frame_reader_next(&r, &p, &n), 0);
    sinkd_frame_reader_free(&r);
}

Test(reader, exactly_max_frame_is_accepted)
{
    size_t max = SINKD_FRAME_MAX_MIN;
    uint8_t *f = calloc(1, max + 4);
    sinkd_frame_reader r;
    const uint8_t *p;
    size_t n;

    put_be32(f, (uint32_t)max);
    f[4] = 0xab;
    f[max + 3] = 0xcd;
    sinkd_frame_reader_init(&r, max);
    cr_assert_eq(sinkd_frame_reader_feed(&r, f, max + 3), 0);
    cr_assert_eq(sinkd_frame_reader_next(&r, &p, &n), 0);
    cr_assert_eq(sinkd_frame_reader_feed(&r, f + max + 3, 1), 0);
    cr_assert_eq(sinkd_frame_reader_next(&r, &p, &n), 1);
    cr_assert_eq(n, max);
    cr_assert_eq(p[0], 0xab);
    cr_assert_eq(p[max - 1], 0xcd);
    cr_assert_leq(r.cap, max + 4, "buffer %zu for one frame of %zu", r.cap, max);
    sinkd_frame_reader_free(&r);
    free(f);
}

/* The refusal happens on the header alone: no payload byte is buffered. */
static void check_refused_at_header(size_t max, uint32_t declared)
{
    uint8_t f[64] = { 0 };
    sinkd_frame_reader r;
    const uint8_t *p;
    size_t n;

    put_be32(f, declared);
    sinkd_frame_reader_init(&r, max);
    cr_assert_eq(sinkd_frame_reader_feed(&r, f, 3), 0);
    cr_assert_eq(sinkd_frame_reader_next(&r, &p, &n), 0);
    cr_assert_eq(sinkd_frame_reader_feed(&r, f + 3, sizeof f - 3), 0);
    cr_assert_eq(r.len - r.head, 4, "payload bytes after a refused header were buffered");
    cr_assert_eq(sinkd_frame_reader_next(&r, &p, &n), -EMSGSIZE);
    sinkd_frame_reader_free(&r);
}

Test(reader, max_frame_plus_one_is_refused)
{
    check_refused_at_header(SINKD_FRAME_MAX_MIN, SINKD_FRAME_MAX_MIN + 1);
    check_refused_at_header(SINKD_FRAME_MAX_DEFAULT, SINKD_FRAME_MAX_DEFAULT + 1);
}

Test(reader, four_gib_length_prefix_is_refused)
{
    check_refused_at_header(0, 0xffffffffu);
}

Test(reader, refusal_is_sticky)
{
    static const uint8_t good[] = { 0, 0, 0, 1, 0x80 };
    static const uint8_t bad[] = { 0x7f, 0xff, 0xff, 0xff };
    sinkd_frame_reader r;
    const uint8_t *p;
    size_t n;

    sinkd_frame_reader_init(&r, 0);
    cr_assert_eq(sinkd_frame_reader_feed(&r, bad, sizeof bad), 0);
    cr_assert_eq(sinkd_frame_reader_next(&r, &p, &n), -EMSGSIZE);
    cr_assert_eq(r.error, -EMSGSIZE);
    cr_assert_eq(sinkd_frame_reader_feed(&r, good, sizeof good), -EMSGSIZE);
    cr_assert_eq(sinkd_frame_reader_next(&r, &p, &n), -EMSGSIZE);
    cr_assert_eq(sinkd_frame_reader_next(&r, &p, &n), -EMSGSIZE);
    /* free returns the reader to its init state, limit kept */
    sinkd_frame_reader_free(&r);
    cr_assert_eq(r.error, 0);
    cr_assert_null(r.buf);
    cr_assert_eq(r.max_frame, SINKD_FRAME_MAX_DEFAULT);
    cr_assert_eq(sinkd_frame_reader_feed(&r, good, sizeof good), 0);
    cr_assert_eq(sinkd_frame_reader_next(&r, &p, &n), 1);
    sinkd_frame_reader_free(&r);
}

/* Frames that arrived before an oversized header in the same read are still
 * handed out; then the refusal, and nothing after it. */
Test(reader, frames_before_refusal_are_delivered)
{
    static const uint8_t bytes[] = {
        0, 0, 0, 1, 0x80,             /* {} */
        0, 0, 0, 2, 0x81, 0xc0,       /* truncated map (frame is still whole) */
        0x01, 0x00, 0x00, 0x01,       /* 16 MiB + 1 */
        0, 0, 0, 1, 0x80,             /* never delivered */
    };
    sinkd_frame_reader r;
    const uint8_t *p;
    size_t n;

    sinkd_frame_reader_init(&r, 0);
    cr_assert_eq(sinkd_frame_reader_feed(&r, bytes, sizeof bytes), 0);
    cr_assert_eq(r.len - r.head, 15, "bytes after the refused header were kept");
    cr_assert_eq(sinkd_frame_reader_feed(&r, bytes, 1), -EMSGSIZE);
    cr_assert_eq(sinkd_frame_reader_next(&r, &p, &n), 1);
    cr_assert_eq(n, 1);
    cr_assert_eq(sinkd_frame_reader_next(&r, &p, &n), 1);
    cr_assert_eq(n, 2);
    cr_assert_eq(sinkd_frame_reader_next(&r, &p, &n), -EMSGSIZE);
    sinkd_frame_reader_free(&r);
}

/* A long-lived connection: memory follows the pending frame, not history. */
Test(reader, buffer_is_compacted_and_shrunk)
{
    sinkd_frame_reader r;
    uint8_t frame[104] = { 0, 0, 0, 100 };
    const uint8_t *p;
    size_t n, frames = 0;

    sinkd_frame_reader_init(&r, 0);
    for (int i = 0; i < 20000; i++) {
        for (size_t off = 0; off < sizeof frame; off += 13) {
            size_t piece = sizeof frame - off < 13 ? sizeof frame - off : 13;
            cr_assert_eq(sinkd_frame_reader_feed(&r, frame + off, piece), 0);
            while (sinkd_frame_reader_next(&r, &p, &n) == 1)
                frames++;
        }
    }
    cr_assert_eq(frames, 20000);
    cr_assert_leq(r.cap, 4096, "buffer grew to %zu for 104-byte frames", r.cap);

    size_t big = 1u << 20;
    uint8_t *f = calloc(1, big + 4);
    put_be32(f, (uint32_t)big);
    cr_assert_eq(sinkd_frame_reader_feed(&r, f, big + 4), 0);
    cr_assert_eq(sinkd_frame_reader_next(&r, &p, &n), 1);
    cr_assert_eq(n, big);
    cr_assert_geq(r.cap, big + 4);
    cr_assert_eq(sinkd_frame_reader_feed(&r, frame, sizeof frame), 0);
    cr_assert_leq(r.cap, 64 * 1024, "buffer kept %zu bytes after the large frame", r.cap);
    cr_assert_eq(sinkd_frame_reader_next(&r, &p, &n), 1);
    cr_assert_eq(n, 100);
    sinkd_frame_reader_free(&r);
    free(f);
}

Test(reader, init_clamps_the_limit)
{
    sinkd_frame_reader r = SINKD_FRAME_READER_INIT;
    cr_assert_eq(r.max_frame, SINKD_FRAME_MAX_DEFAULT);
    sinkd_frame_reader_init(&r, 0);
    cr_assert_eq(r.max_frame, SINKD_FRAME_MAX_DEFAULT);
    sinkd_frame_reader_init(&r, 10);
    cr_assert_eq(r.max_frame, SINKD_FRAME_MAX_MIN);
    sinkd_frame_reader_init(&r, (size_t)1 << 40);
    cr_assert_eq(r.max_frame, UINT32_MAX);
    sinkd_frame_reader_init(&r, 5000);
    cr_assert_eq(r.max_frame, 5000);
}

Test(reader, bad_arguments)
{
    sinkd_frame_reader r;
    const uint8_t *p;
    size_t n;
    sinkd_frame_reader_init(&r, 0);
    cr_assert_eq(sinkd_frame_reader_feed(NULL, "x", 1), -EINVAL);
    cr_assert_eq(sinkd_frame_reader_feed(&r, NULL, 1), -EINVAL);
    cr_assert_eq(sinkd_frame_reader_feed(&r, NULL, 0), 0);
    cr_assert_eq(sinkd_frame_reader_next(&r, NULL, &n), -EINVAL);
    cr_assert_eq(sinkd_frame_reader_next(&r, &p, NULL), -EINVAL);
    cr_assert_eq(sinkd_frame_reader_next(&r, &p, &n), 0);
    sinkd_frame_reader_free(&r);
    sinkd_frame_reader_free(NULL);
}
