/*
 * Tokenizer internals shared by tokenizer.c (load, specials, decode),
 * tokenizer_merge.c (the symbol merge loop of both algorithms) and
 * tokenizer_pre.c (BPE pre-tokenizers). Not part of the daemon's API.
 */
#ifndef SINKD_TOKENIZER_INTERNAL_H
#define SINKD_TOKENIZER_INTERNAL_H

#include "tokenizer.h"

struct sinkd_tokenizer {
    sinkd_tok_kind kind;
    sinkd_tok_pre pre;
    int32_t n_vocab;
    int32_t bos, eos, unk, eot, eom;
    bool add_bos, add_eos, add_space_prefix;
    bool ignore_merges;     /* Llama 3: a word that is a token is not split */

    char *text;             /* vocabulary texts, concatenated */
    uint32_t *text_off;     /* [n_vocab + 1] */
    char *piece;            /* decoded bytes of each token, concatenated */
    uint32_t *piece_off;    /* [n_vocab + 1] */
    size_t max_piece;       /* longest decoded piece */
    float *scores;          /* [n_vocab] SentencePiece scores */
    uint8_t *types;         /* [n_vocab] SINKD_TOKTYPE_* */
    int32_t byte_tok[256];  /* SentencePiece <0xXX> ids, -1 if absent */

    int32_t *hash;          /* open addressing over texts: id or -1 */
    uint32_t hash_mask;

    /* BPE merges: pair (left id, right id) -> rank and merged id */
    uint64_t *merge_key;    /* (left << 32 | right) + 1, 0 = empty slot */
    int32_t *merge_rank;
    int32_t *merge_id;
    uint32_t merge_mask;

    int32_t *special;       /* control and user-defined ids, longest text first */
    int32_t n_special;
    uint8_t special_first[32]; /* bitmap of their first bytes */
};

/* A growable id array. */
typedef struct tok__ids {
    int32_t *v;
    size_t n, cap;
} tok__ids;

int tok__ids_push(tok__ids *a, int32_t id);

/* Text of token @id. */
static inline const char *tok__text(const sinkd_tokenizer *t, int32_t id, size_t *len)
{
    *len = t->text_off[id + 1] - t->text_off[id];
    return t->text + t->text_off[id];
}

/* Id of the merged BPE pair, its rank in *rank; -1 when the pair never merges. */
int32_t tok__merge_find(const sinkd_tokenizer *t, int32_t left, int32_t right, int32_t *rank);

/* Tokenize one piece of text already in vocabulary form (SentencePiece:
 * spaces escaped; BPE: bytes mapped to code points) by merging symbols,
 * appending the ids to @out. -ENOMEM. */
int tok__merge_word(const sinkd_tokenizer *t, const char *s, size_t len, tok__ids *out);

/* Split @s[0..len) with pre-tokenizer @pre. Calls @fn on each piece in order;
 * stops at and returns the first nonzero result. */
typedef int (*tok__piece_fn)(void *ctx, const char *s, size_t len);
int tok__pretokenize(sinkd_tok_pre pre, const char *s, size_t len, tok__piece_fn fn, void *ctx);

/* Length (1..4) of the UTF-8 sequence starting at @s (at most @left bytes);
 * 1 for an invalid or truncated sequence, and *cp is then the byte itself
 * with bit 31 set so that it matches no class. */
size_t tok__utf8(const unsigned char *s, size_t left, uint32_t *cp);

#endif /* SINKD_TOKENIZER_INTERNAL_H */
