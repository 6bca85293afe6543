/*
 * Session snapshots: the file format of a saved session and its reader and
 * writer. Knows nothing of the engine: a snapshot is a sinkd_snap_meta
 * (model fingerprint, geometry, session fields, logits) followed by one
 * sinkd_snap_layer per layer (the lanes' positions, scores, K and V).
 *
 * File layout (all integers little-endian):
 *
 *   magic    "SINKDSNP" (8 bytes), u32 version (SINKD_SNAP_VERSION),
 *            u32 n_layers (the number of LAYR sections that follow HEAD)
 *   section  u32 tag, u32 CRC-32 (IEEE, zlib's) of the payload, u64 length,
 *            payload
 *   HEAD     model name, model size and hash, geometry, page_tokens, KV
 *            dtype, n_vocab; session id, uid, secret, persist, budget,
 *            counters, policy name, params and fallback reason, pending
 *            token, penalty history (the repetition penalty's window),
 *            next positions, logits
 *   LAYR     (n_layers of them, layer order) u32 lens[kv_heads], then per
 *            lane: i32 pos[len], f32 score[len], f32 K[len][head_dim],
 *            f32 V[len][head_dim]
 *   END      empty payload; nothing may follow it
 *
 * K and V are stored as f32 (exact for every pool dtype: f16 and bf16
 * widen losslessly). Every length is checked against the bytes left in the
 * file before anything is allocated, every section against its CRC, and
 * every value against its range; any mismatch is refused with a message
 * naming the section. The reader never trusts a count it has not checked.
 *
 * Files are written atomically: a temporary file in the target directory,
 * written, fsync'ed, renamed over the target, then the directory fsync'ed.
 * Mode 0600: a snapshot holds the session's secret.
 */
#ifndef SINKD_SNAPSHOT_H
#define SINKD_SNAPSHOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"

#define SINKD_SNAP_VERSION 1
/* Longest model name, policy name, params and fallback reason, bytes. */
#define SINKD_SNAP_NAME_MAX 255
#define SINKD_SNAP_PARAMS_MAX 4096
/* Largest geometry a snapshot may describe (as session.open accepts). */
#define SINKD_SNAP_LAYERS_MAX 4096
#define SINKD_SNAP_HEADS_MAX 4096
#define SINKD_SNAP_HEAD_DIM_MAX 4096
#define SINKD_SNAP_VOCAB_MAX (1 << 24)
#define SINKD_SNAP_HIST_MAX 65536

/* Everything of a session but its lanes. Arrays are owned (malloc'ed) and
 * released by sinkd_snap_meta_free. */
typedef struct sinkd_snap_meta {
    /* the model the lanes were computed by; "" and zeros for a raw session */
    char model[SINKD_SNAP_NAME_MAX + 1];
    uint64_t model_size, model_hash;  /* sinkd_snap_fingerprint of its file */
    int32_t n_vocab;                  /* 0 for raw sessions */
    /* shape */
    int32_t layers, q_heads, kv_heads, head_dim;
    uint8_t geom_dtype;               /* sinkd_dtype of a raw client's data */
    sinkd_rope rope;                  /* the session's own rope */
    int32_t page_tokens;              /* of the pool that held the lanes */
    uint8_t kv_dtype;                 /* sinkd_dtype of that pool */
    /* the session */
    uint64_t id;
    uint32_t uid;
    bool persist;
    char secret[33];                  /* 32 hex digits */
    int64_t max_pages;                /* < 0: no budget */
    int64_t tokens;                   /* positions consumed */
    uint64_t evictions, evicted_tokens;
    bool evicted_after_prefill;
    uint8_t rope_mode;                /* what the lanes ran with */
    char policy[SINKD_SNAP_NAME_MAX + 1];
    char params[SINKD_SNAP_PARAMS_MAX + 1];
    char fallback[SINKD_SNAP_NAME_MAX + 1];
    int32_t pending;                  /* sent, not in the KV yet; -1 none */
    bool has_logits;
    uint32_t hist_len;                /* penalty history: the last tokens, oldest first */
    int32_t *hist;
    int32_t *next_pos;                /* [layers] */
    float *logits;                    /* [n_vocab] when has_logits, else NULL */
} sinkd_snap_meta;

/* One layer's lanes, concatenated in kv-head order: lane h holds len[h]
 * tokens starting at token offset sum(len[0..h)). Owned arrays. */
typedef struct sinkd_snap_layer {
    int32_t n_lanes;
    int32_t head_dim;
    int32_t *len;                     /* [n_lanes] */
    int64_t total;                    /* sum of len */
    int32_t *pos;                     /* [total] */
    float *score;                     /* [total] */
    float *k, *v;                     /* [total][head_dim] */
} sinkd_snap_layer;

/* Release the arrays; @m is left zeroed. NULL is fine. */
void sinkd_snap_meta_free(sinkd_snap_meta *m);

/* Size @l for @n_lanes lanes of @head_dim with lengths @len (copied);
 * zeroed arrays. Returns 0, -EINVAL or -ENOMEM (then @l is freed). */
int sinkd_snap_layer_alloc(sinkd_snap_layer *l, int32_t n_lanes, int32_t head_dim,
                           const int32_t *len);

/* Release the arrays; @l is left zeroed. NULL is fine. */
void sinkd_snap_layer_free(sinkd_snap_layer *l);

/* CRC-32 (IEEE 802.3, reflected, as zlib's crc32) of @n bytes at @p,
 * continuing from @crc (0 to start). */
uint32_t sinkd_snap_crc32(uint32_t crc, const void *p, size_t n);

/* Identify a model file: its size and a 64-bit FNV-1a hash of its first
 * and last MiB (the GGUF header and metadata, and the end of the weights).
 * Returns 0 or a negative errno from open/read. */
int sinkd_snap_fingerprint(const char *path, uint64_t *size, uint64_t *hash);

/* ---- writer ---------------------------------------------------------------- */

typedef struct sinkd_snap_writer {
    FILE *f;
    int dirfd;
    char tmp[64];                     /* the temporary file's name in the directory */
    char name[64];                    /* the final name */
    int32_t layers_left;
    int err;                          /* first error, sticky */
} sinkd_snap_writer;

#define SINKD_SNAP_WRITER_INIT { NULL, -1, "", "", 0, 0 }

/* Start writing snapshot @name (a plain file name, no '/') in the directory
 * @dir: creates a temporary file there (mode 0600) and writes the magic and
 * the HEAD section from @m. Returns 0 or a negative errno; on error nothing
 * is left behind and @w needs no abort. */
int sinkd_snap_write_begin(sinkd_snap_writer *w, const char *dir, const char *name,
                           const sinkd_snap_meta *m);

/* Append the next layer's section. Returns 0 or a negative errno (sticky:
 * commit then fails too). */
int sinkd_snap_write_layer(sinkd_snap_writer *w, const sinkd_snap_layer *l);

/* sinkd_snap_write_commit's result when the snapshot has replaced @name
 * but closing it or syncing the directory failed afterwards: the new file
 * is in place and whole (it was synced before the rename), yet a crash may
 * still bring the older one back. */
#define SINKD_SNAP_NOT_DURABLE 1

/* After every layer: write END, fsync, rename over @name, fsync the
 * directory. Returns 0, SINKD_SNAP_NOT_DURABLE (above), or -EINVAL (layers
 * missing) or the I/O error, and then the temporary file is removed and an
 * older @name is untouched. @w is released in every case. */
int sinkd_snap_write_commit(sinkd_snap_writer *w);

/* Drop a snapshot being written (the temporary file is removed). Safe on
 * an init or released writer. */
void sinkd_snap_write_abort(sinkd_snap_writer *w);

/* ---- reader ---------------------------------------------------------------- */

typedef struct sinkd_snap_reader {
    FILE *f;
    uint64_t size, off;               /* file size, bytes consumed */
    int32_t layers, kv_heads, head_dim, layers_left;
} sinkd_snap_reader;

#define SINKD_SNAP_READER_INIT { NULL, 0, 0, 0, 0, 0, 0 }

/* Open the snapshot at @path and read its magic and HEAD into @m (zeroed
 * first; owned by the caller afterwards, sinkd_snap_meta_free). Errors:
 * -ENOENT/-EACCES/... (open), -EBADMSG (not a snapshot, truncated,
 * checksum, a value out of range), -ENOTSUP (another format version),
 * -ENOMEM; @err says what and where. On error @r is released. */
int sinkd_snap_read_begin(sinkd_snap_reader *r, const char *path, sinkd_snap_meta *m,
                          char *err, size_t errlen);

/* Read the next layer into @l (zeroed first; owned by the caller). After
 * the last layer the reader checks END and the end of the file. Errors as
 * read_begin; on error @l is freed. */
int sinkd_snap_read_layer(sinkd_snap_reader *r, sinkd_snap_layer *l, char *err, size_t errlen);

/* Close the file. Safe on an init or released reader. */
void sinkd_snap_read_end(sinkd_snap_reader *r);

#endif /* SINKD_SNAPSHOT_H */
