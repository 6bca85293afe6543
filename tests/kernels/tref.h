/*
 * Test scaffolding for the CPU kernels: a deterministic RNG, a KV pool and
 * lanes built by hand (random physical pages, ragged lengths), and the naive
 * double-precision references (explicit gather, rotation, softmax) that the
 * ops are checked against. Written independently of kernels/cpu.
 */
#ifndef SINKD_TREF_H
#define SINKD_TREF_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "half.h"

/* ---- rng ------------------------------------------------------------------ */

static uint64_t t_rng = 88172645463325252ull;

static inline uint64_t t_next(void)
{
    t_rng ^= t_rng << 13;
    t_rng ^= t_rng >> 7;
    t_rng ^= t_rng << 17;
    return t_rng;
}

static inline int32_t t_int(int32_t lo, int32_t hi) /* [lo, hi] */
{
    return lo + (int32_t)(t_next() % (uint64_t)(hi - lo + 1));
}

static inline float t_unif(void) /* [-1, 1) */
{
    return (float)((double)(t_next() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static inline void t_fill(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = t_unif();
}

/* |got - ref| <= tol * max(1, |ref|) */
static inline int t_close(double got, double ref, double tol)
{
    double m = fabs(ref) > 1 ? fabs(ref) : 1;
    return fabs(got - ref) <= tol * m;
}

/* ---- a hand-built pool and lane batch ----------------------------------------- */

typedef struct t_pool {
    sinkd_kv_pool pool;
    int32_t n_lanes;
    int32_t *len, *page_off, *page_ids;
    int32_t head_dim;
} t_pool;

static inline size_t t_es(uint8_t dt)
{
    return dt == SINKD_F32 ? 4 : 2;
}

static inline double t_load(uint8_t dt, const void *p, size_t i)
{
    if (dt == SINKD_F32)
        return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    return dt == SINKD_F16 ? sinkd_f16_to_f32(h) : sinkd_bf16_to_f32(h);
}

static inline void t_store(uint8_t dt, void *p, size_t i, float v)
{
    if (dt == SINKD_F32)
        ((float *)p)[i] = v;
    else
        ((uint16_t *)p)[i] = dt == SINKD_F16 ? sinkd_f32_to_f16(v) : sinkd_f32_to_bf16(v);
}

/* Row (v = 0: K, 1: V) of token t of lane l. */
static inline void *t_row(const t_pool *tp, int32_t l, int32_t t, int v)
{
    const sinkd_kv_pool *p = &tp->pool;
    int32_t page = tp->page_ids[tp->page_off[l] + t / p->page_tokens];
    return (char *)p->pages + (size_t)page * p->page_bytes +
           ((size_t)v * p->page_tokens + t % p->page_tokens) * tp->head_dim * t_es(p->dtype);
}

static inline int64_t t_slot(const t_pool *tp, int32_t l, int32_t t)
{
    int32_t pt = tp->pool.page_tokens;
    return (int64_t)tp->page_ids[tp->page_off[l] + t / pt] * pt + t % pt;
}

/* Lanes of lengths len[n_lanes] on randomly chosen distinct pages (some lanes
 * get a spare page past their length), filled with random K/V, ascending
 * positions with gaps, random scores. head_dim_max is head_dim + 16 so the
 * kernels must use the op's head_dim, not the pool's. */
static inline void t_pool_init(t_pool *tp, const int32_t *len, int32_t n_lanes, int32_t pt,
                               int32_t hd, uint8_t dtype)
{
    memset(tp, 0, sizeof *tp);
    tp->n_lanes = n_lanes;
    tp->head_dim = hd;
    tp->len = calloc((size_t)n_lanes + 1, sizeof(int32_t));
    tp->page_off = calloc((size_t)n_lanes + 1, sizeof(int32_t));
    int32_t total = 0;
    for (int32_t l = 0; l < n_lanes; l++) {
        tp->len[l] = len[l];
        tp->page_off[l] = total;
        total += (len[l] + pt - 1) / pt + (int32_t)(t_next() % 2);
    }
    tp->page_off[n_lanes] = total;
    int32_t n_pages = total + 3;
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)n_pages);
    for (int32_t i = 0; i < n_pages; i++)
        perm[i] = i;
    for (int32_t i = n_pages - 1; i > 0; i--) {
        int32_t j = (int32_t)(t_next() % (uint64_t)(i + 1)), x = perm[i];
        perm[i] = perm[j];
        perm[j] = x;
    }
    tp->page_ids = malloc(sizeof(int32_t) * (size_t)(total + 1));
    memcpy(tp->page_ids, perm, sizeof(int32_t) * (size_t)total);
    free(perm);

    sinkd_kv_pool *p = &tp->pool;
    p->n_pages = n_pages;
    p->page_tokens = pt;
    p->head_dim_max = hd + 16;
    p->dtype = dtype;
    p->page_bytes = 2 * (size_t)pt * p->head_dim_max * t_es(dtype);
    p->pages = calloc((size_t)n_pages, p->page_bytes);
    p->pos = calloc((size_t)n_pages * pt, sizeof(int32_t));
    p->score = calloc((size_t)n_pages * pt, sizeof(float));
    p->kmin = calloc((size_t)n_pages * p->head_dim_max, sizeof(float));
    p->kmax = calloc((size_t)n_pages * p->head_dim_max, sizeof(float));
    for (int32_t l = 0; l < n_lanes; l++) {
        int32_t pos = t_int(0, 40);
        for (int32_t t = 0; t < len[l]; t++) {
            for (int v = 0; v < 2; v++)
                for (int32_t i = 0; i < hd; i++)
                    t_store(dtype, t_row(tp, l, t, v), (size_t)i, t_unif());
            p->pos[t_slot(tp, l, t)] = pos;
            pos += t_int(1, 3);
            p->score[t_slot(tp, l, t)] = t_unif();
        }
    }
}

static inline sinkd_lanes t_lanes(const t_pool *tp)
{
    return (sinkd_lanes){
        .n_lanes = tp->n_lanes, .len = tp->len, .page_off = tp->page_off, .page_ids = tp->page_ids,
    };
}

static inline void t_pool_free(t_pool *tp)
{
    free(tp->len);
    free(tp->page_off);
    free(tp->page_ids);
    free(tp->pool.pages);
    free(tp->pool.pos);
    free(tp->pool.score);
    free(tp->pool.kmin);
    free(tp->pool.kmax);
    memset(tp, 0, sizeof *tp);
}

/* ---- references ------------------------------------------------------------------ */

/* Rotate x[d] (double) at position pos, as backend.h defines RoPE. */
static inline void t_rope(double *x, int32_t d, double pos, const sinkd_rope *r)
{
    for (int32_t i = 0; i < d / 2; i++) {
        double ang = pos / r->scale * pow(r->theta, -2.0 * i / d);
        int32_t a = r->style == SINKD_ROPE_NEOX ? i : 2 * i;
        int32_t b = r->style == SINKD_ROPE_NEOX ? i + d / 2 : 2 * i + 1;
        double x0 = x[a], x1 = x[b];
        x[a] = x0 * cos(ang) - x1 * sin(ang);
        x[b] = x0 * sin(ang) + x1 * cos(ang);
    }
}

/* Key t of lane l from the pool (dtype-rounded), rotated at its effective position. */
static inline void t_key(const t_pool *tp, int32_t l, int32_t t, const sinkd_rope *r, double *out)
{
    for (int32_t i = 0; i < tp->head_dim; i++)
        out[i] = t_load(tp->pool.dtype, t_row(tp, l, t, 0), (size_t)i);
    double pos = r->mode == SINKD_ROPE_CACHE ? t : tp->pool.pos[t_slot(tp, l, t)];
    t_rope(out, tp->head_dim, pos, r);
}

/* Attention of query heads q[G][hd] (before RoPE, rotated here at qpos) over
 * keys keys[nk] of lane l. Writes out[G][hd] and, if p != NULL, p[nk]: the
 * probability of each key summed over the G heads. */
static inline void t_attend(const t_pool *tp, int32_t l, const int32_t *keys, int32_t nk,
                            const float *q, int32_t G, double qpos, const sinkd_rope *r,
                            double scale, double *out, double *p)
{
    int32_t hd = tp->head_dim;
    double *qr = malloc(sizeof(double) * hd);
    double *kr = malloc(sizeof(double) * ((size_t)nk * hd + 1)); /* rotated keys */
    double *s = malloc(sizeof(double) * ((size_t)nk + 1));
    for (int32_t j = 0; j < nk; j++)
        t_key(tp, l, keys[j], r, kr + (size_t)j * hd);
    if (p)
        for (int32_t j = 0; j < nk; j++)
            p[j] = 0;
    for (int32_t g = 0; g < G; g++) {
        for (int32_t i = 0; i < hd; i++)
            qr[i] = q[(size_t)g * hd + i];
        t_rope(qr, hd, qpos, r);
        double mx = -INFINITY, sum = 0;
        for (int32_t j = 0; j < nk; j++) {
            double d = 0;
            for (int32_t i = 0; i < hd; i++)
                d += qr[i] * kr[(size_t)j * hd + i];
            s[j] = d * scale;
            mx = s[j] > mx ? s[j] : mx;
        }
        for (int32_t j = 0; j < nk; j++)
            sum += exp(s[j] - mx);
        for (int32_t i = 0; i < hd; i++)
            out[(size_t)g * hd + i] = 0;
        for (int32_t j = 0; j < nk; j++) {
            double w = exp(s[j] - mx) / sum;
            if (p)
                p[j] += w;
            for (int32_t i = 0; i < hd; i++)
                out[(size_t)g * hd + i] += w * t_load(tp->pool.dtype, t_row(tp, l, keys[j], 1), (size_t)i);
        }
    }
    free(qr);
    free(kr);
    free(s);
}

static inline double t_score_ref(int32_t op, double old, double p, double decay)
{
    switch (op) {
    case SINKD_SCORE_WRITE:
        return p;
    case SINKD_SCORE_ADD:
        return old + p;
    case SINKD_SCORE_DECAY:
        return decay * old + p;
    }
    return old;
}

#endif /* SINKD_TREF_H */
