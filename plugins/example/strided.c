/*
 * strided: an example policy built outside the sinkd tree. It keeps the
 * attention sinks, a recent window, and in between only tokens whose
 * ORIGINAL position is a multiple of `stride` (a dilated cache), newest
 * first, up to the budget. Ranking by position is something a plan cannot
 * say, so this policy uses the evict callback: the escape hatch, called on
 * the host at each eviction point with the lanes' positions.
 *
 * Build and install:
 *   cc -shared -fPIC -O2 -I/usr/include/sinkd strided.c -o strided.so
 *   install -m 0644 strided.so /usr/lib/x86_64-linux-gnu/sinkd/plugins/
 *
 *   budget=512 sinks=4 recent=128 stride=8
 */
#include <errno.h>
#include <stdlib.h>

#include "policy.h"

typedef struct strided {
    int64_t budget, sinks, recent, stride;
} strided;

static int32_t strided_create(const sinkd_policy_host *host, const sinkd_policy_geometry *geom,
                              const sinkd_policy_params *params, void **state)
{
    (void)geom;
    strided *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    int32_t rc = host->param_int(params, "budget", 512, 2, 1 << 24, &s->budget);
    if (rc == 0)
        rc = host->param_int(params, "sinks", 4, 0, s->budget, &s->sinks);
    if (rc == 0)
        rc = host->param_int(params, "recent", s->budget / 4, 1, s->budget - s->sinks, &s->recent);
    if (rc == 0)
        rc = host->param_int(params, "stride", 8, 1, 1 << 20, &s->stride);
    if (rc < 0) {
        free(s);
        return rc;
    }
    *state = s;
    return 0;
}

/* The host still needs to know when to call evict and what to protect. */
static int32_t strided_plan(void *state, sinkd_policy_plan *plan)
{
    const strided *s = state;
    plan->evict_at = SINKD_EVICT_BUDGET;
    plan->budget = (int32_t)s->budget;
    plan->sinks = (int32_t)s->sinks;
    plan->recent = (int32_t)s->recent;
    return 0;
}

static int32_t strided_evict(void *state, sinkd_policy_lane *lanes, int32_t n_lanes)
{
    const strided *s = state;
    for (int32_t i = 0; i < n_lanes; i++) {
        sinkd_policy_lane *l = &lanes[i];
        int32_t lo = (int32_t)s->sinks, hi = l->len - (int32_t)s->recent, n = 0;
        if (l->len <= s->budget) {
            lo = hi = l->len; /* keep everything: all of it counts as "sinks" */
        }
        int64_t room = s->budget - s->sinks - s->recent;
        int32_t first = hi; /* the oldest strided token that fits */
        for (int32_t t = hi - 1; t >= lo && room > 0; t--) {
            if (l->pos[t] % s->stride == 0) {
                first = t;
                room--;
            }
        }
        for (int32_t t = 0; t < lo; t++)
            l->out[n++] = t;
        for (int32_t t = first; t < hi; t++)
            if (l->pos[t] % s->stride == 0)
                l->out[n++] = t;
        for (int32_t t = hi > lo ? hi : lo; t < l->len; t++)
            l->out[n++] = t;
        l->n_out = n;
    }
    return 0;
}

static const sinkd_policy strided_policy = {
    .abi_major = SINKD_POLICY_ABI_MAJOR,
    .abi_minor = SINKD_POLICY_ABI_MINOR,
    .struct_size = sizeof(sinkd_policy),
    .caps = SINKD_POLICY_CAP_EVICT,
    .name = "strided",
    .version = "1.0.0",
    .summary = "example: sinks + recent + every stride-th position",
    .selftest_params = "budget=64",
    .create = strided_create,
    .destroy = free,
    .plan = strided_plan,
    .evict = strided_evict,
};

SINKD_POLICY_EXPORT const sinkd_policy *sinkd_policy_v1(void)
{
    return &strided_policy;
}
