/*
 * A conversation streamed into a session one token per session.append gets
 * the same policy machinery as the tokens of session.generate (in-process,
 * CPU, tiny model): the same lanes (positions and scores, read back from
 * session.save snapshots) and the same logits; statistics that differ
 * between policies keep different tokens; SnapKV and PyramidKV evict at the
 * end of every append and stay within budget .. budget + slack; Quest and
 * TidalDecode selection apply to appended tokens.
 */
#include <criterion/criterion.h>

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eng_harness.h"
#include "engine_internal.h" /* the backend's ops, to take stat_rules away */
#include "snapshot.h"

#define TEXT_PATH SINKD_TEST_DATA "/pydocs-excerpt.txt"
#define SLACK 16   /* page_tokens: the default slack */
#define LAYERS 4   /* the tiny model's */
#define PROMPT 40  /* five prefill chunks of the harness's 8 */
#define TEXT_MAX 4096

static sinkd_engine *eng;
static char state[] = "/tmp/sinkd-stream-XXXXXX";
static int32_t text[TEXT_MAX];
static size_t n_text;
static size_t nv;

/* The text as the model's tokens (BOS first), through session.tokenize. */
static void load_text(void)
{
    FILE *f = fopen(TEXT_PATH, "rb");
    char *buf = malloc(16384);
    size_t n;

    cr_assert(f && buf);
    n = fread(buf, 1, 16384, f);
    fclose(f);
    sinkd_job *j = eng_h_job(SINKD_JOB_TOKENIZE, 0);
    j->text = buf;
    j->text_len = n;
    j->has_text = true;
    eng_h_frame *r = eng_h_reply_ok(eng_h_submit(j));
    const msgpack_object *ids = sinkd_map_get(&r->msg.root, "ids");
    cr_assert(ids && ids->type == MSGPACK_OBJECT_ARRAY);
    n_text = ids->via.array.size < TEXT_MAX ? ids->via.array.size : TEXT_MAX;
    for (size_t i = 0; i < n_text; i++)
        text[i] = (int32_t)ids->via.array.ptr[i].via.i64;
    eng_h_frame_free(r);
    cr_assert(n_text >= 600, "%zu tokens of text", n_text);
}

static const char *const plugin_dirs[] = {SINKD_PLUGIN_BUILD_DIR};

static void setup(void)
{
    cr_assert(mkdtemp(state));
    eng = eng_h_open_state(plugin_dirs, 1, state);
    nv = (size_t)sinkd_engine_model_at(eng, 0)->hp->n_vocab;
    load_text();
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void teardown(void)
{
    eng_h_close(eng);
    nftw(state, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

TestSuite(stream, .init = setup, .fini = teardown, .timeout = 120);

static void close_session(uint64_t s)
{
    eng_h_frame_free(eng_h_reply_ok(eng_h_submit(eng_h_job(SINKD_JOB_SESSION_CLOSE, s))));
}

/* Append @ids[0..n) to @s one token per session.append. */
static void stream_in(uint64_t s, const int32_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        eng_h_append(s, ids + i, 1);
}

/* ---- lanes through session.save ------------------------------------------ */

typedef struct lanes {
    sinkd_snap_meta m;
    sinkd_snap_layer l[LAYERS];
} lanes;

static void lanes_read(uint64_t s, lanes *out)
{
    sinkd_snap_reader r = SINKD_SNAP_READER_INIT;
    char path[4300], err[256] = "";

    eng_h_frame *f = eng_h_reply_ok(eng_h_submit(eng_h_job(SINKD_JOB_SESSION_SAVE, s)));
    eng_h_str(f, "path", path, sizeof path);
    eng_h_frame_free(f);
    cr_assert(sinkd_snap_read_begin(&r, path, &out->m, err, sizeof err) == 0, "%s", err);
    cr_assert_eq(out->m.layers, LAYERS);
    for (int32_t l = 0; l < LAYERS; l++)
        cr_assert(sinkd_snap_read_layer(&r, &out->l[l], err, sizeof err) == 0, "%s", err);
    sinkd_snap_read_end(&r);
    unlink(path);
}

static void lanes_free(lanes *x)
{
    sinkd_snap_meta_free(&x->m);
    for (int32_t l = 0; l < LAYERS; l++)
        sinkd_snap_layer_free(&x->l[l]);
}

/* The same tokens kept in every lane, with the same scores (1e-5 relative). */
static void lanes_same(const lanes *a, const lanes *b, const char *what)
{
    for (int32_t l = 0; l < LAYERS; l++) {
        const sinkd_snap_layer *x = &a->l[l], *y = &b->l[l];
        cr_assert_eq(x->n_lanes, y->n_lanes);
        for (int32_t h = 0; h < x->n_lanes; h++)
            cr_assert_eq(x->len[h], y->len[h], "%s layer %d head %d: %d tokens vs %d", what, l,
                         h, x->len[h], y->len[h]);
        cr_assert_arr_eq(x->pos, y->pos, (size_t)x->total * sizeof *x->pos,
                         "%s layer %d: other positions kept", what, l);
        for (int64_t t = 0; t < x->total; t++)
            cr_assert(fabsf(x->score[t] - y->score[t]) <= 1e-5f * fmaxf(1.0f, fabsf(x->score[t])),
                      "%s layer %d token %lld: score %g vs %g", what, l, (long long)t,
                      x->score[t], y->score[t]);
    }
}

/* Whether every lane of @a keeps the positions of @b's. */
static bool lanes_equal_pos(const lanes *a, const lanes *b)
{
    for (int32_t l = 0; l < LAYERS; l++) {
        const sinkd_snap_layer *x = &a->l[l], *y = &b->l[l];
        if (x->total != y->total || memcmp(x->pos, y->pos, (size_t)x->total * sizeof *x->pos))
            return false;
    }
    return true;
}

static double max_diff(const float *a, const float *b)
{
    double d = 0;

    for (size_t i = 0; i < nv; i++)
        d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

/* ---- a step's rules at its end == after each layer ------------------------ */

/* The first session of the engine: the prompt, then generate @n tokens,
 * into @got; its lanes into @out. */
static void first_session(const char *policy, const char *params, int32_t n, int32_t *got,
                          lanes *out)
{
    char reason[16];

    uint64_t s = eng_h_open_session(policy, params);
    eng_h_append(s, text, PROMPT);
    cr_assert_eq(eng_h_tokens(eng_h_generate(s, n), got, (size_t)n, reason, NULL, 0), (size_t)n);
    lanes_read(s, out);
    close_session(s);
}

/* QUANTILE and GUMBEL run at the end of a decode step, every layer's lanes
 * in one ops->stat_rules. A backend without it gets one ops->stat per
 * layer, right after the layer's attention, as before the batching: two
 * fresh engines (so the session ids, hence the Gumbel noise, agree) must
 * generate the same tokens and leave the same lanes bit for bit. */
static void rules_batched_as_per_layer(const char *policy, const char *params)
{
    enum { N = 120 };
    int32_t got_a[N], got_b[N];
    lanes a, b;
    static sinkd_ops no_batch;

    eng_h_close(eng);
    eng = eng_h_open_state(plugin_dirs, 1, state);
    cr_assert_not_null(eng->be->ops->stat_rules, "the CPU backend batches rules");
    first_session(policy, params, N, got_a, &a);
    eng_h_close(eng);
    eng = eng_h_open_state(plugin_dirs, 1, state);
    /* before the engine's first job: nothing reads the ops table yet */
    no_batch = *eng->be->ops;
    no_batch.stat_rules = NULL;
    eng->be->ops = &no_batch;
    first_session(policy, params, N, got_b, &b);

    cr_assert_arr_eq(got_a, got_b, sizeof got_a, "%s: other tokens without stat_rules", policy);
    cr_assert_gt(a.m.evicted_tokens, 0, "%s evicted nothing: no rule was tested", policy);
    cr_assert_eq(a.m.evicted_tokens, b.m.evicted_tokens);
    for (int32_t l = 0; l < LAYERS; l++) {
        const sinkd_snap_layer *x = &a.l[l], *y = &b.l[l];
        cr_assert_eq(x->total, y->total, "%s layer %d", policy, l);
        cr_assert_arr_eq(x->pos, y->pos, (size_t)x->total * sizeof *x->pos,
                         "%s layer %d: other positions kept", policy, l);
        cr_assert_arr_eq(x->score, y->score, (size_t)x->total * sizeof *x->score,
                         "%s layer %d: other scores", policy, l);
    }
    lanes_free(&a);
    lanes_free(&b);
}

Test(stream, rules_at_step_end_as_per_layer)
{
    rules_batched_as_per_layer("scissorhands", "budget=32 recent=8 history=16 quantile=0.9");
    rules_batched_as_per_layer("keyformer", "budget=32 temperature=1.5");
}

/* ---- one-token appends == generate ---------------------------------------- */

/* Session A: the prompt, then generate @n tokens (decode steps feed the
 * first n - 1; the last stays pending). Session B: the prompt, then those
 * n - 1 tokens one session.append each. Same lanes, same logits. */
static void same_as_generate(const char *policy, const char *params, int32_t n)
{
    int32_t got[512];
    char reason[16];
    float *la = malloc(nv * sizeof *la), *lb = malloc(nv * sizeof *lb);
    lanes a, b;

    cr_assert(la && lb && n <= 512);
    uint64_t sa = eng_h_open_session(policy, params), sb = eng_h_open_session(policy, params);
    eng_h_append(sa, text, PROMPT);
    cr_assert_eq(eng_h_tokens(eng_h_generate(sa, n), got, 512, reason, NULL, 0), (size_t)n);
    eng_h_append(sb, text, PROMPT);
    stream_in(sb, got, (size_t)n - 1);

    eng_h_logits(sa, la, nv);
    eng_h_logits(sb, lb, nv);
    cr_assert(max_diff(la, lb) <= 1e-5, "%s %s: logits differ by %g", policy, params,
              max_diff(la, lb));
    lanes_read(sa, &a);
    lanes_read(sb, &b);
    cr_assert_eq(a.m.tokens, b.m.tokens);
    cr_assert_eq(a.m.evicted_tokens, b.m.evicted_tokens, "%s: %llu vs %llu evicted", policy,
                 (unsigned long long)a.m.evicted_tokens, (unsigned long long)b.m.evicted_tokens);
    lanes_same(&a, &b, policy);
    lanes_free(&a);
    lanes_free(&b);
    close_session(sa);
    close_session(sb);
    free(la);
    free(lb);
}

Test(stream, statistics_as_generate)
{
    /* 40 + 99 tokens through budgets of 32: eviction points on both paths */
    same_as_generate("h2o", "budget=32", 100);
    same_as_generate("h2o", "budget=32 rope=cache", 100);
    same_as_generate("a2sf", "budget=32 lambda=0.9", 100);
    same_as_generate("tova", "budget=32", 100);
    same_as_generate("scissorhands", "budget=32 recent=8 history=16 quantile=0.9", 100);
    same_as_generate("window", "window=32", 100);
    /* an eviction at the end of an append has no twin in generate (which
     * never evicts for these plans): budgets above the stream (beta=1:
     * every layer's share is the budget) compare the statistic alone */
    same_as_generate("snapkv", "budget=200 window=8", 100);
    same_as_generate("pyramidkv", "budget=200 window=8 beta=1", 100);
}

Test(stream, selection_as_generate)
{
    same_as_generate("quest", "budget=16 dense=1", 60);
    same_as_generate("tidal", "budget=8 dense=1", 60);
}

/* ---- the statistic decides what a streamed session keeps ------------------- */

static void stream_lanes(const char *policy, const char *params, size_t n, lanes *out)
{
    uint64_t s = eng_h_open_session(policy, params);

    stream_in(s, text, n);
    lanes_read(s, out);
    close_session(s);
}

/* Whether some lane of @x keeps a position older than the last @recent of
 * the stream, sinks (positions < 4) aside: a choice no window makes. */
static bool keeps_old(const lanes *x, int64_t recent)
{
    for (int32_t l = 0; l < LAYERS; l++)
        for (int64_t t = 0; t < x->l[l].total; t++)
            if (x->l[l].pos[t] >= 4 && x->l[l].pos[t] < x->m.tokens - recent)
                return true;
    return false;
}

Test(stream, statistics_choose_tokens)
{
    enum { N = 400 };
    lanes h32, h64, a32, sc, win;

    stream_lanes("h2o", "budget=32 rope=cache", N, &h32);
    stream_lanes("h2o", "budget=64 rope=cache", N, &h64);
    stream_lanes("a2sf", "budget=32 lambda=0.5 rope=cache", N, &a32);
    stream_lanes("scissorhands", "budget=32 recent=8 history=16 rope=cache", N, &sc);
    stream_lanes("window", "window=32 rope=cache", N, &win);
    for (int32_t l = 0; l < LAYERS; l++)
        for (int32_t h = 0; h < h32.l[l].n_lanes; h++) {
            cr_assert(h32.l[l].len[h] >= 32 && h32.l[l].len[h] <= 32 + SLACK);
            cr_assert(h64.l[l].len[h] >= 64 && h64.l[l].len[h] <= 64 + SLACK);
        }
    /* heavy hitters: tokens a window of the same size has long dropped */
    cr_assert(keeps_old(&h32, 32 + SLACK), "h2o keeps only recent tokens");
    cr_assert(keeps_old(&h64, 64 + SLACK), "h2o keeps only recent tokens");
    cr_assert(keeps_old(&sc, 32 + SLACK), "scissorhands keeps only recent tokens");
    cr_assert(!keeps_old(&win, 32 + SLACK));
    /* a decayed sum is another statistic than a plain one */
    cr_assert(!lanes_equal_pos(&h32, &a32), "a2sf kept what h2o kept");
    cr_assert(!lanes_equal_pos(&sc, &win), "scissorhands kept what window kept");
    lanes_free(&h32);
    lanes_free(&h64);
    lanes_free(&a32);
    lanes_free(&sc);
    lanes_free(&win);
}

/* ---- SnapKV and PyramidKV at the end of every append ----------------------- */

/* PyramidKV's share of layer @l for budget @b and window @w (its paper's
 * arithmetic: capacities falling linearly with depth from 2c - c/beta to
 * c/beta, c = b - w, plus the window). */
static int32_t pyramid_budget(int32_t b, int32_t w, int32_t l)
{
    int32_t c = b - w, mn = c / 20, mx = 2 * c - mn;
    return mn + (LAYERS - 1 - l) * (mx - mn) / (LAYERS - 1) + w;
}

/* Stream the text in appends of @step tokens; after each one every lane is
 * within its budget + slack, and once the stream passed a lane's budget,
 * at least at it. */
static void bounded(const char *policy, int32_t budget, size_t step, bool pyramid)
{
    enum { N = 300 };
    char params[64];
    uint64_t evicted = 0;

    snprintf(params, sizeof params, "budget=%d window=8", budget);
    uint64_t s = eng_h_open_session(policy, params);
    eng_h_append(s, text, PROMPT);
    for (size_t at = PROMPT; at + step <= N; at += step) {
        eng_h_append(s, text + at, step);
        eng_h_frame *f = eng_h_reply_ok(eng_h_submit(eng_h_job(SINKD_JOB_SESSION_STATS, s)));
        for (uint32_t l = 0; l < LAYERS; l++) {
            int32_t b = pyramid ? pyramid_budget(budget, 8, (int32_t)l) : budget;
            uint64_t mn, mx, lo = at + step < (size_t)b ? at + step : (uint64_t)b;
            eng_h_layer_lens(f, l, &mn, &mx);
            cr_assert(mn >= lo && mx <= (uint64_t)(b + SLACK),
                      "%s step %zu at %zu layer %u: lanes %llu..%llu, budget %d", policy, step,
                      at, l, (unsigned long long)mn, (unsigned long long)mx, b);
        }
        evicted = eng_h_u64(f, "evicted_tokens");
        eng_h_frame_free(f);
    }
    cr_assert(evicted >= N - (uint64_t)(budget + SLACK), "%s: %llu evicted", policy,
              (unsigned long long)evicted);
    close_session(s);
}

Test(stream, prompt_eviction_every_append)
{
    bounded("snapkv", 48, 1, false);
    bounded("snapkv", 48, 5, false);
    bounded("pyramidkv", 64, 1, true);
}

/* ---- selection on the append path ------------------------------------------ */

static void stream_logits(const char *policy, const char *params, size_t n, float *out)
{
    uint64_t s = eng_h_open_session(policy, params);

    stream_in(s, text, n);
    eng_h_logits(s, out, nv);
    close_session(s);
}

static void selection_streamed(const char *policy, const char *sparse, const char *covering)
{
    enum { N = 160 };
    float *full = malloc(nv * sizeof *full), *lg = malloc(nv * sizeof *lg);

    cr_assert(full && lg);
    stream_logits("full", NULL, N, full);
    stream_logits(policy, covering, N, lg);
    cr_assert(max_diff(lg, full) <= 1e-5, "%s %s: %g from full", policy, covering,
              max_diff(lg, full));
    stream_logits(policy, sparse, N, lg);
    cr_assert(max_diff(lg, full) > 1e-3, "%s %s: logits equal full's (%g)", policy, sparse,
              max_diff(lg, full));
    free(full);
    free(lg);
}

Test(stream, quest_selects_appended_tokens)
{
    /* 160 tokens: 10 pages a lane; k = 1 page, then k >= every page */
    selection_streamed("quest", "budget=16 dense=1", "budget=100000 dense=1");
}

Test(stream, tidal_selects_appended_tokens)
{
    selection_streamed("tidal", "budget=8 dense=1", "budget=100000 dense=1");
}
