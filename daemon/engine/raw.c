/* Raw sessions: an external engine streams its own K, V and Q through
 * shared memory (kv.append, attend). Every byte range is checked against its
 * region before anything is touched; the data is copied into engine buffers
 * (sinkd_shm_read/_write), never read in place by a kernel. */
#include "engine_internal.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Staging slots (e->hbuf, e->dbuf). */
enum { RAW_A = 0, RAW_B = 1, RAW_C = 2, RAW_SEL = 3 };

/* The raw session @j names, answered and NULL when it is not one. */
static eng_session *raw__session(sinkd_engine *e, const sinkd_job *j)
{
    eng_session *s = eng_session_find(e, j);

    if (s && s->m) {
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT,
                  "session %llu runs a model: %s is for raw sessions",
                  (unsigned long long)s->id, j->kind == SINKD_JOB_KV_APPEND ? "kv.append" : "attend");
        return NULL;
    }
    if (s && (j->layer < 0 || j->layer >= s->geom.layers)) {
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT, "layer %d: the session has %d layers",
                  j->layer, s->geom.layers);
        return NULL;
    }
    return s;
}

/* Answer bad_shm unless [off, off + bytes) of every given range fits. */
static bool raw__ranges_ok(sinkd_engine *e, const sinkd_job *j, const sinkd_job_shm *const *r,
                           const char *const *names, const uint64_t *bytes, int n)
{
    if (eng_quota_shm(e, j, r, bytes, n) < 0)
        return false;
    for (int i = 0; i < n; i++) {
        if (r[i]->r && !sinkd_shm_range_ok(r[i]->r, r[i]->off, bytes[i])) {
            eng_error(e, j, SINKD_ERR_BAD_SHM,
                      "%s: %llu bytes at offset %llu do not fit the region (%llu bytes)",
                      names[i], (unsigned long long)bytes[i], (unsigned long long)r[i]->off,
                      (unsigned long long)r[i]->r->size);
            return false;
        }
    }
    return true;
}

/* Copy @bytes at @src into host slot @slot, then to device slot @slot. */
static int raw__stage_in(sinkd_engine *e, const sinkd_job_shm *src, int slot, size_t bytes)
{
    int rc;

    if ((rc = eng_host_reserve(e, slot, bytes / 4 + 1)) < 0 ||
        (rc = eng_dev_reserve(e, slot, bytes)) < 0 ||
        (rc = sinkd_shm_read(src->r, src->off, e->hbuf[slot], bytes)) < 0)
        return rc;
    return e->be->ops->h2d(e->be, e->dbuf[slot], e->hbuf[slot], bytes);
}

void eng_job_kv_append(sinkd_engine *e, sinkd_job *j)
{
    eng_session *s = raw__session(e, j);
    const sinkd_job_shm *r[3] = { &j->k, &j->v, &j->pos };
    static const char *const names[3] = { "k", "v", "pos" };
    uint64_t row, bytes[3];
    int32_t *pos;
    sinkd_fw w;
    int rc;

    if (!s)
        return;
    if (j->n < 1 || j->n > (1 << 20)) {
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT, "n must be in 1..%d", 1 << 20);
        return;
    }
    row = (uint64_t)s->geom.kv_heads * (uint64_t)s->geom.head_dim * 4;
    bytes[0] = bytes[1] = (uint64_t)j->n * row;
    bytes[2] = (uint64_t)j->n * 4;
    if (!raw__ranges_ok(e, j, r, names, bytes, 3))
        return;
    if ((rc = raw__stage_in(e, &j->k, RAW_A, bytes[0])) < 0 ||
        (rc = raw__stage_in(e, &j->v, RAW_B, bytes[1])) < 0 ||
        (rc = eng_host_reserve(e, RAW_C, (size_t)j->n)) < 0) {
        eng_error_errno(e, j, rc, "kv.append");
        return;
    }
    pos = (int32_t *)e->hbuf[RAW_C];
    if (j->pos.r) {
        if ((rc = sinkd_shm_read(j->pos.r, j->pos.off, pos, bytes[2])) < 0) {
            eng_error_errno(e, j, rc, "kv.append: pos");
            return;
        }
        for (int32_t i = 0; i < j->n; i++) {
            if (pos[i] < (i ? pos[i - 1] + 1 : s->next_pos[j->layer])) {
                eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT,
                          "pos[%d] = %d: positions must ascend past the lane's last (%d)", i,
                          pos[i], s->next_pos[j->layer] - 1);
                return;
            }
        }
    } else {
        if (s->next_pos[j->layer] > INT32_MAX - j->n) {
            eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT, "positions past INT32_MAX");
            return;
        }
        for (int32_t i = 0; i < j->n; i++)
            pos[i] = s->next_pos[j->layer] + i;
    }
    rc = sinkd_kv_append(s->seq, j->layer, j->n, e->dbuf[RAW_A], e->dbuf[RAW_B], pos);
    if (rc < 0) {
        eng_error_errno(e, j, rc, "kv.append");
        return;
    }
    s->next_pos[j->layer] = pos[j->n - 1] + 1;
    if (s->next_pos[j->layer] > s->tokens)
        s->tokens = s->next_pos[j->layer];
    if ((rc = eng_evict(e, s, j->layer, false, j)) < 0) {
        eng_error_errno(e, j, rc, "kv.append: eviction");
        return;
    }
    if (eng_begin_reply(&w, j, 1) < 0)
        return;
    sinkd_pack_kv_u64(&w.pk, "len", (uint64_t)sinkd_kv_lane_len(s->seq, j->layer, 0));
    eng_send(e, j, &w, true);
}

/* Check the sparse page lists of @j against the lanes and build sel_off /
 * sel_pages in device slot RAW_SEL. */
static int raw__selection(sinkd_engine *e, const sinkd_job *j, eng_session *s,
                          const int32_t **sel_off, const int32_t **sel_pages)
{
    int32_t kvh = s->geom.kv_heads, pt = e->page_tokens;
    size_t n_off = (size_t)kvh + 1;
    int32_t *h;
    int rc;

    if (j->n_page_off != n_off) {
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT, "pages: expected %d lists (one per kv head)",
                  kvh);
        return -EINVAL;
    }
    for (int32_t hd = 0; hd < kvh; hd++) {
        int32_t len = sinkd_kv_lane_len(s->seq, j->layer, hd);
        int32_t n_pages = (len + pt - 1) / pt;
        for (int32_t i = j->page_off[hd]; i < j->page_off[hd + 1]; i++) {
            if (j->ids[i] >= n_pages || (i > j->page_off[hd] && j->ids[i] <= j->ids[i - 1])) {
                eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT,
                          "pages[%d]: indices must ascend and stay below %d", hd, n_pages);
                return -EINVAL;
            }
        }
    }
    if ((rc = eng_host_reserve(e, RAW_SEL, n_off + j->n_ids)) < 0 ||
        (rc = eng_dev_reserve(e, RAW_SEL, (n_off + j->n_ids) * 4)) < 0) {
        eng_error_errno(e, j, rc, "attend");
        return rc;
    }
    h = (int32_t *)e->hbuf[RAW_SEL];
    memcpy(h, j->page_off, n_off * 4);
    memcpy(h + n_off, j->ids, j->n_ids * 4);
    if ((rc = e->be->ops->h2d(e->be, e->dbuf[RAW_SEL], h, (n_off + j->n_ids) * 4)) < 0) {
        eng_error_errno(e, j, rc, "attend");
        return rc;
    }
    *sel_off = e->dbuf[RAW_SEL];
    *sel_pages = (const int32_t *)e->dbuf[RAW_SEL] + n_off;
    return 0;
}

/* Query positions of the last @n tokens into device slot RAW_C. */
static int raw__qpos(sinkd_engine *e, const sinkd_job *j, eng_session *s, int32_t len0)
{
    int32_t *qp;
    int rc;

    if ((rc = eng_host_reserve(e, RAW_C, (size_t)len0)) < 0 ||
        (rc = eng_dev_reserve(e, RAW_C, (size_t)j->n * 4)) < 0)
        return rc;
    qp = (int32_t *)e->hbuf[RAW_C];
    if (j->has_q_pos) {
        for (int32_t i = 0; i < j->n; i++)
            qp[i] = (int32_t)(j->q_pos - (j->n - 1) + i);
    } else {
        /* the stored original positions of the queries' own tokens */
        if ((rc = sinkd_kv_lane_read(s->seq, j->layer, 0, qp, NULL)) < 0)
            return rc;
        memmove(qp, qp + len0 - j->n, (size_t)j->n * 4);
    }
    return e->be->ops->h2d(e->be, e->dbuf[RAW_C], qp, (size_t)j->n * 4);
}

/* Write each kv head's probabilities ([kv_heads][len], lanes one after the
 * other) to the scores region. */
static int raw__scores_out(sinkd_engine *e, const sinkd_job *j, eng_session *s)
{
    uint64_t off = j->scores.off;
    int rc;

    for (int32_t h = 0; h < s->geom.kv_heads; h++) {
        int32_t len = sinkd_kv_lane_len(s->seq, j->layer, h);
        if ((rc = eng_host_reserve(e, RAW_C, (size_t)len)) < 0 ||
            (rc = sinkd_kv_lane_read(s->seq, j->layer, h, NULL, e->hbuf[RAW_C])) < 0 ||
            (rc = sinkd_shm_write(j->scores.r, off, e->hbuf[RAW_C], (size_t)len * 4)) < 0)
            return rc;
        off += (uint64_t)len * 4;
    }
    return 0;
}

void eng_job_attend(sinkd_engine *e, sinkd_job *j)
{
    eng_session *s = raw__session(e, j);
    const sinkd_job_shm *r[3] = { &j->q, &j->out, &j->scores };
    static const char *const names[3] = { "q", "out", "scores" };
    const int32_t *sel_off = NULL, *sel_pages = NULL;
    int32_t len_min = INT32_MAX, op = SINKD_SCORE_NONE;
    uint64_t bytes[3] = { 0, 0, 0 };
    sinkd_lanes lanes;
    float decay = 1.0f;
    sinkd_fw w;
    int rc;

    if (!s)
        return;
    for (int32_t h = 0; h < s->geom.kv_heads; h++) {
        int32_t len = sinkd_kv_lane_len(s->seq, j->layer, h);
        len_min = len < len_min ? len : len_min;
        bytes[2] += (uint64_t)len * 4;
    }
    if (j->n < 1 || j->n > len_min) {
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT,
                  "n = %d: the queries are the last n appended tokens (1..%d)", j->n, len_min);
        return;
    }
    if ((j->page_off || j->scores.r) && j->n != 1) {
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT, "pages and scores need n = 1");
        return;
    }
    eng_plan_score_op(s, &op, &decay);
    if (j->scores.r && op != SINKD_SCORE_NONE) {
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT,
                  "scores: policy '%s' keeps its own statistic in the score slots",
                  sinkd_policy_inst_name(s->inst));
        return;
    }
    bytes[0] = bytes[1] =
        (uint64_t)j->n * (uint64_t)s->geom.q_heads * (uint64_t)s->geom.head_dim * 4;
    if (!raw__ranges_ok(e, j, r, names, bytes, 3))
        return;
    if ((rc = raw__stage_in(e, &j->q, RAW_A, bytes[0])) < 0 ||
        (rc = eng_dev_reserve(e, RAW_B, bytes[1])) < 0 ||
        (rc = raw__qpos(e, j, s, sinkd_kv_lane_len(s->seq, j->layer, 0))) < 0 ||
        (rc = sinkd_kv_lanes_seq(s->seq, j->layer, &lanes)) < 0) {
        eng_error_errno(e, j, rc, "attend");
        return;
    }
    if (j->page_off && raw__selection(e, j, s, &sel_off, &sel_pages) < 0)
        return;
    sinkd_rope rope = s->geom.rope;
    rope.mode = s->rope_mode;
    if (j->n == 1) {
        sinkd_decode_args a = {
            .pool = sinkd_kv_pool_get(e->kv), .lanes = lanes, .n_seqs = 1,
            .n_q_heads = s->geom.q_heads, .n_kv_heads = s->geom.kv_heads,
            .head_dim = s->geom.head_dim, .rope = rope,
            .softmax_scale = 1.0f / sqrtf((float)s->geom.head_dim),
            .q = e->dbuf[RAW_A], .out = e->dbuf[RAW_B], .q_pos = e->dbuf[RAW_C],
            .sel_off = sel_off, .sel_pages = sel_pages,
            .score_op = j->scores.r ? SINKD_SCORE_WRITE : op, .score_decay = decay,
        };
        /* SINKD_SCORE_WRITE stores p only for the keys on selected pages;
         * the others must read 0, not what an earlier call left (the policy
         * keeps no statistic in these slots: checked above) */
        rc = sel_off && j->scores.r ? eng_stat_lanes(e, s, &lanes, SINKD_STAT_OP_ZERO) : 0;
        if (rc == 0)
            rc = e->be->ops->attn_decode(e->be, &a);
    } else {
        sinkd_prefill_args a = {
            .pool = sinkd_kv_pool_get(e->kv), .lanes = lanes, .n = j->n,
            .n_q_heads = s->geom.q_heads, .n_kv_heads = s->geom.kv_heads,
            .head_dim = s->geom.head_dim, .rope = rope,
            .softmax_scale = 1.0f / sqrtf((float)s->geom.head_dim),
            .q = e->dbuf[RAW_A], .out = e->dbuf[RAW_B], .q_pos = e->dbuf[RAW_C],
        };
        sinkd_model_hook h;
        eng_prefill_hook(s, &h);
        rc = h.prefill(h.ctx, j->layer, &a);
        if (rc == 0)
            rc = e->be->ops->attn_prefill(e->be, &a);
    }
    if (rc == 0 && (rc = eng_host_reserve(e, RAW_B, bytes[1] / 4)) == 0 &&
        (rc = e->be->ops->d2h(e->be, e->hbuf[RAW_B], e->dbuf[RAW_B], bytes[1])) == 0 &&
        (rc = e->be->ops->sync(e->be)) == 0)
        rc = sinkd_shm_write(j->out.r, j->out.off, e->hbuf[RAW_B], bytes[1]);
    if (rc == 0 && j->scores.r)
        rc = raw__scores_out(e, j, s);
    if (rc < 0) {
        eng_error_errno(e, j, rc, "attend");
        return;
    }
    if (eng_begin_reply(&w, j, 1) < 0)
        return;
    sinkd_pack_str(&w.pk, "len");
    msgpack_pack_array(&w.pk, (uint32_t)s->geom.kv_heads);
    for (int32_t h = 0; h < s->geom.kv_heads; h++)
        msgpack_pack_uint64(&w.pk, (uint64_t)sinkd_kv_lane_len(s->seq, j->layer, h));
    eng_send(e, j, &w, true);
}
