/* Model sessions: prompt prefill (session.append), batched generation
 * (session.generate and the decode step), cancel, logits, and the
 * tokenizer ops.
 *
 * Conversation rule: every token sent in a token event is part of the
 * conversation. The last one of a generation is not run through the model
 * yet (its logits are not needed); it stays `pending` and is fed first by the
 * next append or generate. End-of-generation and stop_ids tokens are not
 * sent and not kept. */
#include "engine_internal.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The model session @j names, answered and NULL when it is not one. */
static eng_session *gen__session(sinkd_engine *e, const sinkd_job *j, const char *op)
{
    eng_session *s = eng_session_find(e, j);

    if (s && !s->m) {
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT, "session %llu is raw: %s needs a model",
                  (unsigned long long)s->id, op);
        return NULL;
    }
    return s;
}

static void gen__hist_push(eng_session *s, int32_t tok)
{
    s->hist[s->n_hist % ENG_HIST] = tok;
    s->n_hist++;
}

/* Drop from every lane of @s the tokens at positions >= @p0 (a forward that
 * failed half-way left them in some layers). Positions ascend in a lane, so
 * the keep list is a prefix. */
static int gen__truncate_from(sinkd_engine *e, eng_session *s, int32_t p0)
{
    int32_t n_lanes = s->geom.layers * s->geom.kv_heads;
    int rc = -ENOMEM;

    /* before keys move; keys move anyway (the failed step's must go) */
    if (eng_defer_settle(e, s, -1) < 0)
        eng_defer_drop(e, s);
    int32_t *off = calloc((size_t)n_lanes + 1, sizeof *off), *keep = NULL, *pos = NULL;
    size_t total = 0;

    for (int32_t i = 0; i < n_lanes; i++)
        total += (size_t)sinkd_kv_lane_len(s->seq, i / s->geom.kv_heads, i % s->geom.kv_heads);
    keep = malloc((total + 1) * sizeof *keep);
    pos = malloc((total + 1) * sizeof *pos);
    if (!off || !keep || !pos)
        goto out;
    for (int32_t i = 0; i < n_lanes; i++) {
        int32_t l = i / s->geom.kv_heads, h = i % s->geom.kv_heads, n = 0;
        int32_t len = sinkd_kv_lane_len(s->seq, l, h);
        if ((rc = sinkd_kv_lane_read(s->seq, l, h, pos, NULL)) < 0)
            goto out;
        while (n < len && pos[n] < p0)
            n++;
        for (int32_t t = 0; t < n; t++)
            keep[off[i] + t] = t;
        off[i + 1] = off[i] + n;
    }
    rc = sinkd_kv_compact(s->seq, SINKD_KV_ALL_LAYERS, off, keep);
out:
    free(off);
    free(keep);
    free(pos);
    return rc;
}

static int gen__decode_group(sinkd_engine *e, eng_session **ss, int32_t n, const sinkd_job *j,
                             bool pick);
static void gen__append_group(sinkd_engine *e, eng_session **ss, sinkd_job **jobs, int32_t n);

/* Run @n > 1 tokens through the model in chunks of prefill_chunk, evicting
 * between chunks and at the end (an eviction point of every plan); the last
 * logits land in s->logits. On failure the lanes are cut back to where they
 * were and s->logits still holds the last position's before the append (the
 * last chunk writes e->logits; copied on success). What an earlier chunk's
 * eviction dropped stays dropped. A cancel, close or closed connection
 * (eng_prefill_stop) stops it between two layers, a failure like another.
 * Between two chunks the other sessions' generations take a step and the
 * waiting jobs that touch no session run (eng_run_waiting), so that a long
 * prompt does not stall the daemon; *@others_ns gets the time they took.
 * (One token runs as a decode step: gen__append_group.) */
static int gen__prefill(sinkd_engine *e, eng_session *s, const int32_t *ids, int32_t n,
                        const sinkd_job *j, uint64_t *others_ns)
{
    int32_t *pos = malloc((size_t)(n < e->prefill_chunk ? n : e->prefill_chunk) * sizeof *pos);
    int32_t p0 = (int32_t)s->tokens;
    sinkd_model_hook hook;
    sinkd_model_opts o = { 0 };
    eng_fwd_ctx fc;
    int rc = 0;

    if (!pos)
        return -ENOMEM;
    o.hook = &hook;
    s->prompting = true; /* what runs between chunks sees the session as before */
    s->prompt_p0 = p0;
    for (int32_t done = 0; done < n && rc == 0;) {
        int32_t k = n - done < e->prefill_chunk ? n - done : e->prefill_chunk;
        /* nobody waits for this prompt any more, or its session is being
         * cancelled or closed: undone as a failed one (minutes of a long
         * one would hold every other request back) */
        if (done > 0 && (rc = eng_prefill_stop(e, s, j)) < 0)
            break;
        if (done > 0 && !eng_stopping(e)) {
            /* s generates nothing (an append is refused while it does), and
             * e->logits is only this prompt's after its last chunk */
            uint64_t t0 = eng_now_ns();
            eng_gen_stops_waiting(e);
            eng_run_waiting(e, j);
            eng_step(e);
            *others_ns += eng_now_ns() - t0;
        }
        for (int32_t i = 0; i < k; i++)
            pos[i] = (int32_t)s->tokens + i;
        o.rope_mode = s->rope_mode;
        rc = eng_prefill_begin(&fc, &hook, e, s);
        fc.stop_req = j;
        if (rc == 0)
            rc = eng_fwd_end(&fc, sinkd_model_prefill(s->m->model, e->kv, s->seq, ids + done,
                                                      pos, k, &o,
                                                      done + k == n ? e->logits : NULL));
        eng_beat(e, true);
        if (rc == 0) {
            s->tokens += k;
            done += k;
            rc = eng_evict(e, s, -1, done == n, j);
        }
    }
    free(pos);
    s->prompting = false;
    if (rc < 0) {
        if (gen__truncate_from(e, s, p0) < 0)
            sinkd_log(SINKD_LOG_ERR, "session %llu: could not undo a failed prefill",
                      (unsigned long long)s->id);
        s->tokens = p0;
        return rc;
    }
    for (int32_t i = 0; i < n; i++)
        gen__hist_push(s, ids[i]);
    memcpy(s->logits, e->logits, (size_t)s->m->hp->n_vocab * sizeof *s->logits);
    s->has_logits = true;
    return 0;
}

/* The tokens of an append or tokenize request: text encoded (BOS first when
 * @bos), or the ids checked against the vocabulary. *@out is malloc'ed. */
static int gen__tokens(sinkd_engine *e, const sinkd_job *j, const sinkd_engine_model *m, bool bos,
                       int32_t prefix, int32_t **out, size_t *n)
{
    int32_t *ids = NULL;
    size_t k = 0, extra = (bos ? 1 : 0) + (prefix >= 0 ? 1 : 0);
    int rc;

    if (j->has_text) {
        rc = sinkd_tokenizer_encode(m->tok, j->text, j->text_len,
                                    j->special ? SINKD_TOK_PARSE_SPECIAL : 0, &ids, &k);
        if (rc < 0) {
            eng_error_errno(e, j, rc, "tokenize");
            return rc;
        }
    } else {
        for (size_t i = 0; i < j->n_ids; i++) {
            if (j->ids[i] < 0 || j->ids[i] >= m->hp->n_vocab) {
                eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT, "ids[%zu] = %d: outside 0..%d", i,
                          j->ids[i], m->hp->n_vocab - 1);
                return -EINVAL;
            }
        }
        k = j->n_ids;
    }
    int32_t *all = malloc((k + extra + 1) * sizeof *all);
    if (!all) {
        free(ids);
        eng_error(e, j, SINKD_ERR_NO_MEMORY, "out of memory");
        return -ENOMEM;
    }
    size_t at = 0;
    if (prefix >= 0)
        all[at++] = prefix;
    if (bos)
        all[at++] = sinkd_tokenizer_bos(m->tok);
    memcpy(all + at, j->has_text ? ids : j->ids, k * sizeof *all);
    free(ids);
    *out = all;
    *n = k + at;
    return 0;
}

/* The reply of append @j: @n tokens run in @ms. */
static void gen__append_done(sinkd_engine *e, eng_session *s, const sinkd_job *j, size_t n,
                             double ms)
{
    sinkd_fw w;

    s->pending = -1;
    s->detok_carry = false;
    s->prefill_ms = ms;
    if (eng_begin_reply(&w, j, 3) < 0)
        return;
    sinkd_pack_kv_u64(&w.pk, "n_tokens", (uint64_t)n);
    sinkd_pack_kv_u64(&w.pk, "n_past", (uint64_t)s->tokens);
    sinkd_pack_kv_f64(&w.pk, "prefill_ms", ms);
    eng_send(e, j, &w, true);
}

void eng_job_append(sinkd_engine *e, sinkd_job *j)
{
    eng_session *s = gen__session(e, j, "session.append");
    int32_t *ids;
    size_t n;
    uint64_t t0;
    bool bos;
    int rc;

    if (!s)
        return;
    if (s->gen) {
        eng_error(e, j, SINKD_ERR_BUSY, "session %llu is generating", (unsigned long long)s->id);
        return;
    }
    bos = j->bos_set ? j->bos : (s->tokens == 0 && s->pending < 0 && s->m->add_bos);
    if (bos && sinkd_tokenizer_bos(s->m->tok) < 0) {
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT, "model '%s' has no BOS token", s->m->name);
        return;
    }
    if (gen__tokens(e, j, s->m, bos, s->pending, &ids, &n) < 0)
        return;
    if (n > INT32_MAX / 2) {
        free(ids);
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT, "too many tokens");
        return;
    }
    if (s->tokens > (int64_t)INT32_MAX - (int64_t)n) {
        free(ids);
        eng_error_errno(e, j, -EOVERFLOW, "session.append");
        return;
    }
    if (n == 1) {
        /* the path a generated token takes: the plan's selection and
         * per-step statistics exactly as generate gives them */
        s->feed = ids[0];
        free(ids);
        gen__append_group(e, &s, &j, 1);
        return;
    }
    uint64_t others = 0;
    t0 = eng_now_ns();
    rc = n ? gen__prefill(e, s, ids, (int32_t)n, j, &others) : 0;
    free(ids);
    if (rc < 0) {
        eng_error_errno(e, j, rc, "session.append");
        return;
    }
    gen__append_done(e, s, j, n, (double)(eng_now_ns() - t0 - others) / 1e6);
}

/* ---- single-token appends, batched ------------------------------------- */

eng_session *eng_append_single(sinkd_engine *e, const sinkd_job *j)
{
    eng_session *s;

    if (j->kind != SINKD_JOB_SESSION_APPEND || j->has_text || j->n_ids != 1)
        return NULL;
    s = eng_session_lookup(e, j);
    if (!s || !s->m || s->gen || s->pending >= 0 || s->tokens >= INT32_MAX ||
        j->ids[0] < 0 || j->ids[0] >= s->m->hp->n_vocab)
        return NULL;
    if (j->bos_set ? j->bos : (s->tokens == 0 && s->m->add_bos))
        return NULL;
    return s;
}

/* One group of compatible sessions, each with the token of its append
 * @jobs[i] in ss[i]->feed: one decode call, then each session's bookkeeping
 * (eviction at the append's end, as after a prefill). A failed group is
 * undone and its appends run alone, so that only the session at fault sees
 * the error. Undone means the new token's K/V: a statistic that
 * the layers before the failure already updated (decayed sums, say) keeps
 * that update, as after a failed decode step of a generation. */
static void gen__append_group(sinkd_engine *e, eng_session **ss, sinkd_job **jobs, int32_t n)
{
    uint64_t t0 = eng_now_ns();
    size_t nv = (size_t)ss[0]->m->hp->n_vocab;
    int rc;

    rc = gen__decode_group(e, ss, n, n == 1 ? jobs[0] : NULL, false);
    if (rc < 0) {
        for (int32_t i = 0; i < n; i++) {
            ss[i]->feed = -1;
            gen__truncate_from(e, ss[i], (int32_t)ss[i]->tokens);
        }
        if (n == 1) { /* s->logits untouched: the decode wrote e->logits */
            eng_error_errno(e, jobs[0], rc, "session.append");
            return;
        }
        for (int32_t i = 0; i < n; i++)
            eng_job_append(e, jobs[i]);
        return;
    }
    double ms = (double)(eng_now_ns() - t0) / 1e6;
    eng_beat(e, true);
    for (int32_t i = 0; i < n; i++) {
        eng_session *s = ss[i];
        int32_t p0 = (int32_t)s->tokens, tok = s->feed;
        s->feed = -1;
        s->tokens++;
        if ((rc = eng_evict(e, s, -1, true, jobs[i])) < 0) {
            /* as a failed append alone: the token is taken back out */
            if (gen__truncate_from(e, s, p0) < 0)
                sinkd_log(SINKD_LOG_ERR, "session %llu: could not undo a failed append",
                          (unsigned long long)s->id);
            s->tokens = p0;
            eng_error_errno(e, jobs[i], rc, "session.append");
            continue;
        }
        gen__hist_push(s, tok);
        memcpy(s->logits, e->logits + (size_t)i * nv, nv * sizeof *s->logits);
        s->has_logits = true;
        gen__append_done(e, s, jobs[i], 1, ms);
    }
}

/* Move the sessions of @ss[first + 1 .. n) that can share a decode call
 * with ss[first] right behind it, keeping order (a stable partition), and
 * @jobs alongside when given; returns the end of that group. */
static int32_t gen__group(const sinkd_engine *e, eng_session **ss, sinkd_job **jobs,
                          int32_t first, int32_t n)
{
    int32_t end = first + 1;

    for (int32_t i = first + 1; i < n; i++) {
        if (!eng_plan_compatible(e, ss[first], ss[i]))
            continue;
        eng_session *t = ss[i];
        memmove(&ss[end + 1], &ss[end], (size_t)(i - end) * sizeof t);
        ss[end] = t;
        if (jobs) {
            sinkd_job *tj = jobs[i];
            memmove(&jobs[end + 1], &jobs[end], (size_t)(i - end) * sizeof tj);
            jobs[end] = tj;
        }
        end++;
    }
    return end;
}

void eng_append_batch(sinkd_engine *e, eng_session **ss, sinkd_job **jobs, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        ss[i]->feed = jobs[i]->ids[0];
    for (int32_t first = 0; first < n;) {
        int32_t end = gen__group(e, ss, jobs, first, n);
        gen__append_group(e, ss + first, jobs + first, end - first);
        first = end;
    }
}

/* ---- generation -------------------------------------------------------- */

/* @s's generation is over, its answer sent: release it, and finish its
 * connection when that waited for its last generation (CONN_EOF). */
static void gen__release(sinkd_engine *e, eng_session *s)
{
    sinkd_job *j = s->gen;

    sinkd_sampler_free(&s->sampler);
    s->gen = NULL;
    s->cancel = false;
    atomic_fetch_sub_explicit(&e->ctr.generating, 1, memory_order_relaxed);
    if (s->gen_eof) {
        bool more = false;
        s->gen_eof = false;
        for (size_t i = 0; i < e->n_sess && !more; i++)
            more = e->sess[i]->gen && e->sess[i]->gen_eof && e->sess[i]->gen->conn_id == j->conn_id;
        if (!more)
            eng_conn_finish(e, j->conn_id);
    }
    sinkd_job_free(j);
}

void eng_gen_finish(sinkd_engine *e, eng_session *s, const char *reason, bool silent)
{
    sinkd_job *j = s->gen;
    sinkd_fw w;

    if (!j)
        return;
    if (s->feed >= 0)
        s->pending = s->feed;
    s->feed = -1;
    /* A character cut by the end stays out of this reply's text, whole in
     * the next one's, when the conversation goes on from its token; else
     * (an eos) it ends the text as U+FFFD. The text after a stop string is
     * dropped anyway. */
    const bool stopped = strcmp(reason, "stop") == 0;
    s->detok_carry = !stopped && s->pending >= 0 && s->detok.n_pend > 0;
    if (!stopped && !s->detok_carry) {
        char tail[8];
        size_t n = 0;
        sinkd_detok_flush(&s->detok, tail, sizeof tail, &n);
        if (n && s->text_len + n <= s->text_cap) {
            memcpy(s->text + s->text_len, tail, n);
            s->text_len += n;
        }
    }
    if (!silent && eng_begin_reply(&w, j, 4) == 0) {
        double dec_ms = (double)s->decode_ns / 1e6;
        sinkd_pack_kv_str(&w.pk, "reason", reason);
        sinkd_pack_kv_u64(&w.pk, "n_tokens", (uint64_t)s->gen_n);
        sinkd_pack_str(&w.pk, "text");
        sinkd_pack_strn(&w.pk, s->text ? s->text : "", s->text_len);
        sinkd_pack_str(&w.pk, "timings");
        msgpack_pack_map(&w.pk, 4);
        sinkd_pack_kv_f64(&w.pk, "prefill_ms", s->prefill_ms);
        sinkd_pack_kv_f64(&w.pk, "decode_ms", dec_ms);
        /* what the engine spends per token, sampling and events included */
        sinkd_pack_kv_f64(&w.pk, "step_ms",
                          s->gen_n > 1 ? (double)(s->tok_last_ns - s->tok_first_ns) / 1e6 /
                                             (s->gen_n - 1)
                                       : 0.0);
        sinkd_pack_kv_f64(&w.pk, "tokens_per_s", dec_ms > 0 ? s->gen_n / (dec_ms / 1e3) : 0.0);
        eng_send(e, j, &w, true);
    }
    gen__release(e, s);
}

/* Bytes at the end of text[from..len) that begin some stop string: held
 * back, since the next token may complete it. */
static size_t gen__hold(const eng_session *s, size_t from)
{
    const sinkd_job_gen *g = &s->gen->gen;
    size_t best = 0;

    for (size_t i = 0; i < g->n_stop; i++) {
        size_t sl = strlen(g->stop[i]);
        for (size_t h = sl - 1; h > best; h--) {
            if (h <= s->text_len - from &&
                !memcmp(s->text + s->text_len - h, g->stop[i], h)) {
                best = h;
                break;
            }
        }
    }
    return best;
}

/* Offset of the first stop string that ends after @from, or -1. */
static long gen__find_stop(const eng_session *s, size_t from)
{
    const sinkd_job_gen *g = &s->gen->gen;
    long first = -1;

    for (size_t i = 0; i < g->n_stop; i++) {
        size_t sl = strlen(g->stop[i]);
        size_t start = from >= sl ? from - sl + 1 : 0;
        const char *hit = memmem(s->text + start, s->text_len - start, g->stop[i], sl);
        if (hit && (first < 0 || hit - s->text < first))
            first = hit - s->text;
    }
    return first;
}

static void gen__event(sinkd_engine *e, eng_session *s, int32_t tok, size_t upto)
{
    sinkd_fw w;

    if (s->gen->gen.stream && eng_begin_event(&w, s->gen, "token", 2) == 0) {
        sinkd_pack_kv_i64(&w.pk, "token", tok);
        sinkd_pack_str(&w.pk, "text");
        sinkd_pack_strn(&w.pk, s->text + s->text_sent, upto - s->text_sent);
        eng_send(e, s->gen, &w, false);
    }
    s->text_sent = upto;
}

/* A token was sampled for @s: send it, or end the generation. */
static void gen__on_token(sinkd_engine *e, eng_session *s, int32_t tok)
{
    const sinkd_job_gen *g = &s->gen->gen;
    const sinkd_tokenizer *t = s->m->tok;
    size_t chunk, before = s->text_len;
    long stop;

    if (!g->ignore_eos && sinkd_tokenizer_is_eog(t, tok)) {
        eng_gen_finish(e, s, "eos", false);
        return;
    }
    for (size_t i = 0; i < g->n_stop_ids; i++) {
        if (g->stop_ids[i] == tok) {
            eng_gen_finish(e, s, "stop", false);
            return;
        }
    }
    s->feed = tok;
    s->gen_n++;
    s->tok_last_ns = eng_now_ns();
    if (s->gen_n == 1)
        s->tok_first_ns = s->tok_last_ns;
    gen__hist_push(s, tok);
    sinkd_sampler_accept(&s->sampler, tok);
    if (sinkd_detok_push(t, &s->detok, tok, 0, s->text + s->text_len,
                         s->text_cap - s->text_len, &chunk) == 0)
        s->text_len += chunk;
    stop = g->n_stop ? gen__find_stop(s, before) : -1;
    if (stop >= 0) {
        s->text_len = (size_t)stop;
        gen__event(e, s, tok, s->text_len > s->text_sent ? s->text_len : s->text_sent);
        eng_gen_finish(e, s, "stop", false);
        return;
    }
    gen__event(e, s, tok, s->text_len - gen__hold(s, s->text_sent));
    if (s->gen_n >= g->max_tokens)
        eng_gen_finish(e, s, "length", false);
}

/* Sample from @logits (scratch, modified) for @s. */
static void gen__sample(sinkd_engine *e, eng_session *s, float *logits)
{
    int32_t tok;

    if (sinkd_sampler_sample(&s->sampler, logits, &tok) < 0) {
        eng_error(e, s->gen, SINKD_ERR_INTERNAL, "sampling failed (NaN logits)");
        gen__release(e, s);
        return;
    }
    gen__on_token(e, s, tok);
}

static size_t gen__uid_generating(const sinkd_engine *e, uint32_t uid)
{
    size_t n = 0;

    for (size_t i = 0; i < e->n_sess; i++)
        n += e->sess[i]->uid == uid && e->sess[i]->gen;
    return n;
}

void eng_job_generate(sinkd_engine *e, sinkd_job *j)
{
    eng_session *s = gen__session(e, j, "session.generate");
    const sinkd_job_gen *g = &j->gen;
    size_t cap;
    int rc;

    if (!s)
        goto drop;
    if (s->gen) {
        eng_error(e, j, SINKD_ERR_BUSY, "session %llu is already generating",
                  (unsigned long long)s->id);
        goto drop;
    }
    if (e->generations_per_uid && gen__uid_generating(e, j->uid) >= e->generations_per_uid) {
        eng_error(e, j, SINKD_ERR_QUOTA_EXCEEDED, "[quota] generations_per_uid (%u) reached",
                  e->generations_per_uid);
        goto drop;
    }
    if (!s->has_logits && s->pending < 0) {
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT, "nothing to continue: append a prompt first");
        goto drop;
    }
    if ((rc = sinkd_sampler_init(&s->sampler, s->m->hp->n_vocab, &g->sp)) < 0) {
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT, "bad sampling parameters");
        goto drop;
    }
    /* Room for every token's bytes: detok chunks are bounded per token. */
    cap = (size_t)g->max_tokens * sinkd_tokenizer_max_chunk(s->m->tok) + 8;
    if (cap > s->text_cap) {
        char *p = realloc(s->text, cap);
        if (!p) {
            sinkd_sampler_free(&s->sampler);
            eng_error(e, j, SINKD_ERR_NO_MEMORY, "out of memory");
            goto drop;
        }
        s->text = p;
        s->text_cap = cap;
    }
    for (int64_t i = s->n_hist > g->sp.repeat_last_n ? s->n_hist - g->sp.repeat_last_n : 0;
         i < s->n_hist; i++)
        sinkd_sampler_accept(&s->sampler, s->hist[i % ENG_HIST]);
    s->gen = j;
    s->gen_n = 0;
    s->text_len = s->text_sent = 0;
    if (!s->detok_carry)
        s->detok = (sinkd_detok)SINKD_DETOK_INIT;
    s->detok_carry = false;
    s->detok.started = s->tokens > 0;
    s->gen_eof = false;
    s->cancel = false;
    s->decode_ns = 0;
    s->gen_start_ns = eng_now_ns();
    s->feed = -1;
    atomic_fetch_add_explicit(&e->ctr.generating, 1, memory_order_relaxed);
    if (g->max_tokens == 0) {
        eng_gen_finish(e, s, "length", false);
        return;
    }
    if (s->pending >= 0) {
        /* the last token sent is not in the cache yet: the next step runs it */
        s->feed = s->pending;
        s->pending = -1;
        return;
    }
    memcpy(e->logits, s->logits, (size_t)s->m->hp->n_vocab * sizeof *e->logits);
    gen__sample(e, s, e->logits);
    return;
drop:
    sinkd_job_free(j);
}

void eng_job_cancel(sinkd_engine *e, sinkd_job *j)
{
    eng_session *s = eng_session_find(e, j);

    if (!s)
        return;
    if (s->gen && !j->spent)
        s->cancel = true;
    eng_reply_empty(e, j);
}

/* ---- the decode step ----------------------------------------------------- */

/* Greedy sampling without a repetition penalty is the argmax of the raw
 * logits, which the backend's argmax finds where they are (ties to the
 * lowest id, as the sampler): only the ids cross to the host, not a
 * vocabulary of floats a row (on an H100, 1B geometry: 0.28 ms a step at
 * batch 1, 14 ms at batch 64). */
static bool gen__pick_ok(const eng_session *s)
{
    return s->gen && s->sampler.p.temperature <= 0.0f && s->sampler.p.repeat_penalty == 1.0f;
}

/* One decode call for the @n sessions @ss (one group: eng_plan_compatible).
 * @j: the append running it, told of a policy fallback; NULL in a step,
 * where each session's generation is. Logits land in e->logits, or with
 * @pick stay on the device and their argmax lands in e->picked. */
static int gen__decode_group(sinkd_engine *e, eng_session **ss, int32_t n, const sinkd_job *j,
                             bool pick)
{
    const sinkd_engine_model *m = ss[0]->m;
    sinkd_model_hook hook;
    sinkd_model_opts o = { ss[0]->rope_mode, false, &hook };
    eng_fwd_ctx c;
    int rc;

    if ((rc = eng_decode_begin(&c, &hook, e, ss, n)) < 0)
        return rc;
    if (j)
        c.req = j;
    for (int32_t i = 0; i < n; i++) {
        e->seqs[i] = ss[i]->seq;
        e->ids[i] = ss[i]->feed;
        e->pos[i] = (int32_t)ss[i]->tokens;
    }
    rc = sinkd_model_decode(m->model, e->kv, e->seqs, n, e->ids, e->pos, &o,
                            pick ? NULL : e->logits);
    if ((rc = eng_fwd_end(&c, rc)) < 0 || !pick)
        return rc;
    if ((rc = eng_dev_reserve(e, ENG_SLOT_PICKED, (size_t)n * sizeof(int32_t))) < 0 ||
        (rc = e->be->ops->argmax(e->be, e->dbuf[ENG_SLOT_PICKED],
                                 sinkd_model_logits_dev(m->model), n, m->hp->n_vocab)) < 0)
        return rc;
    return e->be->ops->d2h(e->be, e->picked, e->dbuf[ENG_SLOT_PICKED],
                           (size_t)n * sizeof(int32_t));
}

/* After a successful decode of @s: bookkeeping and eviction. False when
 * the generation ended there (cancelled, or the eviction failed). */
static bool gen__stepped(sinkd_engine *e, eng_session *s, uint64_t dt)
{
    int rc;

    s->tokens++;
    s->feed = -1;
    s->decode_ns += dt;
    if ((rc = eng_evict(e, s, -1, false, s->gen)) < 0) {
        eng_error_errno(e, s->gen, rc, "eviction");
        eng_gen_finish(e, s, "cancelled", true);
        return false;
    }
    if (s->cancel) {
        eng_gen_finish(e, s, "cancelled", false);
        return false;
    }
    return true;
}

/* Then the next token from the logits row @row (host). */
static void gen__advance(sinkd_engine *e, eng_session *s, float *row, uint64_t dt)
{
    memcpy(s->logits, row, (size_t)s->m->hp->n_vocab * sizeof *row);
    s->has_logits = true;
    if (gen__stepped(e, s, dt))
        gen__sample(e, s, row);
}

/* Or from the token @tok the backend picked from device row @row: the
 * session keeps no host logits while it generates, and fetches that row
 * once the generation is over (the next forward has not run yet). */
static void gen__advance_picked(sinkd_engine *e, eng_session *s, int32_t tok, int32_t row,
                                uint64_t dt)
{
    size_t nv = (size_t)s->m->hp->n_vocab;

    s->has_logits = false;
    if (gen__stepped(e, s, dt))
        gen__on_token(e, s, tok);
    if (s->gen)
        return;
    if (e->be->ops->d2h(e->be, s->logits, sinkd_model_logits_dev(s->m->model) + (size_t)row * nv,
                        nv * sizeof *s->logits) == 0)
        s->has_logits = true;
}

/* A failed decode: undo what some layers appended, end the generation.
 * The token it fed was sent (by this generation or the last) and stays in
 * the conversation: eng_gen_finish keeps it pending, as a failed append
 * does. */
static void gen__fail(sinkd_engine *e, eng_session *s, int rc)
{
    gen__truncate_from(e, s, (int32_t)s->tokens);
    eng_error_errno(e, s->gen, rc, "session.generate");
    eng_gen_finish(e, s, "cancelled", true);
}

bool eng_step(sinkd_engine *e)
{
    int32_t n = 0;

    if (atomic_load_explicit(&e->ctr.generating, memory_order_relaxed) == 0)
        return false;
    n = eng_sched_fill(e);
    /* Group compatible sessions, one decode per group. */
    for (int32_t first = 0; first < n;) {
        int32_t end = gen__group(e, e->batch, NULL, first, n);
        uint64_t t0 = eng_now_ns();
        bool pick = true;
        for (int32_t i = first; i < end; i++)
            pick &= gen__pick_ok(e->batch[i]);
        int rc = gen__decode_group(e, &e->batch[first], end - first, NULL, pick);
        uint64_t dt = eng_now_ns() - t0;
        if (rc < 0 && end - first > 1) {
            /* Find out whose: undo, then run each session alone. */
            for (int32_t i = first; i < end; i++)
                gen__truncate_from(e, e->batch[i], (int32_t)e->batch[i]->tokens);
            for (int32_t i = first; i < end; i++) {
                t0 = eng_now_ns();
                rc = gen__decode_group(e, &e->batch[i], 1, NULL, false);
                if (rc < 0)
                    gen__fail(e, e->batch[i], rc);
                else
                    gen__advance(e, e->batch[i], e->logits, eng_now_ns() - t0);
            }
        } else if (rc < 0) {
            gen__fail(e, e->batch[first], rc);
        } else {
            size_t nv = (size_t)e->batch[first]->m->hp->n_vocab;
            for (int32_t i = first; i < end; i++) {
                if (pick)
                    gen__advance_picked(e, e->batch[i], e->picked[i - first], i - first, dt);
                else
                    gen__advance(e, e->batch[i], e->logits + (size_t)(i - first) * nv, dt);
            }
        }
        first = end;
    }
    return true;
}

/* ---- logits and the tokenizer ops ----------------------------------------- */

void eng_job_logits(sinkd_engine *e, sinkd_job *j)
{
    eng_session *s = gen__session(e, j, "session.logits");
    uint64_t bytes;
    sinkd_fw w;
    int rc;

    if (!s)
        return;
    if (!s->has_logits && s->gen) {
        eng_error(e, j, SINKD_ERR_BUSY,
                  "session %llu is generating greedily on the device: its logits are kept "
                  "when the generation ends", (unsigned long long)s->id);
        return;
    }
    if (!s->has_logits) {
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT, "no logits yet: append a prompt first");
        return;
    }
    bytes = (uint64_t)s->m->hp->n_vocab * 4;
    const sinkd_job_shm *out = &j->out;
    if (eng_quota_shm(e, j, &out, &bytes, 1) < 0)
        return;
    if ((rc = sinkd_shm_write(j->out.r, j->out.off, s->logits, bytes)) < 0) {
        eng_error(e, j, SINKD_ERR_BAD_SHM, "%llu bytes at offset %llu %s",
                  (unsigned long long)bytes, (unsigned long long)j->out.off,
                  rc == -ERANGE ? "do not fit the region" : "faulted: the region shrank");
        return;
    }
    if (eng_begin_reply(&w, j, 1) < 0)
        return;
    sinkd_pack_kv_u64(&w.pk, "n_vocab", (uint64_t)s->m->hp->n_vocab);
    eng_send(e, j, &w, true);
}

static const sinkd_engine_model *gen__model(sinkd_engine *e, const sinkd_job *j)
{
    const sinkd_engine_model *m =
        sinkd_engine_model_find(e, j->model ? j->model : "", j->model ? strlen(j->model) : 0);

    if (!m)
        eng_error(e, j, SINKD_ERR_NOT_FOUND, "no model '%s'", j->model ? j->model : "");
    return m;
}

void eng_job_tokenize(sinkd_engine *e, sinkd_job *j)
{
    const sinkd_engine_model *m = gen__model(e, j);
    int32_t *ids;
    size_t n;
    sinkd_fw w;

    if (!m)
        return;
    if (gen__tokens(e, j, m, j->bos_set ? j->bos : m->add_bos, -1, &ids, &n) < 0)
        return;
    if (eng_begin_reply(&w, j, 1) == 0) {
        sinkd_pack_str(&w.pk, "ids");
        msgpack_pack_array(&w.pk, (uint32_t)n);
        for (size_t i = 0; i < n; i++)
            msgpack_pack_int32(&w.pk, ids[i]);
        eng_send(e, j, &w, true);
    }
    free(ids);
}

void eng_job_detokenize(sinkd_engine *e, sinkd_job *j)
{
    const sinkd_engine_model *m = gen__model(e, j);
    char *text;
    size_t len;
    sinkd_fw w;
    int rc;

    if (!m)
        return;
    rc = sinkd_tokenizer_decode(m->tok, j->ids, j->n_ids, 0, &text, &len);
    if (rc < 0) {
        eng_error(e, j, rc == -EINVAL ? SINKD_ERR_INVALID_ARGUMENT : SINKD_ERR_NO_MEMORY,
                  rc == -EINVAL ? "an id is outside the vocabulary" : "out of memory");
        return;
    }
    if (eng_begin_reply(&w, j, 1) == 0) {
        sinkd_pack_str(&w.pk, "text");
        sinkd_pack_strn(&w.pk, text, len);
        eng_send(e, j, &w, true);
    }
    free(text);
}
