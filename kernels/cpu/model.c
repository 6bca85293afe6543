/*
 * Element-wise and per-row model ops on the CPU: rmsnorm, rope, swiglu, add,
 * embed, argmax. Row ops run one task per row (or block of elements); each
 * reads and writes O(m * d) floats.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "cpu.h"

#define EW_BLOCK 65536 /* elements per task of the flat element-wise ops */

/* ---- rmsnorm ------------------------------------------------------------------ */

typedef struct rmsnorm_ctx {
    float *y;
    const float *x, *g;
    int32_t d;
    float eps;
} rmsnorm_ctx;

static void rmsnorm_row(void *vctx, int64_t r, int tid)
{
    (void)tid;
    const rmsnorm_ctx *c = vctx;
    const float *x = c->x + (size_t)r * c->d;
    float *y = c->y + (size_t)r * c->d;
    double ss = 0;
    for (int32_t i = 0; i < c->d; i++)
        ss += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(ss / c->d + c->eps));
    for (int32_t i = 0; i < c->d; i++)
        y[i] = x[i] * inv * c->g[i];
}

int cpu__rmsnorm(sinkd_backend *be, float *y, const float *x, const float *g,
                 int32_t m, int32_t d, float eps)
{
    if (!be || !y || !x || !g || m < 1 || d < 1 || !(eps >= 0))
        return -EINVAL;
    rmsnorm_ctx c = {y, x, g, d, eps};
    cpu__pool_run(cpu__of(be)->pool, m, rmsnorm_row, &c);
    return 0;
}

/* ---- rope --------------------------------------------------------------------- */

typedef struct rope_ctx {
    float *x;
    const int32_t *pos;
    int32_t n_heads, head_dim;
    cpu__rope rope;
} rope_ctx;

static void rope_token(void *vctx, int64_t t, int tid)
{
    (void)tid;
    const rope_ctx *c = vctx;
    for (int32_t h = 0; h < c->n_heads; h++)
        cpu__rope_row(&c->rope, c->x + ((size_t)t * c->n_heads + h) * c->head_dim, c->pos[t]);
}

int cpu__rope_op(sinkd_backend *be, float *x, const int32_t *pos, int32_t m,
                 int32_t n_heads, int32_t head_dim, const sinkd_rope *rope)
{
    if (!be || !x || !pos || m < 1 || n_heads < 1 || head_dim < 2 || head_dim % 2 ||
        cpu__rope_check(rope))
        return -EINVAL;
    cpu__backend *cb = cpu__of(be);
    rope_ctx c = {x, pos, n_heads, head_dim, {0}};
    /* m rows cost as much as table entries for them: use, never grow, it */
    cpu__rope_prepare(cb, rope, head_dim, 0, &c.rope);
    cpu__pool_run(cb->pool, m, rope_token, &c);
    return 0;
}

/* ---- swiglu and add: flat blocks ------------------------------------------------ */

typedef struct ew_ctx {
    float *y;
    const float *x;
    int64_t n;
} ew_ctx;

static void swiglu_block(void *vctx, int64_t b, int tid)
{
    (void)tid;
    const ew_ctx *c = vctx;
    int64_t i0 = b * EW_BLOCK, i1 = i0 + EW_BLOCK < c->n ? i0 + EW_BLOCK : c->n;
    for (int64_t i = i0; i < i1; i++) {
        float gv = c->y[i];
        c->y[i] = gv / (1.0f + expf(-gv)) * c->x[i];
    }
}

static void add_block(void *vctx, int64_t b, int tid)
{
    (void)tid;
    const ew_ctx *c = vctx;
    int64_t i0 = b * EW_BLOCK, i1 = i0 + EW_BLOCK < c->n ? i0 + EW_BLOCK : c->n;
    for (int64_t i = i0; i < i1; i++)
        c->y[i] += c->x[i];
}

int cpu__swiglu(sinkd_backend *be, float *gate, const float *up, int32_t m, int32_t d)
{
    if (!be || !gate || !up || m < 1 || d < 1)
        return -EINVAL;
    ew_ctx c = {gate, up, (int64_t)m * d};
    cpu__pool_run(cpu__of(be)->pool, (c.n + EW_BLOCK - 1) / EW_BLOCK, swiglu_block, &c);
    return 0;
}

int cpu__add(sinkd_backend *be, float *y, const float *x, int64_t n)
{
    if (!be || !y || !x || n < 1)
        return -EINVAL;
    ew_ctx c = {y, x, n};
    cpu__pool_run(cpu__of(be)->pool, (n + EW_BLOCK - 1) / EW_BLOCK, add_block, &c);
    return 0;
}

/* ---- embed and argmax: serial (O(m * d), memory bound) --------------------------- */

int cpu__embed(sinkd_backend *be, float *out, const sinkd_weight *table,
               const int32_t *ids, int32_t m)
{
    if (!be || !out || !ids || m < 1 || cpu__weight_check(table))
        return -EINVAL;
    for (int32_t i = 0; i < m; i++)
        if (ids[i] < 0 || ids[i] >= table->rows)
            return -EINVAL;
    for (int32_t i = 0; i < m; i++)
        cpu__weight_row(out + (size_t)i * table->cols, table, ids[i]);
    return 0;
}

int cpu__argmax(sinkd_backend *be, int32_t *ids, const float *x, int32_t m, int32_t n)
{
    if (!be || !ids || !x || m < 1 || n < 1)
        return -EINVAL;
    for (int32_t r = 0; r < m; r++) {
        const float *row = x + (size_t)r * n;
        int32_t best = 0;
        float bv = -INFINITY;
        /* strict '>' keeps the lowest index on ties; NaN never wins */
        for (int32_t i = 0; i < n; i++)
            if (row[i] > bv) {
                bv = row[i];
                best = i;
            }
        ids[r] = best;
    }
    return 0;
}
