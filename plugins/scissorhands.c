/*
 * scissorhands: Scissorhands (Liu et al., "Scissorhands: Exploiting the
 * Persistence of Importance Hypothesis for LLM KV Cache Compression at Test
 * Time", NeurIPS 2023, §4.1 and Algorithm 1). Tokens that were pivotal once
 * stay pivotal ("persistence of importance"), so a token's importance is
 * how often, recently, its attention beat a high quantile of its row; the
 * most often pivotal tokens are kept and the recent window is never
 * dropped. The engine keeps the count on the device (SINKD_STAT_QUANTILE)
 * and it is not the paper's count over an exact window of the last
 * `history` steps but an exponentially decayed one: at each decode step
 * (and once per prefill chunk, for the chunk's last query)
 *
 *     count = (1 - 1/history) * count + (p > the row's quantile ? 1 : 0)
 *
 * so a step's hit weighs 1 when it happens and ~1/e after `history` more
 * steps, and a token hit at every step tends to a count of `history`:
 * history is the decay's time constant in steps. That keeps one float per
 * token instead of a window of bits. History and recent sizes are sinkd's
 * defaults (the paper sweeps them).
 *
 *   budget=512      tokens kept per lane
 *   recent=64       most recent tokens, always kept
 *   history=256     time constant, in steps, of the count's decay (above)
 *   quantile=0.9    a step counts when the token's attention beats this
 *                   quantile of its row
 */
#include <errno.h>
#include <stdlib.h>

#include "policy.h"

typedef struct scissorhands_state {
    int64_t budget, recent, history;
    double quantile;
} scissorhands_state;

static int32_t scissorhands_create(const sinkd_policy_host *host,
                                   const sinkd_policy_geometry *geom,
                                   const sinkd_policy_params *params, void **state)
{
    (void)geom;
    scissorhands_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    int32_t rc = host->param_int(params, "budget", 512, 1, 1 << 24, &s->budget);
    if (rc == 0)
        rc = host->param_int(params, "recent", s->budget < 64 ? s->budget : 64, 0, s->budget,
                             &s->recent);
    if (rc == 0)
        rc = host->param_int(params, "history", 256, 1, 1 << 20, &s->history);
    if (rc == 0)
        rc = host->param_float(params, "quantile", 0.9, 0.01, 0.99, &s->quantile);
    if (rc < 0) {
        free(s);
        return rc;
    }
    *state = s;
    return 0;
}

static int32_t scissorhands_plan(void *state, sinkd_policy_plan *plan)
{
    const scissorhands_state *s = state;
    plan->stat = SINKD_STAT_QUANTILE;
    plan->quantile = (float)s->quantile;
    plan->history = (int32_t)s->history;
    plan->evict_at = SINKD_EVICT_BUDGET;
    plan->budget = (int32_t)s->budget;
    plan->recent = (int32_t)s->recent;
    return 0;
}

static const sinkd_policy scissorhands_policy = {
    .abi_major = SINKD_POLICY_ABI_MAJOR,
    .abi_minor = SINKD_POLICY_ABI_MINOR,
    .struct_size = sizeof(sinkd_policy),
    .name = "scissorhands",
    .version = "1.0.0",
    .summary = "Scissorhands: keep tokens often above the row's 90th percentile",
    .selftest_params = "budget=64 recent=16",
    .create = scissorhands_create,
    .destroy = free,
    .plan = scissorhands_plan,
};

SINKD_POLICY_EXPORT const sinkd_policy *sinkd_policy_v1(void)
{
    return &scissorhands_policy;
}
