/*
 * The engine in-process on the CPU backend with the tiny reference model:
 * greedy generation against the golden tokens of an independent float64
 * implementation, continuous batching against one-at-a-time, cancel,
 * eviction under `window` and `streaming`, and failed appends and
 * generations that leave the conversation as it was.
 */
#include <criterion/criterion.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eng_harness.h"
#include "golden.h"

#define GOLDEN_PATH SINKD_TEST_DATA "/golden-tiny.txt"

static sinkd_engine *eng;
static golden gold;

static void setup(void)
{
    const char *dirs[] = { SINKD_PLUGIN_BUILD_DIR };

    eng = eng_h_open(dirs, 1);
    cr_assert(golden_load(GOLDEN_PATH, &gold) == 0);
}

static void teardown(void)
{
    eng_h_close(eng);
    golden_free(&gold);
}

/* Collect the token events of generate @id into @out (room for @cap); the
 * reply's reason is copied to @reason. Every event must be a token event.
 * Returns the number of tokens. */
static size_t collect_tokens(uint64_t id, int32_t *out, size_t cap, char reason[16])
{
    char events[256] = "";
    size_t n = eng_h_tokens(id, out, cap, reason, events, sizeof events);

    cr_assert_str_eq(events, "", "events other than tokens: %s", events);
    return n;
}

TestSuite(engine, .init = setup, .fini = teardown, .timeout = 60);

Test(engine, greedy_matches_golden)
{
    for (size_t c = 0; c < gold.n_cases; c++) {
        const golden_case *g = &gold.cases[c];
        int32_t got[64];
        char reason[16];
        uint64_t s = eng_h_open_session(NULL, NULL);

        eng_h_append(s, g->prompt_ids, g->n_prompt);
        size_t n = collect_tokens(eng_h_generate(s, (int32_t)g->n_greedy), got, 64, reason);
        cr_assert_str_eq(reason, "length");
        cr_assert_eq(n, g->n_greedy);
        for (size_t i = 0; i < n; i++)
            cr_assert_eq(got[i], g->greedy_ids[i], "case %zu token %zu: %d, golden %d", c, i,
                         got[i], g->greedy_ids[i]);
    }
}

Test(engine, batched_equals_one_at_a_time)
{
    uint64_t s[3], id[3];
    int32_t got[3][64];
    char reason[16];
    size_t n = gold.n_cases < 3 ? gold.n_cases : 3;

    for (size_t c = 0; c < n; c++) {
        s[c] = eng_h_open_session(NULL, NULL);
        eng_h_append(s[c], gold.cases[c].prompt_ids, gold.cases[c].n_prompt);
    }
    /* All three generate at once: each step advances every one of them. */
    for (size_t c = 0; c < n; c++)
        id[c] = eng_h_generate(s[c], (int32_t)gold.cases[c].n_greedy);
    for (size_t c = 0; c < n; c++) {
        size_t k = collect_tokens(id[c], got[c], 64, reason);
        cr_assert_eq(k, gold.cases[c].n_greedy);
        cr_assert_arr_eq(got[c], gold.cases[c].greedy_ids, k * sizeof(int32_t),
                         "case %zu differs when batched", c);
    }
}

Test(engine, cancel_ends_generation)
{
    uint64_t s = eng_h_open_session(NULL, NULL), id;
    eng_h_frame *f;
    char r[32];

    eng_h_append(s, gold.cases[0].prompt_ids, gold.cases[0].n_prompt);
    id = eng_h_generate(s, 1 << 20);
    f = eng_h_next(id);
    cr_assert(eng_h_is_event(f), "a token comes first");
    eng_h_frame_free(f);
    eng_h_frame_free(eng_h_reply_ok(eng_h_submit(eng_h_job(SINKD_JOB_SESSION_CANCEL, s))));
    while (eng_h_is_event(f = eng_h_next(id)))
        eng_h_frame_free(f);
    eng_h_str(f, "reason", r, sizeof r);
    cr_assert_str_eq(r, "cancelled");
    cr_assert(eng_h_u64(f, "n_tokens") < 1000);
    eng_h_frame_free(f);
    /* The session is idle again and keeps working. */
    id = eng_h_generate(s, 3);
    int32_t got[8];
    char reason[16];
    cr_assert_eq(collect_tokens(id, got, 8, reason), 3);
}

/* Generate @n tokens after a golden prompt under @policy and return the
 * session's stats frame. */
static eng_h_frame *run_policy(const char *policy, const char *params, int32_t n)
{
    uint64_t s = eng_h_open_session(policy, params);
    int32_t got[512];
    char reason[16];

    eng_h_append(s, gold.cases[2].prompt_ids, gold.cases[2].n_prompt);
    cr_assert_eq(collect_tokens(eng_h_generate(s, n), got, 512, reason), (size_t)n);
    return eng_h_reply_ok(eng_h_submit(eng_h_job(SINKD_JOB_SESSION_STATS, s)));
}

/* Every lane of every layer holds between @lo and @hi tokens. */
static void assert_lanes(const eng_h_frame *f, uint64_t lo, uint64_t hi)
{
    const msgpack_object *layers = sinkd_map_get(&f->msg.root, "layers");

    cr_assert(layers && layers->type == MSGPACK_OBJECT_ARRAY && layers->via.array.size > 0);
    for (uint32_t l = 0; l < layers->via.array.size; l++) {
        uint64_t mn, mx;
        eng_h_layer_lens(f, l, &mn, &mx);
        cr_assert(mn >= lo && mx <= hi, "layer %u: lanes %llu..%llu outside %llu..%llu", l,
                  (unsigned long long)mn, (unsigned long long)mx, (unsigned long long)lo,
                  (unsigned long long)hi);
    }
}

Test(engine, window_eviction_keeps_budget_and_frees_pages)
{
    eng_h_frame *full = run_policy("full", NULL, 120);
    eng_h_frame *win = run_policy("window", "window=32", 120);
    uint64_t tokens = eng_h_u64(full, "tokens");

    /* 29 prompt tokens + 120 generated, the last one not yet run */
    cr_assert_eq(tokens, gold.cases[2].n_prompt + 119);
    assert_lanes(full, tokens, tokens);
    /* budget 32, slack one page (16): lanes stay within budget..budget+slack */
    assert_lanes(win, 32, 32 + 16);
    cr_assert(eng_h_u64(win, "evictions") > 0);
    cr_assert(eng_h_u64(win, "pages") < eng_h_u64(full, "pages"),
              "window holds fewer pages than full");
    eng_h_frame_free(full);
    eng_h_frame_free(win);
}

Test(engine, streaming_eviction_keeps_budget)
{
    eng_h_frame *f = run_policy("streaming", "sinks=4 window=28", 100);

    assert_lanes(f, 32, 32 + 16);
    cr_assert(eng_h_u64(f, "evicted_tokens") > 0);
    /* the CPU scores every step at once: no deferral block */
    cr_assert_eq(eng_h_u64(f, "defer_bytes"), 0);
    eng_h_frame_free(f);
}

Test(engine, closing_returns_pages)
{
    sinkd_engine_counters *c = sinkd_engine_counters_get(eng);
    uint64_t before = atomic_load(&c->kv_used_bytes);
    uint64_t s = eng_h_open_session(NULL, NULL);

    eng_h_append(s, gold.cases[0].prompt_ids, gold.cases[0].n_prompt);
    cr_assert(atomic_load(&c->kv_used_bytes) > before);
    eng_h_frame_free(eng_h_reply_ok(eng_h_submit(eng_h_job(SINKD_JOB_SESSION_CLOSE, s))));
    cr_assert_eq(atomic_load(&c->kv_used_bytes), before);
}

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* timings.step_ms is the engine's time from one token to the next: its
 * forwards are part of it (decode_ms covers the same n - 1 steps), and the
 * whole interval lies inside the wall time the caller waited. */
Test(engine, step_timings_cover_the_forward)
{
    const golden_case *g = &gold.cases[0];
    enum { N = 24 };
    uint64_t s = eng_h_open_session("full", "");
    eng_h_append(s, g->prompt_ids, g->n_prompt);
    double t0 = now_ms();
    uint64_t id = eng_h_generate(s, N);
    eng_h_frame *f;
    size_t n = 0;

    while ((f = eng_h_next(id)) && eng_h_is_event(f)) {
        n++;
        eng_h_frame_free(f);
    }
    double wall = now_ms() - t0;
    cr_assert(f && !eng_h_is_event(f));
    const msgpack_object *t = sinkd_map_get(&f->msg.root, "timings");
    const msgpack_object *step = t ? sinkd_map_get(t, "step_ms") : NULL;
    const msgpack_object *dec = t ? sinkd_map_get(t, "decode_ms") : NULL;
    cr_assert(step && dec && step->type == MSGPACK_OBJECT_FLOAT64 &&
              dec->type == MSGPACK_OBJECT_FLOAT64);
    cr_assert_eq(n, N);
    cr_assert_gt(step->via.f64, 0.0);
    cr_assert_leq(dec->via.f64, step->via.f64 * (N - 1) * 1.0001 + 1e-3,
                  "forwards %.4f ms outside %d steps of %.4f ms", dec->via.f64, N - 1,
                  step->via.f64);
    cr_assert_leq(step->via.f64 * (N - 1), wall, "steps %.4f ms x %d, waited %.4f ms",
                  step->via.f64, N - 1, wall);
    eng_h_frame_free(f);
}

/* ---- a failed request leaves the conversation as it was ------------------------- */

/* An append or a generate of @s (ids @ids[0..n) / max_tokens @n) that must
 * fail with quota_exceeded. */
static void append_refused(uint64_t s, const int32_t *ids, size_t n)
{
    sinkd_job *j = eng_h_job(SINKD_JOB_SESSION_APPEND, s);
    char code[32];

    j->ids = malloc(n * sizeof *ids);
    memcpy(j->ids, ids, n * sizeof *ids);
    j->n_ids = n;
    j->bos_set = true;
    eng_h_reply_code(eng_h_submit(j), code);
    cr_assert_str_eq(code, "quota_exceeded", "an append of %zu over the budget", n);
}

/* n_past of a successful append of @ids[0..n) to @s. */
static uint64_t append_n_past(uint64_t s, const int32_t *ids, size_t n)
{
    sinkd_job *j = eng_h_job(SINKD_JOB_SESSION_APPEND, s);

    j->ids = malloc(n * sizeof *ids);
    memcpy(j->ids, ids, n * sizeof *ids);
    j->n_ids = n;
    j->bos_set = true;
    eng_h_frame *f = eng_h_reply_ok(eng_h_submit(j));
    uint64_t n_past = eng_h_u64(f, "n_past");
    eng_h_frame_free(f);
    return n_past;
}

/* A session whose lanes hold its whole budget (16 tokens, policy full):
 * appends over it fail (one token and several), and the last logits are
 * still there, bit for bit; a generation that samples from them sends a
 * token, and the next one, whose first step must run that token and cannot,
 * fails without dropping it: once window makes room, the conversation holds
 * the 16 + 1 tokens plus what comes next. */
Test(engine, failed_appends_and_generations_keep_the_conversation)
{
    static const int32_t ids[16] = {10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
                                    24, 25};
    const int32_t more[3] = {5, 6, 7};
    size_t nv = (size_t)sinkd_engine_model_at(eng, 0)->hp->n_vocab;
    float *before = malloc(nv * sizeof *before), *after = malloc(nv * sizeof *after);
    char reason[16], code[32];
    int32_t tok[4];

    cr_assert(before && after);
    sinkd_job *j = eng_h_job(SINKD_JOB_SESSION_OPEN, 0);
    j->budget = 16;
    eng_h_frame *f = eng_h_reply_ok(eng_h_submit(j));
    uint64_t s = eng_h_u64(f, "session");
    eng_h_frame_free(f);
    cr_assert_eq(append_n_past(s, ids, 16), 16);
    eng_h_logits(s, before, nv);

    append_refused(s, more, 1); /* the one-token path: a decode step */
    append_refused(s, more, 3); /* a prefill */
    eng_h_logits(s, after, nv);
    cr_assert_arr_eq(before, after, nv * sizeof *before, "a failed append changed the logits");

    cr_assert_eq(collect_tokens(eng_h_generate(s, 1), tok, 4, reason), 1);
    cr_assert_str_eq(reason, "length");
    eng_h_reply_code(eng_h_generate(s, 4), code); /* its first step runs tok[0] */
    cr_assert_str_eq(code, "quota_exceeded");

    sinkd_job *w = eng_h_job(SINKD_JOB_SESSION_POLICY, s);
    w->policy = strdup("window");
    w->params = strdup("window=8 slack=0"); /* evicts at once */
    eng_h_frame_free(eng_h_reply_ok(eng_h_submit(w)));
    /* this generation runs tok[0] first (17), then sends one more: an
     * append after it runs that one and its own token */
    cr_assert_eq(collect_tokens(eng_h_generate(s, 1), tok + 1, 3, reason), 1);
    cr_assert_eq(append_n_past(s, more, 1), 19, "the token sent before the failure was dropped");
    free(before);
    free(after);
}

/* Swapping to a policy that evicts at the end of a prompt (SnapKV) evicts
 * at once, as every swap does: the lanes do not wait for the next append. */
Test(engine, swap_to_a_prompt_time_policy_evicts_now)
{
    int32_t ids[200];
    uint64_t mn, mx;

    for (int i = 0; i < 200; i++)
        ids[i] = 10 + i % 200;
    uint64_t s = eng_h_open_session("full", NULL);
    cr_assert_eq(append_n_past(s, ids, 200), 200);
    sinkd_job *w = eng_h_job(SINKD_JOB_SESSION_POLICY, s);
    w->policy = strdup("snapkv");
    w->params = strdup("budget=48 window=8");
    eng_h_frame_free(eng_h_reply_ok(eng_h_submit(w)));
    eng_h_frame *f = eng_h_reply_ok(eng_h_submit(eng_h_job(SINKD_JOB_SESSION_STATS, s)));
    for (uint32_t l = 0; l < 4; l++) {
        eng_h_layer_lens(f, l, &mn, &mx);
        cr_assert_leq(mx, 48, "layer %u keeps %llu tokens after the swap", l,
                      (unsigned long long)mx);
    }
    eng_h_frame_free(f);
}
