/*
 * sinkctl eval's pure parts: perplexity, KL and top-1 over logits, and the
 * report (windows, samples, JSON), against cases computed by hand.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sinkctl_eval.h"

#define EPS 1e-12

Test(eval_math, uniform_logits_give_log_n)
{
    const float x[4] = { 0, 0, 0, 0 };
    for (uint32_t t = 0; t < 4; t++)
        cr_assert_float_eq(sinkctl_eval_nll(x, 4, t), log(4.0), EPS);
    cr_assert_float_eq(sinkctl_eval_kl(x, x, 4), 0.0, EPS);
    cr_assert_eq(sinkctl_eval_argmax(x, 4), 0, "ties go to the first index");
}

Test(eval_math, nll_of_known_distribution)
{
    /* softmax(log 1, log 2, log 3, log 4) = (.1, .2, .3, .4). */
    float x[4] = { logf(1), logf(2), logf(3), logf(4) };
    cr_assert_float_eq(sinkctl_eval_nll(x, 4, 3), -log(0.4), 1e-7);
    cr_assert_float_eq(sinkctl_eval_nll(x, 4, 0), -log(0.1), 1e-7);
    cr_assert_eq(sinkctl_eval_argmax(x, 4), 3);
    /* A shift by a constant changes nothing, even one that would overflow
     * exp() without the maximum taken out. */
    float y[4];
    for (int i = 0; i < 4; i++)
        y[i] = x[i] + 1000.0f;
    cr_assert_float_eq(sinkctl_eval_nll(y, 4, 3), -log(0.4), 1e-4);
    cr_assert_float_eq(sinkctl_eval_kl(x, y, 4), 0.0, 1e-6);
}

Test(eval_math, kl_of_two_coins)
{
    /* P = (1/2, 1/2), Q = (1/4, 3/4):
     * KL(P||Q) = 1/2 log 2 + 1/2 log(2/3) = 1/2 log(4/3);
     * KL(Q||P) = 1/4 log(1/2) + 3/4 log(3/2). */
    const float p[2] = { 0, 0 };
    const float q[2] = { logf(0.25f), logf(0.75f) };
    cr_assert_float_eq(sinkctl_eval_kl(p, q, 2), 0.5 * log(4.0 / 3.0), 1e-7);
    cr_assert_float_eq(sinkctl_eval_kl(q, p, 2), 0.25 * log(0.5) + 0.75 * log(1.5), 1e-7);
}

Test(eval_math, bad_input_is_nan)
{
    const float x[3] = { 0, NAN, 1 };
    const float ok[3] = { 0, 1, 2 };
    const float inf[3] = { 0, INFINITY, 2 };
    cr_assert(isnan(sinkctl_eval_nll(x, 3, 0)));
    cr_assert(isnan(sinkctl_eval_nll(inf, 3, 0)));
    cr_assert(isnan(sinkctl_eval_nll(ok, 3, 3)), "target outside the vocabulary");
    cr_assert(isnan(sinkctl_eval_nll(ok, 0, 0)));
    cr_assert(isnan(sinkctl_eval_kl(ok, x, 3)));
    cr_assert(isnan(sinkctl_eval_kl(x, ok, 3)));
}

Test(eval_report, windows_and_totals)
{
    sinkctl_eval_report r;
    sinkctl_eval_report_init(&r, 4, true);
    /* Positions 1..9 in windows [0,4), [4,8), [8,12): 3, 4 and 2 of them.
     * nll of position p = p / 10, ref_nll = 1, kl = p / 100, agreement on
     * even positions. */
    for (uint64_t p = 1; p <= 9; p++)
        cr_assert_eq(sinkctl_eval_report_add(&r, p, p / 10.0, 1.0, p / 100.0, p % 2 == 0), 0);
    cr_assert_eq(r.n_windows, 3);
    cr_assert_eq(r.windows[0].sums.n, 3);
    cr_assert_eq(r.windows[1].sums.n, 4);
    cr_assert_eq(r.windows[2].sums.n, 2);
    /* window 0: nll 0.1 + 0.2 + 0.3 → ppl exp(0.2). */
    cr_assert_float_eq(sinkctl_eval_ppl(&r.windows[0].sums), exp(0.2), EPS);
    /* window 1: positions 4..7, mean nll 0.55, mean kl 0.055, 2 of 4 agree. */
    cr_assert_float_eq(sinkctl_eval_ppl(&r.windows[1].sums), exp(0.55), EPS);
    cr_assert_float_eq(sinkctl_eval_mean_kl(&r.windows[1].sums), 0.055, EPS);
    cr_assert_float_eq(sinkctl_eval_top1(&r.windows[1].sums), 0.5, EPS);
    /* total: sum p/10 for p = 1..9 = 4.5 → mean 0.5; 4 of 9 agree. */
    cr_assert_eq(r.total.n, 9);
    cr_assert_float_eq(sinkctl_eval_ppl(&r.total), exp(0.5), EPS);
    cr_assert_float_eq(sinkctl_eval_ref_ppl(&r.total), exp(1.0), EPS);
    cr_assert_float_eq(sinkctl_eval_top1(&r.total), 4.0 / 9.0, EPS);
    sinkctl_eval_report_free(&r);
    cr_assert_null(r.windows);
    cr_assert_eq(r.total.n, 0);
    cr_assert_eq(r.window, 4, "free keeps the report reusable as initialised");
}

Test(eval_report, rejects_what_cannot_be_scored)
{
    sinkctl_eval_report r;
    sinkctl_eval_report_init(&r, 0, false);
    cr_assert_eq(r.window, 1024, "window 0 means the default");
    cr_assert_eq(sinkctl_eval_report_add(&r, 0, 1.0, 0, 0, false), -EINVAL, "BOS is never scored");
    cr_assert_eq(sinkctl_eval_report_add(&r, 1, NAN, 0, 0, false), -EINVAL);
    cr_assert_eq(sinkctl_eval_report_add(&r, 5, 1.0, 0, 0, false), 0);
    cr_assert_eq(sinkctl_eval_report_add(&r, 5, 1.0, 0, 0, false), -EINVAL, "same position twice");
    cr_assert_eq(sinkctl_eval_report_add(&r, 3, 1.0, 0, 0, false), -EINVAL, "going back");
    cr_assert_eq(r.total.n, 1, "refused positions change nothing");
    cr_assert(isnan(sinkctl_eval_ppl(&(sinkctl_eval_sums){ 0 })));
    sinkctl_eval_report_free(&r);

    sinkctl_eval_report_init(&r, 8, true);
    cr_assert_eq(sinkctl_eval_report_add(&r, 1, 1.0, 1.0, NAN, false), -EINVAL,
                 "fidelity needs a finite KL");
    sinkctl_eval_report_free(&r);
}

Test(eval_report, samples_fill_window_bytes)
{
    sinkctl_eval_report r;
    sinkctl_eval_report_init(&r, 2, false);
    cr_assert_eq(sinkctl_eval_report_add(&r, 1, 0.5, 0, 0, false), 0);
    cr_assert_eq(sinkctl_eval_report_sample(&r, 2, 100, 0), 0);    /* closes window 0 */
    cr_assert_eq(sinkctl_eval_report_add(&r, 2, 0.5, 0, 0, false), 0);
    cr_assert_eq(sinkctl_eval_report_sample(&r, 3, 250, 1), 0);    /* inside window 1 */
    cr_assert_eq(sinkctl_eval_report_sample(&r, 4, 200, 2), 0);    /* closes window 1 */
    cr_assert_eq(r.n_samples, 3);
    cr_assert_eq(r.windows[0].kv_bytes, 100);
    cr_assert_eq(r.windows[1].kv_bytes, 200, "the last sample of a window wins");
    cr_assert_eq(r.kv_bytes_max, 250);
    cr_assert_eq(r.samples[1].evicted, 1);
    sinkctl_eval_report_free(&r);
}

/* The JSON of @r as a malloc'ed string. */
static char *report_json(const sinkctl_eval_report *r)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_not_null(f);
    cr_assert_eq(sinkctl_eval_report_write_json(r, f), 0);
    fclose(f);
    return text;
}

Test(eval_report, json_document)
{
    sinkctl_eval_report r;
    sinkctl_eval_report_init(&r, 2, false);
    snprintf(r.mode, sizeof(r.mode), "ppl");
    snprintf(r.model, sizeof(r.model), "tiny");
    snprintf(r.policy, sizeof(r.policy), "stream\"ing");
    snprintf(r.params, sizeof(r.params), "sinks=4 window=60");
    r.tokens = 4;
    r.seconds = 2.0;
    /* nll 0.25 at positions 1 and 3; window 0 = {1}, window 1 = {2, 3}
     * with position 2 never scored: ppl exp(0.25) everywhere. */
    cr_assert_eq(sinkctl_eval_report_add(&r, 1, 0.25, 0, 0, false), 0);
    cr_assert_eq(sinkctl_eval_report_add(&r, 3, 0.25, 0, 0, false), 0);
    cr_assert_eq(sinkctl_eval_report_sample(&r, 4, 4096, 7), 0);
    char *json = report_json(&r);
    const char *head = "{\"mode\":\"ppl\",\"model\":\"tiny\",\"policy\":\"stream\\\"ing\","
                       "\"params\":\"sinks=4 window=60\",\"ref\":\"\",";
    cr_assert(strncmp(json, head, strlen(head)) == 0, "%s", json);
    cr_assert_not_null(strstr(json, "\"tokens\":4,\"scored\":2,"), "%s", json);
    cr_assert_not_null(strstr(json, "\"tokens_per_s\":2.0,"), "4 tokens in 2 s: %s", json);
    cr_assert_not_null(strstr(json, "\"kv_bytes_final\":4096,\"kv_bytes_max\":4096,"), "%s", json);
    cr_assert_not_null(strstr(json, "\"windows\":[{\"start\":0,\"end\":2,\"n\":1,\"ppl\":"), "%s", json);
    cr_assert_not_null(strstr(json, "{\"start\":2,\"end\":4,\"n\":1,\"ppl\":"), "%s", json);
    cr_assert_not_null(strstr(json, "\"kv_bytes\":4096}],\"samples\":[{\"tokens\":4,"
                                    "\"kv_bytes\":4096,\"evicted\":7}]}\n"), "%s", json);
    cr_assert_null(strstr(json, "ref_ppl"), "no fidelity fields in a ppl report");
    /* The perplexity as written reads back as exp(0.25). */
    const char *at = strstr(json, "\"ppl\":");
    cr_assert_not_null(at);
    cr_assert_float_eq(strtod(at + 6, NULL), exp(0.25), EPS);
    free(json);
    sinkctl_eval_report_free(&r);
}

Test(eval_report, json_nulls_for_empty_figures)
{
    sinkctl_eval_report r;
    sinkctl_eval_report_init(&r, 2, true);
    /* Nothing scored, no time: perplexities, KL, top-1 and speed are null. */
    char *json = report_json(&r);
    cr_assert_not_null(strstr(json, "\"ppl\":null,\"nll_mean\":null,\"tokens_per_s\":null,"), "%s", json);
    cr_assert_not_null(strstr(json, "\"ref_ppl\":null,\"kl_mean\":null,\"top1\":null,"
                                    "\"windows\":[],\"samples\":[]}"), "%s", json);
    free(json);
    sinkctl_eval_report_free(&r);
}
