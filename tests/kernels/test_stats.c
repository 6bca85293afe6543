/*
 * CPU policy statistics (ops->stat) and token selection (ops->topk_tokens)
 * against references written here in double precision: a full sort for the
 * row quantile and the top-k tokens, the Gumbel softmax from the noise the
 * header defines, key norms from the stored rows. The rules on a deferred
 * row (row_len) also bit for bit against the plain op on cut lanes. Slots
 * outside the lanes (spare pages) must come out untouched.
 */
#include <criterion/criterion.h>
#include <errno.h>

#include "tref.h"

static sinkd_backend *be;

static void setup(void)
{
    cr_assert_eq(sinkd_cpu_backend_open(2, &be), 0);
}

static void teardown(void)
{
    sinkd_backend_close(be);
}

TestSuite(stats, .init = setup, .fini = teardown);

enum { NL = 5 };

/* Lanes of ragged lengths (one empty), probabilities in score with ties and
 * zeros, a random prev; *slots = pool slot count. */
static float *make(t_pool *tp, int32_t pt, int32_t hd, uint8_t dt, size_t *slots)
{
    int32_t len[NL] = {t_int(1, 70), 0, t_int(1, 70), t_int(60, 130), 1};
    t_pool_init(tp, len, NL, pt, hd, dt);
    *slots = (size_t)tp->pool.n_pages * pt;
    float *prev = malloc(*slots * sizeof *prev);
    for (size_t i = 0; i < *slots; i++) {
        prev[i] = t_unif() * 4;
        float p = (t_unif() + 1) / 2;
        int r = t_int(0, 9);
        tp->pool.score[i] = r == 0 ? 0.0f : r == 1 ? 0.25f : p; /* zeros and ties */
    }
    return prev;
}

static bool in_lanes(const t_pool *tp, size_t slot)
{
    for (int32_t l = 0; l < tp->n_lanes; l++)
        for (int32_t t = 0; t < tp->len[l]; t++)
            if ((size_t)t_slot(tp, l, t) == slot)
                return true;
    return false;
}

static int cmp_d(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

/* Expected score of every slot after @op, in double. */
static void reference(const t_pool *tp, const sinkd_stat_args *a, const float *p0,
                      const float *prev0, double *exp_score, double *exp_prev)
{
    size_t slots = (size_t)tp->pool.n_pages * tp->pool.page_tokens;
    for (size_t i = 0; i < slots; i++) {
        exp_score[i] = p0[i];
        exp_prev[i] = prev0[i];
    }
    for (int32_t l = 0; l < tp->n_lanes; l++) {
        int32_t len = tp->len[l];
        double *row = malloc(sizeof(double) * (size_t)(len + 1));
        for (int32_t t = 0; t < len; t++)
            row[t] = p0[t_slot(tp, l, t)];
        qsort(row, (size_t)len, sizeof *row, cmp_d);
        double thr = len ? row[(int32_t)floor((double)a->quantile * (len - 1))] : 0;
        double mx = -INFINITY, sum = 0;
        for (int32_t t = 0; t < len; t++) {
            double p = p0[t_slot(tp, l, t)];
            if (p > 0) {
                double z = (log(p) - log(-log(sinkd_stat_uniform(a->seed, l, t)))) /
                           a->temperature;
                mx = fmax(mx, z);
            }
        }
        for (int32_t t = 0; t < len; t++) {
            double p = p0[t_slot(tp, l, t)];
            if (p > 0)
                sum += exp((log(p) - log(-log(sinkd_stat_uniform(a->seed, l, t)))) /
                           a->temperature - mx);
        }
        for (int32_t t = 0; t < len; t++) {
            size_t s = (size_t)t_slot(tp, l, t);
            double p = p0[s], pv = prev0[s];
            switch (a->op) {
            case SINKD_STAT_OP_ZERO: exp_score[s] = 0; break;
            case SINKD_STAT_OP_STASH: exp_prev[s] = p; exp_score[s] = 0; break;
            case SINKD_STAT_OP_RESTORE: exp_score[s] = pv; break;
            case SINKD_STAT_OP_DECAY: exp_score[s] = a->decay * pv + p; break;
            case SINKD_STAT_OP_QUANTILE: exp_score[s] = a->decay * pv + (p > thr); break;
            case SINKD_STAT_OP_GUMBEL:
                exp_score[s] = pv + (p > 0 ? exp((log(p) - log(-log(sinkd_stat_uniform(
                                                     a->seed, l, t)))) / a->temperature - mx) / sum
                                           : 0);
                break;
            case SINKD_STAT_OP_KEY_NORM:
                if (t >= len - a->n) {
                    double sq = 0;
                    for (int32_t d = 0; d < tp->head_dim; d++) {
                        double k = t_load(tp->pool.dtype, t_row(tp, l, t, 0), (size_t)d);
                        sq += k * k;
                    }
                    exp_score[s] = -sqrt(sq);
                }
                break;
            }
        }
        free(row);
    }
}

static void check_op(int32_t op, int32_t pt, int32_t hd, uint8_t dt, float quantile,
                     float decay, float temperature, int32_t n)
{
    t_pool tp;
    size_t slots;
    float *prev = make(&tp, pt, hd, dt, &slots);
    float *p0 = malloc(slots * sizeof *p0), *prev0 = malloc(slots * sizeof *prev0);
    double *es = malloc(slots * sizeof *es), *ep = malloc(slots * sizeof *ep);
    memcpy(p0, tp.pool.score, slots * sizeof *p0);
    memcpy(prev0, prev, slots * sizeof *prev0);
    sinkd_stat_args a = {
        .pool = &tp.pool, .lanes = t_lanes(&tp), .op = op, .head_dim = hd, .n = n,
        .quantile = quantile, .decay = decay, .temperature = temperature,
        .seed = t_next(), .prev = prev,
    };
    reference(&tp, &a, p0, prev0, es, ep);
    cr_assert_eq(be->ops->stat(be, &a), 0, "op %d", op);
    for (size_t i = 0; i < slots; i++) {
        cr_assert(t_close(tp.pool.score[i], es[i], 2e-6), "op %d slot %zu: score %g, want %g",
                  op, i, tp.pool.score[i], es[i]);
        cr_assert(t_close(prev[i], ep[i], 0), "op %d slot %zu: prev %g, want %g", op, i,
                  prev[i], ep[i]);
        if (!in_lanes(&tp, i))
            cr_assert(tp.pool.score[i] == p0[i] && prev[i] == prev0[i], "slot %zu touched", i);
    }
    free(p0);
    free(prev0);
    free(es);
    free(ep);
    free(prev);
    t_pool_free(&tp);
}

Test(stats, slot_ops)
{
    for (int32_t op = SINKD_STAT_OP_ZERO; op <= SINKD_STAT_OP_DECAY; op++)
        for (int32_t pt = 1; pt <= 16; pt *= 4)
            check_op(op, pt, 32, SINKD_F32, 0.5f, op == SINKD_STAT_OP_DECAY ? 0.75f : 1.0f,
                     1.0f, 7);
}

Test(stats, key_norm)
{
    static const uint8_t dts[] = {SINKD_F32, SINKD_F16, SINKD_BF16};
    for (int i = 0; i < 3; i++) {
        check_op(SINKD_STAT_OP_KEY_NORM, 16, 64, dts[i], 0.5f, 1.0f, 1.0f, 1);
        check_op(SINKD_STAT_OP_KEY_NORM, 4, 128, dts[i], 0.5f, 1.0f, 1.0f, 1 << 20);
    }
}

Test(stats, quantile)
{
    static const float qs[] = {0.01f, 0.5f, 0.9f, 0.99f};
    for (int i = 0; i < 4; i++)
        for (int32_t pt = 1; pt <= 16; pt *= 4)
            check_op(SINKD_STAT_OP_QUANTILE, pt, 16, SINKD_F32, qs[i], 1.0f - 1.0f / 256, 1, 0);
}

Test(stats, gumbel)
{
    /* keyformer's range is [1e-3, 100]; at 1e-30 only each lane's largest
     * key weighs */
    static const float ts[] = {0.5f, 1.0f, 3.0f, 1e-3f, 100.0f, 1e-30f};
    for (int i = 0; i < 6; i++)
        for (int32_t pt = 1; pt <= 16; pt *= 4)
            check_op(SINKD_STAT_OP_GUMBEL, pt, 16, SINKD_F32, 0.5f, 1.0f, ts[i], 0);
}

Test(stats, gumbel_noise_is_uniform)
{
    /* the mean of -log(-log u) is the Euler-Mascheroni constant */
    double m = 0;
    for (int32_t t = 0; t < 100000; t++) {
        double u = sinkd_stat_uniform(42, t % 7, t);
        cr_assert(u > 0 && u < 1);
        m += -log(-log(u));
    }
    cr_assert(fabs(m / 100000 - 0.5772156649) < 0.02, "mean %g", m / 100000);
}

Test(stats, bad_args)
{
    t_pool tp;
    size_t slots;
    float *prev = make(&tp, 4, 16, SINKD_F32, &slots);
    sinkd_stat_args a = {.pool = &tp.pool, .lanes = t_lanes(&tp), .op = SINKD_STAT_OP_STASH,
                         .head_dim = 16, .prev = NULL, .quantile = 0.5f, .decay = 1,
                         .temperature = 1};
    cr_assert_eq(be->ops->stat(be, &a), -EINVAL);
    a.prev = prev;
    a.op = 99;
    cr_assert_eq(be->ops->stat(be, &a), -EINVAL);
    a.op = SINKD_STAT_OP_QUANTILE;
    a.quantile = 1.0f;
    cr_assert_eq(be->ops->stat(be, &a), -EINVAL);
    a.op = SINKD_STAT_OP_GUMBEL;
    a.temperature = 0;
    cr_assert_eq(be->ops->stat(be, &a), -EINVAL);
    free(prev);
    t_pool_free(&tp);
}

/* ---- rules on a deferred row (row_len) ------------------------------------------- */

static float *dup_f(const float *x, size_t n)
{
    float *y = malloc(n * sizeof *y);
    memcpy(y, x, n * sizeof *y);
    return y;
}

/* @op with row_len: p in prev (the row), the old statistic in score, lane l
 * ruled over its first row_len[l] tokens. Those must match the double
 * reference on lanes cut to them, and bit for bit the op without row_len on
 * the cut lanes with score and prev swapped back; every other score and the
 * whole row keep their bits. @round varies which lane gets which row_len. */
static void check_row(int32_t op, int32_t pt, float quantile, float decay, float temperature,
                      int round)
{
    t_pool tp;
    size_t slots;
    float *stat = make(&tp, pt, 16, SINKD_F32, &slots);
    /* make leaves p in score: it becomes the row, the statistic goes to score */
    float *row = tp.pool.score;
    tp.pool.score = stat;
    float *row0 = dup_f(row, slots), *stat0 = dup_f(stat, slots);
    int32_t row_len[NL], cut[NL];
    for (int32_t l = 0; l < NL; l++) {
        int32_t len = tp.len[l];
        switch ((l + round) % 6) {
        case 0: row_len[l] = 0; break;
        case 1: row_len[l] = 1; break;
        case 2: row_len[l] = len; break;
        case 3: row_len[l] = len + t_int(1, 9); break; /* clamped to len */
        case 4: row_len[l] = t_int(1, len > 2 ? len - 1 : 1); break;
        default: row_len[l] = -t_int(1, 5); break;
        }
        cut[l] = row_len[l] < 0 ? 0 : row_len[l] < len ? row_len[l] : len;
    }
    sinkd_stat_args a = {
        .pool = &tp.pool, .lanes = t_lanes(&tp), .op = op, .head_dim = 16,
        .quantile = quantile, .decay = decay, .temperature = temperature,
        .seed = t_next(), .prev = row, .row_len = row_len,
    };
    cr_assert_eq(be->ops->stat(be, &a), 0, "op %d with row_len", op);

    t_pool tcut = tp;
    tcut.len = cut;
    double *es = malloc(slots * sizeof *es), *ep = malloc(slots * sizeof *ep);
    reference(&tcut, &a, row0, stat0, es, ep);
    sinkd_kv_pool pool2 = tp.pool;
    pool2.score = dup_f(row0, slots);
    float *prev2 = dup_f(stat0, slots);
    sinkd_stat_args b = a;
    b.pool = &pool2;
    b.lanes = t_lanes(&tcut);
    b.prev = prev2;
    b.row_len = NULL;
    cr_assert_eq(be->ops->stat(be, &b), 0, "op %d on the cut lanes", op);

    for (int32_t l = 0; l < NL; l++)
        for (int32_t t = 0; t < tp.len[l]; t++) {
            size_t s = (size_t)t_slot(&tp, l, t);
            float got = tp.pool.score[s];
            if (t >= cut[l]) {
                cr_assert(!memcmp(&got, &stat0[s], 4), "op %d lane %d (row_len %d) token %d: "
                          "score %g, want it kept at %g", op, l, row_len[l], t, got, stat0[s]);
                continue;
            }
            cr_assert(t_close(got, es[s], 2e-6), "op %d lane %d (row_len %d) token %d: score %g, "
                      "want %g", op, l, row_len[l], t, got, es[s]);
            cr_assert(!memcmp(&got, &pool2.score[s], 4), "op %d lane %d token %d: %a, the cut "
                      "lane gives %a", op, l, t, got, pool2.score[s]);
        }
    for (size_t i = 0; i < slots; i++) {
        cr_assert(!memcmp(&row[i], &row0[i], 4), "op %d slot %zu: row written", op, i);
        if (!in_lanes(&tp, i))
            cr_assert(!memcmp(&tp.pool.score[i], &stat0[i], 4), "slot %zu touched", i);
    }
    free(es);
    free(ep);
    free(pool2.score);
    free(prev2);
    free(row);
    free(row0);
    free(stat0);
    t_pool_free(&tp);
}

Test(stats, quantile_row)
{
    static const float qs[] = {0.01f, 0.5f, 0.9f, 0.99f};
    for (int round = 0; round < 6; round++)
        for (int i = 0; i < 4; i++)
            for (int32_t pt = 1; pt <= 16; pt *= 4)
                check_row(SINKD_STAT_OP_QUANTILE, pt, qs[i], i & 1 ? 0.0f : 1.0f - 1.0f / 256,
                          1, round);
}

Test(stats, gumbel_row)
{
    static const float ts[] = {0.5f, 1.0f, 3.0f};
    for (int round = 0; round < 6; round++)
        for (int i = 0; i < 3; i++)
            for (int32_t pt = 1; pt <= 16; pt *= 4)
                check_row(SINKD_STAT_OP_GUMBEL, pt, 0.5f, 1.0f, ts[i], round);
}

Test(stats, row_len_other_ops)
{
    t_pool tp;
    size_t slots;
    float *prev = make(&tp, 4, 16, SINKD_F32, &slots);
    float *score0 = dup_f(tp.pool.score, slots), *prev0 = dup_f(prev, slots);
    int32_t row_len[NL] = {1, 0, 2, 3, 1};
    sinkd_stat_args a = {.pool = &tp.pool, .lanes = t_lanes(&tp), .head_dim = 16, .n = 1,
                         .quantile = 0.5f, .decay = 1, .temperature = 1, .prev = prev,
                         .row_len = row_len};
    for (int32_t op = SINKD_STAT_OP_ZERO; op <= SINKD_STAT_OP_DECAY; op++) {
        a.op = op;
        cr_assert_eq(be->ops->stat(be, &a), -EINVAL, "op %d took row_len", op);
    }
    cr_assert(!memcmp(tp.pool.score, score0, slots * 4) && !memcmp(prev, prev0, slots * 4),
              "a refused call wrote");
    free(score0);
    free(prev0);
    free(prev);
    t_pool_free(&tp);
}

/* ---- several calls at once (stat_rules) ----------------------------------------- */

/* The NL lanes of one pool as three calls (lanes 0-1, 2, 3-4), each with
 * its own noise and, with @rows, its own slice of row lengths: stat_rules
 * must give every slot the bits ops->stat gives it call by call. */
static void check_rules(int32_t op, int32_t pt, bool rows)
{
    static const int32_t first[] = {0, 2, 3, NL};
    t_pool tp;
    size_t slots;
    float *prev = make(&tp, pt, 16, SINKD_F32, &slots);
    int32_t row_len[NL];
    for (int32_t l = 0; l < NL; l++)
        row_len[l] = t_int(0, tp.len[l] + 2);
    float *score0 = dup_f(tp.pool.score, slots), *prev0 = dup_f(prev, slots);
    sinkd_stat_args a[3];
    for (int i = 0; i < 3; i++) {
        int32_t l0 = first[i];
        a[i] = (sinkd_stat_args){
            .pool = &tp.pool, .op = op, .head_dim = 16, .quantile = 0.9f,
            .decay = 1.0f - 1.0f / 256, .temperature = 1.0f, .seed = t_next(), .prev = prev,
            .row_len = rows ? row_len + l0 : NULL,
            .lanes = {.n_lanes = first[i + 1] - l0, .len = tp.len + l0,
                      .page_off = tp.page_off + l0, .page_ids = tp.page_ids},
        };
    }
    cr_assert_eq(be->ops->stat_rules(be, a, 3), 0, "op %d", op);
    float *score1 = dup_f(tp.pool.score, slots), *prev1 = dup_f(prev, slots);

    memcpy(tp.pool.score, score0, slots * 4);
    memcpy(prev, prev0, slots * 4);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(be->ops->stat(be, &a[i]), 0);
    cr_assert(!memcmp(score1, tp.pool.score, slots * 4), "op %d pt %d rows %d: scores differ "
              "from the calls one by one", op, pt, rows);
    cr_assert(!memcmp(prev1, prev, slots * 4), "op %d: prev differs", op);
    /* and the rule did something: some lane had a token to rule */
    cr_assert(memcmp(score1, score0, slots * 4) || memcmp(prev1, prev0, slots * 4),
              "op %d: nothing changed", op);
    free(score0);
    free(prev0);
    free(score1);
    free(prev1);
    free(prev);
    t_pool_free(&tp);
}

Test(stats, rules_at_once)
{
    for (int round = 0; round < 4; round++)
        for (int32_t pt = 1; pt <= 16; pt *= 4) {
            check_rules(SINKD_STAT_OP_QUANTILE, pt, round & 1);
            check_rules(SINKD_STAT_OP_GUMBEL, pt, round & 1);
        }
}

Test(stats, rules_at_once_bad_args)
{
    t_pool tp;
    size_t slots;
    float *prev = make(&tp, 4, 16, SINKD_F32, &slots);
    float *other = dup_f(prev, slots), *score0 = dup_f(tp.pool.score, slots);
    sinkd_stat_args ok = {.pool = &tp.pool, .lanes = t_lanes(&tp), .op = SINKD_STAT_OP_QUANTILE,
                          .head_dim = 16, .quantile = 0.5f, .decay = 1, .temperature = 1,
                          .prev = prev};
    sinkd_stat_args a[2] = {ok, ok};
    cr_assert_eq(be->ops->stat_rules(be, a, 0), -EINVAL, "no call");
    a[1].op = SINKD_STAT_OP_GUMBEL;
    cr_assert_eq(be->ops->stat_rules(be, a, 2), -EINVAL, "mixed ops");
    a[0].op = a[1].op = SINKD_STAT_OP_DECAY;
    cr_assert_eq(be->ops->stat_rules(be, a, 2), -EINVAL, "not a rule");
    a[0] = a[1] = ok;
    a[1].prev = other;
    cr_assert_eq(be->ops->stat_rules(be, a, 2), -EINVAL, "two prevs");
    a[1] = ok;
    a[1].quantile = 0.75f;
    cr_assert_eq(be->ops->stat_rules(be, a, 2), -EINVAL, "two quantiles");
    a[1] = ok;
    a[1].decay = 2;
    cr_assert_eq(be->ops->stat_rules(be, a, 2), -EINVAL, "a bad call after a good one");
    a[1] = ok;
    int32_t bad_len[NL] = {1, 1, 1, 1, -1};
    a[1].lanes.len = bad_len;
    cr_assert_eq(be->ops->stat_rules(be, a, 2), -EINVAL, "a bad lane after a good call");
    cr_assert(!memcmp(tp.pool.score, score0, slots * 4) && !memcmp(prev, other, slots * 4),
              "a refused batch wrote");
    free(other);
    free(score0);
    free(prev);
    t_pool_free(&tp);
}

/* ---- token selection ------------------------------------------------------------ */

typedef struct ranked {
    double s;
    int32_t t;
} ranked;

static int cmp_ranked(const void *x, const void *y)
{
    const ranked *a = x, *b = y;
    int an = isnan(a->s), bn = isnan(b->s);
    if (an != bn)
        return an - bn; /* NaN last */
    if (!an && a->s != b->s)
        return a->s > b->s ? -1 : 1;
    return a->t - b->t;
}

static void check_topk_tokens(int32_t pt, int32_t k)
{
    t_pool tp;
    size_t slots;
    float *prev = make(&tp, pt, 16, SINKD_F32, &slots);
    for (size_t i = 0; i < slots; i++)
        if (t_int(0, 19) == 0)
            tp.pool.score[i] = NAN;
    int32_t *out = malloc(sizeof(int32_t) * NL * (size_t)k);
    for (int32_t i = 0; i < NL * k; i++)
        out[i] = -7;
    sinkd_topk_tokens_args a = {.pool = &tp.pool, .lanes = t_lanes(&tp), .k = k,
                                .out_pages = out};
    cr_assert_eq(be->ops->topk_tokens(be, &a), 0);
    for (int32_t l = 0; l < NL; l++) {
        int32_t len = tp.len[l], n = 0;
        ranked *r = malloc(sizeof *r * (size_t)(len + 1));
        bool *want = calloc((size_t)(len / pt + 2), sizeof *want);
        for (int32_t t = 0; t < len; t++)
            r[t] = (ranked){tp.pool.score[t_slot(&tp, l, t)], t};
        qsort(r, (size_t)len, sizeof *r, cmp_ranked);
        for (int32_t i = 0; i < len && i < k; i++)
            want[r[i].t / pt] = true;
        for (int32_t p = 0; p * pt < len; p++)
            if (want[p])
                cr_assert_eq(out[(size_t)l * k + n++], p, "lane %d k %d: entry %d", l, k, n - 1);
        for (int32_t i = n; i < k; i++)
            cr_assert_eq(out[(size_t)l * k + i], -1, "lane %d: entry %d not -1", l, i);
        free(r);
        free(want);
    }
    free(out);
    free(prev);
    t_pool_free(&tp);
}

Test(stats, topk_tokens)
{
    static const int32_t ks[] = {1, 3, 17, 64, 500};
    for (int i = 0; i < 5; i++)
        for (int32_t pt = 1; pt <= 16; pt *= 4)
            for (int round = 0; round < 3; round++)
                check_topk_tokens(pt, ks[i]);
}
