/*
 * RoPE on the CPU. Pair i of a head_dim d row rotates by
 *   angle = pos / scale * theta^(-2i/d)
 * with pairs (2i, 2i+1) (adjacent) or (i, i + d/2) (neox). Angles and their
 * cos/sin are computed in double; the attention ops rotate every key they
 * read, so cos/sin of positions [0, n_pos) are kept in a table (f32, grown on
 * demand up to ROPE_TABLE_MAX_BYTES) and other positions are computed.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "cpu.h"

#define ROPE_TABLE_MAX_BYTES ((size_t)64 << 20)

int cpu__rope_check(const sinkd_rope *rope)
{
    if (!rope || !(rope->theta > 0) || !(rope->scale > 0) || !isfinite(rope->theta) ||
        !isfinite(rope->scale) || rope->style > SINKD_ROPE_NEOX || rope->mode > SINKD_ROPE_CACHE)
        return -EINVAL;
    return 0;
}

static double inv_freq(double theta, double scale, int32_t i, int32_t d)
{
    return pow(theta, -2.0 * i / d) / scale;
}

void cpu__rope_free(cpu__rope_table *t)
{
    free(t->cos);
    free(t->sin);
    *t = (cpu__rope_table){0};
}

static void table_grow(cpu__rope_table *t, const sinkd_rope *rope, int32_t d, int64_t want)
{
    int32_t half = d / 2;
    if (t->head_dim != d || t->theta != rope->theta || t->scale != rope->scale)
        cpu__rope_free(t);
    int64_t cap = (int64_t)(ROPE_TABLE_MAX_BYTES / (2 * sizeof(float) * (size_t)half));
    if (want > cap)
        want = cap;
    if (want <= t->n_pos)
        return;
    /* grow geometrically so a growing context rebuilds O(log n) times */
    int64_t n = t->n_pos * 2 > want ? t->n_pos * 2 : want;
    if (n > cap)
        n = cap;
    float *c = realloc(t->cos, (size_t)n * half * sizeof(float));
    if (c)
        t->cos = c;
    float *s = c ? realloc(t->sin, (size_t)n * half * sizeof(float)) : NULL;
    if (!s) {
        cpu__rope_free(t); /* only speed is lost */
        return;
    }
    t->sin = s;
    for (int32_t i = 0; i < half; i++) {
        double f = inv_freq(rope->theta, rope->scale, i, d);
        for (int64_t p = t->n_pos; p < n; p++) {
            double a = (double)p * f;
            t->cos[p * half + i] = (float)cos(a);
            t->sin[p * half + i] = (float)sin(a);
        }
    }
    t->theta = rope->theta;
    t->scale = rope->scale;
    t->head_dim = d;
    t->n_pos = (int32_t)n;
}

void cpu__rope_prepare(cpu__backend *cb, const sinkd_rope *rope, int32_t head_dim,
                       int64_t max_pos, cpu__rope *out)
{
    cpu__rope_table *t = &cb->rope;
    if (max_pos > 0)
        table_grow(t, rope, head_dim, max_pos);
    int match = t->head_dim == head_dim && t->theta == rope->theta && t->scale == rope->scale;
    *out = (cpu__rope){
        .head_dim = head_dim,
        .style = rope->style,
        .mode = rope->mode,
        .theta = rope->theta,
        .scale = rope->scale,
        .cos = match ? t->cos : NULL,
        .sin = match ? t->sin : NULL,
        .n_pos = match ? t->n_pos : 0,
    };
}

void cpu__rope_row(const cpu__rope *r, float *x, int64_t pos)
{
    int32_t d = r->head_dim, half = d / 2;
    /* pair i is (x[i*ia], x[i*ia + ib]) */
    int32_t ia = r->style == SINKD_ROPE_NEOX ? 1 : 2;
    int32_t ib = r->style == SINKD_ROPE_NEOX ? half : 1;

    if (pos >= 0 && pos < r->n_pos) {
        const float *c = r->cos + pos * half, *s = r->sin + pos * half;
        for (int32_t i = 0; i < half; i++) {
            float x0 = x[i * ia], x1 = x[i * ia + ib];
            x[i * ia] = x0 * c[i] - x1 * s[i];
            x[i * ia + ib] = x0 * s[i] + x1 * c[i];
        }
        return;
    }
    for (int32_t i = 0; i < half; i++) {
        double a = (double)pos * inv_freq(r->theta, r->scale, i, d);
        float c = (float)cos(a), s = (float)sin(a);
        float x0 = x[i * ia], x1 = x[i * ia + ib];
        x[i * ia] = x0 * c - x1 * s;
        x[i * ia + ib] = x0 * s + x1 * c;
    }
}
