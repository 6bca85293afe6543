/*
 * Sequences of the KV store: lanes and their page tables, page reservation
 * under the budgets, append, lane arrays for the attention ops, compaction.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "half.h"
#include "kv_internal.h"

static inline kv__lane *lane_at(const sinkd_kv_seq *seq, int32_t i)
{
    return &seq->lanes[i];
}

static inline int32_t pages_for(const sinkd_kv *kv, int64_t len)
{
    return (int32_t)((len + kv->pool.page_tokens - 1) / kv->pool.page_tokens);
}

static int rope_check(const sinkd_rope *r)
{
    if (!r || !(r->theta > 0) || !(r->scale > 0) || r->style > SINKD_ROPE_NEOX ||
        r->mode > SINKD_ROPE_CACHE)
        return -EINVAL;
    return 0;
}

static int rope_eq(const sinkd_rope *a, const sinkd_rope *b)
{
    return a->mode == b->mode && a->style == b->style && a->theta == b->theta &&
           a->scale == b->scale;
}

/* ---- open / close ------------------------------------------------------------ */

int sinkd_kv_seq_open(sinkd_kv *kv, const sinkd_kv_seq_params *p, sinkd_kv_seq **out)
{
    if (!kv || !p || !out || p->n_layers < 1 || p->n_kv_heads < 1 ||
        (int64_t)p->n_layers * p->n_kv_heads > (1 << 20) || p->head_dim < 16 ||
        p->head_dim % 16 || p->head_dim > kv->pool.head_dim_max || rope_check(&p->rope))
        return -EINVAL;
    sinkd_kv_seq *seq = calloc(1, sizeof *seq);
    if (!seq)
        return -ENOMEM;
    seq->lanes = calloc((size_t)p->n_layers * p->n_kv_heads, sizeof *seq->lanes);
    kv__uid *u = seq->lanes ? kv__uid_get(kv, p->uid, 1) : NULL;
    if (!u) {
        free(seq->lanes);
        free(seq);
        return -ENOMEM;
    }
    u->n_seqs++;
    seq->kv = kv;
    seq->uid = p->uid;
    seq->n_layers = p->n_layers;
    seq->n_kv_heads = p->n_kv_heads;
    seq->head_dim = p->head_dim;
    seq->rope = p->rope;
    sinkd_kv_seq_set_budget(seq, p->max_pages);
    seq->next = kv->seqs;
    if (kv->seqs)
        kv->seqs->prev = seq;
    kv->seqs = seq;
    kv->n_seqs++;
    *out = seq;
    return 0;
}

void sinkd_kv_seq_close(sinkd_kv_seq *seq)
{
    if (!seq)
        return;
    sinkd_kv *kv = seq->kv;
    int32_t nl = seq->n_layers * seq->n_kv_heads;
    for (int32_t i = 0; i < nl; i++) {
        kv__lane *ln = lane_at(seq, i);
        for (int32_t j = 0; j < ln->n_pages; j++)
            kv__page_give(kv, ln->pages[j]);
        free(ln->pages);
    }
    kv__uid *u = kv__uid_get(kv, seq->uid, 0);
    u->pages -= seq->pages;
    u->n_seqs--;
    kv__uid_put(kv, u);
    if (seq->prev)
        seq->prev->next = seq->next;
    else
        kv->seqs = seq->next;
    if (seq->next)
        seq->next->prev = seq->prev;
    kv->n_seqs--;
    free(seq->lanes);
    free(seq);
}

void sinkd_kv_seq_set_budget(sinkd_kv_seq *seq, int64_t max_pages)
{
    if (max_pages == 0)
        max_pages = seq->kv->cfg.session_pages ? seq->kv->cfg.session_pages : -1;
    seq->max_pages = max_pages;
}

int32_t sinkd_kv_lane_len(const sinkd_kv_seq *seq, int32_t layer, int32_t kv_head)
{
    if (!seq || layer < 0 || layer >= seq->n_layers || kv_head < 0 || kv_head >= seq->n_kv_heads)
        return -EINVAL;
    return lane_at(seq, layer * seq->n_kv_heads + kv_head)->len;
}

int64_t sinkd_kv_seq_pages(const sinkd_kv_seq *seq)
{
    return seq->pages;
}

/* Lanes [*lane0, *lane0 + *count) of @layer, or of every layer. */
static int lane_range(const sinkd_kv_seq *seq, int32_t layer, int32_t *lane0, int32_t *count)
{
    if (layer == SINKD_KV_ALL_LAYERS) {
        *lane0 = 0;
        *count = seq->n_layers * seq->n_kv_heads;
        return 0;
    }
    if (layer < 0 || layer >= seq->n_layers)
        return -EINVAL;
    *lane0 = layer * seq->n_kv_heads;
    *count = seq->n_kv_heads;
    return 0;
}

int sinkd_kv_lane_stats_get(const sinkd_kv_seq *seq, int32_t layer, sinkd_kv_lane_stats *out)
{
    int32_t l0, nl;
    if (!seq || !out || lane_range(seq, layer, &l0, &nl))
        return -EINVAL;
    sinkd_kv_lane_stats st = {.len_min = INT32_MAX, .len_max = 0};
    for (int32_t i = l0; i < l0 + nl; i++) {
        const kv__lane *ln = lane_at(seq, i);
        st.len_min = ln->len < st.len_min ? ln->len : st.len_min;
        st.len_max = ln->len > st.len_max ? ln->len : st.len_max;
        st.tokens += ln->len;
        st.pages += ln->n_pages;
    }
    st.len_mean = (double)st.tokens / nl;
    st.bytes = (uint64_t)st.pages * seq->kv->page_cost;
    *out = st;
    return 0;
}

/* ---- lane arrays ---------------------------------------------------------------- */

/* Ints a packed description of lanes [lane0, lane0 + count) of each sequence
 * takes, with each length grown by @grow: len | page_off | page_ids. */
static size_t packed_size(sinkd_kv_seq *const *seqs, int32_t n_seqs, int32_t lane0,
                          int32_t count)
{
    size_t n = 2 * (size_t)n_seqs * count + 1;
    for (int32_t s = 0; s < n_seqs; s++)
        for (int32_t i = lane0; i < lane0 + count; i++)
            n += (size_t)lane_at(seqs[s], i)->n_pages;
    return n;
}

/* Write the packed lanes at @dst; describe them in *@out relative to @dev
 * (the device copy of dst). Returns the ints written. */
static size_t pack_lanes(int32_t *dst, const int32_t *dev, sinkd_kv_seq *const *seqs,
                         int32_t n_seqs, int32_t lane0, int32_t count, sinkd_lanes *out)
{
    int32_t nl = n_seqs * count;
    int32_t *len = dst, *off = dst + nl, *ids = off + nl + 1;
    int32_t k = 0, o = 0;
    for (int32_t s = 0; s < n_seqs; s++)
        for (int32_t i = lane0; i < lane0 + count; i++, k++) {
            const kv__lane *ln = lane_at(seqs[s], i);
            len[k] = ln->len;
            off[k] = o;
            if (ln->n_pages) /* an empty lane may have no table yet */
                memcpy(ids + o, ln->pages, (size_t)ln->n_pages * sizeof(int32_t));
            o += ln->n_pages;
        }
    off[nl] = o;
    *out = (sinkd_lanes){
        .n_lanes = nl,
        .len = dev,
        .page_off = dev + nl,
        .page_ids = dev + 2 * nl + 1,
    };
    return 2 * (size_t)nl + 1 + (size_t)o;
}

/* Check a batch: same store, same head shape, layer in range, no duplicate. */
static int batch_check(sinkd_kv *kv, sinkd_kv_seq *const *seqs, int32_t n_seqs, int32_t layer)
{
    if (!kv || !seqs || n_seqs < 1 || n_seqs > (1 << 20) / seqs[0]->n_kv_heads)
        return -EINVAL;
    uint64_t stamp = ++kv->stamp;
    for (int32_t s = 0; s < n_seqs; s++) {
        const sinkd_kv_seq *q = seqs[s];
        if (!q || q->kv != kv || q->n_kv_heads != seqs[0]->n_kv_heads ||
            q->head_dim != seqs[0]->head_dim || layer < 0 || layer >= q->n_layers ||
            q->stamp == stamp)
            return -EINVAL;
        seqs[s]->stamp = stamp;
    }
    return 0;
}

int sinkd_kv_lanes_batch(sinkd_kv *kv, sinkd_kv_seq *const *seqs, int32_t n_seqs,
                         int32_t layer, sinkd_lanes *out)
{
    if (!out || batch_check(kv, seqs, n_seqs, layer))
        return -EINVAL;
    int32_t nkv = seqs[0]->n_kv_heads;
    size_t n = packed_size(seqs, n_seqs, layer * nkv, nkv);
    int rc = kv__scratch_fit(kv, &kv->lanes_scr, n);
    if (rc)
        return rc;
    pack_lanes(kv->lanes_scr.host, kv->lanes_scr.dev, seqs, n_seqs, layer * nkv, nkv, out);
    return kv__scratch_upload(kv, &kv->lanes_scr, n);
}

int sinkd_kv_lanes_seq(sinkd_kv_seq *seq, int32_t layer, sinkd_lanes *out)
{
    if (!seq)
        return -EINVAL;
    return sinkd_kv_lanes_batch(seq->kv, &seq, 1, layer, out);
}

/* ---- append ------------------------------------------------------------------- */

/* Pages lanes [lane0, lane0 + count) of @seq need to grow by @n tokens. */
static int64_t pages_needed(const sinkd_kv_seq *seq, int32_t lane0, int32_t count, int32_t n)
{
    int64_t need = 0;
    for (int32_t i = lane0; i < lane0 + count; i++) {
        const kv__lane *ln = lane_at(seq, i);
        need += pages_for(seq->kv, (int64_t)ln->len + n) - ln->n_pages;
    }
    return need;
}

/* Make every page table of the range hold its pages after growing by @n. */
static int tables_fit(sinkd_kv_seq *seq, int32_t lane0, int32_t count, int32_t n)
{
    for (int32_t i = lane0; i < lane0 + count; i++) {
        kv__lane *ln = lane_at(seq, i);
        int32_t want = pages_for(seq->kv, (int64_t)ln->len + n);
        if (want <= ln->cap)
            continue;
        int32_t cap = want > ln->cap * 2 ? want : ln->cap * 2;
        int32_t *p = realloc(ln->pages, (size_t)cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        ln->pages = p;
        ln->cap = cap;
    }
    return 0;
}

/* Check budgets and pool for growing the layer's lanes of each sequence by
 * @n tokens, then take the pages and lengthen the lanes. All or nothing. */
static int batch_grow(sinkd_kv *kv, sinkd_kv_seq *const *seqs, int32_t n_seqs, int32_t layer,
                      int32_t n)
{
    int32_t nkv = seqs[0]->n_kv_heads;
    int64_t total = 0;
    int rc = 0;
    for (int32_t s = 0; s < n_seqs; s++)
        for (int32_t h = 0; h < nkv; h++)
            if (lane_at(seqs[s], layer * nkv + h)->len > INT32_MAX - n)
                return -EOVERFLOW;
    /* pending per uid sums the batch's sequences of one owner */
    for (int32_t s = 0; s < n_seqs && !rc; s++) {
        sinkd_kv_seq *q = seqs[s];
        int64_t need = pages_needed(q, layer * nkv, nkv, n);
        kv__uid *u = kv__uid_get(kv, q->uid, 0);
        u->pending += need;
        total += need;
        if (q->max_pages >= 0 && q->pages + need > q->max_pages) {
            rc = -EDQUOT;
            kv->last_quota = SINKD_KV_QUOTA_SEQ;
        } else if (kv->cfg.uid_pages > 0 && u->pages + u->pending > kv->cfg.uid_pages) {
            rc = -EDQUOT;
            kv->last_quota = SINKD_KV_QUOTA_UID;
        }
    }
    for (int32_t s = 0; s < n_seqs; s++)
        kv__uid_get(kv, seqs[s]->uid, 0)->pending = 0;
    if (rc)
        return rc;
    if (total > kv->n_free)
        return -ENOMEM;
    for (int32_t s = 0; s < n_seqs; s++)
        if ((rc = tables_fit(seqs[s], layer * nkv, nkv, n)))
            return rc;
    for (int32_t s = 0; s < n_seqs; s++) {
        sinkd_kv_seq *q = seqs[s];
        int64_t took = 0;
        for (int32_t h = 0; h < nkv; h++) {
            kv__lane *ln = lane_at(q, layer * nkv + h);
            ln->len += n;
            while (ln->n_pages < pages_for(kv, ln->len)) {
                ln->pages[ln->n_pages++] = kv__page_take(kv);
                took++;
            }
        }
        q->pages += took;
        kv__uid_get(kv, q->uid, 0)->pages += took;
    }
    return 0;
}

/* Shorten lanes [lane0, lane0 + count) of @seq to @new_len[i - lane0] (or by
 * @n when new_len is NULL) and return the pages past their new ends. */
static void lanes_shrink(sinkd_kv_seq *seq, int32_t lane0, int32_t count, const int32_t *new_len,
                         int32_t n)
{
    sinkd_kv *kv = seq->kv;
    int64_t gave = 0;
    for (int32_t i = lane0; i < lane0 + count; i++) {
        kv__lane *ln = lane_at(seq, i);
        ln->len = new_len ? new_len[i - lane0] : ln->len - n;
        int32_t keep = pages_for(kv, ln->len);
        while (ln->n_pages > keep) {
            kv__page_give(kv, ln->pages[--ln->n_pages]);
            gave++;
        }
    }
    seq->pages -= gave;
    kv__uid_get(kv, seq->uid, 0)->pages -= gave;
}

/* Reserve, then issue kv_append for the layer's lanes of the batch. k/v
 * layout: token-major [n][n_kv_heads][hd] (one sequence) or, for n == 1,
 * [n_seqs][n_kv_heads][hd]; pos: host, [n] for one sequence or [n_seqs]. */
/* The lane arrays go to lanes_scr, where sinkd_kv_lanes_batch would build
 * the same ones after the append (the caller may take them as @lanes_out),
 * with the positions behind them: one h2d. */
static int append_issue(sinkd_kv *kv, sinkd_kv_seq *const *seqs, int32_t n_seqs, int32_t layer,
                        int32_t n, const float *k, const float *v, const int32_t *pos,
                        sinkd_lanes *lanes_out)
{
    int32_t nkv = seqs[0]->n_kv_heads, nl = n_seqs * nkv;
    int rc = batch_grow(kv, seqs, n_seqs, layer, n);
    if (rc)
        return rc;
    size_t need = packed_size(seqs, n_seqs, layer * nkv, nkv) + (size_t)nl * n;
    rc = kv__scratch_fit(kv, &kv->lanes_scr, need);
    sinkd_append_args a = {
        .pool = &kv->pool,
        .n = n,
        .head_dim = seqs[0]->head_dim,
        .rope = seqs[0]->rope,
        .k = k,
        .v = v,
        .kv_token_major = 1,
    };
    if (!rc) {
        size_t o = pack_lanes(kv->lanes_scr.host, kv->lanes_scr.dev, seqs, n_seqs, layer * nkv,
                              nkv, &a.lanes);
        /* pos is [n_lanes][n]: the sequence's positions for each of its lanes */
        for (int32_t l = 0; l < nl; l++)
            memcpy(kv->lanes_scr.host + o + (size_t)l * n, pos + (size_t)(l / nkv) * n,
                   (size_t)n * sizeof(int32_t));
        a.pos = (const int32_t *)kv->lanes_scr.dev + o;
        rc = kv__scratch_upload(kv, &kv->lanes_scr, need);
    }
    /* one rope per kv_append: a batch mixing ropes goes per sequence */
    int same_rope = 1;
    for (int32_t s = 1; s < n_seqs; s++)
        same_rope &= rope_eq(&seqs[s]->rope, &a.rope);
    if (!rc && same_rope) {
        rc = kv->be->ops->kv_append(kv->be, &a);
    } else if (!rc) {
        for (int32_t s = 0; s < n_seqs && !rc; s++) {
            sinkd_append_args one = a;
            one.rope = seqs[s]->rope;
            one.lanes.n_lanes = nkv;
            one.lanes.len += (size_t)s * nkv;
            one.lanes.page_off += (size_t)s * nkv;
            one.k = k + (size_t)s * nkv * seqs[0]->head_dim;
            one.v = v + (size_t)s * nkv * seqs[0]->head_dim;
            one.pos = a.pos + (size_t)s * nkv * n;
            rc = kv->be->ops->kv_append(kv->be, &one);
        }
    }
    if (rc)
        for (int32_t s = 0; s < n_seqs; s++)
            lanes_shrink(seqs[s], layer * nkv, nkv, NULL, n);
    else if (lanes_out)
        *lanes_out = a.lanes;
    return rc;
}

int sinkd_kv_append_lanes(sinkd_kv_seq *seq, int32_t layer, int32_t n, const float *k,
                          const float *v, const int32_t *pos, sinkd_lanes *lanes)
{
    if (!seq || n < 1 || !k || !v || !pos || layer < 0 || layer >= seq->n_layers)
        return -EINVAL;
    return append_issue(seq->kv, &seq, 1, layer, n, k, v, pos, lanes);
}

int sinkd_kv_append(sinkd_kv_seq *seq, int32_t layer, int32_t n,
                    const float *k, const float *v, const int32_t *pos)
{
    return sinkd_kv_append_lanes(seq, layer, n, k, v, pos, NULL);
}

int sinkd_kv_append_batch_lanes(sinkd_kv *kv, sinkd_kv_seq *const *seqs, int32_t n_seqs,
                                int32_t layer, const float *k, const float *v,
                                const int32_t *pos, sinkd_lanes *lanes)
{
    if (!k || !v || !pos || batch_check(kv, seqs, n_seqs, layer))
        return -EINVAL;
    return append_issue(kv, seqs, n_seqs, layer, 1, k, v, pos, lanes);
}

int sinkd_kv_append_batch(sinkd_kv *kv, sinkd_kv_seq *const *seqs, int32_t n_seqs,
                          int32_t layer, const float *k, const float *v, const int32_t *pos)
{
    return sinkd_kv_append_batch_lanes(kv, seqs, n_seqs, layer, k, v, pos, NULL);
}

/* ---- compaction ------------------------------------------------------------------ */

/* kv_compact of lanes [lane0, lane0 + count) with host keep lists, then
 * shorten the lanes and free their tail pages. Keep lists already checked. */
static int compact_issue(sinkd_kv_seq *seq, int32_t lane0, int32_t count,
                         const int32_t *keep_off, const int32_t *keep)
{
    sinkd_kv *kv = seq->kv;
    size_t nkeep = (size_t)keep_off[count];
    size_t need = packed_size(&seq, 1, lane0, count) + (size_t)count + 1 + nkeep;
    int rc = kv__scratch_fit(kv, &kv->op_scr, need);
    if (rc)
        return rc;
    sinkd_compact_args a = {.pool = &kv->pool, .head_dim = seq->head_dim, .rope = seq->rope};
    size_t o = pack_lanes(kv->op_scr.host, kv->op_scr.dev, &seq, 1, lane0, count, &a.lanes);
    memcpy(kv->op_scr.host + o, keep_off, ((size_t)count + 1) * sizeof(int32_t));
    if (nkeep) /* keep may be NULL when every lane is emptied */
        memcpy(kv->op_scr.host + o + count + 1, keep, nkeep * sizeof(int32_t));
    a.keep_off = (const int32_t *)kv->op_scr.dev + o;
    a.keep = a.keep_off + count + 1;
    rc = kv__scratch_upload(kv, &kv->op_scr, need);
    if (!rc)
        rc = kv->be->ops->kv_compact(kv->be, &a);
    if (rc)
        return rc;
    /* new lengths from the keep list sizes; pages past them go back now */
    for (int32_t i = 0; i < count; i++) {
        int32_t len = keep_off[i + 1] - keep_off[i];
        lanes_shrink(seq, lane0 + i, 1, &len, 0);
    }
    return 0;
}

int sinkd_kv_compact(sinkd_kv_seq *seq, int32_t layer,
                     const int32_t *keep_off, const int32_t *keep)
{
    int32_t l0, nl;
    if (!seq || !keep_off || lane_range(seq, layer, &l0, &nl) || keep_off[0] != 0)
        return -EINVAL;
    for (int32_t i = 0; i < nl; i++) {
        int32_t k0 = keep_off[i], k1 = keep_off[i + 1];
        int32_t len = lane_at(seq, l0 + i)->len;
        if (k1 < k0 || k1 - k0 > len || (k1 > k0 && !keep))
            return -EINVAL;
        for (int32_t j = k0; j < k1; j++)
            if (keep[j] < (j == k0 ? 0 : keep[j - 1] + 1) || keep[j] >= len)
                return -EINVAL;
    }
    return compact_issue(seq, l0, nl, keep_off, keep);
}

int sinkd_kv_seq_set_rope(sinkd_kv_seq *seq, const sinkd_rope *rope)
{
    if (!seq || rope_check(rope))
        return -EINVAL;
    sinkd_rope old = seq->rope;
    seq->rope = *rope;
    if (rope_eq(&old, rope))
        return 0;
    /* identity keep lists: kv_compact only recomputes the bounds */
    int32_t nkv = seq->n_kv_heads, maxlen = 0;
    for (int32_t i = 0; i < seq->n_layers * nkv; i++)
        maxlen = lane_at(seq, i)->len > maxlen ? lane_at(seq, i)->len : maxlen;
    int32_t *keep_off = malloc(((size_t)nkv + 1) * sizeof(int32_t));
    int32_t *keep = malloc(((size_t)nkv * maxlen + 1) * sizeof(int32_t));
    int rc = keep_off && keep ? 0 : -ENOMEM;
    for (int32_t layer = 0; layer < seq->n_layers && !rc; layer++) {
        keep_off[0] = 0;
        for (int32_t h = 0; h < nkv; h++) {
            int32_t len = lane_at(seq, layer * nkv + h)->len;
            for (int32_t t = 0; t < len; t++)
                keep[keep_off[h] + t] = t;
            keep_off[h + 1] = keep_off[h] + len;
        }
        rc = compact_issue(seq, layer * nkv, nkv, keep_off, keep);
    }
    free(keep_off);
    free(keep);
    if (rc)
        seq->rope = old;
    return rc;
}

/* ---- host copies ---------------------------------------------------------------- */

/* The lane (layer, kv_head) of @seq, or NULL when out of range. */
static const kv__lane *lane_get(const sinkd_kv_seq *seq, int32_t layer, int32_t kv_head)
{
    if (sinkd_kv_lane_len(seq, layer, kv_head) < 0)
        return NULL;
    return lane_at(seq, layer * seq->n_kv_heads + kv_head);
}

int sinkd_kv_lane_read(const sinkd_kv_seq *seq, int32_t layer, int32_t kv_head,
                       int32_t *pos, float *score)
{
    const kv__lane *ln = lane_get(seq, layer, kv_head);
    if (!ln)
        return -EINVAL;
    sinkd_kv *kv = seq->kv;
    sinkd_backend *be = kv->be;
    int32_t pt = kv->pool.page_tokens;
    int rc = 0;
    for (int32_t p = 0; p < ln->n_pages && !rc; p++) {
        int32_t t0 = p * pt, cnt = ln->len - t0 < pt ? ln->len - t0 : pt;
        size_t slot = (size_t)ln->pages[p] * pt;
        if (pos)
            rc = be->ops->d2h(be, pos + t0, kv->pool.pos + slot, (size_t)cnt * sizeof(int32_t));
        if (score && !rc)
            rc = be->ops->d2h(be, score + t0, kv->pool.score + slot, (size_t)cnt * sizeof(float));
    }
    return rc ? rc : be->ops->sync(be);
}

int sinkd_kv_lane_read_kv(const sinkd_kv_seq *seq, int32_t layer, int32_t kv_head,
                          float *k, float *v)
{
    const kv__lane *ln = lane_get(seq, layer, kv_head);
    if (!ln)
        return -EINVAL;
    sinkd_kv *kv = seq->kv;
    sinkd_backend *be = kv->be;
    int32_t pt = kv->pool.page_tokens, hd = seq->head_dim;
    size_t es = sinkd_dtype_bytes((sinkd_dtype)kv->pool.dtype, 1), row = (size_t)hd * es;
    uint8_t *tmp = malloc(2 * ((size_t)ln->len * row) + 1);
    if (!tmp)
        return -ENOMEM;
    int rc = 0;
    for (int32_t p = 0; p < ln->n_pages && !rc; p++) {
        int32_t t0 = p * pt, cnt = ln->len - t0 < pt ? ln->len - t0 : pt;
        const uint8_t *page = (const uint8_t *)kv->pool.pages + (size_t)ln->pages[p] * kv->pool.page_bytes;
        rc = be->ops->d2h(be, tmp + (size_t)t0 * row, page, (size_t)cnt * row);
        if (!rc)
            rc = be->ops->d2h(be, tmp + ((size_t)ln->len + t0) * row, page + (size_t)pt * row,
                              (size_t)cnt * row);
    }
    if (!rc)
        rc = be->ops->sync(be);
    for (size_t i = 0; !rc && i < 2 * (size_t)ln->len * hd; i++) {
        float *dst = i < (size_t)ln->len * hd ? k : v;
        size_t j = i < (size_t)ln->len * hd ? i : i - (size_t)ln->len * hd;
        if (!dst)
            continue;
        if (kv->pool.dtype == SINKD_F32)
            memcpy(&dst[j], tmp + i * 4, 4);
        else {
            uint16_t h;
            memcpy(&h, tmp + i * 2, 2);
            dst[j] = kv->pool.dtype == SINKD_F16 ? sinkd_f16_to_f32(h) : sinkd_bf16_to_f32(h);
        }
    }
    free(tmp);
    return rc;
}
