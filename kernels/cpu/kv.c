/*
 * KV pool ops on the CPU: lane checks, Quest key bounds, append, compaction.
 *
 * kv_append   lanes [n_lanes], n tokens each: writes 2 * n_lanes * n * head_dim
 *             K/V elements plus pos/score, then re-derives the bounds of the
 *             touched pages (reads <= (n + page_tokens) rows per lane).
 * kv_compact  per lane: moves each kept token whose index changes (K, V, pos,
 *             score), then recomputes the bounds of every page still in use.
 * Both run one task per lane.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "cpu.h"

int cpu__lanes_check(const sinkd_kv_pool *pool, const sinkd_lanes *ln,
                     int32_t head_dim, int32_t *max_len)
{
    if (!pool || !ln || !pool->pages || !pool->pos || !pool->score || !pool->kmin || !pool->kmax)
        return -EINVAL;
    if (pool->dtype != SINKD_F32 && pool->dtype != SINKD_F16 && pool->dtype != SINKD_BF16)
        return -EINVAL;
    if (pool->n_pages < 0 || pool->page_tokens < 1 || head_dim < 16 || head_dim % 16 ||
        head_dim > pool->head_dim_max)
        return -EINVAL;
    if ((uint64_t)2 * (uint64_t)pool->page_tokens * (uint64_t)head_dim *
            cpu__kv_elem(pool->dtype) > pool->page_bytes)
        return -EINVAL;
    if (ln->n_lanes < 0 || (ln->n_lanes > 0 && (!ln->len || !ln->page_off || !ln->page_ids)))
        return -EINVAL;
    int32_t pt = pool->page_tokens, longest = 0;
    for (int32_t l = 0; l < ln->n_lanes; l++) {
        int32_t len = ln->len[l];
        int64_t off = ln->page_off[l], end = ln->page_off[l + 1];
        if (len < 0 || off < 0 || end < off || end - off < ((int64_t)len + pt - 1) / pt)
            return -EINVAL;
        for (int64_t j = off; j < end; j++)
            if (ln->page_ids[j] < 0 || ln->page_ids[j] >= pool->n_pages)
                return -EINVAL;
        if (len > longest)
            longest = len;
    }
    *max_len = longest;
    return 0;
}

/* Effective position of token @t at @slot: its lane index or stored position. */
static inline int64_t key_pos(const sinkd_kv_pool *pool, const cpu__rope *r, int32_t t, int64_t slot)
{
    return r->mode == SINKD_ROPE_CACHE ? t : pool->pos[slot];
}

void cpu__lane_bounds(const sinkd_kv_pool *pool, const sinkd_lanes *ln, int32_t l,
                      int32_t head_dim, const cpu__rope *r, int32_t p0, int32_t p1,
                      float *tmp)
{
    int32_t pt = pool->page_tokens, len = ln->len[l];
    for (int32_t p = p0; p < p1; p++) {
        int64_t page = ln->page_ids[ln->page_off[l] + p];
        float *mn = pool->kmin + page * pool->head_dim_max;
        float *mx = pool->kmax + page * pool->head_dim_max;
        for (int32_t i = 0; i < head_dim; i++) {
            mn[i] = INFINITY;
            mx[i] = -INFINITY;
        }
        int32_t t1 = (p + 1) * pt < len ? (p + 1) * pt : len;
        for (int32_t t = p * pt; t < t1; t++) {
            int64_t slot = page * pt + t % pt;
            cpu__row_load(tmp, cpu__kv_row(pool, slot, head_dim, 0), pool->dtype, head_dim);
            cpu__rope_row(r, tmp, key_pos(pool, r, t, slot));
            for (int32_t i = 0; i < head_dim; i++) {
                mn[i] = tmp[i] < mn[i] ? tmp[i] : mn[i];
                mx[i] = tmp[i] > mx[i] ? tmp[i] : mx[i];
            }
        }
    }
}

/* ---- append ---------------------------------------------------------------- */

typedef struct append_ctx {
    const sinkd_append_args *a;
    cpu__rope rope;
    float **scratch;
} append_ctx;

static void append_lane(void *vctx, int64_t task, int tid)
{
    const append_ctx *c = vctx;
    const sinkd_append_args *a = c->a;
    const sinkd_kv_pool *pool = a->pool;
    int32_t l = (int32_t)task, n = a->n, hd = a->head_dim, nl = a->lanes.n_lanes;
    int32_t len = a->lanes.len[l], pt = pool->page_tokens;

    for (int32_t i = 0; i < n; i++) {
        int64_t slot = cpu__slot(pool, &a->lanes, l, len - n + i);
        size_t row = a->kv_token_major ? (size_t)i * nl + l : (size_t)l * n + i;
        cpu__row_store(cpu__kv_row(pool, slot, hd, 0), a->k + row * hd, pool->dtype, hd);
        cpu__row_store(cpu__kv_row(pool, slot, hd, 1), a->v + row * hd, pool->dtype, hd);
        pool->pos[slot] = a->pos[(size_t)l * n + i];
        pool->score[slot] = 0.0f;
    }
    /* whole touched pages: the bound of a partly filled page is re-derived
     * from its stored (dtype-rounded) keys, exactly what attention reads */
    cpu__lane_bounds(pool, &a->lanes, l, hd, &c->rope, (len - n) / pt, (len - 1) / pt + 1,
                     c->scratch[tid]);
}

int cpu__kv_append(sinkd_backend *be, const sinkd_append_args *a)
{
    int32_t max_len;
    if (!be || !a || cpu__lanes_check(a->pool, &a->lanes, a->head_dim, &max_len) ||
        cpu__rope_check(&a->rope))
        return -EINVAL;
    if (a->n < 1 || !a->k || !a->v || !a->pos)
        return -EINVAL;
    for (int32_t l = 0; l < a->lanes.n_lanes; l++)
        if (a->lanes.len[l] < a->n)
            return -EINVAL;
    cpu__backend *cb = cpu__of(be);
    int rc = cpu__scratch_reserve(cb, (size_t)a->head_dim);
    if (rc)
        return rc;
    append_ctx c = {.a = a, .scratch = cb->scratch};
    cpu__rope_prepare(cb, &a->rope, a->head_dim, max_len, &c.rope);
    cpu__pool_run(cb->pool, a->lanes.n_lanes, append_lane, &c);
    return 0;
}

/* ---- compaction -------------------------------------------------------------- */

typedef struct compact_ctx {
    const sinkd_compact_args *a;
    cpu__rope rope;
    float **scratch;
} compact_ctx;

static void compact_lane(void *vctx, int64_t task, int tid)
{
    const compact_ctx *c = vctx;
    const sinkd_compact_args *a = c->a;
    const sinkd_kv_pool *pool = a->pool;
    int32_t l = (int32_t)task, hd = a->head_dim, pt = pool->page_tokens;
    const int32_t *keep = a->keep + a->keep_off[l];
    int32_t nkeep = a->keep_off[l + 1] - a->keep_off[l];
    size_t row_bytes = (size_t)hd * cpu__kv_elem(pool->dtype);

    /* keep[] is strictly ascending, so keep[j] >= j: moving forward in place
     * never overwrites a token that is still to be read */
    for (int32_t j = 0; j < nkeep; j++) {
        if (keep[j] == j)
            continue;
        int64_t src = cpu__slot(pool, &a->lanes, l, keep[j]);
        int64_t dst = cpu__slot(pool, &a->lanes, l, j);
        memcpy(cpu__kv_row(pool, dst, hd, 0), cpu__kv_row(pool, src, hd, 0), row_bytes);
        memcpy(cpu__kv_row(pool, dst, hd, 1), cpu__kv_row(pool, src, hd, 1), row_bytes);
        pool->pos[dst] = pool->pos[src];
        pool->score[dst] = pool->score[src];
    }
    /* bounds over the kept tokens only: a lane view shortened to nkeep */
    int32_t len = nkeep;
    int32_t off[2] = {0, (nkeep + pt - 1) / pt};
    sinkd_lanes one = {
        .n_lanes = 1, .len = &len, .page_off = off,
        .page_ids = a->lanes.page_ids + a->lanes.page_off[l],
    };
    cpu__lane_bounds(pool, &one, 0, hd, &c->rope, 0, off[1], c->scratch[tid]);
}

int cpu__kv_compact(sinkd_backend *be, const sinkd_compact_args *a)
{
    int32_t max_len;
    if (!be || !a || cpu__lanes_check(a->pool, &a->lanes, a->head_dim, &max_len) ||
        cpu__rope_check(&a->rope))
        return -EINVAL;
    if (a->lanes.n_lanes > 0 && (!a->keep_off || a->keep_off[0] < 0))
        return -EINVAL;
    for (int32_t l = 0; l < a->lanes.n_lanes; l++) {
        int32_t k0 = a->keep_off[l], k1 = a->keep_off[l + 1];
        if (k1 < k0 || (k1 > k0 && !a->keep))
            return -EINVAL;
        for (int32_t j = k0; j < k1; j++)
            if (a->keep[j] < (j == k0 ? 0 : a->keep[j - 1] + 1) || a->keep[j] >= a->lanes.len[l])
                return -EINVAL;
    }
    cpu__backend *cb = cpu__of(be);
    int rc = cpu__scratch_reserve(cb, (size_t)a->head_dim);
    if (rc)
        return rc;
    compact_ctx c = {.a = a, .scratch = cb->scratch};
    cpu__rope_prepare(cb, &a->rope, a->head_dim, max_len, &c.rope);
    cpu__pool_run(cb->pool, a->lanes.n_lanes, compact_lane, &c);
    return 0;
}
