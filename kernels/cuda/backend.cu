/*
 * The CUDA backend's ops table: memory, stream, device info, and the thin
 * wrappers that forward each op to its launcher (one .cu file per family).
 *
 * All work is queued on one non-blocking stream owned by the backend; d2h
 * waits for it, sync() waits for it, nothing else blocks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"
#include "stream.h"

static sinkd_cuda *cu(sinkd_backend *be) { return (sinkd_cuda *)be->priv; }

/* Keep @p until the last graph is freed: a graph may have recorded it. */
static int buf_park(sinkd_cuda *c, void *p)
{
    if (c->n_retired == c->cap_retired) {
        size_t cap = c->cap_retired ? c->cap_retired * 2 : 8;
        void **r = (void **)realloc(c->retired, cap * sizeof *r);
        if (!r)
            return -ENOMEM;
        c->retired = r;
        c->cap_retired = cap;
    }
    c->retired[c->n_retired++] = p;
    return 0;
}

int sinkd_cuda_buf_reserve(sinkd_cuda *c, sinkd_cuda_buf *b, size_t bytes)
{
    cudaStreamCaptureStatus st;
    SINKD_CUDA_TRY(cudaStreamIsCapturing(c->stream, &st));
    if (b->bytes >= bytes) {
        if (st != cudaStreamCaptureStatusNone)
            b->captured = true;
        return 0;
    }
    if (st != cudaStreamCaptureStatusNone)
        return -EBUSY; /* a replay could not repeat the allocation */
    if (b->p && b->captured && c->n_graphs > 0) {
        /* Parked blocks stay until the last graph goes: grow by doubling at
         * least, so that a run of ever larger requests parks a handful of
         * blocks smaller than the new one, not one block per size. */
        int rc = buf_park(c, b->p);
        if (rc)
            return rc;
        if (bytes < 2 * b->bytes)
            bytes = 2 * b->bytes;
    } else if (b->p) {
        /* A kernel queued earlier may still read the old buffer. */
        SINKD_CUDA_TRY(cudaStreamSynchronize(c->stream));
        cudaFree(b->p);
    }
    b->p = NULL;
    b->bytes = 0;
    b->captured = false;
    SINKD_CUDA_TRY(cudaMalloc(&b->p, bytes));
    b->bytes = bytes;
    return 0;
}

int sinkd_cuda_check_pool(const sinkd_kv_pool *pool, int32_t head_dim)
{
    if (!pool || !pool->pages || !pool->pos || !pool->score || !pool->kmin || !pool->kmax)
        return -EINVAL;
    if (pool->dtype != SINKD_F16 && pool->dtype != SINKD_BF16)
        return -EINVAL;
    if (head_dim < 16 || head_dim > 256 || head_dim % 16 != 0 || head_dim > pool->head_dim_max)
        return -EINVAL;
    if (pool->page_tokens <= 0 || pool->n_pages <= 0)
        return -EINVAL;
    /* 16-byte row loads need 16-byte aligned pages. */
    if (pool->page_bytes % 16 != 0 ||
        pool->page_bytes < (size_t)2 * pool->page_tokens * head_dim * 2)
        return -EINVAL;
    return 0;
}

int sinkd_cuda_check_rope(const sinkd_rope *r)
{
    if (!r || !(r->theta > 0.0f) || !(r->scale > 0.0f) || r->style > SINKD_ROPE_NEOX ||
        r->mode > SINKD_ROPE_CACHE)
        return -EINVAL;
    return 0;
}

int sinkd_cuda_check_attn(const sinkd_kv_pool *pool, int32_t head_dim, int32_t n_q,
                          int32_t n_kv, const sinkd_rope *rope)
{
    int rc = sinkd_cuda_check_pool(pool, head_dim);
    if (rc)
        return rc;
    if (n_kv <= 0 || n_q <= 0 || n_q % n_kv || n_q / n_kv > 16)
        return -EINVAL;
    return sinkd_cuda_check_rope(rope);
}

static int cu_alloc(sinkd_backend *be, void **p, size_t bytes)
{
    (void)be;
    if (!p)
        return -EINVAL;
    *p = NULL;
    if (bytes == 0)
        return 0;
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess)
        (void)cudaGetLastError(); /* a failed cudaMalloc is no launch error: the next launch check must not see it */
    return sinkd_cuda__err(e);
}

static void cu_free(sinkd_backend *be, void *p)
{
    if (!p)
        return;
    /* cudaFree synchronises the device, so queued readers finish first. */
    (void)be;
    cudaFree(p);
}

static int cu_memset0(sinkd_backend *be, void *p, size_t bytes)
{
    if (!p && bytes)
        return -EINVAL;
    return bytes ? sinkd_cuda__err(cudaMemsetAsync(p, 0, bytes, cu(be)->stream)) : 0;
}

static int cu_copy(sinkd_backend *be, void *dst, const void *src, size_t bytes,
                   cudaMemcpyKind kind)
{
    if ((!dst || !src) && bytes)
        return -EINVAL;
    if (!bytes)
        return 0;
    SINKD_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, kind, cu(be)->stream));
    /* Host memory may be pageable and the caller may reuse it on return. */
    if (kind == cudaMemcpyDeviceToHost)
        SINKD_CUDA_TRY(cudaStreamSynchronize(cu(be)->stream));
    return 0;
}

static int cu_h2d(sinkd_backend *be, void *d, const void *s, size_t n)
{
    return cu_copy(be, d, s, n, cudaMemcpyHostToDevice);
}

static int cu_d2h(sinkd_backend *be, void *d, const void *s, size_t n)
{
    return cu_copy(be, d, s, n, cudaMemcpyDeviceToHost);
}

static int cu_d2d(sinkd_backend *be, void *d, const void *s, size_t n)
{
    return cu_copy(be, d, s, n, cudaMemcpyDeviceToDevice);
}

static int cu_sync(sinkd_backend *be)
{
    return sinkd_cuda__err(cudaStreamSynchronize(cu(be)->stream));
}

static int cu_info(sinkd_backend *be, sinkd_backend_info *out)
{
    if (!out)
        return -EINVAL;
    size_t fr = 0, tot = 0;
    SINKD_CUDA_TRY(cudaMemGetInfo(&fr, &tot));
    *out = be->info;
    out->mem_free = fr;
    out->mem_total = tot;
    return 0;
}

static int cu_kv_append(sinkd_backend *be, const sinkd_append_args *a)
{
    return sinkd_cuda_kv_append(cu(be), a);
}
static int cu_kv_compact(sinkd_backend *be, const sinkd_compact_args *a)
{
    return sinkd_cuda_kv_compact(cu(be), a);
}
static int cu_attn_decode(sinkd_backend *be, const sinkd_decode_args *a)
{
    return sinkd_cuda_attn_decode(cu(be), a);
}
static int cu_attn_prefill(sinkd_backend *be, const sinkd_prefill_args *a)
{
    return sinkd_cuda_attn_prefill(cu(be), a);
}
static int cu_topk_pages(sinkd_backend *be, const sinkd_topk_pages_args *a)
{
    return sinkd_cuda_topk_pages(cu(be), a);
}
static int cu_matmul(sinkd_backend *be, float *y, const float *x, int32_t m,
                     const sinkd_weight *w, const float *bias)
{
    return sinkd_cuda_matmul(cu(be), y, x, m, w, bias);
}
static int cu_rmsnorm(sinkd_backend *be, float *y, const float *x, const float *g,
                      int32_t m, int32_t d, float eps)
{
    return sinkd_cuda_rmsnorm(cu(be), y, x, g, m, d, eps);
}
static int cu_rope(sinkd_backend *be, float *x, const int32_t *pos, int32_t m,
                   int32_t n_heads, int32_t head_dim, const sinkd_rope *rope)
{
    return sinkd_cuda_rope(cu(be), x, pos, m, n_heads, head_dim, rope);
}
static int cu_swiglu(sinkd_backend *be, float *gate, const float *up, int32_t m, int32_t d)
{
    return sinkd_cuda_swiglu(cu(be), gate, up, m, d);
}
static int cu_add(sinkd_backend *be, float *y, const float *x, int64_t n)
{
    return sinkd_cuda_add(cu(be), y, x, n);
}
static int cu_embed(sinkd_backend *be, float *out, const sinkd_weight *table,
                    const int32_t *ids, int32_t m)
{
    return sinkd_cuda_embed(cu(be), out, table, ids, m);
}
static int cu_argmax(sinkd_backend *be, int32_t *ids, const float *x, int32_t m, int32_t n)
{
    return sinkd_cuda_argmax(cu(be), ids, x, m, n);
}

/* Policy statistics and token selection (stats.cu). */
extern "C" int sinkd_cuda_stat(sinkd_cuda *c, const sinkd_stat_args *a);
extern "C" int sinkd_cuda_topk_tokens(sinkd_cuda *c, const sinkd_topk_tokens_args *a);
static int cu_stat(sinkd_backend *be, const sinkd_stat_args *a)
{
    return sinkd_cuda_stat(cu(be), a);
}
static int cu_topk_tokens(sinkd_backend *be, const sinkd_topk_tokens_args *a)
{
    return sinkd_cuda_topk_tokens(cu(be), a);
}

/* Recorded replays (graph.cu). */
static int cu_graph_begin(sinkd_backend *be)
{
    return sinkd_cuda_graph_begin(cu(be));
}
static int cu_graph_end(sinkd_backend *be, void **graph)
{
    return sinkd_cuda_graph_end(cu(be), graph);
}
static int cu_graph_launch(sinkd_backend *be, void *graph)
{
    return sinkd_cuda_graph_launch(cu(be), graph);
}
static void cu_graph_free(sinkd_backend *be, void *graph)
{
    sinkd_cuda_graph_free(cu(be), graph);
}
static int cu_matvec(sinkd_backend *be, const sinkd_matvec_args *a)
{
    return sinkd_cuda_matvec(cu(be), a);
}

static int cu_matmul_fused(sinkd_backend *be, const sinkd_matvec_args *a)
{
    return sinkd_cuda_matmul_fused(cu(be), a);
}

/* Deferred decode scores (defer.cu). */
extern "C" int sinkd_cuda_score_flush(sinkd_cuda *c, const sinkd_score_flush_args *a);
static int cu_score_flush(sinkd_backend *be, const sinkd_score_flush_args *a)
{
    return sinkd_cuda_score_flush(cu(be), a);
}

extern "C" int sinkd_cuda_stat_rules(sinkd_cuda *c, const sinkd_stat_args *a, int32_t n);
static int cu_stat_rules(sinkd_backend *be, const sinkd_stat_args *a, int32_t n)
{
    return sinkd_cuda_stat_rules(cu(be), a, n);
}

static const sinkd_ops cuda_ops = {
    cu_alloc,       cu_free,         cu_memset0,    cu_h2d,   cu_d2h,
    cu_d2d,         cu_sync,         cu_info,       cu_kv_append,
    cu_kv_compact,  cu_attn_decode,  cu_attn_prefill, cu_topk_pages,
    cu_matmul,      cu_rmsnorm,      cu_rope,       cu_swiglu, cu_add,
    cu_embed,       cu_argmax,      cu_stat,       cu_topk_tokens,
    cu_graph_begin, cu_graph_end,    cu_graph_launch, cu_graph_free,
    cu_matvec,      cu_matmul_fused, cu_score_flush, cu_stat_rules,
};

/* cuBLAS's workspace: 32 MiB is what its documentation asks for on Hopper.
 * A fixed one keeps cuBLAS from allocating inside a graph capture. */
#define BLAS_WORKSPACE_BYTES (32u << 20)

static void cuda_state_free(sinkd_cuda *c)
{
    sinkd_cuda_buf *bufs[] = {&c->conv,   &c->part,  &c->lse,  &c->logits,
                              &c->pscore, &c->kvrot, &c->mm_up};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]->p)
            cudaFree(bufs[i]->p);
    sinkd_cuda_retired_free(c);
    if (c->blas)
        cublasDestroy(c->blas);
    if (c->blas_ws.p)
        cudaFree(c->blas_ws.p);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    free(c);
}

extern "C" int sinkd_cuda_backend_open(sinkd_backend **out)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) {
        cudaGetLastError(); /* clear the sticky "no device" error */
        return -ENODEV;
    }
    cudaDeviceProp prop;
    SINKD_CUDA_TRY(cudaGetDeviceProperties(&prop, 0));
    SINKD_CUDA_TRY(cudaSetDevice(0));

    sinkd_cuda *c = (sinkd_cuda *)calloc(1, sizeof *c);
    sinkd_backend *be = (sinkd_backend *)calloc(1, sizeof *be);
    if (!c || !be) {
        free(c);
        free(be);
        return -ENOMEM;
    }
    c->n_sm = prop.multiProcessorCount;
    int rc = sinkd_cuda__err(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    if (rc == 0 && cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS) {
        c->blas = NULL;
        rc = -EIO;
    }
    /* cublasSetStream drops a user workspace: set the workspace after it. */
    if (rc == 0 && cublasSetStream(c->blas, c->stream) != CUBLAS_STATUS_SUCCESS)
        rc = -EIO;
    if (rc == 0)
        rc = sinkd_cuda_buf_reserve(c, &c->blas_ws, BLAS_WORKSPACE_BYTES);
    if (rc == 0 && cublasSetWorkspace(c->blas, c->blas_ws.p, c->blas_ws.bytes) !=
                       CUBLAS_STATUS_SUCCESS)
        rc = -EIO;
    if (rc != 0) {
        cuda_state_free(c);
        free(be);
        return rc;
    }
    be->ops = &cuda_ops;
    be->priv = c;
    snprintf(be->info.name, sizeof be->info.name, "cuda");
    /* The device name is cut to the info field (GPU names are short). */
    memcpy(be->info.device, prop.name, sizeof be->info.device - 1);
    be->info.device[sizeof be->info.device - 1] = '\0';
    be->info.mem_total = prop.totalGlobalMem;
    be->info.threads = prop.multiProcessorCount;
    *out = be;
    return 0;
}

extern "C" cudaStream_t sinkd_cuda_backend_stream(sinkd_backend *be)
{
    return cu(be)->stream;
}

/* Called by sinkd_backend_close for a backend named "cuda". */
extern "C" void sinkd_cuda_backend_close(sinkd_backend *be)
{
    if (!be)
        return;
    if (be->priv) {
        sinkd_cuda *c = (sinkd_cuda *)be->priv;
        cudaStreamSynchronize(c->stream);
        cuda_state_free(c);
    }
    free(be);
}
