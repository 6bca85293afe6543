/*
 * Prefill attention of a chunk of n new tokens, causal, over paged lanes,
 * RoPE applied to keys at read time; then the observation-window scores.
 *
 * Rows are (query i, head g of the group) pairs, R = i*G + g, so one block
 * reads and rotates each K/V tile once for all G heads of its kv head.
 * Query i (lane index len - n + i) attends keys 0 .. len - n + i.
 *
 * Shapes: q, out [n][n_q][D] f32; K/V rows of D (F16/BF16) in pages.
 * FLOPs 4*n*G*D*(len - n + (n+1)/2) per kv head (causal); bytes ~ n*n_q*D*8
 * plus K/V reads of about (n*G/64) * len/2 tiles, mostly from L2.
 *
 * v5 (the default, head_dim 64/128, prefill_wgmma.cu): v3's gather, then
 * the dense pass on Hopper's warpgroup products (wgmma).
 *
 * v3 (head_dim 64/128): prefill_gather_kernel writes each kv
 * head's keys, rotated and rounded, and values into a contiguous scratch;
 * prefill_dense_kernel is then FlashAttention-2 over it (cp.async ring of
 * 64-key tiles, one barrier a tile, no rotation in the loop, Q straight to
 * registers). Inside a graph recording, or when the scratch cannot be had,
 * v2 runs instead.
 *
 * v4 (head_dim 64/128): the same two launches, but each warp of the dense
 * kernel takes two 16-row tiles (32 rows) and uses every K and V fragment
 * it loads with ldmatrix for both: 256 mma a warp and 64-key tile against
 * 64 ldmatrix.x4 and 16 Q fragment loads (v3: 128 against 64), and half
 * v3's K/V tile reads from L2 per FLOP. Q then lives in shared memory (its
 * registers hold the second row tile's accumulators).
 *
 * v2 (prefill_mma_kernel, head_dim 64/128): 8 warps x 16 rows, cp.async
 * double-buffered K/V tiles rotated in place, ldmatrix; described below.
 * Other head dims run v1.
 *
 * v1: FlashAttention-2 shape with mma.sync m16n8k16 (bf16 or f16 operands,
 * f32 accumulation). 4 warps x 16 rows, key tiles of 64, Q/K/V^T staged in
 * shared memory (K rotated in f32 before rounding), online softmax in the
 * log2 domain in registers, P reused from the S accumulators as the A
 * operand. No cp.async pipelining yet.
 *
 * Observation window (obs_w > 0): p_t = sum over the last W queries and the
 * group of exp2(s - lse), with lse saved by the main kernel; one warp a key.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"
#include "prefill.cuh"

#define PF_WARPS 4
#define PF_BM (PF_WARPS * 16)
#define PF_BN 64
#define PF_LOG2E 1.4426950408889634f

static __device__ __forceinline__ uint32_t ld32(const void *p)
{
    return *reinterpret_cast<const uint32_t *>(p);
}

template <typename T, int DP>
__global__ void __launch_bounds__(PF_WARPS * 32)
prefill_kernel(pf_params P)
{
    constexpr int SQ = DP + 8;     /* row strides in elements: 4-bank skew */
    constexpr int SV = PF_BN + 8;
    extern __shared__ __align__(16) unsigned char pf_smem[];
    T *sQ = reinterpret_cast<T *>(pf_smem);
    T *sK = sQ + PF_BM * SQ;
    T *sVt = sK + PF_BN * SQ;

    const int tile = gridDim.x - 1 - blockIdx.x; /* longest rows first */
    const int kvh = blockIdx.y;
    const int G = P.group, d = P.d, n = P.n, pt = P.pool.page_tokens;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t4 = lane % 4;
    const bool neox = P.rope.style == SINKD_ROPE_NEOX;
    const bool cache = P.rope.mode == SINKD_ROPE_CACHE;
    const int len = P.ln.len[kvh];
    const int past = len - n;
    const int rows = n * G;
    const int r0 = tile * PF_BM;
    const int have = P.ln.page_off[kvh + 1] - P.ln.page_off[kvh];
    const int32_t *pids = P.ln.page_ids + P.ln.page_off[kvh];
    const int nu = d / 8; /* 8-element chunks per row */

    /* Q tile: rotate at the query position, scale, round to T. */
    for (int it = threadIdx.x; it < PF_BM * (DP / 8); it += blockDim.x) {
        int r = it / (DP / 8), u = it % (DP / 8);
        int R = r0 + r;
        float x[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (R < rows && u < nu && past >= 0) {
            int i = R / G, qh = kvh * G + R % G;
            const float *qr = P.q + ((size_t)i * P.n_q + qh) * d;
            int qp = cache ? past + i : P.q_pos[i];
#pragma unroll
            for (int e = 0; e < 8; e++)
                x[e] = qr[row_elem(u, e, d, neox)];
#pragma unroll
            for (int m = 0; m < 4; m++) {
                float s, c;
                rope_sincos_exact(qp, P.rope.theta, P.rope.scale, 4 * u + m, d, &s, &c);
                float x0 = x[2 * m], x1 = x[2 * m + 1];
                x[2 * m] = (x0 * c - x1 * s) * P.qscale;
                x[2 * m + 1] = (x0 * s + x1 * c) * P.qscale;
            }
        }
#pragma unroll
        for (int e = 0; e < 8; e++) {
            int col = u < nu ? row_elem(u, e, d, neox) : 8 * u + e;
            sQ[r * SQ + col] = kv_traits<T>::from_f(x[e]);
        }
    }

    /* Keys this tile needs: up to the last query's causal limit. */
    int last_i = min(n - 1, (r0 + PF_BM - 1) / G);
    int kend = past < 0 ? 0 : min(len, past + last_i + 1);

    float o[DP / 8][4];
#pragma unroll
    for (int j = 0; j < DP / 8; j++)
        o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
    const int Ra = r0 + warp * 16 + g, Rb = Ra + 8;
    const int lim_a = Ra < rows ? past + Ra / G : -1; /* last key of the row */
    const int lim_b = Rb < rows ? past + Rb / G : -1;

    for (int k0 = 0; k0 < kend; k0 += PF_BN) {
        __syncthreads(); /* previous tile fully consumed */
        for (int it = threadIdx.x; it < PF_BN * (DP / 8); it += blockDim.x) {
            int j = it / (DP / 8), u = it % (DP / 8);
            int tok = k0 + j;
            float kx[8] = {0, 0, 0, 0, 0, 0, 0, 0}, vx[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            int lp = tok / pt;
            int pg = tok < kend && lp < have ? pids[lp] : -1;
            if (u < nu && pg >= 0 && pg < P.pool.n_pages) {
                int64_t slot = (int64_t)pg * pt + tok % pt;
                const T *kr = (const T *)((const char *)P.pool.pages + (size_t)pg * P.pool.page_bytes) +
                              (size_t)(tok % pt) * d;
                load_row(kr, u, d, neox, kx);
                load_row(kr + (size_t)pt * d, u, d, neox, vx);
                float inv[4];
                rope_chunk_inv(P.rope.theta, P.rope.scale, u, d, inv);
                rope_rotate_chunk(kx, cache ? tok : P.pool.pos[slot], inv);
            }
#pragma unroll
            for (int e = 0; e < 8; e++) {
                int col = u < nu ? row_elem(u, e, d, neox) : 8 * u + e;
                sK[j * SQ + col] = kv_traits<T>::from_f(kx[e]);
                sVt[col * SV + j] = kv_traits<T>::from_f(vx[e]);
            }
        }
        __syncthreads();

        /* S = Q K^T for this warp's 16 rows x 64 keys. */
        float s[PF_BN / 8][4];
#pragma unroll
        for (int j = 0; j < PF_BN / 8; j++)
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
        const T *qw = sQ + warp * 16 * SQ;
#pragma unroll
        for (int kk = 0; kk < DP; kk += 16) {
            uint32_t a[4];
            a[0] = ld32(qw + g * SQ + kk + 2 * t4);
            a[1] = ld32(qw + (g + 8) * SQ + kk + 2 * t4);
            a[2] = ld32(qw + g * SQ + kk + 2 * t4 + 8);
            a[3] = ld32(qw + (g + 8) * SQ + kk + 2 * t4 + 8);
#pragma unroll
            for (int j = 0; j < PF_BN / 8; j++) {
                const T *kr = sK + (j * 8 + g) * SQ + kk + 2 * t4;
                mma_op<T>::run(s[j], a, ld32(kr), ld32(kr + 8));
            }
        }

        /* Causal mask and online softmax (rows a = g, b = g + 8). */
        pf_mask(s, k0, t4, lim_a, lim_b, kend);
        online_softmax(s, o, mrow, lrow);

        /* O += P V: P's accumulators are the A operand, two n-tiles a step. */
#pragma unroll
        for (int kk = 0; kk < PF_BN / 16; kk++) {
            uint32_t a[4];
            pf_p_frag<T>(s, kk, a);
#pragma unroll
            for (int j = 0; j < DP / 8; j++) {
                const T *vr = sVt + (j * 8 + g) * SV + kk * 16 + 2 * t4;
                mma_op<T>::run(o[j], a, ld32(vr), ld32(vr + 8));
            }
        }
    }

    pf_store<DP>(P, Ra, t4, d, o, mrow, lrow, rows, kvh);
}

/* ---- v2: rotated keys in a workspace, cp.async tiles, 8 warps ----------- */

/*
 * FlashAttention-2 over the pages: 8 warps x 16 rows = 128-row tiles; 64-key
 * K/V tiles (and the keys' stored positions) double-buffered with cp.async
 * straight from their pages, rows past the needed keys or on missing pages
 * zero filled (v1 reads those as zero keys too). Once a tile has landed the
 * block rotates its K in place, each element once (16-byte shared loads
 * and stores), then every operand is read with ldmatrix; Q fragments stay
 * in registers for the whole loop. Causal masking only on tiles that cross
 * a row's limit; warps whose rows all end before a tile skip it.
 */
#define PF2_WARPS 8
#define PF2_BM (PF2_WARPS * 16)
#define PF2_BN 64

/* One 64-key tile of a warp's MT row tiles of 16 (v2, v3, v4), K and V
 * from shared memory with ldmatrix (rows of RS elements), each K or V
 * fragment loaded once and used by all MT row tiles; qf(m, kk, a) gives
 * row tile m's Q fragment kk. S = Q K^T, the causal mask where the tile
 * crosses one of a row tile's limits or the key range's end @kend, the
 * online softmax, then O += P V. */
template <typename T, int D, int RS, int MT, typename QF>
static __device__ __forceinline__ void pf_tile(const QF &qf, const T *sK, const T *sV,
                                               const pf_warp (&W)[MT], int k0, int kend,
                                               float (&o)[MT][D / 8][4], float (&mrow)[2 * MT],
                                               float (&lrow)[2 * MT])
{
    float s[MT][PF2_BN / 8][4];
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int j = 0; j < PF2_BN / 8; j++)
            s[m][j][0] = s[m][j][1] = s[m][j][2] = s[m][j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        uint32_t qa[MT][4];
#pragma unroll
        for (int m = 0; m < MT; m++)
            qf(m, kk, qa[m]);
#pragma unroll
        for (int np = 0; np < PF2_BN / 16; np++) {
            uint32_t kb[4];
            ldsm_x4(kb, sK + W[0].k_off + np * 16 * RS + kk * 16);
#pragma unroll
            for (int m = 0; m < MT; m++) {
                mma_op<T>::run(s[m][2 * np], qa[m], kb[0], kb[1]);
                mma_op<T>::run(s[m][2 * np + 1], qa[m], kb[2], kb[3]);
            }
        }
    }
#pragma unroll
    for (int m = 0; m < MT; m++) {
        if (k0 + PF2_BN - 1 > W[m].wlim_lo || k0 + PF2_BN > kend)
            pf_mask(s[m], k0, W[m].t4, W[m].lim_a, W[m].lim_b, kend);
        online_softmax(s[m], o[m], mrow + 2 * m, lrow + 2 * m);
    }
    /* P rounded to T before the first P V step: half the registers of S. */
    uint32_t a[MT][PF2_BN / 16][4];
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int kk = 0; kk < PF2_BN / 16; kk++)
            pf_p_frag<T>(s[m], kk, a[m][kk]);
#pragma unroll
    for (int kk = 0; kk < PF2_BN / 16; kk++) {
#pragma unroll
        for (int j2 = 0; j2 < D / 16; j2++) {
            uint32_t vb[4];
            ldsm_x4_t(vb, sV + W[0].v_off + kk * 16 * RS + j2 * 16);
#pragma unroll
            for (int m = 0; m < MT; m++) {
                mma_op<T>::run(o[m][2 * j2], a[m][kk], vb[0], vb[1]);
                mma_op<T>::run(o[m][2 * j2 + 1], a[m][kk], vb[2], vb[3]);
            }
        }
    }
}

/* Q fragments kept in registers (v2, v3: one row tile a warp). */
template <int D>
struct pf_q_regs {
    const uint32_t (&qa)[D / 16][4];
    __device__ __forceinline__ void operator()(int, int kk, uint32_t (&a)[4]) const
    {
        a[0] = qa[kk][0];
        a[1] = qa[kk][1];
        a[2] = qa[kk][2];
        a[3] = qa[kk][3];
    }
};

template <typename T, int D>
struct pf2_shape {
    static constexpr int RS = D + 8; /* row stride in elements: ldmatrix rows hit distinct banks */
    static constexpr int Q = PF2_BM * RS * (int)sizeof(T);
    static constexpr int KV = PF2_BN * RS * (int)sizeof(T);
    static constexpr int STAGE = 2 * KV + PF2_BN * 4; /* K, V, positions */
    static constexpr int SMEM = Q + 2 * STAGE;
};

template <typename T, int D>
__global__ void __launch_bounds__(PF2_WARPS * 32, 1)
prefill_mma_kernel(pf_params P)
{
    using SH = pf2_shape<T, D>;
    constexpr int RS = SH::RS;
    extern __shared__ __align__(16) unsigned char pf2_smem[];
    T *sQ = reinterpret_cast<T *>(pf2_smem);
    unsigned char *ring = pf2_smem + SH::Q;

    const int tile = gridDim.x - 1 - blockIdx.x; /* longest rows first */
    const int kvh = blockIdx.y;
    const int G = P.group, n = P.n, pt = P.pool.page_tokens;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const bool neox = P.rope.style == SINKD_ROPE_NEOX;
    const bool cache = P.rope.mode == SINKD_ROPE_CACHE;
    const int len = P.ln.len[kvh];
    const int past = len - n;
    const int rows = n * G;
    const int r0 = tile * PF2_BM;
    const int have = P.ln.page_off[kvh + 1] - P.ln.page_off[kvh];
    const int32_t *pids = P.ln.page_ids + P.ln.page_off[kvh];

    /* Keys this tile needs: up to the last query's causal limit. */
    const int last_i = min(n - 1, (r0 + PF2_BM - 1) / G);
    const int kend = past < 0 ? 0 : min(len, past + last_i + 1);
    const int ntiles = (kend + PF2_BN - 1) / PF2_BN;

    auto issue = [&](int kt) {
        unsigned char *sk = ring + (kt % 2) * SH::STAGE;
        int k0 = kt * PF2_BN;
#pragma unroll
        for (int i = 0; i < PF2_BN * D / 8 / (PF2_WARPS * 32); i++) {
            int c = threadIdx.x + i * PF2_WARPS * 32, j = c / (D / 8), ch = c % (D / 8);
            int tok = k0 + j, lp = tok / pt;
            int pg = tok < kend && lp < have ? pids[lp] : -1;
            bool ok = pg >= 0 && pg < P.pool.n_pages;
            const T *kp = (const T *)((const char *)P.pool.pages + (size_t)(ok ? pg : 0) * P.pool.page_bytes) +
                          (size_t)(tok % pt) * D + ch * 8;
            cp_async16(sk + (j * RS + ch * 8) * sizeof(T), kp, ok ? 16 : 0);
            cp_async16(sk + SH::KV + (j * RS + ch * 8) * sizeof(T), kp + (size_t)pt * D, ok ? 16 : 0);
            if (!cache && ch == 0)
                cp_async4(sk + 2 * SH::KV + j * 4, P.pool.pos + (int64_t)(ok ? pg : 0) * pt + tok % pt,
                          ok ? 4 : 0);
        }
        cp_async_commit();
    };
    if (ntiles > 0)
        issue(0);

    /* Q tile: rotate at the query position, scale, round to T. */
    for (int it = threadIdx.x; it < PF2_BM * D / 2; it += blockDim.x) {
        int r = it / (D / 2), i = it % (D / 2);
        int e0 = neox ? i : 2 * i, e1 = neox ? i + D / 2 : 2 * i + 1;
        int R = r0 + r;
        float y0 = 0.0f, y1 = 0.0f;
        if (R < rows && past >= 0) {
            int qi = R / G, qh = kvh * G + R % G;
            const float *qr = P.q + ((size_t)qi * P.n_q + qh) * D;
            int qp = cache ? past + qi : P.q_pos[qi];
            float s, c;
            rope_sincos_exact(qp, P.rope.theta, P.rope.scale, i, D, &s, &c);
            y0 = (qr[e0] * c - qr[e1] * s) * P.qscale;
            y1 = (qr[e0] * s + qr[e1] * c) * P.qscale;
        }
        sQ[r * RS + e0] = kv_traits<T>::from_f(y0);
        sQ[r * RS + e1] = kv_traits<T>::from_f(y1);
    }
    __syncthreads();
    uint32_t qa[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        ldsm_x4(qa[kk], sQ + (warp * 16 + (lane / 8) % 2 * 8 + lane % 8) * RS + kk * 16 + (lane / 16) * 8);

    float o[1][D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; j++)
        o[0][j][0] = o[0][j][1] = o[0][j][2] = o[0][j][3] = 0.0f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
    const pf_warp W[1] = {pf_warp_at<RS>(r0 + warp * 16, rows, past, G)};
    /* The rotation pass gives each thread the same chunk of every row it
     * touches (the block's thread count is a multiple of D/8). */
    const int ru = threadIdx.x % (D / 8);
    float rinv[4];
    rope_chunk_inv(P.rope.theta, P.rope.scale, ru, D, rinv);

    for (int kt = 0; kt < ntiles; kt++) {
        if (kt + 1 < ntiles)
            issue(kt + 1);
        else
            cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const int k0 = kt * PF2_BN;
        unsigned char *stg = ring + (kt % 2) * SH::STAGE;
        /* Rotate the tile's keys in place: chunk ru of a row holds 4 pairs. */
#pragma unroll
        for (int i = 0; i < PF2_BN * D / 8 / (PF2_WARPS * 32); i++) {
            int j = (threadIdx.x + i * PF2_WARPS * 32) / (D / 8);
            T *row = reinterpret_cast<T *>(stg) + j * RS;
            int kp = cache ? k0 + j : reinterpret_cast<const int *>(stg + 2 * SH::KV)[j];
            float x[8];
            load_row(row, ru, D, neox, x);
            rope_rotate_chunk(x, kp, rinv);
            store_row(row, ru, D, neox, x);
        }
        __syncthreads();
        if (k0 <= W[0].wlim_hi)
            pf_tile<T, D, RS, 1>(pf_q_regs<D>{qa}, reinterpret_cast<const T *>(stg),
                                 reinterpret_cast<const T *>(stg + SH::KV), W, k0, kend, o, mrow, lrow);
        __syncthreads(); /* this stage is refilled by the next issue */
    }
    cp_async_wait<0>();
    pf_store<D>(P, W[0].Ra, W[0].t4, D, o[0], mrow, lrow, rows, kvh);
}

/* ---- v3: keys rotated once into a contiguous scratch, then dense tiles -- */

/*
 * Two launches. prefill_gather_kernel writes each lane's keys 0..len-1,
 * rotated at their effective position and rounded to the pool dtype (what
 * v2 does to a tile in shared memory, done once per key instead of once
 * per key and row tile), and its values, to the scratch [lane][kv_stride][D]
 * (keys on missing pages are zero, as v1/v2 read them).
 *
 * prefill_dense_kernel is then FlashAttention-2 over that scratch: NW warps
 * x MT row tiles of 16, 64-key K/V tiles in a STAGES-deep cp.async ring
 * with one barrier a tile (it both publishes the landed tile and frees the
 * stage the next copy refills), Q fragments loaded, rotated and rounded
 * straight from global memory into registers (MT 1, v3) or into shared
 * memory in thread order (MT 2, v4), the tile step and epilogue of v2.
 */
#define PF3_THREADS 256

template <typename T>
__global__ void __launch_bounds__(PF3_THREADS)
prefill_gather_kernel(pf_params P)
{
    const int kvh = blockIdx.y, d = P.d, nu = d / 8, pt = P.pool.page_tokens;
    const int per = PF3_THREADS / nu; /* rows a block */
    const int tok = blockIdx.x * per + threadIdx.x / nu, u = threadIdx.x % nu;
    const int len = P.ln.len[kvh];
    /* the inverse frequencies once a block (16 rows at d 128), not a powf
     * per pair and row: the gather was bound by them */
    __shared__ float sinv[64];
    if (threadIdx.x < d / 2)
        sinv[threadIdx.x] = rope_inv_freq(P.rope.theta, P.rope.scale, threadIdx.x, d);
    __syncthreads();
    if (threadIdx.x >= per * nu || tok >= len || tok >= P.kv_stride)
        return;
    const bool neox = P.rope.style == SINKD_ROPE_NEOX;
    const int have = P.ln.page_off[kvh + 1] - P.ln.page_off[kvh];
    const int lp = tok / pt;
    const int pg = lp < have ? P.ln.page_ids[P.ln.page_off[kvh] + lp] : -1;
    const size_t row = ((size_t)kvh * P.kv_stride + tok) * d;
    float kx[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    uint4 vx = make_uint4(0, 0, 0, 0);
    if (pg >= 0 && pg < P.pool.n_pages) {
        const T *kr = (const T *)((const char *)P.pool.pages + (size_t)pg * P.pool.page_bytes) +
                      (size_t)(tok % pt) * d;
        load_row(kr, u, d, neox, kx);
        vx = *reinterpret_cast<const uint4 *>(kr + (size_t)pt * d + 8 * u);
        const int kp = P.rope.mode == SINKD_ROPE_CACHE ? tok : P.pool.pos[(int64_t)pg * pt + tok % pt];
        rope_rotate_chunk(kx, kp, sinv + 4 * u);
    }
    store_row((T *)P.kr + row, u, d, neox, kx);
    *reinterpret_cast<uint4 *>((T *)P.vr + row + 8 * u) = vx;
}

template <typename T, int D, int NW, int MT, int STAGES>
struct pf3_shape {
    static constexpr int RS = D + 8; /* as v2: ldmatrix rows hit distinct banks */
    static constexpr int BM = NW * MT * 16;
    static constexpr int KV = PF2_BN * RS * (int)sizeof(T);
    static constexpr int STAGE = 2 * KV;
    static constexpr int QF = MT > 1 ? BM * D * (int)sizeof(T) : 0; /* v4's Q fragments */
    static constexpr int SMEM = STAGES * STAGE + QF;
};

/* Q fragments in shared memory (v4: MT row tiles a warp would not fit in
 * registers beside their accumulators), in thread order: fragment kk of
 * row tile m at q[(m * D/16 + kk) * 32], the thread's own slot, so a read
 * (16 bytes a lane, conflict free) needs no barrier after the write. */
template <int D>
struct pf_q_smem {
    const uint4 *q;
    __device__ __forceinline__ void operator()(int m, int kk, uint32_t (&a)[4]) const
    {
        /* volatile, as the mma and ldmatrix around it: not hoisted into
         * registers the accumulators need */
        asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                     : "r"(smem_u32(q + (m * (D / 16) + kk) * 32)));
    }
};

template <typename T, int D, int NW, int MT, int STAGES, int MINB>
__global__ void __launch_bounds__(NW * 32, MINB)
prefill_dense_kernel(pf_params P)
{
    using SH = pf3_shape<T, D, NW, MT, STAGES>;
    constexpr int RS = SH::RS, NT = NW * 32, CH = PF2_BN * D / 8; /* 16-byte chunks a tile */
    static_assert(CH % NT == 0, "a tile's chunks split evenly over the block");
    static_assert(STAGES >= 2, "the ring needs a stage in flight");
    extern __shared__ __align__(16) unsigned char pf3_smem[];

    const pf_block<T, D> B(P, SH::BM, PF2_BN);

    /* Tile kt into its stage (rows past kend zero filled); always commits,
     * so group kt is tile kt's whether or not it exists. A thread copies
     * chunk ch of rows j0 + i * RSTEP; every row of an issued tile lies
     * within the lane's kv_stride rows (a multiple of the tile), so the
     * source address is valid even where nothing is read. The addresses
     * are a per-thread base plus constants: no per-chunk registers. */
    constexpr int RSTEP = NT / (D / 8);
    const int j0 = threadIdx.x / (D / 8), ch = threadIdx.x % (D / 8);
    const T *kt0 = B.kg + (size_t)j0 * D + ch * 8, *vt0 = B.vg + (size_t)j0 * D + ch * 8;
    const int so0 = (j0 * RS + ch * 8) * (int)sizeof(T);
    auto issue = [&](int kt) {
        if (kt < B.ntiles) {
            unsigned char *st = pf3_smem + (kt % STAGES) * SH::STAGE + so0;
            const size_t adv = (size_t)kt * PF2_BN * D;
#pragma unroll
            for (int i = 0; i < CH / NT; i++) {
                const int nb = kt * PF2_BN + j0 + i * RSTEP < B.kend ? 16 : 0;
                const int so = i * RSTEP * RS * (int)sizeof(T);
                cp_async16(st + so, kt0 + adv + i * RSTEP * D, nb);
                cp_async16(st + SH::KV + so, vt0 + adv + i * RSTEP * D, nb);
            }
        }
        cp_async_commit();
    };
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++)
        issue(s);

    /* Warp w holds rows r0 + 16 * (w * MT + m), m < MT: its row tiles
     * are neighbours, so they leave the causal loop together. */
    const int warp = threadIdx.x / 32;
    pf_warp W[MT];
    int whi = -1;
#pragma unroll
    for (int m = 0; m < MT; m++) {
        W[m] = pf_warp_at<RS>(B.r0 + (warp * MT + m) * 16, B.rows, B.past, P.group);
        whi = max(whi, W[m].wlim_hi);
    }
    /* the inverse frequencies once a block: a double pow per pair, not per
     * rotation (64 a thread at MT 2; ~10% of a 4K prefill) */
    __shared__ double inv[D / 2];
    for (int i = threadIdx.x; i < D / 2; i += NT)
        inv[i] = rope_inv_exact(P.rope.theta, P.rope.scale, i, D);
    __syncthreads();
    uint32_t qa[D / 16][4];
    uint4 *qs = reinterpret_cast<uint4 *>(pf3_smem + STAGES * SH::STAGE) + warp * MT * (D / 16) * 32 +
                threadIdx.x % 32;
#pragma unroll
    for (int m = 0; m < MT; m++) {
        pf_load_q<T, D>(P, W[m], B.rows, B.past, B.kvh, inv, qa);
        if (MT > 1)
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++)
                qs[(m * (D / 16) + kk) * 32] = make_uint4(qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3]);
    }
    float o[MT][D / 8][4];
    float mrow[2 * MT], lrow[2 * MT];
#pragma unroll
    for (int m = 0; m < MT; m++) {
#pragma unroll
        for (int j = 0; j < D / 8; j++)
            o[m][j][0] = o[m][j][1] = o[m][j][2] = o[m][j][3] = 0.0f;
        mrow[2 * m] = mrow[2 * m + 1] = -INFINITY;
        lrow[2 * m] = lrow[2 * m + 1] = 0.0f;
    }

    for (int kt = 0; kt < B.ntiles; kt++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads(); /* tile kt landed for all; tile kt - 1's stage is free */
        issue(kt + STAGES - 1);
        const int k0 = kt * PF2_BN;
        const unsigned char *stg = pf3_smem + (kt % STAGES) * SH::STAGE;
        if (k0 > whi)
            continue;
        const T *sK = reinterpret_cast<const T *>(stg), *sV = reinterpret_cast<const T *>(stg + SH::KV);
        if constexpr (MT == 1)
            pf_tile<T, D, RS, 1>(pf_q_regs<D>{qa}, sK, sV, W, k0, B.kend, o, mrow, lrow);
        else
            pf_tile<T, D, RS, MT>(pf_q_smem<D>{qs}, sK, sV, W, k0, B.kend, o, mrow, lrow);
    }
    cp_async_wait<0>();
#pragma unroll
    for (int m = 0; m < MT; m++)
        pf_store<D>(P, W[m].Ra, W[m].t4, D, o[m], mrow + 2 * m, lrow + 2 * m, B.rows, B.kvh);
}

/* ---- observation window scores ----------------------------------------- */

#define OBS_WARPS 8
#define OBS_ROWS 32

/* Grid (blocks, n_kv). A block stages OBS_ROWS window rows (query, head),
 * rotated and scaled, in shared memory; a warp walks keys, rotating each
 * key once per row chunk. p accumulates in @acc, indexed like the lane. */
template <typename T>
__global__ void __launch_bounds__(OBS_WARPS * 32)
obs_kernel(pf_params P, int W, int op, float decay, float *acc)
{
    __shared__ float sq[OBS_ROWS][256];
    __shared__ float sl[OBS_ROWS];
    __shared__ int slim[OBS_ROWS];
    __shared__ float sk[OBS_WARPS][256];
    const int kvh = blockIdx.y, G = P.group, d = P.d, n = P.n, pt = P.pool.page_tokens;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const bool neox = P.rope.style == SINKD_ROPE_NEOX;
    const bool cache = P.rope.mode == SINKD_ROPE_CACHE;
    const int len = P.ln.len[kvh], past = len - n, half = d / 2;
    const int have = P.ln.page_off[kvh + 1] - P.ln.page_off[kvh];
    const int32_t *pids = P.ln.page_ids + P.ln.page_off[kvh];
    const int nrows = W * G;
    float *lacc = acc + (size_t)P.ln.page_off[kvh] * pt;
    if (past < 0)
        return;

    for (int rc = 0; rc < nrows; rc += OBS_ROWS) {
        int nr = min(OBS_ROWS, nrows - rc);
        __syncthreads();
        for (int it = threadIdx.x; it < nr * half; it += blockDim.x) {
            int r = it / half, p = it % half;
            int w = (rc + r) / G, gg = (rc + r) % G;
            int i = n - W + w, qh = kvh * G + gg;
            const float *qr = P.q + ((size_t)i * P.n_q + qh) * d;
            int qp = cache ? past + i : P.q_pos[i];
            int ea = neox ? p : 2 * p, eb = neox ? p + half : 2 * p + 1;
            float s, c;
            rope_sincos_exact(qp, P.rope.theta, P.rope.scale, p, d, &s, &c);
            sq[r][ea] = (qr[ea] * c - qr[eb] * s) * P.qscale;
            sq[r][eb] = (qr[ea] * s + qr[eb] * c) * P.qscale;
            if (p == 0) {
                sl[r] = P.lse[(size_t)i * P.n_q + qh];
                slim[r] = past + i;
            }
        }
        __syncthreads();
        for (int tok = blockIdx.x * OBS_WARPS + warp; tok < len; tok += gridDim.x * OBS_WARPS) {
            int lp = tok / pt;
            int pg = lp < have ? pids[lp] : -1;
            if (pg < 0 || pg >= P.pool.n_pages)
                continue;
            int64_t slot = (int64_t)pg * pt + tok % pt;
            const T *kr = (const T *)((const char *)P.pool.pages + (size_t)pg * P.pool.page_bytes) +
                          (size_t)(tok % pt) * d;
            int kp = cache ? tok : P.pool.pos[slot];
            for (int p = lane; p < half; p += 32) {
                int ea = neox ? p : 2 * p, eb = neox ? p + half : 2 * p + 1;
                float s, c;
                rope_sincos_fast(kp, rope_inv_freq(P.rope.theta, P.rope.scale, p, d), &s, &c);
                float x0 = kv_traits<T>::to_f(kr[ea]), x1 = kv_traits<T>::to_f(kr[eb]);
                sk[warp][ea] = x0 * c - x1 * s;
                sk[warp][eb] = x0 * s + x1 * c;
            }
            __syncwarp();
            float psum = 0.0f;
            for (int r = 0; r < nr; r++) {
                float a = 0.0f;
                for (int e = lane; e < d; e += 32)
                    a = fmaf(sq[r][e], sk[warp][e], a);
                for (int o = 16; o > 0; o >>= 1)
                    a += __shfl_xor_sync(0xffffffffu, a, o);
                if (tok <= slim[r] && sl[r] != -INFINITY)
                    psum += exp2f(a - sl[r]);
            }
            __syncwarp();
            if (lane == 0) {
                float tot = (rc == 0 ? 0.0f : lacc[tok]) + psum;
                if (rc + nr < nrows) {
                    lacc[tok] = tot;
                } else {
                    float *sc = P.pool.score + slot;
                    if (op == SINKD_SCORE_WRITE)
                        *sc = tot;
                    else if (op == SINKD_SCORE_ADD)
                        *sc += tot;
                    else
                        *sc = decay * *sc + tot;
                }
            }
        }
    }
}

template <typename T, int DP>
static int prefill_launch(sinkd_cuda *c, const pf_params &P)
{
    size_t smem = ((size_t)PF_BM * (DP + 8) + (size_t)PF_BN * (DP + 8) +
                   (size_t)DP * (PF_BN + 8)) * sizeof(T);
    SINKD_CUDA_TRY(cudaFuncSetAttribute(prefill_kernel<T, DP>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid((P.n * P.group + PF_BM - 1) / PF_BM, P.n_kv);
    prefill_kernel<T, DP><<<grid, PF_WARPS * 32, smem, c->stream>>>(P);
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}

template <typename T, int D>
static int prefill_mma_launch(sinkd_cuda *c, const pf_params &P)
{
    constexpr int smem = pf2_shape<T, D>::SMEM;
    /* The shared-memory opt-in belongs to the function, not the call: set
     * once (a function-local static is initialised once, thread-safely),
     * which keeps a host call off every decode step. */
    static const cudaError_t attr =
        cudaFuncSetAttribute(prefill_mma_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    SINKD_CUDA_TRY(attr);
    dim3 grid((P.n * P.group + PF2_BM - 1) / PF2_BM, P.n_kv);
    prefill_mma_kernel<T, D><<<grid, PF2_WARPS * 32, smem, c->stream>>>(P);
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}

/* Kernel choice, SINKD_PREFILL (read once): v1, v2, v3 (8 warps, 3
 * stages, one block an SM), v3w4 (4 warps, 2 stages, 2 blocks an SM),
 * v3w4x3 (the same held to 168 registers for 3 blocks an SM), v4 (4 warps
 * x 32 rows, 2 stages, 2 blocks an SM), v4w8 (8 warps x 32 rows, 3 stages,
 * one block an SM), v5 (wgmma, prefill_wgmma.cu: a warpgroup a block, 3
 * stages, 2 blocks an SM), v5x3 (2 stages, 3 blocks an SM), v5w8 (two
 * warpgroups sharing each tile, 3 stages, one block an SM), or auto (the
 * default): v5x3. A call a version does not take runs the next older one.
 * H100, 32q/8kv, d 128, n = 4K / 8K / 16K / 32K, TFLOP/s: v3w4 245.4 /
 * 272.3 / 288.2 / 291.9, v4 232.7 / 310.1 / 328.0 / 344.0, v5 377.8 /
 * 442.1 / 483.9 / 503.6, v5x3 400.8 / 491.8 / 536.3 / 541.5, v5w8 345.9 /
 * 410.8 / 438.9 / 468.2 (bench/attention/NOTES.md). */

static int prefill_env_version(void)
{
    static const char *const names[] = {"v1", "v2",   "v3",   "v3w4", "v3w4x3", "v4",
                                        "v4w8", "v5", "v5x3", "v5w8", "auto"};
    const char *env = getenv("SINKD_PREFILL");
    if (!env || !*env)
        return PF_AUTO;
    for (int i = 0; i < (int)(sizeof names / sizeof *names); i++)
        if (strcmp(env, names[i]) == 0) {
            fprintf(stderr, "<6>prefill: SINKD_PREFILL=%s\n", env);
            return PF_V1 + i;
        }
    fprintf(stderr, "<4>prefill: SINKD_PREFILL=%s is not v1, v2, v3, v3w4, v3w4x3, v4, v4w8, "
                    "v5, v5x3, v5w8 or auto; using auto\n", env);
    return PF_AUTO;
}

static int prefill_version(void)
{
    static const int v = prefill_env_version();
    return v;
}

template <typename T, int D, int NW, int MT, int STAGES, int MINB>
static int prefill_dense_launch(sinkd_cuda *c, const pf_params &P)
{
    using SH = pf3_shape<T, D, NW, MT, STAGES>;
    static const cudaError_t attr = cudaFuncSetAttribute(prefill_dense_kernel<T, D, NW, MT, STAGES, MINB>,
                                                         cudaFuncAttributeMaxDynamicSharedMemorySize, SH::SMEM);
    SINKD_CUDA_TRY(attr);
    dim3 grid((P.n * P.group + SH::BM - 1) / SH::BM, P.n_kv);
    prefill_dense_kernel<T, D, NW, MT, STAGES, MINB><<<grid, NW * 32, SH::SMEM, c->stream>>>(P);
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}

template <typename T, int D>
static int prefill_dense_pick(sinkd_cuda *c, const pf_params &P, int ver)
{
    if (ver == PF_AUTO)
        ver = PF_V5X3;
    if (ver == PF_V5 || ver == PF_V5X3 || ver == PF_V5W8)
        return prefill_wgmma_launch<T, D>(c, P, ver);
    if (ver == PF_V3W4)
        return prefill_dense_launch<T, D, 4, 1, 2, 2>(c, P);
    if (ver == PF_V3W4X3)
        return prefill_dense_launch<T, D, 4, 1, 2, 3>(c, P);
    if (ver == PF_V4)
        return prefill_dense_launch<T, D, 4, 2, 2, 2>(c, P);
    if (ver == PF_V4W8)
        return prefill_dense_launch<T, D, 8, 2, 3, 1>(c, P);
    return prefill_dense_launch<T, D, 8, 1, 3, 1>(c, P);
}

/* v3 (head_dim 64/128, 16-byte aligned pages): the scratch is sized by the
 * longest lane, which the caller names (max_len) or whose length is read
 * back (a stream sync: prefill is never recorded in a graph). The kernels
 * clamp each lane to the scratch, so a max_len below a lane's length
 * costs that lane's attention, never memory safety. Returns 1, having
 * launched nothing, when v3 cannot take the call: inside a graph
 * recording, a lane longer than the pool could hold (missing pages read as
 * zero keys, so v2 takes it), or no memory for the scratch. */
template <typename T>
static int prefill_v3(sinkd_cuda *c, pf_params &P, int ver)
{
    cudaStreamCaptureStatus st;
    SINKD_CUDA_TRY(cudaStreamIsCapturing(c->stream, &st));
    if (st != cudaStreamCaptureStatusNone)
        return 1;
    int64_t mx = P.max_len;
    if (mx <= 0) {
        int32_t *hl = (int32_t *)malloc((size_t)P.n_kv * sizeof *hl);
        if (!hl)
            return -ENOMEM;
        cudaError_t e = cudaMemcpyAsync(hl, P.ln.len, (size_t)P.n_kv * sizeof *hl,
                                        cudaMemcpyDeviceToHost, c->stream);
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(c->stream);
        for (int i = 0; e == cudaSuccess && i < P.n_kv; i++)
            mx = hl[i] > mx ? hl[i] : mx;
        free(hl);
        SINKD_CUDA_TRY(e);
    }
    if (mx > (int64_t)P.pool.n_pages * P.pool.page_tokens)
        return 1;
    P.kv_stride = (mx + PF2_BN - 1) / PF2_BN * PF2_BN;
    size_t half = (size_t)P.n_kv * (size_t)P.kv_stride * (size_t)P.d * sizeof(T);
    if (half > 0) {
        if (sinkd_cuda_buf_reserve(c, &c->kvrot, 2 * half)) {
            (void)cudaGetLastError(); /* a failed cudaMalloc is no launch error */
            return 1;
        }
        P.kr = c->kvrot.p;
        P.vr = (const char *)c->kvrot.p + half;
        int per = PF3_THREADS / (P.d / 8);
        dim3 grid((unsigned)((mx + per - 1) / per), P.n_kv);
        prefill_gather_kernel<T><<<grid, PF3_THREADS, 0, c->stream>>>(P);
        SINKD_CUDA_CHECK_LAUNCH();
    }
    return P.d == 64 ? prefill_dense_pick<T, 64>(c, P, ver) : prefill_dense_pick<T, 128>(c, P, ver);
}

/* The newest version SINKD_PREFILL allows that takes the call: v3 and v2
 * for head dims 64/128 on 16-byte aligned rows, v1 for every shape. */
template <typename T>
static int prefill_dispatch(sinkd_cuda *c, pf_params &P)
{
    const int ver = prefill_version();
    bool fast = P.pool.page_bytes % 16 == 0 && (uintptr_t)P.pool.pages % 16 == 0 && (P.d == 64 || P.d == 128);
    if (fast && ver >= PF_V3) {
        int rc = prefill_v3<T>(c, P, ver);
        if (rc <= 0)
            return rc;
    }
    if (fast && ver >= PF_V2)
        return P.d == 64 ? prefill_mma_launch<T, 64>(c, P) : prefill_mma_launch<T, 128>(c, P);
    if (P.d <= 64)
        return prefill_launch<T, 64>(c, P);
    if (P.d <= 128)
        return prefill_launch<T, 128>(c, P);
    return prefill_launch<T, 256>(c, P);
}

int sinkd_cuda_attn_prefill(sinkd_cuda *c, const sinkd_prefill_args *a)
{
    if (!a)
        return -EINVAL;
    int rc = sinkd_cuda_check_attn(a->pool, a->head_dim, a->n_q_heads, a->n_kv_heads, &a->rope);
    if (rc)
        return rc;
    if (a->n < 0 || !a->q || !a->out)
        return -EINVAL;
    if (a->lanes.n_lanes != a->n_kv_heads || a->n_kv_heads > 65535)
        return -EINVAL;
    if (a->rope.mode == SINKD_ROPE_ABSOLUTE && !a->q_pos)
        return -EINVAL;
    if (a->obs_w < 0 || a->score_op < SINKD_SCORE_NONE || a->score_op > SINKD_SCORE_DECAY ||
        a->max_len < 0)
        return -EINVAL;
    if (a->n == 0)
        return 0;
    if (!a->lanes.len || !a->lanes.page_off || !a->lanes.page_ids)
        return -EINVAL;
    if ((int64_t)a->n * (a->n_q_heads / a->n_kv_heads) > (int64_t)INT32_MAX / 2)
        return -EINVAL;

    pf_params P;
    memset(&P, 0, sizeof P);
    P.pool = *a->pool;
    P.ln = a->lanes;
    P.n = a->n;
    P.n_q = a->n_q_heads;
    P.n_kv = a->n_kv_heads;
    P.group = a->n_q_heads / a->n_kv_heads;
    P.d = a->head_dim;
    P.rope = a->rope;
    P.qscale = a->softmax_scale * PF_LOG2E;
    P.max_len = a->max_len;
    P.q = a->q;
    P.out = a->out;
    P.q_pos = a->q_pos;
    bool obs = a->obs_w > 0 && a->score_op != SINKD_SCORE_NONE;
    if (obs) {
        size_t lse_b = (size_t)a->n * a->n_q_heads * sizeof(float);
        /* Window partial sums, indexed like the lanes' pages (<= the pool). */
        size_t acc_b = (size_t)a->pool->n_pages * a->pool->page_tokens * sizeof(float);
        rc = sinkd_cuda_buf_reserve(c, &c->lse, lse_b);
        if (!rc)
            rc = sinkd_cuda_buf_reserve(c, &c->logits, acc_b);
        if (rc)
            return rc;
        P.lse = (float *)c->lse.p;
    }
    rc = a->pool->dtype == SINKD_F16 ? prefill_dispatch<__half>(c, P)
                                     : prefill_dispatch<__nv_bfloat16>(c, P);
    if (rc || !obs)
        return rc;
    int W = a->obs_w < a->n ? a->obs_w : a->n;
    dim3 grid(c->n_sm * 2 / a->n_kv_heads + 1, a->n_kv_heads);
    if (a->pool->dtype == SINKD_F16)
        obs_kernel<__half><<<grid, OBS_WARPS * 32, 0, c->stream>>>(P, W, a->score_op,
                                                                  a->score_decay, (float *)c->logits.p);
    else
        obs_kernel<__nv_bfloat16><<<grid, OBS_WARPS * 32, 0, c->stream>>>(
            P, W, a->score_op, a->score_decay, (float *)c->logits.p);
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}
