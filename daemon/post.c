#include "post.h"

#include <errno.h>
#include <stdlib.h>

struct sinkd_post_item {
    sinkd_post_item *next;
    uint64_t conn_id;
    uint8_t *frame;
    size_t len;
};

/* Take the whole list at once so that the lock is never held while frames
 * are delivered (delivery may post again, e.g. from a test callback). */
static sinkd_post_item *post__take(sinkd_post *p)
{
    sinkd_post_item *list;

    pthread_mutex_lock(&p->mu);
    list = p->head;
    p->head = p->tail = NULL;
    pthread_mutex_unlock(&p->mu);
    return list;
}

void sinkd_post_drain(sinkd_post *p)
{
    sinkd_post_item *it = post__take(p);

    while (it) {
        sinkd_post_item *next = it->next;
        p->deliver(p->ud, it->conn_id, it->frame, it->len);
        free(it);
        it = next;
    }
}

static void post__on_async(uv_async_t *h)
{
    sinkd_post_drain(h->data);
}

int sinkd_post_init(sinkd_post *p, uv_loop_t *loop, sinkd_post_deliver_fn deliver, void *ud)
{
    int rc;

    if (!p || !loop || !deliver)
        return -EINVAL;
    p->head = p->tail = NULL;
    p->closed = false;
    p->deliver = deliver;
    p->ud = ud;
    rc = pthread_mutex_init(&p->mu, NULL);
    if (rc)
        return -rc;
    rc = uv_async_init(loop, &p->async, post__on_async);
    if (rc < 0) {
        pthread_mutex_destroy(&p->mu);
        return rc;
    }
    p->async.data = p;
    return 0;
}

int sinkd_post_frame(sinkd_post *p, uint64_t conn_id, uint8_t *frame, size_t len)
{
    sinkd_post_item *it;

    if (!p || !frame != !len)
        return -EINVAL;
    it = malloc(sizeof *it);
    if (!it)
        return -ENOMEM;
    *it = (sinkd_post_item){ NULL, conn_id, frame, len };
    pthread_mutex_lock(&p->mu);
    if (p->closed) {
        pthread_mutex_unlock(&p->mu);
        free(it);
        return -ESHUTDOWN;
    }
    if (p->tail)
        p->tail->next = it;
    else
        p->head = it;
    p->tail = it;
    /* Inside the lock: once closed is set, the handle may be closing and
     * uv_async_send on it would race with uv_close. */
    uv_async_send(&p->async);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

void sinkd_post_close(sinkd_post *p)
{
    sinkd_post_item *it;

    pthread_mutex_lock(&p->mu);
    p->closed = true;
    pthread_mutex_unlock(&p->mu);
    it = post__take(p);
    while (it) {
        sinkd_post_item *next = it->next;
        free(it->frame);
        free(it);
        it = next;
    }
    uv_close((uv_handle_t *)&p->async, NULL);
}

void sinkd_post_free(sinkd_post *p)
{
    if (!p)
        return;
    pthread_mutex_destroy(&p->mu);
}
