/*
 * Sampling. Candidates are ordered by logit (descending, ties by id) so that
 * the outcome depends only on the logits, the parameters and the generator.
 */
#include "sample.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t sinkd_xoshiro_next(uint64_t s[4])
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int sinkd_sampler_init(sinkd_sampler *s, int32_t n_vocab, const sinkd_sample_params *p)
{
    if (!s || !p || n_vocab < 1 || !(p->top_p >= 0 && p->top_p <= 1) ||
        !(p->min_p >= 0 && p->min_p <= 1) || !(p->repeat_penalty > 0) || !isfinite(p->temperature) ||
        p->top_k < 0 || p->repeat_last_n < 0)
        return -EINVAL;
    *s = (sinkd_sampler)SINKD_SAMPLER_INIT;
    s->p = *p;
    s->n_vocab = n_vocab;
    s->idx = malloc((size_t)n_vocab * sizeof *s->idx);
    s->prob = malloc((size_t)n_vocab * sizeof *s->prob);
    s->seen = calloc((size_t)n_vocab, 1);
    s->recent = malloc((p->repeat_last_n ? (size_t)p->repeat_last_n : 1) * sizeof *s->recent);
    if (!s->idx || !s->prob || !s->seen || !s->recent) {
        sinkd_sampler_free(s);
        return -ENOMEM;
    }
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
    return 0;
}

void sinkd_sampler_free(sinkd_sampler *s)
{
    if (!s)
        return;
    free(s->idx);
    free(s->prob);
    free(s->seen);
    free(s->recent);
    *s = (sinkd_sampler)SINKD_SAMPLER_INIT;
}

void sinkd_sampler_accept(sinkd_sampler *s, int32_t tok)
{
    if (!s || !s->recent || s->p.repeat_last_n == 0 || tok < 0 || tok >= s->n_vocab)
        return;
    s->recent[s->head] = tok;
    s->head = (s->head + 1) % s->p.repeat_last_n;
    if (s->n_recent < s->p.repeat_last_n)
        s->n_recent++;
}

void sinkd_sampler_state_get(const sinkd_sampler *s, uint64_t state[4])
{
    memcpy(state, s->rng, sizeof s->rng);
}

void sinkd_sampler_state_set(sinkd_sampler *s, const uint64_t state[4])
{
    memcpy(s->rng, state, sizeof s->rng);
}

/* Each distinct recent token once: positive logits divided, negative ones
 * multiplied by the penalty (as CTRL and llama.cpp do). */
static void apply_penalty(sinkd_sampler *s, float *logits)
{
    if (s->p.repeat_penalty == 1.0f)
        return;
    for (int32_t i = 0; i < s->n_recent; i++) {
        int32_t t = s->recent[i];
        if (s->seen[t])
            continue;
        s->seen[t] = 1;
        logits[t] = logits[t] > 0 ? logits[t] / s->p.repeat_penalty : logits[t] * s->p.repeat_penalty;
    }
    for (int32_t i = 0; i < s->n_recent; i++)
        s->seen[s->recent[i]] = 0;
}

/* Descending logit, ascending id (qsort_r, the logits as context). */
static int cmp_desc(const void *a, const void *b, void *ctx)
{
    const float *l = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    float lx = l[x], ly = l[y];
    if (lx != ly)
        return lx > ly ? -1 : 1;
    return (x > y) - (x < y);
}

static bool before(const float *l, int32_t x, int32_t y)
{
    return l[x] > l[y] || (l[x] == l[y] && x < y);
}

/* The k best ids, best first, in idx[0..k): a min-heap of the best so far. */
static void select_top_k(sinkd_sampler *s, const float *l, int32_t k)
{
    int32_t *h = s->idx;
    for (int32_t t = 0; t < s->n_vocab; t++) {
        int32_t i;
        if (t < k) {
            i = t;
        } else if (before(l, t, h[0])) {
            i = 0;
            /* sift the new root down */
            for (;;) {
                int32_t c = 2 * i + 1;
                if (c >= k)
                    break;
                if (c + 1 < k && before(l, h[c], h[c + 1]))
                    c++;
                if (!before(l, t, h[c]))
                    break;
                h[i] = h[c];
                i = c;
            }
            h[i] = t;
            continue;
        } else {
            continue;
        }
        /* sift up the worst to the root */
        while (i > 0 && before(l, h[(i - 1) / 2], t)) {
            h[i] = h[(i - 1) / 2];
            i = (i - 1) / 2;
        }
        h[i] = t;
    }
}

int sinkd_sampler_sample(sinkd_sampler *s, float *logits, int32_t *out)
{
    if (!s || !s->idx || !logits || !out)
        return -EINVAL;
    for (int32_t t = 0; t < s->n_vocab; t++)
        if (isnan(logits[t]))
            return -EINVAL;
    apply_penalty(s, logits);
    if (s->p.temperature <= 0) {
        int32_t best = 0;
        for (int32_t t = 1; t < s->n_vocab; t++)
            if (logits[t] > logits[best])
                best = t;
        *out = best;
        return 0;
    }
    int32_t n = s->n_vocab;
    if (s->p.top_k > 0 && s->p.top_k < n) {
        n = s->p.top_k;
        select_top_k(s, logits, n);
    } else {
        for (int32_t t = 0; t < n; t++)
            s->idx[t] = t;
    }
    qsort_r(s->idx, (size_t)n, sizeof *s->idx, cmp_desc, logits);

    /* The largest logit is infinitely more likely than the rest (+inf), or
     * nothing is likely at all (all -inf): what greedy picks. */
    double top = logits[s->idx[0]];
    if (!isfinite(top)) {
        *out = s->idx[0];
        return 0;
    }
    /* softmax at temperature over the candidates, in double, from the
     * differences: logit / temperature alone overflows at a tiny
     * temperature, and inf - inf made every probability NaN */
    double sum = 0;
    for (int32_t i = 0; i < n; i++) {
        double e = exp(((double)logits[s->idx[i]] - top) / s->p.temperature);
        s->prob[i] = (float)e;
        sum += e;
    }
    int32_t keep = n;
    double mass = 0, cut = s->p.top_p * sum;
    if (s->p.top_p < 1.0f) {
        for (keep = 0; keep < n;) {
            mass += s->prob[keep++];
            if (mass >= cut)
                break;
        }
    }
    if (s->p.min_p > 0) {
        float floor = s->p.min_p * s->prob[0];
        int32_t k = 1;
        while (k < keep && s->prob[k] >= floor)
            k++;
        keep = k;
    }
    double total = 0;
    for (int32_t i = 0; i < keep; i++)
        total += s->prob[i];
    /* 53 random bits give a uniform double in [0, 1) */
    double r = (double)(sinkd_xoshiro_next(s->rng) >> 11) * (1.0 / 9007199254740992.0) * total;
    int32_t pick = keep - 1;
    for (int32_t i = 0; i < keep; i++) {
        r -= s->prob[i];
        if (r < 0) {
            pick = i;
            break;
        }
    }
    *out = s->idx[pick];
    return 0;
}
