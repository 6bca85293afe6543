/*
 * Test helpers: one CPU and one CUDA backend side by side ("twins"), random
 * data from a fresh seed, buffers mirrored on both, relative errors.
 */
#ifndef SINKD_TEST_GPU_TWIN_H
#define SINKD_TEST_GPU_TWIN_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

typedef struct twin {
    sinkd_backend *cpu, *gpu;
    uint64_t rng;
} twin;

/* A buffer on both backends. */
typedef struct tbuf {
    void *c, *g;
    size_t bytes;
} tbuf;

/* Open both backends. Returns 0, or a reason string when no GPU is usable
 * (the caller skips). Fails the test on other errors. */
const char *twin_open(twin *t);
/* In a Criterion test: declare twin @t and open it, or skip the test with
 * twin_open's reason. */
#define TWIN_OR_SKIP(t)                    \
    twin t;                                \
    do {                                   \
        const char *why_ = twin_open(&t);  \
        if (why_)                          \
            cr_skip_test("%s", why_);      \
    } while (0)
void twin_close(twin *t);

uint32_t twin_u32(twin *t);
float twin_uniform(twin *t, float lo, float hi); /* [lo, hi) */
int twin_range(twin *t, int lo, int hi);         /* [lo, hi] */
/* @n floats uniform in [lo, hi), malloc'd (the caller frees); fails the
 * test when out of memory. */
float *twin_rand_f32(twin *t, size_t n, float lo, float hi);
/* A random permutation of 0 .. n - 1, malloc'd (the caller frees); fails
 * the test when out of memory. */
int *twin_perm(twin *t, int n);

/* Allocate on both and upload @host (NULL: poison both with 0xff bytes,
 * which reads back as NaN for floats). */
tbuf tbuf_new(twin *t, const void *host, size_t bytes);
void tbuf_free(twin *t, tbuf *b);
/* tbuf_free each of the NULL-terminated list @bs. */
void tbuf_free_list(twin *t, tbuf *const *bs);
/* Download both copies (caller frees). */
void tbuf_get(twin *t, const tbuf *b, void **cpu_copy, void **gpu_copy);

/* ||a - b|| / ||b|| over n floats; NaN anywhere gives INFINITY, equal
 * infinities count as equal. */
double rel_err(const float *a, const float *b, size_t n);

/* Download the f32 arrays of @b from both and return their relative error
 * (GPU against CPU). */
double tbuf_rel_err(twin *t, const tbuf *b, size_t n_floats);

#endif
