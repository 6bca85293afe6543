/*
 * libFuzzer target for the model load path short of weight upload. The
 * input is a GGUF image. It is parsed with sinkd_gguf_open_mem; when that
 * succeeds, every metadata entry is read through every typed getter, every
 * element of every array is visited (nested arrays included), every tensor
 * is looked up by name and the first and last byte of its data are read;
 * then the hyper-parameters are read and the tokenizer is built, and when it
 * builds, a few texts (fixed ones and the input's last bytes) are encoded,
 * decoded and stream-decoded. Checks (abort on failure):
 *   - a refusal is -EINVAL or -ENOTSUP with a message;
 *   - every key and tensor name is found at its own entry; getters agree
 *     with one another and with the value's type;
 *   - array elements tile the array's bytes exactly, element i as
 *     sinkd_gguf_arr_at returns it, and bulk conversions agree with it;
 *   - tensors lie inside the data section at aligned offsets with the size
 *     their shape and type give;
 *   - accepted hyper-parameters are consistent with each other and with
 *     token_embd.weight;
 *   - token ids are in range, every vocabulary text is found, decode
 *     succeeds on what encode returned and streaming decode emits valid UTF-8.
 * tests/fuzz/replay.c runs the same function over the committed corpus.
 */
#include "gguf.h"
#include "model.h"
#include "tokenizer.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static _Noreturn void check_failed(const char *what, int line)
{
    fprintf(stderr, "fuzz_gguf: check failed: %s (line %d)\n", what, line);
    abort();
}
#define CHECK(c) ((c) ? (void)0 : check_failed(#c, __LINE__))

/* Encoded size of a scalar value type, by type number (gguf.h); 0 for
 * string, array and unknown types. */
static uint64_t scalar_size(uint32_t t)
{
    static const uint8_t size[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return t < sizeof size ? size[t] : 0;
}

static bool is_int(uint32_t t)
{
    return scalar_size(t) && t != SINKD_GGUF_FLOAT32 && t != SINKD_GGUF_FLOAT64 &&
           t != SINKD_GGUF_BOOL;
}

/* Header bytes in front of a value's data in the file: a string's u64
 * length, an array's u32 element type and u64 count. */
static uint64_t header_size(uint32_t t)
{
    return t == SINKD_GGUF_STRING ? 8 : t == SINKD_GGUF_ARRAY ? 12 : 0;
}

static bool in_file(const sinkd_gguf *g, const void *p, uint64_t n)
{
    const uint8_t *b = p;
    return b >= g->base && (uint64_t)(b - g->base) <= g->file_size &&
           n <= g->file_size - (uint64_t)(b - g->base);
}

/* Touch the first and last byte of [p, p + n) so ASan sees any overrun. */
static unsigned touch(const void *p, uint64_t n)
{
    const volatile uint8_t *b = p;
    return n ? (unsigned)b[0] + b[n - 1] : 0;
}

static void walk_value(const sinkd_gguf *g, const sinkd_gguf_value *v, int depth);

/* Scalars: the conversions agree with each other. */
static void walk_scalar(const sinkd_gguf_value *v)
{
    double d;
    int64_t i;
    int rf = sinkd_gguf_value_f64(v, &d);
    int ri = sinkd_gguf_value_i64(v, &i);
    CHECK(v->count == 1 && v->size == scalar_size(v->type));
    CHECK(rf == 0);
    if (ri == 0) {
        CHECK(v->type != SINKD_GGUF_FLOAT32 && v->type != SINKD_GGUF_FLOAT64);
        CHECK(d == (double)i);
    } else {
        /* only floats and a uint64 above INT64_MAX refuse */
        CHECK(ri == -EINVAL);
        CHECK(!is_int(v->type) || (v->type == SINKD_GGUF_UINT64 && d >= 9.2e18));
    }
    if (v->type == SINKD_GGUF_BOOL)
        CHECK(v->data[0] <= 1);
}

/* Every element of @arr, in one pass: element k+1 starts where element k
 * ends (plus its header), which a value over the rest of the array, built
 * by hand, lets sinkd_gguf_arr_at confirm. */
static void walk_array(const sinkd_gguf *g, const sinkd_gguf_value *arr, int depth)
{
    CHECK(depth < SINKD_GGUF_MAX_DEPTH);
    CHECK(in_file(g, arr->data, arr->size));
    sinkd_gguf_value e;
    CHECK(sinkd_gguf_arr_at(arr, arr->count, &e) == -ERANGE);
    uint64_t fixed = scalar_size(arr->elem_type);
    if (fixed)
        CHECK(arr->size == arr->count * fixed);
    sinkd_gguf_value rest = *arr;
    uint64_t used = 0;
    for (uint64_t k = 0; k < arr->count; k++) {
        CHECK(sinkd_gguf_arr_at(&rest, 0, &e) == 0);
        CHECK(e.type == arr->elem_type);
        CHECK(e.data == arr->data + used + header_size(e.type));
        used += header_size(e.type) + e.size;
        CHECK(used <= arr->size);
        walk_value(g, &e, depth + 1);
        rest.data = arr->data + used;
        rest.count--;
        rest.size = arr->size - used;
    }
    CHECK(used == arr->size);
    /* random access agrees with the walk at the ends */
    if (arr->count) {
        sinkd_gguf_value last;
        CHECK(sinkd_gguf_arr_at(arr, arr->count - 1, &last) == 0);
        CHECK(last.data + last.size == arr->data + arr->size);
        CHECK(sinkd_gguf_arr_at(arr, 0, &e) == 0 && e.data == arr->data + header_size(e.type));
    }

    size_t n = arr->count ? (size_t)arr->count : 1;
    if (arr->elem_type == SINKD_GGUF_STRING) {
        sinkd_gguf_str *s = malloc(n * sizeof *s);
        CHECK(s != NULL);
        CHECK(sinkd_gguf_arr_strings(arr, s, arr->count) == 0);
        for (uint64_t k = 0; k < arr->count; k++) {
            CHECK(in_file(g, s[k].ptr, s[k].len));
            touch(s[k].ptr, s[k].len);
        }
        free(s);
        float f;
        CHECK(sinkd_gguf_arr_f32(arr, &f, arr->count) == -EINVAL);
    } else if (fixed) {
        float *f = malloc(n * sizeof *f);
        int32_t *i32 = malloc(n * sizeof *i32);
        CHECK(f && i32);
        int rf = sinkd_gguf_arr_f32(arr, f, arr->count);
        int ri = sinkd_gguf_arr_i32(arr, i32, arr->count);
        CHECK(rf == 0);
        for (uint64_t k = 0; k < arr->count && ri == 0; k++) {
            CHECK(sinkd_gguf_arr_at(arr, k, &e) == 0);
            int64_t x;
            CHECK(sinkd_gguf_value_i64(&e, &x) == 0 && x == i32[k]);
        }
        free(f);
        free(i32);
    } else {
        sinkd_gguf_str s;
        CHECK(sinkd_gguf_arr_strings(arr, &s, arr->count) == -EINVAL);
    }
}

static void walk_value(const sinkd_gguf *g, const sinkd_gguf_value *v, int depth)
{
    CHECK(in_file(g, v->data, v->size));
    touch(v->data, v->size);
    if (v->type == SINKD_GGUF_STRING)
        CHECK(v->count == v->size);
    else if (v->type == SINKD_GGUF_ARRAY)
        walk_array(g, v, depth);
    else
        walk_scalar(v);
}

/* Every getter on @key, which names @kv. */
static void walk_getters(const sinkd_gguf *g, const char *key, const sinkd_gguf_kv *kv)
{
    const sinkd_gguf_value *v = &kv->value;
    uint32_t u32 = 0;
    uint64_t u64 = 0;
    int64_t i64 = 0;
    float f = 0;
    bool b = false;
    sinkd_gguf_str s;
    sinkd_gguf_value arr;
    int r32 = sinkd_gguf_get_u32(g, key, &u32);
    int r64 = sinkd_gguf_get_u64(g, key, &u64);
    int ri = sinkd_gguf_get_i64(g, key, &i64);
    int rf = sinkd_gguf_get_f32(g, key, &f);
    CHECK(r32 == 0 || r32 == -EINVAL);
    CHECK(r64 == 0 || r64 == -EINVAL);
    CHECK(ri == 0 || ri == -EINVAL);
    if (r32 == 0)
        CHECK(r64 == 0 && u64 == u32);
    if (r64 == 0) {
        CHECK(is_int(v->type));
        CHECK(r32 == 0 || u64 > UINT32_MAX);
    }
    if (r64 == 0 && ri == 0)
        CHECK((uint64_t)i64 == u64);
    if (ri == 0)
        CHECK(is_int(v->type) && (r64 == 0 || i64 < 0));
    CHECK((rf == 0) == (scalar_size(v->type) && v->type != SINKD_GGUF_BOOL));
    CHECK((sinkd_gguf_get_bool(g, key, &b) == 0) == (v->type == SINKD_GGUF_BOOL));
    if (sinkd_gguf_get_str(g, key, &s) == 0) {
        CHECK(v->type == SINKD_GGUF_STRING);
        CHECK((const uint8_t *)s.ptr == v->data && s.len == v->count);
    } else {
        CHECK(v->type != SINKD_GGUF_STRING);
    }
    if (sinkd_gguf_get_arr(g, key, &arr) == 0)
        CHECK(v->type == SINKD_GGUF_ARRAY && arr.data == v->data && arr.count == v->count);
    else
        CHECK(v->type != SINKD_GGUF_ARRAY);
}

/* @s as a C string in @buf, or false when it holds a NUL or is too long. */
static bool c_name(sinkd_gguf_str s, char *buf, size_t cap)
{
    if (s.len >= cap || memchr(s.ptr, 0, s.len))
        return false;
    memcpy(buf, s.ptr, s.len);
    buf[s.len] = 0;
    return true;
}

static void walk_metadata(const sinkd_gguf *g)
{
    char key[512];
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const sinkd_gguf_kv *kv = &g->kv[i];
        CHECK(kv->key.len > 0 && in_file(g, kv->key.ptr, kv->key.len));
        walk_value(g, &kv->value, 0);
        if (!c_name(kv->key, key, sizeof key))
            continue;
        /* keys are unique, so a lookup lands on this very entry */
        CHECK(sinkd_gguf_find(g, key) == kv);
        walk_getters(g, key, kv);
    }
    CHECK(sinkd_gguf_find(g, "") == NULL);
}

static uint64_t tensor_bytes(const sinkd_gguf_tensor *t)
{
    switch (t->type) {
    case SINKD_GGML_F32: return t->n_elements * 4;
    case SINKD_GGML_F16: case SINKD_GGML_BF16: return t->n_elements * 2;
    case SINKD_GGML_Q8_0: CHECK(t->ne[0] % 32 == 0); return t->n_elements / 32 * 34;
    default: check_failed("an unsupported tensor type was accepted", __LINE__);
    }
}

static unsigned walk_tensors(const sinkd_gguf *g)
{
    char name[512];
    unsigned sum = 0;
    CHECK(g->alignment && (g->alignment & (g->alignment - 1)) == 0);
    CHECK(g->data_offset % g->alignment == 0 && g->data_offset <= g->file_size);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const sinkd_gguf_tensor *t = &g->tensors[i];
        CHECK(in_file(g, t->name.ptr, t->name.len));
        CHECK(t->n_dims >= 1 && t->n_dims <= SINKD_GGUF_MAX_DIMS);
        uint64_t n = 1;
        for (uint32_t d = 0; d < SINKD_GGUF_MAX_DIMS; d++) {
            CHECK(t->ne[d] >= 1 && (d < t->n_dims || t->ne[d] == 1));
            CHECK(n <= UINT64_MAX / t->ne[d]);
            n *= t->ne[d];
        }
        CHECK(n == t->n_elements && t->size == tensor_bytes(t) && t->size > 0);
        CHECK(strcmp(sinkd_ggml_type_name(t->type), "unknown") != 0);
        CHECK((const uint8_t *)t->data == g->base + g->data_offset + t->offset);
        CHECK(t->offset % g->alignment == 0 && in_file(g, t->data, t->size));
        sum += touch(t->data, t->size);
        if (c_name(t->name, name, sizeof name))
            CHECK(sinkd_gguf_tensor_find(g, name) == t);
    }
    return sum;
}

static bool valid_utf8(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t l = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c & 0xF0) == 0xE0 ? 3
                 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
        if (l == 0 || l > n - i)
            return false;
        uint32_t cp = l == 1 ? c : c & (0xFF >> (l + 1));
        for (size_t k = 1; k < l; k++) {
            if (((unsigned char)s[i + k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | ((unsigned char)s[i + k] & 0x3F);
        }
        static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[l] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += l;
    }
    return true;
}

/* Encode @text with @flags, then decode it whole and as a stream. */
static void round_text(const sinkd_tokenizer *t, const char *text, size_t len, unsigned flags)
{
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = sinkd_tokenizer_encode(t, text, len, flags, &ids, &n);
    CHECK(rc == 0 && ids != NULL);
    int32_t nv = sinkd_tokenizer_n_vocab(t);
    for (size_t i = 0; i < n; i++)
        CHECK(ids[i] >= 0 && ids[i] < nv);

    unsigned dflags[] = {0, SINKD_TOK_DECODE_SPECIAL};
    for (size_t k = 0; k < 2; k++) {
        char *out = NULL;
        size_t olen = 0;
        CHECK(sinkd_tokenizer_decode(t, ids, n, dflags[k], &out, &olen) == 0);
        CHECK(out[olen] == 0);
        free(out);

        size_t cap = sinkd_tokenizer_max_chunk(t);
        char *chunk = malloc(cap);
        CHECK(chunk != NULL);
        sinkd_detok st = SINKD_DETOK_INIT;
        for (size_t i = 0; i < n; i++) {
            size_t w = 0;
            CHECK(sinkd_detok_push(t, &st, ids[i], dflags[k], chunk, cap, &w) == 0);
            CHECK(w <= cap && valid_utf8(chunk, w));
        }
        size_t w = 0;
        sinkd_detok_flush(&st, chunk, cap, &w);
        CHECK(w <= 3 && valid_utf8(chunk, w));
        if (cap > 0)
            CHECK(sinkd_detok_push(t, &st, 0, 0, chunk, cap - 1, &w) == -ENOSPC);
        free(chunk);
    }
    free(ids);
}

static void walk_tokenizer(const sinkd_gguf *g, const sinkd_tokenizer *t, const uint8_t *data,
                           size_t size)
{
    int32_t nv = sinkd_tokenizer_n_vocab(t);
    CHECK(nv > 0);
    CHECK(sinkd_tokenizer_bos(t) >= -1 && sinkd_tokenizer_bos(t) < nv);
    CHECK(sinkd_tokenizer_eos(t) >= -1 && sinkd_tokenizer_eos(t) < nv);
    CHECK(!sinkd_tokenizer_is_eog(t, -1) && sinkd_tokenizer_type(t, nv) == 0);

    /* each vocabulary text is found, at its own id or an earlier duplicate */
    sinkd_gguf_value toks;
    CHECK(sinkd_gguf_get_arr(g, "tokenizer.ggml.tokens", &toks) == 0 && toks.count == (uint64_t)nv);
    sinkd_gguf_str *s = malloc((size_t)nv * sizeof *s);
    CHECK(s != NULL);
    CHECK(sinkd_gguf_arr_strings(&toks, s, toks.count) == 0);
    for (int32_t i = 0; i < nv; i++) {
        int32_t id = sinkd_tokenizer_find(t, s[i].ptr, s[i].len);
        CHECK(id >= 0 && id <= i && s[id].len == s[i].len &&
              memcmp(s[id].ptr, s[i].ptr, s[i].len) == 0);
        int ty = sinkd_tokenizer_type(t, i);
        CHECK(ty >= SINKD_TOKTYPE_NORMAL && ty <= SINKD_TOKTYPE_BYTE);
        const char *p;
        size_t len;
        CHECK(sinkd_tokenizer_piece(t, i, SINKD_TOK_DECODE_SPECIAL, &p, &len) == 0);
        CHECK(len <= sinkd_tokenizer_max_chunk(t));
        touch(p, len);
    }
    free(s);
    const char *p;
    size_t len;
    CHECK(sinkd_tokenizer_piece(t, nv, 0, &p, &len) == -EINVAL);

    static const char *const texts[] = {
        "Hello world",
        " The  quick\tbrown fox's 12345 jumped\n\n over <s> </s> <|im_start|>user<|im_end|>",
        "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 \xe2\x96\x81x",
        "\xff\xfe\x80 bad \xc3 utf8 \xed\xa0\x80",
        "",
    };
    unsigned flags[] = {0, SINKD_TOK_ADD_SPECIAL, SINKD_TOK_ADD_SPECIAL | SINKD_TOK_PARSE_SPECIAL};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        round_text(t, texts[i], strlen(texts[i]), flags[i % 3]);
    /* the input's last bytes: text the fuzzer steers without changing the header */
    size_t tail = size < 96 ? size : 96;
    round_text(t, (const char *)data + size - tail, tail, flags[size % 3]);
}

static void walk_hparams(const sinkd_gguf *g)
{
    sinkd_model_hparams hp;
    char err[256] = "";
    int rc = sinkd_model_hparams_read(g, &hp, err, sizeof err);
    if (rc) {
        CHECK((rc == -EINVAL || rc == -ENOTSUP) && err[0]);
        return;
    }
    CHECK(hp.arch == SINKD_ARCH_LLAMA || hp.arch == SINKD_ARCH_QWEN2);
    CHECK(hp.dim > 0 && hp.n_layers > 0 && hp.n_heads > 0 && hp.n_kv_heads > 0 &&
          hp.ffn_dim > 0 && hp.ctx_len > 0 && hp.n_vocab > 0);
    CHECK(hp.dim % hp.n_heads == 0 && hp.n_heads % hp.n_kv_heads == 0);
    CHECK(hp.head_dim > 0 && hp.head_dim % 2 == 0);
    CHECK(hp.norm_eps > 0 && isfinite(hp.norm_eps) && hp.rope_theta > 0 && isfinite(hp.rope_theta));
    CHECK(hp.rope_scale >= 1.0f && isfinite(hp.rope_scale));
    CHECK(memchr(hp.name, 0, sizeof hp.name) != NULL);
    const sinkd_gguf_tensor *emb = sinkd_gguf_tensor_find(g, "token_embd.weight");
    CHECK(emb && emb->ne[0] == (uint64_t)hp.dim && emb->ne[1] == (uint64_t)hp.n_vocab);
    CHECK(hp.tied_output == (sinkd_gguf_tensor_find(g, "output.weight") == NULL));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sinkd_gguf *g = NULL;
    char err[256] = "";
    int rc = sinkd_gguf_open_mem(data, size, &g, err, sizeof err);
    if (rc) {
        CHECK((rc == -EINVAL || rc == -ENOTSUP) && err[0] && g == NULL);
        return 0;
    }
    CHECK(g && g->base == data && g->file_size == size && !g->mapped);
    CHECK(g->version == 2 || g->version == 3);
    walk_metadata(g);
    walk_tensors(g);
    walk_hparams(g);

    sinkd_tokenizer *t = NULL;
    err[0] = 0;
    rc = sinkd_tokenizer_load(g, &t, err, sizeof err);
    if (rc == 0) {
        walk_tokenizer(g, t, data, size);
        sinkd_tokenizer_free(t);
    } else {
        CHECK((rc == -EINVAL || rc == -ENOTSUP) && err[0] && t == NULL);
    }
    sinkd_gguf_close(g);
    return 0;
}
