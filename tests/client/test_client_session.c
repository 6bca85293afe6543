/*
 * libsinkd's typed calls of the session-level ops against the real daemon
 * serving the tiny reference model: generation (streamed tokens equal the
 * golden greedy ids; cancel from the token callback and from a second
 * connection), logits through shared memory (equal the golden float64
 * logits), text, listings and statistics, policies, and a raw session whose
 * attention output is derived by hand.
 */
#include "client_check.h"

#include <math.h>

TestSuite(client, .init = check_daemon_start, .fini = check_daemon_stop, .timeout = 120);

static check_golden golden[CHECK_GOLDEN_CASES];

#define T CHECK_TIMEOUT_MS

#define ASSERT_OK(c, rc, what) \
    cr_assert_eq((rc), 0, "%s: %s %s", (what), sinkd_client_strerror(rc), sinkd_client_errmsg(c))

/* A model session holding golden case @k's prompt. */
static uint64_t open_with_prompt(sinkd_client *c, int k)
{
    sinkd_client_session_info info;
    int rc = sinkd_client_session_open(c, NULL, T, &info);
    ASSERT_OK(c, rc, "session.open");
    cr_expect_str_eq(info.model, "tiny");
    cr_expect_str_eq(info.policy, "full");
    cr_expect(info.n_layers == 4 && info.n_kv_heads == 2 && info.head_dim == 32 &&
              info.n_vocab == 260);
    sinkd_client_append_result ap;
    /* The golden ids start with BOS already. */
    rc = sinkd_client_session_append(c, info.session, golden[k].prompt_ids, golden[k].n_prompt, 0,
                                     T, &ap);
    ASSERT_OK(c, rc, "session.append");
    cr_expect_eq(ap.n_tokens, golden[k].n_prompt);
    cr_expect_eq(ap.n_past, golden[k].n_prompt);
    cr_expect_str_eq(ap.fallback, "");
    return info.session;
}

/* What the token callback saw. */
typedef struct tokens {
    int32_t ids[512];
    size_t n;
    char text[2048];
    size_t len;
    size_t stop_after;        /* return non-zero at this many tokens (0: never) */
    sinkd_client *other;      /* cancel through this connection instead */
    uint64_t session;
    int other_rc;
} tokens;

static int on_token(void *arg, int32_t token, const char *text, size_t len)
{
    tokens *t = arg;
    cr_assert_lt(t->n, 512);
    cr_assert_lt(t->len + len, sizeof(t->text));
    t->ids[t->n++] = token;
    memcpy(t->text + t->len, text, len);
    t->len += len;
    if (t->stop_after == 0 || t->n != t->stop_after)
        return 0;
    if (t->other == NULL)
        return 1;
    t->other_rc = sinkd_client_session_cancel(t->other, t->session, T);
    return 0;
}

/* Generate up to 400 tokens on @s, with @t watching the stream. */
static void generate_long(sinkd_client *c, uint64_t s, tokens *t, sinkd_client_gen_result *res)
{
    sinkd_client_gen_params p = SINKD_CLIENT_GEN_PARAMS_INIT;
    p.max_tokens = 400;
    p.ignore_eos = true;
    int rc = sinkd_client_session_generate(c, s, &p, on_token, t, T, res);
    ASSERT_OK(c, rc, "session.generate");
}

Test(client, generate_streams_the_golden_tokens)
{
    check_golden_load(golden);
    sinkd_client *c = check_connect();
    for (int k = 0; k < CHECK_GOLDEN_CASES; k++) {
        uint64_t s = open_with_prompt(c, k);
        sinkd_client_gen_params p = SINKD_CLIENT_GEN_PARAMS_INIT;
        p.max_tokens = (uint32_t)golden[k].n_greedy;
        tokens t = { 0 };
        sinkd_client_gen_result res = SINKD_CLIENT_GEN_RESULT_INIT;
        int rc = sinkd_client_session_generate(c, s, &p, on_token, &t, T, &res);
        ASSERT_OK(c, rc, "session.generate");
        cr_assert_eq(t.n, golden[k].n_greedy, "case %d", k);
        for (size_t i = 0; i < t.n; i++)
            cr_expect_eq(t.ids[i], golden[k].greedy[i], "case %d token %zu", k, i);
        char want[CHECK_GREEDY_MAX + 1];
        check_detok(golden[k].greedy, golden[k].n_greedy, want, sizeof(want));
        t.text[t.len] = '\0';
        cr_expect_str_eq(t.text, want, "case %d: streamed pieces", k);
        cr_expect_str_eq(res.text, want, "case %d: reply text", k);
        cr_expect_eq(res.text_len, strlen(want));
        cr_expect_eq(res.reason, SINKD_CLIENT_GEN_LENGTH);
        cr_expect_str_eq(res.reason_name, "length");
        cr_expect_eq(res.n_tokens, golden[k].n_greedy);
        cr_expect(res.decode_ms >= 0 && res.tokens_per_s >= 0 && res.prefill_ms >= 0);
        sinkd_client_gen_result_free(&res);
        cr_expect_null(res.text);
        ASSERT_OK(c, sinkd_client_session_close(c, s, T), "session.close");
    }
    sinkd_client_close(c);
}

Test(client, generate_without_stream_or_callback)
{
    check_golden_load(golden);
    sinkd_client *c = check_connect();
    uint64_t s = open_with_prompt(c, 1);
    sinkd_client_gen_params p = SINKD_CLIENT_GEN_PARAMS_INIT;
    p.max_tokens = 8;
    p.stream = false;
    tokens t = { 0 };
    sinkd_client_gen_result res = SINKD_CLIENT_GEN_RESULT_INIT;
    int rc = sinkd_client_session_generate(c, s, &p, on_token, &t, T, &res);
    ASSERT_OK(c, rc, "session.generate");
    cr_expect_eq(t.n, 0, "no token events without stream");
    char want[16];
    check_detok(golden[1].greedy, 8, want, sizeof(want));
    cr_expect_str_eq(res.text, want);
    sinkd_client_gen_result_free(&res);

    /* NULL result and callback: the next 8 tokens, only the outcome */
    rc = sinkd_client_session_generate(c, s, &p, NULL, NULL, T, NULL);
    ASSERT_OK(c, rc, "session.generate");
    sinkd_client_session_stats st = SINKD_CLIENT_SESSION_STATS_INIT;
    ASSERT_OK(c, sinkd_client_session_stats_get(c, s, T, &st), "session.stats");
    /* The last sampled token is not consumed until the next step. */
    cr_expect(st.tokens >= golden[1].n_prompt + 15 && st.tokens <= golden[1].n_prompt + 16,
              "tokens %llu", (unsigned long long)st.tokens);
    sinkd_client_session_stats_free(&st);
    sinkd_client_close(c);
}

Test(client, cancel_from_the_token_callback)
{
    check_golden_load(golden);
    sinkd_client *c = check_connect();
    uint64_t s = open_with_prompt(c, 0);
    tokens t = { .stop_after = 3 };
    sinkd_client_gen_result res = SINKD_CLIENT_GEN_RESULT_INIT;
    generate_long(c, s, &t, &res);
    cr_expect_eq(t.n, 3, "the callback is not called after it asked to stop");
    cr_expect_eq(res.reason, SINKD_CLIENT_GEN_CANCELLED, "reason %s", res.reason_name);
    cr_expect(res.n_tokens >= 3 && res.n_tokens < 400, "%llu tokens",
              (unsigned long long)res.n_tokens);
    sinkd_client_gen_result_free(&res);

    /* The cancel's own reply was dropped in passing: the handle is in step
     * and the session can generate again (not busy). */
    cr_expect_eq(sinkd_client_ping(c, T, NULL), 0);
    sinkd_client_gen_params p = SINKD_CLIENT_GEN_PARAMS_INIT;
    p.max_tokens = 2;
    int rc = sinkd_client_session_generate(c, s, &p, NULL, NULL, T, &res);
    ASSERT_OK(c, rc, "generate after cancel");
    cr_expect_eq(res.reason, SINKD_CLIENT_GEN_LENGTH);
    sinkd_client_gen_result_free(&res);
    sinkd_client_close(c);
}

Test(client, cancel_from_a_second_connection)
{
    check_golden_load(golden);
    sinkd_client *c = check_connect(), *other = check_connect();
    uint64_t s = open_with_prompt(c, 2);
    tokens t = { .stop_after = 2, .other = other, .session = s };
    sinkd_client_gen_result res = SINKD_CLIENT_GEN_RESULT_INIT;
    generate_long(c, s, &t, &res);
    cr_expect_eq(t.other_rc, 0, "cancel: %s", sinkd_client_strerror(t.other_rc));
    cr_expect_eq(res.reason, SINKD_CLIENT_GEN_CANCELLED, "reason %s", res.reason_name);
    cr_expect(res.n_tokens >= 2 && res.n_tokens < 400);
    cr_expect_eq(t.n, res.n_tokens, "every token was streamed");
    sinkd_client_gen_result_free(&res);
    sinkd_client_close(other);
    sinkd_client_close(c);
}

Test(client, logits_in_shared_memory_equal_the_golden)
{
    check_golden_load(golden);
    sinkd_client *c = check_connect();
    sinkd_client_shm shm = SINKD_CLIENT_SHM_INIT;
    ASSERT_OK(c, sinkd_client_shm_create(c, 4096, T, &shm), "shm");
    for (int k = 0; k < CHECK_GOLDEN_CASES; k++) {
        uint64_t s = open_with_prompt(c, k);
        uint32_t n_vocab = 0;
        sinkd_client_region dst = { shm.handle, 1024 };
        int rc = sinkd_client_session_logits(c, s, dst, T, &n_vocab);
        ASSERT_OK(c, rc, "session.logits");
        cr_assert_eq(n_vocab, golden[k].n_logits);
        const float *got = (const float *)((const char *)shm.base + 1024);
        double worst = 0;
        for (size_t i = 0; i < n_vocab; i++)
            worst = fmax(worst, fabs((double)got[i] - golden[k].logits[i]));
        /* float32 forward against a float64 reference on 4 small layers */
        cr_expect_lt(worst, 1e-3, "case %d: max |dlogit| %g", k, worst);

        /* A range past the region's end is refused. */
        dst.offset = 4096 - 16;
        rc = sinkd_client_session_logits(c, s, dst, T, NULL);
        cr_expect_eq(rc, SINKD_ERR_BAD_SHM, "%s", sinkd_client_strerror(rc));
    }
    sinkd_client_shm_free(c, &shm, T);
    sinkd_client_close(c);
}

/* A greedy generation picks its tokens on the backend and keeps no host
 * logits while it runs; once it ends, session.logits holds the last step's
 * row, as after a generation sampled on the host. The twin session samples
 * on the host (a repetition penalty over no tokens changes nothing but the
 * path): same tokens, same logits. */
Test(client, logits_after_a_greedy_generation_are_the_last_steps)
{
    check_golden_load(golden);
    sinkd_client *c = check_connect();
    sinkd_client_shm shm = SINKD_CLIENT_SHM_INIT;
    ASSERT_OK(c, sinkd_client_shm_create(c, 8192, T, &shm), "shm");
    const float *row[2];
    char *text[2];
    for (int twin = 0; twin < 2; twin++) {
        uint64_t s = open_with_prompt(c, 0);
        sinkd_client_gen_params p = SINKD_CLIENT_GEN_PARAMS_INIT;
        p.max_tokens = 6;
        p.ignore_eos = true;
        p.stream = false;
        if (twin) {
            p.repeat_penalty = 1.5;
            p.repeat_last_n = 0;
        }
        sinkd_client_gen_result res = SINKD_CLIENT_GEN_RESULT_INIT;
        ASSERT_OK(c, sinkd_client_session_generate(c, s, &p, NULL, NULL, T, &res), "generate");
        cr_assert_eq(res.n_tokens, 6);
        text[twin] = strdup(res.text);
        sinkd_client_gen_result_free(&res);
        uint32_t n_vocab = 0;
        sinkd_client_region dst = { shm.handle, (uint64_t)twin * 4096 };
        ASSERT_OK(c, sinkd_client_session_logits(c, s, dst, T, &n_vocab), "session.logits");
        cr_assert_eq(n_vocab, golden[0].n_logits);
        row[twin] = (const float *)((const char *)shm.base + (size_t)twin * 4096);
    }
    cr_expect_str_eq(text[0], text[1], "device and host greedy chose different tokens");
    cr_expect_arr_eq(row[0], row[1], golden[0].n_logits * sizeof(float),
                     "the logits after a greedy generation differ");
    free(text[0]);
    free(text[1]);
    sinkd_client_shm_free(c, &shm, T);
    sinkd_client_close(c);
}

Test(client, text_models_and_policies)
{
    check_golden_load(golden);
    sinkd_client *c = check_connect();
    for (int k = 0; k < CHECK_GOLDEN_CASES; k++) {
        int32_t *ids = NULL;
        size_t n = 0;
        int rc = sinkd_client_tokenize(c, NULL, golden[k].prompt, strlen(golden[k].prompt),
                                       SINKD_CLIENT_BOS_DEFAULT, false, T, &ids, &n);
        ASSERT_OK(c, rc, "tokenize");
        cr_assert_eq(n, golden[k].n_prompt);
        cr_expect_arr_eq(ids, golden[k].prompt_ids, n * sizeof(*ids));
        sinkd_client_free(ids);

        char *text = NULL;
        size_t len = 0;
        rc = sinkd_client_detokenize(c, "tiny", golden[k].greedy, golden[k].n_greedy, T,
                                     &text, &len);
        ASSERT_OK(c, rc, "detokenize");
        char want[CHECK_GREEDY_MAX + 1];
        check_detok(golden[k].greedy, golden[k].n_greedy, want, sizeof(want));
        cr_expect_str_eq(text, want);
        cr_expect_eq(len, strlen(want));
        sinkd_client_free(text);
    }
    int32_t *ids = NULL;
    size_t n = 7;
    cr_expect_eq(sinkd_client_tokenize(c, NULL, "", 0, 0, false, T, &ids, &n), 0);
    cr_expect(ids == NULL && n == 0, "empty text, no BOS: no ids");
    cr_expect_eq(sinkd_client_tokenize(c, "no-such-model", "x", 1, -1, false, T, &ids, &n),
                 SINKD_ERR_NOT_FOUND);
    cr_expect_eq(sinkd_client_tokenize(c, NULL, "x", 1, 2, false, T, &ids, &n), -EINVAL);

    sinkd_client_model *m = NULL;
    ASSERT_OK(c, sinkd_client_model_list(c, T, &m, &n), "model.list");
    cr_assert_eq(n, 1);
    cr_expect_str_eq(m[0].name, "tiny");
    cr_expect_str_eq(m[0].arch, "llama");
    cr_expect(m[0].n_layers == 4 && m[0].n_heads == 4 && m[0].n_kv_heads == 2 &&
              m[0].head_dim == 32 && m[0].dim == 128 && m[0].n_vocab == 260 &&
              m[0].ctx_len == 512);
    /* 0.85 M f32 parameters */
    cr_expect(m[0].weight_bytes > 3000000 && m[0].weight_bytes < 3800000, "%llu",
              (unsigned long long)m[0].weight_bytes);
    sinkd_client_free(m);

    sinkd_client_policy *p = NULL;
    ASSERT_OK(c, sinkd_client_policy_list(c, T, &p, &n), "policy.list");
    bool full = false, window = false;
    for (size_t i = 0; i < n; i++) {
        full |= strcmp(p[i].name, "full") == 0 && p[i].builtin;
        window |= strcmp(p[i].name, "window") == 0 && p[i].builtin;
    }
    cr_expect(full && window, "built-in full and window listed");
    sinkd_client_free(p);
    /* Refused to everyone: an admin because full is the fallback. */
    cr_expect_eq(sinkd_client_policy_unload(c, "full", T), SINKD_ERR_PERMISSION_DENIED, "%s",
                 sinkd_client_errmsg(c));
    if (getuid() == 0)
        cr_expect_not_null(strstr(sinkd_client_errmsg(c), "built in"), "%s",
                           sinkd_client_errmsg(c));
    sinkd_client_close(c);
}

Test(client, list_stats_and_policy_swap)
{
    check_golden_load(golden);
    sinkd_client *c = check_connect();
    uint64_t s = open_with_prompt(c, 0);
    size_t n_prompt = golden[0].n_prompt;

    sinkd_client_session_entry *e = NULL;
    size_t n = 0;
    ASSERT_OK(c, sinkd_client_session_list(c, T, &e, &n), "session.list");
    cr_assert_eq(n, 1);
    cr_expect_eq(e[0].session, s);
    cr_expect_eq(e[0].uid, (uint64_t)getuid());
    cr_expect_str_eq(e[0].model, "tiny");
    cr_expect_str_eq(e[0].policy, "full");
    cr_expect_eq(e[0].tokens, n_prompt);
    cr_expect(!e[0].generating);
    cr_expect_gt(e[0].bytes, 0);
    sinkd_client_free(e);

    sinkd_client_session_stats st = SINKD_CLIENT_SESSION_STATS_INIT;
    ASSERT_OK(c, sinkd_client_session_stats_get(c, s, T, &st), "session.stats");
    cr_expect_eq(st.session, s);
    cr_expect_eq(st.tokens, n_prompt);
    cr_expect_eq(st.evictions, 0);
    cr_assert_eq(st.n_layers, 4);
    for (size_t l = 0; l < st.n_layers; l++)
        cr_expect(st.layers[l].len_min == n_prompt && st.layers[l].len_max == n_prompt &&
                  st.layers[l].len_mean == (double)n_prompt, "layer %zu", l);
    cr_expect_str_eq(st.fallback, "");
    sinkd_client_session_stats_free(&st);
    cr_expect_null(st.layers);

    char name[64] = "";
    ASSERT_OK(c, sinkd_client_session_policy(c, s, "window", "window=4", T, name, sizeof(name)),
              "session.policy");
    cr_expect_str_eq(name, "window");
    cr_expect_eq(sinkd_client_session_policy(c, s, "no-such-policy", NULL, T, NULL, 0),
                 SINKD_ERR_NOT_FOUND, "%s", sinkd_client_errmsg(c));

    ASSERT_OK(c, sinkd_client_session_close(c, s, T), "session.close");
    cr_expect_eq(sinkd_client_session_close(c, s, T), SINKD_ERR_NOT_FOUND);
    cr_expect_eq(sinkd_client_session_stats_get(c, s, T, &st), SINKD_ERR_NOT_FOUND);
    sinkd_client_session_opts o = SINKD_CLIENT_SESSION_OPTS_INIT;
    o.model = "no-such-model";
    sinkd_client_session_info info;
    cr_expect_eq(sinkd_client_session_open(c, &o, T, &info), SINKD_ERR_NOT_FOUND);
    sinkd_client_close(c);
}

Test(client, raw_session_append_and_attend)
{
    enum { LAYERS = 2, QH = 4, KVH = 2, HD = 16, N = 5 };
    sinkd_client *c = check_connect();
    sinkd_client_geometry g = SINKD_CLIENT_GEOMETRY_INIT;
    g.layers = LAYERS;
    g.q_heads = QH;
    g.kv_heads = KVH;
    g.head_dim = HD;
    sinkd_client_session_opts o = SINKD_CLIENT_SESSION_OPTS_INIT;
    o.geometry = &g;
    sinkd_client_session_info info;
    ASSERT_OK(c, sinkd_client_session_open(c, &o, T, &info), "raw session.open");
    cr_expect_str_eq(info.model, "");
    cr_expect(info.n_layers == LAYERS && info.n_kv_heads == KVH && info.head_dim == HD &&
              info.n_vocab == 0);

    sinkd_client_shm shm = SINKD_CLIENT_SHM_INIT;
    ASSERT_OK(c, sinkd_client_shm_create(c, 65536, T, &shm), "shm");
    float *k = shm.base, *v = k + N * KVH * HD, *q = v + N * KVH * HD;
    float *out = q + QH * HD, *scores = out + QH * HD;
    for (int i = 0; i < N * KVH * HD; i++) {
        k[i] = (float)((i * 37 % 17) - 8) / 8.0f;
        v[i] = (float)((i * 11 % 13) - 6) / 4.0f;
    }
    sinkd_client_region rk = { shm.handle, 0 };
    sinkd_client_region rv = { shm.handle, (uint64_t)((char *)v - (char *)k) };
    uint64_t len = 0;
    for (uint32_t layer = 0; layer < LAYERS; layer++) {
        ASSERT_OK(c, sinkd_client_kv_append(c, info.session, layer, N, rk, rv, NULL, T, &len),
                  "kv.append");
        cr_expect_eq(len, N);
    }

    /* A zero query scores every key 0 whatever RoPE does to the keys, so
     * attention is uniform: each head's output is the mean of its group's
     * V rows and each key's probability, summed over the QH/KVH heads of
     * its group, is (QH/KVH)/N. */
    memset(q, 0, QH * HD * sizeof(*q));
    sinkd_client_attend_args a = SINKD_CLIENT_ATTEND_INIT;
    a.layer = 1;
    a.q = (sinkd_client_region){ shm.handle, (uint64_t)((char *)q - (char *)k) };
    a.out = (sinkd_client_region){ shm.handle, (uint64_t)((char *)out - (char *)k) };
    sinkd_client_region rs = { shm.handle, (uint64_t)((char *)scores - (char *)k) };
    a.scores = &rs;
    uint64_t lens[8];
    size_t n_lens = 0;
    ASSERT_OK(c, sinkd_client_attend(c, info.session, &a, T, lens, 8, &n_lens), "attend");
    cr_assert_eq(n_lens, KVH);
    for (int h = 0; h < KVH; h++)
        cr_expect_eq(lens[h], N);
    for (int h = 0; h < QH; h++) {
        int kvh = h / (QH / KVH);
        for (int d = 0; d < HD; d++) {
            double mean = 0;
            for (int t = 0; t < N; t++)
                mean += v[(t * KVH + kvh) * HD + d];
            mean /= N;
            cr_expect(fabs(out[h * HD + d] - mean) < 1e-5, "head %d dim %d: %g vs %g", h, d,
                      out[h * HD + d], mean);
        }
    }
    for (int i = 0; i < KVH * N; i++)
        cr_expect(fabs(scores[i] - (double)(QH / KVH) / N) < 1e-5, "score %d: %g", i,
                  scores[i]);

    sinkd_client_session_stats st = SINKD_CLIENT_SESSION_STATS_INIT;
    ASSERT_OK(c, sinkd_client_session_stats_get(c, info.session, T, &st), "raw session.stats");
    cr_expect_eq(st.n_layers, LAYERS);
    sinkd_client_session_stats_free(&st);

    /* A K range past the region is bad_shm, layer out of range refused. */
    rk.offset = 65536 - 4;
    cr_expect_eq(sinkd_client_kv_append(c, info.session, 0, N, rk, rv, NULL, T, NULL),
                 SINKD_ERR_BAD_SHM, "%s", sinkd_client_errmsg(c));
    rk.offset = 0;
    int rc = sinkd_client_kv_append(c, info.session, LAYERS, N, rk, rv, NULL, T, NULL);
    cr_expect(rc == SINKD_ERR_INVALID_ARGUMENT || rc == SINKD_ERR_BAD_REQUEST, "%s %s",
              sinkd_client_strerror(rc), sinkd_client_errmsg(c));
    sinkd_client_shm_free(c, &shm, T);
    sinkd_client_close(c);
}
