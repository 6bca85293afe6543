/*
 * Deliberately broken (and one deliberately faulty) policy plugins for the
 * loader tests, one source built once per defect (tests/plugins/CMakeLists.txt
 * defines BROKEN_<DEFECT>):
 *
 *   WRONG_MAJOR    abi_major 2                        -> refused
 *   SHORT_STRUCT   struct_size 64                     -> refused
 *   UNKNOWN_CAP    caps bit 7                         -> refused
 *   NULL_PLAN      required plan callback NULL        -> refused
 *   CAPS_MISMATCH  evict callback without its cap bit -> refused
 *   NO_ENTRY       no sinkd_policy_v1 symbol          -> refused
 *   SELFTEST_FAIL  evict returns an unsorted list     -> refused by the self-test
 *   NEWER_MINOR    minor 99 and a longer descriptor   -> loads
 *   FAULTY         behaves in the self-test, then misbehaves as fault=... says
 *   PROBE          a good policy "probe" exporting its build generation
 *   PROBE_RECONF   the probe with a reconfigure callback (budget=...)
 *   HUGE_STREAM    no callbacks; a streaming head keeping 2^31 - 1 + 1 tokens
 *                  (an int32 sum that wraps)          -> refused by the plan check
 *   HUGE_SELECT    no callbacks; token selection of 3 << 26 pages, whose
 *                  tokens overflow int32              -> refused by the plan check
 *
 * Every variant takes budget=N (default 32; any int32 >= 0, so that tests
 * can ask for plans past the host's bounds).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

#ifndef PROBE_GEN
#define PROBE_GEN 0
#endif

/* Read by the reload test through dlsym on each loaded copy. */
SINKD_POLICY_EXPORT const int sinkd_test_probe_generation = PROBE_GEN;

/* grow: evict lengthens its lanes (len * 4) and keeps indices only valid
 * for the longer lane; bigpages: select claims 2^26 pages and returns an
 * invalid list; moveout: evict points out at its own array holding a valid
 * list, leaving the host's untouched. */
enum {
    FAULT_NONE, FAULT_OOB, FAULT_DUP, FAULT_UNSORTED, FAULT_LONG, FAULT_ERROR, FAULT_PAGES,
    FAULT_GROW, FAULT_BIGPAGES, FAULT_MOVEOUT,
};
static const char *const fault_names[] = {"none", "oob", "dup", "unsorted", "long", "error",
                                          "pages", "grow", "bigpages", "moveout"};

typedef struct broken_state {
    const sinkd_policy_host *host;
    int fault;
    int64_t budget;
} broken_state;

static int32_t broken_budget(const sinkd_policy_host *host, const sinkd_policy_params *params,
                             broken_state *s)
{
    return host->param_int(params, "budget", 32, 0, INT32_MAX, &s->budget);
}

static int32_t broken_create(const sinkd_policy_host *host, const sinkd_policy_geometry *geom,
                             const sinkd_policy_params *params, void **state)
{
    (void)geom;
    const char *fault;
    int32_t rc = host->param_str(params, "fault", &fault);
    if (rc < 0)
        return rc;
    broken_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    for (int i = 0; fault != NULL && i < (int)(sizeof fault_names / sizeof *fault_names); i++)
        if (strcmp(fault, fault_names[i]) == 0)
            s->fault = i;
    s->host = host;
    rc = broken_budget(host, params, s);
    if (rc < 0) {
        free(s);
        return rc;
    }
    *state = s;
    return 0;
}

#ifdef BROKEN_PROBE_RECONF
static int32_t broken_reconfigure(void *state, const sinkd_policy_params *params)
{
    broken_state next = *(broken_state *)state;
    int32_t rc = broken_budget(next.host, params, &next);
    if (rc == 0)
        *(broken_state *)state = next;
    return rc;
}
#endif

static int32_t broken_plan(void *state, sinkd_policy_plan *plan)
{
    const broken_state *s = state;
    plan->stat = SINKD_STAT_SUM;
    plan->evict_at = SINKD_EVICT_BUDGET;
    plan->budget = (int32_t)s->budget;
    plan->select = SINKD_SELECT_TOKENS;
    plan->select_tokens = 32;
#if defined(BROKEN_HUGE_STREAM)
    plan->head_kind[0] = SINKD_HEAD_STREAMING;
    plan->stream_sinks = INT32_MAX;
    plan->stream_recent = 1;
#elif defined(BROKEN_HUGE_SELECT)
    plan->select_tokens = 0;
    plan->select_pages = 3 << 26;
#endif
    return 0;
}

/* Keep the last half of each lane, then apply the fault. */
static int32_t broken_evict(void *state, sinkd_policy_lane *lanes, int32_t n_lanes)
{
    const broken_state *s = state;
    if (s->fault == FAULT_ERROR)
        return -EIO;
    static int32_t own[1 << 12];
    for (int32_t i = 0; i < n_lanes; i++) {
        sinkd_policy_lane *l = &lanes[i];
        if (s->fault == FAULT_GROW) {
            int32_t len = l->len;
            l->len = 4 * len;
            for (int32_t t = 0; t < len; t++)
                l->out[t] = 3 * len + t;
            l->n_out = len;
            continue;
        }
        if (s->fault == FAULT_MOVEOUT && l->len <= (int32_t)(sizeof own / sizeof *own)) {
            l->out = own;
            for (int32_t t = 0; t < l->len; t++)
                own[t] = t;
            l->n_out = l->len;
            continue;
        }
        l->n_out = 0;
        for (int32_t t = l->len / 2; t < l->len; t++)
            l->out[l->n_out++] = t;
#ifdef BROKEN_SELFTEST_FAIL
        l->out[0] = l->len - 1;
#endif
        if (l->n_out < 2)
            continue;
        if (s->fault == FAULT_OOB)
            l->out[l->n_out - 1] = l->len;
        else if (s->fault == FAULT_DUP)
            l->out[1] = l->out[0];
        else if (s->fault == FAULT_UNSORTED)
            l->out[0] = l->out[1] + 1;
        else if (s->fault == FAULT_LONG)
            l->n_out = l->len + 1;
    }
    return 0;
}

/* Attend to the last page; fault=pages names one past the end. */
static int32_t broken_select(void *state, sinkd_policy_lane *lanes, int32_t n_lanes)
{
    const broken_state *s = state;
    for (int32_t i = 0; i < n_lanes; i++) {
        if (s->fault == FAULT_BIGPAGES) {
            lanes[i].n_pages = 1 << 26;
            lanes[i].n_out = -7;
            continue;
        }
        lanes[i].out[0] = lanes[i].n_pages - (s->fault == FAULT_PAGES ? 0 : 1);
        lanes[i].n_out = 1;
    }
    return 0;
}

#ifdef BROKEN_NEWER_MINOR
/* A descriptor from a future minor: the same prefix, then fields this host
 * has never heard of. */
typedef struct future_policy {
    sinkd_policy v1;
    int32_t (*future_callback)(void *state);
    uint64_t future_flags;
} future_policy;
#endif

#if defined(BROKEN_PROBE) || defined(BROKEN_PROBE_RECONF)
#define BROKEN_NAME "probe"
#elif defined(BROKEN_NEWER_MINOR)
#define BROKEN_NAME "future"
#else
#define BROKEN_NAME "broken"
#endif

#define BROKEN_STR_(x) #x
#define BROKEN_STR(x) BROKEN_STR_(x)
#define BROKEN_V1                                                                  \
    {                                                                              \
        .abi_major = SINKD_POLICY_ABI_MAJOR,                                       \
        .abi_minor = SINKD_POLICY_ABI_MINOR,                                       \
        .struct_size = sizeof(sinkd_policy),                                       \
        .caps = SINKD_POLICY_CAP_EVICT | SINKD_POLICY_CAP_SELECT,                  \
        .name = BROKEN_NAME,                                                       \
        .version = "0.0." BROKEN_STR(PROBE_GEN),                                   \
        .summary = "test plugin",                                                  \
        .create = broken_create,                                                   \
        .destroy = free,                                                           \
        .plan = broken_plan,                                                       \
        .evict = broken_evict,                                                     \
        .select = broken_select,                                                   \
    }

#ifdef BROKEN_NEWER_MINOR
static const future_policy desc_future = {.v1 = BROKEN_V1, .future_flags = ~0ull};
#define DESC (&desc_future.v1)
#else
static const sinkd_policy desc_v1 = BROKEN_V1;
#define DESC (&desc_v1)
#endif

#ifndef BROKEN_NO_ENTRY
SINKD_POLICY_EXPORT const sinkd_policy *sinkd_policy_v1(void)
{
    static sinkd_policy d;
    d = *DESC;
#if defined(BROKEN_WRONG_MAJOR)
    d.abi_major = SINKD_POLICY_ABI_MAJOR + 1;
#elif defined(BROKEN_SHORT_STRUCT)
    d.struct_size = 64;
#elif defined(BROKEN_UNKNOWN_CAP)
    d.caps |= 1u << 7;
#elif defined(BROKEN_NULL_PLAN)
    d.plan = NULL;
#elif defined(BROKEN_CAPS_MISMATCH)
    d.caps &= ~(uint32_t)SINKD_POLICY_CAP_EVICT;
#elif defined(BROKEN_HUGE_STREAM) || defined(BROKEN_HUGE_SELECT)
    /* the plan's own rules must run, so no callback stands in for them */
    d.caps = 0;
    d.evict = NULL;
    d.select = NULL;
#elif defined(BROKEN_PROBE_RECONF)
    d.caps |= SINKD_POLICY_CAP_RECONFIGURE;
    d.reconfigure = broken_reconfigure;
#elif defined(BROKEN_NEWER_MINOR)
    static future_policy f;
    f = desc_future;
    f.v1.abi_minor = 99;
    f.v1.struct_size = sizeof f;
    return &f.v1; /* the host reads the prefix it knows */
#endif
    return &d;
}
#else
/* The right descriptor behind the wrong name. */
SINKD_POLICY_EXPORT const sinkd_policy *sinkd_policy_v0(void)
{
    return DESC;
}
#endif
