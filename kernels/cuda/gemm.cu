/*
 * Fused products at any m (ops->matmul_fused, backend.h): the matvec
 * contract for a prefill chunk or a large decode batch, through cuBLAS.
 *
 * Composed from single ops, a layer of a 512-token prefill on the 1B
 * geometry spent more beside its GEMMs than in some of them (ncu, H100):
 * an f32 RMSNorm, then x rounded to bf16 once for each of q, k and v and
 * again for gate and up (7 conversions a layer at ~6 us each), and a
 * residual add after the output and down projections. Here x is
 * normalised and rounded in one pass, once for every matrix that shares
 * it; the residual is the GEMM's beta = 1; SwiGLU runs on the two
 * products.
 */
#include <limits.h>

#include "common.cuh"

#define GF_THREADS 256

/* Row blockIdx.x of x, times rsqrt(mean(x^2) + eps) * g when @g, rounded
 * to T: dst [m][d]. */
template <typename T>
__global__ void __launch_bounds__(GF_THREADS)
norm_round_kernel(T *dst, const float *x, const float *g, int d, float eps)
{
    __shared__ float sh[32];
    const float *xr = x + (size_t)blockIdx.x * d;
    T *yr = dst + (size_t)blockIdx.x * d;
    float r = 1.0f;
    if (g) {
        float ss = 0.0f;
        for (int i = threadIdx.x; i < d; i += GF_THREADS)
            ss += xr[i] * xr[i];
        r = rsqrtf(block_sum(ss, sh) / (float)d + eps);
    }
    for (int i = threadIdx.x; i < d; i += GF_THREADS)
        yr[i] = kv_traits<T>::from_f(g ? xr[i] * r * g[i] : xr[i]);
}

int sinkd_cuda_matmul_fused(sinkd_cuda *c, const sinkd_matvec_args *a)
{
    int rc = sinkd_cuda_matvec_check(a, INT32_MAX);
    if (rc)
        return rc;
    const bool swiglu = a->epilogue == SINKD_MATVEC_SWIGLU;
    const uint8_t dt = a->w[0]->dtype;
    const int32_t m = a->m, cols = a->w[0]->cols;
    const size_t es = dt == SINKD_F32 ? 4 : 2;

    /* x, normalised and in the weights' dtype (f32 weights without a norm
     * read x as it is) */
    const void *xin = a->x;
    cudaDataType_t t = dt == SINKD_F32 ? CUDA_R_32F : dt == SINKD_F16 ? CUDA_R_16F : CUDA_R_16BF;
    if (a->norm || dt != SINKD_F32) {
        rc = sinkd_cuda_buf_reserve(c, &c->conv, (size_t)m * cols * es);
        if (rc)
            return rc;
        if (dt == SINKD_F32)
            norm_round_kernel<float><<<m, GF_THREADS, 0, c->stream>>>(
                (float *)c->conv.p, a->x, a->norm, cols, a->norm_eps);
        else if (dt == SINKD_F16)
            norm_round_kernel<__half><<<m, GF_THREADS, 0, c->stream>>>(
                (__half *)c->conv.p, a->x, a->norm, cols, a->norm_eps);
        else
            norm_round_kernel<__nv_bfloat16><<<m, GF_THREADS, 0, c->stream>>>(
                (__nv_bfloat16 *)c->conv.p, a->x, a->norm, cols, a->norm_eps);
        SINKD_CUDA_CHECK_LAUNCH();
        xin = c->conv.p;
    }

    if (swiglu) {
        const int32_t rows = a->w[0]->rows;
        int64_t n = (int64_t)m * rows;
        rc = sinkd_cuda_buf_reserve(c, &c->mm_up, (size_t)n * sizeof(float));
        if (!rc)
            rc = sinkd_cuda_gemm(c, a->y[0], xin, t, m, a->w[0], 0.0f, a->bias[0]);
        if (!rc)
            rc = sinkd_cuda_gemm(c, (float *)c->mm_up.p, xin, t, m, a->w[1], 0.0f, a->bias[1]);
        return rc ? rc : sinkd_cuda_swiglu(c, a->y[0], (const float *)c->mm_up.p, m, rows);
    }
    const float beta = a->epilogue == SINKD_MATVEC_ADD ? 1.0f : 0.0f;
    for (int i = 0; i < a->n_w && !rc; i++)
        rc = sinkd_cuda_gemm(c, a->y[i], xin, t, m, a->w[i], beta, a->bias[i]);
    return rc;
}
