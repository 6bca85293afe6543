/*
 * One-token appends of different sessions that wait in the engine's queue
 * together run as shared decode calls (in-process, CPU, tiny model,
 * max_batch 4): each session ends with the logits and lanes it would have
 * had alone, whatever the policies mixed in the batch, and batching really
 * happened (appends answered from one call report the same prefill time).
 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eng_harness.h"

#define NS 6      /* sessions streamed side by side: more than max_batch */
#define PROMPT 24
#define STEPS 80  /* tokens appended one at a time after the prompt */
#define BLOCKER 400

static sinkd_engine *eng;
static size_t nv;

static void setup(void)
{
    const char *dirs[] = {SINKD_PLUGIN_BUILD_DIR};

    eng = eng_h_open(dirs, 1);
    nv = (size_t)sinkd_engine_model_at(eng, 0)->hp->n_vocab;
}

static void teardown(void) { eng_h_close(eng); }

TestSuite(append_batch, .init = setup, .fini = teardown, .timeout = 120);

/* Policies that land in different groups (statistics, rope mode,
 * selection) and some that share one. */
static const char *const policy[NS][2] = {
    {"full", ""},
    {"window", "window=24 rope=cache"},
    {"streaming", "sinks=4 window=20"},
    {"h2o", "budget=24"},
    {"h2o", "budget=32"},
    {"quest", "budget=16 dense=1"},
};

/* A token stream the model has no reason to find easy. */
static int32_t tok(size_t i) { return (int32_t)(3 + (i * 7919 + i / 3) % 250); }

static uint64_t submit_append(uint64_t s, int32_t id)
{
    sinkd_job *j = eng_h_job(SINKD_JOB_SESSION_APPEND, s);

    j->ids = malloc(sizeof *j->ids);
    cr_assert(j->ids);
    j->ids[0] = id;
    j->n_ids = 1;
    j->bos_set = true;
    return eng_h_submit(j);
}

/* prefill_ms of the ok reply of @id, as its bits. */
static uint64_t reply_ms_bits(uint64_t id)
{
    eng_h_frame *f = eng_h_reply_ok(id);
    const msgpack_object *o = sinkd_map_get(&f->msg.root, "prefill_ms");
    double ms;
    uint64_t bits;

    cr_assert(o && o->type == MSGPACK_OBJECT_FLOAT64);
    ms = o->via.f64;
    memcpy(&bits, &ms, sizeof bits);
    cr_assert_eq(eng_h_u64(f, "n_tokens"), 1);
    eng_h_frame_free(f);
    return bits;
}

static void assert_close(const float *a, const float *b, const char *what, size_t step)
{
    for (size_t v = 0; v < nv; v++)
        cr_assert(fabsf(a[v] - b[v]) <= 1e-4f * (1.0f + fabsf(b[v])),
                  "%s, step %zu, logit %zu: batched %.7g, alone %.7g", what, step, v, a[v],
                  b[v]);
}

Test(append_batch, same_as_alone)
{
    uint64_t sa[NS], sb[NS], blocker = eng_h_open_session("full", "");
    int32_t prompt[PROMPT], *ids = malloc(BLOCKER * sizeof *ids);
    float *la = malloc(nv * sizeof *la), *lb = malloc(nv * sizeof *lb);
    size_t shared = 0;

    cr_assert(ids && la && lb);
    for (size_t i = 0; i < PROMPT; i++)
        prompt[i] = tok(i);
    for (size_t i = 0; i < BLOCKER; i++)
        ids[i] = tok(i + 1000);
    for (size_t k = 0; k < NS; k++) {
        sa[k] = eng_h_open_session(policy[k][0], policy[k][1]);
        sb[k] = eng_h_open_session(policy[k][0], policy[k][1]);
        eng_h_append(sa[k], prompt, PROMPT);
        eng_h_append(sb[k], prompt, PROMPT);
    }
    for (size_t t = 0; t < STEPS; t++) {
        int32_t id = tok(PROMPT + t);
        uint64_t req[NS], bits[NS], breq = 0;

        /* Every few steps a long prefill holds the engine while the
         * appends queue up behind it. */
        if (t % 8 == 0) {
            sinkd_job *j = eng_h_job(SINKD_JOB_SESSION_APPEND, blocker);
            j->ids = malloc(BLOCKER * sizeof *ids);
            cr_assert(j->ids);
            memcpy(j->ids, ids, BLOCKER * sizeof *ids);
            j->n_ids = BLOCKER;
            j->bos_set = true;
            breq = eng_h_submit(j);
        }
        for (size_t k = 0; k < NS; k++)
            req[k] = submit_append(sa[k], id);
        if (breq)
            eng_h_frame_free(eng_h_reply_ok(breq));
        for (size_t k = 0; k < NS; k++)
            bits[k] = reply_ms_bits(req[k]);
        for (size_t k = 0; k < NS; k++)
            for (size_t m = k + 1; m < NS; m++)
                shared += bits[k] == bits[m];
        for (size_t k = 0; k < NS; k++)
            eng_h_append(sb[k], &id, 1);
        for (size_t k = 0; k < NS; k++) {
            eng_h_logits(sa[k], la, nv);
            eng_h_logits(sb[k], lb, nv);
            assert_close(la, lb, policy[k][0], t);
        }
        if (t % 8 == 0) {
            /* keep the blocker's prefill short-lived in the pool */
            eng_h_frame_free(eng_h_reply_ok(
                eng_h_submit(eng_h_job(SINKD_JOB_SESSION_CLOSE, blocker))));
            blocker = eng_h_open_session("full", "");
        }
    }
    cr_assert_gt(shared, 0, "no two appends were answered from one decode call");
    free(ids);
    free(la);
    free(lb);
}
