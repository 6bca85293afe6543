/*
 * Prefill v5: the dense pass of v3/v4 (prefill.cu's gather has written each
 * kv head's keys, rotated and rounded, and its values into a contiguous
 * scratch) on Hopper's warpgroup products instead of mma.sync.
 *
 * Why: v3/v4 feed the tensor cores through ldmatrix, every warp reading
 * every K and V fragment of a tile from shared memory itself, and reach
 * 240-340 TFLOP/s; wgmma reads each tile once per warpgroup, straight from
 * shared memory, at the tensor cores' full rate.
 *
 * A warpgroup owns 64 rows (R = i*G + g as everywhere in the prefill), its
 * Q fragments in registers (pf_load_q, A of S = Q K^T); 64-key K and V
 * tiles land in a STAGES-deep cp.async ring in the 128-byte-swizzled
 * layout of wgmma.cuh, one barrier a tile as in v3. Per tile: S (D/16
 * products m64n64k16, K as K-major B), the causal mask where a row's limit
 * crosses the tile, the online softmax, then O += P V (4 products
 * m64nDk16, V as N-major B, P straight from S's registers). A block is NWG
 * warpgroups sharing each tile; softmax and products overlap across the
 * blocks and warpgroups of an SM, not inside one warpgroup.
 */
#include "prefill.cuh"
#include "wgmma.cuh"

#define PF5_BN 64

template <typename T, int D, int NWG, int STAGES>
struct pf5_shape {
    static constexpr int HALF = PF5_BN * 128; /* 64 columns of a tile, 128-byte rows */
    static constexpr int KV = D / 64 * HALF;  /* a K or V tile */
    static constexpr int STAGE = 2 * KV;
    static constexpr int BM = NWG * 64;
    static constexpr int SMEM = STAGES * STAGE + 1024; /* + slack to align the ring to 1024 */
};

template <typename T, int D, int NWG, int STAGES, int MINB>
__global__ void __launch_bounds__(NWG * 128, MINB)
prefill_wgmma_kernel(pf_params P)
{
    using SH = pf5_shape<T, D, NWG, STAGES>;
    constexpr int NT = NWG * 128, CPR = D / 8, RSTEP = NT / CPR, PER = PF5_BN / RSTEP;
    static_assert(RSTEP % 8 == 0 && PF5_BN % RSTEP == 0, "a thread's rows share one swizzle");
    static_assert(STAGES >= 2, "the ring needs a stage in flight");
    extern __shared__ unsigned char pf5_raw[];
    /* the swizzle repeats every 1024 bytes of shared address: the ring
     * starts on such a boundary, so descriptors need no base offset */
    unsigned char *ring = pf5_raw + ((1024u - (smem_u32(pf5_raw) & 1023u)) & 1023u);

    const pf_block<T, D> B(P, SH::BM, PF5_BN);

    /* Tile kt into its stage, rows past kend zero filled (V's must not be
     * garbage: P is 0 there, and 0 * NaN is not); always commits. A thread
     * copies chunk ch of rows j0 + i * RSTEP, all with the swizzle of j0
     * (RSTEP is a multiple of 8). Every issued row lies within the lane's
     * kv_stride rows (a multiple of the tile), so the source is valid. */
    const int j0 = threadIdx.x / CPR, ch = threadIdx.x % CPR;
    const T *kt0 = B.kg + (size_t)j0 * D + ch * 8, *vt0 = B.vg + (size_t)j0 * D + ch * 8;
    const int so0 = ch / 8 * SH::HALF + j0 * 128 + ((ch % 8) ^ (j0 % 8)) * 16;
    auto issue = [&](int kt) {
        if (kt < B.ntiles) {
            unsigned char *st = ring + (kt % STAGES) * SH::STAGE + so0;
            const size_t adv = (size_t)kt * PF5_BN * D;
#pragma unroll
            for (int i = 0; i < PER; i++) {
                const int nb = kt * PF5_BN + j0 + i * RSTEP < B.kend ? 16 : 0;
                cp_async16(st + i * RSTEP * 128, kt0 + adv + (size_t)i * RSTEP * D, nb);
                cp_async16(st + SH::KV + i * RSTEP * 128, vt0 + adv + (size_t)i * RSTEP * D, nb);
            }
        }
        cp_async_commit();
    };
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++)
        issue(s);

    const int warp = threadIdx.x / 32;
    const pf_warp W = pf_warp_at<0>(B.r0 + warp * 16, B.rows, B.past, P.group);
    __shared__ double inv[D / 2];
    for (int i = threadIdx.x; i < D / 2; i += NT)
        inv[i] = rope_inv_exact(P.rope.theta, P.rope.scale, i, D);
    __syncthreads();
    uint32_t qa[D / 16][4];
    pf_load_q<T, D>(P, W, B.rows, B.past, B.kvh, inv, qa);
    const uint32_t qz = (uint32_t)P.n >> 31; /* 0: n >= 1 here */
    float o[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; j++)
        o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};

    for (int kt = 0; kt < B.ntiles; kt++) {
        cp_async_wait<STAGES - 2>();
        wg_proxy_fence();
        __syncthreads(); /* tile kt landed for all; tile kt - 1's stage is free */
        issue(kt + STAGES - 1);
        const int k0 = kt * PF5_BN;
        const uint32_t st = smem_u32(ring + (kt % STAGES) * SH::STAGE);

        float s[PF5_BN / 8][4];
#pragma unroll
        for (int j = 0; j < PF5_BN / 8; j++)
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
            wg_op<T>::template rs64<0>(s, qa[kk], wg_desc(st + kk / 4 * SH::HALF + kk % 4 * 32, 16, 1024), 1);
        wg_commit();
        wg_wait<0>();
        wg_hold(s);

        if (k0 + PF5_BN - 1 > W.wlim_lo || k0 + PF5_BN > B.kend)
            pf_mask(s, k0, W.t4, W.lim_a, W.lim_b, B.kend);
        online_softmax(s, o, mrow, lrow);
        uint32_t pa[PF5_BN / 16][4];
#pragma unroll
        for (int kk = 0; kk < PF5_BN / 16; kk++)
            pf_p_frag<T>(s, kk, pa[kk]);

        wg_fence();
#pragma unroll
        for (int kk = 0; kk < PF5_BN / 16; kk++) {
            const uint64_t vd = wg_desc(st + SH::KV + kk * 16 * 128, SH::HALF, 1024);
            if constexpr (D == 128)
                wg_op<T>::template rs128<1>(o, pa[kk], vd, 1);
            else
                wg_op<T>::template rs64<1>(o, pa[kk], vd, 1);
        }
        wg_commit();
        wg_wait<0>();
        wg_hold(o);
        /* ptxas (CUDA 13.0) gave P's fragments the registers of Q's, which
         * it took for dead after the first tile's S although every tile
         * reads them (head_dim 64: wrong from the second tile on). Each
         * tile now redefines Q's fragments through a zero it cannot see,
         * so they stay live across the loop: one xor a register a tile. */
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
#pragma unroll
            for (int c = 0; c < 4; c++)
                qa[kk][c] ^= qz;
    }
    cp_async_wait<0>();
    pf_store<D>(P, W.Ra, W.t4, D, o, mrow, lrow, B.rows, B.kvh);
}

template <typename T, int D, int NWG, int STAGES, int MINB>
static int pf5_launch(sinkd_cuda *c, const pf_params &P)
{
    using SH = pf5_shape<T, D, NWG, STAGES>;
    /* the shared-memory opt-in belongs to the function: set once */
    static const cudaError_t attr = cudaFuncSetAttribute(prefill_wgmma_kernel<T, D, NWG, STAGES, MINB>,
                                                         cudaFuncAttributeMaxDynamicSharedMemorySize, SH::SMEM);
    SINKD_CUDA_TRY(attr);
    dim3 grid((P.n * P.group + SH::BM - 1) / SH::BM, P.n_kv);
    prefill_wgmma_kernel<T, D, NWG, STAGES, MINB><<<grid, NWG * 128, SH::SMEM, c->stream>>>(P);
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}

template <typename T, int D>
int prefill_wgmma_launch(sinkd_cuda *c, const pf_params &P, int ver)
{
    if (ver == PF_V5X3)
        return pf5_launch<T, D, 1, 2, 3>(c, P);
    if (ver == PF_V5W8)
        return pf5_launch<T, D, 2, 3, 1>(c, P);
    return pf5_launch<T, D, 1, 3, 2>(c, P);
}

template int prefill_wgmma_launch<__half, 64>(sinkd_cuda *, const pf_params &, int);
template int prefill_wgmma_launch<__half, 128>(sinkd_cuda *, const pf_params &, int);
template int prefill_wgmma_launch<__nv_bfloat16, 64>(sinkd_cuda *, const pf_params &, int);
template int prefill_wgmma_launch<__nv_bfloat16, 128>(sinkd_cuda *, const pf_params &, int);
