/*
 * Fused matrix-vector products of a decode step (ops->matvec, backend.h):
 * up to three matrices sharing x in one launch, RMSNorm of x folded in, and
 * a STORE, ADD (residual) or SWIGLU epilogue.
 *
 * At batch 1 a step is ~2.5 GB of weights read once, so the step is these
 * kernels' bandwidth. What held them back before (ncu, Llama-3.2-1B shapes
 * on an H100): one launch per matrix with a norm, an add and a swiglu launch
 * around them (~9 us of fixed cost a layer), the 2 MB k and v matrices
 * reading at 0.4 TB/s (a launch is mostly ramp), and 8 scalar loads of x
 * per 16 bytes of weights.
 *
 * Layout of the work: a persistent grid (as many blocks as the SMs hold).
 * Each block stages x in shared memory once, RMS-normalised and scaled by
 * the gain when asked (so the inner loop reads x with 16-byte shared loads
 * and no norm math), then its warps take warp items: MV_R consecutive rows
 * of one matrix, or for SWIGLU the same row of the gate and the up matrix.
 * A warp walks its rows' columns in 16-byte chunks, MV_U chunks a row in
 * flight per lane before any math (MV_R * MV_U * 512 bytes a warp). Each x
 * value serves the MV_R rows and each weight the m rows of x. m * cols
 * floats must fit the staging area (MV_SMEM_MAX): larger calls are
 * -ENOTSUP and the caller composes them from cuBLAS.
 *
 * Launches are programmatic dependent launches: a kernel's first weight
 * loads go out while the kernel before it drains (~0.1 ms of a 1.45 ms
 * step). Tried and measured no better on the H100 (bench/e2e/NOTES.md):
 * 4 chunks in flight instead of 8 (3 blocks an SM), one block an SM so the
 * next kernel's blocks fit beside it, x read in place when there is no
 * norm, and 2-4 warps splitting an 8192-column row.
 */

#include "common.cuh"
#include "pdl.cuh"

#define MV_WARPS 8
#define MV_R 2
#define MV_U 8
/* SWIGLU puts the gate row in slot 0 and the up row in slot 1. */
static_assert(MV_R == 2, "SWIGLU needs two slots a warp");
/* x rows staged in shared memory: m * cols floats at most (8 x 2048, 1 x 16K) */
#define MV_SMEM_MAX (SINKD_MATVEC_MAX_X * 4)

struct mv_params {
    const float *x;
    const float *norm;
    float eps;
    int cols, m, epilogue;
    const void *w[SINKD_MATVEC_MAX_W];
    const float *bias[SINKD_MATVEC_MAX_W];
    float *y[SINKD_MATVEC_MAX_W];
    int rows[SINKD_MATVEC_MAX_W];
    int items[SINKD_MATVEC_MAX_W]; /* warp items per matrix (SWIGLU: one entry) */
    int n_items;
};

/* 16 bytes of weights, read once: no L1 allocation; L2 still holds a small
 * model's weights from one step to the next. */
static __device__ __forceinline__ uint4 mv_load(const void *p)
{
    uint4 u;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(u.x), "=r"(u.y), "=r"(u.z), "=r"(u.w)
                 : "l"(p));
    return u;
}

template <typename T>
static __device__ __forceinline__ void mv_unpack(const uint4 &u, float *f)
{
    constexpr int V = 16 / sizeof(T);
    const T *e = reinterpret_cast<const T *>(&u);
#pragma unroll
    for (int i = 0; i < V; i++)
        f[i] = kv_traits<T>::to_f(e[i]);
}

/* xs[r][c] = x[r][c] * rsqrt(mean(x[r]^2) + eps) * g[c] (or x as is). */
template <int M>
static __device__ void mv_stage(const mv_params &p, float *xs)
{
    __shared__ float part[M][MV_WARPS];
    __shared__ float scale[M];
    int w = threadIdx.x / 32, ln = threadIdx.x % 32, n4 = p.cols / 4;
    for (int r = 0; r < p.m; r++) {
        const float4 *s = reinterpret_cast<const float4 *>(p.x + (size_t)r * p.cols);
        float4 *d = reinterpret_cast<float4 *>(xs + (size_t)r * p.cols);
        float ss = 0.0f;
        for (int i = threadIdx.x; i < n4; i += blockDim.x) {
            float4 v = s[i];
            d[i] = v;
            ss = fmaf(v.x, v.x, fmaf(v.y, v.y, fmaf(v.z, v.z, fmaf(v.w, v.w, ss))));
        }
        if (!p.norm)
            continue;
        for (int o = 16; o > 0; o >>= 1)
            ss += __shfl_xor_sync(0xffffffffu, ss, o);
        if (ln == 0)
            part[r][w] = ss;
    }
    __syncthreads();
    if (!p.norm)
        return;
    if (threadIdx.x < p.m) {
        float ss = 0.0f;
#pragma unroll
        for (int i = 0; i < MV_WARPS; i++)
            ss += part[threadIdx.x][i];
        scale[threadIdx.x] = rsqrtf(ss / (float)p.cols + p.eps);
    }
    __syncthreads();
    const float4 *g = reinterpret_cast<const float4 *>(p.norm);
    for (int r = 0; r < p.m; r++) {
        float4 *d = reinterpret_cast<float4 *>(xs + (size_t)r * p.cols);
        float sc = scale[r];
        for (int i = threadIdx.x; i < n4; i += blockDim.x) {
            float4 v = d[i], gv = g[i];
            d[i] = make_float4(v.x * sc * gv.x, v.y * sc * gv.y, v.z * sc * gv.z, v.w * sc * gv.w);
        }
    }
    __syncthreads();
}

/* Persistent: each block stages x once, then its warps take warp items
 * (MV_R rows of one matrix, or a gate/up row pair) until none is left. A
 * warp's first loads (weights only: nothing earlier in the stream writes
 * them) go out before it waits for the previous kernel and stages x. */
template <typename T, int M>
__global__ void __launch_bounds__(MV_WARPS * 32) matvec_kernel(mv_params p)
{
    constexpr int V = 16 / sizeof(T), SPAN = 32 * MV_U;
    extern __shared__ float4 mv_smem[];
    float *xs = reinterpret_cast<float *>(mv_smem);
    bool swiglu = p.epilogue == SINKD_MATVEC_SWIGLU;
    int warp = threadIdx.x / 32, ln = threadIdx.x % 32, chunks = p.cols / V;
    int it = blockIdx.x * MV_WARPS + warp, mi = 0, r0 = 0, rows = 0;
    const T *wr[MV_R];
    bool ok[MV_R];
    uint4 u[MV_R][MV_U];
    auto setup = [&]() {
        int b = it;
        mi = 0;
        while (mi + 1 < SINKD_MATVEC_MAX_W && b >= p.items[mi]) {
            b -= p.items[mi];
            mi++;
        }
        rows = p.rows[mi];
        /* slot s: row r0 + s of matrix mi, or (SWIGLU) row r0 of matrix s */
        r0 = swiglu ? b : b * MV_R;
#pragma unroll
        for (int s = 0; s < MV_R; s++) {
            int r = swiglu ? r0 : r0 + s;
            ok[s] = r < rows;
            wr[s] = (const T *)(swiglu ? p.w[s] : p.w[mi]) + (size_t)(ok[s] ? r : 0) * p.cols;
        }
    };
    auto issue = [&](int c0) {
#pragma unroll
        for (int k = 0; k < MV_U; k++) {
            int c = c0 + k * 32;
#pragma unroll
            for (int s = 0; s < MV_R; s++)
                u[s][k] = ok[s] && c < chunks ? mv_load(wr[s] + (size_t)c * V)
                                              : make_uint4(0, 0, 0, 0);
        }
    };
    if (it < p.n_items) {
        setup();
        issue(ln);
    }
    pdl_trigger();
    pdl_wait();
    mv_stage<M>(p, xs);
    for (bool first = true; it < p.n_items; it += gridDim.x * MV_WARPS, first = false) {
        if (!first)
            setup();
        float acc[M][MV_R];
#pragma unroll
        for (int r = 0; r < M; r++)
#pragma unroll
            for (int s = 0; s < MV_R; s++)
                acc[r][s] = 0.0f;
        for (int c0 = ln; c0 < chunks; c0 += SPAN) {
            if (!first || c0 != ln)
                issue(c0);
#pragma unroll
            for (int k = 0; k < MV_U; k++) {
                int c = c0 + k * 32;
                if (c >= chunks)
                    break;
                float wf[MV_R][V];
#pragma unroll
                for (int s = 0; s < MV_R; s++)
                    mv_unpack<T>(u[s][k], wf[s]);
#pragma unroll
                for (int r = 0; r < M; r++) {
                    if (r >= p.m)
                        break;
                    const float4 *xv = reinterpret_cast<const float4 *>(xs + (size_t)r * p.cols + c * V);
                    float xf[V];
#pragma unroll
                    for (int i = 0; i < V / 4; i++) {
                        float4 v = xv[i];
                        xf[4 * i] = v.x;
                        xf[4 * i + 1] = v.y;
                        xf[4 * i + 2] = v.z;
                        xf[4 * i + 3] = v.w;
                    }
#pragma unroll
                    for (int s = 0; s < MV_R; s++)
#pragma unroll
                        for (int i = 0; i < V; i++)
                            acc[r][s] = fmaf(wf[s][i], xf[i], acc[r][s]);
                }
            }
        }
        /* lane j ends up with value j: (row r, slot s) = (j / MV_R, j % MV_R) */
        float mine = 0.0f;
#pragma unroll
        for (int r = 0; r < M; r++)
#pragma unroll
            for (int s = 0; s < MV_R; s++) {
                float v = acc[r][s];
                for (int o = 16; o > 0; o >>= 1)
                    v += __shfl_xor_sync(0xffffffffu, v, o);
                if (ln == r * MV_R + s)
                    mine = v;
            }
        float up = __shfl_down_sync(0xffffffffu, mine, 1);
        int r = ln / MV_R, s = ln % MV_R;
        if (r >= p.m || ln >= M * MV_R || !(s == 0 ? ok[0] : ok[1]))
            continue;
        if (swiglu) {
            if (s == 0) {
                float g = mine + (p.bias[0] ? p.bias[0][r0] : 0.0f);
                float v = up + (p.bias[1] ? p.bias[1][r0] : 0.0f);
                p.y[0][(size_t)r * rows + r0] = g / (1.0f + expf(-g)) * v;
            }
            continue;
        }
        int row = r0 + s;
        float v = mine + (p.bias[mi] ? p.bias[mi][row] : 0.0f);
        float *y = p.y[mi] + (size_t)r * rows + row;
        *y = p.epilogue == SINKD_MATVEC_ADD ? *y + v : v;
    }
}

/* Blocks of matvec_kernel<T, M> an SM holds with @smem bytes of staging,
 * cached by size (one cache per instantiation: the attribute and the
 * occupancy belong to the kernel). */
template <typename T, int M>
static int mv_fit(size_t smem)
{
    static size_t sizes[8];
    static int fits[8], n, attr;
    for (int i = 0; i < n; i++)
        if (sizes[i] == smem)
            return fits[i];
    if (!attr) {
        if (cudaFuncSetAttribute(matvec_kernel<T, M>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 MV_SMEM_MAX) != cudaSuccess)
            return -1;
        attr = 1;
    }
    int nb = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, matvec_kernel<T, M>, MV_WARPS * 32,
                                                      smem) != cudaSuccess)
        return -1;
    if (n < 8) {
        sizes[n] = smem;
        fits[n++] = nb;
    }
    return nb;
}

template <typename T, int M>
static int mv_launch_m(sinkd_cuda *c, const mv_params &p)
{
    static const bool pdl = pdl_env_allows("SINKD_MATVEC_PDL"); /* read once */
    size_t smem = (size_t)p.m * p.cols * sizeof(float);
    int nb = mv_fit<T, M>(smem);
    if (nb <= 0)
        return nb == 0 ? -ENOTSUP : -EIO;
    int64_t need = (p.n_items + MV_WARPS - 1) / MV_WARPS;
    int64_t grid = (int64_t)c->n_sm * nb < need ? (int64_t)c->n_sm * nb : need;
    SINKD_CUDA_TRY(pdl_launch(pdl && pdl_env_on(), c->stream, matvec_kernel<T, M>, dim3((unsigned)grid),
                              dim3(MV_WARPS * 32), smem, p));
    return 0;
}

template <typename T>
static int mv_launch(sinkd_cuda *c, const mv_params &p)
{
    if (p.m == 1)
        return mv_launch_m<T, 1>(c, p);
    if (p.m == 2)
        return mv_launch_m<T, 2>(c, p);
    if (p.m <= 4)
        return mv_launch_m<T, 4>(c, p);
    return mv_launch_m<T, 8>(c, p);
}

static bool mv_aligned(const void *p) { return ((uintptr_t)p & 15) == 0; }

int sinkd_cuda_matvec_check(const sinkd_matvec_args *a, int32_t max_m)
{
    if (!a || a->m < 1 || a->m > max_m || a->n_w < 1 || a->n_w > SINKD_MATVEC_MAX_W || !a->x ||
        a->epilogue < SINKD_MATVEC_STORE || a->epilogue > SINKD_MATVEC_SWIGLU ||
        (a->norm && !(a->norm_eps >= 0.0f)))
        return -EINVAL;
    bool swiglu = a->epilogue == SINKD_MATVEC_SWIGLU;
    if (swiglu && a->n_w != 2)
        return -EINVAL;
    for (int i = 0; i < a->n_w; i++) {
        const sinkd_weight *w = a->w[i];
        if (!w || !w->data || w->rows <= 0 || w->cols <= 0 || (!a->y[i] && !(swiglu && i == 1)))
            return -EINVAL;
        if (w->dtype != SINKD_F32 && w->dtype != SINKD_F16 && w->dtype != SINKD_BF16)
            return -EINVAL;
        if (w->cols != a->w[0]->cols || w->dtype != a->w[0]->dtype ||
            (swiglu && w->rows != a->w[0]->rows))
            return -ENOTSUP;
    }
    return 0;
}

int sinkd_cuda_matvec(sinkd_cuda *c, const sinkd_matvec_args *a)
{
    int rc = sinkd_cuda_matvec_check(a, SINKD_MATVEC_MAX_M);
    if (rc)
        return rc;
    bool swiglu = a->epilogue == SINKD_MATVEC_SWIGLU;
    mv_params p = {};
    p.x = a->x;
    p.norm = a->norm;
    p.eps = a->norm_eps;
    p.m = a->m;
    p.epilogue = a->epilogue;
    for (int i = 0; i < a->n_w; i++) {
        p.w[i] = a->w[i]->data;
        p.bias[i] = a->bias[i];
        p.y[i] = a->y[i];
        p.rows[i] = a->w[i]->rows;
    }
    uint8_t dt = a->w[0]->dtype;
    size_t es = dt == SINKD_F32 ? 4 : 2;
    int cols = a->w[0]->cols;
    if ((cols * es) % 16 || !mv_aligned(a->x) || (a->norm && !mv_aligned(a->norm)) ||
        (size_t)a->m * cols * sizeof(float) > MV_SMEM_MAX)
        return -ENOTSUP;
    for (int i = 0; i < a->n_w; i++)
        if (!mv_aligned(a->w[i]->data))
            return -ENOTSUP;
    p.cols = cols;
    int64_t items = 0;
    for (int i = 0; i < (swiglu ? 1 : a->n_w); i++) {
        p.items[i] = swiglu ? p.rows[i] : (p.rows[i] + MV_R - 1) / MV_R;
        items += p.items[i];
    }
    if (items > INT32_MAX)
        return -EINVAL;
    p.n_items = (int)items;
    switch (dt) {
    case SINKD_F32: return mv_launch<float>(c, p);
    case SINKD_F16: return mv_launch<__half>(c, p);
    default: return mv_launch<__nv_bfloat16>(c, p);
    }
}
