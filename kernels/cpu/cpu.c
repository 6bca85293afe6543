/*
 * CPU backend: the ops table, memory ops (device memory is host memory),
 * device info, per-thread scratch. The op families live in their own files.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include "cpu.h"

static int cpu_alloc(sinkd_backend *be, void **p, size_t bytes)
{
    (void)be;
    if (!p)
        return -EINVAL;
    *p = NULL;
    if (bytes == 0)
        return 0;
    /* 64-byte alignment for the vector loops; aligned_alloc wants a multiple */
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded < bytes)
        return -ENOMEM;
    *p = aligned_alloc(64, rounded);
    return *p ? 0 : -ENOMEM;
}

static void cpu_free(sinkd_backend *be, void *p)
{
    (void)be;
    free(p);
}

static int cpu_memset0(sinkd_backend *be, void *p, size_t bytes)
{
    (void)be;
    if (!p && bytes)
        return -EINVAL;
    if (bytes)
        memset(p, 0, bytes);
    return 0;
}

/* All three copies are plain memmove: host and device memory are one. */
static int cpu_copy(sinkd_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if ((!dst || !src) && bytes)
        return -EINVAL;
    if (bytes)
        memmove(dst, src, bytes);
    return 0;
}

static int cpu_sync(sinkd_backend *be)
{
    (void)be;
    return 0;
}

static void read_mem(uint64_t *total, uint64_t *avail)
{
    struct sysinfo si;
    *total = *avail = 0;
    if (sysinfo(&si) == 0) {
        *total = (uint64_t)si.totalram * si.mem_unit;
        *avail = (uint64_t)(si.freeram + si.bufferram) * si.mem_unit;
    }
    /* MemAvailable counts reclaimable page cache too: prefer it */
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return;
    char line[256];
    unsigned long long kb;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
            *avail = (uint64_t)kb * 1024;
    fclose(f);
}

static void read_cpu_model(char *dst, size_t cap)
{
    snprintf(dst, cap, "cpu");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon) {
            char *s = colon + 1;
            while (*s == ' ' || *s == '\t')
                s++;
            s[strcspn(s, "\n")] = 0;
            snprintf(dst, cap, "%s", s);
            break;
        }
    }
    fclose(f);
}

static int cpu_info(sinkd_backend *be, sinkd_backend_info *out)
{
    if (!be || !out)
        return -EINVAL;
    read_mem(&be->info.mem_total, &be->info.mem_free);
    *out = be->info;
    return 0;
}

static const sinkd_ops cpu_ops = {
    .alloc = cpu_alloc,
    .free = cpu_free,
    .memset0 = cpu_memset0,
    .h2d = cpu_copy,
    .d2h = cpu_copy,
    .d2d = cpu_copy,
    .sync = cpu_sync,
    .info = cpu_info,
    .kv_append = cpu__kv_append,
    .kv_compact = cpu__kv_compact,
    .attn_decode = cpu__attn_decode,
    .attn_prefill = cpu__attn_prefill,
    .topk_pages = cpu__topk_pages,
    .matmul = cpu__matmul,
    .rmsnorm = cpu__rmsnorm,
    .rope = cpu__rope_op,
    .swiglu = cpu__swiglu,
    .add = cpu__add,
    .embed = cpu__embed,
    .argmax = cpu__argmax,
    .stat = cpu__stat,
    .topk_tokens = cpu__topk_tokens,
    .stat_rules = cpu__stat_rules,
    /* no graph ops: callers run their ops one by one */
};

int cpu__scratch_reserve(cpu__backend *cb, size_t floats)
{
    if (floats <= cb->scratch_floats)
        return 0;
    size_t want = floats + floats / 2;
    if (want > SIZE_MAX / sizeof(float) - 64)
        return -ENOMEM;
    size_t bytes = (want * sizeof(float) + 63) & ~(size_t)63;
    for (int i = 0; i < cb->n_threads; i++) {
        float *p = aligned_alloc(64, bytes);
        if (!p)
            return -ENOMEM; /* threads before i keep their larger buffers */
        free(cb->scratch[i]);
        cb->scratch[i] = p;
    }
    cb->scratch_floats = want;
    return 0;
}

int sinkd_cpu_backend_open(int threads, sinkd_backend **out)
{
    if (!out || threads < 0 || threads > 1024)
        return -EINVAL;
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n < 1 ? 1 : n > 1024 ? 1024 : (int)n;
    }
    cpu__backend *cb = calloc(1, sizeof *cb);
    if (!cb)
        return -ENOMEM;
    cb->n_threads = threads;
    cb->scratch = calloc((size_t)threads, sizeof *cb->scratch);
    int rc = cb->scratch ? cpu__pool_init(&cb->pool, threads) : -ENOMEM;
    if (rc) {
        free(cb->scratch);
        free(cb);
        return rc;
    }
    cb->be.ops = &cpu_ops;
    cb->be.priv = cb;
    snprintf(cb->be.info.name, sizeof cb->be.info.name, "cpu");
    read_cpu_model(cb->be.info.device, sizeof cb->be.info.device);
    read_mem(&cb->be.info.mem_total, &cb->be.info.mem_free);
    cb->be.info.threads = threads;
    *out = &cb->be;
    return 0;
}

void sinkd_cpu_backend_close(sinkd_backend *be)
{
    if (!be)
        return;
    cpu__backend *cb = cpu__of(be);
    cpu__pool_free(cb->pool);
    for (int i = 0; i < cb->n_threads; i++)
        free(cb->scratch[i]);
    free(cb->scratch);
    cpu__rope_free(&cb->rope);
    free(cb);
}
