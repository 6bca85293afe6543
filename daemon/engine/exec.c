/* Plan execution inside a forward: the model hooks that run before each
 * attention op, and the work due after it.
 *
 * Statistics the attention op keeps itself (SUM, DECAY, LAST, the prefill
 * observation window) are its score_op. A rule that needs the whole row of
 * this step's probabilities (QUANTILE, GUMBEL) and token selection
 * (SELECT_TOKENS) run around the op: the hook stashes the scores
 * (ops->stat STASH), the op writes p, and the post step of that layer
 * ranks and combines. The model calls no hook after attention, so a layer's
 * post step runs in the next layer's hook (before its attention: what a
 * reusing layer needs) or, for the last layer, in eng_fwd_end. Everything
 * stays on the device: the hook copies the layer's lane arrays aside on the
 * stream (the store rebuilds its own for the next layer), so the post step
 * costs no upload and no host wait.
 *
 * Under deferral (defer.c) a QUANTILE or GUMBEL step stashes nothing: the
 * attention op writes the previous step's row into ENG_SLOT_PREV and the
 * post step runs the rule on that row (stat row_len), one step late.
 *
 * Scores that no rule reads (statistic NONE or KEY_NORM, which is computed
 * afresh at each eviction point) are not stashed around a token selection:
 * the selecting layer's probabilities simply overwrite them.
 *
 * Selection: SELECT_PAGES ranks pages by the Quest bound (ops->topk_pages)
 * before the selecting layer's attention, which attends them;
 * SELECT_TOKENS lets the selecting layer attend densely and picks the pages
 * of its top-k tokens afterwards (ops->topk_tokens). Later layers reuse the
 * rows of their source layer. When k covers every lane of the group the
 * step attends densely, which is the same computation.
 *
 * A plugin with a select callback ranks on the host instead: page bounds or
 * scores are copied off the device and the callback runs per step and
 * selecting layer (a group of one session). Correct and slow; documented
 * as such in plugins/policy.h. */
#include "engine_internal.h"
#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint64_t exec__mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static const sinkd_policy_plan *exec__plan(const eng_fwd_ctx *c)
{
    return sinkd_policy_inst_plan(c->ss[0]->inst);
}

static int32_t *exec__row(const eng_fwd_ctx *c, int32_t layer)
{
    return (int32_t *)c->e->dbuf[ENG_SLOT_SEL_PAGES] + (size_t)layer * c->n_lanes * c->width;
}

/* The layer whose selection @layer attends with, -1 for dense. */
static int32_t exec__source(const eng_fwd_ctx *c, int32_t layer)
{
    if (c->width == 0 || c->fell_back)
        return -1;
    return sinkd_plan_select_source(exec__plan(c), layer);
}

/* The noise stream (GUMBEL) of the step of the group led by @s that
 * consumed position s->tokens - @back. */
static uint64_t exec__seed(const eng_session *s, int64_t back)
{
    return exec__mix((uint64_t)s->id ^ exec__mix((uint64_t)(s->tokens - back)));
}

static sinkd_stat_args exec__stat_args(const sinkd_engine *e, const eng_exec *x, const sinkd_lanes *ln,
                                       int32_t op, int32_t layer, int32_t head_dim, uint64_t seed,
                                       const int32_t *row_len)
{
    return (sinkd_stat_args){
        .pool = sinkd_kv_pool_get(e->kv), .lanes = *ln, .op = op, .head_dim = head_dim,
        .quantile = x->quantile, .decay = op == SINKD_STAT_OP_QUANTILE ? x->keep : x->decay,
        .temperature = x->temperature, .seed = seed ^ exec__mix((uint64_t)layer),
        .prev = e->dbuf[ENG_SLOT_PREV], .row_len = row_len,
    };
}

static int exec__stat_on(sinkd_engine *e, const eng_exec *x, const sinkd_lanes *ln, int32_t op,
                         int32_t layer, int32_t head_dim, uint64_t seed, const int32_t *row_len)
{
    sinkd_stat_args a = exec__stat_args(e, x, ln, op, layer, head_dim, seed, row_len);
    return e->be->ops->stat(e->be, &a);
}

static int exec__stat(eng_fwd_ctx *c, const sinkd_lanes *ln, int32_t op, int32_t layer)
{
    return exec__stat_on(c->e, &c->x, ln, op, layer, c->ss[0]->geom.head_dim, c->seed, NULL);
}

/* Rows mode: @layer's slice of the step's row lengths (defer.c zeroes
 * them all before the step). */
static int32_t *exec__row_len(const eng_fwd_ctx *c, int32_t layer)
{
    return (int32_t *)c->e->dbuf[ENG_SLOT_ROW_LEN] + (size_t)layer * c->n_lanes;
}

static int32_t exec__rule_op(const eng_exec *x)
{
    return x->stat == SINKD_STAT_QUANTILE ? SINKD_STAT_OP_QUANTILE : SINKD_STAT_OP_GUMBEL;
}

/* A rule on a deferred row: the previous step's of the group led by @s
 * (one position back), so it takes that step's noise and a session alone
 * draws the same noise whether its rows are deferred or not. (In a batch
 * the lanes are numbered by the applying call, and the stream is its first
 * session's.) */
int eng_exec_row_rule(sinkd_engine *e, eng_session *s, int32_t layer, const sinkd_lanes *ln)
{
    const eng_exec *x = &s->defer_x;
    return exec__stat_on(e, x, ln, exec__rule_op(x), layer, s->geom.head_dim, exec__seed(s, 1),
                         e->dbuf[ENG_SLOT_ROW_LEN]);
}

/* The plugin's select callback for the lanes of @layer of the forward's one
 * session: page bounds from @pscore (device [kv_heads][width], PAGES) or
 * this step's probabilities in the score slots (TOKENS). Writes the layer's
 * selection row. */
static int exec__host_select(eng_fwd_ctx *c, int32_t layer, const float *pscore)
{
    sinkd_engine *e = c->e;
    eng_session *s = c->ss[0];
    int32_t kvh = s->geom.kv_heads, w = c->width, pt = e->page_tokens;
    size_t total = 0;
    int rc;

    for (int32_t h = 0; h < kvh; h++)
        total += (size_t)sinkd_kv_lane_len(s->seq, layer, h);
    sinkd_policy_lane *lanes = calloc((size_t)kvh, sizeof *lanes);
    int32_t *pos = malloc((total + 1) * sizeof *pos);
    float *score = malloc((total + 1) * sizeof *score);
    float *ps = pscore ? malloc((size_t)kvh * w * sizeof *ps) : NULL;
    int32_t *row = malloc((size_t)kvh * w * sizeof *row);
    rc = -ENOMEM;
    if (!lanes || !pos || !score || !row || (pscore && !ps))
        goto out;
    if (pscore && ((rc = e->be->ops->d2h(e->be, ps, pscore, (size_t)kvh * w * sizeof *ps)) < 0 ||
                   (rc = e->be->ops->sync(e->be)) < 0))
        goto out;
    size_t at = 0;
    for (int32_t h = 0; h < kvh; h++) {
        sinkd_policy_lane *l = &lanes[h];
        l->layer = layer;
        l->kv_head = h;
        l->len = sinkd_kv_lane_len(s->seq, layer, h);
        l->n_pages = (l->len + pt - 1) / pt;
        l->pos = pos + at;
        l->score = pscore ? NULL : score + at;
        l->page_score = pscore ? ps + (size_t)h * w : NULL;
        l->out = row + (size_t)h * w;
        if ((rc = sinkd_kv_lane_read(s->seq, layer, h, pos + at, pscore ? NULL : score + at)) < 0)
            goto out;
        at += (size_t)l->len;
    }
    rc = sinkd_policy_inst_select(s->inst, lanes, kvh);
    if (rc < 0)
        goto out;
    if (rc == SINKD_POLICY_FELL_BACK) {
        /* the lanes hold every page: dense for the rest of the step */
        eng_tell_fallback(e, s, c->req);
        c->fell_back = true;
    }
    for (int32_t h = 0; h < kvh; h++)
        for (int32_t i = lanes[h].n_out; i < w; i++)
            row[(size_t)h * w + i] = -1;
    rc = e->be->ops->h2d(e->be, exec__row(c, layer), row, (size_t)kvh * w * sizeof *row);
out:
    free(lanes);
    free(pos);
    free(score);
    free(ps);
    free(row);
    return rc;
}

/* Whether the score slots hold a statistic that must survive this step's
 * probabilities. */
static bool exec__keeps_scores(const eng_exec *x)
{
    return x->stat != SINKD_STAT_NONE && x->stat != SINKD_STAT_KEY_NORM;
}

/* Pages of @layer's lanes over the forward's sessions. */
static int exec__layer_pages(const eng_fwd_ctx *c, int32_t layer, int64_t *pages)
{
    *pages = 0;
    for (int32_t i = 0; i < c->n; i++) {
        sinkd_kv_lane_stats st;
        int rc = sinkd_kv_lane_stats_get(c->ss[i]->seq, layer, &st);
        if (rc < 0)
            return rc;
        *pages += st.pages;
    }
    return 0;
}

/* Copy @ln (the lanes of the layer whose post step becomes due) into
 * ENG_SLOT_POST_LANES (at the layer's place with batch_rules), device to
 * device, and describe the copy in c->post_lanes. */
static int exec__keep_lanes(eng_fwd_ctx *c, int32_t layer, const sinkd_lanes *ln)
{
    sinkd_engine *e = c->e;
    int64_t pages;
    int rc;

    if ((rc = exec__layer_pages(c, layer, &pages)) < 0)
        return rc;
    size_t nl = (size_t)ln->n_lanes;
    size_t ints = 2 * nl + 1 + (size_t)pages;
    int32_t *d;
    if (c->batch_rules) {
        /* sized by eng_decode_begin for a page more a lane than it saw */
        if (ints > c->lanes_stride)
            return -EOVERFLOW;
        d = (int32_t *)e->dbuf[ENG_SLOT_POST_LANES] + (size_t)layer * c->lanes_stride;
    } else {
        if ((rc = eng_dev_reserve(e, ENG_SLOT_POST_LANES, ints * sizeof(int32_t))) < 0)
            return rc;
        d = e->dbuf[ENG_SLOT_POST_LANES];
    }
    /* the store's arrays lie back to back (kv.h): one copy */
    if (ln->page_off != ln->len + nl || ln->page_ids != ln->page_off + nl + 1)
        return -EINVAL;
    if ((rc = e->be->ops->d2d(e->be, d, ln->len, ints * sizeof *d)) < 0)
        return rc;
    c->post_lanes = (sinkd_lanes){
        .n_lanes = ln->n_lanes, .len = d, .page_off = d + nl, .page_ids = d + 2 * nl + 1,
    };
    return 0;
}

/* After @layer's attention: token selection, then the statistic's rule. */
static int exec__post(eng_fwd_ctx *c, int32_t layer)
{
    sinkd_engine *e = c->e;
    const sinkd_lanes ln = c->post_lanes;
    int rc;

    if (c->x.select == SINKD_SELECT_TOKENS && exec__source(c, layer) == layer) {
        if (c->x.host_select) {
            rc = exec__host_select(c, layer, NULL);
        } else {
            sinkd_topk_tokens_args t = {
                .pool = sinkd_kv_pool_get(e->kv), .lanes = ln, .k = c->width,
                .out_pages = exec__row(c, layer),
            };
            rc = e->be->ops->topk_tokens(e->be, &t);
        }
        if (rc < 0)
            return rc;
    }
    switch (c->x.stat) {
    case SINKD_STAT_QUANTILE:
    case SINKD_STAT_GUMBEL: {
        /* deferred: the row the attention op just applied, with its step's
         * noise (eng_exec_row_rule) */
        sinkd_stat_args a =
            exec__stat_args(e, &c->x, &ln, exec__rule_op(&c->x), layer, c->ss[0]->geom.head_dim,
                            c->defer ? exec__seed(c->ss[0], 1) : c->seed,
                            c->defer ? exec__row_len(c, layer) : NULL);
        if (!c->batch_rules)
            return e->be->ops->stat(e->be, &a);
        e->rules[c->n_rules++] = a; /* issued at the step's end with the others */
        return 0;
    }
    case SINKD_STAT_SUM:
    case SINKD_STAT_DECAY:
        return exec__stat(c, &ln, SINKD_STAT_OP_DECAY, layer);
    case SINKD_STAT_LAST:
        return 0; /* p is the statistic */
    default:
        return exec__keeps_scores(&c->x) ? exec__stat(c, &ln, SINKD_STAT_OP_RESTORE, layer) : 0;
    }
}

/* Run the post step still due before the next layer's attention. */
static int exec__catch_up(eng_fwd_ctx *c)
{
    int32_t due = c->pending;

    if (due < 0)
        return 0;
    c->pending = -1;
    return exec__post(c, due);
}

/* Before @layer's attention, whose probabilities a post step will read:
 * keep the lane arrays for that step, move the statistic aside where one is
 * kept, and have the op write p. The stash comes last of what can fail:
 * once it ran, only the due post step puts the statistic back. */
static int exec__defer(eng_fwd_ctx *c, int32_t layer, const sinkd_lanes *ln, int32_t *score_op)
{
    int rc;

    if ((rc = exec__keep_lanes(c, layer, ln)) < 0)
        return rc;
    if ((c->x.post || exec__keeps_scores(&c->x)) &&
        (rc = exec__stat(c, ln, SINKD_STAT_OP_STASH, layer)) < 0)
        return rc;
    *score_op = SINKD_SCORE_WRITE;
    c->pending = layer;
    return 0;
}

/* Quest: rank @layer's pages before its attention. */
static int exec__pages(eng_fwd_ctx *c, int32_t layer, const sinkd_decode_args *a)
{
    sinkd_engine *e = c->e;
    float *pscore = c->x.host_select ? e->dbuf[ENG_SLOT_PSCORE] : NULL;
    sinkd_topk_pages_args t = {
        .pool = a->pool, .lanes = a->lanes, .n_seqs = a->n_seqs, .n_q_heads = a->n_q_heads,
        .n_kv_heads = a->n_kv_heads, .head_dim = a->head_dim, .rope = a->rope, .q = a->q,
        .q_pos = a->q_pos, .k = c->width, .out_pages = exec__row(c, layer), .out_scores = pscore,
    };
    int rc = e->be->ops->topk_pages(e->be, &t);

    if (rc < 0 || !pscore)
        return rc;
    /* width = the longest lane's pages: the row lists every page in order,
     * so the scores are the bounds by page index */
    return exec__host_select(c, layer, pscore);
}

static int exec__decode_hook(void *ctx, int32_t layer, sinkd_decode_args *a)
{
    eng_fwd_ctx *c = ctx;
    int32_t src;
    int rc;

    if ((rc = exec__catch_up(c)) < 0)
        return rc;
    a->score_op = c->x.score_op;
    a->score_decay = c->x.decay;
    src = exec__source(c, layer);
    if (src == layer && c->x.select == SINKD_SELECT_PAGES && (rc = exec__pages(c, layer, a)) < 0)
        return rc;
    src = exec__source(c, layer); /* a failed callback turns the step dense */
    bool pick_tokens = src == layer && c->x.select == SINKD_SELECT_TOKENS;
    if (src >= 0 && !pick_tokens) {
        a->sel_off = c->e->dbuf[ENG_SLOT_SEL_OFF];
        a->sel_pages = exec__row(c, src);
    }
    if ((c->x.post && !c->defer) || pick_tokens)
        return exec__defer(c, layer, &a->lanes, &a->score_op);
    if (c->defer) {
        a->defer = c->e->dbuf[ENG_SLOT_DEFER];
        a->defer_layer = layer;
        a->defer_layers = c->ss[0]->geom.layers;
    }
    if (c->defer && c->x.post) {
        /* rows mode: the op applies the last step's row and the post step
         * runs the rule on it; nothing is stashed, the scores stay put */
        a->score_op = SINKD_SCORE_WRITE;
        a->row = c->e->dbuf[ENG_SLOT_PREV];
        a->row_len = exec__row_len(c, layer);
        if ((rc = exec__keep_lanes(c, layer, &a->lanes)) < 0)
            return rc;
        c->pending = layer;
    }
    return 0;
}

/* Prefill: the attention op's own statistics (eng_prefill_stat), except
 * that the QUANTILE and GUMBEL rules take each chunk's last query as their
 * one row, a step of their rule (the other queries are not scored). */
static int exec__prefill_hook(void *ctx, int32_t layer, sinkd_prefill_args *a)
{
    eng_fwd_ctx *c = ctx;
    int rc;

    /* a chunk of a big model on a CPU takes seconds: a cancel or a closed
     * connection need not wait for its end (the caller undoes the chunk) */
    if (layer > 0 && c->stop_req && (rc = eng_prefill_stop(c->e, c->self, c->stop_req)) < 0)
        return rc;
    if ((rc = exec__catch_up(c)) < 0)
        return rc;
    if (!c->x.post)
        return eng_prefill_stat(c->self, layer, a);
    a->obs_w = 1;
    return exec__defer(c, layer, &a->lanes, &a->score_op);
}

int eng_exec_prev(sinkd_engine *e)
{
    const sinkd_kv_pool *pool = sinkd_kv_pool_get(e->kv);

    return eng_dev_reserve(e, ENG_SLOT_PREV, (size_t)pool->n_pages * pool->page_tokens * 4);
}

int eng_prefill_begin(eng_fwd_ctx *c, sinkd_model_hook *h, sinkd_engine *e, eng_session *s)
{
    int rc;

    memset(c, 0, sizeof *c);
    c->e = e;
    c->self = s;
    c->ss = &c->self;
    c->n = 1;
    c->pending = -1;
    eng_plan_exec(e, s, &c->x);
    c->n_lanes = s->geom.kv_heads;
    c->seed = exec__seed(s, 0);
    if ((rc = eng_defer_settle(e, s, -1)) < 0) /* the chunk scores by itself */
        return rc;
    h->prefill = exec__prefill_hook;
    h->decode = NULL;
    h->ctx = c;
    return c->x.post ? eng_exec_prev(e) : 0;
}

/* Batch the step's rules (QUANTILE, GUMBEL) where the backend can: room
 * for every layer's lane arrays, a page more a lane than the lanes hold now
 * (the step appends one token), and for every layer's call. */
static int exec__batch_begin(eng_fwd_ctx *c)
{
    sinkd_engine *e = c->e;
    int32_t layers = c->ss[0]->geom.layers;
    size_t stride = 0;
    int64_t pages;
    int rc;

    if (!c->x.post || !e->be->ops->stat_rules || layers < 1)
        return 0;
    for (int32_t l = 0; l < layers; l++) {
        if ((rc = exec__layer_pages(c, l, &pages)) < 0)
            return rc;
        size_t ints = 3 * (size_t)c->n_lanes + 1 + (size_t)pages;
        stride = ints > stride ? ints : stride;
    }
    stride = (stride + 3) & ~(size_t)3; /* 16-byte aligned arrays */
    if ((rc = eng_dev_reserve(e, ENG_SLOT_POST_LANES, (size_t)layers * stride * sizeof(int32_t))) < 0)
        return rc;
    if (e->rules_cap < layers) {
        sinkd_stat_args *r = realloc(e->rules, (size_t)layers * sizeof *r);
        if (!r)
            return -ENOMEM;
        e->rules = r;
        e->rules_cap = layers;
    }
    c->lanes_stride = stride;
    c->batch_rules = true;
    return 0;
}

/* Entries per lane of a selection row: 0 when the selection covers every
 * lane of the group (dense), the longest lane's pages for a callback. */
static int32_t exec__width(const eng_fwd_ctx *c)
{
    int32_t pt = c->e->page_tokens, longest = 0;

    for (int32_t i = 0; i < c->n; i++) {
        const eng_session *s = c->ss[i];
        for (int32_t l = 0; l < s->geom.layers; l++)
            for (int32_t h = 0; h < s->geom.kv_heads; h++) {
                int32_t len = sinkd_kv_lane_len(s->seq, l, h) + 1; /* this step's token */
                longest = len > longest ? len : longest;
            }
    }
    int32_t pages = (longest + pt - 1) / pt;
    if (c->x.host_select)
        return pages;
    if (c->x.select == SINKD_SELECT_PAGES)
        return c->x.k < pages ? c->x.k : 0;
    return c->x.k < longest ? c->x.k : 0;
}

int eng_decode_begin(eng_fwd_ctx *c, sinkd_model_hook *h, sinkd_engine *e, eng_session **ss,
                     int32_t n)
{
    int rc;

    memset(c, 0, sizeof *c);
    c->e = e;
    c->ss = ss;
    c->n = n;
    c->pending = -1;
    eng_plan_exec(e, ss[0], &c->x);
    c->n_lanes = n * ss[0]->geom.kv_heads;
    c->seed = exec__seed(ss[0], 0);
    c->req = ss[0]->gen; /* a callback's group is of one session */
    for (int32_t i = 0; i < n; i++)
        e->seqs[i] = ss[i]->seq;
    h->prefill = NULL;
    h->decode = exec__decode_hook;
    h->ctx = c;
    if (c->x.select != SINKD_SELECT_DENSE && (c->width = exec__width(c)) > 0) {
        size_t off_bytes = ((size_t)c->n_lanes + 1) * 4;
        size_t row_bytes = (size_t)ss[0]->geom.layers * c->n_lanes * c->width * 4;
        if ((rc = eng_dev_reserve(e, ENG_SLOT_SEL_OFF, off_bytes)) < 0 ||
            (rc = eng_dev_reserve(e, ENG_SLOT_SEL_PAGES, row_bytes)) < 0 ||
            (rc = eng_host_reserve(e, ENG_SLOT_SEL_OFF, (size_t)c->n_lanes + 1)) < 0 ||
            (c->x.host_select &&
             (rc = eng_dev_reserve(e, ENG_SLOT_PSCORE, (size_t)c->n_lanes * c->width * 4)) < 0))
            return rc;
        int32_t *off = (int32_t *)e->hbuf[ENG_SLOT_SEL_OFF];
        for (int32_t l = 0; l <= c->n_lanes; l++)
            off[l] = l * c->width;
        if ((rc = e->be->ops->h2d(e->be, e->dbuf[ENG_SLOT_SEL_OFF], off, off_bytes)) < 0)
            return rc;
    }
    if ((c->x.post || (c->x.select == SINKD_SELECT_TOKENS && c->width > 0)) &&
        (rc = eng_exec_prev(e)) < 0)
        return rc;
    if ((rc = exec__batch_begin(c)) < 0)
        return rc;
    return eng_defer_begin(c);
}

int eng_fwd_end(eng_fwd_ctx *c, int rc)
{
    sinkd_engine *e = c->e;
    int32_t due = c->pending;
    int prc = 0;

    if (due >= 0) {
        c->pending = -1;
        prc = exec__post(c, due);
    }
    /* also after a failed forward: the layers that ran stashed their
     * statistic or applied a row, and only the rule puts it back */
    if (c->n_rules > 0) {
        int brc = e->be->ops->stat_rules(e->be, e->rules, c->n_rules);
        c->n_rules = 0;
        prc = prc ? prc : brc;
    }
    return rc ? rc : prc;
}
