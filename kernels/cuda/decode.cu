/*
 * Decode attention over paged lanes, RoPE applied to keys at read time.
 *
 * For each lane l = (seq, kv head) and each of its G = n_q/n_kv query heads:
 *   q_r  = rope(q[seq][qh], q position) * softmax_scale
 *   s_t  = q_r . rope(K[t], key position t)        t over the lane's keys
 *   out  = sum_t softmax(s)_t V[t]
 * optionally p_t = sum over the group of softmax(s)_t, normalised by the
 * FINAL log-sum-exp, written into pool->score (WRITE, ADD or DECAY).
 *
 * Shapes: q, out [n_seqs][n_q][D] f32; K, V rows of D in F16/BF16 in pages.
 * Bytes: 2*D*esize per key (+ 8*G per key with scores: logits stored by
 * pool slot and read back once the lse is known), FLOPs ~4*G*D per key:
 * memory bound at any G<=16.
 *
 * v2 (decode_mma_kernel, head_dim 64/128, pages of a multiple of 16 tokens,
 * 16-byte aligned pool): tensor cores, cp.async rings, splits merged
 * inside the one launch; described below, and measured in
 * bench/attention/NOTES.md. Everything else runs v1.
 *
 * v1: split-KV. Grid (S splits, lanes, head chunks of <= 4).
 * A warp owns chunks of keys; P2 threads read one key row with 16-byte loads
 * (8 elements a thread), NP keys in flight per thread before any math. Each
 * thread keeps an online softmax (log2 domain) for its key slot; slots,
 * then warps, are merged at the end. With S > 1 the partials (acc, m, l) go
 * to a workspace and decode_merge_kernel combines them. The score pass
 * (decode_score_kernel) reads the stored logits and the final lse.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"
#include "mma.cuh"
#include "pdl.cuh"

#define DEC_WARPS 4
#define DEC_HG 4        /* query heads per block */
#define DEC_NP 4        /* keys per thread loaded before use */
#define DEC_LOG2E 1.4426950408889634f
#define DEC_CNT_LANES 65536
#define DEC_CNT_BYTES (2 * DEC_CNT_LANES * 4) /* split and claim counters: an int each per lane */
#define DEC_EARLY_NEXT_SEQS 4     /* v2: batches up to this many sequences start early (PDL) */

struct dec_params {
    sinkd_kv_pool pool;
    sinkd_lanes ln;
    int n_kv, group, d, n_q;
    sinkd_rope rope;
    float qscale;            /* softmax_scale * log2(e) */
    const float *q;
    float *out;
    const int32_t *q_pos;
    const int32_t *sel_off, *sel_pages;
    float *part_acc;         /* [lane][S][G][D] */
    float *part_ml;          /* [lane][S][G][2] */
    float *lse;              /* [lane][G] log2 domain */
    float *logits;           /* [pool slot][G] (v1) or logit_tiled (v2), or NULL */
    int64_t logits_cap;      /* keys the logits buffer holds */
    int logits_tiled;
    int n_split;             /* grid splits; the partials' stride per lane */
    int warp_tiles;          /* v2: a lane uses no more splits than give each
                              * warp this many tiles; 0: all n_split (legacy) */
    double rope_l2theta;     /* v2 query angles: log2(theta) and 1 / scale */
    double rope_inv_scale;
    int *split_cnt;          /* [lane] blocks done, zero between calls (v2) */
    int *claim_cnt;          /* [lane] tail tiles claimed, zero between calls (v2) */
    int tail_pct;            /* v2: percent of a split lane's tiles claimed, not dealt */
    long long *trace;        /* SINKD_DECODE_TRACE (v2): [block][DEC_TRACE_N] or NULL */
    int score_op;
    float score_decay;
    int early_next;          /* v2: let the next kernel launch after the tiles */
    void *const *defer;      /* v2 deferred scores: [n_seqs] blocks, or NULL */
    int defer_layer;
    int defer_apply;         /* apply the pending probabilities (ADD, DECAY, rows) */
    size_t defer_lse_off, defer_len_off;
    float *row;              /* rows mode (backend.h): one step an entry, p to row */
    int *row_len;            /* [lane] the applied step's len, 0: none */
};

/* Lane @l's entry in its sequence's deferral block (backend.h). */
struct dec_defer {
    void *q;    /* [2][G][D] pool dtype */
    float *lse; /* [2][G] */
    int *len;   /* [2] */
};
static __device__ __forceinline__ dec_defer defer_entry(const dec_params &P, int l, size_t esize)
{
    unsigned char *b = (unsigned char *)P.defer[l / P.n_kv];
    size_t x = (size_t)P.defer_layer * P.n_kv + l % P.n_kv;
    dec_defer e;
    e.q = b + x * 2 * P.group * P.d * esize;
    e.lse = (float *)(b + P.defer_lse_off) + x * 2 * P.group;
    e.len = (int *)(b + P.defer_len_off) + x * 2;
    return e;
}

/* The lane's attended list: n list pages, list base (for the logits index),
 * and logical page of list entry j. */
struct dec_list {
    int base, n;
    const int32_t *sel; /* NULL: dense */
    __device__ int page(int j) const { return sel ? sel[base + j] : j; }
};

static __device__ __forceinline__ dec_list lane_list(const dec_params &P, int l, int len)
{
    dec_list L;
    int pt = P.pool.page_tokens;
    int have = P.ln.page_off[l + 1] - P.ln.page_off[l];
    if (P.sel_off) {
        L.sel = P.sel_pages;
        L.base = P.sel_off[l];
        L.n = P.sel_off[l + 1] - L.base;
    } else {
        L.sel = NULL;
        L.base = P.ln.page_off[l];
        L.n = min(have, (len + pt - 1) / pt);
    }
    if (L.n < 0)
        L.n = 0;
    return L;
}

template <typename T, int P2>
__global__ void __launch_bounds__(DEC_WARPS * 32, 3)
decode_kernel(dec_params P)
{
    constexpr int KPP = 32 / P2;          /* keys per warp pass */
    constexpr int CH = KPP * DEC_NP;      /* keys per warp chunk */
    const int split = blockIdx.x, l = blockIdx.y;
    const int hbase = blockIdx.z * DEC_HG;
    const int hg = min(DEC_HG, P.group - hbase);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int sub = lane / P2, t = lane % P2;
    const int d = P.d, pt = P.pool.page_tokens;
    const bool act = t < d / 8;           /* threads past the row hold zeros */
    const bool neox = P.rope.style == SINKD_ROPE_NEOX;
    const bool cache = P.rope.mode == SINKD_ROPE_CACHE;
    const int seq = l / P.n_kv;
    const int len = P.ln.len[l];
    const dec_list L = lane_list(P, l, len);

    /* This split's list pages [pb, pe). */
    int pps = (L.n + P.n_split - 1) / P.n_split;
    int pb = min(L.n, split * pps), pe = min(L.n, pb + pps);
    int kb = pb * pt, ke = pe * pt;

    float inv[4];
    rope_chunk_inv(P.rope.theta, P.rope.scale, t, d, inv);

    float q[DEC_HG][8];
    {
        int qp = cache ? len - 1 : P.q_pos[seq];
#pragma unroll
        for (int h = 0; h < DEC_HG; h++) {
#pragma unroll
            for (int e = 0; e < 8; e++)
                q[h][e] = 0.0f;
            if (h < hg && act) {
                const float *qr = P.q + ((size_t)seq * P.n_q + (size_t)(l % P.n_kv) * P.group +
                                         hbase + h) * d;
#pragma unroll
                for (int e = 0; e < 8; e++)
                    q[h][e] = qr[row_elem(t, e, d, neox)];
#pragma unroll
                for (int m = 0; m < 4; m++) {
                    float s, c;
                    rope_sincos_exact(qp, P.rope.theta, P.rope.scale, 4 * t + m, d, &s, &c);
                    float x0 = q[h][2 * m], x1 = q[h][2 * m + 1];
                    q[h][2 * m] = (x0 * c - x1 * s) * P.qscale;
                    q[h][2 * m + 1] = (x0 * s + x1 * c) * P.qscale;
                }
            }
        }
    }

    float mx[DEC_HG], sum[DEC_HG], acc[DEC_HG][8];
#pragma unroll
    for (int h = 0; h < DEC_HG; h++) {
        mx[h] = -INFINITY;
        sum[h] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++)
            acc[h][e] = 0.0f;
    }

    const size_t vofs = (size_t)pt * d;
    for (int c0 = kb + warp * CH; c0 < ke; c0 += DEC_WARPS * CH) {
        float kx[DEC_NP][8], vx[DEC_NP][8];
        int kpos[DEC_NP];
        int64_t kslot[DEC_NP];
        bool ok[DEC_NP];
#pragma unroll
        for (int r = 0; r < DEC_NP; r++) {
            int kk = c0 + r * KPP + sub; /* list key index */
            int j = kk / pt, i = kk % pt;
            int lp = kk < ke ? L.page(j) : -1;
            int tok = lp * pt + i;
            int pg = -1;
            if (lp >= 0 && tok < len && lp < P.ln.page_off[l + 1] - P.ln.page_off[l])
                pg = P.ln.page_ids[P.ln.page_off[l] + lp];
            ok[r] = pg >= 0 && pg < P.pool.n_pages;
            int64_t slot = (int64_t)pg * pt + i;
            kslot[r] = slot;
            kpos[r] = ok[r] ? (cache ? tok : P.pool.pos[slot]) : 0;
            if (ok[r] && act) {
                const T *kr = (const T *)((const char *)P.pool.pages + (size_t)pg * P.pool.page_bytes) +
                              (size_t)i * d;
                load_row(kr, t, d, neox, kx[r]);
                load_row(kr + vofs, t, d, neox, vx[r]);
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++)
                    kx[r][e] = vx[r][e] = 0.0f;
            }
        }

        float s[DEC_NP][DEC_HG];
#pragma unroll
        for (int r = 0; r < DEC_NP; r++) {
            rope_rotate_chunk(kx[r], kpos[r], inv);
#pragma unroll
            for (int h = 0; h < DEC_HG; h++) {
                float a = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; e++)
                    a = fmaf(q[h][e], kx[r][e], a);
#pragma unroll
                for (int o = P2 / 2; o > 0; o >>= 1)
                    a += __shfl_xor_sync(0xffffffffu, a, o);
                s[r][h] = ok[r] ? a : -INFINITY;
            }
            if (P.logits && ok[r] && t == 0 && kslot[r] < P.logits_cap)
                for (int h = 0; h < hg; h++)
                    P.logits[kslot[r] * P.group + hbase + h] = s[r][h];
        }

#pragma unroll
        for (int h = 0; h < DEC_HG; h++) {
            float mn = mx[h];
#pragma unroll
            for (int r = 0; r < DEC_NP; r++)
                mn = fmaxf(mn, s[r][h]);
            if (mn == -INFINITY)
                continue; /* nothing valid yet: state stays empty */
            float corr = exp2f(mx[h] - mn);
            mx[h] = mn;
            sum[h] *= corr;
#pragma unroll
            for (int e = 0; e < 8; e++)
                acc[h][e] *= corr;
#pragma unroll
            for (int r = 0; r < DEC_NP; r++) {
                float p = exp2f(s[r][h] - mn);
                sum[h] += p;
#pragma unroll
                for (int e = 0; e < 8; e++)
                    acc[h][e] = fmaf(p, vx[r][e], acc[h][e]);
            }
        }
    }

    /* Merge the KPP key slots of the warp (lanes with equal t). */
#pragma unroll
    for (int o = P2; o < 32; o <<= 1) {
#pragma unroll
        for (int h = 0; h < DEC_HG; h++) {
            float om = __shfl_xor_sync(0xffffffffu, mx[h], o);
            float os = __shfl_xor_sync(0xffffffffu, sum[h], o);
            float nm = fmaxf(mx[h], om);
            float ca = nm == -INFINITY ? 0.0f : exp2f(mx[h] - nm);
            float cb = nm == -INFINITY ? 0.0f : exp2f(om - nm);
            sum[h] = sum[h] * ca + os * cb;
#pragma unroll
            for (int e = 0; e < 8; e++) {
                float oa = __shfl_xor_sync(0xffffffffu, acc[h][e], o);
                acc[h][e] = acc[h][e] * ca + oa * cb;
            }
            mx[h] = nm;
        }
    }

    /* Merge the warps through shared memory. */
    __shared__ float s_acc[DEC_WARPS][DEC_HG][256];
    __shared__ float s_m[DEC_WARPS][DEC_HG], s_l[DEC_WARPS][DEC_HG];
    if (sub == 0 && act) {
#pragma unroll
        for (int h = 0; h < DEC_HG; h++)
#pragma unroll
            for (int e = 0; e < 8; e++)
                s_acc[warp][h][row_elem(t, e, d, neox)] = acc[h][e];
    }
    if (lane == 0) {
#pragma unroll
        for (int h = 0; h < DEC_HG; h++) {
            s_m[warp][h] = mx[h];
            s_l[warp][h] = sum[h];
        }
    }
    __syncthreads();

    const int G = P.group;
    for (int u = threadIdx.x; u < hg * d; u += blockDim.x) {
        int h = u / d, e = u % d;
        float m = -INFINITY;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; w++)
            m = fmaxf(m, s_m[w][h]);
        float lsum = 0.0f, a = 0.0f;
        if (m != -INFINITY) {
#pragma unroll
            for (int w = 0; w < DEC_WARPS; w++) {
                float f = exp2f(s_m[w][h] - m);
                lsum += s_l[w][h] * f;
                a += s_acc[w][h][e] * f;
            }
        }
        int gh = hbase + h;
        if (P.n_split == 1) {
            size_t oi = ((size_t)seq * P.n_q + (size_t)(l % P.n_kv) * G + gh) * d + e;
            P.out[oi] = lsum > 0.0f ? a / lsum : 0.0f;
            if (e == 0 && P.lse)
                P.lse[(size_t)l * G + gh] = lsum > 0.0f ? m + log2f(lsum) : -INFINITY;
        } else {
            size_t pi = ((size_t)l * P.n_split + split) * G + gh;
            P.part_acc[pi * d + e] = a;
            if (e == 0) {
                P.part_ml[pi * 2] = m;
                P.part_ml[pi * 2 + 1] = lsum;
            }
        }
    }
}

/* ---- v2: tensor cores ---------------------------------------------------- */

/* Index of the logit of key @slot, head @h in the tiled layout of v2: per
 * tile of 16 slots (slot & ~15) 16 rows of 16 floats, row h holding the
 * keys in the order thread t4 = (k % 8) / 2 of the mma C fragment keeps
 * them: (2t4, 2t4 + 1, 8 + 2t4, 9 + 2t4). One 16-byte store per thread. */
static __device__ __forceinline__ int64_t logit_tiled(int64_t slot, int h, int G)
{
    int k = (int)(slot & 15);
    return (slot & ~(int64_t)15) * G + h * 16 + (k % 8 / 2) * 4 + (k / 8) * 2 + (k & 1);
}

/* v2's split merge, by the last block of lane @l to finish, over the
 * lane's first @S splits (partials laid out with stride P.n_split). One
 * round of loads brings every split's (m, l) and the first DV2_MERGE_PF
 * splits of this thread's first 4 elements at once; a warp per head turns
 * the (m, l) into weights exp2(m_s - M) in shared memory @sw (2 * S * G +
 * 16 floats); each thread then sums its elements over the splits, 16-byte
 * loads, DV2_MERGE_PF splits in flight. Loads bypass L1: other blocks of
 * this launch wrote the partials. */
#define DV2_MERGE_PF 16
static __device__ void merge_lane(const dec_params &P, int l, int S, float *sw, float *dlse)
{
    const int G = P.group, D = P.d, seq = l / P.n_kv, items = G * D / 4;
    const size_t stride = (size_t)G * (D / 4); /* float4s a split */
    const float2 *ml = reinterpret_cast<const float2 *>(P.part_ml) + (size_t)l * P.n_split * G;
    const float4 *acc = reinterpret_cast<const float4 *>(P.part_acc) + (size_t)l * P.n_split * stride;
    float *sm = sw, *sls = sw + S * G, *tot = sw + 2 * S * G;
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);

    float4 v[DV2_MERGE_PF];
#pragma unroll
    for (int j = 0; j < DV2_MERGE_PF; j++)
        v[j] = (int)threadIdx.x < items && j < S ? __ldcg(acc + j * stride + threadIdx.x) : zero;
    for (int i = threadIdx.x; i < S * G; i += blockDim.x) {
        float2 x = __ldcg(ml + i);
        sm[i] = x.x;
        sls[i] = x.y;
    }
    __syncthreads();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int h = warp; h < G; h += blockDim.x / 32) {
        float m = -INFINITY, lsum = 0.0f;
        for (int s = lane; s < S; s += 32)
            m = fmaxf(m, sm[s * G + h]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        for (int s = lane; s < S; s += 32) {
            float f = m == -INFINITY ? 0.0f : exp2f(sm[s * G + h] - m);
            lsum += sls[s * G + h] * f;
            sm[s * G + h] = f;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            lsum += __shfl_xor_sync(0xffffffffu, lsum, o);
        if (lane == 0) {
            tot[h] = lsum;
            float lse = lsum > 0.0f ? m + log2f(lsum) : -INFINITY;
            if (P.lse)
                P.lse[(size_t)l * G + h] = lse;
            if (dlse)
                dlse[h] = lse;
        }
    }
    __syncthreads();
    for (int it = threadIdx.x; it < items; it += blockDim.x) {
        const int h = it / (D / 4);
        float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int s0 = 0; s0 < S; s0 += DV2_MERGE_PF) {
            if (it != (int)threadIdx.x || s0 > 0) { /* the first round is in v already */
#pragma unroll
                for (int j = 0; j < DV2_MERGE_PF; j++)
                    v[j] = s0 + j < S ? __ldcg(acc + (s0 + j) * stride + it) : zero;
            }
#pragma unroll
            for (int j = 0; j < DV2_MERGE_PF; j++) {
                float f = s0 + j < S ? sm[(s0 + j) * G + h] : 0.0f;
                a[0] += v[j].x * f;
                a[1] += v[j].y * f;
                a[2] += v[j].z * f;
                a[3] += v[j].w * f;
            }
        }
        float lsum = tot[h];
        float *o = P.out + ((size_t)seq * P.n_q + (size_t)(l % P.n_kv) * G) * D + (size_t)it * 4;
#pragma unroll
        for (int i = 0; i < 4; i++)
            o[i] = lsum > 0.0f ? a[i] / lsum : 0.0f;
    }
}

/*
 * One block per (split, lane) holds all G <= 16 query heads of the lane as
 * the 16 rows of an m16n8k16 A operand (rows >= G are zero). Work comes in
 * tiles of 16 keys (page_tokens a multiple of 16); warp w of the block takes
 * the split's tiles w, w + W, ... and streams each tile's K, V (and stored
 * positions) with cp.async into its own DV2_STAGES-deep shared-memory ring,
 * rows the lane does not hold zero filled. The first
 * tiles are requested before the query is staged, so their latency overlaps
 * the query's rotation (one exact sin/cos per pair, shared by the heads).
 * Per tile a warp:
 *   ldmatrix K, rotate it in registers (f32, fast sincos), round, and
 *   S[16 x 16] = Q K^T in 2 * D/16 mma; mask; online softmax per row;
 *   O[16 x D] += P V with P straight from the S accumulators and V by
 *   ldmatrix.trans, D/8 mma.
 * Warps merge through shared memory. With splits, each block writes its
 * partial (acc, m, l) and the last block of the lane to finish (a counter
 * per lane, left at zero again) merges them: no second launch. The host
 * sizes the grid's splits without knowing the lanes' lengths (graphs
 * freeze them), so each lane uses only as many as give every warp
 * P.warp_tiles tiles (SINKD_DECODE_SPLITS) and the other blocks leave.
 * Scores: the logits go out as one 16-byte store per thread and tile
 * (logit_tiled), read by decode_score_kernel once the lse is known.
 */
#define DV2_WARPS 4
#define DV2_STAGES 3
#define DV2_TAIL_MIN_SPLITS 16 /* claimed tails: lanes of at least this many splits */
#define DV2_TAIL_MIN_DEALT 4   /* ... and of this many dealt tiles a warp */

template <typename T, int D>
struct dv2_shape {
    static constexpr int RS = D + 8;                    /* smem row stride, elements */
    static constexpr int KV = 16 * RS * (int)sizeof(T); /* bytes of K (or V) in a stage */
    static constexpr int STAGE = 2 * KV + 128;          /* K, V, 16 positions, 16 scores */
    static constexpr int Q = 16 * RS * (int)sizeof(T);
    static constexpr int META = DV2_WARPS * DV2_STAGES * 16;
    static constexpr int ANG = D / 2 * 8;               /* query (cos, sin) per pair */
    static constexpr int INV = D / 2 * 4;               /* key inverse frequency per pair */
    static constexpr int RING = DV2_WARPS * DV2_STAGES * STAGE;
    static constexpr int MERGE = DV2_WARPS * 16 * (D + 2) * 4;
    static constexpr int SMEM = Q + META + ANG + INV + (RING > MERGE ? RING : MERGE);
};

/* sin/cos of pair @i's angle at the query position @pos (v2): the inverse
 * frequency in double as exp2(-2i/D log2(theta)) / scale, then
 * rope_sincos_inv: the FP64 work in front of the first tile stays small. */
static __device__ __forceinline__ void q_sincos(int pos, double l2theta, double inv_scale, int i, int d,
                                                float *s, float *c)
{
    rope_sincos_inv(pos, exp2(-2.0 * i / d * l2theta) * inv_scale, s, c);
}

/* SINKD_DECODE_TRACE: thread 0 of each v2 block stamps the global timer
 * (ns) at entry, once the query is staged (the first tiles requested), after
 * its last tile and at its end; slot 4 is its role (0 past the lane's
 * splits, 1 a split, 2 the split that merged the lane). */
#define DEC_TRACE_N 5
static __device__ __forceinline__ void trace_stamp(const dec_params &P, int slot, long long v)
{
    if (P.trace && threadIdx.x == 0) {
        if (slot < 4)
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(v));
        P.trace[((size_t)blockIdx.y * gridDim.x + blockIdx.x) * DEC_TRACE_N + slot] = v;
    }
}

/* Rotate two adjacent elements (one rotary pair) packed in @r. */
template <typename T>
static __device__ __forceinline__ void rot_adj(uint32_t &r, int pos, float inv)
{
    float sn, cs;
    rope_sincos_fast(pos, inv, &sn, &cs);
    float2 x = mma_op<T>::unpack(r);
    r = mma_op<T>::pack(x.x * cs - x.y * sn, x.x * sn + x.y * cs);
}

/* Rotate the pairs (lo.x, hi.x) and (lo.y, hi.y) of a NEOX row. */
template <typename T>
static __device__ __forceinline__ void rot_neox(uint32_t &lo, uint32_t &hi, int pos, float inv0, float inv1)
{
    float s0, c0, s1, c1;
    rope_sincos_fast(pos, inv0, &s0, &c0);
    rope_sincos_fast(pos, inv1, &s1, &c1);
    float2 a = mma_op<T>::unpack(lo), b = mma_op<T>::unpack(hi);
    lo = mma_op<T>::pack(a.x * c0 - b.x * s0, a.y * c1 - b.y * s1);
    hi = mma_op<T>::pack(a.x * s0 + b.x * c0, a.y * s1 + b.y * c1);
}

/* Deferred scores of one tile (DEFER): rows 8 + r of @s hold the pending
 * queries' logits (pairs, a group of up to 4: r = 4 slot + head; else slot
 * 0, head r) for keys 8j + 2t4 + c (c = 2, 3 of the C fragment), lse_p
 * this thread's row's lse (inf for an idle row: exp2 gives 0). A
 * reduce-scatter over rows (bits 2 and 3 of the lane, 3 shuffles) leaves
 * lane 4g + t4 with key 8 (g & 1) + 2 t4 + (g >> 1) of its half: lanes 0-15
 * slot 0's (or, singles, half the group's), lanes 16-31 slot 1's (the other
 * half). Lane < 16 then updates its key's score, old value from the tile's
 * stage @ssc, slot 0 for keys below @n0, slot 1 below @n1 (pairs): one
 * 16-lane store a tile. @col: that key's column, worked out once a call. */
static __device__ __forceinline__ void defer_apply_tile(const dec_params &P, const float (&s)[2][4],
                                                        float lse_p, int n0, int n1, bool pairs, int4 mt,
                                                        const float *ssc, int lane, int col)
{
    const int g = lane / 4;
    const bool b0 = g & 1, b1 = g & 2;
    float v0 = ex2_ftz(s[0][2] - lse_p), v1 = ex2_ftz(s[0][3] - lse_p);
    float v2 = ex2_ftz(s[1][2] - lse_p), v3 = ex2_ftz(s[1][3] - lse_p);
    float r0 = __shfl_xor_sync(0xffffffffu, b0 ? v0 : v2, 4);
    float r1 = __shfl_xor_sync(0xffffffffu, b0 ? v1 : v3, 4);
    float w0 = (b0 ? v2 : v0) + r0, w1 = (b0 ? v3 : v1) + r1;
    float x = (b1 ? w1 : w0) + __shfl_xor_sync(0xffffffffu, b1 ? w0 : w1, 8);
    float y = __shfl_xor_sync(0xffffffffu, x, 16);
    const int k = mt.x + col;
    const bool in0 = k < n0, in1 = pairs && k < n1;
    if (P.row) { /* singles: x + y is the whole group's p */
        if (lane < 16 && col < mt.y && in0)
            P.row[(int64_t)mt.z * P.pool.page_tokens + mt.w + col] = x + y;
        return;
    }
    if (lane < 16 && col < mt.y && (in0 || in1)) {
        const bool add = P.score_op == SINKD_SCORE_ADD;
        float *dst = P.pool.score + (int64_t)mt.z * P.pool.page_tokens + mt.w;
        float a = pairs ? x : x + y, v = ssc[col];
        if (in0)
            v = add ? v + a : P.score_decay * v + a;
        if (in1)
            v = add ? v + y : P.score_decay * v + y;
        dst[col] = v;
    }
}

template <typename T, int D, bool DEFER, bool CLAIM>
__global__ void __launch_bounds__(DV2_WARPS * 32, 2)
decode_mma_kernel(dec_params P)
{
    using SH = dv2_shape<T, D>;
    constexpr int RS = SH::RS, W = DV2_WARPS, NST = DV2_STAGES, KH = D / 32;
    extern __shared__ __align__(16) unsigned char dv2_smem[];
    T *sQ = reinterpret_cast<T *>(dv2_smem);
    int4 *smeta = reinterpret_cast<int4 *>(dv2_smem + SH::Q);
    float2 *sang = reinterpret_cast<float2 *>(dv2_smem + SH::Q + SH::META);
    float *sinv = reinterpret_cast<float *>(dv2_smem + SH::Q + SH::META + SH::ANG);
    unsigned char *ring = dv2_smem + SH::Q + SH::META + SH::ANG + SH::INV;

    const int split = blockIdx.x, l = blockIdx.y;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t4 = lane % 4;
    trace_stamp(P, 0, 0);
    const int G = P.group, pt = P.pool.page_tokens, tpp = pt / 16;
    const bool neox = P.rope.style == SINKD_ROPE_NEOX;
    const bool cache = P.rope.mode == SINKD_ROPE_CACHE;
    const int seq = l / P.n_kv;
    const int len = P.ln.len[l];
    const dec_list L = lane_list(P, l, len);
    const int have = P.ln.page_off[l + 1] - P.ln.page_off[l];
    const int32_t *pids = P.ln.page_ids + P.ln.page_off[l];

    /* The lane's splits: a short lane takes fewer than the grid has (each
     * warp at least P.warp_tiles tiles), and the blocks past them leave
     * before any work: every split pays the prologue and the merge pays per
     * split, while a few tiles a warp cost less than either. */
    const int ntile = L.n * tpp;
    int S = P.n_split;
    if (P.warp_tiles > 0)
        S = min(S, max(1, (ntile + W * P.warp_tiles - 1) / (W * P.warp_tiles)));
    if (split >= S) {
        trace_stamp(P, 3, 0);
        trace_stamp(P, 4, 0);
        return; /* block-uniform, before any barrier */
    }

    /* This split's tiles [ub, ue) of the list, warp w taking ub + w,
     * ub + w + W, ... A lane of many long splits deals only the first
     * (100 - tail_pct)% of its tiles that way: the rest, from dyn0 on, go
     * one at a time to whichever warp of the lane asks first (claim_cnt), so
     * that splits of equal tile counts that stream at unequal speeds finish
     * together (the lane's merge waits for its slowest split). Lanes of a
     * few splits, or of a few tiles a warp, lost more to the claims than
     * the balance bought (bench/attention/NOTES.md, "Claimed tails"). */
    const int nst = (int)((long long)ntile * (100 - P.tail_pct) / (100LL * S * W));
    const bool dyn = CLAIM && P.tail_pct > 0 && S >= DV2_TAIL_MIN_SPLITS && nst >= DV2_TAIL_MIN_DEALT;
    int ub, ue, dyn0 = ntile;
    if (dyn) {
        ub = split * W * nst;
        ue = ub + W * nst;
        dyn0 = S * W * nst;
    } else {
        const int tps = (ntile + S - 1) / S;
        ub = min(ntile, split * tps);
        ue = min(ntile, ub + tps);
    }
    const int nk = ue - ub > warp ? (ue - ub - warp + W - 1) / W : 0;

    /* Tile @u's page, first lane token and valid rows (0: nothing to read). */
    auto meta_at = [&](int u, int &pg, int &tok0, int &nv) {
        pg = tok0 = nv = 0;
        int lp = L.page(u / tpp);
        if (lp >= 0 && lp < have) {
            int p = pids[lp], t = lp * pt + (u % tpp) * 16;
            if (p >= 0 && p < P.pool.n_pages && t < len) {
                pg = p;
                tok0 = t;
                nv = min(16, len - t);
            }
        }
    };
    /* Dealt tiles' metadata, 32 at a time: lane r holds ordinal kb + r's. */
    int m_pg = 0, m_tok = 0, m_nv = 0;
    auto load_meta = [&](int kb) {
        int u = ub + warp + (kb + lane) * W;
        m_pg = m_tok = m_nv = 0;
        if (u < ue)
            meta_at(u, m_pg, m_tok, m_nv);
    };
    /* Before the kernel ahead is done (pdl.cuh): the dense lane's first page
     * ids (lane arrays come from copies; a sparse list may be that kernel's
     * output) and the angles. The query and the pool's newest rows are the
     * output of kernels ahead: read after pdl_wait. */
    const bool meta_early = !L.sel;
    if (meta_early)
        load_meta(0);
    const int qp = cache ? len - 1 : P.q_pos[seq];
    /* Per pair: the query's (cos, sin), exact, and the keys' inverse
     * frequency (one powf a pair for the block, not D/8 a thread). */
    if (threadIdx.x < D / 2) {
        int i = threadIdx.x;
        float s, c;
        if (P.warp_tiles > 0)
            q_sincos(qp, P.rope_l2theta, P.rope_inv_scale, i, D, &s, &c);
        else
            rope_sincos_exact(qp, P.rope.theta, P.rope.scale, i, D, &s, &c);
        sang[i] = make_float2(c, s);
        sinv[i] = rope_inv_freq(P.rope.theta, P.rope.scale, i, D);
    }
    pdl_wait();

    /* Deferred scores (DEFER, G <= 8): the pending steps' query rows, as
     * their calls staged them, become rows 8..15 of the A operand, idle
     * otherwise, so the keys this call streams anyway also give their
     * probabilities under those queries; with their final lse they are exact
     * and go straight into the scores (ADD, DECAY) of the keys they had.
     * A group of up to 4 fits two steps (pairs), so an entry is applied
     * every other call, when both its slots are full; else every call, and
     * always in rows mode, where each step is a row of its own. */
    dec_defer de = {NULL, NULL, NULL};
    const bool pairs = G <= 4 && !P.row;
    int n0 = 0, n1 = 0, d_out = 0;
    bool apply = false;
    float lse_p = INFINITY; /* exp2(s - inf) = 0 for an idle row */
    if (DEFER) {
        de = defer_entry(P, l, sizeof(T));
        if (P.defer_apply) { /* independent loads: one round trip */
            n0 = de.len[0];
            n1 = de.len[1];
            int r = g, sl = pairs ? r / 4 : 0, hd = pairs ? r % 4 : r;
            float lp = hd < G ? de.lse[sl * G + hd] : INFINITY;
            lse_p = lp != -INFINITY ? lp : INFINITY;
            apply = pairs ? n0 > 0 && n1 > 0 : n0 > 0;
            d_out = pairs && !apply && n0 > 0 ? 1 : 0; /* where this step waits */
        }
        /* after pdl_wait, like the row: whatever ran before may read them */
        if (P.row && split == 0 && threadIdx.x == 0)
            P.row_len[l] = apply ? n0 : 0;
    }

    /* The query's rows, in flight with the first tiles: thread item j is
     * (head, pair) = divmod(threadIdx.x + 128 j, D / 2). */
    constexpr int QI = 16 * D / 2 / (W * 32);
    const float *qg = P.q + ((size_t)seq * P.n_q + (size_t)(l % P.n_kv) * G) * D;
    float2 qx[QI];
#pragma unroll
    for (int j = 0; j < QI; j++) {
        int it = threadIdx.x + j * W * 32, h = it / (D / 2), i = it % (D / 2);
        int e0 = neox ? i : 2 * i, e1 = neox ? i + D / 2 : 2 * i + 1;
        if (DEFER && h >= 8) {
            int r = h - 8, sl = pairs ? r / 4 : 0, hd = pairs ? r % 4 : r;
            const T *qp = reinterpret_cast<const T *>(de.q) + (sl * G + hd) * D;
            /* not gated on apply (a load away): rows >= G never reach an
             * output, and tiles read these rows only when applying */
            qx[j] = hd < G && P.defer_apply
                        ? make_float2(kv_traits<T>::to_f(qp[e0]), kv_traits<T>::to_f(qp[e1]))
                        : make_float2(0.0f, 0.0f);
        } else {
            qx[j] = h < G ? make_float2(qg[h * D + e0], qg[h * D + e1]) : make_float2(0.0f, 0.0f);
        }
    }

    unsigned char *wring = ring + (size_t)warp * NST * SH::STAGE;
    /* Claims: lane 0 asks for the next tail tile one issue before the warp
     * uses it, so the atomic's round trip overlaps a tile's work. */
    bool claims_out = false; /* warp-uniform: the lane's tail is all taken */
    int claim = 0;
    auto claim_next = [&]() {
        if (lane == 0)
            claim = atomicAdd(P.claim_cnt + l, 1);
    };
    auto issue = [&](int k) {
        int pg, tok0, nv;
        if (!dyn || k < nk) {
            if ((k & 31) == 0 && (k > 0 || !meta_early))
                load_meta(k);
            pg = __shfl_sync(0xffffffffu, m_pg, k & 31);
            tok0 = __shfl_sync(0xffffffffu, m_tok, k & 31);
            nv = __shfl_sync(0xffffffffu, m_nv, k & 31);
            if (dyn && k + 1 == nk)
                claim_next();
        } else {
            /* the claim asked for last time; nv = -1 past the tail ends
             * this warp's loop */
            int u = ntile;
            if (!claims_out) {
                if (k == 0)
                    claim_next(); /* no dealt tiles: nothing asked yet */
                u = dyn0 + __shfl_sync(0xffffffffu, claim, 0);
            }
            pg = tok0 = 0;
            nv = -1;
            if (u < ntile) {
                claim_next();
                meta_at(u, pg, tok0, nv);
            } else {
                claims_out = true;
            }
        }
        int st = k % NST, r0 = tok0 % pt;
        /* r0 once a tile, here: the apply and the logits read it from smeta */
        if (lane == 0)
            smeta[warp * NST + st] = make_int4(tok0, nv, pg, r0);
        if (nv > 0) {
            unsigned char *sk = wring + st * SH::STAGE;
            const T *kp = reinterpret_cast<const T *>(
                (const char *)P.pool.pages + (size_t)pg * P.pool.page_bytes) + (size_t)r0 * D;
            const T *vp = kp + (size_t)pt * D;
#pragma unroll
            for (int i = 0; i < D / 16; i++) { /* 16 rows of D/8 chunks, 32 lanes */
                int c = lane + 32 * i, row = c / (D / 8), ch = c % (D / 8);
                int nb = row < nv ? 16 : 0;
                cp_async16(sk + row * RS * sizeof(T) + ch * 16, kp + row * D + ch * 8, nb);
                cp_async16(sk + SH::KV + row * RS * sizeof(T) + ch * 16, vp + row * D + ch * 8, nb);
            }
            if (!cache && lane < 4)
                cp_async16(sk + 2 * SH::KV + lane * 16, P.pool.pos + (int64_t)pg * pt + r0 + lane * 4, 16);
            if (DEFER && apply && !P.row && lane >= 4 && lane < 8)
                cp_async16(sk + 2 * SH::KV + 64 + (lane - 4) * 16,
                           P.pool.score + (int64_t)pg * pt + r0 + (lane - 4) * 4, 16);
        }
        cp_async_commit();
    };
#pragma unroll
    for (int k = 0; k < NST - 1; k++)
        issue(k);
    __syncthreads(); /* the angles */
    /* Q: rotated at the query position, scaled, rounded; rows >= G zero. */
#pragma unroll
    for (int j = 0; j < QI; j++) {
        int it = threadIdx.x + j * W * 32, h = it / (D / 2), i = it % (D / 2);
        int e0 = neox ? i : 2 * i, e1 = neox ? i + D / 2 : 2 * i + 1;
        if (DEFER && h >= 8) { /* staged before: exact in f32 */
            sQ[h * RS + e0] = kv_traits<T>::from_f(qx[j].x);
            sQ[h * RS + e1] = kv_traits<T>::from_f(qx[j].y);
            continue;
        }
        float2 cs = sang[i];
        sQ[h * RS + e0] = kv_traits<T>::from_f((qx[j].x * cs.x - qx[j].y * cs.y) * P.qscale);
        sQ[h * RS + e1] = kv_traits<T>::from_f((qx[j].x * cs.y + qx[j].y * cs.x) * P.qscale);
    }

    /* Inverse frequencies of the pairs this thread rotates (see the tile
     * loop): ADJACENT f = 2*kstep + half, NEOX f = 4*kstep + 2*half + b. */
    float inv[D / 8];
#pragma unroll
    for (int f = 0; f < D / 8; f++) {
        int pair = neox ? 16 * (f / 4) + 8 * ((f / 2) % 2) + 2 * t4 + f % 2
                        : 8 * (f / 2) + 4 * (f % 2) + t4;
        inv[f] = sinv[pair];
    }

    __syncthreads(); /* sQ complete */
    uint32_t qa[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        ldsm_x4(qa[kk], sQ + ((lane / 8) % 2 * 8 + lane % 8) * RS + kk * 16 + (lane / 16) * 8);

    float o[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; j++)
        o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
    trace_stamp(P, 1, 0);
    /* ldmatrix row addresses: K non-transposed (keys x dims), V transposed */
    const int k_off = ((lane / 16) * 8 + lane % 8) * RS + ((lane / 8) % 2) * 8;
    /* the key a lane < 16 scores in defer_apply_tile: 8 (g & 1) + 2 t4 +
     * (g >> 1), g = lane / 4 */
    const int dcol = 8 * ((lane >> 2) & 1) + 2 * (lane & 3) + ((lane >> 3) & 1);
    const int v_off = ((lane / 8) % 2 * 8 + lane % 8) * RS + (lane / 16) * 8;

    for (int k = 0; dyn || k < nk; k++) {
        issue(k + NST - 1);
        cp_async_wait<NST - 1>();
        __syncwarp();
        const int st = k % NST;
        const int4 mt = smeta[warp * NST + st];
        if (CLAIM && mt.y < 0)
            break; /* warp-uniform: the claims ran out */
        if (mt.y > 0) {
            const unsigned char *sk = wring + st * SH::STAGE;
            const T *sK = reinterpret_cast<const T *>(sk);
            const T *sV = reinterpret_cast<const T *>(sk + SH::KV);
            const int *spos = reinterpret_cast<const int *>(sk + 2 * SH::KV);
            const int pos0 = cache ? mt.x + g : spos[g];
            const int pos1 = cache ? mt.x + 8 + g : spos[8 + g];

            float s[2][4];
#pragma unroll
            for (int j = 0; j < 2; j++)
                s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
            for (int kh = 0; kh < KH; kh++) {
                /* k-steps kh and kh + D/32 hold the two halves of a NEOX pair */
                uint32_t lo[4], hi[4];
                ldsm_x4(lo, sK + k_off + kh * 16);
                ldsm_x4(hi, sK + k_off + (kh + KH) * 16);
#pragma unroll
                for (int r = 0; r < 4; r++) {
                    int pos = r < 2 ? pos0 : pos1, half = r % 2;
                    if (neox) {
                        rot_neox<T>(lo[r], hi[r], pos, inv[4 * kh + 2 * half], inv[4 * kh + 2 * half + 1]);
                    } else {
                        rot_adj<T>(lo[r], pos, inv[2 * kh + half]);
                        rot_adj<T>(hi[r], pos, inv[2 * (kh + KH) + half]);
                    }
                }
                mma_op<T>::run(s[0], qa[kh], lo[0], lo[1]);
                mma_op<T>::run(s[1], qa[kh], lo[2], lo[3]);
                mma_op<T>::run(s[0], qa[kh + KH], hi[0], hi[1]);
                mma_op<T>::run(s[1], qa[kh + KH], hi[2], hi[3]);
            }

            /* Mask rows past the lane; logits of rows < G for the scores. */
#pragma unroll
            for (int j = 0; j < 2; j++)
#pragma unroll
                for (int c = 0; c < 4; c++)
                    if (j * 8 + 2 * t4 + (c & 1) >= mt.y)
                        s[j][c] = -INFINITY;
            if (DEFER && apply)
                defer_apply_tile(P, s, lse_p, n0, n1, pairs, mt,
                                 reinterpret_cast<const float *>(sk + 2 * SH::KV + 64), lane, dcol);
            if (P.logits) {
                float *lt = P.logits + ((int64_t)mt.z * pt + mt.w) * G; /* the tile's block */
                if (g < G)
                    *reinterpret_cast<float4 *>(lt + g * 16 + t4 * 4) =
                        make_float4(s[0][0], s[0][1], s[1][0], s[1][1]);
                if (g + 8 < G)
                    *reinterpret_cast<float4 *>(lt + (g + 8) * 16 + t4 * 4) =
                        make_float4(s[0][2], s[0][3], s[1][2], s[1][3]);
            }

            online_softmax(s, o, mrow, lrow, G > 8 ? 2 : 1);
            uint32_t pa[4];
            pa[0] = mma_op<T>::pack(s[0][0], s[0][1]);
            pa[1] = mma_op<T>::pack(s[0][2], s[0][3]);
            pa[2] = mma_op<T>::pack(s[1][0], s[1][1]);
            pa[3] = mma_op<T>::pack(s[1][2], s[1][3]);
#pragma unroll
            for (int j2 = 0; j2 < D / 16; j2++) {
                uint32_t vb[4];
                ldsm_x4_t(vb, sV + v_off + j2 * 16);
                mma_op<T>::run(o[2 * j2], pa, vb[0], vb[1]);
                mma_op<T>::run(o[2 * j2 + 1], pa, vb[2], vb[3]);
            }
        }
        __syncwarp(); /* the stage is refilled by the next issue */
    }
    cp_async_wait<0>();
    trace_stamp(P, 2, 0);
    /* Small batches let the next kernel (the output projection's matvec)
     * launch once every block is past its tiles, so its weight loads
     * overlap the merge. Larger ones do not: back to back, 16 x 4K, the
     * early launch measured 9% slower, and past 4 rows the next kernel is
     * cuBLAS's, which cannot start early anyway. (Larger batches are not
     * launched early either: decode_mma_launch.) */
    if (P.early_next)
        pdl_trigger();

#pragma unroll
    for (int h = 0; h < 2; h++) {
        lrow[h] += __shfl_xor_sync(0xffffffffu, lrow[h], 1);
        lrow[h] += __shfl_xor_sync(0xffffffffu, lrow[h], 2);
    }

    /* Merge the warps: rows < G of each warp's (O, m, l) via shared memory. */
    __syncthreads(); /* every warp is done with the ring */
    float *s_o = reinterpret_cast<float *>(ring);
    float *s_m = s_o + W * 16 * D, *s_l = s_m + W * 16;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int row = g + 8 * h;
        if (row >= G)
            continue;
        float *so = s_o + (warp * 16 + row) * D;
#pragma unroll
        for (int j = 0; j < D / 8; j++)
            *reinterpret_cast<float2 *>(so + j * 8 + 2 * t4) = make_float2(o[j][2 * h], o[j][2 * h + 1]);
        if (t4 == 0) {
            s_m[warp * 16 + row] = mrow[h];
            s_l[warp * 16 + row] = lrow[h];
        }
    }
    __syncthreads();
    for (int it = threadIdx.x; it < G * D; it += blockDim.x) {
        int h = it / D, e = it % D;
        float m = -INFINITY;
#pragma unroll
        for (int w = 0; w < W; w++)
            m = fmaxf(m, s_m[w * 16 + h]);
        float lsum = 0.0f, a = 0.0f;
        if (m != -INFINITY) {
#pragma unroll
            for (int w = 0; w < W; w++) {
                float f = exp2f(s_m[w * 16 + h] - m);
                lsum += s_l[w * 16 + h] * f;
                a += s_o[(w * 16 + h) * D + e] * f;
            }
        }
        if (S == 1) {
            size_t oi = ((size_t)seq * P.n_q + (size_t)(l % P.n_kv) * G + h) * D + e;
            P.out[oi] = lsum > 0.0f ? a / lsum : 0.0f;
            float lse = lsum > 0.0f ? m + log2f(lsum) : -INFINITY;
            if (e == 0 && P.lse)
                P.lse[(size_t)l * G + h] = lse;
            if (DEFER && e == 0)
                de.lse[d_out * G + h] = lse;
        } else {
            size_t pi = ((size_t)l * P.n_split + split) * G + h;
            P.part_acc[pi * D + e] = a;
            if (e == 0) {
                P.part_ml[pi * 2] = m;
                P.part_ml[pi * 2 + 1] = lsum;
            }
        }
    }

    int role = 1;
    if (S > 1) {
        /* Publish the partial; the lane's last block merges. */
        int *s_last = reinterpret_cast<int *>(smeta);
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) {
            int last = atomicAdd(P.split_cnt + l, 1) == S - 1;
            if (last) { /* every block of the lane has counted: no claims left */
                P.split_cnt[l] = 0;
                P.claim_cnt[l] = 0;
            }
            *s_last = last;
        }
        __syncthreads();
        if (*s_last) { /* block-uniform */
            __threadfence();
            merge_lane(P, l, S, s_o, DEFER ? de.lse + d_out * G : NULL);
            role = 2;
        }
    }
    /* Leave this call's probabilities pending: the lane's last block, after
     * every block of the lane read what was pending before. */
    if (DEFER && (S == 1 || role == 2)) {
        T *dq = reinterpret_cast<T *>(de.q) + d_out * G * D;
        for (int it = threadIdx.x; it < G * D; it += blockDim.x)
            dq[it] = sQ[(it / D) * RS + it % D];
        if (threadIdx.x == 0) {
            de.len[d_out] = len;
            if (apply && pairs)
                de.len[1] = 0; /* both applied; this step waits in slot 0 */
        }
    }
    trace_stamp(P, 3, 0);
    trace_stamp(P, 4, role);
}

/* One block per (lane, head of the group), one thread per element (v1). */
__global__ void decode_merge_kernel(dec_params P)
{
    int l = blockIdx.x, gh = blockIdx.y, G = P.group, S = P.n_split;
    int seq = l / P.n_kv;
    float m = -INFINITY;
    for (int s = 0; s < S; s++)
        m = fmaxf(m, P.part_ml[(((size_t)l * S + s) * G + gh) * 2]);
    float lsum = 0.0f;
    if (m != -INFINITY)
        for (int s = 0; s < S; s++) {
            size_t pi = ((size_t)l * S + s) * G + gh;
            lsum += P.part_ml[pi * 2 + 1] * exp2f(P.part_ml[pi * 2] - m);
        }
    for (int e = threadIdx.x; e < P.d; e += blockDim.x) {
        float a = 0.0f;
        if (m != -INFINITY)
            for (int s = 0; s < S; s++) {
                size_t pi = ((size_t)l * S + s) * G + gh;
                a += P.part_acc[pi * P.d + e] * exp2f(P.part_ml[pi * 2] - m);
            }
        size_t oi = ((size_t)seq * P.n_q + (size_t)(l % P.n_kv) * G + gh) * P.d + e;
        P.out[oi] = lsum > 0.0f ? a / lsum : 0.0f;
    }
    if (threadIdx.x == 0 && P.lse)
        P.lse[(size_t)l * G + gh] = lsum > 0.0f ? m + log2f(lsum) : -INFINITY;
}

/* Grid-stride over the lane's attended keys: p = sum_h exp2(s - lse). */
__global__ void decode_score_kernel(dec_params P)
{
    int l = blockIdx.y, pt = P.pool.page_tokens, G = P.group;
    int len = P.ln.len[l];
    pdl_wait(); /* the logits and the lse are the attention's output */
    dec_list L = lane_list(P, l, len);
    int have = P.ln.page_off[l + 1] - P.ln.page_off[l];
    for (int kk = blockIdx.x * blockDim.x + threadIdx.x; kk < L.n * pt;
         kk += gridDim.x * blockDim.x) {
        int lp = L.page(kk / pt), i = kk % pt;
        int tok = lp * pt + i;
        if (lp < 0 || lp >= have || tok >= len)
            continue;
        int pg = P.ln.page_ids[P.ln.page_off[l] + lp];
        int64_t idx = (int64_t)pg * pt + i;
        if (pg < 0 || pg >= P.pool.n_pages || idx >= P.logits_cap)
            continue;
        const float *lg = P.logits + (P.logits_tiled ? logit_tiled(idx, 0, G) : idx * G);
        const int hs = P.logits_tiled ? 16 : 1;
        float p = 0.0f;
        for (int h = 0; h < G; h++)
            p += exp2f(lg[h * hs] - P.lse[(size_t)l * G + h]);
        float *sc = P.pool.score + idx;
        if (P.score_op == SINKD_SCORE_WRITE)
            *sc = p;
        else if (P.score_op == SINKD_SCORE_ADD)
            *sc += p;
        else
            *sc = P.score_decay * *sc + p;
    }
}

template <typename T>
static int decode_launch(sinkd_cuda *c, const dec_params &P, dim3 grid)
{
    int p2 = P.d <= 64 ? 8 : P.d <= 128 ? 16 : 32;
    if (p2 == 8)
        decode_kernel<T, 8><<<grid, DEC_WARPS * 32, 0, c->stream>>>(P);
    else if (p2 == 16)
        decode_kernel<T, 16><<<grid, DEC_WARPS * 32, 0, c->stream>>>(P);
    else
        decode_kernel<T, 32><<<grid, DEC_WARPS * 32, 0, c->stream>>>(P);
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}

template <typename T, int D, bool DEFER, bool CLAIM>
static int decode_mma_launch_as(sinkd_cuda *c, const dec_params &P, dim3 grid)
{
    constexpr int smem = dv2_shape<T, D>::SMEM;
    /* The shared-memory opt-in belongs to the function, not the call: set
     * once (a function-local static is initialised once, thread-safely),
     * which keeps a host call off every decode step. */
    static const cudaError_t attr = cudaFuncSetAttribute(
        decode_mma_kernel<T, D, DEFER, CLAIM>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    SINKD_CUDA_TRY(attr);
    /* Early start for small batches only: at 16 sequences x 32K the
     * policy bench's whole step measured 9% slower with it (8.9 -> 9.7 ms),
     * where the kernel ahead is a tiny append and nothing is gained. */
    SINKD_CUDA_TRY(pdl_launch(pdl_env_on() && P.early_next, c->stream, decode_mma_kernel<T, D, DEFER, CLAIM>,
                              grid, dim3(DV2_WARPS * 32), smem, P));
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}

/* Claimed tails are built into their own kernels, run only where a lane can
 * claim (a grid of DV2_TAIL_MIN_SPLITS splits or more): with the claim code
 * in every kernel, the deferred-score decode at 16 x 32K (2 splits, never
 * claiming) put h2o's step 10% over full's instead of 3-5%
 * (bench/policy/NOTES.md). */
template <typename T, int D, bool DEFER>
static int decode_mma_launch(sinkd_cuda *c, const dec_params &P, dim3 grid)
{
    if (P.tail_pct > 0 && P.n_split >= DV2_TAIL_MIN_SPLITS)
        return decode_mma_launch_as<T, D, DEFER, true>(c, P, grid);
    return decode_mma_launch_as<T, D, DEFER, false>(c, P, grid);
}

/* v2 needs tiles of 16 keys inside a page, 16-byte aligned rows and
 * positions, and a head_dim it was built for; anything else runs v1. */
static bool decode_mma_fits(const sinkd_decode_args *a)
{
    const sinkd_kv_pool *pl = a->pool;
    return (a->head_dim == 64 || a->head_dim == 128) && pl->page_tokens % 16 == 0 &&
           pl->page_bytes % 16 == 0 && (uintptr_t)pl->pages % 16 == 0 &&
           (a->rope.mode == SINKD_ROPE_CACHE || (uintptr_t)pl->pos % 16 == 0);
}

template <bool DEFER>
static int decode_mma_dispatch_t(sinkd_cuda *c, const dec_params &P, dim3 grid, uint8_t dtype)
{
    if (dtype == SINKD_F16)
        return P.d == 64 ? decode_mma_launch<__half, 64, DEFER>(c, P, grid)
                         : decode_mma_launch<__half, 128, DEFER>(c, P, grid);
    return P.d == 64 ? decode_mma_launch<__nv_bfloat16, 64, DEFER>(c, P, grid)
                     : decode_mma_launch<__nv_bfloat16, 128, DEFER>(c, P, grid);
}

static int decode_mma_dispatch(sinkd_cuda *c, const dec_params &P, dim3 grid, uint8_t dtype)
{
    return P.defer ? decode_mma_dispatch_t<true>(c, P, grid, dtype)
                   : decode_mma_dispatch_t<false>(c, P, grid, dtype);
}

/* Splits per lane for @units blocks of work (lanes x head chunks) on a
 * machine that runs @slots blocks at once. Blocks of equal work run in
 * waves of @slots, so a call takes ceil(units * S / slots) block times for
 * units * S blocks' worth of work: take the fewest splits whose wave
 * efficiency is within 4% of the best S <= 64 reaches (8 x 16K: 64 lanes x 4
 * = 256 blocks in one wave of 264, where rounding up to fill the machine
 * gave 5 splits = 320 blocks and a second wave of 56). */
static int decode_splits(int units, int slots)
{
    double eff[65], best = 0.0;
    for (int s = 1; s <= 64; s++) {
        long blocks = (long)units * s, waves = (blocks + slots - 1) / slots;
        eff[s] = (double)blocks / ((double)waves * slots);
        if (eff[s] > best)
            best = eff[s];
    }
    for (int s = 1; s <= 64; s++)
        if (eff[s] >= best - 0.04)
            return s;
    return 1;
}

/* SINKD_DECODE_SPLITS, read once: the fewest tiles a warp of a v2 split
 * takes (a lane of n tiles uses at most ceil(n / (4 * that)) of the grid's
 * splits), 1..64, default DEC_WARP_TILES; "legacy" (0) keeps v3: every lane
 * takes all the grid's splits and the query angles come from double pow
 * and sincos. One tile a warp: a short lane (the 1B model's 576 keys at
 * batch 1) finishes sooner over more splits than it pays in their merge,
 * 7.7 against 9.1 us with two (bench/attention/NOTES.md). */
#define DEC_WARP_TILES 1
static int decode_env_warp_tiles(void)
{
    const char *env = getenv("SINKD_DECODE_SPLITS");
    if (!env || !*env || strcmp(env, "auto") == 0)
        return DEC_WARP_TILES;
    if (strcmp(env, "legacy") == 0) {
        fprintf(stderr, "<6>decode: SINKD_DECODE_SPLITS=legacy\n");
        return 0;
    }
    char *end;
    long v = strtol(env, &end, 10);
    if (*end || v < 1 || v > 64) {
        fprintf(stderr, "<4>decode: SINKD_DECODE_SPLITS=%s is not legacy, auto or 1..64; using auto\n", env);
        return DEC_WARP_TILES;
    }
    return (int)v;
}

/* SINKD_DECODE_TAIL, read once: the percent of a long split lane's tiles
 * that its warps claim one at a time instead of being dealt (v2), 0..90,
 * default DEC_TAIL_PCT; 0 deals them all. */
#define DEC_TAIL_PCT 10
static int decode_env_tail(void)
{
    const char *env = getenv("SINKD_DECODE_TAIL");
    if (!env || !*env)
        return DEC_TAIL_PCT;
    char *end;
    long v = strtol(env, &end, 10);
    if (*end || v < 0 || v > 90) {
        fprintf(stderr, "<4>decode: SINKD_DECODE_TAIL=%s is not 0..90; using %d\n", env, DEC_TAIL_PCT);
        return DEC_TAIL_PCT;
    }
    return (int)v;
}

/* SINKD_DECODE_TRACE=1 (read once): each v2 call outside a graph recording
 * stamps its blocks (trace_stamp), then syncs the stream and prints one
 * line of the timeline, in us after the first block began. A diagnostic:
 * it serialises the host with the GPU. */
static bool decode_env_trace(void)
{
    const char *env = getenv("SINKD_DECODE_TRACE");
    return env && strcmp(env, "1") == 0;
}

static int decode_trace_begin(sinkd_cuda *c, dec_params *P, size_t blocks)
{
    cudaStreamCaptureStatus st;
    SINKD_CUDA_TRY(cudaStreamIsCapturing(c->stream, &st));
    if (st != cudaStreamCaptureStatusNone)
        return 0;
    size_t bytes = blocks * DEC_TRACE_N * sizeof(long long);
    SINKD_CUDA_TRY(cudaMallocAsync((void **)&P->trace, bytes, c->stream));
    SINKD_CUDA_TRY(cudaMemsetAsync(P->trace, 0, bytes, c->stream));
    return 0;
}

static int decode_trace_end(sinkd_cuda *c, const dec_params &P, size_t blocks)
{
    long long *h = (long long *)malloc(blocks * DEC_TRACE_N * sizeof(long long));
    cudaError_t e = h ? cudaMemcpyAsync(h, P.trace, blocks * DEC_TRACE_N * sizeof(long long),
                                        cudaMemcpyDeviceToHost, c->stream)
                      : cudaErrorMemoryAllocation;
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(c->stream);
    cudaFreeAsync(P.trace, c->stream);
    if (e == cudaSuccess) {
        long long t0 = LLONG_MAX, entry = 0, staged = 0, looped = 0, split_end = 0, merge_end = 0;
        long long first_end = LLONG_MAX;
        double pro = 0.0, loop = 0.0, merge = 0.0;
        int active = 0, merges = 0;
        for (size_t b = 0; b < blocks; b++)
            t0 = h[b * DEC_TRACE_N] < t0 ? h[b * DEC_TRACE_N] : t0;
        for (size_t b = 0; b < blocks; b++) {
            const long long *r = h + b * DEC_TRACE_N;
            entry = r[0] - t0 > entry ? r[0] - t0 : entry;
            if (r[4] == 0)
                continue;
            active++;
            pro += (double)(r[1] - r[0]);
            loop += (double)(r[2] - r[1]);
            staged = r[1] - t0 > staged ? r[1] - t0 : staged;
            looped = r[2] - t0 > looped ? r[2] - t0 : looped;
            first_end = r[3] - t0 < first_end ? r[3] - t0 : first_end;
            if (r[4] == 2) {
                merges++;
                merge += (double)(r[3] - r[2]);
                merge_end = r[3] - t0 > merge_end ? r[3] - t0 : merge_end;
            } else {
                split_end = r[3] - t0 > split_end ? r[3] - t0 : split_end;
            }
        }
        int n = active > 0 ? active : 1;
        fprintf(stderr,
                "<7>decode trace: grid %d x %d, %d blocks active, %d merged; us from the first block: "
                "last entry %.2f, staged %.2f, tiles done %.2f, first block done %.2f, splits done %.2f, "
                "merged %.2f; "
                "per active block: prologue %.2f, tiles %.2f, merge %.2f\n",
                P.n_split, (int)(blocks / P.n_split), active, merges, entry * 1e-3, staged * 1e-3,
                looped * 1e-3, active ? first_end * 1e-3 : 0.0, split_end * 1e-3, merge_end * 1e-3,
                pro / n * 1e-3, loop / n * 1e-3, merges ? merge / merges * 1e-3 : 0.0);
    }
    free(h);
    return sinkd_cuda__err(e);
}

int sinkd_cuda_attn_decode(sinkd_cuda *c, const sinkd_decode_args *a)
{
    static const int warp_tiles = decode_env_warp_tiles(); /* thread-safe, once */
    static const bool trace = decode_env_trace();
    static const int tail_pct = decode_env_tail();
    if (!a)
        return -EINVAL;
    int rc = sinkd_cuda_check_attn(a->pool, a->head_dim, a->n_q_heads, a->n_kv_heads, &a->rope);
    if (rc)
        return rc;
    if (a->n_seqs < 0 || !a->q || !a->out)
        return -EINVAL;
    if (a->lanes.n_lanes != a->n_seqs * a->n_kv_heads || a->lanes.n_lanes > 65535)
        return -EINVAL;
    if (a->rope.mode == SINKD_ROPE_ABSOLUTE && !a->q_pos)
        return -EINVAL;
    if ((a->sel_off != NULL) != (a->sel_pages != NULL))
        return -EINVAL;
    if (a->score_op < SINKD_SCORE_NONE || a->score_op > SINKD_SCORE_DECAY)
        return -EINVAL;
    if (a->defer && (a->score_op == SINKD_SCORE_NONE || a->sel_off || a->defer_layer < 0 ||
                     a->defer_layer >= a->defer_layers))
        return -EINVAL;
    if (a->row && (!a->defer || !a->row_len || a->score_op != SINKD_SCORE_WRITE))
        return -EINVAL;
    if (a->n_seqs == 0)
        return 0;
    if (!a->lanes.len || !a->lanes.page_off || !a->lanes.page_ids)
        return -EINVAL;

    const int G = a->n_q_heads / a->n_kv_heads;
    const int nl = a->lanes.n_lanes;
    const int nhc = (G + DEC_HG - 1) / DEC_HG;
    dec_params P;
    memset(&P, 0, sizeof P);
    P.pool = *a->pool;
    P.ln = a->lanes;
    P.n_kv = a->n_kv_heads;
    P.group = G;
    P.d = a->head_dim;
    P.n_q = a->n_q_heads;
    P.rope = a->rope;
    P.qscale = a->softmax_scale * DEC_LOG2E;
    P.q = a->q;
    P.out = a->out;
    P.q_pos = a->q_pos;
    P.sel_off = a->sel_off;
    P.sel_pages = a->sel_pages;

    /* v1: 3 blocks of 168 registers an SM, heads in chunks of 4; v2: 2
     * blocks (shared memory), all heads in one block. */
    const bool mma = decode_mma_fits(a);
    const int hblocks = mma ? 1 : nhc;
    int S = decode_splits(nl * hblocks, c->n_sm * (mma ? 2 : 3));
    if (S > a->pool->n_pages)
        S = a->pool->n_pages;
    if (S < 1)
        S = 1;
    P.n_split = S;
    P.warp_tiles = warp_tiles;
    P.tail_pct = warp_tiles > 0 ? tail_pct : 0;
    P.rope_l2theta = log2((double)a->rope.theta);
    P.rope_inv_scale = 1.0 / (double)a->rope.scale;
    P.logits_tiled = mma;
    P.score_op = a->score_op;
    P.score_decay = a->score_decay;
    P.early_next = a->n_seqs <= DEC_EARLY_NEXT_SEQS;
    /* Deferred: no logits, no score pass; elsewhere scores come now. */
    const bool defer = a->defer && mma && sinkd_defer_takes(G, a->head_dim, a->pool->page_tokens) &&
                       (uintptr_t)a->pool->score % 16 == 0;
    if (defer) {
        P.defer = a->defer;
        P.defer_layer = a->defer_layer;
        P.defer_apply = a->score_op == SINKD_SCORE_ADD || a->score_op == SINKD_SCORE_DECAY || a->row;
        P.row = a->row;
        P.row_len = a->row_len;
        const size_t es = sinkd_dtype_bytes((sinkd_dtype)a->pool->dtype, 1);
        P.defer_lse_off = sinkd_defer_lse_off(a->defer_layers, a->n_kv_heads, G, a->head_dim, es);
        P.defer_len_off = sinkd_defer_len_off(a->defer_layers, a->n_kv_heads, G, a->head_dim, es);
    }
    if (a->row && !defer)
        return -ENOTSUP; /* a row is only ever a deferred one */
    const int score_op = defer ? SINKD_SCORE_NONE : a->score_op;

    size_t need_lse = score_op != SINKD_SCORE_NONE ? (size_t)nl * G * sizeof(float) : 0;
    /* part: the per-lane split counters (a fixed prefix, zeroed whenever
     * the buffer is new; each call leaves them at zero), then the partials. */
    size_t need_part = S > 1 ? DEC_CNT_BYTES + (size_t)nl * S * G * (a->head_dim + 2) * sizeof(float) : 0;
    if (need_part) {
        size_t had = c->part.bytes; /* reserve only ever grows: a new size is a new buffer */
        rc = sinkd_cuda_buf_reserve(c, &c->part, need_part);
        if (rc)
            return rc;
        if (c->part.bytes != had)
            SINKD_CUDA_TRY(cudaMemsetAsync(c->part.p, 0, DEC_CNT_BYTES, c->stream));
        P.split_cnt = (int *)c->part.p;
        P.claim_cnt = P.split_cnt + DEC_CNT_LANES;
        P.part_acc = (float *)((char *)c->part.p + DEC_CNT_BYTES);
        P.part_ml = P.part_acc + (size_t)nl * S * G * a->head_dim;
    }
    if (need_lse) {
        /* Lanes own disjoint pages: a call attends to at most the pool. */
        int64_t cap = (int64_t)a->pool->n_pages * a->pool->page_tokens;
        rc = sinkd_cuda_buf_reserve(c, &c->lse, need_lse);
        if (!rc)
            rc = sinkd_cuda_buf_reserve(c, &c->logits, (size_t)cap * G * sizeof(float));
        if (rc)
            return rc;
        P.lse = (float *)c->lse.p;
        P.logits = (float *)c->logits.p;
        P.logits_cap = cap;
    }

    dim3 grid(S, nl, hblocks);
    if (mma && trace) {
        rc = decode_trace_begin(c, &P, (size_t)S * nl);
        if (!rc)
            rc = decode_mma_dispatch(c, P, grid, a->pool->dtype);
        if (P.trace) {
            int rt = decode_trace_end(c, P, (size_t)S * nl);
            rc = rc ? rc : rt;
        }
    } else if (mma)
        rc = decode_mma_dispatch(c, P, grid, a->pool->dtype);
    else
        rc = a->pool->dtype == SINKD_F16 ? decode_launch<__half>(c, P, grid)
                                         : decode_launch<__nv_bfloat16>(c, P, grid);
    if (rc)
        return rc;
    if (S > 1 && !mma) {
        decode_merge_kernel<<<dim3(nl, G), a->head_dim, 0, c->stream>>>(P);
        SINKD_CUDA_CHECK_LAUNCH();
    }
    if (score_op != SINKD_SCORE_NONE) {
        /* a thread per key up to 16 * 256 threads an SM in all (one pass
         * at 1 x 64K): each thread's loads form a dependent chain */
        int sx = (c->n_sm * 16 + nl - 1) / nl;
        SINKD_CUDA_TRY(pdl_launch(pdl_env_on(), c->stream, decode_score_kernel,
                                  dim3(sx < 1 ? 1 : sx > 512 ? 512 : sx, nl), dim3(256), 0, P));
        SINKD_CUDA_CHECK_LAUNCH();
    }
    return 0;
}
