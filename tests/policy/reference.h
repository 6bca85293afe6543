/*
 * Naive reference rules for the policy tests, written from the papers'
 * descriptions and independent of daemon/policy/plan.c: double precision,
 * O(n^2) ranking by counting, no sorting, no shared code.
 */
#ifndef SINKD_TEST_POLICY_REFERENCE_H
#define SINKD_TEST_POLICY_REFERENCE_H

#include <stdint.h>

/* keep[i] = 1 for the tokens a "sinks + top-m by score + recent" cache of
 * @budget tokens keeps out of @len (everything when len <= budget or
 * budget == 0). Ties go to the older token. */
void ref_keep(int len, const double *score, int sinks, int recent, int budget, uint8_t *keep);

/* 1-D pooling with a centred window of @kernel (odd): max ignores positions
 * outside [0, n); avg sums the inside ones and divides by kernel. */
void ref_pool(const double *s, int n, int kernel, int use_max, double *out);

/* The pages (of @page tokens) holding the @k best tokens by score (ties to
 * the older), as a 0/1 mask over ceil(len/page) pages. */
void ref_top_token_pages(int len, const double *score, int k, int page, uint8_t *mask);

/* The @k best of n values (ties to the lower index) as a 0/1 mask. */
void ref_top_mask(int n, const double *score, int k, uint8_t *mask);

#endif
