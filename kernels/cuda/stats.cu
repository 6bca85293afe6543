/*
 * Policy statistics (ops->stat) and token selection (ops->topk_tokens) on
 * the GPU; the CPU twin is kernels/cpu/stats.c and the semantics are
 * kernels/backend.h's (sinkd_stat_args, sinkd_topk_tokens_args).
 *
 * One block of STAT_THREADS threads per lane; tokens are strided over the
 * block. Shapes: lanes.len [n_lanes], page table as everywhere, prev and
 * score by pool slot.
 *   ZERO/STASH/RESTORE/DECAY  4-12 bytes per token, no FLOPs to speak of
 *   KEY_NORM                  n * head_dim key elements per lane, 2 FLOP each
 *   QUANTILE                  4 radix passes of 8 bits over the lane's keys
 *                             (exact selection: the same threshold as the CPU's
 *                             quickselect), then one update pass
 *   GUMBEL                    3 passes (max, sum, write), a log and exps per
 *                             token in double, as the CPU does
 *   topk_tokens               4 radix passes for the k-th largest key, then
 *                             one ordered pass in chunks of the block (two
 *                             block scans per chunk) writing ascending pages
 *
 * Compile: part of sinkd_cuda (kernels/cuda/CMakeLists.txt), sm_90.
 */
#include "common.cuh"

#define STAT_THREADS 256

/* Order-preserving key of a float: larger float, larger key; NaN lowest. */
static __device__ __forceinline__ uint32_t stat_key(float f)
{
    if (isnan(f))
        return 0;
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

static __device__ __forceinline__ int64_t stat_slot(const sinkd_lanes &ln, int32_t pt, int32_t l,
                                                    int32_t t)
{
    return (int64_t)ln.page_ids[ln.page_off[l] + t / pt] * pt + t % pt;
}

/* Block-wide sum (every thread gets it). @sh: STAT_THREADS doubles. */
static __device__ double block_sum(double v, double *sh)
{
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = STAT_THREADS / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s)
            sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

static __device__ double block_max(double v, double *sh)
{
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = STAT_THREADS / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s)
            sh[threadIdx.x] = fmax(sh[threadIdx.x], sh[threadIdx.x + s]);
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

/* Inclusive scan over the block (Hillis-Steele); @max: max instead of sum. */
static __device__ int block_scan(int v, int *sh, bool max)
{
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = 1; s < STAT_THREADS; s <<= 1) {
        int o = (int)threadIdx.x >= s ? sh[threadIdx.x - s] : (max ? -1 : 0);
        __syncthreads();
        sh[threadIdx.x] = max ? (o > sh[threadIdx.x] ? o : sh[threadIdx.x]) : sh[threadIdx.x] + o;
        __syncthreads();
    }
    int r = sh[threadIdx.x];
    __syncthreads();
    return r;
}

/* The key of rank @r (0 = smallest) of the lane's scores: 4 passes of an
 * 8-bit radix select. Every thread gets it. @hist: 256 ints. */
static __device__ uint32_t lane_select(const sinkd_kv_pool &pool, const sinkd_lanes &ln, int32_t l,
                                       int32_t r, int *hist)
{
    int32_t len = ln.len[l], pt = pool.page_tokens;
    __shared__ uint32_t s_prefix;
    __shared__ int s_rank;
    if (threadIdx.x == 0) {
        s_prefix = 0;
        s_rank = r;
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        hist[threadIdx.x] = 0;
        __syncthreads();
        uint32_t prefix = s_prefix;
        uint32_t hi_mask = shift == 24 ? 0 : ~0u << (shift + 8);
        for (int32_t t = threadIdx.x; t < len; t += STAT_THREADS) {
            uint32_t k = stat_key(pool.score[stat_slot(ln, pt, l, t)]);
            if ((k & hi_mask) == (prefix & hi_mask))
                atomicAdd(&hist[(k >> shift) & 255], 1);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int rank = s_rank, d = 0;
            while (rank >= hist[d])
                rank -= hist[d++];
            s_rank = rank;
            s_prefix = prefix | ((uint32_t)d << shift);
        }
        __syncthreads();
    }
    return s_prefix;
}

__global__ void stat_kernel(sinkd_kv_pool pool, sinkd_stat_args a)
{
    __shared__ double sh[STAT_THREADS];
    __shared__ int hist[256];
    const sinkd_lanes &ln = a.lanes;
    int32_t l = blockIdx.x, len = ln.len[l], pt = pool.page_tokens;

    switch (a.op) {
    case SINKD_STAT_OP_KEY_NORM: {
        int32_t hd = a.head_dim, t0 = a.n < len ? len - a.n : 0;
        size_t es = pool.dtype == SINKD_F16 || pool.dtype == SINKD_BF16 ? 2 : 4;
        for (int32_t t = t0 + threadIdx.x; t < len; t += STAT_THREADS) {
            int64_t slot = stat_slot(ln, pt, l, t);
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
            pool.score[slot] = (float)-sqrt(sq);
        }
        return;
    }
    case SINKD_STAT_OP_QUANTILE: {
        if (len == 0)
            return;
        uint32_t thr = lane_select(pool, ln, l, (int32_t)floor((double)a.quantile * (len - 1)), hist);
        for (int32_t t = threadIdx.x; t < len; t += STAT_THREADS) {
            int64_t slot = stat_slot(ln, pt, l, t);
            float hit = stat_key(pool.score[slot]) > thr ? 1.0f : 0.0f;
            pool.score[slot] = a.decay * a.prev[slot] + hit;
        }
        return;
    }
    case SINKD_STAT_OP_GUMBEL: {
        /* z is rounded to f32 as the CPU stores it */
        double mx = -INFINITY, sum = 0;
        for (int32_t t = threadIdx.x; t < len; t += STAT_THREADS) {
            float p = pool.score[stat_slot(ln, pt, l, t)];
            if (p > 0) {
                float z = (float)((log((double)p) - log(-log(sinkd_stat_uniform(a.seed, l, t)))) /
                                  a.temperature);
                mx = fmax(mx, (double)z);
            }
        }
        mx = block_max(mx, sh);
        for (int32_t t = threadIdx.x; t < len; t += STAT_THREADS) {
            float p = pool.score[stat_slot(ln, pt, l, t)];
            if (p > 0) {
                float z = (float)((log((double)p) - log(-log(sinkd_stat_uniform(a.seed, l, t)))) /
                                  a.temperature);
                sum += exp((double)z - mx);
            }
        }
        sum = block_sum(sum, sh);
        for (int32_t t = threadIdx.x; t < len; t += STAT_THREADS) {
            int64_t slot = stat_slot(ln, pt, l, t);
            float p = pool.score[slot];
            double w = 0;
            if (p > 0) {
                float z = (float)((log((double)p) - log(-log(sinkd_stat_uniform(a.seed, l, t)))) /
                                  a.temperature);
                w = exp((double)z - mx) / sum;
            }
            pool.score[slot] = (float)(a.prev[slot] + w);
        }
        return;
    }
    default:
        break;
    }
    for (int32_t t = threadIdx.x; t < len; t += STAT_THREADS) {
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
        default: /* DECAY */
            pool.score[slot] = (float)((double)a.decay * a.prev[slot] + pool.score[slot]);
            break;
        }
    }
}

extern "C" int sinkd_cuda_stat(sinkd_cuda *c, const sinkd_stat_args *a)
{
    if (!a || sinkd_cuda_check_pool(a->pool, a->head_dim) || a->lanes.n_lanes < 0)
        return -EINVAL;
    if (!sinkd_stat_args_ok(a))
        return -EINVAL;
    if (a->lanes.n_lanes == 0)
        return 0;
    /* the pool struct is host memory: it travels by value */
    stat_kernel<<<a->lanes.n_lanes, STAT_THREADS, 0, c->stream>>>(*a->pool, *a);
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}

/* ---- token selection --------------------------------------------------------- */

__global__ void topk_tokens_kernel(sinkd_kv_pool pool, sinkd_lanes ln, int32_t k, int32_t *out_pages)
{
    __shared__ int hist[256];
    __shared__ int scan[STAT_THREADS];
    __shared__ double sh[STAT_THREADS];
    int32_t l = blockIdx.x, len = ln.len[l], pt = pool.page_tokens;
    int32_t *out = out_pages + (size_t)l * k;
    int32_t n_out = 0;

    if (len <= k) {
        int32_t np = (len + pt - 1) / pt;
        for (int32_t i = threadIdx.x; i < k; i += STAT_THREADS)
            out[i] = i < np ? i : -1;
        return;
    }
    uint32_t thr = lane_select(pool, ln, l, len - k, hist);
    double above = 0;
    for (int32_t t = threadIdx.x; t < len; t += STAT_THREADS)
        above += stat_key(pool.score[stat_slot(ln, pt, l, t)]) > thr;
    int32_t ties_left = k - (int32_t)block_sum(above, sh);
    int32_t last_page = -1; /* of the last token taken, block-uniform */
    __shared__ int s_tot[2];
    for (int32_t c0 = 0; c0 < len; c0 += STAT_THREADS) {
        int32_t t = c0 + threadIdx.x;
        uint32_t key = t < len ? stat_key(pool.score[stat_slot(ln, pt, l, t)]) : 0;
        int tie = t < len && key == thr;
        int tie_incl = block_scan(tie, scan, false);
        bool take = t < len && (key > thr || (tie && tie_incl - tie < ties_left));
        int page = take ? t / pt : -1;
        /* pages ascend with t: the max scan is the page of the last token
         * taken at or before each thread */
        int incl = block_scan(page, scan, true);
        scan[threadIdx.x] = incl;
        __syncthreads();
        int excl = threadIdx.x > 0 ? scan[threadIdx.x - 1] : -1;
        int chunk_last = scan[STAT_THREADS - 1];
        __syncthreads();
        excl = excl > last_page ? excl : last_page;
        int fresh = take && page != excl;
        int new_incl = block_scan(fresh, scan, false);
        if (fresh)
            out[n_out + new_incl - 1] = page;
        if (threadIdx.x == STAT_THREADS - 1) {
            s_tot[0] = tie_incl;
            s_tot[1] = new_incl;
        }
        __syncthreads();
        ties_left -= s_tot[0] < ties_left ? s_tot[0] : ties_left;
        n_out += s_tot[1];
        last_page = chunk_last > last_page ? chunk_last : last_page;
        __syncthreads();
    }
    for (int32_t i = n_out + threadIdx.x; i < k; i += STAT_THREADS)
        out[i] = -1;
}

extern "C" int sinkd_cuda_topk_tokens(sinkd_cuda *c, const sinkd_topk_tokens_args *a)
{
    if (!a || !a->pool || a->k < 1 || a->lanes.n_lanes < 0 ||
        (a->lanes.n_lanes > 0 && !a->out_pages) || a->pool->page_tokens < 1)
        return -EINVAL;
    if (a->lanes.n_lanes == 0)
        return 0;
    topk_tokens_kernel<<<a->lanes.n_lanes, STAT_THREADS, 0, c->stream>>>(*a->pool, a->lanes, a->k,
                                                                          a->out_pages);
    SINKD_CUDA_CHECK_LAUNCH();
    return 0;
}
