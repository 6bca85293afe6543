/*
 * sinkd-bench-e2e: end-to-end generation speed of one model on one backend.
 * Prints a table and writes JSON.
 *
 *   sinkd-bench-e2e --model PATH [--backend cpu|cuda] [--weights bf16|f16|f32|keep]
 *                   [--batches 1,8,32,64] [--prompt 512] [--steps 128]
 *                   [--graphs on|off|off,on] ...
 *
 * In process (e2e_model.c): the d2d copy bandwidth and the floor it gives a
 * decode step (weight bytes / bandwidth), prefill tokens/s of one sequence,
 * decode tokens/s per batch size, device memory used. With --socket, also
 * over the socket (e2e_socket.c): the client's time between streamed tokens
 * against the engine's own step time. Targets (the end of the table): batch-1
 * decode within 1.3x of the floor, the largest batch >= 20x batch 1 in
 * aggregate, the client's time between tokens within 5% of the engine's step.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "e2e.h"

#define TARGET_FLOOR 1.3
#define TARGET_SPEEDUP 20.0
#define TARGET_SOCKET 1.05

static void usage(FILE *f)
{
    fprintf(f,
            "usage: sinkd-bench-e2e --model PATH [options]\n"
            "  --backend cpu|cuda       compute backend (default cuda)\n"
            "  --weights T              bf16, f16, f32 or keep (the file's; default keep)\n"
            "  --kv-dtype T             f16, bf16, f32 or auto (f16 on cuda, f32 on cpu)\n"
            "  --batches LIST           decode batch sizes (default 1,8,32,64)\n"
            "  --prompt N               tokens in each sequence before decoding (default 512)\n"
            "  --steps N                timed decode steps per batch size (default 128)\n"
            "  --warmup N               untimed decode steps first (default 8)\n"
            "  --chunk N                prefill chunk, as [engine] prefill_chunk (default 512)\n"
            "  --runs N                 timed prefills and copies, median (default 5)\n"
            "  --page-tokens N          KV page size (default 16)\n"
            "  --threads N              CPU backend threads, 0 = all (default 0)\n"
            "  --copy-mib N             size of the d2d copy (default 1024)\n"
            "  --socket                 also measure over the socket (starts sinkd with the model)\n"
            "  --socket-only            only the socket part\n"
            "  --socket-path PATH       measure a running sinkd instead (its first model)\n"
            "  --socket-tokens N        tokens of the streamed generation (default 128)\n"
            "  --graphs on|off|off,on   CUDA graphs of the decode step; off,on measures each\n"
            "                           batch size both ways (default on; warm-up >= 2 steps\n"
            "                           keeps the recording out of the timed steps)\n"
            "  --json-out FILE          results as JSON (default bench-e2e.json)\n");
}

static int parse_int(const char *s, long lo, long hi, int32_t *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -EINVAL;
    *out = (int32_t)v;
    return 0;
}

static int parse_dtype(const char *s, bool keep_ok, int *out)
{
    static const struct { const char *name; int dt; } names[] = {
        { "f32", SINKD_F32 }, { "f16", SINKD_F16 }, { "bf16", SINKD_BF16 },
    };
    if (strcmp(s, keep_ok ? "keep" : "auto") == 0) {
        *out = -1;
        return 0;
    }
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(s, names[i].name) == 0) {
            *out = names[i].dt;
            return 0;
        }
    }
    return -EINVAL;
}

static int parse_batches(const char *s, e2e_opts *o)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    o->n_batches = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (o->n_batches == E2E_MAX_BATCHES ||
            parse_int(tok, 1, 1024, &o->batches[o->n_batches]) != 0)
            return -EINVAL;
        o->n_batches++;
    }
    return o->n_batches > 0 ? 0 : -EINVAL;
}

/* "on", "off" or a comma list of them (at most two). */
static int parse_graphs(const char *s, e2e_opts *o)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%s", s);
    o->n_graphs = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        bool on = strcmp(tok, "on") == 0;
        if (o->n_graphs == 2 || (!on && strcmp(tok, "off") != 0))
            return -EINVAL;
        o->graphs[o->n_graphs++] = on;
    }
    return o->n_graphs > 0 ? 0 : -EINVAL;
}

static int parse_args(int argc, char **argv, e2e_opts *o, const char **json_out)
{
    enum { O_BACKEND = 256, O_WEIGHTS, O_KV, O_BATCHES, O_PROMPT, O_STEPS, O_WARMUP, O_CHUNK,
           O_RUNS, O_PAGE, O_THREADS, O_COPY, O_SOCKET, O_SOCKET_ONLY, O_SOCKET_PATH,
           O_SOCKET_TOKENS, O_JSON, O_MODEL, O_GRAPHS };
    static const struct option opts[] = {
        { "model", required_argument, NULL, O_MODEL },
        { "backend", required_argument, NULL, O_BACKEND },
        { "weights", required_argument, NULL, O_WEIGHTS },
        { "kv-dtype", required_argument, NULL, O_KV },
        { "batches", required_argument, NULL, O_BATCHES },
        { "prompt", required_argument, NULL, O_PROMPT },
        { "steps", required_argument, NULL, O_STEPS },
        { "warmup", required_argument, NULL, O_WARMUP },
        { "chunk", required_argument, NULL, O_CHUNK },
        { "runs", required_argument, NULL, O_RUNS },
        { "page-tokens", required_argument, NULL, O_PAGE },
        { "threads", required_argument, NULL, O_THREADS },
        { "copy-mib", required_argument, NULL, O_COPY },
        { "socket", no_argument, NULL, O_SOCKET },
        { "socket-only", no_argument, NULL, O_SOCKET_ONLY },
        { "socket-path", required_argument, NULL, O_SOCKET_PATH },
        { "socket-tokens", required_argument, NULL, O_SOCKET_TOKENS },
        { "json-out", required_argument, NULL, O_JSON },
        { "graphs", required_argument, NULL, O_GRAPHS },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int32_t v;
    int opt, rc = 0;

    while (rc == 0 && (opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case O_MODEL: o->model = optarg; break;
        case O_BACKEND: o->backend = optarg; break;
        case O_WEIGHTS: rc = parse_dtype(optarg, true, &o->weight_dtype); break;
        case O_KV: rc = parse_dtype(optarg, false, &o->kv_dtype); break;
        case O_BATCHES: rc = parse_batches(optarg, o); break;
        case O_PROMPT: rc = parse_int(optarg, 1, 1 << 20, &o->prompt); break;
        case O_STEPS: rc = parse_int(optarg, 3, 1 << 20, &o->steps); break;
        case O_WARMUP: rc = parse_int(optarg, 0, 1 << 20, &o->warmup); break;
        case O_CHUNK: rc = parse_int(optarg, 1, 65536, &o->chunk); break;
        case O_RUNS: rc = parse_int(optarg, 1, 1000, &o->runs); break;
        case O_PAGE: rc = parse_int(optarg, 1, 4096, &o->page_tokens); break;
        case O_THREADS: rc = parse_int(optarg, 0, 1024, &v); o->threads = v; break;
        case O_COPY:
            rc = parse_int(optarg, 1, 1 << 20, &v);
            o->copy_bytes = (uint64_t)v << 20;
            break;
        case O_SOCKET: o->socket_part = true; break;
        case O_SOCKET_ONLY: o->socket_part = true, o->model_part = false; break;
        case O_SOCKET_PATH: o->socket_path = optarg, o->socket_part = true; break;
        case O_SOCKET_TOKENS: rc = parse_int(optarg, 3, 1 << 20, &o->socket_tokens); break;
        case O_JSON: *json_out = optarg; break;
        case O_GRAPHS: rc = parse_graphs(optarg, o); break;
        case 'h': usage(stdout); exit(0);
        default: rc = -EINVAL; break;
        }
    }
    if (rc != 0 || optind < argc || (!o->model && (o->model_part || !o->socket_path)) ||
        (strcmp(o->backend, "cpu") != 0 && strcmp(o->backend, "cuda") != 0)) {
        usage(stderr);
        return -EINVAL;
    }
    return 0;
}

/* A JSON string: quotes, backslashes and control characters escaped. */
static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static double mib(uint64_t b) { return (double)b / 1048576.0; }

/* Index of the batch-1 row and of the largest batch, or -1, among the rows
 * of the last --graphs entry (with off,on: the targets are judged with
 * graphs). */
static void key_rows(const e2e_opts *o, const e2e_model_result *m, int *one, int *big)
{
    *one = *big = -1;
    for (int i = 0; i < m->n_rows; i++) {
        if (m->rows[i].graphs_asked != o->graphs[o->n_graphs - 1])
            continue;
        if (m->rows[i].batch == 1)
            *one = i;
        if (*big < 0 || m->rows[i].batch > m->rows[*big].batch)
            *big = i;
    }
}

/* Tokens/s of row @i over the batch-1 row of the same --graphs entry (0:
 * none). */
static double speedup_vs_b1(const e2e_model_result *m, int i)
{
    for (int j = 0; j < m->n_rows; j++)
        if (m->rows[j].batch == 1 && m->rows[j].graphs_asked == m->rows[i].graphs_asked)
            return m->rows[i].tok_s / m->rows[j].tok_s;
    return 0.0;
}

static const char *verdict(bool met) { return met ? "met" : "MISSED"; }

static void print_model(const e2e_opts *o, const e2e_model_result *m)
{
    const sinkd_model_hparams *hp = &m->hp;
    bool cpu = strcmp(m->backend, "cpu") == 0;

    printf("\nsinkd end-to-end: %s%s%s\n", o->model, hp->name[0] ? " - " : "", hp->name);
    printf("backend %s (%s)%s\n", m->backend, m->device,
           cpu ? "  [CPU backend: these are CPU numbers]" : "");
    printf("geometry: %d layers, dim %d, %d/%d heads, head_dim %d, ffn %d, vocab %d%s\n",
           hp->n_layers, hp->dim, hp->n_heads, hp->n_kv_heads, hp->head_dim, hp->ffn_dim,
           hp->n_vocab, hp->tied_output ? ", tied output" : "");
    printf("weights %s %.1f MiB (loaded in %.1f s), KV %s pool %.1f MiB\n", m->weights,
           mib(m->weight_bytes), m->load_s, m->kv_dtype, mib(m->kv_pool_bytes));
    printf("%s used: model %.1f MiB, KV store %.1f MiB, peak %.1f MiB of %.1f MiB\n",
           cpu ? "RAM (MemAvailable)" : "device memory", mib(m->mem_used_model),
           mib(m->mem_used_kv), mib(m->mem_used_peak), mib(m->mem_total));
    printf("copy: d2d %.0f MiB at %.1f GB/s (read + write) -> floor %.3f ms/step "
           "(weight bytes / copy bandwidth)\n", mib(m->copy_bytes), m->copy_gbs, m->floor_ms);
    printf("prefill: %d tokens in chunks of %d: %.2f ms, %.0f tok/s, %.2f TFLOP/s\n\n",
           m->prefill_tokens, m->prefill_chunk, m->prefill_ms, m->prefill_tok_s, m->prefill_tflops);
    printf("%6s %6s %9s %9s %9s %10s %7s %9s %7s %11s %10s\n", "batch", "graphs", "step ms",
           "p10 ms", "p90 ms", "tok/s", "x b1", "floor ms", "/floor", "host-lg ms", "host tok/s");
    int one, big;
    key_rows(o, m, &one, &big);
    for (int i = 0; i < m->n_rows; i++) {
        const e2e_decode_row *r = &m->rows[i];
        printf("%6d %6s %9.3f %9.3f %9.3f %10.1f %7.2f %9.3f %7.2f %11.3f %10.1f\n", r->batch,
               r->graphs ? "on" : "off", r->step_ms_med, r->step_ms_p10, r->step_ms_p90, r->tok_s,
               speedup_vs_b1(m, i), r->floor_ms,
               r->step_ms_med / r->floor_ms, r->host_step_ms_med, r->host_tok_s);
    }
    printf("(floor ms: (weight bytes + K/V bytes read at the mean context %.0f) / copy bandwidth;\n"
           " host-lg: every logit copied to the host and argmax there, as the engine does;\n"
           " x b1: against batch 1 of the same graphs setting; %d CUDA graphs recorded)\n",
           m->n_rows ? m->rows[0].ctx_mean : 0.0, m->graphs_recorded);
    if (one >= 0)
        printf("target: batch-1 step / weight floor = %.2f (<= %.1f): %s\n",
               m->rows[one].step_ms_med / m->floor_ms, TARGET_FLOOR,
               verdict(m->rows[one].step_ms_med / m->floor_ms <= TARGET_FLOOR));
    if (one >= 0 && big != one)
        printf("target: batch-%d aggregate / batch 1 = %.1fx (>= %.0fx): %s\n", m->rows[big].batch,
               m->rows[big].tok_s / m->rows[one].tok_s, TARGET_SPEEDUP,
               verdict(m->rows[big].tok_s / m->rows[one].tok_s >= TARGET_SPEEDUP));
}

static void print_socket(const e2e_socket_result *s)
{
    printf("\nover the socket (%s sinkd, backend %s, %s): prompt %d, %d tokens streamed\n",
           s->started ? "own" : "running", s->backend, s->device, s->prompt, s->tokens);
    printf("  engine: prefill %.2f ms; %.3f ms per token (timings.step_ms), of which the "
           "forward %.3f ms (timings.decode_ms / %d steps)\n", s->prefill_ms, s->engine_step_ms,
           s->engine_fwd_ms, s->tokens - 1);
    printf("  client: time between tokens median %.3f ms, mean %.3f ms, p90 %.3f ms, max %.3f ms\n",
           s->gap_ms_med, s->gap_ms_mean, s->gap_ms_p90, s->gap_ms_max);
    printf("target: client mean gap / engine step = %.3f (<= %.2f): %s\n", s->ratio_mean,
           TARGET_SOCKET, verdict(s->ratio_mean <= TARGET_SOCKET));
}

static void json_model(FILE *f, const e2e_opts *o, const e2e_model_result *m)
{
    const sinkd_model_hparams *hp = &m->hp;
    int one, big;

    key_rows(o, m, &one, &big);
    fprintf(f, "\"backend\":");
    json_str(f, m->backend);
    fprintf(f, ",\"device\":");
    json_str(f, m->device);
    fprintf(f, ",\"name\":");
    json_str(f, hp->name);
    fprintf(f, ",\"geometry\":{\"layers\":%d,\"dim\":%d,\"heads\":%d,\"kv_heads\":%d,"
               "\"head_dim\":%d,\"ffn\":%d,\"vocab\":%d,\"rope_theta\":%g,\"tied\":%s},",
            hp->n_layers, hp->dim, hp->n_heads, hp->n_kv_heads, hp->head_dim, hp->ffn_dim,
            hp->n_vocab, hp->rope_theta, hp->tied_output ? "true" : "false");
    fprintf(f, "\"weights\":\"%s\",\"kv_dtype\":\"%s\",\"weight_bytes\":%llu,\"load_s\":%.3f,"
               "\"kv_pool_bytes\":%llu,",
            m->weights, m->kv_dtype, (unsigned long long)m->weight_bytes, m->load_s,
            (unsigned long long)m->kv_pool_bytes);
    fprintf(f, "\"memory\":{\"total\":%llu,\"model\":%llu,\"kv\":%llu,\"peak\":%llu},",
            (unsigned long long)m->mem_total, (unsigned long long)m->mem_used_model,
            (unsigned long long)m->mem_used_kv, (unsigned long long)m->mem_used_peak);
    fprintf(f, "\"copy\":{\"bytes\":%llu,\"gbs\":%.2f},\"floor_ms\":%.5f,",
            (unsigned long long)m->copy_bytes, m->copy_gbs, m->floor_ms);
    fprintf(f, "\"prefill\":{\"tokens\":%d,\"chunk\":%d,\"ms\":%.4f,\"tok_s\":%.2f,"
               "\"tflops\":%.4f},\"graphs_recorded\":%d,\"decode\":[",
            m->prefill_tokens, m->prefill_chunk, m->prefill_ms, m->prefill_tok_s, m->prefill_tflops,
            m->graphs_recorded);
    for (int i = 0; i < m->n_rows; i++) {
        const e2e_decode_row *r = &m->rows[i];
        fprintf(f, "%s{\"batch\":%d,\"graphs\":%s,\"graphs_asked\":%s,"
                   "\"step_ms_med\":%.5f,\"step_ms_mean\":%.5f,"
                   "\"step_ms_p10\":%.5f,\"step_ms_p90\":%.5f,\"tok_s\":%.2f,"
                   "\"speedup_vs_b1\":%.3f,\"host_step_ms_med\":%.5f,\"host_tok_s\":%.2f,"
                   "\"ctx_mean\":%.1f,\"kv_bytes\":%.0f,\"flops\":%.0f,\"floor_ms\":%.5f,"
                   "\"step_over_floor\":%.4f}",
                i ? "," : "", r->batch, r->graphs ? "true" : "false",
                r->graphs_asked ? "true" : "false", r->step_ms_med, r->step_ms_mean, r->step_ms_p10,
                r->step_ms_p90, r->tok_s, speedup_vs_b1(m, i),
                r->host_step_ms_med, r->host_tok_s, r->ctx_mean, r->kv_bytes, r->flops,
                r->floor_ms, r->step_ms_med / r->floor_ms);
    }
    fprintf(f, "],\"targets\":{");
    if (one >= 0)
        fprintf(f, "\"b1_over_floor\":%.4f,\"b1_over_floor_max\":%.2f",
                m->rows[one].step_ms_med / m->floor_ms, TARGET_FLOOR);
    if (one >= 0 && big != one)
        fprintf(f, ",\"batch_max\":%d,\"speedup\":%.3f,\"speedup_min\":%.1f", m->rows[big].batch,
                m->rows[big].tok_s / m->rows[one].tok_s, TARGET_SPEEDUP);
    fprintf(f, "}");
}

static void json_socket(FILE *f, const e2e_socket_result *s)
{
    fprintf(f, "{\"started\":%s,\"backend\":", s->started ? "true" : "false");
    json_str(f, s->backend);
    fprintf(f, ",\"device\":");
    json_str(f, s->device);
    fprintf(f, ",\"prompt\":%d,\"tokens\":%d,\"prefill_ms\":%.4f,\"engine_decode_ms\":%.4f,"
               "\"engine_step_ms\":%.5f,\"engine_step_source\":\"timings.step_ms\","
               "\"engine_fwd_ms\":%.5f,"
               "\"gap_ms_med\":%.5f,\"gap_ms_mean\":%.5f,\"gap_ms_p90\":%.5f,\"gap_ms_max\":%.5f,"
               "\"ratio_mean\":%.4f,\"ratio_max\":%.2f}",
            s->prompt, s->tokens, s->prefill_ms, s->engine_decode_ms, s->engine_step_ms,
            s->engine_fwd_ms, s->gap_ms_med, s->gap_ms_mean, s->gap_ms_p90, s->gap_ms_max, s->ratio_mean,
            TARGET_SOCKET);
}

static int write_json(const char *path, const e2e_opts *o, const e2e_model_result *m,
                      const e2e_socket_result *s)
{
    FILE *f = fopen(path, "we");
    if (!f) {
        fprintf(stderr, "<3>sinkd-bench-e2e: %s: %s\n", path, strerror(errno));
        return -errno;
    }
    fprintf(f, "{\"benchmark\":\"e2e\",\"model\":");
    json_str(f, o->model ? o->model : "");
    fprintf(f, ",\"prompt\":%d,\"steps\":%d,\"warmup\":%d,", o->prompt, o->steps, o->warmup);
    if (m && m->weight_bytes) {
        fprintf(f, "\"in_process\":{");
        json_model(f, o, m);
        fprintf(f, "},");
    }
    fprintf(f, "\"socket\":");
    if (s)
        json_socket(f, s);
    else
        fprintf(f, "null");
    fprintf(f, "}\n");
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        fprintf(stderr, "<3>sinkd-bench-e2e: writing %s failed\n", path);
        return -EIO;
    }
    return 0;
}

int main(int argc, char **argv)
{
    e2e_opts o = {
        .backend = "cuda", .weight_dtype = -1, .kv_dtype = -1, .batches = { 1, 8, 32, 64 },
        .n_batches = 4, .prompt = 512, .steps = 128, .warmup = 8, .chunk = 512, .runs = 5,
        .page_tokens = 16, .copy_bytes = 1024ull << 20, .model_part = true, .socket_tokens = 128,
        .graphs = { true }, .n_graphs = 1,
    };
    const char *json_out = "bench-e2e.json";
    static e2e_model_result m;
    static e2e_socket_result s;
    int rc;

    if (parse_args(argc, argv, &o, &json_out) != 0)
        return 2;
    /* A failed part still prints and writes what it measured before. */
    rc = o.model_part ? e2e_model_run(&o, &m) : 0;
    if (o.model_part && m.weight_bytes)
        print_model(&o, &m);
    if (rc == 0 && o.socket_part && (rc = e2e_socket_run(&o, &s)) == 0)
        print_socket(&s);
    if (write_json(json_out, &o, o.model_part ? &m : NULL, o.socket_part && rc == 0 ? &s : NULL) == 0)
        printf("\nwrote %s\n", json_out);
    else
        rc = -EIO;
    if (rc != 0)
        fprintf(stderr, "<3>sinkd-bench-e2e: failed (see the messages above)\n");
    return rc == 0 ? 0 : 1;
}
