/*
 * sinkd compute backends: one ops table, two implementations.
 *
 *   kernels/cpu/   plain C, the reference, what CI runs
 *   kernels/cuda/  CUDA kernels + cuBLAS (built when nvcc is found)
 *
 * Every op exists in both; tests compare each CUDA op with its CPU twin.
 * Pointers passed to ops are "device pointers": host memory for the CPU
 * backend, cudaMalloc'ed memory for CUDA. Only alloc/free/copy cross that
 * boundary. Ops are asynchronous on the backend's single stream; call sync()
 * before reading results on the host. Each op returns 0 or a negative errno
 * (-EINVAL for bad shapes, -ENOMEM, -EIO for a device failure).
 *
 * KV pool layout (DESIGN.md §3). The pool is an array of n_pages pages of
 * page_bytes each. A page holds page_tokens tokens of ONE lane
 * (session, layer, kv head): first K rows [page_tokens][head_dim], then V rows
 * [page_tokens][head_dim], in the pool's kv dtype. head_dim is the lane's (the
 * op's) head_dim, so V starts page_tokens * head_dim elements into the page
 * (page_bytes is sized for head_dim_max; the rest of a page is unused). Beside the pages, indexed by
 * slot = page * page_tokens + i:
 *   pos[slot]    int32  original position of the token (rope=absolute)
 *   score[slot]  f32    policy statistic (attention sums etc.)
 * and per page the Quest key bounds:
 *   kmin/kmax[page][head_dim] f32, channel-wise min/max of the page's keys
 *   ROTATED at their effective position (see sinkd_rope), so that
 *   q_rot . k_rot <= sum_i max(q_rot_i*kmax_i, q_rot_i*kmin_i) holds exactly.
 *   Under rope=cache a key's effective position is its index in the lane,
 *   which changes when tokens before it are evicted: compaction recomputes
 *   the bounds of every page of the compacted lane, so a rope switch
 *   recomputes a lane's bounds with kv_compact and an identity keep list.
 *   Bounds cover the page's valid tokens only (a lane's last page may be
 *   partly filled).
 *
 * Keys are stored BEFORE RoPE; attention rotates them at read time.
 */
#ifndef SINKD_BACKEND_H
#define SINKD_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sinkd_dtype {
    SINKD_F32 = 0,
    SINKD_F16 = 1,
    SINKD_BF16 = 2,
    SINKD_Q8_0 = 3, /* weights only: blocks of 32 int8 + one f16 scale (GGUF) */
} sinkd_dtype;

/* Bytes of @n elements of @dt (Q8_0: n must be a multiple of 32). */
size_t sinkd_dtype_bytes(sinkd_dtype dt, size_t n);
const char *sinkd_dtype_name(sinkd_dtype dt);

typedef enum sinkd_rope_style {
    SINKD_ROPE_ADJACENT = 0, /* GGUF/llama.cpp "normal": pairs (2i, 2i+1) */
    SINKD_ROPE_NEOX = 1,     /* half split: pairs (i, i + d/2) */
} sinkd_rope_style;

typedef enum sinkd_rope_mode {
    SINKD_ROPE_ABSOLUTE = 0, /* key position = stored original position */
    SINKD_ROPE_CACHE = 1,    /* key position = index in the lane (StreamingLLM) */
} sinkd_rope_mode;

/* RoPE parameters of a session. Pair i of a head_dim d rotates by angle
 * pos/scale * theta^(-2i/d). scale = 1 means no linear scaling. */
typedef struct sinkd_rope {
    float theta;   /* base, e.g. 10000 or 500000 */
    float scale;   /* linear position scaling factor (>= 1) */
    uint8_t style; /* sinkd_rope_style */
    uint8_t mode;  /* sinkd_rope_mode */
    uint8_t _pad[2];
} sinkd_rope;

/* What an attention op does with the per-key probabilities it may emit.
 * p = attention probability of a key, summed over the query heads of its
 * GQA group (so the values of one query sum to group size). */
typedef enum sinkd_score_op {
    SINKD_SCORE_NONE = 0,  /* do not compute */
    SINKD_SCORE_WRITE = 1, /* score[slot] = p               (TOVA: last row) */
    SINKD_SCORE_ADD = 2,   /* score[slot] += p              (H2O) */
    SINKD_SCORE_DECAY = 3, /* score[slot] = decay*score + p (A2SF) */
} sinkd_score_op;

/* The pool as the kernels see it. Owned by the KV store (daemon/kv); the
 * backend only reads and writes through these pointers. */
typedef struct sinkd_kv_pool {
    void *pages;      /* n_pages * page_bytes, kv dtype */
    int32_t *pos;     /* [n_pages * page_tokens] */
    float *score;     /* [n_pages * page_tokens] */
    float *kmin;      /* [n_pages * head_dim_max] */
    float *kmax;      /* [n_pages * head_dim_max] */
    size_t page_bytes;
    int32_t n_pages;
    int32_t page_tokens;
    int32_t head_dim_max; /* stride of kmin/kmax rows */
    uint8_t dtype;        /* sinkd_dtype of K/V: F32/F16 on CPU, F16/BF16 on GPU */
    uint8_t _pad[3];
} sinkd_kv_pool;

/* A batch of lanes as device arrays. Lane l has len[l] tokens stored in its
 * pages page_ids[page_off[l] .. page_off[l+1]); token t of the lane lives at
 * slot page_ids[page_off[l] + t / page_tokens] * page_tokens + t % page_tokens.
 * All lanes of one call share head_dim. */
typedef struct sinkd_lanes {
    int32_t n_lanes;
    int32_t _pad;
    const int32_t *len;      /* [n_lanes] */
    const int32_t *page_off; /* [n_lanes + 1] */
    const int32_t *page_ids; /* [page_off[n_lanes]] */
} sinkd_lanes;

/* Decode attention: one query token per sequence, over paged lanes.
 * A lane with no key to attend (len 0, or no selected page) gives out = 0.
 * Sequence s has n_kv_heads lanes: lane index s * n_kv_heads + h. Query head
 * qh uses kv head qh / (n_q_heads / n_kv_heads). The query is the LAST token
 * of each lane (appended before the call), so it attends to every key of its
 * lane (or the selected pages).
 *   q      [n_seqs][n_q_heads][head_dim] f32, before RoPE
 *   out    [n_seqs][n_q_heads][head_dim] f32
 *   q_pos  [n_seqs] query position for rope=absolute; ignored for
 *          rope=cache, where the query's position is len[lane] - 1
 *   sel    optional sparse decode: if sel_off != NULL, lane l attends only to
 *          logical pages sel_pages[sel_off[l] .. sel_off[l+1]) (indices into
 *          the lane's page list, ascending, each < ceil(len/page_tokens));
 *          key positions under rope=cache stay their full-lane index.
 *          Entries < 0 are skipped, so topk_pages' out_pages can be passed
 *          as it is with sel_off[l] = l * k.
 *   score  if score_op != NONE, pool->score of every key attended is updated
 *          with exact probabilities (normalised by the final log-sum-exp).
 */
typedef struct sinkd_decode_args {
    const sinkd_kv_pool *pool;
    sinkd_lanes lanes;
    int32_t n_seqs, n_q_heads, n_kv_heads, head_dim;
    sinkd_rope rope;
    float softmax_scale;     /* usually 1/sqrt(head_dim) */
    const float *q;
    float *out;
    const int32_t *q_pos;
    const int32_t *sel_off;  /* [n_lanes + 1] or NULL */
    const int32_t *sel_pages;
    int32_t score_op;        /* sinkd_score_op */
    float score_decay;
    /* Deferred scores (appended). NULL: the call completes its scores.
     * Otherwise (score_op != NONE, sel_off NULL) defer is a device array of
     * n_seqs pointers, defer[s] sequence s's deferral block (below), and
     * defer_layer (< defer_layers) this call's layer. Where the backend
     * defers this shape (ops->score_flush != NULL and sinkd_defer_takes),
     * the call leaves its probabilities pending in the lane's entry instead
     * of writing them, and applies what was pending there (ADD, DECAY;
     * WRITE drops it: the newest replaces it) once the entry is full:
     * with a group of up to 4 heads an entry holds two steps, so the
     * scores are read and written every other step; with 5 to 8, one.
     * Elsewhere the call scores now and leaves the block alone, so a block
     * whose every call had the same shape is always consistent. Scores
     * are complete again after ops->score_flush. */
    void *const *defer;
    int32_t defer_layer, defer_layers;
    /* Deferred rows (appended): for a rule that needs each step's whole
     * row of probabilities (sinkd_stat_args.row_len). With defer and
     * score_op WRITE, a non-NULL row makes every entry hold one step,
     * whatever the group, and the call applies the step pending in its
     * lane's entry by writing its probabilities into row (indexed by slot
     * like pool->score) for the keys below that step's len, and that len
     * into row_len[lane] (0 when nothing was pending: row untouched).
     * pool->score is not touched. A shape the backend does not defer
     * (no score_flush, or sinkd_defer_takes refuses it) is refused with
     * -ENOTSUP. Both device memory. */
    float *row;
    int32_t *row_len;
} sinkd_decode_args;

/* A sequence's deferral block: device memory the caller owns (zeroed
 * before its first use, freed after its last call), one entry per lane
 * x = layer * n_kv_heads + kv head, with G = n_q_heads / n_kv_heads, each
 * holding up to two pending steps, the older in slot 0:
 *   q    [x][2][G][head_dim] pool dtype at 0: the query rows as the decode
 *        kernel used them (rotated at the query position, times
 *        softmax_scale * log2(e), rounded to the pool dtype)
 *   lse  [x][2][G] f32 at sinkd_defer_lse_off: their final log-sum-exp, log2
 *   len  [x][2] int32 at sinkd_defer_len_off: the lane's length at that
 *        call; 0 = the slot is empty (slot 1 is empty when slot 0 is)
 * What a slot holds pending for a key of index i < len is
 * p = sum_h exp2(q[x][slot][h] . rope(k_i) - lse[x][slot][h]), applied with
 * the session's score_op, slot 0 first. @esize: bytes of a pool element. */
static inline size_t sinkd_defer_lse_off(int32_t layers, int32_t n_kv, int32_t group,
                                         int32_t head_dim, size_t esize)
{
    return ((size_t)layers * n_kv * 2 * group * head_dim * esize + 15) & ~(size_t)15;
}
static inline size_t sinkd_defer_len_off(int32_t layers, int32_t n_kv, int32_t group,
                                         int32_t head_dim, size_t esize)
{
    return sinkd_defer_lse_off(layers, n_kv, group, head_dim, esize) +
           (((size_t)layers * n_kv * 2 * group * sizeof(float) + 15) & ~(size_t)15);
}
static inline size_t sinkd_defer_bytes(int32_t layers, int32_t n_kv, int32_t group,
                                       int32_t head_dim, size_t esize)
{
    return sinkd_defer_len_off(layers, n_kv, group, head_dim, esize) +
           (size_t)layers * n_kv * 2 * sizeof(int32_t);
}
/* Whether a deferring backend defers decode calls of this shape: its
 * tensor-core kernel (head_dim 64 or 128, pages of a multiple of 16
 * tokens) with the pending queries in the half of its rows the group
 * leaves idle (two steps of up to 4 heads, or one of up to 8). */
static inline bool sinkd_defer_takes(int32_t group, int32_t head_dim, int32_t page_tokens)
{
    return group >= 1 && group <= 8 && (head_dim == 64 || head_dim == 128) && page_tokens % 16 == 0;
}

/* Apply what one sequence's deferral block holds pending for @layer's
 * lanes to pool->score with score_op (sinkd_decode_args.defer), slot 0
 * then slot 1, then mark both applied (len 0). lanes: that sequence's
 * n_kv_heads lanes of @layer as they are now: keys appended since the
 * deferring call are past its len and keep their score; the lanes must not have been compacted since, so
 * callers flush before anything reads scores or moves keys (eviction, a
 * prefill's own scoring, a policy swap, a snapshot). A lane with nothing
 * pending is left alone. */
typedef struct sinkd_score_flush_args {
    const sinkd_kv_pool *pool;
    sinkd_lanes lanes;       /* n_kv_heads lanes */
    int32_t n_q_heads, n_kv_heads, head_dim;
    int32_t layer, layers;
    sinkd_rope rope;         /* the keys' rotation, as the decode calls had it */
    void *defer;             /* device: the sequence's block */
    int32_t score_op;        /* WRITE, ADD or DECAY */
    float score_decay;
    /* A block the decode calls filled in rows mode (sinkd_decode_args.row):
     * with score_op WRITE, the pending step goes to row (by slot), its len
     * to row_len[h] for kv head h (0: nothing pending), pool->score
     * untouched. NULL: into pool->score as above. */
    float *row;
    int32_t *row_len;
} sinkd_score_flush_args;

/* Prefill attention of one sequence's chunk of n new tokens, causal. The
 * chunk is the last n tokens of each of the sequence's n_kv_heads lanes
 * (appended before the call); query i attends to keys 0 .. len - n + i.
 *   q      [n][n_q_heads][head_dim] f32 before RoPE; out likewise
 *   q_pos  [n] positions (rope=absolute); rope=cache uses len - n + i
 *   obs_w  if > 0, the attention of the last min(obs_w, n) queries to every
 *          key of the lane, summed over those queries and the group's heads,
 *          is written with score_op into pool->score (SnapKV's window).
 *          score_op is applied to every key 0 .. len-1 of each lane (keys
 *          after a query's position count 0 for it) and only when obs_w > 0:
 *          obs_w >= n accumulates over every query of the chunk (H2O).
 */
typedef struct sinkd_prefill_args {
    const sinkd_kv_pool *pool;
    sinkd_lanes lanes;       /* n_kv_heads lanes of one sequence */
    int32_t n, n_q_heads, n_kv_heads, head_dim;
    sinkd_rope rope;
    float softmax_scale;
    const float *q;
    float *out;
    const int32_t *q_pos;
    int32_t obs_w;
    int32_t score_op;
    float score_decay;
    /* The longest lane's len when the caller knows it (the KV store does),
     * 0 when not: the CUDA backend then reads the lengths back, a stream
     * sync each call. A value below some lane's len is an error on the
     * CPU; on CUDA it gives that lane wrong attention, never an access
     * outside the op's buffers. */
    int32_t max_len;
} sinkd_prefill_args;

/* Quest page scoring: for each lane of the batch (query = seq's q, rotated at
 * its position as in decode), score every page by
 *   sum over the group's query heads of sum_i max(q_i*kmax_i, q_i*kmin_i)
 * and write the top k logical page indices per lane, ascending, to
 * out_pages[l * k ..] (fewer than k pages: all of them, rest -1, and
 * -INFINITY in out_scores). Ties go to
 * the lower page index. The query position is q_pos[s] (rope=absolute) or
 * len[lane] - 1 (rope=cache), as in decode. */
typedef struct sinkd_topk_pages_args {
    const sinkd_kv_pool *pool;
    sinkd_lanes lanes;
    int32_t n_seqs, n_q_heads, n_kv_heads, head_dim;
    sinkd_rope rope;
    const float *q;          /* [n_seqs][n_q_heads][head_dim] before RoPE */
    const int32_t *q_pos;    /* [n_seqs] */
    int32_t k;
    int32_t _pad;
    int32_t *out_pages;      /* [n_lanes * k] */
    float *out_scores;       /* [n_lanes * k] or NULL: the bounds of the chosen pages */
} sinkd_topk_pages_args;

/* Append n tokens to each of n_lanes lanes of one layer (lanes of possibly
 * several sequences). Lane l receives rows k[l][0..n) / v[l][0..n) at its
 * tokens len[l] - n .. len[l] - 1 (pages already reserved by the store and
 * listed in `lanes`, len already including the new tokens). pos[l][i] is the
 * token's original position; score starts at 0. Page key bounds of the
 * touched pages are updated.
 *   k, v  [n_lanes][n][head_dim] f32 (converted to the pool dtype)
 *   pos   [n_lanes][n] */
typedef struct sinkd_append_args {
    const sinkd_kv_pool *pool;
    sinkd_lanes lanes;
    int32_t n, head_dim;
    sinkd_rope rope;         /* for the bounds (effective positions) */
    const float *k, *v;
    const int32_t *pos;
    /* Appended: layout of k and v. 0 = [n_lanes][n][head_dim] as above;
     * 1 = [n][n_lanes][head_dim], the K/V projection's output for the
     * n_kv_heads lanes of one sequence (pos stays [n_lanes][n]). */
    int32_t kv_token_major;
    int32_t _pad2;
} sinkd_append_args;

/* Keep-list compaction, in place per lane: lane l keeps its tokens
 * keep[keep_off[l] .. keep_off[l+1]) (strictly ascending indices < len[l]),
 * moving K, V, pos and score together to indices 0..nkeep-1. The store then
 * shortens the lane and frees its now-unused tail pages. The bounds of every
 * page holding kept tokens are recomputed with @rope (an identity keep list
 * only recomputes them). */
typedef struct sinkd_compact_args {
    const sinkd_kv_pool *pool;
    sinkd_lanes lanes;
    int32_t head_dim;
    sinkd_rope rope;
    const int32_t *keep_off; /* [n_lanes + 1] */
    const int32_t *keep;
} sinkd_compact_args;

/* Dense weight matrix as the backend holds it: w[rows][cols], row-major,
 * in dtype (F32/F16/BF16 or Q8_0 on the CPU; F16/BF16/F32 on CUDA). */
typedef struct sinkd_weight {
    const void *data;
    int32_t rows, cols;
    uint8_t dtype;
    uint8_t _pad[7];
} sinkd_weight;

/* Policy statistics the attention ops do not keep themselves (Scissorhands'
 * quantile counts, Keyformer's Gumbel scores, key norms) and the steps
 * around them. A rule that needs a whole row of probabilities runs in three
 * ops on the stream: STASH moves each key's statistic aside
 * (prev[slot] = score[slot], score[slot] = 0), the attention op writes this
 * step's probabilities with SINKD_SCORE_WRITE (keys it does not attend keep
 * p = 0), and the rule combines prev and p back into score. Every op covers
 * every token of every lane of @lanes.
 *   ZERO      score = 0
 *   STASH     prev = score; score = 0
 *   RESTORE   score = prev
 *   KEY_NORM  score = -||k||_2 of the stored (pre-RoPE) key, for the last
 *             n tokens of each lane (n clamped to the lane's length)
 *   DECAY     score = decay * prev + p            (SUM: decay = 1)
 *   QUANTILE  score = decay * prev + (p > thr ? 1 : 0), thr = the element of
 *             rank floor(quantile * (len - 1)) of the lane's p sorted
 *             ascending (exact selection, so every backend agrees bit for bit)
 *   GUMBEL    score = prev + softmax over the lane of (log p + g) / temperature
 *             for the keys with p > 0 (others add 0; a lane with none adds
 *             nothing); g = -log(-log(u)), u = sinkd_stat_uniform(seed, l, t)
 *             for token t of lane l of the call
 * prev is indexed by slot like pool->score: [n_pages * page_tokens]. */
typedef enum sinkd_stat_op {
    SINKD_STAT_OP_ZERO = 0,
    SINKD_STAT_OP_STASH = 1,
    SINKD_STAT_OP_RESTORE = 2,
    SINKD_STAT_OP_KEY_NORM = 3,
    SINKD_STAT_OP_DECAY = 4,
    SINKD_STAT_OP_QUANTILE = 5,
    SINKD_STAT_OP_GUMBEL = 6,
} sinkd_stat_op;

typedef struct sinkd_stat_args {
    const sinkd_kv_pool *pool;
    sinkd_lanes lanes;
    int32_t op;              /* sinkd_stat_op */
    int32_t head_dim;        /* the lanes' head_dim (KEY_NORM reads keys of it) */
    int32_t n;               /* KEY_NORM: tokens at the end of each lane */
    float quantile;          /* QUANTILE: in (0, 1) */
    float decay;             /* DECAY, QUANTILE: factor on prev, in [0, 1] */
    float temperature;       /* GUMBEL: > 0 */
    uint64_t seed;           /* GUMBEL: noise stream */
    float *prev;             /* STASH/RESTORE/DECAY/QUANTILE/GUMBEL */
    /* QUANTILE, GUMBEL on a deferred row (sinkd_decode_args.row): NULL, or
     * device [n_lanes] lengths. Then p is read from prev (the row) and the
     * statistic from score, which the rule updates in place: lane l's rule
     * covers its first row_len[l] tokens only (its row: quantile and
     * softmax over them), later tokens and lanes with row_len 0 keep their
     * score. The same arithmetic as without, on the same values. */
    const int32_t *row_len;
} sinkd_stat_args;

/* The scalar checks every backend's stat op makes (op known, prev given
 * where read, parameters in range); lanes and pool are checked apart. */
static inline bool sinkd_stat_args_ok(const sinkd_stat_args *a)
{
    if (a->op < SINKD_STAT_OP_ZERO || a->op > SINKD_STAT_OP_GUMBEL || a->lanes.n_lanes < 0)
        return false;
    if (a->op != SINKD_STAT_OP_ZERO && a->op != SINKD_STAT_OP_KEY_NORM && !a->prev)
        return false;
    if (a->op == SINKD_STAT_OP_KEY_NORM && a->n < 0)
        return false;
    if (a->row_len && a->op != SINKD_STAT_OP_QUANTILE && a->op != SINKD_STAT_OP_GUMBEL)
        return false;
    if ((a->op == SINKD_STAT_OP_DECAY || a->op == SINKD_STAT_OP_QUANTILE) &&
        !(a->decay >= 0.0f && a->decay <= 1.0f))
        return false;
    if (a->op == SINKD_STAT_OP_QUANTILE && !(a->quantile > 0.0f && a->quantile < 1.0f))
        return false;
    /* temperature <= FLT_MAX: finite without <math.h> */
    return a->op != SINKD_STAT_OP_GUMBEL ||
           (a->temperature > 0.0f && a->temperature <= 3.402823466e38f);
}

/* The scalar checks of ops->stat_rules: n >= 1 calls, each one
 * sinkd_stat_args_ok takes, all QUANTILE or all GUMBEL, sharing pool, prev
 * and the op's parameters. Slots are the caller's to keep apart. */
static inline bool sinkd_stat_rules_ok(const sinkd_stat_args *a, int32_t n)
{
    if (!a || n < 1 || (a[0].op != SINKD_STAT_OP_QUANTILE && a[0].op != SINKD_STAT_OP_GUMBEL))
        return false;
    for (int32_t i = 0; i < n; i++) {
        const sinkd_stat_args *b = &a[i];
        if (!sinkd_stat_args_ok(b) || b->op != a[0].op || b->pool != a[0].pool ||
            b->prev != a[0].prev)
            return false;
        if (b->op == SINKD_STAT_OP_QUANTILE &&
            (b->quantile != a[0].quantile || b->decay != a[0].decay))
            return false;
        if (b->op == SINKD_STAT_OP_GUMBEL && b->temperature != a[0].temperature)
            return false;
    }
    return true;
}

#if defined(__CUDACC__)
#define SINKD_STAT_HD __host__ __device__
#else
#define SINKD_STAT_HD
#endif

/* The Gumbel noise's draw for token @t of lane @l: a splitmix64 hash of
 * seed, l and t, the same on every backend. */
SINKD_STAT_HD static inline uint64_t sinkd_stat_hash(uint64_t seed, int32_t l, int32_t t)
{
    uint64_t x = seed ^ (((uint64_t)(uint32_t)l << 32) | (uint32_t)t);
    for (int i = 0; i < 2; i++) {
        x += 0x9e3779b97f4a7c15ull;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
        x ^= x >> 31;
    }
    return x;
}

/* Its uniform variate in (0, 1): (k + 0.5) / 2^24 for the hash's top 24
 * bits k. */
SINKD_STAT_HD static inline double sinkd_stat_uniform(uint64_t seed, int32_t l, int32_t t)
{
    return ((double)(sinkd_stat_hash(seed, l, t) >> 40) + 0.5) * (1.0 / 16777216.0);
}

/* Token selection (TidalDecode): for each lane the k tokens of highest
 * pool->score (ties to the lower index, NaN lowest), reported as the
 * ascending list of the logical pages holding them at out_pages[l * k ..],
 * the rest of the row -1. A lane of at most k tokens lists all its pages.
 * out_pages can be passed to attn_decode as sel_pages with sel_off[l] = l * k. */
typedef struct sinkd_topk_tokens_args {
    const sinkd_kv_pool *pool;
    sinkd_lanes lanes;
    int32_t k;               /* >= 1 */
    int32_t _pad;
    int32_t *out_pages;      /* [n_lanes * k] */
} sinkd_topk_tokens_args;

/* Fused small-m products of a decode step (ops->matvec). n_w matrices that
 * share x's columns and dtype (one launch for q, k and v; gate and up) read
 * x, optionally RMS-normalised on the fly, and combine the result into y:
 *   xn[r]  = norm ? x[r] * rsqrt(mean(x[r]^2) + norm_eps) * norm : x[r]
 *   p_i[r] = xn[r] . w[i]^T + bias[i]         (bias[i] may be NULL)
 *   STORE   y[i][r] = p_i[r]                  for every i
 *   ADD     y[i][r] += p_i[r]                 (a residual; y must not alias x)
 *   SWIGLU  y[0][r] = silu(p_0[r]) * p_1[r]   (n_w == 2, equal rows; y[1] unused)
 * Shapes: x [m][cols], y[i] [m][w[i]->rows], device memory. */
#define SINKD_MATVEC_MAX_M 8
#define SINKD_MATVEC_MAX_W 3
#define SINKD_MATVEC_MAX_X 16384 /* m * cols: larger calls are -ENOTSUP */
enum { SINKD_MATVEC_STORE = 0, SINKD_MATVEC_ADD = 1, SINKD_MATVEC_SWIGLU = 2 };
typedef struct sinkd_matvec_args {
    int32_t m;               /* 1..SINKD_MATVEC_MAX_M */
    int32_t n_w;             /* 1..SINKD_MATVEC_MAX_W */
    const float *x;
    const float *norm;       /* [cols] RMSNorm gain, or NULL */
    float norm_eps;
    int32_t epilogue;        /* SINKD_MATVEC_* */
    const sinkd_weight *w[SINKD_MATVEC_MAX_W];
    const float *bias[SINKD_MATVEC_MAX_W];
    float *y[SINKD_MATVEC_MAX_W];
} sinkd_matvec_args;

typedef struct sinkd_backend sinkd_backend;

typedef struct sinkd_backend_info {
    char name[16];           /* "cpu" or "cuda" */
    char device[128];        /* CPU model or GPU name */
    uint64_t mem_total;      /* bytes of device memory (RAM for cpu) */
    uint64_t mem_free;
    int32_t threads;         /* CPU worker threads / SM count */
    int32_t _pad;
} sinkd_backend_info;

/* The ops table. Every entry is required but the graph ops at the end.
 * Shapes in brackets are row-major, f32 unless a dtype is named. */
typedef struct sinkd_ops {
    /* memory: device allocations are not zeroed */
    int (*alloc)(sinkd_backend *be, void **p, size_t bytes);
    void (*free)(sinkd_backend *be, void *p);
    int (*memset0)(sinkd_backend *be, void *p, size_t bytes);
    /* h2d: @src may be reused as soon as h2d returns; the copy is ordered
     * after the ops issued before it. */
    int (*h2d)(sinkd_backend *be, void *dst, const void *src, size_t bytes);
    int (*d2h)(sinkd_backend *be, void *dst, const void *src, size_t bytes);
    int (*d2d)(sinkd_backend *be, void *dst, const void *src, size_t bytes);
    int (*sync)(sinkd_backend *be);
    int (*info)(sinkd_backend *be, sinkd_backend_info *out);

    /* KV and attention. kv_append and attn_decode may read their lane
     * arrays and positions (pos, q_pos) before the op ahead of them on the
     * stream has finished (the CUDA backend's programmatic dependent
     * launch): pass arrays written by a copy (h2d, d2d), as the KV store
     * and the engine do, never the output of the op just before. */
    int (*kv_append)(sinkd_backend *be, const sinkd_append_args *a);
    int (*kv_compact)(sinkd_backend *be, const sinkd_compact_args *a);
    int (*attn_decode)(sinkd_backend *be, const sinkd_decode_args *a);
    int (*attn_prefill)(sinkd_backend *be, const sinkd_prefill_args *a);
    int (*topk_pages)(sinkd_backend *be, const sinkd_topk_pages_args *a);

    /* model forward */
    /* y[m][w.rows] = x[m][w.cols] . w^T (+ bias[w.rows] if bias != NULL) */
    int (*matmul)(sinkd_backend *be, float *y, const float *x, int32_t m,
                  const sinkd_weight *w, const float *bias);
    /* y[m][d] = x * rsqrt(mean(x^2) + eps) * g[d]   (y may alias x) */
    int (*rmsnorm)(sinkd_backend *be, float *y, const float *x, const float *g,
                   int32_t m, int32_t d, float eps);
    /* x[m][n_heads][head_dim] rotated in place at positions pos[m] */
    int (*rope)(sinkd_backend *be, float *x, const int32_t *pos, int32_t m,
                int32_t n_heads, int32_t head_dim, const sinkd_rope *rope);
    /* gate[m][d] = silu(gate) * up   (in place) */
    int (*swiglu)(sinkd_backend *be, float *gate, const float *up, int32_t m, int32_t d);
    /* y[n] += x[n] */
    int (*add)(sinkd_backend *be, float *y, const float *x, int64_t n);
    /* out[m][d] = table row ids[i] (table in its dtype, converted to f32) */
    int (*embed)(sinkd_backend *be, float *out, const sinkd_weight *table,
                 const int32_t *ids, int32_t m);
    /* argmax per row: ids[m] = argmax(x[m][n]) (ties: lowest index) */
    int (*argmax)(sinkd_backend *be, int32_t *ids, const float *x, int32_t m, int32_t n);

    /* policy statistics and token selection (appended) */
    int (*stat)(sinkd_backend *be, const sinkd_stat_args *a);
    int (*topk_tokens)(sinkd_backend *be, const sinkd_topk_tokens_args *a);

    /* Recorded replays (appended). OPTIONAL, unlike every entry above: NULL
     * where the backend has none (the CPU), and the caller then issues its
     * ops one by one. Between graph_begin and graph_end the ops issued on
     * this thread are recorded, not run; graph_launch replays the recording
     * on the stream, ordered like any op. A recording freezes every argument
     * of every op (pointers, shapes, scalars), so only ops whose arguments are
     * the same at every replay belong in one: no h2d/d2h/sync/alloc/free, no
     * op that reads host memory. Buffers the backend grows for its own
     * scratch stay valid for the graphs that recorded them.
     *   graph_begin   -EBUSY if a recording is already open, -EIO
     *   graph_end     closes the recording and always returns the backend to
     *                 running ops; 0 and *@graph (owned by the caller, freed
     *                 with graph_free), or *@graph = NULL and -EIO (an op
     *                 could not be recorded: run them without a graph) or
     *                 -ENOMEM
     *   graph_launch  -EINVAL for NULL, -EIO
     *   graph_free    waits for the stream, then frees; NULL is a no-op */
    int (*graph_begin)(sinkd_backend *be);
    int (*graph_end)(sinkd_backend *be, void **graph);
    int (*graph_launch)(sinkd_backend *be, void *graph);
    void (*graph_free)(sinkd_backend *be, void *graph);

    /* Fused decode products (appended), sinkd_matvec_args. OPTIONAL like the
     * graph ops: NULL where the backend has none (the CPU), and the caller
     * composes rmsnorm, matmul, swiglu and add instead. -EINVAL for bad
     * arguments, -ENOTSUP for shapes the kernel does not take (m * cols >
     * SINKD_MATVEC_MAX_X, a row of w not a multiple of 16 bytes, x, norm or
     * w not 16-byte aligned, mixed columns or dtypes): compose those.
     * Results equal the composed ops up to fp32 summation order. */
    int (*matvec)(sinkd_backend *be, const sinkd_matvec_args *a);

    /* The same products for any m >= 1 (appended), sinkd_matvec_args with
     * m up to the caller's buffers: a prefill chunk or a large decode batch.
     * OPTIONAL like matvec (NULL on the CPU: compose). Where matvec is one
     * kernel, this is GEMMs: x normalised and rounded to the weights' dtype
     * once for every matrix, the residual added by the GEMM itself (ADD),
     * SwiGLU after the two products. -EINVAL for bad arguments (m < 1 and
     * everything matvec refuses as such), -ENOTSUP for mixed columns or
     * dtypes, -ENOMEM for scratch it could not get (inside a graph
     * recording: -EBUSY, as matmul). Results equal the composed ops up to
     * fp32 summation order. */
    int (*matmul_fused)(sinkd_backend *be, const sinkd_matvec_args *a);

    /* Deferred decode scores (appended), sinkd_score_flush_args. OPTIONAL:
     * NULL where decode never defers (the CPU). -EINVAL for bad arguments,
     * -ENOTSUP for a shape sinkd_defer_takes refuses (nothing can be
     * pending there). */
    int (*score_flush)(sinkd_backend *be, const sinkd_score_flush_args *a);

    /* Several rule calls at once (appended; OPTIONAL like the graph ops:
     * where NULL, the engine issues ops->stat for each layer as soon as
     * its attention has run): the same results as ops->stat on a[0], ...,
     * a[n - 1], for n >= 1 calls of one op, QUANTILE or GUMBEL, that share
     * pool, quantile, decay, temperature and prev and whose lanes share no
     * slot (so they may run in any order or at once; the rules of every
     * layer of a decode step, issued at the step's end). -EINVAL when a
     * call is one ops->stat refuses or the calls differ in what they must
     * share (checked before anything runs). */
    int (*stat_rules)(sinkd_backend *be, const sinkd_stat_args *a, int32_t n);
} sinkd_ops;

struct sinkd_backend {
    const sinkd_ops *ops;
    sinkd_backend_info info;
    void *priv;              /* implementation state (streams, handles, workspace) */
};

/* Open a backend by name ("cpu", "cuda", or "auto": cuda when a GPU is
 * present, else cpu). @threads: CPU worker threads (0 = number of cores).
 * On success *@out is owned by the caller; close it with sinkd_backend_close.
 * Errors: -ENODEV (cuda asked for but no GPU / not built), -ENOMEM, -EINVAL. */
int sinkd_backend_open(const char *name, int threads, sinkd_backend **out);
void sinkd_backend_close(sinkd_backend *be);

/* Implementation entry points (used by sinkd_backend_open and the tests). */
int sinkd_cpu_backend_open(int threads, sinkd_backend **out);
/* Returns -ENODEV when built without CUDA or when no GPU is visible. */
int sinkd_cuda_backend_open(sinkd_backend **out);
/* True when the CUDA backend was compiled in. */
bool sinkd_cuda_built(void);
/* Release a backend opened by the matching _open (sinkd_backend_close picks
 * the one named in be->info.name). NULL is a no-op. */
void sinkd_cpu_backend_close(sinkd_backend *be);
void sinkd_cuda_backend_close(sinkd_backend *be);

#ifdef __cplusplus
}
#endif
#endif /* SINKD_BACKEND_H */
