/*
 * The KV store on the CPU backend: configuration, append and the lane arrays,
 * compaction invariants (K, V, pos and score move together, order kept,
 * pages freed at once, pool usage drops), pool exhaustion and budgets (clear
 * errors, nothing changed, other sequences untouched), rope switches, and a
 * random interleaving of append / batch append / compact / close checked
 * against an independent model of every lane's contents.
 */
#include <criterion/criterion.h>
#include <errno.h>

#include "../kernels/tref.h"
#include "kv.h"

static sinkd_backend *be;

static void setup(void)
{
    cr_assert_eq(sinkd_cpu_backend_open(2, &be), 0);
}

static void teardown(void)
{
    sinkd_backend_close(be);
}

TestSuite(kv, .init = setup, .fini = teardown);

static const sinkd_rope rope_abs = {10000.0f, 1.0f, SINKD_ROPE_NEOX, SINKD_ROPE_ABSOLUTE, {0}};

static sinkd_kv *open_store(uint64_t pages, int32_t pt, int32_t hdm, uint8_t dt, int64_t seq_pages,
                            int64_t uid_pages)
{
    sinkd_kv_config c = SINKD_KV_CONFIG_INIT;
    c.page_tokens = pt;
    c.head_dim_max = hdm;
    c.dtype = dt;
    c.session_pages = seq_pages;
    c.uid_pages = uid_pages;
    uint64_t cost = sinkd_dtype_bytes(dt, 2 * (size_t)pt * hdm) + (uint64_t)pt * 8 + 2 * (uint64_t)hdm * 4;
    c.pool_bytes = pages * cost + cost / 2;
    sinkd_kv *kv = NULL;
    cr_assert_eq(sinkd_kv_open(be, &c, &kv), 0);
    sinkd_kv_stats st;
    sinkd_kv_stats_get(kv, &st);
    cr_assert_eq(st.pages_total, (int64_t)pages);
    cr_assert_eq(st.page_cost, cost);
    return kv;
}

static sinkd_kv_seq *open_seq(sinkd_kv *kv, uint32_t uid, int32_t layers, int32_t nkv, int32_t hd)
{
    sinkd_kv_seq_params p = {.uid = uid, .n_layers = layers, .n_kv_heads = nkv, .head_dim = hd,
                             .rope = rope_abs};
    sinkd_kv_seq *s = NULL;
    cr_assert_eq(sinkd_kv_seq_open(kv, &p, &s), 0);
    return s;
}

/* ---- an independent model of every lane --------------------------------------- */

typedef struct m_lane {
    int32_t len;
    float *k, *v;   /* [cap][hd], dtype-rounded */
    int32_t *pos;
    float *score;
} m_lane;

typedef struct m_seq {
    sinkd_kv_seq *seq;
    uint32_t uid;
    int32_t layers, nkv, hd;
    m_lane *lanes;
} m_seq;

#define M_CAP 700 /* > the most one lane can hold under the tests' budgets */

static void m_open(m_seq *m, sinkd_kv *kv, uint32_t uid, int32_t layers, int32_t nkv, int32_t hd)
{
    m->seq = open_seq(kv, uid, layers, nkv, hd);
    m->uid = uid;
    m->layers = layers;
    m->nkv = nkv;
    m->hd = hd;
    m->lanes = calloc((size_t)layers * nkv, sizeof(m_lane));
    for (int32_t i = 0; i < layers * nkv; i++) {
        m->lanes[i].k = malloc(sizeof(float) * M_CAP * hd);
        m->lanes[i].v = malloc(sizeof(float) * M_CAP * hd);
        m->lanes[i].pos = malloc(sizeof(int32_t) * M_CAP);
        m->lanes[i].score = malloc(sizeof(float) * M_CAP);
    }
}

static void m_close(m_seq *m)
{
    sinkd_kv_seq_close(m->seq);
    for (int32_t i = 0; i < m->layers * m->nkv; i++) {
        free(m->lanes[i].k);
        free(m->lanes[i].v);
        free(m->lanes[i].pos);
        free(m->lanes[i].score);
    }
    free(m->lanes);
    memset(m, 0, sizeof *m);
}

static float m_round(uint8_t dt, float x)
{
    float b[2];
    t_store(dt, b, 0, x);
    return (float)t_load(dt, b, 0);
}

/* Append n tokens to the model's lanes of @layer from k/v [n][nkv][hd]. */
static void m_append(m_seq *m, uint8_t dt, int32_t layer, int32_t n, const float *k,
                     const float *v, const int32_t *pos, int32_t tok_stride)
{
    for (int32_t h = 0; h < m->nkv; h++) {
        m_lane *ln = &m->lanes[layer * m->nkv + h];
        for (int32_t i = 0; i < n; i++, ln->len++) {
            for (int32_t e = 0; e < m->hd; e++) {
                size_t src = ((size_t)i * tok_stride + h) * m->hd + e;
                ln->k[(size_t)ln->len * m->hd + e] = m_round(dt, k[src]);
                ln->v[(size_t)ln->len * m->hd + e] = m_round(dt, v[src]);
            }
            ln->pos[ln->len] = pos[i];
            ln->score[ln->len] = 0;
        }
    }
}

static void m_compact(m_seq *m, int32_t lane, const int32_t *keep, int32_t nk)
{
    m_lane *ln = &m->lanes[lane];
    for (int32_t j = 0; j < nk; j++) {
        memmove(ln->k + (size_t)j * m->hd, ln->k + (size_t)keep[j] * m->hd, sizeof(float) * m->hd);
        memmove(ln->v + (size_t)j * m->hd, ln->v + (size_t)keep[j] * m->hd, sizeof(float) * m->hd);
        ln->pos[j] = ln->pos[keep[j]];
        ln->score[j] = ln->score[keep[j]];
    }
    ln->len = nk;
}

/* Store and model agree on every lane: length, K, V, pos, score; the lane
 * arrays of the store address the same rows; pages match the lengths. */
static void m_check(sinkd_kv *kv, const m_seq *m)
{
    const sinkd_kv_pool *pool = sinkd_kv_pool_get(kv);
    int32_t pt = pool->page_tokens;
    int64_t pages = 0;
    float *k = malloc(sizeof(float) * M_CAP * m->hd), *v = malloc(sizeof(float) * M_CAP * m->hd);
    int32_t *pos = malloc(sizeof(int32_t) * M_CAP);
    float *score = malloc(sizeof(float) * M_CAP);
    for (int32_t layer = 0; layer < m->layers; layer++) {
        sinkd_lanes lanes;
        cr_assert_eq(sinkd_kv_lanes_seq(m->seq, layer, &lanes), 0);
        cr_assert_eq(lanes.n_lanes, m->nkv);
        for (int32_t h = 0; h < m->nkv; h++) {
            const m_lane *ln = &m->lanes[layer * m->nkv + h];
            cr_assert_eq(sinkd_kv_lane_len(m->seq, layer, h), ln->len);
            cr_assert_eq(lanes.len[h], ln->len);
            cr_assert_eq(sinkd_kv_lane_read_kv(m->seq, layer, h, k, v), 0);
            cr_assert_eq(sinkd_kv_lane_read(m->seq, layer, h, pos, score), 0);
            cr_assert_eq(memcmp(k, ln->k, sizeof(float) * (size_t)ln->len * m->hd), 0,
                         "K of layer %d head %d", layer, h);
            cr_assert_eq(memcmp(v, ln->v, sizeof(float) * (size_t)ln->len * m->hd), 0);
            cr_assert_eq(memcmp(pos, ln->pos, sizeof(int32_t) * (size_t)ln->len), 0);
            cr_assert_eq(memcmp(score, ln->score, sizeof(float) * (size_t)ln->len), 0);
            /* the device lane arrays address the same tokens */
            for (int32_t t = 0; t < ln->len; t++) {
                int64_t slot = (int64_t)lanes.page_ids[lanes.page_off[h] + t / pt] * pt + t % pt;
                cr_assert_eq(pool->pos[slot], ln->pos[t]);
            }
            int32_t np = lanes.page_off[h + 1] - lanes.page_off[h];
            cr_assert_eq(np, (ln->len + pt - 1) / pt, "pages of a lane follow its length");
            pages += np;
        }
    }
    cr_assert_eq(sinkd_kv_seq_pages(m->seq), pages);
    free(k);
    free(v);
    free(pos);
    free(score);
}

/* ---- tests ----------------------------------------------------------------------- */

Test(kv, config_is_validated)
{
    sinkd_kv_config c = SINKD_KV_CONFIG_INIT;
    sinkd_kv *kv = NULL;
    c.pool_bytes = 1 << 20;
    c.dtype = SINKD_Q8_0;
    cr_assert_eq(sinkd_kv_open(be, &c, &kv), -EINVAL);
    c.dtype = SINKD_F32;
    c.page_tokens = 0;
    cr_assert_eq(sinkd_kv_open(be, &c, &kv), -EINVAL);
    c.page_tokens = 16;
    c.head_dim_max = 20;
    cr_assert_eq(sinkd_kv_open(be, &c, &kv), -EINVAL);
    c.head_dim_max = 128;
    c.pool_bytes = 100; /* less than one page */
    cr_assert_eq(sinkd_kv_open(be, &c, &kv), -EINVAL);
    c.pool_bytes = 0;
    c.pool_fraction = 1.5;
    cr_assert_eq(sinkd_kv_open(be, &c, &kv), -EINVAL);
    cr_assert_null(kv);
    /* a fraction of the backend's free memory */
    c.pool_fraction = 1e-4;
    cr_assert_eq(sinkd_kv_open(be, &c, &kv), 0);
    sinkd_kv_stats st;
    sinkd_kv_stats_get(kv, &st);
    cr_assert(st.pages_total >= 1 && st.pages_used == 0);
    cr_assert_eq(st.page_bytes, 2 * 16 * 128 * 4);
    cr_assert(st.bytes_total <= (uint64_t)(be->info.mem_free * 1.1e-4) + st.page_cost);
    sinkd_kv_close(kv);
}

Test(kv, append_then_lanes_feed_attention)
{
    sinkd_kv *kv = open_store(64, 4, 64, SINKD_F16, 0, 0);
    m_seq a, b;
    m_open(&a, kv, 1000, 2, 2, 64);
    m_open(&b, kv, 1001, 2, 2, 64);
    int32_t n = 7, pos[7];
    float k[7 * 2 * 64], v[7 * 2 * 64];
    for (int32_t layer = 0; layer < 2; layer++)
        for (int s = 0; s < 2; s++) {
            m_seq *m = s ? &b : &a;
            t_fill(k, sizeof k / sizeof k[0]);
            t_fill(v, sizeof v / sizeof v[0]);
            for (int32_t i = 0; i < n; i++)
                pos[i] = 3 * i + s;
            cr_assert_eq(sinkd_kv_append(m->seq, layer, n - s, k, v, pos), 0);
            m_append(m, SINKD_F16, layer, n - s, k, v, pos, 2);
        }
    /* one decode step for both: one token each, [n_seqs][nkv][hd] */
    sinkd_kv_seq *seqs[2] = {a.seq, b.seq};
    int32_t dpos[2] = {50, 51};
    t_fill(k, 2 * 2 * 64);
    t_fill(v, 2 * 2 * 64);
    sinkd_lanes lanes, from_append;
    cr_assert_eq(sinkd_kv_append_batch_lanes(kv, seqs, 2, 1, k, v, dpos, &from_append), 0);
    /* the append's own lane arrays (valid until the next lane build: keep
     * a copy) are the ones lanes_batch builds after it */
    int32_t snap[4 + 5 + 64];
    int32_t n_ids = from_append.page_off[4];
    cr_assert(n_ids <= 64);
    memcpy(snap, from_append.len, 4 * sizeof(int32_t));
    memcpy(snap + 4, from_append.page_off, 5 * sizeof(int32_t));
    memcpy(snap + 9, from_append.page_ids, (size_t)n_ids * sizeof(int32_t));
    m_append(&a, SINKD_F16, 1, 1, k, v, &dpos[0], 2);
    m_append(&b, SINKD_F16, 1, 1, k + 2 * 64, v + 2 * 64, &dpos[1], 2);
    m_check(kv, &a);
    m_check(kv, &b);

    /* the batch lanes drive attn_decode; compare with the reference */
    cr_assert_eq(sinkd_kv_lanes_batch(kv, seqs, 2, 1, &lanes), 0);
    cr_assert_eq(lanes.n_lanes, from_append.n_lanes);
    cr_assert_arr_eq(snap, lanes.len, 4 * sizeof(int32_t));
    cr_assert_arr_eq(snap + 4, lanes.page_off, 5 * sizeof(int32_t));
    cr_assert_arr_eq(snap + 9, lanes.page_ids, (size_t)n_ids * sizeof(int32_t));
    /* one block, as kv.h promises (the engine copies it whole) */
    cr_assert(lanes.page_off == lanes.len + 4 && lanes.page_ids == lanes.page_off + 5);
    cr_assert(from_append.page_off == from_append.len + 4 &&
              from_append.page_ids == from_append.page_off + 5);
    float q[2 * 4 * 64], out[2 * 4 * 64];
    t_fill(q, sizeof q / sizeof q[0]);
    sinkd_decode_args d = {
        .pool = sinkd_kv_pool_get(kv), .lanes = lanes, .n_seqs = 2, .n_q_heads = 4,
        .n_kv_heads = 2, .head_dim = 64, .rope = rope_abs, .softmax_scale = 0.125f, .q = q,
        .out = out, .q_pos = dpos,
    };
    cr_assert_eq(be->ops->attn_decode(be, &d), 0);
    t_pool tp = {.pool = *d.pool, .n_lanes = 4, .len = (int32_t *)lanes.len,
                 .page_off = (int32_t *)lanes.page_off, .page_ids = (int32_t *)lanes.page_ids,
                 .head_dim = 64};
    double ref[2 * 64];
    int32_t keys[16];
    for (int32_t l = 0; l < 4; l++) {
        for (int32_t t = 0; t < lanes.len[l]; t++)
            keys[t] = t;
        t_attend(&tp, l, keys, lanes.len[l], q + (size_t)l * 2 * 64, 2, dpos[l / 2], &rope_abs,
                 0.125, ref, NULL);
        for (int32_t i = 0; i < 2 * 64; i++)
            cr_assert(t_close(out[l * 2 * 64 + i], ref[i], 1e-5));
    }
    /* a sequence twice in one batch, or of another shape, is refused */
    sinkd_kv_seq *dup[2] = {a.seq, a.seq};
    cr_assert_eq(sinkd_kv_lanes_batch(kv, dup, 2, 0, &lanes), -EINVAL);
    cr_assert_eq(sinkd_kv_append_batch(kv, dup, 2, 0, k, v, dpos), -EINVAL);
    sinkd_kv_seq *other = open_seq(kv, 1, 2, 1, 64);
    sinkd_kv_seq *mixed[2] = {a.seq, other};
    cr_assert_eq(sinkd_kv_lanes_batch(kv, mixed, 2, 0, &lanes), -EINVAL);
    cr_assert_eq(sinkd_kv_lanes_seq(a.seq, 2, &lanes), -EINVAL);
    sinkd_kv_seq_close(other);
    m_check(kv, &a);
    m_close(&a);
    m_close(&b);
    sinkd_kv_stats st;
    sinkd_kv_stats_get(kv, &st);
    cr_assert_eq(st.pages_used, 0);
    cr_assert_eq(st.n_seqs, 0);
    sinkd_kv_close(kv);
}

/* Give every token of every lane of @m a distinct score (CPU: pool is host memory). */
static void set_scores(sinkd_kv *kv, m_seq *m)
{
    const sinkd_kv_pool *pool = sinkd_kv_pool_get(kv);
    int32_t pt = pool->page_tokens;
    for (int32_t layer = 0; layer < m->layers; layer++) {
        sinkd_lanes lanes;
        cr_assert_eq(sinkd_kv_lanes_seq(m->seq, layer, &lanes), 0);
        for (int32_t h = 0; h < m->nkv; h++)
            for (int32_t t = 0; t < lanes.len[h]; t++) {
                int64_t slot = (int64_t)lanes.page_ids[lanes.page_off[h] + t / pt] * pt + t % pt;
                pool->score[slot] = t_unif();
                m->lanes[layer * m->nkv + h].score[t] = pool->score[slot];
            }
    }
}

Test(kv, compaction_moves_tokens_and_frees_pages)
{
    sinkd_kv *kv = open_store(200, 4, 32, SINKD_F32, 0, 0);
    m_seq m;
    m_open(&m, kv, 7, 2, 3, 32);
    float k[50 * 3 * 32], v[50 * 3 * 32];
    int32_t pos[50];
    for (int32_t i = 0; i < 50; i++)
        pos[i] = 10 + 2 * i;
    for (int32_t layer = 0; layer < 2; layer++) {
        t_fill(k, sizeof k / sizeof k[0]);
        t_fill(v, sizeof v / sizeof v[0]);
        cr_assert_eq(sinkd_kv_append(m.seq, layer, 50, k, v, pos), 0);
        m_append(&m, SINKD_F32, layer, 50, k, v, pos, 3);
    }
    set_scores(kv, &m);
    sinkd_kv_stats before, after;
    sinkd_kv_stats_get(kv, &before);
    cr_assert_eq(before.pages_used, 2 * 3 * 13);

    /* layer 1: head 0 keeps sinks + recent, head 1 keeps everything, head 2 nothing */
    int32_t keep_off[4] = {0}, keep[100];
    int32_t n0 = 0;
    for (int32_t t = 0; t < 50; t++)
        if (t < 4 || t >= 40)
            keep[n0++] = t;
    keep_off[1] = n0;
    for (int32_t t = 0; t < 50; t++)
        keep[n0 + t] = t;
    keep_off[2] = keep_off[3] = n0 + 50;
    cr_assert_eq(sinkd_kv_compact(m.seq, 1, keep_off, keep), 0);
    m_compact(&m, 3, keep, n0);
    m_compact(&m, 4, keep + n0, 50);
    m_compact(&m, 5, NULL, 0);
    m_check(kv, &m);
    sinkd_kv_stats_get(kv, &after);
    cr_assert_eq(after.pages_used, before.pages_used - (13 - 4) - 13);
    cr_assert_eq(sinkd_kv_uid_pages(kv, 7), after.pages_used);
    sinkd_kv_lane_stats ls;
    cr_assert_eq(sinkd_kv_lane_stats_get(m.seq, 1, &ls), 0);
    cr_assert_eq(ls.len_min, 0);
    cr_assert_eq(ls.len_max, 50);
    cr_assert_eq(ls.tokens, n0 + 50);
    cr_assert_eq(ls.pages, 4 + 13);

    /* bad keep lists are refused before anything changes */
    int32_t bad_off[4] = {0, 2, 2, 2}, bad[2] = {3, 3};
    cr_assert_eq(sinkd_kv_compact(m.seq, 0, bad_off, bad), -EINVAL);
    int32_t far[2] = {0, 50};
    cr_assert_eq(sinkd_kv_compact(m.seq, 0, bad_off, far), -EINVAL);
    m_check(kv, &m);

    /* every layer at once */
    int32_t all_off[7] = {0}, all[300], na = 0;
    for (int32_t l = 0; l < 6; l++) {
        for (int32_t t = 0; t < m.lanes[l].len; t += 3)
            all[na++] = t;
        all_off[l + 1] = na;
    }
    cr_assert_eq(sinkd_kv_compact(m.seq, SINKD_KV_ALL_LAYERS, all_off, all), 0);
    for (int32_t l = 0; l < 6; l++)
        m_compact(&m, l, all + all_off[l], all_off[l + 1] - all_off[l]);
    m_check(kv, &m);
    m_close(&m);
    sinkd_kv_close(kv);
}

/* A prefill chunk's append hands back the lane arrays sinkd_kv_lanes_seq
 * builds after it. */
Test(kv, append_returns_the_lanes)
{
    sinkd_kv *kv = open_store(32, 4, 64, SINKD_F16, 0, 0);
    m_seq a;
    m_open(&a, kv, 7, 2, 2, 64);
    int32_t pos[9] = {0, 1, 2, 3, 4, 5, 6, 7, 8};
    float k[9 * 2 * 64], v[9 * 2 * 64];
    t_fill(k, sizeof k / sizeof k[0]);
    t_fill(v, sizeof v / sizeof v[0]);
    sinkd_lanes got, built;
    cr_assert_eq(sinkd_kv_append_lanes(a.seq, 1, 9, k, v, pos, &got), 0);
    m_append(&a, SINKD_F16, 1, 9, k, v, pos, 2);
    int32_t snap[2 + 3 + 8];
    cr_assert_eq(got.n_lanes, 2);
    cr_assert(got.page_off[2] <= 8);
    memcpy(snap, got.len, 2 * sizeof(int32_t));
    memcpy(snap + 2, got.page_off, 3 * sizeof(int32_t));
    memcpy(snap + 5, got.page_ids, (size_t)got.page_off[2] * sizeof(int32_t));
    cr_assert_eq(sinkd_kv_lanes_seq(a.seq, 1, &built), 0);
    cr_assert_arr_eq(snap, built.len, 2 * sizeof(int32_t));
    cr_assert_arr_eq(snap + 2, built.page_off, 3 * sizeof(int32_t));
    cr_assert_arr_eq(snap + 5, built.page_ids, (size_t)built.page_off[2] * sizeof(int32_t));
    cr_assert_eq(sinkd_kv_append_lanes(a.seq, 2, 1, k, v, pos, &got), -EINVAL);
    m_check(kv, &a);
    m_close(&a);
    sinkd_kv_close(kv);
}

Test(kv, pool_exhaustion_changes_nothing)
{
    sinkd_kv *kv = open_store(10, 4, 16, SINKD_F32, 0, 0);
    m_seq a, b;
    m_open(&a, kv, 1, 1, 2, 16);
    m_open(&b, kv, 2, 1, 2, 16);
    float k[12 * 2 * 16], v[12 * 2 * 16];
    int32_t pos[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
    t_fill(k, sizeof k / sizeof k[0]);
    t_fill(v, sizeof v / sizeof v[0]);
    cr_assert_eq(sinkd_kv_append(a.seq, 0, 12, k, v, pos), 0); /* 6 pages */
    m_append(&a, SINKD_F32, 0, 12, k, v, pos, 2);
    cr_assert_eq(sinkd_kv_append(b.seq, 0, 5, k, v, pos), 0); /* 4 pages: pool full */
    m_append(&b, SINKD_F32, 0, 5, k, v, pos, 2);
    cr_assert_eq(sinkd_kv_append(b.seq, 0, 3, k, v, pos), 0); /* fits in its pages */
    m_append(&b, SINKD_F32, 0, 3, k, v, pos, 2);
    cr_assert_eq(sinkd_kv_append(b.seq, 0, 1, k, v, pos), -ENOMEM);
    sinkd_kv_seq *both[2] = {a.seq, b.seq};
    cr_assert_eq(sinkd_kv_append_batch(kv, both, 2, 0, k, v, pos), -ENOMEM);
    sinkd_kv_stats st;
    sinkd_kv_stats_get(kv, &st);
    cr_assert_eq(st.pages_used, 10);
    m_check(kv, &a);
    m_check(kv, &b);
    /* closing one sequence makes room for the other */
    m_close(&a);
    cr_assert_eq(sinkd_kv_append(b.seq, 0, 1, k, v, pos), 0);
    m_append(&b, SINKD_F32, 0, 1, k, v, pos, 2);
    m_check(kv, &b);
    m_close(&b);
    sinkd_kv_close(kv);
}

Test(kv, session_and_uid_budgets)
{
    sinkd_kv *kv = open_store(100, 4, 16, SINKD_F32, 6, 10);
    m_seq a, b, c;
    m_open(&a, kv, 500, 1, 2, 16);
    m_open(&b, kv, 500, 1, 2, 16);
    m_open(&c, kv, 501, 1, 2, 16);
    float k[16 * 2 * 16], v[16 * 2 * 16];
    int32_t pos[16] = {0};
    t_fill(k, sizeof k / sizeof k[0]);
    t_fill(v, sizeof v / sizeof v[0]);
    /* session budget 6 pages: 12 tokens in 2 lanes of 4-token pages */
    cr_assert_eq(sinkd_kv_append(a.seq, 0, 13, k, v, pos), -EDQUOT);
    cr_assert_eq(sinkd_kv_append(a.seq, 0, 12, k, v, pos), 0);
    m_append(&a, SINKD_F32, 0, 12, k, v, pos, 2);
    cr_assert_eq(sinkd_kv_append(a.seq, 0, 1, k, v, pos), -EDQUOT);
    /* uid 500 has 10: b may take 4 pages, not 6 */
    cr_assert_eq(sinkd_kv_append(b.seq, 0, 12, k, v, pos), -EDQUOT);
    cr_assert_eq(sinkd_kv_append(b.seq, 0, 8, k, v, pos), 0);
    m_append(&b, SINKD_F32, 0, 8, k, v, pos, 2);
    cr_assert_eq(sinkd_kv_uid_pages(kv, 500), 10);
    /* another uid is not affected */
    cr_assert_eq(sinkd_kv_append(c.seq, 0, 12, k, v, pos), 0);
    m_append(&c, SINKD_F32, 0, 12, k, v, pos, 2);
    /* a batch counts its sequences of one uid together */
    sinkd_kv_seq_set_budget(a.seq, -1);
    int32_t keep_off[3] = {0, 4, 8}, keep[8] = {0, 1, 2, 3, 0, 1, 2, 3};
    cr_assert_eq(sinkd_kv_compact(b.seq, 0, keep_off, keep), 0); /* b: 2 pages */
    m_compact(&b, 0, keep, 4);
    m_compact(&b, 1, keep + 4, 4);
    cr_assert_eq(sinkd_kv_uid_pages(kv, 500), 8);
    sinkd_kv_seq *ab[2] = {a.seq, b.seq};
    int32_t dpos[2] = {90, 91};
    /* a needs 2 pages, b needs 2: 8 + 4 > 10 */
    cr_assert_eq(sinkd_kv_append_batch(kv, ab, 2, 0, k, v, dpos), -EDQUOT);
    cr_assert_eq(sinkd_kv_uid_pages(kv, 500), 8);
    m_check(kv, &a);
    m_check(kv, &b);
    m_check(kv, &c);
    sinkd_kv_seq *one[1] = {b.seq};
    cr_assert_eq(sinkd_kv_append_batch(kv, one, 1, 0, k, v, dpos), 0);
    m_append(&b, SINKD_F32, 0, 1, k, v, dpos, 2);
    m_check(kv, &b);
    m_close(&a);
    m_close(&b);
    m_close(&c);
    sinkd_kv_close(kv);
}

/* After a rope switch, every page's bounds are those of the new rope. */
Test(kv, rope_switch_recomputes_bounds)
{
    sinkd_kv *kv = open_store(40, 4, 32, SINKD_BF16, 0, 0);
    sinkd_kv_seq *s = open_seq(kv, 3, 1, 2, 32);
    float k[30 * 2 * 32], v[30 * 2 * 32];
    int32_t pos[30];
    for (int32_t i = 0; i < 30; i++)
        pos[i] = 100 + 7 * i;
    t_fill(k, sizeof k / sizeof k[0]);
    t_fill(v, sizeof v / sizeof v[0]);
    cr_assert_eq(sinkd_kv_append(s, 0, 30, k, v, pos), 0);
    sinkd_rope cache = rope_abs;
    cache.mode = SINKD_ROPE_CACHE;
    cache.style = SINKD_ROPE_ADJACENT;
    cr_assert_eq(sinkd_kv_seq_set_rope(s, &cache), 0);
    sinkd_lanes lanes;
    cr_assert_eq(sinkd_kv_lanes_seq(s, 0, &lanes), 0);
    const sinkd_kv_pool *pool = sinkd_kv_pool_get(kv);
    t_pool tp = {.pool = *pool, .n_lanes = 2, .len = (int32_t *)lanes.len,
                 .page_off = (int32_t *)lanes.page_off, .page_ids = (int32_t *)lanes.page_ids,
                 .head_dim = 32};
    double key[32];
    for (int32_t h = 0; h < 2; h++)
        for (int32_t t = 0; t < 30; t++) {
            int32_t page = lanes.page_ids[lanes.page_off[h] + t / 4];
            t_key(&tp, h, t, &cache, key);
            for (int32_t i = 0; i < 32; i++) {
                cr_assert(key[i] >= pool->kmin[page * 32 + i] - 1e-5);
                cr_assert(key[i] <= pool->kmax[page * 32 + i] + 1e-5);
            }
        }
    sinkd_rope bad = cache;
    bad.theta = 0;
    cr_assert_eq(sinkd_kv_seq_set_rope(s, &bad), -EINVAL);
    sinkd_kv_close(kv); /* closes the sequence too */
}

Test(kv, random_interleaving_matches_model)
{
    t_rng = 4242;
    const uint8_t dt = SINKD_F16;
    sinkd_kv *kv = open_store(300, 4, 32, dt, 0, 150);
    enum { NS = 4 };
    m_seq ms[NS];
    for (int s = 0; s < NS; s++)
        m_open(&ms[s], kv, (uint32_t)(s % 2), 2, 2, 32);
    float k[30 * 2 * 32 * NS], v[30 * 2 * 32 * NS];
    int32_t pos[30 * NS];
    for (int step = 0; step < 300; step++) {
        int op = (int)(t_next() % 10), s = (int)(t_next() % NS);
        int32_t layer = (int32_t)(t_next() % 2);
        m_seq *m = &ms[s];
        t_fill(k, sizeof k / sizeof k[0]);
        t_fill(v, sizeof v / sizeof v[0]);
        for (int i = 0; i < 30 * NS; i++)
            pos[i] = step * 40 + i;
        sinkd_kv_stats st0, st1;
        sinkd_kv_stats_get(kv, &st0);
        if (op < 4) {
            int32_t n = t_int(1, 30);
            int rc = sinkd_kv_append(m->seq, layer, n, k, v, pos);
            if (rc == 0)
                m_append(m, dt, layer, n, k, v, pos, 2);
            else
                cr_assert(rc == -EDQUOT || rc == -ENOMEM, "append: %d", rc);
        } else if (op < 6) {
            sinkd_kv_seq *seqs[NS];
            for (int i = 0; i < NS; i++)
                seqs[i] = ms[i].seq;
            int rc = sinkd_kv_append_batch(kv, seqs, NS, layer, k, v, pos);
            if (rc == 0)
                for (int i = 0; i < NS; i++)
                    m_append(&ms[i], dt, layer, 1, k + (size_t)i * 2 * 32, v + (size_t)i * 2 * 32,
                             &pos[i], 2);
            else
                cr_assert(rc == -EDQUOT || rc == -ENOMEM, "batch: %d", rc);
        } else if (op < 9) {
            set_scores(kv, m);
            int32_t keep_off[3] = {0}, keep[2 * M_CAP];
            for (int32_t h = 0; h < 2; h++) {
                int32_t nk = 0, len = m->lanes[layer * 2 + h].len;
                for (int32_t t = 0; t < len; t++)
                    if (t_next() % 4 != 0)
                        keep[keep_off[h] + nk++] = t;
                keep_off[h + 1] = keep_off[h] + nk;
            }
            cr_assert_eq(sinkd_kv_compact(m->seq, layer, keep_off, keep), 0);
            for (int32_t h = 0; h < 2; h++)
                m_compact(m, layer * 2 + h, keep + keep_off[h], keep_off[h + 1] - keep_off[h]);
            sinkd_kv_stats_get(kv, &st1);
            cr_assert(st1.pages_used <= st0.pages_used);
        } else {
            uint32_t uid = m->uid;
            m_close(m);
            m_open(m, kv, uid, 2, 2, 32);
        }
        m_check(kv, m);
        /* accounting: pool use = sum of sequences; uid = sum of its own */
        sinkd_kv_stats_get(kv, &st1);
        int64_t total = 0, per_uid[2] = {0};
        for (int i = 0; i < NS; i++) {
            total += sinkd_kv_seq_pages(ms[i].seq);
            per_uid[ms[i].uid] += sinkd_kv_seq_pages(ms[i].seq);
        }
        cr_assert_eq(st1.pages_used, total);
        cr_assert_eq(sinkd_kv_uid_pages(kv, 0), per_uid[0]);
        cr_assert_eq(sinkd_kv_uid_pages(kv, 1), per_uid[1]);
        cr_assert(per_uid[0] <= 150 && per_uid[1] <= 150);
    }
    for (int s = 0; s < NS; s++) {
        m_check(kv, &ms[s]);
        m_close(&ms[s]);
    }
    sinkd_kv_stats st;
    sinkd_kv_stats_get(kv, &st);
    cr_assert_eq(st.pages_used, 0);
    sinkd_kv_close(kv);
}
