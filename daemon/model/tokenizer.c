/*
 * Tokenizer loading, special-token splitting, encode and decode. The merge
 * loop is in tokenizer_merge.c, the BPE pre-tokenizers in tokenizer_pre.c.
 */
#include "tokenizer_internal.h"

#include "errf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SPM_SPACE "\xE2\x96\x81" /* U+2581, SentencePiece's visible space */

int tok__ids_push(tok__ids *a, int32_t id)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 64;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return 0;
}

static uint32_t tok__hash(const char *s, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

int32_t sinkd_tokenizer_find(const sinkd_tokenizer *t, const char *s, size_t len)
{
    if (!t || (!s && len))
        return -1;
    for (uint32_t h = tok__hash(s, len) & t->hash_mask;; h = (h + 1) & t->hash_mask) {
        int32_t id = t->hash[h];
        if (id < 0)
            return -1;
        size_t l;
        const char *x = tok__text(t, id, &l);
        if (l == len && memcmp(x, s, len) == 0)
            return id;
    }
}

/* Smallest power of two >= 2n (load factor <= 1/2). */
static uint32_t tok__table_size(size_t n)
{
    uint32_t sz = 64;
    while (sz < 2 * n)
        sz <<= 1;
    return sz;
}

/* The byte-level BPE map: printable bytes stand for themselves, the others
 * (controls, space, 0x7F..0xA0, 0xAD) for code points 256, 257, ... in order. */
static uint32_t bpe__byte_cp(unsigned b)
{
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)
        return b;
    unsigned n = 0;
    for (unsigned x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174))
            n++;
    return 256 + n;
}

static size_t utf8_put(uint32_t cp, char *o)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12);
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18);
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Byte @b of a BPE-mapped code point, or -1 if @cp maps no byte. */
static int bpe__cp_byte(uint32_t cp)
{
    if (cp < 256)
        return bpe__byte_cp(cp) == cp ? (int)cp : -1;
    for (unsigned b = 0; b < 256; b++)
        if (bpe__byte_cp(b) == cp)
            return (int)b;
    return -1;
}

static bool spm__byte_token(const char *s, size_t len, unsigned *b)
{
    static const char hex[] = "0123456789ABCDEF";
    if (len != 6 || memcmp(s, "<0x", 3) || s[5] != '>')
        return false;
    const char *h = strchr(hex, s[3]), *l = strchr(hex, s[4]);
    if (!h || !l || !*h || !*l)
        return false;
    *b = (unsigned)((h - hex) * 16 + (l - hex));
    return true;
}

/* The bytes token @id stands for when decoded, written to @o (capacity at
 * least 4 * text length). Returns the length. */
static size_t tok__render(const sinkd_tokenizer *t, int32_t id, char *o)
{
    size_t len;
    const char *s = tok__text(t, id, &len);
    uint8_t type = t->types[id];
    unsigned b;
    if (type == SINKD_TOKTYPE_CONTROL || type == SINKD_TOKTYPE_UNKNOWN ||
        type == SINKD_TOKTYPE_UNUSED) {
        memcpy(o, s, len); /* shown only with SINKD_TOK_DECODE_SPECIAL */
        return len;
    }
    if (t->kind == SINKD_TOK_SPM) {
        if (type == SINKD_TOKTYPE_BYTE && spm__byte_token(s, len, &b)) {
            o[0] = (char)b;
            return 1;
        }
        size_t n = 0;
        for (size_t i = 0; i < len;) {
            if (len - i >= 3 && memcmp(s + i, SPM_SPACE, 3) == 0) {
                o[n++] = ' ';
                i += 3;
            } else {
                o[n++] = s[i++];
            }
        }
        return n;
    }
    if (type == SINKD_TOKTYPE_USER) {
        memcpy(o, s, len);
        return len;
    }
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t l = tok__utf8((const unsigned char *)s + i, len - i, &cp);
        int byte = bpe__cp_byte(cp);
        if (byte >= 0) {
            o[n++] = (char)byte;
        } else {
            memcpy(o + n, s + i, l);
            n += l;
        }
        i += l;
    }
    return n;
}

static int tok__load_vocab(sinkd_tokenizer *t, const sinkd_gguf *g, char *err, size_t errlen)
{
    sinkd_gguf_value toks, arr;
    if (sinkd_gguf_get_arr(g, "tokenizer.ggml.tokens", &toks) ||
        toks.elem_type != SINKD_GGUF_STRING || toks.count == 0 || toks.count > INT32_MAX / 2)
        return model__errf(err, errlen, -EINVAL, "tokenizer: tokenizer.ggml.tokens missing or invalid");
    int32_t n = (int32_t)toks.count;
    t->n_vocab = n;
    /* the array's encoded size bounds the text bytes (each string 8 + len) */
    if (toks.size > UINT32_MAX / 4)
        return model__errf(err, errlen, -EINVAL, "tokenizer: vocabulary too large");
    sinkd_gguf_str *strs = malloc((size_t)n * sizeof *strs);
    t->text_off = malloc(((size_t)n + 1) * sizeof *t->text_off);
    t->piece_off = malloc(((size_t)n + 1) * sizeof *t->piece_off);
    t->text = malloc(toks.size + 1);
    t->piece = malloc(toks.size + 1); /* a piece is never longer than its text */
    t->scores = calloc((size_t)n, sizeof *t->scores);
    t->types = malloc((size_t)n);
    t->hash_mask = tok__table_size((size_t)n) - 1;
    t->hash = malloc(((size_t)t->hash_mask + 1) * sizeof *t->hash);
    if (!strs || !t->text_off || !t->piece_off || !t->text || !t->piece || !t->scores ||
        !t->types || !t->hash) {
        free(strs);
        return -ENOMEM;
    }
    sinkd_gguf_arr_strings(&toks, strs, toks.count);
    uint32_t off = 0;
    for (int32_t i = 0; i < n; i++) {
        t->text_off[i] = off;
        memcpy(t->text + off, strs[i].ptr, strs[i].len);
        off += (uint32_t)strs[i].len;
    }
    t->text_off[n] = off;
    free(strs);

    memset(t->types, SINKD_TOKTYPE_NORMAL, (size_t)n);
    if (sinkd_gguf_get_arr(g, "tokenizer.ggml.token_type", &arr) == 0) {
        int32_t *ty = malloc((size_t)n * sizeof *ty);
        if (!ty)
            return -ENOMEM;
        int rc = arr.count == (uint64_t)n ? sinkd_gguf_arr_i32(&arr, ty, arr.count) : -EINVAL;
        for (int32_t i = 0; rc == 0 && i < n; i++) {
            if (ty[i] < SINKD_TOKTYPE_NORMAL || ty[i] > SINKD_TOKTYPE_BYTE)
                rc = -EINVAL;
            else
                t->types[i] = (uint8_t)ty[i];
        }
        free(ty);
        if (rc)
            return model__errf(err, errlen, rc, "tokenizer: tokenizer.ggml.token_type invalid");
    }
    if (sinkd_gguf_get_arr(g, "tokenizer.ggml.scores", &arr) == 0 &&
        (arr.count != (uint64_t)n || sinkd_gguf_arr_f32(&arr, t->scores, arr.count)))
        return model__errf(err, errlen, -EINVAL, "tokenizer: tokenizer.ggml.scores invalid");

    /* Hash the texts; on duplicates the lowest id wins, as in llama.cpp. */
    memset(t->hash, 0xFF, ((size_t)t->hash_mask + 1) * sizeof *t->hash);
    for (int32_t i = 0; i < n; i++) {
        size_t len;
        const char *s = tok__text(t, i, &len);
        if (sinkd_tokenizer_find(t, s, len) >= 0)
            continue;
        uint32_t h = tok__hash(s, len) & t->hash_mask;
        while (t->hash[h] >= 0)
            h = (h + 1) & t->hash_mask;
        t->hash[h] = i;
    }
    for (int b = 0; b < 256; b++)
        t->byte_tok[b] = -1;
    for (int32_t i = 0; i < n; i++) {
        size_t len;
        const char *s = tok__text(t, i, &len);
        unsigned b;
        if (t->types[i] == SINKD_TOKTYPE_BYTE && spm__byte_token(s, len, &b) && t->byte_tok[b] < 0)
            t->byte_tok[b] = i;
    }
    return 0;
}

static int tok__load_pieces(sinkd_tokenizer *t)
{
    uint32_t off = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        t->piece_off[i] = off;
        size_t len = tok__render(t, i, t->piece + off);
        off += (uint32_t)len;
        if (len > t->max_piece)
            t->max_piece = len;
    }
    t->piece_off[t->n_vocab] = off;
    return 0;
}

static int tok__load_merges(sinkd_tokenizer *t, const sinkd_gguf *g, char *err, size_t errlen)
{
    sinkd_gguf_value arr;
    if (sinkd_gguf_get_arr(g, "tokenizer.ggml.merges", &arr) || arr.elem_type != SINKD_GGUF_STRING)
        return model__errf(err, errlen, -EINVAL, "tokenizer: gpt2 model without tokenizer.ggml.merges");
    if (arr.count > INT32_MAX / 4)
        return model__errf(err, errlen, -EINVAL, "tokenizer: too many merges");
    sinkd_gguf_str *m = malloc((arr.count ? arr.count : 1) * sizeof *m);
    uint32_t size = tok__table_size(arr.count);
    t->merge_mask = size - 1;
    t->merge_key = calloc(size, sizeof *t->merge_key);
    t->merge_rank = malloc(size * sizeof *t->merge_rank);
    t->merge_id = malloc(size * sizeof *t->merge_id);
    if (!m || !t->merge_key || !t->merge_rank || !t->merge_id) {
        free(m);
        return -ENOMEM;
    }
    sinkd_gguf_arr_strings(&arr, m, arr.count);
    int rc = 0;
    for (uint64_t r = 0; r < arr.count; r++) {
        const char *sp = memchr(m[r].ptr, ' ', m[r].len);
        if (!sp || sp == m[r].ptr) {
            rc = model__errf(err, errlen, -EINVAL, "tokenizer: merge %llu is not 'left right'",
                           (unsigned long long)r);
            break;
        }
        size_t ll = (size_t)(sp - m[r].ptr), rl = m[r].len - ll - 1;
        int32_t l = sinkd_tokenizer_find(t, m[r].ptr, ll), rr = sinkd_tokenizer_find(t, sp + 1, rl);
        int32_t id = -1;
        if (l >= 0 && rr >= 0) {
            size_t a, b;
            const char *ls = tok__text(t, l, &a), *rs = tok__text(t, rr, &b);
            char *cat = malloc(a + b + 1);
            if (!cat) {
                rc = -ENOMEM;
                break;
            }
            memcpy(cat, ls, a);
            memcpy(cat + a, rs, b);
            id = sinkd_tokenizer_find(t, cat, a + b);
            free(cat);
        }
        int32_t old;
        if (id < 0 || tok__merge_find(t, l, rr, &old) >= 0)
            continue; /* a merge into no token can never apply; first rank wins */
        uint64_t key = ((uint64_t)(uint32_t)l << 32 | (uint32_t)rr) + 1;
        uint32_t h = (uint32_t)(key * 0x9E3779B97F4A7C15ull >> 32) & t->merge_mask;
        while (t->merge_key[h])
            h = (h + 1) & t->merge_mask;
        t->merge_key[h] = key;
        t->merge_rank[h] = (int32_t)r;
        t->merge_id[h] = id;
    }
    free(m);
    return rc;
}

static int tok__load_specials(sinkd_tokenizer *t)
{
    int32_t n = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        size_t len;
        tok__text(t, i, &len);
        if ((t->types[i] == SINKD_TOKTYPE_CONTROL || t->types[i] == SINKD_TOKTYPE_USER) && len)
            n++;
    }
    t->special = malloc((n ? (size_t)n : 1) * sizeof *t->special);
    if (!t->special)
        return -ENOMEM;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        size_t len;
        const char *s = tok__text(t, i, &len);
        if ((t->types[i] != SINKD_TOKTYPE_CONTROL && t->types[i] != SINKD_TOKTYPE_USER) || !len)
            continue;
        /* insertion by length, longest first, so the longest match wins */
        int32_t j = t->n_special++;
        while (j > 0) {
            size_t pl;
            tok__text(t, t->special[j - 1], &pl);
            if (pl >= len)
                break;
            t->special[j] = t->special[j - 1];
            j--;
        }
        t->special[j] = i;
        t->special_first[(unsigned char)s[0] >> 3] |= (uint8_t)(1u << (s[0] & 7));
    }
    return 0;
}

/* An optional id key: absent means -1; present must be in range. */
static int tok__id_key(const sinkd_gguf *g, const char *key, int32_t n, int32_t *out)
{
    int64_t v;
    int rc = sinkd_gguf_get_i64(g, key, &v);
    *out = -1;
    if (rc == -ENOENT)
        return 0;
    if (rc || v < -1 || v >= n)
        return -EINVAL;
    *out = (int32_t)v;
    return 0;
}

static int tok__load_config(sinkd_tokenizer *t, const sinkd_gguf *g, char *err, size_t errlen)
{
    static const char *const keys[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                       "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.eot_token_id",
                                       "tokenizer.ggml.eom_token_id"};
    int32_t *dst[] = {&t->bos, &t->eos, &t->unk, &t->eot, &t->eom};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (tok__id_key(g, keys[i], t->n_vocab, dst[i]))
            return model__errf(err, errlen, -EINVAL, "tokenizer: %s out of range", keys[i]);
    if (t->unk < 0 && t->kind == SINKD_TOK_SPM)
        t->unk = sinkd_tokenizer_find(t, "<unk>", 5);
    t->add_bos = t->kind == SINKD_TOK_SPM;
    t->add_space_prefix = t->kind == SINKD_TOK_SPM;
    bool b;
    if (sinkd_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b) == 0)
        t->add_bos = b;
    if (sinkd_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &b) == 0)
        t->add_eos = b;
    if (sinkd_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b) == 0 && t->kind == SINKD_TOK_SPM)
        t->add_space_prefix = b;
    if (t->kind == SINKD_TOK_BPE)
        t->add_space_prefix = false;
    if ((t->add_bos && t->bos < 0) || (t->add_eos && t->eos < 0))
        return model__errf(err, errlen, -EINVAL, "tokenizer: add_bos/add_eos without the token id");
    return 0;
}

static int tok__load_kind(sinkd_tokenizer *t, const sinkd_gguf *g, char *err, size_t errlen)
{
    sinkd_gguf_str model, pre;
    if (sinkd_gguf_get_str(g, "tokenizer.ggml.model", &model))
        return model__errf(err, errlen, -EINVAL, "tokenizer: tokenizer.ggml.model missing");
    if (sinkd_gguf_str_eq(model, "llama")) {
        t->kind = SINKD_TOK_SPM;
        t->pre = SINKD_PRE_NONE;
        return 0;
    }
    if (!sinkd_gguf_str_eq(model, "gpt2"))
        return model__errf(err, errlen, -ENOTSUP, "tokenizer: model '%.*s' is not supported (llama, gpt2 are)",
                         (int)(model.len > 64 ? 64 : model.len), model.ptr);
    t->kind = SINKD_TOK_BPE;
    t->pre = SINKD_PRE_GPT2;
    if (sinkd_gguf_get_str(g, "tokenizer.ggml.pre", &pre) == 0 && !sinkd_gguf_str_eq(pre, "default") &&
        !sinkd_gguf_str_eq(pre, "gpt2")) {
        if (sinkd_gguf_str_eq(pre, "llama-bpe") || sinkd_gguf_str_eq(pre, "llama3")) {
            t->pre = SINKD_PRE_LLAMA3;
            t->ignore_merges = true;
        } else if (sinkd_gguf_str_eq(pre, "qwen2")) {
            t->pre = SINKD_PRE_QWEN2;
        } else {
            return model__errf(err, errlen, -ENOTSUP,
                             "tokenizer: pre-tokenizer '%.*s' is not supported (gpt2, llama-bpe, qwen2 are)",
                             (int)(pre.len > 64 ? 64 : pre.len), pre.ptr);
        }
    }
    return 0;
}

int sinkd_tokenizer_load(const sinkd_gguf *g, sinkd_tokenizer **out, char *err, size_t errlen)
{
    if (!g || !out)
        return -EINVAL;
    sinkd_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    int rc = tok__load_kind(t, g, err, errlen);
    if (!rc)
        rc = tok__load_vocab(t, g, err, errlen);
    if (!rc)
        rc = tok__load_config(t, g, err, errlen);
    if (!rc)
        rc = tok__load_pieces(t);
    if (!rc && t->kind == SINKD_TOK_BPE)
        rc = tok__load_merges(t, g, err, errlen);
    if (!rc)
        rc = tok__load_specials(t);
    if (rc) {
        if (rc == -ENOMEM)
            model__errf(err, errlen, rc, "tokenizer: out of memory");
        sinkd_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void sinkd_tokenizer_free(sinkd_tokenizer *t)
{
    if (!t)
        return;
    free(t->text);
    free(t->text_off);
    free(t->piece);
    free(t->piece_off);
    free(t->scores);
    free(t->types);
    free(t->hash);
    free(t->merge_key);
    free(t->merge_rank);
    free(t->merge_id);
    free(t->special);
    free(t);
}

sinkd_tok_kind sinkd_tokenizer_kind(const sinkd_tokenizer *t) { return t->kind; }
int32_t sinkd_tokenizer_n_vocab(const sinkd_tokenizer *t) { return t->n_vocab; }
int32_t sinkd_tokenizer_bos(const sinkd_tokenizer *t) { return t->bos; }
int32_t sinkd_tokenizer_eos(const sinkd_tokenizer *t) { return t->eos; }

bool sinkd_tokenizer_is_eog(const sinkd_tokenizer *t, int32_t id)
{
    return id >= 0 && (id == t->eos || id == t->eot || id == t->eom);
}

int sinkd_tokenizer_type(const sinkd_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab ? t->types[id] : 0;
}

/* Encoding of one stretch of plain text (no special tokens in it). */
typedef struct enc {
    const sinkd_tokenizer *t;
    tok__ids *out;
} enc;

static int enc__bpe_piece(void *ctx, const char *s, size_t len)
{
    enc *e = ctx;
    char *m = malloc(len * 2 + 1); /* every byte maps to a 1- or 2-byte character */
    if (!m)
        return -ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += utf8_put(bpe__byte_cp((unsigned char)s[i]), m + n);
    int rc = tok__merge_word(e->t, m, n, e->out);
    free(m);
    return rc;
}

static int enc__text(const sinkd_tokenizer *t, const char *s, size_t len, bool prefix, tok__ids *out)
{
    if (t->kind == SINKD_TOK_BPE) {
        enc e = {t, out};
        return tok__pretokenize(t->pre, s, len, enc__bpe_piece, &e);
    }
    /* SentencePiece: the whole stretch is one word with spaces escaped */
    size_t cap = (len + 1) * 3;
    char *m = malloc(cap);
    if (!m)
        return -ENOMEM;
    size_t n = 0;
    if (prefix) {
        memcpy(m, SPM_SPACE, 3);
        n = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] == ' ') {
            memcpy(m + n, SPM_SPACE, 3);
            n += 3;
        } else {
            m[n++] = s[i];
        }
    }
    int rc = tok__merge_word(t, m, n, out);
    free(m);
    return rc;
}

/* The special token starting at @s (longest), or -1. */
static int32_t enc__special(const sinkd_tokenizer *t, const char *s, size_t left, unsigned flags)
{
    unsigned char c = (unsigned char)s[0];
    if (!(t->special_first[c >> 3] & (1u << (c & 7))))
        return -1;
    for (int32_t k = 0; k < t->n_special; k++) {
        int32_t id = t->special[k];
        if (t->types[id] == SINKD_TOKTYPE_CONTROL && !(flags & SINKD_TOK_PARSE_SPECIAL))
            continue;
        size_t len;
        const char *x = tok__text(t, id, &len);
        if (len <= left && memcmp(x, s, len) == 0)
            return id;
    }
    return -1;
}

int sinkd_tokenizer_encode(const sinkd_tokenizer *t, const char *text, size_t len,
                           unsigned flags, int32_t **ids, size_t *n)
{
    if (!t || (!text && len) || !ids || !n)
        return -EINVAL;
    tok__ids out = {0};
    int rc = tok__ids_push(&out, 0); /* ensures a non-NULL array */
    out.n = 0;
    if (!rc && (flags & SINKD_TOK_ADD_SPECIAL) && t->add_bos)
        rc = tok__ids_push(&out, t->bos);
    /* SentencePiece's space prefix goes before the text and after each
     * special token, as in llama.cpp. */
    bool prefix = t->add_space_prefix;
    size_t start = 0;
    for (size_t i = 0; i < len && rc == 0;) {
        int32_t sp = enc__special(t, text + i, len - i, flags);
        if (sp < 0) {
            i++;
            continue;
        }
        if (i > start)
            rc = enc__text(t, text + start, i - start, prefix, &out);
        if (!rc)
            rc = tok__ids_push(&out, sp);
        prefix = t->add_space_prefix;
        size_t l;
        tok__text(t, sp, &l);
        i += l;
        start = i;
    }
    if (!rc && len > start)
        rc = enc__text(t, text + start, len - start, prefix, &out);
    if (!rc && (flags & SINKD_TOK_ADD_SPECIAL) && t->add_eos)
        rc = tok__ids_push(&out, t->eos);
    if (rc) {
        free(out.v);
        return rc;
    }
    *ids = out.v;
    *n = out.n;
    return 0;
}

int sinkd_tokenizer_piece(const sinkd_tokenizer *t, int32_t id, unsigned flags,
                          const char **s, size_t *len)
{
    if (!t || !s || !len || id < 0 || id >= t->n_vocab)
        return -EINVAL;
    uint8_t ty = t->types[id];
    if (!(flags & SINKD_TOK_DECODE_SPECIAL) &&
        (ty == SINKD_TOKTYPE_CONTROL || ty == SINKD_TOKTYPE_UNKNOWN || ty == SINKD_TOKTYPE_UNUSED)) {
        *s = t->piece;
        *len = 0;
        return 0;
    }
    *s = t->piece + t->piece_off[id];
    *len = t->piece_off[id + 1] - t->piece_off[id];
    return 0;
}

/* The piece of @id as decoded at this point of a stream: without the one
 * space add_space_prefix put in front of the text. *@started: a piece with
 * bytes came already (then nothing is stripped); set by the first one, even
 * when stripping leaves it empty, so that the space goes once (" a" is two
 * pieces, "▁" and "▁a", and decodes to " a", as SentencePiece does). */
static void dec__piece(const sinkd_tokenizer *t, int32_t id, unsigned flags, bool *started,
                       const char **s, size_t *len)
{
    sinkd_tokenizer_piece(t, id, flags, s, len);
    if (!*started && t->add_space_prefix && *len && (*s)[0] == ' ') {
        (*s)++;
        (*len)--;
        *started = true;
    }
    *started |= *len > 0;
}

int sinkd_tokenizer_decode(const sinkd_tokenizer *t, const int32_t *ids, size_t n,
                           unsigned flags, char **out, size_t *len)
{
    if (!t || (!ids && n) || !out || !len)
        return -EINVAL;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab)
            return -EINVAL;
        total += t->max_piece;
    }
    char *o = malloc(total + 1);
    if (!o)
        return -ENOMEM;
    size_t k = 0;
    bool started = false;
    for (size_t i = 0; i < n; i++) {
        const char *s;
        size_t l;
        dec__piece(t, ids[i], flags, &started, &s, &l);
        memcpy(o + k, s, l);
        k += l;
    }
    o[k] = 0;
    *out = o;
    *len = k;
    return 0;
}

size_t sinkd_tokenizer_max_chunk(const sinkd_tokenizer *t)
{
    /* pending bytes re-emitted as U+FFFD each, then the piece's own bytes
     * (each possibly a U+FFFD) */
    return (t->max_piece + 4) * 3;
}

static size_t put_fffd(char *o) { return utf8_put(0xFFFD, o); }

/* Expected length of a UTF-8 sequence from its lead byte; 0 if invalid. */
static unsigned utf8_need(unsigned char c)
{
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if ((c & 0xF0) == 0xE0) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0;
}

/* Feed one byte; emits whatever becomes decidable. */
static size_t dec__byte(sinkd_detok *st, unsigned char c, char *o)
{
    size_t n = 0;
    if (st->n_pend) {
        if ((c & 0xC0) == 0x80) {
            st->pend[st->n_pend++] = c;
            if (st->n_pend < st->need)
                return 0;
            uint32_t cp;
            if (tok__utf8(st->pend, st->n_pend, &cp) == st->n_pend) {
                memcpy(o, st->pend, st->n_pend);
                n = st->n_pend;
            } else {
                n = put_fffd(o); /* overlong, surrogate or beyond U+10FFFF */
            }
            st->n_pend = 0;
            return n;
        }
        n = put_fffd(o); /* the character was cut short */
        st->n_pend = 0;
    }
    unsigned need = utf8_need(c);
    if (need == 1) {
        o[n++] = (char)c;
    } else if (need == 0) {
        n += put_fffd(o + n);
    } else {
        st->pend[0] = c;
        st->n_pend = 1;
        st->need = (uint8_t)need;
    }
    return n;
}

int sinkd_detok_push(const sinkd_tokenizer *t, sinkd_detok *st, int32_t id, unsigned flags,
                     char *out, size_t cap, size_t *n)
{
    if (!t || !st || !out || !n || id < 0 || id >= t->n_vocab)
        return -EINVAL;
    if (cap < sinkd_tokenizer_max_chunk(t))
        return -ENOSPC;
    const char *s;
    size_t len, k = 0;
    bool started = st->started;
    dec__piece(t, id, flags, &started, &s, &len);
    st->started = started;
    for (size_t i = 0; i < len; i++)
        k += dec__byte(st, (unsigned char)s[i], out + k);
    *n = k;
    return 0;
}

void sinkd_detok_flush(sinkd_detok *st, char *out, size_t cap, size_t *n)
{
    *n = 0;
    if (st->n_pend && cap >= 3)
        *n = put_fffd(out);
    *st = (sinkd_detok)SINKD_DETOK_INIT;
}
