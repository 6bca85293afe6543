/*
 * Sampling: the generator against values worked out by hand from the
 * xoshiro256** definition, determinism by seed, and each filter's effect on
 * the empirical distribution of many draws (bounds several standard
 * deviations wide, with fixed seeds).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <string.h>

#include "sample.h"

Test(sample, xoshiro_reference_values)
{
    /* state {1,2,3,4}: rotl(2*5,7)*9 = 11520; then s1 = 0 gives 0; then
     * s1 = 262149 gives rotl(1310745,7)*9 = 1509978240 */
    uint64_t s[4] = {1, 2, 3, 4};
    cr_assert_eq(sinkd_xoshiro_next(s), 11520);
    cr_assert_eq(sinkd_xoshiro_next(s), 0);
    cr_assert_eq(sinkd_xoshiro_next(s), 1509978240ull);
}

static sinkd_sampler make(float temp, int32_t top_k, float top_p, float min_p, uint64_t seed, int32_t V)
{
    sinkd_sample_params p = SINKD_SAMPLE_PARAMS_INIT;
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.seed = seed;
    sinkd_sampler s = SINKD_SAMPLER_INIT;
    cr_assert_eq(sinkd_sampler_init(&s, V, &p), 0);
    return s;
}

static int32_t draw(sinkd_sampler *s, const float *l, int32_t V)
{
    float x[300];
    memcpy(x, l, (size_t)V * sizeof *x);
    int32_t t = -1;
    cr_assert_eq(sinkd_sampler_sample(s, x, &t), 0);
    cr_assert(t >= 0 && t < V);
    return t;
}

Test(sample, greedy_is_argmax_lowest_on_ties)
{
    float l[5] = {0.5f, 3.0f, -1.0f, 3.0f, 2.0f};
    sinkd_sampler s = make(0.0f, 0, 1.0f, 0.0f, 1, 5);
    cr_assert_eq(draw(&s, l, 5), 1);
    sinkd_sampler_free(&s);
    /* top_k = 1 at any temperature is greedy too */
    s = make(5.0f, 1, 1.0f, 0.0f, 7, 5);
    for (int i = 0; i < 100; i++)
        cr_assert_eq(draw(&s, l, 5), 1);
    sinkd_sampler_free(&s);
}

Test(sample, same_seed_same_tokens)
{
    float l[260];
    for (int i = 0; i < 260; i++)
        l[i] = (float)(i % 7) * 0.1f;
    sinkd_sampler a = make(1.0f, 0, 1.0f, 0.0f, 42, 260), b = make(1.0f, 0, 1.0f, 0.0f, 42, 260),
                  c = make(1.0f, 0, 1.0f, 0.0f, 43, 260);
    int same_c = 0;
    for (int i = 0; i < 64; i++) {
        int32_t ta = draw(&a, l, 260), tb = draw(&b, l, 260), tc = draw(&c, l, 260);
        cr_assert_eq(ta, tb);
        same_c += ta == tc;
    }
    cr_assert_lt(same_c, 16, "a different seed should give a different stream");
    /* the saved state replays the stream */
    uint64_t st[4];
    sinkd_sampler_state_get(&a, st);
    int32_t want[16];
    for (int i = 0; i < 16; i++)
        want[i] = draw(&a, l, 260);
    sinkd_sampler_state_set(&b, st);
    for (int i = 0; i < 16; i++)
        cr_assert_eq(draw(&b, l, 260), want[i]);
    sinkd_sampler_free(&a);
    sinkd_sampler_free(&b);
    sinkd_sampler_free(&c);
}

/* Counts of N draws. */
static void histogram(sinkd_sampler *s, const float *l, int32_t V, int n, int *count)
{
    memset(count, 0, (size_t)V * sizeof *count);
    for (int i = 0; i < n; i++)
        count[draw(s, l, V)]++;
}

Test(sample, temperature_follows_softmax)
{
    float l[4] = {1.0f, 0.0f, -1.0f, 0.5f};
    enum { N = 20000 };
    int cnt[4];
    sinkd_sampler s = make(2.0f, 0, 1.0f, 0.0f, 5, 4);
    histogram(&s, l, 4, N, cnt);
    double z = 0, p[4];
    for (int i = 0; i < 4; i++)
        z += exp(l[i] / 2.0);
    for (int i = 0; i < 4; i++) {
        p[i] = exp(l[i] / 2.0) / z;
        double sd = sqrt(p[i] * (1 - p[i]) / N);
        cr_assert_leq(fabs(cnt[i] / (double)N - p[i]), 5 * sd, "token %d: %g vs %g", i, cnt[i] / (double)N, p[i]);
    }
    sinkd_sampler_free(&s);
}

Test(sample, top_k_top_p_min_p_filter)
{
    /* probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1 */
    float l[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    enum { N = 20000 };
    int cnt[4];
    /* top_p 0.7: 0.5 < 0.7 <= 0.8, keep {0, 1} renormalised: 0.625 / 0.375 */
    sinkd_sampler s = make(1.0f, 0, 0.7f, 0.0f, 9, 4);
    histogram(&s, l, 4, N, cnt);
    cr_assert_eq(cnt[2] + cnt[3], 0);
    cr_assert_leq(fabs(cnt[0] / (double)N - 0.625), 5 * sqrt(0.625 * 0.375 / N));
    sinkd_sampler_free(&s);
    /* min_p 0.25: keep p >= 0.125 -> {0, 1, 2} */
    s = make(1.0f, 0, 1.0f, 0.25f, 10, 4);
    histogram(&s, l, 4, N, cnt);
    cr_assert_eq(cnt[3], 0);
    cr_assert_gt(cnt[2], 0);
    cr_assert_leq(fabs(cnt[2] / (double)N - 0.15 / 0.95), 5 * sqrt(0.158 * 0.842 / N));
    sinkd_sampler_free(&s);
    /* top_k 2 -> {0, 1} */
    s = make(1.0f, 2, 1.0f, 0.0f, 11, 4);
    histogram(&s, l, 4, N, cnt);
    cr_assert_eq(cnt[2] + cnt[3], 0);
    cr_assert_gt(cnt[1], 0);
    sinkd_sampler_free(&s);
    /* top_k over a larger vocabulary keeps exactly the k best */
    float big[300];
    for (int i = 0; i < 300; i++)
        big[i] = (float)((i * 37) % 300) / 100.0f; /* a permutation of 0..2.99 */
    int hist[300];
    s = make(0.5f, 5, 1.0f, 0.0f, 12, 300);
    histogram(&s, big, 300, 5000, hist);
    for (int i = 0; i < 300; i++) {
        bool top5 = big[i] >= 2.95f;
        cr_assert(top5 ? hist[i] > 0 : hist[i] == 0, "token %d (%g): %d draws", i, big[i], hist[i]);
    }
    sinkd_sampler_free(&s);
}

/* A temperature so small that logit / T overflows is greedy in the limit,
 * not NaN: the largest logit wins every draw (the NaN probabilities of a
 * naive softmax picked the last candidate, the least likely). An infinite
 * logit wins at any temperature; a row of -inf gives a valid id. */
Test(sample, extreme_temperatures_and_infinite_logits)
{
    static const float tiny[] = {1e-38f, 1e-40f, 1e-45f};
    const float l[4] = {10.0f, 1.0f, 0.5f, -3.0f};
    for (int i = 0; i < 3; i++)
        for (uint64_t seed = 1; seed <= 20; seed++) {
            sinkd_sampler s = make(tiny[i], i == 1 ? 3 : 0, 1.0f, 0.0f, seed, 4);
            cr_assert_eq(draw(&s, l, 4), 0, "T=%g seed %llu", (double)tiny[i],
                         (unsigned long long)seed);
            sinkd_sampler_free(&s);
        }
    const float inf[4] = {1.0f, INFINITY, 0.5f, -3.0f};
    const float none[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    for (uint64_t seed = 1; seed <= 20; seed++) {
        sinkd_sampler s = make(1.0f, 0, 0.9f, 0.05f, seed, 4);
        cr_assert_eq(draw(&s, inf, 4), 1);
        draw(&s, none, 4); /* in range: draw checks it */
        sinkd_sampler_free(&s);
    }
}

Test(sample, repetition_penalty)
{
    float l[4] = {2.0f, 1.9f, -1.0f, -1.1f};
    sinkd_sample_params p = SINKD_SAMPLE_PARAMS_INIT;
    p.repeat_penalty = 1.5f;
    p.repeat_last_n = 2;
    sinkd_sampler s = SINKD_SAMPLER_INIT;
    cr_assert_eq(sinkd_sampler_init(&s, 4, &p), 0);
    cr_assert_eq(draw(&s, l, 4), 0);
    sinkd_sampler_accept(&s, 0); /* 2 / 1.5 = 1.33 < 1.9 */
    cr_assert_eq(draw(&s, l, 4), 1);
    float x[4] = {2.0f, 1.9f, -1.0f, -1.1f};
    sinkd_sampler_accept(&s, 2); /* -1 * 1.5 = -1.5 */
    sinkd_sampler_accept(&s, 2); /* twice in the window: penalised once */
    int32_t t;
    cr_assert_eq(sinkd_sampler_sample(&s, x, &t), 0);
    cr_assert_float_eq(x[2], -1.5f, 1e-6);
    cr_assert_float_eq(x[0], 2.0f, 1e-6); /* 0 left the window of 2 */
    sinkd_sampler_free(&s);
}

Test(sample, bad_parameters)
{
    sinkd_sample_params p = SINKD_SAMPLE_PARAMS_INIT;
    sinkd_sampler s = SINKD_SAMPLER_INIT;
    p.top_p = 1.5f;
    cr_assert_eq(sinkd_sampler_init(&s, 4, &p), -EINVAL);
    p = (sinkd_sample_params)SINKD_SAMPLE_PARAMS_INIT;
    p.repeat_penalty = 0;
    cr_assert_eq(sinkd_sampler_init(&s, 4, &p), -EINVAL);
    p = (sinkd_sample_params)SINKD_SAMPLE_PARAMS_INIT;
    p.temperature = NAN;
    cr_assert_eq(sinkd_sampler_init(&s, 4, &p), -EINVAL);
    cr_assert_eq(sinkd_sampler_init(&s, 0, &p), -EINVAL);
    p = (sinkd_sample_params)SINKD_SAMPLE_PARAMS_INIT;
    cr_assert_eq(sinkd_sampler_init(&s, 4, &p), 0);
    float l[4] = {0, NAN, 0, 0};
    int32_t t;
    cr_assert_eq(sinkd_sampler_sample(&s, l, &t), -EINVAL);
    sinkd_sampler_free(&s);
    cr_assert_null(s.idx);
}
