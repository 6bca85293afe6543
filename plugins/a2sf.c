/*
 * a2sf: Accumulative Attention Scoring with Forgetting factor (Jo and Shin,
 * "A2SF: Accumulative Attention Scoring with Forgetting Factor for Token
 * Pruning in Transformer Decoder", 2024, §3.2). H2O's accumulated attention
 * favours old tokens simply because more queries have seen them; A2SF
 * multiplies the running sum by a forgetting factor lambda at every step,
 * score = lambda * score + p, so old attention fades. Selection then keeps
 * the top scores plus a recent window, per head, like H2O. The paper tunes
 * lambda per model and task (§4); 0.9 is sinkd's default, not the paper's.
 *
 *   budget=512       tokens kept per lane
 *   recent=budget/2  of which the most recent
 *   lambda=0.9       forgetting factor in (0, 1]
 */
#include <errno.h>
#include <stdlib.h>

#include "policy.h"

typedef struct a2sf_state {
    int64_t budget, recent;
    double lambda;
} a2sf_state;

static int32_t a2sf_create(const sinkd_policy_host *host, const sinkd_policy_geometry *geom,
                           const sinkd_policy_params *params, void **state)
{
    (void)geom;
    a2sf_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    int32_t rc = host->param_int(params, "budget", 512, 1, 1 << 24, &s->budget);
    if (rc == 0)
        rc = host->param_int(params, "recent", s->budget / 2, 0, s->budget, &s->recent);
    if (rc == 0)
        rc = host->param_float(params, "lambda", 0.9, 1e-6, 1.0, &s->lambda);
    if (rc < 0) {
        free(s);
        return rc;
    }
    *state = s;
    return 0;
}

static int32_t a2sf_plan(void *state, sinkd_policy_plan *plan)
{
    const a2sf_state *s = state;
    plan->stat = SINKD_STAT_DECAY;
    plan->decay = (float)s->lambda;
    plan->evict_at = SINKD_EVICT_BUDGET;
    plan->budget = (int32_t)s->budget;
    plan->recent = (int32_t)s->recent;
    return 0;
}

static const sinkd_policy a2sf_policy = {
    .abi_major = SINKD_POLICY_ABI_MAJOR,
    .abi_minor = SINKD_POLICY_ABI_MINOR,
    .struct_size = sizeof(sinkd_policy),
    .name = "a2sf",
    .version = "1.0.0",
    .summary = "A2SF: attention accumulated with a forgetting factor + recent",
    .selftest_params = "budget=64",
    .create = a2sf_create,
    .destroy = free,
    .plan = a2sf_plan,
};

SINKD_POLICY_EXPORT const sinkd_policy *sinkd_policy_v1(void)
{
    return &a2sf_policy;
}
