/*
 * CPU backend internals: the backend state, the thread pool, per-thread
 * scratch, RoPE tables, KV row access and argument checks shared by the op
 * files (one file per op family). Nothing here is public.
 */
#ifndef SINKD_CPU_H
#define SINKD_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "half.h"

/* ---- thread pool (pool.c) ----------------------------------------------- */

/* A task: one index of a parallel loop, run on thread @tid (0 = caller). */
typedef void (*cpu__task_fn)(void *ctx, int64_t task, int tid);
typedef struct cpu__pool cpu__pool;

/* Start @n_threads - 1 workers (the caller is thread 0). -ENOMEM, -EAGAIN. */
int cpu__pool_init(cpu__pool **out, int n_threads);
void cpu__pool_free(cpu__pool *p);
/* Run fn(ctx, t, tid) for t in [0, n_tasks) on all threads; returns when all
 * are done. Tasks must not fail: ops validate everything before running. */
void cpu__pool_run(cpu__pool *p, int64_t n_tasks, cpu__task_fn fn, void *ctx);

/* ---- backend state (cpu.c) ---------------------------------------------- */

/* cos/sin of pos * inv_freq[i] for pos in [0, n_pos), computed in double and
 * stored as f32: [n_pos][head_dim / 2]. Keyed by (theta, scale, head_dim). */
typedef struct cpu__rope_table {
    float theta, scale;
    int32_t head_dim;
    int32_t n_pos;
    float *cos, *sin;
} cpu__rope_table;

typedef struct cpu__backend {
    sinkd_backend be;      /* first: the public handle */
    cpu__pool *pool;
    int n_threads;
    float **scratch;       /* [n_threads] per-thread buffers */
    size_t scratch_floats; /* capacity of each */
    cpu__rope_table rope;
} cpu__backend;

static inline cpu__backend *cpu__of(sinkd_backend *be) { return (cpu__backend *)be; }

/* Make every thread's scratch hold at least @floats floats (64-byte aligned).
 * Call before cpu__pool_run. -ENOMEM. */
int cpu__scratch_reserve(cpu__backend *cb, size_t floats);

/* ---- RoPE (rope.c) -------------------------------------------------------- */

/* A rope prepared for one call: rotate head_dim-wide rows at any position.
 * Positions in [0, n_pos) read the table, others are computed directly. */
typedef struct cpu__rope {
    int32_t head_dim;
    uint8_t style, mode;
    double theta, scale;
    const float *cos, *sin;
    int32_t n_pos;
} cpu__rope;

/* Check @rope's fields (theta > 0, scale > 0, style and mode known). */
int cpu__rope_check(const sinkd_rope *rope);
/* Prepare @out for @head_dim, growing the backend's table to cover
 * positions < @max_pos when it can (a failed growth only costs speed;
 * max_pos 0 uses the table as it is, if it matches). */
void cpu__rope_prepare(cpu__backend *cb, const sinkd_rope *rope, int32_t head_dim,
                       int64_t max_pos, cpu__rope *out);
/* Rotate one row x[head_dim] in place at position @pos. */
void cpu__rope_row(const cpu__rope *r, float *x, int64_t pos);
/* Free the table. */
void cpu__rope_free(cpu__rope_table *t);

/* ---- KV pool access (kv.c) ------------------------------------------------ */

static inline size_t cpu__kv_elem(uint8_t dt)
{
    return dt == SINKD_F32 ? 4 : 2;
}

static inline void cpu__row_load(float *dst, const void *src, uint8_t dt, int32_t n)
{
    if (dt == SINKD_F32) {
        const float *s = (const float *)src;
        for (int32_t i = 0; i < n; i++)
            dst[i] = s[i];
    } else if (dt == SINKD_F16) {
        const uint16_t *s = (const uint16_t *)src;
        for (int32_t i = 0; i < n; i++)
            dst[i] = sinkd_f16_to_f32(s[i]);
    } else {
        const uint16_t *s = (const uint16_t *)src;
        for (int32_t i = 0; i < n; i++)
            dst[i] = sinkd_bf16_to_f32(s[i]);
    }
}

static inline void cpu__row_store(void *dst, const float *src, uint8_t dt, int32_t n)
{
    if (dt == SINKD_F32) {
        float *d = (float *)dst;
        for (int32_t i = 0; i < n; i++)
            d[i] = src[i];
    } else if (dt == SINKD_F16) {
        uint16_t *d = (uint16_t *)dst;
        for (int32_t i = 0; i < n; i++)
            d[i] = sinkd_f32_to_f16(src[i]);
    } else {
        uint16_t *d = (uint16_t *)dst;
        for (int32_t i = 0; i < n; i++)
            d[i] = sinkd_f32_to_bf16(src[i]);
    }
}

/* Slot of token @t of lane @l (the lanes were checked by cpu__lanes_check). */
static inline int64_t cpu__slot(const sinkd_kv_pool *pool, const sinkd_lanes *ln,
                                int32_t l, int32_t t)
{
    int32_t pt = pool->page_tokens;
    int64_t page = ln->page_ids[ln->page_off[l] + t / pt];
    return page * pt + t % pt;
}

/* K (v = 0) or V (v = 1) row of the token at @slot. */
static inline void *cpu__kv_row(const sinkd_kv_pool *pool, int64_t slot, int32_t head_dim, int v)
{
    int32_t pt = pool->page_tokens;
    int64_t page = slot / pt;
    int64_t i = slot % pt;
    return (char *)pool->pages + (size_t)page * pool->page_bytes +
           ((size_t)v * pt + (size_t)i) * (size_t)head_dim * cpu__kv_elem(pool->dtype);
}

/* Check a pool and a lane batch against it for rows of @head_dim: dtype,
 * geometry, page_off non-decreasing, each lane's pages covering its length,
 * page ids in the pool. On success *@max_len is the longest lane. -EINVAL. */
int cpu__lanes_check(const sinkd_kv_pool *pool, const sinkd_lanes *ln,
                     int32_t head_dim, int32_t *max_len);

/* Recompute the key bounds of logical pages [p0, p1) of lane @l from its
 * stored keys rotated at their effective positions. @tmp: head_dim floats. */
void cpu__lane_bounds(const sinkd_kv_pool *pool, const sinkd_lanes *ln, int32_t l,
                      int32_t head_dim, const cpu__rope *r, int32_t p0, int32_t p1,
                      float *tmp);

/* ---- ops (one file per family) ------------------------------------------ */

int cpu__kv_append(sinkd_backend *be, const sinkd_append_args *a);
int cpu__kv_compact(sinkd_backend *be, const sinkd_compact_args *a);
int cpu__attn_decode(sinkd_backend *be, const sinkd_decode_args *a);
int cpu__attn_prefill(sinkd_backend *be, const sinkd_prefill_args *a);
int cpu__topk_pages(sinkd_backend *be, const sinkd_topk_pages_args *a);
int cpu__matmul(sinkd_backend *be, float *y, const float *x, int32_t m,
                const sinkd_weight *w, const float *bias);
int cpu__rmsnorm(sinkd_backend *be, float *y, const float *x, const float *g,
                 int32_t m, int32_t d, float eps);
int cpu__rope_op(sinkd_backend *be, float *x, const int32_t *pos, int32_t m,
                 int32_t n_heads, int32_t head_dim, const sinkd_rope *rope);
int cpu__swiglu(sinkd_backend *be, float *gate, const float *up, int32_t m, int32_t d);
int cpu__add(sinkd_backend *be, float *y, const float *x, int64_t n);
int cpu__embed(sinkd_backend *be, float *out, const sinkd_weight *table,
               const int32_t *ids, int32_t m);
int cpu__argmax(sinkd_backend *be, int32_t *ids, const float *x, int32_t m, int32_t n);
int cpu__stat(sinkd_backend *be, const sinkd_stat_args *a);
int cpu__stat_rules(sinkd_backend *be, const sinkd_stat_args *a, int32_t n);
int cpu__topk_tokens(sinkd_backend *be, const sinkd_topk_tokens_args *a);

/* Weight row @r of @w converted to f32 in dst[w->cols] (matmul.c). */
void cpu__weight_row(float *dst, const sinkd_weight *w, int64_t r);
/* Check a weight's dtype and shape (Q8_0: cols multiple of 32). -EINVAL. */
int cpu__weight_check(const sinkd_weight *w);

#endif /* SINKD_CPU_H */
