/* Deferred decode scores (sinkd_decode_args.defer): a decode step of a plan
 * whose statistic the attention op keeps (SUM, DECAY, LAST, the decode side
 * of the observation window) leaves its probabilities pending in each
 * session's deferral block, and the next step's attention applies them
 * while it streams the same keys anyway: a step pays its scores once,
 * without a logits buffer or a second pass (bench/attention/NOTES.md).
 *
 * A rule over each step's whole row (QUANTILE, GUMBEL) runs in rows mode:
 * the next step's attention writes the pending row into ENG_SLOT_PREV and
 * the rule (exec.c's post step) combines it into the scores one step late,
 * the same arithmetic on the same row, without the STASH pass, the logits
 * and the score pass of an immediate step.
 *
 * Pending probabilities are settled (ops->score_flush) before anything
 * else reads scores or moves keys: an eviction of that layer, a prefill
 * (its own scoring), a policy swap, a snapshot, a truncation, a step that
 * does not defer or defers under another op. The host keeps a flag per
 * layer so that settling a session with nothing pending costs nothing. */
#include "engine_internal.h"
#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static size_t defer__bytes(const sinkd_engine *e, const eng_session *s)
{
    const sinkd_job_geometry *g = &s->geom;

    return sinkd_defer_bytes(g->layers, g->kv_heads, g->q_heads / g->kv_heads, g->head_dim,
                             sinkd_dtype_bytes((sinkd_dtype)sinkd_kv_pool_get(e->kv)->dtype, 1));
}

/* Give up @s's block, as a spare when @spare and there is room (as many
 * as one step can use; the stream orders a spare's next memset after its
 * last owner's kernels). */
static void defer__release(sinkd_engine *e, eng_session *s, bool spare)
{
    if (s->defer && spare && e->defer_spare && e->n_defer_spare < (size_t)e->max_batch) {
        e->defer_spare[e->n_defer_spare++] = (struct eng_defer_spare){s->defer, defer__bytes(e, s)};
        s->defer = NULL;
    }
    if (s->defer)
        e->be->ops->free(e->be, s->defer);
    free(s->defer_pend);
    s->defer = NULL;
    s->defer_pend = NULL;
}

/* The op a step of @x defers under: a row rule's rows are written. */
static int32_t defer__op(const eng_exec *x)
{
    return x->post ? SINKD_SCORE_WRITE : x->score_op;
}

/* Whether a block left under plan @a can go on under @b: the same op and
 * decay, and for rows the same rule. */
static bool defer__same(const eng_exec *a, const eng_exec *b)
{
    if (defer__op(a) != defer__op(b) || a->decay != b->decay || a->post != b->post)
        return false;
    return !a->post || (a->stat == b->stat && a->quantile == b->quantile && a->keep == b->keep &&
                        a->temperature == b->temperature);
}

int eng_defer_settle(sinkd_engine *e, eng_session *s, int32_t layer)
{
    const sinkd_job_geometry *g = &s->geom;
    int32_t first = layer < 0 ? 0 : layer, last = layer < 0 ? g->layers - 1 : layer;
    int rc;

    if (!s->defer)
        return 0;
    const bool rows = s->defer_x.post;
    if (rows && ((rc = eng_exec_prev(e)) < 0 ||
                          (rc = eng_dev_reserve(e, ENG_SLOT_ROW_LEN,
                                                (size_t)g->kv_heads * sizeof(int32_t))) < 0))
        return rc;
    for (int32_t l = first; l <= last; l++) {
        if (!s->defer_pend[l])
            continue;
        sinkd_score_flush_args a = {
            .pool = sinkd_kv_pool_get(e->kv), .n_q_heads = g->q_heads, .n_kv_heads = g->kv_heads,
            .head_dim = g->head_dim, .layer = l, .layers = g->layers,
            .rope = sinkd_model_rope(s->m->model, s->defer_rope_mode), .defer = s->defer,
            .score_op = defer__op(&s->defer_x), .score_decay = s->defer_x.decay,
            .row = rows ? e->dbuf[ENG_SLOT_PREV] : NULL,
            .row_len = rows ? e->dbuf[ENG_SLOT_ROW_LEN] : NULL,
        };
        if ((rc = sinkd_kv_lanes_seq(s->seq, l, &a.lanes)) < 0 ||
            (rc = e->be->ops->score_flush(e->be, &a)) < 0 ||
            (rows && (rc = eng_exec_row_rule(e, s, l, &a.lanes)) < 0))
            return rc;
        s->defer_pend[l] = 0;
    }
    return 0;
}

/* Whether @c's step can defer: a backend that does, a statistic the
 * attention op keeps by itself or a row rule, dense attention, a shape the
 * kernel takes. */
static bool defer__step_can(const eng_fwd_ctx *c)
{
    const sinkd_engine *e = c->e;
    const eng_session *s = c->ss[0];
    const sinkd_job_geometry *g = &s->geom;
    int32_t op = defer__op(&c->x);

    return e->score_defer && e->be->ops->score_flush && s->m &&
           c->x.select == SINKD_SELECT_DENSE && !c->x.host_select &&
           (op == SINKD_SCORE_WRITE || op == SINKD_SCORE_ADD || op == SINKD_SCORE_DECAY) &&
           sinkd_defer_takes(g->q_heads / g->kv_heads, g->head_dim, e->page_tokens);
}

/* @s's block, allocated and zeroed on its first deferring step. A session
 * that could not have one scores at once from then on: trying again every
 * step would cost an allocation a step on a device already full. */
static int defer__block(sinkd_engine *e, eng_session *s)
{
    size_t bytes = defer__bytes(e, s);
    int rc;

    if (s->defer)
        return 0;
    if (s->defer_off)
        return -ENOMEM;
    for (size_t i = 0; i < e->n_defer_spare; i++)
        if (e->defer_spare[i].bytes == bytes) {
            s->defer = e->defer_spare[i].p;
            e->defer_spare[i] = e->defer_spare[--e->n_defer_spare];
            break;
        }
    if (!(s->defer_pend = calloc((size_t)s->geom.layers, 1)))
        rc = -ENOMEM;
    else if (s->defer || (rc = e->be->ops->alloc(e->be, &s->defer, bytes)) == 0)
        rc = e->be->ops->memset0(e->be, s->defer, bytes); /* a spare holds its last owner's */
    if (rc < 0) {
        defer__release(e, s, false);
        s->defer_off = true;
        sinkd_log(SINKD_LOG_WARNING, "session %llu: no device memory for deferred scores; "
                  "scoring every step at once", (unsigned long long)s->id);
    }
    return rc;
}

int eng_defer_begin(eng_fwd_ctx *c)
{
    sinkd_engine *e = c->e;
    bool on = defer__step_can(c), rows = c->x.post;
    size_t bytes = (size_t)c->n * sizeof(void *);
    size_t row_bytes = (size_t)c->ss[0]->geom.layers * c->n_lanes * sizeof(int32_t);
    int rc;

    c->defer = false;
    /* Out of device memory for a block or the pointers: this step scores
     * at once, which needs nothing more. */
    for (int32_t i = 0; i < c->n && on; i++)
        on = defer__block(e, c->ss[i]) == 0;
    on = on && eng_dev_reserve(e, ENG_SLOT_DEFER, bytes) == 0 &&
         eng_host_reserve(e, ENG_SLOT_DEFER, bytes / sizeof(float)) == 0 &&
         (!rows || eng_dev_reserve(e, ENG_SLOT_ROW_LEN, row_bytes) == 0);
    for (int32_t i = 0; i < c->n; i++) {
        eng_session *s = c->ss[i];
        if (s->defer && (!on || !defer__same(&s->defer_x, &c->x) ||
                         s->defer_rope_mode != s->rope_mode) &&
            (rc = eng_defer_settle(e, s, -1)) < 0)
            return rc;
    }
    if (!on)
        return 0;
    /* Rows: a slice of lengths a layer, zeroed a step (exec.c). A layer
     * whose attention call fails before its kernel runs leaves zeros, and
     * the rule eng_fwd_end still runs after it does nothing. */
    if (rows && (rc = e->be->ops->memset0(e->be, e->dbuf[ENG_SLOT_ROW_LEN], row_bytes)) < 0)
        return rc;
    /* The pointers go up only when the group changed: steps of the same
     * sessions reuse the device copy of the last upload. */
    void **h = (void **)e->hbuf[ENG_SLOT_DEFER];
    bool same = e->defer_up_n == c->n && e->defer_up_dev == e->dbuf[ENG_SLOT_DEFER];
    for (int32_t i = 0; i < c->n; i++) {
        eng_session *s = c->ss[i];
        same = same && h[i] == s->defer;
        h[i] = s->defer;
        s->defer_x = c->x;
        s->defer_rope_mode = s->rope_mode;
        /* before the step: a step that fails half-way leaves some layers
         * pending, and settling a layer with nothing pending is a no-op */
        memset(s->defer_pend, 1, (size_t)s->geom.layers);
    }
    if (!same) {
        e->defer_up_n = 0;
        if ((rc = e->be->ops->h2d(e->be, e->dbuf[ENG_SLOT_DEFER], h, bytes)) < 0)
            return rc;
        e->defer_up_n = c->n;
        e->defer_up_dev = e->dbuf[ENG_SLOT_DEFER];
    }
    c->defer = true;
    return 0;
}

void eng_defer_drop(sinkd_engine *e, eng_session *s)
{
    if (!s->defer)
        return;
    if (e->be->ops->memset0(e->be, s->defer, defer__bytes(e, s)) < 0) {
        defer__release(e, s, false); /* a block in an unknown state is no block */
        s->defer_off = true;
        return;
    }
    memset(s->defer_pend, 0, (size_t)s->geom.layers);
}

size_t eng_defer_bytes(const sinkd_engine *e, const eng_session *s)
{
    return s->defer ? defer__bytes(e, s) : 0;
}

void eng_defer_free(sinkd_engine *e, eng_session *s)
{
    defer__release(e, s, true);
}

void eng_defer_spares_free(sinkd_engine *e)
{
    for (size_t i = 0; i < e->n_defer_spare; i++)
        e->be->ops->free(e->be, e->defer_spare[i].p);
    free(e->defer_spare);
    e->defer_spare = NULL;
    e->n_defer_spare = 0;
}
