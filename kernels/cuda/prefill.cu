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

#include "common.cuh"
#include "mma.cuh"

#define PF_WARPS 4
#define PF_BM (PF_WARPS * 16)
#define PF_BN 64
#define PF_LOG2E 1.4426950408889634f

struct pf_params {
    sinkd_kv_pool pool;
    sinkd_lanes ln;
    int n, n_q, n_kv, group, d;
    sinkd_rope rope;
    float qscale;
    const float *q;
    float *out;
    const int32_t *q_pos;
    float *lse;              /* [n][n_q] log2 domain */
};

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
                int kp = cache ? tok : P.pool.pos[slot];
#pragma unroll
                for (int m = 0; m < 4; m++) {
                    float s, c;
                    rope_sincos_fast(kp, rope_inv_freq(P.rope.theta, P.rope.scale, 4 * u + m, d), &s, &c);
                    float x0 = kx[2 * m], x1 = kx[2 * m + 1];
                    kx[2 * m] = x0 * c - x1 * s;
                    kx[2 * m + 1] = x0 * s + x1 * c;
                }
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
#pragma unroll
        for (int j = 0; j < PF_BN / 8; j++) {
            int key = k0 + j * 8 + 2 * t4;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                int kc = key + (c & 1);
                if (kc > (c < 2 ? lim_a : lim_b) || kc >= kend)
                    s[j][c] = -INFINITY;
            }
        }
        online_softmax(s, o, mrow, lrow);

        /* O += P V: P's accumulators are the A operand, two n-tiles a step. */
#pragma unroll
        for (int kk = 0; kk < PF_BN / 16; kk++) {
            uint32_t a[4];
            a[0] = mma_op<T>::pack(s[2 * kk][0], s[2 * kk][1]);
            a[1] = mma_op<T>::pack(s[2 * kk][2], s[2 * kk][3]);
            a[2] = mma_op<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            a[3] = mma_op<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int j = 0; j < DP / 8; j++) {
                const T *vr = sVt + (j * 8 + g) * SV + kk * 16 + 2 * t4;
                mma_op<T>::run(o[j], a, ld32(vr), ld32(vr + 8));
            }
        }
    }

#pragma unroll
    for (int h = 0; h < 2; h++) {
        lrow[h] += __shfl_xor_sync(0xffffffffu, lrow[h], 1);
        lrow[h] += __shfl_xor_sync(0xffffffffu, lrow[h], 2);
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int R = h ? Rb : Ra;
        if (R >= rows)
            continue;
        int i = R / G, qh = kvh * G + R % G;
        float inv_l = lrow[h] > 0.0f ? 1.0f / lrow[h] : 0.0f;
        float *orow = P.out + ((size_t)i * P.n_q + qh) * d;
#pragma unroll
        for (int j = 0; j < DP / 8; j++) {
            int col = j * 8 + 2 * t4;
            if (col < d) {
                orow[col] = o[j][2 * h] * inv_l;
                orow[col + 1] = o[j][2 * h + 1] * inv_l;
            }
        }
        if (t4 == 0 && P.lse)
            P.lse[(size_t)i * P.n_q + qh] = lrow[h] > 0.0f ? mrow[h] + log2f(lrow[h]) : -INFINITY;
    }
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
    const int g = lane / 4, t4 = lane % 4;
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

    float o[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; j++)
        o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
    const int Ra = r0 + warp * 16 + g, Rb = Ra + 8;
    const int lim_a = Ra < rows ? past + Ra / G : -1; /* last key of the row */
    const int lim_b = Rb < rows ? past + Rb / G : -1;
    const int R_lo = r0 + warp * 16, R_hi = min(rows - 1, R_lo + 15);
    const int wlim_lo = R_lo < rows ? past + R_lo / G : -1; /* the warp's row limits */
    const int wlim_hi = R_lo < rows ? past + R_hi / G : -1;
    const int k_off = ((lane / 16) * 8 + lane % 8) * RS + ((lane / 8) % 2) * 8;
    const int v_off = ((lane / 8) % 2 * 8 + lane % 8) * RS + (lane / 16) * 8;
    /* The rotation pass gives each thread the same chunk of every row it
     * touches (the block's thread count is a multiple of D/8). */
    const int ru = threadIdx.x % (D / 8);
    float rinv[4];
#pragma unroll
    for (int m = 0; m < 4; m++)
        rinv[m] = rope_inv_freq(P.rope.theta, P.rope.scale, 4 * ru + m, D);

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
#pragma unroll
            for (int m = 0; m < 4; m++) {
                float sn, cs;
                rope_sincos_fast(kp, rinv[m], &sn, &cs);
                float x0 = x[2 * m], x1 = x[2 * m + 1];
                x[2 * m] = x0 * cs - x1 * sn;
                x[2 * m + 1] = x0 * sn + x1 * cs;
            }
            store_row(row, ru, D, neox, x);
        }
        __syncthreads();
        const T *sK = reinterpret_cast<const T *>(stg);
        const T *sV = reinterpret_cast<const T *>(stg + SH::KV);
        if (k0 <= wlim_hi) {
            float s[PF2_BN / 8][4];
#pragma unroll
            for (int j = 0; j < PF2_BN / 8; j++)
                s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++)
#pragma unroll
                for (int np = 0; np < PF2_BN / 16; np++) {
                    uint32_t kb[4];
                    ldsm_x4(kb, sK + k_off + np * 16 * RS + kk * 16);
                    mma_op<T>::run(s[2 * np], qa[kk], kb[0], kb[1]);
                    mma_op<T>::run(s[2 * np + 1], qa[kk], kb[2], kb[3]);
                }
            if (k0 + PF2_BN - 1 > wlim_lo || k0 + PF2_BN > kend) {
#pragma unroll
                for (int j = 0; j < PF2_BN / 8; j++)
#pragma unroll
                    for (int c = 0; c < 4; c++) {
                        int kc = k0 + j * 8 + 2 * t4 + (c & 1);
                        if (kc > (c < 2 ? lim_a : lim_b) || kc >= kend)
                            s[j][c] = -INFINITY;
                    }
            }
            online_softmax(s, o, mrow, lrow);
#pragma unroll
            for (int kk = 0; kk < PF2_BN / 16; kk++) {
                uint32_t a[4];
                a[0] = mma_op<T>::pack(s[2 * kk][0], s[2 * kk][1]);
                a[1] = mma_op<T>::pack(s[2 * kk][2], s[2 * kk][3]);
                a[2] = mma_op<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                a[3] = mma_op<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
                for (int j2 = 0; j2 < D / 16; j2++) {
                    uint32_t vb[4];
                    ldsm_x4_t(vb, sV + v_off + kk * 16 * RS + j2 * 16);
                    mma_op<T>::run(o[2 * j2], a, vb[0], vb[1]);
                    mma_op<T>::run(o[2 * j2 + 1], a, vb[2], vb[3]);
                }
            }
        }
        __syncthreads(); /* this stage is refilled by the next issue */
    }
    cp_async_wait<0>();

#pragma unroll
    for (int h = 0; h < 2; h++) {
        lrow[h] += __shfl_xor_sync(0xffffffffu, lrow[h], 1);
        lrow[h] += __shfl_xor_sync(0xffffffffu, lrow[h], 2);
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int R = h ? Rb : Ra;
        if (R >= rows)
            continue;
        int qi = R / G, qh = kvh * G + R % G;
        float inv_l = lrow[h] > 0.0f ? 1.0f / lrow[h] : 0.0f;
        float *orow = P.out + ((size_t)qi * P.n_q + qh) * D;
#pragma unroll
        for (int j = 0; j < D / 8; j++)
            *reinterpret_cast<float2 *>(orow + j * 8 + 2 * t4) =
                make_float2(o[j][2 * h] * inv_l, o[j][2 * h + 1] * inv_l);
        if (t4 == 0 && P.lse)
            P.lse[(size_t)qi * P.n_q + qh] = lrow[h] > 0.0f ? mrow[h] + log2f(lrow[h]) : -INFINITY;
    }
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

/* v2 for the head dims it was built for on 16-byte aligned rows, v1 else. */
template <typename T>
static int prefill_dispatch(sinkd_cuda *c, const pf_params &P)
{
    bool aligned = P.pool.page_bytes % 16 == 0 && (uintptr_t)P.pool.pages % 16 == 0;
    if (aligned && P.d == 64)
        return prefill_mma_launch<T, 64>(c, P);
    if (aligned && P.d == 128)
        return prefill_mma_launch<T, 128>(c, P);
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
    if (a->obs_w < 0 || a->score_op < SINKD_SCORE_NONE || a->score_op > SINKD_SCORE_DECAY)
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
