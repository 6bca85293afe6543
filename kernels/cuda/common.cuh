/*
 * Shared pieces of the CUDA backend: the private state behind
 * sinkd_backend.priv, dtype loads/stores, RoPE angles, the launch check, and
 * the launchers each .cu file exports to backend.cu.
 *
 * No kernel keeps global state: everything a launch needs lives in
 * sinkd_cuda (streams, cuBLAS handle, workspaces), passed explicitly.
 */
#ifndef SINKD_CUDA_COMMON_CUH
#define SINKD_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>
#include <errno.h>
#include <stdint.h>

#include "../backend.h"

/* One growable device buffer; contents are scratch between ops. */
typedef struct sinkd_cuda_buf {
    void *p;
    size_t bytes;
    bool captured;          /* a graph recorded with this block uses it for good */
} sinkd_cuda_buf;

/* The backend's private state (sinkd_backend.priv). */
typedef struct sinkd_cuda {
    int device;
    int n_sm;
    cudaStream_t stream;
    cublasHandle_t blas;
    sinkd_cuda_buf conv;    /* matmul: activations converted to the weight dtype */
    sinkd_cuda_buf part;    /* decode split-KV partials (acc, m, l) */
    sinkd_cuda_buf lse;     /* decode/prefill final log2-sum-exp per (row, head) */
    sinkd_cuda_buf logits;  /* decode: stored logits for the score pass */
    sinkd_cuda_buf pscore;  /* topk: per-page bounds */
    /* stats.cu: floats of shared memory its whole-lane kernels (QUANTILE,
     * topk_tokens, GUMBEL) cache a lane in, worked out on their first call
     * (per layer and step after) */
    int32_t lane_cache[3];
    bool lane_cache_known[3];
    /* CUDA graphs (graph.cu). A recorded graph keeps the addresses of the
     * buffers its ops used, so while any graph is alive a growing buffer
     * that a recording used has its old block parked in @retired instead of
     * freed (freed with the last graph), and cuBLAS works in the fixed
     * @blas_ws, never allocating. */
    sinkd_cuda_buf blas_ws;
    int32_t n_graphs;
    void **retired;
    size_t n_retired, cap_retired;
    sinkd_cuda_buf kvrot;   /* prefill v3: the lanes' keys rotated, and their values, contiguous */
    sinkd_cuda_buf mm_up;   /* matmul_fused: the up product before SwiGLU */
} sinkd_cuda;

/* Map a CUDA error to the backend's errno convention. */
static inline int sinkd_cuda__err(cudaError_t e)
{
    if (e == cudaSuccess)
        return 0;
    return e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO;
}

/* After every launch: a bad configuration shows up here, not later. */
#define SINKD_CUDA_CHECK_LAUNCH() \
    do { \
        cudaError_t e_ = cudaGetLastError(); \
        if (e_ != cudaSuccess) \
            return sinkd_cuda__err(e_); \
    } while (0)

#define SINKD_CUDA_TRY(call) \
    do { \
        cudaError_t e_ = (call); \
        if (e_ != cudaSuccess) \
            return sinkd_cuda__err(e_); \
    } while (0)

/* Grow @b to at least @bytes (old contents are dropped). Synchronises the
 * stream before freeing a buffer an in-flight kernel may still read. */
int sinkd_cuda_buf_reserve(sinkd_cuda *c, sinkd_cuda_buf *b, size_t bytes);

/* ---- element access by dtype ------------------------------------------- */

template <typename T> struct kv_traits;
template <> struct kv_traits<__half> {
    static __device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
    static __device__ __forceinline__ __half from_f(float x) { return __float2half_rn(x); }
};
template <> struct kv_traits<__nv_bfloat16> {
    static __device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
    static __device__ __forceinline__ __nv_bfloat16 from_f(float x) { return __float2bfloat16_rn(x); }
};
template <> struct kv_traits<float> {
    static __device__ __forceinline__ float to_f(float x) { return x; }
    static __device__ __forceinline__ float from_f(float x) { return x; }
};

/* Four consecutive 16-bit elements (8 bytes, 8-byte aligned) to f32. */
template <typename T>
static __device__ __forceinline__ void load4(const T *p, float *o)
{
    uint2 u = *reinterpret_cast<const uint2 *>(p);
    const T *e = reinterpret_cast<const T *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++)
        o[i] = kv_traits<T>::to_f(e[i]);
}

/* Eight consecutive 16-bit elements (16 bytes, 16-byte aligned) to f32. */
template <typename T>
static __device__ __forceinline__ void load8(const T *p, float *o)
{
    uint4 u = *reinterpret_cast<const uint4 *>(p);
    const T *e = reinterpret_cast<const T *>(&u);
#pragma unroll
    for (int i = 0; i < 8; i++)
        o[i] = kv_traits<T>::to_f(e[i]);
}

/* Row layout of the attention kernels: thread/chunk @u of a row of @d holds
 * 8 elements as 4 rotary pairs m = (x[2m], x[2m+1]) with frequency index
 * 4u + m. ADJACENT: elements 8u..8u+7; NEOX: 4u..4u+3 and d/2 + 4u.. */
static __device__ __forceinline__ int row_elem(int u, int e, int d, bool neox)
{
    int m = e >> 1;
    if (neox)
        return (e & 1) ? d / 2 + 4 * u + m : 4 * u + m;
    return 8 * u + e;
}

/* Load chunk @u of a row in that layout (needs d % 16 == 0, aligned rows). */
template <typename T>
static __device__ __forceinline__ void load_row(const T *row, int u, int d, bool neox, float *x)
{
    if (neox) {
        float a[4], b[4];
        load4(row + 4 * u, a);
        load4(row + d / 2 + 4 * u, b);
#pragma unroll
        for (int m = 0; m < 4; m++) {
            x[2 * m] = a[m];
            x[2 * m + 1] = b[m];
        }
    } else {
        load8(row + 8 * u, x);
    }
}

/* Store chunk @u of a row in that layout, rounding to T (the inverse of
 * load_row; 16-byte stores for ADJACENT, two 8-byte ones for NEOX). */
template <typename T>
static __device__ __forceinline__ void store_row(T *row, int u, int d, bool neox, const float *x)
{
    __align__(16) T e[8];
#pragma unroll
    for (int i = 0; i < 8; i++)
        e[i] = kv_traits<T>::from_f(neox ? x[(i % 4) * 2 + i / 4] : x[i]);
    if (neox) {
        *reinterpret_cast<uint2 *>(row + 4 * u) = *reinterpret_cast<const uint2 *>(e);
        *reinterpret_cast<uint2 *>(row + d / 2 + 4 * u) = *reinterpret_cast<const uint2 *>(e + 4);
    } else {
        *reinterpret_cast<uint4 *>(row + 8 * u) = *reinterpret_cast<const uint4 *>(e);
    }
}

/* ---- RoPE --------------------------------------------------------------- */

/* Inverse frequency of pair @i of a head of @d: theta^(-2i/d) / scale.
 * The angle of a position p is p * rope_inv_freq(). */
static __device__ __forceinline__ float rope_inv_freq(float theta, float scale, int i, int d)
{
    return powf(theta, -2.0f * (float)i / (float)d) / scale;
}

/* Pair @i's inverse frequency in double, as the CPU twin has it: a block
 * computes these once and rotates many rows with rope_sincos_inv. */
static __device__ __forceinline__ double rope_inv_exact(float theta, float scale, int i, int d)
{
    return pow((double)theta, -2.0 * i / d) / (double)scale;
}

/* sin/cos of pair @i's angle at @pos computed in double, as the CPU twin
 * does: used where a row is rotated once (the rope op, a decode query). */
static __device__ __forceinline__ void rope_sincos_exact(int pos, float theta, float scale, int i,
                                                         int d, float *s, float *c)
{
    double a = (double)pos * rope_inv_exact(theta, scale, i, d);
    double sd, cd;
    sincos(a, &sd, &cd);
    *s = (float)sd;
    *c = (float)cd;
}


/* sin/cos of pos * @inv: the angle in turns reduced to [-1/2, 1/2] in double
 * (exact reduction at any position below 2^31), then sincospi in float (no
 * slow path). Within ~1e-7 of rope_sincos_exact, for a few FP64 ops where
 * that one runs a double pow and a double sincos. */
static __device__ __forceinline__ void rope_sincos_inv(int pos, double inv, float *s, float *c)
{
    double turns = (double)pos * inv * 0.15915494309189535;
    turns -= rint(turns);
    sincospif((float)(2.0 * turns), s, c);
}

/* Fast sin/cos of pos * inv_freq for keys read in the attention loops:
 * two-constant reduction to [-pi, pi], then the SFU (abs error ~1e-6). */
static __device__ __forceinline__ void rope_sincos_fast(int pos, float inv_freq, float *s, float *c)
{
    float a = (float)pos * inv_freq;
    float k = rintf(a * 0.15915494309189535f);
    float r = fmaf(-k, 6.28318548202514648f, a);
    r = fmaf(-k, -1.7484556e-07f, r);
    __sincosf(r, s, c);
}

/* Inverse frequencies of the 4 pairs chunk @u of a row holds (row_elem's
 * layout: pair m has frequency index 4u + m). */
static __device__ __forceinline__ void rope_chunk_inv(float theta, float scale, int u, int d,
                                                      float *inv)
{
#pragma unroll
    for (int m = 0; m < 4; m++)
        inv[m] = rope_inv_freq(theta, scale, 4 * u + m, d);
}

/* Rotate a chunk's 4 pairs (x[2m], x[2m+1]) to position @pos, pair m at
 * inverse frequency inv[m] (fast sincos: keys in the attention loops). */
static __device__ __forceinline__ void rope_rotate_chunk(float *x, int pos, const float *inv)
{
#pragma unroll
    for (int m = 0; m < 4; m++) {
        float s, c;
        rope_sincos_fast(pos, inv[m], &s, &c);
        float x0 = x[2 * m], x1 = x[2 * m + 1];
        x[2 * m] = x0 * c - x1 * s;
        x[2 * m + 1] = x0 * s + x1 * c;
    }
}

/* ---- launchers (one per op family) ------------------------------------- */

int sinkd_cuda_matmul(sinkd_cuda *c, float *y, const float *x, int32_t m,
                      const sinkd_weight *w, const float *bias);
/* ops->matvec (backend.h); matmul's m == 1 path too. */
int sinkd_cuda_matvec(sinkd_cuda *c, const sinkd_matvec_args *a);
/* The argument checks ops->matvec and ops->matmul_fused share: 0, -EINVAL
 * (m outside [1, @max_m] among them) or -ENOTSUP (mixed columns or
 * dtypes), as backend.h states them. */
int sinkd_cuda_matvec_check(const sinkd_matvec_args *a, int32_t max_m);
/* ops->matmul_fused (gemm.cu). */
int sinkd_cuda_matmul_fused(sinkd_cuda *c, const sinkd_matvec_args *a);
/* y[m][w->rows] = x . w^T + beta * y through cuBLAS, x [m][w->cols] already
 * in the weight's dtype; then y += bias when @bias (matmul.cu). */
int sinkd_cuda_gemm(sinkd_cuda *c, float *y, const void *x, int32_t m, const sinkd_weight *w,
                    float beta, const float *bias);
int sinkd_cuda_rmsnorm(sinkd_cuda *c, float *y, const float *x, const float *g,
                       int32_t m, int32_t d, float eps);
/* y[m][d] = x RMS-normalised and scaled by @g when @g (NULL: x as it is),
 * stored as @dtype (F32, F16 or BF16): rmsnorm, and a GEMM's input rounded
 * to its weights' dtype (elementwise.cu). Arguments unchecked. */
int sinkd_cuda_norm_round(sinkd_cuda *c, void *y, uint8_t dtype, const float *x, const float *g,
                          int32_t m, int32_t d, float eps);
int sinkd_cuda_rope(sinkd_cuda *c, float *x, const int32_t *pos, int32_t m,
                    int32_t n_heads, int32_t head_dim, const sinkd_rope *rope);
int sinkd_cuda_swiglu(sinkd_cuda *c, float *gate, const float *up, int32_t m, int32_t d);
int sinkd_cuda_add(sinkd_cuda *c, float *y, const float *x, int64_t n);
int sinkd_cuda_embed(sinkd_cuda *c, float *out, const sinkd_weight *table,
                     const int32_t *ids, int32_t m);
int sinkd_cuda_argmax(sinkd_cuda *c, int32_t *ids, const float *x, int32_t m, int32_t n);

int sinkd_cuda_graph_begin(sinkd_cuda *c);
int sinkd_cuda_graph_end(sinkd_cuda *c, void **graph);
int sinkd_cuda_graph_launch(sinkd_cuda *c, void *graph);
void sinkd_cuda_graph_free(sinkd_cuda *c, void *graph);
/* Free the parked buffers (no graph left that may use them). */
void sinkd_cuda_retired_free(sinkd_cuda *c);

int sinkd_cuda_kv_append(sinkd_cuda *c, const sinkd_append_args *a);
int sinkd_cuda_kv_compact(sinkd_cuda *c, const sinkd_compact_args *a);
int sinkd_cuda_topk_pages(sinkd_cuda *c, const sinkd_topk_pages_args *a);
int sinkd_cuda_attn_decode(sinkd_cuda *c, const sinkd_decode_args *a);
int sinkd_cuda_attn_prefill(sinkd_cuda *c, const sinkd_prefill_args *a);

/* Checks shared by the KV ops: pool dtype F16/BF16, head_dim a multiple of
 * 16 in 16..256 and <= head_dim_max, pages big enough. */
int sinkd_cuda_check_pool(const sinkd_kv_pool *pool, int32_t head_dim);
/* Pool as above, plus heads (n_q a multiple of n_kv, group <= 16) and rope
 * (theta, scale > 0; known style and mode). */
int sinkd_cuda_check_attn(const sinkd_kv_pool *pool, int32_t head_dim, int32_t n_q,
                          int32_t n_kv, const sinkd_rope *rope);
/* Rope fields alone. */
int sinkd_cuda_check_rope(const sinkd_rope *rope);

/* Recompute kmin/kmax of lane pages [first_page(l), ceil(len/pt)) where
 * first_page(l) = max(0, (len[l] - from_end) / pt) when from_end > 0, else 0.
 * Launches a grid-stride kernel over (page, lane). */
int sinkd_cuda_page_bounds(sinkd_cuda *c, const sinkd_kv_pool *pool,
                           const sinkd_lanes *lanes, int32_t head_dim,
                           const sinkd_rope *rope, int32_t from_end);

#endif /* SINKD_CUDA_COMMON_CUH */
