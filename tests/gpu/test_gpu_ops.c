/*
 * Every CUDA op against its CPU twin (kernels/cpu) on random data from a
 * fresh seed (logged), outputs poisoned with NaN first. Relative error
 * ||gpu - cpu|| / ||cpu||: fp32 < 1e-5, fp16/bf16 < 1e-2 (DESIGN.md §6).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_twin.h"
#include "half.h"

#define TOL32 1e-5
#define TOL16 1e-2

static void check_err(double e, double tol, const char *what)
{
    cr_expect(e < tol, "%s: relative error %.3g >= %.3g", what, e, tol);
}

/* ---- model ops ------------------------------------------------------------ */

Test(gpu_ops, elementwise)
{
    TWIN_OR_SKIP(t);
    int m = twin_range(&t, 1, 9), d = 16 * twin_range(&t, 1, 300);
    size_t n = (size_t)m * d;
    float *hx = twin_rand_f32(&t, n, -2, 2), *hg = twin_rand_f32(&t, d, -1, 1), *hu = twin_rand_f32(&t, n, -2, 2);
    tbuf x = tbuf_new(&t, hx, n * 4), g = tbuf_new(&t, hg, d * 4), u = tbuf_new(&t, hu, n * 4);
    tbuf y = tbuf_new(&t, NULL, n * 4);
    sinkd_backend *be[2] = {t.cpu, t.gpu};
    for (int b = 0; b < 2; b++) {
        void *py = b ? y.g : y.c, *px = b ? x.g : x.c, *pg = b ? g.g : g.c;
        cr_assert_eq(be[b]->ops->rmsnorm(be[b], py, px, pg, m, d, 1e-5f), 0);
    }
    check_err(tbuf_rel_err(&t, &y, n), TOL32, "rmsnorm");
    for (int b = 0; b < 2; b++)
        cr_assert_eq(be[b]->ops->swiglu(be[b], b ? x.g : x.c, b ? u.g : u.c, m, d), 0);
    check_err(tbuf_rel_err(&t, &x, n), TOL32, "swiglu");
    for (int b = 0; b < 2; b++)
        cr_assert_eq(be[b]->ops->add(be[b], b ? x.g : x.c, b ? u.g : u.c, (int64_t)n), 0);
    check_err(tbuf_rel_err(&t, &x, n), TOL32, "add");

    /* rope in place, both styles, positions up to a few thousand */
    int nh = twin_range(&t, 1, 4), hd = 2 * twin_range(&t, 8, 64);
    int32_t *hp = malloc(m * sizeof *hp);
    for (int i = 0; i < m; i++)
        hp[i] = twin_range(&t, 0, 4000);
    float *hr = twin_rand_f32(&t, (size_t)m * nh * hd, -1, 1);
    tbuf pos = tbuf_new(&t, hp, m * 4);
    for (int style = 0; style < 2; style++) {
        sinkd_rope rp = {.theta = style ? 500000.0f : 10000.0f, .scale = style ? 1.0f : 4.0f,
                         .style = (uint8_t)style};
        tbuf r = tbuf_new(&t, hr, (size_t)m * nh * hd * 4);
        for (int b = 0; b < 2; b++)
            cr_assert_eq(be[b]->ops->rope(be[b], b ? r.g : r.c, b ? pos.g : pos.c, m, nh, hd, &rp), 0);
        check_err(tbuf_rel_err(&t, &r, (size_t)m * nh * hd), TOL32, style ? "rope neox" : "rope adjacent");
        tbuf_free(&t, &r);
    }

    /* argmax: plant a tie at two indices, the lower must win */
    int an = twin_range(&t, 2, 5000);
    float *ha = twin_rand_f32(&t, (size_t)m * an, -1, 1);
    for (int i = 0; i < m; i++) {
        int a = twin_range(&t, 0, an - 1), b2 = twin_range(&t, 0, an - 1);
        ha[(size_t)i * an + a] = ha[(size_t)i * an + b2] = 3.0f;
    }
    tbuf ax = tbuf_new(&t, ha, (size_t)m * an * 4), ids = tbuf_new(&t, NULL, m * 4);
    for (int b = 0; b < 2; b++)
        cr_assert_eq(be[b]->ops->argmax(be[b], b ? ids.g : ids.c, b ? ax.g : ax.c, m, an), 0);
    int32_t *ic, *ig;
    tbuf_get(&t, &ids, (void **)&ic, (void **)&ig);
    for (int i = 0; i < m; i++)
        cr_expect_eq(ig[i], ic[i], "argmax row %d: gpu %d cpu %d", i, ig[i], ic[i]);
    free(ic);
    free(ig);
    tbuf_free(&t, &ax);
    tbuf_free(&t, &ids);
    free(ha);
    tbuf_free(&t, &pos);
    free(hp);
    free(hr);
    tbuf_free(&t, &x);
    tbuf_free(&t, &g);
    tbuf_free(&t, &u);
    tbuf_free(&t, &y);
    free(hx);
    free(hg);
    free(hu);
    twin_close(&t);
}

/* Weight of @dt with values of f32 @w (rows*cols), host bytes. */
static void *weight_bytes(const float *w, size_t n, uint8_t dt)
{
    if (dt == SINKD_F32) {
        void *p = malloc(n * 4);
        memcpy(p, w, n * 4);
        return p;
    }
    uint16_t *h = malloc(n * 2);
    for (size_t i = 0; i < n; i++)
        h[i] = dt == SINKD_F16 ? sinkd_f32_to_f16(w[i]) : sinkd_f32_to_bf16(w[i]);
    return h;
}

Test(gpu_ops, matmul_and_embed)
{
    TWIN_OR_SKIP(t);
    sinkd_backend *be[2] = {t.cpu, t.gpu};
    for (int dt = 0; dt < 3; dt++) {
        for (int mi = 0; mi < 3; mi++) {
            int m = mi == 0 ? 1 : mi == 1 ? twin_range(&t, 2, 9) : twin_range(&t, 17, 70);
            int rows = twin_range(&t, 1, 700), cols = 8 * twin_range(&t, 1, 200);
            float *hw = twin_rand_f32(&t, (size_t)rows * cols, -1, 1);
            float *hx = twin_rand_f32(&t, (size_t)m * cols, -1, 1);
            float *hb = twin_rand_f32(&t, rows, -1, 1);
            void *wb = weight_bytes(hw, (size_t)rows * cols, (uint8_t)dt);
            size_t es = dt == SINKD_F32 ? 4 : 2;
            tbuf w = tbuf_new(&t, wb, (size_t)rows * cols * es), x = tbuf_new(&t, hx, (size_t)m * cols * 4);
            tbuf bias = tbuf_new(&t, hb, rows * 4), y = tbuf_new(&t, NULL, (size_t)m * rows * 4);
            for (int b = 0; b < 2; b++) {
                sinkd_weight sw = {.data = b ? w.g : w.c, .rows = rows, .cols = cols, .dtype = (uint8_t)dt};
                cr_assert_eq(be[b]->ops->matmul(be[b], b ? y.g : y.c, b ? x.g : x.c, m, &sw,
                                                (mi & 1) ? (b ? bias.g : bias.c) : NULL), 0);
            }
            char what[64];
            snprintf(what, sizeof what, "matmul %s m=%d %dx%d", sinkd_dtype_name(dt), m, rows, cols);
            check_err(tbuf_rel_err(&t, &y, (size_t)m * rows), dt == SINKD_F32 ? TOL32 : TOL16, what);

            /* embed rows of the same table, one id out of range gives zeros */
            int ne = twin_range(&t, 1, 20);
            int32_t *hid = malloc(ne * sizeof *hid);
            for (int i = 0; i < ne; i++)
                hid[i] = twin_range(&t, 0, rows - 1);
            tbuf id = tbuf_new(&t, hid, ne * 4), eo = tbuf_new(&t, NULL, (size_t)ne * cols * 4);
            for (int b = 0; b < 2; b++) {
                sinkd_weight sw = {.data = b ? w.g : w.c, .rows = rows, .cols = cols, .dtype = (uint8_t)dt};
                cr_assert_eq(be[b]->ops->embed(be[b], b ? eo.g : eo.c, &sw, b ? id.g : id.c, ne), 0);
            }
            check_err(tbuf_rel_err(&t, &eo, (size_t)ne * cols), TOL32, "embed");
            tbuf_free(&t, &id);
            tbuf_free(&t, &eo);
            free(hid);
            tbuf_free(&t, &w);
            tbuf_free(&t, &x);
            tbuf_free(&t, &bias);
            tbuf_free(&t, &y);
            free(hw);
            free(hx);
            free(hb);
            free(wb);
        }
    }
    twin_close(&t);
}

/* ops->matvec (CUDA only) against the CPU composing the same result from
 * rmsnorm, matmul, add and swiglu: every epilogue, dtype, norm on and off,
 * ragged rows, outputs poisoned (STORE, SWIGLU) or holding a residual (ADD). */
/* One random case of ops->matvec (@gemm false) or ops->matmul_fused
 * against the CPU composing rmsnorm, matmul, add and swiglu: dtype @dt,
 * epilogue @ep; rep 0 one row, rep 1 no norm, rep 2 short rows. */
static void mv_case(twin *t, int dt, int ep, int rep, bool gemm)
{
    sinkd_backend *cpu = t->cpu, *gpu = t->gpu;
    int (*op)(sinkd_backend *, const sinkd_matvec_args *) = gemm ? gpu->ops->matmul_fused : gpu->ops->matvec;
    int m = rep == 0 ? 1 : gemm ? twin_range(t, 2, 70) : twin_range(t, 2, SINKD_MATVEC_MAX_M);
    int cols = 8 * twin_range(t, 1, rep == 2 ? 600 : gemm ? 300 : 2048 / m),
        n_w = ep == SINKD_MATVEC_SWIGLU ? 2 : twin_range(t, 1, 3);
    bool norm = rep != 1;
    size_t es = dt == SINKD_F32 ? 4 : 2;
    float *hx = twin_rand_f32(t, (size_t)m * cols, -1, 1), *hg = twin_rand_f32(t, cols, 0.5f, 1.5f);
    tbuf x = tbuf_new(t, hx, (size_t)m * cols * 4), g = tbuf_new(t, hg, cols * 4);
    tbuf xn = tbuf_new(t, NULL, (size_t)m * cols * 4);
    tbuf w[3], bias[3], y[3], up = {0};
    sinkd_weight cw[3], gw[3];
    int rows[3];
    sinkd_matvec_args a = {.m = m, .n_w = n_w, .x = x.g, .norm = norm ? g.g : NULL,
                           .norm_eps = 1e-5f, .epilogue = ep};
    if (norm)
        cr_assert_eq(cpu->ops->rmsnorm(cpu, xn.c, x.c, g.c, m, cols, 1e-5f), 0);
    for (int i = 0; i < n_w; i++) {
        rows[i] = ep == SINKD_MATVEC_SWIGLU && i ? rows[0] : twin_range(t, 1, 600);
        float *hw = twin_rand_f32(t, (size_t)rows[i] * cols, -1, 1);
        float *hb = twin_rand_f32(t, rows[i], -1, 1);
        float *hy = twin_rand_f32(t, (size_t)m * rows[i], -1, 1);
        void *wb = weight_bytes(hw, (size_t)rows[i] * cols, (uint8_t)dt);
        w[i] = tbuf_new(t, wb, (size_t)rows[i] * cols * es);
        bias[i] = tbuf_new(t, hb, rows[i] * 4);
        y[i] = tbuf_new(t, ep == SINKD_MATVEC_ADD ? hy : NULL, (size_t)m * rows[i] * 4);
        cw[i] = (sinkd_weight){.data = w[i].c, .rows = rows[i], .cols = cols, .dtype = (uint8_t)dt};
        gw[i] = cw[i];
        gw[i].data = w[i].g;
        bool with_bias = twin_range(t, 0, 1);
        a.w[i] = &gw[i];
        a.bias[i] = with_bias ? bias[i].g : NULL;
        a.y[i] = y[i].g;
        /* the CPU composes: p_i into up (ADD, SWIGLU's up) or y_i */
        const float *in = norm ? xn.c : x.c, *cb = with_bias ? bias[i].c : NULL;
        if (ep == SINKD_MATVEC_STORE || (ep == SINKD_MATVEC_SWIGLU && i == 0)) {
            cr_assert_eq(cpu->ops->matmul(cpu, y[i].c, in, m, &cw[i], cb), 0);
        } else {
            up = tbuf_new(t, NULL, (size_t)m * rows[i] * 4);
            cr_assert_eq(cpu->ops->matmul(cpu, up.c, in, m, &cw[i], cb), 0);
            if (ep == SINKD_MATVEC_ADD)
                cr_assert_eq(cpu->ops->add(cpu, y[i].c, up.c, (int64_t)m * rows[i]), 0);
            else
                cr_assert_eq(cpu->ops->swiglu(cpu, y[0].c, up.c, m, rows[0]), 0);
            tbuf_free(t, &up);
        }
        free(hw);
        free(hb);
        free(hy);
        free(wb);
    }
    if (!gemm && m * cols > SINKD_MATVEC_MAX_X) {
        cr_expect_eq(op(gpu, &a), -ENOTSUP, "m %d x cols %d", m, cols);
        n_w = 0; /* nothing to compare; free below */
    } else {
        cr_assert_eq(op(gpu, &a), 0, "m %d cols %d", m, cols);
    }
    for (int i = 0; i < (ep == SINKD_MATVEC_SWIGLU && n_w ? 1 : n_w); i++) {
        char what[96];
        snprintf(what, sizeof what, "%s %s ep %d norm %d m=%d w%d %dx%d", gemm ? "matmul_fused" : "matvec",
                 sinkd_dtype_name(dt), ep, norm, m, i, rows[i], cols);
        check_err(tbuf_rel_err(t, &y[i], (size_t)m * rows[i]), dt == SINKD_F32 ? TOL32 : TOL16, what);
    }
    /* shapes it does not take, and bad arguments */
    sinkd_matvec_args bad = a;
    if (!gemm) {
        bad.x = (const float *)x.g + 1;
        cr_expect_eq(op(gpu, &bad), -ENOTSUP, "x off 16-byte alignment");
        bad = a;
        bad.m = SINKD_MATVEC_MAX_M + 1;
        cr_expect_eq(op(gpu, &bad), -EINVAL, "m too large");
    } else {
        bad.m = 0;
        cr_expect_eq(op(gpu, &bad), -EINVAL, "no rows");
    }
    bad = a;
    bad.epilogue = 7;
    cr_expect_eq(op(gpu, &bad), -EINVAL, "unknown epilogue");
    for (int i = 0; i < a.n_w; i++) {
        tbuf_free(t, &w[i]);
        tbuf_free(t, &bias[i]);
        tbuf_free(t, &y[i]);
    }
    tbuf_free(t, &x);
    tbuf_free(t, &g);
    tbuf_free(t, &xn);
    free(hx);
    free(hg);
}

Test(gpu_ops, matvec)
{
    TWIN_OR_SKIP(t);
    cr_assert(t.gpu->ops->matvec && !t.cpu->ops->matvec);
    for (int dt = 0; dt < 3; dt++)
        for (int ep = SINKD_MATVEC_STORE; ep <= SINKD_MATVEC_SWIGLU; ep++)
            for (int rep = 0; rep < 3; rep++)
                mv_case(&t, dt, ep, rep, false);
    twin_close(&t);
}

Test(gpu_ops, matmul_fused)
{
    TWIN_OR_SKIP(t);
    cr_assert(t.gpu->ops->matmul_fused && !t.cpu->ops->matmul_fused);
    for (int dt = 0; dt < 3; dt++)
        for (int ep = SINKD_MATVEC_STORE; ep <= SINKD_MATVEC_SWIGLU; ep++)
            for (int rep = 0; rep < 3; rep++)
                mv_case(&t, dt, ep, rep, true);
    twin_close(&t);
}

/* ---- KV pool fixture -------------------------------------------------------- */

typedef struct tpool {
    sinkd_kv_pool pc, pg;  /* the pool as each backend sees it */
    tbuf pages, pos, score, kmin, kmax;
    tbuf len, page_off, page_ids;
    sinkd_lanes lc, lg;
    int32_t *h_len, *h_off, *h_ids;
    int n_lanes, np, pt, d;
    uint8_t dt;
} tpool;

/* A pool of random pages of @pt tokens and @n_lanes lanes of random
 * lengths in [lo, hi], each with @spare extra pages reserved; pages drawn at
 * random. */
static void tpool_init_pt(twin *t, tpool *p, uint8_t dt, int d, int pt, int n_lanes, int lo, int hi,
                          int spare)
{
    memset(p, 0, sizeof *p);
    p->dt = dt;
    p->d = d;
    p->pt = pt;
    p->n_lanes = n_lanes;
    p->h_len = malloc(n_lanes * sizeof(int32_t));
    p->h_off = malloc((n_lanes + 1) * sizeof(int32_t));
    p->h_off[0] = 0;
    for (int l = 0; l < n_lanes; l++) {
        p->h_len[l] = twin_range(t, lo, hi);
        p->h_off[l + 1] = p->h_off[l] + (p->h_len[l] + p->pt - 1) / p->pt + spare;
    }
    p->np = p->h_off[n_lanes] + twin_range(t, 1, 8);
    int *perm = twin_perm(t, p->np);
    p->h_ids = malloc((p->h_off[n_lanes] + 1) * sizeof(int32_t));
    for (int i = 0; i < p->h_off[n_lanes]; i++)
        p->h_ids[i] = perm[i];
    free(perm);

    size_t page_bytes = (size_t)2 * p->pt * d * 2;
    size_t nel = (size_t)p->np * page_bytes / 2;
    uint16_t *hp = malloc(nel * 2);
    for (size_t i = 0; i < nel; i++) {
        float v = twin_uniform(t, -1, 1);
        hp[i] = dt == SINKD_F16 ? sinkd_f32_to_f16(v) : sinkd_f32_to_bf16(v);
    }
    size_t ns = (size_t)p->np * p->pt;
    int32_t *hpos = malloc(ns * 4);
    for (size_t i = 0; i < ns; i++)
        hpos[i] = twin_range(t, 0, 6000);
    float *hs = twin_rand_f32(t, ns, 0, 1);
    float *hz = calloc((size_t)p->np * d, 4);
    p->pages = tbuf_new(t, hp, nel * 2);
    p->pos = tbuf_new(t, hpos, ns * 4);
    p->score = tbuf_new(t, hs, ns * 4);
    p->kmin = tbuf_new(t, hz, (size_t)p->np * d * 4);
    p->kmax = tbuf_new(t, hz, (size_t)p->np * d * 4);
    p->len = tbuf_new(t, p->h_len, n_lanes * 4);
    p->page_off = tbuf_new(t, p->h_off, (n_lanes + 1) * 4);
    p->page_ids = tbuf_new(t, p->h_ids, (p->h_off[n_lanes] + 1) * 4);
    free(hp);
    free(hpos);
    free(hs);
    free(hz);
    for (int b = 0; b < 2; b++) {
        sinkd_kv_pool *kp = b ? &p->pg : &p->pc;
        *kp = (sinkd_kv_pool){
            .pages = b ? p->pages.g : p->pages.c,
            .pos = b ? p->pos.g : p->pos.c,
            .score = b ? p->score.g : p->score.c,
            .kmin = b ? p->kmin.g : p->kmin.c,
            .kmax = b ? p->kmax.g : p->kmax.c,
            .page_bytes = page_bytes,
            .n_pages = p->np,
            .page_tokens = p->pt,
            .head_dim_max = d,
            .dtype = dt,
        };
        sinkd_lanes *ln = b ? &p->lg : &p->lc;
        *ln = (sinkd_lanes){
            .n_lanes = n_lanes,
            .len = b ? p->len.g : p->len.c,
            .page_off = b ? p->page_off.g : p->page_off.c,
            .page_ids = b ? p->page_ids.g : p->page_ids.c,
        };
    }
}

/* The same with pages of 16 tokens. */
static void tpool_init(twin *t, tpool *p, uint8_t dt, int d, int n_lanes, int lo, int hi, int spare)
{
    tpool_init_pt(t, p, dt, d, 16, n_lanes, lo, hi, spare);
}

static void tpool_free(twin *t, tpool *p)
{
    tbuf_free_list(t, (tbuf *const[]){&p->pages, &p->pos, &p->score, &p->kmin, &p->kmax, &p->len,
                                      &p->page_off, &p->page_ids, NULL});
    free(p->h_len);
    free(p->h_off);
    free(p->h_ids);
}

/* Recompute every lane's bounds on both backends (identity keep lists). */
/* Page bounds of every lane's first len - @drop tokens (an identity keep
 * list): what the store holds before it appends @drop tokens. */
static void tpool_bounds_prefix(twin *t, tpool *p, const sinkd_rope *rope, int drop)
{
    int32_t *off = malloc((p->n_lanes + 1) * 4), *keep;
    off[0] = 0;
    for (int l = 0; l < p->n_lanes; l++)
        off[l + 1] = off[l] + (p->h_len[l] > drop ? p->h_len[l] - drop : 0);
    keep = malloc((off[p->n_lanes] + 1) * 4);
    for (int l = 0; l < p->n_lanes; l++)
        for (int i = 0; i < off[l + 1] - off[l]; i++)
            keep[off[l] + i] = i;
    tbuf ko = tbuf_new(t, off, (p->n_lanes + 1) * 4), kk = tbuf_new(t, keep, (off[p->n_lanes] + 1) * 4);
    sinkd_backend *be[2] = {t->cpu, t->gpu};
    for (int b = 0; b < 2; b++) {
        sinkd_compact_args a = {.pool = b ? &p->pg : &p->pc, .lanes = b ? p->lg : p->lc,
                                .head_dim = p->d, .rope = *rope, .keep_off = b ? ko.g : ko.c,
                                .keep = b ? kk.g : kk.c};
        cr_assert_eq(be[b]->ops->kv_compact(be[b], &a), 0);
    }
    tbuf_free(t, &ko);
    tbuf_free(t, &kk);
    free(off);
    free(keep);
}

static void tpool_bounds(twin *t, tpool *p, const sinkd_rope *rope)
{
    tpool_bounds_prefix(t, p, rope, 0);
}

/* Pool pages of both backends as f32 (K and V of the first @d columns). */
static double pages_err(twin *t, tpool *p)
{
    void *c, *g;
    tbuf_get(t, &p->pages, &c, &g);
    size_t n = p->pages.bytes / 2;
    float *fc = malloc(n * 4), *fg = malloc(n * 4);
    for (size_t i = 0; i < n; i++) {
        uint16_t a = ((uint16_t *)c)[i], b = ((uint16_t *)g)[i];
        fc[i] = p->dt == SINKD_F16 ? sinkd_f16_to_f32(a) : sinkd_bf16_to_f32(a);
        fg[i] = p->dt == SINKD_F16 ? sinkd_f16_to_f32(b) : sinkd_bf16_to_f32(b);
    }
    double e = rel_err(fg, fc, n);
    free(c);
    free(g);
    free(fc);
    free(fg);
    return e;
}

static sinkd_rope rand_rope(twin *t)
{
    sinkd_rope r = {.theta = twin_range(t, 0, 1) ? 10000.0f : 500000.0f,
                    .scale = twin_range(t, 0, 2) == 0 ? 2.0f : 1.0f,
                    .style = (uint8_t)twin_range(t, 0, 1),
                    .mode = (uint8_t)twin_range(t, 0, 1)};
    return r;
}

static int rand_head_dim(twin *t)
{
    static const int dims[] = {64, 128, 128, 80, 96, 256, 32};
    return dims[twin_range(t, 0, 6)];
}

/* ---- append and compact ------------------------------------------------------ */

Test(gpu_ops, append_compact)
{
    TWIN_OR_SKIP(t);
    sinkd_backend *be[2] = {t.cpu, t.gpu};
    for (int rep = 0; rep < 6; rep++) {
        uint8_t dt = rep & 1 ? SINKD_BF16 : SINKD_F16;
        int d = rand_head_dim(&t), nl = twin_range(&t, 1, 12);
        tpool p;
        tpool_init(&t, &p, dt, d, nl, 40, 300, 0);
        sinkd_rope rope = rand_rope(&t);
        int n = rep < 2 ? 1 : twin_range(&t, 1, 40); /* one token: bounds folded in */
        int tm = twin_range(&t, 0, 1);
        float *hk = twin_rand_f32(&t, (size_t)nl * n * d, -2, 2), *hv = twin_rand_f32(&t, (size_t)nl * n * d, -2, 2);
        int32_t *hpos = malloc((size_t)nl * n * 4);
        for (int i = 0; i < nl * n; i++)
            hpos[i] = twin_range(&t, 0, 9000);
        tbuf k = tbuf_new(&t, hk, (size_t)nl * n * d * 4), v = tbuf_new(&t, hv, (size_t)nl * n * d * 4);
        tbuf ps = tbuf_new(&t, hpos, (size_t)nl * n * 4);
        tpool_bounds_prefix(&t, &p, &rope, n);
        for (int b = 0; b < 2; b++) {
            sinkd_append_args a = {.pool = b ? &p.pg : &p.pc, .lanes = b ? p.lg : p.lc, .n = n,
                                   .head_dim = d, .rope = rope, .k = b ? k.g : k.c,
                                   .v = b ? v.g : v.c, .pos = b ? ps.g : ps.c, .kv_token_major = tm};
            cr_assert_eq(be[b]->ops->kv_append(be[b], &a), 0);
        }
        check_err(pages_err(&t, &p), 1e-6, "append pages");
        check_err(tbuf_rel_err(&t, &p.score, (size_t)p.np * p.pt), TOL32, "append score");
        check_err(tbuf_rel_err(&t, &p.kmin, (size_t)p.np * d), TOL32, "append kmin");
        check_err(tbuf_rel_err(&t, &p.kmax, (size_t)p.np * d), TOL32, "append kmax");
        int32_t *pc, *pg;
        tbuf_get(&t, &p.pos, (void **)&pc, (void **)&pg);
        cr_expect(memcmp(pc, pg, p.pos.bytes) == 0, "append pos differ");
        free(pc);
        free(pg);

        /* compaction with random keep lists (some lanes keep all, some none) */
        int32_t *off = malloc((nl + 1) * 4), *keep = malloc(((size_t)p.h_off[nl] * p.pt + 1) * 4);
        off[0] = 0;
        for (int l = 0; l < nl; l++) {
            int mode = twin_range(&t, 0, 5), c0 = off[l];
            for (int i = 0; i < p.h_len[l]; i++)
                if (mode == 0 || (mode != 1 && twin_range(&t, 0, 2) == 0))
                    keep[c0++] = i;
            off[l + 1] = c0;
        }
        tbuf ko = tbuf_new(&t, off, (nl + 1) * 4), kk = tbuf_new(&t, keep, ((size_t)off[nl] + 1) * 4);
        for (int b = 0; b < 2; b++) {
            sinkd_compact_args a = {.pool = b ? &p.pg : &p.pc, .lanes = b ? p.lg : p.lc, .head_dim = d,
                                    .rope = rope, .keep_off = b ? ko.g : ko.c, .keep = b ? kk.g : kk.c};
            cr_assert_eq(be[b]->ops->kv_compact(be[b], &a), 0);
        }
        /* Compare the kept prefix of each lane and its pages' bounds. */
        void *c, *g, *sc, *sg, *mc, *mg, *xc, *xg;
        tbuf_get(&t, &p.pages, &c, &g);
        tbuf_get(&t, &p.score, &sc, &sg);
        tbuf_get(&t, &p.kmin, &mc, &mg);
        tbuf_get(&t, &p.kmax, &xc, &xg);
        int32_t *oc, *og;
        tbuf_get(&t, &p.pos, (void **)&oc, (void **)&og);
        size_t bad = 0;
        for (int l = 0; l < nl; l++) {
            int nk = off[l + 1] - off[l];
            for (int i = 0; i < nk; i++) {
                int64_t pg2 = p.h_ids[p.h_off[l] + i / p.pt], slot = pg2 * p.pt + i % p.pt;
                size_t rb = (size_t)pg2 * 2 * p.pt * d + (size_t)(i % p.pt) * d;
                bad += memcmp((uint16_t *)c + rb, (uint16_t *)g + rb, (size_t)d * 2) != 0;
                bad += memcmp((uint16_t *)c + rb + (size_t)p.pt * d, (uint16_t *)g + rb + (size_t)p.pt * d,
                              (size_t)d * 2) != 0;
                bad += oc[slot] != og[slot];
                bad += ((float *)sc)[slot] != ((float *)sg)[slot];
                if (i % p.pt == 0) {
                    double e1 = rel_err((float *)mg + pg2 * d, (float *)mc + pg2 * d, d);
                    double e2 = rel_err((float *)xg + pg2 * d, (float *)xc + pg2 * d, d);
                    bad += !(e1 < TOL32) + !(e2 < TOL32);
                }
            }
        }
        cr_expect_eq(bad, 0, "compact: %zu mismatches (d=%d %s)", bad, d, sinkd_dtype_name(dt));
        free(c); free(g); free(sc); free(sg); free(mc); free(mg); free(xc); free(xg); free(oc); free(og);
        tbuf_free(&t, &ko);
        tbuf_free(&t, &kk);
        free(off);
        free(keep);
        tbuf_free(&t, &k);
        tbuf_free(&t, &v);
        tbuf_free(&t, &ps);
        free(hk);
        free(hv);
        free(hpos);
        tpool_free(&t, &p);
    }
    twin_close(&t);
}

/* ---- decode and top-k pages --------------------------------------------------- */

/* topk_pages on both backends: @n_seqs sequences of @p's lanes (n_lanes /
 * n_seqs kv heads each, @G query heads a kv head), queries @q at @qp. */
static void topk_twins(twin *t, tpool *p, int n_seqs, int G, const sinkd_rope *rope, tbuf *q,
                       tbuf *qp, int k, tbuf *out_pages, tbuf *out_scores)
{
    sinkd_backend *be[2] = {t->cpu, t->gpu};
    int n_kv = p->n_lanes / n_seqs;
    for (int b = 0; b < 2; b++) {
        sinkd_topk_pages_args a = {.pool = b ? &p->pg : &p->pc, .lanes = b ? p->lg : p->lc,
                                   .n_seqs = n_seqs, .n_q_heads = n_kv * G, .n_kv_heads = n_kv,
                                   .head_dim = p->d, .rope = *rope, .q = b ? q->g : q->c,
                                   .q_pos = b ? qp->g : qp->c, .k = k,
                                   .out_pages = b ? out_pages->g : out_pages->c,
                                   .out_scores = b ? out_scores->g : out_scores->c};
        cr_assert_eq(be[b]->ops->topk_pages(be[b], &a), 0);
    }
}

/* What a decode or prefill case allocated: queries, positions, outputs
 * (both backends) and the pool. */
static void case_free(twin *t, tbuf *q, tbuf *qp, tbuf *out, float *hq, int32_t *hqp, tpool *p)
{
    tbuf_free(t, q);
    tbuf_free(t, qp);
    tbuf_free(t, out);
    free(hq);
    free(hqp);
    tpool_free(t, p);
}

static void decode_case(twin *t, uint8_t dt, int d, int pt, int n_seqs, int n_kv, int G, int lo,
                        int hi, int sparse, int score_op)
{
    tpool p;
    tpool_init_pt(t, &p, dt, d, pt, n_seqs * n_kv, lo, hi, 0);
    sinkd_rope rope = rand_rope(t);
    tpool_bounds(t, &p, &rope);
    int nq = n_kv * G;
    size_t qn = (size_t)n_seqs * nq * d;
    float *hq = twin_rand_f32(t, qn, -3, 3);
    int32_t *hqp = malloc(n_seqs * 4);
    for (int s = 0; s < n_seqs; s++)
        hqp[s] = twin_range(t, 0, 7000);
    tbuf q = tbuf_new(t, hq, qn * 4), qp = tbuf_new(t, hqp, n_seqs * 4), out = tbuf_new(t, NULL, qn * 4);

    /* sparse: the top-k pages of each lane (compared too), then decode on
     * them; k is @sparse when above 1, else drawn from 1..24 */
    int k = 0;
    tbuf selp = {0}, selo = {0}, tks = {0};
    sinkd_backend *be[2] = {t->cpu, t->gpu};
    if (sparse) {
        k = sparse > 1 ? sparse : twin_range(t, 1, 24);
        int nl = p.n_lanes;
        selp = tbuf_new(t, NULL, (size_t)nl * k * 4);
        tks = tbuf_new(t, NULL, (size_t)nl * k * 4);
        int32_t *ho = malloc((nl + 1) * 4);
        for (int l = 0; l <= nl; l++)
            ho[l] = l * k;
        selo = tbuf_new(t, ho, (nl + 1) * 4);
        free(ho);
        topk_twins(t, &p, n_seqs, G, &rope, &q, &qp, k, &selp, &tks);
        int32_t *sc, *sg;
        tbuf_get(t, &selp, (void **)&sc, (void **)&sg);
        size_t diff = 0;
        for (int i = 0; i < nl * k; i++)
            diff += sc[i] != sg[i];
        cr_expect_eq(diff, 0, "topk pages: %zu of %d differ (k=%d)", diff, nl * k, k);
        free(sc);
        free(sg);
        check_err(tbuf_rel_err(t, &tks, (size_t)nl * k), TOL32 * 10, "topk scores");
    }
    for (int b = 0; b < 2; b++) {
        sinkd_decode_args a = {.pool = b ? &p.pg : &p.pc, .lanes = b ? p.lg : p.lc,
                               .n_seqs = n_seqs, .n_q_heads = nq, .n_kv_heads = n_kv,
                               .head_dim = d, .rope = rope, .softmax_scale = 1.0f / sqrtf((float)d),
                               .q = b ? q.g : q.c, .out = b ? out.g : out.c, .q_pos = b ? qp.g : qp.c,
                               .sel_off = sparse ? (b ? selo.g : selo.c) : NULL,
                               .sel_pages = sparse ? (b ? selp.g : selp.c) : NULL,
                               .score_op = score_op, .score_decay = 0.75f};
        cr_assert_eq(be[b]->ops->attn_decode(be[b], &a), 0);
    }
    char what[160];
    snprintf(what, sizeof what, "decode %s d=%d pt=%d seqs=%d kv=%d G=%d len %d..%d sparse=%d(k=%d) score=%d rope=%d/%d",
             sinkd_dtype_name(dt), d, pt, n_seqs, n_kv, G, lo, hi, sparse, k, score_op, rope.style, rope.mode);
    check_err(tbuf_rel_err(t, &out, qn), TOL16, what);
    if (score_op)
        check_err(tbuf_rel_err(t, &p.score, (size_t)p.np * p.pt), TOL16, what);
    if (sparse) {
        tbuf_free(t, &selp);
        tbuf_free(t, &selo);
        tbuf_free(t, &tks);
    }
    case_free(t, &q, &qp, &out, hq, hqp, &p);
}

Test(gpu_ops, decode_dense)
{
    TWIN_OR_SKIP(t);
    static const int groups[] = {1, 2, 4, 8, 16, 3};
    for (int rep = 0; rep < 12; rep++) {
        int many = rep % 3 == 0; /* many short lanes (few splits) vs few long (many) */
        decode_case(&t, rep & 1 ? SINKD_BF16 : SINKD_F16, rep < 4 ? 128 : rand_head_dim(&t), 16,
                    many ? twin_range(&t, 40, 90) : twin_range(&t, 1, 3), twin_range(&t, 1, 4),
                    groups[twin_range(&t, 0, 5)], many ? 0 : 1, many ? 200 : 3000, 0, rep % 4);
    }
    twin_close(&t);
}

Test(gpu_ops, decode_sparse_topk)
{
    TWIN_OR_SKIP(t);
    for (int rep = 0; rep < 8; rep++)
        decode_case(&t, rep & 1 ? SINKD_BF16 : SINKD_F16, rep < 2 ? 128 : rand_head_dim(&t), 16,
                    twin_range(&t, 1, 6), twin_range(&t, 1, 4), 1 << twin_range(&t, 0, 3), 1, 1500,
                    1, rep % 4);
    twin_close(&t);
}

/* ---- top-k pages on few, long lanes ------------------------------------------- */

/* Both copies of @b set to @host. */
static void tbuf_set(twin *t, tbuf *b, const void *host)
{
    cr_assert_eq(t->cpu->ops->h2d(t->cpu, b->c, host, b->bytes), 0);
    cr_assert_eq(t->gpu->ops->h2d(t->gpu, b->g, host, b->bytes), 0);
}

/* Quest selection on 1-4 lanes of up to 9000 pages, k from 1 to past the
 * page count. Queries and bounds are small integers and the query sits at
 * position 0 (the identity rotation), so every bound is exact in f32 on
 * both backends: pages and scores must match exactly, ties included (they
 * are frequent here, and go to the lower page index). */
static void topk_long_case(twin *t, int d, int n_seqs, int n_kv, int G, int lo, int hi)
{
    int nl = n_seqs * n_kv, nq = n_kv * G;
    tpool p;
    tpool_init_pt(t, &p, SINKD_F16, d, 2, nl, lo, hi, twin_range(t, 0, 3));
    if (nl > 1 && twin_range(t, 0, 1)) {
        p.h_len[twin_range(t, 0, nl - 1)] = 0; /* an empty lane among long ones */
        tbuf_set(t, &p.len, p.h_len);
    }
    size_t nb = (size_t)p.np * d, qn = (size_t)n_seqs * nq * d;
    float *mn = malloc(nb * 4), *mx = malloc(nb * 4), *hq = malloc(qn * 4);
    for (size_t i = 0; i < nb; i++) {
        mn[i] = (float)twin_range(t, -8, 8);
        mx[i] = mn[i] + (float)twin_range(t, 0, 8);
    }
    for (size_t i = 0; i < qn; i++)
        hq[i] = (float)twin_range(t, -4, 4);
    tbuf_set(t, &p.kmin, mn);
    tbuf_set(t, &p.kmax, mx);
    int32_t *hqp = calloc(n_seqs, 4);
    tbuf q = tbuf_new(t, hq, qn * 4), qp = tbuf_new(t, hqp, (size_t)n_seqs * 4);
    sinkd_rope rope = {.theta = 10000.0f, .scale = 1.0f, .style = (uint8_t)twin_range(t, 0, 1),
                       .mode = SINKD_ROPE_ABSOLUTE};
    int np_min = INT32_MAX, np_max = 0;
    for (int l = 0; l < nl; l++) {
        int np = (p.h_len[l] + p.pt - 1) / p.pt;
        np_min = np < np_min ? np : np_min;
        np_max = np > np_max ? np : np_max;
    }
    int ks[] = {1, np_max / 8, np_min - 1, np_min, np_max, np_max + 5};
    for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
        int k = ks[ki];
        if (k < 1)
            continue;
        tbuf op = tbuf_new(t, NULL, (size_t)nl * k * 4), os = tbuf_new(t, NULL, (size_t)nl * k * 4);
        topk_twins(t, &p, n_seqs, G, &rope, &q, &qp, k, &op, &os);
        int32_t *pc, *pg;
        float *sc, *sg;
        tbuf_get(t, &op, (void **)&pc, (void **)&pg);
        tbuf_get(t, &os, (void **)&sc, (void **)&sg);
        size_t bad_p = 0, bad_s = 0;
        for (size_t i = 0; i < (size_t)nl * k; i++) {
            bad_p += pc[i] != pg[i];
            bad_s += !(sc[i] == sg[i]); /* exact; NaN (unwritten) never equal */
        }
        cr_expect(bad_p == 0 && bad_s == 0,
                  "topk d=%d lanes=%d G=%d pages %d..%d k=%d: %zu pages, %zu scores differ", d, nl,
                  G, np_min, np_max, k, bad_p, bad_s);
        free(pc);
        free(pg);
        free(sc);
        free(sg);
        tbuf_free(t, &op);
        tbuf_free(t, &os);
    }
    tbuf_free(t, &q);
    tbuf_free(t, &qp);
    free(mn);
    free(mx);
    free(hq);
    free(hqp);
    tpool_free(t, &p);
}

/* Lanes of 4100-9000 pages of 2 tokens (past the select pass's shared
 * memory copy of 8192 bounds), then of 1-9000. */
static void topk_long_sweep(twin *t)
{
    static const int dims[] = {64, 128, 32, 256};
    for (int rep = 0; rep < 6; rep++) {
        int n_kv = twin_range(t, 1, 2);
        topk_long_case(t, dims[rep % 4], twin_range(t, 1, 4 / n_kv), n_kv, 1 << twin_range(t, 0, 3),
                       rep < 3 ? 8199 : 1, 18000);
    }
}

/* Criterion runs each test in a process of its own, and the CUDA backend
 * reads SINKD_TOPK_LEGACY on its first topk call: one test per path. */
Test(gpu_ops, topk_pages_long)
{
    unsetenv("SINKD_TOPK_LEGACY");
    TWIN_OR_SKIP(t);
    topk_long_sweep(&t);
    twin_close(&t);
}

Test(gpu_ops, topk_pages_long_legacy)
{
    setenv("SINKD_TOPK_LEGACY", "1", 1);
    TWIN_OR_SKIP(t);
    topk_long_sweep(&t);
    twin_close(&t);
}

/* Pages of 32 and 48 tokens (several 16-key tiles a page, tensor-core path
 * at head_dim 64/128) and of 8 (the generic path), dense and sparse. */
Test(gpu_ops, decode_page_sizes)
{
    TWIN_OR_SKIP(t);
    static const int pts[] = {32, 48, 8};
    for (int rep = 0; rep < 9; rep++) {
        int sparse = rep % 2;
        decode_case(&t, rep & 2 ? SINKD_BF16 : SINKD_F16, rep % 3 ? 128 : 64, pts[rep % 3],
                    twin_range(&t, 1, 4), twin_range(&t, 1, 4), twin_range(&t, 1, 16), 1,
                    sparse ? 1500 : 2500, sparse, rep % 4);
    }
    twin_close(&t);
}

/* One lane per block slot of the tensor-core path (2 per SM): every lane
 * runs unsplit (the other decode tests mostly split lanes, whose blocks
 * merge in the last one to finish); scores read the tiled logits. */
Test(gpu_ops, decode_full_wave)
{
    TWIN_OR_SKIP(t);
    int slots = 2 * t.gpu->info.threads;
    for (int rep = 0; rep < 6; rep++) {
        int n_kv = 1 + rep % 2, G = rep < 2 ? 4 : twin_range(&t, 1, 16);
        decode_case(&t, rep & 1 ? SINKD_BF16 : SINKD_F16, rep % 3 ? 128 : 64, rep % 4 == 3 ? 32 : 16,
                    slots / n_kv, n_kv, G, 1, 700, rep == 5, rep % 4);
    }
    twin_close(&t);
}

/* Few lanes of 22K+ tokens: the tensor-core path splits each of 1-4 lanes
 * many ways (54-62 on an H100's 132 SMs: decode_splits) and the warps of a
 * lane claim its last tiles one at a time (decode.cu, DV2_TAIL_*); every
 * tile must be attended once, whichever warp takes it. Dense lanes, then
 * sparse lists of 1200-1350 of a lane's 1375+ pages: long enough to split
 * as many ways and claim, through the list instead of the page table. */
Test(gpu_ops, decode_claimed_tail)
{
    TWIN_OR_SKIP(t);
    for (int rep = 0; rep < 6; rep++)
        decode_case(&t, rep & 1 ? SINKD_BF16 : SINKD_F16, rep % 4 < 2 ? 128 : 64, 16,
                    twin_range(&t, 1, 2), twin_range(&t, 1, 2), rep % 4 < 2 ? 4 : twin_range(&t, 1, 8),
                    22000, 26000, rep < 4 ? 0 : twin_range(&t, 1200, 1350), rep % 4);
    twin_close(&t);
}

/* ---- prefill ---------------------------------------------------------------- */

/* One prefill of @n new tokens after @past on both backends (obs_w @obs,
 * score op @op when obs), outputs and scores compared. */
static void prefill_case(twin *t, uint8_t dt, int d, int n_kv, int G, int n, int past, int obs, int op,
                         sinkd_rope rope, int max_len)
{
    sinkd_backend *be[2] = {t->cpu, t->gpu};
    int nq = n_kv * G;
    tpool p;
    tpool_init(t, &p, dt, d, n_kv, n + past, n + past, 0);
    size_t qn = (size_t)n * nq * d;
    float *hq = twin_rand_f32(t, qn, -3, 3);
    int32_t *hqp = malloc(n * 4);
    for (int i = 0; i < n; i++)
        hqp[i] = past + i + twin_range(t, 0, 3);
    tbuf q = tbuf_new(t, hq, qn * 4), qp = tbuf_new(t, hqp, n * 4), out = tbuf_new(t, NULL, qn * 4);
    for (int b = 0; b < 2; b++) {
        sinkd_prefill_args a = {.pool = b ? &p.pg : &p.pc, .lanes = b ? p.lg : p.lc, .n = n,
                                .n_q_heads = nq, .n_kv_heads = n_kv, .head_dim = d, .rope = rope,
                                .softmax_scale = 1.0f / sqrtf((float)d), .q = b ? q.g : q.c,
                                .out = b ? out.g : out.c, .q_pos = b ? qp.g : qp.c,
                                .obs_w = obs, .score_op = op, .score_decay = 0.5f, .max_len = max_len};
        cr_assert_eq(be[b]->ops->attn_prefill(be[b], &a), 0);
    }
    char what[128];
    snprintf(what, sizeof what, "prefill %s d=%d kv=%d G=%d n=%d past=%d obs=%d op=%d rope=%d/%d",
             sinkd_dtype_name(dt), d, n_kv, G, n, past, obs, op, rope.style, rope.mode);
    check_err(tbuf_rel_err(t, &out, qn), TOL16, what);
    if (op)
        check_err(tbuf_rel_err(t, &p.score, (size_t)p.np * p.pt), TOL16, what);
    case_free(t, &q, &qp, &out, hq, hqp, &p);
}

Test(gpu_ops, prefill)
{
    TWIN_OR_SKIP(t);
    for (int rep = 0; rep < 8; rep++) {
        uint8_t dt = rep & 1 ? SINKD_BF16 : SINKD_F16;
        int d = rep < 2 ? 128 : rand_head_dim(&t), n_kv = twin_range(&t, 1, 3);
        int G = 1 << twin_range(&t, 0, 3);
        int n = twin_range(&t, 1, 300), past = twin_range(&t, 0, 1) ? twin_range(&t, 1, 400) : 0;
        sinkd_rope rope = rand_rope(&t);
        int obs = twin_range(&t, 0, 2) ? twin_range(&t, 1, 64) : 0;
        int op = obs ? twin_range(&t, 1, 3) : 0;
        /* the longest lane, as the store passes it, or unknown */
        prefill_case(&t, dt, d, n_kv, G, n, past, obs, op, rope, rep % 3 == 0 ? 0 : n + past);
    }
    twin_close(&t);
}

/* The tensor-core paths (head_dim 64 and 128): every group size and dtype,
 * chunks of many key tiles and row blocks, with and without a past. */
Test(gpu_ops, prefill_tiles)
{
    TWIN_OR_SKIP(t);
    for (int rep = 0; rep < 16; rep++) {
        uint8_t dt = rep & 1 ? SINKD_BF16 : SINKD_F16;
        int d = rep & 2 ? 128 : 64, G = 1 << (rep / 4);
        int n = twin_range(&t, 200, 900), past = rep % 3 ? twin_range(&t, 1, 700) : 0;
        prefill_case(&t, dt, d, twin_range(&t, 1, 2), G, n, past, 0, 0, rand_rope(&t), n + past);
    }
    twin_close(&t);
}

/* ---- argument checks (no GPU work) ---------------------------------------------- */

Test(gpu_ops, rejects_bad_arguments)
{
    TWIN_OR_SKIP(t);
    tpool p;
    tpool_init(&t, &p, SINKD_BF16, 128, 2, 10, 20, 0);
    sinkd_decode_args a = {.pool = &p.pg, .lanes = p.lg, .n_seqs = 1, .n_q_heads = 8,
                           .n_kv_heads = 2, .head_dim = 100, .rope = {10000.0f, 1.0f, 0, 0, {0}},
                           .softmax_scale = 0.1f};
    cr_expect_eq(t.gpu->ops->attn_decode(t.gpu, &a), -EINVAL, "head_dim not a multiple of 16");
    a.head_dim = 128;
    a.n_q_heads = 7;
    cr_expect_eq(t.gpu->ops->attn_decode(t.gpu, &a), -EINVAL, "n_q not a multiple of n_kv");
    sinkd_weight w = {.data = p.pages.g, .rows = 4, .cols = 32, .dtype = SINKD_Q8_0};
    cr_expect_eq(t.gpu->ops->matmul(t.gpu, p.score.g, p.score.g, 1, &w, NULL), -EINVAL, "Q8_0 on cuda");
    tpool_free(&t, &p);
    twin_close(&t);
}
