/*
 * Policy statistics (ops->stat) and token selection (ops->topk_tokens) on
 * the GPU; the CPU twin is kernels/cpu/stats.c and the semantics are
 * kernels/backend.h's (sinkd_stat_args, sinkd_topk_tokens_args).
 *
 * Two shapes of kernel:
 *   ZERO/STASH/RESTORE/DECAY/KEY_NORM  elementwise: a grid of (lane, chunk)
 *                             blocks, so a batch of a few long lanes still
 *                             fills the GPU (a lane per block leaves most
 *                             SMs idle and every thread waiting on loads)
 *   QUANTILE, GUMBEL, topk_tokens  whole-lane rules: one block of
 *                             LANE_THREADS per lane. The lane's values and
 *                             page ids are read once into shared memory
 *                             (when the lane fits: up to STAT_CACHE_MAX
 *                             bytes), and the passes of the rule run there:
 *       QUANTILE     4 radix passes of 8 bits for the exact threshold (the
 *                    CPU's quickselect picks the same element; the first
 *                    counted as the lane is read), one update
 *       GUMBEL       r = p / E once (exp((log p + g) / T) = r^(1/T) for the
 *                    noise g = -log E), then the max, the sum of
 *                    (r / max)^(1/T), kept, and the write
 *       topk_tokens  4 radix passes for the k-th largest (the first as the
 *                    lane is read), then one ordered
 *                    pass in chunks of the block writing ascending pages
 *   stat_rules runs the calls' kernels one after another (two ways of
 *   running a step's calls at once measured slower: bench/policy/NOTES.md).
 *   A longer lane (or SINKD_STAT_CACHE=0 in the environment) reads the pool
 *   in every pass instead: the same results, more traffic. On a deferred
 *   row (row_len) the rules read p from prev and update the score in
 *   place, over each lane's first row_len tokens: no STASH before them.
 *
 * Compile: part of sinkd_cuda (kernels/cuda/CMakeLists.txt), sm_90.
 */
#include "common.cuh"

#include <float.h>
#include <stdlib.h>
#include <string.h>

#define EW_THREADS 256
#define LANE_THREADS 1024
#define LANE_WARPS (LANE_THREADS / 32)
#define STAT_CACHE_MAX (160 * 1024) /* bytes of dynamic shared memory per lane */
#define FULL_MASK 0xffffffffu

/* Order-preserving key of a float: larger float, larger key; NaN lowest. */
static __device__ __forceinline__ uint32_t stat_key(float f)
{
    if (isnan(f))
        return 0;
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

/* A lane's page table as the rules read it: the lane's page ids (global
 * memory, or a copy in shared memory) and the page size. */
struct lane_ref {
    const int32_t *pids;
    int32_t pt;
    bool vec; /* 16-byte accesses of 4 slots: pt % 4 == 0, arrays aligned */
    __device__ int64_t slot(int32_t t) const { return (int64_t)pids[t / pt] * pt + t % pt; }
};

static __device__ __forceinline__ int64_t stat_slot(const sinkd_lanes &ln, int32_t pt, int32_t l,
                                                    int32_t t)
{
    return lane_ref{ln.page_ids + ln.page_off[l], pt, false}.slot(t);
}

/* ---- elementwise ops -------------------------------------------------------- */

static __device__ float stat_key_norm(const sinkd_kv_pool &pool, int32_t hd, int64_t slot)
{
    int32_t pt = pool.page_tokens;
    size_t es = pool.dtype == SINKD_F16 || pool.dtype == SINKD_BF16 ? 2 : 4;
    const char *row = (const char *)pool.pages + (size_t)(slot / pt) * pool.page_bytes +
                      (size_t)(slot % pt) * hd * es;
    double sq = 0;
    for (int32_t d = 0; d < hd; d++) {
        float k = pool.dtype == SINKD_F16
                      ? kv_traits<__half>::to_f(((const __half *)row)[d])
                  : pool.dtype == SINKD_BF16
                      ? kv_traits<__nv_bfloat16>::to_f(((const __nv_bfloat16 *)row)[d])
                      : ((const float *)row)[d];
        sq += (double)k * k;
    }
    return (float)-sqrt(sq);
}

/* Block (l, y) covers tokens y * EW_THREADS + i * gridDim.y * EW_THREADS of
 * lane l. */
__global__ void __launch_bounds__(EW_THREADS) stat_ew_kernel(sinkd_kv_pool pool, sinkd_stat_args a)
{
    const sinkd_lanes &ln = a.lanes;
    int32_t l = blockIdx.x, len = ln.len[l], pt = pool.page_tokens;
    int32_t t0 = a.op == SINKD_STAT_OP_KEY_NORM && a.n < len ? len - a.n : 0;

    for (int32_t t = t0 + blockIdx.y * EW_THREADS + threadIdx.x; t < len;
         t += gridDim.y * EW_THREADS) {
        int64_t slot = stat_slot(ln, pt, l, t);
        switch (a.op) {
        case SINKD_STAT_OP_ZERO:
            pool.score[slot] = 0;
            break;
        case SINKD_STAT_OP_STASH:
            a.prev[slot] = pool.score[slot];
            pool.score[slot] = 0;
            break;
        case SINKD_STAT_OP_RESTORE:
            pool.score[slot] = a.prev[slot];
            break;
        case SINKD_STAT_OP_KEY_NORM:
            pool.score[slot] = stat_key_norm(pool, a.head_dim, slot);
            break;
        default: /* DECAY */
            pool.score[slot] = (float)((double)a.decay * a.prev[slot] + pool.score[slot]);
            break;
        }
    }
}

/* ---- block-wide helpers (LANE_THREADS threads) ------------------------------- */

/* Sum (or max) over the block; every thread gets it. @sh: LANE_WARPS doubles. */
static __device__ double block_reduce(double v, double *sh, bool max)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        double x = __shfl_xor_sync(FULL_MASK, v, o);
        v = max ? fmax(v, x) : v + x;
    }
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    v = sh[lane];
    for (int o = 16; o > 0; o >>= 1) {
        double x = __shfl_xor_sync(FULL_MASK, v, o);
        v = max ? fmax(v, x) : v + x;
    }
    __syncthreads();
    return v;
}

/* Inclusive scan over the block; @max: running max (identity -1) instead of
 * the sum. @sh: LANE_WARPS ints. */
static __device__ int block_scan(int v, int *sh, bool max)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int o = 1; o < 32; o <<= 1) {
        int x = __shfl_up_sync(FULL_MASK, v, o);
        if (lane >= o)
            v = max ? (x > v ? x : v) : v + x;
    }
    if (lane == 31)
        sh[w] = v;
    __syncthreads();
    if (w == 0) {
        int s = sh[lane];
        for (int o = 1; o < 32; o <<= 1) {
            int x = __shfl_up_sync(FULL_MASK, s, o);
            if (lane >= o)
                s = max ? (x > s ? x : s) : s + x;
        }
        sh[lane] = s;
    }
    __syncthreads();
    if (w > 0) {
        int x = sh[w - 1];
        v = max ? (x > v ? x : v) : v + x;
    }
    __syncthreads();
    return v;
}

/* Lane @l's page table in place, or (@spids non-NULL) copied into @spids for
 * its first @len tokens: a cached lane's slots then cost no dependent global
 * read each (ncu: a third of the rules' warp time waited on those reads). */
static __device__ lane_ref lane_ref_make(const sinkd_kv_pool &pool, const sinkd_lanes &ln, int32_t l,
                                         int32_t len, int32_t *spids, bool vec)
{
    const int32_t pt = pool.page_tokens, *g = ln.page_ids + ln.page_off[l];
    vec = vec && pt % 4 == 0;
    if (!spids)
        return {g, pt, vec};
    for (int32_t i = threadIdx.x; i < (len + pt - 1) / pt; i += LANE_THREADS)
        spids[i] = g[i];
    __syncthreads();
    return {spids, pt, vec};
}

static __device__ __forceinline__ bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

/* Shared floats a cached lane of @len tokens takes: its values, then its
 * page ids. */
static __device__ __forceinline__ int32_t lane_cache_need(int32_t len, int32_t pt)
{
    return len + (len + pt - 1) / pt;
}

/* Value @t of the lane: the cached copy, or @src (by slot: the pool's
 * score, or a deferred row). */
template <bool CACHED>
static __device__ __forceinline__ float lane_get(const float *cache, const float *src, const lane_ref &lr,
                                                 int32_t t)
{
    return CACHED ? cache[t] : src[lr.slot(t)];
}

/* cache[t] = f(t, v) for the lane's first @len values v of @src, with
 * LANE_LOAD_ILP independent loads in flight a thread. Pages of a multiple
 * of 4 tokens are read 16 bytes at a time (4 tokens of a page are 4
 * adjacent slots): a quarter of the loads, and the rules' global phases are
 * latency-bound (one block an SM). A page's slots past the lane are the
 * pool's (allocated), read and dropped. */
#define LANE_LOAD_ILP 8
template <int ILP = LANE_LOAD_ILP, typename F>
static __device__ void lane_load(float *cache, const float *src, const lane_ref &lr, int32_t len, F f)
{
    if (lr.vec) {
        const int32_t nc = (len + 3) / 4;
        for (int32_t c0 = threadIdx.x; c0 < nc; c0 += ILP * LANE_THREADS) {
            float4 v[ILP];
#pragma unroll
            for (int i = 0; i < ILP; i++) {
                int32_t c = c0 + i * LANE_THREADS;
                v[i] = c < nc ? *(const float4 *)(src + lr.slot(4 * c)) : make_float4(0, 0, 0, 0);
            }
#pragma unroll
            for (int i = 0; i < ILP; i++) {
                int32_t t = 4 * (c0 + i * LANE_THREADS);
                if (t + 3 < len) {
                    *(float4 *)(cache + t) = make_float4(f(t, v[i].x), f(t + 1, v[i].y), f(t + 2, v[i].z),
                                                         f(t + 3, v[i].w));
                } else if (t < len) { /* past len: the page ids' place */
                    cache[t] = f(t, v[i].x);
                    if (t + 1 < len)
                        cache[t + 1] = f(t + 1, v[i].y);
                    if (t + 2 < len)
                        cache[t + 2] = f(t + 2, v[i].z);
                }
            }
        }
    } else {
        for (int32_t t0 = threadIdx.x; t0 < len; t0 += ILP * LANE_THREADS) {
            float v[ILP];
#pragma unroll
            for (int i = 0; i < ILP; i++) {
                int32_t t = t0 + i * LANE_THREADS;
                v[i] = t < len ? src[lr.slot(t)] : 0.0f;
            }
#pragma unroll
            for (int i = 0; i < ILP; i++)
                if (t0 + i * LANE_THREADS < len)
                    cache[t0 + i * LANE_THREADS] = f(t0 + i * LANE_THREADS, v[i]);
        }
    }
    __syncthreads();
}

/* The key of rank @r (0 = smallest) of the lane's values: 4 passes of an
 * 8-bit radix select. Every thread gets it. @hist: 256 ints; @counted: it
 * holds the first pass's counts already (lane_load_counted). */
template <bool CACHED>
static __device__ uint32_t lane_select(const float *cache, const float *src, const lane_ref &lr,
                                       int32_t len, int32_t r, int *hist, bool counted = false)
{
    __shared__ uint32_t s_prefix;
    __shared__ int s_rank;
    if (threadIdx.x == 0) {
        s_prefix = 0;
        s_rank = r;
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        const bool have = counted && shift == 24;
        if (!have && threadIdx.x < 256)
            hist[threadIdx.x] = 0;
        __syncthreads();
        uint32_t prefix = s_prefix;
        uint32_t hi_mask = shift == 24 ? 0 : ~0u << (shift + 8);
        for (int32_t t = threadIdx.x; !have && t < len; t += LANE_THREADS) {
            uint32_t k = stat_key(lane_get<CACHED>(cache, src, lr, t));
            if ((k & hi_mask) == (prefix & hi_mask))
                atomicAdd(&hist[(k >> shift) & 255], 1);
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            /* warp 0: lane j holds bins 8j..8j+7; the first lane whose
             * running count passes the rank walks its bins */
            int j = threadIdx.x, own = 0, rank = s_rank;
            for (int b = 0; b < 8; b++)
                own += hist[8 * j + b];
            int incl = own;
            for (int o = 1; o < 32; o <<= 1) {
                int x = __shfl_up_sync(FULL_MASK, incl, o);
                if (j >= o)
                    incl += x;
            }
            unsigned hit = __ballot_sync(FULL_MASK, incl > rank);
            if (j == __ffs(hit) - 1) {
                int rk = rank - (incl - own), d = 8 * j;
                while (rk >= hist[d])
                    rk -= hist[d++];
                s_rank = rk;
                s_prefix = prefix | ((uint32_t)d << shift);
            }
        }
        __syncthreads();
    }
    return s_prefix;
}

/* lane_load of the values as they are, counting the radix select's first
 * pass on the way (lane_select with counted): that pass's atomics run in
 * the shadow of the loads still in flight instead of in a pass of their
 * own over the cache. */
static __device__ void lane_load_counted(float *cache, const float *src, const lane_ref &lr,
                                         int32_t len, int *hist)
{
    if (threadIdx.x < 256)
        hist[threadIdx.x] = 0;
    __syncthreads();
    lane_load(cache, src, lr, len, [&](int32_t, float v) {
        atomicAdd(&hist[stat_key(v) >> 24], 1);
        return v;
    });
}

/* ---- whole-lane rules ----------------------------------------------------------- */

/* score[slot] = f(t, slot, old[slot]) for the lane's first @len tokens (@old
 * may be @score), with UPDATE_ILP loads in flight a thread before their
 * stores (issued one at a time, each load waits behind the store before
 * it); 16 bytes at a time on pages of a multiple of 4 tokens, like
 * lane_load, storing only the lane's own tokens. */
#define UPDATE_ILP 8
template <int ILP = UPDATE_ILP, typename F>
static __device__ void lane_update(const lane_ref &lr, int32_t len, const float *old, float *score, F f)
{
    if (lr.vec) {
        const int32_t nc = (len + 3) / 4;
        for (int32_t c0 = threadIdx.x; c0 < nc; c0 += ILP * LANE_THREADS) {
            int64_t sl[ILP];
            float4 ov[ILP];
#pragma unroll
            for (int i = 0; i < ILP; i++) {
                int32_t c = c0 + i * LANE_THREADS;
                sl[i] = c < nc ? lr.slot(4 * c) : 0;
                ov[i] = c < nc ? *(const float4 *)(old + sl[i]) : make_float4(0, 0, 0, 0);
            }
#pragma unroll
            for (int i = 0; i < ILP; i++) {
                int32_t t = 4 * (c0 + i * LANE_THREADS);
                int64_t q = sl[i];
                if (t + 3 < len) {
                    *(float4 *)(score + q) = make_float4(f(t, q, ov[i].x), f(t + 1, q + 1, ov[i].y),
                                                         f(t + 2, q + 2, ov[i].z), f(t + 3, q + 3, ov[i].w));
                } else if (t < len) {
                    score[q] = f(t, q, ov[i].x);
                    if (t + 1 < len)
                        score[q + 1] = f(t + 1, q + 1, ov[i].y);
                    if (t + 2 < len)
                        score[q + 2] = f(t + 2, q + 2, ov[i].z);
                }
            }
        }
        return;
    }
    for (int32_t t0 = threadIdx.x; t0 < len; t0 += ILP * LANE_THREADS) {
        int64_t sl[ILP];
        float ov[ILP];
#pragma unroll
        for (int i = 0; i < ILP; i++) {
            int32_t t = t0 + i * LANE_THREADS;
            sl[i] = t < len ? lr.slot(t) : 0;
            ov[i] = t < len ? old[sl[i]] : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < ILP; i++) {
            int32_t t = t0 + i * LANE_THREADS;
            if (t < len)
                score[sl[i]] = f(t, sl[i], ov[i]);
        }
    }
}

/* @src: where p is (by slot), @old: the statistic before the step; the
 * result goes to the pool's score. Without a row: the pool's score and
 * prev; on a deferred row (row_len): prev and the pool's score. */
template <bool CACHED>
static __device__ void stat_quantile(const sinkd_kv_pool &pool, const sinkd_stat_args &a, const lane_ref &lr,
                                     int32_t len, const float *src, const float *old, float *cache,
                                     int *hist)
{
    const int32_t r = (int32_t)floor((double)a.quantile * (len - 1));
    uint32_t thr;

    if (CACHED)
        lane_load_counted(cache, src, lr, len, hist);
    thr = lane_select<CACHED>(cache, src, lr, len, r, hist, CACHED);
    const float decay = a.decay;
    /* 4 loads in flight, not UPDATE_ILP's 8: with 8 the kernel spilled 56
     * bytes and measured 6% slower on the H100 */
    lane_update<4>(lr, len, old, pool.score, [&](int32_t t, int64_t slot, float o) {
        float p = CACHED ? cache[t] : src[slot];
        return decay * o + (stat_key(p) > thr ? 1.0f : 0.0f);
    });
}

/* r = p / E of a key, E = -log u the noise's exponential variate, so that
 * the weight exp((log p + g) / T) of the noise g = -log E is r^(1/T):
 * one log a key where z itself took four transcendentals and double
 * arithmetic (the rule was 77 us a layer on the 1B geometry). 0 for a key
 * without p > 0. u = (2k + 1) / 2^25 for the hash's top 24 bits k
 * (sinkd_stat_uniform), so u below 1/2 and u - 1 above it are exact in f32
 * straight from the integer, and E comes through log1p where u nears 1.
 * Below 1/2 the hardware's log2 (|log u| >= ln 2, so its absolute error of
 * 2^-22 is a relative one of ~2e-7) and an approximate division: a few
 * 1e-7 off the CPU's double, and the rule measured 16% faster than with
 * logf and IEEE division (62.7 -> 52.9 us a layer, bench/policy/NOTES.md).
 * An r below f32's range (p / E < 2^-149) weighs 0, as on the CPU, which
 * keeps r in f32 too. */
static __device__ __forceinline__ float gumbel_r(float p, const sinkd_stat_args &a, int32_t l,
                                                 int32_t t)
{
    if (!(p > 0))
        return 0.0f;
    const uint32_t k2 = 2u * (uint32_t)(sinkd_stat_hash(a.seed, l, t) >> 40) + 1u; /* 2k + 1 < 2^25 */
    const float sc = 0x1p-25f;
    float e = k2 > (1u << 24) ? -log1pf(-(float)((1u << 25) - k2) * sc) : -__logf((float)k2 * sc);
    return __fdividef(p, e);
}

/* A key's weight (r / max r)^(1/T) before the sum, from @x = r / max r:
 * the ratio itself at T = 1 (keyformer's default), else through f32 log2
 * and exp2, whose error 1/T scales only where the weight is tiny. */
static __device__ __forceinline__ float gumbel_w(float x, float inv_t, bool t1)
{
    return t1 ? x : x > 0 ? exp2f(log2f(x) * inv_t) : 0.0f;
}

template <bool CACHED>
static __device__ void stat_gumbel(const sinkd_kv_pool &pool, const sinkd_stat_args &a, int32_t l,
                                   const lane_ref &lr, int32_t len, const float *src, const float *old,
                                   float *cache, double *sh)
{
    /* FLT_MAX for a temperature whose inverse overflows: then only the
     * largest r weighs (x = 1 gives 0 * FLT_MAX = 0, exp2 1) */
    const float inv_t = (float)fmin(1.0 / (double)a.temperature, (double)FLT_MAX);
    const bool t1 = a.temperature == 1.0f;
    /* a thread's max and sum in f32 (it holds a few dozen keys), the
     * block's in double: no conversion a key */
    float mxt = 0, sumt = 0;

    /* cached: r replaces p as the lane is read, its log in the shadow of
     * the loads still in flight */
    if (CACHED) {
        lane_load<4>(cache, src, lr, len, [&](int32_t t, float p) {
            float r = gumbel_r(p, a, l, t);
            mxt = fmaxf(mxt, r);
            return r;
        });
    } else {
        for (int32_t t = threadIdx.x; t < len; t += LANE_THREADS)
            mxt = fmaxf(mxt, gumbel_r(src[lr.slot(t)], a, l, t));
    }
    const double mx = block_reduce(mxt, sh, true);
    if (mx == 0) /* no key with p > 0: the lane adds nothing */
        return lane_update<4>(lr, len, old, pool.score, [](int32_t, int64_t, float o) { return o; });
    /* r / max by a division, not a reciprocal's product: the largest r
     * then weighs exactly 1 (so the sum is >= 1 at any temperature) and a
     * lane of tiny r cannot overflow the reciprocal */
    const float mxf = (float)mx; /* exact: the max of floats */
    for (int32_t t = threadIdx.x; t < len; t += LANE_THREADS) {
        float r = CACHED ? cache[t] : gumbel_r(src[lr.slot(t)], a, l, t);
        float w = gumbel_w(r / mxf, inv_t, t1);
        if (CACHED)
            cache[t] = w; /* the entries it reads: the write divides them */
        sumt += w;
    }
    const double sum = block_reduce(sumt, sh, false);
    const float inv_sum = (float)(1.0 / sum); /* sum >= 1: the largest r weighs 1 */
    lane_update<4>(lr, len, old, pool.score, [&](int32_t t, int64_t slot, float o) {
        float w = CACHED ? cache[t] : gumbel_w(gumbel_r(src[slot], a, l, t) / mxf, inv_t, t1);
        return fmaf(w, inv_sum, o);
    });
}

/* One block per lane; @cache_cap: floats of the dynamic shared memory. One
 * kernel a rule: each gets the registers of its own math. */
template <int OP>
__global__ void __launch_bounds__(LANE_THREADS)
    stat_lane_kernel(sinkd_kv_pool pool, sinkd_stat_args a, int32_t cache_cap)
{
    extern __shared__ __align__(16) float cache[]; /* float4 stores */
    __shared__ double sh[LANE_WARPS];
    __shared__ int hist[256];
    int32_t l = blockIdx.x, len = a.lanes.len[l];
    const float *src = pool.score, *old = a.prev;

    if (a.row_len) { /* a deferred row: its first tokens, p in prev */
        len = min(len, a.row_len[l]);
        src = a.prev;
        old = pool.score;
    }
    if (len <= 0)
        return;
    const bool cached = lane_cache_need(len, pool.page_tokens) <= cache_cap;
    const bool vec = aligned16(src) && aligned16(old) && aligned16(pool.score);
    const lane_ref lr =
        lane_ref_make(pool, a.lanes, l, len, cached ? (int32_t *)(cache + len) : NULL, vec);
    if (OP == SINKD_STAT_OP_QUANTILE) {
        if (cached)
            stat_quantile<true>(pool, a, lr, len, src, old, cache, hist);
        else
            stat_quantile<false>(pool, a, lr, len, src, old, cache, hist);
    } else if (cached) {
        stat_gumbel<true>(pool, a, l, lr, len, src, old, cache, sh);
    } else {
        stat_gumbel<false>(pool, a, l, lr, len, src, old, cache, sh);
    }
}

/* Floats of shared memory a whole-lane kernel caches a lane in: the device's
 * opt-in limit less the static part, at most STAT_CACHE_MAX bytes; 0 when
 * SINKD_STAT_CACHE=0 (every pass reads the pool). Sets the kernel's limit.
 * Worked out once per kernel (@slot) and backend: this runs per layer. */
template <typename K>
static int lane_cache_floats(sinkd_cuda *c, K kernel, int slot, int32_t *out)
{
    cudaFuncAttributes fa;
    int optin = 0;

    if (c->lane_cache_known[slot]) {
        *out = c->lane_cache[slot];
        return 0;
    }
    *out = 0;
    const char *env = getenv("SINKD_STAT_CACHE");
    if (!env || strcmp(env, "0") != 0) {
        SINKD_CUDA_TRY(cudaFuncGetAttributes(&fa, kernel));
        SINKD_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                              c->device));
        long bytes = (long)optin - (long)fa.sharedSizeBytes - 1024;
        bytes = bytes > STAT_CACHE_MAX ? STAT_CACHE_MAX : bytes;
        if (bytes >= 4096) {
            SINKD_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                (int)bytes));
            *out = (int32_t)(bytes / 4);
        }
    }
    c->lane_cache[slot] = *out;
    c->lane_cache_known[slot] = true;
    return 0;
}

extern "C" int sinkd_cuda_stat(sinkd_cuda *c, const sinkd_stat_args *a)
{
    int32_t cap;
    int rc;

    if (!a || sinkd_cuda_check_pool(a->pool, a->head_dim) || a->lanes.n_lanes < 0)
        return -EINVAL;
    if (!sinkd_stat_args_ok(a))
        return -EINVAL;
    if (a->lanes.n_lanes == 0)
        return 0;
    /* the pool struct is host memory: it travels by value */
    if (a->op == SINKD_STAT_OP_QUANTILE || a->op == SINKD_STAT_OP_GUMBEL) {
        const bool q = a->op == SINKD_STAT_OP_QUANTILE;
        auto kernel = q ? stat_lane_kernel<SINKD_STAT_OP_QUANTILE> : stat_lane_kernel<SINKD_STAT_OP_GUMBEL>;
        if ((rc = lane_cache_floats(c, kernel, q ? 0 : 2, &cap)) < 0)
            return rc;
        kernel<<<a->lanes.n_lanes, LANE_THREADS, (size_t)cap * 4, c->stream>>>(*a->pool, *a, cap);
    } else {
        /* about 8 blocks per SM in all, at most 64 per lane */
        int gy = 8 * c->n_sm / a->lanes.n_lanes;
        dim3 grid((unsigned)a->lanes.n_lanes, (unsigned)(gy < 1 ? 1 : gy > 64 ? 64 : gy));
        stat_ew_kernel<<<grid, EW_THREADS, 0, c->stream>>>(*a->pool, *a);
    }
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}

extern "C" int sinkd_cuda_stat_rules(sinkd_cuda *c, const sinkd_stat_args *a, int32_t n)
{
    int rc;

    if (!sinkd_stat_rules_ok(a, n))
        return -EINVAL;
    for (int32_t i = 0; i < n; i++)
        if (sinkd_cuda_check_pool(a[i].pool, a[i].head_dim) || a[i].lanes.n_lanes < 0)
            return -EINVAL;
    for (int32_t i = 0; i < n; i++)
        if ((rc = sinkd_cuda_stat(c, &a[i])) < 0)
            return rc;
    return 0;
}

/* ---- token selection --------------------------------------------------------- */

template <bool CACHED>
static __device__ void topk_tokens_lane(const sinkd_kv_pool &pool, const lane_ref &lr, int32_t len,
                                        int32_t k, int32_t *out, float *cache, int *hist, double *sh,
                                        int *scan, int *wsh)
{
    int32_t pt = pool.page_tokens, n_out = 0;
    __shared__ int s_tot[2];

    if (CACHED)
        lane_load_counted(cache, pool.score, lr, len, hist);
    uint32_t thr = lane_select<CACHED>(cache, pool.score, lr, len, len - k, hist, CACHED);
    double above = 0;
    for (int32_t t = threadIdx.x; t < len; t += LANE_THREADS)
        above += stat_key(lane_get<CACHED>(cache, pool.score, lr, t)) > thr;
    int32_t ties_left = k - (int32_t)block_reduce(above, sh, false);
    int32_t last_page = -1; /* of the last token taken, block-uniform */
    for (int32_t c0 = 0; c0 < len; c0 += LANE_THREADS) {
        int32_t t = c0 + threadIdx.x;
        uint32_t key = t < len ? stat_key(lane_get<CACHED>(cache, pool.score, lr, t)) : 0;
        int tie = t < len && key == thr;
        int tie_incl = block_scan(tie, wsh, false);
        bool take = t < len && (key > thr || (tie && tie_incl - tie < ties_left));
        int page = take ? t / pt : -1;
        /* pages ascend with t: the max scan is the page of the last token
         * taken at or before each thread */
        int incl = block_scan(page, wsh, true);
        scan[threadIdx.x] = incl;
        __syncthreads();
        int excl = threadIdx.x > 0 ? scan[threadIdx.x - 1] : -1;
        int chunk_last = scan[LANE_THREADS - 1];
        __syncthreads();
        excl = excl > last_page ? excl : last_page;
        int fresh = take && page != excl;
        int new_incl = block_scan(fresh, wsh, false);
        if (fresh)
            out[n_out + new_incl - 1] = page;
        if (threadIdx.x == LANE_THREADS - 1) {
            s_tot[0] = tie_incl;
            s_tot[1] = new_incl;
        }
        __syncthreads();
        ties_left -= s_tot[0] < ties_left ? s_tot[0] : ties_left;
        n_out += s_tot[1];
        last_page = chunk_last > last_page ? chunk_last : last_page;
        __syncthreads();
    }
    for (int32_t i = n_out + threadIdx.x; i < k; i += LANE_THREADS)
        out[i] = -1;
}

__global__ void __launch_bounds__(LANE_THREADS)
    topk_tokens_kernel(sinkd_kv_pool pool, sinkd_lanes ln, int32_t k, int32_t *out_pages,
                       int32_t cache_cap)
{
    extern __shared__ __align__(16) float cache[]; /* float4 stores */
    __shared__ int hist[256];
    __shared__ int scan[LANE_THREADS];
    __shared__ int wsh[LANE_WARPS];
    __shared__ double sh[LANE_WARPS];
    int32_t l = blockIdx.x, len = ln.len[l], pt = pool.page_tokens;
    int32_t *out = out_pages + (size_t)l * k;

    if (len <= k) {
        int32_t np = (len + pt - 1) / pt;
        for (int32_t i = threadIdx.x; i < k; i += LANE_THREADS)
            out[i] = i < np ? i : -1;
        return;
    }
    const bool cached = lane_cache_need(len, pt) <= cache_cap;
    const lane_ref lr =
        lane_ref_make(pool, ln, l, len, cached ? (int32_t *)(cache + len) : NULL, aligned16(pool.score));
    if (cached)
        topk_tokens_lane<true>(pool, lr, len, k, out, cache, hist, sh, scan, wsh);
    else
        topk_tokens_lane<false>(pool, lr, len, k, out, cache, hist, sh, scan, wsh);
}

extern "C" int sinkd_cuda_topk_tokens(sinkd_cuda *c, const sinkd_topk_tokens_args *a)
{
    int32_t cap;
    int rc;

    if (!a || !a->pool || a->k < 1 || a->lanes.n_lanes < 0 ||
        (a->lanes.n_lanes > 0 && !a->out_pages) || a->pool->page_tokens < 1)
        return -EINVAL;
    if (a->lanes.n_lanes == 0)
        return 0;
    if ((rc = lane_cache_floats(c, topk_tokens_kernel, 1, &cap)) < 0)
        return rc;
    topk_tokens_kernel<<<a->lanes.n_lanes, LANE_THREADS, (size_t)cap * 4, c->stream>>>(
        *a->pool, a->lanes, a->k, a->out_pages, cap);
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}
