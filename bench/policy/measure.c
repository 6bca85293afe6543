/*
 * The measurements of sinkd-bench-policy, all through the engine's own
 * paths (drive.c), so the machinery timed is the daemon's: plan execution
 * inside the forward, the statistics kernels, selection, eviction with the
 * plugin's keep lists and compaction.
 *
 *   fill      `batch` sessions (policy full) each get `context` random
 *             token ids in one session.append (prefill in chunks)
 *   decode    for each policy in turn: every session is swapped to the
 *             policy with a budget above anything the whole run reaches
 *             (equal kept tokens: nothing is evicted, and the run checks
 *             that), then all sessions generate warmup + steps + 1 greedy
 *             tokens in the same engine steps. The lanes are not cut back
 *             between policies (an eviction of every session per policy
 *             costs more than the decoding on a 1B model): policy i runs
 *             on lanes i * (warmup + steps + 1) tokens longer than the
 *             first, and is compared with full interpolated to that length
 *             between its first run and its run again last. A
 *             step's time is the gap between consecutive token events of a
 *             session, stamped on the engine thread (the whole eng_step:
 *             forward, statistics, selection, sampling, eviction checks),
 *             averaged over the sessions; the table shows the median over
 *             pairs of consecutive timed steps of their mean: deferred
 *             scores of a group of up to 4 heads are applied every other
 *             step, so single steps are bimodal and their median lands on
 *             either mode from run to run (h2o read +1% or +7% on one
 *             tree), where a pair holds one of each. fwd is the engine's
 *             own timing of the forward (generate's timings.decode_ms per
 *             step). full runs once more after the others: the growth of
 *             the lanes and the drift of the machine together.
 *   evict     for each policy, one session at `context` tokens: swap to the
 *             policy (equal budget), `stat_steps` steps so the statistic
 *             holds something, then to the policy with budget
 *             `evict_budget`. Budget-driven policies evict inside that
 *             session.policy request (its time is the eviction's);
 *             prompt-end policies (snapkv, pyramidkv) evict after the next
 *             append, timed as that one-token append minus the median of
 *             three timed just before without eviction (a difference: on
 *             a small model it is noise, at long context the eviction
 *             dominates). Pages freed and bytes held come from
 *             session.stats; memory is compared with full at `context`.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_policy.h"
#include "gguf.h"

#define MEAS_LOG "sinkd-bench-policy: "
#define BASE_RUNS 3 /* one-token appends timed as the baseline of a prompt-end eviction */

typedef struct meas {
    const pol_opts *o;
    pol_result *r;
    pol_drive *d;
    uint64_t *sess;             /* [batch] the decode sessions */
    bool *pending;              /* [batch] a generated token is not in the KV yet */
    bool *used;                 /* [batch] evicted: no longer at `context` */
    int32_t *prompt;            /* [context] */
    double *stamps, *decode_ms; /* [batch * (warmup + steps + 1)], [batch] */
    double *samples;            /* [steps] */
    double *pairs;              /* [steps / 2] means of consecutive steps */
    uint64_t rng;
} meas;

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank @p-th percentile of @v[0..n) (sorts it). */
static double percentile(double *v, size_t n, double p)
{
    qsort(v, n, sizeof *v, cmp_double);
    size_t rank = (size_t)ceil(p / 100.0 * (double)n);
    return v[rank > 0 ? rank - 1 : 0];
}

/* Parameters that make @policy keep @budget tokens per lane. quest and
 * tidal keep every token whatever their budget (it is what they attend):
 * their defaults. duo gets a head table that makes half the heads
 * streaming (sinks + recent = the budget); a policy this bench does not
 * know gets budget=. @equal: the budget above the context, where nothing
 * may be evicted: pyramidkv's budget is a mean over layers whose last
 * keeps only budget / beta, so its pyramid is flat there (beta=1; a swap
 * to it evicts at once, and would shorten the lanes of every later row). */
static void params_for(const char *policy, int32_t budget, bool equal,
                       const sinkd_model_hparams *hp, char *out, size_t cap)
{
    out[0] = '\0';
    if (!strcmp(policy, "full") || !strcmp(policy, "quest") || !strcmp(policy, "tidal"))
        return;
    if (!strcmp(policy, "window")) {
        snprintf(out, cap, "window=%d", budget);
    } else if (!strcmp(policy, "streaming")) {
        snprintf(out, cap, "sinks=4 window=%d", budget - 4);
    } else if (!strcmp(policy, "duo")) {
        int32_t sinks = budget >= 256 ? 64 : budget / 4; /* the paper's 64, room for recent */
        size_t at = (size_t)snprintf(out, cap, "sparsity=0.5 sinks=%d recent=%d heads=", sinks,
                                     budget - sinks);
        for (int32_t l = 0; l < hp->n_layers && at < cap; l++)
            for (int32_t h = 0; h < hp->n_kv_heads && at < cap; h++)
                at += (size_t)snprintf(out + at, cap - at, "%s%d", h ? "," : l ? ";" : "",
                                       (l + h) % 2);
    } else {
        snprintf(out, cap, "budget=%d%s", budget,
                 equal && !strcmp(policy, "pyramidkv") ? " beta=1" : "");
    }
}

/* Random token ids of session @i's prompt. */
static void make_prompt(meas *m, int i)
{
    m->rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)(i + 1) * 0xbf58476d1ce4e5b9ull;
    for (int32_t t = 0; t < m->o->context; t++)
        m->prompt[t] = (int32_t)(xorshift(&m->rng) % (uint64_t)m->r->hp.n_vocab);
}

/* Open a session under full and give it `context` tokens. */
static int open_filled(meas *m, int i, uint64_t *s)
{
    char err[256];
    int rc;

    if ((rc = pol_session_open(m->d, "full", NULL, s, err)) < 0) {
        fprintf(stderr, "<3>" MEAS_LOG "session.open: %s\n", err);
        return rc;
    }
    make_prompt(m, i);
    if ((rc = pol_session_append(m->d, *s, m->prompt, (size_t)m->o->context, NULL, err)) < 0)
        fprintf(stderr, "<3>" MEAS_LOG "session.append of %d tokens: %s\n", m->o->context, err);
    return rc;
}

static int fill(meas *m)
{
    pol_stats st;
    double t0 = pol_now_s();
    int rc = 0;

    for (int i = 0; rc == 0 && i < m->o->batch; i++)
        rc = open_filled(m, i, &m->sess[i]);
    if (rc < 0)
        return rc;
    m->r->fill_s = pol_now_s() - t0;
    m->r->fill_tok_s = (double)m->o->batch * m->o->context / m->r->fill_s;
    if ((rc = pol_session_stats(m->d, m->sess[0], &st)) < 0)
        return rc;
    m->r->full_bytes = st.bytes;
    m->r->full_pages = (int64_t)st.pages;
    m->r->page_cost = st.pages ? st.bytes / st.pages : 0;
    fprintf(stderr, "<6>" MEAS_LOG "filled %d sessions with %d tokens in %.1f s (%.0f tok/s); "
            "%.1f MiB of KV each\n", m->o->batch, m->o->context, m->r->fill_s, m->r->fill_tok_s,
            (double)st.bytes / 1048576.0);
    return 0;
}

/* Cut @s back to `context` tokens per lane, then put it under @policy with
 * @params. */
static int reset_to(meas *m, uint64_t s, const char *policy, const char *params, char *err)
{
    char wp[64];
    int rc;

    snprintf(wp, sizeof wp, "window=%d slack=0", m->o->context);
    if ((rc = pol_session_policy(m->d, s, "window", wp, NULL, err)) < 0)
        return rc;
    return pol_session_policy(m->d, s, policy, params, NULL, err);
}

static void decode_policy(meas *m, pol_row *row)
{
    const pol_opts *o = m->o;
    int32_t n = o->warmup + o->steps + 1;
    pol_stats before, after;
    int rc = 0;

    params_for(row->name, m->r->equal_budget, true, &m->r->hp, row->params, sizeof row->params);
    for (int i = 0; rc == 0 && i < o->batch; i++)
        rc = pol_session_policy(m->d, m->sess[i], row->name, row->params, NULL, row->error);
    if (rc == 0 && (rc = pol_session_stats(m->d, m->sess[0], &before)) < 0)
        snprintf(row->error, sizeof row->error, "session.stats failed");
    if (rc == 0)
        rc = pol_generate(m->d, m->sess, o->batch, n, m->stamps, m->decode_ms, row->error);
    if (rc == 0 && (rc = pol_session_stats(m->d, m->sess[0], &after)) < 0)
        snprintf(row->error, sizeof row->error, "session.stats failed");
    if (rc < 0) {
        fprintf(stderr, "<3>" MEAS_LOG "%s: decode: %s\n", row->name, row->error);
        return;
    }
    double fwd = 0;
    for (int i = 0; i < o->batch; i++) {
        fwd += m->decode_ms[i] / (m->pending[i] ? n : n - 1);
        m->pending[i] = true;
    }
    for (int32_t k = 0; k < o->steps; k++) {
        double sum = 0;
        int32_t t = o->warmup + k;
        for (int i = 0; i < o->batch; i++)
            sum += m->stamps[(size_t)i * n + t + 1] - m->stamps[(size_t)i * n + t];
        m->samples[k] = sum / o->batch * 1e3;
    }
    /* the pairs before percentile() sorts the samples */
    int32_t np = o->steps / 2;
    for (int32_t k = 0; k < np; k++)
        m->pairs[k] = (m->samples[2 * k] + m->samples[2 * k + 1]) / 2;
    double mean = 0;
    for (int32_t k = 0; k < o->steps; k++)
        mean += m->samples[k] / o->steps;
    row->decoded = true;
    row->step_ms_mean = mean;
    row->step_ms_p10 = percentile(m->samples, (size_t)o->steps, 10);
    row->step_ms_p90 = percentile(m->samples, (size_t)o->steps, 90);
    row->step_ms_med = np > 0 ? percentile(m->pairs, (size_t)np, 50)
                              : percentile(m->samples, (size_t)o->steps, 50);
    row->fwd_ms = fwd / o->batch;
    row->kept_mean = after.len_mean;
    row->decode_evictions = after.evictions - before.evictions;
    if (after.fallback[0])
        snprintf(row->error, sizeof row->error, "fell back: %s", after.fallback);
    fprintf(stderr, "<6>" MEAS_LOG "%s: %.3f ms/step (forward %.3f), %.1f tokens per lane%s\n",
            row->name, row->step_ms_med, row->fwd_ms, row->kept_mean,
            row->decode_evictions ? ", EVICTED during the run" : "");
}

/* A session at `context` tokens for the eviction of policy @idx: a decode
 * session not used yet, else a fresh one (the previous extra one closed). */
static int evict_session(meas *m, int idx, uint64_t *extra, uint64_t *s)
{
    for (int i = 0; i < m->o->batch; i++) {
        if (!m->used[i]) {
            m->used[i] = true;
            *s = m->sess[i];
            return 0;
        }
    }
    if (*extra && pol_session_close(m->d, *extra) < 0)
        return -EIO;
    *extra = 0;
    int rc = open_filled(m, m->o->batch + idx, extra);
    *s = *extra;
    return rc;
}

static void evict_policy(meas *m, int idx, uint64_t *extra, pol_row *row)
{
    const pol_opts *o = m->o;
    char eq[sizeof row->params], *err = row->error;
    pol_stats before, mid, after;
    double base[BASE_RUNS], swap_ms = 0, app_ms = 0;
    double stamps[POL_STAT_STEPS_MAX], dms;
    int32_t one = 1;
    uint64_t s;
    int rc;

    params_for(row->name, m->r->equal_budget, true, &m->r->hp, eq, sizeof eq);
    params_for(row->name, o->evict_budget, false, &m->r->hp, row->evict_params,
               sizeof row->evict_params);
    if ((rc = evict_session(m, idx, extra, &s)) < 0) {
        snprintf(err, sizeof row->error, "no session at %d tokens for the eviction", o->context);
        return;
    }
    /* the statistic, then one-token appends: the first takes the token a
     * generation leaves pending, the next BASE_RUNS are the baseline */
    if ((rc = reset_to(m, s, row->name, eq, err)) < 0 ||
        (rc = pol_generate(m->d, &s, 1, o->stat_steps, stamps, &dms, err)) < 0)
        goto fail;
    for (int i = 0; i <= BASE_RUNS; i++) {
        if ((rc = pol_session_append(m->d, s, &one, 1, &base[i > 0 ? i - 1 : 0], err)) < 0)
            goto fail;
    }
    if ((rc = pol_session_stats(m->d, s, &before)) < 0 ||
        (rc = pol_session_policy(m->d, s, row->name, row->evict_params, &swap_ms, err)) < 0 ||
        (rc = pol_session_stats(m->d, s, &mid)) < 0)
        goto fail;
    after = mid;
    if (mid.pages < before.pages) {
        row->evict_ms = swap_ms;
    } else {
        if ((rc = pol_session_append(m->d, s, &one, 1, &app_ms, err)) < 0 ||
            (rc = pol_session_stats(m->d, s, &after)) < 0)
            goto fail;
        row->evict_ms = app_ms - percentile(base, BASE_RUNS, 50);
        row->evict_by_append = true;
    }
    row->evicted = after.pages < before.pages;
    row->evict_pages = (int64_t)before.pages - (int64_t)after.pages;
    row->evict_tokens = (int64_t)(after.evicted_tokens - before.evicted_tokens);
    row->us_per_page = row->evicted ? row->evict_ms * 1e3 / (double)row->evict_pages : 0;
    row->bytes_after = after.bytes;
    row->mem_ratio = m->r->full_bytes ? (double)after.bytes / (double)m->r->full_bytes : 0;
    if (after.fallback[0])
        snprintf(err, sizeof row->error, "fell back: %s", after.fallback);
    if (row->evicted)
        fprintf(stderr, "<6>" MEAS_LOG "%s: evicted %lld pages (%lld tokens) in %.3f ms%s; "
                "%.1f MiB held\n", row->name, (long long)row->evict_pages,
                (long long)row->evict_tokens, row->evict_ms,
                row->evict_by_append ? " (append minus baseline)" : "",
                (double)after.bytes / 1048576.0);
    return;
fail:
    fprintf(stderr, "<3>" MEAS_LOG "%s: eviction: %s\n", row->name, err[0] ? err : "failed");
}

/* The backend the engine will open for @name ("auto" resolved). */
static int resolve_backend(const pol_opts *o, char *out, size_t cap)
{
    sinkd_backend *be;
    int rc = sinkd_backend_open(o->backend, 1, &be);

    if (rc < 0) {
        fprintf(stderr, "<3>" MEAS_LOG "backend %s: %s\n", o->backend, strerror(-rc));
        return rc;
    }
    snprintf(out, cap, "%s", be->info.name);
    sinkd_backend_close(be);
    return 0;
}

static int read_hparams(const pol_opts *o, sinkd_model_hparams *hp)
{
    sinkd_gguf *g = NULL;
    char err[256] = "";
    int rc = sinkd_gguf_open(o->model, &g, err, sizeof err);

    if (rc == 0)
        rc = sinkd_model_hparams_read(g, hp, err, sizeof err);
    sinkd_gguf_close(g);
    if (rc < 0)
        fprintf(stderr, "<3>" MEAS_LOG "%s: %s\n", o->model, err[0] ? err : strerror(-rc));
    return rc;
}

static void meas_free(meas *m)
{
    pol_drive_close(m->d);
    free(m->sess);
    free(m->pending);
    free(m->used);
    free(m->prompt);
    free(m->stamps);
    free(m->decode_ms);
    free(m->samples);
    free(m->pairs);
}

int pol_run(const pol_opts *o, pol_result *r)
{
    meas m = {.o = o, .r = r};
    sinkd_model_hparams *hp = &r->hp;
    int32_t n = o->warmup + o->steps + 1;
    int rc;

    memset(r, 0, sizeof *r);
    if ((rc = read_hparams(o, hp)) < 0 ||
        (rc = resolve_backend(o, r->backend, sizeof r->backend)) < 0)
        return rc;
    /* lanes reach context + every decode run (each policy's and full's
     * again) or + an eviction's steps; budgets above that evict nothing */
    int32_t evict_grow = o->stat_steps + BASE_RUNS + 3;
    int32_t decode_grow = n * (o->n_policies + 1);
    int32_t grow = (decode_grow > evict_grow ? decode_grow : evict_grow) + 16;
    r->page_tokens = 16;
    r->equal_budget = (o->context + grow + r->page_tokens - 1) / r->page_tokens * r->page_tokens;
    bool cpu = !strcmp(r->backend, "cpu");
    uint8_t dt = cpu ? SINKD_F32 : SINKD_F16;
    snprintf(r->kv_dtype, sizeof r->kv_dtype, "%s", sinkd_dtype_name((sinkd_dtype)dt));
    /* page cost as kv.h counts it: K and V, pos and score, the key bounds */
    uint64_t pt = (uint64_t)r->page_tokens, hd = (uint64_t)hp->head_dim;
    uint64_t cost = 2 * pt * hd * sinkd_dtype_bytes(dt, 1) + 8 * pt + 8 * hd;
    uint64_t pages = (uint64_t)o->batch * (uint64_t)hp->n_layers * (uint64_t)hp->n_kv_heads *
                     (uint64_t)((r->equal_budget + r->page_tokens - 1) / r->page_tokens + 2);
    uint64_t pool = pages * cost + pages * cost / 50 + (16u << 20);

    m.sess = calloc((size_t)o->batch, sizeof *m.sess);
    m.pending = calloc((size_t)o->batch, sizeof *m.pending);
    m.used = calloc((size_t)o->batch, sizeof *m.used);
    m.prompt = malloc((size_t)o->context * sizeof *m.prompt);
    m.stamps = malloc((size_t)o->batch * (size_t)n * sizeof *m.stamps);
    m.decode_ms = malloc((size_t)o->batch * sizeof *m.decode_ms);
    m.samples = malloc((size_t)o->steps * sizeof *m.samples);
    m.pairs = malloc(((size_t)o->steps / 2 + 1) * sizeof *m.pairs);
    if (!m.sess || !m.pending || !m.used || !m.prompt || !m.stamps || !m.decode_ms || !m.samples ||
        !m.pairs) {
        meas_free(&m);
        return -ENOMEM;
    }
    fprintf(stderr, "<6>" MEAS_LOG "%s: %d layers, %d/%d heads, head_dim %d; %s backend, KV pool "
            "%.1f MiB (%s)\n", o->model, hp->n_layers, hp->n_heads, hp->n_kv_heads, hp->head_dim,
            r->backend, (double)pool / 1048576.0, r->kv_dtype);
    if ((rc = pol_drive_open(o, pool, dt, &m.d)) < 0) {
        meas_free(&m);
        return rc;
    }
    sinkd_engine *e = pol_drive_engine(m.d);
    const sinkd_backend_info *bi = sinkd_engine_backend_info(e);
    snprintf(r->device, sizeof r->device, "%s", bi->device);
    r->kv_pool_bytes = atomic_load(&sinkd_engine_counters_get(e)->kv_pool_bytes);
    if ((rc = fill(&m)) < 0) {
        meas_free(&m);
        return rc;
    }
    for (int p = 0; p < o->n_policies; p++) {
        snprintf(r->rows[p].name, sizeof r->rows[p].name, "%s", o->policies[p]);
        r->n_rows = p + 1;
        decode_policy(&m, &r->rows[p]);
    }
    double full_ms = 0;
    for (int p = 0; p < r->n_rows; p++)
        if (!strcmp(r->rows[p].name, "full") && r->rows[p].decoded)
            full_ms = r->rows[p].step_ms_med;
    if (full_ms > 0) {
        /* full once more, last: how far the machine drifted meanwhile */
        pol_row again = {.name = "full"};
        decode_policy(&m, &again);
        r->full_again_ms = again.decoded ? again.step_ms_med : 0;
    }
    /* full at the length of row p: linear between its two runs (attention
     * is linear in the lane length; the drift is spread alike) */
    int full_at = 0;
    while (full_at < r->n_rows && strcmp(r->rows[full_at].name, "full") != 0)
        full_at++;
    for (int p = 0; p < r->n_rows; p++) {
        if (!(full_ms > 0) || !r->rows[p].decoded)
            continue;
        double ref = full_ms;
        if (r->full_again_ms > 0)
            ref += (r->full_again_ms - full_ms) * (double)(p - full_at) / (double)(r->n_rows - full_at);
        r->rows[p].overhead = r->rows[p].step_ms_med / ref - 1;
    }
    uint64_t extra = 0;
    for (int p = 0, idx = 0; p < r->n_rows; p++)
        if (strcmp(r->rows[p].name, "full") != 0 && !r->rows[p].error[0])
            evict_policy(&m, idx++, &extra, &r->rows[p]);
    meas_free(&m);
    return 0;
}
