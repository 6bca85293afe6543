/*
 * h2o: Heavy-Hitter Oracle (Zhang et al., "H2O: Heavy-Hitter Oracle for
 * Efficient Generative Inference of Large Language Models", NeurIPS 2023).
 * Each token's attention is accumulated over every query that saw it; when
 * a lane is over budget the tokens with the largest sums (the heavy
 * hitters) are kept together with the most recent ones (§3.2, Algorithm 1),
 * independently for every head (§4.1: eviction is per head). The paper's
 * budget splits evenly between heavy hitters and recent tokens (§5).
 *
 *   budget=512     tokens kept per lane
 *   recent=budget/2  of which the most recent
 */
#include <errno.h>
#include <stdlib.h>

#include "policy.h"

typedef struct h2o_state {
    int64_t budget, recent;
} h2o_state;

static int32_t h2o_create(const sinkd_policy_host *host, const sinkd_policy_geometry *geom,
                          const sinkd_policy_params *params, void **state)
{
    (void)geom;
    h2o_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    int32_t rc = host->param_int(params, "budget", 512, 1, 1 << 24, &s->budget);
    if (rc == 0)
        rc = host->param_int(params, "recent", s->budget / 2, 0, s->budget, &s->recent);
    if (rc < 0) {
        free(s);
        return rc;
    }
    *state = s;
    return 0;
}

static int32_t h2o_plan(void *state, sinkd_policy_plan *plan)
{
    const h2o_state *s = state;
    plan->stat = SINKD_STAT_SUM;
    plan->scope = SINKD_SCOPE_LANE;
    plan->evict_at = SINKD_EVICT_BUDGET;
    plan->budget = (int32_t)s->budget;
    plan->recent = (int32_t)s->recent;
    return 0;
}

static const sinkd_policy h2o_policy = {
    .abi_major = SINKD_POLICY_ABI_MAJOR,
    .abi_minor = SINKD_POLICY_ABI_MINOR,
    .struct_size = sizeof(sinkd_policy),
    .name = "h2o",
    .version = "1.0.0",
    .summary = "H2O: heavy hitters by accumulated attention + recent, per head",
    .selftest_params = "budget=64",
    .create = h2o_create,
    .destroy = free,
    .plan = h2o_plan,
};

SINKD_POLICY_EXPORT const sinkd_policy *sinkd_policy_v1(void)
{
    return &h2o_policy;
}
