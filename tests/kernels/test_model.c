/*
 * CPU model ops (matmul for F32/F16/BF16/Q8_0 weights, rmsnorm, rope, swiglu,
 * add, embed, argmax), the f16/bf16 conversions of half.h, the dtype helpers
 * and backend selection. References are double precision, written here;
 * the f16 conversions are checked against the compiler's _Float16 and bf16
 * against rounding done in double. Matmul tolerance: 1e-5 of sum |x_i w_i|.
 */
#include <criterion/criterion.h>
#include <errno.h>

#include "tref.h"

static sinkd_backend *be;

static void setup(void)
{
    cr_assert_eq(sinkd_cpu_backend_open(3, &be), 0);
}

static void teardown(void)
{
    sinkd_backend_close(be);
}

TestSuite(model, .init = setup, .fini = teardown);

/* ---- conversions ---------------------------------------------------------------- */

Test(model, f16_conversions_match_the_compiler)
{
    for (uint32_t h = 0; h < 65536; h++) {
        _Float16 x;
        uint16_t hb = (uint16_t)h;
        memcpy(&x, &hb, 2);
        float want = (float)x, got = sinkd_f16_to_f32(hb);
        cr_assert(isnan(want) ? isnan(got) : memcmp(&want, &got, 4) == 0, "f16 %04x", h);
    }
    float edge[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 1e-8f, 2.9802322e-8f,
                    2.98023259e-8f, 6.0975552e-5f, 6.1035156e-5f, 1.0f + 1.0f / 2048, INFINITY,
                    -INFINITY, 1e30f, -3.14159f};
    for (uint32_t i = 0; i < 200000 + sizeof edge / sizeof edge[0]; i++) {
        float f;
        if (i < sizeof edge / sizeof edge[0]) {
            f = edge[i];
        } else {
            uint32_t u = (uint32_t)t_next();
            memcpy(&f, &u, 4);
            if (isnan(f))
                continue;
            if (i % 2) /* half the draws in the f16 range */
                f = ldexpf(t_unif(), t_int(-26, 16));
        }
        _Float16 x = (_Float16)f;
        uint16_t want;
        memcpy(&want, &x, 2);
        cr_assert_eq(sinkd_f32_to_f16(f), want, "%a", (double)f);
    }
    cr_assert(isnan(sinkd_f16_to_f32(sinkd_f32_to_f16(NAN))));
}

Test(model, bf16_conversions_round_to_nearest_even)
{
    for (uint32_t i = 0; i < 200000; i++) {
        uint32_t u = (uint32_t)t_next();
        float f;
        memcpy(&f, &u, 4);
        if (isnan(f) || isinf(f))
            continue;
        uint16_t got = sinkd_f32_to_bf16(f);
        /* the two bf16 neighbours of f, the nearer one (ties: even) */
        uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
        double dl = fabs((double)sinkd_bf16_to_f32(lo) - f);
        /* past the largest finite value IEEE rounds as if 2^128 came next */
        double dh = fabs((isinf(sinkd_bf16_to_f32(hi)) ? copysign(ldexp(1, 128), f)
                                                        : (double)sinkd_bf16_to_f32(hi)) - f);
        uint16_t want = dl < dh ? lo : dh < dl ? hi : (lo & 1 ? hi : lo);
        cr_assert_eq(got, want, "%a", (double)f);
    }
    cr_assert(isnan(sinkd_bf16_to_f32(sinkd_f32_to_bf16(NAN))));
    cr_assert(isinf(sinkd_bf16_to_f32(sinkd_f32_to_bf16(INFINITY))));
}

Test(model, dtype_helpers)
{
    cr_assert_eq(sinkd_dtype_bytes(SINKD_F32, 10), 40);
    cr_assert_eq(sinkd_dtype_bytes(SINKD_F16, 10), 20);
    cr_assert_eq(sinkd_dtype_bytes(SINKD_BF16, 10), 20);
    cr_assert_eq(sinkd_dtype_bytes(SINKD_Q8_0, 64), 68);
    cr_assert_str_eq(sinkd_dtype_name(SINKD_Q8_0), "q8_0");
    cr_assert_str_eq(sinkd_dtype_name(SINKD_BF16), "bf16");
}

Test(model, backend_selection)
{
    sinkd_backend *b = NULL;
    cr_assert_eq(sinkd_backend_open("bogus", 0, &b), -EINVAL);
    cr_assert_eq(sinkd_backend_open("cpu", 2, &b), 0);
    cr_assert_str_eq(b->info.name, "cpu");
    cr_assert_eq(b->info.threads, 2);
    sinkd_backend_info info;
    cr_assert_eq(b->ops->info(b, &info), 0);
    cr_assert(info.mem_total > 0 && info.mem_free > 0 && info.mem_free <= info.mem_total);
    sinkd_backend_close(b);
    /* auto: cuda when it opens, else cpu; either way a working backend */
    cr_assert_eq(sinkd_backend_open("auto", 1, &b), 0);
    cr_assert(strcmp(b->info.name, "cpu") == 0 || strcmp(b->info.name, "cuda") == 0);
    sinkd_backend_close(b);
    if (!sinkd_cuda_built())
        cr_assert_eq(sinkd_backend_open("cuda", 0, &b), -ENODEV);
}

/* ---- matmul ------------------------------------------------------------------------ */

/* Weights w[rows][cols] of @dt from random values; deq gets their exact f32. */
static void *make_weight(uint8_t dt, int32_t rows, int32_t cols, double *deq)
{
    size_t n = (size_t)rows * cols;
    if (dt == SINKD_Q8_0) {
        uint8_t *w = malloc(n / 32 * 34);
        for (size_t b = 0; b < n / 32; b++) {
            uint16_t d = sinkd_f32_to_f16(0.01f * (1 + (float)(b % 7)));
            memcpy(w + b * 34, &d, 2);
            for (int i = 0; i < 32; i++) {
                int8_t q = (int8_t)t_int(-127, 127);
                memcpy(w + b * 34 + 2 + i, &q, 1);
                deq[b * 32 + i] = (double)sinkd_f16_to_f32(d) * q;
            }
        }
        return w;
    }
    void *w = malloc(n * t_es(dt));
    for (size_t i = 0; i < n; i++) {
        t_store(dt, w, i, t_unif());
        deq[i] = t_load(dt, w, i);
    }
    return w;
}

static void check_matmul(uint8_t dt, int32_t m, int32_t rows, int32_t cols, int bias)
{
    double *deq = malloc(sizeof(double) * (size_t)rows * cols);
    void *wd = make_weight(dt, rows, cols, deq);
    float *x = malloc(sizeof(float) * (size_t)m * cols), *y = malloc(sizeof(float) * (size_t)m * rows);
    float *b = malloc(sizeof(float) * (size_t)rows);
    t_fill(x, (size_t)m * cols);
    t_fill(b, (size_t)rows);
    for (size_t i = 0; i < (size_t)m * rows; i++)
        y[i] = NAN;
    sinkd_weight w = {.data = wd, .rows = rows, .cols = cols, .dtype = dt};
    cr_assert_eq(be->ops->matmul(be, y, x, m, &w, bias ? b : NULL), 0);
    for (int32_t i = 0; i < m; i++)
        for (int32_t r = 0; r < rows; r++) {
            double ref = bias ? b[r] : 0, mag = fabs(ref);
            for (int32_t j = 0; j < cols; j++) {
                double t = x[(size_t)i * cols + j] * deq[(size_t)r * cols + j];
                ref += t;
                mag += fabs(t);
            }
            double got = y[(size_t)i * rows + r];
            cr_assert(fabs(got - ref) <= 1e-5 * (mag + 1e-30), "dt %d m %d rows %d cols %d: y[%d][%d] %g vs %g",
                      dt, m, rows, cols, i, r, got, ref);
        }
    free(deq);
    free(wd);
    free(x);
    free(y);
    free(b);
}

Test(model, matmul)
{
    static const int32_t ms[] = {1, 3, 37};
    static const int32_t rows[] = {1, 5, 64, 100};
    static const int32_t cols[] = {32, 96, 160};
    static const uint8_t dts[] = {SINKD_F32, SINKD_F16, SINKD_BF16, SINKD_Q8_0};
    for (int d = 0; d < 4; d++)
        for (int a = 0; a < 3; a++)
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < 3; c++)
                    check_matmul(dts[d], ms[a], rows[r], cols[c], (a + r + c) % 2);
    check_matmul(SINKD_F32, 4, 9, 7, 1); /* cols not a multiple of 16 */
    check_matmul(SINKD_F16, 2, 3, 23, 0);
    sinkd_weight bad = {.data = &bad, .rows = 2, .cols = 40, .dtype = SINKD_Q8_0};
    float x[80], y[4];
    cr_assert_eq(be->ops->matmul(be, y, x, 2, &bad, NULL), -EINVAL);
}

/* ---- row and element-wise ops ---------------------------------------------------------- */

Test(model, rmsnorm_in_place_and_not)
{
    int32_t m = 5, d = 96;
    float x[5 * 96], y[5 * 96], g[96];
    t_fill(x, sizeof x / sizeof x[0]);
    t_fill(g, 96);
    for (int i = 0; i < m * d; i++)
        y[i] = NAN;
    cr_assert_eq(be->ops->rmsnorm(be, y, x, g, m, d, 1e-5f), 0);
    for (int32_t r = 0; r < m; r++) {
        double ss = 0;
        for (int32_t i = 0; i < d; i++)
            ss += (double)x[r * d + i] * x[r * d + i];
        double inv = 1 / sqrt(ss / d + 1e-5);
        for (int32_t i = 0; i < d; i++)
            cr_assert(t_close(y[r * d + i], x[r * d + i] * inv * g[i], 1e-5));
    }
    cr_assert_eq(be->ops->rmsnorm(be, x, x, g, m, d, 1e-5f), 0); /* aliasing */
    cr_assert_eq(memcmp(x, y, sizeof x), 0);
}

Test(model, rope_both_styles_and_scaling)
{
    for (int c = 0; c < 8; c++) {
        int32_t m = 3, nh = 2, hd = c % 2 ? 80 : 64;
        sinkd_rope r = {.theta = c % 4 < 2 ? 10000.0f : 500000.0f, .scale = c % 3 ? 1.0f : 8.0f,
                        .style = (uint8_t)(c / 4), .mode = 0};
        float x[3 * 2 * 80], x0[3 * 2 * 80];
        int32_t pos[3] = {0, t_int(1, 100), t_int(5000, 200000)}; /* table and beyond */
        t_fill(x, sizeof x / sizeof x[0]);
        memcpy(x0, x, sizeof x);
        cr_assert_eq(be->ops->rope(be, x, pos, m, nh, hd, &r), 0);
        double ref[80];
        for (int32_t t = 0; t < m; t++)
            for (int32_t h = 0; h < nh; h++) {
                for (int32_t i = 0; i < hd; i++)
                    ref[i] = x0[(t * nh + h) * hd + i];
                t_rope(ref, hd, pos[t], &r);
                for (int32_t i = 0; i < hd; i++)
                    cr_assert(t_close(x[(t * nh + h) * hd + i], ref[i], 1e-5), "c %d t %d i %d", c, t, i);
            }
    }
}

Test(model, swiglu_add)
{
    int32_t m = 3, d = 50000; /* several blocks of the flat ops */
    size_t n = (size_t)m * d;
    float *g = malloc(n * sizeof(float)), *u = malloc(n * sizeof(float)), *g0 = malloc(n * sizeof(float));
    t_fill(g, n);
    t_fill(u, n);
    for (size_t i = 0; i < n; i++)
        g[i] *= 8;
    memcpy(g0, g, n * sizeof(float));
    cr_assert_eq(be->ops->swiglu(be, g, u, m, d), 0);
    for (size_t i = 0; i < n; i++)
        cr_assert(t_close(g[i], g0[i] / (1 + exp(-(double)g0[i])) * u[i], 1e-5));
    memcpy(g0, g, n * sizeof(float));
    cr_assert_eq(be->ops->add(be, g, u, (int64_t)n), 0);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(g[i], g0[i] + u[i]);
    free(g);
    free(u);
    free(g0);
}

Test(model, embed_every_dtype)
{
    static const uint8_t dts[] = {SINKD_F32, SINKD_F16, SINKD_BF16, SINKD_Q8_0};
    for (int d = 0; d < 4; d++) {
        int32_t rows = 10, cols = 64, ids[4] = {3, 0, 9, 3};
        double deq[640];
        void *wd = make_weight(dts[d], rows, cols, deq);
        sinkd_weight w = {.data = wd, .rows = rows, .cols = cols, .dtype = dts[d]};
        float out[4 * 64];
        for (int i = 0; i < 4 * 64; i++)
            out[i] = NAN;
        cr_assert_eq(be->ops->embed(be, out, &w, ids, 4), 0);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < cols; j++)
                cr_assert_eq(out[i * cols + j], (float)deq[ids[i] * cols + j]);
        int32_t bad[2] = {1, 10};
        cr_assert_eq(be->ops->embed(be, out, &w, bad, 2), -EINVAL);
        free(wd);
    }
}

Test(model, argmax_ties_and_nan)
{
    float x[3 * 6] = {1, 5, 5, 2, 0, -1,                 /* tie: lowest index */
                      NAN, -3, -2, -2, NAN, -9,          /* NaN never wins */
                      -INFINITY, -INFINITY, 0, 7, 7.5f, 7.5f};
    int32_t ids[3] = {-1, -1, -1};
    cr_assert_eq(be->ops->argmax(be, ids, x, 3, 6), 0);
    cr_assert_eq(ids[0], 1);
    cr_assert_eq(ids[1], 2);
    cr_assert_eq(ids[2], 4);
}

Test(model, memory_ops)
{
    void *p = NULL, *q = NULL;
    cr_assert_eq(be->ops->alloc(be, &p, 1000), 0);
    cr_assert_eq(be->ops->alloc(be, &q, 1000), 0);
    cr_assert_eq(be->ops->memset0(be, p, 1000), 0);
    char host[1000];
    memset(host, 0x5a, sizeof host);
    cr_assert_eq(be->ops->h2d(be, q, host, 1000), 0);
    cr_assert_eq(be->ops->d2d(be, p, q, 500), 0);
    cr_assert_eq(be->ops->sync(be), 0);
    char back[1000];
    cr_assert_eq(be->ops->d2h(be, back, p, 1000), 0);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(back[i], i < 500 ? 0x5a : 0);
    be->ops->free(be, p);
    be->ops->free(be, q);
}
