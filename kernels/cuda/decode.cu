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
 * Bytes: 2*D*esize per key (+ 8*G per key with scores: logits stored in
 * pass 1, read in pass 3), FLOPs ~4*G*D per key: memory bound at any G<=16.
 *
 * v1 (this file): split-KV. Grid (S splits, lanes, head chunks of <= 4).
 * A warp owns chunks of keys; P2 threads read one key row with 16-byte loads
 * (8 elements a thread), NP keys in flight per thread before any math. Each
 * thread keeps an online softmax (log2 domain) for its key slot; slots,
 * then warps, are merged at the end. With S > 1 the partials (acc, m, l) go
 * to a workspace and decode_merge_kernel combines them. The score pass
 * (decode_score_kernel) reads the stored logits and the final lse.
 */
#include <math.h>

#include "common.cuh"

#define DEC_WARPS 4
#define DEC_HG 4        /* query heads per block */
#define DEC_NP 4        /* keys per thread loaded before use */
#define DEC_LOG2E 1.4426950408889634f

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
    float *logits;           /* [list key][G] or NULL */
    int64_t logits_cap;      /* keys the logits buffer holds */
    int n_split;
};

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
#pragma unroll
    for (int m = 0; m < 4; m++)
        inv[m] = rope_inv_freq(P.rope.theta, P.rope.scale, 4 * t + m, d);

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
#pragma unroll
            for (int m = 0; m < 4; m++) {
                float sn, cs;
                rope_sincos_fast(kpos[r], inv[m], &sn, &cs);
                float x0 = kx[r][2 * m], x1 = kx[r][2 * m + 1];
                kx[r][2 * m] = x0 * cs - x1 * sn;
                kx[r][2 * m + 1] = x0 * sn + x1 * cs;
            }
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
            if (P.logits && ok[r] && t == 0) {
                int kk = c0 + r * KPP + sub;
                int64_t idx = (int64_t)L.base * pt + kk;
                if (idx < P.logits_cap)
                    for (int h = 0; h < hg; h++)
                        P.logits[idx * P.group + hbase + h] = s[r][h];
            }
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

/* One block per (lane, head of the group), one thread per element. */
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
__global__ void decode_score_kernel(dec_params P, int op, float decay)
{
    int l = blockIdx.y, pt = P.pool.page_tokens, G = P.group;
    int len = P.ln.len[l];
    dec_list L = lane_list(P, l, len);
    int have = P.ln.page_off[l + 1] - P.ln.page_off[l];
    for (int kk = blockIdx.x * blockDim.x + threadIdx.x; kk < L.n * pt;
         kk += gridDim.x * blockDim.x) {
        int lp = L.page(kk / pt), i = kk % pt;
        int tok = lp * pt + i;
        if (lp < 0 || lp >= have || tok >= len)
            continue;
        int pg = P.ln.page_ids[P.ln.page_off[l] + lp];
        int64_t idx = (int64_t)L.base * pt + kk;
        if (pg < 0 || pg >= P.pool.n_pages || idx >= P.logits_cap)
            continue;
        float p = 0.0f;
        for (int h = 0; h < G; h++)
            p += exp2f(P.logits[idx * G + h] - P.lse[(size_t)l * G + h]);
        float *sc = P.pool.score + (int64_t)pg * pt + i;
        if (op == SINKD_SCORE_WRITE)
            *sc = p;
        else if (op == SINKD_SCORE_ADD)
            *sc += p;
        else
            *sc = decay * *sc + p;
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

int sinkd_cuda_attn_decode(sinkd_cuda *c, const sinkd_decode_args *a)
{
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

    /* Enough blocks to fill the machine a few times over; a lane's keys are
     * split only when the lanes alone do not. */
    int target = c->n_sm * 3; /* 3 blocks of 168 registers fit an SM */
    int S = (target + nl * nhc - 1) / (nl * nhc);
    if (S > 64)
        S = 64;
    if (S > a->pool->n_pages)
        S = a->pool->n_pages;
    if (S < 1)
        S = 1;
    P.n_split = S;

    size_t need_lse = a->score_op != SINKD_SCORE_NONE ? (size_t)nl * G * sizeof(float) : 0;
    size_t need_part = S > 1 ? (size_t)nl * S * G * (a->head_dim + 2) * sizeof(float) : 0;
    if (need_part) {
        rc = sinkd_cuda_buf_reserve(c, &c->part, need_part);
        if (rc)
            return rc;
        P.part_acc = (float *)c->part.p;
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

    dim3 grid(S, nl, nhc);
    rc = a->pool->dtype == SINKD_F16 ? decode_launch<__half>(c, P, grid)
                                     : decode_launch<__nv_bfloat16>(c, P, grid);
    if (rc)
        return rc;
    if (S > 1) {
        decode_merge_kernel<<<dim3(nl, G), a->head_dim, 0, c->stream>>>(P);
        SINKD_CUDA_CHECK_LAUNCH();
    }
    if (a->score_op != SINKD_SCORE_NONE) {
        int sx = (c->n_sm * 8 + nl - 1) / nl;
        decode_score_kernel<<<dim3(sx < 1 ? 1 : sx > 64 ? 64 : sx, nl), 256, 0, c->stream>>>(
            P, a->score_op, a->score_decay);
        SINKD_CUDA_CHECK_LAUNCH();
    }
    return 0;
}
