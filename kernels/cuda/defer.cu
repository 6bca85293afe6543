/*
 * Deferred decode scores: ops->score_flush (contract: kernels/backend.h,
 * sinkd_decode_args.defer and sinkd_score_flush_args).
 *
 * A deferring decode call leaves its query rows, their final lse and the
 * lane's length in the sequence's block instead of scoring; the next call
 * of the layer applies them in its own pass over the keys (decode.cu).
 * This applies what is still pending when complete scores are needed.
 *
 * Grid (key chunks, kv heads of the layer), a thread per key; an entry's
 * two slots (backend.h) are applied in order, each to the keys below its
 * len. The logit is recomputed as decode_mma_kernel computed it (key rotated with the same
 * inverse frequencies and fast sincos, rounded to the pool dtype, f32 dot
 * with the stored rounded query), so exp2(s - lse) is normalised by the
 * very lse it came with. Bytes: D * esize + 8 per pending key; runs at
 * eviction points, not per step. A block of rows mode (backend.h) holds
 * one step, written to the caller's row for the rule that reads it.
 */
#include "common.cuh"

#define FL_THREADS 256
#define FL_GMAX 8 /* sinkd_defer_takes' largest group */

struct flush_params {
    sinkd_kv_pool pool;
    sinkd_lanes ln;
    int group, x0;           /* x0: the layer's first entry, layer * n_kv */
    sinkd_rope rope;
    const void *q;           /* the block: [x][2][G][D] pool dtype at 0 */
    const float *lse;        /* [x][2][G] */
    const int32_t *len;      /* [x][2] */
    int score_op;
    float score_decay;
    int vec;                 /* pages 16-byte aligned: vector row loads */
    float *row;              /* rows mode: p to row, not pool.score (WRITE) */
    int32_t *row_len;        /* rows mode: [kv head] the step's len */
};

template <typename T, int D>
__global__ void __launch_bounds__(FL_THREADS) score_flush_kernel(flush_params P)
{
    constexpr int NU = D / 8;
    /* the query in load_row's chunk order, so a key's chunk u meets
     * sq[h][u][0..8) (one broadcast read a head, every thread the same) */
    __shared__ __align__(16) float sq[2 * FL_GMAX * D];
    __shared__ float slse[2 * FL_GMAX];
    __shared__ float sinv[D / 2];
    const int h = blockIdx.y, x = P.x0 + h, G = P.group, pt = P.pool.page_tokens;
    const bool neox = P.rope.style == SINKD_ROPE_NEOX;
    const bool cache = P.rope.mode == SINKD_ROPE_CACHE;
    /* keys appended since the deferring call are past its len; a lane
     * shortened since (not allowed, but cheap to survive) stops at its
     * own len and pages */
    const int have = P.ln.page_off[h + 1] - P.ln.page_off[h];
    const int lim = min(P.ln.len[h], max(have, 0) * pt);
    const int n0 = min(P.len[2 * x], lim), n1 = min(P.len[2 * x + 1], lim);
    const int n = max(n0, n1);
    if (P.row && blockIdx.x == 0 && threadIdx.x == 0)
        P.row_len[h] = n0; /* rows mode holds one step: slot 1 is empty */
    if ((int)blockIdx.x * FL_THREADS >= n)
        return; /* block-uniform, before the barrier */

    /* rows [slot][head] */
    const T *qb = reinterpret_cast<const T *>(P.q) + (size_t)x * 2 * G * D;
    for (int it = threadIdx.x; it < 2 * G * D; it += FL_THREADS) {
        int r = it % D;
        sq[it] = kv_traits<T>::to_f(qb[(size_t)(it / D) * D + row_elem(r / 8, r % 8, D, neox)]);
    }
    if ((int)threadIdx.x < 2 * G)
        slse[threadIdx.x] = P.lse[(size_t)x * 2 * G + threadIdx.x];
    if (threadIdx.x < D / 2)
        sinv[threadIdx.x] = rope_inv_freq(P.rope.theta, P.rope.scale, threadIdx.x, D);
    __syncthreads();

    const int32_t *pids = P.ln.page_ids + P.ln.page_off[h];
    for (int i = blockIdx.x * FL_THREADS + threadIdx.x; i < n; i += gridDim.x * FL_THREADS) {
        int pg = pids[i / pt];
        if (pg < 0 || pg >= P.pool.n_pages)
            continue;
        int64_t slot = (int64_t)pg * pt + i % pt;
        int pos = cache ? i : P.pool.pos[slot];
        const T *kr = reinterpret_cast<const T *>((const char *)P.pool.pages +
                                                  (size_t)pg * P.pool.page_bytes) + (size_t)(i % pt) * D;
        float s[2][FL_GMAX];
#pragma unroll
        for (int g = 0; g < FL_GMAX; g++)
            s[0][g] = s[1][g] = 0.0f;
        const int slots = i < n1 ? 2 : 1; /* slot 1's logits only for its keys */
        for (int u = 0; u < NU; u++) {
            float k[8];
            if (P.vec) {
                load_row(kr, u, D, neox, k);
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++)
                    k[e] = kv_traits<T>::to_f(kr[row_elem(u, e, D, neox)]);
            }
            /* rot_adj / rot_neox's arithmetic, then their rounding to T */
#pragma unroll
            for (int m = 0; m < 4; m++) {
                float sn, cs;
                rope_sincos_fast(pos, sinv[4 * u + m], &sn, &cs);
                float x0 = k[2 * m], x1 = k[2 * m + 1];
                k[2 * m] = kv_traits<T>::to_f(kv_traits<T>::from_f(x0 * cs - x1 * sn));
                k[2 * m + 1] = kv_traits<T>::to_f(kv_traits<T>::from_f(x0 * sn + x1 * cs));
            }
#pragma unroll
            for (int sl = 0; sl < 2; sl++) {
                if (sl >= slots)
                    break;
#pragma unroll
                for (int g = 0; g < FL_GMAX; g++) {
                    if (g >= G)
                        break;
                    const float4 *qv = reinterpret_cast<const float4 *>(sq + ((sl * G + g) * NU + u) * 8);
                    float4 a = qv[0], b = qv[1];
                    float t = s[sl][g];
                    t = fmaf(a.x, k[0], fmaf(a.y, k[1], fmaf(a.z, k[2], fmaf(a.w, k[3], t))));
                    s[sl][g] = fmaf(b.x, k[4], fmaf(b.y, k[5], fmaf(b.z, k[6], fmaf(b.w, k[7], t))));
                }
            }
        }
        float *sc = (P.row ? P.row : P.pool.score) + slot;
        float v = P.row ? 0.0f : *sc; /* a row is written, never read */
#pragma unroll
        for (int sl = 0; sl < 2; sl++) {
            if (i >= (sl ? n1 : n0))
                continue;
            float p = 0.0f;
#pragma unroll
            for (int g = 0; g < FL_GMAX; g++) {
                float m = g < G ? slse[sl * G + g] : -INFINITY;
                if (m != -INFINITY) /* -inf: the head saw nothing */
                    p += exp2f(s[sl][g] - m);
            }
            v = P.score_op == SINKD_SCORE_WRITE ? p
                : P.score_op == SINKD_SCORE_ADD ? v + p
                                                : P.score_decay * v + p;
        }
        *sc = v;
    }
}

template <typename T>
static void flush_launch(sinkd_cuda *c, const flush_params &P, dim3 grid, int d)
{
    if (d == 64)
        score_flush_kernel<T, 64><<<grid, FL_THREADS, 0, c->stream>>>(P);
    else
        score_flush_kernel<T, 128><<<grid, FL_THREADS, 0, c->stream>>>(P);
}

extern "C" int sinkd_cuda_score_flush(sinkd_cuda *c, const sinkd_score_flush_args *a)
{
    if (!a || !a->defer || !a->lanes.len || !a->lanes.page_off || !a->lanes.page_ids)
        return -EINVAL;
    int rc = sinkd_cuda_check_attn(a->pool, a->head_dim, a->n_q_heads, a->n_kv_heads, &a->rope);
    if (rc)
        return rc;
    if (a->lanes.n_lanes != a->n_kv_heads || a->n_kv_heads > 65535 || a->layers < 1 ||
        a->layer < 0 || a->layer >= a->layers)
        return -EINVAL;
    if (a->score_op != SINKD_SCORE_WRITE && a->score_op != SINKD_SCORE_ADD &&
        a->score_op != SINKD_SCORE_DECAY)
        return -EINVAL;
    if (a->row && (!a->row_len || a->score_op != SINKD_SCORE_WRITE))
        return -EINVAL;
    const int G = a->n_q_heads / a->n_kv_heads, n_kv = a->n_kv_heads, d = a->head_dim;
    if (!sinkd_defer_takes(G, d, a->pool->page_tokens))
        return -ENOTSUP; /* decode never defers this shape: nothing can be pending */

    const size_t es = sinkd_dtype_bytes((sinkd_dtype)a->pool->dtype, 1);
    const size_t lse_off = sinkd_defer_lse_off(a->layers, n_kv, G, d, es);
    const size_t len_off = sinkd_defer_len_off(a->layers, n_kv, G, d, es);
    char *blk = (char *)a->defer;
    flush_params P;
    P.pool = *a->pool;
    P.ln = a->lanes;
    P.group = G;
    P.x0 = a->layer * n_kv;
    P.rope = a->rope;
    P.q = blk;
    P.lse = (const float *)(blk + lse_off);
    P.len = (const int32_t *)(blk + len_off);
    P.score_op = a->score_op;
    P.score_decay = a->score_decay;
    P.vec = (uintptr_t)a->pool->pages % 16 == 0;
    P.row = a->row;
    P.row_len = a->row_len;

    /* The lengths stay on the device (no sync): size for a long lane, about
     * 8 blocks an SM in all; blocks past a lane's pending keys leave at once. */
    int gx = (c->n_sm * 8 + n_kv - 1) / n_kv;
    dim3 grid(gx < 1 ? 1 : gx > 512 ? 512 : gx, n_kv);
    if (a->pool->dtype == SINKD_F16)
        flush_launch<__half>(c, P, grid, d);
    else
        flush_launch<__nv_bfloat16>(c, P, grid, d);
    SINKD_CUDA_CHECK_LAUNCH();
    /* Applied: mark the layer's entries empty, ordered after the kernel
     * that read them. */
    SINKD_CUDA_TRY(cudaMemsetAsync(blk + len_off + (size_t)P.x0 * 2 * sizeof(int32_t), 0,
                                   (size_t)n_kv * 2 * sizeof(int32_t), c->stream));
    return 0;
}
