/*
 * Dense layer: y[m][rows] = x[m][cols] . w^T (+ bias[rows]), w row-major in
 * F32, F16 or BF16, fp32 accumulation.
 *
 *   m > 1:  x is converted to the weight dtype in a workspace, then
 *           cublasGemmEx (compute 32F). FLOPs 2*m*rows*cols.
 *   m == 1: the matvec kernel (matvec.cu) when rows are 16-byte aligned:
 *           bytes rows*cols*esize + 4*cols, which is all a decode step of
 *           batch 1 can be, so it is bandwidth bound.
 *
 * Both paths can be recorded in a CUDA graph (graph.cu): cuBLAS runs in the
 * fixed workspace set at backend open, and the conversion buffer is only
 * grown outside a capture (inside one, a too-small buffer fails the matmul
 * with -EBUSY), so run a stretch once eagerly before recording it.
 */
#include "common.cuh"

__global__ void bias_kernel(float *y, const float *bias, int rows, int64_t n)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] += bias[i % rows];
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
    sinkd_matvec_args a = {};
    a.m = m;
    a.n_w = 1;
    a.x = x;
    a.w[0] = w;
    a.bias[0] = bias;
    a.y[0] = y;
    if (m == 1) {
        int rc = sinkd_cuda_matvec(c, &a);
        if (rc != -ENOTSUP)
            return rc;
    }
    return sinkd_cuda_matmul_fused(c, &a); /* one weight, no norm: x rounded, one GEMM */
}

int sinkd_cuda_gemm(sinkd_cuda *c, float *y, const void *x, int32_t m, const sinkd_weight *w,
                    float beta, const float *bias)
{
    const cudaDataType_t t = w->dtype == SINKD_F32   ? CUDA_R_32F
                             : w->dtype == SINKD_F16 ? CUDA_R_16F
                                                     : CUDA_R_16BF;
    /* Column-major view: y^T (rows x m) = W (rows x cols) . x^T (cols x m),
     * where W's memory is the column-major cols x rows matrix W^T. */
    const float one = 1.0f;
    cublasStatus_t st = cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, m, w->cols, &one,
                                     w->data, t, w->cols, x, t, w->cols, &beta, y, CUDA_R_32F,
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
