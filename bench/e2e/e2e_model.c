/*
 * The in-process part of sinkd-bench-e2e: one backend, one model, one KV
 * store sized for the run.
 *
 *   floor    d2d copies of copy_bytes through ops->d2d, (read + write bytes)
 *            / median time: the bandwidth a decode step's weight reads can
 *            reach at best
 *   prefill  one sequence of `prompt` tokens, in chunks of `chunk` as the
 *            engine runs session.append, last logits to the host; median of
 *            `runs` after one untimed
 *   decode   for each batch size b, b sequences holding the same prompt
 *            advance `steps` steps through sinkd_model_decode, each step
 *            timed on the host clock after the backend synchronised; once
 *            with a device argmax (only b ids come back) and once the way the
 *            engine does it (every logit to the host, argmax there). Before
 *            each run the lanes are cut back to the prompt (an identity
 *            keep list through sinkd_kv_compact), so every run starts at the
 *            same context; `warmup` untimed steps come first. With
 *            --graphs off,on each batch size runs twice, CUDA graphs off
 *            then on (sinkd_model_graphs_set; the warm-up records them).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "e2e.h"
#include "gguf.h"
#include "kv.h"
#include "model.h"

#define E2E_LOG "sinkd-bench-e2e: "
#define COPY_SEED_BYTES (1u << 20)
#define COPY_REPS 4 /* copies per timed sample: the sync's latency amortised */

double e2e_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double e2e_percentile(double *v, size_t n, double p)
{
    qsort(v, n, sizeof *v, cmp_double);
    size_t rank = (size_t)ceil(p / 100.0 * (double)n);
    return v[rank > 0 ? rank - 1 : 0];
}

/* Everything a run holds; released by model__free. */
typedef struct bench {
    const e2e_opts *o;
    e2e_model_result *r;
    sinkd_backend *be;
    sinkd_model *m;
    sinkd_kv *kv;
    sinkd_kv_seq **seqs;        /* [max_batch] */
    int32_t max_batch;
    int32_t *prompt, *pos;      /* [prompt] */
    int32_t *ids, *step_pos;    /* [max_batch] HOST */
    int32_t *ids_dev;           /* [max_batch] on the device */
    float *logits;              /* [max_batch][n_vocab] HOST */
    int32_t *keep_off, *keep;   /* identity keep list of the prompt, every lane */
    double *times;              /* [max(steps, runs)] */
    uint8_t kv_dtype;           /* sinkd_dtype of the pool */
    uint64_t free0, free_min;
} bench;

/* The backend's free memory now; also lowers the run's minimum. */
static uint64_t mem_free_now(bench *b)
{
    sinkd_backend_info info;
    if (b->be->ops->info(b->be, &info) != 0)
        return 0;
    if (info.mem_free < b->free_min)
        b->free_min = info.mem_free;
    return info.mem_free;
}

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Device copy bandwidth through ops->d2d, counting bytes read + written:
 * median over `runs` samples of COPY_REPS back-to-back copies. The source
 * holds random bytes (a 1 MiB seed doubled on the device), never zeros. */
static int copy_bandwidth(bench *b)
{
    const sinkd_ops *ops = b->be->ops;
    size_t bytes = (size_t)b->o->copy_bytes;
    int32_t runs = b->o->runs > 5 ? b->o->runs : 5;
    uint8_t *src = NULL, *dst = NULL, *seed = malloc(COPY_SEED_BYTES);
    uint64_t s = 0x9e3779b97f4a7c15ull;
    int rc = seed ? 0 : -ENOMEM;

    for (size_t i = 0; rc == 0 && i < COPY_SEED_BYTES; i += 8) {
        uint64_t x = xorshift(&s);
        memcpy(seed + i, &x, 8);
    }
    if (rc == 0 && (rc = ops->alloc(b->be, (void **)&src, bytes)) == 0)
        rc = ops->alloc(b->be, (void **)&dst, bytes);
    if (rc == 0)
        rc = ops->h2d(b->be, src, seed, bytes < COPY_SEED_BYTES ? bytes : COPY_SEED_BYTES);
    for (size_t have = COPY_SEED_BYTES; rc == 0 && have < bytes; have *= 2)
        rc = ops->d2d(b->be, src + have, src, bytes - have < have ? bytes - have : have);
    if (rc == 0 && (rc = ops->d2d(b->be, dst, src, bytes)) == 0) /* warm-up */
        rc = ops->sync(b->be);
    (void)mem_free_now(b);
    for (int32_t i = 0; rc == 0 && i < runs; i++) {
        double t0 = e2e_now_s();
        for (int k = 0; rc == 0 && k < COPY_REPS; k++)
            rc = ops->d2d(b->be, dst, src, bytes);
        if (rc == 0 && (rc = ops->sync(b->be)) == 0)
            b->times[i] = (e2e_now_s() - t0) / COPY_REPS;
    }
    if (rc == 0) {
        b->r->copy_bytes = bytes;
        b->r->copy_gbs = 2.0 * (double)bytes / e2e_percentile(b->times, (size_t)runs, 50) / 1e9;
    } else {
        fprintf(stderr, "<3>" E2E_LOG "d2d copy of %zu bytes failed: %s\n", bytes, strerror(-rc));
    }
    if (src)
        ops->free(b->be, src);
    if (dst)
        ops->free(b->be, dst);
    free(seed);
    return rc;
}

static int load_model(bench *b)
{
    const e2e_opts *o = b->o;
    sinkd_model_config mc = SINKD_MODEL_CONFIG_INIT;
    sinkd_gguf *g = NULL;
    char err[256] = "";
    uint64_t before = mem_free_now(b);
    double t0 = e2e_now_s();
    int rc;

    mc.max_tokens = o->chunk > b->max_batch ? o->chunk : b->max_batch;
    mc.weight_dtype = o->weight_dtype;
    rc = sinkd_gguf_open(o->model, &g, err, sizeof err);
    if (rc == 0)
        rc = sinkd_model_load(b->be, g, &mc, &b->m, err, sizeof err);
    if (rc == 0) {
        const sinkd_gguf_tensor *t = sinkd_gguf_tensor_find(g, "blk.0.attn_q.weight");
        b->r->weights = o->weight_dtype >= 0 ? sinkd_dtype_name((sinkd_dtype)o->weight_dtype)
                        : t ? sinkd_ggml_type_name(t->type) : "?";
    }
    sinkd_gguf_close(g);
    if (rc != 0) {
        fprintf(stderr, "<3>" E2E_LOG "%s: %s\n", o->model, err[0] ? err : strerror(-rc));
        return rc;
    }
    b->r->load_s = e2e_now_s() - t0;
    b->r->hp = *sinkd_model_hparams_get(b->m);
    b->r->weight_bytes = sinkd_model_weight_bytes(b->m);
    uint64_t after = mem_free_now(b);
    b->r->mem_used_model = before > after ? before - after : 0;
    fprintf(stderr, "<6>" E2E_LOG "loaded %s: %d layers, dim %d, %d/%d heads, head_dim %d, "
            "ffn %d, vocab %d, %.1f MiB of %s weights in %.1f s\n", o->model, b->r->hp.n_layers,
            b->r->hp.dim, b->r->hp.n_heads, b->r->hp.n_kv_heads, b->r->hp.head_dim,
            b->r->hp.ffn_dim, b->r->hp.n_vocab, (double)b->r->weight_bytes / 1048576.0,
            b->r->weights, b->r->load_s);
    return 0;
}

uint64_t e2e_kv_pool_bytes(const sinkd_model_hparams *hp, sinkd_dtype dtype, int32_t page_tokens,
                           int32_t seqs, int32_t tokens, int64_t *pages)
{
    int64_t lanes = (int64_t)hp->n_layers * hp->n_kv_heads;
    int64_t n = (int64_t)seqs * lanes * ((tokens + page_tokens - 1) / page_tokens);
    /* page cost as kv.h counts it: K, V, pos and score, the key bounds */
    uint64_t cost = 2ull * (uint64_t)page_tokens * (uint64_t)hp->head_dim * sinkd_dtype_bytes(dtype, 1) +
                    8ull * (uint64_t)page_tokens + 8ull * (uint64_t)hp->head_dim;

    if (pages)
        *pages = n;
    /* 2% and 16 MiB over, for the store's scratch arrays */
    return (uint64_t)n * cost + (uint64_t)n * cost / 50 + (16u << 20);
}

/* The default KV dtype of a backend, as the engine picks it. */
sinkd_dtype e2e_kv_dtype(const e2e_opts *o, const char *backend)
{
    if (o->kv_dtype >= 0)
        return (sinkd_dtype)o->kv_dtype;
    return strcmp(backend, "cpu") == 0 ? SINKD_F32 : SINKD_F16;
}

/* A pool with room for max_batch sequences of prompt + max(steps, warmup)
 * tokens (the prefill timing's sequence is closed before they open). */
static int open_kv(bench *b)
{
    const e2e_opts *o = b->o;
    sinkd_kv_config kc = SINKD_KV_CONFIG_INIT;
    sinkd_kv_stats st;
    int64_t pages;
    uint64_t before = mem_free_now(b);
    int rc;

    b->kv_dtype = (uint8_t)e2e_kv_dtype(o, b->be->info.name);
    kc.dtype = b->kv_dtype;
    kc.page_tokens = o->page_tokens;
    kc.head_dim_max = b->r->hp.head_dim;
    kc.pool_bytes = e2e_kv_pool_bytes(&b->r->hp, (sinkd_dtype)kc.dtype, o->page_tokens, b->max_batch,
                                      o->prompt + (o->steps > o->warmup ? o->steps : o->warmup),
                                      &pages);
    if ((rc = sinkd_kv_open(b->be, &kc, &b->kv)) != 0) {
        fprintf(stderr, "<3>" E2E_LOG "KV store of %.1f MiB: %s\n",
                (double)kc.pool_bytes / 1048576.0, strerror(-rc));
        return rc;
    }
    sinkd_kv_stats_get(b->kv, &st);
    if (st.pages_total < pages) {
        fprintf(stderr, "<3>" E2E_LOG "KV store holds %lld pages, the run needs %lld\n",
                (long long)st.pages_total, (long long)pages);
        return -ENOMEM;
    }
    uint64_t after = mem_free_now(b);
    b->r->mem_used_kv = before > after ? before - after : 0;
    b->r->kv_pool_bytes = st.bytes_total;
    b->r->kv_dtype = sinkd_dtype_name((sinkd_dtype)kc.dtype);
    return 0;
}

static int seq_open(bench *b, sinkd_kv_seq **out)
{
    sinkd_kv_seq_params p;
    sinkd_model_seq_params(b->m, SINKD_ROPE_ABSOLUTE, &p);
    p.max_pages = -1;
    return sinkd_kv_seq_open(b->kv, &p, out);
}

/* The prompt through the model in chunks, as the engine's session.append. */
static int prefill(bench *b, sinkd_kv_seq *seq)
{
    static const sinkd_model_opts opts = { SINKD_ROPE_ABSOLUTE, false, NULL };
    int rc = 0;

    for (int32_t done = 0; rc == 0 && done < b->o->prompt;) {
        int32_t k = b->o->prompt - done < b->o->chunk ? b->o->prompt - done : b->o->chunk;
        bool last = done + k == b->o->prompt;
        rc = sinkd_model_prefill(b->m, b->kv, seq, b->prompt + done, b->pos + done, k, &opts,
                                 last ? b->logits : NULL);
        done += k;
    }
    return rc;
}

static double matrix_params(const sinkd_model_hparams *hp)
{
    double qd = (double)hp->n_heads * hp->head_dim, kvd = (double)hp->n_kv_heads * hp->head_dim;
    double layer = (double)hp->dim * (2 * qd + 2 * kvd + 3.0 * hp->ffn_dim);
    return hp->n_layers * layer + (double)hp->n_vocab * hp->dim;
}

/* FLOPs of attention for one query over @keys keys, every layer and head:
 * QK and PV, 2 * head_dim each. */
static double attn_flops(const sinkd_model_hparams *hp, double keys)
{
    return 4.0 * hp->n_layers * hp->n_heads * hp->head_dim * keys;
}

static int measure_prefill(bench *b)
{
    const e2e_opts *o = b->o;
    const sinkd_model_hparams *hp = &b->r->hp;
    int rc = 0;

    for (int32_t i = -1; rc == 0 && i < o->runs; i++) {
        sinkd_kv_seq *seq = NULL;
        if ((rc = seq_open(b, &seq)) != 0)
            break;
        double t0 = e2e_now_s();
        rc = prefill(b, seq);
        if (i >= 0)
            b->times[i] = e2e_now_s() - t0;
        (void)mem_free_now(b);
        sinkd_kv_seq_close(seq);
    }
    if (rc != 0) {
        fprintf(stderr, "<3>" E2E_LOG "prefill: %s\n", strerror(-rc));
        return rc;
    }
    double s = e2e_percentile(b->times, (size_t)o->runs, 50), n = o->prompt;
    double flops = 2.0 * (matrix_params(hp) - (double)hp->n_vocab * hp->dim) * n +
                   2.0 * hp->n_vocab * hp->dim + attn_flops(hp, n * (n + 1) / 2);
    b->r->prefill_tokens = o->prompt;
    b->r->prefill_chunk = o->chunk;
    b->r->prefill_ms = s * 1e3;
    b->r->prefill_tok_s = n / s;
    b->r->prefill_tflops = flops / s / 1e12;
    fprintf(stderr, "<6>" E2E_LOG "prefill %d tokens: %.2f ms\n", o->prompt, s * 1e3);
    return 0;
}

/* Cut every lane of the first @n sequences back to the prompt. */
static int truncate_to_prompt(bench *b, int32_t n)
{
    int rc = 0;
    for (int32_t s = 0; rc == 0 && s < n; s++)
        rc = sinkd_kv_compact(b->seqs[s], SINKD_KV_ALL_LAYERS, b->keep_off, b->keep);
    return rc;
}

static int32_t argmax_row(const float *x, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* @steps decode steps of the first @n sequences from the prompt; step i's
 * time in b->times[i] when @timed. @host: logits to the host (the engine's
 * path), else a device argmax. Lanes are cut back to the prompt after. */
static int decode_run(bench *b, int32_t n, int32_t steps, bool host, bool timed)
{
    static const sinkd_model_opts opts = { SINKD_ROPE_ABSOLUTE, false, NULL };
    const sinkd_ops *ops = b->be->ops;
    int32_t nv = b->r->hp.n_vocab;
    int rc = 0;

    for (int32_t s = 0; s < n; s++)
        b->ids[s] = b->prompt[(b->o->prompt - 1 + s) % b->o->prompt];
    for (int32_t i = 0; rc == 0 && i < steps; i++) {
        for (int32_t s = 0; s < n; s++)
            b->step_pos[s] = b->o->prompt + i;
        double t0 = e2e_now_s();
        rc = sinkd_model_decode(b->m, b->kv, b->seqs, n, b->ids, b->step_pos, &opts,
                                host ? b->logits : NULL);
        if (rc == 0 && host) {
            for (int32_t s = 0; s < n; s++)
                b->ids[s] = argmax_row(b->logits + (size_t)s * nv, nv);
        } else if (rc == 0) {
            rc = ops->argmax(b->be, b->ids_dev, sinkd_model_logits_dev(b->m), n, nv);
            if (rc == 0)
                rc = ops->d2h(b->be, b->ids, b->ids_dev, (size_t)n * sizeof *b->ids);
            if (rc == 0)
                rc = ops->sync(b->be);
        }
        if (timed)
            b->times[i] = e2e_now_s() - t0;
    }
    (void)mem_free_now(b);
    if (rc == 0)
        rc = truncate_to_prompt(b, n);
    return rc;
}

static int measure_decode(bench *b)
{
    const e2e_opts *o = b->o;
    const sinkd_model_hparams *hp = &b->r->hp;
    int32_t lanes = hp->n_layers * hp->n_kv_heads;
    double kv_elem = (double)sinkd_dtype_bytes((sinkd_dtype)b->kv_dtype, 1);
    int rc = 0;

    for (int32_t l = 0; l <= lanes; l++)
        b->keep_off[l] = l * o->prompt;
    for (int32_t l = 0; l < lanes; l++)
        for (int32_t t = 0; t < o->prompt; t++)
            b->keep[(size_t)l * o->prompt + t] = t;
    for (int32_t s = 0; rc == 0 && s < b->max_batch; s++)
        if ((rc = seq_open(b, &b->seqs[s])) == 0)
            rc = prefill(b, b->seqs[s]);
    if (rc != 0) {
        fprintf(stderr, "<3>" E2E_LOG "prefill of the decode sequences: %s\n", strerror(-rc));
        return rc;
    }
    for (int k = 0; k < o->n_batches * o->n_graphs; k++) {
        int32_t n = o->batches[k / o->n_graphs];
        e2e_decode_row *row = &b->r->rows[k];
        row->graphs_asked = o->graphs[k % o->n_graphs];
        /* the warm-up steps also record the graphs of this batch size */
        row->graphs = sinkd_model_graphs_set(b->m, row->graphs_asked);
        if ((rc = decode_run(b, n, o->warmup, false, false)) != 0 ||
            (rc = decode_run(b, n, o->steps, false, true)) != 0) {
            fprintf(stderr, "<3>" E2E_LOG "decode at batch %d: %s\n", n, strerror(-rc));
            return rc;
        }
        double sum = 0;
        for (int32_t i = 0; i < o->steps; i++)
            sum += b->times[i];
        row->batch = n;
        row->step_ms_mean = sum / o->steps * 1e3;
        row->step_ms_p10 = e2e_percentile(b->times, (size_t)o->steps, 10) * 1e3;
        row->step_ms_p90 = e2e_percentile(b->times, (size_t)o->steps, 90) * 1e3;
        row->step_ms_med = e2e_percentile(b->times, (size_t)o->steps, 50) * 1e3;
        row->tok_s = n / row->step_ms_med * 1e3;
        if ((rc = decode_run(b, n, o->steps, true, true)) != 0) {
            fprintf(stderr, "<3>" E2E_LOG "decode (host logits) at batch %d: %s\n", n, strerror(-rc));
            return rc;
        }
        row->host_step_ms_med = e2e_percentile(b->times, (size_t)o->steps, 50) * 1e3;
        row->host_tok_s = n / row->host_step_ms_med * 1e3;
        /* step i attends over prompt + i + 1 keys per lane */
        row->ctx_mean = o->prompt + (o->steps + 1) / 2.0;
        row->kv_bytes = (double)n * lanes * row->ctx_mean * hp->head_dim * 2 * kv_elem;
        row->flops = n * (2.0 * matrix_params(hp) + attn_flops(hp, row->ctx_mean));
        row->floor_ms = ((double)b->r->weight_bytes + row->kv_bytes) / (b->r->copy_gbs * 1e9) * 1e3;
        b->r->n_rows = k + 1;
        b->r->graphs_recorded = sinkd_model_graphs_count(b->m);
        fprintf(stderr, "<6>" E2E_LOG "decode batch %d, graphs %s: %.3f ms/step (host logits %.3f)\n",
                n, row->graphs ? "on" : "off", row->step_ms_med, row->host_step_ms_med);
    }
    return 0;
}

static int bench_alloc(bench *b)
{
    const e2e_opts *o = b->o;
    const sinkd_model_hparams *hp = &b->r->hp;
    size_t lanes = (size_t)hp->n_layers * (size_t)hp->n_kv_heads;
    size_t nt = (size_t)(o->steps > o->runs ? o->steps : o->runs);

    if (nt < 5)
        nt = 5; /* the copy's runs */
    uint64_t s = 0x2545f4914f6cdd1dull;

    b->seqs = calloc((size_t)b->max_batch, sizeof *b->seqs);
    b->prompt = malloc((size_t)o->prompt * sizeof *b->prompt);
    b->pos = malloc((size_t)o->prompt * sizeof *b->pos);
    b->ids = malloc((size_t)b->max_batch * sizeof *b->ids);
    b->step_pos = malloc((size_t)b->max_batch * sizeof *b->step_pos);
    b->logits = malloc((size_t)b->max_batch * (size_t)hp->n_vocab * sizeof *b->logits);
    b->keep_off = malloc((lanes + 1) * sizeof *b->keep_off);
    b->keep = malloc(lanes * (size_t)o->prompt * sizeof *b->keep);
    double *t = realloc(b->times, nt * sizeof *b->times);
    if (t)
        b->times = t;
    if (!b->seqs || !b->prompt || !b->pos || !b->ids || !b->step_pos || !b->logits ||
        !b->keep_off || !b->keep || !t)
        return -ENOMEM;
    for (int32_t i = 0; i < o->prompt; i++) {
        b->prompt[i] = (int32_t)(xorshift(&s) % (uint64_t)hp->n_vocab);
        b->pos[i] = i;
    }
    return b->be->ops->alloc(b->be, (void **)&b->ids_dev, (size_t)b->max_batch * sizeof(int32_t));
}

static void bench_free(bench *b)
{
    if (b->seqs)
        for (int32_t s = 0; s < b->max_batch; s++)
            sinkd_kv_seq_close(b->seqs[s]);
    sinkd_kv_close(b->kv);
    sinkd_model_free(b->m);
    if (b->ids_dev)
        b->be->ops->free(b->be, b->ids_dev);
    sinkd_backend_close(b->be);
    free(b->seqs);
    free(b->prompt);
    free(b->pos);
    free(b->ids);
    free(b->step_pos);
    free(b->logits);
    free(b->keep_off);
    free(b->keep);
    free(b->times);
}

int e2e_model_run(const e2e_opts *o, e2e_model_result *r)
{
    bench b = { .o = o, .r = r, .free_min = UINT64_MAX };
    int rc;

    memset(r, 0, sizeof *r);
    r->weights = r->kv_dtype = "-";
    for (int k = 0; k < o->n_batches; k++)
        if (o->batches[k] > b.max_batch)
            b.max_batch = o->batches[k];
    if ((rc = sinkd_backend_open(o->backend, o->threads, &b.be)) != 0) {
        fprintf(stderr, "<3>" E2E_LOG "backend %s: %s\n", o->backend, strerror(-rc));
        return rc;
    }
    snprintf(r->backend, sizeof r->backend, "%s", b.be->info.name);
    snprintf(r->device, sizeof r->device, "%s", b.be->info.device);
    r->mem_total = b.be->info.mem_total;
    b.times = malloc((size_t)(o->runs > 5 ? o->runs : 5) * sizeof *b.times);
    rc = b.times ? copy_bandwidth(&b) : -ENOMEM;
    if (rc == 0) {
        b.free_min = UINT64_MAX;
        b.free0 = mem_free_now(&b);
        rc = load_model(&b);
    }
    if (rc == 0)
        r->floor_ms = (double)r->weight_bytes / (r->copy_gbs * 1e9) * 1e3;
    if (rc == 0 && (rc = bench_alloc(&b)) != 0)
        fprintf(stderr, "<3>" E2E_LOG "out of memory\n");
    if (rc == 0)
        rc = open_kv(&b);
    if (rc == 0)
        rc = measure_prefill(&b);
    if (rc == 0)
        rc = measure_decode(&b);
    r->mem_used_peak = b.free0 > b.free_min ? b.free0 - b.free_min : 0;
    bench_free(&b);
    return rc;
}
