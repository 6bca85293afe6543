/*
 * Plans: defaults, validation and the host reference of the rules they
 * imply (keep lists at eviction points, page lists at decode). See plan.h.
 */
#include "plan.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int plan__fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int plan__fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static int plan__geom_ok(const sinkd_policy_geometry *g)
{
    return g != NULL && g->n_layers >= 1 && g->n_layers <= 4096 && g->n_kv_heads >= 1 &&
           g->n_kv_heads <= 4096 && g->page_tokens >= 1 &&
           g->page_tokens <= SINKD_POLICY_MAX_TOKENS;
}

void sinkd_plan_reset(sinkd_policy_plan *plan, const sinkd_policy_geometry *geom)
{
    int32_t *layer_budget = plan->layer_budget;
    uint8_t *head_kind = plan->head_kind;
    int32_t *select_src = plan->select_src;

    memset(plan, 0, sizeof *plan);
    plan->struct_size = sizeof *plan;
    plan->decay = 1.0f;
    plan->quantile = 0.9f;
    plan->temperature = 1.0f;
    plan->pool_kernel = 1;
    plan->slack = geom->page_tokens;
    plan->layer_budget = layer_budget;
    plan->head_kind = head_kind;
    plan->select_src = select_src;
    for (int32_t l = 0; l < geom->n_layers; l++) {
        layer_budget[l] = -1;
        select_src[l] = l;
    }
    memset(head_kind, SINKD_HEAD_FULL, (size_t)geom->n_layers * (size_t)geom->n_kv_heads);
}

int sinkd_plan_init(sinkd_policy_plan *plan, const sinkd_policy_geometry *geom)
{
    if (plan == NULL || !plan__geom_ok(geom))
        return -EINVAL;
    size_t nl = (size_t)geom->n_layers;
    memset(plan, 0, sizeof *plan);
    plan->layer_budget = malloc(nl * sizeof(int32_t));
    plan->select_src = malloc(nl * sizeof(int32_t));
    plan->head_kind = malloc(nl * (size_t)geom->n_kv_heads);
    if (plan->layer_budget == NULL || plan->select_src == NULL || plan->head_kind == NULL) {
        sinkd_plan_free(plan);
        return -ENOMEM;
    }
    sinkd_plan_reset(plan, geom);
    return 0;
}

void sinkd_plan_free(sinkd_policy_plan *plan)
{
    if (plan == NULL)
        return;
    free(plan->layer_budget);
    free(plan->select_src);
    free(plan->head_kind);
    memset(plan, 0, sizeof *plan);
}

void sinkd_plan_copy(sinkd_policy_plan *dst, const sinkd_policy_plan *src,
                     const sinkd_policy_geometry *geom)
{
    size_t nl = (size_t)geom->n_layers;
    int32_t *layer_budget = dst->layer_budget;
    uint8_t *head_kind = dst->head_kind;
    int32_t *select_src = dst->select_src;

    *dst = *src;
    dst->layer_budget = layer_budget;
    dst->head_kind = head_kind;
    dst->select_src = select_src;
    memcpy(layer_budget, src->layer_budget, nl * sizeof(int32_t));
    memcpy(select_src, src->select_src, nl * sizeof(int32_t));
    memcpy(head_kind, src->head_kind, nl * (size_t)geom->n_kv_heads);
}

static int32_t plan__layer_budget(const sinkd_policy_plan *p, int32_t layer)
{
    int32_t b = p->layer_budget[layer];
    return b < 0 ? p->budget : b;
}

int sinkd_plan_validate(const sinkd_policy_plan *p, const sinkd_policy_geometry *g,
                        char *err, size_t errlen)
{
    if (p == NULL || !plan__geom_ok(g))
        return plan__fail(err, errlen, -EINVAL, "no plan or bad geometry");
    if (p->flags & ~(uint32_t)SINKD_PLAN_PAGE_BOUNDS)
        return plan__fail(err, errlen, -EINVAL, "unknown plan flags 0x%x", p->flags);
    if (p->stat > SINKD_STAT_GUMBEL)
        return plan__fail(err, errlen, -EINVAL, "unknown statistic %u", p->stat);
    if (p->pool > SINKD_POOL_AVG || p->scope > SINKD_SCOPE_LAYER ||
        p->rope_mode > SINKD_POLICY_ROPE_CACHE || p->evict_at > SINKD_EVICT_PREFILL ||
        p->select > SINKD_SELECT_TOKENS)
        return plan__fail(err, errlen, -EINVAL, "plan enum out of range");
    if (p->stat == SINKD_STAT_DECAY && !(p->decay > 0.0f && p->decay <= 1.0f))
        return plan__fail(err, errlen, -EINVAL, "decay %g not in (0, 1]", (double)p->decay);
    if (p->stat == SINKD_STAT_QUANTILE &&
        (!(p->quantile > 0.0f && p->quantile < 1.0f) || p->history < 1))
        return plan__fail(err, errlen, -EINVAL, "quantile statistic needs quantile in (0, 1) "
                          "and history >= 1");
    if (p->stat == SINKD_STAT_GUMBEL && !(p->temperature > 0.0f && isfinite(p->temperature)))
        return plan__fail(err, errlen, -EINVAL, "temperature must be > 0");
    if (p->stat == SINKD_STAT_OBS_WINDOW && p->obs_window < 1)
        return plan__fail(err, errlen, -EINVAL, "observation window statistic needs obs_window >= 1");
    if (p->pool_kernel < 1 || p->pool_kernel % 2 == 0 || p->pool_kernel > 1023)
        return plan__fail(err, errlen, -EINVAL, "pool_kernel %d is not odd in [1, 1023]",
                          p->pool_kernel);
    if (p->budget < 0 || p->sinks < 0 || p->recent < 0 || p->slack < 0 ||
        p->stream_sinks < 0 || p->stream_recent < 0 || p->select_pages < 0 ||
        p->select_tokens < 0 || p->obs_window < 0 || p->history < 0)
        return plan__fail(err, errlen, -EINVAL, "negative count in plan");
    /* The engine and the rules below add and multiply these in int32 (budget
     * + slack, sinks + recent, select_pages * page_tokens, ...): capped, no
     * sum or product of two of them reaches 2^31. */
    const struct {
        const char *name;
        int32_t v;
    } counts[] = {
        {"budget", p->budget}, {"sinks", p->sinks}, {"recent", p->recent},
        {"slack", p->slack}, {"select_tokens", p->select_tokens},
        {"obs_window", p->obs_window}, {"history", p->history},
    };
    for (size_t i = 0; i < sizeof counts / sizeof *counts; i++)
        if (counts[i].v > SINKD_POLICY_MAX_TOKENS)
            return plan__fail(err, errlen, -EINVAL, "%s %d exceeds %d", counts[i].name,
                              counts[i].v, SINKD_POLICY_MAX_TOKENS);
    if ((int64_t)p->stream_sinks + p->stream_recent > SINKD_POLICY_MAX_TOKENS)
        return plan__fail(err, errlen, -EINVAL, "stream_sinks %d + stream_recent %d exceed %d",
                          p->stream_sinks, p->stream_recent, SINKD_POLICY_MAX_TOKENS);
    if (p->select_pages > SINKD_POLICY_MAX_TOKENS / g->page_tokens)
        return plan__fail(err, errlen, -EINVAL, "select_pages %d exceeds %d (%d tokens in pages "
                          "of %d)", p->select_pages, SINKD_POLICY_MAX_TOKENS / g->page_tokens,
                          SINKD_POLICY_MAX_TOKENS, g->page_tokens);
    for (int32_t l = 0; l < g->n_layers; l++) {
        int32_t b = plan__layer_budget(p, l);
        if (p->layer_budget[l] < -1)
            return plan__fail(err, errlen, -EINVAL, "layer %d: budget %d", l, p->layer_budget[l]);
        if (p->layer_budget[l] > SINKD_POLICY_MAX_TOKENS)
            return plan__fail(err, errlen, -EINVAL, "layer %d: layer_budget %d exceeds %d", l,
                              p->layer_budget[l], SINKD_POLICY_MAX_TOKENS);
        if (b > 0 && (int64_t)p->sinks + p->recent > b)
            return plan__fail(err, errlen, -EINVAL, "layer %d: sinks %d + recent %d exceed budget %d",
                              l, p->sinks, p->recent, b);
    }
    int streaming = 0;
    for (size_t i = 0; i < (size_t)g->n_layers * (size_t)g->n_kv_heads; i++) {
        if (p->head_kind[i] > SINKD_HEAD_STREAMING)
            return plan__fail(err, errlen, -EINVAL, "unknown head kind %u", p->head_kind[i]);
        streaming |= p->head_kind[i] == SINKD_HEAD_STREAMING;
    }
    if (streaming && p->stream_sinks + (int64_t)p->stream_recent < 1)
        return plan__fail(err, errlen, -EINVAL, "streaming heads need stream_sinks + stream_recent >= 1");
    if (p->dense_layers < 0 || p->dense_layers > g->n_layers)
        return plan__fail(err, errlen, -EINVAL, "dense_layers %d not in [0, %d]",
                          p->dense_layers, g->n_layers);
    if (p->select == SINKD_SELECT_DENSE)
        return 0;
    if (p->select_pages < 1 && p->select_tokens < 1)
        return plan__fail(err, errlen, -EINVAL, "selection needs select_pages or select_tokens >= 1");
    if (p->select == SINKD_SELECT_PAGES && !(p->flags & SINKD_PLAN_PAGE_BOUNDS))
        return plan__fail(err, errlen, -EINVAL, "page selection needs SINKD_PLAN_PAGE_BOUNDS");
    for (int32_t l = p->dense_layers; l < g->n_layers; l++) {
        int32_t s = p->select_src[l];
        if (s == l)
            continue;
        if (s < p->dense_layers || s > l || p->select_src[s] != s)
            return plan__fail(err, errlen, -EINVAL, "layer %d reuses layer %d, which does not select",
                              l, s);
    }
    return 0;
}

int32_t sinkd_plan_lane_budget(const sinkd_policy_plan *p, const sinkd_policy_geometry *g,
                               int32_t layer, int32_t kv_head)
{
    if (p->head_kind[(size_t)layer * (size_t)g->n_kv_heads + (size_t)kv_head] == SINKD_HEAD_STREAMING)
        return p->stream_sinks + p->stream_recent;
    return plan__layer_budget(p, layer);
}

int32_t sinkd_plan_evict_threshold(const sinkd_policy_plan *p, const sinkd_policy_geometry *g,
                                   int32_t layer, int32_t kv_head)
{
    int32_t b = sinkd_plan_lane_budget(p, g, layer, kv_head);
    if (p->evict_at != SINKD_EVICT_BUDGET || b == 0)
        return 0;
    return b + p->slack;
}

/* ---- ranking --------------------------------------------------------- */

typedef struct plan__ranked {
    float s;
    int32_t i;
} plan__ranked;

/* Higher score first, then lower index; NaN (mapped to -inf) last. */
static int plan__rank_cmp(const void *a, const void *b)
{
    const plan__ranked *x = a, *y = b;
    if (x->s != y->s)
        return x->s > y->s ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

static int plan__int_cmp(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Write the indices of the @m best of s[0..n) (ascending) to out. @tmp has
 * room for n entries. */
static int32_t plan__top(const float *s, int32_t n, int32_t m, plan__ranked *tmp, int32_t *out)
{
    if (m > n)
        m = n;
    for (int32_t i = 0; i < n; i++) {
        tmp[i].s = isnan(s[i]) ? -INFINITY : s[i];
        tmp[i].i = i;
    }
    qsort(tmp, (size_t)n, sizeof *tmp, plan__rank_cmp);
    for (int32_t i = 0; i < m; i++)
        out[i] = tmp[i].i;
    qsort(out, (size_t)m, sizeof *out, plan__int_cmp);
    return m;
}

/* pooled[i] for i in [0, n): the pool of src over the window centred on i. */
static void plan__pool(const float *src, float *dst, int32_t n, uint8_t pool, int32_t kernel)
{
    int32_t h = kernel / 2;
    for (int32_t i = 0; i < n; i++) {
        if (pool == SINKD_POOL_NONE || kernel == 1) {
            dst[i] = src[i];
            continue;
        }
        float acc = pool == SINKD_POOL_MAX ? -INFINITY : 0.0f;
        for (int32_t j = i - h; j <= i + h; j++) {
            if (j < 0 || j >= n)
                continue;
            acc = pool == SINKD_POOL_MAX ? fmaxf(acc, src[j]) : acc + src[j];
        }
        dst[i] = pool == SINKD_POOL_MAX ? acc : acc / (float)kernel;
    }
}

static void plan__keep_all(sinkd_policy_lane *lane)
{
    for (int32_t i = 0; i < lane->len; i++)
        lane->out[i] = i;
    lane->n_out = lane->len;
}

static void plan__keep_ends(sinkd_policy_lane *lane, int32_t first, int32_t last)
{
    int32_t n = 0;
    for (int32_t i = 0; i < first; i++)
        lane->out[n++] = i;
    for (int32_t i = lane->len - last; i < lane->len; i++)
        lane->out[n++] = i;
    lane->n_out = n;
}

/* sinks + top(m) of [sinks, len - recent) by @s (length len - recent) + recent. */
static void plan__keep_ranked(const sinkd_policy_plan *p, sinkd_policy_lane *lane, const float *s,
                              int32_t m, plan__ranked *tmp, int32_t *idx)
{
    int32_t lo = p->sinks, hi = lane->len - p->recent;
    int32_t k = plan__top(s + lo, hi - lo, m, tmp, idx);
    int32_t n = 0;
    for (int32_t i = 0; i < lo; i++)
        lane->out[n++] = i;
    for (int32_t i = 0; i < k; i++)
        lane->out[n++] = lo + idx[i];
    for (int32_t i = hi; i < lane->len; i++)
        lane->out[n++] = i;
    lane->n_out = n;
}

static int plan__lane_ok(const sinkd_policy_geometry *g, const sinkd_policy_lane *l, int32_t layer)
{
    return l->layer == layer && l->kv_head >= 0 && l->kv_head < g->n_kv_heads && l->len >= 0 &&
           l->out != NULL && (l->len == 0 || l->pos != NULL);
}

int sinkd_plan_keep(const sinkd_policy_plan *p, const sinkd_policy_geometry *g,
                    sinkd_policy_lane *lanes, int32_t n_lanes, char *err, size_t errlen)
{
    if (p == NULL || !plan__geom_ok(g) || lanes == NULL || n_lanes < 1 || n_lanes > g->n_kv_heads)
        return plan__fail(err, errlen, -EINVAL, "keep: bad arguments");
    int32_t layer = lanes[0].layer, maxlen = 0, shared_len = -1;
    if (layer < 0 || layer >= g->n_layers)
        return plan__fail(err, errlen, -EINVAL, "keep: layer %d out of range", layer);
    for (int32_t i = 0; i < n_lanes; i++) {
        if (!plan__lane_ok(g, &lanes[i], layer))
            return plan__fail(err, errlen, -EINVAL, "keep: lane %d is malformed", i);
        if (p->stat != SINKD_STAT_NONE && lanes[i].len > 0 && lanes[i].score == NULL)
            return plan__fail(err, errlen, -EINVAL, "keep: lane %d has no scores", i);
        if (lanes[i].len > maxlen)
            maxlen = lanes[i].len;
    }

    float *buf = malloc(2 * (size_t)maxlen * sizeof(float) + 1);
    plan__ranked *tmp = malloc((size_t)maxlen * sizeof *tmp + 1);
    int32_t *idx = malloc((size_t)maxlen * sizeof *idx + 1);
    int rc = 0;
    if (buf == NULL || tmp == NULL || idx == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    float *sum = buf, *pooled = buf + maxlen;
    int32_t n_full = 0;
    for (int32_t i = 0; i < n_lanes; i++) {
        sinkd_policy_lane *lane = &lanes[i];
        int32_t b = sinkd_plan_lane_budget(p, g, layer, lane->kv_head);
        if (b == 0 || lane->len <= b) {
            plan__keep_all(lane);
        } else if (p->head_kind[(size_t)layer * (size_t)g->n_kv_heads + (size_t)lane->kv_head] ==
                   SINKD_HEAD_STREAMING) {
            plan__keep_ends(lane, p->stream_sinks, p->stream_recent);
        } else if (p->scope == SINKD_SCOPE_LANE) {
            int32_t n = lane->len - p->recent;
            for (int32_t t = 0; t < n; t++)
                sum[t] = lane->score != NULL ? lane->score[t] : 0.0f;
            plan__pool(sum, pooled, n, p->pool, p->pool_kernel);
            plan__keep_ranked(p, lane, pooled, b - p->sinks - p->recent, tmp, idx);
        } else {
            /* layer scope: accumulate now, rank once below */
            if (shared_len >= 0 && lane->len != shared_len) {
                rc = plan__fail(err, errlen, -EINVAL, "keep: layer-scope lanes differ in length "
                                "(%d vs %d)", lane->len, shared_len);
                goto out;
            }
            if (shared_len < 0)
                memset(sum, 0, (size_t)lane->len * sizeof(float));
            shared_len = lane->len;
            for (int32_t t = 0; t < lane->len; t++)
                sum[t] += lane->score != NULL ? lane->score[t] : 0.0f;
            lane->n_out = -1; /* filled below */
            n_full++;
        }
    }
    if (n_full > 0) {
        sinkd_policy_lane *first = NULL;
        for (int32_t i = 0; i < n_lanes; i++) {
            sinkd_policy_lane *lane = &lanes[i];
            if (lane->n_out != -1)
                continue;
            if (first == NULL) {
                int32_t b = sinkd_plan_lane_budget(p, g, layer, lane->kv_head);
                plan__pool(sum, pooled, lane->len - p->recent, p->pool, p->pool_kernel);
                plan__keep_ranked(p, lane, pooled, b - p->sinks - p->recent, tmp, idx);
                first = lane;
            } else {
                memcpy(lane->out, first->out, (size_t)first->n_out * sizeof(int32_t));
                lane->n_out = first->n_out;
            }
        }
    }
out:
    free(buf);
    free(tmp);
    free(idx);
    return rc;
}

int32_t sinkd_plan_select_source(const sinkd_policy_plan *p, int32_t layer)
{
    if (p->select == SINKD_SELECT_DENSE || layer < p->dense_layers)
        return -1;
    return p->select_src[layer];
}

int sinkd_plan_select(const sinkd_policy_plan *p, const sinkd_policy_geometry *g,
                      sinkd_policy_lane *lanes, int32_t n_lanes, char *err, size_t errlen)
{
    if (p == NULL || !plan__geom_ok(g) || lanes == NULL || n_lanes < 1 || n_lanes > g->n_kv_heads)
        return plan__fail(err, errlen, -EINVAL, "select: bad arguments");
    int32_t layer = lanes[0].layer, maxn = 0;
    if (layer < 0 || layer >= g->n_layers || sinkd_plan_select_source(p, layer) != layer)
        return plan__fail(err, errlen, -EINVAL, "select: layer %d does not select", layer);
    for (int32_t i = 0; i < n_lanes; i++) {
        sinkd_policy_lane *l = &lanes[i];
        int32_t np = (int32_t)(((int64_t)l->len + g->page_tokens - 1) / g->page_tokens);
        if (!plan__lane_ok(g, l, layer) || l->n_pages != np)
            return plan__fail(err, errlen, -EINVAL, "select: lane %d is malformed", i);
        if (p->select == SINKD_SELECT_PAGES ? l->page_score == NULL : l->score == NULL)
            return plan__fail(err, errlen, -EINVAL, "select: lane %d lacks %s", i,
                              p->select == SINKD_SELECT_PAGES ? "page scores" : "scores");
        if (l->len > maxn)
            maxn = l->len;
    }
    int32_t pt = g->page_tokens;
    int32_t k_pages = p->select_pages > 0 ? p->select_pages
                                          : (int32_t)(((int64_t)p->select_tokens + pt - 1) / pt);
    int32_t k_tokens = p->select_tokens > 0 ? p->select_tokens
                                            : (int32_t)((int64_t)p->select_pages * pt);
    plan__ranked *tmp = malloc((size_t)maxn * sizeof *tmp + 1);
    int32_t *idx = malloc((size_t)maxn * sizeof *idx + 1);
    if (tmp == NULL || idx == NULL) {
        free(tmp);
        free(idx);
        return -ENOMEM;
    }
    for (int32_t i = 0; i < n_lanes; i++) {
        sinkd_policy_lane *l = &lanes[i];
        if (p->select == SINKD_SELECT_PAGES) {
            l->n_out = plan__top(l->page_score, l->n_pages, k_pages, tmp, l->out);
            continue;
        }
        int32_t k = plan__top(l->score, l->len, k_tokens, tmp, idx);
        l->n_out = 0;
        for (int32_t t = 0; t < k; t++) { /* idx ascending: pages come out ascending */
            int32_t page = idx[t] / pt;
            if (l->n_out == 0 || l->out[l->n_out - 1] != page)
                l->out[l->n_out++] = page;
        }
    }
    free(tmp);
    free(idx);
    return 0;
}

int sinkd_plan_check_list(const int32_t *list, int32_t n, int32_t limit, int32_t min_n,
                          char *err, size_t errlen)
{
    if (n < min_n || n > limit)
        return plan__fail(err, errlen, -EPROTO, "%d entries for a list of at most %d (at least %d)",
                          n, limit, min_n);
    for (int32_t i = 0; i < n; i++) {
        if (list[i] < 0 || list[i] >= limit)
            return plan__fail(err, errlen, -EPROTO, "entry %d is %d, outside [0, %d)", i, list[i],
                              limit);
        if (i > 0 && list[i] == list[i - 1])
            return plan__fail(err, errlen, -EPROTO, "entry %d repeats index %d", i, list[i]);
        if (i > 0 && list[i] < list[i - 1])
            return plan__fail(err, errlen, -EPROTO, "entry %d (%d) is below entry %d (%d): not sorted",
                              i, list[i], i - 1, list[i - 1]);
    }
    return 0;
}
