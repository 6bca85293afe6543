/*
 * The engine in-process on the CPU backend with the tiny reference model:
 * greedy generation against the golden tokens of an independent float64
 * implementation, continuous batching against one-at-a-time, cancel, and
 * eviction under `window` and `streaming`.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "golden.h"
#include "proto.h"

#define MODEL_PATH SINKD_TEST_DATA "/sinkd-ref-tiny-f32.gguf"
#define GOLDEN_PATH SINKD_TEST_DATA "/golden-tiny.txt"

/* Frames the engine emitted, decoded, in order. */
typedef struct frame {
    struct frame *next;
    uint8_t *buf;
    sinkd_msg msg;
} frame;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    frame *head, *tail;
} col = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL };

static int collect(void *ud, uint64_t conn_id, uint8_t *buf, size_t len)
{
    frame *f = calloc(1, sizeof *f);

    (void)ud;
    (void)conn_id;
    cr_assert(f);
    cr_assert(sinkd_msg_decode(buf + 4, len - 4, &f->msg, NULL) == 0);
    f->buf = buf;
    pthread_mutex_lock(&col.mu);
    if (col.tail)
        col.tail->next = f;
    else
        col.head = f;
    col.tail = f;
    pthread_cond_broadcast(&col.cv);
    pthread_mutex_unlock(&col.mu);
    return 0;
}

static void frame_free(frame *f)
{
    sinkd_msg_free(&f->msg);
    free(f->buf);
    free(f);
}

/* Take the next frame for request @id (event or reply), waiting up to 60 s. */
static frame *next_for(uint64_t id)
{
    struct timespec dl;
    frame *got = NULL;

    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 60;
    pthread_mutex_lock(&col.mu);
    while (!got) {
        frame **pp = &col.head, *prev = NULL;
        for (; *pp; prev = *pp, pp = &(*pp)->next) {
            uint64_t fid;
            if (sinkd_map_u64(&(*pp)->msg.root, "id", &fid) == 0 && fid == id) {
                got = *pp;
                *pp = got->next;
                if (col.tail == got)
                    col.tail = prev;
                break;
            }
        }
        if (!got && pthread_cond_timedwait(&col.cv, &col.mu, &dl) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&col.mu);
    cr_assert(got, "no answer for request %llu", (unsigned long long)id);
    return got;
}

static bool is_event(const frame *f)
{
    return sinkd_map_get(&f->msg.root, "ev") != NULL;
}

/* Wait for the reply of @id, skipping events; assert it is ok. */
static frame *reply_ok(uint64_t id)
{
    frame *f;

    while (is_event(f = next_for(id)))
        frame_free(f);
    const msgpack_object *err = sinkd_map_get(&f->msg.root, "error");
    if (err) {
        const char *m = "";
        size_t n = 0;
        sinkd_map_str(err, "message", &m, &n);
        cr_assert_fail("request %llu failed: %.*s", (unsigned long long)id, (int)n, m);
    }
    return f;
}

static uint64_t u64(const frame *f, const char *key)
{
    uint64_t v = 0;

    cr_assert(sinkd_map_u64(&f->msg.root, key, &v) == 0, "field %s", key);
    return v;
}

static sinkd_engine *eng;
static golden gold;
static uint64_t next_id = 1;

static void setup(void)
{
    const char *names[] = { "tiny" }, *paths[] = { MODEL_PATH };
    const char *dirs[] = { SINKD_PLUGIN_BUILD_DIR };
    sinkd_engine_config c = { 0 };
    char err[512] = "";

    c.backend = "cpu";
    c.threads = 1;
    c.kv = (sinkd_kv_config)SINKD_KV_CONFIG_INIT;
    c.kv.pool_bytes = 32u << 20;
    c.kv.dtype = SINKD_F32;
    c.prefill_chunk = 8;
    c.max_batch = 4;
    c.model_names = names;
    c.model_paths = paths;
    c.n_models = 1;
    c.plugin_dirs = dirs;
    c.n_plugin_dirs = 1;
    cr_assert(sinkd_engine_open(&c, &eng, err, sizeof err) == 0, "%s", err);
    cr_assert(sinkd_engine_start(eng, collect, NULL) == 0);
    cr_assert(golden_load(GOLDEN_PATH, &gold) == 0);
}

static void teardown(void)
{
    sinkd_engine_close(eng);
    golden_free(&gold);
    while (col.head) {
        frame *f = col.head;
        col.head = f->next;
        frame_free(f);
    }
    col.tail = NULL;
}

static sinkd_job *job(sinkd_job_kind kind, uint64_t session)
{
    sinkd_job *j = sinkd_job_new(kind, 1, next_id++, 1000, false);

    cr_assert(j);
    j->session = session;
    return j;
}

static uint64_t submit(sinkd_job *j)
{
    uint64_t id = j->id;

    sinkd_engine_submit(eng, j);
    return id;
}

static uint64_t open_session(const char *policy, const char *params)
{
    sinkd_job *j = job(SINKD_JOB_SESSION_OPEN, 0);
    frame *f;
    uint64_t s;

    j->policy = policy ? strdup(policy) : NULL;
    j->params = params ? strdup(params) : NULL;
    f = reply_ok(submit(j));
    s = u64(f, "session");
    frame_free(f);
    return s;
}

static void append_ids(uint64_t s, const int32_t *ids, size_t n)
{
    sinkd_job *j = job(SINKD_JOB_SESSION_APPEND, s);

    j->ids = malloc(n * sizeof *ids);
    memcpy(j->ids, ids, n * sizeof *ids);
    j->n_ids = n;
    j->bos_set = true;    /* the golden prompt ids carry their BOS already */
    frame_free(reply_ok(submit(j)));
}

static uint64_t start_generate(uint64_t s, int32_t max_tokens)
{
    sinkd_job *j = job(SINKD_JOB_SESSION_GENERATE, s);

    j->gen.max_tokens = max_tokens;
    j->gen.sp = (sinkd_sample_params)SINKD_SAMPLE_PARAMS_INIT;
    j->gen.stream = true;
    j->gen.ignore_eos = true;
    return submit(j);
}

/* Collect the token events of generate @id into @out (room for @cap); the
 * reply's reason is copied to @reason. Returns the number of tokens. */
static size_t collect_tokens(uint64_t id, int32_t *out, size_t cap, char reason[16])
{
    size_t n = 0;
    frame *f;

    while (is_event(f = next_for(id))) {
        int64_t t;
        cr_assert(sinkd_map_i64(&f->msg.root, "token", &t) == 0);
        cr_assert(n < cap);
        out[n++] = (int32_t)t;
        frame_free(f);
    }
    cr_assert(!sinkd_map_get(&f->msg.root, "error"), "generate failed");
    const char *r;
    size_t rl;
    cr_assert(sinkd_map_str(&f->msg.root, "reason", &r, &rl) == 0);
    snprintf(reason, 16, "%.*s", (int)rl, r);
    cr_assert_eq(u64(f, "n_tokens"), n);
    frame_free(f);
    return n;
}

TestSuite(engine, .init = setup, .fini = teardown, .timeout = 60);

Test(engine, greedy_matches_golden)
{
    for (size_t c = 0; c < gold.n_cases; c++) {
        const golden_case *g = &gold.cases[c];
        int32_t got[64];
        char reason[16];
        uint64_t s = open_session(NULL, NULL);

        append_ids(s, g->prompt_ids, g->n_prompt);
        size_t n = collect_tokens(start_generate(s, (int32_t)g->n_greedy), got, 64, reason);
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
        s[c] = open_session(NULL, NULL);
        append_ids(s[c], gold.cases[c].prompt_ids, gold.cases[c].n_prompt);
    }
    /* All three generate at once: each step advances every one of them. */
    for (size_t c = 0; c < n; c++)
        id[c] = start_generate(s[c], (int32_t)gold.cases[c].n_greedy);
    for (size_t c = 0; c < n; c++) {
        size_t k = collect_tokens(id[c], got[c], 64, reason);
        cr_assert_eq(k, gold.cases[c].n_greedy);
        cr_assert_arr_eq(got[c], gold.cases[c].greedy_ids, k * sizeof(int32_t),
                         "case %zu differs when batched", c);
    }
}

Test(engine, cancel_ends_generation)
{
    uint64_t s = open_session(NULL, NULL), id;
    frame *f;
    const char *r;
    size_t rl;

    append_ids(s, gold.cases[0].prompt_ids, gold.cases[0].n_prompt);
    id = start_generate(s, 1 << 20);
    f = next_for(id);
    cr_assert(is_event(f), "a token comes first");
    frame_free(f);
    frame_free(reply_ok(submit(job(SINKD_JOB_SESSION_CANCEL, s))));
    while (is_event(f = next_for(id)))
        frame_free(f);
    cr_assert(sinkd_map_str(&f->msg.root, "reason", &r, &rl) == 0);
    cr_assert(rl == 9 && !memcmp(r, "cancelled", 9));
    cr_assert(u64(f, "n_tokens") < 1000);
    frame_free(f);
    /* The session is idle again and keeps working. */
    id = start_generate(s, 3);
    int32_t got[8];
    char reason[16];
    cr_assert_eq(collect_tokens(id, got, 8, reason), 3);
}

/* Generate @n tokens after a golden prompt under @policy and return the
 * session's stats frame. */
static frame *run_policy(const char *policy, const char *params, int32_t n)
{
    uint64_t s = open_session(policy, params);
    int32_t got[512];
    char reason[16];

    append_ids(s, gold.cases[2].prompt_ids, gold.cases[2].n_prompt);
    cr_assert_eq(collect_tokens(start_generate(s, n), got, 512, reason), (size_t)n);
    return reply_ok(submit(job(SINKD_JOB_SESSION_STATS, s)));
}

/* Every lane of every layer holds between @lo and @hi tokens. */
static void assert_lanes(const frame *f, uint64_t lo, uint64_t hi)
{
    const msgpack_object *layers = sinkd_map_get(&f->msg.root, "layers");

    cr_assert(layers && layers->type == MSGPACK_OBJECT_ARRAY && layers->via.array.size > 0);
    for (uint32_t l = 0; l < layers->via.array.size; l++) {
        uint64_t mn, mx;
        cr_assert(sinkd_map_u64(&layers->via.array.ptr[l], "len_min", &mn) == 0);
        cr_assert(sinkd_map_u64(&layers->via.array.ptr[l], "len_max", &mx) == 0);
        cr_assert(mn >= lo && mx <= hi, "layer %u: lanes %llu..%llu outside %llu..%llu", l,
                  (unsigned long long)mn, (unsigned long long)mx, (unsigned long long)lo,
                  (unsigned long long)hi);
    }
}

Test(engine, window_eviction_keeps_budget_and_frees_pages)
{
    frame *full = run_policy("full", NULL, 120);
    frame *win = run_policy("window", "window=32", 120);
    uint64_t tokens = u64(full, "tokens");

    /* 29 prompt tokens + 120 generated, the last one not yet run */
    cr_assert_eq(tokens, gold.cases[2].n_prompt + 119);
    assert_lanes(full, tokens, tokens);
    /* budget 32, slack one page (16): lanes stay within budget..budget+slack */
    assert_lanes(win, 32, 32 + 16);
    cr_assert(u64(win, "evictions") > 0);
    cr_assert(u64(win, "pages") < u64(full, "pages"), "window holds fewer pages than full");
    frame_free(full);
    frame_free(win);
}

Test(engine, streaming_eviction_keeps_budget)
{
    frame *f = run_policy("streaming", "sinks=4 window=28", 100);

    assert_lanes(f, 32, 32 + 16);
    cr_assert(u64(f, "evicted_tokens") > 0);
    frame_free(f);
}

Test(engine, closing_returns_pages)
{
    sinkd_engine_counters *c = sinkd_engine_counters_get(eng);
    uint64_t before = atomic_load(&c->kv_used_bytes);
    uint64_t s = open_session(NULL, NULL);

    append_ids(s, gold.cases[0].prompt_ids, gold.cases[0].n_prompt);
    cr_assert(atomic_load(&c->kv_used_bytes) > before);
    frame_free(reply_ok(submit(job(SINKD_JOB_SESSION_CLOSE, s))));
    cr_assert_eq(atomic_load(&c->kv_used_bytes), before);
}
