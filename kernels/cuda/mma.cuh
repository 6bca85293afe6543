/*
 * Tensor-core and async-copy helpers shared by the attention kernels
 * (decode.cu v2, prefill.cu): mma.sync m16n8k16 with f32 accumulation,
 * ldmatrix, cp.async with zero fill, and bf16/f16 pair packing.
 *
 * Fragment layouts are PTX's for m16n8k16 (.row.col); with g = lane / 4 and
 * t = lane % 4 a thread holds A rows g and g + 8, columns 2t, 2t+1 (+8);
 * B column g, rows 2t, 2t+1 (+8); C rows g and g + 8, columns 2t, 2t+1.
 */
#ifndef SINKD_CUDA_MMA_CUH
#define SINKD_CUDA_MMA_CUH

#include "common.cuh"

template <typename T> struct mma_op;
template <> struct mma_op<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float *c, const uint32_t *a, uint32_t b0, uint32_t b1)
    {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ uint32_t pack(float x, float y)
    {
        __nv_bfloat162 v = __floats2bfloat162_rn(x, y);
        return *reinterpret_cast<uint32_t *>(&v);
    }
    static __device__ __forceinline__ float2 unpack(uint32_t u)
    {
        /* bf16 is the top half of an f32: two bit operations, no convert */
        return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
    }
};
template <> struct mma_op<__half> {
    static __device__ __forceinline__ void run(float *c, const uint32_t *a, uint32_t b0, uint32_t b1)
    {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ uint32_t pack(float x, float y)
    {
        __half2 v = __floats2half2_rn(x, y);
        return *reinterpret_cast<uint32_t *>(&v);
    }
    static __device__ __forceinline__ float2 unpack(uint32_t u)
    {
        return __half22float2(*reinterpret_cast<__half2 *>(&u));
    }
};

static __device__ __forceinline__ uint32_t smem_u32(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* Four 8x8 16-bit matrices; lane i gives the address of row i % 8 of
 * matrix i / 8 (16 bytes, 16-byte aligned). */
static __device__ __forceinline__ void ldsm_x4(uint32_t *r, const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

/* The same, each matrix transposed (B operands from row-major [k][n]). */
static __device__ __forceinline__ void ldsm_x4_t(uint32_t *r, const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

/* 16 bytes global -> shared, bypassing L1; the first @src_bytes (0 or 16)
 * are read, the rest of the 16 zero filled. @src must be a valid address
 * even when nothing is read. */
static __device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(src_bytes));
}

/* 4 bytes global -> shared through L1; @src_bytes 0 or 4 as above. */
static __device__ __forceinline__ void cp_async4(void *dst, const void *src, int src_bytes)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(src_bytes));
}

static __device__ __forceinline__ void cp_async_commit(void)
{
    asm volatile("cp.async.commit_group;\n" ::);
}

/* Wait until at most @N of this thread's committed groups are pending. */
template <int N>
static __device__ __forceinline__ void cp_async_wait(void)
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* 2^x on the special-function unit with subnormal results flushed to zero
 * (one MUFU.EX2; exp2f without fast math adds the scaling that keeps
 * subnormals): the probabilities it makes are rounded to 16 bits, where
 * nothing that small survives, and 2^-inf = +0. */
static __device__ __forceinline__ float ex2_ftz(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* One online-softmax step (log2 domain) on a warp's S accumulators: rows
 * g and g + 8 take their max over the tile (quad shuffles) and @mrow, the
 * running sum @lrow and the output @o are rescaled, and @s becomes
 * P = exp2(s - max); a row with nothing valid yet stays empty. With
 * @halves = 1 (warp-uniform) only rows g are done: a decode group of up to
 * 8 heads leaves rows 8..15 to nothing, or to the deferred scores, and their
 * P, O, m and l are left as they are, never read. */
template <int NT, int NO>
static __device__ __forceinline__ void online_softmax(float (&s)[NT][4], float (&o)[NO][4], float *mrow,
                                                      float *lrow, int halves = 2)
{
#pragma unroll
    for (int h = 0; h < 2; h++) {
        if (h >= halves)
            break;
        float mx = mrow[h];
#pragma unroll
        for (int j = 0; j < NT; j++)
            mx = fmaxf(mx, fmaxf(s[j][2 * h], s[j][2 * h + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        /* with nothing valid yet (mx -inf) every exponent below is -inf:
         * p and corr are 0, and o, l were 0 */
        const float mref = mx == -INFINITY ? 0.0f : mx;
        float corr = ex2_ftz(mrow[h] - mref);
        mrow[h] = mx;
        lrow[h] *= corr;
#pragma unroll
        for (int j = 0; j < NO; j++) {
            o[j][2 * h] *= corr;
            o[j][2 * h + 1] *= corr;
        }
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int c = 2 * h; c < 2 * h + 2; c++) {
                float p = ex2_ftz(s[j][c] - mref);
                s[j][c] = p;
                lrow[h] += p;
            }
    }
}

#endif /* SINKD_CUDA_MMA_CUH */
