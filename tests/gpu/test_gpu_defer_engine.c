/*
 * [engine] score_defer through the whole engine: deferral changes when a
 * decode step's attention probabilities reach the pool's scores, never what
 * the model computes. Two engines on the CUDA backend with the small
 * reference model (the tiny one's head_dim 32 never defers), alike but for
 * score_defer, run the same sessions one after the other in this process;
 * they must sample the same tokens wherever the scores cannot have steered
 * an eviction, keep the same lanes, and end with the same scores (relative
 * 1e-3 per layer: deferral sums the same floats in another order).
 *
 * Skips without a visible CUDA device or without SINKD_REF_SMALL (the path
 * of sinkd-ref-small-f16.gguf, which the repository does not keep).
 */
#include <criterion/criterion.h>
#include <cuda_runtime.h>

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eng_harness.h"
#include "snapshot.h"

#define PAGE_TOKENS 16    /* SINKD_KV_CONFIG_INIT's */
#define MAX_LAYERS 64
#define SCORE_RTOL 1e-3

/* Session 1: a policy chain over one conversation, no eviction. */
#define PROMPT 300
#define GEN_H2O 40
#define GEN_A2SF 25
#define GEN_TOVA 9
#define GEN_CHAIN (GEN_H2O + GEN_A2SF + GEN_TOVA)
/* Above every session's tokens: the lanes never reach an eviction point. */
#define NO_EVICT "budget=4096"

/* Session 2: eviction during generation. */
#define EV_BUDGET 64
#define EV_SLACK 8
#define EV_PROMPT 150
#define EV_GEN 60

/* Session 3: statistics that accumulate over many steps. A short prompt
 * keeps the prefill's share of the sums small, so that what the decode
 * steps added (the deferred part) dominates the compared norm; one odd and
 * one even number of decode steps leave the deferral entries (two steps
 * each at this model's group of 3) half and completely filled at the save. */
#define ST_PROMPT 24
#define ST_GEN_SUM 80   /* 79 decode steps */
#define ST_GEN_DECAY 81 /* 80 decode steps */

/* Session 4: the row rules (QUANTILE, GUMBEL), which defer in rows mode,
 * alone and swapped into and out of from a pairs-mode statistic. */
#define RW_PROMPT 40
#define RW_GEN 60
#define RW_CHAIN 20      /* tokens per policy of the chain */
#define RW_EV_BUDGET 64  /* scissorhands evicting during the generation */
/* A count is a sum of 0/1 hits: a probability within float rounding of its
 * row's quantile may land on the other side of it with the other order of
 * additions, and moves that token's count by one. At most this fraction of
 * a layer's counts may differ; the rest must agree within SCORE_RTOL. */
#define FLIP_FRACTION 0.01

/* One layer per entry of a session.save snapshot. */
typedef struct snap {
    sinkd_snap_meta m;
    sinkd_snap_layer *l;
} snap;

/* What one engine made of the scenario. */
typedef struct outcome {
    int32_t chain[GEN_CHAIN];
    snap chain_snap;
    int32_t ev_tok[EV_GEN];
    uint64_t ev_len0;              /* longest lane after the append */
    uint64_t ev_append, ev_after;  /* session.stats evictions */
    uint64_t ev_tokens;            /* evicted_tokens after the generation */
    uint64_t ev_defer_bytes;       /* session.stats defer_bytes then */
    sinkd_model_hparams hp;        /* the model's, copied before the engine closes */
    uint32_t ev_layers;
    uint64_t ev_min[MAX_LAYERS], ev_max[MAX_LAYERS];
    int32_t sum_tok[ST_GEN_SUM], decay_tok[ST_GEN_DECAY];
    snap sum_snap, decay_snap;
    int32_t quant_tok[RW_GEN], gumbel_tok[RW_GEN], rw_chain[4 * RW_CHAIN], rw_ev_tok[RW_GEN];
    snap quant_snap, gumbel_snap, rw_chain_snap;
    uint64_t rw_ev, rw_ev_tokens;
} outcome;

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Deterministic ids in [3, n_vocab): 0-2 are the special tokens. */
static void make_prompt(int32_t *out, size_t n, int32_t n_vocab)
{
    uint64_t x = 0x5eed;

    for (size_t i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        out[i] = 3 + (int32_t)((x >> 33) % (uint64_t)(n_vocab - 3));
    }
}

static void close_session(uint64_t s)
{
    eng_h_frame_free(eng_h_reply_ok(eng_h_submit(eng_h_job(SINKD_JOB_SESSION_CLOSE, s))));
}

static void swap(uint64_t s, const char *policy, const char *params)
{
    sinkd_job *j = eng_h_job(SINKD_JOB_SESSION_POLICY, s);
    char pol[32];

    j->policy = strdup(policy);
    j->params = strdup(params);
    eng_h_frame *f = eng_h_reply_ok(eng_h_submit(j));
    eng_h_str(f, "policy", pol, sizeof pol);
    cr_assert_str_eq(pol, policy);
    eng_h_frame_free(f);
}

/* Generate exactly @n greedy tokens of @s into @out. */
static void gen(uint64_t s, int32_t n, int32_t *out)
{
    char reason[16];

    cr_assert_eq(eng_h_tokens(eng_h_generate(s, n), out, (size_t)n, reason, NULL, 0), (size_t)n);
    cr_assert_str_eq(reason, "length");
}

static eng_h_frame *stats(uint64_t s)
{
    return eng_h_reply_ok(eng_h_submit(eng_h_job(SINKD_JOB_SESSION_STATS, s)));
}

/* session.save of @s, read back whole; the file must be under @state. */
static void snap_take(uint64_t s, const char *state, snap *out)
{
    sinkd_snap_reader r = SINKD_SNAP_READER_INIT;
    char path[4300], err[256] = "";

    eng_h_frame *f = eng_h_reply_ok(eng_h_submit(eng_h_job(SINKD_JOB_SESSION_SAVE, s)));
    eng_h_str(f, "path", path, sizeof path);
    eng_h_frame_free(f);
    cr_assert(strncmp(path, state, strlen(state)) == 0, "snapshot %s outside %s", path, state);
    cr_assert(sinkd_snap_read_begin(&r, path, &out->m, err, sizeof err) == 0, "%s", err);
    cr_assert(out->m.layers > 0 && out->m.layers <= MAX_LAYERS);
    out->l = calloc((size_t)out->m.layers, sizeof *out->l);
    cr_assert(out->l);
    for (int32_t l = 0; l < out->m.layers; l++)
        cr_assert(sinkd_snap_read_layer(&r, &out->l[l], err, sizeof err) == 0, "%s", err);
    sinkd_snap_read_end(&r);
    unlink(path);
}

static void snap_free(snap *x)
{
    for (int32_t l = 0; x->l && l < x->m.layers; l++)
        sinkd_snap_layer_free(&x->l[l]);
    free(x->l);
    sinkd_snap_meta_free(&x->m);
}

/* Same lanes (lengths, positions) and the same scores within SCORE_RTOL
 * per layer, in two snapshots of sessions that never evicted. */
static void snap_same(const snap *a, const snap *b, const char *what)
{
    cr_assert_eq(a->m.layers, b->m.layers);
    cr_assert_eq(a->m.tokens, b->m.tokens, "%s: %lld vs %lld tokens", what,
                 (long long)a->m.tokens, (long long)b->m.tokens);
    /* an eviction would make the scores of other tokens comparable */
    cr_assert(a->m.evicted_tokens == 0 && b->m.evicted_tokens == 0, "%s: evicted %llu, %llu",
              what, (unsigned long long)a->m.evicted_tokens,
              (unsigned long long)b->m.evicted_tokens);
    for (int32_t l = 0; l < a->m.layers; l++) {
        const sinkd_snap_layer *x = &a->l[l], *y = &b->l[l];
        double d2 = 0, n2 = 0;

        cr_assert_eq(x->n_lanes, y->n_lanes);
        for (int32_t h = 0; h < x->n_lanes; h++)
            cr_assert_eq(x->len[h], y->len[h], "%s layer %d lane %d: %d vs %d tokens", what, l, h,
                         x->len[h], y->len[h]);
        cr_assert_arr_eq(x->pos, y->pos, (size_t)x->total * sizeof *x->pos,
                         "%s layer %d: other positions", what, l);
        for (int64_t t = 0; t < x->total; t++) {
            cr_assert(!isnan(x->score[t]) && !isnan(y->score[t]),
                      "%s layer %d entry %lld: NaN score (%g, %g)", what, l, (long long)t,
                      x->score[t], y->score[t]);
            double d = (double)x->score[t] - y->score[t];
            d2 += d * d;
            n2 += (double)x->score[t] * x->score[t];
        }
        /* all-zero scores on both sides would compare equal and prove nothing */
        cr_assert(n2 > 0, "%s layer %d: no score at all", what, l);
        cr_assert(sqrt(d2 / n2) <= SCORE_RTOL,
                  "%s layer %d: scores differ by %g relative (score_defer on vs off)", what, l,
                  sqrt(d2 / n2));
    }
}

/* Same lanes, and counts (QUANTILE) that agree within SCORE_RTOL but for
 * at most FLIP_FRACTION of each layer's tokens, which may differ by about
 * one hit (see FLIP_FRACTION). */
static void snap_counts_close(const snap *a, const snap *b, const char *what)
{
    cr_assert_eq(a->m.layers, b->m.layers);
    cr_assert_eq(a->m.tokens, b->m.tokens);
    for (int32_t l = 0; l < a->m.layers; l++) {
        const sinkd_snap_layer *x = &a->l[l], *y = &b->l[l];
        int64_t off = 0;
        double n2 = 0;

        cr_assert_eq(x->n_lanes, y->n_lanes);
        cr_assert_eq(x->total, y->total);
        cr_assert_arr_eq(x->pos, y->pos, (size_t)x->total * sizeof *x->pos,
                         "%s layer %d: other positions", what, l);
        for (int64_t t = 0; t < x->total; t++) {
            double d = fabs((double)x->score[t] - y->score[t]);
            cr_assert(!isnan(d), "%s layer %d entry %lld: NaN", what, l, (long long)t);
            cr_assert(d <= 1.0 + SCORE_RTOL, "%s layer %d entry %lld: %g vs %g", what, l,
                      (long long)t, x->score[t], y->score[t]);
            off += d > SCORE_RTOL * fmax(1.0, fabs((double)y->score[t]));
            n2 += (double)y->score[t] * y->score[t];
        }
        cr_assert(n2 > 0, "%s layer %d: no count at all", what, l);
        cr_assert(off <= (int64_t)(FLIP_FRACTION * (double)x->total),
                  "%s layer %d: %lld of %lld counts differ (score_defer on vs off)", what, l,
                  (long long)off, (long long)x->total);
        if (off)
            cr_log_info("%s layer %d: %lld of %lld counts one hit apart", what, l,
                        (long long)off, (long long)x->total);
    }
}

static void tokens_same(const int32_t *a, const int32_t *b, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(a[i], b[i], "%s: token %zu is %d with score_defer, %d without", what, i,
                     a[i], b[i]);
}

/* A session of @policy alone: @n_prompt tokens of @prompt, @n_gen greedy
 * tokens into @tok, then a snapshot into @out. */
static void alone(const char *policy, const int32_t *prompt, int n_prompt, int n_gen, int32_t *tok,
                  const char *state, snap *out)
{
    uint64_t s = eng_h_open_session(policy, NO_EVICT);

    eng_h_append(s, prompt, n_prompt);
    gen(s, n_gen, tok);
    snap_take(s, state, out);
    close_session(s);
}

/* The whole scenario on one engine; the engine is closed and its state
 * directory removed before returning. */
static void run_engine(const char *model, bool defer_off, outcome *o)
{
    const char *dirs[] = {SINKD_PLUGIN_BUILD_DIR};
    char state[] = "/tmp/sinkd-defer-eng-XXXXXX", params[64];
    int32_t prompt[PROMPT];

    memset(o, 0, sizeof *o);
    cr_assert(mkdtemp(state));
    eng_h_config c = {
        .backend = "cuda", .model_name = "small", .model_path = model, .pool_bytes = 64u << 20,
        .kv_dtype = SINKD_F16, .score_defer_off = defer_off, .dirs = dirs, .n_dirs = 1,
        .state_dir = state,
    };
    sinkd_engine *e = eng_h_open_with(&c);
    const sinkd_model_hparams *hp = sinkd_engine_model_at(e, 0)->hp;
    /* a model the kernel never defers for would compare an engine with itself */
    cr_assert(hp->n_kv_heads > 0 &&
                  sinkd_defer_takes(hp->n_heads / hp->n_kv_heads, hp->head_dim, PAGE_TOKENS),
              "%s: %d q / %d kv heads of %d never defer", model, hp->n_heads, hp->n_kv_heads,
              hp->head_dim);
    cr_assert(hp->n_vocab > 3);
    o->hp = *hp;
    make_prompt(prompt, PROMPT, hp->n_vocab);

    /* 1. SUM, then DECAY, then LAST over one conversation: every swap
     * settles what the previous statistic left pending, the save settles
     * tova's last step. */
    uint64_t s = eng_h_open_session("h2o", NO_EVICT);
    eng_h_append(s, prompt, PROMPT);
    gen(s, GEN_H2O, o->chain);
    swap(s, "a2sf", NO_EVICT);
    gen(s, GEN_A2SF, o->chain + GEN_H2O);
    swap(s, "tova", NO_EVICT);
    gen(s, GEN_TOVA, o->chain + GEN_H2O + GEN_A2SF);
    snap_take(s, state, &o->chain_snap);
    close_session(s);

    /* 2. Evictions between decode steps: each settles its layer first. */
    snprintf(params, sizeof params, "budget=%d slack=%d", EV_BUDGET, EV_SLACK);
    s = eng_h_open_session("h2o", params);
    eng_h_append(s, prompt, EV_PROMPT);
    eng_h_frame *f = stats(s);
    o->ev_append = eng_h_u64(f, "evictions");
    const msgpack_object *layers = sinkd_map_get(&f->msg.root, "layers");
    cr_assert(layers && layers->type == MSGPACK_OBJECT_ARRAY);
    for (uint32_t l = 0; l < layers->via.array.size; l++) {
        uint64_t mn, mx;
        eng_h_layer_lens(f, l, &mn, &mx);
        o->ev_len0 = mx > o->ev_len0 ? mx : o->ev_len0;
    }
    eng_h_frame_free(f);
    gen(s, EV_GEN, o->ev_tok);
    f = stats(s);
    o->ev_after = eng_h_u64(f, "evictions");
    o->ev_tokens = eng_h_u64(f, "evicted_tokens");
    o->ev_defer_bytes = eng_h_u64(f, "defer_bytes");
    layers = sinkd_map_get(&f->msg.root, "layers");
    cr_assert(layers && layers->type == MSGPACK_OBJECT_ARRAY &&
              layers->via.array.size <= MAX_LAYERS);
    o->ev_layers = layers->via.array.size;
    for (uint32_t l = 0; l < o->ev_layers; l++)
        eng_h_layer_lens(f, l, &o->ev_min[l], &o->ev_max[l]);
    eng_h_frame_free(f);
    close_session(s);

    /* 3. SUM and DECAY alone, compared after many decode steps. */
    alone("h2o", prompt, ST_PROMPT, ST_GEN_SUM, o->sum_tok, state, &o->sum_snap);
    alone("a2sf", prompt, ST_PROMPT, ST_GEN_DECAY, o->decay_tok, state, &o->decay_snap);

    /* 4. The row rules alone, a chain through both modes, an eviction. */
    alone("scissorhands", prompt, RW_PROMPT, RW_GEN, o->quant_tok, state, &o->quant_snap);
    alone("keyformer", prompt, RW_PROMPT, RW_GEN, o->gumbel_tok, state, &o->gumbel_snap);
    s = eng_h_open_session("h2o", NO_EVICT);
    eng_h_append(s, prompt, RW_PROMPT);
    gen(s, RW_CHAIN, o->rw_chain);
    swap(s, "scissorhands", NO_EVICT);
    gen(s, RW_CHAIN, o->rw_chain + RW_CHAIN);
    swap(s, "keyformer", NO_EVICT);
    gen(s, RW_CHAIN, o->rw_chain + 2 * RW_CHAIN);
    swap(s, "h2o", NO_EVICT);
    gen(s, RW_CHAIN, o->rw_chain + 3 * RW_CHAIN);
    snap_take(s, state, &o->rw_chain_snap);
    close_session(s);
    snprintf(params, sizeof params, "budget=%d", RW_EV_BUDGET);
    s = eng_h_open_session("scissorhands", params);
    eng_h_append(s, prompt, RW_PROMPT);
    gen(s, RW_GEN, o->rw_ev_tok);
    f = stats(s);
    o->rw_ev = eng_h_u64(f, "evictions");
    o->rw_ev_tokens = eng_h_u64(f, "evicted_tokens");
    eng_h_frame_free(f);
    close_session(s);

    eng_h_close(e);
    nftw(state, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

static void outcome_free(outcome *o)
{
    snap_free(&o->chain_snap);
    snap_free(&o->sum_snap);
    snap_free(&o->decay_snap);
    snap_free(&o->quant_snap);
    snap_free(&o->gumbel_snap);
    snap_free(&o->rw_chain_snap);
}

TestSuite(gpu_defer_engine, .timeout = 280);

Test(gpu_defer_engine, same_as_immediate_scores)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0)
        cr_skip_test("no CUDA device visible (cudaGetDeviceCount)");
    const char *model = getenv("SINKD_REF_SMALL");
    if (model == NULL || access(model, R_OK) != 0)
        cr_skip_test("SINKD_REF_SMALL does not name a readable sinkd-ref-small-f16.gguf");
    /* SINKD_SCORE_DEFER=0 would turn deferral off in the engine meant to
     * defer too, and the test would compare nothing */
    unsetenv("SINKD_SCORE_DEFER");

    outcome *on = malloc(sizeof *on), *off = malloc(sizeof *off);
    cr_assert(on && off);
    run_engine(model, false, on);
    run_engine(model, true, off);

    /* 1. Attention outputs do not depend on the scores: same greedy tokens
     * all along; the scores agree up to the order of their additions. */
    tokens_same(on->chain, off->chain, GEN_H2O, "h2o");
    tokens_same(on->chain + GEN_H2O, off->chain + GEN_H2O, GEN_A2SF, "a2sf after h2o");
    tokens_same(on->chain + GEN_H2O + GEN_A2SF, off->chain + GEN_H2O + GEN_A2SF, GEN_TOVA,
                "tova after a2sf");
    snap_same(&on->chain_snap, &off->chain_snap, "h2o -> a2sf -> tova");

    /* 2. h2o keeps budget tokens a lane whatever the scores: the lengths,
     * hence when evictions happen and how many tokens they drop, cannot
     * depend on deferral. Which tokens stay may (near-ties), so tokens are
     * compared only up to the first eviction of a decode step: step k
     * feeds the (k-1)th token, attends len0 + k keys and samples token k,
     * then evicts once a lane is over budget + slack, i.e. after step
     * budget + slack - len0 + 1; tokens 0 .. that step are sampled from
     * the same keys on both engines. */
    cr_assert_eq(on->ev_append, off->ev_append, "evictions during the prompt: %llu vs %llu",
                 (unsigned long long)on->ev_append, (unsigned long long)off->ev_append);
    cr_assert_eq(on->ev_len0, off->ev_len0);
    cr_assert(on->ev_len0 >= EV_BUDGET && on->ev_len0 <= EV_BUDGET + EV_SLACK,
              "after the prompt the longest lane holds %llu tokens",
              (unsigned long long)on->ev_len0);
    /* without an eviction during the generation nothing here tests deferral */
    cr_assert_gt(on->ev_after, on->ev_append, "no eviction during the generation");
    cr_assert_eq(on->ev_after, off->ev_after, "evictions: %llu with score_defer, %llu without",
                 (unsigned long long)on->ev_after, (unsigned long long)off->ev_after);
    /* the block as backend.h lays it out, for this model in f16 */
    const sinkd_model_hparams *hp = &on->hp;
    size_t want = sinkd_defer_bytes(hp->n_layers, hp->n_kv_heads, hp->n_heads / hp->n_kv_heads,
                                    hp->head_dim, 2);
    cr_assert_eq(on->ev_defer_bytes, want, "defer_bytes %llu with score_defer, want %zu",
                 (unsigned long long)on->ev_defer_bytes, want);
    cr_assert_eq(off->ev_defer_bytes, 0, "defer_bytes %llu without score_defer",
                 (unsigned long long)off->ev_defer_bytes);
    cr_assert_eq(on->ev_tokens, off->ev_tokens, "evicted tokens: %llu vs %llu",
                 (unsigned long long)on->ev_tokens, (unsigned long long)off->ev_tokens);
    cr_assert_eq(on->ev_layers, off->ev_layers);
    for (uint32_t l = 0; l < on->ev_layers; l++)
        cr_assert(on->ev_min[l] == off->ev_min[l] && on->ev_max[l] == off->ev_max[l],
                  "layer %u: lanes %llu..%llu with score_defer, %llu..%llu without", l,
                  (unsigned long long)on->ev_min[l], (unsigned long long)on->ev_max[l],
                  (unsigned long long)off->ev_min[l], (unsigned long long)off->ev_max[l]);
    size_t before = (size_t)(EV_BUDGET + EV_SLACK - on->ev_len0) + 2;
    cr_assert_lt(before, (size_t)EV_GEN);
    cr_log_info("h2o budget %d + %d: %llu tokens a lane after the prompt, %llu evictions during "
                "the generation, its first %zu tokens compared",
                EV_BUDGET, EV_SLACK, (unsigned long long)on->ev_len0,
                (unsigned long long)(on->ev_after - on->ev_append), before);
    tokens_same(on->ev_tok, off->ev_tok, before, "h2o before its first decode eviction");

    /* 3. */
    tokens_same(on->sum_tok, off->sum_tok, ST_GEN_SUM, "h2o alone");
    snap_same(&on->sum_snap, &off->sum_snap, "h2o alone (SUM)");
    tokens_same(on->decay_tok, off->decay_tok, ST_GEN_DECAY, "a2sf alone");
    snap_same(&on->decay_snap, &off->decay_snap, "a2sf alone (DECAY)");

    /* 4. Rows mode: the same rows reach the rules one step later; a session
     * alone draws the same Gumbel noise either way. */
    tokens_same(on->quant_tok, off->quant_tok, RW_GEN, "scissorhands alone");
    snap_counts_close(&on->quant_snap, &off->quant_snap, "scissorhands alone (QUANTILE)");
    tokens_same(on->gumbel_tok, off->gumbel_tok, RW_GEN, "keyformer alone");
    snap_same(&on->gumbel_snap, &off->gumbel_snap, "keyformer alone (GUMBEL)");
    tokens_same(on->rw_chain, off->rw_chain, 4 * RW_CHAIN, "h2o -> scissorhands -> keyformer -> h2o");
    snap_same(&on->rw_chain_snap, &off->rw_chain_snap, "h2o -> scissorhands -> keyformer -> h2o");
    /* the budget fixes the lengths: as many evictions either way */
    cr_assert_gt(on->rw_ev, 0, "scissorhands budget %d: no eviction", RW_EV_BUDGET);
    cr_assert_eq(on->rw_ev, off->rw_ev, "scissorhands evictions: %llu vs %llu",
                 (unsigned long long)on->rw_ev, (unsigned long long)off->rw_ev);
    cr_assert_eq(on->rw_ev_tokens, off->rw_ev_tokens);

    outcome_free(on);
    outcome_free(off);
    free(on);
    free(off);
}
