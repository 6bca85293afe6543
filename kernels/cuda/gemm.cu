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
    if (a->norm || dt != SINKD_F32) {
        rc = sinkd_cuda_buf_reserve(c, &c->conv, (size_t)m * cols * es);
        if (!rc)
            rc = sinkd_cuda_norm_round(c, c->conv.p, dt, a->x, a->norm, m, cols, a->norm_eps);
        if (rc)
            return rc;
        xin = c->conv.p;
    }

    if (swiglu) {
        const int32_t rows = a->w[0]->rows;
        int64_t n = (int64_t)m * rows;
        rc = sinkd_cuda_buf_reserve(c, &c->mm_up, (size_t)n * sizeof(float));
        if (!rc)
            rc = sinkd_cuda_gemm(c, a->y[0], xin, m, a->w[0], 0.0f, a->bias[0]);
        if (!rc)
            rc = sinkd_cuda_gemm(c, (float *)c->mm_up.p, xin, m, a->w[1], 0.0f, a->bias[1]);
        return rc ? rc : sinkd_cuda_swiglu(c, a->y[0], (const float *)c->mm_up.p, m, rows);
    }
    const float beta = a->epilogue == SINKD_MATVEC_ADD ? 1.0f : 0.0f;
    for (int i = 0; i < a->n_w && !rc; i++)
        rc = sinkd_cuda_gemm(c, a->y[i], xin, m, a->w[i], beta, a->bias[i]);
    return rc;
}
