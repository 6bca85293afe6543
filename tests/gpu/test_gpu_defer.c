/*
 * Deferred decode scores (sinkd_decode_args.defer, ops->score_flush) on the
 * CUDA backend against the CPU backend's decode with immediate scores,
 * which knows nothing of deferral. Only backend.h's contract is assumed,
 * with the entry's two slots used as the decode kernel uses them (pend_step):
 *   - a deferring call writes no score of its own: it leaves its step
 *     pending in the lane's entry (len = the lane's length);
 *   - with ADD and DECAY, a call that finds the entry full (both slots
 *     with a group of up to 4 heads, slot 0 with 5 to 8) first applies
 *     what it holds, slot 0 first, to the keys each slot names; WRITE
 *     never applies (the newest step replaces the pending one);
 *   - score_flush applies what is pending, slot 0 then slot 1, and empties
 *     the entries; on a layer with nothing pending it is a no-op;
 *   - a shape sinkd_defer_takes refuses is scored at once and leaves the
 *     block alone, and score_flush says -ENOTSUP for it.
 * Lanes hold one long lane (> 2000 keys: several decode splits) and one
 * short (< 16 keys); every pool score starts at a random positive value
 * (so ADD and DECAY start from non-zero), and a score that no applied step
 * reaches must keep it bit for bit. Outputs are poisoned with NaN before
 * every call. Relative error ||gpu - cpu|| / ||cpu|| < 1e-2 (f16/bf16,
 * DESIGN.md §6), for scores on what the steps added to the initial value
 * (check_scores).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_twin.h"
#include "half.h"

#define TOL16 1e-2
#define LAYERS 2
#define LAYER 1  /* the decode calls' layer; layer 0 never has anything pending */
#define POS_SPAN 8192 /* key positions (rope=absolute) are distinct in [0, POS_SPAN) */
#define MAX_STEPS 4   /* two full pairs of slots: one apply at step 3, both pending at the flush */
#define PAIR_G 4      /* groups of up to this many heads hold two steps an entry (backend.h) */

static float to_f32(uint16_t h, uint8_t dt)
{
    return dt == SINKD_F16 ? sinkd_f16_to_f32(h) : sinkd_bf16_to_f32(h);
}

static uint16_t from_f32(float f, uint8_t dt)
{
    return dt == SINKD_F16 ? sinkd_f32_to_f16(f) : sinkd_f32_to_bf16(f);
}

/* One case's shape. */
typedef struct dcase {
    uint8_t dt;
    int d, n_kv, G;
    uint8_t style, mode;
    int score_op;
} dcase;

#define DECAY 0.9f

/* ---- pool fixture ------------------------------------------------------------ */

/* A pool of n_seqs * n_kv lanes (one layer) on both backends. h_len holds
 * the step-1 lengths n; every lane's pages hold n + extra keys, so that
 * step j (length n + j - 1) finds its appended key already there. */
typedef struct dpool {
    sinkd_kv_pool pc, pg;
    tbuf pages, pos, score, kmin, kmax, len, page_off, page_ids;
    sinkd_lanes lc, lg;
    int32_t *h_len, *h_off, *h_ids, *h_pos;
    uint16_t *h_pages;
    float *h_score0;   /* the scores both pools start with */
    int32_t *tok, *lane; /* slot's lane and index in it (< n + extra); tok -1: no lane uses it */
    int n_seqs, n_kv, n_lanes, np, pt, d;
    uint8_t dt;
} dpool;

static void dpool_init(twin *t, dpool *p, uint8_t dt, int d, int pt, int n_seqs, int n_kv, int extra)
{
    memset(p, 0, sizeof *p);
    p->dt = dt;
    p->d = d;
    p->pt = pt;
    p->n_seqs = n_seqs;
    p->n_kv = n_kv;
    int nl = p->n_lanes = n_seqs * n_kv;
    p->h_len = malloc(nl * sizeof(int32_t));
    p->h_off = malloc((nl + 1) * sizeof(int32_t));
    int lng = twin_range(t, 0, nl - 1), shrt = (lng + twin_range(t, 1, nl - 1)) % nl; /* nl >= 2 */
    p->h_off[0] = 0;
    for (int l = 0; l < nl; l++) {
        p->h_len[l] = l == lng ? twin_range(t, 2001, 3000) : l == shrt ? twin_range(t, 1, 15)
                                                                       : twin_range(t, 16, 700);
        p->h_off[l + 1] = p->h_off[l] + (p->h_len[l] + extra + pt - 1) / pt + twin_range(t, 0, 1);
    }
    p->np = p->h_off[nl] + twin_range(t, 1, 8);
    int *perm = twin_perm(t, p->np);
    p->h_ids = malloc(p->h_off[nl] * sizeof(int32_t));
    memcpy(p->h_ids, perm, p->h_off[nl] * sizeof(int32_t));
    free(perm);

    size_t page_bytes = (size_t)2 * pt * d * 2, nel = (size_t)p->np * page_bytes / 2;
    size_t ns = (size_t)p->np * pt;
    p->h_pages = malloc(nel * 2);
    for (size_t i = 0; i < nel; i++)
        p->h_pages[i] = from_f32(twin_uniform(t, -1, 1), dt);
    /* positions: random everywhere, then distinct along each lane */
    p->h_pos = malloc(ns * 4);
    for (size_t i = 0; i < ns; i++)
        p->h_pos[i] = twin_range(t, 0, POS_SPAN - 1);
    int32_t *span = malloc(POS_SPAN * sizeof *span);
    p->tok = malloc(ns * sizeof *p->tok);
    p->lane = malloc(ns * sizeof *p->lane);
    for (size_t i = 0; i < ns; i++)
        p->tok[i] = -1;
    for (int l = 0; l < nl; l++) {
        for (int i = 0; i < POS_SPAN; i++)
            span[i] = i;
        for (int i = 0; i < p->h_len[l] + extra; i++) {
            int j = twin_range(t, i, POS_SPAN - 1), tmp = span[i];
            span[i] = span[j];
            span[j] = tmp;
            int64_t slot = (int64_t)p->h_ids[p->h_off[l] + i / pt] * pt + i % pt;
            p->h_pos[slot] = span[i];
            p->tok[slot] = i;
            p->lane[slot] = l;
        }
    }
    free(span);
    p->h_score0 = twin_rand_f32(t, ns, 0.1f, 1.0f);
    float *hz = calloc((size_t)p->np * d, 4);
    p->pages = tbuf_new(t, p->h_pages, nel * 2);
    p->pos = tbuf_new(t, p->h_pos, ns * 4);
    p->score = tbuf_new(t, p->h_score0, ns * 4);
    p->kmin = tbuf_new(t, hz, (size_t)p->np * d * 4);
    p->kmax = tbuf_new(t, hz, (size_t)p->np * d * 4);
    p->len = tbuf_new(t, p->h_len, nl * 4);
    p->page_off = tbuf_new(t, p->h_off, (nl + 1) * 4);
    p->page_ids = tbuf_new(t, p->h_ids, p->h_off[nl] * 4);
    free(hz);
    for (int b = 0; b < 2; b++) {
        *(b ? &p->pg : &p->pc) = (sinkd_kv_pool){
            .pages = b ? p->pages.g : p->pages.c,
            .pos = b ? p->pos.g : p->pos.c,
            .score = b ? p->score.g : p->score.c,
            .kmin = b ? p->kmin.g : p->kmin.c,
            .kmax = b ? p->kmax.g : p->kmax.c,
            .page_bytes = page_bytes,
            .n_pages = p->np,
            .page_tokens = pt,
            .head_dim_max = d,
            .dtype = dt,
        };
        *(b ? &p->lg : &p->lc) = (sinkd_lanes){
            .n_lanes = nl,
            .len = b ? p->len.g : p->len.c,
            .page_off = b ? p->page_off.g : p->page_off.c,
            .page_ids = b ? p->page_ids.g : p->page_ids.c,
        };
    }
}

static void dpool_free(twin *t, dpool *p)
{
    tbuf_free_list(t, (tbuf *const[]){&p->pages, &p->pos, &p->score, &p->kmin, &p->kmax, &p->len,
                                      &p->page_off, &p->page_ids, NULL});
    free(p->h_len);
    free(p->h_off);
    free(p->h_ids);
    free(p->h_pos);
    free(p->h_pages);
    free(p->h_score0);
    free(p->tok);
    free(p->lane);
}

/* Set every lane's length to h_len + @extra on both backends. */
static void dpool_set_len(twin *t, dpool *p, int extra)
{
    int32_t *l = malloc(p->n_lanes * 4);
    for (int i = 0; i < p->n_lanes; i++)
        l[i] = p->h_len[i] + extra;
    cr_assert_eq(t->cpu->ops->h2d(t->cpu, p->len.c, l, p->len.bytes), 0);
    cr_assert_eq(t->gpu->ops->h2d(t->gpu, p->len.g, l, p->len.bytes), 0);
    free(l);
}

/* GPU scores against @want (a full score array) after steps 1 .. @applied
 * of @op (step j reaches a lane's first n + j - 1 keys): on the keys some
 * applied step reaches, both sides less what the initial score alone would
 * have become are compared, so that an initial score far above a key's
 * probabilities (ADD, DECAY) does not hide an error in them; every other
 * slot (unused, or past every applied step's length) must hold its initial
 * score exactly. */
static void check_scores(const dpool *p, const float *gpu, const float *want, int op, int applied,
                         const char *what)
{
    size_t ns = (size_t)p->np * p->pt, nu = 0, moved = 0;
    float *g = malloc(ns * 4), *w = malloc(ns * 4);
    for (size_t i = 0; i < ns; i++) {
        int past = p->tok[i] < 0 ? 0 : p->tok[i] - p->h_len[p->lane[i]] + 1;
        int k = p->tok[i] < 0 ? 0 : applied - (past > 0 ? past : 0); /* steps that reached it */
        if (k <= 0) {
            moved += memcmp(&gpu[i], &p->h_score0[i], 4) != 0;
            continue;
        }
        double s0 = p->h_score0[i];
        double base = op == SINKD_SCORE_ADD ? s0 : op == SINKD_SCORE_DECAY ? pow(DECAY, k) * s0 : 0;
        g[nu] = (float)(gpu[i] - base);
        w[nu++] = (float)(want[i] - base);
    }
    double e = rel_err(g, w, nu);
    cr_expect(e < TOL16, "%s: scores of %zu scored slots, relative error %.3g", what, nu, e);
    cr_expect_eq(moved, 0, "%s: %zu scores no applied step reaches changed", what, moved);
    free(g);
    free(w);
}

/* Both pools' scores (caller frees). */
static void get_scores(twin *t, dpool *p, float **cpu, float **gpu)
{
    tbuf_get(t, &p->score, (void **)cpu, (void **)gpu);
}

/* ---- deferral blocks ---------------------------------------------------------- */

typedef struct dblocks {
    void *blk[3];     /* one per sequence, GPU */
    void **dev;       /* the GPU array of those pointers */
    size_t bytes, lse_off, len_off;
} dblocks;

static void dblocks_init(twin *t, dblocks *b, int n_seqs, int n_kv, int G, int d)
{
    sinkd_backend *g = t->gpu;
    memset(b, 0, sizeof *b);
    b->bytes = sinkd_defer_bytes(LAYERS, n_kv, G, d, 2);
    b->lse_off = sinkd_defer_lse_off(LAYERS, n_kv, G, d, 2);
    b->len_off = sinkd_defer_len_off(LAYERS, n_kv, G, d, 2);
    for (int s = 0; s < n_seqs; s++) {
        cr_assert_eq(g->ops->alloc(g, &b->blk[s], b->bytes), 0);
        cr_assert_eq(g->ops->memset0(g, b->blk[s], b->bytes), 0);
    }
    cr_assert_eq(g->ops->alloc(g, (void **)&b->dev, n_seqs * sizeof(void *)), 0);
    cr_assert_eq(g->ops->h2d(g, b->dev, b->blk, n_seqs * sizeof(void *)), 0);
}

static void dblocks_free(twin *t, dblocks *b, int n_seqs)
{
    for (int s = 0; s < n_seqs; s++)
        t->gpu->ops->free(t->gpu, b->blk[s]);
    t->gpu->ops->free(t->gpu, b->dev);
}

/* Sequence @s's len entries [LAYERS][n_kv][2] (caller frees). */
static int32_t *dblocks_lens(twin *t, const dblocks *b, int s, int n_kv)
{
    size_t bytes = (size_t)LAYERS * n_kv * 2 * 4;
    int32_t *h = malloc(bytes);
    cr_assert_eq(t->gpu->ops->sync(t->gpu), 0, "gpu sync (a kernel failed)");
    cr_assert_eq(t->gpu->ops->d2h(t->gpu, h, (char *)b->blk[s] + b->len_off, bytes), 0);
    return h;
}

/* What layer LAYER's entries hold after each step, as the decode kernel
 * fills them: slot[i] the step pending in slot i (0: empty), applied the
 * last step whose scores are in the pool (every earlier one is too, in
 * order, as slot 0 is applied first). */
typedef struct pending {
    int slot[2];
    int applied;
} pending;

static void pend_step(pending *m, const dcase *c, int step)
{
    if (c->score_op == SINKD_SCORE_WRITE) {
        m->slot[0] = step; /* the newest replaces what was pending */
        m->slot[1] = 0;
    } else if (c->G <= PAIR_G) {
        if (m->slot[1]) {
            m->applied = m->slot[1];
            m->slot[0] = step;
            m->slot[1] = 0;
        } else {
            m->slot[m->slot[0] ? 1 : 0] = step;
        }
    } else {
        if (m->slot[0])
            m->applied = m->slot[0];
        m->slot[0] = step;
    }
}

/* Every sequence's entries: layer LAYER's slot i of lane h holds
 * h_len + @slot[i] - 1 (step slot[i]'s length), or 0 where slot[i] is 0;
 * layer 0's all 0. @slot NULL: nothing pending anywhere. */
static void check_lens(twin *t, const dblocks *b, const dpool *p, const int *slot, const char *what)
{
    size_t bad = 0;
    for (int s = 0; s < p->n_seqs; s++) {
        int32_t *h = dblocks_lens(t, b, s, p->n_kv);
        for (int x = 0; x < LAYERS * p->n_kv; x++)
            for (int i = 0; i < 2; i++) {
                int l = s * p->n_kv + x % p->n_kv, step = slot && x / p->n_kv == LAYER ? slot[i] : 0;
                bad += h[2 * x + i] != (step ? p->h_len[l] + step - 1 : 0);
            }
        free(h);
    }
    cr_expect_eq(bad, 0, "%s: %zu deferral len entries differ from the contract", what, bad);
}

/* ---- decode and flush ------------------------------------------------------------ */

typedef struct dstep {
    const dcase *c;
    sinkd_rope rope;
    tbuf q, qp, out;
} dstep;

/* One decode step on the CPU, immediate, and unless @cpu_only on the GPU
 * with @defer (NULL: immediate too); compares the outputs. */
static void decode_step(twin *t, dpool *p, dstep *st, bool cpu_only, void *const *defer,
                        const char *what)
{
    const dcase *c = st->c;
    sinkd_backend *be[2] = {t->cpu, t->gpu};
    size_t qn = (size_t)p->n_seqs * c->n_kv * c->G * p->d;
    float *nan = malloc(qn * 4);
    memset(nan, 0xff, qn * 4);
    cr_assert_eq(t->cpu->ops->h2d(t->cpu, st->out.c, nan, qn * 4), 0);
    cr_assert_eq(t->gpu->ops->h2d(t->gpu, st->out.g, nan, qn * 4), 0);
    free(nan);
    for (int b = 0; b < (cpu_only ? 1 : 2); b++) {
        sinkd_decode_args a = {.pool = b ? &p->pg : &p->pc, .lanes = b ? p->lg : p->lc,
                               .n_seqs = p->n_seqs, .n_q_heads = c->n_kv * c->G,
                               .n_kv_heads = c->n_kv, .head_dim = p->d, .rope = st->rope,
                               .softmax_scale = 1.0f / sqrtf((float)p->d),
                               .q = b ? st->q.g : st->q.c, .out = b ? st->out.g : st->out.c,
                               .q_pos = b ? st->qp.g : st->qp.c, .score_op = c->score_op,
                               .score_decay = DECAY, .defer = b ? defer : NULL,
                               .defer_layer = LAYER, .defer_layers = LAYERS};
        cr_assert_eq(be[b]->ops->attn_decode(be[b], &a), 0, "%s: decode on %s", what, b ? "gpu" : "cpu");
    }
    if (cpu_only)
        return;
    double e = tbuf_rel_err(t, &st->out, qn);
    cr_expect(e < TOL16, "%s: output relative error %.3g", what, e);
}

/* Sequence @s's score_flush arguments for @layer. */
static sinkd_score_flush_args flush_args(const dpool *p, const dstep *st, void *blk, int s, int layer)
{
    const dcase *c = st->c;
    return (sinkd_score_flush_args){
        .pool = &p->pg,
        .lanes = {.n_lanes = c->n_kv,
                  .len = (const int32_t *)p->len.g + s * c->n_kv,
                  .page_off = (const int32_t *)p->page_off.g + s * c->n_kv,
                  .page_ids = p->page_ids.g},
        .n_q_heads = c->n_kv * c->G, .n_kv_heads = c->n_kv, .head_dim = p->d,
        .layer = layer, .layers = LAYERS, .rope = st->rope, .defer = blk,
        .score_op = c->score_op, .score_decay = DECAY};
}

/* Flush @layer of every sequence. */
static void flush_layer(twin *t, const dpool *p, const dstep *st, const dblocks *b, int layer,
                        const char *what)
{
    for (int s = 0; s < p->n_seqs; s++) {
        sinkd_score_flush_args fa = flush_args(p, st, b->blk[s], s, layer);
        cr_assert_eq(t->gpu->ops->score_flush(t->gpu, &fa), 0, "%s: flush seq %d layer %d", what, s, layer);
    }
}

/* Flush every sequence's layer 0 (nothing pending) and LAYER. */
static void flush_all(twin *t, const dpool *p, const dstep *st, const dblocks *b, const char *what)
{
    for (int layer = 0; layer < LAYERS; layer++)
        flush_layer(t, p, st, b, layer, what);
}

static sinkd_rope case_rope(twin *t, const dcase *c)
{
    return (sinkd_rope){.theta = twin_range(t, 0, 1) ? 10000.0f : 500000.0f,
                        .scale = twin_range(t, 0, 2) == 0 ? 2.0f : 1.0f,
                        .style = c->style, .mode = c->mode};
}

/* A fresh random query; @qpos at or past every key position (rope=absolute). */
static void step_init(twin *t, dstep *st, const dcase *c, const dpool *p, const int32_t *qpos)
{
    size_t qn = (size_t)p->n_seqs * c->n_kv * c->G * p->d;
    float *hq = twin_rand_f32(t, qn, -3, 3);
    st->c = c;
    st->q = tbuf_new(t, hq, qn * 4);
    st->qp = tbuf_new(t, qpos, p->n_seqs * 4);
    st->out = tbuf_new(t, NULL, qn * 4);
    free(hq);
}

static void step_free(twin *t, dstep *st)
{
    tbuf_free(t, &st->q);
    tbuf_free(t, &st->qp);
    tbuf_free(t, &st->out);
}

/* Step @j (from 1) of a sequence: a fresh query at positions qpos + j - 1,
 * the lanes at h_len + j - 1 tokens. */
static void step_begin(twin *t, dpool *p, dstep *st, const dcase *c, const int32_t *qpos, int j,
                       sinkd_rope rope)
{
    int32_t qp[3];
    for (int s = 0; s < p->n_seqs; s++)
        qp[s] = qpos[s] + j - 1;
    st->rope = rope;
    step_init(t, st, c, p, qp);
    dpool_set_len(t, p, j - 1);
}

/* The deferral sequence of one case: @K steps deferred on the GPU and
 * immediate on the CPU, step j with lengths n + j - 1 and query positions
 * q_pos + j - 1, then a flush of layer 0 (a no-op) and of LAYER. After
 * every step the entries must be as pend_step says and the GPU scores
 * those of the CPU after the last step applied (the CPU keeps a copy after
 * each), so that a step applied at the wrong call, twice or never, or in
 * the wrong order (DECAY), shows. */
static void defer_case(twin *t, const dcase *c, int K)
{
    int n_seqs = twin_range(t, 1, 3), pt = twin_range(t, 0, 3) == 0 ? 32 : 16;
    dpool p;
    dpool_init(t, &p, c->dt, c->d, pt, n_seqs, c->n_kv, K - 1);
    cr_assert(sinkd_defer_takes(c->G, c->d, pt));
    dblocks b;
    dblocks_init(t, &b, n_seqs, c->n_kv, c->G, c->d);
    int32_t qpos[3];
    for (int s = 0; s < n_seqs; s++)
        qpos[s] = POS_SPAN + twin_range(t, 0, 500);
    sinkd_rope rope = case_rope(t, c);
    char what[192];
    snprintf(what, sizeof what, "K=%d %s d=%d pt=%d seqs=%d kv=%d G=%d op=%d rope=%d/%d", K,
             sinkd_dtype_name(c->dt), c->d, pt, n_seqs, c->n_kv, c->G, c->score_op, c->style, c->mode);

    dstep st[MAX_STEPS];
    float *cpu_after[MAX_STEPS + 1] = {p.h_score0}; /* the CPU's scores after step j */
    float *g = NULL;
    pending m = {{0, 0}, 0};
    for (int j = 1; j <= K; j++) {
        char at[224];
        snprintf(at, sizeof at, "%s, step %d", what, j);
        step_begin(t, &p, &st[j - 1], c, qpos, j, rope);
        decode_step(t, &p, &st[j - 1], false, b.dev, at);
        pend_step(&m, c, j);
        check_lens(t, &b, &p, m.slot, at);
        free(g);
        get_scores(t, &p, &cpu_after[j], &g);
        check_scores(&p, g, cpu_after[m.applied], c->score_op, m.applied, at);
    }

    /* layer 0 has nothing pending: its flush changes no score and no entry */
    char at[224];
    snprintf(at, sizeof at, "%s, flush of layer 0", what);
    flush_layer(t, &p, &st[0], &b, 0, at);
    float *c0, *g0;
    get_scores(t, &p, &c0, &g0);
    size_t moved = 0;
    for (size_t i = 0; i < (size_t)p.np * p.pt; i++)
        moved += memcmp(&g0[i], &g[i], 4) != 0;
    cr_expect_eq(moved, 0, "%s: changed %zu scores", at, moved);
    check_lens(t, &b, &p, m.slot, at);

    flush_layer(t, &p, &st[0], &b, LAYER, what);
    float *cf, *gf;
    get_scores(t, &p, &cf, &gf);
    check_scores(&p, gf, cpu_after[K], c->score_op, K, what);
    check_lens(t, &b, &p, NULL, what);
    free(c0);
    free(g0);
    free(cf);
    free(gf);
    free(g);
    for (int j = 1; j <= K; j++) {
        free(cpu_after[j]);
        step_free(t, &st[j - 1]);
    }
    dblocks_free(t, &b, n_seqs);
    dpool_free(t, &p);
}

/* Every value of each field at least twice, not the cross product. */
static const dcase cases[] = {
    {SINKD_F16, 128, 2, 4, SINKD_ROPE_ADJACENT, SINKD_ROPE_ABSOLUTE, SINKD_SCORE_ADD},
    {SINKD_BF16, 64, 8, 1, SINKD_ROPE_NEOX, SINKD_ROPE_CACHE, SINKD_SCORE_DECAY},
    {SINKD_F16, 64, 2, 8, SINKD_ROPE_NEOX, SINKD_ROPE_ABSOLUTE, SINKD_SCORE_WRITE},
    {SINKD_BF16, 128, 8, 4, SINKD_ROPE_ADJACENT, SINKD_ROPE_CACHE, SINKD_SCORE_ADD},
    {SINKD_F16, 128, 8, 8, SINKD_ROPE_NEOX, SINKD_ROPE_CACHE, SINKD_SCORE_DECAY},
    {SINKD_BF16, 128, 2, 1, SINKD_ROPE_ADJACENT, SINKD_ROPE_ABSOLUTE, SINKD_SCORE_WRITE},
    {SINKD_F16, 64, 8, 4, SINKD_ROPE_ADJACENT, SINKD_ROPE_ABSOLUTE, SINKD_SCORE_DECAY},
    {SINKD_BF16, 64, 2, 8, SINKD_ROPE_ADJACENT, SINKD_ROPE_CACHE, SINKD_SCORE_ADD},
    {SINKD_F16, 128, 2, 1, SINKD_ROPE_NEOX, SINKD_ROPE_ABSOLUTE, SINKD_SCORE_ADD},
    {SINKD_BF16, 128, 2, 8, SINKD_ROPE_NEOX, SINKD_ROPE_ABSOLUTE, SINKD_SCORE_DECAY},
    {SINKD_F16, 64, 8, 1, SINKD_ROPE_ADJACENT, SINKD_ROPE_CACHE, SINKD_SCORE_WRITE},
    {SINKD_BF16, 64, 2, 4, SINKD_ROPE_NEOX, SINKD_ROPE_CACHE, SINKD_SCORE_WRITE},
};
#define N_CASES (sizeof cases / sizeof cases[0])

/* K = 2 with a pair group fills both slots, 3 applies them in the call
 * that stores its own step, 4 leaves both pending again for the flush;
 * a group of 5 to 8 applies at every step past the first. */
Test(gpu_defer, steps_then_flush)
{
    TWIN_OR_SKIP(t);
    cr_assert(t.gpu->ops->score_flush && !t.cpu->ops->score_flush);
    for (size_t i = 0; i < N_CASES; i++)
        for (int K = 2; K <= MAX_STEPS; K++)
            defer_case(&t, &cases[i], K);
    twin_close(&t);
}

/* One step deferred: only the flush scores it. */
Test(gpu_defer, flush_only)
{
    TWIN_OR_SKIP(t);
    for (size_t i = 0; i < N_CASES; i++)
        defer_case(&t, &cases[i], 1);
    twin_close(&t);
}

/* ---- rows mode ------------------------------------------------------------------------ */

/* @dev's @n floats or ints, copied to the host (caller frees). */
static void *gpu_copy(twin *t, const void *dev, size_t bytes)
{
    void *h = malloc(bytes);
    cr_assert_eq(t->gpu->ops->sync(t->gpu), 0, "gpu sync (a kernel failed)");
    cr_assert_eq(t->gpu->ops->d2h(t->gpu, h, dev, bytes), 0);
    return h;
}

/* Check the GPU row after a call that applied step @step (0: none): lane
 * l's row_len is step's length (0 when none) and its row holds, on those
 * keys, the CPU's probabilities of that step (@want: the CPU's scores after
 * it); every other entry of the row is as it was (@before). The pool's
 * scores are never touched in rows mode. */
static void check_row(twin *t, const dpool *p, const float *row, const int32_t *row_len,
                      const float *before, const float *want, int step, const char *what)
{
    size_t ns = (size_t)p->np * p->pt, nu = 0, moved = 0, bad_len = 0;
    float *g = malloc(ns * 4), *w = malloc(ns * 4);
    for (int l = 0; l < p->n_lanes; l++)
        bad_len += row_len[l] != (step ? p->h_len[l] + step - 1 : 0);
    for (size_t i = 0; i < ns; i++) {
        bool in = step && p->tok[i] >= 0 && p->tok[i] < p->h_len[p->lane[i]] + step - 1;
        if (!in) {
            moved += memcmp(&row[i], &before[i], 4) != 0;
            continue;
        }
        g[nu] = row[i];
        w[nu++] = want[i];
    }
    cr_expect_eq(bad_len, 0, "%s: %zu row lengths differ (step %d)", what, bad_len, step);
    cr_expect_eq(moved, 0, "%s: %zu row entries outside the step's keys changed", what, moved);
    if (step) {
        double e = rel_err(g, w, nu);
        cr_expect(e < TOL16, "%s: row of step %d, %zu keys, relative error %.3g", what, step, nu, e);
    }
    float *sc = gpu_copy(t, p->pg.score, ns * 4);
    size_t touched = 0;
    for (size_t i = 0; i < ns; i++)
        touched += memcmp(&sc[i], &p->h_score0[i], 4) != 0;
    cr_expect_eq(touched, 0, "%s: rows mode changed %zu pool scores", what, touched);
    free(sc);
    free(g);
    free(w);
}

/* K steps in rows mode on the GPU against immediate WRITE steps on the
 * CPU: call j applies step j - 1 (one step an entry, whatever the group),
 * then the flush applies step K. */
static void rows_case(twin *t, const dcase *cc, int K)
{
    dcase c = *cc;
    c.score_op = SINKD_SCORE_WRITE;
    int n_seqs = twin_range(t, 1, 3), pt = twin_range(t, 0, 3) == 0 ? 32 : 16;
    dpool p;
    dpool_init(t, &p, c.dt, c.d, pt, n_seqs, c.n_kv, K - 1);
    dblocks b;
    dblocks_init(t, &b, n_seqs, c.n_kv, c.G, c.d);
    size_t ns = (size_t)p.np * p.pt;
    float *nan = malloc(ns * 4);
    memset(nan, 0xff, ns * 4);
    int32_t *junk = malloc(p.n_lanes * 4);
    for (int l = 0; l < p.n_lanes; l++)
        junk[l] = -7;
    void *row, *row_len;
    sinkd_backend *gb = t->gpu;
    cr_assert_eq(gb->ops->alloc(gb, &row, ns * 4), 0);
    cr_assert_eq(gb->ops->alloc(gb, &row_len, p.n_lanes * 4), 0);
    cr_assert_eq(gb->ops->h2d(gb, row, nan, ns * 4), 0);
    int32_t qpos[3];
    for (int s = 0; s < n_seqs; s++)
        qpos[s] = POS_SPAN + twin_range(t, 0, 500);
    sinkd_rope rope = case_rope(t, &c);
    char what[192];
    snprintf(what, sizeof what, "rows K=%d %s d=%d pt=%d seqs=%d kv=%d G=%d rope=%d/%d", K,
             sinkd_dtype_name(c.dt), c.d, pt, n_seqs, c.n_kv, c.G, c.style, c.mode);

    dstep st[MAX_STEPS];
    float *cpu_after[MAX_STEPS + 1] = {p.h_score0};
    float *before = nan;
    bool own = false;
    for (int j = 1; j <= K; j++) {
        char at[224];
        snprintf(at, sizeof at, "%s, step %d", what, j);
        step_begin(t, &p, &st[j - 1], &c, qpos, j, rope);
        cr_assert_eq(gb->ops->h2d(gb, row_len, junk, p.n_lanes * 4), 0);
        /* the CPU scores at once: its WRITE leaves step j's p in its pool */
        decode_step(t, &p, &st[j - 1], true, NULL, at);
        cpu_after[j] = malloc(ns * 4);
        memcpy(cpu_after[j], p.score.c, ns * 4); /* CPU "device" memory is host memory */
        sinkd_decode_args a = {.pool = &p.pg, .lanes = p.lg, .n_seqs = n_seqs,
                               .n_q_heads = c.n_kv * c.G, .n_kv_heads = c.n_kv, .head_dim = p.d,
                               .rope = rope, .softmax_scale = 1.0f / sqrtf((float)p.d),
                               .q = st[j - 1].q.g, .out = st[j - 1].out.g, .q_pos = st[j - 1].qp.g,
                               .score_op = SINKD_SCORE_WRITE, .defer = b.dev, .defer_layer = LAYER,
                               .defer_layers = LAYERS, .row = row, .row_len = row_len};
        cr_assert_eq(gb->ops->attn_decode(gb, &a), 0, "%s: decode", at);
        double e = tbuf_rel_err(t, &st[j - 1].out, (size_t)n_seqs * c.n_kv * c.G * p.d);
        cr_expect(e < TOL16, "%s: output relative error %.3g", at, e);
        int slot[2] = {j, 0};
        check_lens(t, &b, &p, slot, at);
        float *gr = gpu_copy(t, row, ns * 4);
        int32_t *gl = gpu_copy(t, row_len, p.n_lanes * 4);
        check_row(t, &p, gr, gl, before, cpu_after[j - 1], j - 1, at);
        if (own)
            free(before);
        before = gr;
        own = true;
        free(gl);
    }
    /* the flush writes step K's row; layer 0 has none */
    for (int s = 0; s < n_seqs; s++) {
        sinkd_score_flush_args fa = flush_args(&p, &st[0], b.blk[s], s, LAYER);
        fa.score_op = SINKD_SCORE_WRITE;
        fa.row = row;
        fa.row_len = (int32_t *)row_len + s * c.n_kv;
        cr_assert_eq(gb->ops->score_flush(gb, &fa), 0, "%s: flush seq %d", what, s);
    }
    float *gr = gpu_copy(t, row, ns * 4);
    int32_t *gl = gpu_copy(t, row_len, p.n_lanes * 4);
    char at[224];
    snprintf(at, sizeof at, "%s, flush", what);
    check_row(t, &p, gr, gl, before, cpu_after[K], K, at);
    check_lens(t, &b, &p, NULL, at);
    free(gr);
    free(gl);
    if (own)
        free(before);
    for (int j = 1; j <= K; j++) {
        free(cpu_after[j]);
        step_free(t, &st[j - 1]);
    }
    gb->ops->free(gb, row);
    gb->ops->free(gb, row_len);
    free(nan);
    free(junk);
    dblocks_free(t, &b, n_seqs);
    dpool_free(t, &p);
}

Test(gpu_defer, rows_then_flush)
{
    TWIN_OR_SKIP(t);
    for (size_t i = 0; i < N_CASES; i++)
        rows_case(&t, &cases[i], 1 + (int)(i % MAX_STEPS));
    twin_close(&t);
}

/* One sequence of @c with its block and a step at POS_SPAN. */
static void one_seq(twin *t, const dcase *c, dpool *p, dblocks *b, dstep *st)
{
    int32_t qpos[1] = {POS_SPAN};

    dpool_init(t, p, c->dt, c->d, 16, 1, c->n_kv, 0);
    dblocks_init(t, b, 1, c->n_kv, c->G, c->d);
    st->rope = case_rope(t, c);
    step_init(t, st, c, p, qpos);
}

/* Rows mode is a deferred WRITE: anything else is refused, and a shape
 * that never defers cannot have rows. */
Test(gpu_defer, rows_rejects)
{
    TWIN_OR_SKIP(t);
    sinkd_backend *g = t.gpu;
    for (int rep = 0; rep < 2; rep++) {
        dcase c = cases[0];
        c.G = rep ? 16 : 4;
        c.score_op = SINKD_SCORE_WRITE;
        dpool p;
        dblocks b;
        dstep st;
        one_seq(&t, &c, &p, &b, &st);
        void *row, *row_len;
        cr_assert_eq(g->ops->alloc(g, &row, (size_t)p.np * p.pt * 4), 0);
        cr_assert_eq(g->ops->alloc(g, &row_len, (size_t)p.n_lanes * 4), 0);
        const sinkd_decode_args ok = {
            .pool = &p.pg, .lanes = p.lg, .n_seqs = 1, .n_q_heads = c.n_kv * c.G,
            .n_kv_heads = c.n_kv, .head_dim = p.d, .rope = st.rope, .softmax_scale = 0.125f,
            .q = st.q.g, .out = st.out.g, .q_pos = st.qp.g, .score_op = SINKD_SCORE_WRITE,
            .defer = b.dev, .defer_layer = LAYER, .defer_layers = LAYERS, .row = row,
            .row_len = row_len};
        sinkd_decode_args a = ok;
        if (rep) {
            cr_expect_eq(g->ops->attn_decode(g, &a), -ENOTSUP, "rows with a group of 16");
        } else {
            a.score_op = SINKD_SCORE_ADD;
            cr_expect_eq(g->ops->attn_decode(g, &a), -EINVAL, "rows with ADD");
            a = ok;
            a.defer = NULL;
            cr_expect_eq(g->ops->attn_decode(g, &a), -EINVAL, "rows without a block");
            a = ok;
            a.row_len = NULL;
            cr_expect_eq(g->ops->attn_decode(g, &a), -EINVAL, "rows without row_len");
            sinkd_score_flush_args fa = flush_args(&p, &st, b.blk[0], 0, LAYER);
            fa.row = row;
            fa.score_op = SINKD_SCORE_WRITE;
            cr_expect_eq(g->ops->score_flush(g, &fa), -EINVAL, "flush rows without row_len");
            fa.row_len = row_len;
            fa.score_op = SINKD_SCORE_DECAY;
            cr_expect_eq(g->ops->score_flush(g, &fa), -EINVAL, "flush rows with DECAY");
            a = ok;
            cr_expect_eq(g->ops->attn_decode(g, &a), 0, "a good rows call");
            cr_expect_eq(g->ops->sync(g), 0);
        }
        /* the CPU never defers: rows are not for it */
        sinkd_decode_args ac = ok;
        ac.pool = &p.pc;
        ac.lanes = p.lc;
        ac.q = st.q.c;
        ac.out = st.out.c;
        ac.q_pos = st.qp.c;
        cr_expect_eq(t.cpu->ops->attn_decode(t.cpu, &ac), -ENOTSUP, "rows on the CPU");
        g->ops->free(g, row);
        g->ops->free(g, row_len);
        step_free(&t, &st);
        dblocks_free(&t, &b, 1);
        dpool_free(&t, &p);
    }
    twin_close(&t);
}

/* ---- the flush kernel alone -------------------------------------------------------- */

/* x rotated in place at @pos (double angles, the CPU twin's formula). */
static void host_rope(float *x, int d, int64_t pos, const sinkd_rope *r)
{
    for (int i = 0; i < d / 2; i++) {
        int a = r->style == SINKD_ROPE_NEOX ? i : 2 * i, b = r->style == SINKD_ROPE_NEOX ? i + d / 2 : 2 * i + 1;
        double ang = (double)pos * (pow((double)r->theta, -2.0 * i / d) / (double)r->scale);
        double cs = cos(ang), sn = sin(ang), x0 = x[a], x1 = x[b];
        x[a] = (float)(x0 * cs - x1 * sn);
        x[b] = (float)(x0 * sn + x1 * cs);
    }
}

/* A block written on the host as backend.h lays it out, flushed, against
 * the CPU's scores after as many immediate steps: no dependence on the
 * decode side of deferral. @slots 1: step 1 (length n) in slot 0; 2: steps
 * 1 and 2 (n, n + 1, different queries) in slots 0 and 1, as a pair group
 * leaves them (the flush takes both slots whatever the group). Whatever is
 * not pending (layer 0's q and lse, an empty slot 1's) is NaN, so a flush
 * that reads it shows. */
static void handmade_case(twin *t, const dcase *c, int slots)
{
    int n_seqs = twin_range(t, 1, 3), d = c->d, G = c->G, n_kv = c->n_kv, nq = n_kv * G;
    dpool p;
    dpool_init(t, &p, c->dt, d, 16, n_seqs, n_kv, slots - 1);
    dblocks b;
    dblocks_init(t, &b, n_seqs, n_kv, G, d);
    int32_t qpos[3], qp[3];
    for (int s = 0; s < n_seqs; s++)
        qpos[s] = POS_SPAN + twin_range(t, 0, 500);
    sinkd_rope rope = case_rope(t, c);
    dstep st[2];
    for (int j = 0; j < slots; j++) {
        for (int s = 0; s < n_seqs; s++)
            qp[s] = qpos[s] + j;
        st[j].rope = rope;
        step_init(t, &st[j], c, &p, qp);
        dpool_set_len(t, &p, j);
        decode_step(t, &p, &st[j], true, NULL, "handmade: cpu reference");
    }

    const double qscale = 1.0 / sqrt((double)d) * 1.4426950408889634;
    unsigned char *blk = malloc(b.bytes);
    float *qr = malloc((size_t)G * d * 4), *kr = malloc((size_t)d * 4);
    for (int s = 0; s < n_seqs; s++) {
        memset(blk, 0xff, b.bytes);
        uint16_t *bq = (uint16_t *)blk;
        float *blse = (float *)(blk + b.lse_off);
        int32_t *blen = (int32_t *)(blk + b.len_off);
        memset(blen, 0, (size_t)LAYERS * n_kv * 2 * 4);
        for (int h = 0; h < n_kv; h++) {
            int l = s * n_kv + h, x = LAYER * n_kv + h;
            for (int j = 0; j < slots; j++) {
                const float *hq = st[j].q.c; /* CPU "device" memory is host memory */
                size_t e = (size_t)x * 2 + j; /* the entry's slot j */
                int n = p.h_len[l] + j;
                blen[e] = n;
                for (int g = 0; g < G; g++) {
                    float *r = qr + (size_t)g * d;
                    memcpy(r, hq + ((size_t)s * nq + (size_t)h * G + g) * d, (size_t)d * 4);
                    host_rope(r, d, c->mode == SINKD_ROPE_CACHE ? n - 1 : qpos[s] + j, &rope);
                    for (int u = 0; u < d; u++) {
                        uint16_t v = from_f32((float)(r[u] * qscale), c->dt);
                        bq[(e * G + g) * d + u] = v;
                        r[u] = to_f32(v, c->dt);
                    }
                }
                double *lg = malloc((size_t)G * n * sizeof *lg);
                for (int i = 0; i < n; i++) {
                    int64_t slot = (int64_t)p.h_ids[p.h_off[l] + i / p.pt] * p.pt + i % p.pt;
                    const uint16_t *k = p.h_pages + (size_t)(slot / p.pt) * 2 * p.pt * d + (size_t)(slot % p.pt) * d;
                    for (int u = 0; u < d; u++)
                        kr[u] = to_f32(k[u], c->dt);
                    host_rope(kr, d, c->mode == SINKD_ROPE_CACHE ? i : p.h_pos[slot], &rope);
                    for (int g = 0; g < G; g++) {
                        double a = 0;
                        for (int u = 0; u < d; u++)
                            a += (double)qr[(size_t)g * d + u] * kr[u];
                        lg[(size_t)g * n + i] = a;
                    }
                }
                for (int g = 0; g < G; g++) {
                    double mx = -INFINITY, sum = 0;
                    for (int i = 0; i < n; i++)
                        mx = fmax(mx, lg[(size_t)g * n + i]);
                    for (int i = 0; i < n; i++)
                        sum += exp2(lg[(size_t)g * n + i] - mx);
                    blse[e * G + g] = (float)(mx + log2(sum));
                }
                free(lg);
            }
        }
        cr_assert_eq(t->gpu->ops->h2d(t->gpu, b.blk[s], blk, b.bytes), 0);
    }
    free(blk);
    free(qr);
    free(kr);

    char what[160];
    snprintf(what, sizeof what, "handmade block, %d slot(s), %s d=%d seqs=%d kv=%d G=%d op=%d rope=%d/%d",
             slots, sinkd_dtype_name(c->dt), d, n_seqs, n_kv, G, c->score_op, c->style, c->mode);
    flush_all(t, &p, &st[0], &b, what);
    float *cf, *gf;
    get_scores(t, &p, &cf, &gf);
    check_scores(&p, gf, cf, c->score_op, slots, what);
    free(cf);
    free(gf);
    check_lens(t, &b, &p, NULL, what);
    for (int j = 0; j < slots; j++)
        step_free(t, &st[j]);
    dblocks_free(t, &b, n_seqs);
    dpool_free(t, &p);
}

Test(gpu_defer, flush_handmade_block)
{
    TWIN_OR_SKIP(t);
    for (size_t i = 0; i < N_CASES; i++)
        for (int slots = 1; slots <= 2; slots++)
            handmade_case(&t, &cases[i], slots);
    twin_close(&t);
}

/* ---- shapes that do not defer, bad arguments ----------------------------------------- */

/* A group of 16 (sinkd_defer_takes refuses it): defer set, scored at once,
 * the block left alone, and nothing a flush could take. */
Test(gpu_defer, group16_scores_at_once)
{
    TWIN_OR_SKIP(t);
    for (int rep = 0; rep < 4; rep++) {
        dcase c = {rep & 1 ? SINKD_BF16 : SINKD_F16, rep & 2 ? 128 : 64, 2, 16,
                   (uint8_t)twin_range(&t, 0, 1), (uint8_t)twin_range(&t, 0, 1), 1 + rep % 3};
        cr_assert(!sinkd_defer_takes(c.G, c.d, 16));
        int n_seqs = twin_range(&t, 1, 3);
        dpool p;
        dpool_init(&t, &p, c.dt, c.d, 16, n_seqs, c.n_kv, 0);
        dblocks b;
        dblocks_init(&t, &b, n_seqs, c.n_kv, c.G, c.d);
        int32_t qpos[3];
        for (int s = 0; s < n_seqs; s++)
            qpos[s] = POS_SPAN + twin_range(&t, 0, 500);
        dstep st;
        st.rope = case_rope(&t, &c);
        step_init(&t, &st, &c, &p, qpos);
        char what[128];
        snprintf(what, sizeof what, "group 16 %s d=%d seqs=%d op=%d rope=%d/%d", sinkd_dtype_name(c.dt),
                 c.d, n_seqs, c.score_op, c.style, c.mode);
        decode_step(&t, &p, &st, false, b.dev, what);
        float *cs, *gs;
        get_scores(&t, &p, &cs, &gs);
        check_scores(&p, gs, cs, c.score_op, 1, what);
        free(cs);
        free(gs);
        check_lens(&t, &b, &p, NULL, what);
        sinkd_score_flush_args fa = flush_args(&p, &st, b.blk[0], 0, LAYER);
        cr_expect_eq(t.gpu->ops->score_flush(t.gpu, &fa), -ENOTSUP, "%s: flush", what);
        step_free(&t, &st);
        dblocks_free(&t, &b, n_seqs);
        dpool_free(&t, &p);
    }
    twin_close(&t);
}

Test(gpu_defer, flush_rejects_bad_arguments)
{
    TWIN_OR_SKIP(t);
    dcase c = cases[0];
    dpool p;
    dblocks b;
    dstep st;
    one_seq(&t, &c, &p, &b, &st);
    sinkd_backend *g = t.gpu;
    const sinkd_score_flush_args ok = flush_args(&p, &st, b.blk[0], 0, LAYER);
    sinkd_score_flush_args a = ok;
    a.defer = NULL;
    cr_expect_eq(g->ops->score_flush(g, &a), -EINVAL, "NULL block");
    a = ok;
    a.layer = LAYERS;
    cr_expect_eq(g->ops->score_flush(g, &a), -EINVAL, "layer == layers");
    a = ok;
    a.layer = -1;
    cr_expect_eq(g->ops->score_flush(g, &a), -EINVAL, "layer < 0");
    a = ok;
    a.score_op = SINKD_SCORE_NONE;
    cr_expect_eq(g->ops->score_flush(g, &a), -EINVAL, "score_op NONE");
    a = ok;
    a.lanes.n_lanes = c.n_kv + 1;
    cr_expect_eq(g->ops->score_flush(g, &a), -EINVAL, "lanes != n_kv_heads");
    a = ok;
    a.pool = NULL;
    cr_expect_eq(g->ops->score_flush(g, &a), -EINVAL, "NULL pool");
    cr_expect_eq(g->ops->score_flush(g, NULL), -EINVAL, "NULL arguments");
    /* a zeroed block holds nothing: the call is a no-op */
    cr_expect_eq(g->ops->score_flush(g, &ok), 0, "empty block");
    float *cs, *gs;
    get_scores(&t, &p, &cs, &gs);
    check_scores(&p, gs, p.h_score0, c.score_op, 0, "flush of an empty block");
    free(cs);
    free(gs);
    check_lens(&t, &b, &p, NULL, "flush of an empty block");
    step_free(&t, &st);
    dblocks_free(&t, &b, 1);
    dpool_free(&t, &p);
    twin_close(&t);
}
