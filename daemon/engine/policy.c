/* Plan execution, the session side: what a plan asks of a forward (the
 * exec), sharing decode calls between sessions, the score slots across a
 * policy swap, and the eviction points (keep lists from the instance, then
 * compaction, which returns whole pages to the pool at once). The hooks
 * that run inside a forward live in exec.c. */
#include "engine_internal.h"
#include "log.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    case SINKD_STAT_OBS_WINDOW:
        /* Step by step, the sum over the last w queries is kept as a decayed
         * sum of the same mass (a constant p sums to w p either way): a
         * conversation streamed a token at a time has a window at every
         * append's end, not only after a bulk prompt. */
        *op = SINKD_SCORE_DECAY;
        *decay = 1.0f - 1.0f / (float)p->obs_window;
        break;
    default:
        *op = SINKD_SCORE_NONE;
        break;
    }
}

/* Prefill: a chunk of n queries does what n decode steps would do to the
 * statistic, as far as one score_op over the chunk can: SUM adds every
 * query's p (exact), LAST writes the last query's (exact), DECAY scales by
 * decay^n and adds the chunk's p (exact for n = 1; the chunk's queries weigh
 * alike). OBS_WINDOW's window is exact whenever the chunk holds it: the last
 * w queries' sum replaces the score (SnapKV at the end of a prompt). Every
 * chunk keeps it, since any chunk may end an append and be followed by an
 * eviction. */
int eng_prefill_stat(void *ctx, int32_t layer, sinkd_prefill_args *a)
{
    const eng_session *s = ctx;
    const sinkd_policy_plan *p = sinkd_policy_inst_plan(s->inst);
    int32_t op;
    float decay;

    (void)layer;
    eng_plan_score_op(s, &op, &decay);
    a->score_op = op;
    switch (op) {
    case SINKD_SCORE_NONE:
        break;
    case SINKD_SCORE_WRITE:
        a->obs_w = 1;
        break;
    case SINKD_SCORE_DECAY:
        if (p->stat == SINKD_STAT_OBS_WINDOW && a->n >= p->obs_window) {
            a->obs_w = p->obs_window;
            a->score_op = SINKD_SCORE_WRITE;
            break;
        }
        a->obs_w = a->n;
        a->score_decay = powf(decay, (float)a->n);
        break;
    default:
        a->obs_w = a->n;
        break;
    }
    return 0;
}

void eng_prefill_hook(eng_session *s, sinkd_model_hook *h)
{
    h->prefill = eng_prefill_stat;
    h->decode = NULL;
    h->ctx = s;
}

void eng_plan_exec(const sinkd_engine *e, const eng_session *s, eng_exec *x)
{
    const sinkd_policy_plan *p = sinkd_policy_inst_plan(s->inst);
    int32_t pt = e->page_tokens;

    memset(x, 0, sizeof *x);
    eng_plan_score_op(s, &x->score_op, &x->decay);
    x->stat = p->stat;
    x->post = p->stat == SINKD_STAT_QUANTILE || p->stat == SINKD_STAT_GUMBEL;
    if (x->post) {
        x->score_op = SINKD_SCORE_NONE;
        x->quantile = p->quantile;
        x->keep = p->stat == SINKD_STAT_QUANTILE ? 1.0f - 1.0f / (float)p->history : 1.0f;
        x->temperature = p->temperature;
    }
    if (p->stat == SINKD_STAT_KEY_NORM)
        x->score_op = SINKD_SCORE_NONE;
    x->select = p->select;
    x->host_select = p->select != SINKD_SELECT_DENSE && (s->inst_caps & SINKD_POLICY_CAP_SELECT);
    if (p->select == SINKD_SELECT_PAGES)
        x->k = p->select_pages > 0 ? p->select_pages : (p->select_tokens + pt - 1) / pt;
    else if (p->select == SINKD_SELECT_TOKENS)
        x->k = p->select_tokens > 0 ? p->select_tokens : p->select_pages * pt;
}

bool eng_plan_compatible(const sinkd_engine *e, const eng_session *a, const eng_session *b)
{
    const sinkd_policy_plan *pa = sinkd_policy_inst_plan(a->inst);
    const sinkd_policy_plan *pb = sinkd_policy_inst_plan(b->inst);
    eng_exec xa, xb;

    if (a->m != b->m || a->rope_mode != b->rope_mode)
        return false;
    eng_plan_exec(e, a, &xa);
    eng_plan_exec(e, b, &xb);
    if (xa.host_select || xb.host_select || xa.score_op != xb.score_op ||
        xa.decay != xb.decay || xa.stat != xb.stat || xa.select != xb.select ||
        xa.quantile != xb.quantile || xa.keep != xb.keep ||
        xa.temperature != xb.temperature || xa.k != xb.k)
        return false;
    if (xa.select == SINKD_SELECT_DENSE)
        return true;
    for (int32_t l = 0; l < a->geom.layers; l++)
        if (sinkd_plan_select_source(pa, l) != sinkd_plan_select_source(pb, l))
            return false;
    return true;
}

uint32_t eng_policy_caps(sinkd_engine *e, const sinkd_policy_inst *inst)
{
    size_t n = 0, cap = 0;
    sinkd_policy_info *all = NULL;
    uint32_t caps = 0;

    /* The registry lists the current version of each policy. Built-ins have
     * no callbacks. */
    do {
        sinkd_policy_info *p;
        cap = n + 8;
        if (!(p = realloc(all, cap * sizeof *all)))
            break;
        all = p;
        sinkd_policy_list(e->reg, all, cap, &n);
    } while (n > cap);
    for (size_t i = 0; all && n <= cap && i < n; i++)
        if (!strcmp(all[i].name, sinkd_policy_inst_name(inst)) &&
            all[i].generation == sinkd_policy_inst_generation(inst))
            caps = all[i].caps;
    free(all);
    return caps;
}

void eng_policy_attach(sinkd_engine *e, eng_session *s)
{
    s->inst_caps = eng_policy_caps(e, s->inst); /* just made from the current version */
}

int eng_stat_lanes(sinkd_engine *e, const eng_session *s, const sinkd_lanes *lanes, int32_t op)
{
    sinkd_stat_args a = {
        .pool = sinkd_kv_pool_get(e->kv), .lanes = *lanes, .op = op,
        .head_dim = s->geom.head_dim, .n = INT32_MAX,
    };

    return e->be->ops->stat(e->be, &a);
}

/* The same over every lane of @layer of @s, or of every layer (-1). */
static int eng__stat_all(sinkd_engine *e, eng_session *s, int32_t layer, int32_t op)
{
    int32_t first = layer < 0 ? 0 : layer, last = layer < 0 ? s->geom.layers - 1 : layer;
    sinkd_lanes lanes;
    int rc = 0;

    for (int32_t l = first; l <= last && rc == 0; l++)
        if ((rc = sinkd_kv_lanes_seq(s->seq, l, &lanes)) == 0)
            rc = eng_stat_lanes(e, s, &lanes, op);
    return rc;
}

int eng_policy_swapped(sinkd_engine *e, eng_session *s, uint8_t old_stat)
{
    uint8_t stat = sinkd_policy_inst_plan(s->inst)->stat;

    /* Same kind: the sums, counts or norms carry over. NONE reads nothing;
     * KEY_NORM is computed afresh at each eviction point. */
    if (stat == old_stat || stat == SINKD_STAT_NONE || stat == SINKD_STAT_KEY_NORM)
        return 0;
    return eng__stat_all(e, s, -1, SINKD_STAT_OP_ZERO);
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

void eng_tell_fallback(sinkd_engine *e, eng_session *s, const sinkd_job *j)
{
    const char *why = sinkd_policy_inst_fallback_reason(s->inst);
    sinkd_fw w;

    snprintf(s->fallback, sizeof s->fallback, "%s", why ? why : "policy misbehaved");
    s->inst_caps = 0; /* window has no callbacks */
    sinkd_log(SINKD_LOG_WARNING, "session %llu: policy fell back to window: %s",
              (unsigned long long)s->id, s->fallback);
    if (!j || eng_begin_event(&w, j, "policy_fallback", 2) < 0)
        return;
    sinkd_pack_kv_u64(&w.pk, "session", s->id);
    sinkd_pack_kv_str(&w.pk, "reason", s->fallback);
    eng_send(e, j, &w, false);
}

/* Evict the lanes of one layer when one of them is over budget + slack
 * (the caller decides whether this is an eviction point of the plan). */
static int eng__evict_layer(sinkd_engine *e, eng_session *s, int32_t layer, const sinkd_job *j)
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
        int32_t budget = sinkd_plan_lane_budget(p, g, layer, h);
        /* int64: the plan's bounds keep budget + slack far below 2^31, but
         * this is the engine's side of that sum and must not rely on them */
        int64_t lim = p->evict_at == SINKD_EVICT_PREFILL
                          ? (budget > 0 ? (int64_t)budget + p->slack : 0)
                          : sinkd_plan_evict_threshold(p, g, layer, h);
        over |= lim > 0 && len > lim;
        total += (size_t)len;
    }
    if (!over)
        return 0;
    if ((rc = eng_defer_settle(e, s, layer)) < 0 || (rc = eng__scratch(sc, total, (size_t)kvh)) < 0)
        return rc;
    /* Key norms are computed here, on the device, for every kept key: the
     * one place they are read, and right for raw appends and swaps alike. */
    if (p->stat == SINKD_STAT_KEY_NORM && (rc = eng__stat_all(e, s, layer, SINKD_STAT_OP_KEY_NORM)) < 0)
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
                                p->stat == SINKD_STAT_NONE ? NULL : sc->score + at);
        if (rc < 0)
            return rc;
        at += (size_t)len;
    }
    rc = sinkd_policy_inst_evict(s->inst, sc->lanes, kvh);
    if (rc < 0)
        return rc;
    if (rc == SINKD_POLICY_FELL_BACK)
        eng_tell_fallback(e, s, j);
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

int eng_evict(sinkd_engine *e, eng_session *s, int32_t layer, bool append_end,
              const sinkd_job *j)
{
    const sinkd_policy_plan *p = sinkd_policy_inst_plan(s->inst);
    int32_t first = layer < 0 ? 0 : layer, last = layer < 0 ? s->geom.layers - 1 : layer;
    int rc = 0;

    /* SnapKV's "once, at the end of the prompt" is, in a conversation, at
     * the end of every append: each one is the prompt of what follows. */
    if (p->evict_at == SINKD_EVICT_NEVER || (p->evict_at == SINKD_EVICT_PREFILL && !append_end))
        return 0;
    for (int32_t l = first; l <= last && rc == 0; l++)
        rc = eng__evict_layer(e, s, l, j);
    /* After a fallback the plan is window's: p is stale. */
    if (rc == 0 && append_end)
        s->evicted_after_prefill = true;
    /* A fallback replaced the plan: the new rope mode applies from here. */
    if (rc == 0)
        rc = eng_apply_rope(e, s);
    return rc;
}
