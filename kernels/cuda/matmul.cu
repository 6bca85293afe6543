/*
 * Dense layer: y[m][rows] = x[m][cols] . w^T (+ bias[rows]), w row-major in
 * F32, F16 or BF16, fp32 accumulation.
 *
 *   m > 1:  x is converted to the weight dtype in a workspace, then
 *           cublasGemmEx (compute 32F). FLOPs 2*m*rows*cols.
 *   m == 1: a hand GEMV, one warp per output row, 16-byte weight loads and
 *           x kept in f32; bytes rows*cols*esize + 4*cols, which is all a
 *           decode step of batch 1 can be, so it is bandwidth bound.
 *
 * Both paths can be recorded in a CUDA graph (graph.cu): cuBLAS runs in the
 * fixed workspace set at backend open, and the conversion buffer is only
 * grown outside a capture (inside one, a too-small buffer fails the matmul
 * with -EBUSY), so run a stretch once eagerly before recording it.
 */
#include "common.cuh"

#define GEMV_WARPS 4
#define GEMV_UNROLL 4

template <typename T>
__global__ void convert_kernel(T *dst, const float *src, int64_t n)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        dst[i] = kv_traits<T>::from_f(src[i]);
}

__global__ void bias_kernel(float *y, const float *bias, int rows, int64_t n)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] += bias[i % rows];
}

/* y[r] = w[r] . x (+ bias[r]); needs cols % (16 / sizeof(T)) == 0.
 * Each lane keeps GEMV_UNROLL 16-byte weight loads in flight: with one, a
 * warp waits a whole memory latency per 512 bytes, and a matrix of 2048
 * rows puts only ~16 warps on an SM, far fewer bytes in flight than the
 * bandwidth-latency product of an H100 asks for. Plain loads: a small
 * model's weights stay in L2 from one step to the next. */
template <typename T>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_kernel(float *y, const float *x, const T *w, const float *bias, int rows, int cols)
{
    int r = blockIdx.x * GEMV_WARPS + threadIdx.x / 32;
    int ln = threadIdx.x % 32;
    if (r >= rows)
        return;
    constexpr int V = 16 / sizeof(T); /* elements per 16-byte load */
    const T *wr = w + (size_t)r * cols;
    float acc = 0.0f;
    for (int c0 = ln * V; c0 < cols; c0 += 32 * V * GEMV_UNROLL) {
        uint4 u[GEMV_UNROLL];
#pragma unroll
        for (int k = 0; k < GEMV_UNROLL; k++) {
            int c = c0 + k * 32 * V;
            u[k] = c < cols ? *reinterpret_cast<const uint4 *>(wr + c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int k = 0; k < GEMV_UNROLL; k++) {
            int c = c0 + k * 32 * V;
            if (c >= cols)
                break;
            const T *e = reinterpret_cast<const T *>(&u[k]);
#pragma unroll
            for (int i = 0; i < V; i++)
                acc = fmaf(kv_traits<T>::to_f(e[i]), x[c + i], acc);
        }
    }
    for (int o = 16; o > 0; o >>= 1)
        acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (ln == 0)
        y[r] = acc + (bias ? bias[r] : 0.0f);
}

template <typename T>
static int gemv(sinkd_cuda *c, float *y, const float *x, const sinkd_weight *w, const float *bias)
{
    unsigned blocks = (unsigned)((w->rows + GEMV_WARPS - 1) / GEMV_WARPS);
    gemv_kernel<T><<<blocks, GEMV_WARPS * 32, 0, c->stream>>>(y, x, (const T *)w->data, bias,
                                                              w->rows, w->cols);
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}

int sinkd_cuda_matmul(sinkd_cuda *c, float *y, const float *x, int32_t m,
                      const sinkd_weight *w, const float *bias)
{
    if (!y || !x || !w || !w->data || m < 0 || w->rows <= 0 || w->cols <= 0)
        return -EINVAL;
    if (w->dtype != SINKD_F32 && w->dtype != SINKD_F16 && w->dtype != SINKD_BF16)
        return -EINVAL;
    if (m == 0)
        return 0;
    size_t es = w->dtype == SINKD_F32 ? 4 : 2;
    /* The hand GEMV reads 16-byte rows: weights and x must be aligned. */
    bool aligned = (w->cols * es) % 16 == 0 && ((uintptr_t)w->data % 16) == 0 &&
                   ((uintptr_t)x % 16) == 0;
    if (m == 1 && aligned) {
        switch (w->dtype) {
        case SINKD_F32: return gemv<float>(c, y, x, w, bias);
        case SINKD_F16: return gemv<__half>(c, y, x, w, bias);
        default: return gemv<__nv_bfloat16>(c, y, x, w, bias);
        }
    }

    const void *b = x;
    cudaDataType_t t = CUDA_R_32F;
    int64_t n = (int64_t)m * w->cols;
    if (w->dtype != SINKD_F32) {
        int rc = sinkd_cuda_buf_reserve(c, &c->conv, (size_t)n * 2);
        if (rc)
            return rc;
        unsigned blocks = (unsigned)((n + 255) / 256);
        if (w->dtype == SINKD_F16) {
            convert_kernel<__half><<<blocks, 256, 0, c->stream>>>((__half *)c->conv.p, x, n);
            t = CUDA_R_16F;
        } else {
            convert_kernel<__nv_bfloat16><<<blocks, 256, 0, c->stream>>>(
                (__nv_bfloat16 *)c->conv.p, x, n);
            t = CUDA_R_16BF;
        }
        SINKD_CUDA_CHECK_LAUNCH();
        b = c->conv.p;
    }
    /* Column-major view: y^T (rows x m) = W (rows x cols) . x^T (cols x m),
     * where W's memory is the column-major cols x rows matrix W^T. */
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t st = cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, m, w->cols, &one,
                                     w->data, t, w->cols, b, t, w->cols, &zero, y, CUDA_R_32F,
                                     w->rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS)
        return st == CUBLAS_STATUS_ALLOC_FAILED ? -ENOMEM : -EIO;
    if (bias) {
        int64_t ny = (int64_t)m * w->rows;
        bias_kernel<<<(unsigned)((ny + 255) / 256), 256, 0, c->stream>>>(y, bias, w->rows, ny);
        SINKD_CUDA_CHECK_LAUNCH();
    }
    return 0;
}
