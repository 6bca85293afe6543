/*
 * sinkd-bench-policy: decode step time per policy at long context and a
 * batch of sessions, against `full` at equal kept tokens; the cost of one
 * eviction per page freed; the KV memory a session holds after eviction
 * against full. Prints a table; --json-out writes the numbers. How each is
 * measured: measure.c.
 *
 *   sinkd-bench-policy --model M.gguf [--backend auto|cpu|cuda] [--context N]
 *       [--batch N] [--steps N] [--warmup N] [--chunk N] [--evict-budget N]
 *       [--stat-steps N] [--policies a,b,...] [--plugin-dir DIR]
 *       [--threads N] [--json-out PATH]
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_policy.h"

#define OVERHEAD_TARGET 0.05 /* machinery vs full at equal kept tokens */

static const char *const all_policies[] = {
    "full", "window", "streaming", "h2o", "tova", "a2sf", "scissorhands",
    "keyformer", "snapkv", "pyramidkv", "quest", "tidal", "duo",
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: sinkd-bench-policy --model PATH [options]\n"
            "  --model PATH         GGUF model (with a tokenizer: the engine loads one)\n"
            "  --backend NAME       auto | cpu | cuda (default auto)\n"
            "  --context N          tokens per session before decoding (default 32768)\n"
            "  --batch N            sessions decoding together (default 16)\n"
            "  --steps N            timed decode steps per policy (default 32)\n"
            "  --warmup N           untimed steps before them (default 4)\n"
            "  --chunk N            prefill chunk, as [engine] prefill_chunk (default 512)\n"
            "  --evict-budget N     budget of the eviction measurement (default 4096)\n"
            "  --stat-steps N       steps that build a statistic before it (default 4, <= %d)\n"
            "  --policies LIST      comma-separated (default: all built-in policies)\n"
            "  --plugin-dir DIR     policy plugins (default the build's: %s)\n"
            "  --threads N          CPU backend threads, 0 = all (default 0)\n"
            "  --json-out PATH      write the results as JSON\n",
            POL_STAT_STEPS_MAX, SINKD_PLUGIN_BUILD_DIR);
}

static int parse_int(const char *flag, const char *v, long lo, long hi, int32_t *out)
{
    char *end;
    errno = 0;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "sinkd-bench-policy: %s: expected an integer in [%ld, %ld], got '%s'\n",
                flag, lo, hi, v ? v : "");
        return -EINVAL;
    }
    *out = (int32_t)x;
    return 0;
}

/* Split @list (modified) into o->policies. */
static int parse_policies(char *list, pol_opts *o)
{
    o->n_policies = 0;
    for (char *save = NULL, *p = strtok_r(list, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        if (o->n_policies == POL_MAX) {
            fprintf(stderr, "sinkd-bench-policy: --policies: more than %d\n", POL_MAX);
            return -EINVAL;
        }
        o->policies[o->n_policies++] = p;
    }
    if (o->n_policies == 0) {
        fprintf(stderr, "sinkd-bench-policy: --policies: empty list\n");
        return -EINVAL;
    }
    return 0;
}

static int parse_args(int argc, char **argv, pol_opts *o, const char **json)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (!v) {
            fprintf(stderr, "sinkd-bench-policy: %s: missing value\n", a);
            return -EINVAL;
        }
        i++;
        if (!strcmp(a, "--model")) o->model = v;
        else if (!strcmp(a, "--backend")) o->backend = v;
        else if (!strcmp(a, "--plugin-dir")) o->plugin_dir = v;
        else if (!strcmp(a, "--json-out")) *json = v;
        else if (!strcmp(a, "--policies")) rc = parse_policies(argv[i], o);
        else if (!strcmp(a, "--context")) rc = parse_int(a, v, 64, 1 << 22, &o->context);
        else if (!strcmp(a, "--batch")) rc = parse_int(a, v, 1, 1024, &o->batch);
        else if (!strcmp(a, "--steps")) rc = parse_int(a, v, 1, 1 << 16, &o->steps);
        else if (!strcmp(a, "--warmup")) rc = parse_int(a, v, 0, 1 << 16, &o->warmup);
        else if (!strcmp(a, "--chunk")) rc = parse_int(a, v, 1, 1 << 16, &o->chunk);
        else if (!strcmp(a, "--evict-budget")) rc = parse_int(a, v, 16, 1 << 22, &o->evict_budget);
        else if (!strcmp(a, "--stat-steps"))
            rc = parse_int(a, v, 1, POL_STAT_STEPS_MAX, &o->stat_steps);
        else if (!strcmp(a, "--threads")) rc = parse_int(a, v, 0, 1024, &o->threads);
        else {
            fprintf(stderr, "sinkd-bench-policy: unknown option %s\n", a);
            usage(stderr);
            return -EINVAL;
        }
        if (rc < 0)
            return rc;
    }
    if (!o->model) {
        fprintf(stderr, "sinkd-bench-policy: --model is required\n");
        usage(stderr);
        return -EINVAL;
    }
    if (o->evict_budget >= o->context) {
        fprintf(stderr, "sinkd-bench-policy: --evict-budget %d must be under --context %d\n",
                o->evict_budget, o->context);
        return -EINVAL;
    }
    return 0;
}

static void print_table(const pol_opts *o, const pol_result *r)
{
    const sinkd_model_hparams *hp = &r->hp;
    bool cpu = !strcmp(r->backend, "cpu");

    printf("\nsinkd-bench-policy: %s (%s): %d layers, %d/%d heads, head_dim %d\n",
           hp->name[0] ? hp->name : o->model, o->model, hp->n_layers, hp->n_heads,
           hp->n_kv_heads, hp->head_dim);
    printf("%s backend (%s)%s; KV %s, %d-token pages of %llu B; %d sessions x %d tokens "
           "(filled at %.0f tok/s)\n", r->backend, r->device, cpu ? " [CPU numbers]" : "",
           r->kv_dtype, r->page_tokens, (unsigned long long)r->page_cost, o->batch, o->context,
           r->fill_tok_s);
    printf("decode: median over pairs of consecutive steps (their mean) of %d steps after %d, "
           "every policy from %d tokens per lane (budget %d: nothing evicted); eviction to "
           "budget %d\n",
           o->steps, o->warmup, o->context, r->equal_budget, o->evict_budget);
    printf("\n%-13s %9s %9s %9s %8s %8s | %9s %8s %9s %10s %7s\n", "policy", "step ms", "p90",
           "fwd ms", "vs full", "lane", "evict ms", "pages", "us/page", "MiB/sess", "vs full");
    for (int p = 0; p < r->n_rows; p++) {
        const pol_row *w = &r->rows[p];
        char step[16] = "-", p90[16] = "-", fwd[16] = "-", ovh[16] = "-", lane[16] = "-";
        char ev[16] = "-", pages[16] = "-", upp[16] = "-", mib[16] = "-", mem[16] = "-";
        if (w->decoded) {
            snprintf(step, sizeof step, "%.3f", w->step_ms_med);
            snprintf(p90, sizeof p90, "%.3f", w->step_ms_p90);
            snprintf(fwd, sizeof fwd, "%.3f", w->fwd_ms);
            snprintf(ovh, sizeof ovh, "%+.1f%%", w->overhead * 100);
            snprintf(lane, sizeof lane, "%.0f", w->kept_mean);
        }
        if (w->evicted) {
            snprintf(ev, sizeof ev, "%.2f%s", w->evict_ms, w->evict_by_append ? "*" : "");
            snprintf(pages, sizeof pages, "%lld", (long long)w->evict_pages);
            snprintf(upp, sizeof upp, "%.2f", w->us_per_page);
        }
        if (w->bytes_after) {
            snprintf(mib, sizeof mib, "%.1f", (double)w->bytes_after / 1048576.0);
            snprintf(mem, sizeof mem, "%.3f", w->mem_ratio);
        } else if (!strcmp(w->name, "full") && r->full_bytes) {
            snprintf(mib, sizeof mib, "%.1f", (double)r->full_bytes / 1048576.0);
            snprintf(mem, sizeof mem, "1.000");
        }
        printf("%-13s %9s %9s %9s %8s %8s | %9s %8s %9s %10s %7s%s%s\n", w->name, step, p90, fwd,
               ovh, lane, ev, pages, upp, mib, mem, w->error[0] ? "  ! " : "", w->error);
    }
    const pol_row *full = NULL;
    for (int p = 0; p < r->n_rows; p++)
        if (!strcmp(r->rows[p].name, "full") && r->rows[p].decoded)
            full = &r->rows[p];
    if (full && r->full_again_ms > 0)
        printf("\nfull measured again after the others: %.3f ms/step (%+.1f%%: lanes longer by every "
               "run since and the machine's drift; each row is compared with full interpolated "
               "to its lane length)\n", r->full_again_ms,
               (r->full_again_ms / full->step_ms_med - 1) * 100);
    int over = 0, n = 0;
    for (int p = 0; p < r->n_rows; p++) {
        if (r->rows[p].decoded && strcmp(r->rows[p].name, "full") != 0) {
            n++;
            over += r->rows[p].overhead > OVERHEAD_TARGET;
        }
    }
    printf("step = the engine's whole step (token event to token event); fwd = its forward "
           "alone; lane = mean tokens per lane after the run;\n"
           "evict ms * = a prompt-end policy's eviction, timed as a one-token append minus the "
           "same append without it.\n");
    printf("target: machinery <= %.0f%% over full at equal kept tokens: %d of %d policies "
           "over%s\n", OVERHEAD_TARGET * 100, over, n,
           cpu ? " (CPU numbers: the target is for the GPU)" : "");
}

/* @before, then @s as a JSON string. */
static void json_str(FILE *f, const char *before, const char *s)
{
    fputs(before, f);
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            fprintf(f, "\\u%04x", *s);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

static int write_json(const char *path, const pol_opts *o, const pol_result *r)
{
    FILE *f = fopen(path, "w");
    const sinkd_model_hparams *hp = &r->hp;

    if (!f) {
        fprintf(stderr, "sinkd-bench-policy: %s: %s\n", path, strerror(errno));
        return -errno;
    }
    json_str(f, "{\n  \"model\": ", o->model);
    json_str(f, ",\n  \"name\": ", hp->name);
    fprintf(f, ",\n  \"geometry\": {\"layers\": %d, \"heads\": %d, \"kv_heads\": %d, "
            "\"head_dim\": %d, \"dim\": %d, \"vocab\": %d},\n", hp->n_layers, hp->n_heads,
            hp->n_kv_heads, hp->head_dim, hp->dim, hp->n_vocab);
    json_str(f, "  \"backend\": ", r->backend);
    json_str(f, ", \"device\": ", r->device);
    fprintf(f, ",\n  \"kv_dtype\": \"%s\", \"page_tokens\": %d, \"page_cost\": %llu, "
            "\"kv_pool_bytes\": %llu,\n", r->kv_dtype, r->page_tokens,
            (unsigned long long)r->page_cost, (unsigned long long)r->kv_pool_bytes);
    fprintf(f, "  \"context\": %d, \"batch\": %d, \"steps\": %d, \"warmup\": %d, "
            "\"evict_budget\": %d, \"equal_budget\": %d,\n", o->context, o->batch, o->steps,
            o->warmup, o->evict_budget, r->equal_budget);
    fprintf(f, "  \"fill\": {\"s\": %.3f, \"tok_s\": %.1f},\n", r->fill_s, r->fill_tok_s);
    fprintf(f, "  \"full\": {\"bytes\": %llu, \"pages\": %lld},\n",
            (unsigned long long)r->full_bytes, (long long)r->full_pages);
    fprintf(f, "  \"full_again_step_ms\": %.4f,\n", r->full_again_ms);
    fprintf(f, "  \"overhead_target\": %.2f,\n  \"policies\": [", OVERHEAD_TARGET);
    for (int p = 0; p < r->n_rows; p++) {
        const pol_row *w = &r->rows[p];
        json_str(f, p ? ",\n    {\"name\": " : "\n    {\"name\": ", w->name);
        json_str(f, ", \"params\": ", w->params);
        json_str(f, ", \"error\": ", w->error);
        if (w->decoded)
            fprintf(f, ",\n     \"decode\": {\"step_ms_med\": %.4f, \"step_ms_p10\": %.4f, "
                    "\"step_ms_p90\": %.4f, \"step_ms_mean\": %.4f, \"fwd_ms\": %.4f, "
                    "\"overhead\": %.4f, \"lane_tokens\": %.1f, \"evictions\": %llu}",
                    w->step_ms_med, w->step_ms_p10, w->step_ms_p90, w->step_ms_mean, w->fwd_ms,
                    w->overhead, w->kept_mean, (unsigned long long)w->decode_evictions);
        if (w->bytes_after) {
            json_str(f, ",\n     \"evict\": {\"params\": ", w->evict_params);
            fprintf(f, ", \"evicted\": %s, \"by_append\": %s, \"ms\": %.4f, \"pages\": %lld, "
                    "\"tokens\": %lld, \"us_per_page\": %.4f, \"bytes_after\": %llu, "
                    "\"mem_ratio\": %.4f}", w->evicted ? "true" : "false",
                    w->evict_by_append ? "true" : "false", w->evict_ms, (long long)w->evict_pages,
                    (long long)w->evict_tokens, w->us_per_page,
                    (unsigned long long)w->bytes_after, w->mem_ratio);
        }
        fprintf(f, "}");
    }
    fprintf(f, "\n  ]\n}\n");
    if (fclose(f) != 0) {
        fprintf(stderr, "sinkd-bench-policy: %s: %s\n", path, strerror(errno));
        return -EIO;
    }
    return 0;
}

int main(int argc, char **argv)
{
    pol_opts o = {
        .backend = "auto", .plugin_dir = SINKD_PLUGIN_BUILD_DIR, .context = 32768, .batch = 16,
        .steps = 32, .warmup = 4, .chunk = 512, .evict_budget = 4096, .stat_steps = 4,
    };
    const char *json = NULL;
    static pol_result r;

    for (size_t i = 0; i < sizeof all_policies / sizeof all_policies[0]; i++)
        o.policies[o.n_policies++] = all_policies[i];
    if (parse_args(argc, argv, &o, &json) < 0)
        return 2;
    int rc = pol_run(&o, &r);
    if (r.n_rows > 0)
        print_table(&o, &r);
    if (json && r.n_rows > 0 && write_json(json, &o, &r) < 0)
        return 1;
    int bad = 0;
    for (int p = 0; p < r.n_rows; p++)
        bad += !r.rows[p].decoded || r.rows[p].error[0] || r.rows[p].decode_evictions;
    if (rc < 0)
        fprintf(stderr, "sinkd-bench-policy: failed: %s\n", strerror(-rc));
    return rc < 0 || bad ? 1 : 0;
}
