/*
 * Every built-in policy through the engine (in-process, CPU, tiny model):
 * generation runs, lanes respect the plan's budget (per head kind for duo),
 * pages return when the session closes; Quest and TidalDecode selection
 * change attention and equal dense attention exactly when k covers every
 * page; a policy swap in the middle of a generation; the policy_fallback
 * event from a misbehaving plugin's evict and select callbacks; a plugin
 * reloaded while a session still runs the old version.
 */
#include <criterion/criterion.h>

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "eng_harness.h"
#include "golden.h"

#define GOLDEN_PATH SINKD_TEST_DATA "/golden-tiny.txt"
#define SLACK 16 /* page_tokens: the default slack */

static sinkd_engine *eng;
static golden gold;
static int32_t prompt[256];
static size_t n_prompt;

static void setup_dirs(const char *const *dirs, size_t n)
{
    eng = eng_h_open(dirs, n);
    cr_assert(golden_load(GOLDEN_PATH, &gold) == 0);
    /* every golden prompt back to back: a prompt longer than the budgets */
    n_prompt = 0;
    for (size_t c = 0; c < gold.n_cases; c++)
        for (size_t i = (c > 0); i < gold.cases[c].n_prompt && n_prompt < 256; i++)
            prompt[n_prompt++] = gold.cases[c].prompt_ids[i];
}

static void setup(void)
{
    const char *dirs[] = {SINKD_PLUGIN_BUILD_DIR, BROKEN_DIR};
    setup_dirs(dirs, 2);
}

static void teardown(void)
{
    eng_h_close(eng);
    golden_free(&gold);
}

TestSuite(policies, .init = setup, .fini = teardown, .timeout = 120);

static eng_h_frame *stats(uint64_t s)
{
    return eng_h_reply_ok(eng_h_submit(eng_h_job(SINKD_JOB_SESSION_STATS, s)));
}

static void close_session(uint64_t s)
{
    eng_h_frame_free(eng_h_reply_ok(eng_h_submit(eng_h_job(SINKD_JOB_SESSION_CLOSE, s))));
}

/* Prompt + @n tokens under @policy; returns the session. */
static uint64_t run(const char *policy, const char *params, int32_t n, int32_t *got)
{
    uint64_t s = eng_h_open_session(policy, params);
    char reason[16];

    eng_h_append(s, prompt, n_prompt);
    cr_assert_eq(eng_h_tokens(eng_h_generate(s, n), got, 512, reason, NULL, 0), (size_t)n,
                 "%s", policy);
    cr_assert_str_eq(reason, "length");
    return s;
}

typedef struct pcase {
    const char *name, *params;
    int32_t lo, hi;       /* bounds of every lane; 0 = the full length */
    int32_t stream_hi;    /* duo: bound of the shortest lane of a layer */
} pcase;

Test(policies, every_builtin_generates_within_its_budget)
{
    enum { N = 120 };
    int32_t got[512];
    const int32_t B = 32, FULL = (int32_t)n_prompt + N - 1, SNAP = 32 + N - 1;
    const pcase cases[] = {
        {"window", "window=32", B, B + SLACK, 0},
        {"streaming", "sinks=4 window=28", B, B + SLACK, 0},
        {"h2o", "budget=32", B, B + SLACK, 0},
        {"tova", "budget=32", B, B + SLACK, 0},
        {"a2sf", "budget=32 lambda=0.9", B, B + SLACK, 0},
        {"scissorhands", "budget=32 recent=8 history=16 quantile=0.9", B, B + SLACK, 0},
        {"keyformer", "budget=32 temperature=1.5", B, B + SLACK, 0},
        {"snapkv", "budget=32 window=8", SNAP, SNAP, 0},
        /* layer 0's share (40) + slack under the prompt: every layer is cut */
        {"pyramidkv", "budget=24", 1, FULL - 1, 0},
        {"quest", "budget=32 dense=1", FULL, FULL, 0},
        {"tidal", "budget=32 dense=1", FULL, FULL, 0},
        {"duo", "heads=1,0;1,0;1,0;1,0 sinks=4 recent=28", B, FULL, B + SLACK},
    };
    sinkd_engine_counters *ctr = sinkd_engine_counters_get(eng);
    uint64_t before = atomic_load(&ctr->kv_used_bytes);
    uint64_t s_full = run("full", NULL, N, got);
    eng_h_frame *ff = stats(s_full);
    uint64_t full_pages = eng_h_u64(ff, "pages");
    cr_assert_eq(eng_h_u64(ff, "tokens"), (uint64_t)FULL);
    eng_h_frame_free(ff);

    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const pcase *pc = &cases[c];
        uint64_t s = run(pc->name, pc->params, N, got);
        eng_h_frame *f = stats(s);
        char pol[32];
        eng_h_str(f, "policy", pol, sizeof pol);
        cr_assert_str_eq(pol, pc->name);
        for (uint32_t l = 0; l < 4; l++) {
            uint64_t mn, mx;
            eng_h_layer_lens(f, l, &mn, &mx);
            if (pc->stream_hi) { /* kv head 1 streams, head 0 keeps everything */
                cr_assert(mn >= (uint64_t)pc->lo && mn <= (uint64_t)pc->stream_hi,
                          "%s layer %u: streaming lane %llu", pc->name, l, (unsigned long long)mn);
                cr_assert_eq(mx, (uint64_t)FULL, "%s layer %u: full lane", pc->name, l);
                continue;
            }
            cr_assert(mn >= (uint64_t)pc->lo && mx <= (uint64_t)pc->hi,
                      "%s layer %u: lanes %llu..%llu outside %d..%d", pc->name, l,
                      (unsigned long long)mn, (unsigned long long)mx, pc->lo, pc->hi);
        }
        if (pc->hi < FULL)
            cr_assert(eng_h_u64(f, "pages") < full_pages && eng_h_u64(f, "evicted_tokens") > 0,
                      "%s holds fewer pages than full", pc->name);
        eng_h_frame_free(f);
        close_session(s);
    }
    close_session(s_full);
    cr_assert_eq(atomic_load(&ctr->kv_used_bytes), before, "every page returned");
}

static size_t n_vocab(uint64_t s)
{
    (void)s;
    return (size_t)sinkd_engine_model_at(eng, 0)->hp->n_vocab;
}

/* Logits of @policy after the prompt and @n tokens, with the tokens. */
static void logits_after(const char *policy, const char *params, int32_t n, float *lg,
                         int32_t *got)
{
    uint64_t s = run(policy, params, n, got);
    eng_h_logits(s, lg, n_vocab(s));
    close_session(s);
}

static void selection_case(const char *policy, const char *sparse, const char *covering)
{
    enum { N = 40 };
    size_t nv = n_vocab(0);
    float *full = malloc(nv * sizeof *full), *lg = malloc(nv * sizeof *lg);
    int32_t gf[512], gs[512];
    double diff = 0;

    logits_after("full", NULL, N, full, gf);
    /* k covers every page: the same computation as dense attention */
    logits_after(policy, covering, N, lg, gs);
    cr_assert_arr_eq(gs, gf, N * sizeof *gs, "%s %s: tokens differ from full", policy, covering);
    cr_assert_arr_eq(lg, full, nv * sizeof *lg, "%s %s: logits differ from full", policy,
                     covering);
    /* a small k attends to fewer keys: the output moves */
    logits_after(policy, sparse, N, lg, gs);
    for (size_t i = 0; i < nv; i++)
        diff = fmax(diff, fabs((double)lg[i] - full[i]));
    cr_assert(diff > 1e-3, "%s %s: logits equal full's (max diff %g)", policy, sparse, diff);
    free(full);
    free(lg);
}

Test(policies, quest_selection)
{
    selection_case("quest", "budget=16 dense=1", "budget=100000 dense=1");
}

Test(policies, tidal_selection)
{
    selection_case("tidal", "budget=8 dense=1", "budget=100000 dense=1");
}

/* Swap @s to @policy while generate @id runs; the generation finishes. */
static void swap(uint64_t s, const char *policy, const char *params)
{
    sinkd_job *j = eng_h_job(SINKD_JOB_SESSION_POLICY, s);
    j->policy = strdup(policy);
    j->params = params ? strdup(params) : NULL;
    eng_h_frame *f = eng_h_reply_ok(eng_h_submit(j));
    char pol[32];
    eng_h_str(f, "policy", pol, sizeof pol);
    cr_assert_str_eq(pol, policy);
    eng_h_frame_free(f);
}

/* session.policy on @s: the reply's "reconfigured" (code "ok"), or -1 with
 * the error's code in @code. */
static int policy_call(uint64_t s, const char *policy, const char *params, char code[32])
{
    sinkd_job *j = eng_h_job(SINKD_JOB_SESSION_POLICY, s);
    j->policy = strdup(policy);
    j->params = params ? strdup(params) : NULL;
    eng_h_frame *f = eng_h_next(eng_h_submit(j));
    const msgpack_object *err = sinkd_map_get(&f->msg.root, "error"), *r;
    const char *c = "";
    size_t n = 0;

    cr_assert(!eng_h_is_event(f), "session.policy sent an event");
    if (err) {
        sinkd_map_str(err, "code", &c, &n);
        snprintf(code, 32, "%.*s", (int)n, c);
        eng_h_frame_free(f);
        return -1;
    }
    snprintf(code, 32, "ok");
    r = sinkd_map_get(&f->msg.root, "reconfigured");
    cr_assert(r && r->type == MSGPACK_OBJECT_BOOLEAN, "no reconfigured in the reply");
    int out = r->via.boolean;
    eng_h_frame_free(f);
    return out;
}

/* Every lane of every layer of @s holds between @lo and @hi tokens. */
static void lanes_within(uint64_t s, uint64_t lo, uint64_t hi)
{
    eng_h_frame *f = stats(s);
    for (uint32_t l = 0; l < 4; l++) {
        uint64_t mn, mx;
        eng_h_layer_lens(f, l, &mn, &mx);
        cr_assert(mn >= lo && mx <= hi, "layer %u: %llu..%llu, not in %llu..%llu", l,
                  (unsigned long long)mn, (unsigned long long)mx, (unsigned long long)lo,
                  (unsigned long long)hi);
    }
    eng_h_frame_free(f);
}

/* Naming the policy a session runs, at a version that changes its
 * parameters live (window), reconfigures it in place and cuts the lanes to
 * the new budget; parameters it refuses leave it as it was; another policy
 * is a swap. */
Test(policies, reconfigure_in_place)
{
    char code[32];
    uint64_t s = eng_h_open_session("window", "window=40");

    cr_assert(n_prompt > 40 + SLACK, "the prompt (%zu) must outgrow the first window", n_prompt);
    eng_h_append(s, prompt, n_prompt);
    lanes_within(s, 40, 40 + SLACK);
    cr_assert_eq(policy_call(s, "window", "window=16", code), 1, "%s", code);
    lanes_within(s, 16, 16 + SLACK);
    cr_assert_eq(policy_call(s, "window", "window=0", code), -1);
    cr_assert_str_eq(code, "invalid_argument");
    cr_assert_eq(policy_call(s, "window", "window=16 nosuchkey=1", code), -1);
    cr_assert_str_eq(code, "invalid_argument");
    /* still window=16 and still the same instance: it evicts to 16 again */
    eng_h_append(s, prompt, 48);
    lanes_within(s, 16, 16 + SLACK);
    cr_assert_eq(policy_call(s, "window", "window=24", code), 1, "%s", code);
    cr_assert_eq(policy_call(s, "h2o", "budget=20", code), 0, "%s", code);
    eng_h_append(s, prompt, 48);
    lanes_within(s, 20, 20 + SLACK);
    close_session(s);
}

Test(policies, swap_during_generation)
{
    static const char *const chain[][2] = {
        {"h2o", "budget=48"}, {"scissorhands", "budget=40 history=8"},
        {"keyformer", "budget=40"}, {"window", "window=32"},
    };
    uint64_t s = eng_h_open_session("full", NULL);
    eng_h_append(s, prompt, n_prompt);
    uint64_t id = eng_h_generate(s, 200);
    size_t n = 0;
    for (size_t c = 0; c < 4; c++) {
        /* a few tokens under each policy, then the next one */
        for (int k = 0; k < 10; k++) {
            eng_h_frame *f = eng_h_next(id);
            cr_assert(eng_h_is_event(f), "the generation runs on");
            eng_h_frame_free(f);
            n++;
        }
        swap(s, chain[c][0], chain[c][1]);
    }
    eng_h_frame *f;
    while (eng_h_is_event(f = eng_h_next(id))) {
        eng_h_frame_free(f);
        n++;
    }
    cr_assert_eq(eng_h_u64(f, "n_tokens"), 200);
    eng_h_frame_free(f);
    cr_assert_eq(n, 200);
    f = stats(s);
    for (uint32_t l = 0; l < 4; l++) {
        uint64_t mn, mx;
        eng_h_layer_lens(f, l, &mn, &mx);
        cr_assert(mn >= 32 && mx <= 32 + SLACK, "layer %u: %llu..%llu", l,
                  (unsigned long long)mn, (unsigned long long)mx);
    }
    eng_h_frame_free(f);
    close_session(s);
}

/* A faulty plugin's session: the generation completes, the client got one
 * policy_fallback event, and the session runs window. */
static void fallback_case(const char *params)
{
    uint64_t s = eng_h_open_session("broken", params);
    int32_t got[512];
    char reason[16], events[256] = "", pol[32], why[160];

    /* a prompt under the budget: the first eviction comes during generate */
    eng_h_append(s, gold.cases[0].prompt_ids, gold.cases[0].n_prompt);
    cr_assert_eq(eng_h_tokens(eng_h_generate(s, 60), got, 512, reason, events, sizeof events),
                 60);
    cr_assert_str_eq(events, "policy_fallback ", "%s: events '%s'", params, events);
    eng_h_frame *f = stats(s);
    eng_h_str(f, "policy", pol, sizeof pol);
    eng_h_str(f, "fallback", why, sizeof why);
    cr_assert_str_eq(pol, "window");
    cr_assert(why[0], "a reason");
    eng_h_frame_free(f);
    close_session(s);
}

Test(policies, fallback_on_bad_keep_list)
{
    fallback_case("fault=oob");
}

Test(policies, fallback_on_bad_page_list)
{
    fallback_case("fault=pages");
}

Test(policies, select_callback_runs)
{
    /* probe's select attends to each lane's last page only: attention
     * differs from full's, and the session never falls back */
    size_t nv = n_vocab(0);
    float *full = malloc(nv * sizeof *full), *lg = malloc(nv * sizeof *lg);
    int32_t gf[512], gs[512];
    double diff = 0;

    logits_after("full", NULL, 20, full, gf);
    uint64_t s = run("probe", NULL, 20, gs);
    eng_h_logits(s, lg, nv);
    eng_h_frame *f = stats(s);
    cr_assert(!sinkd_map_get(&f->msg.root, "fallback"));
    eng_h_frame_free(f);
    close_session(s);
    for (size_t i = 0; i < nv; i++)
        diff = fmax(diff, fabs((double)lg[i] - full[i]));
    cr_assert(diff > 1e-3, "max diff %g", diff);
    free(full);
    free(lg);
}

/* ---- reload ------------------------------------------------------------------ */

static void copy_plugin(const char *from, const char *dir)
{
    char tmp[512], dst[512], buf[65536];
    snprintf(tmp, sizeof tmp, "%s/.probe.tmp", dir);
    snprintf(dst, sizeof dst, "%s/probe.so", dir);
    int in = open(from, O_RDONLY), out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ssize_t n;
    cr_assert(in >= 0 && out >= 0, "%s", from);
    while ((n = read(in, buf, sizeof buf)) > 0)
        cr_assert(write(out, buf, (size_t)n) == n);
    close(in);
    close(out);
    chmod(tmp, 0644);
    cr_assert(rename(tmp, dst) == 0); /* a new inode, as an install does */
}

static uint64_t policy_generation(const char *name, uint64_t *instances)
{
    eng_h_frame *f = eng_h_reply_ok(eng_h_submit(eng_h_job(SINKD_JOB_POLICY_LIST, 0)));
    const msgpack_object *all = sinkd_map_get(&f->msg.root, "policies");
    uint64_t gen = 0;
    cr_assert(all && all->type == MSGPACK_OBJECT_ARRAY);
    for (uint32_t i = 0; i < all->via.array.size; i++) {
        const char *nm;
        size_t nl;
        cr_assert(sinkd_map_str(&all->via.array.ptr[i], "name", &nm, &nl) == 0);
        if (nl == strlen(name) && !memcmp(nm, name, nl)) {
            cr_assert(sinkd_map_u64(&all->via.array.ptr[i], "generation", &gen) == 0);
            cr_assert(sinkd_map_u64(&all->via.array.ptr[i], "instances", instances) == 0);
        }
    }
    eng_h_frame_free(f);
    return gen;
}

static char plugdir[] = "/tmp/sinkd-reload-XXXXXX";

static void setup_reload(void)
{
    cr_assert(mkdtemp(plugdir));
    copy_plugin(BROKEN_DIR "/probe1.so", plugdir);
    const char *dirs[] = {plugdir};
    setup_dirs(dirs, 1);
}

static void teardown_reload(void)
{
    char p[512];
    teardown();
    snprintf(p, sizeof p, "%s/probe.so", plugdir);
    unlink(p);
    rmdir(plugdir);
}

TestSuite(reload, .init = setup_reload, .fini = teardown_reload, .timeout = 120);

Test(reload, while_old_version_runs)
{
    int32_t got[512];
    char reason[16], code[32];
    uint64_t inst;

    uint64_t old = run("probe", NULL, 10, got);
    uint64_t g1 = policy_generation("probe", &inst);
    cr_assert_eq(inst, 1);
    copy_plugin(BROKEN_DIR "/probe2.so", plugdir);
    sinkd_job *j = eng_h_job(SINKD_JOB_POLICY_RELOAD, 0);
    j->policy = strdup("probe");
    eng_h_frame *f = eng_h_reply_ok(eng_h_submit(j));
    cr_assert_eq(eng_h_u64(f, "generation"), g1 + 1);
    eng_h_frame_free(f);
    cr_assert_eq(policy_generation("probe", &inst), g1 + 1);
    cr_assert_eq(inst, 0, "the old session keeps the old version");
    /* the old instance still runs, and a new session gets the new one */
    cr_assert_eq(eng_h_tokens(eng_h_generate(old, 10), got, 512, reason, NULL, 0), 10);
    uint64_t neu = run("probe", NULL, 10, got);
    policy_generation("probe", &inst);
    cr_assert_eq(inst, 1);
    /* unloaded: no new sessions, the running ones go on */
    j = eng_h_job(SINKD_JOB_POLICY_UNLOAD, 0);
    j->policy = strdup("probe");
    eng_h_frame_free(eng_h_reply_ok(eng_h_submit(j)));
    j = eng_h_job(SINKD_JOB_SESSION_OPEN, 0);
    j->policy = strdup("probe");
    eng_h_reply_code(eng_h_submit(j), code);
    cr_assert_str_eq(code, "not_found");
    cr_assert_eq(eng_h_tokens(eng_h_generate(neu, 5), got, 512, reason, NULL, 0), 5);
    cr_assert_eq(eng_h_tokens(eng_h_generate(old, 5), got, 512, reason, NULL, 0), 5);
    close_session(old);
    close_session(neu);
}
