/*
 * tova: Token Omission Via Attention (Oren et al., "Transformers are
 * Multi-State RNNs", EMNLP 2024, §3.3). When the cache is over budget, drop
 * the tokens with the lowest attention from the CURRENT query, averaged over
 * the heads of the layer, so every head of a layer keeps the same tokens.
 * No history is kept: the statistic is the last row of attention. The paper
 * drops one token per step; the host's `slack` (default one page) batches
 * drops, ranking by the last row at the eviction step (slack=0 for the
 * paper's exact rule).
 *
 *   budget=512   tokens kept per layer
 */
#include <errno.h>
#include <stdlib.h>

#include "policy.h"

typedef struct tova_state {
    int64_t budget;
} tova_state;

static int32_t tova_create(const sinkd_policy_host *host, const sinkd_policy_geometry *geom,
                           const sinkd_policy_params *params, void **state)
{
    (void)geom;
    tova_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    int32_t rc = host->param_int(params, "budget", 512, 1, 1 << 24, &s->budget);
    if (rc < 0) {
        free(s);
        return rc;
    }
    *state = s;
    return 0;
}

static int32_t tova_plan(void *state, sinkd_policy_plan *plan)
{
    const tova_state *s = state;
    plan->stat = SINKD_STAT_LAST;
    plan->scope = SINKD_SCOPE_LAYER;
    plan->evict_at = SINKD_EVICT_BUDGET;
    plan->budget = (int32_t)s->budget;
    return 0;
}

static const sinkd_policy tova_policy = {
    .abi_major = SINKD_POLICY_ABI_MAJOR,
    .abi_minor = SINKD_POLICY_ABI_MINOR,
    .struct_size = sizeof(sinkd_policy),
    .name = "tova",
    .version = "1.0.0",
    .summary = "TOVA: drop the lowest last-query attention, averaged per layer",
    .selftest_params = "budget=64",
    .create = tova_create,
    .destroy = free,
    .plan = tova_plan,
};

SINKD_POLICY_EXPORT const sinkd_policy *sinkd_policy_v1(void)
{
    return &tova_policy;
}
