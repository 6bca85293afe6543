/*
 * Reader of tests/data/golden-*.txt (written by tests/data/golden_to_txt.py
 * from the reference models' golden JSON files).
 */
#ifndef SINKD_TEST_GOLDEN_H
#define SINKD_TEST_GOLDEN_H

#include <stddef.h>
#include <stdint.h>

typedef struct golden_case {
    char *prompt;            /* UTF-8, NUL-terminated */
    size_t prompt_len;
    int32_t *prompt_ids;
    size_t n_prompt;
    float *last_logits;
    size_t n_logits;
    int32_t *greedy_ids;
    size_t n_greedy;
    float *greedy_margins;   /* top1 - top2 before greedy_ids[i] */
    /* Optional (NULL when the file has none): n_greedy rows of n_logits, row
     * i the logits after greedy_ids[i] was fed, i.e. the ones that choose
     * greedy_ids[i + 1]. */
    float *step_logits;
} golden_case;

typedef struct golden {
    golden_case *cases;
    size_t n_cases;
} golden;

/* 0 on success, -1 if the file is missing or malformed. @g is owned by the
 * caller and freed with golden_free (also after a failed load). */
int golden_load(const char *path, golden *g);
void golden_free(golden *g);

/* Index of the largest of x[0..n), the lowest on ties (as greedy decoding). */
int32_t golden_argmax(const float *x, int32_t n);

#endif
