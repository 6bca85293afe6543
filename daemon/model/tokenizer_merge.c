/*
 * The merge loop both tokenizers share (the shape of llama.cpp's
 * llm_tokenizer_spm / llm_tokenizer_bpe). A word starts as one symbol per
 * UTF-8 character, kept in a linked list over the word's bytes; every
 * adjacent pair that may merge sits in a max-heap by priority (SentencePiece:
 * the merged piece's score; BPE: minus the merge rank), ties to the left.
 * Popping a pair whose symbols changed since it was pushed is skipped.
 * O(n log n) in the word's length.
 *
 * Left-over symbols that are not tokens fall back to byte tokens
 * (SentencePiece <0xXX>, BPE the byte's mapped character), else <unk>.
 */
#include "tokenizer_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct sym {
    int32_t prev, next; /* -1 at the ends */
    uint32_t start, len; /* bytes in the word; len 0 once merged away */
    int32_t id;         /* token of these bytes, -1 if none */
} sym;

typedef struct pair {
    float prio;
    int32_t left, right;
    uint32_t len; /* left.len + right.len when pushed */
    int32_t id;   /* the merged token */
} pair;

typedef struct heap {
    pair *v;
    size_t n, cap;
} heap;

static bool pair_before(const pair *a, const pair *b)
{
    return a->prio > b->prio || (a->prio == b->prio && a->left < b->left);
}

static int heap_push(heap *h, pair p)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 64;
        pair *v = realloc(h->v, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0 && pair_before(&p, &h->v[(i - 1) / 2])) {
        h->v[i] = h->v[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->v[i] = p;
    return 0;
}

static pair heap_pop(heap *h)
{
    pair top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && pair_before(&h->v[c + 1], &h->v[c]))
            c++;
        if (!pair_before(&h->v[c], &last))
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n)
        h->v[i] = last;
    return top;
}

int32_t tok__merge_find(const sinkd_tokenizer *t, int32_t left, int32_t right, int32_t *rank)
{
    if (!t->merge_key || left < 0 || right < 0)
        return -1;
    uint64_t key = ((uint64_t)(uint32_t)left << 32 | (uint32_t)right) + 1;
    for (uint32_t h = (uint32_t)(key * 0x9E3779B97F4A7C15ull >> 32) & t->merge_mask;;
         h = (h + 1) & t->merge_mask) {
        if (t->merge_key[h] == 0)
            return -1;
        if (t->merge_key[h] == key) {
            *rank = t->merge_rank[h];
            return t->merge_id[h];
        }
    }
}

/* The pair (l, r) as a heap entry, or false when it never merges. */
static bool merge_pair(const sinkd_tokenizer *t, const char *s, const sym *sy, int32_t l,
                       int32_t r, pair *p)
{
    int32_t id, rank;
    if (t->kind == SINKD_TOK_SPM) {
        id = sinkd_tokenizer_find(t, s + sy[l].start, sy[l].len + sy[r].len);
        if (id < 0)
            return false;
        p->prio = t->scores[id];
    } else {
        id = tok__merge_find(t, sy[l].id, sy[r].id, &rank);
        if (id < 0)
            return false;
        p->prio = -(float)rank;
    }
    p->left = l;
    p->right = r;
    p->len = sy[l].len + sy[r].len;
    p->id = id;
    return true;
}

static int try_push(const sinkd_tokenizer *t, const char *s, const sym *sy, heap *h,
                    int32_t l, int32_t r)
{
    pair p;
    if (l < 0 || r < 0 || !merge_pair(t, s, sy, l, r, &p))
        return 0;
    return heap_push(h, p);
}

/* Emit a symbol no merge turned into a token: its bytes as byte tokens. */
static int emit_bytes(const sinkd_tokenizer *t, const char *s, const sym *y, tok__ids *out)
{
    int rc = 0;
    for (uint32_t i = 0; i < y->len && rc == 0; i++) {
        int32_t id;
        if (t->kind == SINKD_TOK_SPM) {
            id = t->byte_tok[(unsigned char)s[y->start + i]];
        } else {
            /* a BPE symbol is one mapped character: one UTF-8 sequence */
            id = sinkd_tokenizer_find(t, s + y->start, y->len);
            i = y->len;
        }
        if (id < 0)
            id = t->unk;
        if (id >= 0)
            rc = tok__ids_push(out, id);
    }
    return rc;
}

int tok__merge_word(const sinkd_tokenizer *t, const char *s, size_t len, tok__ids *out)
{
    if (len == 0)
        return 0;
    if (len > INT32_MAX)
        return -EINVAL;
    if (t->ignore_merges) {
        int32_t id = sinkd_tokenizer_find(t, s, len);
        if (id >= 0)
            return tok__ids_push(out, id);
    }
    sym *sy = malloc(len * sizeof *sy);
    heap h = {0};
    int rc = 0;
    if (!sy)
        return -ENOMEM;
    int32_t n = 0;
    for (size_t b = 0; b < len; n++) {
        uint32_t cp;
        size_t l = tok__utf8((const unsigned char *)s + b, len - b, &cp);
        sy[n] = (sym){.prev = n - 1, .next = -1, .start = (uint32_t)b, .len = (uint32_t)l};
        sy[n].id = sinkd_tokenizer_find(t, s + b, l);
        if (n > 0)
            sy[n - 1].next = n;
        b += l;
    }
    for (int32_t i = 0; i + 1 < n && rc == 0; i++)
        rc = try_push(t, s, sy, &h, i, i + 1);
    while (h.n && rc == 0) {
        pair p = heap_pop(&h);
        sym *l = &sy[p.left], *r = &sy[p.right];
        if (l->len == 0 || r->len == 0 || l->next != p.right || l->len + r->len != p.len)
            continue;
        l->len += r->len;
        l->id = p.id;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0)
            sy[r->next].prev = p.left;
        rc = try_push(t, s, sy, &h, l->prev, p.left);
        if (!rc)
            rc = try_push(t, s, sy, &h, p.left, l->next);
    }
    for (int32_t i = 0; i >= 0 && n > 0 && rc == 0; i = sy[i].next)
        rc = sy[i].id >= 0 ? tok__ids_push(out, sy[i].id) : emit_bytes(t, s, &sy[i], out);
    free(h.v);
    free(sy);
    return rc;
}
