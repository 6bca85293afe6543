/*
 * Plan execution on the host: what a policy's plan (plugins/policy.h)
 * implies for one layer's lanes, computed from host arrays. The engine calls
 * these at eviction points (after copying scores off the device) and the
 * CPU engine uses them directly; the CUDA engine runs the same rules with
 * its own kernels and the tests compare both with this reference.
 *
 * Engine-agnostic: no KV store, no backend, no plugin state. Every function
 * is pure apart from writing the lanes' out/n_out, thread-safe, and reports
 * bad input with -EINVAL and a message, never by reading out of bounds.
 */
#ifndef SINKD_POLICY_PLAN_H
#define SINKD_POLICY_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "policy.h"

/* Allocate @plan's arrays for @geom and set every field to its documented
 * default. On success the caller owns the plan and frees it with
 * sinkd_plan_free. Errors: -EINVAL (bad geometry), -ENOMEM. */
int sinkd_plan_init(sinkd_policy_plan *plan, const sinkd_policy_geometry *geom);

/* Set every field and array element of an initialised plan back to the
 * defaults (what plan() callbacks start from). Can't fail. */
void sinkd_plan_reset(sinkd_policy_plan *plan, const sinkd_policy_geometry *geom);

/* Free the arrays; the plan is zeroed and may be initialised again. */
void sinkd_plan_free(sinkd_policy_plan *plan);

/* Copy @src's fields and arrays into @dst (both initialised for @geom). */
void sinkd_plan_copy(sinkd_policy_plan *dst, const sinkd_policy_plan *src,
                     const sinkd_policy_geometry *geom);

/* Check that @plan is self-consistent for @geom (enums in range, budgets
 * that hold their sinks and recent window, selection sources that select,
 * ...). Returns 0, or -EINVAL with the first problem written to @err. */
int sinkd_plan_validate(const sinkd_policy_plan *plan, const sinkd_policy_geometry *geom,
                        char *err, size_t errlen);

/* Tokens lane (layer, kv_head) keeps after an eviction: the head kind's
 * rule, the layer's budget, or 0 = unlimited. Arguments must be in range. */
int32_t sinkd_plan_lane_budget(const sinkd_policy_plan *plan, const sinkd_policy_geometry *geom,
                               int32_t layer, int32_t kv_head);

/* Length above which the engine evicts lane (layer, kv_head) during decode:
 * budget + slack under SINKD_EVICT_BUDGET, 0 (never) otherwise. After a
 * prompt under SINKD_EVICT_PREFILL the engine evicts lanes longer than
 * sinkd_plan_lane_budget() once. */
int32_t sinkd_plan_evict_threshold(const sinkd_policy_plan *plan, const sinkd_policy_geometry *geom,
                                   int32_t layer, int32_t kv_head);

/* The keep lists the plan implies for @n_lanes lanes of ONE layer (normally
 * its n_kv_heads lanes, in kv-head order). For each lane: everything when it
 * fits its budget; a STREAMING head keeps its first stream_sinks and last
 * stream_recent tokens; a FULL head keeps `sinks` first tokens, `recent` last
 * tokens and the top (budget - sinks - recent) of the rest by score, pooled
 * over the tokens before the recent window when the plan pools. Ties go to
 * the older token; NaN ranks lowest. Under SINKD_SCOPE_LAYER the FULL lanes'
 * scores are summed first (their lengths must match) and all keep the same
 * tokens. Lanes need score when the plan keeps a statistic (NULL reads as
 * all zero otherwise). Writes out[] ascending and n_out per lane.
 * Errors: -EINVAL (bad lane, mismatched lengths; @err says which), -ENOMEM. */
int sinkd_plan_keep(const sinkd_policy_plan *plan, const sinkd_policy_geometry *geom,
                    sinkd_policy_lane *lanes, int32_t n_lanes, char *err, size_t errlen);

/* Which layer's selection @layer attends with: -1 for dense attention (no
 * selection, or one of the first dense_layers), @layer itself when it
 * selects, or an earlier layer whose page lists it reuses. */
int32_t sinkd_plan_select_source(const sinkd_policy_plan *plan, int32_t layer);

/* The page lists the plan's selection implies for the lanes of a selecting
 * layer (sinkd_plan_select_source(layer) == layer). SELECT_PAGES ranks
 * lane.page_score (required), SELECT_TOKENS ranks lane.score (required) and
 * attends the pages holding the top tokens; a lane that has no more than k
 * pages (tokens) attends all. Writes out[] ascending and n_out per lane.
 * Errors: -EINVAL with @err, -ENOMEM. */
int sinkd_plan_select(const sinkd_policy_plan *plan, const sinkd_policy_geometry *geom,
                      sinkd_policy_lane *lanes, int32_t n_lanes, char *err, size_t errlen);

/* Validate a list a plugin returned: n_out in [0, limit] (evict: limit =
 * len) or [1, limit] (select: limit = n_pages), indices strictly ascending
 * (so no duplicates) and < limit. Returns 0, or -EPROTO with the first
 * offence described in @err. */
int sinkd_plan_check_list(const int32_t *list, int32_t n, int32_t limit, int32_t min_n,
                          char *err, size_t errlen);

#endif /* SINKD_POLICY_PLAN_H */
