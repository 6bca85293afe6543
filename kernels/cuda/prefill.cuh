/*
 * What the prefill attention kernels share (prefill.cu: v1-v4 and the
 * dispatch; prefill_wgmma.cu: v5): the launch parameters, and the device
 * helpers that read a warp's query rows, mask and pack its tiles and store
 * its rows out. Every helper works on a warp's 16 rows in the m16n8k16
 * fragment layout, which wgmma's m64 shapes repeat per warp of a warpgroup.
 */
#ifndef SINKD_CUDA_PREFILL_CUH
#define SINKD_CUDA_PREFILL_CUH

#include "common.cuh"
#include "mma.cuh"

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
    /* v3: lane h's rotated keys 0..len-1 at kr + h * kv_stride * d, its
     * values at vr likewise, in the pool dtype */
    const void *kr, *vr;
    int64_t kv_stride;
    int max_len;             /* the caller's longest lane, 0: unknown */
};

/* Causal mask of a warp's S tile (v1, v2, v3): key kc of row a (columns
 * c < 2) or b is dropped past the row's last key or the range's end. */
template <int NT>
static __device__ __forceinline__ void pf_mask(float (&s)[NT][4], int k0, int t4, int lim_a, int lim_b,
                                               int kend)
{
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int c = 0; c < 4; c++) {
            int kc = k0 + j * 8 + 2 * t4 + (c & 1);
            if (kc > (c < 2 ? lim_a : lim_b) || kc >= kend)
                s[j][c] = -INFINITY;
        }
}

/* P's accumulators of keys 16*kk .. 16*kk + 15 as an A operand. */
template <typename T, int NT>
static __device__ __forceinline__ void pf_p_frag(const float (&s)[NT][4], int kk, uint32_t *a)
{
    a[0] = mma_op<T>::pack(s[2 * kk][0], s[2 * kk][1]);
    a[1] = mma_op<T>::pack(s[2 * kk][2], s[2 * kk][3]);
    a[2] = mma_op<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[3] = mma_op<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

/* A warp's 16 rows out (Ra and Ra + 8, for every version): O / l in the
 * first @d of DP columns (d a multiple of 16), and the row's log2-sum-exp. */
template <int DP>
static __device__ __forceinline__ void pf_store(const pf_params &P, int Ra, int t4, int d,
                                                const float (&o)[DP / 8][4], const float *mrow,
                                                float *lrow, int rows, int kvh)
{
#pragma unroll
    for (int h = 0; h < 2; h++) {
        lrow[h] += __shfl_xor_sync(0xffffffffu, lrow[h], 1);
        lrow[h] += __shfl_xor_sync(0xffffffffu, lrow[h], 2);
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int R = Ra + 8 * h;
        if (R >= rows)
            continue;
        int qi = R / P.group, qh = kvh * P.group + R % P.group;
        float inv_l = lrow[h] > 0.0f ? 1.0f / lrow[h] : 0.0f;
        float *orow = P.out + ((size_t)qi * P.n_q + qh) * d;
#pragma unroll
        for (int j = 0; j < DP / 8; j++)
            if (j * 8 < d)
                *reinterpret_cast<float2 *>(orow + j * 8 + 2 * t4) =
                    make_float2(o[j][2 * h] * inv_l, o[j][2 * h + 1] * inv_l);
        if (t4 == 0 && P.lse)
            P.lse[(size_t)qi * P.n_q + qh] = lrow[h] > 0.0f ? mrow[h] + log2f(lrow[h]) : -INFINITY;
    }
}

/* Where a warp's 16 rows starting at @rw stand: the thread's rows Ra and
 * Ra + 8 attend keys up to lim_a and lim_b (-1: a row past the end); the
 * 16 rows end between wlim_lo and wlim_hi; k_off and v_off are the lane's
 * ldmatrix offsets into K and V tiles of stride RS. */
struct pf_warp {
    int Ra, lim_a, lim_b, wlim_lo, wlim_hi, k_off, v_off, t4;
};

template <int RS>
static __device__ __forceinline__ pf_warp pf_warp_at(int rw, int rows, int past, int G)
{
    const int lane = threadIdx.x % 32;
    pf_warp W;
    W.t4 = lane % 4;
    W.Ra = rw + lane / 4;
    const int Rb = W.Ra + 8;
    W.lim_a = W.Ra < rows ? past + W.Ra / G : -1;
    W.lim_b = Rb < rows ? past + Rb / G : -1;
    const int R_hi = min(rows - 1, rw + 15);
    W.wlim_lo = rw < rows ? past + rw / G : -1;
    W.wlim_hi = rw < rows ? past + R_hi / G : -1;
    W.k_off = ((lane / 16) * 8 + lane % 8) * RS + ((lane / 8) % 2) * 8;
    W.v_off = ((lane / 8) % 2 * 8 + lane % 8) * RS + (lane / 16) * 8;
    return W;
}

/* Fragments of the thread's Q rows @Ra and Ra + 8 (m16n8k16 A layout: row,
 * columns kk + 2*t4 + {0, 1, 8, 9}), rotated at the query position (the
 * block's inverse frequencies @inv, rope_sincos_inv), scaled, rounded to
 * T. NEOX partners (c, c + D/2) sit in fragments kk and kk + D/32 of the
 * same thread, ADJACENT ones side by side. */
template <typename T, int D>
static __device__ __forceinline__ void pf_load_q(const pf_params &P, const pf_warp &W, int rows,
                                                 int past, int kvh, const double *inv,
                                                 uint32_t (&qa)[D / 16][4])
{
    const bool neox = P.rope.style == SINKD_ROPE_NEOX;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int R = W.Ra + 8 * h;
        const bool ok = R < rows && past >= 0;
        const int qi = ok ? R / P.group : 0;
        const float *qr = P.q + ((size_t)qi * P.n_q + kvh * P.group + (ok ? R % P.group : 0)) * D;
        const int qp = P.rope.mode == SINKD_ROPE_CACHE ? past + qi : (ok ? P.q_pos[qi] : 0);
        float v[D / 16][4];
#pragma unroll
        for (int kf = 0; kf < D / 16; kf++)
#pragma unroll
            for (int c = 0; c < 4; c++)
                v[kf][c] = ok ? qr[kf * 16 + 2 * W.t4 + (c & 1) + 8 * (c >> 1)] : 0.0f;
        auto rot = [&](float &x0, float &x1, int i) {
            float sn, cs;
            rope_sincos_inv(qp, inv[i], &sn, &cs);
            const float y0 = (x0 * cs - x1 * sn) * P.qscale;
            x1 = (x0 * sn + x1 * cs) * P.qscale;
            x0 = y0;
        };
        if (ok && neox) {
#pragma unroll
            for (int kf = 0; kf < D / 32; kf++)
#pragma unroll
                for (int c = 0; c < 4; c++)
                    rot(v[kf][c], v[kf + D / 32][c], kf * 16 + 2 * W.t4 + (c & 1) + 8 * (c >> 1));
        } else if (ok) {
#pragma unroll
            for (int kf = 0; kf < D / 16; kf++)
#pragma unroll
                for (int p = 0; p < 2; p++)
                    rot(v[kf][2 * p], v[kf][2 * p + 1], kf * 8 + W.t4 + 4 * p);
        }
#pragma unroll
        for (int kf = 0; kf < D / 16; kf++) {
            qa[kf][h] = mma_op<T>::pack(v[kf][0], v[kf][1]);
            qa[kf][h + 2] = mma_op<T>::pack(v[kf][2], v[kf][3]);
        }
    }
}

/* Where a block of the dense pass (v3-v5, over the gathered scratch)
 * stands: blocks run longest rows first, @bm rows from r0 of kv head kvh;
 * its queries attend keys below kend, ntiles tiles of @bn; kg and vg are the
 * lane's rotated keys and values in the scratch. */
template <typename T, int D>
struct pf_block {
    int kvh, past, rows, r0, kend, ntiles;
    const T *kg, *vg;

    __device__ __forceinline__ pf_block(const pf_params &P, int bm, int bn)
    {
        kvh = blockIdx.y;
        const int len = (int)min((int64_t)P.ln.len[kvh], P.kv_stride); /* the scratch's rows */
        past = len - P.n;
        rows = P.n * P.group;
        r0 = (gridDim.x - 1 - blockIdx.x) * bm;
        const int last_i = min(P.n - 1, (r0 + bm - 1) / P.group);
        kend = past < 0 ? 0 : min(len, past + last_i + 1);
        ntiles = (kend + bn - 1) / bn;
        kg = (const T *)P.kr + (size_t)kvh * P.kv_stride * D;
        vg = (const T *)P.vr + (size_t)kvh * P.kv_stride * D;
    }
};

/* The prefill versions SINKD_PREFILL names (prefill.cu says what each is). */
enum {
    PF_V1 = 1, PF_V2, PF_V3, PF_V3W4, PF_V3W4X3, PF_V4, PF_V4W8, PF_V5, PF_V5X3, PF_V5W8, PF_AUTO
};

/* v5 (prefill_wgmma.cu): the dense pass over the rotated scratch with
 * wgmma in the shape of @ver (PF_V5, PF_V5X3 or PF_V5W8). Returns 0 or a
 * negative errno. */
template <typename T, int D>
int prefill_wgmma_launch(sinkd_cuda *c, const pf_params &P, int ver);

#endif /* SINKD_CUDA_PREFILL_CUH */
