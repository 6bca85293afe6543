/*
 * pyramidkv: PyramidKV (Cai et al., "PyramidKV: Dynamic KV Cache Compression
 * based on Pyramidal Information Funneling", 2024, §3). Attention is broad
 * in the lower layers and concentrates higher up, so the cache budget
 * shrinks with depth: the same total as `budget` per layer, spread as an
 * arithmetic sequence from 2(C-w) - (C-w)/beta tokens in the first layer
 * down to (C-w)/beta in the last (§3.2), each layer then compressed with
 * SnapKV's observation-window scoring (§3.3; this file compiles snapkv.c
 * in). Layer l of L keeps w + min + floor((L-1-l) * (max - min) / (L-1)):
 * rounding down, so the layers together never exceed L * budget. (The
 * authors' code steps by (max - min) / L instead, which overshoots the
 * total.) Defaults are that code's LongBench settings.
 *
 *   budget=2048   average tokens per lane after the prompt (window included)
 *   window=8      observation window w
 *   kernel=7      pooling kernel (odd; the host checks)
 *   pool=max      avg or max
 *   beta=20       how much smaller the last layer's share is
 */
#define SNAPKV_NO_ENTRY
#include "snapkv.c"

static int32_t pyramidkv_create(const sinkd_policy_host *host, const sinkd_policy_geometry *geom,
                                const sinkd_policy_params *params, void **state)
{
    snapkv_state *s;
    int32_t rc = snapkv_params(host, geom, params, 8, 7, 1, &s);
    if (rc < 0)
        return rc;
    rc = host->param_int(params, "beta", 20, 1, 1 << 20, &s->beta);
    if (rc < 0) {
        free(s);
        return rc;
    }
    *state = s;
    return 0;
}

static int32_t pyramidkv_plan(void *state, sinkd_policy_plan *plan)
{
    const snapkv_state *s = state;
    int64_t c = s->budget - s->window;
    int64_t min = c / s->beta, max = 2 * c - min;
    int64_t span = s->n_layers - 1; /* one layer: `budget` itself */
    snapkv_fill(s, plan);
    for (int32_t l = 0; l < s->n_layers && s->n_layers > 1; l++)
        plan->layer_budget[l] = (int32_t)(min + (span - l) * (max - min) / span + s->window);
    return 0;
}

static const sinkd_policy pyramidkv_policy = {
    .abi_major = SINKD_POLICY_ABI_MAJOR,
    .abi_minor = SINKD_POLICY_ABI_MINOR,
    .struct_size = sizeof(sinkd_policy),
    .name = "pyramidkv",
    .version = "1.0.0",
    .summary = "PyramidKV: SnapKV scoring, budgets shrinking with depth",
    .selftest_params = "budget=96 window=8",
    .create = pyramidkv_create,
    .destroy = free,
    .plan = pyramidkv_plan,
};

SINKD_POLICY_EXPORT const sinkd_policy *sinkd_policy_v1(void)
{
    return &pyramidkv_policy;
}
