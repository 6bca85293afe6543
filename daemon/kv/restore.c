/*
 * Bulk load of saved lanes (session restore). The backend appends the same
 * number of tokens to every lane of a layer, so the layer is appended at
 * its longest lane's length with zero rows padding the shorter lanes; the
 * saved positions and scores then overwrite the slots, and an identity
 * compaction of each lane's real prefix drops the padding and recomputes
 * the key bounds from the true positions.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kv_internal.h"

/* Overwrite pos and score of the first @n tokens of lane @ln. */
static int load_slots(sinkd_kv *kv, const kv__lane *ln, int32_t n, const int32_t *pos,
                      const float *score)
{
    sinkd_backend *be = kv->be;
    int32_t pt = kv->pool.page_tokens;
    int rc = 0;

    for (int32_t t0 = 0; t0 < n && !rc; t0 += pt) {
        int32_t cnt = n - t0 < pt ? n - t0 : pt;
        size_t slot = (size_t)ln->pages[t0 / pt] * (size_t)pt;
        rc = be->ops->h2d(be, kv->pool.pos + slot, pos + t0, (size_t)cnt * sizeof *pos);
        if (!rc)
            rc = be->ops->h2d(be, kv->pool.score + slot, score + t0, (size_t)cnt * sizeof *score);
    }
    return rc;
}

/* Lay the per-lane rows @src out token-major, zero-padded to @n tokens. */
static void token_major(float *dst, const float *src, const int32_t *len, int32_t nkv,
                        int32_t hd, int32_t n)
{
    size_t row = (size_t)hd * sizeof *dst;
    int64_t o = 0;

    memset(dst, 0, (size_t)n * nkv * row);
    for (int32_t h = 0; h < nkv; o += len[h++])
        for (int32_t t = 0; t < len[h]; t++)
            memcpy(dst + ((size_t)t * nkv + h) * hd, src + (size_t)(o + t) * hd, row);
}

int sinkd_kv_layer_load(sinkd_kv_seq *seq, int32_t layer, const int32_t *len, const float *k,
                        const float *v, const int32_t *pos, const float *score)
{
    if (!seq || !len || !k || !v || !pos || !score || layer < 0 || layer >= seq->n_layers)
        return -EINVAL;
    sinkd_kv *kv = seq->kv;
    sinkd_backend *be = kv->be;
    int32_t nkv = seq->n_kv_heads, hd = seq->head_dim, n = 0;
    kv__lane *lanes = &seq->lanes[(size_t)layer * nkv];
    for (int32_t h = 0; h < nkv; h++) {
        if (len[h] < 0 || lanes[h].len != 0)
            return -EINVAL;
        n = len[h] > n ? len[h] : n;
    }
    if (n == 0)
        return 0;
    size_t bytes = (size_t)n * nkv * hd * sizeof(float);
    float *host = malloc(bytes);
    int32_t *pos0 = malloc((size_t)n * sizeof *pos0);
    int32_t *keep_off = malloc(((size_t)nkv + 1) * sizeof *keep_off);
    int32_t *keep = malloc((size_t)n * nkv * sizeof *keep);
    void *dk = NULL, *dv = NULL;
    int rc = host && pos0 && keep_off && keep ? 0 : -ENOMEM;
    if (!rc)
        rc = be->ops->alloc(be, &dk, bytes);
    if (!rc)
        rc = be->ops->alloc(be, &dv, bytes);
    if (!rc) {
        token_major(host, k, len, nkv, hd, n);
        rc = be->ops->h2d(be, dk, host, bytes);
    }
    if (!rc) {
        token_major(host, v, len, nkv, hd, n);
        rc = be->ops->h2d(be, dv, host, bytes);
    }
    if (!rc) {
        /* the padding is transient: only the uid budget may refuse it */
        int64_t budget = seq->max_pages;
        for (int32_t t = 0; t < n; t++)
            pos0[t] = t;
        seq->max_pages = -1;
        rc = sinkd_kv_append(seq, layer, n, dk, dv, pos0);
        seq->max_pages = budget;
    }
    keep_off[0] = 0;
    for (int32_t h = 0; h < nkv && !rc; h++) {
        rc = load_slots(kv, &lanes[h], len[h], pos + keep_off[h], score + keep_off[h]);
        for (int32_t t = 0; t < len[h]; t++)
            keep[keep_off[h] + t] = t;
        keep_off[h + 1] = keep_off[h] + len[h];
    }
    if (!rc)
        rc = sinkd_kv_compact(seq, layer, keep_off, keep);
    if (dk || dv)
        be->ops->sync(be);
    if (dk)
        be->ops->free(be, dk);
    if (dv)
        be->ops->free(be, dv);
    free(host);
    free(pos0);
    free(keep_off);
    free(keep);
    return rc;
}
