/*
 * Cross-thread frame posting: the one way another thread (the engine, a
 * loader) hands output to the libuv loop. A mutex-protected queue plus a
 * uv_async_t: any thread calls sinkd_post_frame(); the loop thread wakes up
 * and hands each frame, in posting order, to the deliver callback, which
 * writes it to the connection with that id or drops it when the connection is
 * gone. Connection ids are never reused, so a late frame can never reach a
 * different client.
 */
#ifndef SINKD_POST_H
#define SINKD_POST_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Called on the loop thread for each posted frame. It owns @frame (free(3)). */
typedef void (*sinkd_post_deliver_fn)(void *ud, uint64_t conn_id, uint8_t *frame, size_t len);

typedef struct sinkd_post_item sinkd_post_item;

typedef struct sinkd_post {
    uv_async_t async;
    pthread_mutex_t mu;
    sinkd_post_item *head, *tail;  /* under mu */
    bool closed;                   /* under mu: posts are refused */
    sinkd_post_deliver_fn deliver;
    void *ud;
} sinkd_post;

/* Register @p on @loop (loop thread only). Returns 0 or a negative errno. */
int sinkd_post_init(sinkd_post *p, uv_loop_t *loop, sinkd_post_deliver_fn deliver, void *ud);

/* Thread-safe. Queue @frame (@len bytes, malloc'ed) for connection @conn_id,
 * or (@frame NULL, @len 0) a marker that reaches the deliver callback as
 * such, in its place in the order. On success the queue owns @frame.
 * Returns 0, -EINVAL, -ENOMEM or -ESHUTDOWN after sinkd_post_close; on
 * failure the caller still owns @frame. */
int sinkd_post_frame(sinkd_post *p, uint64_t conn_id, uint8_t *frame, size_t len);

/* Loop thread. Deliver everything queued so far without waiting for the
 * async wakeup (used at shutdown so posted replies still go out). */
void sinkd_post_drain(sinkd_post *p);

/* Loop thread. Refuse further posts, drop (free) what is still queued and
 * close the async handle; @p may be freed once the loop has run the close
 * callback (after uv_run returns). Other threads may still call
 * sinkd_post_frame until sinkd_post_free: they get -ESHUTDOWN. */
void sinkd_post_close(sinkd_post *p);

/* After the loop closed the handle and no thread posts any more: release the
 * mutex. */
void sinkd_post_free(sinkd_post *p);

#endif /* SINKD_POST_H */
