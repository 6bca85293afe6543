/*
 * tidal: TidalDecode (Yang et al., "TidalDecode: Fast and Accurate LLM
 * Decoding with Position Persistent Sparse Attention", 2024, §3). The tokens
 * that matter stay much the same from one layer to the next, so only a few
 * layers choose: the first two layers attend densely, the third does full
 * attention and picks the top-k tokens of each kv head, and every later
 * layer attends to those same tokens, except that one re-selection layer in
 * the middle of the stack picks afresh for the layers above it (§3.2;
 * layer 13 of Llama-3-8B's 32, which `reselect` scales by default).
 * Nothing is evicted.
 *
 *   budget=2048             tokens selected per kv head
 *   dense=2                 leading dense layers; the next one selects
 *   reselect=13*n_layers/32 re-selection layer (0 = none)
 */
#include <errno.h>
#include <stdlib.h>

#include "policy.h"

typedef struct tidal_state {
    int64_t budget, dense, reselect;
    int32_t n_layers;
} tidal_state;

static int32_t tidal_create(const sinkd_policy_host *host, const sinkd_policy_geometry *geom,
                            const sinkd_policy_params *params, void **state)
{
    int32_t nl = geom->n_layers;
    tidal_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    s->n_layers = nl;
    int32_t rc = host->param_int(params, "budget", 2048, 1, 1 << 24, &s->budget);
    if (rc == 0)
        rc = host->param_int(params, "dense", nl < 3 ? nl - 1 : 2, 0, nl - 1, &s->dense);
    if (rc == 0)
        rc = host->param_int(params, "reselect", 13 * (int64_t)nl / 32, 0, nl - 1, &s->reselect);
    if (rc < 0) {
        free(s);
        return rc;
    }
    if (s->reselect <= s->dense) /* at or below the first selection: no re-selection */
        s->reselect = 0;
    *state = s;
    return 0;
}

static int32_t tidal_plan(void *state, sinkd_policy_plan *plan)
{
    const tidal_state *s = state;
    plan->evict_at = SINKD_EVICT_NEVER;
    plan->select = SINKD_SELECT_TOKENS;
    plan->select_tokens = (int32_t)s->budget;
    plan->dense_layers = (int32_t)s->dense;
    for (int32_t l = (int32_t)s->dense; l < s->n_layers; l++)
        plan->select_src[l] = s->reselect > 0 && l >= s->reselect ? (int32_t)s->reselect
                                                                 : (int32_t)s->dense;
    return 0;
}

static const sinkd_policy tidal_policy = {
    .abi_major = SINKD_POLICY_ABI_MAJOR,
    .abi_minor = SINKD_POLICY_ABI_MINOR,
    .struct_size = sizeof(sinkd_policy),
    .name = "tidal",
    .version = "1.0.0",
    .summary = "TidalDecode: token selection at a few layers, reused by the rest",
    .selftest_params = "budget=64",
    .create = tidal_create,
    .destroy = free,
    .plan = tidal_plan,
};

SINKD_POLICY_EXPORT const sinkd_policy *sinkd_policy_v1(void)
{
    return &tidal_policy;
}
