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
 *            group's heads on a (lane, chunk of pages) grid, then the k best
 *            pages per lane (radix select), ascending; bytes pages*8*D,
 *            FLOPs pages*G*4*D
 *
 * Device-side bounds: a token whose logical page is outside its lane's page
 * list, or whose page id is outside the pool, is skipped, never dereferenced.
 */
#include <cub/block/block_scan.cuh>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"
#include "pdl.cuh"

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

/* One block per (token, lane). With @bounds (one token a lane, so one block
 * a page) the block also folds the new key into its page's rotated
 * min/max: the page's earlier tokens are already in them (appends and
 * compactions keep every page's bounds exact), so min/max with the new key
 * equals recomputing the page, without the page pass. */
template <typename T>
__global__ void append_kernel(sinkd_kv_pool pool, sinkd_lanes ln, int n, int d,
                              const float *k, const float *v, const int32_t *pos, int token_major,
                              sinkd_rope rope, int bounds)
{
    /* the slot from the lane arrays and pos (copies: see pdl.cuh) while the
     * projection that wrote k and v drains */
    pdl_trigger();
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
    int p = pos[(size_t)l * n + i];
    pdl_wait();
    for (int e = threadIdx.x; e < d; e += blockDim.x) {
        kr[e] = kv_traits<T>::from_f(k[src + e]);
        vr[e] = kv_traits<T>::from_f(v[src + e]);
    }
    if (threadIdx.x == 0) {
        pool.pos[s] = p;
        pool.score[s] = 0.0f;
    }
    if (!bounds)
        return;
    int pt = pool.page_tokens;
    int64_t pg = s / pt;
    bool first = s % pt == 0;
    bool neox = rope.style == SINKD_ROPE_NEOX;
    int ps = rope.mode == SINKD_ROPE_CACHE ? len - 1 : p;
    float *mn = pool.kmin + pg * pool.head_dim_max, *mx = pool.kmax + pg * pool.head_dim_max;
    for (int j = threadIdx.x; j < d / 2; j += blockDim.x) {
        int ea = neox ? j : 2 * j, eb = neox ? j + d / 2 : 2 * j + 1;
        float sn, cs;
        rope_sincos_inv(ps, rope_inv_exact(rope.theta, rope.scale, j, d), &sn, &cs);
        /* the key as stored, like the page pass reads it */
        float x0 = kv_traits<T>::to_f(kv_traits<T>::from_f(k[src + ea]));
        float x1 = kv_traits<T>::to_f(kv_traits<T>::from_f(k[src + eb]));
        float r0 = x0 * cs - x1 * sn, r1 = x0 * sn + x1 * cs;
        mn[ea] = first ? r0 : fminf(mn[ea], r0);
        mx[ea] = first ? r0 : fmaxf(mx[ea], r0);
        mn[eb] = first ? r1 : fminf(mn[eb], r1);
        mx[eb] = first ? r1 : fmaxf(mx[eb], r1);
    }
}

/* SINKD_APPEND_BOUNDS=pass keeps the separate page pass for one-token
 * appends too (read once). */
static bool append_bounds_fused(void)
{
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("SINKD_APPEND_BOUNDS");
        v = !(e && strcmp(e, "pass") == 0);
    }
    return v == 1;
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
    if (sinkd_cuda_check_rope(&a->rope))
        return -EINVAL;
    dim3 grid(a->n, a->lanes.n_lanes);
    int th = a->head_dim < 128 ? a->head_dim : 128;
    int fused = a->n == 1 && append_bounds_fused();
    auto kern = a->pool->dtype == SINKD_F16 ? append_kernel<__half> : append_kernel<__nv_bfloat16>;
    SINKD_CUDA_TRY(pdl_launch(pdl_env_on(), c->stream, kern, grid, dim3(th), 0, *a->pool, a->lanes,
                              (int)a->n, (int)a->head_dim, a->k, a->v, a->pos,
                              (int)a->kv_token_major, a->rope, fused));
    SINKD_CUDA_CHECK_LAUNCH();
    return fused ? 0 : sinkd_cuda_page_bounds(c, a->pool, &a->lanes, a->head_dim, &a->rope, a->n);
}

/* ---- page bounds -------------------------------------------------------- */

/* Lane @l's length: len[l], or its keep count when compacting. */
static __device__ __forceinline__ int lane_len(const sinkd_lanes &ln, const int32_t *keep_off, int l)
{
    return keep_off ? keep_off[l + 1] - keep_off[l] : ln.len[l];
}

/* One block per (page, lane) in a grid-stride loop over the lane's pages;
 * one thread per rotary pair. */
#define BD_KEYS 8
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
    /* pairs outside pages: a pair's pow once a block, not once a page */
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const int ea = neox ? i : 2 * i, eb = neox ? i + half : 2 * i + 1;
        const double inv = rope_inv_exact(rope.theta, rope.scale, i, d);
        for (int p = first + blockIdx.x; p < np; p += gridDim.x) {
            int64_t s0 = lane_slot(pool, ln, l, p * pt);
            if (s0 < 0)
                continue;
            int64_t pg = s0 / pt;
            float mna = INFINITY, mxa = -INFINITY, mnb = INFINITY, mxb = -INFINITY;
            int tend = min(pt, len - p * pt);
            /* BD_KEYS keys' loads in flight before any math: one at a time,
             * a 16-token page was 16 dependent trips to memory */
            for (int j0 = 0; j0 < tend; j0 += BD_KEYS) {
                float x0[BD_KEYS], x1[BD_KEYS];
                int ps[BD_KEYS];
#pragma unroll
                for (int q = 0; q < BD_KEYS; q++) {
                    int j = min(j0 + q, tend - 1); /* past the end: the last key again */
                    const T *kr = slot_k<T>(pool, s0 + j, d);
                    ps[q] = rope.mode == SINKD_ROPE_CACHE ? p * pt + j : pool.pos[s0 + j];
                    x0[q] = kv_traits<T>::to_f(kr[ea]);
                    x1[q] = kv_traits<T>::to_f(kr[eb]);
                }
#pragma unroll
                for (int q = 0; q < BD_KEYS; q++) {
                    float sn, cs;
                    rope_sincos_inv(ps[q], inv, &sn, &cs); /* the pow once a pair, not a key */
                    float r0 = x0[q] * cs - x1[q] * sn, r1 = x0[q] * sn + x1[q] * cs;
                    mna = fminf(mna, r0);
                    mxa = fmaxf(mxa, r0);
                    mnb = fminf(mnb, r1);
                    mxb = fmaxf(mxb, r1);
                }
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

/* Two paths over one set of pieces (query rotation, page bound, block select):
 *
 *   split (default)  topk_score_kernel on a (lane, chunk of TOPK_CHUNK pages)
 *                    grid writes every page's bound to the pscore workspace
 *                    (indexed like page_ids), then topk_select_kernel, one
 *                    block of TOPK_SEL_THREADS per lane, selects from a copy
 *                    of the lane's bounds in shared memory.
 *   legacy           topk_lane_kernel, one block per lane doing both; with
 *                    few lanes most SMs idle (SINKD_TOPK_LEGACY=1).
 *
 * Both sum a page's bound in the same order (per warp lane: elements lid,
 * lid+32, .. with the heads inner, then a butterfly), so they agree bit for
 * bit and select the same pages.
 *
 * Expected, H100, 32 lanes x 2048 pages, k 256, d 64, group 3: the score
 * pass reads 65536 pages x 2 x 64 x 4 B = 33.5 MB of bounds in one wave of
 * 32 x 13 blocks (3 an SM, each warp 16 loads in flight): ~12 us at
 * ~2.8 TB/s plus ~2 us rotating the query in double at each block's start;
 * the select pass, 32 blocks each over 8 KB of bounds in shared memory
 * (4 radix passes of 2 strides, two scans per 1024 pages of output): ~5 us.
 * About 20 us in all, against hundreds for one block per lane (32 of 132
 * SMs busy, each warp walking 256 pages one dependent load at a time).
 */

#define TOPK_THREADS 256      /* legacy and score blocks: 8 warps */
#define TOPK_CHUNK 64         /* pages a score block covers per stride: 8 a warp */
#define TOPK_PPW (TOPK_CHUNK / (TOPK_THREADS / 32))
#define TOPK_SCORE_BLOCKS 3   /* resident score blocks an SM (78 registers, no spill) */
#define TOPK_SEL_THREADS 1024
#define TOPK_SEL_CACHE 8192   /* bounds of a lane held in shared memory (32 KB) */

/* Order-preserving map of a float to an unsigned key (larger is larger). */
static __device__ __forceinline__ uint32_t fkey(float f)
{
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Pages of lane @l to score, with @base its first index in page_ids and the
 * workspace; 0 for malformed lists, so nothing reads past either. */
static __device__ __forceinline__ int topk_lane_pages(const sinkd_kv_pool &pool,
                                                      const sinkd_lanes &ln, int l,
                                                      int64_t ws_n, int *base)
{
    int pt = pool.page_tokens;
    int b = ln.page_off[l];
    int np = min((ln.len[l] + pt - 1) / pt, ln.page_off[l + 1] - b);
    *base = b;
    if (b < 0 || np < 0 || b + (int64_t)np > ws_n)
        return 0;
    return np;
}

/* The group's query heads of lane @l rotated at the query position, into
 * @qr[group][d] (shared); the caller synchronises before reading it. */
static __device__ void topk_rotate_query(float *qr, const sinkd_lanes &ln, int l, int n_kv,
                                         int group, int d, const sinkd_rope &rope,
                                         const float *q, const int32_t *q_pos)
{
    int seq = l / n_kv, kvh = l % n_kv;
    int qp = rope.mode == SINKD_ROPE_CACHE ? ln.len[l] - 1 : q_pos[seq];
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
}

/* Bounds of the @n (<= TOPK_PPW) pages @pg[] for one warp, into @acc[] of
 * every lane. A page id outside the pool bounds 0; a NaN bound becomes
 * -INFINITY so that it sorts last, as on the CPU. The element loop is
 * outermost so that each lane has 2*n independent loads in flight. */
static __device__ __forceinline__ void topk_warp_bounds(const sinkd_kv_pool &pool, const int *pg,
                                                        int n, const float *qr, int d,
                                                        int group, float *acc)
{
    int lid = threadIdx.x % 32;
#pragma unroll
    for (int j = 0; j < TOPK_PPW; j++)
        acc[j] = 0.0f;
    for (int i = lid; i < d; i += 32) {
        float a[TOPK_PPW], b[TOPK_PPW];
#pragma unroll
        for (int j = 0; j < TOPK_PPW; j++) {
            bool ok = j < n && pg[j] >= 0 && pg[j] < pool.n_pages;
            a[j] = ok ? pool.kmin[(size_t)pg[j] * pool.head_dim_max + i] : 0.0f;
            b[j] = ok ? pool.kmax[(size_t)pg[j] * pool.head_dim_max + i] : 0.0f;
        }
        for (int h = 0; h < group; h++) {
            float qv = qr[h * d + i];
#pragma unroll
            for (int j = 0; j < TOPK_PPW; j++)
                acc[j] += fmaxf(qv * a[j], qv * b[j]);
        }
    }
#pragma unroll
    for (int j = 0; j < TOPK_PPW; j++) {
        for (int o = 16; o > 0; o >>= 1)
            acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], o);
        if (isnan(acc[j]))
            acc[j] = -INFINITY;
    }
}

/* One block of TH threads: the k largest of @sc[0..np) (ties: lower index)
 * to @o[0..k) in ascending index order with their bounds in @os (may be
 * NULL); fewer than k: all of them, then -1 / -INFINITY. Radix select, 8
 * bits a pass from the top, for the k-th largest key, then an ordered pass
 * that keeps every key above it and the first keys equal to it. */
template <int TH>
static __device__ void topk_block_select(const float *sc, int np, int k, int32_t *o, float *os)
{
    static_assert(TH >= 256 && TH % 32 == 0, "a thread per radix bin");
    typedef cub::BlockScan<int, TH> Scan;
    __shared__ typename Scan::TempStorage scan_tmp;
    __shared__ int hist[256];
    __shared__ uint32_t s_prefix;
    __shared__ int s_rank;
    int t = threadIdx.x;

    if (np <= k) {
        for (int j = t; j < k; j += TH) {
            o[j] = j < np ? j : -1;
            if (os)
                os[j] = j < np ? sc[j] : -INFINITY;
        }
        return;
    }
    uint32_t prefix = 0;
    int rank = k; /* rank of the wanted key among those matching prefix */
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = t; b < 256; b += TH)
            hist[b] = 0;
        __syncthreads();
        uint32_t hi_mask = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
        for (int p = t; p < np; p += TH) {
            uint32_t key = fkey(sc[p]);
            if ((key & hi_mask) == prefix)
                atomicAdd(&hist[(key >> shift) & 255], 1);
        }
        __syncthreads();
        /* Counts from the top bin down: the bin where they reach rank. */
        int v = t < 256 ? hist[255 - t] : 0, incl;
        Scan(scan_tmp).InclusiveSum(v, incl);
        if (t < 256 && incl - v < rank && incl >= rank) {
            s_prefix = prefix | ((uint32_t)(255 - t) << shift);
            s_rank = rank - (incl - v);
        }
        __syncthreads();
        prefix = s_prefix;
        rank = s_rank;
    }
    /* prefix: the k-th largest key; rank: how many keys equal to it to take */
    int carry_eq = 0, carry_out = 0;
    for (int c0 = 0; c0 < np && carry_out < k; c0 += TH) {
        int p = c0 + t;
        uint32_t key = p < np ? fkey(sc[p]) : 0;
        int is_eq = p < np && key == prefix;
        int eq_before, eq_total, sel_before, sel_total;
        Scan(scan_tmp).ExclusiveSum(is_eq, eq_before, eq_total);
        __syncthreads();
        int sel = p < np && (key > prefix || (is_eq && carry_eq + eq_before < rank));
        Scan(scan_tmp).ExclusiveSum(sel, sel_before, sel_total);
        __syncthreads();
        if (sel) {
            o[carry_out + sel_before] = p;
            if (os)
                os[carry_out + sel_before] = sc[p];
        }
        carry_eq += eq_total;
        carry_out += sel_total;
    }
}

/* Legacy: one block per lane scores its pages into @ws, then selects. */
__global__ void __launch_bounds__(TOPK_THREADS)
topk_lane_kernel(sinkd_kv_pool pool, sinkd_lanes ln, int n_kv, int group, int d, sinkd_rope rope,
                 const float *q, const int32_t *q_pos, int k, int32_t *out, float *out_sc,
                 float *ws, int64_t ws_n)
{
    __shared__ float qr[16 * 256];
    int l = blockIdx.x, base;
    int np = topk_lane_pages(pool, ln, l, ws_n, &base);
    topk_rotate_query(qr, ln, l, n_kv, group, d, rope, q, q_pos);
    __syncthreads();
    int w = threadIdx.x / 32, lid = threadIdx.x % 32;
    for (int p = w; p < np; p += TOPK_THREADS / 32) {
        int pg[TOPK_PPW] = {ln.page_ids[base + p]};
        float acc[TOPK_PPW];
        topk_warp_bounds(pool, pg, 1, qr, d, group, acc);
        if (lid == 0)
            ws[base + p] = acc[0];
    }
    __syncthreads();
    topk_block_select<TOPK_THREADS>(ws + base, np, k, out + (size_t)l * k,
                                    out_sc ? out_sc + (size_t)l * k : NULL);
}

/* Split, pass 1: block (l, y) scores lane l's chunks y, y + gridDim.y, ..
 * of TOPK_CHUNK pages into @ws; warp w takes pages w, w + 8, .. of a chunk. */
__global__ void __launch_bounds__(TOPK_THREADS, TOPK_SCORE_BLOCKS)
topk_score_kernel(sinkd_kv_pool pool, sinkd_lanes ln, int n_kv, int group, int d,
                  sinkd_rope rope, const float *q, const int32_t *q_pos, float *ws, int64_t ws_n)
{
    __shared__ float qr[16 * 256];
    int l = blockIdx.x, base;
    int np = topk_lane_pages(pool, ln, l, ws_n, &base);
    if ((int64_t)blockIdx.y * TOPK_CHUNK >= np)
        return; /* the whole block: nothing of this lane is ours */
    topk_rotate_query(qr, ln, l, n_kv, group, d, rope, q, q_pos);
    __syncthreads();
    int w = threadIdx.x / 32, lid = threadIdx.x % 32;
    const int n_warps = TOPK_THREADS / 32;
    for (int c0 = blockIdx.y * TOPK_CHUNK; c0 < np; c0 += gridDim.y * TOPK_CHUNK) {
        int pg[TOPK_PPW], n = 0;
#pragma unroll
        for (int j = 0; j < TOPK_PPW; j++) {
            int p = c0 + w + j * n_warps;
            pg[j] = p < np ? ln.page_ids[base + p] : -1;
            n += p < np;
        }
        if (n == 0)
            continue; /* warp-uniform */
        float acc[TOPK_PPW];
        topk_warp_bounds(pool, pg, n, qr, d, group, acc);
#pragma unroll
        for (int j = 0; j < TOPK_PPW; j++)
            if (lid == j && j < n)
                ws[base + c0 + w + j * n_warps] = acc[j];
    }
}

/* Split, pass 2: one block per lane selects from its bounds, copied to
 * shared memory first when they fit. */
__global__ void __launch_bounds__(TOPK_SEL_THREADS)
topk_select_kernel(sinkd_kv_pool pool, sinkd_lanes ln, int k, int32_t *out, float *out_sc,
                   const float *ws, int64_t ws_n)
{
    __shared__ float cache[TOPK_SEL_CACHE];
    int l = blockIdx.x, base;
    int np = topk_lane_pages(pool, ln, l, ws_n, &base);
    const float *sc = ws + base;
    if (np > k && np <= TOPK_SEL_CACHE) {
        for (int p = threadIdx.x; p < np; p += TOPK_SEL_THREADS)
            cache[p] = sc[p];
        sc = cache;
        __syncthreads();
    }
    topk_block_select<TOPK_SEL_THREADS>(sc, np, k, out + (size_t)l * k,
                                        out_sc ? out_sc + (size_t)l * k : NULL);
}

/* SINKD_TOPK_LEGACY=1 (read on the first call): one block per lane. */
static bool topk_use_legacy(void)
{
    static int legacy = -1;
    if (legacy < 0) {
        const char *env = getenv("SINKD_TOPK_LEGACY");
        legacy = env && strcmp(env, "1") == 0;
    }
    return legacy;
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
    int64_t ws_n = a->pool->n_pages;
    rc = sinkd_cuda_buf_reserve(c, &c->pscore, (size_t)ws_n * sizeof(float));
    if (rc)
        return rc;
    float *ws = (float *)c->pscore.p;
    int nl = a->lanes.n_lanes, group = a->n_q_heads / a->n_kv_heads;
    if (topk_use_legacy()) {
        topk_lane_kernel<<<nl, TOPK_THREADS, 0, c->stream>>>(
            *a->pool, a->lanes, a->n_kv_heads, group, a->head_dim, a->rope, a->q, a->q_pos,
            a->k, a->out_pages, a->out_scores, ws, ws_n);
        SINKD_CUDA_CHECK_LAUNCH();
        return 0;
    }
    /* One wave of score blocks over all lanes; a lane longer than its
     * share strides. No lane has more chunks than the pool. */
    int64_t gy = ((int64_t)c->n_sm * TOPK_SCORE_BLOCKS + nl - 1) / nl;
    int64_t max_chunks = (ws_n + TOPK_CHUNK - 1) / TOPK_CHUNK;
    if (gy > max_chunks)
        gy = max_chunks;
    gy = gy < 1 ? 1 : gy > 65535 ? 65535 : gy;
    dim3 grid((unsigned)nl, (unsigned)gy);
    topk_score_kernel<<<grid, TOPK_THREADS, 0, c->stream>>>(*a->pool, a->lanes, a->n_kv_heads,
                                                            group, a->head_dim, a->rope, a->q,
                                                            a->q_pos, ws, ws_n);
    SINKD_CUDA_CHECK_LAUNCH();
    topk_select_kernel<<<nl, TOPK_SEL_THREADS, 0, c->stream>>>(*a->pool, a->lanes, a->k,
                                                               a->out_pages, a->out_scores, ws,
                                                               ws_n);
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}
