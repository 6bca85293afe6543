/* Sessions: the table, open/close/list/stats, policy attach and swap, the
 * policy registry ops, and the clean-up when a connection goes away. */
#include "engine_internal.h"
#include "log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

eng_session *eng_session_lookup(const sinkd_engine *e, const sinkd_job *j)
{
    for (size_t i = 0; i < e->n_sess; i++) {
        eng_session *s = e->sess[i];
        if (s->id == j->session && (s->uid == j->uid || j->admin))
            return s;
    }
    return NULL;
}

eng_session *eng_session_find(sinkd_engine *e, const sinkd_job *j)
{
    eng_session *s = eng_session_lookup(e, j);

    /* Another uid's session reads exactly like one that does not exist. */
    if (!s)
        eng_error(e, j, SINKD_ERR_NOT_FOUND, "no session %llu", (unsigned long long)j->session);
    return s;
}

void eng_session_destroy(sinkd_engine *e, eng_session *s)
{
    if (s->gen)
        eng_gen_finish(e, s, "cancelled", true);
    for (size_t i = 0; i < e->n_sess; i++) {
        if (e->sess[i] == s) {
            e->sess[i] = e->sess[--e->n_sess];
            break;
        }
    }
    eng_defer_free(e, s);
    sinkd_kv_seq_close(s->seq);
    sinkd_policy_inst_destroy(s->inst);
    sinkd_sampler_free(&s->sampler);
    free(s->next_pos);
    free(s->logits);
    free(s->text);
    free(s);
    eng_update_memory(e);
}

static void eng__secret(char out[33])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t b[16];
    size_t got = 0;

    while (got < sizeof b) {
        ssize_t n = getrandom(b + got, sizeof b - got, 0);
        if (n > 0)
            got += (size_t)n;
    }
    for (size_t i = 0; i < sizeof b; i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 15];
    }
    out[32] = '\0';
}

void eng_policy_geometry(const sinkd_engine *e, const eng_session *s, sinkd_policy_geometry *g)
{
    memset(g, 0, sizeof *g);
    g->struct_size = sizeof *g;
    g->n_layers = s->geom.layers;
    g->n_q_heads = s->geom.q_heads;
    g->n_kv_heads = s->geom.kv_heads;
    g->head_dim = s->geom.head_dim;
    g->page_tokens = e->page_tokens;
    g->max_tokens = s->m ? s->m->hp->ctx_len : 1 << 24;
}

/* The rope mode the lanes of @s run with under @inst: the plan's when it
 * asks for cache positions, else the session's own (raw geometry) mode. */
static uint8_t eng__rope_mode(const eng_session *s, const sinkd_policy_inst *inst)
{
    const sinkd_policy_plan *p = sinkd_policy_inst_plan(inst);

    if (p->rope_mode == SINKD_POLICY_ROPE_CACHE)
        return SINKD_ROPE_CACHE;
    return s->m ? SINKD_ROPE_ABSOLUTE : s->geom.rope.mode;
}

int eng_apply_rope(sinkd_engine *e, eng_session *s)
{
    sinkd_rope r = s->geom.rope;
    int rc;

    (void)e;
    r.mode = eng__rope_mode(s, s->inst);
    if (r.mode == s->rope_mode)
        return 0;
    rc = sinkd_kv_seq_set_rope(s->seq, &r);
    if (rc == 0)
        s->rope_mode = r.mode;
    return rc;
}

static int eng__inst_create(sinkd_engine *e, const sinkd_job *j, eng_session *s,
                            sinkd_policy_inst **out)
{
    const char *name = j->policy ? j->policy : "full";
    sinkd_policy_geometry g;
    char why[256] = "";
    int rc;

    eng_policy_geometry(e, s, &g);
    rc = sinkd_policy_inst_create(e->reg, name, &g, j->params, out, why, sizeof why);
    if (rc == -ENOENT)
        eng_error(e, j, SINKD_ERR_NOT_FOUND, "no policy '%s'", name);
    else if (rc == -ENOMEM)
        eng_error(e, j, SINKD_ERR_NO_MEMORY, "policy '%s': out of memory", name);
    else if (rc < 0)
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT, "policy '%s': %s", name,
                  why[0] ? why : strerror(-rc));
    return rc;
}

static int eng__check_geometry(sinkd_engine *e, const sinkd_job *j)
{
    const sinkd_job_geometry *g = &j->geom;
    const sinkd_kv_pool *pool = sinkd_kv_pool_get(e->kv);

    if (g->layers < 1 || g->layers > 4096 || g->kv_heads < 1 || g->kv_heads > 1024 ||
        g->q_heads < g->kv_heads || g->q_heads % g->kv_heads != 0) {
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT,
                  "geometry: need 1 <= layers <= 4096, 1 <= kv_heads <= 1024 and q_heads a "
                  "multiple of kv_heads");
        return -EINVAL;
    }
    if (g->head_dim < 16 || g->head_dim % 16 || g->head_dim > pool->head_dim_max) {
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT,
                  "geometry: head_dim must be a multiple of 16 up to %d", pool->head_dim_max);
        return -EINVAL;
    }
    if (g->dtype != SINKD_F32) {
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT,
                  "geometry: dtype must be f32: K, V, Q and out in shared memory are f32, "
                  "and the pool's element type is the daemon's kv_dtype");
        return -EINVAL;
    }
    if (!(g->rope.theta > 0) || !(g->rope.scale >= 1)) {
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT,
                  "geometry: rope_theta must be > 0 and rope_scale >= 1");
        return -EINVAL;
    }
    return 0;
}

size_t eng_uid_sessions(const sinkd_engine *e, uint32_t uid)
{
    size_t n = 0;

    for (size_t i = 0; i < e->n_sess; i++)
        n += e->sess[i]->uid == uid;
    return n;
}

void eng_pack_session(sinkd_fw *w, const eng_session *s)
{
    sinkd_pack_kv_u64(&w->pk, "session", s->id);
    sinkd_pack_kv_str(&w->pk, "secret", s->secret);
    sinkd_pack_kv_str(&w->pk, "model", s->m ? s->m->name : "");
    sinkd_pack_kv_str(&w->pk, "policy", sinkd_policy_inst_name(s->inst));
    sinkd_pack_kv_u64(&w->pk, "n_layers", (uint64_t)s->geom.layers);
    sinkd_pack_kv_u64(&w->pk, "n_kv_heads", (uint64_t)s->geom.kv_heads);
    sinkd_pack_kv_u64(&w->pk, "head_dim", (uint64_t)s->geom.head_dim);
    sinkd_pack_kv_u64(&w->pk, "n_vocab", s->m ? (uint64_t)s->m->hp->n_vocab : 0);
}

int eng_sess_room(sinkd_engine *e)
{
    if (e->n_sess < e->cap_sess)
        return 0;
    size_t cap = e->cap_sess ? 2 * e->cap_sess : 16;
    eng_session **p = reallocarray(e->sess, cap, sizeof *p);
    if (!p)
        return -ENOMEM;
    e->sess = p;
    e->cap_sess = cap;
    return 0;
}

void eng_job_session_open(sinkd_engine *e, sinkd_job *j)
{
    const sinkd_engine_model *m = NULL;
    sinkd_kv_seq_params sp;
    eng_session *s;
    sinkd_fw w;
    int rc;

    if (e->sessions_per_uid && eng_uid_sessions(e, j->uid) >= e->sessions_per_uid) {
        eng_error(e, j, SINKD_ERR_QUOTA_EXCEEDED, "[quota] sessions_per_uid (%u) reached",
                  e->sessions_per_uid);
        return;
    }
    if (e->session_tokens && j->budget > e->session_tokens) {
        eng_error(e, j, SINKD_ERR_QUOTA_EXCEEDED,
                  "budget %" PRIu64 " is over [quota] session_tokens (%" PRIu64 ")", j->budget,
                  e->session_tokens);
        return;
    }
    if (j->persist && !e->state_dir) {
        /* refused now, not found out at the restart that loses it */
        eng_error(e, j, SINKD_ERR_UNSUPPORTED, "persist: no usable [server] state_dir, so the "
                  "session could not survive a restart");
        return;
    }
    if (!j->budget)
        j->budget = e->session_tokens; /* 0 when unlimited */
    if (!j->has_geometry) {
        m = sinkd_engine_model_find(e, j->model ? j->model : "", j->model ? strlen(j->model) : 0);
        if (!m) {
            if (j->model && j->model[0])
                eng_error(e, j, SINKD_ERR_NOT_FOUND, "no model '%s'", j->model);
            else
                eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT,
                          "no model is configured: open a raw session with geometry");
            return;
        }
    } else if (eng__check_geometry(e, j) < 0) {
        return;
    }
    if (e->next_sess == 0 || !(s = calloc(1, sizeof *s))) {
        eng_error(e, j, SINKD_ERR_NO_MEMORY, "out of memory");
        return;
    }
    s->id = e->next_sess;
    s->uid = j->uid;
    s->conn_id = j->conn_id;
    s->persist = j->persist;
    s->m = m;
    s->pending = -1;
    eng__secret(s->secret);
    if (m) {
        s->geom.layers = m->hp->n_layers;
        s->geom.q_heads = m->hp->n_heads;
        s->geom.kv_heads = m->hp->n_kv_heads;
        s->geom.head_dim = m->hp->head_dim;
        s->geom.dtype = SINKD_F32;
        s->geom.rope = sinkd_model_rope(m->model, SINKD_ROPE_ABSOLUTE);
        s->logits = malloc((size_t)m->hp->n_vocab * sizeof *s->logits);
    } else {
        s->geom = j->geom;
    }
    s->next_pos = calloc((size_t)s->geom.layers, sizeof *s->next_pos);
    if ((m && !s->logits) || !s->next_pos || eng_sess_room(e) < 0) {
        eng_error(e, j, SINKD_ERR_NO_MEMORY, "out of memory");
        goto fail;
    }
    if (eng__inst_create(e, j, s, &s->inst) < 0)
        goto fail;
    eng_policy_attach(e, s);
    memset(&sp, 0, sizeof sp);
    sp.uid = j->uid;
    sp.n_layers = s->geom.layers;
    sp.n_kv_heads = s->geom.kv_heads;
    sp.head_dim = s->geom.head_dim;
    sp.rope = s->geom.rope;
    sp.rope.mode = eng__rope_mode(s, s->inst);
    s->rope_mode = sp.rope.mode;
    /* budget is tokens per lane; the store counts pages of all lanes */
    sp.max_pages = j->budget ? (int64_t)((j->budget + (uint64_t)e->page_tokens - 1) /
                                         (uint64_t)e->page_tokens) *
                                   s->geom.layers * s->geom.kv_heads
                             : 0;
    s->max_pages = sp.max_pages;
    rc = sinkd_kv_seq_open(e->kv, &sp, &s->seq);
    if (rc < 0) {
        eng_error_errno(e, j, rc, "session.open");
        goto fail;
    }
    e->next_sess++;
    e->sess[e->n_sess++] = s;
    eng_update_memory(e);
    sinkd_log(SINKD_LOG_INFO, "session %llu opened by uid %u: %s, policy %s",
              (unsigned long long)s->id, s->uid, m ? m->name : "raw",
              sinkd_policy_inst_name(s->inst));
    if (eng_begin_reply(&w, j, ENG_SESSION_REPLY_PAIRS) < 0)
        return;
    eng_pack_session(&w, s);
    eng_send(e, j, &w, true);
    return;
fail:
    sinkd_policy_inst_destroy(s->inst);
    free(s->next_pos);
    free(s->logits);
    free(s);
}

void eng_job_session_close(sinkd_engine *e, sinkd_job *j)
{
    eng_session *s = eng_session_find(e, j);

    if (!s)
        return;
    if (s->gen)
        eng_gen_finish(e, s, "cancelled", false);
    sinkd_log(SINKD_LOG_INFO, "session %llu closed", (unsigned long long)s->id);
    eng_session_destroy(e, s);
    eng_reply_empty(e, j);
}

void eng_job_conn_closed(sinkd_engine *e, sinkd_job *j)
{
    for (size_t i = e->n_sess; i-- > 0;) {
        eng_session *s = e->sess[i];
        if (s->gen && s->gen->conn_id == j->conn_id) {
            /* nobody reads it any more: no reply, the tokens sent stay */
            sinkd_log(SINKD_LOG_INFO, "session %llu: generation ended with its connection",
                      (unsigned long long)s->id);
            eng_gen_finish(e, s, "cancelled", true);
        }
        if (s->conn_id != j->conn_id || s->persist)
            continue;
        sinkd_log(SINKD_LOG_INFO, "session %llu closed with its connection",
                  (unsigned long long)s->id);
        eng_session_destroy(e, s);
    }
}

void eng_job_conn_eof(sinkd_engine *e, sinkd_job *j)
{
    bool owed = false;

    for (size_t i = 0; i < e->n_sess; i++) {
        eng_session *s = e->sess[i];
        if (s->gen && s->gen->conn_id == j->conn_id)
            owed = s->gen_eof = true;
    }
    if (!owed)
        eng_conn_finish(e, j->conn_id);
}

static const char *eng__model_name(const eng_session *s)
{
    return s->m ? s->m->name : "";
}

void eng_job_session_list(sinkd_engine *e, sinkd_job *j)
{
    sinkd_kv_stats ks;
    uint32_t n = 0;
    sinkd_fw w;

    sinkd_kv_stats_get(e->kv, &ks);
    for (size_t i = 0; i < e->n_sess; i++)
        n += e->sess[i]->uid == j->uid || j->admin;
    if (eng_begin_reply(&w, j, 1) < 0)
        return;
    sinkd_pack_str(&w.pk, "sessions");
    msgpack_pack_array(&w.pk, n);
    for (size_t i = 0; i < e->n_sess; i++) {
        eng_session *s = e->sess[i];
        int64_t pages = sinkd_kv_seq_pages(s->seq);
        if (s->uid != j->uid && !j->admin)
            continue;
        msgpack_pack_map(&w.pk, 8);
        sinkd_pack_kv_u64(&w.pk, "session", s->id);
        sinkd_pack_kv_u64(&w.pk, "uid", s->uid);
        sinkd_pack_kv_str(&w.pk, "model", eng__model_name(s));
        sinkd_pack_kv_str(&w.pk, "policy", sinkd_policy_inst_name(s->inst));
        sinkd_pack_kv_u64(&w.pk, "tokens", (uint64_t)(s->prompting ? s->prompt_p0 : s->tokens));
        sinkd_pack_kv_u64(&w.pk, "pages", (uint64_t)pages);
        sinkd_pack_kv_u64(&w.pk, "bytes", (uint64_t)pages * ks.page_cost);
        sinkd_pack_kv_str(&w.pk, "state", s->gen ? "generating" : "idle");
    }
    eng_send(e, j, &w, true);
}

void eng_job_session_stats(sinkd_engine *e, sinkd_job *j)
{
    eng_session *s = eng_session_find(e, j);
    sinkd_kv_lane_stats all, ls;
    sinkd_fw w;

    if (!s)
        return;
    sinkd_kv_lane_stats_get(s->seq, SINKD_KV_ALL_LAYERS, &all);
    if (eng_begin_reply(&w, j, 11 + (s->fallback[0] != 0)) < 0)
        return;
    sinkd_pack_kv_u64(&w.pk, "session", s->id);
    sinkd_pack_kv_str(&w.pk, "model", eng__model_name(s));
    sinkd_pack_kv_str(&w.pk, "policy", sinkd_policy_inst_name(s->inst));
    sinkd_pack_kv_u64(&w.pk, "tokens", (uint64_t)s->tokens);
    sinkd_pack_kv_u64(&w.pk, "pages", (uint64_t)all.pages);
    sinkd_pack_kv_u64(&w.pk, "bytes", all.bytes);
    sinkd_pack_kv_u64(&w.pk, "defer_bytes", eng_defer_bytes(e, s));
    sinkd_pack_kv_u64(&w.pk, "evictions", s->evictions);
    sinkd_pack_kv_u64(&w.pk, "evicted_tokens", s->evicted_tokens);
    sinkd_pack_kv_str(&w.pk, "rope", s->rope_mode == SINKD_ROPE_CACHE ? "cache" : "absolute");
    sinkd_pack_str(&w.pk, "layers");
    msgpack_pack_array(&w.pk, (uint32_t)s->geom.layers);
    for (int32_t l = 0; l < s->geom.layers; l++) {
        sinkd_kv_lane_stats_get(s->seq, l, &ls);
        msgpack_pack_map(&w.pk, 4);
        sinkd_pack_kv_u64(&w.pk, "len_min", (uint64_t)ls.len_min);
        sinkd_pack_kv_f64(&w.pk, "len_mean", ls.len_mean);
        sinkd_pack_kv_u64(&w.pk, "len_max", (uint64_t)ls.len_max);
        sinkd_pack_kv_u64(&w.pk, "pages", (uint64_t)ls.pages);
    }
    if (s->fallback[0])
        sinkd_pack_kv_str(&w.pk, "fallback", s->fallback);
    eng_send(e, j, &w, true);
}

/* The session already runs the current version of the policy @j names and
 * that version changes its parameters live: reconfigure it in place, its
 * state and statistics kept. */
static bool eng__reconfigurable(sinkd_engine *e, const eng_session *s, const sinkd_job *j)
{
    const char *name = j->policy ? j->policy : "full";

    if (sinkd_policy_inst_fallback_reason(s->inst) || strcmp(name, sinkd_policy_inst_name(s->inst)))
        return false;
    /* 0 for a version replaced since: a new instance of the current one */
    return (eng_policy_caps(e, s->inst) & SINKD_POLICY_CAP_RECONFIGURE) != 0;
}

/* What follows a change of plan (a swap or a reconfigure): scores of
 * another statistic start at zero; the plan may want lanes shorter than
 * they are. Replies, or reports the error. */
static void eng__policy_changed(sinkd_engine *e, sinkd_job *j, eng_session *s, uint8_t old_stat,
                                bool reconfigured)
{
    sinkd_fw w;
    int rc;

    s->fallback[0] = '\0';
    s->evicted_after_prefill = false;
    sinkd_log(SINKD_LOG_INFO, "session %llu: policy now %s%s", (unsigned long long)s->id,
              sinkd_policy_inst_name(s->inst), reconfigured ? " (reconfigured)" : "");
    rc = eng_policy_swapped(e, s, old_stat);
    /* an eviction point of every plan, a prompt-time one included (SnapKV
     * would otherwise keep the lanes whole until the next append ends) */
    if (rc == 0)
        rc = eng_evict(e, s, -1, true, j);
    if (rc < 0) {
        eng_error_errno(e, j, rc, "session.policy: eviction");
        return;
    }
    if (eng_begin_reply(&w, j, 2) < 0)
        return;
    sinkd_pack_kv_str(&w.pk, "policy", sinkd_policy_inst_name(s->inst));
    sinkd_pack_str(&w.pk, "reconfigured");
    if (reconfigured)
        msgpack_pack_true(&w.pk);
    else
        msgpack_pack_false(&w.pk);
    eng_send(e, j, &w, true);
}

static void eng__reconfigure(sinkd_engine *e, sinkd_job *j, eng_session *s)
{
    uint8_t old_stat = sinkd_policy_inst_plan(s->inst)->stat;
    char why[256] = "";
    int rc;

    /* pending probabilities were taken under the old parameters */
    if ((rc = eng_defer_settle(e, s, -1)) < 0) {
        eng_error_errno(e, j, rc, "session.policy");
        return;
    }
    char *was = strdup(sinkd_policy_inst_params(s->inst));
    if (!was) {
        eng_error(e, j, SINKD_ERR_NO_MEMORY, "out of memory");
        return;
    }
    rc = sinkd_policy_inst_reconfigure(s->inst, j->params, why, sizeof why);
    if (rc < 0) { /* the instance is unchanged */
        eng_error(e, j, rc == -ENOMEM ? SINKD_ERR_NO_MEMORY : SINKD_ERR_INVALID_ARGUMENT,
                  "policy '%s': %s", sinkd_policy_inst_name(s->inst), why[0] ? why : strerror(-rc));
        free(was);
        return;
    }
    if ((rc = eng_apply_rope(e, s)) < 0) {
        /* the lanes kept their rope mode: so does the plan (the parameters
         * it ran with were taken before, they are taken again) */
        sinkd_policy_inst_reconfigure(s->inst, was, why, sizeof why);
        free(was);
        eng_error_errno(e, j, rc, "session.policy");
        return;
    }
    free(was);
    eng__policy_changed(e, j, s, old_stat, true);
}

void eng_job_session_policy(sinkd_engine *e, sinkd_job *j)
{
    eng_session *s = eng_session_find(e, j);
    sinkd_policy_inst *inst, *old;
    int rc;

    if (s && eng__reconfigurable(e, s, j)) {
        eng__reconfigure(e, j, s);
        return;
    }
    if (!s || eng__inst_create(e, j, s, &inst) < 0)
        return;
    /* pending probabilities belong to the old plan's statistic */
    if ((rc = eng_defer_settle(e, s, -1)) < 0) {
        sinkd_policy_inst_destroy(inst);
        eng_error_errno(e, j, rc, "session.policy");
        return;
    }
    old = s->inst;
    s->inst = inst;
    rc = eng_apply_rope(e, s);
    if (rc < 0) {
        s->inst = old;
        sinkd_policy_inst_destroy(inst);
        eng_error_errno(e, j, rc, "session.policy");
        return;
    }
    uint8_t old_stat = sinkd_policy_inst_plan(old)->stat;
    sinkd_policy_inst_destroy(old);
    eng_policy_attach(e, s);
    eng__policy_changed(e, j, s, old_stat, false);
}

/* ---- policy registry ops ------------------------------------------------- */

/* A copy of the registry's entries (*@n of them, caller frees), or NULL. */
static sinkd_policy_info *eng__policy_snapshot(sinkd_engine *e, size_t *n)
{
    sinkd_policy_info *all = NULL;
    size_t cap;

    *n = 0;
    /* The registry may change between the count and the copy: retry. */
    do {
        sinkd_policy_info *p;
        cap = *n + 4;
        if (!(p = realloc(all, cap * sizeof *all))) {
            free(all);
            return NULL;
        }
        all = p;
        sinkd_policy_list(e->reg, all, cap, n);
    } while (*n > cap);
    return all;
}

static void eng__policy_list(sinkd_engine *e, sinkd_job *j)
{
    size_t n;
    sinkd_policy_info *info = eng__policy_snapshot(e, &n);
    sinkd_fw w;

    if (!info) {
        eng_error(e, j, SINKD_ERR_NO_MEMORY, "out of memory");
        return;
    }
    if (eng_begin_reply(&w, j, 1) == 0) {
        sinkd_pack_str(&w.pk, "policies");
        msgpack_pack_array(&w.pk, (uint32_t)n);
        for (size_t i = 0; i < n; i++) {
            msgpack_pack_map(&w.pk, 7);
            sinkd_pack_kv_str(&w.pk, "name", info[i].name);
            sinkd_pack_kv_str(&w.pk, "version", info[i].version);
            sinkd_pack_kv_str(&w.pk, "summary", info[i].summary);
            sinkd_pack_kv_str(&w.pk, "path", info[i].path);
            sinkd_pack_kv_bool(&w.pk, "builtin", info[i].builtin != 0);
            sinkd_pack_kv_u64(&w.pk, "instances", (uint64_t)info[i].instances);
            sinkd_pack_kv_u64(&w.pk, "generation", info[i].generation);
        }
        eng_send(e, j, &w, true);
    }
    free(info);
}

static sinkd_errcode eng__policy_code(int rc)
{
    switch (rc) {
    case -ENOENT: return SINKD_ERR_NOT_FOUND;
    case -EPERM:
    case -EACCES: return SINKD_ERR_PERMISSION_DENIED;
    case -ENOMEM: return SINKD_ERR_NO_MEMORY;
    case -EEXIST:
    case -EALREADY: return SINKD_ERR_BUSY;
    default: return SINKD_ERR_INVALID_ARGUMENT;
    }
}

/* The registry entry whose path (@by_path) or name is @key, copied to @out. */
static bool eng__policy_find(sinkd_engine *e, const char *key, bool by_path,
                             sinkd_policy_info *out)
{
    size_t n;
    sinkd_policy_info *all = eng__policy_snapshot(e, &n);
    bool found = false;

    for (size_t i = 0; all && i < n && !found; i++) {
        if (!strcmp(by_path ? all[i].path : all[i].name, key)) {
            *out = all[i];
            found = true;
        }
    }
    free(all);
    return found;
}

void eng_job_policy(sinkd_engine *e, sinkd_job *j)
{
    char why[512] = "";
    sinkd_policy_info info;
    sinkd_fw w;
    int rc;

    switch (j->kind) {
    case SINKD_JOB_POLICY_LIST:
        eng__policy_list(e, j);
        return;
    case SINKD_JOB_POLICY_LOAD:
        rc = sinkd_policy_load(e->reg, j->policy, why, sizeof why);
        break;
    case SINKD_JOB_POLICY_RELOAD:
        rc = sinkd_policy_reload(e->reg, j->policy, why, sizeof why);
        break;
    default:
        rc = sinkd_policy_unload(e->reg, j->policy, why, sizeof why);
        break;
    }
    if (rc < 0) {
        eng_error(e, j, eng__policy_code(rc), "%s", why[0] ? why : strerror(-rc));
        return;
    }
    sinkd_log(SINKD_LOG_NOTICE, "policy %s: %s by uid %u",
              j->kind == SINKD_JOB_POLICY_LOAD ? "load" :
              j->kind == SINKD_JOB_POLICY_RELOAD ? "reload" : "unload", j->policy, j->uid);
    if (j->kind == SINKD_JOB_POLICY_UNLOAD) {
        eng_reply_empty(e, j);
        return;
    }
    /* load answers the descriptor's name, reload the new generation. The
     * registry keeps a loaded file by its resolved path. */
    char *resolved = j->kind == SINKD_JOB_POLICY_LOAD ? realpath(j->policy, NULL) : NULL;
    bool found = eng__policy_find(e, resolved ? resolved : j->policy,
                                  j->kind == SINKD_JOB_POLICY_LOAD, &info);
    free(resolved);
    if (!found) {
        eng_error(e, j, SINKD_ERR_INTERNAL, "policy vanished from the registry");
        return;
    }
    if (eng_begin_reply(&w, j, 1) < 0)
        return;
    if (j->kind == SINKD_JOB_POLICY_LOAD)
        sinkd_pack_kv_str(&w.pk, "name", info.name);
    else
        sinkd_pack_kv_u64(&w.pk, "generation", info.generation);
    eng_send(e, j, &w, true);
}
