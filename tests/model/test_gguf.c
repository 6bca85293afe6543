/*
 * GGUF reader: the reference model's metadata and tensors, every metadata
 * type, and hostile files (truncations at every offset, huge counts and
 * lengths, tensors past the end, misalignment, bad versions and types), each
 * refused with an error, never a crash (the suite also runs under ASan).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "gguf_build.h"

#define TINY SINKD_TEST_DATA "/sinkd-ref-tiny-f32.gguf"

static int open_buf(const uint8_t *p, size_t len, sinkd_gguf **g, char *err)
{
    return sinkd_gguf_open_mem(p, len, g, err, 256);
}

Test(gguf, tiny_model_metadata)
{
    sinkd_gguf *g = NULL;
    char err[256] = "";
    cr_assert_eq(sinkd_gguf_open(TINY, &g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(g->version, 3);
    cr_assert_eq(g->n_tensors, 39);
    cr_assert_eq(g->n_kv, 24);
    cr_assert_eq(g->alignment, 32);

    sinkd_gguf_str s;
    cr_assert_eq(sinkd_gguf_get_str(g, "general.architecture", &s), 0);
    cr_assert(sinkd_gguf_str_eq(s, "llama"));
    uint32_t u;
    cr_assert_eq(sinkd_gguf_get_u32(g, "llama.block_count", &u), 0);
    cr_assert_eq(u, 4);
    cr_assert_eq(sinkd_gguf_get_u32(g, "llama.attention.head_count_kv", &u), 0);
    cr_assert_eq(u, 2);
    float f;
    cr_assert_eq(sinkd_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f), 0);
    cr_assert_float_eq(f, 1e-5f, 1e-9);
    bool b;
    cr_assert_eq(sinkd_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b), 0);
    cr_assert(b);
    cr_assert_eq(sinkd_gguf_get_u32(g, "no.such.key", &u), -ENOENT);
    cr_assert_eq(sinkd_gguf_get_u32(g, "general.architecture", &u), -EINVAL);
    cr_assert_eq(sinkd_gguf_get_str(g, "llama.block_count", &s), -EINVAL);

    sinkd_gguf_value arr, e;
    cr_assert_eq(sinkd_gguf_get_arr(g, "tokenizer.ggml.tokens", &arr), 0);
    cr_assert_eq(arr.count, 260);
    cr_assert_eq(sinkd_gguf_arr_at(&arr, 259, &e), 0);
    cr_assert_eq(e.count, 3);
    cr_assert_eq(memcmp(e.data, "\xE2\x96\x81", 3), 0);
    cr_assert_eq(sinkd_gguf_arr_at(&arr, 260, &e), -ERANGE);

    const sinkd_gguf_tensor *t = sinkd_gguf_tensor_find(g, "token_embd.weight");
    cr_assert_not_null(t);
    cr_assert_eq(t->type, SINKD_GGML_F32);
    cr_assert_eq(t->n_dims, 2);
    cr_assert_eq(t->ne[0], 128);
    cr_assert_eq(t->ne[1], 260);
    cr_assert_eq(t->size, 128 * 260 * 4);
    cr_assert_eq((uintptr_t)t->data % 32, 0);
    cr_assert_null(sinkd_gguf_tensor_find(g, "blk.9.attn_q.weight"));

    /* the last tensor's first float, read independently with stdio */
    t = sinkd_gguf_tensor_find(g, "output.weight");
    cr_assert_not_null(t);
    FILE *fp = fopen(TINY, "rb");
    cr_assert_not_null(fp);
    float want;
    cr_assert_eq(fseek(fp, (long)(g->data_offset + t->offset), SEEK_SET), 0);
    cr_assert_eq(fread(&want, 4, 1, fp), 1);
    fclose(fp);
    float got;
    memcpy(&got, t->data, 4);
    cr_assert_eq(memcmp(&got, &want, 4), 0);
    sinkd_gguf_close(g);
}

Test(gguf, missing_file_is_an_errno)
{
    sinkd_gguf *g = NULL;
    char err[256] = "";
    cr_assert_eq(sinkd_gguf_open("/nonexistent/x.gguf", &g, err, sizeof err), -ENOENT);
    cr_assert_null(g);
    cr_assert(strstr(err, "/nonexistent/x.gguf"));
}

/* A small valid file: every metadata type, nested arrays, and one tensor of
 * each supported type. */
static uint8_t *valid_file(size_t *len, uint32_t version)
{
    gb_file f = GB_FILE_INIT;
    uint8_t u8 = 200;
    int8_t i8 = -100;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    int64_t i64 = -5000000000LL;
    uint64_t u64 = 1ull << 40;
    double f64 = 0.125;
    gb_kv_raw(&f, "t.u8", 0, &u8, 1);
    gb_kv_raw(&f, "t.i8", 1, &i8, 1);
    gb_kv_raw(&f, "t.u16", 2, &u16, 2);
    gb_kv_raw(&f, "t.i16", 3, &i16, 2);
    gb_kv_u32(&f, "t.u32", 4000000000u);
    gb_kv_i32(&f, "t.i32", -7);
    gb_kv_f32(&f, "t.f32", 2.5f);
    gb_kv_bool(&f, "t.bool", 1);
    gb_kv_str(&f, "t.str", "hello");
    gb_kv_raw(&f, "t.u64", 10, &u64, 8);
    gb_kv_raw(&f, "t.i64", 11, &i64, 8);
    gb_kv_raw(&f, "t.f64", 12, &f64, 8);
    const char *strs[] = {"a", "", "ccc"};
    gb_kv_strs(&f, "t.strs", strs, 3);
    /* [[1, 2], [3]] as arrays of int16 */
    gb_buf nb = {0};
    int16_t e1[] = {1, 2}, e2[] = {3};
    gb_u32(&nb, 9);
    gb_u64(&nb, 2);
    gb_u32(&nb, 3); gb_u64(&nb, 2); gb_bytes(&nb, e1, 4);
    gb_u32(&nb, 3); gb_u64(&nb, 1); gb_bytes(&nb, e2, 2);
    gb_kv_raw(&f, "t.nested", 9, nb.p, nb.len);
    gb_free(&nb);
    gb_kv_u32(&f, "general.alignment", 64);
    f.alignment = 64;

    float w32[64];
    for (int i = 0; i < 64; i++)
        w32[i] = (float)i;
    uint16_t w16[64] = {0};
    uint8_t q8[2 * 34] = {0};
    uint64_t ne[2] = {32, 2};
    gb_tensor(&f, "w.f32", 0, 2, ne, w32, sizeof w32);
    gb_tensor(&f, "w.f16", 1, 2, ne, w16, sizeof w16);
    gb_tensor(&f, "w.bf16", 30, 2, ne, w16, sizeof w16);
    gb_tensor(&f, "w.q8_0", 8, 2, ne, q8, sizeof q8);
    return gb_finish(&f, version, len);
}

Test(gguf, every_metadata_type)
{
    for (uint32_t version = 2; version <= 3; version++) {
        size_t len;
        uint8_t *p = valid_file(&len, version);
        sinkd_gguf *g = NULL;
        char err[256] = "";
        cr_assert_eq(open_buf(p, len, &g, err), 0, "%s", err);
        cr_assert_eq(g->alignment, 64);
        uint64_t u;
        int64_t i;
        uint32_t u32;
        float f;
        bool b;
        sinkd_gguf_str s;
        cr_assert_eq(sinkd_gguf_get_u64(g, "t.u8", &u), 0);  cr_assert_eq(u, 200);
        cr_assert_eq(sinkd_gguf_get_i64(g, "t.i8", &i), 0);  cr_assert_eq(i, -100);
        cr_assert_eq(sinkd_gguf_get_u64(g, "t.i8", &u), -EINVAL); /* negative */
        cr_assert_eq(sinkd_gguf_get_u64(g, "t.u16", &u), 0); cr_assert_eq(u, 60000);
        cr_assert_eq(sinkd_gguf_get_i64(g, "t.i16", &i), 0); cr_assert_eq(i, -30000);
        cr_assert_eq(sinkd_gguf_get_u32(g, "t.u32", &u32), 0); cr_assert_eq(u32, 4000000000u);
        cr_assert_eq(sinkd_gguf_get_i64(g, "t.i32", &i), 0); cr_assert_eq(i, -7);
        cr_assert_eq(sinkd_gguf_get_f32(g, "t.f32", &f), 0); cr_assert_eq(f, 2.5f);
        cr_assert_eq(sinkd_gguf_get_bool(g, "t.bool", &b), 0); cr_assert(b);
        cr_assert_eq(sinkd_gguf_get_u64(g, "t.bool", &u), -EINVAL);
        cr_assert_eq(sinkd_gguf_get_str(g, "t.str", &s), 0); cr_assert(sinkd_gguf_str_eq(s, "hello"));
        cr_assert_eq(sinkd_gguf_get_u64(g, "t.u64", &u), 0); cr_assert_eq(u, 1ull << 40);
        cr_assert_eq(sinkd_gguf_get_u32(g, "t.u64", &u32), -EINVAL); /* does not fit */
        cr_assert_eq(sinkd_gguf_get_i64(g, "t.i64", &i), 0); cr_assert_eq(i, -5000000000LL);
        cr_assert_eq(sinkd_gguf_get_f32(g, "t.f64", &f), 0); cr_assert_eq(f, 0.125f);
        cr_assert_eq(sinkd_gguf_get_f32(g, "t.i32", &f), 0); cr_assert_eq(f, -7.0f);

        sinkd_gguf_value arr, e, e2;
        sinkd_gguf_str out[3];
        cr_assert_eq(sinkd_gguf_get_arr(g, "t.strs", &arr), 0);
        cr_assert_eq(sinkd_gguf_arr_strings(&arr, out, 3), 0);
        cr_assert(sinkd_gguf_str_eq(out[0], "a"));
        cr_assert(sinkd_gguf_str_eq(out[1], ""));
        cr_assert(sinkd_gguf_str_eq(out[2], "ccc"));
        cr_assert_eq(sinkd_gguf_arr_strings(&arr, out, 2), -EINVAL);

        cr_assert_eq(sinkd_gguf_get_arr(g, "t.nested", &arr), 0);
        cr_assert_eq(arr.count, 2);
        cr_assert_eq(sinkd_gguf_arr_at(&arr, 1, &e), 0);
        cr_assert_eq(e.type, SINKD_GGUF_ARRAY);
        cr_assert_eq(e.count, 1);
        cr_assert_eq(sinkd_gguf_arr_at(&e, 0, &e2), 0);
        cr_assert_eq(sinkd_gguf_value_i64(&e2, &i), 0);
        cr_assert_eq(i, 3);
        cr_assert_eq(sinkd_gguf_arr_at(&arr, 0, &e), 0);
        int32_t v[2];
        cr_assert_eq(sinkd_gguf_arr_i32(&e, v, 2), 0);
        cr_assert_eq(v[0], 1);
        cr_assert_eq(v[1], 2);

        static const struct { const char *name; uint32_t type; uint64_t size; } want[] = {
            {"w.f32", 0, 256}, {"w.f16", 1, 128}, {"w.bf16", 30, 128}, {"w.q8_0", 8, 68}};
        for (int k = 0; k < 4; k++) {
            const sinkd_gguf_tensor *t = sinkd_gguf_tensor_find(g, want[k].name);
            cr_assert_not_null(t, "%s", want[k].name);
            cr_assert_eq(t->type, want[k].type);
            cr_assert_eq(t->size, want[k].size);
            cr_assert_eq(t->n_elements, 64);
            cr_assert_eq((size_t)((const uint8_t *)t->data - p) % 64, 0);
        }
        float x;
        memcpy(&x, (const uint8_t *)sinkd_gguf_tensor_find(g, "w.f32")->data + 4 * 63, 4);
        cr_assert_eq(x, 63.0f);
        sinkd_gguf_close(g);
        free(p);
    }
}

Test(gguf, truncation_at_every_offset)
{
    size_t len;
    uint8_t *p = valid_file(&len, 3);
    for (size_t cut = 0; cut < len; cut++) {
        /* a fresh allocation of exactly cut bytes, so ASan sees any overread */
        uint8_t *q = malloc(cut ? cut : 1);
        memcpy(q, p, cut);
        sinkd_gguf *g = NULL;
        char err[256] = "";
        int rc = open_buf(q, cut, &g, err);
        cr_assert_eq(rc, -EINVAL, "cut at %zu: rc %d", cut, rc);
        cr_assert_null(g);
        cr_assert(err[0], "cut at %zu: no message", cut);
        free(q);
    }
    free(p);
}

/* Header then raw bytes, for hand-made hostile files. */
static uint8_t *raw_file(uint32_t version, uint64_t n_tensors, uint64_t n_kv, gb_buf *body, size_t *len)
{
    gb_buf b = {0};
    gb_bytes(&b, "GGUF", 4);
    gb_u32(&b, version);
    gb_u64(&b, n_tensors);
    gb_u64(&b, n_kv);
    if (body) {
        gb_bytes(&b, body->p, body->len);
        gb_free(body);
    }
    /* trailing room so that counts, not the end of the buffer, are what fails */
    static const uint8_t pad[512];
    gb_bytes(&b, pad, sizeof pad);
    *len = b.len;
    return b.p;
}

/* @len is read after the call's arguments are evaluated (they fill it). */
static void expect_refused(uint8_t *p, const size_t *len, int want_rc, const char *want_msg)
{
    sinkd_gguf *g = NULL;
    char err[256] = "";
    int rc = open_buf(p, *len, &g, err);
    cr_assert_eq(rc, want_rc, "rc %d (%s), expected %d", rc, err, want_rc);
    cr_assert_null(g);
    cr_assert(strstr(err, want_msg), "message '%s' lacks '%s'", err, want_msg);
    free(p);
}

/* One tensor entry with the given fields, no metadata. */
static uint8_t *tensor_file(uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t offset,
                            size_t data_bytes, size_t *len)
{
    gb_buf b = {0};
    gb_str(&b, "w");
    gb_u32(&b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++)
        gb_u64(&b, ne[d]);
    gb_u32(&b, type);
    gb_u64(&b, offset);
    static const uint8_t zero[64];
    while (b.len % 32 != (32 - 24 % 32) % 32)
        gb_bytes(&b, zero, 1);
    uint8_t *data = calloc(1, data_bytes + 1);
    gb_bytes(&b, data, data_bytes);
    free(data);
    gb_buf h = {0};
    gb_bytes(&h, "GGUF", 4);
    gb_u32(&h, 3);
    gb_u64(&h, 1);
    gb_u64(&h, 0);
    gb_bytes(&h, b.p, b.len);
    gb_free(&b);
    *len = h.len;
    return h.p;
}

Test(gguf, hostile_headers)
{
    size_t len;
    uint8_t *p = raw_file(3, 0, 0, NULL, &len);
    memcpy(p, "GGUG", 4);
    expect_refused(p, &len, -EINVAL, "bad magic");
    expect_refused(raw_file(1, 0, 0, NULL, &len), &len, -ENOTSUP, "version 1");
    expect_refused(raw_file(4, 0, 0, NULL, &len), &len, -ENOTSUP, "version 4");
    expect_refused(raw_file(3, 0, UINT64_MAX, NULL, &len), &len, -EINVAL, "metadata count");
    expect_refused(raw_file(3, 1ull << 40, 0, NULL, &len), &len, -EINVAL, "tensor count");
    /* 37 kv entries fit the bound (14 bytes each) but the data does not hold them */
    expect_refused(raw_file(3, 0, 37, NULL, &len), &len, -EINVAL, "");
}

Test(gguf, hostile_metadata)
{
    size_t len;
    gb_buf b = {0};
    gb_u64(&b, UINT64_MAX); /* key length */
    expect_refused(raw_file(3, 0, 1, &b, &len), &len, -EINVAL, "metadata key length");

    b = (gb_buf){0};
    gb_str(&b, "k");
    gb_u32(&b, 8);
    gb_u64(&b, 1ull << 62); /* string value length */
    expect_refused(raw_file(3, 0, 1, &b, &len), &len, -EINVAL, "string value length");

    b = (gb_buf){0};
    gb_str(&b, "k");
    gb_u32(&b, 9);
    gb_u32(&b, 4);
    gb_u64(&b, UINT64_MAX / 2); /* array count: count * 4 would overflow */
    expect_refused(raw_file(3, 0, 1, &b, &len), &len, -EINVAL, "array count");

    b = (gb_buf){0};
    gb_str(&b, "k");
    gb_u32(&b, 9);
    gb_u32(&b, 8);
    gb_u64(&b, 1ull << 40); /* array of strings */
    expect_refused(raw_file(3, 0, 1, &b, &len), &len, -EINVAL, "array count");

    b = (gb_buf){0};
    gb_str(&b, "k");
    gb_u32(&b, 13); /* unknown type */
    expect_refused(raw_file(3, 0, 1, &b, &len), &len, -EINVAL, "unknown value type 13");

    b = (gb_buf){0};
    gb_str(&b, "k");
    gb_u32(&b, 9);
    gb_u32(&b, 77); /* unknown element type */
    gb_u64(&b, 1);
    expect_refused(raw_file(3, 0, 1, &b, &len), &len, -EINVAL, "unknown array element type 77");

    b = (gb_buf){0};
    gb_str(&b, "k");
    gb_u32(&b, 7);
    gb_bytes(&b, "\x02", 1); /* bool that is neither 0 nor 1 */
    expect_refused(raw_file(3, 0, 1, &b, &len), &len, -EINVAL, "bool value 2");

    b = (gb_buf){0};
    for (int i = 0; i < 2; i++) {
        gb_str(&b, "dup");
        gb_u32(&b, 4);
        gb_u32(&b, 1);
    }
    expect_refused(raw_file(3, 0, 2, &b, &len), &len, -EINVAL, "duplicate metadata key 'dup'");

    b = (gb_buf){0};
    gb_str(&b, "general.alignment");
    gb_u32(&b, 4);
    gb_u32(&b, 48);
    expect_refused(raw_file(3, 0, 1, &b, &len), &len, -EINVAL, "not a power of two");

    b = (gb_buf){0};
    gb_str(&b, "general.alignment");
    gb_u32(&b, 4);
    gb_u32(&b, 0);
    expect_refused(raw_file(3, 0, 1, &b, &len), &len, -EINVAL, "not a power of two");

    /* arrays nested past the depth limit */
    b = (gb_buf){0};
    gb_str(&b, "deep");
    gb_u32(&b, 9);
    for (int d = 0; d < SINKD_GGUF_MAX_DEPTH + 1; d++) {
        gb_u32(&b, 9);
        gb_u64(&b, 1);
    }
    gb_u32(&b, 4);
    gb_u64(&b, 0);
    expect_refused(raw_file(3, 0, 1, &b, &len), &len, -EINVAL, "nested deeper");
}

Test(gguf, hostile_tensors)
{
    size_t len;
    uint64_t ne[5] = {32, 2, 1, 1, 1};
    /* sanity: the helper's file is valid as made */
    uint8_t *ok = tensor_file(2, ne, 0, 0, 256, &len);
    sinkd_gguf *g = NULL;
    char err[256] = "";
    cr_assert_eq(open_buf(ok, len, &g, err), 0, "%s", err);
    sinkd_gguf_close(g);
    free(ok);

    expect_refused(tensor_file(2, ne, 0, 32, 256, &len), &len, -EINVAL, "runs past the end");
    expect_refused(tensor_file(2, ne, 0, 1ull << 62, 256, &len), &len, -EINVAL, "runs past the end");
    expect_refused(tensor_file(2, ne, 0, 16, 512, &len), &len, -EINVAL, "not a multiple of 32");
    expect_refused(tensor_file(2, ne, 999, 0, 256, &len), &len, -EINVAL, "type 999");
    expect_refused(tensor_file(2, ne, 12, 0, 256, &len), &len, -ENOTSUP, "q4_k");
    expect_refused(tensor_file(5, ne, 0, 0, 256, &len), &len, -EINVAL, "5 dimensions");
    expect_refused(tensor_file(0, ne, 0, 0, 256, &len), &len, -EINVAL, "0 dimensions");
    uint64_t huge[2] = {1ull << 40, 1ull << 40}; /* element count overflows */
    expect_refused(tensor_file(2, huge, 0, 0, 256, &len), &len, -EINVAL, "dimension 1");
    uint64_t big[2] = {1ull << 30, 1ull << 30}; /* 2^60 elements, 2^62 bytes */
    expect_refused(tensor_file(2, big, 0, 0, 256, &len), &len, -EINVAL, "runs past the end");
    uint64_t zero[2] = {32, 0};
    expect_refused(tensor_file(2, zero, 0, 0, 256, &len), &len, -EINVAL, "dimension 1 is 0");
    uint64_t odd[2] = {31, 2}; /* q8_0 rows must hold whole blocks */
    expect_refused(tensor_file(2, odd, 8, 0, 256, &len), &len, -EINVAL, "bad size");
    /* q8_0 bytes past 2^64: 2^64 / 34 blocks wrapped the size to 16 bytes */
    uint64_t wrap[2] = {32, 542551296285575048ull};
    expect_refused(tensor_file(2, wrap, 8, 0, 256, &len), &len, -EINVAL, "bad size");

    /* two tensors of the same name */
    gb_file f = GB_FILE_INIT;
    float w[32] = {0};
    gb_tensor(&f, "w", 0, 1, ne, w, sizeof w);
    gb_tensor(&f, "w", 0, 1, ne, w, sizeof w);
    uint8_t *p = gb_finish(&f, 3, &len);
    expect_refused(p, &len, -EINVAL, "duplicate tensor 'w'");
}

Test(gguf, random_corruption_never_crashes)
{
    size_t len;
    uint8_t *p = valid_file(&len, 3);
    uint64_t x = 0x2545F4914F6CDD1Dull;
    for (int iter = 0; iter < 3000; iter++) {
        uint8_t *q = malloc(len);
        memcpy(q, p, len);
        int flips = 1 + iter % 4;
        for (int k = 0; k < flips; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            size_t at = (size_t)(x % 700); /* header, metadata and tensor infos */
            q[at % len] = (uint8_t)(x >> 32);
        }
        sinkd_gguf *g = NULL;
        char err[256];
        int rc = open_buf(q, len, &g, err);
        cr_assert(rc == 0 || rc == -EINVAL || rc == -ENOTSUP, "rc %d", rc);
        if (rc == 0) {
            /* whatever parsed must be readable within the buffer */
            for (uint64_t i = 0; i < g->n_tensors; i++) {
                const sinkd_gguf_tensor *t = &g->tensors[i];
                cr_assert((const uint8_t *)t->data + t->size <= q + len);
            }
            for (uint64_t i = 0; i < g->n_kv; i++) {
                const sinkd_gguf_value *v = &g->kv[i].value;
                if (v->type == SINKD_GGUF_ARRAY && v->count) {
                    sinkd_gguf_value e;
                    cr_assert_eq(sinkd_gguf_arr_at(v, v->count - 1, &e), 0);
                }
            }
            sinkd_gguf_close(g);
        }
        free(q);
    }
    free(p);
}

Test(gguf, file_round_trip)
{
    size_t len;
    uint8_t *p = valid_file(&len, 3);
    char *path = gb_write_tmp(p, len);
    sinkd_gguf *g = NULL;
    char err[256] = "";
    cr_assert_eq(sinkd_gguf_open(path, &g, err, sizeof err), 0, "%s", err);
    cr_assert(g->mapped);
    cr_assert_eq(g->file_size, len);
    cr_assert_not_null(sinkd_gguf_tensor_find(g, "w.q8_0"));
    sinkd_gguf_close(g);
    /* a truncated copy on disk is refused too */
    cr_assert_eq(truncate(path, (off_t)(len - 1)), 0);
    cr_assert_eq(sinkd_gguf_open(path, &g, err, sizeof err), -EINVAL);
    unlink(path);
    free(path);
    free(p);
}
