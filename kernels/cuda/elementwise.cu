/*
 * Model-forward elementwise ops, all f32 activations:
 *
 *   rmsnorm  y[m][d] = x * rsqrt(mean(x^2) + eps) * g[d]   8*m*d bytes
 *            (sinkd_cuda_norm_round: also stored as f16/bf16, with or
 *            without the norm, for a GEMM's input)
 *   rope     x[m][h][hd] rotated in place at pos[m]        8*m*h*hd bytes
 *   swiglu   gate[m][d] = silu(gate) * up                  12*m*d bytes
 *   add      y[n] += x[n]                                  12*n bytes
 *   embed    out[m][d] = table[ids[m]] (F32/F16/BF16)      m*d*(4 + esize)
 *   argmax   ids[m] = argmax x[m][n], ties: lowest index   4*m*n bytes
 *
 * All are memory bound; one block per row where a row reduction is needed.
 */
#include <math.h>

#include "common.cuh"

#define EW_THREADS 256

/* Block-wide sum; every thread gets the result. @sh holds 32 floats. */
static __device__ float block_sum(float v, float *sh)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    int w = threadIdx.x / 32, ln = threadIdx.x % 32;
    __syncthreads(); /* @sh may still be read by a previous call */
    if (ln == 0)
        sh[w] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) / 32;
    v = ln < nw ? sh[ln] : 0.0f;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Row blockIdx.x of x, times rsqrt(mean(x^2) + eps) * g when @g, stored
 * as T: the rmsnorm op (T float) and the GEMMs' inputs (T the weights'). */
template <typename T>
__global__ void norm_round_kernel(T *y, const float *x, const float *g, int d, float eps)
{
    __shared__ float sh[32];
    const float *xr = x + (size_t)blockIdx.x * d;
    T *yr = y + (size_t)blockIdx.x * d;
    float r = 1.0f;
    if (g) {
        float ss = 0.0f;
        for (int i = threadIdx.x; i < d; i += blockDim.x)
            ss += xr[i] * xr[i];
        ss = block_sum(ss, sh);
        r = rsqrtf(ss / (float)d + eps);
    }
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        yr[i] = kv_traits<T>::from_f(g ? xr[i] * r * g[i] : xr[i]);
}

int sinkd_cuda_norm_round(sinkd_cuda *c, void *y, uint8_t dtype, const float *x, const float *g,
                          int32_t m, int32_t d, float eps)
{
    if (m == 0)
        return 0;
    if (dtype == SINKD_F32)
        norm_round_kernel<float><<<m, EW_THREADS, 0, c->stream>>>((float *)y, x, g, d, eps);
    else if (dtype == SINKD_F16)
        norm_round_kernel<__half><<<m, EW_THREADS, 0, c->stream>>>((__half *)y, x, g, d, eps);
    else
        norm_round_kernel<__nv_bfloat16><<<m, EW_THREADS, 0, c->stream>>>((__nv_bfloat16 *)y, x,
                                                                          g, d, eps);
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}

int sinkd_cuda_rmsnorm(sinkd_cuda *c, float *y, const float *x, const float *g,
                       int32_t m, int32_t d, float eps)
{
    if (!y || !x || !g || m < 0 || d <= 0 || !(eps >= 0.0f))
        return -EINVAL;
    return sinkd_cuda_norm_round(c, y, SINKD_F32, x, g, m, d, eps);
}

/* One thread per rotated pair (row, head, i). */
__global__ void rope_kernel(float *x, const int32_t *pos, int m, int nh, int hd,
                            float theta, float scale, int neox)
{
    int half = hd / 2;
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)m * nh * half)
        return;
    int i = (int)(idx % half);
    int64_t rh = idx / half; /* row * nh + head */
    int row = (int)(rh / nh);
    float *v = x + rh * hd;
    float s, co;
    rope_sincos_exact(pos[row], theta, scale, i, hd, &s, &co);
    int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    float x0 = v[a], x1 = v[b];
    v[a] = x0 * co - x1 * s;
    v[b] = x0 * s + x1 * co;
}

int sinkd_cuda_rope(sinkd_cuda *c, float *x, const int32_t *pos, int32_t m,
                    int32_t n_heads, int32_t head_dim, const sinkd_rope *rope)
{
    if (!x || !pos || !rope || m < 0 || n_heads <= 0 || head_dim <= 0 || head_dim % 2)
        return -EINVAL;
    if (!(rope->theta > 0.0f) || !(rope->scale > 0.0f) || rope->style > SINKD_ROPE_NEOX)
        return -EINVAL;
    int64_t n = (int64_t)m * n_heads * (head_dim / 2);
    if (n == 0)
        return 0;
    rope_kernel<<<(unsigned)((n + EW_THREADS - 1) / EW_THREADS), EW_THREADS, 0, c->stream>>>(
        x, pos, m, n_heads, head_dim, rope->theta, rope->scale, rope->style == SINKD_ROPE_NEOX);
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}

__global__ void swiglu_kernel(float *g, const float *u, int64_t n)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = g[i];
        g[i] = v / (1.0f + expf(-v)) * u[i];
    }
}

int sinkd_cuda_swiglu(sinkd_cuda *c, float *gate, const float *up, int32_t m, int32_t d)
{
    if (!gate || !up || m < 0 || d < 0)
        return -EINVAL;
    int64_t n = (int64_t)m * d;
    if (n == 0)
        return 0;
    swiglu_kernel<<<(unsigned)((n + EW_THREADS - 1) / EW_THREADS), EW_THREADS, 0, c->stream>>>(
        gate, up, n);
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}

__global__ void add_kernel(float *y, const float *x, int64_t n)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] += x[i];
}

int sinkd_cuda_add(sinkd_cuda *c, float *y, const float *x, int64_t n)
{
    if (!y || !x || n < 0)
        return -EINVAL;
    if (n == 0)
        return 0;
    add_kernel<<<(unsigned)((n + EW_THREADS - 1) / EW_THREADS), EW_THREADS, 0, c->stream>>>(y, x, n);
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}

/* Row ids[blockIdx.x] of the table; an id outside [0, rows) yields zeros. */
template <typename T>
__global__ void embed_kernel(float *out, const T *table, const int32_t *ids, int rows, int d)
{
    int id = ids[blockIdx.x];
    float *o = out + (size_t)blockIdx.x * d;
    bool ok = id >= 0 && id < rows;
    const T *r = table + (size_t)(ok ? id : 0) * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        o[i] = ok ? kv_traits<T>::to_f(r[i]) : 0.0f;
}

int sinkd_cuda_embed(sinkd_cuda *c, float *out, const sinkd_weight *t,
                     const int32_t *ids, int32_t m)
{
    if (!out || !t || !t->data || !ids || m < 0 || t->rows <= 0 || t->cols <= 0)
        return -EINVAL;
    if (m == 0)
        return 0;
    switch (t->dtype) {
    case SINKD_F32:
        embed_kernel<float><<<m, EW_THREADS, 0, c->stream>>>(out, (const float *)t->data, ids,
                                                             t->rows, t->cols);
        break;
    case SINKD_F16:
        embed_kernel<__half><<<m, EW_THREADS, 0, c->stream>>>(out, (const __half *)t->data, ids,
                                                              t->rows, t->cols);
        break;
    case SINKD_BF16:
        embed_kernel<__nv_bfloat16><<<m, EW_THREADS, 0, c->stream>>>(
            out, (const __nv_bfloat16 *)t->data, ids, t->rows, t->cols);
        break;
    default:
        return -EINVAL;
    }
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}

#define ARGMAX_THREADS 1024
#define ARGMAX_U 4

/* Fold x[i] into the running (bv, bi); i only grows within a thread, so the
 * first of equal maxima stays. bi == n: nothing seen yet. */
static __device__ __forceinline__ void argmax_see(float v, int i, int n, float &bv, int &bi)
{
    if (bi == n ? !isnan(v) : v > bv) {
        bv = v;
        bi = i;
    }
}

/* One block per row; (value, index) pairs reduced with ties to the lower
 * index. NaN compares false and is never chosen over a number. A 128K-entry
 * vocabulary is 0.5 MB a row: each thread keeps ARGMAX_U 16-byte loads in
 * flight, or one block spends ~200 us on load latency. */
__global__ void __launch_bounds__(ARGMAX_THREADS) argmax_kernel(int32_t *ids, const float *x, int n)
{
    __shared__ float sv[32];
    __shared__ int si[32];
    const float *r = x + (size_t)blockIdx.x * n;
    float bv = -INFINITY;
    int bi = n; /* sentinel: no element seen */
    int head = 0;
    if (((uintptr_t)r & 15) == 0) {
        const float4 *r4 = reinterpret_cast<const float4 *>(r);
        int nv = n / 4;
        for (int v0 = threadIdx.x; v0 < nv; v0 += ARGMAX_THREADS * ARGMAX_U) {
            float4 u[ARGMAX_U];
#pragma unroll
            for (int k = 0; k < ARGMAX_U; k++) {
                int vi = v0 + k * ARGMAX_THREADS;
                u[k] = vi < nv ? r4[vi] : make_float4(NAN, NAN, NAN, NAN);
            }
#pragma unroll
            for (int k = 0; k < ARGMAX_U; k++) {
                int i = 4 * (v0 + k * ARGMAX_THREADS);
                argmax_see(u[k].x, i, n, bv, bi);
                argmax_see(u[k].y, i + 1, n, bv, bi);
                argmax_see(u[k].z, i + 2, n, bv, bi);
                argmax_see(u[k].w, i + 3, n, bv, bi);
            }
        }
        head = nv * 4;
    }
    for (int i = head + threadIdx.x; i < n; i += blockDim.x)
        argmax_see(r[i], i, n, bv, bi);
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi) || (bi == n && oi < n)) {
            bv = ov;
            bi = oi;
        }
    }
    int w = threadIdx.x / 32, ln = threadIdx.x % 32;
    if (ln == 0) {
        sv[w] = bv;
        si[w] = bi;
    }
    __syncthreads();
    if (w == 0) {
        int nw = blockDim.x / 32;
        bv = ln < nw ? sv[ln] : -INFINITY;
        bi = ln < nw ? si[ln] : n;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > bv || (ov == bv && oi < bi) || (bi == n && oi < n)) {
                bv = ov;
                bi = oi;
            }
        }
        if (ln == 0)
            ids[blockIdx.x] = bi < n ? bi : 0;
    }
}

int sinkd_cuda_argmax(sinkd_cuda *c, int32_t *ids, const float *x, int32_t m, int32_t n)
{
    if (!ids || !x || m < 0 || n <= 0)
        return -EINVAL;
    if (m == 0)
        return 0;
    argmax_kernel<<<m, ARGMAX_THREADS, 0, c->stream>>>(ids, x, n);
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}
