/*
 * Hopper warpgroup matrix products (wgmma, sm_90a) for the attention
 * kernels: the shared-memory matrix descriptor, the fences and waits, and
 * m64nNk16 with A in registers (f32 accumulation).
 *
 * A warpgroup is 4 consecutive warps (a warp index divisible by 4 first);
 * all 128 threads issue every instruction here. A's registers and D's are
 * laid out per warp as mma.sync m16n8k16's (mma.cuh), warp w of the group
 * holding rows 16w .. 16w + 15, so P's accumulators are an A operand as
 * they stand.
 *
 * B comes from shared memory in 128-byte-swizzled rows: row r of a
 * 1024-byte-aligned region of 128-byte rows keeps its 16-byte chunk c at
 * r * 128 + ((c ^ (r % 8)) * 16), the layout wgmma reads without bank
 * conflicts. K-major B (the contraction along the row: keys in S = Q K^T)
 * steps k by 32 bytes within a row; N-major B (V in O += P V, keys down the
 * rows, head_dim along them) steps k by 16 rows.
 */
#ifndef SINKD_CUDA_WGMMA_CUH
#define SINKD_CUDA_WGMMA_CUH

#include <type_traits>

#include "mma.cuh"

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "sinkd's CUDA kernels are built for sm_90a (kernels/cuda/CMakeLists.txt): wgmma needs it"
#endif

/* Descriptor of a 128-byte-swizzled operand at shared address @addr: @lbo
 * is the byte step between 64-element column blocks of an N-major operand
 * (unused for K-major), @sbo between groups of 8 rows. */
static __device__ __forceinline__ uint64_t wg_desc(uint32_t addr, uint32_t lbo, uint32_t sbo)
{
    return (uint64_t)((addr & 0x3ffffu) >> 4) | (uint64_t)((lbo & 0x3ffffu) >> 4) << 16 |
           (uint64_t)((sbo & 0x3ffffu) >> 4) << 32 | 1ull << 62;
}

/* Registers written by ordinary instructions before a wgmma reads them. */
static __device__ __forceinline__ void wg_fence(void)
{
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

static __device__ __forceinline__ void wg_commit(void)
{
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

/* Wait until at most @N committed groups are pending. */
template <int N>
static __device__ __forceinline__ void wg_wait(void)
{
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

/* After wg_wait: the accumulators' values come from the wait, not from the
 * asm that issued the product, so no read of them may move above it. */
template <int NT>
static __device__ __forceinline__ void wg_hold(float (&d)[NT][4])
{
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int c = 0; c < 4; c++)
            asm volatile("" : "+f"(d[j][c])::"memory");
}

/* Shared memory that cp.async or ordinary stores wrote, about to be read by
 * wgmma (the async proxy): each writing thread fences before the barrier. */
static __device__ __forceinline__ void wg_proxy_fence(void)
{
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

/* D[64 x N] += A[64 x 16] (registers) * B[16 x N] (descriptor @b), N = 64
 * or 128; D taken as zero when @acc is 0; B N-major (transposed) when TB.
 * One asm text for both types: the type is pasted into it. Operands: N/2
 * accumulators (row j of d is four), then a[0..3], b, acc, TB. */
#define WG_ACC4(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define WG_ACC32 WG_ACC4(0), WG_ACC4(1), WG_ACC4(2), WG_ACC4(3), WG_ACC4(4), WG_ACC4(5), WG_ACC4(6), WG_ACC4(7)
#define WG_ACC64                                                                                   \
    WG_ACC32, WG_ACC4(8), WG_ACC4(9), WG_ACC4(10), WG_ACC4(11), WG_ACC4(12), WG_ACC4(13),          \
        WG_ACC4(14), WG_ACC4(15)
#define WG_R0_31                                                                                   \
    "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"                                       \
    "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
#define WG_R32_63                                                                                  \
    "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"                             \
    "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63"
#define WG_IN "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(acc), "n"(TB)
#define WG_RS64(ty)                                                                                \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                      \
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32." ty "." ty " {" WG_R0_31 "}, "       \
                 "{%32,%33,%34,%35}, %36, p, 1, 1, %38;\n}\n"                                       \
                 : WG_ACC32                                                                        \
                 : WG_IN)
#define WG_RS128(ty)                                                                               \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                      \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32." ty "." ty " {" WG_R0_31           \
                 "," WG_R32_63 "}, {%64,%65,%66,%67}, %68, p, 1, 1, %70;\n}\n"                      \
                 : WG_ACC64                                                                        \
                 : WG_IN)

template <typename T>
struct wg_op {
    static_assert(std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half>::value,
                  "wgmma operands here are bf16 or f16");
    template <int TB>
    static __device__ __forceinline__ void rs64(float (&d)[8][4], const uint32_t (&a)[4], uint64_t b, int acc)
    {
        if constexpr (std::is_same<T, __nv_bfloat16>::value)
            WG_RS64("bf16");
        else
            WG_RS64("f16");
    }
    template <int TB>
    static __device__ __forceinline__ void rs128(float (&d)[16][4], const uint32_t (&a)[4], uint64_t b, int acc)
    {
        if constexpr (std::is_same<T, __nv_bfloat16>::value)
            WG_RS128("bf16");
        else
            WG_RS128("f16");
    }
};

#undef WG_RS64
#undef WG_RS128
#undef WG_IN
#undef WG_R32_63
#undef WG_R0_31
#undef WG_ACC64
#undef WG_ACC32
#undef WG_ACC4

#endif /* SINKD_CUDA_WGMMA_CUH */
