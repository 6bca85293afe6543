/*
 * window: keep the most recent `window` tokens of every lane (a sliding
 * window, the oldest and simplest cache bound; Longformer, Beltagy et al.
 * 2020, §3.1 "sliding window"). Built into sinkd as the fallback for a
 * misbehaving plugin, and shipped as window.so.
 *
 *   window=N   tokens kept per lane (default 1024); can change live
 */
#include <errno.h>
#include <stdlib.h>

#include "policy.h"

typedef struct window_state {
    const sinkd_policy_host *host;
    int64_t window;
} window_state;

static int32_t window_reconfigure(void *state, const sinkd_policy_params *params)
{
    window_state *s = state;
    int64_t w;
    /* The host's cap on a budget, no lower: a session that falls back keeps
     * its plan's budget as its window, whatever that budget was. */
    int32_t rc = s->host->param_int(params, "window", 1024, 1, SINKD_POLICY_MAX_TOKENS, &w);
    if (rc == 0)
        s->window = w;
    return rc;
}

static int32_t window_create(const sinkd_policy_host *host, const sinkd_policy_geometry *geom,
                             const sinkd_policy_params *params, void **state)
{
    (void)geom;
    window_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    s->host = host;
    int32_t rc = window_reconfigure(s, params);
    if (rc < 0) {
        free(s);
        return rc;
    }
    *state = s;
    return 0;
}

static int32_t window_plan(void *state, sinkd_policy_plan *plan)
{
    const window_state *s = state;
    plan->evict_at = SINKD_EVICT_BUDGET;
    plan->budget = (int32_t)s->window;
    plan->recent = (int32_t)s->window;
    return 0;
}

static const sinkd_policy window_policy = {
    .abi_major = SINKD_POLICY_ABI_MAJOR,
    .abi_minor = SINKD_POLICY_ABI_MINOR,
    .struct_size = sizeof(sinkd_policy),
    .caps = SINKD_POLICY_CAP_RECONFIGURE,
    .name = "window",
    .version = "1.0.0",
    .summary = "keep the last `window` tokens",
    .create = window_create,
    .destroy = free,
    .plan = window_plan,
    .reconfigure = window_reconfigure,
};

SINKD_POLICY_EXPORT const sinkd_policy *sinkd_policy_v1(void)
{
    return &window_policy;
}
