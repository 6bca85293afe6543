/*
 * Quest page selection on the CPU. Per lane (one task each): rotate the G
 * query heads of its group at the query position, bound every page by
 *   sum_g sum_i max(q_g,i * kmax_i, q_g,i * kmin_i)
 * (reads 2 * head_dim floats per page), then keep the k largest (ties: lower
 * page index), written in ascending page order.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

typedef struct page_bound {
    float b;
    int32_t page;
} page_bound;

static int by_bound_desc(const void *x, const void *y)
{
    const page_bound *a = x, *b = y;
    if (a->b != b->b)
        return a->b > b->b ? -1 : 1;
    return (a->page > b->page) - (a->page < b->page);
}

static int by_page(const void *x, const void *y)
{
    const page_bound *a = x, *b = y;
    return (a->page > b->page) - (a->page < b->page);
}

typedef struct topk_ctx {
    const sinkd_topk_pages_args *a;
    cpu__rope rope;
    float **scratch;
    int32_t group;
} topk_ctx;

static void topk_lane(void *vctx, int64_t task, int tid)
{
    const topk_ctx *c = vctx;
    const sinkd_topk_pages_args *a = c->a;
    const sinkd_kv_pool *pool = a->pool;
    int32_t l = (int32_t)task, G = c->group, hd = a->head_dim, k = a->k;
    int32_t s = l / a->n_kv_heads, h = l % a->n_kv_heads, len = a->lanes.len[l];
    int32_t np = (len + pool->page_tokens - 1) / pool->page_tokens;
    size_t head0 = (size_t)s * a->n_q_heads + (size_t)h * G;

    /* scratch: q[G*hd] | page_bound[np] */
    float *q = c->scratch[tid];
    page_bound *pb = (page_bound *)(q + (size_t)G * hd);

    int64_t qpos = c->rope.mode == SINKD_ROPE_CACHE ? (int64_t)len - 1 : a->q_pos[s];
    memcpy(q, a->q + head0 * hd, (size_t)G * hd * sizeof(float));
    for (int32_t g = 0; g < G; g++)
        cpu__rope_row(&c->rope, q + (size_t)g * hd, qpos);
    for (int32_t p = 0; p < np; p++) {
        int64_t page = a->lanes.page_ids[a->lanes.page_off[l] + p];
        const float *mn = pool->kmin + page * pool->head_dim_max;
        const float *mx = pool->kmax + page * pool->head_dim_max;
        double b = 0;
        for (int32_t g = 0; g < G; g++) {
            const float *qg = q + (size_t)g * hd;
            for (int32_t i = 0; i < hd; i++) {
                float hi = qg[i] * mx[i], lo = qg[i] * mn[i];
                b += hi > lo ? hi : lo;
            }
        }
        /* a NaN bound sorts last instead of breaking the order */
        pb[p] = (page_bound){isnan(b) ? -INFINITY : (float)b, p};
    }
    int32_t take = np < k ? np : k;
    qsort(pb, (size_t)np, sizeof *pb, by_bound_desc);
    qsort(pb, (size_t)take, sizeof *pb, by_page);
    for (int32_t j = 0; j < k; j++) {
        a->out_pages[(size_t)l * k + j] = j < take ? pb[j].page : -1;
        if (a->out_scores)
            a->out_scores[(size_t)l * k + j] = j < take ? pb[j].b : -INFINITY;
    }
}

int cpu__topk_pages(sinkd_backend *be, const sinkd_topk_pages_args *a)
{
    int32_t max_len;
    if (!be || !a || cpu__lanes_check(a->pool, &a->lanes, a->head_dim, &max_len) ||
        cpu__rope_check(&a->rope))
        return -EINVAL;
    if (a->n_kv_heads < 1 || a->n_q_heads < a->n_kv_heads || a->n_q_heads % a->n_kv_heads ||
        a->n_seqs < 0 || (int64_t)a->n_seqs * a->n_kv_heads != a->lanes.n_lanes || a->k < 1)
        return -EINVAL;
    if (a->n_seqs > 0 && (!a->q || !a->out_pages || (a->rope.mode == SINKD_ROPE_ABSOLUTE && !a->q_pos)))
        return -EINVAL;
    int64_t max_pos = max_len;
    if (a->rope.mode == SINKD_ROPE_ABSOLUTE)
        for (int32_t s = 0; s < a->n_seqs; s++)
            max_pos = a->q_pos[s] + 1 > max_pos ? a->q_pos[s] + 1 : max_pos;
    cpu__backend *cb = cpu__of(be);
    int32_t G = a->n_q_heads / a->n_kv_heads;
    int32_t max_pages = (max_len + a->pool->page_tokens - 1) / a->pool->page_tokens;
    size_t need = (size_t)G * a->head_dim + 2 * (size_t)max_pages;
    int rc = cpu__scratch_reserve(cb, need);
    if (rc)
        return rc;
    topk_ctx c = {.a = a, .scratch = cb->scratch, .group = G};
    cpu__rope_prepare(cb, &a->rope, a->head_dim, max_pos, &c.rope);
    cpu__pool_run(cb->pool, a->lanes.n_lanes, topk_lane, &c);
    return 0;
}
