/*
 * sinkd-bench-topk: the CUDA topk_pages op (Quest page selection) on
 * sinkd-ref-small's geometry (6 query heads, 2 kv heads, head_dim 64, pages
 * of 16 tokens) for {16, 32, 128} lanes x {512, 2048, 8192} pages, k = 1/8
 * of the pages, through both paths: the split (lane, chunk) grid and the
 * one-block-per-lane kernel (SINKD_TOPK_LEGACY=1). The backend reads that
 * variable once, so each path runs in a child process of its own; the
 * parent prints one table and writes JSON (argv[1], default
 * bench-topk.json). The "same" column says whether both paths chose the
 * same pages (a hash of every output).
 *
 * Each call reads a different set of pages of the pool (sets rotate over
 * >= 256 MiB of bounds), so L2 does not hold the next call's bounds, as in
 * a decode step where the layers between two selections evict them. Times
 * are medians of 7 runs of events around a batch of calls.
 */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"
#include "bench_util.h"
#include "cuda/stream.h"

#define NQ 6
#define NKV 2
#define HD 64
#define PT 16
#define PAGE_BYTES (2 * PT * HD * 2)
#define RUNS 7
#define POOL_PAGES (128 * 8192)
#define ROT_BYTES ((size_t)256 << 20)
#define N_LANES 3
#define N_PAGES 3
#define DEV_N sizeof(((sinkd_backend_info *)0)->device)

static const int lane_counts[N_LANES] = {16, 32, 128};
static const int page_counts[N_PAGES] = {512, 2048, 8192};

/* One path's result for one shape. */
typedef struct result {
    float us;
    uint64_t hash;
} result;

/* The pool: random bounds kmin <= kmax; pages, pos and score allocated but
 * never read by the op. */
static void pool_make(sinkd_backend *be, sinkd_kv_pool *kv)
{
    size_t nb = (size_t)POOL_PAGES * HD;
    float *mn = malloc(nb * 4), *mx = malloc(nb * 4);
    if (!mn || !mx) {
        fprintf(stderr, "<3>out of host memory\n");
        exit(1);
    }
    for (size_t i = 0; i < nb; i++) {
        mn[i] = bench_frand();
        mx[i] = mn[i] + (bench_frand() + 1.0f) * 0.5f;
    }
    memset(kv, 0, sizeof *kv);
    CK(be->ops->alloc(be, &kv->pages, (size_t)POOL_PAGES * PAGE_BYTES));
    CK(be->ops->alloc(be, (void **)&kv->pos, (size_t)POOL_PAGES * PT * 4));
    CK(be->ops->alloc(be, (void **)&kv->score, (size_t)POOL_PAGES * PT * 4));
    kv->kmin = bench_upload(be, mn, nb * 4);
    kv->kmax = bench_upload(be, mx, nb * 4);
    free(mn);
    free(mx);
    kv->page_bytes = PAGE_BYTES;
    kv->n_pages = POOL_PAGES;
    kv->page_tokens = PT;
    kv->head_dim_max = HD;
    kv->dtype = SINKD_BF16;
}

static void pool_free(sinkd_backend *be, sinkd_kv_pool *kv)
{
    be->ops->free(be, kv->pages);
    be->ops->free(be, kv->pos);
    be->ops->free(be, kv->score);
    be->ops->free(be, kv->kmin);
    be->ops->free(be, kv->kmax);
}

/* @nsets disjoint lane sets of @nl lanes x @np full pages; a lane's pages
 * interleaved with the other lanes' (as a real pool fills). The device
 * buffers go to @bufs (3 a set). */
static void lanes_make(sinkd_backend *be, sinkd_lanes *set, void **bufs, int nsets, int nl, int np)
{
    int32_t *hl = malloc(nl * 4), *ho = malloc((nl + 1) * 4), *hi = malloc((size_t)nl * np * 4);
    for (int l = 0; l <= nl; l++) {
        if (l < nl)
            hl[l] = np * PT;
        ho[l] = l * np;
    }
    for (int r = 0; r < nsets; r++) {
        for (int l = 0; l < nl; l++)
            for (int j = 0; j < np; j++)
                hi[(size_t)l * np + j] = (int32_t)((size_t)r * nl * np + (size_t)j * nl + l);
        set[r] = (sinkd_lanes){.n_lanes = nl,
                               .len = bufs[3 * r] = bench_upload(be, hl, nl * 4),
                               .page_off = bufs[3 * r + 1] = bench_upload(be, ho, (nl + 1) * 4),
                               .page_ids = bufs[3 * r + 2] = bench_upload(be, hi, (size_t)nl * np * 4)};
    }
    free(hl);
    free(ho);
    free(hi);
}

/* Median us per call of @a over the lane sets, and a hash of set 0's pages. */
static result time_topk(sinkd_backend *be, sinkd_topk_pages_args *a, const sinkd_lanes *set,
                        int nsets)
{
    cudaStream_t st = sinkd_cuda_backend_stream(be);
    int calls = nsets < 8 ? 8 : nsets;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    float t[RUNS];
    for (int w = 0; w < nsets; w++) {
        a->lanes = set[w];
        CK(be->ops->topk_pages(be, a));
    }
    CK(be->ops->sync(be));
    for (int r = 0; r < RUNS; r++) {
        cudaEventRecord(e0, st);
        for (int i = 0; i < calls; i++) {
            a->lanes = set[i % nsets];
            CK(be->ops->topk_pages(be, a));
        }
        cudaEventRecord(e1, st);
        cudaEventSynchronize(e1);
        cudaEventElapsedTime(&t[r], e0, e1);
        t[r] *= 1e3f / (float)calls;
    }
    qsort(t, RUNS, sizeof t[0], bench_cmp_f);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);

    a->lanes = set[0];
    CK(be->ops->topk_pages(be, a));
    size_t n = (size_t)a->lanes.n_lanes * a->k;
    int32_t *h = malloc(n * 4);
    CK(be->ops->d2h(be, h, a->out_pages, n * 4));
    uint64_t hash = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++)
        hash = (hash ^ (uint32_t)h[i]) * 1099511628211ull;
    free(h);
    return (result){t[RUNS / 2], hash};
}

/* One path, in a child process: the device name then every shape's result
 * to @fd. */
static int run_path(int legacy, int fd)
{
    if (legacy)
        setenv("SINKD_TOPK_LEGACY", "1", 1);
    else
        unsetenv("SINKD_TOPK_LEGACY");
    sinkd_backend *be;
    int rc = sinkd_cuda_backend_open(&be);
    if (rc) {
        fprintf(stderr, "<3>no CUDA backend: %d\n", rc);
        return 1;
    }
    sinkd_backend_info info;
    CK(be->ops->info(be, &info));
    if (write(fd, info.device, DEV_N) != (ssize_t)DEV_N)
        return 1;
    sinkd_kv_pool kv;
    pool_make(be, &kv);
    int max_seqs = lane_counts[N_LANES - 1] / NKV;
    float *hq = malloc((size_t)max_seqs * NQ * HD * 4);
    int32_t *hqp = malloc((size_t)max_seqs * 4);
    for (size_t i = 0; i < (size_t)max_seqs * NQ * HD; i++)
        hq[i] = bench_frand();
    for (int s = 0; s < max_seqs; s++)
        hqp[s] = 30000 + s;
    float *q = bench_upload(be, hq, (size_t)max_seqs * NQ * HD * 4);
    int32_t *qp = bench_upload(be, hqp, (size_t)max_seqs * 4);
    free(hq);
    free(hqp);
    int32_t *out;
    CK(be->ops->alloc(be, (void **)&out, (size_t)lane_counts[N_LANES - 1] *
                                             page_counts[N_PAGES - 1] / 8 * 4));
    sinkd_rope rope = {.theta = 10000.0f, .scale = 1.0f, .style = SINKD_ROPE_NEOX,
                       .mode = SINKD_ROPE_ABSOLUTE};
    for (int li = 0; li < N_LANES; li++) {
        for (int pi = 0; pi < N_PAGES; pi++) {
            int nl = lane_counts[li], np = page_counts[pi];
            size_t pages = (size_t)nl * np;
            size_t rot = (ROT_BYTES + pages * HD * 8 - 1) / (pages * HD * 8);
            int nsets = (int)(rot < POOL_PAGES / pages ? rot : POOL_PAGES / pages);
            sinkd_lanes *set = calloc(nsets, sizeof *set);
            void **bufs = calloc((size_t)nsets * 3, sizeof *bufs);
            lanes_make(be, set, bufs, nsets, nl, np);
            sinkd_topk_pages_args a = {.pool = &kv, .n_seqs = nl / NKV, .n_q_heads = NQ,
                                       .n_kv_heads = NKV, .head_dim = HD, .rope = rope, .q = q,
                                       .q_pos = qp, .k = np / 8, .out_pages = out};
            result r = time_topk(be, &a, set, nsets);
            if (write(fd, &r, sizeof r) != (ssize_t)sizeof r)
                return 1;
            for (int i = 0; i < nsets * 3; i++)
                be->ops->free(be, bufs[i]);
            free(bufs);
            free(set);
        }
    }
    be->ops->free(be, q);
    be->ops->free(be, qp);
    be->ops->free(be, out);
    pool_free(be, &kv);
    sinkd_backend_close(be);
    return 0;
}

/* Fork a child for one path and read its results; 0 or -1. */
static int collect(int legacy, char dev[DEV_N], result *res)
{
    int fds[2];
    if (pipe(fds))
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        close(fds[0]);
        _exit(run_path(legacy, fds[1]));
    }
    close(fds[1]);
    size_t want = DEV_N, got = 0;
    ssize_t n;
    while (got < want && (n = read(fds[0], dev + got, want - got)) > 0)
        got += (size_t)n;
    int ok = got == want;
    dev[DEV_N - 1] = 0;
    want = sizeof(result) * N_LANES * N_PAGES;
    got = 0;
    while (ok && got < want && (n = read(fds[0], (char *)res + got, want - got)) > 0)
        got += (size_t)n;
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    return ok && got == want && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "bench-topk.json";
    char dev[DEV_N];
    result split[N_LANES * N_PAGES], legacy[N_LANES * N_PAGES];
    if (collect(0, dev, split) || collect(1, dev, legacy)) {
        fprintf(stderr, "<3>a benchmark child failed\n");
        return 1;
    }
    FILE *js = fopen(path, "w");
    if (!js) {
        fprintf(stderr, "<3>cannot write %s\n", path);
        return 1;
    }
    fprintf(js, "{\"device\": \"%s\", \"n_q_heads\": %d, \"n_kv_heads\": %d, \"head_dim\": %d, "
                "\"page_tokens\": %d, \"rows\": [", dev, NQ, NKV, HD, PT);
    printf("topk_pages on %s: %d q / %d kv heads, d %d, k = pages/8\n", dev, NQ, NKV, HD);
    printf("%-6s %6s %6s %10s %10s %8s %9s %5s\n", "lanes", "pages", "k", "split us", "legacy us",
           "speedup", "GB/s", "same");
    for (int li = 0; li < N_LANES; li++) {
        for (int pi = 0; pi < N_PAGES; pi++) {
            int i = li * N_PAGES + pi, nl = lane_counts[li], np = page_counts[pi];
            const result *s = &split[i], *o = &legacy[i];
            double gbs = (double)nl * np * HD * 8 / (s->us * 1e-6) / 1e9;
            int same = s->hash == o->hash;
            printf("%-6d %6d %6d %10.1f %10.1f %7.2fx %9.0f %5s\n", nl, np, np / 8, s->us, o->us,
                   o->us / s->us, gbs, same ? "yes" : "NO");
            fprintf(js, "%s\n  {\"lanes\": %d, \"pages\": %d, \"k\": %d, \"split_us\": %.2f, "
                        "\"legacy_us\": %.2f, \"bounds_gbs\": %.1f, \"same\": %s}",
                    i ? "," : "", nl, np, np / 8, s->us, o->us, gbs, same ? "true" : "false");
        }
    }
    fprintf(js, "\n]}\n");
    fclose(js);
    return 0;
}
