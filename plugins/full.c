/*
 * full: keep every token and attend to all of them. Exact attention, the
 * reference every other policy is measured against, and the last resort of
 * the host (built into sinkd as well as shipped as full.so). No parameters.
 */
#include <stddef.h>

#include "policy.h"

static int32_t full_create(const sinkd_policy_host *host, const sinkd_policy_geometry *geom,
                           const sinkd_policy_params *params, void **state)
{
    (void)host;
    (void)geom;
    (void)params;
    *state = NULL;
    return 0;
}

static void full_destroy(void *state)
{
    (void)state;
}

static int32_t full_plan(void *state, sinkd_policy_plan *plan)
{
    (void)state;
    plan->evict_at = SINKD_EVICT_NEVER;
    plan->select = SINKD_SELECT_DENSE;
    return 0;
}

static const sinkd_policy full_policy = {
    .abi_major = SINKD_POLICY_ABI_MAJOR,
    .abi_minor = SINKD_POLICY_ABI_MINOR,
    .struct_size = sizeof(sinkd_policy),
    .name = "full",
    .version = "1.0.0",
    .summary = "keep everything: exact attention",
    .create = full_create,
    .destroy = full_destroy,
    .plan = full_plan,
};

SINKD_POLICY_EXPORT const sinkd_policy *sinkd_policy_v1(void)
{
    return &full_policy;
}
