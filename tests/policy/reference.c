#include "reference.h"

#include <math.h>

void ref_top_mask(int n, const double *score, int k, uint8_t *mask)
{
    for (int i = 0; i < n; i++) {
        int better = 0;
        for (int j = 0; j < n; j++)
            better += score[j] > score[i] || (score[j] == score[i] && j < i);
        mask[i] = better < k;
    }
}

void ref_keep(int len, const double *score, int sinks, int recent, int budget, uint8_t *keep)
{
    if (budget == 0 || len <= budget) {
        for (int i = 0; i < len; i++)
            keep[i] = 1;
        return;
    }
    int m = budget - sinks - recent;
    for (int i = 0; i < len; i++) {
        if (i < sinks || i >= len - recent) {
            keep[i] = 1;
            continue;
        }
        int better = 0;
        for (int j = sinks; j < len - recent; j++)
            better += score[j] > score[i] || (score[j] == score[i] && j < i);
        keep[i] = better < m;
    }
}

void ref_pool(const double *s, int n, int kernel, int use_max, double *out)
{
    for (int i = 0; i < n; i++) {
        double acc = use_max ? -INFINITY : 0.0;
        for (int j = i - kernel / 2; j <= i + kernel / 2; j++) {
            if (j < 0 || j >= n)
                continue;
            acc = use_max ? (s[j] > acc ? s[j] : acc) : acc + s[j];
        }
        out[i] = use_max ? acc : acc / kernel;
    }
}

void ref_top_token_pages(int len, const double *score, int k, int page, uint8_t *mask)
{
    for (int p = 0; p < (len + page - 1) / page; p++)
        mask[p] = 0;
    for (int i = 0; i < len; i++) {
        int better = 0;
        for (int j = 0; j < len; j++)
            better += score[j] > score[i] || (score[j] == score[i] && j < i);
        if (better < k)
            mask[i / page] = 1;
    }
}
