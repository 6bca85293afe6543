/*
 * CPU KV ops: append (both k/v layouts), keep-list compaction, the Quest key
 * bounds they maintain, and top-k page selection, against references built
 * here: stored rows equal the dtype-rounded inputs, kept tokens move with
 * their pos/score in order, each bound is the min/max of its page's keys
 * rotated in double (tolerance 1e-5), q.k <= the page score, and top-k equals
 * a brute-force top-k of the double-precision bound.
 */
#include <criterion/criterion.h>
#include <errno.h>

#include "tref.h"

#define TOL 1e-5

static sinkd_backend *be;

static void setup(void)
{
    cr_assert_eq(sinkd_cpu_backend_open(2, &be), 0);
}

static void teardown(void)
{
    sinkd_backend_close(be);
}

TestSuite(kvops, .init = setup, .fini = teardown);

static const int32_t dims[] = {16, 32, 64, 80, 128};
static const int32_t page_sizes[] = {1, 4, 16};
static const uint8_t dtypes[] = {SINKD_F32, SINKD_F16, SINKD_BF16};

static sinkd_rope rope_of(int i)
{
    return (sinkd_rope){
        .theta = 10000.0f, .scale = i % 3 == 2 ? 2.0f : 1.0f,
        .style = (uint8_t)(i % 2), .mode = (uint8_t)((i / 2) % 2),
    };
}

/* Every page in use of lane l: its bound is the channel-wise min/max of the
 * page's keys rotated at their effective positions. */
static void check_bounds(const t_pool *tp, int32_t l, const sinkd_rope *r)
{
    int32_t hd = tp->head_dim, pt = tp->pool.page_tokens, len = tp->len[l];
    double k[128];
    for (int32_t p = 0; p * pt < len; p++) {
        int32_t page = tp->page_ids[tp->page_off[l] + p];
        const float *mn = tp->pool.kmin + (size_t)page * tp->pool.head_dim_max;
        const float *mx = tp->pool.kmax + (size_t)page * tp->pool.head_dim_max;
        double lo[128], hi[128];
        for (int32_t i = 0; i < hd; i++) {
            lo[i] = INFINITY;
            hi[i] = -INFINITY;
        }
        for (int32_t t = p * pt; t < len && t < (p + 1) * pt; t++) {
            t_key(tp, l, t, r, k);
            for (int32_t i = 0; i < hd; i++) {
                lo[i] = fmin(lo[i], k[i]);
                hi[i] = fmax(hi[i], k[i]);
            }
        }
        for (int32_t i = 0; i < hd; i++) {
            cr_assert(t_close(mn[i], lo[i], TOL), "lane %d page %d kmin[%d] %g vs %g", l, p, i, mn[i], lo[i]);
            cr_assert(t_close(mx[i], hi[i], TOL), "lane %d page %d kmax[%d] %g vs %g", l, p, i, mx[i], hi[i]);
        }
    }
}

/* ---- append ----------------------------------------------------------------- */

static void check_append(int32_t hd, int32_t pt, uint8_t dt, sinkd_rope rope, int token_major)
{
    enum { NL = 5 };
    int32_t n = t_int(1, 20), len[NL];
    for (int32_t l = 0; l < NL; l++)
        len[l] = n + (l == 0 ? 0 : t_int(0, 40)); /* lane 0 starts empty */
    t_pool tp;
    t_pool_init(&tp, len, NL, pt, hd, dt);
    /* valid bounds for the old tokens: derive them with an identity compaction
     * of the lanes shortened to their old lengths */
    int32_t old[NL], keep_off[NL + 1] = {0}, *keep = malloc(sizeof(int32_t) * NL * 64);
    for (int32_t l = 0; l < NL; l++) {
        old[l] = len[l] - n;
        for (int32_t t = 0; t < old[l]; t++)
            keep[keep_off[l] + t] = t;
        keep_off[l + 1] = keep_off[l] + old[l];
        tp.len[l] = old[l];
    }
    sinkd_compact_args ca = {.pool = &tp.pool, .lanes = t_lanes(&tp), .head_dim = hd,
                             .rope = rope, .keep_off = keep_off, .keep = keep};
    cr_assert_eq(be->ops->kv_compact(be, &ca), 0);
    for (int32_t l = 0; l < NL; l++)
        tp.len[l] = len[l];

    char *pages0 = malloc((size_t)tp.pool.n_pages * tp.pool.page_bytes);
    memcpy(pages0, tp.pool.pages, (size_t)tp.pool.n_pages * tp.pool.page_bytes);
    size_t rows = (size_t)NL * n * hd;
    float *k = malloc(rows * sizeof(float)), *v = malloc(rows * sizeof(float));
    int32_t *pos = malloc(sizeof(int32_t) * NL * (size_t)n);
    t_fill(k, rows);
    t_fill(v, rows);
    for (int32_t i = 0; i < NL * n; i++)
        pos[i] = t_int(0, 5000);
    sinkd_append_args a = {
        .pool = &tp.pool, .lanes = t_lanes(&tp), .n = n, .head_dim = hd, .rope = rope,
        .k = k, .v = v, .pos = pos, .kv_token_major = token_major,
    };
    cr_assert_eq(be->ops->kv_append(be, &a), 0);

    for (int32_t l = 0; l < NL; l++) {
        for (int32_t t = 0; t < old[l]; t++) /* old rows untouched */
            for (int vv = 0; vv < 2; vv++) {
                size_t off = (size_t)((char *)t_row(&tp, l, t, vv) - (char *)tp.pool.pages);
                cr_assert_eq(memcmp(pages0 + off, t_row(&tp, l, t, vv), (size_t)hd * t_es(dt)), 0);
            }
        for (int32_t i = 0; i < n; i++) {
            int32_t t = old[l] + i;
            size_t r = token_major ? (size_t)i * NL + l : (size_t)l * n + i;
            for (int32_t e = 0; e < hd; e++) {
                float kr = k[r * hd + e], vr = v[r * hd + e];
                float h[2]; /* room for two elements of any dtype */
                t_store(dt, h, 0, kr);
                t_store(dt, h, 1, vr);
                cr_assert_eq(t_load(dt, t_row(&tp, l, t, 0), (size_t)e), t_load(dt, h, 0));
                cr_assert_eq(t_load(dt, t_row(&tp, l, t, 1), (size_t)e), t_load(dt, h, 1));
            }
            cr_assert_eq(tp.pool.pos[t_slot(&tp, l, t)], pos[(size_t)l * n + i]);
            cr_assert_eq(tp.pool.score[t_slot(&tp, l, t)], 0.0f);
        }
        check_bounds(&tp, l, &rope);
    }
    free(keep);
    free(pages0);
    free(k);
    free(v);
    free(pos);
    t_pool_free(&tp);
}

Test(kvops, append)
{
    for (int di = 0; di < 5; di++)
        for (int pi = 0; pi < 3; pi++)
            for (int ti = 0; ti < 3; ti++)
                check_append(dims[di], page_sizes[pi], dtypes[ti], rope_of(di + pi + ti),
                             (di + pi + ti) % 2);
}

/* ---- compaction ------------------------------------------------------------------ */

static void check_compact(int32_t hd, int32_t pt, uint8_t dt, sinkd_rope rope)
{
    enum { NL = 6 };
    int32_t len[NL];
    for (int32_t l = 0; l < NL; l++)
        len[l] = t_int(0, 60);
    t_pool tp;
    t_pool_init(&tp, len, NL, pt, hd, dt);
    size_t rb = (size_t)hd * t_es(dt);
    int32_t keep_off[NL + 1] = {0}, *keep = malloc(sizeof(int32_t) * NL * 61);
    for (int32_t l = 0; l < NL; l++) {
        int32_t nk = 0;
        for (int32_t t = 0; t < len[l]; t++) {
            int take = l == 1 ? 1 : l == 2 ? 0 : (int)(t_next() % 3 != 0); /* all, none, random */
            if (take)
                keep[keep_off[l] + nk++] = t;
        }
        keep_off[l + 1] = keep_off[l] + nk;
    }
    /* snapshot: rows, pos, score of every token */
    int32_t total = 0;
    for (int32_t l = 0; l < NL; l++)
        total += len[l];
    char *krow = malloc(rb * (size_t)(total + 1)), *vrow = malloc(rb * (size_t)(total + 1));
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)(total + 1));
    float *score = malloc(sizeof(float) * (size_t)(total + 1));
    for (int32_t l = 0, o = 0; l < NL; l++)
        for (int32_t t = 0; t < len[l]; t++, o++) {
            memcpy(krow + o * rb, t_row(&tp, l, t, 0), rb);
            memcpy(vrow + o * rb, t_row(&tp, l, t, 1), rb);
            pos[o] = tp.pool.pos[t_slot(&tp, l, t)];
            score[o] = tp.pool.score[t_slot(&tp, l, t)];
        }
    sinkd_compact_args a = {.pool = &tp.pool, .lanes = t_lanes(&tp), .head_dim = hd,
                            .rope = rope, .keep_off = keep_off, .keep = keep};
    cr_assert_eq(be->ops->kv_compact(be, &a), 0);
    for (int32_t l = 0, o = 0; l < NL; o += len[l], l++) {
        int32_t nk = keep_off[l + 1] - keep_off[l];
        for (int32_t j = 0; j < nk; j++) {
            int32_t src = o + keep[keep_off[l] + j];
            cr_assert_eq(memcmp(t_row(&tp, l, j, 0), krow + src * rb, rb), 0, "lane %d tok %d", l, j);
            cr_assert_eq(memcmp(t_row(&tp, l, j, 1), vrow + src * rb, rb), 0);
            cr_assert_eq(tp.pool.pos[t_slot(&tp, l, j)], pos[src]);
            cr_assert_eq(tp.pool.score[t_slot(&tp, l, j)], score[src]);
        }
        tp.len[l] = nk; /* the store shortens the lane */
        check_bounds(&tp, l, &rope);
    }
    free(keep);
    free(krow);
    free(vrow);
    free(pos);
    free(score);
    t_pool_free(&tp);
}

Test(kvops, compact)
{
    for (int di = 0; di < 5; di++)
        for (int pi = 0; pi < 3; pi++)
            for (int ti = 0; ti < 3; ti++)
                check_compact(dims[di], page_sizes[pi], dtypes[ti], rope_of(di + 2 * pi + ti));
}

Test(kvops, compact_rejects_bad_keep_lists)
{
    int32_t len[2] = {5, 7};
    t_pool tp;
    t_pool_init(&tp, len, 2, 4, 16, SINKD_F32);
    int32_t keep_off[3] = {0, 2, 4};
    int32_t bad[][4] = {{1, 1, 0, 1}, {2, 1, 0, 1}, {0, 5, 0, 1}, {0, 1, 0, 7}, {-1, 1, 0, 1}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sinkd_compact_args a = {.pool = &tp.pool, .lanes = t_lanes(&tp), .head_dim = 16,
                                .rope = rope_of(0), .keep_off = keep_off, .keep = bad[i]};
        cr_assert_eq(be->ops->kv_compact(be, &a), -EINVAL, "keep list %zu", i);
    }
    t_pool_free(&tp);
}

/* ---- top-k pages ---------------------------------------------------------------- */

typedef struct rb {
    double b;
    int32_t page;
} rb;

static int rb_cmp(const void *x, const void *y)
{
    const rb *a = x, *b = y;
    if (a->b != b->b)
        return a->b > b->b ? -1 : 1;
    return a->page - b->page;
}

static void check_topk(int32_t G, int32_t hd, int32_t pt, uint8_t dt, sinkd_rope rope, int32_t k)
{
    enum { NS = 2, NKV = 2, NL = NS * NKV };
    int32_t nqh = NKV * G, len[NL];
    for (int32_t l = 0; l < NL; l++)
        len[l] = t_int(1, 90);
    t_pool tp;
    t_pool_init(&tp, len, NL, pt, hd, dt);
    int32_t keep_off[NL + 1] = {0}, *keep = malloc(sizeof(int32_t) * NL * 90);
    for (int32_t l = 0; l < NL; l++) {
        for (int32_t t = 0; t < len[l]; t++)
            keep[keep_off[l] + t] = t;
        keep_off[l + 1] = keep_off[l] + len[l];
    }
    sinkd_compact_args ca = {.pool = &tp.pool, .lanes = t_lanes(&tp), .head_dim = hd,
                             .rope = rope, .keep_off = keep_off, .keep = keep};
    cr_assert_eq(be->ops->kv_compact(be, &ca), 0); /* bounds */

    size_t nq = (size_t)NS * nqh * hd;
    float *q = malloc(nq * sizeof(float));
    t_fill(q, nq);
    int32_t q_pos[NS] = {t_int(100, 300), t_int(100, 300)};
    int32_t *pages = malloc(sizeof(int32_t) * NL * (size_t)k);
    float *scores = malloc(sizeof(float) * NL * (size_t)k);
    for (int32_t i = 0; i < NL * k; i++) {
        pages[i] = -7;
        scores[i] = NAN;
    }
    sinkd_topk_pages_args a = {
        .pool = &tp.pool, .lanes = t_lanes(&tp), .n_seqs = NS, .n_q_heads = nqh,
        .n_kv_heads = NKV, .head_dim = hd, .rope = rope, .q = q, .q_pos = q_pos, .k = k,
        .out_pages = pages, .out_scores = scores,
    };
    cr_assert_eq(be->ops->topk_pages(be, &a), 0);

    double *qr = malloc(sizeof(double) * (size_t)G * hd), key[128];
    rb bounds[90];
    for (int32_t l = 0; l < NL; l++) {
        int32_t s = l / NKV, h = l % NKV, np = (len[l] + pt - 1) / pt;
        double qpos = rope.mode == SINKD_ROPE_CACHE ? len[l] - 1 : q_pos[s];
        for (int32_t g = 0; g < G; g++) {
            for (int32_t i = 0; i < hd; i++)
                qr[(size_t)g * hd + i] = q[((size_t)s * nqh + (size_t)h * G + g) * hd + i];
            t_rope(qr + (size_t)g * hd, hd, qpos, &rope);
        }
        for (int32_t p = 0; p < np; p++) {
            int32_t page = tp.page_ids[tp.page_off[l] + p];
            const float *mn = tp.pool.kmin + (size_t)page * tp.pool.head_dim_max;
            const float *mx = tp.pool.kmax + (size_t)page * tp.pool.head_dim_max;
            double b = 0;
            for (int32_t g = 0; g < G * hd; g++)
                b += fmax(qr[g] * mx[g % hd], qr[g] * mn[g % hd]);
            bounds[p] = (rb){b, p};
            /* Quest: the group's q.k of every key of the page is bounded */
            for (int32_t t = p * pt; t < len[l] && t < (p + 1) * pt; t++) {
                t_key(&tp, l, t, &rope, key);
                double dot = 0;
                for (int32_t g = 0; g < G * hd; g++)
                    dot += qr[g] * key[g % hd];
                cr_assert(dot <= b + TOL * (1 + fabs(b)), "q.k %g over bound %g", dot, b);
            }
        }
        rb sorted[90];
        memcpy(sorted, bounds, sizeof(rb) * (size_t)np);
        qsort(sorted, (size_t)np, sizeof(rb), rb_cmp);
        int32_t take = np < k ? np : k, prev = -1;
        double kth = sorted[take - 1].b;
        for (int32_t j = 0; j < k; j++) {
            int32_t got = pages[(size_t)l * k + j];
            if (j >= take) {
                cr_assert_eq(got, -1);
                cr_assert(isinf(scores[(size_t)l * k + j]) && scores[(size_t)l * k + j] < 0);
                continue;
            }
            cr_assert(got > prev && got < np, "page %d after %d", got, prev);
            prev = got;
            /* brute force: a chosen page is among the top k (up to rounding) */
            cr_assert(bounds[got].b >= kth - TOL * (1 + fabs(kth)), "page %d bound %g < kth %g",
                      got, bounds[got].b, kth);
            cr_assert(t_close(scores[(size_t)l * k + j], bounds[got].b, TOL));
        }
    }
    free(qr);
    free(keep);
    free(q);
    free(pages);
    free(scores);
    t_pool_free(&tp);
}

Test(kvops, topk_pages)
{
    static const int32_t groups[] = {1, 2, 4, 8, 16};
    for (int gi = 0; gi < 5; gi++)
        for (int di = 0; di < 5; di++)
            for (int r = 0; r < 2; r++)
                check_topk(groups[gi], dims[di], page_sizes[(gi + di + r) % 3],
                           dtypes[(gi + r) % 3], rope_of(gi + di + r), r ? 3 : 100);
}

/* Exact ties go to the lower page index. */
Test(kvops, topk_ties_lowest_page)
{
    int32_t len[1] = {16};
    t_pool tp;
    t_pool_init(&tp, len, 1, 4, 16, SINKD_F32);
    for (int32_t p = 0; p < tp.pool.n_pages * tp.pool.head_dim_max; p++) {
        tp.pool.kmin[p] = -1;
        tp.pool.kmax[p] = 1;
    }
    float q[16];
    t_fill(q, 16);
    int32_t qp = 0, pages[2];
    sinkd_topk_pages_args a = {
        .pool = &tp.pool, .lanes = t_lanes(&tp), .n_seqs = 1, .n_q_heads = 1, .n_kv_heads = 1,
        .head_dim = 16, .rope = rope_of(0), .q = q, .q_pos = &qp, .k = 2, .out_pages = pages,
    };
    cr_assert_eq(be->ops->topk_pages(be, &a), 0);
    cr_assert_eq(pages[0], 0);
    cr_assert_eq(pages[1], 1);
    t_pool_free(&tp);
}
