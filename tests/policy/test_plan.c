/*
 * Plan execution on the host (daemon/policy/plan.c) on small hand-computed
 * cases: keep lists, pooling, layer scope, head kinds, selection, list
 * validation and plan validation, the bounds on every count included.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "plan.h"

static sinkd_policy_geometry geom(int32_t layers, int32_t kv)
{
    return (sinkd_policy_geometry){.struct_size = sizeof(sinkd_policy_geometry),
                                   .n_layers = layers, .n_q_heads = kv, .n_kv_heads = kv,
                                   .head_dim = 8, .page_tokens = 16, .max_tokens = 4096};
}

typedef struct fixture {
    sinkd_policy_geometry g;
    sinkd_policy_plan p;
    int32_t pos[64];
    int32_t out[2][64];
    sinkd_policy_lane lanes[2];
} fixture;

static void fixture_init(fixture *f, int32_t kv)
{
    memset(f, 0, sizeof *f);
    f->g = geom(2, kv);
    cr_assert_eq(sinkd_plan_init(&f->p, &f->g), 0);
    for (int i = 0; i < 64; i++)
        f->pos[i] = i;
}

static sinkd_policy_lane *lane(fixture *f, int h, int len, const float *score)
{
    f->lanes[h] = (sinkd_policy_lane){.layer = 0, .kv_head = h, .len = len,
                                      .n_pages = (len + 15) / 16, .pos = f->pos, .score = score,
                                      .out = f->out[h]};
    return &f->lanes[h];
}

static void expect(const sinkd_policy_lane *l, const int32_t *want, int n)
{
    cr_assert_eq(l->n_out, n, "kept %d, want %d", l->n_out, n);
    for (int i = 0; i < n; i++)
        cr_assert_eq(l->out[i], want[i], "entry %d: %d, want %d", i, l->out[i], want[i]);
}

static void keep_one(fixture *f, int len, const float *score, const int32_t *want, int n)
{
    char err[128];
    lane(f, 0, len, score);
    cr_assert_eq(sinkd_plan_keep(&f->p, &f->g, f->lanes, 1, err, sizeof err), 0, "%s", err);
    expect(&f->lanes[0], want, n);
}

Test(plan, sinks_top_and_recent)
{
    fixture f;
    fixture_init(&f, 1);
    f.p.stat = SINKD_STAT_SUM;
    f.p.budget = 5, f.p.sinks = 1, f.p.recent = 2;
    /* candidates 1..7 score 1 8 2 7 3 0 0: the best two are 2 and 4 */
    const float s[10] = {9, 1, 8, 2, 7, 3, 0, 0, 5, 5};
    keep_one(&f, 10, s, (int32_t[]){0, 2, 4, 8, 9}, 5);
    /* equal scores: the older tokens win */
    const float eq[10] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    keep_one(&f, 10, eq, (int32_t[]){0, 1, 2, 8, 9}, 5);
    /* NaN ranks below everything */
    const float nan[10] = {0, 1, NAN, 2, 7, 3, 0, 0, 0, 0};
    keep_one(&f, 10, nan, (int32_t[]){0, 4, 5, 8, 9}, 5);
    /* a lane within budget keeps everything */
    keep_one(&f, 4, s, (int32_t[]){0, 1, 2, 3}, 4);
    sinkd_plan_free(&f.p);
}

Test(plan, pooling_max_and_avg)
{
    fixture f;
    fixture_init(&f, 1);
    f.p.stat = SINKD_STAT_OBS_WINDOW;
    f.p.obs_window = 1;
    f.p.budget = 3;
    f.p.pool_kernel = 3;
    f.p.pool = SINKD_POOL_MAX;
    /* max over 3: 0 9 9 9 0 1 1 -> 1 2 3 */
    keep_one(&f, 7, (const float[]){0, 0, 9, 0, 0, 1, 0}, (int32_t[]){1, 2, 3}, 3);
    /* avg divides by the kernel even at the ends (count_include_pad):
     * 3 0 0 0 2 -> 1 1 0 .67 .67 -> 0 1 3; excluding the pad would pick 4 */
    f.p.pool = SINKD_POOL_AVG;
    keep_one(&f, 5, (const float[]){3, 0, 0, 0, 2}, (int32_t[]){0, 1, 3}, 3);
    /* pooling stops at the recent window: its scores do not leak out */
    f.p.recent = 1;
    f.p.budget = 2;
    keep_one(&f, 5, (const float[]){1, 0, 0, 0, 50}, (int32_t[]){0, 4}, 2);
    sinkd_policy_plan q;
    cr_assert_eq(sinkd_plan_init(&q, &f.g), 0);
    sinkd_plan_copy(&q, &f.p, &f.g);
    cr_assert_eq(q.pool, SINKD_POOL_AVG);
    cr_assert_neq(q.layer_budget, f.p.layer_budget);
    sinkd_plan_free(&q);
    sinkd_plan_free(&f.p);
}

Test(plan, layer_scope_and_head_kinds)
{
    fixture f;
    char err[128];
    fixture_init(&f, 2);
    f.p.stat = SINKD_STAT_LAST;
    f.p.scope = SINKD_SCOPE_LAYER;
    f.p.budget = 2;
    /* sums 5 5 6 0 4: 2 and (tie, older) 0 */
    lane(&f, 0, 5, (const float[]){5, 0, 3, 0, 4});
    lane(&f, 1, 5, (const float[]){0, 5, 3, 0, 0});
    cr_assert_eq(sinkd_plan_keep(&f.p, &f.g, f.lanes, 2, err, sizeof err), 0, "%s", err);
    expect(&f.lanes[0], (int32_t[]){0, 2}, 2);
    expect(&f.lanes[1], (int32_t[]){0, 2}, 2);
    lane(&f, 1, 4, (const float[]){0, 5, 3, 0});
    cr_assert_eq(sinkd_plan_keep(&f.p, &f.g, f.lanes, 2, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "differ in length") != NULL);

    /* head 1 streaming: first 1 + last 2, whatever the scores */
    f.p.head_kind[1] = SINKD_HEAD_STREAMING;
    f.p.stream_sinks = 1;
    f.p.stream_recent = 2;
    cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(sinkd_plan_lane_budget(&f.p, &f.g, 0, 1), 3);
    lane(&f, 1, 6, (const float[]){0, 9, 9, 9, 0, 0});
    cr_assert_eq(sinkd_plan_keep(&f.p, &f.g, f.lanes, 2, err, sizeof err), 0, "%s", err);
    expect(&f.lanes[0], (int32_t[]){0, 4}, 2); /* lane 0 alone now: 5 0 3 0 4 */
    expect(&f.lanes[1], (int32_t[]){0, 4, 5}, 3);
    sinkd_plan_free(&f.p);
}

Test(plan, selection)
{
    fixture f;
    char err[128];
    fixture_init(&f, 1);
    f.p.flags = SINKD_PLAN_PAGE_BOUNDS;
    f.p.select = SINKD_SELECT_PAGES;
    f.p.select_pages = 2;
    f.p.dense_layers = 1;
    cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(sinkd_plan_select_source(&f.p, 0), -1);
    cr_assert_eq(sinkd_plan_select_source(&f.p, 1), 1);
    lane(&f, 0, 64, NULL)->layer = 1;
    f.lanes[0].page_score = (const float[]){1, 9, 3, 8};
    cr_assert_eq(sinkd_plan_select(&f.p, &f.g, f.lanes, 1, err, sizeof err), 0, "%s", err);
    expect(&f.lanes[0], (int32_t[]){1, 3}, 2);

    float s[40] = {0};
    s[5] = 3, s[39] = 2, s[20] = 1;
    f.p.select = SINKD_SELECT_TOKENS;
    f.p.select_pages = 0;
    f.p.select_tokens = 2;
    lane(&f, 0, 40, s)->layer = 1;
    cr_assert_eq(sinkd_plan_select(&f.p, &f.g, f.lanes, 1, err, sizeof err), 0, "%s", err);
    expect(&f.lanes[0], (int32_t[]){0, 2}, 2);
    /* layer 0 is dense: asking it to select is the caller's bug */
    lane(&f, 0, 40, s);
    cr_assert_eq(sinkd_plan_select(&f.p, &f.g, f.lanes, 1, err, sizeof err), -EINVAL);
    sinkd_plan_free(&f.p);
}

Test(plan, check_list)
{
    char err[128];
    cr_assert_eq(sinkd_plan_check_list((int32_t[]){0, 3, 4}, 3, 5, 0, err, sizeof err), 0);
    cr_assert_eq(sinkd_plan_check_list(NULL, 0, 5, 0, err, sizeof err), 0);
    cr_assert_eq(sinkd_plan_check_list((int32_t[]){0, 5}, 2, 5, 0, err, sizeof err), -EPROTO);
    cr_assert(strstr(err, "outside [0, 5)") != NULL, "%s", err);
    cr_assert_eq(sinkd_plan_check_list((int32_t[]){-1}, 1, 5, 0, err, sizeof err), -EPROTO);
    cr_assert_eq(sinkd_plan_check_list((int32_t[]){1, 1}, 2, 5, 0, err, sizeof err), -EPROTO);
    cr_assert(strstr(err, "repeats") != NULL, "%s", err);
    cr_assert_eq(sinkd_plan_check_list((int32_t[]){2, 1}, 2, 5, 0, err, sizeof err), -EPROTO);
    cr_assert(strstr(err, "not sorted") != NULL, "%s", err);
    cr_assert_eq(sinkd_plan_check_list((int32_t[]){0, 1, 2}, 3, 2, 0, err, sizeof err), -EPROTO);
    cr_assert_eq(sinkd_plan_check_list(NULL, 0, 2, 1, err, sizeof err), -EPROTO);
}

Test(plan, validation)
{
    fixture f;
    char err[128];
    fixture_init(&f, 2);
    cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), 0, "defaults are valid");
    cr_assert_eq(f.p.slack, 16);
    cr_assert_eq(f.p.layer_budget[1], -1);
    cr_assert_eq(f.p.select_src[1], 1);

    f.p.budget = 10, f.p.sinks = 4, f.p.recent = 7;
    cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "exceed budget") != NULL, "%s", err);
    f.p.layer_budget[0] = 20;
    f.p.layer_budget[1] = 20;
    cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), 0, "%s", err);

    sinkd_plan_reset(&f.p, &f.g);
    f.p.select = SINKD_SELECT_PAGES;
    f.p.select_pages = 1;
    cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "PAGE_BOUNDS") != NULL, "%s", err);
    f.p.select = SINKD_SELECT_TOKENS;
    f.p.dense_layers = 1;
    f.p.select_src[1] = 0; /* layer 0 is dense: nothing to reuse */
    cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "does not select") != NULL, "%s", err);

    sinkd_plan_reset(&f.p, &f.g);
    f.p.stat = SINKD_STAT_DECAY;
    f.p.decay = 0.0f;
    cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), -EINVAL);
    sinkd_plan_reset(&f.p, &f.g);
    f.p.pool_kernel = 4;
    cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), -EINVAL);
    sinkd_plan_reset(&f.p, &f.g);
    f.p.head_kind[3] = SINKD_HEAD_STREAMING;
    cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "stream_sinks") != NULL, "%s", err);
    sinkd_plan_reset(&f.p, &f.g);
    f.p.stat = 99;
    cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), -EINVAL);
    sinkd_plan_free(&f.p);
    cr_assert_null(f.p.layer_budget);
}

/* Every count has an upper bound (SINKD_POLICY_MAX_TOKENS), so that the
 * host's and the engine's int32 sums and products of two counts cannot
 * wrap; a plan at the bounds is valid and its derived values are what
 * they say. */
Test(plan, counts_are_bounded)
{
    fixture f;
    char err[160];
    const int32_t max = SINKD_POLICY_MAX_TOKENS;
    cr_assert_eq(max, 1 << 24);
    fixture_init(&f, 2);
    static const struct {
        size_t off;
        const char *name;
    } fields[] = {
        {offsetof(sinkd_policy_plan, budget), "budget 16777217 exceeds 16777216"},
        {offsetof(sinkd_policy_plan, sinks), "sinks 16777217 exceeds 16777216"},
        {offsetof(sinkd_policy_plan, recent), "recent 16777217 exceeds 16777216"},
        {offsetof(sinkd_policy_plan, slack), "slack 16777217 exceeds 16777216"},
        {offsetof(sinkd_policy_plan, select_tokens), "select_tokens 16777217 exceeds 16777216"},
        {offsetof(sinkd_policy_plan, obs_window), "obs_window 16777217 exceeds 16777216"},
        {offsetof(sinkd_policy_plan, history), "history 16777217 exceeds 16777216"},
        {offsetof(sinkd_policy_plan, stream_sinks), "stream_sinks 16777217 + stream_recent 0"},
        {offsetof(sinkd_policy_plan, stream_recent), "stream_sinks 0 + stream_recent 16777217"},
    };
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        sinkd_plan_reset(&f.p, &f.g);
        int32_t *v = (int32_t *)((char *)&f.p + fields[i].off);
        *v = max;
        cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), 0, "%s at the bound: %s",
                     fields[i].name, err);
        *v = max + 1;
        cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), -EINVAL, "%s",
                     fields[i].name);
        cr_assert(strstr(err, fields[i].name) != NULL, "'%s' lacks '%s'", err, fields[i].name);
        *v = INT32_MAX;
        cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), -EINVAL, "%s",
                     fields[i].name);
    }

    /* the reviewer's plans: a streaming lane of INT32_MAX + 1 tokens, and
     * 3 << 26 selected pages of 16 tokens */
    sinkd_plan_reset(&f.p, &f.g);
    f.p.head_kind[0] = SINKD_HEAD_STREAMING;
    f.p.evict_at = SINKD_EVICT_BUDGET;
    f.p.stream_sinks = INT32_MAX, f.p.stream_recent = 1;
    cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "stream_sinks 2147483647 + stream_recent 1 exceed 16777216") != NULL,
              "%s", err);
    f.p.stream_sinks = max - 1;
    cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(sinkd_plan_lane_budget(&f.p, &f.g, 0, 0), max);
    cr_assert_eq(sinkd_plan_evict_threshold(&f.p, &f.g, 0, 0), max + 16);

    sinkd_plan_reset(&f.p, &f.g);
    f.p.select = SINKD_SELECT_TOKENS;
    f.p.select_pages = 3 << 26;
    cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "select_pages 201326592 exceeds 1048576") != NULL, "%s", err);
    f.p.select_pages = max / 16;
    cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), 0, "%s", err);
    f.p.select_pages = max / 16 + 1;
    cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), -EINVAL);

    /* per-layer budgets, and the largest budget with the largest slack */
    sinkd_plan_reset(&f.p, &f.g);
    f.p.layer_budget[1] = max + 1;
    cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "layer 1: layer_budget 16777217 exceeds 16777216") != NULL, "%s", err);
    f.p.layer_budget[1] = max;
    f.p.evict_at = SINKD_EVICT_BUDGET;
    f.p.slack = max;
    cr_assert_eq(sinkd_plan_validate(&f.p, &f.g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(sinkd_plan_evict_threshold(&f.p, &f.g, 1, 1), 2 * max);

    /* a page larger than any plan may count is no geometry */
    sinkd_policy_geometry big = f.g;
    big.page_tokens = max + 1;
    cr_assert_eq(sinkd_plan_validate(&f.p, &big, err, sizeof err), -EINVAL);
    sinkd_plan_free(&f.p);
}
