/*
 * Tokenizers read from a GGUF file's tokenizer.ggml.* metadata:
 *
 *   llama  SentencePiece: pieces with scores, merged best score first; a
 *          space is the piece "▁" (U+2581); characters no piece covers fall
 *          back to the byte tokens <0xXX>.
 *   gpt2   byte-level BPE: text is split by a pre-tokenizer regex (gpt2,
 *          llama-bpe for Llama 3, qwen2; written out by hand in
 *          tokenizer_pre.c), each piece's bytes are mapped to printable code
 *          points (the byte-to-unicode table) and merged by rank.
 *
 * Special tokens (token type 3 "control" and 4 "user-defined") are found in
 * the text before it is split: user-defined ones always, control ones only
 * with SINKD_TOK_PARSE_SPECIAL (so that user text cannot forge "<s>").
 *
 * A tokenizer is immutable after load and safe to share between threads.
 */
#ifndef SINKD_TOKENIZER_H
#define SINKD_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

typedef enum sinkd_tok_kind {
    SINKD_TOK_SPM = 1, /* tokenizer.ggml.model = llama */
    SINKD_TOK_BPE = 2, /* tokenizer.ggml.model = gpt2 */
} sinkd_tok_kind;

typedef enum sinkd_tok_pre {
    SINKD_PRE_NONE = 0,   /* SentencePiece: no pre-tokenizer */
    SINKD_PRE_GPT2 = 1,   /* default / "gpt2" */
    SINKD_PRE_LLAMA3 = 2, /* "llama-bpe" ("llama3") */
    SINKD_PRE_QWEN2 = 3,  /* "qwen2" */
} sinkd_tok_pre;

/* Token types as GGUF numbers them (tokenizer.ggml.token_type). */
enum {
    SINKD_TOKTYPE_NORMAL = 1,
    SINKD_TOKTYPE_UNKNOWN = 2,
    SINKD_TOKTYPE_CONTROL = 3,
    SINKD_TOKTYPE_USER = 4,
    SINKD_TOKTYPE_UNUSED = 5,
    SINKD_TOKTYPE_BYTE = 6,
};

/* Encode flags. */
/* add BOS / EOS where the model asks for them (add_bos_token, add_eos_token) */
#define SINKD_TOK_ADD_SPECIAL 0x1u
#define SINKD_TOK_PARSE_SPECIAL 0x2u /* match control tokens in the text */
/* Decode flag: render control tokens as their text instead of nothing. */
#define SINKD_TOK_DECODE_SPECIAL 0x4u

typedef struct sinkd_tokenizer sinkd_tokenizer;

/* Build a tokenizer from @g's metadata; it copies what it needs, so @g may be
 * closed afterwards. On success *@out is owned by the caller
 * (sinkd_tokenizer_free). Errors: -ENOTSUP for an unknown tokenizer model or
 * pre-tokenizer, -EINVAL for missing or inconsistent metadata (message in
 * @err), -ENOMEM. */
int sinkd_tokenizer_load(const sinkd_gguf *g, sinkd_tokenizer **out, char *err, size_t errlen);

/* Free. NULL is a no-op. */
void sinkd_tokenizer_free(sinkd_tokenizer *t);

sinkd_tok_kind sinkd_tokenizer_kind(const sinkd_tokenizer *t);
int32_t sinkd_tokenizer_n_vocab(const sinkd_tokenizer *t);
/* BOS / EOS ids, -1 when the model has none. */
int32_t sinkd_tokenizer_bos(const sinkd_tokenizer *t);
int32_t sinkd_tokenizer_eos(const sinkd_tokenizer *t);
/* True for EOS and other end-of-generation tokens (eot_token_id, eom_token_id). */
bool sinkd_tokenizer_is_eog(const sinkd_tokenizer *t, int32_t id);
/* Token type of @id (SINKD_TOKTYPE_*), 0 for an id out of range. */
int sinkd_tokenizer_type(const sinkd_tokenizer *t, int32_t id);

/* The id of the token whose vocabulary text is exactly @s[0..len), or -1. */
int32_t sinkd_tokenizer_find(const sinkd_tokenizer *t, const char *s, size_t len);

/* Tokenize @text[0..len) (any bytes; invalid UTF-8 is tokenized byte-wise).
 * On success *@ids is a malloc'd array of *@n ids owned by the caller (free
 * it; it is non-NULL even when *n is 0). -EINVAL for bad arguments, -ENOMEM. */
int sinkd_tokenizer_encode(const sinkd_tokenizer *t, const char *text, size_t len,
                           unsigned flags, int32_t **ids, size_t *n);

/* The bytes token @id decodes to (byte tokens: one raw byte; SentencePiece
 * "▁" as a space; control tokens: empty unless SINKD_TOK_DECODE_SPECIAL).
 * *@s points into the tokenizer. -EINVAL for an id out of range. */
int sinkd_tokenizer_piece(const sinkd_tokenizer *t, int32_t id, unsigned flags,
                          const char **s, size_t *len);

/* Decode @ids[0..n) to raw bytes, concatenated (not checked for UTF-8). The
 * leading space that add_space_prefix put in front is removed. On success
 * *@out is a malloc'd NUL-terminated string of *@len bytes owned by the
 * caller. -EINVAL for an id out of range (nothing is returned), -ENOMEM. */
int sinkd_tokenizer_decode(const sinkd_tokenizer *t, const int32_t *ids, size_t n,
                           unsigned flags, char **out, size_t *len);

/* Streaming decode: the state of one output stream. A UTF-8 character whose
 * bytes arrive in several tokens is held back until it is complete, so every
 * chunk emitted is valid UTF-8; bytes that can never form a character are
 * emitted as U+FFFD. Initialise with SINKD_DETOK_INIT; a plain struct that
 * can be copied or saved as is. */
typedef struct sinkd_detok {
    uint8_t pend[4]; /* bytes of an incomplete character */
    uint8_t n_pend;
    uint8_t need;    /* total length of that character */
    uint8_t started; /* some text has been decoded (for add_space_prefix) */
    uint8_t _pad;
} sinkd_detok;
#define SINKD_DETOK_INIT {{0, 0, 0, 0}, 0, 0, 0, 0}

/* Bytes a buffer needs for any one sinkd_detok_push (or flush) to fit. */
size_t sinkd_tokenizer_max_chunk(const sinkd_tokenizer *t);

/* Decode one token @id into @out[0..cap) with @st's pending bytes; *@n is
 * the number of bytes written (maybe 0 while a character is incomplete).
 * -EINVAL for an id out of range, -ENOSPC if cap < sinkd_tokenizer_max_chunk
 * (state untouched in both cases). */
int sinkd_detok_push(const sinkd_tokenizer *t, sinkd_detok *st, int32_t id, unsigned flags,
                     char *out, size_t cap, size_t *n);

/* End of stream: pending bytes of an incomplete character become U+FFFD.
 * Writes at most 3 bytes; @st is back to its initial state. */
void sinkd_detok_flush(sinkd_detok *st, char *out, size_t cap, size_t *n);

#endif /* SINKD_TOKENIZER_H */
