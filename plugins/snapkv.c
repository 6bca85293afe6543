/*
 * snapkv: SnapKV (Li et al., "SnapKV: LLM Knows What You are Looking for
 * Before Generation", NeurIPS 2024, §4, Algorithm 1). One compression, at
 * the end of the prompt: the attention of the last `window` prompt queries
 * (the observation window) to every earlier key is summed, smoothed by a
 * 1-D pooling so that neighbours of important tokens survive together
 * (clustering, §4.2), and each head keeps its top (budget - window) tokens
 * plus the window itself. Decoding then appends without further eviction.
 * Defaults are those of the authors' code (window 32, capacity 2048,
 * kernel 5, average pooling). pyramidkv.c builds on this file.
 *
 *   budget=2048   tokens kept per lane after the prompt (window included)
 *   window=32     observation window w
 *   kernel=5      pooling kernel (odd; the host checks)
 *   pool=avg      avg or max
 */
#include <errno.h>
#include <stdlib.h>

#include "policy.h"

typedef struct snapkv_state {
    int64_t budget, window, kernel, beta; /* beta: pyramidkv's only */
    int32_t pool;                         /* index into snapkv_pools */
    int32_t n_layers;
} snapkv_state;

static const char *const snapkv_pools[] = {"avg", "max"};

/* Allocate a state and read SnapKV's parameters with the given defaults. */
static int32_t snapkv_params(const sinkd_policy_host *host, const sinkd_policy_geometry *geom,
                             const sinkd_policy_params *params, int64_t window, int64_t kernel,
                             int32_t pool, snapkv_state **out)
{
    snapkv_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    s->n_layers = geom->n_layers;
    int32_t rc = host->param_int(params, "window", window, 1, 1 << 16, &s->window);
    if (rc == 0)
        rc = host->param_int(params, "budget", 2048, s->window, 1 << 24, &s->budget);
    if (rc == 0)
        rc = host->param_int(params, "kernel", kernel, 1, 1023, &s->kernel);
    if (rc == 0)
        rc = host->param_choice(params, "pool", snapkv_pools, 2, pool, &s->pool);
    if (rc < 0) {
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

static void snapkv_fill(const snapkv_state *s, sinkd_policy_plan *plan)
{
    plan->stat = SINKD_STAT_OBS_WINDOW;
    plan->obs_window = (int32_t)s->window;
    plan->pool = s->pool == 0 ? SINKD_POOL_AVG : SINKD_POOL_MAX;
    plan->pool_kernel = (int32_t)s->kernel;
    plan->evict_at = SINKD_EVICT_PREFILL;
    plan->budget = (int32_t)s->budget;
    plan->recent = (int32_t)s->window;
}

#ifndef SNAPKV_NO_ENTRY
static int32_t snapkv_create(const sinkd_policy_host *host, const sinkd_policy_geometry *geom,
                             const sinkd_policy_params *params, void **state)
{
    snapkv_state *s;
    int32_t rc = snapkv_params(host, geom, params, 32, 5, 0, &s);
    if (rc == 0)
        *state = s;
    return rc;
}

static int32_t snapkv_plan(void *state, sinkd_policy_plan *plan)
{
    snapkv_fill(state, plan);
    return 0;
}

static const sinkd_policy snapkv_policy = {
    .abi_major = SINKD_POLICY_ABI_MAJOR,
    .abi_minor = SINKD_POLICY_ABI_MINOR,
    .struct_size = sizeof(sinkd_policy),
    .name = "snapkv",
    .version = "1.0.0",
    .summary = "SnapKV: one-shot prompt compression by observation-window votes",
    .selftest_params = "budget=96 window=16",
    .create = snapkv_create,
    .destroy = free,
    .plan = snapkv_plan,
};

SINKD_POLICY_EXPORT const sinkd_policy *sinkd_policy_v1(void)
{
    return &snapkv_policy;
}
#endif
