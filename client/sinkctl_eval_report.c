/*
 * sinkctl eval: the report of one stream. Sums are kept per window of
 * stream positions so that a perplexity that drifts (full attention past the
 * model's context) shows where it drifts; KV bytes are sampled as the stream
 * goes so that a cache that stops growing shows where it stops. The JSON
 * form is the msgpack map of sinkctl_eval_report_pack written by
 * sinkctl_json_write, so --json and --json-out print the same document.
 */
#include "sinkctl_eval.h"
#include "sinkctl.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define EVAL_WINDOW_DEFAULT 1024

void sinkctl_eval_report_init(sinkctl_eval_report *r, uint32_t window, bool fidelity)
{
    memset(r, 0, sizeof(*r));
    r->window = window > 0 ? window : EVAL_WINDOW_DEFAULT;
    r->fidelity = fidelity;
}

void sinkctl_eval_report_free(sinkctl_eval_report *r)
{
    free(r->windows);
    free(r->samples);
    sinkctl_eval_report_init(r, r->window, r->fidelity);
}

/* Grow @*arr (elements of @size bytes, *@cap of them) to hold @need. */
static int eval__reserve(void **arr, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap > 0 ? *cap : 16;
    while (n < need)
        n *= 2;
    void *p = realloc(*arr, n * size);
    if (p == NULL)
        return -ENOMEM;
    memset((char *)p + *cap * size, 0, (n - *cap) * size);
    *arr = p;
    *cap = n;
    return 0;
}

/* The window holding stream position @pos, created (zeroed) if new. */
static sinkctl_eval_window *eval__window(sinkctl_eval_report *r, uint64_t pos)
{
    size_t w = (size_t)(pos / r->window);
    if (w >= r->n_windows) {
        if (eval__reserve((void **)&r->windows, &r->windows_cap, w + 1, sizeof(*r->windows)) != 0)
            return NULL;
        r->n_windows = w + 1;
    }
    return &r->windows[w];
}

static void eval__sums_add(sinkctl_eval_sums *s, double nll, double ref_nll, double kl, bool agree)
{
    s->n++;
    s->nll += nll;
    s->ref_nll += ref_nll;
    s->kl += kl;
    s->agree += agree;
}

int sinkctl_eval_report_add(sinkctl_eval_report *r, uint64_t pos, double nll,
                            double ref_nll, double kl, bool agree)
{
    if (pos == 0 || !isfinite(nll))
        return -EINVAL;
    if (r->fidelity && (!isfinite(ref_nll) || !isfinite(kl)))
        return -EINVAL;
    if (!r->fidelity)
        ref_nll = kl = 0, agree = false;
    if (pos <= r->last_pos)
        return -EINVAL;
    sinkctl_eval_window *w = eval__window(r, pos);
    if (w == NULL)
        return -ENOMEM;
    r->last_pos = pos;
    eval__sums_add(&w->sums, nll, ref_nll, kl, agree);
    eval__sums_add(&r->total, nll, ref_nll, kl, agree);
    return 0;
}

int sinkctl_eval_report_sample(sinkctl_eval_report *r, uint64_t tokens,
                               uint64_t kv_bytes, uint64_t evicted)
{
    if (eval__reserve((void **)&r->samples, &r->samples_cap, r->n_samples + 1,
                      sizeof(*r->samples)) != 0)
        return -ENOMEM;
    if (tokens > 0) {
        sinkctl_eval_window *w = eval__window(r, tokens - 1);
        if (w == NULL)
            return -ENOMEM;   /* only capacity grew: @r reads the same */
        w->kv_bytes = kv_bytes;
    }
    r->samples[r->n_samples++] = (sinkctl_eval_sample){ tokens, kv_bytes, evicted };
    if (kv_bytes > r->kv_bytes_max)
        r->kv_bytes_max = kv_bytes;
    return 0;
}

double sinkctl_eval_ppl(const sinkctl_eval_sums *s)
{
    return s->n > 0 ? exp(s->nll / (double)s->n) : NAN;
}

double sinkctl_eval_ref_ppl(const sinkctl_eval_sums *s)
{
    return s->n > 0 ? exp(s->ref_nll / (double)s->n) : NAN;
}

double sinkctl_eval_mean_kl(const sinkctl_eval_sums *s)
{
    return s->n > 0 ? s->kl / (double)s->n : NAN;
}

double sinkctl_eval_top1(const sinkctl_eval_sums *s)
{
    return s->n > 0 ? (double)s->agree / (double)s->n : NAN;
}

/* Non-finite figures (nothing scored, no time measured) become nil: JSON null. */
static void eval__pack_f64(msgpack_packer *pk, const char *key, double v)
{
    sinkd_pack_str(pk, key);
    if (isfinite(v))
        msgpack_pack_double(pk, v);
    else
        msgpack_pack_nil(pk);
}

static void eval__pack_fidelity(msgpack_packer *pk, const sinkctl_eval_sums *s)
{
    eval__pack_f64(pk, "ref_ppl", sinkctl_eval_ref_ppl(s));
    eval__pack_f64(pk, "kl_mean", sinkctl_eval_mean_kl(s));
    eval__pack_f64(pk, "top1", sinkctl_eval_top1(s));
}

int sinkctl_eval_report_pack(const sinkctl_eval_report *r, msgpack_packer *pk)
{
    const sinkctl_eval_sums *t = &r->total;
    uint64_t kv_final = r->n_samples > 0 ? r->samples[r->n_samples - 1].kv_bytes : 0;
    double tps = r->seconds > 0 ? (double)r->tokens / r->seconds : NAN;

    msgpack_pack_map(pk, 20 + (r->fidelity ? 3 : 0));
    sinkd_pack_kv_str(pk, "mode", r->mode);
    sinkd_pack_kv_str(pk, "model", r->model);
    sinkd_pack_kv_str(pk, "policy", r->policy);
    sinkd_pack_kv_str(pk, "params", r->params);
    sinkd_pack_kv_str(pk, "ref", r->ref);
    sinkd_pack_kv_u64(pk, "ref_ctx", r->ref_ctx);
    sinkd_pack_kv_u64(pk, "ctx_len", r->ctx_len);
    sinkd_pack_kv_u64(pk, "tokens", r->tokens);
    sinkd_pack_kv_u64(pk, "scored", t->n);
    eval__pack_f64(pk, "ppl", sinkctl_eval_ppl(t));
    eval__pack_f64(pk, "nll_mean", t->n > 0 ? t->nll / (double)t->n : NAN);
    eval__pack_f64(pk, "tokens_per_s", tps);
    eval__pack_f64(pk, "seconds", r->seconds);
    eval__pack_f64(pk, "wall_seconds", r->wall_seconds);
    sinkd_pack_kv_u64(pk, "kv_bytes_final", kv_final);
    sinkd_pack_kv_u64(pk, "kv_bytes_max", r->kv_bytes_max);
    sinkd_pack_kv_u64(pk, "window", r->window);
    sinkd_pack_kv_str(pk, "fallback", r->fallback);
    if (r->fidelity)
        eval__pack_fidelity(pk, t);

    sinkd_pack_str(pk, "windows");
    msgpack_pack_array(pk, (uint32_t)r->n_windows);
    for (size_t i = 0; i < r->n_windows; i++) {
        const sinkctl_eval_window *w = &r->windows[i];
        msgpack_pack_map(pk, 5 + (r->fidelity ? 3 : 0));
        sinkd_pack_kv_u64(pk, "start", (uint64_t)i * r->window);
        sinkd_pack_kv_u64(pk, "end", (uint64_t)(i + 1) * r->window);
        sinkd_pack_kv_u64(pk, "n", w->sums.n);
        eval__pack_f64(pk, "ppl", sinkctl_eval_ppl(&w->sums));
        sinkd_pack_kv_u64(pk, "kv_bytes", w->kv_bytes);
        if (r->fidelity)
            eval__pack_fidelity(pk, &w->sums);
    }

    sinkd_pack_str(pk, "samples");
    msgpack_pack_array(pk, (uint32_t)r->n_samples);
    for (size_t i = 0; i < r->n_samples; i++) {
        msgpack_pack_map(pk, 3);
        sinkd_pack_kv_u64(pk, "tokens", r->samples[i].tokens);
        sinkd_pack_kv_u64(pk, "kv_bytes", r->samples[i].kv_bytes);
        sinkd_pack_kv_u64(pk, "evicted", r->samples[i].evicted);
    }
    return 0;
}

int sinkctl_eval_report_write_json(const sinkctl_eval_report *r, FILE *f)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int rc = sinkctl_eval_report_pack(r, &pk);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    if (rc == 0 && (sb.data == NULL ||
                    msgpack_unpack_next(&u, sb.data, sb.size, NULL) != MSGPACK_UNPACK_SUCCESS))
        rc = -ENOMEM;   /* msgpack-c fails only to allocate */
    if (rc == 0) {
        sinkctl_json_write(f, &u.data);
        fputc('\n', f);
        if (fflush(f) != 0 || ferror(f))
            rc = -EIO;
    }
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}
