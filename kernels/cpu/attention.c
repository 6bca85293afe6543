/*
 * Paged attention on the CPU: decode (one query per sequence) and prefill
 * (a causal chunk of one sequence). Keys are stored before RoPE and rotated
 * here at their effective position (stored position, or lane index under
 * rope=cache); queries are rotated at theirs.
 *
 * decode   one task per lane (its G = n_q_heads / n_kv_heads query heads share
 *          every K/V row read). Scores of the lane's keys are kept
 *          ([G][len] f32 per thread), so softmax uses the exact max and the
 *          probabilities written to pool->score are normalised by the final
 *          log-sum-exp. Reads len * 2 * head_dim elements per lane,
 *          4 * G * len * head_dim FLOPs.
 * prefill  flash-style: one task per (kv head, block of PF_QB queries); keys
 *          stream in blocks of PF_KB with an online softmax (running max,
 *          rescaled double accumulators), so nothing of size n x len exists.
 *          The observation window's probabilities are a second pass per
 *          (kv head, key chunk) using each query's final log-sum-exp.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

#define PF_QB 16  /* queries per prefill task */
#define PF_KB 32  /* keys per block */
#define PF_KC 256 /* keys per score task */

static inline float dotf(const float *a, const float *b, int32_t n)
{
    /* 16 partial sums: vectorises without reassociation flags */
    float acc[16] = {0};
    for (int32_t i = 0; i < n; i += 16)
        for (int32_t u = 0; u < 16; u++)
            acc[u] += a[i + u] * b[i + u];
    float s = 0;
    for (int u = 0; u < 16; u++)
        s += acc[u];
    return s;
}

static inline void score_apply(float *s, int32_t op, float decay, double p)
{
    if (op == SINKD_SCORE_WRITE)
        *s = (float)p;
    else if (op == SINKD_SCORE_ADD)
        *s = (float)(*s + p);
    else if (op == SINKD_SCORE_DECAY)
        *s = (float)((double)decay * *s + p);
}

static inline int64_t key_pos(const sinkd_kv_pool *pool, const cpu__rope *r, int32_t t, int64_t slot)
{
    return r->mode == SINKD_ROPE_CACHE ? t : pool->pos[slot];
}

/* K row of token t of lane l, converted and rotated into dst[head_dim]. */
static inline void load_key(const sinkd_kv_pool *pool, const sinkd_lanes *ln, int32_t l,
                            int32_t t, int32_t hd, const cpu__rope *r, float *dst)
{
    int64_t slot = cpu__slot(pool, ln, l, t);
    cpu__row_load(dst, cpu__kv_row(pool, slot, hd, 0), pool->dtype, hd);
    cpu__rope_row(r, dst, key_pos(pool, r, t, slot));
}

static int check_common(const sinkd_kv_pool *pool, const sinkd_lanes *ln, int32_t n_q_heads,
                        int32_t n_kv_heads, int32_t hd, const sinkd_rope *rope,
                        int32_t score_op, int32_t *max_len)
{
    if (cpu__lanes_check(pool, ln, hd, max_len) || cpu__rope_check(rope))
        return -EINVAL;
    if (n_kv_heads < 1 || n_q_heads < n_kv_heads || n_q_heads % n_kv_heads)
        return -EINVAL;
    if (score_op < SINKD_SCORE_NONE || score_op > SINKD_SCORE_DECAY)
        return -EINVAL;
    return 0;
}

/* ---- decode ----------------------------------------------------------------- */

typedef struct decode_ctx {
    const sinkd_decode_args *a;
    cpu__rope rope;
    float **scratch;
    int32_t group, max_len;
} decode_ctx;

static void decode_lane(void *vctx, int64_t task, int tid)
{
    const decode_ctx *c = vctx;
    const sinkd_decode_args *a = c->a;
    const sinkd_kv_pool *pool = a->pool;
    const sinkd_lanes *ln = &a->lanes;
    int32_t l = (int32_t)task, G = c->group, hd = a->head_dim, pt = pool->page_tokens;
    int32_t s = l / a->n_kv_heads, h = l % a->n_kv_heads, len = ln->len[l];
    size_t head0 = (size_t)s * a->n_q_heads + (size_t)h * G;
    float *out = a->out + head0 * hd;

    /* scratch: acc double[G*hd] | mx, lsum double[G] | q[G*hd] | row[hd] |
     * sc[G][max_len] | slots int64[max_len] */
    double *acc = (double *)c->scratch[tid];
    double *mx = acc + (size_t)G * hd, *lsum = mx + G;
    float *q = (float *)(lsum + G), *row = q + (size_t)G * hd, *sc = row + hd;
    int64_t *slots = (int64_t *)(sc + (size_t)G * c->max_len + (G * c->max_len) % 2);

    int64_t qpos = c->rope.mode == SINKD_ROPE_CACHE ? (int64_t)len - 1 : a->q_pos[s];
    for (int32_t g = 0; g < G; g++) {
        memcpy(q + (size_t)g * hd, a->q + (head0 + g) * hd, (size_t)hd * sizeof(float));
        cpu__rope_row(&c->rope, q + (size_t)g * hd, qpos);
        mx[g] = -INFINITY;
        lsum[g] = 0;
    }
    int32_t npages = (len + pt - 1) / pt;
    int32_t j0 = a->sel_off ? a->sel_off[l] : 0, j1 = a->sel_off ? a->sel_off[l + 1] : npages;

    /* pass 1: scores of every attended key (the selected pages, in order) */
    int32_t nk = 0;
    for (int32_t j = j0; j < j1; j++) {
        int32_t p = a->sel_off ? a->sel_pages[j] : j;
        if (p < 0)
            continue;
        int32_t t1 = (p + 1) * pt < len ? (p + 1) * pt : len;
        for (int32_t t = p * pt; t < t1; t++, nk++) {
            slots[nk] = cpu__slot(pool, ln, l, t);
            cpu__row_load(row, cpu__kv_row(pool, slots[nk], hd, 0), pool->dtype, hd);
            cpu__rope_row(&c->rope, row, key_pos(pool, &c->rope, t, slots[nk]));
            for (int32_t g = 0; g < G; g++) {
                float v = a->softmax_scale * dotf(q + (size_t)g * hd, row, hd);
                sc[(size_t)g * c->max_len + nk] = v;
                mx[g] = v > mx[g] ? v : mx[g];
            }
        }
    }
    if (nk == 0) {
        memset(out, 0, (size_t)G * hd * sizeof(float));
        return;
    }
    /* pass 2: softmax-weighted sum of the values */
    memset(acc, 0, (size_t)G * hd * sizeof(double));
    for (int32_t j = 0; j < nk; j++) {
        cpu__row_load(row, cpu__kv_row(pool, slots[j], hd, 1), pool->dtype, hd);
        for (int32_t g = 0; g < G; g++) {
            double e = exp((double)sc[(size_t)g * c->max_len + j] - mx[g]);
            double *ag = acc + (size_t)g * hd;
            lsum[g] += e;
            for (int32_t i = 0; i < hd; i++)
                ag[i] += e * row[i];
        }
    }
    for (int32_t g = 0; g < G; g++)
        for (int32_t i = 0; i < hd; i++)
            out[(size_t)g * hd + i] = (float)(acc[(size_t)g * hd + i] / lsum[g]);
    if (a->score_op == SINKD_SCORE_NONE)
        return;
    /* pass 3: exact probabilities, summed over the group */
    for (int32_t j = 0; j < nk; j++) {
        double pk = 0;
        for (int32_t g = 0; g < G; g++)
            pk += exp((double)sc[(size_t)g * c->max_len + j] - mx[g]) / lsum[g];
        score_apply(&pool->score[slots[j]], a->score_op, a->score_decay, pk);
    }
}

int cpu__attn_decode(sinkd_backend *be, const sinkd_decode_args *a)
{
    int32_t max_len;
    if (!be || !a || check_common(a->pool, &a->lanes, a->n_q_heads, a->n_kv_heads,
                                  a->head_dim, &a->rope, a->score_op, &max_len))
        return -EINVAL;
    if (a->n_seqs < 0 || (int64_t)a->n_seqs * a->n_kv_heads != a->lanes.n_lanes)
        return -EINVAL;
    if (a->n_seqs > 0 && (!a->q || !a->out || (a->rope.mode == SINKD_ROPE_ABSOLUTE && !a->q_pos)))
        return -EINVAL;
    int64_t max_pos = max_len;
    if (a->rope.mode == SINKD_ROPE_ABSOLUTE)
        for (int32_t s = 0; s < a->n_seqs; s++)
            max_pos = a->q_pos[s] + 1 > max_pos ? a->q_pos[s] + 1 : max_pos;
    if (a->row) /* rows mode is deferral's; the CPU scores every call now */
        return -ENOTSUP;
    if (a->sel_off) {
        int32_t pt = a->pool->page_tokens;
        if (a->lanes.n_lanes > 0 && (a->sel_off[0] < 0 || !a->sel_pages))
            return -EINVAL;
        for (int32_t l = 0; l < a->lanes.n_lanes; l++) {
            int32_t npages = (a->lanes.len[l] + pt - 1) / pt, prev = -1;
            if (a->sel_off[l + 1] < a->sel_off[l])
                return -EINVAL;
            for (int32_t j = a->sel_off[l]; j < a->sel_off[l + 1]; j++) {
                int32_t p = a->sel_pages[j];
                if (p < 0)
                    continue;
                if (p <= prev || p >= npages)
                    return -EINVAL;
                prev = p;
            }
        }
    }
    cpu__backend *cb = cpu__of(be);
    int32_t G = a->n_q_heads / a->n_kv_heads;
    size_t keys = max_len > 0 ? (size_t)max_len : 1;
    size_t need = 2 * ((size_t)G * a->head_dim + 2 * (size_t)G) + (size_t)G * a->head_dim +
                  a->head_dim + (size_t)G * keys + 1 + 2 * keys;
    int rc = cpu__scratch_reserve(cb, need);
    if (rc)
        return rc;
    decode_ctx c = {.a = a, .scratch = cb->scratch, .group = G, .max_len = max_len};
    cpu__rope_prepare(cb, &a->rope, a->head_dim, max_pos, &c.rope);
    cpu__pool_run(cb->pool, a->lanes.n_lanes, decode_lane, &c);
    return 0;
}

/* ---- prefill ---------------------------------------------------------------- */

typedef struct prefill_ctx {
    const sinkd_prefill_args *a;
    cpu__rope rope;
    float **scratch;
    int32_t group, n_qblocks, n_kchunks;
    float *qr;    /* [n][n_q_heads][head_dim] rotated queries */
    double *lse;  /* [n][n_q_heads] final log-sum-exp */
} prefill_ctx;

static void prefill_rotate(void *vctx, int64_t task, int tid)
{
    (void)tid;
    const prefill_ctx *c = vctx;
    const sinkd_prefill_args *a = c->a;
    int32_t i = (int32_t)(task / a->n_q_heads), qh = (int32_t)(task % a->n_q_heads);
    int32_t h = qh / c->group, hd = a->head_dim;
    float *dst = c->qr + (size_t)task * hd;
    int64_t pos = c->rope.mode == SINKD_ROPE_CACHE ? (int64_t)a->lanes.len[h] - a->n + i
                                                   : a->q_pos[i];
    memcpy(dst, a->q + (size_t)task * hd, (size_t)hd * sizeof(float));
    cpu__rope_row(&c->rope, dst, pos);
}

static void prefill_block(void *vctx, int64_t task, int tid)
{
    const prefill_ctx *c = vctx;
    const sinkd_prefill_args *a = c->a;
    const sinkd_kv_pool *pool = a->pool;
    int32_t G = c->group, hd = a->head_dim, nqh = a->n_q_heads;
    int32_t h = (int32_t)(task / c->n_qblocks), qb = (int32_t)(task % c->n_qblocks);
    int32_t i0 = qb * PF_QB, i1 = i0 + PF_QB < a->n ? i0 + PF_QB : a->n;
    int32_t len = a->lanes.len[h], base = len - a->n; /* query i sees keys <= base + i */
    int32_t rows = (i1 - i0) * G;

    /* scratch: acc double[rows*hd] | m, lsum double[rows] | K, V [PF_KB][hd] | s[PF_KB] */
    double *acc = (double *)c->scratch[tid];
    double *m = acc + (size_t)rows * hd, *lsum = m + rows;
    float *kb = (float *)(lsum + rows), *vb = kb + (size_t)PF_KB * hd, *s = vb + (size_t)PF_KB * hd;

    memset(acc, 0, (size_t)rows * hd * sizeof(double));
    for (int32_t r = 0; r < rows; r++) {
        m[r] = -INFINITY;
        lsum[r] = 0;
    }
    int32_t kend = base + i1; /* keys [0, kend) */
    for (int32_t t0 = 0; t0 < kend; t0 += PF_KB) {
        int32_t t1 = t0 + PF_KB < kend ? t0 + PF_KB : kend;
        for (int32_t t = t0; t < t1; t++) {
            load_key(pool, &a->lanes, h, t, hd, &c->rope, kb + (size_t)(t - t0) * hd);
            int64_t slot = cpu__slot(pool, &a->lanes, h, t);
            cpu__row_load(vb + (size_t)(t - t0) * hd, cpu__kv_row(pool, slot, hd, 1),
                          pool->dtype, hd);
        }
        for (int32_t i = i0; i < i1; i++) {
            int32_t te = base + i + 1 < t1 ? base + i + 1 : t1; /* causal end */
            if (te <= t0)
                continue;
            for (int32_t g = 0; g < G; g++) {
                int32_t r = (i - i0) * G + g;
                const float *qv = c->qr + ((size_t)i * nqh + (size_t)h * G + g) * hd;
                float bm = -INFINITY;
                for (int32_t t = t0; t < te; t++) {
                    s[t - t0] = a->softmax_scale * dotf(qv, kb + (size_t)(t - t0) * hd, hd);
                    bm = s[t - t0] > bm ? s[t - t0] : bm;
                }
                double mn = bm > m[r] ? bm : m[r];
                double corr = exp(m[r] - mn); /* 0 on the first block */
                double *ar = acc + (size_t)r * hd;
                if (corr != 1.0) {
                    lsum[r] *= corr;
                    for (int32_t d = 0; d < hd; d++)
                        ar[d] *= corr;
                }
                m[r] = mn;
                for (int32_t t = t0; t < te; t++) {
                    double e = exp((double)s[t - t0] - mn);
                    const float *vr = vb + (size_t)(t - t0) * hd;
                    lsum[r] += e;
                    for (int32_t d = 0; d < hd; d++)
                        ar[d] += e * vr[d];
                }
            }
        }
    }
    for (int32_t i = i0; i < i1; i++)
        for (int32_t g = 0; g < G; g++) {
            int32_t r = (i - i0) * G + g;
            size_t qh = (size_t)i * nqh + (size_t)h * G + g;
            for (int32_t d = 0; d < hd; d++)
                a->out[qh * hd + d] = (float)(acc[(size_t)r * hd + d] / lsum[r]);
            c->lse[qh] = m[r] + log(lsum[r]);
        }
}

static void prefill_scores(void *vctx, int64_t task, int tid)
{
    const prefill_ctx *c = vctx;
    const sinkd_prefill_args *a = c->a;
    const sinkd_kv_pool *pool = a->pool;
    int32_t G = c->group, hd = a->head_dim, nqh = a->n_q_heads;
    int32_t h = (int32_t)(task / c->n_kchunks), kc = (int32_t)(task % c->n_kchunks);
    int32_t len = a->lanes.len[h], base = len - a->n;
    int32_t t0 = kc * PF_KC, t1 = t0 + PF_KC < len ? t0 + PF_KC : len;
    int32_t w = a->obs_w < a->n ? a->obs_w : a->n;
    float *k = c->scratch[tid];

    for (int32_t t = t0; t < t1; t++) {
        load_key(pool, &a->lanes, h, t, hd, &c->rope, k);
        double p = 0;
        for (int32_t i = a->n - w; i < a->n; i++) {
            if (t > base + i)
                continue;
            for (int32_t g = 0; g < G; g++) {
                size_t qh = (size_t)i * nqh + (size_t)h * G + g;
                float sv = a->softmax_scale * dotf(c->qr + qh * hd, k, hd);
                p += exp((double)sv - c->lse[qh]);
            }
        }
        score_apply(&pool->score[cpu__slot(pool, &a->lanes, h, t)], a->score_op,
                    a->score_decay, p);
    }
}

int cpu__attn_prefill(sinkd_backend *be, const sinkd_prefill_args *a)
{
    int32_t max_len;
    if (!be || !a || check_common(a->pool, &a->lanes, a->n_q_heads, a->n_kv_heads,
                                  a->head_dim, &a->rope, a->score_op, &max_len))
        return -EINVAL;
    if (a->lanes.n_lanes != a->n_kv_heads || a->n < 1 || a->obs_w < 0 || !a->q || !a->out ||
        (a->rope.mode == SINKD_ROPE_ABSOLUTE && !a->q_pos))
        return -EINVAL;
    if (a->max_len < 0)
        return -EINVAL;
    for (int32_t h = 0; h < a->n_kv_heads; h++)
        if (a->lanes.len[h] < a->n || (a->max_len > 0 && a->lanes.len[h] > a->max_len))
            return -EINVAL;
    int64_t max_pos = max_len;
    if (a->rope.mode == SINKD_ROPE_ABSOLUTE)
        for (int32_t i = 0; i < a->n; i++)
            max_pos = a->q_pos[i] + 1 > max_pos ? a->q_pos[i] + 1 : max_pos;

    cpu__backend *cb = cpu__of(be);
    int32_t G = a->n_q_heads / a->n_kv_heads, hd = a->head_dim;
    size_t rows = (size_t)PF_QB * G;
    size_t need = 2 * (rows * hd + 2 * rows) + 2 * (size_t)PF_KB * hd + PF_KB;
    int rc = cpu__scratch_reserve(cb, need);
    if (rc)
        return rc;
    size_t nq = (size_t)a->n * a->n_q_heads;
    prefill_ctx c = {
        .a = a, .scratch = cb->scratch, .group = G,
        .n_qblocks = (a->n + PF_QB - 1) / PF_QB,
        .n_kchunks = (max_len + PF_KC - 1) / PF_KC,
        .qr = malloc(nq * hd * sizeof(float)),
        .lse = malloc(nq * sizeof(double)),
    };
    if (!c.qr || !c.lse) {
        free(c.qr);
        free(c.lse);
        return -ENOMEM;
    }
    cpu__rope_prepare(cb, &a->rope, hd, max_pos, &c.rope);
    cpu__pool_run(cb->pool, (int64_t)nq, prefill_rotate, &c);
    cpu__pool_run(cb->pool, (int64_t)a->n_kv_heads * c.n_qblocks, prefill_block, &c);
    if (a->obs_w > 0 && a->score_op != SINKD_SCORE_NONE)
        cpu__pool_run(cb->pool, (int64_t)a->n_kv_heads * c.n_kchunks, prefill_scores, &c);
    free(c.qr);
    free(c.lse);
    return 0;
}
