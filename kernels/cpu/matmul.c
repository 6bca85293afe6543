/*
 * Dense matmul on the CPU: y[m][rows] = x[m][cols] . w^T (+ bias).
 * 2 * m * rows * cols FLOPs; reads rows * cols weights once per block of
 * MM_MB input rows.
 *
 * Tasks are blocks of MM_RB weight rows, converted once to f32 (F16/BF16/
 * Q8_0; F32 is read in place). Each block of MM_MB rows of x is dotted with
 * the weight rows 4 at a time, so converted rows and x rows are reused from
 * cache. Dot products use 16 partial sums (vectorisable, and the
 * same order for every dtype).
 */
#include <errno.h>
#include <string.h>

#include "cpu.h"

#define MM_RB 16 /* weight rows per task */
#define MM_MB 32 /* x rows per pass over a tile */

/* Q8_0 block: f16 scale then 32 int8 (GGUF block_q8_0, 34 bytes) */
#define Q8_BLOCK 32
#define Q8_BYTES 34

void cpu__weight_row(float *dst, const sinkd_weight *w, int64_t r)
{
    int32_t n = w->cols;
    if (w->dtype == SINKD_Q8_0) {
        const uint8_t *b = (const uint8_t *)w->data + (size_t)r * (n / Q8_BLOCK) * Q8_BYTES;
        for (int32_t j = 0; j < n; j += Q8_BLOCK, b += Q8_BYTES) {
            uint16_t hs;
            memcpy(&hs, b, 2);
            float d = sinkd_f16_to_f32(hs);
            const int8_t *qs = (const int8_t *)(b + 2);
            for (int32_t i = 0; i < Q8_BLOCK; i++)
                dst[j + i] = d * (float)qs[i];
        }
        return;
    }
    size_t es = w->dtype == SINKD_F32 ? 4 : 2;
    cpu__row_load(dst, (const char *)w->data + (size_t)r * n * es, w->dtype, n);
}

int cpu__weight_check(const sinkd_weight *w)
{
    if (!w || !w->data || w->rows < 1 || w->cols < 1 || w->dtype > SINKD_Q8_0)
        return -EINVAL;
    if (w->dtype == SINKD_Q8_0 && w->cols % Q8_BLOCK)
        return -EINVAL;
    return 0;
}

/* out[0..3] = x . w0..w3 over n elements */
static inline void dot4(const float *x, const float *w0, const float *w1, const float *w2,
                        const float *w3, int32_t n, float *out)
{
    float a0[16] = {0}, a1[16] = {0}, a2[16] = {0}, a3[16] = {0};
    int32_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int u = 0; u < 16; u++) {
            float xv = x[j + u];
            a0[u] += xv * w0[j + u];
            a1[u] += xv * w1[j + u];
            a2[u] += xv * w2[j + u];
            a3[u] += xv * w3[j + u];
        }
    for (int u = 0; j < n; j++, u++) {
        a0[u] += x[j] * w0[j];
        a1[u] += x[j] * w1[j];
        a2[u] += x[j] * w2[j];
        a3[u] += x[j] * w3[j];
    }
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int u = 0; u < 16; u++) {
        s0 += a0[u];
        s1 += a1[u];
        s2 += a2[u];
        s3 += a3[u];
    }
    out[0] = s0;
    out[1] = s1;
    out[2] = s2;
    out[3] = s3;
}

typedef struct matmul_ctx {
    float *y;
    const float *x;
    int32_t m;
    const sinkd_weight *w;
    const float *bias;
    float **scratch;
} matmul_ctx;

static void matmul_block(void *vctx, int64_t task, int tid)
{
    const matmul_ctx *c = vctx;
    const sinkd_weight *w = c->w;
    int32_t n = w->cols, rows = w->rows;
    int32_t r0 = (int32_t)task * MM_RB, nr = rows - r0 < MM_RB ? rows - r0 : MM_RB;
    const float *wr[MM_RB];

    /* the block's rows as f32: in place for F32, else converted once */
    for (int32_t i = 0; i < nr; i++) {
        if (w->dtype == SINKD_F32) {
            wr[i] = (const float *)w->data + (size_t)(r0 + i) * n;
        } else {
            cpu__weight_row(c->scratch[tid] + (size_t)i * n, w, r0 + i);
            wr[i] = c->scratch[tid] + (size_t)i * n;
        }
    }
    for (int32_t m0 = 0; m0 < c->m; m0 += MM_MB) {
        int32_t m1 = m0 + MM_MB < c->m ? m0 + MM_MB : c->m;
        for (int32_t i = 0; i < nr; i += 4) {
            int32_t k = nr - i < 4 ? nr - i : 4;
            /* a short tile repeats its last row; the extra outputs are dropped */
            const float *w0 = wr[i], *w1 = wr[i + (k > 1)], *w2 = wr[i + (k > 2) * 2],
                        *w3 = wr[i + (k > 3) * 3];
            for (int32_t mi = m0; mi < m1; mi++) {
                float o[4];
                dot4(c->x + (size_t)mi * n, w0, w1, w2, w3, n, o);
                float *yr = c->y + (size_t)mi * rows + r0 + i;
                for (int32_t j = 0; j < k; j++)
                    yr[j] = o[j] + (c->bias ? c->bias[r0 + i + j] : 0.0f);
            }
        }
    }
}

int cpu__matmul(sinkd_backend *be, float *y, const float *x, int32_t m,
                const sinkd_weight *w, const float *bias)
{
    if (!be || !y || !x || m < 1 || cpu__weight_check(w))
        return -EINVAL;
    cpu__backend *cb = cpu__of(be);
    int rc = cpu__scratch_reserve(cb, MM_RB * (size_t)w->cols);
    if (rc)
        return rc;
    matmul_ctx c = {.y = y, .x = x, .m = m, .w = w, .bias = bias, .scratch = cb->scratch};
    cpu__pool_run(cb->pool, (w->rows + MM_RB - 1) / MM_RB, matmul_block, &c);
    return 0;
}
