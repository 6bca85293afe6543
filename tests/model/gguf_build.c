#include "gguf_build.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void gb_bytes(gb_buf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p)
            abort();
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
}

void gb_u32(gb_buf *b, uint32_t v) { gb_bytes(b, &v, 4); }
void gb_u64(gb_buf *b, uint64_t v) { gb_bytes(b, &v, 8); }

void gb_str(gb_buf *b, const char *s)
{
    gb_u64(b, strlen(s));
    gb_bytes(b, s, strlen(s));
}

void gb_free(gb_buf *b)
{
    free(b->p);
    *b = (gb_buf){0};
}

void gb_kv_raw(gb_file *f, const char *key, uint32_t type, const void *val, size_t n)
{
    gb_str(&f->kv, key);
    gb_u32(&f->kv, type);
    gb_bytes(&f->kv, val, n);
    f->n_kv++;
}

void gb_kv_u32(gb_file *f, const char *key, uint32_t v) { gb_kv_raw(f, key, 4, &v, 4); }
void gb_kv_i32(gb_file *f, const char *key, int32_t v) { gb_kv_raw(f, key, 5, &v, 4); }
void gb_kv_f32(gb_file *f, const char *key, float v) { gb_kv_raw(f, key, 6, &v, 4); }

void gb_kv_bool(gb_file *f, const char *key, int v)
{
    uint8_t b = (uint8_t)v;
    gb_kv_raw(f, key, 7, &b, 1);
}

void gb_kv_str(gb_file *f, const char *key, const char *v)
{
    gb_buf b = {0};
    gb_str(&b, v);
    gb_kv_raw(f, key, 8, b.p, b.len);
    gb_free(&b);
}

static void gb_kv_arr(gb_file *f, const char *key, uint32_t et, const void *v, size_t n, size_t esz)
{
    gb_buf b = {0};
    gb_u32(&b, et);
    gb_u64(&b, n);
    gb_bytes(&b, v, n * esz);
    gb_kv_raw(f, key, 9, b.p, b.len);
    gb_free(&b);
}

void gb_kv_strs(gb_file *f, const char *key, const char *const *v, size_t n)
{
    gb_buf b = {0};
    gb_u32(&b, 8);
    gb_u64(&b, n);
    for (size_t i = 0; i < n; i++)
        gb_str(&b, v[i]);
    gb_kv_raw(f, key, 9, b.p, b.len);
    gb_free(&b);
}

void gb_kv_f32s(gb_file *f, const char *key, const float *v, size_t n) { gb_kv_arr(f, key, 6, v, n, 4); }
void gb_kv_i32s(gb_file *f, const char *key, const int32_t *v, size_t n) { gb_kv_arr(f, key, 5, v, n, 4); }

void gb_tensor(gb_file *f, const char *name, uint32_t type, uint32_t n_dims,
               const uint64_t *ne, const void *data, size_t bytes)
{
    static const uint8_t zero[256];
    while (f->data.len % f->alignment)
        gb_bytes(&f->data, zero, 1);
    gb_str(&f->info, name);
    gb_u32(&f->info, n_dims);
    for (uint32_t d = 0; d < n_dims; d++)
        gb_u64(&f->info, ne[d]);
    gb_u32(&f->info, type);
    gb_u64(&f->info, f->data.len);
    gb_bytes(&f->data, data, bytes);
    f->n_tensors++;
}

uint8_t *gb_finish(gb_file *f, uint32_t version, size_t *len)
{
    gb_buf b = {0};
    static const uint8_t zero[256];
    gb_bytes(&b, "GGUF", 4);
    gb_u32(&b, version);
    gb_u64(&b, f->n_tensors);
    gb_u64(&b, f->n_kv);
    gb_bytes(&b, f->kv.p, f->kv.len);
    gb_bytes(&b, f->info.p, f->info.len);
    while (b.len % f->alignment)
        gb_bytes(&b, zero, 1);
    gb_bytes(&b, f->data.p, f->data.len);
    gb_free(&f->kv);
    gb_free(&f->info);
    gb_free(&f->data);
    *len = b.len;
    return b.p;
}

char *gb_write_tmp(const uint8_t *p, size_t len)
{
    char *path = strdup("/tmp/sinkd-test-XXXXXX.gguf");
    int fd = path ? mkstemps(path, 5) : -1;
    if (fd < 0)
        abort();
    if (write(fd, p, len) != (ssize_t)len)
        abort();
    close(fd);
    return path;
}
