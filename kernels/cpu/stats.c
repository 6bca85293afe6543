/*
 * Policy statistics and token selection on the CPU (kernels/backend.h:
 * sinkd_stat_args, sinkd_topk_tokens_args). One task per lane.
 *
 * stat         ZERO/STASH/RESTORE/DECAY touch 4-8 bytes per token;
 *              KEY_NORM reads n * head_dim key elements per lane;
 *              QUANTILE selects one rank of the lane's probabilities
 *              (quickselect on order-preserving integer keys: O(len), and
 *              the same threshold bit for bit as the CUDA radix select);
 *              GUMBEL takes a log and a power per token, in double
 *              (stat_gumbel says why no more).
 *              With row_len the two rules run on each lane's first
 *              row_len[l] tokens, p from prev and the statistic from score.
 * topk_tokens  selects the k-th largest score the same way, then walks the
 *              lane once in index order: O(len) per lane.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "cpu.h"

/* Order-preserving key of a float: larger float, larger key; NaN lowest. */
static inline uint32_t stat_key(float f)
{
    uint32_t u;

    if (isnan(f))
        return 0;
    memcpy(&u, &f, sizeof u);
    return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

/* The element of rank @r (0 = smallest) of @k[0..n); reorders @k. */
static uint32_t stat_select(uint32_t *k, int32_t n, int32_t r)
{
    int32_t lo = 0, hi = n - 1;

    while (lo < hi) {
        uint32_t pivot = k[lo + (hi - lo) / 2];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (k[i] < pivot)
                i++;
            while (k[j] > pivot)
                j--;
            if (i <= j) {
                uint32_t t = k[i];
                k[i++] = k[j];
                k[j--] = t;
            }
        }
        if (r <= j)
            hi = j;
        else if (r >= i)
            lo = i;
        else
            return k[r];
    }
    return k[r];
}

typedef struct stat_ctx {
    const sinkd_stat_args *a;
    float **scratch;
} stat_ctx;

static void stat_key_norm(const sinkd_stat_args *a, int32_t l, float *row)
{
    const sinkd_kv_pool *pool = a->pool;
    int32_t len = a->lanes.len[l], hd = a->head_dim;
    int32_t t0 = a->n < len ? len - a->n : 0;

    for (int32_t t = t0; t < len; t++) {
        int64_t slot = cpu__slot(pool, &a->lanes, l, t);
        double sq = 0;
        cpu__row_load(row, cpu__kv_row(pool, slot, hd, 0), pool->dtype, hd);
        for (int32_t d = 0; d < hd; d++)
            sq += (double)row[d] * row[d];
        pool->score[slot] = (float)-sqrt(sq);
    }
}

/* The rules read p from @p and the old statistic from @old over the first
 * @n tokens of lane l and write score (a deferred row swaps the two: see
 * stat_lane). */
static void stat_quantile(const sinkd_stat_args *a, int32_t l, int32_t n, const float *p,
                          const float *old, uint32_t *keys)
{
    const sinkd_kv_pool *pool = a->pool;

    for (int32_t t = 0; t < n; t++)
        keys[t] = stat_key(p[cpu__slot(pool, &a->lanes, l, t)]);
    uint32_t thr = stat_select(keys, n, (int32_t)floor((double)a->quantile * (n - 1)));
    for (int32_t t = 0; t < n; t++) {
        int64_t slot = cpu__slot(pool, &a->lanes, l, t);
        float hit = stat_key(p[slot]) > thr ? 1.0f : 0.0f;
        pool->score[slot] = a->decay * old[slot] + hit;
    }
}

/* The softmax of z = (log p + g) / T with g = -log E, E = -log u (an
 * exponential variate): exp(z) = (p / E)^(1/T), so each token needs E's
 * log and a power, taken of its ratio r = p / E to the lane's largest so
 * that it cannot overflow (at T = 1 a division). @r: the lane's ratios (0
 * for tokens without p > 0). */
static void stat_gumbel(const sinkd_stat_args *a, int32_t l, int32_t n, const float *p,
                        const float *old, float *r)
{
    const sinkd_kv_pool *pool = a->pool;
    const double inv_t = 1.0 / a->temperature;
    double mx = 0, sum = 0;

    for (int32_t t = 0; t < n; t++) {
        float pk = p[cpu__slot(pool, &a->lanes, l, t)];
        r[t] = pk > 0 ? (float)((double)pk / -log(sinkd_stat_uniform(a->seed, l, t))) : 0.0f;
        mx = r[t] > mx ? r[t] : mx;
    }
    for (int32_t t = 0; mx > 0 && t < n; t++)
        sum += pow(r[t] / mx, inv_t);
    /* a lane without p > 0 adds nothing (sum 0) */
    for (int32_t t = 0; t < n; t++) {
        int64_t slot = cpu__slot(pool, &a->lanes, l, t);
        pool->score[slot] = (float)(old[slot] + (sum > 0 ? pow(r[t] / mx, inv_t) / sum : 0.0));
    }
}

static void stat_lane(void *vctx, int64_t task, int tid)
{
    const stat_ctx *c = vctx;
    const sinkd_stat_args *a = c->a;
    const sinkd_kv_pool *pool = a->pool;
    int32_t l = (int32_t)task, len = a->lanes.len[l];

    switch (a->op) {
    case SINKD_STAT_OP_KEY_NORM:
        stat_key_norm(a, l, c->scratch[tid]);
        return;
    case SINKD_STAT_OP_QUANTILE:
    case SINKD_STAT_OP_GUMBEL: {
        const float *p = pool->score, *old = a->prev;
        int32_t n = len;
        if (a->row_len) {
            /* a deferred row: p was written to prev, score kept the statistic */
            p = a->prev;
            old = pool->score;
            n = a->row_len[l] < len ? a->row_len[l] : len;
        }
        if (n <= 0)
            return;
        if (a->op == SINKD_STAT_OP_QUANTILE)
            stat_quantile(a, l, n, p, old, (uint32_t *)c->scratch[tid]);
        else
            stat_gumbel(a, l, n, p, old, c->scratch[tid]);
        return;
    }
    default:
        break;
    }
    for (int32_t t = 0; t < len; t++) {
        int64_t slot = cpu__slot(pool, &a->lanes, l, t);
        switch (a->op) {
        case SINKD_STAT_OP_ZERO:
            pool->score[slot] = 0;
            break;
        case SINKD_STAT_OP_STASH:
            a->prev[slot] = pool->score[slot];
            pool->score[slot] = 0;
            break;
        case SINKD_STAT_OP_RESTORE:
            pool->score[slot] = a->prev[slot];
            break;
        default: /* DECAY */
            pool->score[slot] = (float)((double)a->decay * a->prev[slot] + pool->score[slot]);
            break;
        }
    }
}

/* @a, checked, whose longest lane holds @max_len tokens. */
static int stat__run(sinkd_backend *be, const sinkd_stat_args *a, int32_t max_len)
{
    cpu__backend *cb = cpu__of(be);
    int rc = cpu__scratch_reserve(cb, (size_t)(max_len > a->head_dim ? max_len : a->head_dim));
    if (rc)
        return rc;
    stat_ctx c = {.a = a, .scratch = cb->scratch};
    cpu__pool_run(cb->pool, a->lanes.n_lanes, stat_lane, &c);
    return 0;
}

int cpu__stat(sinkd_backend *be, const sinkd_stat_args *a)
{
    int32_t max_len;

    if (!be || !a || cpu__lanes_check(a->pool, &a->lanes, a->head_dim, &max_len))
        return -EINVAL;
    if (!sinkd_stat_args_ok(a))
        return -EINVAL;
    return stat__run(be, a, max_len);
}

/* One call after another: on the CPU the lanes of a call already fill the
 * worker pool, so nothing is gained by interleaving them. */
int cpu__stat_rules(sinkd_backend *be, const sinkd_stat_args *a, int32_t n)
{
    int32_t max_len = 0, len;

    if (!be || !sinkd_stat_rules_ok(a, n))
        return -EINVAL;
    for (int32_t i = 0; i < n; i++) {
        if (cpu__lanes_check(a[i].pool, &a[i].lanes, a[i].head_dim, &len))
            return -EINVAL;
        max_len = len > max_len ? len : max_len;
    }
    for (int32_t i = 0; i < n; i++) {
        int rc = stat__run(be, &a[i], max_len);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ---- token selection --------------------------------------------------------- */

typedef struct topk_ctx {
    const sinkd_topk_tokens_args *a;
    float **scratch;
} topk_ctx;

static void topk_lane(void *vctx, int64_t task, int tid)
{
    const topk_ctx *c = vctx;
    const sinkd_topk_tokens_args *a = c->a;
    const sinkd_kv_pool *pool = a->pool;
    int32_t l = (int32_t)task, len = a->lanes.len[l], k = a->k, pt = pool->page_tokens;
    int32_t *out = a->out_pages + (size_t)l * k, n_out = 0;
    uint32_t *keys = (uint32_t *)c->scratch[tid];

    if (len > k) {
        for (int32_t t = 0; t < len; t++)
            keys[t] = stat_key(pool->score[cpu__slot(pool, &a->lanes, l, t)]);
        uint32_t thr = stat_select(keys, len, len - k);
        int32_t above = 0;
        for (int32_t t = 0; t < len; t++)
            above += stat_key(pool->score[cpu__slot(pool, &a->lanes, l, t)]) > thr;
        /* the ties at the threshold fill the rest, oldest first */
        int32_t ties = k - above;
        for (int32_t t = 0; t < len; t++) {
            uint32_t key = stat_key(pool->score[cpu__slot(pool, &a->lanes, l, t)]);
            bool take = key > thr || (key == thr && ties > 0);
            if (!take)
                continue;
            ties -= key == thr;
            if (n_out == 0 || out[n_out - 1] != t / pt)
                out[n_out++] = t / pt;
        }
    } else {
        for (int32_t p = 0; p * pt < len; p++)
            out[n_out++] = p;
    }
    for (int32_t i = n_out; i < k; i++)
        out[i] = -1;
}

int cpu__topk_tokens(sinkd_backend *be, const sinkd_topk_tokens_args *a)
{
    int32_t max_len;

    if (!be || !a || !a->pool || a->k < 1 || (a->lanes.n_lanes > 0 && !a->out_pages))
        return -EINVAL;
    /* head_dim only matters to the lane check: take the pool's */
    if (cpu__lanes_check(a->pool, &a->lanes, a->pool->head_dim_max, &max_len))
        return -EINVAL;
    cpu__backend *cb = cpu__of(be);
    int rc = cpu__scratch_reserve(cb, (size_t)(max_len > 0 ? max_len : 1));
    if (rc)
        return rc;
    topk_ctx c = {.a = a, .scratch = cb->scratch};
    cpu__pool_run(cb->pool, a->lanes.n_lanes, topk_lane, &c);
    return 0;
}
