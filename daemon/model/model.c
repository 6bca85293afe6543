/*
 * llama / qwen2 forward over the backend ops table and the KV store.
 * Shapes in comments: n = rows of the call (prefill tokens or decode
 * sequences), D = dim, H/KH = query/kv heads, hd = head_dim, F = ffn_dim,
 * V = vocabulary.
 */
#include "model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errf.h"
#include "half.h"
#include "model_graph.h"

typedef struct layer_w {
    float *attn_norm, *ffn_norm;        /* (D) */
    sinkd_weight wq, wk, wv, wo;        /* (H*hd, D) (KH*hd, D) (KH*hd, D) (D, H*hd) */
    sinkd_weight wg, wu, wd;            /* (F, D) (F, D) (D, F) */
    float *bq, *bk, *bv;                /* (H*hd) (KH*hd) (KH*hd) or NULL */
} layer_w;

struct sinkd_model {
    sinkd_backend *be;
    sinkd_model_hparams hp;
    sinkd_model_config cfg;
    sinkd_weight tok_embd;              /* (V, D) */
    sinkd_weight output;                /* (V, D), tok_embd when tied */
    float *out_norm;                    /* (D) */
    layer_w *layers;                    /* [n_layers] */
    void **dev;                         /* every device allocation */
    size_t n_dev, cap_dev;
    uint64_t weight_bytes;
    /* scratch, max_tokens rows */
    float *x, *xb, *xb2;                /* (n, D) */
    float *q, *att;                     /* (n, H*hd) */
    float *k, *v;                       /* (n, KH*hd) */
    float *hb, *hb2;                    /* (n, F) */
    float *logits;                      /* (logit_rows, V) */
    int32_t *ids, *pos;                 /* (n) */
    model_graphs graphs;                /* decode stretches, by batch size */
    int32_t fused_rows;                 /* calls of <= this many rows use ops->matvec */
    bool gemm_fused;                    /* larger ones use ops->matmul_fused */
};

/* ---- hyper-parameters --------------------------------------------------- */

static int hp__i32(const sinkd_gguf *g, const char *arch, const char *suffix, bool required,
                   int32_t dflt, int32_t *out, char *err, size_t errlen)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    uint32_t v;
    int rc = sinkd_gguf_get_u32(g, key, &v);
    if (rc == -ENOENT && !required) {
        *out = dflt;
        return 0;
    }
    if (rc || v == 0 || v > (1u << 30))
        return model__errf(err, errlen, -EINVAL, "model: %s %s", key,
                           rc == -ENOENT ? "is missing" : "is invalid");
    *out = (int32_t)v;
    return 0;
}

static int hp__f32(const sinkd_gguf *g, const char *arch, const char *suffix, float dflt,
                   float *out, char *err, size_t errlen)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int rc = sinkd_gguf_get_f32(g, key, out);
    if (rc == -ENOENT) {
        *out = dflt;
        return 0;
    }
    if (rc || !(*out > 0) || *out > 1e30f)
        return model__errf(err, errlen, -EINVAL, "model: %s is invalid", key);
    return 0;
}

static int hp__rope_scaling(const sinkd_gguf *g, const char *arch, sinkd_model_hparams *hp,
                            char *err, size_t errlen)
{
    char key[128];
    sinkd_gguf_str type;
    hp->rope_scale = 1.0f;
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    bool has_type = sinkd_gguf_get_str(g, key, &type) == 0;
    if (has_type && !sinkd_gguf_str_eq(type, "none") && !sinkd_gguf_str_eq(type, "linear"))
        return model__errf(err, errlen, -ENOTSUP, "model: rope scaling '%.*s' is not supported (linear is)",
                           (int)(type.len > 32 ? 32 : type.len), type.ptr);
    if (has_type && sinkd_gguf_str_eq(type, "none"))
        return 0;
    float f;
    snprintf(key, sizeof key, "%s.rope.scaling.factor", arch);
    int rc = sinkd_gguf_get_f32(g, key, &f);
    if (rc == -ENOENT) {
        snprintf(key, sizeof key, "%s.rope.scale_linear", arch);
        rc = sinkd_gguf_get_f32(g, key, &f);
    }
    if (rc == -ENOENT)
        return 0;
    if (rc || !(f >= 1.0f) || f > 1e6f)
        return model__errf(err, errlen, -EINVAL, "model: %s is invalid (linear factor >= 1)", key);
    hp->rope_scale = f;
    return 0;
}

int sinkd_model_hparams_read(const sinkd_gguf *g, sinkd_model_hparams *hp, char *err, size_t errlen)
{
    if (!g || !hp)
        return -EINVAL;
    memset(hp, 0, sizeof *hp);
    sinkd_gguf_str a;
    if (sinkd_gguf_get_str(g, "general.architecture", &a))
        return model__errf(err, errlen, -EINVAL, "model: general.architecture is missing");
    const char *arch;
    if (sinkd_gguf_str_eq(a, "llama")) {
        arch = "llama";
        hp->arch = SINKD_ARCH_LLAMA;
        hp->rope_style = SINKD_ROPE_ADJACENT;
    } else if (sinkd_gguf_str_eq(a, "qwen2")) {
        arch = "qwen2";
        hp->arch = SINKD_ARCH_QWEN2;
        hp->rope_style = SINKD_ROPE_NEOX;
    } else {
        return model__errf(err, errlen, -ENOTSUP,
                           "model: architecture '%.*s' is not supported (llama, qwen2 are)",
                           (int)(a.len > 64 ? 64 : a.len), a.ptr);
    }
    int rc;
    if ((rc = hp__i32(g, arch, "embedding_length", true, 0, &hp->dim, err, errlen)) ||
        (rc = hp__i32(g, arch, "block_count", true, 0, &hp->n_layers, err, errlen)) ||
        (rc = hp__i32(g, arch, "feed_forward_length", true, 0, &hp->ffn_dim, err, errlen)) ||
        (rc = hp__i32(g, arch, "attention.head_count", true, 0, &hp->n_heads, err, errlen)) ||
        (rc = hp__i32(g, arch, "attention.head_count_kv", false, hp->n_heads, &hp->n_kv_heads, err, errlen)) ||
        (rc = hp__i32(g, arch, "context_length", false, 2048, &hp->ctx_len, err, errlen)) ||
        (rc = hp__f32(g, arch, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->norm_eps, err, errlen)) ||
        (rc = hp__f32(g, arch, "rope.freq_base", 10000.0f, &hp->rope_theta, err, errlen)) ||
        (rc = hp__rope_scaling(g, arch, hp, err, errlen)))
        return rc;
    if (hp->dim % hp->n_heads)
        return model__errf(err, errlen, -EINVAL, "model: %d heads do not divide dim %d", hp->n_heads, hp->dim);
    if ((rc = hp__i32(g, arch, "attention.key_length", false, hp->dim / hp->n_heads, &hp->head_dim, err, errlen)))
        return rc;
    int32_t vlen, rot;
    if ((rc = hp__i32(g, arch, "attention.value_length", false, hp->head_dim, &vlen, err, errlen)) ||
        (rc = hp__i32(g, arch, "rope.dimension_count", false, hp->head_dim, &rot, err, errlen)))
        return rc;
    if (vlen != hp->head_dim || rot != hp->head_dim || hp->head_dim % 2)
        return model__errf(err, errlen, -ENOTSUP,
                           "model: head_dim %d with value length %d and rotary dims %d is not supported",
                           hp->head_dim, vlen, rot);
    if (hp->n_heads % hp->n_kv_heads)
        return model__errf(err, errlen, -EINVAL, "model: %d kv heads do not divide %d heads",
                           hp->n_kv_heads, hp->n_heads);
    if (sinkd_gguf_tensor_find(g, "rope_freqs.weight"))
        return model__errf(err, errlen, -ENOTSUP,
                           "model: per-dimension rope frequencies (rope_freqs.weight, Llama 3.1 scaling) are not supported");
    const sinkd_gguf_tensor *emb = sinkd_gguf_tensor_find(g, "token_embd.weight");
    if (!emb || emb->n_dims != 2 || emb->ne[0] != (uint64_t)hp->dim || emb->ne[1] > INT32_MAX)
        return model__errf(err, errlen, -EINVAL, "model: token_embd.weight missing or not (vocab, %d)", hp->dim);
    hp->n_vocab = (int32_t)emb->ne[1];
    hp->tied_output = sinkd_gguf_tensor_find(g, "output.weight") == NULL;
    hp->qkv_bias = sinkd_gguf_tensor_find(g, "blk.0.attn_q.bias") != NULL;
    sinkd_gguf_str name;
    if (sinkd_gguf_get_str(g, "general.name", &name) == 0)
        snprintf(hp->name, sizeof hp->name, "%.*s", (int)(name.len > 63 ? 63 : name.len), name.ptr);
    return 0;
}

/* ---- weights ------------------------------------------------------------ */

static int model__dev_alloc(sinkd_model *m, void **p, size_t bytes)
{
    if (m->n_dev == m->cap_dev) {
        size_t cap = m->cap_dev ? m->cap_dev * 2 : 64;
        void **d = realloc(m->dev, cap * sizeof *d);
        if (!d)
            return -ENOMEM;
        m->dev = d;
        m->cap_dev = cap;
    }
    int rc = m->be->ops->alloc(m->be, p, bytes ? bytes : 1);
    if (rc)
        return rc;
    m->dev[m->n_dev++] = *p;
    return 0;
}

/* Elements [i, i + n) of a tensor's data as f32 (Q8_0: i, n multiples of 32). */
static void to_f32(const sinkd_gguf_tensor *t, uint64_t i, size_t n, float *dst)
{
    const uint8_t *src = t->data;
    switch (t->type) {
    case SINKD_GGML_F32:
        memcpy(dst, src + i * 4, n * 4);
        break;
    case SINKD_GGML_F16:
    case SINKD_GGML_BF16:
        for (size_t k = 0; k < n; k++) {
            uint16_t h;
            memcpy(&h, src + (i + k) * 2, 2);
            dst[k] = t->type == SINKD_GGML_F16 ? sinkd_f16_to_f32(h) : sinkd_bf16_to_f32(h);
        }
        break;
    default: /* Q8_0: per block of 32, an f16 scale then 32 int8 */
        for (size_t b = 0; b < n / 32; b++) {
            const uint8_t *blk = src + (i / 32 + b) * 34;
            uint16_t h;
            memcpy(&h, blk, 2);
            float d = sinkd_f16_to_f32(h);
            for (int k = 0; k < 32; k++)
                dst[b * 32 + k] = d * (float)(int8_t)blk[2 + k];
        }
        break;
    }
}

static void from_f32(const float *src, uint8_t dt, size_t n, void *dst)
{
    uint16_t *h = dst;
    switch (dt) {
    case SINKD_F32: memcpy(dst, src, n * 4); break;
    case SINKD_F16: for (size_t k = 0; k < n; k++) h[k] = sinkd_f32_to_f16(src[k]); break;
    default: for (size_t k = 0; k < n; k++) h[k] = sinkd_f32_to_bf16(src[k]); break;
    }
}

static int ggml_to_dtype(uint32_t t)
{
    switch (t) {
    case SINKD_GGML_F32: return SINKD_F32;
    case SINKD_GGML_F16: return SINKD_F16;
    case SINKD_GGML_BF16: return SINKD_BF16;
    default: return SINKD_Q8_0;
    }
}

/* Upload @t converted to @dt into a new device buffer, in row blocks so the
 * host copy stays small. */
static int model__upload(sinkd_model *m, const sinkd_gguf_tensor *t, uint8_t dt, void **out)
{
    uint64_t n = t->n_elements;
    size_t bytes = sinkd_dtype_bytes(dt, n);
    int rc = model__dev_alloc(m, out, bytes);
    if (rc)
        return rc;
    m->weight_bytes += bytes;
    if (ggml_to_dtype(t->type) == dt)
        return m->be->ops->h2d(m->be, *out, t->data, bytes);
    const size_t block = 1 << 20; /* elements per conversion, a multiple of 32 */
    float *f = malloc(block * sizeof *f);
    void *c = malloc(block * 4);
    if (!f || !c)
        rc = -ENOMEM;
    for (uint64_t i = 0; i < n && rc == 0; i += block) {
        size_t k = n - i < block ? (size_t)(n - i) : block;
        to_f32(t, i, k, f);
        from_f32(f, dt, k, c);
        rc = m->be->ops->h2d(m->be, (uint8_t *)*out + sinkd_dtype_bytes(dt, i), c,
                             sinkd_dtype_bytes(dt, k));
        if (rc == 0)
            rc = m->be->ops->sync(m->be); /* c is reused by the next block */
    }
    free(f);
    free(c);
    return rc;
}

static const sinkd_gguf_tensor *model__tensor(const sinkd_gguf *g, const char *name, uint64_t ne0,
                                              uint64_t ne1, bool optional, int *rc, char *err,
                                              size_t errlen)
{
    const sinkd_gguf_tensor *t = sinkd_gguf_tensor_find(g, name);
    *rc = 0;
    if (!t) {
        if (!optional)
            *rc = model__errf(err, errlen, -EINVAL, "model: tensor %s is missing", name);
        return NULL;
    }
    uint64_t want_dims = ne1 ? 2 : 1;
    if (t->n_dims != want_dims || t->ne[0] != ne0 || (ne1 && t->ne[1] != ne1)) {
        *rc = model__errf(err, errlen, -EINVAL, "model: tensor %s has shape [%llu, %llu], expected [%llu, %llu]",
                          name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                          (unsigned long long)ne0, (unsigned long long)(ne1 ? ne1 : 1));
        return NULL;
    }
    return t;
}

/* The dtype a matrix is kept in on this backend. */
static uint8_t model__matrix_dtype(const sinkd_model *m, const sinkd_gguf_tensor *t)
{
    if (m->cfg.weight_dtype >= 0)
        return (uint8_t)m->cfg.weight_dtype;
    int dt = ggml_to_dtype(t->type);
    if (dt == SINKD_Q8_0 && strcmp(m->be->info.name, "cpu") != 0)
        return SINKD_F16;
    return (uint8_t)dt;
}

static int model__matrix(sinkd_model *m, const sinkd_gguf *g, const char *name, int32_t rows,
                         int32_t cols, sinkd_weight *w, char *err, size_t errlen)
{
    int rc;
    const sinkd_gguf_tensor *t = model__tensor(g, name, (uint64_t)cols, (uint64_t)rows, false, &rc, err, errlen);
    if (!t)
        return rc;
    void *p;
    uint8_t dt = model__matrix_dtype(m, t);
    if ((rc = model__upload(m, t, dt, &p)))
        return model__errf(err, errlen, rc, "model: uploading %s failed (%d)", name, rc);
    *w = (sinkd_weight){.data = p, .rows = rows, .cols = cols, .dtype = dt};
    return 0;
}

/* A vector (norm gain, bias) as f32; optional ones may leave *out NULL. */
static int model__vector(sinkd_model *m, const sinkd_gguf *g, const char *name, int32_t n,
                         bool optional, float **out, char *err, size_t errlen)
{
    int rc;
    *out = NULL;
    const sinkd_gguf_tensor *t = model__tensor(g, name, (uint64_t)n, 0, optional, &rc, err, errlen);
    if (!t)
        return rc;
    if ((rc = model__upload(m, t, SINKD_F32, (void **)out)))
        return model__errf(err, errlen, rc, "model: uploading %s failed (%d)", name, rc);
    return 0;
}

static int model__load_layer(sinkd_model *m, const sinkd_gguf *g, int32_t l, char *err, size_t errlen)
{
    const sinkd_model_hparams *hp = &m->hp;
    layer_w *w = &m->layers[l];
    int32_t qd = hp->n_heads * hp->head_dim, kvd = hp->n_kv_heads * hp->head_dim;
    char name[64];
    int rc = 0;
#define MAT(field, suffix, rows, cols)                                             \
    if (!rc) {                                                                     \
        snprintf(name, sizeof name, "blk.%d.%s.weight", l, suffix);                \
        rc = model__matrix(m, g, name, rows, cols, &w->field, err, errlen);        \
    }
#define VEC(field, suffix, kind, n, optional)                                      \
    if (!rc) {                                                                     \
        snprintf(name, sizeof name, "blk.%d.%s.%s", l, suffix, kind);              \
        rc = model__vector(m, g, name, n, optional, &w->field, err, errlen);       \
    }
    VEC(attn_norm, "attn_norm", "weight", hp->dim, false)
    VEC(ffn_norm, "ffn_norm", "weight", hp->dim, false)
    MAT(wq, "attn_q", qd, hp->dim)
    MAT(wk, "attn_k", kvd, hp->dim)
    MAT(wv, "attn_v", kvd, hp->dim)
    MAT(wo, "attn_output", hp->dim, qd)
    MAT(wg, "ffn_gate", hp->ffn_dim, hp->dim)
    MAT(wu, "ffn_up", hp->ffn_dim, hp->dim)
    MAT(wd, "ffn_down", hp->dim, hp->ffn_dim)
    VEC(bq, "attn_q", "bias", qd, !hp->qkv_bias)
    VEC(bk, "attn_k", "bias", kvd, !hp->qkv_bias)
    VEC(bv, "attn_v", "bias", kvd, !hp->qkv_bias)
#undef MAT
#undef VEC
    return rc;
}

static int model__scratch(sinkd_model *m)
{
    const sinkd_model_hparams *hp = &m->hp;
    size_t T = (size_t)m->cfg.max_tokens;
    size_t qd = (size_t)hp->n_heads * hp->head_dim, kvd = (size_t)hp->n_kv_heads * hp->head_dim;
    struct { void **p; size_t bytes; } bufs[] = {
        {(void **)&m->x, T * hp->dim * 4},   {(void **)&m->xb, T * hp->dim * 4},
        {(void **)&m->xb2, T * hp->dim * 4}, {(void **)&m->q, T * qd * 4},
        {(void **)&m->att, T * qd * 4},      {(void **)&m->k, T * kvd * 4},
        {(void **)&m->v, T * kvd * 4},       {(void **)&m->hb, T * hp->ffn_dim * 4},
        {(void **)&m->hb2, T * hp->ffn_dim * 4},
        {(void **)&m->logits, (size_t)m->cfg.logit_rows * hp->n_vocab * 4},
        {(void **)&m->ids, T * 4},           {(void **)&m->pos, T * 4},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        int rc = model__dev_alloc(m, bufs[i].p, bufs[i].bytes);
        if (rc)
            return rc;
    }
    return 0;
}

static int model__load(sinkd_model *m, const sinkd_gguf *g, char *err, size_t errlen)
{
    int rc = sinkd_model_hparams_read(g, &m->hp, err, errlen);
    if (rc)
        return rc;
    const sinkd_model_hparams *hp = &m->hp;
    m->layers = calloc((size_t)hp->n_layers, sizeof *m->layers);
    if (!m->layers)
        return -ENOMEM;
    if ((rc = model__matrix(m, g, "token_embd.weight", hp->n_vocab, hp->dim, &m->tok_embd, err, errlen)) ||
        (rc = model__vector(m, g, "output_norm.weight", hp->dim, false, &m->out_norm, err, errlen)))
        return rc;
    if (hp->tied_output)
        m->output = m->tok_embd;
    else if ((rc = model__matrix(m, g, "output.weight", hp->n_vocab, hp->dim, &m->output, err, errlen)))
        return rc;
    for (int32_t l = 0; l < hp->n_layers; l++)
        if ((rc = model__load_layer(m, g, l, err, errlen)))
            return rc;
    if ((rc = model__scratch(m)))
        return model__errf(err, errlen, rc, "model: allocating scratch buffers failed (%d)", rc);
    /* one stretch before each layer's attention and one after the last */
    model_graph__init(&m->graphs, hp->n_layers + 1, m->cfg.max_tokens);
    return m->be->ops->sync(m->be);
}

/* An integer in [lo, hi] from the environment variable @name, or @dflt. */
static long model__env_long(const char *name, long lo, long hi, long dflt)
{
    const char *env = getenv(name);
    if (!env || !*env)
        return dflt;
    char *end;
    long v = strtol(env, &end, 10);
    return *end == '\0' && v >= lo && v <= hi ? v : dflt;
}

/* Rows up to which a forward uses the backend's matvec kernel (none
 * without ops->matvec); SINKD_MATVEC=0..8 in the environment sets it. On
 * an H100 (1B geometry) the kernel wins up to 4 rows; at 8 cuBLAS does
 * (bench/e2e/NOTES.md). Larger calls go to ops->matmul_fused, or are
 * composed from single ops without it (SINKD_MATVEC=0 with
 * SINKD_MATMUL_FUSED=0: composed ops only, for comparing). */
static int32_t model__fused_rows(const sinkd_model *m)
{
    if (!m->be->ops->matvec)
        return 0;
    return (int32_t)model__env_long("SINKD_MATVEC", 0, SINKD_MATVEC_MAX_M, 4);
}

int sinkd_model_load(sinkd_backend *be, const sinkd_gguf *g, const sinkd_model_config *cfg,
                     sinkd_model **out, char *err, size_t errlen)
{
    sinkd_model_config c = SINKD_MODEL_CONFIG_INIT;
    if (!be || !g || !out)
        return -EINVAL;
    if (cfg)
        c = *cfg;
    if (c.logit_rows == 0)
        c.logit_rows = c.max_tokens;
    if (c.max_tokens < 1 || c.max_tokens > (1 << 20) || c.logit_rows < 1 || c.logit_rows > c.max_tokens ||
        (c.weight_dtype != -1 && c.weight_dtype != SINKD_F32 && c.weight_dtype != SINKD_F16 &&
         c.weight_dtype != SINKD_BF16))
        return model__errf(err, errlen, -EINVAL, "model: bad config (max_tokens %d, logit_rows %d, weight_dtype %d)",
                           c.max_tokens, c.logit_rows, c.weight_dtype);
    sinkd_model *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->be = be;
    m->cfg = c;
    int rc = model__load(m, g, err, errlen);
    if (rc) {
        if (rc == -ENOMEM && err && errlen && !err[0])
            model__errf(err, errlen, rc, "model: out of memory");
        sinkd_model_free(m);
        return rc;
    }
    m->fused_rows = model__fused_rows(m);
    /* SINKD_MATMUL_FUSED=0: compose the larger calls (for comparing) */
    m->gemm_fused = m->be->ops->matmul_fused && model__env_long("SINKD_MATMUL_FUSED", 0, 1, 1);
    *out = m;
    return 0;
}

void sinkd_model_free(sinkd_model *m)
{
    if (!m)
        return;
    model_graph__free(&m->graphs, m->be);
    for (size_t i = 0; i < m->n_dev; i++)
        m->be->ops->free(m->be, m->dev[i]);
    free(m->dev);
    free(m->layers);
    free(m);
}

const sinkd_model_hparams *sinkd_model_hparams_get(const sinkd_model *m) { return &m->hp; }
uint64_t sinkd_model_weight_bytes(const sinkd_model *m) { return m->weight_bytes; }
const float *sinkd_model_logits_dev(const sinkd_model *m) { return m->logits; }
int32_t sinkd_model_graphs_count(const sinkd_model *m) { return m->graphs.count; }

bool sinkd_model_graphs_set(sinkd_model *m, bool on)
{
    m->graphs.on = on;
    return model_graph__active(&m->graphs, m->be);
}

sinkd_rope sinkd_model_rope(const sinkd_model *m, uint8_t mode)
{
    return (sinkd_rope){.theta = m->hp.rope_theta, .scale = m->hp.rope_scale,
                        .style = m->hp.rope_style, .mode = mode};
}

void sinkd_model_seq_params(const sinkd_model *m, uint8_t mode, sinkd_kv_seq_params *p)
{
    memset(p, 0, sizeof *p);
    p->n_layers = m->hp.n_layers;
    p->n_kv_heads = m->hp.n_kv_heads;
    p->head_dim = m->hp.head_dim;
    p->rope = sinkd_model_rope(m, mode);
}

/* ---- forward ------------------------------------------------------------ */

/* What differs between a prefill chunk and a decode batch: how K/V reach the
 * lanes and which attention op reads them. */
typedef struct fwd {
    sinkd_model *m;
    sinkd_kv *kv;
    sinkd_kv_seq *const *seqs;
    int32_t n_seqs;      /* 1 for prefill */
    int32_t n;           /* rows */
    bool prefill;
    int32_t logit_first; /* first row whose logits are wanted, -1 = none */
    const int32_t *pos;  /* HOST [n] */
    const sinkd_model_opts *o;
} fwd;

static int fwd__attention(const fwd *f, int32_t layer)
{
    sinkd_model *m = f->m;
    sinkd_backend *be = m->be;
    const sinkd_model_hparams *hp = &m->hp;
    const sinkd_model_hook *hook = f->o->hook;
    sinkd_lanes lanes;
    int rc;
    float scale = 1.0f / sqrtf((float)hp->head_dim);
    if (f->prefill) {
        sinkd_kv_lane_stats st;
        if ((rc = sinkd_kv_append_lanes(f->seqs[0], layer, f->n, m->k, m->v, f->pos, &lanes)) ||
            (rc = sinkd_kv_lane_stats_get(f->seqs[0], layer, &st)))
            return rc;
        sinkd_prefill_args a = {
            .pool = sinkd_kv_pool_get(f->kv), .lanes = lanes, .n = f->n,
            .n_q_heads = hp->n_heads, .n_kv_heads = hp->n_kv_heads, .head_dim = hp->head_dim,
            .rope = sinkd_model_rope(m, f->o->rope_mode), .softmax_scale = scale,
            .q = m->q, .out = m->att, .q_pos = m->pos,
            .max_len = st.len_max, /* no read-back of the lengths */
        };
        if (hook && hook->prefill && (rc = hook->prefill(hook->ctx, layer, &a)))
            return rc;
        return be->ops->attn_prefill(be, &a);
    }
    if ((rc = sinkd_kv_append_batch_lanes(f->kv, f->seqs, f->n_seqs, layer, m->k, m->v, f->pos,
                                          &lanes)))
        return rc;
    sinkd_decode_args a = {
        .pool = sinkd_kv_pool_get(f->kv), .lanes = lanes, .n_seqs = f->n_seqs,
        .n_q_heads = hp->n_heads, .n_kv_heads = hp->n_kv_heads, .head_dim = hp->head_dim,
        .rope = sinkd_model_rope(m, f->o->rope_mode), .softmax_scale = scale,
        .q = m->q, .out = m->att, .q_pos = m->pos,
    };
    if (hook && hook->decode && (rc = hook->decode(hook->ctx, layer, &a)))
        return rc;
    return be->ops->attn_decode(be, &a);
}

/* ops->matvec over @rows rows of x, or ops->matmul_fused past fused_rows;
 * -ENOTSUP tells the caller to compose the same result from single ops (a
 * backend without them, or shapes they do not take). */
static int fwd__matvec(const fwd *f, int32_t rows, sinkd_matvec_args *a)
{
    sinkd_backend *be = f->m->be;
    a->m = rows;
    if (rows <= f->m->fused_rows) {
        /* a shape matvec does not take (m * cols past its staging) is still
         * the fused GEMMs' */
        int rc = be->ops->matvec(be, a);
        if (rc != -ENOTSUP)
            return rc;
    }
    return f->m->gemm_fused ? be->ops->matmul_fused(be, a) : -ENOTSUP;
}

/* The ops of layer @l after its attention: output projection, residual,
 * feed-forward, residual. */
static int fwd__ffn(const fwd *f, int32_t l)
{
    sinkd_model *m = f->m;
    sinkd_backend *be = m->be;
    const sinkd_ops *ops = be->ops;
    const sinkd_model_hparams *hp = &m->hp;
    const layer_w *w = &m->layers[l];
    int32_t n = f->n;
    int64_t nd = (int64_t)n * hp->dim;
    sinkd_matvec_args o = {.n_w = 1, .x = m->att, .epilogue = SINKD_MATVEC_ADD,
                           .w = {&w->wo}, .y = {m->x}};
    int rc = fwd__matvec(f, n, &o);
    if (rc == -ENOTSUP && !(rc = ops->matmul(be, m->xb2, m->att, n, &w->wo, NULL)))
        rc = ops->add(be, m->x, m->xb2, nd);
    if (rc)
        return rc;
    sinkd_matvec_args gu = {.n_w = 2, .x = m->x, .norm = w->ffn_norm, .norm_eps = hp->norm_eps,
                            .epilogue = SINKD_MATVEC_SWIGLU, .w = {&w->wg, &w->wu}, .y = {m->hb}};
    rc = fwd__matvec(f, n, &gu);
    if (rc == -ENOTSUP &&
        !(rc = ops->rmsnorm(be, m->xb, m->x, w->ffn_norm, n, hp->dim, hp->norm_eps)) &&
        !(rc = ops->matmul(be, m->hb, m->xb, n, &w->wg, NULL)) &&
        !(rc = ops->matmul(be, m->hb2, m->xb, n, &w->wu, NULL)))
        rc = ops->swiglu(be, m->hb, m->hb2, n, hp->ffn_dim);
    if (rc)
        return rc;
    sinkd_matvec_args d = {.n_w = 1, .x = m->hb, .epilogue = SINKD_MATVEC_ADD,
                           .w = {&w->wd}, .y = {m->x}};
    rc = fwd__matvec(f, n, &d);
    if (rc == -ENOTSUP && !(rc = ops->matmul(be, m->xb2, m->hb, n, &w->wd, NULL)))
        rc = ops->add(be, m->x, m->xb2, nd);
    return rc;
}

/* Stretch @i of the forward: the ops between attention i - 1 and attention
 * i, from the embedding (i = 0) to the first block of logits (i = n_layers,
 * when logits are wanted). Every argument of these ops depends on the rows
 * and logit_first alone, never on the step's ids, positions or lanes (those
 * reach them through device buffers), which is what lets a decode step
 * replay them from a graph (model_graph.h). */
static int fwd__stretch(const void *arg, int32_t i)
{
    const fwd *f = arg;
    sinkd_model *m = f->m;
    sinkd_backend *be = m->be;
    const sinkd_ops *ops = be->ops;
    const sinkd_model_hparams *hp = &m->hp;
    int32_t n = f->n;
    int rc = i == 0 ? ops->embed(be, m->x, &m->tok_embd, m->ids, n) : fwd__ffn(f, i - 1);
    if (rc)
        return rc;
    if (i < hp->n_layers) {
        const layer_w *w = &m->layers[i];
        sinkd_matvec_args a = {.n_w = 3, .x = m->x, .norm = w->attn_norm,
                               .norm_eps = hp->norm_eps, .epilogue = SINKD_MATVEC_STORE,
                               .w = {&w->wq, &w->wk, &w->wv}, .bias = {w->bq, w->bk, w->bv},
                               .y = {m->q, m->k, m->v}};
        if ((rc = fwd__matvec(f, n, &a)) != -ENOTSUP)
            return rc;
        if ((rc = ops->rmsnorm(be, m->xb, m->x, w->attn_norm, n, hp->dim, hp->norm_eps)) ||
            (rc = ops->matmul(be, m->q, m->xb, n, &w->wq, w->bq)) ||
            (rc = ops->matmul(be, m->k, m->xb, n, &w->wk, w->bk)) ||
            (rc = ops->matmul(be, m->v, m->xb, n, &w->wv, w->bv)))
            return rc;
        return 0;
    }
    if (f->logit_first < 0)
        return 0;
    size_t first = (size_t)f->logit_first * hp->dim;
    int32_t rows = n - f->logit_first, block = rows < m->cfg.logit_rows ? rows : m->cfg.logit_rows;
    if (block == rows) {
        /* one block of logits: nothing reads the normalised rows after it */
        sinkd_matvec_args a = {.n_w = 1, .x = m->x + first, .norm = m->out_norm,
                               .norm_eps = hp->norm_eps, .epilogue = SINKD_MATVEC_STORE,
                               .w = {&m->output}, .y = {m->logits}};
        if ((rc = fwd__matvec(f, rows, &a)) != -ENOTSUP)
            return rc;
    }
    if ((rc = ops->rmsnorm(be, m->xb + first, m->x + first, m->out_norm, rows, hp->dim,
                           hp->norm_eps)))
        return rc;
    return ops->matmul(be, m->logits, m->xb + first, block, &m->output, NULL);
}

/* Logits of rows [logit_first, n) to @logits (HOST rows in order, may be
 * NULL) in blocks of logit_rows; the last stretch computed the first block. */
static int fwd__logits(const fwd *f, float *logits)
{
    sinkd_model *m = f->m;
    sinkd_backend *be = m->be;
    const sinkd_model_hparams *hp = &m->hp;
    int rc = 0;
    for (int32_t r = f->logit_first; r < f->n && rc == 0; r += m->cfg.logit_rows) {
        int32_t k = f->n - r < m->cfg.logit_rows ? f->n - r : m->cfg.logit_rows;
        size_t bytes = (size_t)k * hp->n_vocab * sizeof(float);
        if (r > f->logit_first)
            rc = be->ops->matmul(be, m->logits, m->xb + (size_t)r * hp->dim, k, &m->output, NULL);
        if (rc == 0 && logits)
            rc = be->ops->d2h(be, logits + (size_t)(r - f->logit_first) * hp->n_vocab, m->logits,
                              bytes);
        if (rc == 0)
            rc = be->ops->sync(be);
    }
    return rc;
}

static int fwd__run(const fwd *f, const int32_t *ids, float *logits)
{
    sinkd_model *m = f->m;
    sinkd_backend *be = m->be;
    int rc;
    for (int32_t i = 0; i < f->n; i++)
        if (ids[i] < 0 || ids[i] >= m->hp.n_vocab)
            return -EINVAL;
    if ((rc = be->ops->h2d(be, m->ids, ids, (size_t)f->n * 4)) ||
        (rc = be->ops->h2d(be, m->pos, f->pos, (size_t)f->n * 4)))
        return rc;
    for (int32_t i = 0; i <= m->hp.n_layers; i++) {
        rc = f->prefill ? fwd__stretch(f, i)
                        : model_graph__run(&m->graphs, be, f->n, i, fwd__stretch, f);
        if (rc == 0 && i < m->hp.n_layers)
            rc = fwd__attention(f, i);
        if (rc)
            return rc;
    }
    if (f->logit_first < 0)
        return be->ops->sync(be);
    return fwd__logits(f, logits);
}

int sinkd_model_prefill(sinkd_model *m, sinkd_kv *kv, sinkd_kv_seq *seq, const int32_t *ids,
                        const int32_t *pos, int32_t n, const sinkd_model_opts *opts,
                        float *logits)
{
    static const sinkd_model_opts dflt = {0};
    if (!m || !kv || !seq || !ids || !pos || n < 1)
        return -EINVAL;
    const sinkd_model_opts *o = opts ? opts : &dflt;
    for (int32_t done = 0; done < n;) {
        int32_t k = n - done < m->cfg.max_tokens ? n - done : m->cfg.max_tokens;
        bool last = done + k == n;
        fwd f = {.m = m, .kv = kv, .seqs = &seq, .n_seqs = 1, .n = k, .prefill = true,
                 .logit_first = o->all_logits ? 0 : last ? k - 1 : -1, .pos = pos + done, .o = o};
        float *out = logits && o->all_logits ? logits + (size_t)done * m->hp.n_vocab : logits;
        int rc = fwd__run(&f, ids + done, out);
        if (rc)
            return rc;
        done += k;
    }
    return 0;
}

int sinkd_model_decode(sinkd_model *m, sinkd_kv *kv, sinkd_kv_seq *const *seqs, int32_t n_seqs,
                       const int32_t *ids, const int32_t *pos, const sinkd_model_opts *opts,
                       float *logits)
{
    static const sinkd_model_opts dflt = {0};
    if (!m || !kv || !seqs || !ids || !pos || n_seqs < 1 || n_seqs > m->cfg.max_tokens)
        return -EINVAL;
    fwd f = {.m = m, .kv = kv, .seqs = seqs, .n_seqs = n_seqs, .n = n_seqs, .prefill = false,
             .logit_first = 0, .pos = pos, .o = opts ? opts : &dflt};
    return fwd__run(&f, ids, logits);
}
