/*
 * The KV store: the page pool of one backend, its host free list, page
 * accounting per uid, and the device scratch buffers for lane arrays.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kv_internal.h"

static void pool_free(sinkd_kv *kv)
{
    const sinkd_ops *ops = kv->be->ops;
    ops->free(kv->be, kv->pool.pages);
    ops->free(kv->be, kv->pool.pos);
    ops->free(kv->be, kv->pool.score);
    ops->free(kv->be, kv->pool.kmin);
    ops->free(kv->be, kv->pool.kmax);
    memset(&kv->pool, 0, sizeof kv->pool);
}

static int pool_alloc(sinkd_kv *kv, int32_t n_pages)
{
    sinkd_backend *be = kv->be;
    const sinkd_kv_config *c = &kv->cfg;
    size_t slots = (size_t)n_pages * (size_t)c->page_tokens;
    size_t rows = (size_t)n_pages * (size_t)c->head_dim_max;
    size_t page_bytes = sinkd_dtype_bytes((sinkd_dtype)c->dtype,
                                          2 * (size_t)c->page_tokens * (size_t)c->head_dim_max);
    kv->pool = (sinkd_kv_pool){
        .page_bytes = page_bytes,
        .n_pages = n_pages,
        .page_tokens = c->page_tokens,
        .head_dim_max = c->head_dim_max,
        .dtype = c->dtype,
    };
    int rc = be->ops->alloc(be, &kv->pool.pages, page_bytes * (size_t)n_pages);
    if (!rc)
        rc = be->ops->alloc(be, (void **)&kv->pool.pos, slots * sizeof(int32_t));
    if (!rc)
        rc = be->ops->alloc(be, (void **)&kv->pool.score, slots * sizeof(float));
    if (!rc)
        rc = be->ops->alloc(be, (void **)&kv->pool.kmin, rows * sizeof(float));
    if (!rc)
        rc = be->ops->alloc(be, (void **)&kv->pool.kmax, rows * sizeof(float));
    if (rc) {
        pool_free(kv);
        return rc == -ENOMEM ? -ENOMEM : rc;
    }
    return 0;
}

static int config_check(const sinkd_kv_config *c)
{
    if (c->dtype != SINKD_F32 && c->dtype != SINKD_F16 && c->dtype != SINKD_BF16)
        return -EINVAL;
    if (c->page_tokens < 1 || c->page_tokens > 4096)
        return -EINVAL;
    if (c->head_dim_max < 16 || c->head_dim_max % 16 || c->head_dim_max > 4096)
        return -EINVAL;
    if (c->pool_bytes == 0 && !(c->pool_fraction > 0 && c->pool_fraction <= 1))
        return -EINVAL;
    if (c->session_pages < 0 || c->uid_pages < 0)
        return -EINVAL;
    return 0;
}

int sinkd_kv_open(sinkd_backend *be, const sinkd_kv_config *cfg, sinkd_kv **out)
{
    if (!be || !cfg || !out)
        return -EINVAL;
    int rc = config_check(cfg);
    if (rc)
        return rc;
    uint64_t page_cost = sinkd_dtype_bytes((sinkd_dtype)cfg->dtype,
                                           2 * (size_t)cfg->page_tokens * (size_t)cfg->head_dim_max) +
                         (uint64_t)cfg->page_tokens * (sizeof(int32_t) + sizeof(float)) +
                         2 * (uint64_t)cfg->head_dim_max * sizeof(float);
    uint64_t bytes = cfg->pool_bytes;
    if (bytes == 0) {
        sinkd_backend_info info;
        rc = be->ops->info(be, &info);
        if (rc)
            return rc;
        bytes = (uint64_t)((double)info.mem_free * cfg->pool_fraction);
        /* On the CPU the "device" is the machine's RAM, shared with every
         * other process: a fraction of it is not ours to take by default. */
        if (strcmp(info.name, "cpu") == 0 && bytes > SINKD_KV_CPU_POOL_DEFAULT_MAX)
            bytes = SINKD_KV_CPU_POOL_DEFAULT_MAX;
    }
    /* slots (page * page_tokens) must stay int32 for the kernels */
    uint64_t n_pages = bytes / page_cost;
    if (n_pages > (uint64_t)INT32_MAX / (uint64_t)cfg->page_tokens)
        n_pages = (uint64_t)INT32_MAX / (uint64_t)cfg->page_tokens;
    if (n_pages < 1)
        return -EINVAL;

    sinkd_kv *kv = calloc(1, sizeof *kv);
    if (!kv)
        return -ENOMEM;
    kv->be = be;
    kv->cfg = *cfg;
    kv->page_cost = page_cost;
    kv->free_pages = malloc(n_pages * sizeof(int32_t));
    rc = kv->free_pages ? pool_alloc(kv, (int32_t)n_pages) : -ENOMEM;
    if (rc) {
        free(kv->free_pages);
        free(kv);
        return rc;
    }
    /* pop order 0, 1, 2, ...: low pages first */
    for (int64_t i = 0; i < (int64_t)n_pages; i++)
        kv->free_pages[i] = (int32_t)(n_pages - 1 - i);
    kv->n_free = (int64_t)n_pages;
    *out = kv;
    return 0;
}

void sinkd_kv_close(sinkd_kv *kv)
{
    if (!kv)
        return;
    while (kv->seqs)
        sinkd_kv_seq_close(kv->seqs);
    kv->be->ops->free(kv->be, kv->lanes_scr.dev);
    kv->be->ops->free(kv->be, kv->op_scr.dev);
    free(kv->lanes_scr.host);
    free(kv->op_scr.host);
    pool_free(kv);
    free(kv->free_pages);
    free(kv->uids);
    free(kv);
}

const sinkd_kv_pool *sinkd_kv_pool_get(const sinkd_kv *kv)
{
    return &kv->pool;
}

void sinkd_kv_stats_get(const sinkd_kv *kv, sinkd_kv_stats *out)
{
    int64_t used = kv->pool.n_pages - kv->n_free;
    *out = (sinkd_kv_stats){
        .pages_total = kv->pool.n_pages,
        .pages_used = used,
        .page_bytes = kv->pool.page_bytes,
        .page_cost = kv->page_cost,
        .bytes_total = (uint64_t)kv->pool.n_pages * kv->page_cost,
        .bytes_used = (uint64_t)used * kv->page_cost,
        .page_tokens = kv->pool.page_tokens,
        .n_seqs = kv->n_seqs,
    };
}

int64_t sinkd_kv_uid_pages(const sinkd_kv *kv, uint32_t uid)
{
    for (int32_t i = 0; i < kv->n_uids; i++)
        if (kv->uids[i].uid == uid)
            return kv->uids[i].pages;
    return 0;
}

sinkd_kv_quota sinkd_kv_last_quota(const sinkd_kv *kv)
{
    return kv->last_quota;
}

kv__uid *kv__uid_get(sinkd_kv *kv, uint32_t uid, int create)
{
    for (int32_t i = 0; i < kv->n_uids; i++)
        if (kv->uids[i].uid == uid)
            return &kv->uids[i];
    if (!create)
        return NULL;
    if (kv->n_uids == kv->cap_uids) {
        int32_t cap = kv->cap_uids ? kv->cap_uids * 2 : 8;
        kv__uid *u = realloc(kv->uids, (size_t)cap * sizeof *u);
        if (!u)
            return NULL;
        kv->uids = u;
        kv->cap_uids = cap;
    }
    kv->uids[kv->n_uids] = (kv__uid){.uid = uid};
    return &kv->uids[kv->n_uids++];
}

void kv__uid_put(sinkd_kv *kv, kv__uid *u)
{
    if (u->n_seqs > 0)
        return;
    *u = kv->uids[--kv->n_uids];
}

int kv__scratch_fit(sinkd_kv *kv, kv__scratch *s, size_t n)
{
    if (n <= s->cap)
        return 0;
    size_t cap = n + n / 2 + 256;
    if (cap > SIZE_MAX / sizeof(int32_t))
        return -ENOMEM;
    int32_t *host = malloc(cap * sizeof(int32_t));
    void *dev = NULL;
    int rc = host ? kv->be->ops->alloc(kv->be, &dev, cap * sizeof(int32_t)) : -ENOMEM;
    if (rc) {
        free(host);
        return rc;
    }
    free(s->host);
    kv->be->ops->free(kv->be, s->dev);
    s->host = host;
    s->dev = dev;
    s->cap = cap;
    return 0;
}

int kv__scratch_upload(sinkd_kv *kv, kv__scratch *s, size_t n)
{
    return kv->be->ops->h2d(kv->be, s->dev, s->host, n * sizeof(int32_t));
}
