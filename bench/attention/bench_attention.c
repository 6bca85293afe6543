/*
 * sinkd-bench-attention: the CUDA attention kernels on the shapes of a
 * Llama-3-8B-like layer (32 query heads, 8 kv heads, head_dim 128, bf16 KV,
 * pages of 16 tokens). Prints a table, writes JSON (argv[1], default
 * bench-attention.json).
 *
 *   copy     device-to-device copy of 2 GiB: bytes read + written / time
 *   decode   batch x context; bandwidth = K+V bytes read / kernel time, with
 *            lanes rotated over enough disjoint page sets (>= 512 MiB) that
 *            L2 (50 MB) never holds the next call's pages
 *   score    decode with score_op = ADD (exact probabilities) vs NONE; and
 *            deferred (each call applies the previous call's probabilities
 *            in its own pass: sinkd_decode_args.defer), the steady state
 *            of a model's decode steps
 *   sparse   decode on 1, 1/2, 1/4, 1/8, 1/16 of the pages at 32K context
 *   prefill  one sequence, causal, n = 4K..32K: 4*n*n/2*D*n_q FLOP / time
 *   small    decode on a Llama-3.2-1B layer (32 q / 8 kv heads, head_dim 64,
 *            f16, ADJACENT pairs), batch 1..16 x 576..4K keys: the per-call
 *            fixed cost of short lanes. `sinkd-bench-attention OUT --small`
 *            runs the copy and this table only; `--prefill` the copy and the
 *            prefill table only; `--decode` the copy and both decode tables.
 *
 * Times are medians of 7 runs of events around a batch of calls.
 */
#include <cuda_runtime.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "bench_util.h"
#include "cuda/stream.h"

#define NQ 32
#define NKV 8
#define HD 128
#define PT 16
#define PAGE_BYTES (2 * PT * HD * 2)
#define RUNS 7

static sinkd_backend *be;
static cudaStream_t st; /* the backend's stream: events must be on it */
static FILE *js;
static int js_first = 1;

static void js_row(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void js_row(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(js, "%s\n  ", js_first ? "" : ",");
    js_first = 0;
    vfprintf(js, fmt, ap);
    va_end(ap);
}

/* f16 bits of @f in (-1, 1), truncated; below f16's normal range: zero. */
static uint16_t f16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    int e = (int)((u >> 23) & 0xff) - 127 + 15;
    return e <= 0 ? sign : (uint16_t)(sign | e << 10 | ((u >> 13) & 0x3ff));
}

/* Random @dtype (BF16 or F16) elements in [-1, 1) on the device, filled on
 * the host in chunks. */
static void dev_fill16(void *d, size_t n, uint8_t dtype)
{
    size_t chunk = (size_t)1 << 24;
    uint16_t *h = malloc(chunk * 2);
    for (size_t i = 0; i < chunk; i++) {
        float f = bench_frand();
        uint32_t u;
        memcpy(&u, &f, 4);
        h[i] = dtype == SINKD_F16 ? f16_bits(f) : (uint16_t)(u >> 16);
    }
    for (size_t o = 0; o < n; o += chunk) {
        size_t c = n - o < chunk ? n - o : chunk;
        CK(be->ops->h2d(be, (uint16_t *)d + o, h, c * 2));
    }
    free(h);
}

typedef struct pool {
    sinkd_kv_pool kv;
    int32_t n_pages;
} pool;

/* A pool of @n_pages pages of PT tokens, rows of @hd in @dtype. */
static void pool_make(pool *p, int32_t n_pages, int hd, uint8_t dtype)
{
    const int page_bytes = 2 * PT * hd * 2;
    memset(p, 0, sizeof *p);
    p->n_pages = n_pages;
    size_t ns = (size_t)n_pages * PT;
    CK(be->ops->alloc(be, &p->kv.pages, (size_t)n_pages * page_bytes));
    dev_fill16(p->kv.pages, (size_t)n_pages * page_bytes / 2, dtype);
    int32_t *hp = malloc(ns * 4);
    for (size_t i = 0; i < ns; i++)
        hp[i] = (int32_t)(i % (1 << 17));
    p->kv.pos = bench_upload(be, hp, ns * 4);
    free(hp);
    CK(be->ops->alloc(be, (void **)&p->kv.score, ns * 4));
    CK(be->ops->memset0(be, p->kv.score, ns * 4));
    CK(be->ops->alloc(be, (void **)&p->kv.kmin, (size_t)n_pages * hd * 4));
    CK(be->ops->alloc(be, (void **)&p->kv.kmax, (size_t)n_pages * hd * 4));
    CK(be->ops->memset0(be, p->kv.kmin, (size_t)n_pages * hd * 4));
    CK(be->ops->memset0(be, p->kv.kmax, (size_t)n_pages * hd * 4));
    p->kv.page_bytes = page_bytes;
    p->kv.n_pages = n_pages;
    p->kv.page_tokens = PT;
    p->kv.head_dim_max = hd;
    p->kv.dtype = dtype;
}

static void pool_free(pool *p)
{
    be->ops->free(be, p->kv.pages);
    be->ops->free(be, p->kv.pos);
    be->ops->free(be, p->kv.score);
    be->ops->free(be, p->kv.kmin);
    be->ops->free(be, p->kv.kmax);
}

/* Lane sets: set r maps lanes to pages [r*per, (r+1)*per), pages of a lane
 * interleaved with other lanes' (as a real pool fills). */
typedef struct lanes {
    int nsets, nl;
    sinkd_lanes *set;
    void **bufs;
    int nbufs;
} lanes;

static void lanes_make(lanes *L, int nsets, int nl, int len)
{
    int np = (len + PT - 1) / PT;
    L->nsets = nsets;
    L->nl = nl;
    L->set = calloc(nsets, sizeof *L->set);
    L->bufs = calloc((size_t)nsets * 3, sizeof(void *));
    L->nbufs = 0;
    int32_t *hl = malloc(nl * 4), *ho = malloc((nl + 1) * 4), *hi = malloc((size_t)nl * np * 4);
    for (int l = 0; l < nl; l++) {
        hl[l] = len;
        ho[l] = l * np;
    }
    ho[nl] = nl * np;
    for (int r = 0; r < nsets; r++) {
        for (int l = 0; l < nl; l++)
            for (int j = 0; j < np; j++)
                hi[(size_t)l * np + j] = (int32_t)((size_t)r * nl * np + (size_t)j * nl + l);
        L->set[r].n_lanes = nl;
        L->set[r].len = L->bufs[L->nbufs++] = bench_upload(be, hl, nl * 4);
        L->set[r].page_off = L->bufs[L->nbufs++] = bench_upload(be, ho, (nl + 1) * 4);
        L->set[r].page_ids = L->bufs[L->nbufs++] = bench_upload(be, hi, (size_t)nl * np * 4);
    }
    free(hl);
    free(ho);
    free(hi);
}

static void lanes_free(lanes *L)
{
    for (int i = 0; i < L->nbufs; i++)
        be->ops->free(be, L->bufs[i]);
    free(L->bufs);
    free(L->set);
}

/* Median ms per decode call over RUNS batches of @calls calls. */
static float time_decode(sinkd_decode_args *a, lanes *L, int calls)
{
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    float t[RUNS];
    for (int w = 0; w < 2; w++) {
        a->lanes = L->set[w % L->nsets];
        CK(be->ops->attn_decode(be, a));
    }
    CK(be->ops->sync(be));
    for (int r = 0; r < RUNS; r++) {
        cudaEventRecord(e0, st);
        for (int i = 0; i < calls; i++) {
            a->lanes = L->set[(r * calls + i) % L->nsets];
            CK(be->ops->attn_decode(be, a));
        }
        cudaEventRecord(e1, st);
        CK(be->ops->sync(be));
        cudaEventSynchronize(e1);
        cudaEventElapsedTime(&t[r], e0, e1);
        t[r] /= (float)calls;
    }
    qsort(t, RUNS, sizeof t[0], bench_cmp_f);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return t[RUNS / 2];
}

/* Median us per decode call of @a with ADD scores deferred: one deferral
 * block a sequence (one layer), every call applying the last one's. */
static float time_decode_defer(sinkd_decode_args *a, lanes *L, int calls)
{
    int G = a->n_q_heads / a->n_kv_heads;
    size_t bytes = sinkd_defer_bytes(1, a->n_kv_heads, G, a->head_dim, 2);
    void *blk[128];
    for (int s = 0; s < a->n_seqs; s++) {
        CK(be->ops->alloc(be, &blk[s], bytes));
        CK(be->ops->memset0(be, blk[s], bytes));
    }
    void **ptrs = bench_upload(be, blk, (size_t)a->n_seqs * sizeof blk[0]);
    a->defer = ptrs;
    a->defer_layer = 0;
    a->defer_layers = 1;
    a->score_op = SINKD_SCORE_ADD;
    float ms = time_decode(a, L, calls);
    a->defer = NULL;
    be->ops->free(be, ptrs);
    for (int s = 0; s < a->n_seqs; s++)
        be->ops->free(be, blk[s]);
    return ms;
}

/* Median us per decode call of @a over @nl lanes of @len keys (@pages pages
 * of @bytes a call), without scores (*@us), with ADD (*@us_score) and with
 * ADD deferred (*@us_defer): lanes rotate over >= 512 MiB of a pool of
 * @pool_pages so L2 never holds the next call's pages. */
static void time_decode_rot(sinkd_decode_args *a, int nl, int len, size_t pages, size_t bytes,
                            int32_t pool_pages, float *us, float *us_score, float *us_defer)
{
    const size_t rot_bytes = (size_t)512 << 20;
    int nsets = (int)((rot_bytes + bytes - 1) / bytes);
    if ((size_t)nsets * pages > (size_t)pool_pages)
        nsets = (int)(pool_pages / pages);
    lanes LS;
    lanes_make(&LS, nsets, nl, len);
    int calls = nsets < 4 ? 4 : nsets;
    a->score_op = SINKD_SCORE_NONE;
    *us = time_decode(a, &LS, calls) * 1e3f;
    a->score_op = SINKD_SCORE_ADD;
    *us_score = time_decode(a, &LS, calls) * 1e3f;
    *us_defer = time_decode_defer(a, &LS, calls) * 1e3f;
    lanes_free(&LS);
}

static double copy_gbs(void)
{
    size_t n = (size_t)2 << 30;
    void *a, *b;
    CK(be->ops->alloc(be, &a, n));
    CK(be->ops->alloc(be, &b, n));
    CK(be->ops->memset0(be, a, n));
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    float t[RUNS];
    CK(be->ops->d2d(be, b, a, n));
    CK(be->ops->sync(be));
    for (int r = 0; r < RUNS; r++) {
        cudaEventRecord(e0, st);
        cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, st);
        cudaEventRecord(e1, st);
        cudaEventSynchronize(e1);
        cudaEventElapsedTime(&t[r], e0, e1);
    }
    qsort(t, RUNS, sizeof t[0], bench_cmp_f);
    be->ops->free(be, a);
    be->ops->free(be, b);
    return 2.0 * n / (t[RUNS / 2] * 1e-3) / 1e9;
}

/* Decode on a Llama-3.2-1B layer (32 q / 8 kv heads, d 64, f16, ADJACENT
 * pairs, query at the last position): short lanes, where the per-call fixed
 * cost is most of the time. Lanes rotate over >= 512 MiB as above. */
static void decode_small(double spec)
{
    enum { nq = 32, nkv = 8, hd = 64, page_bytes = 2 * PT * hd * 2 };
    static const int batches[] = {1, 4, 16};
    static const int ctxs[] = {576, 1024, 4096};
    const int32_t pool_pages = (int32_t)(((size_t)1 << 30) / page_bytes);
    pool P;
    pool_make(&P, pool_pages, hd, SINKD_F16);
    size_t qn = (size_t)16 * nq * hd;
    float *hq = malloc(qn * 4);
    for (size_t i = 0; i < qn; i++)
        hq[i] = bench_frand();
    float *q = bench_upload(be, hq, qn * 4), *out;
    free(hq);
    CK(be->ops->alloc(be, (void **)&out, qn * 4));
    sinkd_rope rope = {.theta = 500000.0f, .scale = 1.0f, .style = SINKD_ROPE_ADJACENT,
                       .mode = SINKD_ROPE_ABSOLUTE};
    const char *mode = getenv("SINKD_DECODE_SPLITS");
    printf("\ndecode, Llama-3.2-1B layer (32q/8kv, d 64, f16, pages of 16), SINKD_DECODE_SPLITS=%s\n"
           "%-8s %8s %10s %10s %8s %10s %8s %8s\n", mode ? mode : "(auto)", "batch", "keys", "us", "GB/s",
           "%spec", "score_us", "+score%", "+defer%");
    for (int bi = 0; bi < 3; bi++) {
        for (int ci = 0; ci < 3; ci++) {
            int B = batches[bi], L = ctxs[ci], nl = B * nkv;
            size_t pages = (size_t)nl * ((L + PT - 1) / PT), bytes = pages * page_bytes;
            int32_t hqp[16];
            for (int i = 0; i < 16; i++)
                hqp[i] = L - 1;
            int32_t *qp = bench_upload(be, hqp, sizeof hqp);
            sinkd_decode_args a = {.pool = &P.kv, .n_seqs = B, .n_q_heads = nq, .n_kv_heads = nkv,
                                   .head_dim = hd, .rope = rope, .softmax_scale = 0.125f,
                                   .q = q, .out = out, .q_pos = qp};
            float us, us_s, us_d;
            time_decode_rot(&a, nl, L, pages, bytes, pool_pages, &us, &us_s, &us_d);
            double gbs = bytes / (us * 1e-6) / 1e9;
            printf("%-8d %8d %10.2f %10.0f %7.1f%% %10.2f %7.1f%% %7.1f%%\n", B, L, us, gbs, 100 * gbs / spec,
                   us_s, 100 * (us_s / us - 1), 100 * (us_d / us - 1));
            js_row("{\"kind\": \"decode_small\", \"splits\": \"%s\", \"batch\": %d, \"context\": %d, "
                   "\"us\": %.2f, \"gbs\": %.1f, \"score_us\": %.2f, \"defer_us\": %.2f}",
                   mode ? mode : "auto", B, L, us, gbs, us_s, us_d);
            be->ops->free(be, qp);
        }
    }
    be->ops->free(be, q);
    be->ops->free(be, out);
    pool_free(&P);
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "bench-attention.json";
    const int small_only = argc > 2 && strcmp(argv[2], "--small") == 0;
    const int prefill_only = argc > 2 && strcmp(argv[2], "--prefill") == 0;
    const int decode_only = argc > 2 && strcmp(argv[2], "--decode") == 0;
    int rc = sinkd_cuda_backend_open(&be);
    if (rc) {
        fprintf(stderr, "<3>no CUDA backend: %d\n", rc);
        return 1;
    }
    st = sinkd_cuda_backend_stream(be);
    js = fopen(path, "w");
    if (!js) {
        fprintf(stderr, "<3>cannot write %s\n", path);
        return 1;
    }
    sinkd_backend_info info;
    CK(be->ops->info(be, &info));
    double spec = 3350.0;
    double copy = copy_gbs();
    fprintf(js, "{\"device\": \"%s\", \"copy_gbs\": %.1f, \"spec_gbs\": %.0f, \"rows\": [", info.device,
            copy, spec);
    printf("device %s, d2d copy %.0f GB/s (read+write), spec %.0f GB/s\n", info.device, copy, spec);
    if (!prefill_only)
        decode_small(spec);
    if (small_only) {
        fprintf(js, "\n]}\n");
        fclose(js);
        sinkd_backend_close(be);
        return 0;
    }

    /* one pool big enough for every decode shape (rotations included) */
    const int32_t pool_pages = (int32_t)(((size_t)12 << 30) / PAGE_BYTES);
    pool P;
    pool_make(&P, pool_pages, HD, SINKD_BF16);

    float *hq = malloc((size_t)128 * NQ * HD * 4);
    for (size_t i = 0; i < (size_t)128 * NQ * HD; i++)
        hq[i] = bench_frand();
    float *q = bench_upload(be, hq, (size_t)128 * NQ * HD * 4);
    int32_t hqp[128];
    for (int i = 0; i < 128; i++)
        hqp[i] = 200000;
    int32_t *qp = bench_upload(be, hqp, sizeof hqp);
    float *out;
    CK(be->ops->alloc(be, (void **)&out, (size_t)128 * NQ * HD * 4));

    sinkd_rope rope = {.theta = 500000.0f, .scale = 1.0f, .style = SINKD_ROPE_NEOX,
                       .mode = SINKD_ROPE_ABSOLUTE};
    static const int batches[] = {1, 8, 32, 64, 128};
    static const int ctxs[] = {512, 4096, 16384, 65536, 131072};
    if (!prefill_only)
        printf("\n%-8s %8s %10s %10s %8s %8s %10s %8s %8s\n", "batch", "context", "us", "GB/s", "%spec",
           "%copy", "score_us", "+score%", "+defer%");
    for (int bi = 0; bi < (prefill_only ? 0 : 5); bi++) {
        for (int ci = 0; ci < 5; ci++) {
            int B = batches[bi], L = ctxs[ci], nl = B * NKV;
            size_t pages = (size_t)nl * (L / PT);
            size_t bytes = pages * PAGE_BYTES;
            if (pages > (size_t)pool_pages)
                continue;
            sinkd_decode_args a = {.pool = &P.kv, .n_seqs = B, .n_q_heads = NQ, .n_kv_heads = NKV,
                                   .head_dim = HD, .rope = rope, .softmax_scale = 0.08838834764f,
                                   .q = q, .out = out, .q_pos = qp};
            float us, us_s, us_d;
            time_decode_rot(&a, nl, L, pages, bytes, pool_pages, &us, &us_s, &us_d);
            float ms = us * 1e-3f, ms_s = us_s * 1e-3f;
            double gbs = bytes / (ms * 1e-3) / 1e9;
            printf("%-8d %8d %10.1f %10.0f %7.1f%% %7.1f%% %10.1f %7.1f%% %7.1f%%\n", B, L, ms * 1e3, gbs,
                   100 * gbs / spec, 100 * gbs / copy, ms_s * 1e3, 100 * (ms_s / ms - 1), 100 * (us_d / us - 1));
            js_row("{\"kind\": \"decode\", \"batch\": %d, \"context\": %d, \"us\": %.2f, \"gbs\": %.1f, "
                   "\"pct_spec\": %.1f, \"pct_copy\": %.1f, \"score_us\": %.2f, \"defer_us\": %.2f}",
                   B, L, ms * 1e3, gbs, 100 * gbs / spec, 100 * gbs / copy, ms_s * 1e3, us_d);
        }
    }

    /* sparse decode at 32K: keep every f-th page (selection precomputed) */
    if (!prefill_only && !decode_only) {
        int B = 16, L = 32768, nl = B * NKV, np = L / PT;
        int nsets = 1;
        lanes LS;
        lanes_make(&LS, nsets, nl, L);
        sinkd_decode_args a = {.pool = &P.kv, .n_seqs = B, .n_q_heads = NQ, .n_kv_heads = NKV,
                               .head_dim = HD, .rope = rope, .softmax_scale = 0.08838834764f,
                               .q = q, .out = out, .q_pos = qp};
        float dense = time_decode(&a, &LS, 4);
        printf("\nsparse decode, batch %d x %d (dense %.1f us)\n%-8s %10s %10s\n", B, L, dense * 1e3,
               "kept", "us", "speedup");
        int32_t *ho = malloc((nl + 1) * 4), *hs = malloc((size_t)nl * np * 4);
        for (int f = 1; f <= 16; f *= 2) {
            int k = np / f;
            for (int l = 0; l <= nl; l++)
                ho[l] = l * k;
            for (int l = 0; l < nl; l++)
                for (int j = 0; j < k; j++)
                    hs[(size_t)l * k + j] = j * f;
            int32_t *so = bench_upload(be, ho, (nl + 1) * 4), *sp = bench_upload(be, hs, (size_t)nl * k * 4);
            a.sel_off = so;
            a.sel_pages = sp;
            float ms = time_decode(&a, &LS, 8);
            printf("1/%-6d %10.1f %9.2fx\n", f, ms * 1e3, dense / ms);
            js_row("{\"kind\": \"sparse\", \"batch\": %d, \"context\": %d, \"fraction\": %g, \"us\": %.2f, "
                   "\"dense_us\": %.2f}", B, L, 1.0 / f, ms * 1e3, dense * 1e3);
            be->ops->free(be, so);
            be->ops->free(be, sp);
        }
        /* the Quest selection itself (k = 1/8 of the pages) */
        int k = np / 8;
        int32_t *tp;
        CK(be->ops->alloc(be, (void **)&tp, (size_t)nl * k * 4));
        sinkd_topk_pages_args ta = {.pool = &P.kv, .lanes = LS.set[0], .n_seqs = B, .n_q_heads = NQ,
                                    .n_kv_heads = NKV, .head_dim = HD, .rope = rope, .q = q,
                                    .q_pos = qp, .k = k, .out_pages = tp};
        cudaEvent_t e0, e1;
        cudaEventCreate(&e0);
        cudaEventCreate(&e1);
        CK(be->ops->topk_pages(be, &ta));
        cudaEventRecord(e0, st);
        for (int i = 0; i < 10; i++)
            CK(be->ops->topk_pages(be, &ta));
        cudaEventRecord(e1, st);
        CK(be->ops->sync(be));
        float tk;
        cudaEventSynchronize(e1);
        cudaEventElapsedTime(&tk, e0, e1);
        printf("topk_pages (k = 1/8): %.1f us\n", tk * 100);
        js_row("{\"kind\": \"topk\", \"batch\": %d, \"context\": %d, \"k\": %d, \"us\": %.2f}", B, L, k, tk * 100);
        be->ops->free(be, tp);
        free(ho);
        free(hs);
        lanes_free(&LS);
    }

    /* prefill: one sequence, causal, no past */
    if (!decode_only)
        printf("\nprefill (causal, 32q/8kv, d 128)\n%-8s %10s %10s\n", "n", "ms", "TFLOP/s");
    for (int n = 4096; !decode_only && n <= 32768; n *= 2) {
        lanes LS;
        lanes_make(&LS, 1, NKV, n);
        float *pq, *po;
        size_t qn = (size_t)n * NQ * HD;
        CK(be->ops->alloc(be, (void **)&pq, qn * 4));
        CK(be->ops->alloc(be, (void **)&po, qn * 4));
        float *h = malloc(qn * 4);
        for (size_t i = 0; i < qn; i++)
            h[i] = bench_frand();
        CK(be->ops->h2d(be, pq, h, qn * 4));
        for (int i = 0; i < n && i < 32768; i++)
            ((int32_t *)h)[i] = i;
        int32_t *pp = bench_upload(be, h, (size_t)n * 4);
        free(h);
        sinkd_prefill_args a = {.pool = &P.kv, .lanes = LS.set[0], .n = n, .n_q_heads = NQ,
                                .n_kv_heads = NKV, .head_dim = HD, .rope = rope,
                                .softmax_scale = 0.08838834764f, .q = pq, .out = po, .q_pos = pp,
                                .max_len = n}; /* as the store passes it: no read-back */
        CK(be->ops->attn_prefill(be, &a));
        CK(be->ops->sync(be));
        cudaEvent_t e0, e1;
        cudaEventCreate(&e0);
        cudaEventCreate(&e1);
        float t[3];
        for (int r = 0; r < 3; r++) {
            cudaEventRecord(e0, st);
            CK(be->ops->attn_prefill(be, &a));
            cudaEventRecord(e1, st);
            CK(be->ops->sync(be));
            cudaEventSynchronize(e1);
            cudaEventElapsedTime(&t[r], e0, e1);
        }
        qsort(t, 3, sizeof t[0], bench_cmp_f);
        double flop = 4.0 * n * (n + 1) / 2.0 * HD * NQ;
        double tf = flop / (t[1] * 1e-3) / 1e12;
        printf("%-8d %10.2f %10.1f\n", n, t[1], tf);
        js_row("{\"kind\": \"prefill\", \"n\": %d, \"ms\": %.3f, \"tflops\": %.1f}", n, t[1], tf);
        be->ops->free(be, pq);
        be->ops->free(be, po);
        be->ops->free(be, pp);
        lanes_free(&LS);
    }
    fprintf(js, "\n]}\n");
    fclose(js);
    be->ops->free(be, q);
    be->ops->free(be, qp);
    be->ops->free(be, out);
    pool_free(&P);
    sinkd_backend_close(be);
    return 0;
}
