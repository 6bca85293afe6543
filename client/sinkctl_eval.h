/*
 * sinkctl eval: quality of a KV policy on a token stream.
 *
 * Three layers, each usable alone (the tests link the first two without a
 * daemon):
 *   sinkctl_eval_math.c    perplexity, KL divergence and top-1 over logits
 *   sinkctl_eval_report.c  the running totals, per-window figures, KV byte
 *                          samples, and their msgpack/JSON form
 *   sinkctl_eval_run.c     the stream itself, against the daemon: one
 *                          session.append of one token then session.logits
 *                          per step, logits through one registered memfd
 *   sinkctl_eval.c         the `sinkctl eval` command
 */
#ifndef SINKCTL_EVAL_H
#define SINKCTL_EVAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "client.h"

/* ---------------------------------------------------------------------------
 * Math over one position's logits (n_vocab floats). Everything is computed
 * in double with the max subtracted first, so large logits do not overflow.
 */

/* -log softmax(@logits)[@target], in nats. Returns NaN when @n is 0, @target
 * is out of range or a logit is not finite. */
double sinkctl_eval_nll(const float *logits, uint32_t n, uint32_t target);

/* KL(P || Q) in nats, where P = softmax(@p_logits) (the reference) and
 * Q = softmax(@q_logits) (the policy under test). >= 0 up to rounding.
 * Returns NaN when @n is 0 or a logit is not finite. */
double sinkctl_eval_kl(const float *p_logits, const float *q_logits, uint32_t n);

/* Index of the largest logit (the first one on ties); 0 when @n is 0. */
uint32_t sinkctl_eval_argmax(const float *logits, uint32_t n);

/* ---------------------------------------------------------------------------
 * Report: what one stream measured.
 */

/* Sums over a set of scored positions. */
typedef struct sinkctl_eval_sums {
    uint64_t n;        /* positions scored */
    double nll;        /* sum of -log p(next token) under the policy */
    double ref_nll;    /* the same under the reference (fidelity only) */
    double kl;         /* sum of KL(reference || policy) (fidelity only) */
    uint64_t agree;    /* positions where both top-1 tokens agree */
} sinkctl_eval_sums;

/* One window of `window` stream positions: [index * window, (index+1) * window). */
typedef struct sinkctl_eval_window {
    sinkctl_eval_sums sums;
    uint64_t kv_bytes;   /* session bytes after the window's last position */
} sinkctl_eval_window;

/* KV bytes held after @tokens stream positions were appended. */
typedef struct sinkctl_eval_sample {
    uint64_t tokens;
    uint64_t kv_bytes;
    uint64_t evicted;    /* evicted_tokens so far (summed over lanes) */
} sinkctl_eval_sample;

typedef struct sinkctl_eval_report {
    /* What ran: set by the caller before packing (copied strings). */
    char mode[16];              /* "ppl" or "fidelity" */
    char model[64];
    char policy[64];
    char params[256];
    char ref[16];               /* "" (ppl), "full" or "recompute" */
    uint64_t ref_ctx;           /* recompute: tokens of context per step */
    uint64_t ctx_len;           /* the model's context length */
    uint64_t tokens;            /* stream length, BOS included */
    double seconds;             /* policy session: append + logits time */
    double wall_seconds;        /* the whole stream, reference included */
    uint32_t window;            /* positions per window (> 0) */
    bool fidelity;
    /* Filled by sinkctl_eval_report_add / _sample. */
    sinkctl_eval_sums total;
    sinkctl_eval_window *windows;
    size_t n_windows, windows_cap;
    sinkctl_eval_sample *samples;
    size_t n_samples, samples_cap;
    uint64_t kv_bytes_max;
    uint64_t last_pos;          /* the last position added */
    char fallback[128];         /* policy_fallback reason, "" if none came */
} sinkctl_eval_report;

/* Put @r in its empty state for windows of @window positions (0 → 1024).
 * Can't fail; allocates nothing until the first add. */
void sinkctl_eval_report_init(sinkctl_eval_report *r, uint32_t window, bool fidelity);

/* Free the arrays of @r and put it back in its init state (same window and
 * mode, strings cleared). Safe on an init or already freed report. */
void sinkctl_eval_report_free(sinkctl_eval_report *r);

/* Score stream position @pos (>= 1: the token predicted from 0..pos-1):
 * @nll under the policy; for fidelity also @ref_nll, @kl and @agree.
 * Positions must come in increasing order. Returns 0, -EINVAL (@pos 0 or not
 * increasing, a non-finite value) or -ENOMEM; @r is unchanged on failure. */
int sinkctl_eval_report_add(sinkctl_eval_report *r, uint64_t pos, double nll,
                            double ref_nll, double kl, bool agree);

/* Record that the session held @kv_bytes (and had evicted @evicted tokens)
 * after @tokens positions; updates kv_bytes_max and, when @tokens closes a
 * window, that window's kv_bytes. Returns 0 or -ENOMEM (@r unchanged). */
int sinkctl_eval_report_sample(sinkctl_eval_report *r, uint64_t tokens,
                               uint64_t kv_bytes, uint64_t evicted);

/* exp(nll / n) of @s, or NaN when nothing was scored. Can't fail. */
double sinkctl_eval_ppl(const sinkctl_eval_sums *s);

/* The reference's perplexity, mean KL and top-1 agreement of @s (NaN when
 * nothing was scored). Can't fail. */
double sinkctl_eval_ref_ppl(const sinkctl_eval_sums *s);
double sinkctl_eval_mean_kl(const sinkctl_eval_sums *s);
double sinkctl_eval_top1(const sinkctl_eval_sums *s);

/* Pack @r as one msgpack map (the JSON document's schema, see
 * sinkctl_eval_report_write_json). Returns 0 or -ENOMEM. */
int sinkctl_eval_report_pack(const sinkctl_eval_report *r, msgpack_packer *pk);

/* Write @r to @f as one JSON object and a newline:
 *   {mode, model, policy, params, ref, ref_ctx, ctx_len, tokens, scored,
 *    ppl, nll_mean, tokens_per_s, seconds, wall_seconds, kv_bytes_final,
 *    kv_bytes_max, window, fallback,
 *    [fidelity: ref_ppl, kl_mean, top1],
 *    windows: [{start, end, n, ppl, kv_bytes [, ref_ppl, kl_mean, top1]}],
 *    samples: [{tokens, kv_bytes, evicted}]}
 * Perplexities of empty windows are null. Returns 0, -ENOMEM, or -EIO when
 * writing @f failed. */
int sinkctl_eval_report_write_json(const sinkctl_eval_report *r, FILE *f);

/* ---------------------------------------------------------------------------
 * Reference logits file: a reference computed once serves many policies.
 * Layout (little-endian): the 8 bytes "SKEVREF1", a 64-byte NUL-padded model
 * name, a 16-byte NUL-padded reference name, u32 n_vocab, u32 ref_ctx,
 * u64 n_tokens, u64 FNV-1a hash of the token ids, then n_tokens - 1 rows of
 * n_vocab f32: the reference's logits after stream positions 0..n_tokens-2.
 */

typedef struct sinkctl_eval_refcache {
    FILE *f;             /* NULL when no file is in use */
    bool writing;        /* true: computing it now; false: reading it */
    uint32_t n_vocab;
    char path[4096];     /* the final name */
    char tmp[4096];      /* writing: the temporary name, renamed by finish */
} sinkctl_eval_refcache;

#define SINKCTL_EVAL_REFCACHE_INIT { NULL, false, 0, "", "" }

/* Open @path for the stream @ids[0..n) of @model under reference @ref with
 * @ref_ctx: read it when it exists and was made for exactly that stream;
 * create it (under a temporary name) when it does not exist. Returns 0,
 * -EINVAL when it exists for another stream (@err names the difference; it
 * is never overwritten), -ENAMETOOLONG, or the errno of the failing call.
 * @c must be in its init state; on failure it stays so. */
int sinkctl_eval_refcache_open(sinkctl_eval_refcache *c, const char *path,
                               const char *model, const char *ref, uint32_t ref_ctx,
                               uint32_t n_vocab, const int32_t *ids, size_t n,
                               char *err, size_t errlen);

/* Read the next row into @logits (n_vocab floats) / append @logits as the
 * next row. Return 0, -EIO (short file, write error) or -EINVAL (wrong
 * direction). */
int sinkctl_eval_refcache_read(sinkctl_eval_refcache *c, float *logits);
int sinkctl_eval_refcache_write(sinkctl_eval_refcache *c, const float *logits);

/* Close @c. A file being written is renamed to its final name when @keep
 * (every row written), else deleted. Returns 0 or the errno of the close or
 * rename; @c is back in its init state either way. */
int sinkctl_eval_refcache_finish(sinkctl_eval_refcache *c, bool keep);

/* ---------------------------------------------------------------------------
 * Streams against the daemon.
 */

/* The figures of a model that the stream needs (from model.list). */
typedef struct sinkctl_eval_model {
    char name[64];
    uint32_t n_vocab;
    uint32_t ctx_len;
} sinkctl_eval_model;

/* Look @name (NULL: the daemon's first model) up with model.list into @m.
 * Returns as sinkd_client_request, or -ENOENT when no such model is listed,
 * -EPROTO on a malformed reply. */
int sinkctl_eval_model_get(sinkd_client *c, const char *name, int timeout_ms,
                           sinkctl_eval_model *m);

/* Tokenize @len bytes of @text with the daemon's tokenize op on model @model
 * (BOS as the model adds it) and keep at most @max_tokens ids (0: all).
 * On 0, *@ids (malloc'ed, the caller frees) holds *@n ids. Returns as
 * sinkd_client_request, or -EPROTO on a malformed reply. */
int sinkctl_eval_tokenize(sinkd_client *c, const char *model, const char *text,
                          size_t len, size_t max_tokens, int timeout_ms,
                          int32_t **ids, size_t *n);

/* Called after each scored position (and once at the end with done ==
 * total): for a progress display. */
typedef void (*sinkctl_eval_progress_fn)(void *arg, const sinkctl_eval_report *r,
                                         uint64_t done, uint64_t total);

typedef struct sinkctl_eval_opts {
    const sinkctl_eval_model *model;  /* required */
    const char *policy;               /* required */
    const char *params;               /* "k=v k=v" or NULL */
    const char *ref;                  /* NULL: ppl only; "full" or "recompute" */
    uint32_t ref_ctx;                 /* recompute context; 0: the model's */
    uint32_t sample_every;            /* session.stats every N positions; 0: 64 */
    const char *ref_logits;           /* reference logits file, or NULL */
    int timeout_ms;
    sinkctl_eval_progress_fn progress;
    void *progress_arg;
} sinkctl_eval_opts;

/* Stream @ids[0..n) (n >= 2) through a new session of @o->policy, one
 * token per session.append, reading each step's logits through a memfd
 * registered once; with @o->ref, through a reference in lock step as well.
 * Fills @r (initialised by the caller; its strings are set here). Sessions
 * and the memfd are released before returning, also on failure.
 * Returns 0, a positive sinkd_errcode (the daemon's message is in
 * sinkd_client_errmsg(@c)), or a negative errno: -EINVAL (bad options),
 * -EPROTO (a malformed reply, or non-finite logits: @err says which),
 * -ENOMEM, or a transport error. @err (may be NULL) gets a message for the
 * local failures. */
int sinkctl_eval_stream(sinkd_client *c, const sinkctl_eval_opts *o,
                        const int32_t *ids, size_t n, sinkctl_eval_report *r,
                        char *err, size_t errlen);

#endif /* SINKCTL_EVAL_H */
