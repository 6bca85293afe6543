/*
 * The CUDA policy-statistics ops (ops->stat in every mode, ops->stat_rules,
 * ops->topk_tokens)
 * against their CPU twin (kernels/cpu/stats.c) on random data from a fresh
 * seed (logged): ragged lanes (empty, one token, a few tokens, several
 * chunks of the kernels' blocks, and with SC_LONG lanes longer than the
 * whole-lane kernels cache in shared memory), pages of 1..48 tokens drawn at
 * random from the pool with spare ones between, scores with zeros, heavy
 * ties and NaN. Slots outside the lanes must keep their bytes on both.
 * Integer results (top-k page lists, QUANTILE counts at decay 0) must match
 * exactly; f32 statistics to a relative error < 1e-5 (DESIGN.md §6).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_twin.h"
#include "half.h"

#define TOL32 1e-5
/* topk_tokens' output before the op: neither a page index nor -1 */
#define OUT_POISON 0x5a5a5a5a

/* How a pool's scores are drawn. */
enum {
    SC_TIES = 1, /* some lanes take only four distinct values */
    SC_NAN = 2,  /* one slot in 40 is NaN */
    SC_LONG = 4, /* a third of the lanes hold 30000..60000 tokens: on both sides
                    of the 40960 floats stats.cu caches per lane */
    SC_REAL = 8, /* every lane holds 8192..34000 tokens: a 32K context's lanes,
                    cached in shared memory by the whole-lane rules except at
                    pages of 1 token (a page id a token) past 20480 */
};

/* A pool on both backends with ragged lanes and a prev array. */
typedef struct spool {
    sinkd_kv_pool pc, pg;
    sinkd_lanes lc, lg;
    tbuf pages, pos, score, kmin, kmax, len, off, ids, prev;
    int32_t *h_len, *h_off, *h_ids;
    float *h_score, *h_prev;      /* what score and prev were uploaded as */
    uint8_t *in_lane;             /* [slots]: the slot holds a token of a lane */
    int n_lanes, n_pages, pt, d;
    uint8_t dt;
    size_t slots;
} spool;

static int32_t rand_len(twin *t, int pt, int flags)
{
    if (flags & SC_REAL)
        return twin_range(t, 8192, 34000);
    if ((flags & SC_LONG) && twin_range(t, 0, 2) == 0)
        return twin_range(t, 30000, 60000);
    switch (twin_range(t, 0, 6)) {
    case 0: return 0;
    case 1: return 1;
    case 2: return twin_range(t, 2, 3 * pt);
    case 3: return twin_range(t, 200, 700); /* around one block */
    default: return twin_range(t, 700, 3000);
    }
}

static float rand_score(twin *t, bool ties, int flags)
{
    static const float levels[] = {0.0f, 0.125f, 0.25f, 1.0f};

    if ((flags & SC_NAN) && twin_range(t, 0, 39) == 0)
        return NAN;
    if (ties)
        return levels[twin_range(t, 0, 3)];
    int r = twin_range(t, 0, 9);
    return r == 0 ? 0.0f : r == 1 ? 0.25f : twin_uniform(t, 0, 1);
}

static void spool_init(twin *t, spool *p, uint8_t dt, int d, int pt, int flags)
{
    memset(p, 0, sizeof *p);
    p->dt = dt;
    p->d = d;
    p->pt = pt;
    p->n_lanes = twin_range(t, 1, 24);
    int nl = p->n_lanes;
    p->h_len = malloc(nl * sizeof(int32_t));
    p->h_off = malloc((nl + 1) * sizeof(int32_t));
    cr_assert(p->h_len && p->h_off);
    p->h_off[0] = 0;
    for (int l = 0; l < nl; l++) {
        p->h_len[l] = rand_len(t, pt, flags);
        p->h_off[l + 1] = p->h_off[l] + (p->h_len[l] + pt - 1) / pt + twin_range(t, 0, 2);
    }
    p->n_pages = p->h_off[nl] + twin_range(t, 1, 6);
    int *perm = malloc(p->n_pages * sizeof *perm);
    cr_assert(perm);
    for (int i = 0; i < p->n_pages; i++)
        perm[i] = i;
    for (int i = p->n_pages - 1; i > 0; i--) {
        int j = twin_range(t, 0, i), tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    p->h_ids = malloc((p->h_off[nl] + 1) * sizeof(int32_t));
    cr_assert(p->h_ids);
    memcpy(p->h_ids, perm, p->h_off[nl] * sizeof(int32_t));
    free(perm);

    p->slots = (size_t)p->n_pages * pt;
    p->in_lane = calloc(p->slots, 1);
    p->h_score = malloc(p->slots * sizeof(float));
    p->h_prev = malloc(p->slots * sizeof(float));
    cr_assert(p->in_lane && p->h_score && p->h_prev);
    for (int l = 0; l < nl; l++) {
        bool ties = (flags & SC_TIES) && twin_range(t, 0, 1);
        for (int i = 0; i < (p->h_off[l + 1] - p->h_off[l]) * pt; i++) {
            size_t slot = (size_t)p->h_ids[p->h_off[l] + i / pt] * pt + i % pt;
            p->in_lane[slot] = i < p->h_len[l];
            p->h_score[slot] = rand_score(t, ties, flags);
        }
    }
    for (size_t s = 0; s < p->slots; s++) {
        p->h_prev[s] = twin_uniform(t, 0, 4);
        if (!p->in_lane[s] && twin_range(t, 0, 1))
            p->h_score[s] = twin_uniform(t, -1, 1); /* spare and unused slots */
    }

    size_t page_bytes = (size_t)2 * pt * d * 2, nel = (size_t)p->n_pages * page_bytes / 2;
    uint16_t *hp = malloc(nel * 2);
    int32_t *hpos = calloc(p->slots, sizeof *hpos);
    float *hz = calloc((size_t)p->n_pages * d, sizeof *hz);
    cr_assert(hp && hpos && hz);
    for (size_t i = 0; i < nel; i++) {
        float v = twin_uniform(t, -2, 2);
        hp[i] = dt == SINKD_F16 ? sinkd_f32_to_f16(v) : sinkd_f32_to_bf16(v);
    }
    p->pages = tbuf_new(t, hp, nel * 2);
    p->pos = tbuf_new(t, hpos, p->slots * 4);
    p->score = tbuf_new(t, p->h_score, p->slots * 4);
    p->prev = tbuf_new(t, p->h_prev, p->slots * 4);
    p->kmin = tbuf_new(t, hz, (size_t)p->n_pages * d * 4);
    p->kmax = tbuf_new(t, hz, (size_t)p->n_pages * d * 4);
    p->len = tbuf_new(t, p->h_len, nl * 4);
    p->off = tbuf_new(t, p->h_off, (nl + 1) * 4);
    p->ids = tbuf_new(t, p->h_ids, (p->h_off[nl] + 1) * 4);
    free(hp);
    free(hpos);
    free(hz);
    for (int b = 0; b < 2; b++) {
        *(b ? &p->pg : &p->pc) = (sinkd_kv_pool){
            .pages = b ? p->pages.g : p->pages.c, .pos = b ? p->pos.g : p->pos.c,
            .score = b ? p->score.g : p->score.c, .kmin = b ? p->kmin.g : p->kmin.c,
            .kmax = b ? p->kmax.g : p->kmax.c, .page_bytes = page_bytes,
            .n_pages = p->n_pages, .page_tokens = pt, .head_dim_max = d, .dtype = dt,
        };
        *(b ? &p->lg : &p->lc) = (sinkd_lanes){
            .n_lanes = nl, .len = b ? p->len.g : p->len.c,
            .page_off = b ? p->off.g : p->off.c, .page_ids = b ? p->ids.g : p->ids.c,
        };
    }
}

static void spool_free(twin *t, spool *p)
{
    tbuf_free_list(t, (tbuf *const[]){&p->pages, &p->pos, &p->score, &p->kmin, &p->kmax, &p->len,
                                      &p->off, &p->ids, &p->prev, NULL});
    free(p->h_len);
    free(p->h_off);
    free(p->h_ids);
    free(p->h_score);
    free(p->h_prev);
    free(p->in_lane);
}

static int rand_pt(twin *t)
{
    static const int pts[] = {16, 16, 1, 5, 32, 48};
    return pts[twin_range(t, 0, 5)];
}

static int rand_head_dim(twin *t)
{
    static const int dims[] = {16, 64, 80, 128, 128, 256};
    return dims[twin_range(t, 0, 5)];
}

/* Run @a (pool, lanes and prev filled in per backend) on both; both must
 * return 0. */
static void run_stat(twin *t, spool *p, sinkd_stat_args a)
{
    sinkd_backend *be[2] = {t->cpu, t->gpu};
    for (int b = 0; b < 2; b++) {
        a.pool = b ? &p->pg : &p->pc;
        a.lanes = b ? p->lg : p->lc;
        a.prev = b ? p->prev.g : p->prev.c;
        cr_assert_eq(be[b]->ops->stat(be[b], &a), 0, "%s stat op %d", be[b]->info.name, a.op);
    }
}

/* Compare buffer @buf (score or prev, one float per slot) of the GPU with
 * the CPU's: lane slots to a relative error below @tol (@tol 0: bit for bit
 * equal values), NaN exactly where the CPU has NaN; every other slot must
 * still hold @init on both. */
static void check_slots(twin *t, const spool *p, const tbuf *buf, const float *init, double tol,
                        const char *what)
{
    float *c, *g;
    double num = 0, den = 0;
    size_t nan_bad = 0, touched = 0, unequal = 0;

    tbuf_get(t, buf, (void **)&c, (void **)&g);
    for (size_t s = 0; s < p->slots; s++) {
        if (!p->in_lane[s]) {
            touched += memcmp(&c[s], &init[s], 4) != 0;
            touched += memcmp(&g[s], &init[s], 4) != 0;
            continue;
        }
        if (isnan(c[s]) || isnan(g[s])) {
            nan_bad += isnan(c[s]) != isnan(g[s]);
            continue;
        }
        double d = (double)g[s] - c[s];
        num += d * d;
        den += (double)c[s] * c[s];
        unequal += g[s] != c[s];
    }
    cr_expect_eq(touched, 0, "%s: %zu slots outside the lanes changed", what, touched);
    cr_expect_eq(nan_bad, 0, "%s: %zu slots NaN on one backend only", what, nan_bad);
    if (tol == 0) {
        cr_expect_eq(unequal, 0, "%s: %zu lane slots differ", what, unequal);
    } else {
        double e = den > 0 ? sqrt(num / den) : (num > 0 ? INFINITY : 0);
        cr_expect(e < tol, "%s: relative error %.3g >= %.3g", what, e, tol);
    }
    free(c);
    free(g);
}

static void describe(char *out, size_t cap, const char *op, const spool *p)
{
    int longest = 0;
    for (int l = 0; l < p->n_lanes; l++)
        longest = p->h_len[l] > longest ? p->h_len[l] : longest;
    snprintf(out, cap, "%s %s d=%d pt=%d lanes=%d longest=%d", op, sinkd_dtype_name(p->dt), p->d,
             p->pt, p->n_lanes, longest);
}

/* ---- ZERO, STASH, RESTORE, DECAY ------------------------------------------- */

Test(gpu_stats, slot_ops)
{
    TWIN_OR_SKIP(t);
    for (int rep = 0; rep < 16; rep++) {
        spool p;
        int op = rep % 4; /* ZERO, STASH, RESTORE, DECAY */
        spool_init(&t, &p, rep & 4 ? SINKD_BF16 : SINKD_F16, rand_head_dim(&t), rand_pt(&t),
                   SC_TIES | (rep & 8 ? SC_NAN : 0) | (rep >= 12 ? SC_LONG : 0));
        float *prev0 = p.h_prev;
        float *poison = NULL;
        if (op == SINKD_STAT_OP_STASH) {
            /* prev is STASH's output: NaN until written */
            poison = malloc(p.slots * 4);
            cr_assert(poison);
            memset(poison, 0xff, p.slots * 4);
            tbuf_free(&t, &p.prev);
            p.prev = tbuf_new(&t, poison, p.slots * 4);
            prev0 = poison;
        }
        float decay = rep == 3 ? 0.0f : rep == 7 ? 1.0f : twin_uniform(&t, 0, 1);
        run_stat(&t, &p, (sinkd_stat_args){.op = op, .head_dim = p.d, .decay = decay,
                                           .quantile = 0.5f, .temperature = 1.0f});
        char what[128];
        static const char *const names[] = {"zero", "stash", "restore", "decay"};
        describe(what, sizeof what, names[op], &p);
        check_slots(&t, &p, &p.score, p.h_score, op == SINKD_STAT_OP_DECAY ? TOL32 : 0, what);
        check_slots(&t, &p, &p.prev, prev0, 0, what);
        free(poison);
        spool_free(&t, &p);
    }
    twin_close(&t);
}

/* One rule that reads score (and prev) in place: @a on a fresh pool of
 * @dt, head_dim @d and random pages; score to @tol, prev untouched. @what
 * names the case in messages. */
static void rule_case(twin *t, uint8_t dt, int d, int flags, sinkd_stat_args a, double tol,
                      const char *what)
{
    spool p;
    char msg[192];

    spool_init(t, &p, dt, d, rand_pt(t), flags);
    a.head_dim = d;
    run_stat(t, &p, a);
    describe(msg, sizeof msg, what, &p);
    check_slots(t, &p, &p.score, p.h_score, tol, msg);
    check_slots(t, &p, &p.prev, p.h_prev, 0, msg);
    spool_free(t, &p);
}

/* ---- KEY_NORM ------------------------------------------------------------------ */

Test(gpu_stats, key_norm)
{
    TWIN_OR_SKIP(t);
    for (int rep = 0; rep < 12; rep++) {
        int ns[] = {INT32_MAX, 1, 0, twin_range(&t, 2, 900)}, n = ns[rep % 4];
        char what[32];
        snprintf(what, sizeof what, "key_norm n=%d", n);
        rule_case(&t, rep & 1 ? SINKD_BF16 : SINKD_F16, rand_head_dim(&t), 0,
                  (sinkd_stat_args){.op = SINKD_STAT_OP_KEY_NORM, .n = n}, TOL32, what);
    }
    twin_close(&t);
}

/* ---- QUANTILE: an exact rank selection, so the counts agree exactly -------- */

Test(gpu_stats, quantile)
{
    TWIN_OR_SKIP(t);
    static const float qs[] = {0.01f, 0.5f, 0.9f, 0.99f};
    for (int rep = 0; rep < 16; rep++) {
        float q = rep < 12 ? qs[rep % 4] : twin_uniform(&t, 0.001f, 0.999f);
        /* decay 0: score is the 0/1 hit itself, compared bit for bit */
        float decay = rep & 2 ? 0.0f : 1.0f - 1.0f / (float)twin_range(&t, 2, 512);
        char what[64];
        snprintf(what, sizeof what, "quantile q=%g decay=%g", q, decay);
        rule_case(&t, SINKD_F16, 64, SC_TIES | (rep & 1 ? SC_NAN : 0) | (rep % 4 == 3 ? SC_LONG : 0),
                  (sinkd_stat_args){.op = SINKD_STAT_OP_QUANTILE, .quantile = q, .decay = decay},
                  decay == 0 ? 0 : TOL32, what);
    }
    twin_close(&t);
}

/* ---- GUMBEL ----------------------------------------------------------------------- */

Test(gpu_stats, gumbel)
{
    TWIN_OR_SKIP(t);
    /* keyformer's range is [1e-3, 100]; 1e-30 leaves only each lane's
     * largest key weighing (its inverse is past f32's range) */
    static const float temps[] = {0.5f, 1.0f, 3.0f, 1e-3f, 100.0f, 1e-30f};
    for (int rep = 0; rep < 16; rep++) {
        float temp = rep < 12 ? temps[rep % 6] : twin_uniform(&t, 0.05f, 20.0f);
        uint64_t seed = (uint64_t)twin_u32(&t) << 32 | twin_u32(&t);
        char what[32];
        snprintf(what, sizeof what, "gumbel T=%g", temp);
        rule_case(&t, SINKD_BF16, 32, SC_TIES | (rep & 1 ? SC_NAN : 0) | (rep % 4 == 3 ? SC_LONG : 0),
                  (sinkd_stat_args){.op = SINKD_STAT_OP_GUMBEL, .temperature = temp, .seed = seed},
                  TOL32, what);
    }
    twin_close(&t);
}

/* ---- QUANTILE and GUMBEL on a deferred row (row_len) ---------------------------- */

/* The drawn scores become the row (prev) and prev the statistic (score),
 * as a decode in rows mode leaves them. */
static void spool_row_mode(spool *p)
{
    tbuf tb = p->score;
    p->score = p->prev;
    p->prev = tb;
    float *th = p->h_score;
    p->h_score = p->h_prev;
    p->h_prev = th;
    p->pc.score = p->score.c;
    p->pg.score = p->score.g;
}

/* @a with row_len on a fresh pool whose drawn scores went to prev (the row
 * a decode in rows mode writes) and whose prev went to score (the statistic
 * the rule updates in place). row_len per lane: 0, 1, the lane's length,
 * past it, a length in between, or negative. Score to @tol; tokens past
 * row_len and lanes ruled over no token keep their bits on both, as does
 * the row. */
static void row_case(twin *t, uint8_t dt, int d, int flags, sinkd_stat_args a, double tol,
                     const char *what)
{
    spool p;
    char msg[192];
    sinkd_backend *be[2] = {t->cpu, t->gpu};

    spool_init(t, &p, dt, d, rand_pt(t), flags);
    spool_row_mode(&p);

    int32_t *rl = malloc(p.n_lanes * sizeof *rl);
    cr_assert(rl);
    for (int l = 0; l < p.n_lanes; l++) {
        int32_t len = p.h_len[l];
        switch (twin_range(t, 0, 5)) {
        case 0: rl[l] = 0; break;
        case 1: rl[l] = 1; break;
        case 2: rl[l] = len; break;
        case 3: rl[l] = len + twin_range(t, 1, 100); break;
        case 4: rl[l] = len > 2 ? twin_range(t, 1, len - 1) : 1; break;
        default: rl[l] = -twin_range(t, 1, 5); break;
        }
    }
    tbuf rlb = tbuf_new(t, rl, p.n_lanes * sizeof *rl);
    a.head_dim = d;
    for (int b = 0; b < 2; b++) {
        a.pool = b ? &p.pg : &p.pc;
        a.lanes = b ? p.lg : p.lc;
        a.prev = b ? p.prev.g : p.prev.c;
        a.row_len = b ? rlb.g : rlb.c;
        cr_assert_eq(be[b]->ops->stat(be[b], &a), 0, "%s stat op %d with row_len",
                     be[b]->info.name, a.op);
    }
    describe(msg, sizeof msg, what, &p);
    check_slots(t, &p, &p.score, p.h_score, tol, msg);
    check_slots(t, &p, &p.prev, p.h_prev, 0, msg);

    float *c, *g;
    size_t kept_bad = 0;
    tbuf_get(t, &p.score, (void **)&c, (void **)&g);
    for (int l = 0; l < p.n_lanes; l++)
        for (int i = 0; i < p.h_len[l]; i++) {
            size_t s = (size_t)p.h_ids[p.h_off[l] + i / p.pt] * p.pt + i % p.pt;
            if (i < rl[l])
                continue;
            kept_bad += memcmp(&c[s], &p.h_score[s], 4) != 0;
            kept_bad += memcmp(&g[s], &p.h_score[s], 4) != 0;
        }
    cr_expect_eq(kept_bad, 0, "%s: %zu scores past row_len changed", msg, kept_bad);
    free(c);
    free(g);
    free(rl);
    tbuf_free(t, &rlb);
    spool_free(t, &p);
}

Test(gpu_stats, rules_on_row)
{
    TWIN_OR_SKIP(t);
    for (int rep = 0; rep < 16; rep++) {
        int flags = SC_TIES | (rep & 1 ? SC_NAN : 0) | (rep % 4 == 3 ? SC_LONG : 0);
        char what[64];
        if (rep < 8) {
            float q = twin_uniform(&t, 0.001f, 0.999f);
            /* decay 0: score is the 0/1 hit itself, compared bit for bit */
            float decay = rep & 2 ? 0.0f : 1.0f - 1.0f / (float)twin_range(&t, 2, 512);
            snprintf(what, sizeof what, "quantile row q=%g decay=%g", q, decay);
            row_case(&t, SINKD_F16, 64, flags,
                     (sinkd_stat_args){.op = SINKD_STAT_OP_QUANTILE, .quantile = q, .decay = decay},
                     decay == 0 ? 0 : TOL32, what);
        } else {
            float temp = twin_uniform(&t, 0.05f, 20.0f);
            uint64_t seed = (uint64_t)twin_u32(&t) << 32 | twin_u32(&t);
            snprintf(what, sizeof what, "gumbel row T=%g", temp);
            row_case(&t, SINKD_BF16, 32, flags,
                     (sinkd_stat_args){.op = SINKD_STAT_OP_GUMBEL, .temperature = temp,
                                       .seed = seed},
                     TOL32, what);
        }
    }
    twin_close(&t);
}

/* Every lane at the sizes the rule runs at with a 32K context (the quantile
 * test draws most lanes short): the exact element, so the counts agree bit
 * for bit at decay 0. Smooth scores, then heavy ties, in place and on a
 * deferred row; pages of a multiple of 4 tokens take the 16-byte loads and
 * stores. */
Test(gpu_stats, quantile_real_lanes)
{
    TWIN_OR_SKIP(t);
    static const float qs[] = {0.01f, 0.1f, 0.5f, 0.9f, 0.99f};
    for (int rep = 0; rep < 12; rep++) {
        float q = rep < 5 ? qs[rep] : twin_uniform(&t, 0.001f, 0.999f);
        float decay = rep & 1 ? 0.0f : 1.0f - 1.0f / (float)twin_range(&t, 2, 512);
        int flags = SC_REAL | (rep >= 8 ? SC_TIES : 0) | (rep % 3 == 2 ? SC_NAN : 0);
        sinkd_stat_args a = {.op = SINKD_STAT_OP_QUANTILE, .quantile = q, .decay = decay};
        char what[80];
        snprintf(what, sizeof what, "real-size quantile%s q=%g decay=%g", rep % 4 == 3 ? " row" : "",
                 q, decay);
        if (rep % 4 == 3)
            row_case(&t, SINKD_F16, 64, flags, a, decay == 0 ? 0 : TOL32, what);
        else
            rule_case(&t, SINKD_F16, 64, flags, a, decay == 0 ? 0 : TOL32, what);
    }
    twin_close(&t);
}

/* ---- several calls at once (stat_rules) ------------------------------------------ */

/* The lanes of one pool cut into consecutive calls (some of them empty,
 * more than the 32 a launch takes when @many), each with its own noise and,
 * with @rows, row lengths: the GPU's stat_rules against the CPU's ops->stat
 * call by call. */
static void rules_case(twin *t, int flags, sinkd_stat_args a, bool rows, bool many, double tol,
                       const char *what)
{
    enum { MAX_CALLS = 48 };
    spool p;
    char msg[224];
    sinkd_backend *be[2] = {t->cpu, t->gpu};
    sinkd_stat_args calls[2][MAX_CALLS];
    int32_t first[MAX_CALLS + 1];

    spool_init(t, &p, SINKD_F16, 64, rand_pt(t), flags);
    if (rows)
        spool_row_mode(&p);
    int32_t *rl = malloc(p.n_lanes * sizeof *rl);
    cr_assert(rl);
    for (int l = 0; l < p.n_lanes; l++) {
        rl[l] = twin_range(t, 0, 3) == 0 ? twin_range(t, 0, p.h_len[l]) : p.h_len[l];
    }
    tbuf rlb = tbuf_new(t, rl, p.n_lanes * sizeof *rl);
    int n = many ? MAX_CALLS : twin_range(t, 1, p.n_lanes < 6 ? p.n_lanes : 6);
    /* call i takes lanes first[i] .. first[i + 1]: sorted random cuts */
    first[0] = 0;
    first[n] = p.n_lanes;
    for (int i = 1; i < n; i++)
        first[i] = twin_range(t, 0, p.n_lanes);
    for (int i = 1; i < n; i++)
        for (int j = i; j > 1 && first[j - 1] > first[j]; j--) {
            int32_t x = first[j];
            first[j] = first[j - 1];
            first[j - 1] = x;
        }
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < n; i++) {
            sinkd_stat_args *c = &calls[b][i];
            int32_t l0 = first[i];
            const sinkd_lanes *ln = b ? &p.lg : &p.lc;
            *c = a;
            c->head_dim = p.d;
            c->pool = b ? &p.pg : &p.pc;
            c->prev = b ? p.prev.g : p.prev.c;
            c->seed = a.seed + (uint64_t)i * 0x9e3779b97f4a7c15ull;
            c->lanes = (sinkd_lanes){.n_lanes = first[i + 1] - l0, .len = ln->len + l0,
                                     .page_off = ln->page_off + l0, .page_ids = ln->page_ids};
            c->row_len = rows ? (b ? (const int32_t *)rlb.g : (const int32_t *)rlb.c) + l0 : NULL;
        }
    for (int i = 0; i < n; i++)
        cr_assert_eq(be[0]->ops->stat(be[0], &calls[0][i]), 0, "cpu call %d", i);
    cr_assert_eq(be[1]->ops->stat_rules(be[1], calls[1], n), 0, "cuda stat_rules");
    describe(msg, sizeof msg, what, &p);
    snprintf(msg + strlen(msg), sizeof msg - strlen(msg), " calls=%d%s", n,
             rows ? " rows" : "");
    check_slots(t, &p, &p.score, p.h_score, tol, msg);
    check_slots(t, &p, &p.prev, p.h_prev, 0, msg);
    free(rl);
    tbuf_free(t, &rlb);
    spool_free(t, &p);
}

Test(gpu_stats, rules_at_once)
{
    TWIN_OR_SKIP(t);
    for (int rep = 0; rep < 32; rep++) {
        int flags = SC_TIES | (rep & 1 ? SC_NAN : 0) | (rep % 6 == 5 ? SC_LONG : 0) |
                    (rep % 6 == 2 ? SC_REAL : 0);
        bool rows = rep & 2, many = rep % 4 == 3;
        char what[80];
        if (rep % 3 != 2) {
            float q = rep < 6 ? 0.9f : twin_uniform(&t, 0.001f, 0.999f);
            float decay = rep & 4 ? 0.0f : 1.0f - 1.0f / (float)twin_range(&t, 2, 512);
            snprintf(what, sizeof what, "quantile at once q=%g decay=%g", q, decay);
            rules_case(&t, flags,
                       (sinkd_stat_args){.op = SINKD_STAT_OP_QUANTILE, .quantile = q, .decay = decay},
                       rows, many, decay == 0 ? 0 : TOL32, what);
        } else {
            float temp = rep < 12 ? 1.0f : twin_uniform(&t, 0.05f, 20.0f);
            snprintf(what, sizeof what, "gumbel at once T=%g", temp);
            rules_case(&t, flags,
                       (sinkd_stat_args){.op = SINKD_STAT_OP_GUMBEL, .temperature = temp,
                                         .seed = (uint64_t)twin_u32(&t) << 32 | twin_u32(&t)},
                       rows, many, TOL32, what);
        }
    }
    twin_close(&t);
}

/* ---- the engine's chain: STASH, the step's p, then the rule ------------------- */

Test(gpu_stats, stash_then_rule)
{
    TWIN_OR_SKIP(t);
    for (int rep = 0; rep < 6; rep++) {
        spool p;
        spool_init(&t, &p, SINKD_F16, 128, 16, SC_TIES);
        run_stat(&t, &p, (sinkd_stat_args){.op = SINKD_STAT_OP_STASH, .head_dim = p.d});
        /* what an attention op with SINKD_SCORE_WRITE leaves: p in every lane slot */
        float *pnew = malloc(p.slots * 4);
        cr_assert(pnew);
        void *sc, *sg;
        tbuf_get(&t, &p.score, &sc, &sg);
        memcpy(pnew, sc, p.slots * 4);
        for (size_t s = 0; s < p.slots; s++)
            if (p.in_lane[s])
                pnew[s] = rand_score(&t, rep & 1, 0);
        cr_assert_eq(t.cpu->ops->h2d(t.cpu, p.score.c, pnew, p.slots * 4), 0);
        cr_assert_eq(t.gpu->ops->h2d(t.gpu, p.score.g, pnew, p.slots * 4), 0);
        int op = rep % 3 == 0 ? SINKD_STAT_OP_QUANTILE : rep % 3 == 1 ? SINKD_STAT_OP_GUMBEL
                                                                      : SINKD_STAT_OP_DECAY;
        run_stat(&t, &p, (sinkd_stat_args){.op = op, .head_dim = p.d, .quantile = 0.9f,
                                           .decay = 1.0f - 1.0f / 256, .temperature = 1.0f,
                                           .seed = twin_u32(&t)});
        char what[128];
        describe(what, sizeof what, op == SINKD_STAT_OP_QUANTILE ? "stash+quantile"
                                    : op == SINKD_STAT_OP_GUMBEL  ? "stash+gumbel"
                                                                  : "stash+decay", &p);
        check_slots(&t, &p, &p.score, pnew, TOL32, what);
        free(sc);
        free(sg);
        free(pnew);
        spool_free(&t, &p);
    }
    twin_close(&t);
}

/* ---- topk_tokens: exact page lists ------------------------------------------------ */

Test(gpu_stats, topk_tokens)
{
    TWIN_OR_SKIP(t);
    static const int ks[] = {1, 2, 16, 17, 64, 255, 256, 257, 1000, 2999};
    sinkd_backend *be[2] = {t.cpu, t.gpu};
    for (int rep = 0; rep < 30; rep++) {
        spool p;
        spool_init(&t, &p, SINKD_F16, 64, rand_pt(&t),
                   (rep % 3 ? SC_TIES : 0) | (rep & 1 ? SC_NAN : 0) | (rep >= 26 ? SC_LONG : 0));
        int k = rep < 20 ? ks[rep % 10] : rep < 26 ? twin_range(&t, 1, 3500) : twin_range(&t, 1, 40000);
        size_t n = (size_t)p.n_lanes * k;
        int32_t *poison = malloc(n * 4);
        cr_assert(poison);
        for (size_t i = 0; i < n; i++)
            poison[i] = OUT_POISON;
        tbuf out = tbuf_new(&t, poison, n * 4);
        for (int b = 0; b < 2; b++) {
            sinkd_topk_tokens_args a = {.pool = b ? &p.pg : &p.pc, .lanes = b ? p.lg : p.lc,
                                        .k = k, .out_pages = b ? out.g : out.c};
            cr_assert_eq(be[b]->ops->topk_tokens(be[b], &a), 0, "%s topk_tokens", be[b]->info.name);
        }
        int32_t *oc, *og;
        tbuf_get(&t, &out, (void **)&oc, (void **)&og);
        size_t diff = 0, unwritten = 0, first = n;
        for (size_t i = 0; i < n; i++) {
            unwritten += oc[i] == OUT_POISON || og[i] == OUT_POISON;
            if (oc[i] != og[i] && first == n)
                first = i;
            diff += oc[i] != og[i];
        }
        char what[128];
        describe(what, sizeof what, "topk_tokens", &p);
        cr_expect_eq(unwritten, 0, "%s k=%d: %zu entries not written", what, k, unwritten);
        cr_expect_eq(diff, 0, "%s k=%d: %zu of %zu entries differ, first at lane %zu entry %zu "
                     "(cpu %d, gpu %d)", what, k, diff, n, first / (size_t)k, first % (size_t)k,
                     first < n ? oc[first] : 0, first < n ? og[first] : 0);
        /* the scores are read, never written */
        check_slots(&t, &p, &p.score, p.h_score, 0, what);
        free(oc);
        free(og);
        free(poison);
        tbuf_free(&t, &out);
        spool_free(&t, &p);
    }
    twin_close(&t);
}

/* ---- argument checks: the CUDA backend refuses what the CPU refuses ------------- */

Test(gpu_stats, rejects_bad_arguments)
{
    TWIN_OR_SKIP(t);
    spool p;
    spool_init(&t, &p, SINKD_F16, 64, 16, 0);
    sinkd_backend *be[2] = {t.cpu, t.gpu};
    for (int b = 0; b < 2; b++) {
        sinkd_stat_args a = {.pool = b ? &p.pg : &p.pc, .lanes = b ? p.lg : p.lc,
                             .op = SINKD_STAT_OP_STASH, .head_dim = 64, .quantile = 0.5f,
                             .decay = 1.0f, .temperature = 1.0f};
        const char *name = be[b]->info.name;
        cr_expect_eq(be[b]->ops->stat(be[b], &a), -EINVAL, "%s: STASH without prev", name);
        a.prev = b ? p.prev.g : p.prev.c;
        a.op = 99;
        cr_expect_eq(be[b]->ops->stat(be[b], &a), -EINVAL, "%s: unknown op", name);
        a.op = SINKD_STAT_OP_QUANTILE;
        a.quantile = 1.0f;
        cr_expect_eq(be[b]->ops->stat(be[b], &a), -EINVAL, "%s: quantile 1", name);
        a.quantile = 0.5f;
        a.decay = NAN;
        cr_expect_eq(be[b]->ops->stat(be[b], &a), -EINVAL, "%s: NaN decay", name);
        a.op = SINKD_STAT_OP_GUMBEL;
        a.temperature = INFINITY;
        cr_expect_eq(be[b]->ops->stat(be[b], &a), -EINVAL, "%s: infinite temperature", name);
        a.op = SINKD_STAT_OP_KEY_NORM;
        a.head_dim = 72;
        cr_expect_eq(be[b]->ops->stat(be[b], &a), -EINVAL, "%s: head_dim not a multiple of 16",
                     name);
        a.head_dim = 64;
        a.op = SINKD_STAT_OP_DECAY;
        a.decay = 1.0f;
        a.row_len = b ? p.len.g : p.len.c;
        cr_expect_eq(be[b]->ops->stat(be[b], &a), -EINVAL, "%s: row_len with DECAY", name);
        sinkd_topk_tokens_args k = {.pool = a.pool, .lanes = a.lanes, .k = 0,
                                    .out_pages = b ? p.pos.g : p.pos.c};
        cr_expect_eq(be[b]->ops->topk_tokens(be[b], &k), -EINVAL, "%s: k = 0", name);
        k.k = 4;
        k.out_pages = NULL;
        cr_expect_eq(be[b]->ops->topk_tokens(be[b], &k), -EINVAL, "%s: no output", name);
        sinkd_stat_args r[2] = {a, a};
        r[0].op = r[1].op = SINKD_STAT_OP_QUANTILE;
        r[0].row_len = r[1].row_len = NULL;
        r[0].quantile = r[1].quantile = 0.5f;
        r[1].quantile = 0.25f;
        cr_expect_eq(be[b]->ops->stat_rules(be[b], r, 2), -EINVAL, "%s: two quantiles", name);
        r[1].quantile = 0.5f;
        r[1].op = SINKD_STAT_OP_GUMBEL;
        cr_expect_eq(be[b]->ops->stat_rules(be[b], r, 2), -EINVAL, "%s: mixed rules", name);
        r[1].op = SINKD_STAT_OP_QUANTILE;
        r[1].head_dim = 72;
        cr_expect_eq(be[b]->ops->stat_rules(be[b], r, 2), -EINVAL, "%s: a bad second call", name);
        cr_expect_eq(be[b]->ops->stat_rules(be[b], r, 0), -EINVAL, "%s: no call", name);
    }
    /* nothing ran: the scores are as uploaded */
    check_slots(&t, &p, &p.score, p.h_score, 0, "after refused calls");
    spool_free(&t, &p);
    twin_close(&t);
}
