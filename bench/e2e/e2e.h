/*
 * sinkd-bench-e2e: end-to-end generation speed. Shared types of its three
 * parts:
 *
 *   e2e_model.c    in-process, on one backend: the copy-bandwidth floor,
 *                  prefill of one sequence, and decode steps of a batch of
 *                  sequences through sinkd_model_decode
 *   e2e_socket.c   over the socket: a client streams a generation from
 *                  sinkd and times the gaps between token events
 *   bench_e2e.c    command line, table, JSON
 */
#ifndef SINKD_BENCH_E2E_H
#define SINKD_BENCH_E2E_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

#define E2E_MAX_BATCHES 16
#define E2E_MAX_ROWS (2 * E2E_MAX_BATCHES) /* each batch size with graphs off and on */

/* What to run (command-line flags in brackets). */
typedef struct e2e_opts {
    const char *model;          /* [--model] GGUF path */
    const char *backend;        /* [--backend] cpu | cuda */
    int weight_dtype;           /* [--weights] sinkd_dtype, or -1 = keep the file's */
    int kv_dtype;               /* [--kv-dtype] sinkd_dtype, or -1 = f16 on cuda, f32 on cpu */
    int32_t batches[E2E_MAX_BATCHES]; /* [--batches] */
    int n_batches;
    int32_t prompt;             /* [--prompt] tokens of each sequence before decoding */
    int32_t steps;              /* [--steps] timed decode steps per batch size */
    int32_t warmup;             /* [--warmup] untimed steps before each timed run */
    int32_t chunk;              /* [--chunk] prefill chunk, as [engine] prefill_chunk */
    int32_t runs;               /* [--runs] timed prefills and copies (median) */
    int32_t page_tokens;        /* [--page-tokens] */
    int threads;                /* [--threads] CPU backend threads, 0 = all */
    uint64_t copy_bytes;        /* [--copy-mib] size of the d2d copy */
    bool model_part;            /* off with --socket-only */
    bool socket_part;           /* [--socket] or [--socket-only] */
    const char *socket_path;    /* [--socket-path] a running daemon; NULL = start one */
    int32_t socket_tokens;      /* [--socket-tokens] tokens of the timed generation */
    bool graphs[2];             /* [--graphs] on, off or off,on: CUDA graphs of the decode */
    int n_graphs;               /* step, each batch size measured with each in turn */
} e2e_opts;

/* One batch size of the decode measurement. */
typedef struct e2e_decode_row {
    int32_t batch;
    bool graphs_asked;          /* the --graphs entry of the row */
    bool graphs;                /* whether the steps used graphs (CPU: never) */
    /* Device argmax: only the chosen ids come back to the host. */
    double step_ms_med, step_ms_mean, step_ms_p10, step_ms_p90;
    double tok_s;               /* batch / median step */
    /* The engine's path: every logit copied to the host, argmax there. */
    double host_step_ms_med, host_tok_s;
    double ctx_mean;            /* mean context length (keys per lane) over the steps */
    double kv_bytes;            /* K+V bytes the attention reads per step at ctx_mean */
    double flops;               /* FLOPs of one step (matrices + attention) */
    double floor_ms;            /* (weight bytes + kv_bytes) / copy bandwidth */
} e2e_decode_row;

typedef struct e2e_model_result {
    char backend[16], device[128];
    sinkd_model_hparams hp;
    const char *weights;        /* dtype name of the matrices on the device */
    const char *kv_dtype;
    uint64_t weight_bytes;      /* sinkd_model_weight_bytes */
    uint64_t mem_total;
    uint64_t mem_used_model;    /* mem_free drop across the model load */
    uint64_t mem_used_kv;       /* ... across the KV store open */
    uint64_t mem_used_peak;     /* largest drop from the start seen at any point */
    uint64_t kv_pool_bytes;
    double load_s;
    uint64_t copy_bytes;
    double copy_gbs;            /* (read + write bytes) / median copy time, GB/s */
    double floor_ms;            /* weight bytes / copy bandwidth */
    int32_t prefill_tokens, prefill_chunk;
    double prefill_ms, prefill_tok_s, prefill_tflops;
    e2e_decode_row rows[E2E_MAX_ROWS];  /* batch-major, graphs entries in --graphs order */
    int n_rows;
    int32_t graphs_recorded;    /* sinkd_model_graphs_count after the decode runs */
} e2e_model_result;

typedef struct e2e_socket_result {
    bool started;               /* the bench started sinkd itself */
    char backend[32], device[128];
    int32_t prompt, tokens;     /* prompt length, tokens generated (events) */
    double prefill_ms;          /* session.append's reply */
    double engine_decode_ms;    /* the generate reply's timings.decode_ms */
    double engine_step_ms;      /* timings.step_ms: the engine's own time per token */
    double engine_fwd_ms;       /* decode_ms / decode steps (tokens - 1): forward only */
    double gap_ms_med, gap_ms_mean, gap_ms_p90, gap_ms_max; /* client side */
    double ratio_mean;          /* gap_ms_mean / engine_step_ms */
} e2e_socket_result;

/* Run the in-process part. Messages go to stderr. Returns 0 or a negative
 * errno (the message names the step that failed). */
int e2e_model_run(const e2e_opts *o, e2e_model_result *r);

/* Run the socket part (starting sinkd with o->model unless o->socket_path
 * names a running daemon). Returns 0 or a negative errno / positive
 * sinkd_errcode as libsinkd does. */
int e2e_socket_run(const e2e_opts *o, e2e_socket_result *r);

/* Bytes of a KV pool (sinkd_kv_config.pool_bytes) that holds @seqs
 * sequences of @tokens tokens of a model @hp; *@pages (may be NULL) gets
 * the pages they take. */
uint64_t e2e_kv_pool_bytes(const sinkd_model_hparams *hp, sinkd_dtype dtype, int32_t page_tokens,
                           int32_t seqs, int32_t tokens, int64_t *pages);

/* The KV dtype of the run: o->kv_dtype, or the engine's default for
 * @backend ("cpu": f32, else f16). */
sinkd_dtype e2e_kv_dtype(const e2e_opts *o, const char *backend);

/* CLOCK_MONOTONIC in seconds. */
double e2e_now_s(void);

/* Sort @v[0..n) in place and return its nearest-rank @p-th percentile
 * (p = 50: the median). n >= 1. */
double e2e_percentile(double *v, size_t n, double p);

#endif /* SINKD_BENCH_E2E_H */
