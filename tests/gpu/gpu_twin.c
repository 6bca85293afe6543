#include "gpu_twin.h"

#include <criterion/criterion.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *twin_open(twin *t)
{
    memset(t, 0, sizeof *t);
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0)
        return "no CUDA device visible (cudaGetDeviceCount)";
    cr_assert_eq(sinkd_cuda_backend_open(&t->gpu), 0, "cuda backend open");
    cr_assert_eq(sinkd_cpu_backend_open(2, &t->cpu), 0, "cpu backend open");
    /* fresh inputs every run; SINKD_TEST_SEED replays a logged seed */
    const char *seed = getenv("SINKD_TEST_SEED");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    t->rng = seed && *seed ? strtoull(seed, NULL, 10)
                           : ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)getpid() ^ (uint64_t)ts.tv_sec;
    if (!t->rng)
        t->rng = 1;
    cr_log_info("seed %llu", (unsigned long long)t->rng);
    return NULL;
}

void twin_close(twin *t)
{
    sinkd_backend_close(t->gpu);
    sinkd_backend_close(t->cpu);
    t->gpu = t->cpu = NULL;
}

uint32_t twin_u32(twin *t)
{
    t->rng ^= t->rng << 13;
    t->rng ^= t->rng >> 7;
    t->rng ^= t->rng << 17;
    return (uint32_t)(t->rng >> 32);
}

float twin_uniform(twin *t, float lo, float hi)
{
    return lo + (hi - lo) * (float)(twin_u32(t) >> 8) * (1.0f / 16777216.0f);
}

int twin_range(twin *t, int lo, int hi)
{
    return lo + (int)(twin_u32(t) % (uint32_t)(hi - lo + 1));
}

int *twin_perm(twin *t, int n)
{
    int *perm = malloc((n > 0 ? n : 1) * sizeof *perm);
    cr_assert(perm);
    for (int i = 0; i < n; i++)
        perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = twin_range(t, 0, i), tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    return perm;
}

float *twin_rand_f32(twin *t, size_t n, float lo, float hi)
{
    float *x = malloc(n * sizeof *x);
    cr_assert(x);
    for (size_t i = 0; i < n; i++)
        x[i] = twin_uniform(t, lo, hi);
    return x;
}

tbuf tbuf_new(twin *t, const void *host, size_t bytes)
{
    tbuf b = {NULL, NULL, bytes};
    void *poison = NULL;
    if (!host) {
        poison = malloc(bytes ? bytes : 1);
        cr_assert(poison);
        memset(poison, 0xff, bytes);
        host = poison;
    }
    cr_assert_eq(t->cpu->ops->alloc(t->cpu, &b.c, bytes), 0);
    cr_assert_eq(t->gpu->ops->alloc(t->gpu, &b.g, bytes), 0);
    cr_assert_eq(t->cpu->ops->h2d(t->cpu, b.c, host, bytes), 0);
    cr_assert_eq(t->gpu->ops->h2d(t->gpu, b.g, host, bytes), 0);
    free(poison);
    return b;
}

void tbuf_free(twin *t, tbuf *b)
{
    t->cpu->ops->free(t->cpu, b->c);
    t->gpu->ops->free(t->gpu, b->g);
    b->c = b->g = NULL;
}

void tbuf_free_list(twin *t, tbuf *const *bs)
{
    for (; *bs; bs++)
        tbuf_free(t, *bs);
}

void tbuf_get(twin *t, const tbuf *b, void **cc, void **gc)
{
    *cc = malloc(b->bytes ? b->bytes : 1);
    *gc = malloc(b->bytes ? b->bytes : 1);
    cr_assert(*cc && *gc);
    cr_assert_eq(t->cpu->ops->sync(t->cpu), 0);
    cr_assert_eq(t->gpu->ops->sync(t->gpu), 0, "gpu sync (a kernel failed)");
    cr_assert_eq(t->cpu->ops->d2h(t->cpu, *cc, b->c, b->bytes), 0);
    cr_assert_eq(t->gpu->ops->d2h(t->gpu, *gc, b->g, b->bytes), 0);
}

double rel_err(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) || isnan(b[i]))
            return INFINITY; /* an unwritten (poisoned) output */
        if (isinf(a[i]) && a[i] == b[i])
            continue; /* the same infinity (-inf sentinels) */
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    if (den == 0)
        return num == 0 ? 0 : INFINITY;
    return sqrt(num / den);
}

double tbuf_rel_err(twin *t, const tbuf *b, size_t n)
{
    void *c, *g;
    tbuf_get(t, b, &c, &g);
    double e = rel_err((const float *)g, (const float *)c, n);
    free(c);
    free(g);
    return e;
}
