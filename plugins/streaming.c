/*
 * streaming: StreamingLLM (Xiao et al., "Efficient Streaming Language Models
 * with Attention Sinks", ICLR 2024). Keep the first tokens, which absorb the
 * attention mass of every query (the "attention sinks", §3.1; four are
 * enough, §3.3), plus a rolling window of recent tokens, and give keys
 * their position inside the cache rather than in the text (§3.2), which is
 * rope=cache.
 *
 *   sinks=4       initial tokens kept
 *   window=1020   recent tokens kept (cache of 1024, as in §4.1)
 */
#include <errno.h>
#include <stdlib.h>

#include "policy.h"

typedef struct streaming_state {
    int64_t sinks, window;
} streaming_state;

static int32_t streaming_create(const sinkd_policy_host *host, const sinkd_policy_geometry *geom,
                                const sinkd_policy_params *params, void **state)
{
    (void)geom;
    streaming_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    int32_t rc = host->param_int(params, "sinks", 4, 0, 1 << 20, &s->sinks);
    if (rc == 0)
        /* the budget, sinks + window, within the host's cap on a plan */
        rc = host->param_int(params, "window", 1020, 1, SINKD_POLICY_MAX_TOKENS - s->sinks,
                             &s->window);
    if (rc < 0) {
        free(s);
        return rc;
    }
    *state = s;
    return 0;
}

static int32_t streaming_plan(void *state, sinkd_policy_plan *plan)
{
    const streaming_state *s = state;
    plan->evict_at = SINKD_EVICT_BUDGET;
    plan->sinks = (int32_t)s->sinks;
    plan->recent = (int32_t)s->window;
    plan->budget = (int32_t)(s->sinks + s->window);
    plan->rope_mode = SINKD_POLICY_ROPE_CACHE;
    return 0;
}

static const sinkd_policy streaming_policy = {
    .abi_major = SINKD_POLICY_ABI_MAJOR,
    .abi_minor = SINKD_POLICY_ABI_MINOR,
    .struct_size = sizeof(sinkd_policy),
    .name = "streaming",
    .version = "1.0.0",
    .summary = "StreamingLLM: attention sinks + recent window, rope=cache",
    .selftest_params = "window=64",
    .create = streaming_create,
    .destroy = free,
    .plan = streaming_plan,
};

SINKD_POLICY_EXPORT const sinkd_policy *sinkd_policy_v1(void)
{
    return &streaming_policy;
}
