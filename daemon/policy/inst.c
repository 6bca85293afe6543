/*
 * Instances: one plugin state per session, its plan, and the fallback to
 * `window` when the plugin misbehaves at run time.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct sinkd_policy_inst {
    policy__lib *lib;            /* one reference */
    void *state;                 /* the plugin's */
    sinkd_policy_geometry geom;
    sinkd_policy_plan plan;      /* validated, host overrides applied */
    char params[POLICY__PARAMS_LEN + 1]; /* what the state was made with */
    char reason[POLICY__ERR_LEN];        /* why it fell back; "" if it did not */
    /* [geom.n_kv_heads] the lanes as the host filled them, kept while a
     * callback runs: the plugin can write every field of its lanes, so
     * its output is checked against these and the fields are put back */
    sinkd_policy_lane *saved;
};

/* The host's own keys: slack=N and rope=absolute|cache. -1 = not given. */
typedef struct inst__host_keys {
    int32_t slack;
    int32_t rope;
} inst__host_keys;

static int inst__take_host_keys(sinkd_policy_params *p, inst__host_keys *hk, char *err,
                                size_t errlen)
{
    char v[64];
    hk->slack = hk->rope = -1;
    int found = policy__params_take(p, "slack", v, sizeof v);
    if (found != 0) {
        char *end;
        long x = strtol(v, &end, 10);
        if (found < 0 || *end != '\0' || end == v || x < 0 || x > 1 << 20) {
            snprintf(err, errlen, "slack: expected an integer in [0, 1048576], got '%.40s%s'", v,
                     found < 0 || strlen(v) > 40 ? "..." : "");
            return -EINVAL;
        }
        hk->slack = (int32_t)x;
    }
    found = policy__params_take(p, "rope", v, sizeof v);
    if (found != 0) {
        if (found > 0 && strcmp(v, "absolute") == 0)
            hk->rope = SINKD_POLICY_ROPE_ABSOLUTE;
        else if (found > 0 && strcmp(v, "cache") == 0)
            hk->rope = SINKD_POLICY_ROPE_CACHE;
        else {
            snprintf(err, errlen, "rope: expected absolute or cache, got '%.40s%s'", v,
                     found < 0 || strlen(v) > 40 ? "..." : "");
            return -EINVAL;
        }
    }
    return 0;
}

/* Ask the plugin for its plan into @plan (initialised), apply @hk, validate. */
static int inst__make_plan(policy__lib *lib, void *state, const sinkd_policy_geometry *geom,
                           const inst__host_keys *hk, sinkd_policy_plan *plan, char *err,
                           size_t errlen)
{
    char why[POLICY__ERR_LEN];
    sinkd_plan_reset(plan, geom);
    int rc = lib->desc.plan(state, plan);
    if (rc < 0) {
        snprintf(err, errlen, "%s: plan failed: %s", lib->desc.name, strerror(-rc));
        return rc;
    }
    plan->struct_size = sizeof *plan;
    if (hk->slack >= 0)
        plan->slack = hk->slack;
    if (hk->rope >= 0)
        plan->rope_mode = (uint8_t)hk->rope;
    rc = sinkd_plan_validate(plan, geom, why, sizeof why);
    if (rc < 0)
        snprintf(err, errlen, "%s: invalid plan: %s", lib->desc.name, why);
    return rc;
}

static int inst__geom_ok(const sinkd_policy_geometry *g)
{
    return g != NULL && g->n_layers >= 1 && g->n_layers <= 4096 && g->n_kv_heads >= 1 &&
           g->n_kv_heads <= 4096 && g->n_q_heads >= g->n_kv_heads &&
           g->n_q_heads % g->n_kv_heads == 0 && g->head_dim >= 1 && g->page_tokens >= 1 &&
           g->page_tokens <= SINKD_POLICY_MAX_TOKENS && g->max_tokens >= 1;
}

/* Parse @text and take the host's keys out of it. Returns the parameters
 * (free them) or NULL with *rc and @err set. */
static sinkd_policy_params *inst__params(const char *text, inst__host_keys *hk, int *rc,
                                         char *err, size_t errlen)
{
    sinkd_policy_params *pp = malloc(sizeof *pp); /* 6 KiB: kept off the stack */
    *rc = pp != NULL ? policy__params_parse(pp, text, err, errlen) : -ENOMEM;
    if (*rc == 0)
        *rc = inst__take_host_keys(pp, hk, err, errlen);
    if (*rc == 0)
        return pp;
    free(pp);
    return NULL;
}

/* Create a state + plan of @lib into the blank @inst. */
static int inst__open(sinkd_policy_inst *inst, policy__lib *lib, const char *params, char *err,
                      size_t errlen)
{
    inst__host_keys hk;
    int rc;
    sinkd_policy_params *pp = inst__params(params, &hk, &rc, err, errlen);
    if (pp == NULL)
        return rc;
    void *state = NULL;
    rc = lib->desc.create(&lib->host, &inst->geom, pp, &state);
    int created = rc >= 0;
    rc = policy__params_finish(pp, lib->desc.name, rc, err, errlen);
    free(pp);
    if (rc == 0)
        rc = sinkd_plan_init(&inst->plan, &inst->geom);
    if (rc == 0)
        rc = inst__make_plan(lib, state, &inst->geom, &hk, &inst->plan, err, errlen);
    if (rc < 0) {
        if (created)
            lib->desc.destroy(state);
        sinkd_plan_free(&inst->plan);
        return rc;
    }
    inst->lib = lib;
    inst->state = state;
    snprintf(inst->params, sizeof inst->params, "%s", params != NULL ? params : "");
    policy__lib_ref(lib);
    atomic_fetch_add(&lib->instances, 1);
    return 0;
}

/* Destroy @inst's state and drop its library (the plan stays). */
static void inst__close(sinkd_policy_inst *inst)
{
    policy__lib *lib = inst->lib;
    lib->desc.destroy(inst->state);
    atomic_fetch_sub(&lib->instances, 1);
    inst->lib = NULL;
    inst->state = NULL;
    policy__lib_unref(lib);
}

int policy__inst_create(policy__lib *lib, const sinkd_policy_geometry *geom, const char *params,
                        sinkd_policy_inst **out, char *err, size_t errlen)
{
    if (lib == NULL || out == NULL || !inst__geom_ok(geom)) {
        snprintf(err, errlen, "bad geometry");
        return -EINVAL;
    }
    sinkd_policy_inst *inst = calloc(1, sizeof *inst);
    if (inst != NULL)
        inst->saved = calloc((size_t)geom->n_kv_heads, sizeof *inst->saved);
    if (inst == NULL || inst->saved == NULL) {
        free(inst);
        return -ENOMEM;
    }
    inst->geom = *geom;
    inst->geom.struct_size = sizeof inst->geom;
    inst->geom._pad = 0;
    int rc = inst__open(inst, lib, params, err, errlen);
    if (rc < 0) {
        free(inst->saved);
        free(inst);
        return rc;
    }
    *out = inst;
    return 0;
}

void sinkd_policy_inst_destroy(sinkd_policy_inst *inst)
{
    if (inst == NULL)
        return;
    inst__close(inst);
    sinkd_plan_free(&inst->plan);
    free(inst->saved);
    free(inst);
}

int sinkd_policy_inst_reconfigure(sinkd_policy_inst *inst, const char *params, char *err,
                                  size_t errlen)
{
    if (inst == NULL)
        return -EINVAL;
    policy__lib *lib = inst->lib;
    if (lib->desc.reconfigure == NULL) {
        snprintf(err, errlen, "%s cannot be reconfigured; switch policies instead", lib->desc.name);
        return -EOPNOTSUPP;
    }
    sinkd_policy_plan plan;
    inst__host_keys hk;
    int rc;
    sinkd_policy_params *pp = inst__params(params, &hk, &rc, err, errlen);
    if (pp == NULL)
        return rc;
    int32_t taken = lib->desc.reconfigure(inst->state, pp);
    rc = policy__params_finish(pp, lib->desc.name, taken, err, errlen);
    free(pp);
    memset(&plan, 0, sizeof plan);
    if (rc == 0)
        rc = sinkd_plan_init(&plan, &inst->geom);
    if (rc == 0)
        rc = inst__make_plan(lib, inst->state, &inst->geom, &hk, &plan, err, errlen);
    if (rc < 0 && taken < 0)
        return rc;
    if (rc < 0) {
        /* the plugin took the params but they carry an unknown key or make
         * an unusable plan: give it the old ones back so that state and plan
         * agree again */
        char ignore[POLICY__ERR_LEN];
        int ignore_rc;
        sinkd_policy_params *old = inst__params(inst->params, &hk, &ignore_rc, ignore,
                                                sizeof ignore);
        if (old != NULL)
            lib->desc.reconfigure(inst->state, old);
        free(old);
        sinkd_plan_free(&plan);
        return rc;
    }
    sinkd_plan_copy(&inst->plan, &plan, &inst->geom);
    sinkd_plan_free(&plan);
    snprintf(inst->params, sizeof inst->params, "%s", params != NULL ? params : "");
    return 0;
}

const sinkd_policy_plan *sinkd_policy_inst_plan(const sinkd_policy_inst *inst)
{
    return &inst->plan;
}

const sinkd_policy_geometry *sinkd_policy_inst_geometry(const sinkd_policy_inst *inst)
{
    return &inst->geom;
}

const char *sinkd_policy_inst_name(const sinkd_policy_inst *inst)
{
    return inst->lib->desc.name;
}

const char *sinkd_policy_inst_params(const sinkd_policy_inst *inst)
{
    return inst->params;
}

const char *sinkd_policy_inst_version(const sinkd_policy_inst *inst)
{
    return inst->lib->desc.version;
}

uint32_t sinkd_policy_inst_generation(const sinkd_policy_inst *inst)
{
    return inst->lib->generation;
}

const char *sinkd_policy_inst_fallback_reason(const sinkd_policy_inst *inst)
{
    return inst->reason[0] != '\0' ? inst->reason : NULL;
}

int sinkd_policy_inst_fallback(sinkd_policy_inst *inst, const char *reason)
{
    if (inst == NULL)
        return -EINVAL;
    sinkd_policy_inst next;
    char params[32], err[POLICY__ERR_LEN];
    int32_t b = sinkd_plan_lane_budget(&inst->plan, &inst->geom, 0, 0);
    /* A validated plan's budgets are within window's range; the clamp keeps
     * the last resort from failing on its parameters should they ever part. */
    if (b > SINKD_POLICY_MAX_TOKENS)
        b = SINKD_POLICY_MAX_TOKENS;
    snprintf(params, sizeof params, b > 0 ? "window=%d" : "", b);
    memset(&next, 0, sizeof next);
    next.geom = inst->geom;
    int rc = inst__open(&next, policy__builtin("window"), params, err, sizeof err);
    if (rc < 0)
        return rc;
    policy__log(SINKD_POLICY_LOG_WARNING, "session falls back from %s to window: %s",
                inst->lib->desc.name, reason != NULL ? reason : "");
    inst__close(inst);
    sinkd_plan_free(&inst->plan);
    inst->lib = next.lib;
    inst->state = next.state;
    inst->plan = next.plan;
    snprintf(inst->params, sizeof inst->params, "%s", next.params);
    snprintf(inst->reason, sizeof inst->reason, "%s", reason != NULL ? reason : "fallback");
    return 0;
}

static int inst__lanes_ok(const sinkd_policy_inst *inst, const sinkd_policy_lane *lanes,
                          int32_t n_lanes, int pages)
{
    const sinkd_policy_geometry *g = &inst->geom;
    if (lanes == NULL || n_lanes < 1 || n_lanes > g->n_kv_heads)
        return 0;
    for (int32_t i = 0; i < n_lanes; i++) {
        const sinkd_policy_lane *l = &lanes[i];
        int32_t np = (int32_t)(((int64_t)l->len + g->page_tokens - 1) / g->page_tokens);
        if (l->layer != lanes[0].layer || l->layer < 0 || l->layer >= g->n_layers ||
            l->kv_head < 0 || l->kv_head >= g->n_kv_heads || l->len < 0 || l->out == NULL ||
            (l->len > 0 && l->pos == NULL) || (pages && l->n_pages != np))
            return 0;
    }
    return 1;
}

typedef int32_t (*inst__cb)(void *state, sinkd_policy_lane *lanes, int32_t n_lanes);

/* Run a plugin callback and check every lane's list. Only n_out and the
 * elements of out[] are the plugin's to write; whatever else it wrote to a
 * lane is undone before anyone reads it, and the list is checked against
 * the host's own len, n_pages and out. */
static int inst__run_checked(sinkd_policy_inst *inst, inst__cb cb, const char *what, int pages,
                             sinkd_policy_lane *lanes, int32_t n_lanes, char *err, size_t errlen)
{
    if (n_lanes < 1 || n_lanes > inst->geom.n_kv_heads) {
        snprintf(err, errlen, "%s: %d lanes for %d kv heads", what, n_lanes, inst->geom.n_kv_heads);
        return -EINVAL;
    }
    for (int32_t i = 0; i < n_lanes; i++)
        lanes[i].n_out = -1;
    memcpy(inst->saved, lanes, (size_t)n_lanes * sizeof *lanes);
    int32_t rc = cb(inst->state, lanes, n_lanes);
    for (int32_t i = 0; i < n_lanes; i++) {
        int32_t n_out = lanes[i].n_out;
        lanes[i] = inst->saved[i];
        lanes[i].n_out = n_out;
    }
    if (rc < 0) {
        snprintf(err, errlen, "%s %s: %s returned %d (%s)", inst->lib->desc.name,
                 inst->lib->desc.version, what, rc, strerror(-rc));
        return rc;
    }
    for (int32_t i = 0; i < n_lanes; i++) {
        sinkd_policy_lane *l = &lanes[i];
        char why[160];
        if (sinkd_plan_check_list(l->out, l->n_out, pages ? l->n_pages : l->len, pages, why,
                                  sizeof why) < 0) {
            snprintf(err, errlen, "%s %s: %s, layer %d head %d: %s", inst->lib->desc.name,
                     inst->lib->desc.version, what, l->layer, l->kv_head, why);
            return -EPROTO;
        }
    }
    return 0;
}

int policy__inst_evict_checked(sinkd_policy_inst *inst, sinkd_policy_lane *lanes, int32_t n_lanes,
                               char *err, size_t errlen)
{
    if (inst->lib->desc.evict == NULL)
        return sinkd_plan_keep(&inst->plan, &inst->geom, lanes, n_lanes, err, errlen);
    return inst__run_checked(inst, inst->lib->desc.evict, "evict", 0, lanes, n_lanes, err, errlen);
}

int policy__inst_select_checked(sinkd_policy_inst *inst, sinkd_policy_lane *lanes,
                                int32_t n_lanes, char *err, size_t errlen)
{
    if (inst->lib->desc.select == NULL)
        return sinkd_plan_select(&inst->plan, &inst->geom, lanes, n_lanes, err, errlen);
    return inst__run_checked(inst, inst->lib->desc.select, "select", 1, lanes, n_lanes, err,
                             errlen);
}

/* Shared tail of evict/select: on a plugin failure fall back and answer
 * with window's rule. */
static int inst__dispatch(sinkd_policy_inst *inst, sinkd_policy_lane *lanes, int32_t n_lanes,
                          int select)
{
    if (inst == NULL || !inst__lanes_ok(inst, lanes, n_lanes, select))
        return -EINVAL;
    inst__cb cb = select ? inst->lib->desc.select : inst->lib->desc.evict;
    char err[POLICY__ERR_LEN];
    int rc = select ? policy__inst_select_checked(inst, lanes, n_lanes, err, sizeof err)
                    : policy__inst_evict_checked(inst, lanes, n_lanes, err, sizeof err);
    if (rc == 0 || cb == NULL)
        return rc;
    rc = sinkd_policy_inst_fallback(inst, err);
    if (rc < 0)
        return rc;
    if (select) { /* window never selects: attend every page */
        for (int32_t i = 0; i < n_lanes; i++) {
            for (int32_t p = 0; p < lanes[i].n_pages; p++)
                lanes[i].out[p] = p;
            lanes[i].n_out = lanes[i].n_pages;
        }
    } else {
        rc = sinkd_plan_keep(&inst->plan, &inst->geom, lanes, n_lanes, NULL, 0);
        if (rc < 0)
            return rc;
    }
    return SINKD_POLICY_FELL_BACK;
}

int sinkd_policy_inst_evict(sinkd_policy_inst *inst, sinkd_policy_lane *lanes, int32_t n_lanes)
{
    return inst__dispatch(inst, lanes, n_lanes, 0);
}

int sinkd_policy_inst_select(sinkd_policy_inst *inst, sinkd_policy_lane *lanes, int32_t n_lanes)
{
    return inst__dispatch(inst, lanes, n_lanes, 1);
}
