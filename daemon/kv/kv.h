/*
 * sinkd KV store: the page pool of one backend and the paged lanes of every
 * sequence that lives in it (DESIGN.md §3).
 *
 *   store     one per backend: a pool of n_pages pages (device memory, laid
 *             out as kernels/backend.h describes), a host free list, page
 *             accounting, per-sequence and per-uid page budgets, and small
 *             device scratch buffers for the lane arrays handed to the ops.
 *   sequence  one session's KV cache: n_layers * n_kv_heads lanes
 *             (lane index layer * n_kv_heads + kv_head), each with its own
 *             host page table (logical page -> physical page) and length.
 *
 * Page size. A page holds page_tokens tokens of one lane: K then V rows in
 * the pool dtype, page_bytes = 2 * page_tokens * head_dim_max * dtype size,
 * plus page_tokens * 8 bytes of pos/score and 2 * head_dim_max * 4 bytes of
 * key bounds. A sequence whose head_dim is smaller than the store's
 * head_dim_max wastes (head_dim_max - head_dim) / head_dim_max of each page's
 * K/V bytes and bound rows; configure head_dim_max as the model's head_dim
 * (one model per store) and nothing is wasted.
 *
 * Budgets are counted in pages. An append that would take a sequence over
 * its own budget or its uid over the per-uid budget fails with -EDQUOT; one
 * that finds too few free pages in the pool fails with -ENOMEM. Either way
 * nothing changed: no page was taken, no length moved, no other sequence was
 * touched.
 *
 * Threading: a store and its sequences are used by one thread at a time (the
 * engine thread); the caller serialises. Ops are issued on the backend's
 * single stream, so the device arrays returned by the lane builders may be
 * rebuilt as soon as the ops that read them have been issued.
 *
 * Typical decode step, one layer:
 *     sinkd_kv_append_batch_lanes(kv, seqs, n, layer, k, v, pos, &lanes); // 1 token each
 *     args.pool = sinkd_kv_pool_get(kv); args.lanes = lanes; ...
 *     be->ops->attn_decode(be, &args);
 * Prefill of a chunk: sinkd_kv_append_lanes(seq, layer, n, k, v, pos, &lanes)
 * and ops->attn_prefill.
 */
#ifndef SINKD_KV_H
#define SINKD_KV_H

#include <stdint.h>

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Configuration of a store (config keys in brackets). */
typedef struct sinkd_kv_config {
    uint64_t pool_bytes;    /* [kv_pool_bytes] pool size, everything included;
                               0 = pool_fraction of the backend's free memory
                               (on the CPU backend at most
                               SINKD_KV_CPU_POOL_DEFAULT_MAX) */
    double pool_fraction;   /* [kv_pool_fraction] used when pool_bytes == 0, (0, 1] */
    int32_t page_tokens;    /* [page_tokens] tokens per page, 1..4096 */
    int32_t head_dim_max;   /* largest head_dim served: the model's head_dim */
    uint8_t dtype;          /* [kv_dtype] sinkd_dtype of K/V: F32, F16, BF16
                               (the CUDA backend takes F16/BF16 only) */
    uint8_t _pad[7];
    int64_t session_pages;  /* default per-sequence budget in pages, 0 = none */
    int64_t uid_pages;      /* per-uid budget in pages (all its sequences), 0 = none */
} sinkd_kv_config;

/* Largest pool the CPU backend takes when only a fraction is configured:
 * its memory is the machine's RAM. Set pool_bytes for more. */
#define SINKD_KV_CPU_POOL_DEFAULT_MAX (1ull << 30)

#define SINKD_KV_CONFIG_INIT { 0, 0.5, 16, 128, SINKD_F16, {0}, 0, 0 }

typedef struct sinkd_kv sinkd_kv;
typedef struct sinkd_kv_seq sinkd_kv_seq;

/* Pool accounting. */
typedef struct sinkd_kv_stats {
    int64_t pages_total;
    int64_t pages_used;
    uint64_t page_bytes;    /* K+V bytes of one page */
    uint64_t page_cost;     /* all bytes one page costs (K, V, pos, score, bounds) */
    uint64_t bytes_total;   /* pages_total * page_cost */
    uint64_t bytes_used;    /* pages_used * page_cost */
    int32_t page_tokens;
    int32_t n_seqs;         /* sequences open */
} sinkd_kv_stats;

/* Shape of one sequence. */
typedef struct sinkd_kv_seq_params {
    uint32_t uid;           /* owner, for the per-uid budget */
    int32_t n_layers;       /* >= 1 */
    int32_t n_kv_heads;     /* >= 1 */
    int32_t head_dim;       /* multiple of 16, <= the store's head_dim_max */
    sinkd_rope rope;        /* used for the key bounds (append, compaction) */
    int64_t max_pages;      /* budget in pages: 0 = the store's session_pages,
                               < 0 = no per-sequence budget */
} sinkd_kv_seq_params;

/* Lengths of the lanes of one layer (or of all layers). */
typedef struct sinkd_kv_lane_stats {
    int32_t len_min, len_max;
    double len_mean;
    int64_t tokens;         /* sum of the lane lengths */
    int64_t pages;          /* pages held by these lanes */
    uint64_t bytes;         /* pages * page_cost */
} sinkd_kv_lane_stats;

/* Pass as @layer to cover every layer of a sequence. */
#define SINKD_KV_ALL_LAYERS (-1)

/* ---- store ------------------------------------------------------------- */

/* Create a store on @be (borrowed: it must outlive the store) and allocate its
 * pool: pool_bytes, or pool_fraction of be->info.mem_free, divided by the
 * page cost. On success *@out is owned by the caller (sinkd_kv_close).
 * Errors: -EINVAL (bad config: dtype, page_tokens, head_dim_max not a
 * positive multiple of 16, fraction out of range, a pool of less than one
 * page), -ENOMEM (host or device allocation failed). */
int sinkd_kv_open(sinkd_backend *be, const sinkd_kv_config *cfg, sinkd_kv **out);

/* Free the pool, the scratch buffers and every sequence still open (their
 * handles become invalid). NULL is a no-op. */
void sinkd_kv_close(sinkd_kv *kv);

/* The pool as the kernels see it (device pointers inside); valid for the
 * life of the store. Pass it as the `pool` of every op's args. */
const sinkd_kv_pool *sinkd_kv_pool_get(const sinkd_kv *kv);

/* Fill @out with the pool accounting. Cannot fail. */
void sinkd_kv_stats_get(const sinkd_kv *kv, sinkd_kv_stats *out);

/* Pages currently held by all sequences of @uid. */
int64_t sinkd_kv_uid_pages(const sinkd_kv *kv, uint32_t uid);

/* Which budget the store's last -EDQUOT came from, so that the error can
 * name it: a sequence's own (max_pages) or its uid's (uid_pages). */
typedef enum sinkd_kv_quota {
    SINKD_KV_QUOTA_SEQ = 0,
    SINKD_KV_QUOTA_UID = 1,
} sinkd_kv_quota;
sinkd_kv_quota sinkd_kv_last_quota(const sinkd_kv *kv);

/* ---- sequences --------------------------------------------------------- */

/* Open an empty sequence (every lane of length 0, no page). *@out is owned by
 * the store until sinkd_kv_seq_close. Errors: -EINVAL (shape, head_dim over
 * head_dim_max, bad rope), -ENOMEM (host memory). */
int sinkd_kv_seq_open(sinkd_kv *kv, const sinkd_kv_seq_params *p, sinkd_kv_seq **out);

/* Return every page of @seq to the pool and free it. NULL is a no-op. */
void sinkd_kv_seq_close(sinkd_kv_seq *seq);

/* Change the budget of @seq (same meaning as params.max_pages). A budget below
 * what the sequence holds only stops further growth. */
void sinkd_kv_seq_set_budget(sinkd_kv_seq *seq, int64_t max_pages);

/* Change the sequence's rope. When the mode, style, theta or scale changes,
 * the key bounds of every lane are recomputed (ops->kv_compact with an
 * identity keep list). Errors: -EINVAL, or the backend's error (the rope is
 * then left unchanged; bounds of some lanes may be stale). */
int sinkd_kv_seq_set_rope(sinkd_kv_seq *seq, const sinkd_rope *rope);

/* Length of one lane; -EINVAL for an index out of range. */
int32_t sinkd_kv_lane_len(const sinkd_kv_seq *seq, int32_t layer, int32_t kv_head);

/* Pages held by @seq (all lanes). */
int64_t sinkd_kv_seq_pages(const sinkd_kv_seq *seq);

/* Length statistics of the lanes of @layer, or of every lane with
 * SINKD_KV_ALL_LAYERS. Errors: -EINVAL (layer out of range). */
int sinkd_kv_lane_stats_get(const sinkd_kv_seq *seq, int32_t layer, sinkd_kv_lane_stats *out);

/* ---- append ------------------------------------------------------------ */

/* Append @n tokens to every lane of @layer of @seq: reserve the pages they
 * need, then ops->kv_append (K/V converted to the pool dtype, score 0, key
 * bounds updated with the sequence's rope).
 *   k, v  DEVICE [n][n_kv_heads][head_dim] f32: the K/V projection's output
 *   pos   HOST [n]: original positions of the tokens
 * Errors: -EINVAL (arguments), -EDQUOT (sequence or uid budget), -ENOMEM
 * (pool exhausted, host memory), -EOVERFLOW (lane length past INT32_MAX), or
 * the backend's error. On any error no lane changed (a backend failure after
 * the reservation returns the pages reserved by this call). */
int sinkd_kv_append(sinkd_kv_seq *seq, int32_t layer, int32_t n,
                    const float *k, const float *v, const int32_t *pos);

/* sinkd_kv_append that also returns in *@lanes the layer's lane arrays, as
 * sinkd_kv_lanes_seq would build them right after it (the append uploads
 * them already: a prefill chunk's attention needs no second h2d). Same
 * ownership and lifetime as sinkd_kv_lanes_batch's *@out. */
int sinkd_kv_append_lanes(sinkd_kv_seq *seq, int32_t layer, int32_t n, const float *k,
                          const float *v, const int32_t *pos, sinkd_lanes *lanes);

/* Append one token to every lane of @layer of each of @n_seqs sequences in
 * one kv_append (the decode step). All sequences belong to @kv and share
 * n_kv_heads and head_dim; a sequence may not appear twice.
 *   k, v  DEVICE [n_seqs][n_kv_heads][head_dim] f32
 *   pos   HOST [n_seqs]
 * Errors as sinkd_kv_append; all or nothing across the batch. */
int sinkd_kv_append_batch(sinkd_kv *kv, sinkd_kv_seq *const *seqs, int32_t n_seqs,
                          int32_t layer, const float *k, const float *v,
                          const int32_t *pos);

/* sinkd_kv_append_batch that also returns in *@lanes what
 * sinkd_kv_lanes_batch would build right after it: the append uploads its
 * lane arrays to the same scratch, so a decode step's attention needs no
 * second h2d. Same ownership and lifetime as sinkd_kv_lanes_batch's *@out. */
int sinkd_kv_append_batch_lanes(sinkd_kv *kv, sinkd_kv_seq *const *seqs, int32_t n_seqs,
                                int32_t layer, const float *k, const float *v,
                                const int32_t *pos, sinkd_lanes *lanes);

/* ---- lane arrays for the attention ops --------------------------------- */

/* Build the sinkd_lanes of @layer for a batch of sequences (lane
 * s * n_kv_heads + h, as attn_decode and topk_pages expect) in the store's
 * device scratch, with one h2d: len, page_off and page_ids back to back in
 * that order, one block of 2 * n_lanes + 1 + pages ints that a caller may
 * copy whole. *@out's arrays are owned by the store and
 * stay valid until the next sinkd_kv_lanes_* or sinkd_kv_append* call on
 * this store (ops issued before that call are ordered before the rewrite on
 * the backend stream).
 * Errors: -EINVAL (arguments, sequences of different n_kv_heads/head_dim,
 * layer out of range), -ENOMEM, or the backend's error. */
int sinkd_kv_lanes_batch(sinkd_kv *kv, sinkd_kv_seq *const *seqs, int32_t n_seqs,
                         int32_t layer, sinkd_lanes *out);

/* sinkd_kv_lanes_batch for one sequence: its n_kv_heads lanes of @layer (as
 * attn_prefill expects). Same ownership and errors. */
int sinkd_kv_lanes_seq(sinkd_kv_seq *seq, int32_t layer, sinkd_lanes *out);

/* ---- eviction ---------------------------------------------------------- */

/* Keep-list compaction of the lanes of @layer (or of every lane with
 * SINKD_KV_ALL_LAYERS, lanes in index order). Lane j keeps its tokens
 * keep[keep_off[j] .. keep_off[j+1]) (HOST arrays; strictly ascending
 * indices < the lane's length); ops->kv_compact moves K, V, pos and score
 * together and recomputes the bounds; then each lane is shortened and its
 * now-unused tail pages return to the pool at once.
 * Errors: -EINVAL (layer, keep_off not starting at 0 / not non-decreasing,
 * a keep list not strictly ascending or past the lane length: checked before
 * anything changes), -ENOMEM, or the backend's error (lanes then unchanged
 * on the host; their device contents are undefined). */
int sinkd_kv_compact(sinkd_kv_seq *seq, int32_t layer,
                     const int32_t *keep_off, const int32_t *keep);

/* Copy one lane's positions and scores to HOST arrays (either may be NULL)
 * of at least sinkd_kv_lane_len() entries; synchronises the backend. For
 * eviction callbacks and tests. Errors: -EINVAL, or the backend's error. */
int sinkd_kv_lane_read(const sinkd_kv_seq *seq, int32_t layer, int32_t kv_head,
                       int32_t *pos, float *score);

/* Copy one lane's K and V rows (converted to f32) to HOST arrays of
 * [len][head_dim] (either may be NULL); synchronises. For tests and
 * debugging. Errors: -EINVAL, -ENOMEM, or the backend's error. */
int sinkd_kv_lane_read_kv(const sinkd_kv_seq *seq, int32_t layer, int32_t kv_head,
                          float *k, float *v);

/* ---- restore ----------------------------------------------------------- */

/* Load saved lanes into the EMPTY lanes of @layer of @seq (session
 * restore): lane h gets len[h] tokens whose rows, positions and scores are
 * the h-th run of the HOST arrays (runs concatenated in kv-head order):
 *   k, v   [sum len][head_dim] f32 (converted to the pool dtype)
 *   pos    [sum len] original positions; score [sum len]
 * Key bounds are computed from the positions with the sequence's rope, so
 * set the rope first. The sequence's own budget is not applied (the lanes
 * were already admitted once); the uid budget is. Errors: -EINVAL (a lane
 * not empty, arguments), -EDQUOT, -ENOMEM, or the backend's error; on error
 * the layer's lanes are in an unspecified state: close the sequence. */
int sinkd_kv_layer_load(sinkd_kv_seq *seq, int32_t layer, const int32_t *len, const float *k,
                        const float *v, const int32_t *pos, const float *score);

#ifdef __cplusplus
}
#endif
#endif /* SINKD_KV_H */
