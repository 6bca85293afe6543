/*
 * KV store internals shared by store.c (pool, free list, accounting,
 * scratch) and seq.c (sequences, append, lanes, compaction).
 */
#ifndef SINKD_KV_INTERNAL_H
#define SINKD_KV_INTERNAL_H

#include "kv.h"

/* A device buffer with its host staging twin, grown on demand. */
typedef struct kv__scratch {
    void *dev;
    int32_t *host;
    size_t cap;             /* int32 elements in each */
} kv__scratch;

typedef struct kv__uid {
    uint32_t uid;
    int32_t n_seqs;
    int64_t pages;
    int64_t pending;            /* pages a batch being checked would add */
} kv__uid;

typedef struct kv__lane {
    int32_t len;
    int32_t n_pages;
    int32_t cap;            /* entries allocated in pages */
    int32_t *pages;         /* [n_pages] logical -> physical */
} kv__lane;

struct sinkd_kv_seq {
    sinkd_kv *kv;
    sinkd_kv_seq *prev, *next;  /* the store's list of open sequences */
    uint32_t uid;
    int32_t n_layers, n_kv_heads, head_dim;
    sinkd_rope rope;
    int64_t max_pages;          /* < 0: no budget */
    int64_t pages;
    uint64_t stamp;             /* batch duplicate check */
    kv__lane *lanes;            /* [n_layers * n_kv_heads] */
};

struct sinkd_kv {
    sinkd_backend *be;
    sinkd_kv_config cfg;
    sinkd_kv_pool pool;
    uint64_t page_cost;
    int32_t *free_pages;        /* stack of free physical pages */
    int64_t n_free;
    kv__uid *uids;
    int32_t n_uids, cap_uids;
    sinkd_kv_seq *seqs;
    int32_t n_seqs;
    uint64_t stamp;             /* last batch stamp handed out */
    kv__scratch lanes_scr;      /* sinkd_kv_lanes_* results */
    kv__scratch op_scr;         /* arrays of the store's own append/compact */
    sinkd_kv_quota last_quota;  /* the budget of the last -EDQUOT */
};

/* Make @s hold @n int32 on both sides. -ENOMEM (old buffers kept). */
int kv__scratch_fit(sinkd_kv *kv, kv__scratch *s, size_t n);
/* Upload the first @n int32 of s->host to s->dev. */
int kv__scratch_upload(sinkd_kv *kv, kv__scratch *s, size_t n);

/* The uid's accounting entry, created (n_seqs 0) if @create. NULL: absent or
 * out of memory. */
kv__uid *kv__uid_get(sinkd_kv *kv, uint32_t uid, int create);
/* Drop the entry of a uid without sequences. */
void kv__uid_put(sinkd_kv *kv, kv__uid *u);

/* Take one free page / return one (the caller keeps the accounting). */
static inline int32_t kv__page_take(sinkd_kv *kv) { return kv->free_pages[--kv->n_free]; }
static inline void kv__page_give(sinkd_kv *kv, int32_t page) { kv->free_pages[kv->n_free++] = page; }

#endif /* SINKD_KV_INTERNAL_H */
