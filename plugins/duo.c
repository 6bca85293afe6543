/*
 * duo: DuoAttention (Xiao et al., "DuoAttention: Efficient Long-Context LLM
 * Inference with Retrieval and Streaming Heads", ICLR 2025, §3). Only some
 * heads retrieve from the whole context; the rest attend to the first
 * tokens and the recent ones, so their cache can be cut to sinks + recent
 * (§3.2). Which heads are which is learned offline as a gate value alpha per
 * (layer, kv head) and saved as full_attention_heads.tsv: one line per
 * layer, one tab-separated value per kv head. A head is full when alpha >
 * threshold or, with sparsity=s, when it is not among the round(s * heads)
 * lowest alphas (the paper's deployment knob, §3.3). sinks=64 and
 * recent=256 are the paper's streaming-head sizes (§4.1).
 *
 *   pattern=PATH    full_attention_heads.tsv (DuoAttention's format): a
 *                   regular file of at most 1 MiB, read by the daemon (as
 *                   its own user, on its engine thread) when the session
 *                   selects the policy; anything else fails create, with
 *                   the same message whatever was wrong (the reason goes
 *                   to the daemon's log). Or
 *   heads=TABLE     the same inline: rows split by ';', values by ','
 *   threshold=0.5   alpha above which a head is full
 *   sparsity=S      instead: fraction of heads made streaming, in [0, 1]
 *   sinks=64 recent=256   what a streaming head keeps
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "policy.h"

/* The largest pattern file read: create() runs on the engine thread, which
 * every session waits for, so the cap bounds that wait and its memory. A
 * real table (a line per layer, a value per kv head) is ~5 KB at 32 x 8. */
#define DUO_FILE_MAX (1 << 20)

typedef struct duo_state {
    int64_t sinks, recent;
    size_t n;         /* n_layers * n_kv_heads */
    uint8_t kind[];   /* sinkd_policy_head_kind per (layer, kv head) */
} duo_state;

/* Read the pattern file @path, NUL-terminated, into *out (the caller
 * frees it). Returns 0, -ENOMEM, or -EINVAL with the reason in @why (for
 * the daemon's log: duo_create gives the client one answer for every
 * refused pattern, see there). The path is a client's, opened as the
 * daemon's user on its engine thread, so:
 *   - stat before open: opening a device node can act on it, and O_NONBLOCK
 *     only keeps a FIFO's open from waiting; fstat checks what was opened
 *     in case the path names something else by then;
 *   - reading stops one byte past the cap: a file that grows is refused. */
static int32_t duo_read(const char *path, char **out, char *why, size_t whylen)
{
    struct stat st;
    if (stat(path, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > DUO_FILE_MAX) {
        snprintf(why, whylen, "not a regular file of at most %d bytes", DUO_FILE_MAX);
        return -EINVAL;
    }
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > DUO_FILE_MAX) {
        snprintf(why, whylen, fd < 0 ? "cannot be opened" : "changed while being opened");
        if (fd >= 0)
            close(fd);
        return -EINVAL;
    }
    FILE *f = fdopen(fd, "rb");
    char *buf = f != NULL ? malloc(DUO_FILE_MAX + 1) : NULL;
    size_t n = buf != NULL ? fread(buf, 1, DUO_FILE_MAX + 1, f) : 0;
    bool bad = buf != NULL && (ferror(f) || n > DUO_FILE_MAX);
    if (f != NULL)
        fclose(f); /* and fd */
    else
        close(fd);
    if (buf == NULL)
        return -ENOMEM;
    if (bad) {
        free(buf);
        snprintf(why, whylen, "read failed or grew past %d bytes", DUO_FILE_MAX);
        return -EINVAL;
    }
    buf[n] = '\0';
    *out = buf;
    return 0;
}

/* Parse rows of alphas (rows: '\n' or ';', cells: '\t' or ',') into
 * alpha[layer * kv_heads + head]. Empty rows are skipped. Returns 0 or
 * -EINVAL with the first problem in @msg. */
static int32_t duo_parse(char *text, const sinkd_policy_geometry *g, double *alpha, char *msg,
                         size_t msglen)
{
    char *row_save = NULL;
    int32_t rows = 0;
    for (char *row = strtok_r(text, "\n;", &row_save); row != NULL;
         row = strtok_r(NULL, "\n;", &row_save)) {
        if (row[strspn(row, " \t\r")] == '\0')
            continue;
        if (rows == g->n_layers) {
            snprintf(msg, msglen, "head table has more than %d rows (layers)", g->n_layers);
            return -EINVAL;
        }
        int32_t cols = 0;
        char *cell_save = NULL;
        for (char *cell = strtok_r(row, "\t,\r ", &cell_save); cell != NULL;
             cell = strtok_r(NULL, "\t,\r ", &cell_save)) {
            char *end;
            double a = strtod(cell, &end);
            if (*end != '\0' || cols == g->n_kv_heads) {
                snprintf(msg, msglen, "head table row %d: expected %d numbers", rows + 1,
                         g->n_kv_heads);
                return -EINVAL;
            }
            /* nan compares false both ways: it would be neither above the
             * threshold nor rankable (qsort needs a total order); nor is an
             * infinity a gate value */
            if (!isfinite(a)) {
                snprintf(msg, msglen, "head table row %d: value %d is not a finite number",
                         rows + 1, cols + 1);
                return -EINVAL;
            }
            alpha[(size_t)rows * (size_t)g->n_kv_heads + (size_t)cols++] = a;
        }
        if (cols != g->n_kv_heads) {
            snprintf(msg, msglen, "head table row %d: %d values, expected %d", rows + 1, cols,
                     g->n_kv_heads);
            return -EINVAL;
        }
        rows++;
    }
    if (rows != g->n_layers) {
        snprintf(msg, msglen, "head table has %d rows, the model %d layers", rows, g->n_layers);
        return -EINVAL;
    }
    return 0;
}

/* Fail create for a refused table. An inline one gets its precise reason.
 * A pattern= file is one the client named and the daemon opened as its own
 * user: the answer must not tell a missing file from an unreadable one, or
 * either from one whose content is not a table (the parse errors would
 * quote its shape), so every refused file gets the same message and only
 * the daemon's log has the reason. */
static int32_t duo_refuse(const sinkd_policy_host *host, const sinkd_policy_params *params,
                          const char *pattern, const char *why)
{
    if (pattern == NULL)
        return host->param_fail(params, why);
    char msg[256];
    snprintf(msg, sizeof msg, "pattern '%.100s' refused: %s", pattern, why);
    host->log(host, SINKD_POLICY_LOG_INFO, msg);
    snprintf(msg, sizeof msg, "pattern: '%.100s' is not a readable regular file of at most %d "
             "bytes holding a head table", pattern, DUO_FILE_MAX);
    return host->param_fail(params, msg);
}

typedef struct duo_ranked {
    double alpha;
    size_t i;
} duo_ranked;

/* Lower alpha first, then lower index: a total order (alphas are finite). */
static int duo_rank_cmp(const void *a, const void *b)
{
    const duo_ranked *x = a, *y = b;
    if (x->alpha != y->alpha)
        return x->alpha < y->alpha ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

/* Full when above @threshold, or (sparsity >= 0) when not among the
 * round(sparsity * n) lowest alphas, ties broken by index. Sorted, not
 * ranked pairwise: n can reach a few hundred thousand heads for a raw
 * session's geometry, and O(n^2) of that would hold the engine thread for
 * minutes. Returns 0 or -ENOMEM. */
static int32_t duo_classify(const double *alpha, size_t n, double threshold, double sparsity,
                            uint8_t *kind)
{
    if (sparsity < 0) {
        for (size_t i = 0; i < n; i++)
            kind[i] = alpha[i] > threshold ? SINKD_HEAD_FULL : SINKD_HEAD_STREAMING;
        return 0;
    }
    duo_ranked *r = malloc(n * sizeof *r);
    if (r == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        r[i] = (duo_ranked){.alpha = alpha[i], .i = i};
    qsort(r, n, sizeof *r, duo_rank_cmp);
    size_t m = (size_t)(sparsity * (double)n + 0.5);
    for (size_t k = 0; k < n; k++)
        kind[r[k].i] = k < m ? SINKD_HEAD_STREAMING : SINKD_HEAD_FULL;
    free(r);
    return 0;
}

static int32_t duo_create(const sinkd_policy_host *host, const sinkd_policy_geometry *geom,
                          const sinkd_policy_params *params, void **state)
{
    size_t n = (size_t)geom->n_layers * (size_t)geom->n_kv_heads;
    const char *pattern, *heads;
    double threshold, sparsity;
    char *text = NULL;
    double *alpha = malloc(n * sizeof *alpha);
    duo_state *s = calloc(1, sizeof *s + n);
    int32_t rc = s != NULL && alpha != NULL ? 0 : -ENOMEM;
    if (rc == 0)
        rc = host->param_int(params, "sinks", 64, 0, 1 << 20, &s->sinks);
    if (rc == 0)
        rc = host->param_int(params, "recent", 256, 1, SINKD_POLICY_MAX_TOKENS - s->sinks,
                             &s->recent);
    if (rc == 0)
        rc = host->param_float(params, "threshold", 0.5, -1e9, 1e9, &threshold);
    if (rc == 0)
        rc = host->param_float(params, "sparsity", -1.0, 0.0, 1.0, &sparsity);
    if (rc == 0)
        rc = host->param_str(params, "pattern", &pattern);
    if (rc == 0)
        rc = host->param_str(params, "heads", &heads);
    if (rc == 0 && (pattern == NULL) == (heads == NULL))
        rc = host->param_fail(params, "give exactly one of pattern= (a TSV file) or heads=");
    char why[160] = ""; /* set when the table is refused */
    if (rc == 0 && pattern != NULL)
        rc = duo_read(pattern, &text, why, sizeof why);
    if (rc == 0 && heads != NULL && (text = strdup(heads)) == NULL)
        rc = -ENOMEM;
    if (rc == 0)
        rc = duo_parse(text, geom, alpha, why, sizeof why);
    if (rc < 0 && why[0] != '\0')
        rc = duo_refuse(host, params, pattern, why);
    if (rc == 0)
        rc = duo_classify(alpha, n, threshold, sparsity, s->kind);
    if (rc == 0) {
        s->n = n;
        *state = s;
    } else {
        free(s);
    }
    free(text);
    free(alpha);
    return rc;
}

static int32_t duo_plan(void *state, sinkd_policy_plan *plan)
{
    const duo_state *s = state;
    plan->evict_at = SINKD_EVICT_BUDGET;
    plan->budget = 0; /* full heads keep everything */
    plan->stream_sinks = (int32_t)s->sinks;
    plan->stream_recent = (int32_t)s->recent;
    memcpy(plan->head_kind, s->kind, s->n);
    return 0;
}

static const sinkd_policy duo_policy = {
    .abi_major = SINKD_POLICY_ABI_MAJOR,
    .abi_minor = SINKD_POLICY_ABI_MINOR,
    .struct_size = sizeof(sinkd_policy),
    .name = "duo",
    .version = "1.0.0",
    .summary = "DuoAttention: full retrieval heads, sinks + recent streaming heads",
    .selftest_params = "heads=1,0;0,1;1,1;0,0 sinks=4 recent=32",
    .create = duo_create,
    .destroy = free,
    .plan = duo_plan,
};

SINKD_POLICY_EXPORT const sinkd_policy *sinkd_policy_v1(void)
{
    return &duo_policy;
}
