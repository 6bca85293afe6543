/*
 * sinkd-bench-policy: what the policy machinery costs a decode step. Shared
 * types of its three parts:
 *
 *   drive.c         the engine in process through its public API (engine.h):
 *                   jobs submitted as the daemon's op handlers submit them,
 *                   answers collected from the emit callback and stamped on
 *                   the engine thread as they leave it
 *   measure.c       the measurements: fill, decode steps per policy at equal
 *                   kept tokens, one forced eviction per policy
 *   bench_policy.c  command line, table, JSON
 */
#ifndef SINKD_BENCH_POLICY_H
#define SINKD_BENCH_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"

#define POL_MAX 16 /* policies in one run */
#define POL_STAT_STEPS_MAX 64

/* What to run (command-line flags in brackets). */
typedef struct pol_opts {
    const char *model;          /* [--model] GGUF path (with a tokenizer: the engine loads one) */
    const char *backend;        /* [--backend] auto | cpu | cuda */
    const char *plugin_dir;     /* [--plugin-dir] where the policy .so files are */
    const char *policies[POL_MAX]; /* [--policies] */
    int n_policies;
    int32_t context;            /* [--context] tokens each session holds before decoding */
    int32_t batch;              /* [--batch] sessions decoding together */
    int32_t steps;              /* [--steps] timed decode steps per policy */
    int32_t warmup;             /* [--warmup] untimed steps before them */
    int32_t chunk;              /* [--chunk] prefill chunk ([engine] prefill_chunk) */
    int32_t evict_budget;       /* [--evict-budget] the budget of the eviction measurement */
    int32_t stat_steps;         /* [--stat-steps] steps that build a statistic before it */
    int32_t threads;            /* [--threads] CPU backend threads, 0 = all */
} pol_opts;

/* One policy's numbers. */
typedef struct pol_row {
    char name[32];
    char params[1024];          /* of the decode run (budget = the lanes' length) */
    char error[256];            /* "" unless a part failed */
    /* decode at equal kept tokens */
    bool decoded;
    /* eng_step period; med: the median of consecutive pairs' means (a
     * cost paid every other step counts at its average), p10/p90: of
     * single steps */
    double step_ms_med, step_ms_p10, step_ms_p90, step_ms_mean;
    double fwd_ms;              /* the engine's own decode time per step (generate's timings) */
    double kept_mean;           /* mean lane length after the run */
    uint64_t decode_evictions;  /* must stay 0: nothing is evicted at this budget */
    double overhead;            /* step_ms_med / full's at the same lane length - 1 */
    /* one forced eviction */
    bool evicted;
    char evict_params[1024];
    double evict_ms;            /* the eviction's time (see measure.c) */
    bool evict_by_append;       /* prompt-end policy: timed as an append minus a baseline */
    int64_t evict_pages;        /* pages it freed */
    int64_t evict_tokens;       /* tokens it dropped (all lanes) */
    double us_per_page;
    uint64_t bytes_after;       /* the session's KV bytes after it */
    double mem_ratio;           /* bytes_after / full's bytes at the same context */
} pol_row;

typedef struct pol_result {
    char backend[16], device[128];
    sinkd_model_hparams hp;
    char kv_dtype[8];
    uint64_t kv_pool_bytes, page_cost;
    int32_t page_tokens;
    double fill_s, fill_tok_s;  /* every session's prompt, all sessions */
    uint64_t full_bytes;        /* one session's KV bytes at `context` tokens (full) */
    int64_t full_pages;
    int32_t equal_budget;       /* the budget of the decode runs */
    double full_again_ms;       /* full's median step measured again after every policy */
    pol_row rows[POL_MAX];
    int n_rows;
} pol_result;

/* ---- drive.c ---------------------------------------------------------------- */

typedef struct pol_drive pol_drive;

/* What session.stats says of one session. */
typedef struct pol_stats {
    uint64_t tokens, pages, bytes, evictions, evicted_tokens;
    double len_mean;            /* over every lane */
    char fallback[160];         /* "" unless the policy fell back */
} pol_stats;

/* Open the engine on @o->backend with @o->model, a KV pool of @pool_bytes
 * (dtype @kv_dtype), max_batch @o->batch, and start its thread. Errors are
 * printed; returns 0 or a negative errno. *@out is owned by the caller
 * (pol_drive_close). */
int pol_drive_open(const pol_opts *o, uint64_t pool_bytes, uint8_t kv_dtype, pol_drive **out);
void pol_drive_close(pol_drive *d);
sinkd_engine *pol_drive_engine(pol_drive *d);

/* The requests, each waiting for its reply; @err (may be NULL, 256 bytes)
 * gets the error's message. *@ms, where given, is the time from the submit
 * to the reply leaving the engine thread. Return 0 or -EIO (an error reply). */
int pol_session_open(pol_drive *d, const char *policy, const char *params, uint64_t *session,
                     char *err);
int pol_session_close(pol_drive *d, uint64_t session);
int pol_session_policy(pol_drive *d, uint64_t session, const char *policy, const char *params,
                       double *ms, char *err);
int pol_session_append(pol_drive *d, uint64_t session, const int32_t *ids, size_t n, double *ms,
                       char *err);
int pol_session_stats(pol_drive *d, uint64_t session, pol_stats *st);

/* Greedy generations of @n tokens on @sessions[0..k) that all join the same
 * engine step: the jobs are queued while the engine thread is held inside
 * the reply of an earlier request, so that it takes them in one turn. The
 * time each token event left the engine thread goes to
 * stamps[i * n + t]; decode_ms[i] gets the session's timings.decode_ms.
 * Returns 0, or -EIO when a generation failed or sent fewer tokens. */
int pol_generate(pol_drive *d, const uint64_t *sessions, int k, int32_t n, double *stamps,
                 double *decode_ms, char *err);

/* ---- measure.c ---------------------------------------------------------------- */

/* Run everything @o asks; fills @r as far as it got. Messages to stderr.
 * Returns 0 or a negative errno. */
int pol_run(const pol_opts *o, pol_result *r);

/* CLOCK_MONOTONIC in seconds. */
double pol_now_s(void);

#endif /* SINKD_BENCH_POLICY_H */
