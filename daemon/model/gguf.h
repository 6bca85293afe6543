/*
 * GGUF reader: a model file (versions 2 and 3) mapped read-only, its metadata
 * and its tensor directory parsed and validated once at open.
 *
 * Nothing in a GGUF file is trusted. Every count, length and offset is checked
 * against the bytes that remain before it is used, with overflow-safe
 * arithmetic, and no allocation is sized by a count the file has not already
 * proven it can hold. A file that fails is refused as a whole with -EINVAL
 * (malformed) or -ENOTSUP (well formed but a version or tensor type sinkd does
 * not handle) and a one-line message naming what is wrong.
 *
 * After a successful open, pointers returned by the accessors point into the
 * mapping and stay valid until sinkd_gguf_close. Strings in the file are not
 * NUL-terminated: they come back as (pointer, length) pairs.
 */
#ifndef SINKD_GGUF_H
#define SINKD_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Metadata value types, numbered as in the file. */
typedef enum sinkd_gguf_type {
    SINKD_GGUF_UINT8 = 0,
    SINKD_GGUF_INT8 = 1,
    SINKD_GGUF_UINT16 = 2,
    SINKD_GGUF_INT16 = 3,
    SINKD_GGUF_UINT32 = 4,
    SINKD_GGUF_INT32 = 5,
    SINKD_GGUF_FLOAT32 = 6,
    SINKD_GGUF_BOOL = 7,
    SINKD_GGUF_STRING = 8,
    SINKD_GGUF_ARRAY = 9,
    SINKD_GGUF_UINT64 = 10,
    SINKD_GGUF_INT64 = 11,
    SINKD_GGUF_FLOAT64 = 12,
} sinkd_gguf_type;

/* Tensor types sinkd reads, numbered as ggml numbers them. */
typedef enum sinkd_ggml_type {
    SINKD_GGML_F32 = 0,
    SINKD_GGML_F16 = 1,
    SINKD_GGML_Q8_0 = 8,
    SINKD_GGML_BF16 = 30,
} sinkd_ggml_type;

#define SINKD_GGUF_MAX_DIMS 4
/* Arrays nested deeper than this are refused (bounds the parser's recursion). */
#define SINKD_GGUF_MAX_DEPTH 8
#define SINKD_GGUF_DEFAULT_ALIGNMENT 32

typedef struct sinkd_gguf_str {
    const char *ptr; /* into the mapping, not NUL-terminated */
    uint64_t len;
} sinkd_gguf_str;

/* One metadata value as it sits in the file. For an array, @data points at
 * its first element, @count is the number of elements, @elem_type their type;
 * for a string, @data points at its bytes and @count is its length. @size is
 * the encoded size of what @data points to. */
typedef struct sinkd_gguf_value {
    uint32_t type;      /* sinkd_gguf_type */
    uint32_t elem_type; /* arrays only */
    uint64_t count;
    const uint8_t *data;
    uint64_t size;
} sinkd_gguf_value;

typedef struct sinkd_gguf_kv {
    sinkd_gguf_str key;
    sinkd_gguf_value value;
} sinkd_gguf_kv;

typedef struct sinkd_gguf_tensor {
    sinkd_gguf_str name;
    uint32_t type;                     /* sinkd_ggml_type */
    uint32_t n_dims;
    uint64_t ne[SINKD_GGUF_MAX_DIMS];  /* ne[0] is the contiguous (row) dim; unused dims are 1 */
    uint64_t n_elements;
    uint64_t offset;                   /* from the start of the data section */
    uint64_t size;                     /* bytes */
    const void *data;                  /* into the mapping, aligned to the file's alignment */
} sinkd_gguf_tensor;

typedef struct sinkd_gguf {
    const uint8_t *base; /* the whole file */
    uint64_t file_size;
    bool mapped;         /* base came from mmap (else the caller's buffer) */
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset; /* start of the tensor data section */
    uint64_t n_kv;
    sinkd_gguf_kv *kv;
    uint64_t n_tensors;
    sinkd_gguf_tensor *tensors;
} sinkd_gguf;

/* Map the file at @path and parse it. On success *@out is owned by the caller
 * (release with sinkd_gguf_close). On failure nothing is left open, and if
 * @err is not NULL a message of at most @errlen bytes (NUL-terminated) says
 * why. Errors: -EINVAL malformed or hostile file, -ENOTSUP unsupported
 * version or tensor type, -ENOMEM, or the negative errno of open/fstat/mmap. */
int sinkd_gguf_open(const char *path, sinkd_gguf **out, char *err, size_t errlen);

/* Parse a GGUF image already in memory. @buf is borrowed: it must outlive
 * the returned object and is never written. Same errors as sinkd_gguf_open. */
int sinkd_gguf_open_mem(const void *buf, size_t len, sinkd_gguf **out, char *err,
                        size_t errlen);

/* Unmap and free. NULL is a no-op. */
void sinkd_gguf_close(sinkd_gguf *g);

/* The metadata entry named @key, or NULL. */
const sinkd_gguf_kv *sinkd_gguf_find(const sinkd_gguf *g, const char *key);

/* Typed scalar getters. Integers of any width convert when the value fits the
 * destination; floats accept float32/float64 and integers. Return 0, -ENOENT
 * when the key is absent, -EINVAL when the type does not convert or the value
 * is out of range (then *out is untouched). */
int sinkd_gguf_get_u32(const sinkd_gguf *g, const char *key, uint32_t *out);
int sinkd_gguf_get_u64(const sinkd_gguf *g, const char *key, uint64_t *out);
int sinkd_gguf_get_i64(const sinkd_gguf *g, const char *key, int64_t *out);
int sinkd_gguf_get_f32(const sinkd_gguf *g, const char *key, float *out);
int sinkd_gguf_get_bool(const sinkd_gguf *g, const char *key, bool *out);
int sinkd_gguf_get_str(const sinkd_gguf *g, const char *key, sinkd_gguf_str *out);
/* The array named @key (any element type) in *@out. -ENOENT / -EINVAL. */
int sinkd_gguf_get_arr(const sinkd_gguf *g, const char *key, sinkd_gguf_value *out);

/* True when the string @s equals the NUL-terminated @cstr. */
bool sinkd_gguf_str_eq(sinkd_gguf_str s, const char *cstr);

/* Element @i of array @arr in *@out (for a string element: type STRING, data
 * and count = its bytes). O(1) for fixed-size elements, O(i) for strings and
 * nested arrays. -EINVAL when @arr is not an array, -ERANGE when i >= count. */
int sinkd_gguf_arr_at(const sinkd_gguf_value *arr, uint64_t i, sinkd_gguf_value *out);

/* Numeric value of a scalar (integer, float or bool) as double, or as a
 * signed/unsigned 64-bit integer. -EINVAL when @v is not of such a type (or,
 * for the integer forms, a float or a value out of range). */
int sinkd_gguf_value_f64(const sinkd_gguf_value *v, double *out);
int sinkd_gguf_value_i64(const sinkd_gguf_value *v, int64_t *out);

/* Fill @out[0..n) with the elements of a string array in one pass. @n must
 * equal arr->count. -EINVAL if @arr is not an array of strings. */
int sinkd_gguf_arr_strings(const sinkd_gguf_value *arr, sinkd_gguf_str *out, uint64_t n);

/* Convert a numeric array to f32 / i32 into @out[0..n), n == arr->count.
 * -EINVAL when an element is not numeric or (i32) does not fit. */
int sinkd_gguf_arr_f32(const sinkd_gguf_value *arr, float *out, uint64_t n);
int sinkd_gguf_arr_i32(const sinkd_gguf_value *arr, int32_t *out, uint64_t n);

/* The tensor named @name, or NULL. */
const sinkd_gguf_tensor *sinkd_gguf_tensor_find(const sinkd_gguf *g, const char *name);

/* "f32", "f16", "q8_0", "bf16", a known but unsupported ggml name such as
 * "q4_k", or "unknown". Never NULL. */
const char *sinkd_ggml_type_name(uint32_t type);

#endif /* SINKD_GGUF_H */
