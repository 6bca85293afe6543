/*
 * The self-test every policy passes before a session may use it: a state on
 * a small synthetic model, its plan validated, and every layer's lanes run
 * through eviction and selection (the plugin's callbacks where it has them)
 * with the results checked as the engine would check them. It catches the
 * plugin that crashes, returns garbage or fails on its own defaults at load
 * time instead of in a user's session.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define SELFTEST_HEADS SINKD_POLICY_SELFTEST_KV_HEADS

/* Deterministic, positive, varied scores (a 32-bit LCG). */
static float selftest__score(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) / 16777216.0f;
}

/* One layer: lanes longer than any budget + slack, evicted and selected. */
static int selftest__layer(sinkd_policy_inst *inst, int32_t layer, int32_t len, int32_t *pos,
                           float *score, float *page_score, int32_t *out, char *err, size_t errlen)
{
    const sinkd_policy_geometry *g = sinkd_policy_inst_geometry(inst);
    const sinkd_policy_plan *plan = sinkd_policy_inst_plan(inst);
    sinkd_policy_lane lanes[SELFTEST_HEADS];
    int32_t n_pages = (len + g->page_tokens - 1) / g->page_tokens;

    for (int32_t h = 0; h < SELFTEST_HEADS; h++) {
        lanes[h] = (sinkd_policy_lane){
            .layer = layer, .kv_head = h, .len = len, .n_pages = n_pages, .pos = pos,
            .score = score + (size_t)h * (size_t)len, .page_score = page_score + h * n_pages,
            .out = out + (size_t)h * (size_t)len,
        };
    }
    int rc = policy__inst_evict_checked(inst, lanes, SELFTEST_HEADS, err, errlen);
    if (rc < 0)
        return rc;
    if (sinkd_plan_select_source(plan, layer) != layer)
        return 0;
    return policy__inst_select_checked(inst, lanes, SELFTEST_HEADS, err, errlen);
}

int policy__selftest(policy__lib *lib, char *err, size_t errlen)
{
    const sinkd_policy_geometry g = {
        .struct_size = sizeof g,
        .n_layers = SINKD_POLICY_SELFTEST_LAYERS,
        .n_q_heads = SINKD_POLICY_SELFTEST_Q_HEADS,
        .n_kv_heads = SINKD_POLICY_SELFTEST_KV_HEADS,
        .head_dim = SINKD_POLICY_SELFTEST_HEAD_DIM,
        .page_tokens = SINKD_POLICY_SELFTEST_PAGE_TOKENS,
        .max_tokens = SINKD_POLICY_SELFTEST_MAX_TOKENS,
    };
    sinkd_policy_inst *inst;
    char why[POLICY__ERR_LEN];
    int rc = policy__inst_create(lib, &g, lib->desc.selftest_params, &inst, why, sizeof why);
    if (rc < 0) {
        snprintf(err, errlen, "create: %s", why);
        return -EPROTO;
    }
    const sinkd_policy_plan *plan = sinkd_policy_inst_plan(inst);
    int32_t len = 300;
    for (int32_t l = 0; l < g.n_layers; l++)
        for (int32_t h = 0; h < g.n_kv_heads; h++) {
            int32_t t = sinkd_plan_lane_budget(plan, &g, l, h) + plan->slack + 37;
            if (t > len)
                len = t;
        }
    if (len > g.max_tokens)
        len = g.max_tokens;

    size_t n = (size_t)len * SELFTEST_HEADS;
    int32_t *pos = malloc((size_t)len * sizeof *pos);
    float *score = malloc(n * sizeof *score);
    float *page_score = malloc(n * sizeof *page_score);
    int32_t *out = malloc(n * sizeof *out);
    if (pos == NULL || score == NULL || page_score == NULL || out == NULL) {
        rc = -ENOMEM;
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    uint32_t seed = 12345;
    for (int32_t t = 0; t < len; t++)
        pos[t] = t;
    for (size_t i = 0; i < n; i++) {
        score[i] = selftest__score(&seed);
        page_score[i] = selftest__score(&seed);
    }
    for (int32_t l = 0; l < g.n_layers && rc == 0; l++) {
        rc = selftest__layer(inst, l, len, pos, score, page_score, out, why, sizeof why);
        if (rc < 0)
            snprintf(err, errlen, "layer %d: %s", l, why);
    }
    if (rc == 0 && lib->desc.reconfigure != NULL) {
        rc = sinkd_policy_inst_reconfigure(inst, lib->desc.selftest_params, why, sizeof why);
        if (rc < 0)
            snprintf(err, errlen, "reconfigure: %s", why);
    }
done:
    free(pos);
    free(score);
    free(page_score);
    free(out);
    sinkd_policy_inst_destroy(inst);
    return rc < 0 ? -EPROTO : 0;
}
