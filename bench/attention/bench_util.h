/*
 * Pieces the attention benchmarks share: the fatal check around backend
 * calls, the order for medians, a fixed random stream, device uploads.
 * Header-only; every function is static to the including program.
 */
#ifndef SINKD_BENCH_ATTENTION_UTIL_H
#define SINKD_BENCH_ATTENTION_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend.h"

/* Exit with a journald error line when a call returns nonzero. */
#define CK(x)                                                                   \
    do {                                                                        \
        int rc_ = (x);                                                          \
        if (rc_ != 0) {                                                         \
            fprintf(stderr, "<3>%s:%d: %s failed: %d\n", __FILE__, __LINE__, #x, rc_); \
            exit(1);                                                            \
        }                                                                       \
    } while (0)

/* qsort order of floats, ascending. */
static inline int bench_cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Uniform in [-1, 1) from a xorshift stream with a fixed seed, so that
 * every run measures the same data. */
static inline float bench_frand(void)
{
    static uint64_t rng = 88172645463325252ull;
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)(rng >> 40) / 16777216.0f * 2.0f - 1.0f;
}

/* A device copy of @n bytes at @h; exits on failure. */
static inline void *bench_upload(sinkd_backend *be, const void *h, size_t n)
{
    void *d;
    CK(be->ops->alloc(be, &d, n));
    CK(be->ops->h2d(be, d, h, n));
    return d;
}

#endif
