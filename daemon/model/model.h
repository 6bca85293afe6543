/*
 * The model runner: a decoder-only transformer read from GGUF, its weights on
 * a compute backend, and the forward pass of a prefill chunk (n tokens of one
 * sequence) or a decode step (one token for each of a batch of sequences),
 * with the KV cache in a sinkd_kv store.
 *
 * Architectures: `llama` (Llama 1/2/3, TinyLlama, Mistral: GQA, rope
 * freq_base, linear rope scaling, tied or untied output) and `qwen2` (Q/K/V
 * biases). GGUF llama files carry Q and K rows permuted for the adjacent-pair
 * RoPE (llama.cpp's convert does it), qwen2 files are not permuted and use the
 * half-split ("neox") pairs: the rope style follows the architecture.
 *
 * One layer of the forward (x is the residual stream, rows = tokens):
 *   xb = rmsnorm(x) ; q,k,v = xb Wq,Wk,Wv (+b) ; append k,v (before RoPE)
 *   att = attention(q, lanes)   (the op rotates q and the keys itself)
 *   x += att Wo ; xb = rmsnorm(x) ; x += (silu(xb Wg) * xb Wu) Wd
 * then logits = rmsnorm(x) Wout.
 *
 * A model is used by one thread at a time (its scratch buffers are shared by
 * every call); weights are read-only after load.
 *
 * CUDA graphs: on a backend with the graph ops (CUDA), a decode step replays
 * recorded graphs of the ops between two attention calls (norms, matmuls,
 * residuals, the final norm and output matmul), one set per batch size, the
 * first step of a batch size eager, the second recording; uploads, KV
 * append, the policy hook and attention stay eager. Results are the same
 * bits either way. The environment variable SINKD_CUDA_GRAPHS=0, read at
 * sinkd_model_load, turns them off (sinkd_model_graphs_set overrides it).
 * A recording that fails is logged once and the model decodes without
 * graphs from then on. While a recording is open the backend's stream must
 * not be used from another thread.
 */
#ifndef SINKD_MODEL_H
#define SINKD_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "gguf.h"
#include "kv.h"

typedef enum sinkd_arch {
    SINKD_ARCH_LLAMA = 1,
    SINKD_ARCH_QWEN2 = 2,
} sinkd_arch;

/* Hyper-parameters, from the GGUF metadata "<arch>.*". */
typedef struct sinkd_model_hparams {
    sinkd_arch arch;
    int32_t n_vocab;
    int32_t dim;          /* embedding_length */
    int32_t n_layers;     /* block_count */
    int32_t n_heads;      /* attention.head_count */
    int32_t n_kv_heads;   /* attention.head_count_kv (default n_heads) */
    int32_t head_dim;     /* attention.key_length (default dim / n_heads) */
    int32_t ffn_dim;      /* feed_forward_length */
    int32_t ctx_len;      /* context_length (trained context) */
    float norm_eps;       /* attention.layer_norm_rms_epsilon */
    float rope_theta;     /* rope.freq_base (default 10000) */
    float rope_scale;     /* rope.scaling.factor with type linear (default 1) */
    uint8_t rope_style;   /* sinkd_rope_style: llama adjacent, qwen2 neox */
    bool tied_output;     /* no output.weight: logits use token_embd */
    bool qkv_bias;
    char name[64];        /* general.name, may be empty */
} sinkd_model_hparams;

/* Load-time choices. */
typedef struct sinkd_model_config {
    int32_t max_tokens;   /* rows of the scratch buffers: the largest prefill
                             chunk (longer prompts are split) and decode batch */
    int32_t logit_rows;   /* rows of the device logits buffer (all_logits is
                             computed in blocks of this many); 0 = max_tokens */
    int32_t weight_dtype; /* -1 = keep the file's type (Q8_0 becomes F16 where
                             the backend cannot take it), or a sinkd_dtype to
                             convert every matrix to (F32, F16, BF16) */
} sinkd_model_config;

#define SINKD_MODEL_CONFIG_INIT {512, 0, -1}

typedef struct sinkd_model sinkd_model;

/* Read the hyper-parameters of @g without loading anything. Errors:
 * -ENOTSUP for an architecture sinkd does not run (the message names it),
 * -EINVAL for missing or inconsistent metadata or tensors. */
int sinkd_model_hparams_read(const sinkd_gguf *g, sinkd_model_hparams *hp, char *err, size_t errlen);

/* Check the tensors of @g against its hyper-parameters, allocate the weights
 * and scratch buffers on @be and upload. @be is borrowed and must outlive the
 * model; @g may be closed after the call (weights are copied). On success
 * *@out is owned by the caller (sinkd_model_free). Errors: those of
 * sinkd_model_hparams_read, -EINVAL for a missing or misshapen tensor or a bad
 * config, -ENOMEM (host or device), -EIO. */
int sinkd_model_load(sinkd_backend *be, const sinkd_gguf *g, const sinkd_model_config *cfg,
                     sinkd_model **out, char *err, size_t errlen);

/* Free every device and host allocation. NULL is a no-op. */
void sinkd_model_free(sinkd_model *m);

const sinkd_model_hparams *sinkd_model_hparams_get(const sinkd_model *m);

/* Device bytes held by the weights. */
uint64_t sinkd_model_weight_bytes(const sinkd_model *m);

/* The model's RoPE (theta, scale, style) with @mode (sinkd_rope_mode): what
 * a sequence of this model opens its KV lanes with. */
sinkd_rope sinkd_model_rope(const sinkd_model *m, uint8_t mode);

/* KV sequence parameters for this model (layers, kv heads, head_dim, rope
 * with @mode); uid and max_pages are left for the caller. */
void sinkd_model_seq_params(const sinkd_model *m, uint8_t mode, sinkd_kv_seq_params *p);

/* Called just before each attention op, so that the caller (the policy
 * engine) can set score_op, obs_w, a sparse selection, ... Either may be
 * NULL. A nonzero return aborts the forward with that error. */
typedef struct sinkd_model_hook {
    int (*prefill)(void *ctx, int32_t layer, sinkd_prefill_args *a);
    int (*decode)(void *ctx, int32_t layer, sinkd_decode_args *a);
    void *ctx;
} sinkd_model_hook;

typedef struct sinkd_model_opts {
    uint8_t rope_mode;              /* sinkd_rope_mode of the sequences */
    bool all_logits;                /* prefill: logits of every token, not only the last */
    const sinkd_model_hook *hook;   /* NULL = dense attention, no scores */
} sinkd_model_opts;

/* Run @n tokens @ids (HOST) at positions @pos (HOST) of one sequence @seq of
 * store @kv: appends their K/V to every lane of every layer and writes to
 * @logits (HOST, may be NULL) the logits of the last token [n_vocab], or
 * with opts->all_logits of every token [n][n_vocab]. Chunks longer than
 * max_tokens are run in pieces. Errors: -EINVAL (arguments, token id out of
 * range), the KV store's -EDQUOT / -ENOMEM, or the backend's error. When an
 * error happens after some layers appended, the lanes of those layers hold
 * the chunk (or part of it, when chunked): the caller should drop the
 * sequence or compact it back. */
int sinkd_model_prefill(sinkd_model *m, sinkd_kv *kv, sinkd_kv_seq *seq, const int32_t *ids,
                        const int32_t *pos, int32_t n, const sinkd_model_opts *opts,
                        float *logits);

/* One decode step for @n_seqs sequences (each at most once, n_seqs <=
 * max_tokens): token @ids[s] at position @pos[s] (HOST) is appended to
 * sequence @seqs[s] and its logits written to @logits[s] (HOST [n_seqs][n_vocab],
 * may be NULL). Errors and partial state as sinkd_model_prefill. */
int sinkd_model_decode(sinkd_model *m, sinkd_kv *kv, sinkd_kv_seq *const *seqs, int32_t n_seqs,
                       const int32_t *ids, const int32_t *pos, const sinkd_model_opts *opts,
                       float *logits);

/* Device logits of the last forward ([rows][n_vocab], rows as written to
 * @logits), for callers that sample on the device (ops->argmax). Valid until
 * the next forward. */
const float *sinkd_model_logits_dev(const sinkd_model *m);

/* Turn CUDA graphs for decode steps on or off (graphs already recorded are
 * kept for when they are back on). Returns whether decode steps now use
 * them: false when off, when the backend has no graph ops (CPU) or after a
 * failed recording. This function can't fail. */
bool sinkd_model_graphs_set(sinkd_model *m, bool on);

/* Graphs recorded so far (they are freed with the model). */
int32_t sinkd_model_graphs_count(const sinkd_model *m);

#endif /* SINKD_MODEL_H */
