/* Plan execution: what a session's policy plan asks of the attention ops
 * (score statistic, prefill observation window, Quest page selection) and
 * the eviction points (keep lists from the instance, then compaction, which
 * returns whole pages to the pool at once).
 *
 * Statistics the kernels cannot keep yet are approximated: QUANTILE
 * (Scissorhands) and GUMBEL (Keyformer) accumulate plain attention sums
 * like SUM; KEY_NORM is computed on the host from the stored keys at each
 * eviction point. SELECT_TOKENS (TidalDecode) attends densely. */
#include "engine_internal.h"
#include "log.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Device slots used by the page selection during a decode step. */
enum { SEL_OFF = 2, SEL_PAGES = 3 };

void eng_plan_score_op(const eng_session *s, int32_t *op, float *decay)
{
    const sinkd_policy_plan *p = sinkd_policy_inst_plan(s->inst);

    *decay = 1.0f;
    switch (p->stat) {
    case SINKD_STAT_SUM:
    case SINKD_STAT_QUANTILE:
    case SINKD_STAT_GUMBEL:
        *op = SINKD_SCORE_ADD;
        break;
    case SINKD_STAT_DECAY:
        *op = SINKD_SCORE_DECAY;
        *decay = p->decay;
        break;
    case SINKD_STAT_LAST:
        *op = SINKD_SCORE_WRITE;
        break;
    default:
        *op = SINKD_SCORE_NONE;
        break;
    }
}

/* Prefill: a statistic that sums over queries sums over every query of the
 * prompt; OBS_WINDOW and LAST look at the last queries of the final chunk
 * only (earlier chunks are not the end of the prompt). */
static int eng__prefill_hook(void *ctx, int32_t layer, sinkd_prefill_args *a)
{
    const eng_session *s = ctx;
    const sinkd_policy_plan *p = sinkd_policy_inst_plan(s->inst);
    int32_t op;
    float decay;

    (void)layer;
    eng_plan_score_op(s, &op, &decay);
    switch (p->stat) {
    case SINKD_STAT_OBS_WINDOW:
        if (s->prefill_final) {
            a->obs_w = p->obs_window;
            a->score_op = SINKD_SCORE_ADD;
        }
        break;
    case SINKD_STAT_LAST:
        if (s->prefill_final) {
            a->obs_w = 1;
            a->score_op = SINKD_SCORE_WRITE;
        }
        break;
    default:
        if (op != SINKD_SCORE_NONE) {
            a->obs_w = a->n;
            a->score_op = SINKD_SCORE_ADD;
        }
        break;
    }
    return 0;
}

void eng_prefill_hook(eng_session *s, sinkd_model_hook *h)
{
    h->prefill = eng__prefill_hook;
    h->decode = NULL;
    h->ctx = s;
}

int32_t eng_select_k(const eng_session *s, int32_t page_tokens)
{
    const sinkd_policy_plan *p = sinkd_policy_inst_plan(s->inst);

    if (p->select != SINKD_SELECT_PAGES)
        return 0;
    if (p->select_pages > 0)
        return p->select_pages;
    return (p->select_tokens + page_tokens - 1) / page_tokens;
}

/* Quest selection for a group of one selecting session: topk_pages at a
 * source layer into that layer's row of SEL_PAGES, reused by the layers
 * that name it as their source. */
static int eng__select(eng_decode_ctx *c, int32_t layer, sinkd_decode_args *a)
{
    sinkd_engine *e = c->e;
    const eng_session *s = c->ss[0];
    const sinkd_policy_plan *p = sinkd_policy_inst_plan(s->inst);
    int32_t k = c->select_k, kvh = s->geom.kv_heads;
    int32_t src = sinkd_plan_select_source(p, layer);
    int32_t *row;
    int rc;

    if (src < 0)
        return 0;
    row = (int32_t *)e->dbuf[SEL_PAGES] + (size_t)src * kvh * k;
    if (src == layer) {
        sinkd_topk_pages_args t = {
            .pool = a->pool, .lanes = a->lanes, .n_seqs = 1, .n_q_heads = a->n_q_heads,
            .n_kv_heads = a->n_kv_heads, .head_dim = a->head_dim, .rope = a->rope,
            .q = a->q, .q_pos = a->q_pos, .k = k, .out_pages = row, .out_scores = NULL,
        };
        if ((rc = e->be->ops->topk_pages(e->be, &t)) < 0)
            return rc;
    }
    a->sel_off = e->dbuf[SEL_OFF];
    a->sel_pages = row;
    return 0;
}

/* Prepare the selection buffers of a decode step for @c (one session). */
int eng_select_prepare(eng_decode_ctx *c)
{
    sinkd_engine *e = c->e;
    const eng_session *s = c->ss[0];
    int32_t kvh = s->geom.kv_heads, k = c->select_k;
    int32_t *off;
    int rc;

    if (k == 0)
        return 0;
    if ((rc = eng_dev_reserve(e, SEL_OFF, ((size_t)kvh + 1) * 4)) < 0 ||
        (rc = eng_dev_reserve(e, SEL_PAGES, (size_t)s->geom.layers * kvh * k * 4)) < 0 ||
        (rc = eng_host_reserve(e, SEL_OFF, (size_t)kvh + 1)) < 0)
        return rc;
    off = (int32_t *)e->hbuf[SEL_OFF];
    for (int32_t l = 0; l <= kvh; l++)
        off[l] = l * k;
    return e->be->ops->h2d(e->be, e->dbuf[SEL_OFF], off, ((size_t)kvh + 1) * 4);
}

int eng_decode_hook(void *ctx, int32_t layer, sinkd_decode_args *a)
{
    eng_decode_ctx *c = ctx;

    a->score_op = c->score_op;
    a->score_decay = c->decay;
    if (c->select_k > 0)
        return eng__select(c, layer, a);
    return 0;
}

/* ---- eviction ----------------------------------------------------------- */

static int eng__scratch(eng_scratch *sc, size_t entries, size_t lanes)
{
    if (entries > sc->cap) {
        size_t cap = entries + entries / 2 + 64;
        int32_t *pos = realloc(sc->pos, cap * sizeof *pos);
        if (pos)
            sc->pos = pos;
        float *score = realloc(sc->score, cap * sizeof *score);
        if (score)
            sc->score = score;
        int32_t *keep = realloc(sc->keep, cap * sizeof *keep);
        if (keep)
            sc->keep = keep;
        if (!pos || !score || !keep)
            return -ENOMEM;
        sc->cap = cap;
    }
    if (lanes > sc->lanes_cap) {
        sinkd_policy_lane *l = realloc(sc->lanes, lanes * sizeof *l);
        if (l)
            sc->lanes = l;
        int32_t *ko = realloc(sc->keep_off, (lanes + 1) * sizeof *ko);
        if (ko)
            sc->keep_off = ko;
        if (!l || !ko)
            return -ENOMEM;
        sc->lanes_cap = lanes;
    }
    return 0;
}

/* KEY_NORM on the host: score = -||k|| of each stored (pre-RoPE) key. */
static int eng__key_norms(sinkd_engine *e, eng_session *s, int32_t layer, int32_t h,
                          int32_t len, float *score)
{
    size_t need = (size_t)len * (size_t)s->geom.head_dim;
    int rc;

    if (need > e->sc.kbuf_cap) {
        float *p = realloc(e->sc.kbuf, need * sizeof *p);
        if (!p)
            return -ENOMEM;
        e->sc.kbuf = p;
        e->sc.kbuf_cap = need;
    }
    if ((rc = sinkd_kv_lane_read_kv(s->seq, layer, h, e->sc.kbuf, NULL)) < 0)
        return rc;
    for (int32_t t = 0; t < len; t++) {
        const float *k = e->sc.kbuf + (size_t)t * s->geom.head_dim;
        double sq = 0;
        for (int32_t d = 0; d < s->geom.head_dim; d++)
            sq += (double)k[d] * k[d];
        score[t] = (float)-sqrt(sq);
    }
    return 0;
}

static void eng__tell_fallback(sinkd_engine *e, eng_session *s, const sinkd_job *j)
{
    const char *why = sinkd_policy_inst_fallback_reason(s->inst);
    sinkd_fw w;

    snprintf(s->fallback, sizeof s->fallback, "%s", why ? why : "policy misbehaved");
    sinkd_log(SINKD_LOG_WARNING, "session %llu: policy fell back to window: %s",
              (unsigned long long)s->id, s->fallback);
    if (!j || eng_begin_event(&w, j, "policy_fallback", 2) < 0)
        return;
    sinkd_pack_kv_u64(&w.pk, "session", s->id);
    sinkd_pack_kv_str(&w.pk, "reason", s->fallback);
    eng_send(e, j, &w, false);
}

/* Evict the lanes of one layer when one of them is over its limit. */
static int eng__evict_layer(sinkd_engine *e, eng_session *s, int32_t layer, bool after_prefill,
                            const sinkd_job *j)
{
    const sinkd_policy_plan *p = sinkd_policy_inst_plan(s->inst);
    const sinkd_policy_geometry *g = sinkd_policy_inst_geometry(s->inst);
    int32_t kvh = s->geom.kv_heads, pt = e->page_tokens;
    eng_scratch *sc = &e->sc;
    bool over = false;
    size_t total = 0;
    int rc;

    for (int32_t h = 0; h < kvh; h++) {
        int32_t len = sinkd_kv_lane_len(s->seq, layer, h);
        int32_t lim = p->evict_at == SINKD_EVICT_PREFILL
                          ? (after_prefill ? sinkd_plan_lane_budget(p, g, layer, h) : 0)
                          : sinkd_plan_evict_threshold(p, g, layer, h);
        over |= lim > 0 && len > lim;
        total += (size_t)len;
    }
    if (!over)
        return 0;
    if ((rc = eng__scratch(sc, total, (size_t)kvh)) < 0)
        return rc;
    size_t at = 0;
    for (int32_t h = 0; h < kvh; h++) {
        sinkd_policy_lane *l = &sc->lanes[h];
        int32_t len = sinkd_kv_lane_len(s->seq, layer, h);
        memset(l, 0, sizeof *l);
        l->layer = layer;
        l->kv_head = h;
        l->len = len;
        l->n_pages = (len + pt - 1) / pt;
        l->pos = sc->pos + at;
        l->score = p->stat == SINKD_STAT_NONE ? NULL : sc->score + at;
        l->out = sc->keep + at;
        rc = sinkd_kv_lane_read(s->seq, layer, h, sc->pos + at,
                                p->stat == SINKD_STAT_NONE || p->stat == SINKD_STAT_KEY_NORM
                                    ? NULL : sc->score + at);
        if (rc == 0 && p->stat == SINKD_STAT_KEY_NORM)
            rc = eng__key_norms(e, s, layer, h, len, sc->score + at);
        if (rc < 0)
            return rc;
        at += (size_t)len;
    }
    rc = sinkd_policy_inst_evict(s->inst, sc->lanes, kvh);
    if (rc < 0)
        return rc;
    if (rc == SINKD_POLICY_FELL_BACK)
        eng__tell_fallback(e, s, j);
    /* Compaction wants the keep lists back to back. */
    int64_t dropped = 0;
    size_t n = 0;
    sc->keep_off[0] = 0;
    for (int32_t h = 0; h < kvh; h++) {
        sinkd_policy_lane *l = &sc->lanes[h];
        memmove(sc->keep + n, l->out, (size_t)l->n_out * sizeof *sc->keep);
        n += (size_t)l->n_out;
        sc->keep_off[h + 1] = (int32_t)n;
        dropped += l->len - l->n_out;
    }
    if (dropped == 0)
        return 0;
    if ((rc = sinkd_kv_compact(s->seq, layer, sc->keep_off, sc->keep)) < 0)
        return rc;
    s->evictions++;
    s->evicted_tokens += (uint64_t)dropped;
    return 0;
}

int eng_evict(sinkd_engine *e, eng_session *s, int32_t layer, bool after_prefill,
              const sinkd_job *j)
{
    const sinkd_policy_plan *p = sinkd_policy_inst_plan(s->inst);
    int32_t first = layer < 0 ? 0 : layer, last = layer < 0 ? s->geom.layers - 1 : layer;
    int rc = 0;

    if (p->evict_at == SINKD_EVICT_NEVER ||
        (p->evict_at == SINKD_EVICT_PREFILL && (!after_prefill || s->evicted_after_prefill)))
        return 0;
    for (int32_t l = first; l <= last && rc == 0; l++)
        rc = eng__evict_layer(e, s, l, after_prefill, j);
    /* After a fallback the plan is window's: p is stale. */
    if (rc == 0 && after_prefill)
        s->evicted_after_prefill = true;
    /* A fallback replaced the plan: the new rope mode applies from here. */
    if (rc == 0)
        rc = eng_apply_rope(e, s);
    return rc;
}
