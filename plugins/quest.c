/*
 * quest: Quest (Tang et al., "Quest: Query-Aware Sparsity for Efficient
 * Long-Context LLM Inference", ICML 2024, §3). Nothing is evicted. The
 * engine keeps each page's channel-wise key min and max; at every decode
 * step each kv head scores its pages by the upper bound
 * sum_i max(q_i * kmax_i, q_i * kmin_i) of any key's attention logit in it
 * (§3.2) and attends only to the top pages that fit the token budget
 * (§3.3). The first two layers stay dense: their attention is too spread
 * for page selection (§4.1).
 *
 *   budget=1024   tokens attended per kv head (k = budget / page_tokens pages)
 *   dense=2       leading layers that attend densely
 */
#include <errno.h>
#include <stdlib.h>

#include "policy.h"

typedef struct quest_state {
    int64_t budget, dense;
} quest_state;

static int32_t quest_create(const sinkd_policy_host *host, const sinkd_policy_geometry *geom,
                            const sinkd_policy_params *params, void **state)
{
    quest_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    int32_t rc = host->param_int(params, "budget", 1024, 1, 1 << 24, &s->budget);
    if (rc == 0)
        rc = host->param_int(params, "dense", geom->n_layers < 2 ? geom->n_layers : 2, 0,
                             geom->n_layers, &s->dense);
    if (rc < 0) {
        free(s);
        return rc;
    }
    *state = s;
    return 0;
}

static int32_t quest_plan(void *state, sinkd_policy_plan *plan)
{
    const quest_state *s = state;
    plan->flags |= SINKD_PLAN_PAGE_BOUNDS;
    plan->evict_at = SINKD_EVICT_NEVER;
    plan->select = SINKD_SELECT_PAGES;
    plan->select_tokens = (int32_t)s->budget;
    plan->dense_layers = (int32_t)s->dense;
    return 0;
}

static const sinkd_policy quest_policy = {
    .abi_major = SINKD_POLICY_ABI_MAJOR,
    .abi_minor = SINKD_POLICY_ABI_MINOR,
    .struct_size = sizeof(sinkd_policy),
    .name = "quest",
    .version = "1.0.0",
    .summary = "Quest: top-k pages per kv head by key-bound, first layers dense",
    .selftest_params = "budget=64",
    .create = quest_create,
    .destroy = free,
    .plan = quest_plan,
};

SINKD_POLICY_EXPORT const sinkd_policy *sinkd_policy_v1(void)
{
    return &quest_policy;
}
