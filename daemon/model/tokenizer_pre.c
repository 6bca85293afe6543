/*
 * BPE pre-tokenizers, the regular expressions of the reference tokenizers
 * written out as hand matchers over code points. Each alternative is tried in
 * the regex's order at the current position; the first that matches gives
 * the piece (as a backtracking regex engine would):
 *
 * gpt2:      's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * llama-bpe: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *            ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * qwen2:     as llama-bpe with \p{N} instead of \p{N}{1,3}
 *
 * \p{L} and \p{N} come from unicode_tab.h (generated); \s is Unicode
 * White_Space. Invalid UTF-8 bytes belong to no class: they match
 * [^\s\p{L}\p{N}] like punctuation.
 */
#include "tokenizer_internal.h"

#include <errno.h>
#include <stdlib.h>

#include "unicode_tab.h"

size_t tok__utf8(const unsigned char *s, size_t left, uint32_t *cp)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if ((c & 0xE0) == 0xC0) {
        n = 2, v = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        n = 3, v = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        n = 4, v = c & 0x07, min = 0x10000;
    } else {
        goto bad;
    }
    if (n > left)
        goto bad;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            goto bad;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        goto bad;
    *cp = v;
    return n;
bad:
    *cp = 0x80000000u | c;
    return 1;
}

static bool pre__in(const uint32_t (*tab)[2], size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < tab[mid][0])
            hi = mid;
        else if (cp > tab[mid][1])
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

static bool is_letter(uint32_t cp)
{
    if (cp < 0x80)
        return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return pre__in(unicode__letters, sizeof unicode__letters / sizeof unicode__letters[0], cp);
}

static bool is_number(uint32_t cp)
{
    if (cp < 0x80)
        return cp >= '0' && cp <= '9';
    return pre__in(unicode__numbers, sizeof unicode__numbers / sizeof unicode__numbers[0], cp);
}

static bool is_space(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

static bool is_crlf(uint32_t cp) { return cp == '\r' || cp == '\n'; }
/* [^\s\p{L}\p{N}] */
static bool is_other(uint32_t cp) { return !is_space(cp) && !is_letter(cp) && !is_number(cp); }

/* The text as code points with their byte offsets (off[n] = byte length). */
typedef struct cps {
    uint32_t *cp;
    size_t *off;
    size_t n;
} cps;

static uint32_t at(const cps *c, size_t i) { return i < c->n ? c->cp[i] : 0x80000000u; }

static uint32_t lower(uint32_t cp) { return cp < 0x80 ? (cp | 0x20) : cp; }

/* 's 't 're 've 'm 'll 'd at @i: code points matched, or 0. */
static size_t pre__contraction(const cps *c, size_t i, bool fold)
{
    if (at(c, i) != '\'')
        return 0;
    uint32_t a = at(c, i + 1), b = at(c, i + 2);
    if (fold) {
        a = lower(a);
        b = lower(b);
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd')
        return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        return 3;
    return 0;
}

static size_t run(const cps *c, size_t i, bool (*cls)(uint32_t), size_t max)
{
    size_t j = i;
    while (j < c->n && j - i < max && cls(at(c, j)))
        j++;
    return j - i;
}

/* \s*[\r\n]+ | \s+(?!\S) | \s+ at @i, which is a space: code points matched. */
static size_t pre__spaces(const cps *c, size_t i, bool newline_alt)
{
    size_t e = i + run(c, i, is_space, SIZE_MAX);
    if (newline_alt) {
        size_t last = SIZE_MAX;
        for (size_t k = i; k < e; k++)
            if (is_crlf(at(c, k)))
                last = k;
        if (last != SIZE_MAX)
            return last + 1 - i;
    }
    if (e == c->n || e - i == 1)
        return e - i;      /* \s+(?!\S) at the end, or the plain \s+ */
    return e - i - 1;      /* leave the last space to prefix the next word */
}

static size_t pre__gpt2(const cps *c, size_t i)
{
    size_t m = pre__contraction(c, i, false);
    if (m)
        return m;
    size_t sp = at(c, i) == ' ' ? 1 : 0;
    if (is_letter(at(c, i + sp)))
        return sp + run(c, i + sp, is_letter, SIZE_MAX);
    if (is_number(at(c, i + sp)))
        return sp + run(c, i + sp, is_number, SIZE_MAX);
    if (is_other(at(c, i + sp)) && i + sp < c->n)
        return sp + run(c, i + sp, is_other, SIZE_MAX);
    return pre__spaces(c, i, false);
}

static size_t pre__llama3(const cps *c, size_t i, size_t max_digits)
{
    size_t m = pre__contraction(c, i, true);
    if (m)
        return m;
    uint32_t x = at(c, i);
    if (is_letter(x))
        return run(c, i, is_letter, SIZE_MAX);
    if (!is_crlf(x) && !is_number(x) && is_letter(at(c, i + 1)))
        return 1 + run(c, i + 1, is_letter, SIZE_MAX);
    if (is_number(x))
        return run(c, i, is_number, max_digits);
    size_t sp = x == ' ' ? 1 : 0;
    if (i + sp < c->n && is_other(at(c, i + sp))) {
        size_t j = i + sp + run(c, i + sp, is_other, SIZE_MAX);
        return j + run(c, j, is_crlf, SIZE_MAX) - i;
    }
    return pre__spaces(c, i, true);
}

int tok__pretokenize(sinkd_tok_pre pre, const char *s, size_t len, tok__piece_fn fn, void *ctx)
{
    if (len == 0)
        return 0;
    cps c = {.cp = malloc(len * sizeof *c.cp), .off = malloc((len + 1) * sizeof *c.off)};
    int rc = 0;
    if (!c.cp || !c.off) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t b = 0; b < len;) {
        c.off[c.n] = b;
        b += tok__utf8((const unsigned char *)s + b, len - b, &c.cp[c.n]);
        c.n++;
    }
    c.off[c.n] = len;
    for (size_t i = 0; i < c.n && rc == 0;) {
        size_t m;
        switch (pre) {
        case SINKD_PRE_LLAMA3: m = pre__llama3(&c, i, 3); break;
        case SINKD_PRE_QWEN2: m = pre__llama3(&c, i, 1); break;
        default: m = pre__gpt2(&c, i); break;
        }
        if (m == 0)
            m = 1; /* unreachable with these patterns; never loop forever */
        rc = fn(ctx, s + c.off[i], c.off[i + m] - c.off[i]);
        i += m;
    }
out:
    free(c.cp);
    free(c.off);
    return rc;
}
