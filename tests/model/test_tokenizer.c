/*
 * Tokenizers. SentencePiece on the reference model's vocabulary, whose
 * encoding rule is documented independently of sinkd (BOS, then byte b ->
 * b + 3, space -> 259), and on a small scored vocabulary; byte-level BPE on a
 * hand-made vocabulary and merge list whose encodings are derived by hand in
 * the comments; the pre-tokenizer regexes on hand-split strings; streaming
 * decode of characters split across tokens.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "golden.h"
#include "gguf_build.h"
#include "tokenizer.h"
#include "tokenizer_internal.h"

#define TINY SINKD_TEST_DATA "/sinkd-ref-tiny-f32.gguf"

static sinkd_tokenizer *load_path(const char *path)
{
    sinkd_gguf *g = NULL;
    sinkd_tokenizer *t = NULL;
    char err[256] = "";
    cr_assert_eq(sinkd_gguf_open(path, &g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(sinkd_tokenizer_load(g, &t, err, sizeof err), 0, "%s", err);
    sinkd_gguf_close(g); /* the tokenizer keeps its own copy */
    return t;
}

static sinkd_tokenizer *load_mem(uint8_t *p, size_t len)
{
    sinkd_gguf *g = NULL;
    sinkd_tokenizer *t = NULL;
    char err[256] = "";
    cr_assert_eq(sinkd_gguf_open_mem(p, len, &g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(sinkd_tokenizer_load(g, &t, err, sizeof err), 0, "%s", err);
    sinkd_gguf_close(g);
    free(p);
    return t;
}

/* The reference vocabulary's documented rule. */
static size_t tiny_rule(const char *s, size_t len, int32_t *out)
{
    size_t n = 0;
    out[n++] = 1;
    for (size_t i = 0; i < len; i++)
        out[n++] = s[i] == ' ' ? 259 : (unsigned char)s[i] + 3;
    return n;
}

static void expect_ids(const sinkd_tokenizer *t, const char *s, size_t len, unsigned flags,
                       const int32_t *want, size_t n_want)
{
    int32_t *ids = NULL;
    size_t n = 0;
    cr_assert_eq(sinkd_tokenizer_encode(t, s, len, flags, &ids, &n), 0);
    cr_assert_not_null(ids);
    cr_assert_eq(n, n_want, "'%.*s': %zu ids, expected %zu", (int)len, s, n, n_want);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(ids[i], want[i], "'%.*s': id %zu is %d, expected %d", (int)len, s, i, ids[i], want[i]);
    free(ids);
}

static bool valid_utf8(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = tok__utf8((const unsigned char *)s + i, n - i, &cp);
        if (cp & 0x80000000u)
            return false;
        i += l;
    }
    return true;
}

/* Random valid UTF-8 with 1- to 4-byte characters (and spaces). */
static size_t random_utf8(uint64_t *x, char *o, size_t chars)
{
    size_t n = 0;
    for (size_t c = 0; c < chars; c++) {
        *x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
        uint32_t cp;
        switch (*x % 5) {
        case 0: cp = ' '; break;
        case 1: cp = 0x21 + (uint32_t)(*x >> 8) % 0x5E; break;
        case 2: cp = 0x80 + (uint32_t)(*x >> 8) % 0x780; break;
        case 3: cp = 0x800 + (uint32_t)(*x >> 8) % 0xF800; break;
        default: cp = 0x10000 + (uint32_t)(*x >> 8) % 0x100000; break;
        }
        if (cp >= 0xD800 && cp <= 0xDFFF)
            cp = 'x';
        if (cp < 0x80) {
            o[n++] = (char)cp;
        } else if (cp < 0x800) {
            o[n++] = (char)(0xC0 | cp >> 6);
            o[n++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            o[n++] = (char)(0xE0 | cp >> 12);
            o[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            o[n++] = (char)(0x80 | (cp & 0x3F));
        } else {
            o[n++] = (char)(0xF0 | cp >> 18);
            o[n++] = (char)(0x80 | ((cp >> 12) & 0x3F));
            o[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            o[n++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    return n;
}

Test(spm, reference_vocab_matches_the_documented_rule)
{
    sinkd_tokenizer *t = load_path(TINY);
    cr_assert_eq(sinkd_tokenizer_kind(t), SINKD_TOK_SPM);
    cr_assert_eq(sinkd_tokenizer_n_vocab(t), 260);
    cr_assert_eq(sinkd_tokenizer_bos(t), 1);
    cr_assert_eq(sinkd_tokenizer_eos(t), 2);
    cr_assert(sinkd_tokenizer_is_eog(t, 2));
    cr_assert_not(sinkd_tokenizer_is_eog(t, 1));

    golden gd;
    cr_assert_eq(golden_load(SINKD_TEST_DATA "/golden-tiny.txt", &gd), 0);
    int32_t want[4096];
    for (size_t c = 0; c < gd.n_cases; c++) {
        golden_case *k = &gd.cases[c];
        size_t n = tiny_rule(k->prompt, k->prompt_len, want);
        cr_assert_eq(n, k->n_prompt);
        cr_assert_eq(memcmp(want, k->prompt_ids, n * 4), 0, "rule disagrees with the golden ids");
        expect_ids(t, k->prompt, k->prompt_len, SINKD_TOK_ADD_SPECIAL, k->prompt_ids, k->n_prompt);
    }
    golden_free(&gd);

    uint64_t x = 88172645463325252ull;
    char s[1024];
    for (int iter = 0; iter < 200; iter++) {
        size_t len = random_utf8(&x, s, (size_t)(iter % 40));
        size_t n = tiny_rule(s, len, want);
        expect_ids(t, s, len, SINKD_TOK_ADD_SPECIAL, want, n);
        expect_ids(t, s, len, 0, want + 1, n - 1); /* no BOS without the flag */

        /* round trip through decode */
        int32_t *ids;
        size_t nid, dlen;
        char *back;
        cr_assert_eq(sinkd_tokenizer_encode(t, s, len, SINKD_TOK_ADD_SPECIAL, &ids, &nid), 0);
        cr_assert_eq(sinkd_tokenizer_decode(t, ids, nid, 0, &back, &dlen), 0);
        cr_assert_eq(dlen, len);
        cr_assert_eq(memcmp(back, s, len), 0);
        free(back);

        /* streaming: every chunk valid UTF-8, the concatenation the text */
        sinkd_detok st = SINKD_DETOK_INIT;
        size_t cap = sinkd_tokenizer_max_chunk(t), total = 0;
        char *chunk = malloc(cap), out[1024];
        for (size_t i = 0; i < nid; i++) {
            size_t k;
            cr_assert_eq(sinkd_detok_push(t, &st, ids[i], 0, chunk, cap, &k), 0);
            cr_assert(valid_utf8(chunk, k));
            memcpy(out + total, chunk, k);
            total += k;
        }
        size_t k;
        sinkd_detok_flush(&st, chunk, cap, &k);
        cr_assert_eq(k, 0);
        cr_assert_eq(total, len);
        cr_assert_eq(memcmp(out, s, len), 0);
        free(chunk);
        free(ids);
    }
    sinkd_tokenizer_free(t);
}

Test(spm, streaming_holds_a_split_character)
{
    sinkd_tokenizer *t = load_path(TINY);
    size_t cap = sinkd_tokenizer_max_chunk(t), n;
    char *o = malloc(cap);
    sinkd_detok st = SINKD_DETOK_INIT;
    /* U+20AC EURO SIGN = E2 82 AC, one byte token each (b + 3) */
    cr_assert_eq(sinkd_detok_push(t, &st, 0xE2 + 3, 0, o, cap, &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_eq(sinkd_detok_push(t, &st, 0x82 + 3, 0, o, cap, &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_eq(sinkd_detok_push(t, &st, 0xAC + 3, 0, o, cap, &n), 0);
    cr_assert_eq(n, 3);
    cr_assert_eq(memcmp(o, "\xE2\x82\xAC", 3), 0);
    /* a character cut short by an ASCII byte: U+FFFD then the byte */
    cr_assert_eq(sinkd_detok_push(t, &st, 0xC3 + 3, 0, o, cap, &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_eq(sinkd_detok_push(t, &st, 'a' + 3, 0, o, cap, &n), 0);
    cr_assert_eq(n, 4);
    cr_assert_eq(memcmp(o, "\xEF\xBF\xBD" "a", 4), 0);
    /* a byte that starts no character */
    cr_assert_eq(sinkd_detok_push(t, &st, 0xFF + 3, 0, o, cap, &n), 0);
    cr_assert_eq(n, 3);
    cr_assert_eq(memcmp(o, "\xEF\xBF\xBD", 3), 0);
    /* end of stream inside a character */
    cr_assert_eq(sinkd_detok_push(t, &st, 0xF0 + 3, 0, o, cap, &n), 0);
    sinkd_detok_flush(&st, o, cap, &n);
    cr_assert_eq(n, 3);
    cr_assert_eq(st.n_pend, 0);
    /* BOS decodes to nothing unless asked */
    cr_assert_eq(sinkd_detok_push(t, &st, 1, 0, o, cap, &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_eq(sinkd_detok_push(t, &st, 1, SINKD_TOK_DECODE_SPECIAL, o, cap, &n), 0);
    cr_assert_eq(n, 3);
    cr_assert_eq(memcmp(o, "<s>", 3), 0);
    cr_assert_eq(sinkd_detok_push(t, &st, 260, 0, o, cap, &n), -EINVAL);
    cr_assert_eq(sinkd_detok_push(t, &st, 1, 0, o, 2, &n), -ENOSPC);
    free(o);
    sinkd_tokenizer_free(t);
}

Test(spm, control_tokens_only_when_asked)
{
    sinkd_tokenizer *t = load_path(TINY);
    const char *s = "a<s>b";
    int32_t special[] = {'a' + 3, 1, 'b' + 3};
    expect_ids(t, s, 5, SINKD_TOK_PARSE_SPECIAL, special, 3);
    int32_t plain[5];
    for (int i = 0; i < 5; i++)
        plain[i] = (unsigned char)s[i] + 3;
    expect_ids(t, s, 5, 0, plain, 5);
    sinkd_tokenizer_free(t);
}

/* A scored SentencePiece vocabulary with add_space_prefix. */
static sinkd_tokenizer *small_spm(void)
{
    static char bytes[256][8];
    const char *tok[300];
    float score[300];
    int32_t type[300];
    int n = 0;
    tok[n] = "<unk>", score[n] = 0, type[n++] = 2;
    tok[n] = "<s>", score[n] = 0, type[n++] = 3;
    tok[n] = "</s>", score[n] = 0, type[n++] = 3;
    for (int b = 0; b < 256; b++) {
        snprintf(bytes[b], sizeof bytes[b], "<0x%02X>", b);
        tok[n] = bytes[b], score[n] = 0, type[n++] = 6;
    }
    /* 259.. */
    const char *pieces[] = {"\xE2\x96\x81", "a", "b", "c", "ab", "bc", "\xE2\x96\x81" "c"};
    const float sc[] = {-1, -1, -1, -1, -2, -1.5f, -4};
    for (int i = 0; i < 7; i++)
        tok[n] = pieces[i], score[n] = sc[i], type[n++] = 1;
    gb_file f = GB_FILE_INIT;
    gb_kv_str(&f, "tokenizer.ggml.model", "llama");
    gb_kv_strs(&f, "tokenizer.ggml.tokens", tok, (size_t)n);
    gb_kv_f32s(&f, "tokenizer.ggml.scores", score, (size_t)n);
    gb_kv_i32s(&f, "tokenizer.ggml.token_type", type, (size_t)n);
    gb_kv_u32(&f, "tokenizer.ggml.bos_token_id", 1);
    gb_kv_u32(&f, "tokenizer.ggml.eos_token_id", 2);
    gb_kv_bool(&f, "tokenizer.ggml.add_space_prefix", 1);
    size_t len;
    uint8_t *p = gb_finish(&f, 3, &len);
    return load_mem(p, len);
}

/* add_space_prefix adds one space in front of the text, and decoding takes
 * exactly that one away again, also when the text itself starts with
 * spaces: " a" is "▁" "▁" "a" and decodes to " a" (SentencePiece's round
 * trip), in one call and streamed token by token. */
Test(spm, decode_takes_the_added_space_away_once)
{
    static const char *const texts[] = {" a", "  a", "   ab", "a b", " c", "c", "a  ", " "};
    sinkd_tokenizer *t = small_spm();
    size_t cap = sinkd_tokenizer_max_chunk(t);
    char *chunk = malloc(cap);
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        const char *x = texts[i];
        int32_t *ids;
        size_t n, len;
        char *back;
        cr_assert_eq(sinkd_tokenizer_encode(t, x, strlen(x), SINKD_TOK_ADD_SPECIAL, &ids, &n), 0);
        cr_assert_eq(sinkd_tokenizer_decode(t, ids, n, 0, &back, &len), 0);
        cr_assert(len == strlen(x) && !memcmp(back, x, len), "'%s' decodes to '%.*s'", x, (int)len,
                  back);
        free(back);
        sinkd_detok st = SINKD_DETOK_INIT;
        char out[64];
        size_t total = 0, k;
        for (size_t j = 0; j < n; j++) {
            cr_assert_eq(sinkd_detok_push(t, &st, ids[j], 0, chunk, cap, &k), 0);
            cr_assert_lt(total + k, sizeof out);
            memcpy(out + total, chunk, k);
            total += k;
        }
        cr_assert(total == strlen(x) && !memcmp(out, x, total), "'%s' streams as '%.*s'", x,
                  (int)total, out);
        free(ids);
    }
    free(chunk);
    sinkd_tokenizer_free(t);
}

Test(spm, best_score_merges_first)
{
    sinkd_tokenizer *t = small_spm();
    enum { SP = 259, A, B, C, AB, BC, SPC };
    /* "abc" -> "▁abc": pairs (▁,a) none, (a,b) ab -2, (b,c) bc -1.5: bc
     * scores higher and merges first; then (a,bc) and (▁,a) are no pieces.
     * A left-to-right greedy would give ▁ ab c instead. */
    int32_t w1[] = {1, SP, A, BC};
    expect_ids(t, "abc", 3, SINKD_TOK_ADD_SPECIAL, w1, 4);
    /* "ab c" -> "▁ab▁c": ab merges (only pair), ▁c merges (-4) */
    int32_t w2[] = {SP, AB, SPC};
    expect_ids(t, "ab c", 4, 0, w2, 3);
    /* "x" has no piece: byte fallback <0x78> = 3 + 0x78 */
    int32_t w3[] = {SP, 3 + 'x'};
    expect_ids(t, "x", 1, 0, w3, 2);
    /* decode drops the prefix space */
    char *s;
    size_t len;
    cr_assert_eq(sinkd_tokenizer_decode(t, w1, 4, 0, &s, &len), 0);
    cr_assert_str_eq(s, "abc");
    free(s);
    cr_assert_eq(sinkd_tokenizer_decode(t, w2, 3, 0, &s, &len), 0);
    cr_assert_str_eq(s, "ab c");
    free(s);
    sinkd_tokenizer_free(t);
}

/* GPT-2 style byte-level vocabulary: ids 0..255 are the mapped byte
 * characters (id == byte value), then merged tokens and two specials. */
static char bpe_chars[256][4];

static const char *bpe_char(unsigned b)
{
    /* the byte-to-unicode table, written out independently of sinkd */
    unsigned cp = b, n = 0;
    if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)) {
        for (unsigned x = 0; x < b; x++)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174))
                n++;
        cp = 256 + n;
    }
    char *o = bpe_chars[b];
    if (cp < 0x80) {
        o[0] = (char)cp;
        o[1] = 0;
    } else {
        o[0] = (char)(0xC0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3F));
        o[2] = 0;
    }
    return o;
}

static sinkd_tokenizer *small_bpe(const char *pre)
{
    const char *tok[300];
    int32_t type[300];
    int n = 0;
    for (unsigned b = 0; b < 256; b++)
        tok[n] = bpe_char(b), type[n++] = 1;
    /* 256.. */
    const char *merged[] = {"th", "the", "\xC4\xA0" "c", "at", "\xC4\xA0" "cat", "bc", "ab"};
    for (int i = 0; i < 7; i++)
        tok[n] = merged[i], type[n++] = 1;
    tok[n] = "<|eot|>", type[n++] = 3; /* 263 */
    tok[n] = "<u>", type[n++] = 4;     /* 264 */
    const char *merges[] = {"t h", "th e", "\xC4\xA0 c", "a t", "\xC4\xA0" "c at", "b c", "a b"};
    gb_file f = GB_FILE_INIT;
    gb_kv_str(&f, "tokenizer.ggml.model", "gpt2");
    if (pre)
        gb_kv_str(&f, "tokenizer.ggml.pre", pre);
    gb_kv_strs(&f, "tokenizer.ggml.tokens", tok, (size_t)n);
    gb_kv_i32s(&f, "tokenizer.ggml.token_type", type, (size_t)n);
    gb_kv_strs(&f, "tokenizer.ggml.merges", merges, 7);
    gb_kv_u32(&f, "tokenizer.ggml.eos_token_id", 263);
    size_t len;
    uint8_t *p = gb_finish(&f, 3, &len);
    return load_mem(p, len);
}

Test(bpe, merges_by_rank)
{
    sinkd_tokenizer *t = small_bpe(NULL);
    enum { TH = 256, THE, GC, AT, GCAT, BC, AB, EOT, USER };
    cr_assert_eq(sinkd_tokenizer_kind(t), SINKD_TOK_BPE);
    cr_assert_eq(sinkd_tokenizer_bos(t), -1);
    /* "the cat": pieces "the", " cat". t h e -> th (rank 0) -> the (1).
     * Ġ c a t: (Ġ,c) rank 2 before (a,t) rank 3 -> Ġc, at -> Ġcat (4). */
    int32_t w1[] = {THE, GCAT};
    expect_ids(t, "the cat", 7, SINKD_TOK_ADD_SPECIAL, w1, 2);
    /* "abc": (b,c) rank 5 beats (a,b) rank 6 -> a, bc */
    int32_t w2[] = {'a', BC};
    expect_ids(t, "abc", 3, 0, w2, 2);
    /* " the": Ġ t h e -> Ġ, the (no merge with Ġ) */
    int32_t w3[] = {' ', THE};
    expect_ids(t, " the", 4, 0, w3, 2);
    /* "é" = C3 A9: both bytes map to themselves (>= 174, 161..172) */
    int32_t w4[] = {0xC3, 0xA9};
    expect_ids(t, "\xC3\xA9", 2, 0, w4, 2);
    /* specials: control only when asked, user-defined always */
    int32_t w5[] = {'a', EOT, USER};
    expect_ids(t, "a<|eot|><u>", 11, SINKD_TOK_PARSE_SPECIAL, w5, 3);
    int32_t w6[] = {'a', '<', '|', 'e', 'o', 't', '|', '>', USER};
    expect_ids(t, "a<|eot|><u>", 11, 0, w6, 9);
    cr_assert(sinkd_tokenizer_is_eog(t, EOT));

    /* decode maps the characters back to bytes */
    int32_t ids[] = {THE, GCAT, ' ', 0xC3, 0xA9, '\n', EOT, USER};
    char *s;
    size_t len;
    cr_assert_eq(sinkd_tokenizer_decode(t, ids, 8, 0, &s, &len), 0);
    cr_assert_str_eq(s, "the cat \xC3\xA9\n<u>");
    free(s);
    cr_assert_eq(sinkd_tokenizer_decode(t, ids, 8, SINKD_TOK_DECODE_SPECIAL, &s, &len), 0);
    cr_assert_str_eq(s, "the cat \xC3\xA9\n<|eot|><u>");
    free(s);

    /* random UTF-8 round trips */
    uint64_t x = 0x9E3779B97F4A7C15ull;
    char buf[512];
    for (int iter = 0; iter < 200; iter++) {
        size_t n = random_utf8(&x, buf, (size_t)(iter % 30)), nid;
        int32_t *v;
        cr_assert_eq(sinkd_tokenizer_encode(t, buf, n, 0, &v, &nid), 0);
        cr_assert_eq(sinkd_tokenizer_decode(t, v, nid, 0, &s, &len), 0);
        cr_assert_eq(len, n);
        cr_assert_eq(memcmp(s, buf, n), 0);
        free(s);
        free(v);
    }
    sinkd_tokenizer_free(t);
}

Test(bpe, unknown_pre_tokenizer_is_refused)
{
    const char *tok[] = {"a"};
    const char *merges[] = {"a a"};
    gb_file f = GB_FILE_INIT;
    gb_kv_str(&f, "tokenizer.ggml.model", "gpt2");
    gb_kv_str(&f, "tokenizer.ggml.pre", "falcon");
    gb_kv_strs(&f, "tokenizer.ggml.tokens", tok, 1);
    gb_kv_strs(&f, "tokenizer.ggml.merges", merges, 1);
    size_t len;
    uint8_t *p = gb_finish(&f, 3, &len);
    sinkd_gguf *g;
    sinkd_tokenizer *t = NULL;
    char err[256] = "";
    cr_assert_eq(sinkd_gguf_open_mem(p, len, &g, err, sizeof err), 0);
    cr_assert_eq(sinkd_tokenizer_load(g, &t, err, sizeof err), -ENOTSUP);
    cr_assert(strstr(err, "falcon"), "%s", err);
    cr_assert_null(t);
    sinkd_gguf_close(g);
    free(p);
}

/* Pre-tokenizer pieces joined with '|'. */
typedef struct joined {
    char s[512];
    size_t n;
} joined;

static int join_piece(void *ctx, const char *s, size_t len)
{
    joined *j = ctx;
    if (j->n)
        j->s[j->n++] = '|';
    memcpy(j->s + j->n, s, len);
    j->n += len;
    j->s[j->n] = 0;
    return 0;
}

static void expect_split(sinkd_tok_pre pre, const char *text, const char *want)
{
    joined j = {.n = 0};
    j.s[0] = 0;
    cr_assert_eq(tok__pretokenize(pre, text, strlen(text), join_piece, &j), 0);
    cr_assert_str_eq(j.s, want, "pre %d of '%s'", pre, text);
}

Test(bpe, pre_tokenizers_split_as_the_regexes)
{
    /* llama-bpe: letters with one leading non-letter; digits by three;
     * punctuation with trailing newlines; a lone space before a digit run;
     * of two spaces before a word, the last prefixes the word;
     * case-insensitive contractions. */
    expect_split(SINKD_PRE_LLAMA3, "Hello  world!!\n\n 123456 I'M",
                 "Hello| | world|!!\n\n| |123|456| I|'M");
    /* \s*[\r\n]+ takes spaces up to the last newline; \s+(?!\S) at the end */
    expect_split(SINKD_PRE_LLAMA3, "a \n \nb  ", "a| \n \n|b|  ");
    /* a letter run in another script, digits of another script */
    expect_split(SINKD_PRE_LLAMA3, "\xCE\xB1\xCE\xB2 \xD9\xA1\xD9\xA2", "\xCE\xB1\xCE\xB2| |\xD9\xA1\xD9\xA2");
    /* qwen2: one digit per piece */
    expect_split(SINKD_PRE_QWEN2, "x 2024", "x| |2|0|2|4");
    /* gpt2: case-sensitive contractions, " ?\p{N}+" keeps the digit run whole */
    expect_split(SINKD_PRE_GPT2, "Hello  world!! 123 it's IT'S", "Hello| | world|!!| 123| it|'s| IT|'|S");
}
