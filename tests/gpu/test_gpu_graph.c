/*
 * CUDA graphs of the decode step (daemon/model/model_graph.c). One fixed
 * script of prefills and decode steps on the reference tiny model with bf16
 * weights and an f16 cache:
 *   graphs on and off on the GPU give the same bits (the same kernels run in
 *   the same order on the same buffers; a graph only saves their launches),
 *   and the GPU matches the CPU backend (same weights and cache dtype) within
 *   2e-2 relative error per step, the GPU model tolerance of model_hf_test.
 * The script mixes batches 3, 1 and 6 (6 is past the matvec kernel's rows:
 * its products are ops->matmul_fused's GEMMs, recorded too) and puts a
 * longer prefill between them, so graphs are replayed after steps of
 * another batch size and after the backend grew the scratch buffers they
 * recorded. Skips without a GPU.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_twin.h"
#include "kv.h"
#include "model.h"

#define TINY SINKD_TEST_DATA "/sinkd-ref-tiny-f32.gguf"
#define GPU_TOL 2e-2
#define N_SEQ 7 /* 6 decode, 1 for the long prefill */

/* The script: decode phases of (batch, steps); the long prefill runs
 * before phase LONG_BEFORE. */
static const struct { int32_t batch, steps; } phases[] = {{3, 4}, {1, 4}, {6, 3}, {3, 3}, {1, 2}};
#define N_BATCH_SIZES 3 /* distinct batches above: each records its stretches once */
#define N_PHASES (sizeof phases / sizeof phases[0])
#define LONG_BEFORE 2
#define LONG_PROMPT 48

typedef struct outcome {
    float *logits;    /* every logit of every step, in script order */
    size_t n_logits;
    int32_t graphs;   /* sinkd_model_graphs_count at the end */
    int32_t n_layers, n_vocab;
} outcome;

static int32_t next_id(uint64_t *s, int32_t V)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (int32_t)((*s >> 33) % (uint64_t)V);
}

/* Run the script on @be with graphs on (@on = 1), off (0) or as the model
 * loaded them (-1); returns the logits it saw. */
static outcome run_script(sinkd_backend *be, int on)
{
    char err[256] = "";
    sinkd_gguf *g;
    sinkd_model *m;
    sinkd_kv *kv;
    cr_assert_eq(sinkd_gguf_open(TINY, &g, err, sizeof err), 0, "%s", err);
    sinkd_model_config mc = SINKD_MODEL_CONFIG_INIT;
    mc.max_tokens = 64;
    mc.weight_dtype = SINKD_BF16;
    cr_assert_eq(sinkd_model_load(be, g, &mc, &m, err, sizeof err), 0, "%s", err);
    if (on >= 0)
        cr_assert_eq(sinkd_model_graphs_set(m, on), on && be->ops->graph_begin != NULL);
    const sinkd_model_hparams *hp = sinkd_model_hparams_get(m);
    int32_t V = hp->n_vocab;
    sinkd_kv_config kc = SINKD_KV_CONFIG_INIT;
    kc.pool_bytes = 32u << 20;
    kc.head_dim_max = hp->head_dim;
    kc.dtype = SINKD_F16;
    cr_assert_eq(sinkd_kv_open(be, &kc, &kv), 0);
    sinkd_kv_seq_params sp;
    sinkd_model_seq_params(m, SINKD_ROPE_ABSOLUTE, &sp);
    sp.max_pages = -1;

    size_t steps = 0;
    for (size_t p = 0; p < N_PHASES; p++)
        steps += (size_t)phases[p].batch * phases[p].steps;
    outcome o = {.n_logits = (steps + N_SEQ) * (size_t)V, .n_layers = hp->n_layers, .n_vocab = V};
    o.logits = malloc(o.n_logits * sizeof *o.logits);
    cr_assert(o.logits);
    float *out = o.logits;

    sinkd_kv_seq *seqs[N_SEQ];
    int32_t len[N_SEQ], ids[LONG_PROMPT], pos[LONG_PROMPT];
    uint64_t rng = 42;
    for (int32_t s = 0; s < N_SEQ; s++) {
        cr_assert_eq(sinkd_kv_seq_open(kv, &sp, &seqs[s]), 0);
        len[s] = s == N_SEQ - 1 ? 0 : 5 + 3 * s;
    }
    for (int32_t s = 0; s < N_SEQ - 1; s++) {
        for (int32_t i = 0; i < len[s]; i++) {
            ids[i] = next_id(&rng, V);
            pos[i] = i;
        }
        cr_assert_eq(sinkd_model_prefill(m, kv, seqs[s], ids, pos, len[s], NULL, out), 0);
        out += V;
    }
    for (size_t p = 0; p < N_PHASES; p++) {
        if (p == LONG_BEFORE) {
            for (int32_t i = 0; i < LONG_PROMPT; i++) {
                ids[i] = next_id(&rng, V);
                pos[i] = i;
            }
            cr_assert_eq(sinkd_model_prefill(m, kv, seqs[N_SEQ - 1], ids, pos, LONG_PROMPT,
                                             NULL, out), 0);
            out += V;
        }
        for (int32_t k = 0; k < phases[p].steps; k++) {
            int32_t b = phases[p].batch;
            for (int32_t s = 0; s < b; s++) {
                ids[s] = next_id(&rng, V);
                pos[s] = len[s]++;
            }
            cr_assert_eq(sinkd_model_decode(m, kv, seqs, b, ids, pos, NULL, out), 0,
                         "phase %zu step %d", p, k);
            out += (size_t)b * V;
        }
    }
    cr_assert_eq(out, o.logits + o.n_logits);
    o.graphs = sinkd_model_graphs_count(m);
    for (int32_t s = 0; s < N_SEQ; s++)
        sinkd_kv_seq_close(seqs[s]);
    sinkd_kv_close(kv);
    sinkd_model_free(m);
    sinkd_gguf_close(g);
    return o;
}

static sinkd_backend *gpu_or_skip(void)
{
    sinkd_backend *be = NULL;
    int rc = sinkd_cuda_backend_open(&be);
    if (rc == -ENODEV)
        cr_skip_test("%s", sinkd_cuda_built() ? "no GPU visible" : "built without CUDA");
    cr_assert_eq(rc, 0);
    return be;
}

Test(gpu_graph, same_bits_with_and_without_graphs)
{
    sinkd_backend *be = gpu_or_skip();
    outcome off = run_script(be, 0), on = run_script(be, 1);
    cr_assert_eq(off.graphs, 0);
    /* every stretch (n_layers + 1 per step) of each batch size recorded once */
    cr_assert_eq(on.graphs, N_BATCH_SIZES * (on.n_layers + 1));
    for (size_t i = 0; i < on.n_logits; i++)
        cr_assert(memcmp(&on.logits[i], &off.logits[i], sizeof(float)) == 0,
                  "logit %zu: %.9g with graphs, %.9g without", i, on.logits[i], off.logits[i]);
    free(off.logits);
    free(on.logits);
    sinkd_backend_close(be);
}

Test(gpu_graph, graphs_match_the_cpu)
{
    sinkd_backend *gpu = gpu_or_skip(), *cpu;
    cr_assert_eq(sinkd_backend_open("cpu", 0, &cpu), 0);
    outcome c = run_script(cpu, 1), g = run_script(gpu, 1);
    cr_assert_eq(c.graphs, 0);
    cr_assert_eq(g.graphs, N_BATCH_SIZES * (g.n_layers + 1));
    size_t V = (size_t)c.n_vocab;
    for (size_t r = 0; r < c.n_logits / V; r++) {
        double e = rel_err(g.logits + r * V, c.logits + r * V, V);
        cr_assert_lt(e, GPU_TOL, "logits row %zu: relative error %.3g", r, e);
    }
    free(c.logits);
    free(g.logits);
    sinkd_backend_close(cpu);
    sinkd_backend_close(gpu);
}

Test(gpu_graph, environment_turns_graphs_off)
{
    sinkd_backend *be = gpu_or_skip();
    cr_assert_eq(setenv("SINKD_CUDA_GRAPHS", "0", 1), 0);
    outcome off = run_script(be, -1);
    cr_assert_eq(unsetenv("SINKD_CUDA_GRAPHS"), 0);
    outcome dflt = run_script(be, -1);
    cr_assert_eq(off.graphs, 0);
    cr_assert_eq(dflt.graphs, N_BATCH_SIZES * (dflt.n_layers + 1));
    free(off.logits);
    free(dflt.logits);
    sinkd_backend_close(be);
}
