/*
 * KV store kernels over the paged pool (layout: kernels/backend.h):
 *
 *   append   write n new K/V rows (f32 -> pool dtype), pos, score = 0 per lane;
 *            bytes n_lanes*n*(2*D*(4 + esize) + 8)
 *   compact  in-place keep-list gather per lane (K, V, pos, score);
 *            bytes 2*kept*(2*D*esize + 8)
 *   bounds   kmin/kmax of pages, keys rotated at their effective position;
 *            bytes tokens*D*esize + pages*8*D
 *   topk     Quest: page score sum_h sum_i max(q_i*kmax_i, q_i*kmin_i) for the
 *            group's heads, then the k best pages per lane (radix select),
 *            ascending; bytes pages*8*D, FLOPs pages*G*4*D
 *
 * Device-side bounds: a token whose logical page is outside its lane's page
 * list, or whose page id is outside the pool, is skipped, never dereferenced.
 */
#include <cub/block/block_scan.cuh>
#include <math.h>

#include "common.cuh"

/* Slot of token @t of lane @l, or -1 when the page list cannot hold it. */
static __device__ __forceinline__ int64_t lane_slot(const sinkd_kv_pool &pool,
                                                    const sinkd_lanes &ln, int l, int t)
{
    int pt = pool.page_tokens;
    int lp = t / pt;
    int base = ln.page_off[l];
    if (t < 0 || lp >= ln.page_off[l + 1] - base)
        return -1;
    int pg = ln.page_ids[base + lp];
    if (pg < 0 || pg >= pool.n_pages)
        return -1;
    return (int64_t)pg * pt + t % pt;
}

/* K row of slot @s (V row: + page_tokens * head_dim elements). */
template <typename T>
static __device__ __forceinline__ T *slot_k(const sinkd_kv_pool &pool, int64_t s, int d)
{
    int pt = pool.page_tokens;
    char *page = (char *)pool.pages + (size_t)(s / pt) * pool.page_bytes;
    return (T *)page + (size_t)(s % pt) * d;
}

/* ---- append ------------------------------------------------------------- */

template <typename T>
__global__ void append_kernel(sinkd_kv_pool pool, sinkd_lanes ln, int n, int d,
                              const float *k, const float *v, const int32_t *pos, int token_major)
{
    int i = blockIdx.x, l = blockIdx.y;
    int len = ln.len[l];
    if (len < n)
        return;
    int64_t s = lane_slot(pool, ln, l, len - n + i);
    if (s < 0)
        return;
    T *kr = slot_k<T>(pool, s, d);
    T *vr = kr + (size_t)pool.page_tokens * d;
    size_t src = (token_major ? (size_t)i * ln.n_lanes + l : (size_t)l * n + i) * d;
    for (int e = threadIdx.x; e < d; e += blockDim.x) {
        kr[e] = kv_traits<T>::from_f(k[src + e]);
        vr[e] = kv_traits<T>::from_f(v[src + e]);
    }
    if (threadIdx.x == 0) {
        pool.pos[s] = pos[(size_t)l * n + i];
        pool.score[s] = 0.0f;
    }
}

int sinkd_cuda_kv_append(sinkd_cuda *c, const sinkd_append_args *a)
{
    if (!a)
        return -EINVAL;
    int rc = sinkd_cuda_check_pool(a->pool, a->head_dim);
    if (rc)
        return rc;
    if (a->n < 0 || a->n > 65535 || a->kv_token_major < 0 || a->kv_token_major > 1 ||
        a->lanes.n_lanes < 0 || a->lanes.n_lanes > 65535 || !a->k || !a->v || !a->pos)
        return -EINVAL;
    if (a->n == 0 || a->lanes.n_lanes == 0)
        return 0;
    if (!a->lanes.len || !a->lanes.page_off || !a->lanes.page_ids)
        return -EINVAL;
    dim3 grid(a->n, a->lanes.n_lanes);
    int th = a->head_dim < 128 ? a->head_dim : 128;
    if (a->pool->dtype == SINKD_F16)
        append_kernel<__half><<<grid, th, 0, c->stream>>>(*a->pool, a->lanes, a->n, a->head_dim,
                                                          a->k, a->v, a->pos, a->kv_token_major);
    else
        append_kernel<__nv_bfloat16><<<grid, th, 0, c->stream>>>(*a->pool, a->lanes, a->n,
                                                                  a->head_dim, a->k, a->v, a->pos, a->kv_token_major);
    SINKD_CUDA_CHECK_LAUNCH();
    return sinkd_cuda_page_bounds(c, a->pool, &a->lanes, a->head_dim, &a->rope, a->n);
}

/* ---- page bounds -------------------------------------------------------- */

/* Lane @l's length: len[l], or its keep count when compacting. */
static __device__ __forceinline__ int lane_len(const sinkd_lanes &ln, const int32_t *keep_off, int l)
{
    return keep_off ? keep_off[l + 1] - keep_off[l] : ln.len[l];
}

/* One block per (page, lane) in a grid-stride loop over the lane's pages;
 * one thread per rotary pair. */
template <typename T>
__global__ void bounds_kernel(sinkd_kv_pool pool, sinkd_lanes ln, int d, sinkd_rope rope,
                              int from_end, const int32_t *keep_off)
{
    int l = blockIdx.y;
    int pt = pool.page_tokens;
    int len = lane_len(ln, keep_off, l);
    int np = (len + pt - 1) / pt;
    int first = from_end > 0 ? max(0, len - from_end) / pt : 0;
    int half = d / 2;
    bool neox = rope.style == SINKD_ROPE_NEOX;
    for (int p = first + blockIdx.x; p < np; p += gridDim.x) {
        int64_t s0 = lane_slot(pool, ln, l, p * pt);
        if (s0 < 0)
            continue;
        int64_t pg = s0 / pt;
        for (int i = threadIdx.x; i < half; i += blockDim.x) {
            int ea = neox ? i : 2 * i, eb = neox ? i + half : 2 * i + 1;
            float mna = INFINITY, mxa = -INFINITY, mnb = INFINITY, mxb = -INFINITY;
            int tend = min(pt, len - p * pt);
            for (int j = 0; j < tend; j++) {
                const T *kr = slot_k<T>(pool, s0 + j, d);
                int ps = rope.mode == SINKD_ROPE_CACHE ? p * pt + j : pool.pos[s0 + j];
                float sn, cs;
                rope_sincos_exact(ps, rope.theta, rope.scale, i, d, &sn, &cs);
                float x0 = kv_traits<T>::to_f(kr[ea]), x1 = kv_traits<T>::to_f(kr[eb]);
                float r0 = x0 * cs - x1 * sn, r1 = x0 * sn + x1 * cs;
                mna = fminf(mna, r0);
                mxa = fmaxf(mxa, r0);
                mnb = fminf(mnb, r1);
                mxb = fmaxf(mxb, r1);
            }
            float *mn = pool.kmin + pg * pool.head_dim_max;
            float *mx = pool.kmax + pg * pool.head_dim_max;
            mn[ea] = mna;
            mx[ea] = mxa;
            mn[eb] = mnb;
            mx[eb] = mxb;
        }
    }
}

static int bounds_launch(sinkd_cuda *c, const sinkd_kv_pool *pool, const sinkd_lanes *ln,
                         int32_t d, const sinkd_rope *rope, int32_t from_end,
                         const int32_t *keep_off)
{
    if (sinkd_cuda_check_rope(rope))
        return -EINVAL;
    if (ln->n_lanes == 0)
        return 0;
    /* Appends touch at most ceil(n/pt) + 1 pages; otherwise stride. */
    int gx = from_end > 0 ? from_end / pool->page_tokens + 2 : 64;
    if (gx > 64)
        gx = 64;
    dim3 grid(gx, ln->n_lanes);
    int th = d / 2 < 128 ? d / 2 : 128;
    if (pool->dtype == SINKD_F16)
        bounds_kernel<__half><<<grid, th, 0, c->stream>>>(*pool, *ln, d, *rope, from_end, keep_off);
    else
        bounds_kernel<__nv_bfloat16><<<grid, th, 0, c->stream>>>(*pool, *ln, d, *rope, from_end,
                                                                 keep_off);
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}

int sinkd_cuda_page_bounds(sinkd_cuda *c, const sinkd_kv_pool *pool, const sinkd_lanes *lanes,
                           int32_t head_dim, const sinkd_rope *rope, int32_t from_end)
{
    return bounds_launch(c, pool, lanes, head_dim, rope, from_end, NULL);
}

/* ---- compaction --------------------------------------------------------- */

#define COMPACT_CHUNK 32
#define COMPACT_THREADS 256

/* One block per lane. Chunk by chunk: read every kept row of the chunk into
 * shared memory, barrier, write them to their new indices. Destinations of a
 * chunk lie below every later source (keep[j] >= j), so no later read sees a
 * row this chunk overwrote. */
template <typename T>
__global__ void __launch_bounds__(COMPACT_THREADS)
compact_kernel(sinkd_kv_pool pool, sinkd_lanes ln, int d, const int32_t *keep_off,
               const int32_t *keep)
{
    __shared__ uint4 rows[COMPACT_CHUNK * 2 * 256 * 2 / 16]; /* K and V, D <= 256 */
    __shared__ int32_t spos[COMPACT_CHUNK];
    __shared__ float sscore[COMPACT_CHUNK];
    __shared__ int ok[COMPACT_CHUNK];
    int l = blockIdx.x;
    int len = ln.len[l];
    int k0 = keep_off[l], nk = keep_off[l + 1] - k0;
    if (nk > len)
        nk = len; /* a bad keep list never grows the lane */
    int upr = d * (int)sizeof(T) / 16; /* 16-byte units per row */
    size_t vofs = (size_t)pool.page_tokens * d;
    for (int c0 = 0; c0 < nk; c0 += COMPACT_CHUNK) {
        int cn = min(COMPACT_CHUNK, nk - c0);
        if (threadIdx.x < cn) {
            int src = keep[k0 + c0 + threadIdx.x];
            int64_t s = src < len ? lane_slot(pool, ln, l, src) : -1;
            int64_t dd = lane_slot(pool, ln, l, c0 + threadIdx.x);
            ok[threadIdx.x] = s >= 0 && dd >= 0;
            spos[threadIdx.x] = s >= 0 ? pool.pos[s] : 0;
            sscore[threadIdx.x] = s >= 0 ? pool.score[s] : 0.0f;
        }
        __syncthreads();
        for (int u = threadIdx.x; u < cn * 2 * upr; u += blockDim.x) {
            int j = u / (2 * upr), r = u % (2 * upr);
            if (!ok[j])
                continue;
            int64_t s = lane_slot(pool, ln, l, keep[k0 + c0 + j]);
            const T *kr = slot_k<T>(pool, s, d);
            const uint4 *src = (const uint4 *)(r < upr ? kr : kr + vofs);
            rows[u] = src[r % upr];
        }
        __syncthreads();
        for (int u = threadIdx.x; u < cn * 2 * upr; u += blockDim.x) {
            int j = u / (2 * upr), r = u % (2 * upr);
            if (!ok[j])
                continue;
            int64_t s = lane_slot(pool, ln, l, c0 + j);
            T *kr = slot_k<T>(pool, s, d);
            uint4 *dst = (uint4 *)(r < upr ? kr : kr + vofs);
            dst[r % upr] = rows[u];
        }
        if (threadIdx.x < cn && ok[threadIdx.x]) {
            int64_t s = lane_slot(pool, ln, l, c0 + threadIdx.x);
            pool.pos[s] = spos[threadIdx.x];
            pool.score[s] = sscore[threadIdx.x];
        }
        __syncthreads();
    }
}

int sinkd_cuda_kv_compact(sinkd_cuda *c, const sinkd_compact_args *a)
{
    if (!a)
        return -EINVAL;
    int rc = sinkd_cuda_check_pool(a->pool, a->head_dim);
    if (rc)
        return rc;
    if (a->lanes.n_lanes < 0 || !a->keep_off || !a->keep)
        return -EINVAL;
    if (a->lanes.n_lanes == 0)
        return 0;
    if (!a->lanes.len || !a->lanes.page_off || !a->lanes.page_ids)
        return -EINVAL;
    if (a->pool->dtype == SINKD_F16)
        compact_kernel<__half><<<a->lanes.n_lanes, COMPACT_THREADS, 0, c->stream>>>(
            *a->pool, a->lanes, a->head_dim, a->keep_off, a->keep);
    else
        compact_kernel<__nv_bfloat16><<<a->lanes.n_lanes, COMPACT_THREADS, 0, c->stream>>>(
            *a->pool, a->lanes, a->head_dim, a->keep_off, a->keep);
    SINKD_CUDA_CHECK_LAUNCH();
    return bounds_launch(c, a->pool, &a->lanes, a->head_dim, &a->rope, 0, a->keep_off);
}

/* ---- Quest top-k pages -------------------------------------------------- */

#define TOPK_THREADS 256

/* Order-preserving map of a float to an unsigned key (larger is larger). */
static __device__ __forceinline__ uint32_t fkey(float f)
{
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* One block per lane: bounds of every page into @ws (indexed like
 * page_ids), radix select of the k-th largest, ordered output. */
__global__ void __launch_bounds__(TOPK_THREADS)
topk_kernel(sinkd_kv_pool pool, sinkd_lanes ln, int n_kv, int group, int d, sinkd_rope rope,
            const float *q, const int32_t *q_pos, int k, int32_t *out, float *out_sc,
            float *ws, int64_t ws_n)
{
    typedef cub::BlockScan<int, TOPK_THREADS> Scan;
    __shared__ typename Scan::TempStorage scan_tmp;
    __shared__ float qr[16 * 256];
    __shared__ int hist[256];
    __shared__ uint32_t s_prefix;
    __shared__ int s_rank, s_carry_eq, s_carry_out;

    int l = blockIdx.x, seq = l / n_kv, kvh = l % n_kv;
    int pt = pool.page_tokens;
    int len = ln.len[l];
    int base = ln.page_off[l];
    int np = min((len + pt - 1) / pt, ln.page_off[l + 1] - base);
    if (np < 0 || base + (int64_t)np > ws_n)
        np = 0; /* malformed lists: report no pages rather than read past */
    int qp = rope.mode == SINKD_ROPE_CACHE ? len - 1 : q_pos[seq];
    int half = d / 2;
    bool neox = rope.style == SINKD_ROPE_NEOX;
    for (int u = threadIdx.x; u < group * half; u += blockDim.x) {
        int h = u / half, i = u % half;
        const float *qh = q + ((size_t)seq * n_kv * group + (size_t)kvh * group + h) * d;
        int ea = neox ? i : 2 * i, eb = neox ? i + half : 2 * i + 1;
        float sn, cs;
        rope_sincos_exact(qp, rope.theta, rope.scale, i, d, &sn, &cs);
        qr[h * d + ea] = qh[ea] * cs - qh[eb] * sn;
        qr[h * d + eb] = qh[ea] * sn + qh[eb] * cs;
    }
    __syncthreads();

    int w = threadIdx.x / 32, lid = threadIdx.x % 32;
    for (int p = w; p < np; p += TOPK_THREADS / 32) {
        int pg = ln.page_ids[base + p];
        float acc = 0.0f;
        if (pg >= 0 && pg < pool.n_pages) {
            const float *mn = pool.kmin + (size_t)pg * pool.head_dim_max;
            const float *mx = pool.kmax + (size_t)pg * pool.head_dim_max;
            for (int i = lid; i < d; i += 32) {
                float a = mn[i], b = mx[i];
                for (int h = 0; h < group; h++) {
                    float qv = qr[h * d + i];
                    acc += fmaxf(qv * a, qv * b);
                }
            }
        }
        for (int o = 16; o > 0; o >>= 1)
            acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lid == 0)
            ws[base + p] = acc;
    }
    __syncthreads();

    int32_t *o = out + (size_t)l * k;
    float *os = out_sc ? out_sc + (size_t)l * k : NULL;
    if (np <= k) {
        for (int j = threadIdx.x; j < k; j += blockDim.x) {
            o[j] = j < np ? j : -1;
            if (os)
                os[j] = j < np ? ws[base + j] : -INFINITY;
        }
        return;
    }

    /* Radix select, 8 bits a pass from the top: the k-th largest key. */
    if (threadIdx.x == 0) {
        s_prefix = 0;
        s_rank = k;
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        hist[threadIdx.x] = 0;
        __syncthreads();
        uint32_t hi_mask = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
        uint32_t prefix = s_prefix;
        for (int p = threadIdx.x; p < np; p += blockDim.x) {
            uint32_t key = fkey(ws[base + p]);
            if ((key & hi_mask) == prefix)
                atomicAdd(&hist[(key >> shift) & 255], 1);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int r = s_rank, b = 255;
            while (b > 0 && hist[b] < r) {
                r -= hist[b];
                b--;
            }
            s_rank = r;
            s_prefix = prefix | ((uint32_t)b << shift);
        }
        __syncthreads();
    }
    uint32_t thr = s_prefix;
    int need_eq = s_rank; /* how many pages equal to the threshold to take */

    /* Ordered output: pages above the threshold, and the first need_eq
     * pages equal to it, in ascending page order. */
    if (threadIdx.x == 0) {
        s_carry_eq = 0;
        s_carry_out = 0;
    }
    __syncthreads();
    for (int c0 = 0; c0 < np; c0 += blockDim.x) {
        int p = c0 + threadIdx.x;
        uint32_t key = p < np ? fkey(ws[base + p]) : 0;
        int is_eq = p < np && key == thr;
        int eq_before, eq_total;
        Scan(scan_tmp).ExclusiveSum(is_eq, eq_before, eq_total);
        __syncthreads();
        int sel = p < np && (key > thr || (is_eq && s_carry_eq + eq_before < need_eq));
        int sel_before, sel_total;
        Scan(scan_tmp).ExclusiveSum(sel, sel_before, sel_total);
        if (sel) {
            int j = s_carry_out + sel_before;
            o[j] = p;
            if (os)
                os[j] = ws[base + p];
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            s_carry_eq += eq_total;
            s_carry_out += sel_total;
        }
        __syncthreads();
    }
}

int sinkd_cuda_topk_pages(sinkd_cuda *c, const sinkd_topk_pages_args *a)
{
    if (!a)
        return -EINVAL;
    int rc = sinkd_cuda_check_attn(a->pool, a->head_dim, a->n_q_heads, a->n_kv_heads, &a->rope);
    if (rc)
        return rc;
    if (a->n_seqs < 0 || a->k <= 0 || !a->q || !a->q_pos || !a->out_pages)
        return -EINVAL;
    if (a->lanes.n_lanes != a->n_seqs * a->n_kv_heads)
        return -EINVAL;
    if (a->lanes.n_lanes == 0)
        return 0;
    if (!a->lanes.len || !a->lanes.page_off || !a->lanes.page_ids)
        return -EINVAL;
    /* Lanes own disjoint pages, so a call lists at most n_pages of them. */
    rc = sinkd_cuda_buf_reserve(c, &c->pscore, (size_t)a->pool->n_pages * sizeof(float));
    if (rc)
        return rc;
    topk_kernel<<<a->lanes.n_lanes, TOPK_THREADS, 0, c->stream>>>(
        *a->pool, a->lanes, a->n_kv_heads, a->n_q_heads / a->n_kv_heads, a->head_dim, a->rope,
        a->q, a->q_pos, a->k, a->out_pages, a->out_scores, (float *)c->pscore.p,
        (int64_t)a->pool->n_pages);
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}
