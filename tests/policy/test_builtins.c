/*
 * The built-in policies, loaded from their .so files as the daemon loads
 * them: for each, the tokens kept (or pages selected) on synthetic lanes with
 * known scores equal the paper's rule computed independently (reference.c)
 * from the policy's parameters, not from its plan.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "reference.h"

#define NL 8
#define NKV 4
#define PT 16
#define MAXLEN 1024

static const sinkd_policy_geometry G = {
    .struct_size = sizeof G, .n_layers = NL, .n_q_heads = 8, .n_kv_heads = NKV,
    .head_dim = 16, .page_tokens = PT, .max_tokens = 8192,
};

static policy__lib *load(const char *name)
{
    char path[512], err[512];
    policy__lib *lib = NULL;
    snprintf(path, sizeof path, "%s/%s.so", SINKD_PLUGIN_BUILD_DIR, name);
    int rc = policy__lib_open(path, &lib, err, sizeof err);
    cr_assert_eq(rc, 0, "load %s: %d %s", name, rc, err);
    cr_assert_str_eq(lib->desc.name, name);
    return lib;
}

static sinkd_policy_inst *make(policy__lib *lib, const char *params)
{
    sinkd_policy_inst *inst = NULL;
    char err[512];
    int rc = policy__inst_create(lib, &G, params, &inst, err, sizeof err);
    cr_assert_eq(rc, 0, "create %s '%s': %d %s", lib->desc.name, params, rc, err);
    return inst;
}

/* A permutation of 1..len (integer scores: sums and maxima are exact in
 * float, so float and double rankings agree). */
static void perm_scores(float *s, int len, uint32_t seed)
{
    for (int i = 0; i < len; i++)
        s[i] = (float)(i + 1);
    for (int i = len - 1; i > 0; i--) {
        seed = seed * 1664525u + 1013904223u;
        int j = (int)((seed >> 8) % (uint32_t)(i + 1));
        float t = s[i];
        s[i] = s[j];
        s[j] = t;
    }
}

typedef struct layer_run {
    int32_t pos[MAXLEN];
    float score[NKV][MAXLEN];
    float page_score[NKV][MAXLEN / PT];
    int32_t out[NKV][MAXLEN];
    sinkd_policy_lane lanes[NKV];
} layer_run;

static layer_run *run_new(int layer, int len, uint32_t seed)
{
    layer_run *r = calloc(1, sizeof *r);
    int np = (len + PT - 1) / PT;
    for (int i = 0; i < len; i++)
        r->pos[i] = 1000 + 3 * i;
    for (int h = 0; h < NKV; h++) {
        perm_scores(r->score[h], len, seed + 7919u * (uint32_t)h);
        perm_scores(r->page_score[h], np, seed + 104729u * (uint32_t)h);
        r->lanes[h] = (sinkd_policy_lane){.layer = layer, .kv_head = h, .len = len,
                                          .n_pages = np, .pos = r->pos, .score = r->score[h],
                                          .page_score = r->page_score[h], .out = r->out[h]};
    }
    return r;
}

static void to_double(const float *f, int n, double *d)
{
    for (int i = 0; i < n; i++)
        d[i] = f[i];
}

/* The kept list of lane h equals mask[0..len). */
static void assert_list_is_mask(const sinkd_policy_lane *l, const uint8_t *mask, int n)
{
    int j = 0;
    for (int i = 0; i < n; i++) {
        if (!mask[i])
            continue;
        cr_assert_lt(j, l->n_out, "head %d: %d kept, the rule keeps more", l->kv_head, l->n_out);
        cr_assert_eq(l->out[j], i, "head %d: entry %d is %d, the rule keeps %d", l->kv_head, j,
                     l->out[j], i);
        j++;
    }
    cr_assert_eq(j, l->n_out, "head %d: %d kept, the rule keeps %d", l->kv_head, l->n_out, j);
}

/* Evict one layer and compare every head with ref_keep(sinks, recent, budget)
 * over the lane's own scores. */
static void check_topk_policy(const char *name, const char *params, int sinks, int recent,
                              int budget, uint8_t stat)
{
    policy__lib *lib = load(name);
    sinkd_policy_inst *inst = make(lib, params);
    cr_assert_eq(sinkd_policy_inst_plan(inst)->stat, stat);
    for (int layer = 0; layer < NL; layer += 3) {
        int len = budget + 57 + layer;
        layer_run *r = run_new(layer, len, 17u + (uint32_t)layer);
        cr_assert_eq(sinkd_policy_inst_evict(inst, r->lanes, NKV), 0);
        for (int h = 0; h < NKV; h++) {
            double s[MAXLEN];
            uint8_t mask[MAXLEN];
            to_double(r->score[h], len, s);
            ref_keep(len, s, sinks, recent, budget, mask);
            assert_list_is_mask(&r->lanes[h], mask, len);
        }
        free(r);
    }
    sinkd_policy_inst_destroy(inst);
    policy__lib_unref(lib);
}

Test(builtins, full_keeps_everything)
{
    policy__lib *lib = load("full");
    sinkd_policy_inst *inst = make(lib, NULL);
    cr_assert_eq(sinkd_policy_inst_plan(inst)->evict_at, SINKD_EVICT_NEVER);
    cr_assert_eq(sinkd_plan_evict_threshold(sinkd_policy_inst_plan(inst), &G, 0, 0), 0);
    layer_run *r = run_new(1, 700, 3);
    cr_assert_eq(sinkd_policy_inst_evict(inst, r->lanes, NKV), 0);
    cr_assert_eq(r->lanes[2].n_out, 700);
    free(r);
    sinkd_policy_inst_destroy(inst);
    policy__lib_unref(lib);
}

Test(builtins, window_keeps_the_last_w)
{
    check_topk_policy("window", "window=50", 0, 50, 50, SINKD_STAT_NONE);
}

Test(builtins, streaming_keeps_sinks_and_window)
{
    check_topk_policy("streaming", "sinks=4 window=60", 4, 60, 64, SINKD_STAT_NONE);
    policy__lib *lib = load("streaming");
    sinkd_policy_inst *inst = make(lib, "");
    const sinkd_policy_plan *p = sinkd_policy_inst_plan(inst);
    cr_assert_eq(p->rope_mode, SINKD_POLICY_ROPE_CACHE);
    cr_assert_eq(p->sinks, 4);
    cr_assert_eq(p->budget, 1024);
    sinkd_policy_inst_destroy(inst);
    policy__lib_unref(lib);
}

Test(builtins, h2o_heavy_hitters_plus_recent)
{
    check_topk_policy("h2o", "budget=100 recent=30", 0, 30, 100, SINKD_STAT_SUM);
    check_topk_policy("h2o", "budget=80", 0, 40, 80, SINKD_STAT_SUM); /* paper's even split */
}

Test(builtins, h2o_heads_keep_different_tokens)
{
    policy__lib *lib = load("h2o");
    sinkd_policy_inst *inst = make(lib, "budget=64");
    layer_run *r = run_new(2, 300, 99);
    cr_assert_eq(sinkd_policy_inst_evict(inst, r->lanes, NKV), 0);
    int differ = 0;
    for (int h = 1; h < NKV; h++) {
        cr_assert_eq(r->lanes[h].n_out, 64);
        differ += memcmp(r->out[0], r->out[h], 64 * sizeof(int32_t)) != 0;
    }
    cr_assert_eq(differ, NKV - 1, "every head ranks its own scores");
    free(r);
    sinkd_policy_inst_destroy(inst);
    policy__lib_unref(lib);
}

Test(builtins, tova_ranks_the_layer_average)
{
    policy__lib *lib = load("tova");
    sinkd_policy_inst *inst = make(lib, "budget=80");
    cr_assert_eq(sinkd_policy_inst_plan(inst)->stat, SINKD_STAT_LAST);
    int len = 211;
    layer_run *r = run_new(5, len, 5);
    cr_assert_eq(sinkd_policy_inst_evict(inst, r->lanes, NKV), 0);
    double avg[MAXLEN] = {0};
    uint8_t mask[MAXLEN];
    for (int i = 0; i < len; i++) {
        for (int h = 0; h < NKV; h++)
            avg[i] += r->score[h][i];
        avg[i] /= NKV;
    }
    ref_keep(len, avg, 0, 0, 80, mask);
    for (int h = 0; h < NKV; h++)
        assert_list_is_mask(&r->lanes[h], mask, len);
    free(r);
    sinkd_policy_inst_destroy(inst);
    policy__lib_unref(lib);
}

Test(builtins, a2sf_scissorhands_keyformer)
{
    check_topk_policy("a2sf", "budget=90 lambda=0.5", 0, 45, 90, SINKD_STAT_DECAY);
    check_topk_policy("scissorhands", "budget=120 recent=20", 0, 20, 120, SINKD_STAT_QUANTILE);
    check_topk_policy("keyformer", "budget=100", 0, 25, 100, SINKD_STAT_GUMBEL);

    policy__lib *lib = load("a2sf");
    sinkd_policy_inst *inst = make(lib, "lambda=0.25");
    cr_assert_float_eq(sinkd_policy_inst_plan(inst)->decay, 0.25f, 1e-7);
    sinkd_policy_inst_destroy(inst);
    policy__lib_unref(lib);
    lib = load("scissorhands");
    inst = make(lib, "");
    cr_assert_float_eq(sinkd_policy_inst_plan(inst)->quantile, 0.9f, 1e-7);
    sinkd_policy_inst_destroy(inst);
    policy__lib_unref(lib);
}

/* SnapKV's rule: pool the window votes over the prefix, keep its top
 * (budget - w) and the window. */
static void snap_ref(const float *score, int len, int w, int budget, int kernel, int use_max,
                     uint8_t *mask)
{
    double s[MAXLEN], pooled[MAXLEN];
    to_double(score, len, s);
    ref_pool(s, len - w, kernel, use_max, pooled);
    for (int i = len - w; i < len; i++)
        pooled[i] = 0;
    ref_keep(len, pooled, 0, w, budget, mask);
}

Test(builtins, snapkv_pools_the_observation_window)
{
    const char *params[] = {"budget=96 window=16 kernel=5", "budget=96 window=16 kernel=7 pool=max"};
    for (int v = 0; v < 2; v++) {
        policy__lib *lib = load("snapkv");
        sinkd_policy_inst *inst = make(lib, params[v]);
        const sinkd_policy_plan *p = sinkd_policy_inst_plan(inst);
        cr_assert_eq(p->evict_at, SINKD_EVICT_PREFILL);
        cr_assert_eq(p->obs_window, 16);
        int len = 333;
        layer_run *r = run_new(3, len, 41);
        cr_assert_eq(sinkd_policy_inst_evict(inst, r->lanes, NKV), 0);
        for (int h = 0; h < NKV; h++) {
            uint8_t mask[MAXLEN];
            snap_ref(r->score[h], len, 16, 96, v ? 7 : 5, v, mask);
            assert_list_is_mask(&r->lanes[h], mask, len);
        }
        free(r);
        sinkd_policy_inst_destroy(inst);
        policy__lib_unref(lib);
    }
}

Test(builtins, pyramidkv_budgets_shrink_with_depth)
{
    policy__lib *lib = load("pyramidkv");
    sinkd_policy_inst *inst = make(lib, "budget=200");
    const sinkd_policy_plan *p = sinkd_policy_inst_plan(inst);
    /* PyramidKV §3.2: C-w = 192, last layer (C-w)/beta = 9, first
     * 2*192-9 = 375, linear in between (rounded down), plus the window. */
    int sum = 0;
    for (int l = 0; l < NL; l++) {
        int expect = 9 + (int)floor((NL - 1 - l) * 366.0 / (NL - 1)) + 8;
        cr_assert_eq(sinkd_plan_lane_budget(p, &G, l, 1), expect, "layer %d", l);
        sum += expect - 8;
        int len = 400;
        layer_run *r = run_new(l, len, 71u + (uint32_t)l);
        cr_assert_eq(sinkd_policy_inst_evict(inst, r->lanes, NKV), 0);
        for (int h = 0; h < NKV; h++) {
            uint8_t mask[MAXLEN];
            snap_ref(r->score[h], len, 8, expect, 7, 1, mask);
            assert_list_is_mask(&r->lanes[h], mask, len);
        }
        free(r);
    }
    cr_assert_leq(sum, 192 * NL, "the pyramid never exceeds the uniform total");
    sinkd_policy_inst_destroy(inst);
    policy__lib_unref(lib);
}

Test(builtins, quest_selects_top_pages_after_two_dense_layers)
{
    policy__lib *lib = load("quest");
    sinkd_policy_inst *inst = make(lib, "budget=64");
    const sinkd_policy_plan *p = sinkd_policy_inst_plan(inst);
    cr_assert(p->flags & SINKD_PLAN_PAGE_BOUNDS);
    cr_assert_eq(p->evict_at, SINKD_EVICT_NEVER);
    cr_assert_eq(sinkd_plan_select_source(p, 0), -1);
    cr_assert_eq(sinkd_plan_select_source(p, 1), -1);
    for (int l = 2; l < NL; l++) {
        cr_assert_eq(sinkd_plan_select_source(p, l), l);
        int len = 500;
        layer_run *r = run_new(l, len, 3u * (uint32_t)l);
        cr_assert_eq(sinkd_policy_inst_select(inst, r->lanes, NKV), 0);
        for (int h = 0; h < NKV; h++) {
            double s[MAXLEN / PT];
            uint8_t mask[MAXLEN / PT];
            to_double(r->page_score[h], r->lanes[h].n_pages, s);
            ref_top_mask(r->lanes[h].n_pages, s, 64 / PT, mask);
            assert_list_is_mask(&r->lanes[h], mask, r->lanes[h].n_pages);
        }
        free(r);
    }
    sinkd_policy_inst_destroy(inst);
    policy__lib_unref(lib);
}

Test(builtins, tidal_selects_tokens_and_reuses_them)
{
    policy__lib *lib = load("tidal");
    sinkd_policy_inst *inst = make(lib, "budget=40");
    const sinkd_policy_plan *p = sinkd_policy_inst_plan(inst);
    /* TidalDecode §3.2: two dense layers, selection at layer 2, re-selection
     * at 13/32 of the depth (layer 3 of 8); the others reuse. */
    int expect_src[NL] = {-1, -1, 2, 3, 3, 3, 3, 3};
    for (int l = 0; l < NL; l++)
        cr_assert_eq(sinkd_plan_select_source(p, l), expect_src[l], "layer %d", l);
    int len = 450;
    layer_run *r = run_new(2, len, 11);
    cr_assert_eq(sinkd_policy_inst_select(inst, r->lanes, NKV), 0);
    for (int h = 0; h < NKV; h++) {
        double s[MAXLEN];
        uint8_t mask[MAXLEN / PT];
        to_double(r->score[h], len, s);
        ref_top_token_pages(len, s, 40, PT, mask);
        assert_list_is_mask(&r->lanes[h], mask, r->lanes[h].n_pages);
    }
    free(r);
    sinkd_policy_inst_destroy(inst);
    policy__lib_unref(lib);
}

/* alpha of head (l, h) in the test table */
static double duo_alpha(int l, int h)
{
    return (double)((l * 7 + h * 3) % 10) / 10.0;
}

/* Write the test table (duo_alpha) as DuoAttention's TSV to @fd, then
 * blank lines (which the parser skips) up to @pad_to bytes; closes fd.
 * Returns the file's size. */
static long duo_write_tsv(int fd, long pad_to)
{
    FILE *f = fdopen(fd, "w");
    cr_assert_not_null(f);
    for (int l = 0; l < NL; l++)
        for (int h = 0; h < NKV; h++)
            fprintf(f, "%.1f%s", duo_alpha(l, h), h + 1 < NKV ? "\t" : "\n");
    while (ftell(f) < pad_to)
        fputc('\n', f);
    long size = ftell(f);
    cr_assert_eq(fclose(f), 0);
    return size;
}

Test(builtins, duo_reads_the_tsv_and_cuts_streaming_heads)
{
    char path[] = "/tmp/sinkd-duo-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    duo_write_tsv(fd, 0);
    char params[256];
    snprintf(params, sizeof params, "pattern=%s sinks=4 recent=32", path);
    policy__lib *lib = load("duo");
    sinkd_policy_inst *inst = make(lib, params);
    for (int l = 0; l < NL; l++) {
        int len = 300;
        layer_run *r = run_new(l, len, 5);
        cr_assert_eq(sinkd_policy_inst_evict(inst, r->lanes, NKV), 0);
        for (int h = 0; h < NKV; h++) {
            uint8_t mask[MAXLEN];
            int full = duo_alpha(l, h) > 0.5;
            double zero[MAXLEN] = {0};
            ref_keep(len, zero, 4, 32, full ? 0 : 36, mask);
            assert_list_is_mask(&r->lanes[h], mask, len);
        }
        free(r);
    }
    sinkd_policy_inst_destroy(inst);

    /* sparsity: the 8 lowest alphas of 32 (ties to the lower index) stream */
    snprintf(params, sizeof params, "pattern=%s sparsity=0.25", path);
    inst = make(lib, params);
    double alpha[NL * NKV];
    uint8_t full[NL * NKV];
    for (int i = 0; i < NL * NKV; i++)
        alpha[i] = -duo_alpha(i / NKV, i % NKV);
    ref_top_mask(NL * NKV, alpha, 8, full); /* top of -alpha = lowest alpha */
    for (int i = 0; i < NL * NKV; i++)
        cr_assert_eq(sinkd_policy_inst_plan(inst)->head_kind[i],
                     full[i] ? SINKD_HEAD_STREAMING : SINKD_HEAD_FULL, "head %d", i);
    sinkd_policy_inst_destroy(inst);
    unlink(path);
    policy__lib_unref(lib);
}

static void expect_create_error(const char *name, const char *params, const char *needle)
{
    policy__lib *lib = load(name);
    sinkd_policy_inst *inst = NULL;
    char err[512] = "";
    int rc = policy__inst_create(lib, &G, params, &inst, err, sizeof err);
    cr_assert_eq(rc, -EINVAL, "%s '%s' -> %d", name, params, rc);
    cr_assert_null(inst);
    cr_assert(strstr(err, needle) != NULL, "'%s' does not mention '%s'", err, needle);
    policy__lib_unref(lib);
}

Test(builtins, bad_params_get_clear_errors)
{
    expect_create_error("h2o", "budget=abc", "budget: expected an integer in [1, 16777216]");
    expect_create_error("h2o", "budget=10 recent=20", "recent");
    expect_create_error("h2o", "budegt=10", "unknown parameter 'budegt'");
    expect_create_error("h2o", "budget=10 budget=11", "given twice");
    expect_create_error("h2o", "budget", "not key=value");
    expect_create_error("a2sf", "lambda=1.5", "lambda");
    expect_create_error("snapkv", "kernel=4", "invalid plan: pool_kernel 4 is not odd");
    expect_create_error("snapkv", "pool=median", "pool: expected one of avg, max, got 'median'");
    expect_create_error("duo", "", "exactly one of pattern=");
    expect_create_error("duo", "heads=1,0,1,0;0,1,0,1", "2 rows, the model 8 layers");
    expect_create_error("duo", "heads=1,0;0,1", "row 1: 2 values, expected 4");
    expect_create_error("duo", "pattern=/nonexistent/heads.tsv",
                        "duo: pattern: '/nonexistent/heads.tsv' is not a readable regular file "
                        "of at most 1048576 bytes");
    expect_create_error("duo", "heads=1,0,1,nan;0,1,0,1", "row 1: value 4 is not a finite number");
    expect_create_error("streaming", "slack=-1", "slack");
    expect_create_error("streaming", "rope=relative", "rope: expected absolute or cache");
}

/* pattern= names a file the daemon opens on its engine thread: what is not
 * a small regular file must fail create, at once. */

/* A private directory for the pattern tests; @dir receives its path. */
static void duo_tmpdir(char *dir, size_t n)
{
    snprintf(dir, n, "/tmp/sinkd-duo-dir-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

/* Create duo with pattern=@path: refused with the one answer every
 * unusable path gets (@refused: it tells nothing of what is there), or
 * success. */
static void duo_expect_pattern(const char *path, bool refused)
{
    char params[512], err[512] = "", expect[512];
    snprintf(params, sizeof params, "pattern=%s", path);
    policy__lib *lib = load("duo");
    sinkd_policy_inst *inst = NULL;
    int rc = policy__inst_create(lib, &G, params, &inst, err, sizeof err);
    if (!refused) {
        cr_assert_eq(rc, 0, "pattern=%s: %d %s", path, rc, err);
        cr_assert_not_null(inst);
        for (int i = 0; i < NL * NKV; i++)
            cr_assert_eq(sinkd_policy_inst_plan(inst)->head_kind[i],
                         duo_alpha(i / NKV, i % NKV) > 0.5 ? SINKD_HEAD_FULL
                                                          : SINKD_HEAD_STREAMING, "head %d", i);
        sinkd_policy_inst_destroy(inst);
    } else {
        snprintf(expect, sizeof expect,
                 "duo: pattern: '%s' is not a readable regular file of at most 1048576 bytes "
                 "holding a head table", path);
        cr_assert_eq(rc, -EINVAL, "pattern=%s -> %d (%s)", path, rc, err);
        cr_assert_null(inst);
        cr_assert_str_eq(err, expect);
    }
    policy__lib_unref(lib);
}

Test(builtins, duo_refuses_a_fifo_without_blocking)
{
    char dir[64], path[128];
    duo_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/heads.tsv", dir);
    cr_assert_eq(mkfifo(path, 0600), 0);
    /* No writer ever opens the FIFO: an open() without O_NONBLOCK would
     * wait forever. The alarm kills this test's process (a failure) long
     * before ctest's timeout if create blocks. */
    alarm(10);
    duo_expect_pattern(path, true);
    alarm(0);
    cr_assert_eq(unlink(path), 0);
    cr_assert_eq(rmdir(dir), 0);
}

Test(builtins, duo_refuses_a_directory)
{
    char dir[64];
    duo_tmpdir(dir, sizeof dir);
    duo_expect_pattern(dir, true);
    cr_assert_eq(rmdir(dir), 0);
}

/* A fresh directory @dir holding the table as @name (@path), padded with
 * blank lines to @pad_to bytes; returns its size. */
static long duo_tsv_in_tmpdir(char *dir, size_t dn, char *path, size_t pn, const char *name,
                              long pad_to)
{
    duo_tmpdir(dir, dn);
    snprintf(path, pn, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    cr_assert_geq(fd, 0);
    return duo_write_tsv(fd, pad_to);
}

Test(builtins, duo_takes_a_file_of_exactly_1_mib_and_refuses_one_byte_more)
{
    char dir[64], path[128];

    /* a valid table padded with blank lines to the cap: loads */
    cr_assert_eq(duo_tsv_in_tmpdir(dir, sizeof dir, path, sizeof path, "heads.tsv", 1 << 20),
                 1 << 20);
    duo_expect_pattern(path, false);

    /* one byte more: refused on its size, before anything is read */
    int fd = open(path, O_WRONLY | O_APPEND);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "\n", 1), 1);
    cr_assert_eq(close(fd), 0);
    duo_expect_pattern(path, true);

    /* far more (sparse): the same */
    cr_assert_eq(truncate(path, 1L << 30), 0);
    duo_expect_pattern(path, true);
    cr_assert_eq(unlink(path), 0);
    cr_assert_eq(rmdir(dir), 0);
}

Test(builtins, duo_loads_a_small_tsv)
{
    char dir[64], path[128];
    duo_tsv_in_tmpdir(dir, sizeof dir, path, sizeof path, "full_attention_heads.tsv", 0);
    duo_expect_pattern(path, false);
    cr_assert_eq(unlink(path), 0);
    cr_assert_eq(rmdir(dir), 0);
}

Test(builtins, host_keys_override_the_plan)
{
    policy__lib *lib = load("h2o");
    sinkd_policy_inst *inst = make(lib, "budget=100 slack=0 rope=cache");
    const sinkd_policy_plan *p = sinkd_policy_inst_plan(inst);
    cr_assert_eq(p->slack, 0);
    cr_assert_eq(p->rope_mode, SINKD_POLICY_ROPE_CACHE);
    cr_assert_eq(sinkd_plan_evict_threshold(p, &G, 0, 0), 100);
    sinkd_policy_inst_destroy(inst);
    inst = make(lib, "budget=100");
    cr_assert_eq(sinkd_plan_evict_threshold(sinkd_policy_inst_plan(inst), &G, 0, 0), 100 + PT);
    sinkd_policy_inst_destroy(inst);
    policy__lib_unref(lib);
}

/* What the host logged, for the tests that check a reason went there. */
static char logged[4096];

static void log_capture(int prio, const char *line)
{
    (void)prio;
    size_t n = strlen(logged);
    snprintf(logged + n, sizeof logged - n, "%s\n", line);
}

/* A file that is there and readable but holds no table gets the very
 * answer a missing one gets: the client cannot probe the daemon's files
 * (whether /etc/shadow exists, how /etc/passwd's first line looks). The
 * operator's log keeps the reason. */
Test(builtins, duo_gives_one_answer_for_every_unusable_pattern)
{
    char dir[64], text[128], rows[128], missing[128];
    duo_tmpdir(dir, sizeof dir);
    snprintf(text, sizeof text, "%s/passwd", dir);
    snprintf(rows, sizeof rows, "%s/one-row.tsv", dir);
    snprintf(missing, sizeof missing, "%s/missing.tsv", dir);
    FILE *f = fopen(text, "w");
    cr_assert_not_null(f);
    fputs("root:x:0:0:root:/root:/bin/bash\n", f);
    fclose(f);
    f = fopen(rows, "w");
    cr_assert_not_null(f);
    fputs("0.1\t0.9\t0.2\t0.8\n", f);
    fclose(f);

    logged[0] = '\0';
    sinkd_policy_set_log(log_capture);
    duo_expect_pattern(text, true);
    duo_expect_pattern(rows, true);
    duo_expect_pattern(missing, true);
    duo_expect_pattern(dir, true);
    sinkd_policy_set_log(NULL);
    cr_assert(strstr(logged, "head table row 1: expected 4 numbers") != NULL, "%s", logged);
    cr_assert(strstr(logged, "head table has 1 rows, the model 8 layers") != NULL, "%s", logged);
    cr_assert(strstr(logged, "missing.tsv' refused: not a regular file") != NULL, "%s", logged);

    /* an inline table is the client's own text: its errors stay precise */
    expect_create_error("duo", "heads=root:x:0:0", "head table row 1: expected 4 numbers");
    cr_assert_eq(unlink(text), 0);
    cr_assert_eq(unlink(rows), 0);
    cr_assert_eq(rmdir(dir), 0);
}

/* The host's slack= is read whole or refused: cut to the 63 characters
 * of a buffer, 63 zeros and "7garbage" read as slack=0. */
Test(builtins, host_keys_are_not_truncated)
{
    char params[256], zeros[128];
    memset(zeros, '0', sizeof zeros);
    snprintf(params, sizeof params, "budget=100 slack=%.63s7garbage", zeros);
    expect_create_error("h2o", params, "slack: expected an integer in [0, 1048576]");
    snprintf(params, sizeof params, "budget=100 slack=%.100s5", zeros);
    expect_create_error("h2o", params, "slack: expected an integer in [0, 1048576]");
    snprintf(params, sizeof params, "budget=100 rope=cache%.80s", zeros);
    expect_create_error("h2o", params, "rope: expected absolute or cache");

    /* the longest value that fits still counts */
    policy__lib *lib = load("h2o");
    snprintf(params, sizeof params, "budget=100 slack=%.62s7", zeros);
    sinkd_policy_inst *inst = make(lib, params);
    cr_assert_eq(sinkd_policy_inst_plan(inst)->slack, 7);
    sinkd_policy_inst_destroy(inst);
    policy__lib_unref(lib);
}
