/*
 * sinkctl eval: perplexity, KL divergence and top-1 over one position's
 * logits. Double precision throughout, log-sum-exp with the maximum taken
 * out first, so float32 logits of any magnitude give stable figures.
 */
#include "sinkctl_eval.h"

#include <math.h>

/* log sum exp(x), or NaN when a logit is not finite. */
static double eval__lse(const float *x, uint32_t n)
{
    double m = -INFINITY;
    for (uint32_t i = 0; i < n; i++) {
        if (!isfinite(x[i]))
            return NAN;
        if (x[i] > m)
            m = x[i];
    }
    double s = 0;
    for (uint32_t i = 0; i < n; i++)
        s += exp((double)x[i] - m);
    return m + log(s);
}

double sinkctl_eval_nll(const float *logits, uint32_t n, uint32_t target)
{
    if (logits == NULL || n == 0 || target >= n)
        return NAN;
    return eval__lse(logits, n) - (double)logits[target];
}

double sinkctl_eval_kl(const float *p_logits, const float *q_logits, uint32_t n)
{
    if (p_logits == NULL || q_logits == NULL || n == 0)
        return NAN;
    double lp = eval__lse(p_logits, n), lq = eval__lse(q_logits, n);
    if (isnan(lp) || isnan(lq))
        return NAN;
    /* sum p_i (log p_i - log q_i) with log p_i = a_i - lse(a). */
    double kl = 0;
    for (uint32_t i = 0; i < n; i++) {
        double a = (double)p_logits[i] - lp;
        kl += exp(a) * (a - ((double)q_logits[i] - lq));
    }
    return kl;
}

uint32_t sinkctl_eval_argmax(const float *logits, uint32_t n)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}
