/*
 * CPU attention ops (decode, prefill) against the naive double reference of
 * tref.h, over GQA groups 1..16, head_dim 16..128, page sizes 1/4/16, F32/F16/
 * BF16 KV, both rope modes and styles, linear scaling, ragged and empty
 * lanes, sparse page lists, every score op and the observation window.
 * Tolerance: |got - ref| <= 1e-5 * max(1, |ref|); the reference reads the
 * same dtype-rounded K/V the kernel reads, so the bound holds for every dtype.
 * Outputs are poisoned with NaN first, so an unwritten element fails.
 */
#include <criterion/criterion.h>
#include <errno.h>

#include "tref.h"

#define TOL 1e-5

static sinkd_backend *be;

static void setup(void)
{
    cr_assert_eq(sinkd_cpu_backend_open(3, &be), 0);
}

static void teardown(void)
{
    sinkd_backend_close(be);
}

TestSuite(attention, .init = setup, .fini = teardown);

static const int32_t groups[] = {1, 2, 4, 8, 16};
static const int32_t dims[] = {16, 32, 64, 80, 128};
static const int32_t page_sizes[] = {1, 4, 16};
static const uint8_t dtypes[] = {SINKD_F32, SINKD_F16, SINKD_BF16};

typedef struct cfg {
    int32_t G, hd, pt;
    uint8_t dtype;
    sinkd_rope rope;
    int32_t score_op;
    int round;
} cfg;

/* Configuration @round of (group gi, dim di): the smaller parameter sets
 * cycle so that every pair of values meets across the rounds. */
static cfg make_cfg(int gi, int di, int round)
{
    cfg c = {
        .G = groups[gi],
        .hd = dims[di],
        .pt = page_sizes[(gi + di + round) % 3],
        .dtype = dtypes[(gi + 2 * di + round) % 3],
        .rope = {
            .theta = round % 3 == 2 ? 500000.0f : 10000.0f,
            .scale = round % 2 ? 4.0f : 1.0f,
            .style = (uint8_t)((gi + round) % 2),
            .mode = (uint8_t)((di + round / 2) % 2),
        },
        .score_op = (gi + di + round) % 4,
        .round = round,
    };
    return c;
}

/* ---- decode ------------------------------------------------------------------ */

static void check_decode(const cfg *c, int sparse)
{
    const int32_t n_seqs = 3, nkv = 2, nqh = nkv * c->G, hd = c->hd, pt = c->pt;
    int32_t nl = n_seqs * nkv, len[6];
    for (int32_t l = 0; l < nl; l++)
        len[l] = t_int(1, 70);
    if (c->round % 2 == 0)
        len[3] = 0; /* an empty lane: its heads must come out 0 */
    len[1] = 3 * pt; /* a lane ending exactly on a page boundary */
    t_pool tp;
    t_pool_init(&tp, len, nl, pt, hd, c->dtype);

    size_t nq = (size_t)n_seqs * nqh * hd;
    float *q = malloc(nq * sizeof(float)), *out = malloc(nq * sizeof(float));
    t_fill(q, nq);
    for (size_t i = 0; i < nq; i++)
        out[i] = NAN;
    int32_t q_pos[3];
    for (int32_t s = 0; s < n_seqs; s++)
        q_pos[s] = t_int(150, 400);
    size_t slots = (size_t)tp.pool.n_pages * pt;
    float *score0 = malloc(slots * sizeof(float));
    memcpy(score0, tp.pool.score, slots * sizeof(float));

    /* sparse: a random ascending subset of each lane's pages, with -1 holes */
    int32_t sel_off[7] = {0}, sel_pages[6 * 80];
    int32_t ns = 0;
    for (int32_t l = 0; l < nl && sparse; l++) {
        int32_t np = (len[l] + pt - 1) / pt;
        for (int32_t p = 0; p < np; p++) {
            if (t_next() % 3 == 0)
                sel_pages[ns++] = -1;
            if (t_next() % 2 || p == np - 1)
                sel_pages[ns++] = p;
        }
        sel_off[l + 1] = ns;
    }

    sinkd_decode_args a = {
        .pool = &tp.pool, .lanes = t_lanes(&tp), .n_seqs = n_seqs, .n_q_heads = nqh,
        .n_kv_heads = nkv, .head_dim = hd, .rope = c->rope,
        .softmax_scale = (float)(1.0 / sqrt(hd)), .q = q, .out = out, .q_pos = q_pos,
        .sel_off = sparse ? sel_off : NULL, .sel_pages = sparse ? sel_pages : NULL,
        .score_op = c->score_op, .score_decay = 0.75f,
    };
    cr_assert_eq(be->ops->attn_decode(be, &a), 0);
    cr_assert_eq(be->ops->sync(be), 0);

    int32_t keys[80];
    double ref[16 * 128], p[80];
    for (int32_t l = 0; l < nl; l++) {
        int32_t s = l / nkv, h = l % nkv, nk = 0;
        if (sparse) {
            for (int32_t j = sel_off[l]; j < sel_off[l + 1]; j++)
                for (int32_t t = sel_pages[j] * pt; sel_pages[j] >= 0 && t < (sel_pages[j] + 1) * pt && t < len[l]; t++)
                    keys[nk++] = t;
        } else {
            for (int32_t t = 0; t < len[l]; t++)
                keys[nk++] = t;
        }
        double qpos = c->rope.mode == SINKD_ROPE_CACHE ? len[l] - 1 : q_pos[s];
        const float *qh = q + ((size_t)s * nqh + (size_t)h * c->G) * hd;
        const float *oh = out + ((size_t)s * nqh + (size_t)h * c->G) * hd;
        t_attend(&tp, l, keys, nk, qh, c->G, qpos, &c->rope, a.softmax_scale, ref, p);
        for (int32_t i = 0; i < c->G * hd; i++)
            cr_assert(t_close(oh[i], nk ? ref[i] : 0.0, TOL),
                      "lane %d elem %d: got %g want %g (G=%d hd=%d pt=%d dt=%d)", l, i, oh[i],
                      ref[i], c->G, hd, pt, c->dtype);
        /* scores: attended keys get the op applied, all others keep theirs */
        double sum = 0;
        int32_t j = 0;
        for (int32_t t = 0; t < len[l]; t++) {
            int64_t slot = t_slot(&tp, l, t);
            double want = score0[slot];
            if (j < nk && keys[j] == t)
                want = t_score_ref(c->score_op, score0[slot], p[j++], 0.75);
            cr_assert(t_close(tp.pool.score[slot], want, TOL), "score lane %d t %d: %g vs %g", l,
                      t, tp.pool.score[slot], want);
            sum += tp.pool.score[slot];
        }
        if (c->score_op == SINKD_SCORE_WRITE && !sparse && nk > 0)
            cr_assert(fabs(sum - c->G) < 1e-4 * c->G, "probabilities sum to %g, not %d", sum, c->G);
    }
    free(q);
    free(out);
    free(score0);
    t_pool_free(&tp);
}

Test(attention, decode_dense)
{
    for (int round = 0; round < 4; round++)
        for (int gi = 0; gi < 5; gi++)
            for (int di = 0; di < 5; di++) {
                cfg c = make_cfg(gi, di, round);
                check_decode(&c, 0);
            }
}

Test(attention, decode_sparse)
{
    t_rng = 12345;
    for (int round = 0; round < 4; round++)
        for (int gi = 0; gi < 5; gi++)
            for (int di = 0; di < 5; di++) {
                cfg c = make_cfg(gi, di, round + 1);
                check_decode(&c, 1);
            }
}

/* ---- prefill ------------------------------------------------------------------ */

static void check_prefill(const cfg *c, int32_t obs_w, int32_t n_chunk)
{
    const int32_t nkv = 2, nqh = nkv * c->G, hd = c->hd, pt = c->pt;
    int32_t n = n_chunk ? n_chunk : t_int(1, 40), len[2];
    for (int32_t h = 0; h < nkv; h++)
        len[h] = n + (c->round == 0 && h == 0 ? 0 : t_int(0, 50)); /* ragged; a fresh lane */
    t_pool tp;
    t_pool_init(&tp, len, nkv, pt, hd, c->dtype);

    size_t nq = (size_t)n * nqh * hd;
    float *q = malloc(nq * sizeof(float)), *out = malloc(nq * sizeof(float));
    t_fill(q, nq);
    for (size_t i = 0; i < nq; i++)
        out[i] = NAN;
    int32_t *q_pos = malloc(sizeof(int32_t) * (size_t)n);
    for (int32_t i = 0; i < n; i++)
        q_pos[i] = 200 + 2 * i;
    size_t slots = (size_t)tp.pool.n_pages * pt;
    float *score0 = malloc(slots * sizeof(float));
    memcpy(score0, tp.pool.score, slots * sizeof(float));

    sinkd_prefill_args a = {
        .pool = &tp.pool, .lanes = t_lanes(&tp), .n = n, .n_q_heads = nqh, .n_kv_heads = nkv,
        .head_dim = hd, .rope = c->rope, .softmax_scale = (float)(1.0 / sqrt(hd)), .q = q,
        .out = out, .q_pos = q_pos, .obs_w = obs_w, .score_op = c->score_op,
        .score_decay = 0.5f,
    };
    cr_assert_eq(be->ops->attn_prefill(be, &a), 0);

    int32_t w = obs_w < n ? obs_w : n;
    double *ref = malloc(sizeof(double) * (size_t)c->G * hd);
    for (int32_t h = 0; h < nkv; h++) {
        int32_t base = len[h] - n, keys[100];
        double p[100], ptot[100] = {0};
        for (int32_t t = 0; t < len[h]; t++)
            keys[t] = t;
        for (int32_t i = 0; i < n; i++) {
            double qpos = c->rope.mode == SINKD_ROPE_CACHE ? base + i : q_pos[i];
            size_t head0 = (size_t)i * nqh + (size_t)h * c->G;
            t_attend(&tp, h, keys, base + i + 1, q + head0 * hd, c->G, qpos, &c->rope,
                     a.softmax_scale, ref, p);
            for (int32_t e = 0; e < c->G * hd; e++)
                cr_assert(t_close(out[head0 * hd + e], ref[e], TOL),
                          "lane %d query %d elem %d: got %g want %g (G=%d hd=%d pt=%d)", h, i, e,
                          out[head0 * hd + e], ref[e], c->G, hd, pt);
            if (i >= n - w)
                for (int32_t t = 0; t <= base + i; t++)
                    ptot[t] += p[t];
        }
        double sum = 0;
        for (int32_t t = 0; t < len[h]; t++) {
            int64_t slot = t_slot(&tp, h, t);
            double want = obs_w > 0 ? t_score_ref(c->score_op, score0[slot], ptot[t], 0.5)
                                    : score0[slot];
            cr_assert(t_close(tp.pool.score[slot], want, TOL), "score lane %d t %d: %g vs %g", h,
                      t, tp.pool.score[slot], want);
            sum += tp.pool.score[slot];
        }
        if (c->score_op == SINKD_SCORE_WRITE && obs_w > 0)
            cr_assert(fabs(sum - (double)c->G * w) < 1e-4 * c->G * w,
                      "window probabilities sum to %g, not %d", sum, c->G * w);
    }
    free(ref);
    free(q);
    free(out);
    free(q_pos);
    free(score0);
    t_pool_free(&tp);
}

Test(attention, prefill)
{
    static const int32_t windows[] = {0, 1, 5, 1000};
    t_rng = 777;
    for (int round = 0; round < 4; round++)
        for (int gi = 0; gi < 5; gi++)
            for (int di = 0; di < 5; di++) {
                cfg c = make_cfg(gi, di, round);
                check_prefill(&c, windows[(gi + di + round) % 4], 0);
            }
}

/* Prefill of a chunk longer than one query block and one key block. */
Test(attention, prefill_long_chunk)
{
    cfg c = make_cfg(2, 2, 1);
    c.score_op = SINKD_SCORE_ADD;
    check_prefill(&c, 1000, 40);
    c.pt = 1;
    check_prefill(&c, 7, 37);
}

Test(attention, rejects_bad_arguments)
{
    int32_t len[2] = {5, 9};
    t_pool tp;
    t_pool_init(&tp, len, 2, 4, 32, SINKD_F32);
    float q[4 * 32] = {0}, out[4 * 32];
    int32_t qp[1] = {9};
    sinkd_decode_args a = {
        .pool = &tp.pool, .lanes = t_lanes(&tp), .n_seqs = 1, .n_q_heads = 4, .n_kv_heads = 2,
        .head_dim = 32, .rope = {10000, 1, 0, 0, {0}}, .softmax_scale = 0.2f, .q = q,
        .out = out, .q_pos = qp,
    };
    cr_assert_eq(be->ops->attn_decode(be, &a), 0);
    sinkd_decode_args b = a;
    b.n_q_heads = 3; /* not a multiple of n_kv_heads */
    cr_assert_eq(be->ops->attn_decode(be, &b), -EINVAL);
    b = a;
    b.head_dim = 40; /* not a multiple of 16 */
    cr_assert_eq(be->ops->attn_decode(be, &b), -EINVAL);
    b = a;
    b.head_dim = 64; /* over head_dim_max (48) */
    cr_assert_eq(be->ops->attn_decode(be, &b), -EINVAL);
    b = a;
    b.n_seqs = 2; /* lanes do not match n_seqs * n_kv_heads */
    cr_assert_eq(be->ops->attn_decode(be, &b), -EINVAL);
    b = a;
    b.score_op = 9;
    cr_assert_eq(be->ops->attn_decode(be, &b), -EINVAL);
    int32_t saved = tp.page_ids[0];
    tp.page_ids[0] = tp.pool.n_pages; /* page outside the pool */
    cr_assert_eq(be->ops->attn_decode(be, &a), -EINVAL);
    tp.page_ids[0] = saved;
    tp.len[1] = 400; /* more tokens than its pages hold */
    cr_assert_eq(be->ops->attn_decode(be, &a), -EINVAL);
    tp.len[1] = 9;
    int32_t sel_off[3] = {0, 1, 2}, sel_pages[2] = {0, 3}; /* lane 1 has 3 pages */
    b = a;
    b.sel_off = sel_off;
    b.sel_pages = sel_pages;
    cr_assert_eq(be->ops->attn_decode(be, &b), -EINVAL);
    sinkd_prefill_args p = {
        .pool = &tp.pool, .lanes = t_lanes(&tp), .n = 6, .n_q_heads = 4, .n_kv_heads = 2,
        .head_dim = 32, .rope = {10000, 1, 0, 1, {0}}, .softmax_scale = 0.2f, .q = q, .out = out,
    };
    cr_assert_eq(be->ops->attn_prefill(be, &p), -EINVAL); /* lane 0 shorter than the chunk */
    p.n = 1;
    cr_assert_eq(be->ops->attn_prefill(be, &p), 0);
    p.max_len = tp.len[1]; /* the longest lane named */
    cr_assert_eq(be->ops->attn_prefill(be, &p), 0);
    p.max_len = tp.len[1] - 1; /* a lane longer than the caller says */
    cr_assert_eq(be->ops->attn_prefill(be, &p), -EINVAL);
    p.max_len = -1;
    cr_assert_eq(be->ops->attn_prefill(be, &p), -EINVAL);
    t_pool_free(&tp);
}
