/*
 * The cross-thread post queue: frames posted from several threads reach the
 * loop thread complete, each thread's frames in its posting order, and
 * nothing is lost or leaked across close.
 */
#include "post.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4
#define PER_THREAD 2000

typedef struct delivered {
    uv_loop_t *loop;
    sinkd_post *post;
    unsigned count[THREADS];
    unsigned next_seq[THREADS];
    unsigned bad;
    unsigned total;
} delivered;

/* Frame = [thread][seq as 4 bytes][thread repeated to fill @len]. */
static uint8_t *make_frame(unsigned thread, unsigned seq, size_t *len)
{
    size_t n = 5 + seq % 7;
    uint8_t *f = malloc(n);

    cr_assert_not_null(f);
    f[0] = (uint8_t)thread;
    memcpy(f + 1, &seq, 4);
    memset(f + 5, (int)thread, n - 5);
    *len = n;
    return f;
}

static void on_deliver(void *ud, uint64_t conn_id, uint8_t *frame, size_t len)
{
    delivered *d = ud;
    unsigned t = frame[0], seq;

    memcpy(&seq, frame + 1, 4);
    if (t >= THREADS || conn_id != 100 + t || len != 5 + seq % 7 || seq != d->next_seq[t])
        d->bad++;
    for (size_t i = 5; i < len; i++)
        if (frame[i] != t)
            d->bad++;
    if (t < THREADS) {
        d->count[t]++;
        d->next_seq[t] = seq + 1;
    }
    free(frame);
    if (++d->total == THREADS * PER_THREAD)
        sinkd_post_close(d->post);
}

typedef struct producer {
    sinkd_post *post;
    unsigned thread;
    int failures;
} producer;

static void *produce(void *arg)
{
    producer *p = arg;

    for (unsigned seq = 0; seq < PER_THREAD; seq++) {
        size_t len;
        uint8_t *f = make_frame(p->thread, seq, &len);
        if (sinkd_post_frame(p->post, 100 + p->thread, f, len) != 0) {
            free(f);
            p->failures++;
        }
    }
    return NULL;
}

Test(post, frames_from_threads_arrive_whole_and_in_order)
{
    uv_loop_t loop;
    sinkd_post post;
    delivered d = { 0 };
    producer prod[THREADS];
    pthread_t th[THREADS];

    cr_assert_eq(uv_loop_init(&loop), 0);
    d.loop = &loop;
    d.post = &post;
    cr_assert_eq(sinkd_post_init(&post, &loop, on_deliver, &d), 0);
    for (unsigned i = 0; i < THREADS; i++) {
        prod[i] = (producer){ &post, i, 0 };
        cr_assert_eq(pthread_create(&th[i], NULL, produce, &prod[i]), 0);
    }
    /* Runs until on_deliver has seen every frame and closed the handle. */
    cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    for (unsigned i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        cr_assert_eq(prod[i].failures, 0);
        cr_assert_eq(d.count[i], PER_THREAD, "thread %u: %u frames", i, d.count[i]);
    }
    cr_assert_eq(d.bad, 0);
    /* Closed: later posts are refused and the caller keeps the frame. */
    {
        size_t len;
        uint8_t *f = make_frame(0, 0, &len);
        cr_assert_eq(sinkd_post_frame(&post, 1, f, len), -ESHUTDOWN);
        free(f);
    }
    sinkd_post_free(&post);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

static void count_deliver(void *ud, uint64_t conn_id, uint8_t *frame, size_t len)
{
    (void)conn_id;
    (void)len;
    (*(unsigned *)ud)++;
    free(frame);
}

Test(post, drain_delivers_without_the_loop_and_close_frees_the_rest)
{
    uv_loop_t loop;
    sinkd_post post;
    unsigned got = 0;
    size_t len[3];
    uint8_t *f[3];

    for (unsigned i = 0; i < 3; i++)
        f[i] = make_frame(0, i, &len[i]);
    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(sinkd_post_init(&post, &loop, count_deliver, &got), 0);
    cr_assert_eq(sinkd_post_frame(&post, 1, f[0], len[0]), 0);
    cr_assert_eq(sinkd_post_frame(&post, 2, f[1], len[1]), 0);
    sinkd_post_drain(&post);
    cr_assert_eq(got, 2);
    /* Queued but never delivered: close frees it (the leak checker sees). */
    cr_assert_eq(sinkd_post_frame(&post, 3, f[2], len[2]), 0);
    sinkd_post_close(&post);
    cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    cr_assert_eq(got, 2);
    cr_assert_eq(sinkd_post_frame(&post, 1, NULL, 1), -EINVAL);
    sinkd_post_free(&post);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

/* Records what reached deliver: conn ids, 0 standing for a marker. */
struct order_log {
    uint64_t ids[4];
    unsigned n;
};

static void order_deliver(void *ud, uint64_t conn_id, uint8_t *frame, size_t len)
{
    struct order_log *o = ud;

    cr_assert_eq(!frame, !len);
    if (o->n < 4)
        o->ids[o->n++] = frame ? conn_id : 0;
    free(frame);
}

/* A NULL frame of length 0 is a marker, delivered as such in its place
 * among the frames (a connection's finish after its answers); a NULL frame
 * with a length, or a frame without one, is refused. */
Test(post, a_marker_keeps_its_place)
{
    uv_loop_t loop;
    sinkd_post post;
    struct order_log o = { .n = 0 };
    size_t len[2];
    uint8_t *f[2];

    for (unsigned i = 0; i < 2; i++)
        f[i] = make_frame(0, i, &len[i]);
    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(sinkd_post_init(&post, &loop, order_deliver, &o), 0);
    cr_assert_eq(sinkd_post_frame(&post, 5, f[0], len[0]), 0);
    cr_assert_eq(sinkd_post_frame(&post, 5, NULL, 0), 0);
    cr_assert_eq(sinkd_post_frame(&post, 6, f[1], len[1]), 0);
    cr_assert_eq(sinkd_post_frame(&post, 5, f[1], 0), -EINVAL);
    sinkd_post_drain(&post);
    cr_assert_eq(o.n, 3);
    cr_expect(o.ids[0] == 5 && o.ids[1] == 0 && o.ids[2] == 6, "%llu %llu %llu",
              (unsigned long long)o.ids[0], (unsigned long long)o.ids[1],
              (unsigned long long)o.ids[2]);
    sinkd_post_close(&post);
    cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    sinkd_post_free(&post);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

