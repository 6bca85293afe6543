/*
 * sinkd's forward against Hugging Face transformers (float64 reference) on
 * random-weight llama and qwen2 models of several geometries, written by
 * tests/gpu/model_make_hf_gguf.py into $SINKD_HF_REF_DIR: a 200-token
 * prompt, then 50 greedy steps. The steps are teacher-forced: each feeds the
 * reference's token, so every step's logits are compared, also after a step
 * where rounding may legitimately pick another token. The weights hold
 * bf16 values, so every backend below runs the reference's own model and
 * the errors are sinkd's arithmetic. Tolerances:
 *   CPU backend, f32 weights and cache:          relative error < 1e-4
 *   CUDA backend, bf16 weights with the daemon's default f16 cache, and
 *   f16 weights and cache:                       relative error < 2e-2
 * where relative error = ||logits - ref||_2 / ||ref||_2 at the last prompt
 * position and after every greedy token (the worst single logit, max
 * |logit - ref| / max |ref|, is printed beside it), and our argmax equal to
 * the reference's token wherever its top-1 / top-2 margin exceeds twice
 * our largest logit error at that position: there a different argmax would
 * be a bug, not rounding. Skips (with the reason) when the directory or,
 * for the CUDA half, a GPU is missing.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "golden.h"
#include "kv.h"
#include "model.h"

typedef struct result {
    double rel_err;     /* worst ||logits - ref|| / ||ref|| over the positions */
    double max_rel;     /* worst max |logits - ref| / max |ref| */
    size_t positions;   /* positions compared: the prompt's last + the steps */
    size_t compared, steps;
} result;

/* Compare @got with @want (@n logits) at position @what; asserts the
 * relative error, folds it into @r and returns the largest absolute error. */
static double compare(const char *gguf_path, const char *what, size_t step, const float *got,
                      const float *want, int32_t n, float rel_tol, result *r)
{
    double max_ref = 0, max_err = 0, sq_ref = 0, sq_err = 0;
    for (int32_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        max_ref = fmax(max_ref, fabs(want[i]));
        max_err = fmax(max_err, fabs(d));
        sq_ref += (double)want[i] * want[i];
        sq_err += d * d;
    }
    double rel = sqrt(sq_err / sq_ref);
    cr_assert_lt(rel, rel_tol, "%s: %s %zu: relative error %g >= %g (worst logit %g)", gguf_path,
                 what, step, rel, rel_tol, max_err / max_ref);
    r->rel_err = fmax(r->rel_err, rel);
    r->max_rel = fmax(r->max_rel, max_err / max_ref);
    r->positions++;
    return max_err;
}

/* Run one model on @be and compare with its reference; asserts inside. */
static result run_one(sinkd_backend *be, const char *gguf_path, const golden_case *ref,
                      int32_t weight_dtype, uint8_t kv_dtype, float rel_tol)
{
    char err[256] = "";
    sinkd_gguf *g;
    sinkd_model *m;
    sinkd_kv *kv;
    cr_assert_eq(sinkd_gguf_open(gguf_path, &g, err, sizeof err), 0, "%s", err);
    sinkd_model_config mc = SINKD_MODEL_CONFIG_INIT;
    mc.max_tokens = 256;
    mc.weight_dtype = weight_dtype;
    cr_assert_eq(sinkd_model_load(be, g, &mc, &m, err, sizeof err), 0, "%s: %s", gguf_path, err);
    const sinkd_model_hparams *hp = sinkd_model_hparams_get(m);
    sinkd_kv_config kc = SINKD_KV_CONFIG_INIT;
    kc.pool_bytes = 256u << 20;
    kc.head_dim_max = hp->head_dim;
    kc.dtype = kv_dtype;
    cr_assert_eq(sinkd_kv_open(be, &kc, &kv), 0);
    sinkd_kv_seq_params sp;
    sinkd_model_seq_params(m, SINKD_ROPE_ABSOLUTE, &sp);
    sp.max_pages = -1;
    sinkd_kv_seq *seq;
    cr_assert_eq(sinkd_kv_seq_open(kv, &sp, &seq), 0);

    int32_t n = (int32_t)ref->n_prompt, V = hp->n_vocab;
    cr_assert_eq((size_t)V, ref->n_logits);
    cr_assert_not_null(ref->step_logits, "%s: the reference has no step_logits (made by an older "
                       "model_make_hf_gguf.py?)", gguf_path);
    int32_t *pos = malloc((size_t)n * sizeof *pos);
    float *logits = malloc((size_t)V * sizeof *logits);
    for (int32_t i = 0; i < n; i++)
        pos[i] = i;
    cr_assert_eq(sinkd_model_prefill(m, kv, seq, ref->prompt_ids, pos, n, NULL, logits), 0);
    result r = {.steps = ref->n_greedy};
    double max_err = compare(gguf_path, "prompt, position", (size_t)n - 1, logits,
                             ref->last_logits, V, rel_tol, &r);
    for (size_t i = 0; i < ref->n_greedy; i++) {
        int32_t tok = ref->greedy_ids[i], p = n + (int32_t)i;
        if (ref->greedy_margins[i] > 2 * max_err) {
            int32_t ours = golden_argmax(logits, V);
            cr_assert_eq(ours, tok, "%s: greedy step %zu: %d, reference %d (margin %g, our "
                         "largest logit error %g)", gguf_path, i, ours, tok,
                         ref->greedy_margins[i], max_err);
            r.compared++;
        }
        cr_assert_eq(sinkd_model_decode(m, kv, &seq, 1, &tok, &p, NULL, logits), 0);
        max_err = compare(gguf_path, "after greedy step", i, logits,
                          ref->step_logits + i * (size_t)V, V, rel_tol, &r);
    }
    free(pos);
    free(logits);
    sinkd_kv_seq_close(seq);
    sinkd_kv_close(kv);
    sinkd_model_free(m);
    sinkd_gguf_close(g);
    return r;
}

/* Every <name>.gguf with a <name>.ref.txt in the reference directory. */
static void for_each_model(sinkd_backend *be, const char *label, int32_t weight_dtype,
                           uint8_t kv_dtype, float rel_tol)
{
    const char *dir = getenv("SINKD_HF_REF_DIR");
    if (!dir)
        cr_skip_test("SINKD_HF_REF_DIR not set (run tests/gpu/model_make_hf_gguf.py DIR first)");
    DIR *d = opendir(dir);
    if (!d)
        cr_skip_test("%s: %s", dir, strerror(errno));
    struct dirent *e;
    int models = 0;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 6 || strcmp(e->d_name + len - 5, ".gguf"))
            continue;
        char gguf[4096], txt[4096];
        snprintf(gguf, sizeof gguf, "%s/%s", dir, e->d_name);
        snprintf(txt, sizeof txt, "%s/%.*s.ref.txt", dir, (int)(len - 5), e->d_name);
        golden ref;
        cr_assert_eq(golden_load(txt, &ref), 0, "cannot read %s", txt);
        result r = run_one(be, gguf, &ref.cases[0], weight_dtype, kv_dtype, rel_tol);
        /* one line per model, the table the report quotes */
        printf("model_hf %-5s %-24s worst rel_err %.3g  worst logit %.3g over %zu positions  "
               "greedy %zu/%zu checked and equal (rest under the margin)\n", label, e->d_name,
               r.rel_err, r.max_rel, r.positions, r.compared, r.steps);
        golden_free(&ref);
        models++;
    }
    closedir(d);
    cr_assert_gt(models, 0, "no .gguf files in %s", dir);
}

Test(model_hf, cpu_f32)
{
    sinkd_backend *be;
    cr_assert_eq(sinkd_backend_open("cpu", 0, &be), 0);
    for_each_model(be, "cpu", SINKD_F32, SINKD_F32, 1e-4f);
    sinkd_backend_close(be);
}

Test(model_hf, cuda_bf16)
{
    sinkd_backend *be = NULL;
    int rc = sinkd_cuda_backend_open(&be);
    if (rc == -ENODEV)
        cr_skip_test("%s", sinkd_cuda_built() ? "no GPU visible" : "built without CUDA");
    cr_assert_eq(rc, 0);
    /* bf16 weights with the cache dtype the daemon uses on a GPU by default
     * (kv_dtype = auto = f16); bf16 caches are covered op by op in
     * test_gpu_ops */
    for_each_model(be, "cuda", SINKD_BF16, SINKD_F16, 2e-2f);
    sinkd_backend_close(be);
}

Test(model_hf, cuda_f16)
{
    sinkd_backend *be = NULL;
    int rc = sinkd_cuda_backend_open(&be);
    if (rc == -ENODEV)
        cr_skip_test("%s", sinkd_cuda_built() ? "no GPU visible" : "built without CUDA");
    cr_assert_eq(rc, 0);
    for_each_model(be, "cuda", SINKD_F16, SINKD_F16, 2e-2f);
    sinkd_backend_close(be);
}
