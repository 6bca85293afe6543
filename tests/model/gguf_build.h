/*
 * A small GGUF writer for the tests: builds well-formed files (and, through
 * the raw byte helpers, deliberately broken ones) in memory. Aborts the test
 * process on allocation failure.
 */
#ifndef SINKD_TEST_GGUF_BUILD_H
#define SINKD_TEST_GGUF_BUILD_H

#include <stddef.h>
#include <stdint.h>

typedef struct gb_buf {
    uint8_t *p;
    size_t len, cap;
} gb_buf;

void gb_bytes(gb_buf *b, const void *p, size_t n);
void gb_u32(gb_buf *b, uint32_t v);
void gb_u64(gb_buf *b, uint64_t v);
void gb_str(gb_buf *b, const char *s); /* u64 length + bytes */
void gb_free(gb_buf *b);

typedef struct gb_file {
    gb_buf kv, info, data;
    uint64_t n_kv, n_tensors;
    uint32_t alignment;
} gb_file;

#define GB_FILE_INIT {{0}, {0}, {0}, 0, 0, 32}

/* Metadata entries. */
void gb_kv_u32(gb_file *f, const char *key, uint32_t v);
void gb_kv_i32(gb_file *f, const char *key, int32_t v);
void gb_kv_f32(gb_file *f, const char *key, float v);
void gb_kv_bool(gb_file *f, const char *key, int v);
void gb_kv_str(gb_file *f, const char *key, const char *v);
void gb_kv_strs(gb_file *f, const char *key, const char *const *v, size_t n);
void gb_kv_f32s(gb_file *f, const char *key, const float *v, size_t n);
void gb_kv_i32s(gb_file *f, const char *key, const int32_t *v, size_t n);
/* Any value: @type then the already encoded @val bytes. */
void gb_kv_raw(gb_file *f, const char *key, uint32_t type, const void *val, size_t n);

/* A tensor of ggml @type with dims ne[0..n_dims) and @bytes of data, placed
 * at the next multiple of the alignment in the data section. */
void gb_tensor(gb_file *f, const char *name, uint32_t type, uint32_t n_dims,
               const uint64_t *ne, const void *data, size_t bytes);

/* The whole file (header + kv + infos + padding + data), malloc'd; frees
 * the builder's parts. */
uint8_t *gb_finish(gb_file *f, uint32_t version, size_t *len);

/* Write @len bytes to a new temporary file; returns its malloc'd path. */
char *gb_write_tmp(const uint8_t *p, size_t len);

#endif
