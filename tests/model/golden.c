#include "golden.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "<key> <count> values..." into a fresh array of ints or floats. */
static int read_list(FILE *fp, const char *key, int is_float, void **out, size_t *n)
{
    char k[64];
    size_t cnt;
    /* room for step logits of a real vocabulary (50 x 128K), not for nonsense */
    if (fscanf(fp, "%63s %zu", k, &cnt) != 2 || strcmp(k, key) || cnt > (size_t)1 << 23)
        return -1;
    void *v = malloc((cnt ? cnt : 1) * 4);
    if (!v)
        return -1;
    for (size_t i = 0; i < cnt; i++) {
        int ok = is_float ? fscanf(fp, "%f", (float *)v + i) : fscanf(fp, "%d", (int32_t *)v + i);
        if (ok != 1) {
            free(v);
            return -1;
        }
    }
    *out = v;
    *n = cnt;
    return 0;
}

static int read_hex(FILE *fp, golden_case *c)
{
    char k[64], hex[4096];
    if (fscanf(fp, "%63s %4095s", k, hex) != 2 || strcmp(k, "prompt_hex"))
        return -1;
    size_t n = strlen(hex) / 2;
    c->prompt = malloc(n + 1);
    if (!c->prompt)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned b;
        if (sscanf(hex + 2 * i, "%2x", &b) != 1)
            return -1;
        c->prompt[i] = (char)b;
    }
    c->prompt[n] = 0;
    c->prompt_len = n;
    return 0;
}

/* The optional "step_logits" list after a case's margins: one row of
 * n_logits a greedy step, or nothing (the file position is left where it
 * was). */
static int read_steps(FILE *fp, golden_case *c)
{
    char k[64];
    long at = ftell(fp);
    size_t n;
    if (at < 0)
        return -1;
    if (fscanf(fp, "%63s", k) != 1 || strcmp(k, "step_logits"))
        return fseek(fp, at, SEEK_SET) == 0 ? 0 : -1;
    if (fseek(fp, at, SEEK_SET) != 0 ||
        read_list(fp, "step_logits", 1, (void **)&c->step_logits, &n))
        return -1;
    return n == c->n_greedy * c->n_logits ? 0 : -1;
}

int golden_load(const char *path, golden *g)
{
    memset(g, 0, sizeof *g);
    FILE *fp = fopen(path, "r");
    if (!fp)
        return -1;
    size_t n;
    int rc = -1;
    if (fscanf(fp, "cases %zu", &n) != 1 || n == 0 || n > 100)
        goto out;
    g->cases = calloc(n, sizeof *g->cases);
    if (!g->cases)
        goto out;
    g->n_cases = n;
    for (size_t i = 0; i < n; i++) {
        golden_case *c = &g->cases[i];
        size_t nm;
        if (read_hex(fp, c) ||
            read_list(fp, "prompt_ids", 0, (void **)&c->prompt_ids, &c->n_prompt) ||
            read_list(fp, "last_logits", 1, (void **)&c->last_logits, &c->n_logits) ||
            read_list(fp, "greedy_ids", 0, (void **)&c->greedy_ids, &c->n_greedy) ||
            read_list(fp, "greedy_margins", 1, (void **)&c->greedy_margins, &nm) || nm != c->n_greedy ||
            read_steps(fp, c))
            goto out;
    }
    rc = 0;
out:
    fclose(fp);
    if (rc)
        golden_free(g);
    return rc;
}

void golden_free(golden *g)
{
    for (size_t i = 0; i < g->n_cases; i++) {
        golden_case *c = &g->cases[i];
        free(c->prompt);
        free(c->prompt_ids);
        free(c->last_logits);
        free(c->greedy_ids);
        free(c->greedy_margins);
        free(c->step_logits);
    }
    free(g->cases);
    memset(g, 0, sizeof *g);
}

int32_t golden_argmax(const float *x, int32_t n)
{
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}
