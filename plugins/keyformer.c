/*
 * keyformer: Keyformer (Adnan et al., "Keyformer: KV Cache Reduction through
 * Key Tokens Selection for Efficient Generative Inference", MLSys 2024,
 * §3.3-3.4). Evicting tokens skews the softmax over those that remain;
 * Keyformer scores tokens with a Gumbel-perturbed softmax of the attention
 * logits at temperature tau, accumulated over steps, and keeps the top
 * "key tokens" plus a recent window. The engine draws the noise
 * (SINKD_STAT_GUMBEL). The paper anneals tau from 1 to 2 over the
 * generation; sinkd holds it at `temperature`. The recent share of the
 * budget is swept in the paper; a quarter is sinkd's default.
 *
 *   budget=512        tokens kept per lane
 *   recent=budget/4   of which the most recent
 *   temperature=1     Gumbel-softmax temperature tau
 */
#include <errno.h>
#include <stdlib.h>

#include "policy.h"

typedef struct keyformer_state {
    int64_t budget, recent;
    double temperature;
} keyformer_state;

static int32_t keyformer_create(const sinkd_policy_host *host, const sinkd_policy_geometry *geom,
                                const sinkd_policy_params *params, void **state)
{
    (void)geom;
    keyformer_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    int32_t rc = host->param_int(params, "budget", 512, 1, 1 << 24, &s->budget);
    if (rc == 0)
        rc = host->param_int(params, "recent", s->budget / 4, 0, s->budget, &s->recent);
    if (rc == 0)
        rc = host->param_float(params, "temperature", 1.0, 1e-3, 100.0, &s->temperature);
    if (rc < 0) {
        free(s);
        return rc;
    }
    *state = s;
    return 0;
}

static int32_t keyformer_plan(void *state, sinkd_policy_plan *plan)
{
    const keyformer_state *s = state;
    plan->stat = SINKD_STAT_GUMBEL;
    plan->temperature = (float)s->temperature;
    plan->evict_at = SINKD_EVICT_BUDGET;
    plan->budget = (int32_t)s->budget;
    plan->recent = (int32_t)s->recent;
    return 0;
}

static const sinkd_policy keyformer_policy = {
    .abi_major = SINKD_POLICY_ABI_MAJOR,
    .abi_minor = SINKD_POLICY_ABI_MINOR,
    .struct_size = sizeof(sinkd_policy),
    .name = "keyformer",
    .version = "1.0.0",
    .summary = "Keyformer: Gumbel-perturbed attention scores + recent window",
    .selftest_params = "budget=64",
    .create = keyformer_create,
    .destroy = free,
    .plan = keyformer_plan,
};

SINKD_POLICY_EXPORT const sinkd_policy *sinkd_policy_v1(void)
{
    return &keyformer_policy;
}
