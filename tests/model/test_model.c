/*
 * Forward pass of the reference model on the CPU backend against its golden
 * outputs (an independent float64 forward): last-position logits within
 * 1e-3, greedy tokens equal wherever the golden top-1/top-2 margin exceeds
 * twice that error. Then self-consistency: prefill in chunks of 1, 7 (split
 * by the model itself) and whole gives the same logits; sequences decoding
 * together in a batch give what each gives alone. And refusals.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "golden.h"
#include "gguf_build.h"
#include "kv.h"
#include "model.h"

#define TINY SINKD_TEST_DATA "/sinkd-ref-tiny-f32.gguf"
#define LOGIT_TOL 1e-3f

typedef struct rig {
    sinkd_backend *be;
    sinkd_gguf *g;
    sinkd_model *m;
    sinkd_kv *kv;
    int32_t V;
} rig;

static void rig_open_file(rig *r, const char *path, int32_t max_tokens, int32_t weight_dtype,
                          uint8_t kv_dtype)
{
    char err[256] = "";
    memset(r, 0, sizeof *r);
    cr_assert_eq(sinkd_backend_open("cpu", 2, &r->be), 0);
    cr_assert_eq(sinkd_gguf_open(path, &r->g, err, sizeof err), 0, "%s", err);
    sinkd_model_config mc = SINKD_MODEL_CONFIG_INIT;
    mc.max_tokens = max_tokens;
    mc.weight_dtype = weight_dtype;
    cr_assert_eq(sinkd_model_load(r->be, r->g, &mc, &r->m, err, sizeof err), 0, "%s", err);
    sinkd_kv_config kc = SINKD_KV_CONFIG_INIT;
    kc.pool_bytes = 32u << 20;
    kc.page_tokens = 16;
    kc.head_dim_max = sinkd_model_hparams_get(r->m)->head_dim;
    kc.dtype = kv_dtype;
    cr_assert_eq(sinkd_kv_open(r->be, &kc, &r->kv), 0);
    r->V = sinkd_model_hparams_get(r->m)->n_vocab;
}

static void rig_open(rig *r, int32_t max_tokens, int32_t weight_dtype, uint8_t kv_dtype)
{
    rig_open_file(r, TINY, max_tokens, weight_dtype, kv_dtype);
}

static void rig_close(rig *r)
{
    sinkd_kv_close(r->kv);
    sinkd_model_free(r->m);
    sinkd_gguf_close(r->g);
    sinkd_backend_close(r->be);
}

static sinkd_kv_seq *seq_open(rig *r)
{
    sinkd_kv_seq_params p;
    sinkd_model_seq_params(r->m, SINKD_ROPE_ABSOLUTE, &p);
    p.max_pages = -1;
    sinkd_kv_seq *s = NULL;
    cr_assert_eq(sinkd_kv_seq_open(r->kv, &p, &s), 0);
    return s;
}

static int32_t *iota(int32_t from, int32_t n)
{
    int32_t *p = malloc((size_t)n * sizeof *p);
    for (int32_t i = 0; i < n; i++)
        p[i] = from + i;
    return p;
}

static float max_abs_diff(const float *a, const float *b, size_t n)
{
    float m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmaxf(m, fabsf(a[i] - b[i]));
    return m;
}

Test(model, hparams_of_the_reference_model)
{
    rig r;
    rig_open(&r, 64, -1, SINKD_F32);
    const sinkd_model_hparams *hp = sinkd_model_hparams_get(r.m);
    cr_assert_eq(hp->arch, SINKD_ARCH_LLAMA);
    cr_assert_eq(hp->n_vocab, 260);
    cr_assert_eq(hp->dim, 128);
    cr_assert_eq(hp->n_layers, 4);
    cr_assert_eq(hp->n_heads, 4);
    cr_assert_eq(hp->n_kv_heads, 2);
    cr_assert_eq(hp->head_dim, 32);
    cr_assert_eq(hp->ffn_dim, 384);
    cr_assert_eq(hp->ctx_len, 512);
    cr_assert_eq(hp->rope_style, SINKD_ROPE_ADJACENT);
    cr_assert_float_eq(hp->rope_theta, 10000.0f, 1e-3);
    cr_assert_eq(hp->rope_scale, 1.0f);
    cr_assert_not(hp->tied_output);
    cr_assert_not(hp->qkv_bias);
    cr_assert_str_eq(hp->name, "sinkd-ref-tiny");
    /* F32 weights kept as stored: 0.85 M parameters */
    cr_assert_gt(sinkd_model_weight_bytes(r.m), 3200000);
    cr_assert_lt(sinkd_model_weight_bytes(r.m), 3500000);
    rig_close(&r);
}

/* Greedy decoding from a prompt, comparing with the golden tokens while the
 * golden margin leaves room for our error; returns how many were compared. */
static size_t check_case(rig *r, const golden_case *c, float tol, float *worst)
{
    sinkd_kv_seq *s = seq_open(r);
    int32_t n = (int32_t)c->n_prompt;
    int32_t *pos = iota(0, n);
    float *logits = malloc((size_t)r->V * sizeof *logits);
    cr_assert_eq(sinkd_model_prefill(r->m, r->kv, s, c->prompt_ids, pos, n, NULL, logits), 0);
    cr_assert_eq((size_t)r->V, c->n_logits);
    float err = max_abs_diff(logits, c->last_logits, (size_t)r->V);
    cr_assert_leq(err, tol, "prefill logits max |err| %g > %g", err, tol);
    *worst = fmaxf(*worst, err);
    size_t compared = 0;
    for (size_t i = 0; i < c->n_greedy; i++) {
        if (c->greedy_margins[i] <= 2 * tol)
            break; /* our error could flip this choice: stop comparing */
        int32_t tok = golden_argmax(logits, r->V);
        cr_assert_eq(tok, c->greedy_ids[i], "greedy step %zu: %d, golden %d (margin %g)", i, tok,
                     c->greedy_ids[i], c->greedy_margins[i]);
        compared++;
        int32_t p = n + (int32_t)i;
        cr_assert_eq(sinkd_model_decode(r->m, r->kv, &s, 1, &tok, &p, NULL, logits), 0);
    }
    free(logits);
    free(pos);
    sinkd_kv_seq_close(s);
    return compared;
}

Test(model, golden_tiny_f32)
{
    rig r;
    rig_open(&r, 64, -1, SINKD_F32);
    golden gd;
    cr_assert_eq(golden_load(SINKD_TEST_DATA "/golden-tiny.txt", &gd), 0);
    float worst = 0;
    size_t compared = 0;
    for (size_t c = 0; c < gd.n_cases; c++)
        compared += check_case(&r, &gd.cases[c], LOGIT_TOL, &worst);
    /* the margins allow most of the 3 x 48 steps; make sure we did compare */
    cr_assert_geq(compared, 60, "only %zu greedy steps compared", compared);
    cr_log_info("golden-tiny: max |dlogit| %g, %zu greedy steps equal", worst, compared);
    golden_free(&gd);
    rig_close(&r);
}

/* The small reference model (F16 weights, 25 MB) is not kept in the
 * repository: point SINKD_REF_SMALL at sinkd-ref-small-f16.gguf to run this.
 * Its golden logits come from a float64 forward over the f16 weights as
 * stored, so an f32 forward over the same weights meets the same tolerance. */
Test(model, golden_small_f16_weights)
{
    const char *path = getenv("SINKD_REF_SMALL");
    if (path == NULL || access(path, R_OK) != 0)
        cr_skip_test("SINKD_REF_SMALL does not name a readable sinkd-ref-small-f16.gguf");
    rig r;
    rig_open_file(&r, path, 64, -1, SINKD_F32);
    golden gd;
    cr_assert_eq(golden_load(SINKD_TEST_DATA "/golden-small.txt", &gd), 0);
    float worst = 0;
    size_t compared = 0;
    for (size_t c = 0; c < gd.n_cases; c++)
        compared += check_case(&r, &gd.cases[c], LOGIT_TOL, &worst);
    cr_assert_geq(compared, 60, "only %zu greedy steps compared", compared);
    cr_log_info("golden-small: max |dlogit| %g, %zu greedy steps equal", worst, compared);
    golden_free(&gd);
    rig_close(&r);
}

Test(model, golden_tiny_f16_weights_and_kv)
{
    /* half-precision weights and cache: same tokens where margins are wide */
    rig r;
    rig_open(&r, 64, SINKD_F16, SINKD_F16);
    golden gd;
    cr_assert_eq(golden_load(SINKD_TEST_DATA "/golden-tiny.txt", &gd), 0);
    float worst = 0;
    for (size_t c = 0; c < gd.n_cases; c++)
        check_case(&r, &gd.cases[c], 1e-2f, &worst);
    cr_log_info("golden-tiny f16: max |dlogit| %g", worst);
    golden_free(&gd);
    rig_close(&r);
}

/* Logits of every prompt position, prefilled in chunks of @chunk tokens. */
static float *prefill_all(rig *r, const int32_t *ids, int32_t n, int32_t chunk)
{
    sinkd_kv_seq *s = seq_open(r);
    float *all = malloc((size_t)n * r->V * sizeof *all);
    sinkd_model_opts o = {.rope_mode = SINKD_ROPE_ABSOLUTE, .all_logits = true};
    for (int32_t at = 0; at < n; at += chunk) {
        int32_t k = n - at < chunk ? n - at : chunk;
        int32_t *pos = iota(at, k);
        cr_assert_eq(sinkd_model_prefill(r->m, r->kv, s, ids + at, pos, k, &o, all + (size_t)at * r->V), 0);
        free(pos);
    }
    cr_assert_eq(sinkd_kv_lane_len(s, 3, 1), n);
    sinkd_kv_seq_close(s);
    return all;
}

Test(model, chunked_prefill_matches_whole)
{
    golden gd;
    cr_assert_eq(golden_load(SINKD_TEST_DATA "/golden-tiny.txt", &gd), 0);
    const golden_case *c = &gd.cases[2];
    int32_t n = (int32_t)c->n_prompt;
    rig whole, by7;
    rig_open(&whole, 64, -1, SINKD_F32);
    rig_open(&by7, 7, -1, SINKD_F32); /* the model splits a prompt into chunks of 7 */
    float *a = prefill_all(&whole, c->prompt_ids, n, n);
    float *b = prefill_all(&by7, c->prompt_ids, n, n);
    float *one = prefill_all(&whole, c->prompt_ids, n, 1);
    size_t cnt = (size_t)n * whole.V;
    float e7 = max_abs_diff(a, b, cnt), e1 = max_abs_diff(a, one, cnt);
    cr_assert_leq(e7, 1e-4f, "chunks of 7: max |d| %g", e7);
    cr_assert_leq(e1, 1e-4f, "chunks of 1: max |d| %g", e1);
    /* and the last row is the golden one */
    cr_assert_leq(max_abs_diff(a + (size_t)(n - 1) * whole.V, c->last_logits, (size_t)whole.V), LOGIT_TOL);
    free(a);
    free(b);
    free(one);
    rig_close(&whole);
    rig_close(&by7);
    golden_free(&gd);
}

Test(model, batched_decode_matches_alone)
{
    golden gd;
    cr_assert_eq(golden_load(SINKD_TEST_DATA "/golden-tiny.txt", &gd), 0);
    rig r;
    rig_open(&r, 64, -1, SINKD_F32);
    enum { S = 3, STEPS = 10 };
    int32_t V = r.V;
    /* alone: each prompt then STEPS greedy tokens, logits kept */
    float *alone = malloc((size_t)S * STEPS * V * sizeof *alone);
    float *lg = malloc((size_t)S * V * sizeof *lg);
    int32_t toks[S][STEPS];
    for (int s = 0; s < S; s++) {
        const golden_case *c = &gd.cases[s];
        sinkd_kv_seq *q = seq_open(&r);
        int32_t n = (int32_t)c->n_prompt, *pos = iota(0, n);
        cr_assert_eq(sinkd_model_prefill(r.m, r.kv, q, c->prompt_ids, pos, n, NULL, lg), 0);
        for (int i = 0; i < STEPS; i++) {
            int32_t t = golden_argmax(lg, V), p = n + i;
            toks[s][i] = t;
            cr_assert_eq(sinkd_model_decode(r.m, r.kv, &q, 1, &t, &p, NULL, lg), 0);
            memcpy(alone + ((size_t)s * STEPS + i) * V, lg, (size_t)V * sizeof *lg);
        }
        free(pos);
        sinkd_kv_seq_close(q);
    }
    /* together: the prompts (of different lengths) prefilled, then one batch */
    sinkd_kv_seq *seqs[S];
    int32_t next[S], pos[S];
    for (int s = 0; s < S; s++) {
        const golden_case *c = &gd.cases[s];
        seqs[s] = seq_open(&r);
        int32_t n = (int32_t)c->n_prompt, *pp = iota(0, n);
        cr_assert_eq(sinkd_model_prefill(r.m, r.kv, seqs[s], c->prompt_ids, pp, n, NULL, lg), 0);
        next[s] = golden_argmax(lg, V);
        pos[s] = n;
        free(pp);
    }
    for (int i = 0; i < STEPS; i++) {
        for (int s = 0; s < S; s++)
            cr_assert_eq(next[s], toks[s][i], "seq %d step %d", s, i);
        cr_assert_eq(sinkd_model_decode(r.m, r.kv, seqs, S, next, pos, NULL, lg), 0);
        for (int s = 0; s < S; s++) {
            float d = max_abs_diff(lg + (size_t)s * V, alone + ((size_t)s * STEPS + i) * V, (size_t)V);
            cr_assert_leq(d, 1e-5f, "seq %d step %d: max |d| %g", s, i, d);
            next[s] = golden_argmax(lg + (size_t)s * V, V);
            pos[s]++;
        }
    }
    for (int s = 0; s < S; s++)
        sinkd_kv_seq_close(seqs[s]);
    free(alone);
    free(lg);
    rig_close(&r);
    golden_free(&gd);
}

Test(model, bad_arguments_change_nothing)
{
    rig r;
    rig_open(&r, 8, -1, SINKD_F32);
    sinkd_kv_seq *s = seq_open(&r);
    int32_t ids[2] = {1, 260}, pos[2] = {0, 1};
    cr_assert_eq(sinkd_model_prefill(r.m, r.kv, s, ids, pos, 2, NULL, NULL), -EINVAL);
    cr_assert_eq(sinkd_kv_lane_len(s, 0, 0), 0);
    cr_assert_eq(sinkd_model_prefill(r.m, r.kv, s, ids, pos, 0, NULL, NULL), -EINVAL);
    sinkd_kv_seq *many[9];
    for (int i = 0; i < 9; i++)
        many[i] = s;
    int32_t nine[9] = {0}, p9[9] = {0};
    cr_assert_eq(sinkd_model_decode(r.m, r.kv, many, 9, nine, p9, NULL, NULL), -EINVAL);
    sinkd_kv_seq_close(s);
    rig_close(&r);
}

static int load_built(uint8_t *p, const size_t *len, char *err)
{
    sinkd_backend *be;
    sinkd_gguf *g;
    sinkd_model *m = NULL;
    cr_assert_eq(sinkd_backend_open("cpu", 1, &be), 0);
    cr_assert_eq(sinkd_gguf_open_mem(p, *len, &g, err, 256), 0, "%s", err);
    int rc = sinkd_model_load(be, g, NULL, &m, err, 256);
    cr_assert((rc == 0) == (m != NULL));
    sinkd_model_free(m);
    sinkd_gguf_close(g);
    sinkd_backend_close(be);
    free(p);
    return rc;
}

static void base_meta(gb_file *f, const char *arch)
{
    char key[64];
    gb_kv_str(f, "general.architecture", arch);
    snprintf(key, sizeof key, "%s.embedding_length", arch);
    gb_kv_u32(f, key, 32);
    snprintf(key, sizeof key, "%s.block_count", arch);
    gb_kv_u32(f, key, 1);
    snprintf(key, sizeof key, "%s.feed_forward_length", arch);
    gb_kv_u32(f, key, 64);
    snprintf(key, sizeof key, "%s.attention.head_count", arch);
    gb_kv_u32(f, key, 2);
}

/* The hyper-parameters of a built llama file (the tensors are not read). */
static int hparams_built(gb_file *f, sinkd_model_hparams *hp, char *err)
{
    size_t len;
    uint8_t *p = gb_finish(f, 3, &len);
    sinkd_gguf *g;
    cr_assert_eq(sinkd_gguf_open_mem(p, len, &g, err, 256), 0, "%s", err);
    int rc = sinkd_model_hparams_read(g, hp, err, 256);
    sinkd_gguf_close(g);
    free(p);
    return rc;
}

/* Linear rope scaling (Llama 2 long-context fine-tunes, TinyLlama's
 * relatives): the factor comes from rope.scaling.factor, or from the older
 * rope.scale_linear; type "none" means no scaling whatever the factor says;
 * a factor below 1 is refused, naming the key. */
Test(model, linear_rope_scaling)
{
    static const struct {
        const char *type, *key;
        float factor, want;
        int rc;
    } cases[] = {
        {"linear", "llama.rope.scaling.factor", 4.0f, 4.0f, 0},
        {NULL, "llama.rope.scaling.factor", 2.5f, 2.5f, 0},
        {NULL, "llama.rope.scale_linear", 8.0f, 8.0f, 0},
        {"none", "llama.rope.scaling.factor", 8.0f, 1.0f, 0},
        {"linear", NULL, 0.0f, 1.0f, 0},
        {"linear", "llama.rope.scaling.factor", 0.5f, 0.0f, -EINVAL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[256] = "";
        sinkd_model_hparams hp;
        static const float emb[32 * 10];
        static const uint64_t ne_emb[2] = {32, 10};
        gb_file f = GB_FILE_INIT;
        base_meta(&f, "llama");
        gb_tensor(&f, "token_embd.weight", 0, 2, ne_emb, emb, sizeof emb);
        if (cases[i].type)
            gb_kv_str(&f, "llama.rope.scaling.type", cases[i].type);
        if (cases[i].key)
            gb_kv_f32(&f, cases[i].key, cases[i].factor);
        int rc = hparams_built(&f, &hp, err);
        cr_assert_eq(rc, cases[i].rc, "case %zu: %d (%s)", i, rc, err);
        if (rc == 0)
            cr_assert_eq(hp.rope_scale, cases[i].want, "case %zu: %g", i, (double)hp.rope_scale);
        else
            cr_assert(strstr(err, cases[i].key), "case %zu: %s", i, err);
    }
}

Test(model, refuses_what_it_cannot_run)
{
    char err[256];
    size_t len;
    gb_file f = GB_FILE_INIT;
    base_meta(&f, "gptneox");
    cr_assert_eq(load_built(gb_finish(&f, 3, &len), &len, err), -ENOTSUP);
    cr_assert(strstr(err, "'gptneox'"), "%s", err);

    /* a llama whose first layer lacks its tensors */
    f = (gb_file)GB_FILE_INIT;
    base_meta(&f, "llama");
    float emb[32 * 10] = {0}, norm[32] = {0};
    uint64_t ne_emb[2] = {32, 10}, ne_norm[1] = {32};
    gb_tensor(&f, "token_embd.weight", 0, 2, ne_emb, emb, sizeof emb);
    gb_tensor(&f, "output_norm.weight", 0, 1, ne_norm, norm, sizeof norm);
    cr_assert_eq(load_built(gb_finish(&f, 3, &len), &len, err), -EINVAL);
    cr_assert(strstr(err, "blk.0.attn_norm.weight is missing"), "%s", err);

    /* a misshapen tensor is named with both shapes */
    f = (gb_file)GB_FILE_INIT;
    base_meta(&f, "llama");
    uint64_t ne_bad[1] = {31};
    gb_tensor(&f, "token_embd.weight", 0, 2, ne_emb, emb, sizeof emb);
    gb_tensor(&f, "output_norm.weight", 0, 1, ne_bad, norm, 31 * 4);
    cr_assert_eq(load_built(gb_finish(&f, 3, &len), &len, err), -EINVAL);
    cr_assert(strstr(err, "output_norm.weight has shape [31, 1], expected [32, 1]"), "%s", err);

    /* rope scaling other than linear */
    f = (gb_file)GB_FILE_INIT;
    base_meta(&f, "llama");
    gb_kv_str(&f, "llama.rope.scaling.type", "yarn");
    cr_assert_eq(load_built(gb_finish(&f, 3, &len), &len, err), -ENOTSUP);
    cr_assert(strstr(err, "yarn"), "%s", err);
}
