/*
 * GGUF parsing. The file is read through a cursor that knows how many bytes
 * remain; every read goes through cur__take, which refuses to step past the
 * end, so a hostile length can at worst produce an error message. Counts that
 * size an allocation are first bounded by the smallest encoding one element
 * can have times the bytes remaining.
 *
 * Layout (little-endian):
 *   u32 magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
 *   n_kv x  { string key | u32 type | value }
 *   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 type | u64 offset }
 *   padding to general.alignment | tensor data
 * where string = u64 length + bytes and array = u32 elem type + u64 count + elements.
 */
#include "gguf.h"

#include "errf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC 0x46554747u /* "GGUF" read as a little-endian u32 */

typedef struct cur {
    const uint8_t *p, *end;
    const uint8_t *base;
    char *err;
    size_t errlen;
} cur;

/* Record why parsing stopped (in the caller's buffer) and return @rc. */
#define gguf__fail(c, rc, ...) model__errf((c)->err, (c)->errlen, (rc), __VA_ARGS__)

static uint64_t cur__off(const cur *c) { return (uint64_t)(c->p - c->base); }
static uint64_t cur__left(const cur *c) { return (uint64_t)(c->end - c->p); }

/* Advance by @n bytes, returning their start, or NULL when fewer remain. */
static const uint8_t *cur__take(cur *c, uint64_t n)
{
    if (n > cur__left(c))
        return NULL;
    const uint8_t *p = c->p;
    c->p += n;
    return p;
}

static int cur__u32(cur *c, uint32_t *v, const char *what)
{
    const uint8_t *p = cur__take(c, 4);
    *v = 0;
    if (!p)
        return gguf__fail(c, -EINVAL, "gguf: truncated at offset %llu reading %s",
                          (unsigned long long)cur__off(c), what);
    memcpy(v, p, 4);
    return 0;
}

static int cur__u64(cur *c, uint64_t *v, const char *what)
{
    const uint8_t *p = cur__take(c, 8);
    *v = 0;
    if (!p)
        return gguf__fail(c, -EINVAL, "gguf: truncated at offset %llu reading %s",
                          (unsigned long long)cur__off(c), what);
    memcpy(v, p, 8);
    return 0;
}

static int cur__str(cur *c, sinkd_gguf_str *s, const char *what)
{
    uint64_t len;
    int rc = cur__u64(c, &len, what);
    if (rc)
        return rc;
    const uint8_t *p = cur__take(c, len);
    if (!p)
        return gguf__fail(c, -EINVAL,
                          "gguf: %s length %llu at offset %llu runs past the end of the file",
                          what, (unsigned long long)len, (unsigned long long)(cur__off(c) - 8));
    s->ptr = (const char *)p;
    s->len = len;
    return 0;
}

/* Encoded size of a fixed-size scalar type, 0 for string/array/unknown. */
static uint64_t gguf__scalar_size(uint32_t t)
{
    switch (t) {
    case SINKD_GGUF_UINT8: case SINKD_GGUF_INT8: case SINKD_GGUF_BOOL: return 1;
    case SINKD_GGUF_UINT16: case SINKD_GGUF_INT16: return 2;
    case SINKD_GGUF_UINT32: case SINKD_GGUF_INT32: case SINKD_GGUF_FLOAT32: return 4;
    case SINKD_GGUF_UINT64: case SINKD_GGUF_INT64: case SINKD_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

/* Smallest possible encoding of one value of type @t (strings: the length;
 * arrays: the header), so that count * min <= bytes left bounds any count. */
static uint64_t gguf__min_size(uint32_t t)
{
    if (t == SINKD_GGUF_STRING)
        return 8;
    if (t == SINKD_GGUF_ARRAY)
        return 12;
    return gguf__scalar_size(t);
}

/* Validate the value of type @t at the cursor and describe it in *@v. */
static int gguf__value(cur *c, uint32_t t, sinkd_gguf_value *v, int depth, const char *key)
{
    memset(v, 0, sizeof *v);
    v->type = t;
    if (t == SINKD_GGUF_STRING) {
        sinkd_gguf_str s;
        int rc = cur__str(c, &s, "string value");
        if (rc)
            return rc;
        v->data = (const uint8_t *)s.ptr;
        v->count = v->size = s.len;
        return 0;
    }
    if (t == SINKD_GGUF_ARRAY) {
        if (depth >= SINKD_GGUF_MAX_DEPTH)
            return gguf__fail(c, -EINVAL, "gguf: key '%s': arrays nested deeper than %d",
                              key, SINKD_GGUF_MAX_DEPTH);
        uint32_t et;
        uint64_t n;
        int rc = cur__u32(c, &et, "array type");
        if (!rc)
            rc = cur__u64(c, &n, "array count");
        if (rc)
            return rc;
        uint64_t min = gguf__min_size(et);
        if (min == 0)
            return gguf__fail(c, -EINVAL, "gguf: key '%s': unknown array element type %u", key, et);
        if (n > cur__left(c) / min)
            return gguf__fail(c, -EINVAL,
                              "gguf: key '%s': array count %llu exceeds the %llu bytes left",
                              key, (unsigned long long)n, (unsigned long long)cur__left(c));
        v->elem_type = et;
        v->count = n;
        v->data = c->p;
        if (et != SINKD_GGUF_STRING && et != SINKD_GGUF_ARRAY) {
            /* bool elements are held to what a bool scalar is held to */
            for (uint64_t i = 0; et == SINKD_GGUF_BOOL && i < n; i++)
                if (c->p[i] > 1)
                    return gguf__fail(c, -EINVAL, "gguf: key '%s': bool element %llu is %u",
                                      key, (unsigned long long)i, c->p[i]);
            c->p += n * min; /* bounded just above */
        } else {
            for (uint64_t i = 0; i < n; i++) {
                sinkd_gguf_value e;
                rc = gguf__value(c, et, &e, depth + 1, key);
                if (rc)
                    return rc;
            }
        }
        v->size = (uint64_t)(c->p - v->data);
        return 0;
    }
    uint64_t sz = gguf__scalar_size(t);
    if (sz == 0)
        return gguf__fail(c, -EINVAL, "gguf: key '%s': unknown value type %u", key, t);
    const uint8_t *p = cur__take(c, sz);
    if (!p)
        return gguf__fail(c, -EINVAL, "gguf: key '%s': value truncated", key);
    if (t == SINKD_GGUF_BOOL && *p > 1)
        return gguf__fail(c, -EINVAL, "gguf: key '%s': bool value %u", key, *p);
    v->data = p;
    v->count = 1;
    v->size = sz;
    return 0;
}

const char *sinkd_ggml_type_name(uint32_t type)
{
    static const char *const names[] = {
        [0] = "f32", [1] = "f16", [2] = "q4_0", [3] = "q4_1", [6] = "q5_0",
        [7] = "q5_1", [8] = "q8_0", [9] = "q8_1", [10] = "q2_k", [11] = "q3_k",
        [12] = "q4_k", [13] = "q5_k", [14] = "q6_k", [15] = "q8_k",
        [16] = "iq2_xxs", [17] = "iq2_xs", [18] = "iq3_xxs", [19] = "iq1_s",
        [20] = "iq4_nl", [21] = "iq3_s", [22] = "iq2_s", [23] = "iq4_xs",
        [24] = "i8", [25] = "i16", [26] = "i32", [27] = "i64", [28] = "f64",
        [29] = "iq1_m", [30] = "bf16",
    };
    if (type < sizeof names / sizeof names[0] && names[type])
        return names[type];
    return "unknown";
}

/* Bytes of @n elements of a supported tensor type, or -1 on overflow / bad
 * block multiple. @t is known to be supported. */
static int gguf__tensor_bytes(uint32_t t, uint64_t ne0, uint64_t n, uint64_t *out)
{
    switch (t) {
    case SINKD_GGML_F32:
        if (n > UINT64_MAX / 4) return -1;
        *out = n * 4;
        return 0;
    case SINKD_GGML_F16:
    case SINKD_GGML_BF16:
        if (n > UINT64_MAX / 2) return -1;
        *out = n * 2;
        return 0;
    case SINKD_GGML_Q8_0: /* blocks of 32 along rows: one f16 scale + 32 int8 */
        if (ne0 % 32 || n / 32 > UINT64_MAX / 34) return -1;
        *out = n / 32 * 34;
        return 0;
    default:
        return -1;
    }
}

static bool gguf__type_supported(uint32_t t)
{
    return t == SINKD_GGML_F32 || t == SINKD_GGML_F16 || t == SINKD_GGML_BF16 ||
           t == SINKD_GGML_Q8_0;
}

static bool gguf__str_same(sinkd_gguf_str a, sinkd_gguf_str b)
{
    return a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0;
}

/* Printable prefix of a name for error messages (names are not trusted). */
static const char *gguf__show(sinkd_gguf_str s, char *buf, size_t cap)
{
    size_t n = 0;
    for (uint64_t i = 0; i < s.len && n + 1 < cap; i++) {
        unsigned char ch = (unsigned char)s.ptr[i];
        buf[n++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    buf[n] = 0;
    return buf;
}

static int gguf__parse_kv(cur *c, sinkd_gguf *g)
{
    char name[96];
    for (uint64_t i = 0; i < g->n_kv; i++) {
        sinkd_gguf_kv *kv = &g->kv[i];
        int rc = cur__str(c, &kv->key, "metadata key");
        if (rc)
            return rc;
        gguf__show(kv->key, name, sizeof name);
        if (kv->key.len == 0)
            return gguf__fail(c, -EINVAL, "gguf: metadata entry %llu has an empty key",
                              (unsigned long long)i);
        uint32_t t;
        rc = cur__u32(c, &t, "metadata type");
        if (!rc)
            rc = gguf__value(c, t, &kv->value, 0, name);
        if (rc)
            return rc;
        for (uint64_t j = 0; j < i; j++)
            if (gguf__str_same(g->kv[j].key, kv->key))
                return gguf__fail(c, -EINVAL, "gguf: duplicate metadata key '%s'", name);
    }
    const sinkd_gguf_kv *al = sinkd_gguf_find(g, "general.alignment");
    g->alignment = SINKD_GGUF_DEFAULT_ALIGNMENT;
    if (al) {
        uint32_t a;
        if (al->value.type != SINKD_GGUF_UINT32)
            return gguf__fail(c, -EINVAL, "gguf: general.alignment is not a uint32");
        memcpy(&a, al->value.data, 4);
        if (a == 0 || (a & (a - 1)))
            return gguf__fail(c, -EINVAL, "gguf: general.alignment %u is not a power of two", a);
        g->alignment = a;
    }
    return 0;
}

static int gguf__parse_tensors(cur *c, sinkd_gguf *g)
{
    char name[96];
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        sinkd_gguf_tensor *t = &g->tensors[i];
        int rc = cur__str(c, &t->name, "tensor name");
        if (!rc)
            rc = cur__u32(c, &t->n_dims, "tensor n_dims");
        if (rc)
            return rc;
        gguf__show(t->name, name, sizeof name);
        if (t->n_dims == 0 || t->n_dims > SINKD_GGUF_MAX_DIMS)
            return gguf__fail(c, -EINVAL, "gguf: tensor '%s' has %u dimensions (1..%d allowed)",
                              name, t->n_dims, SINKD_GGUF_MAX_DIMS);
        uint64_t n = 1;
        for (uint32_t d = 0; d < SINKD_GGUF_MAX_DIMS; d++) {
            t->ne[d] = 1;
            if (d >= t->n_dims)
                continue;
            if ((rc = cur__u64(c, &t->ne[d], "tensor dimension")))
                return rc;
            if (t->ne[d] == 0 || t->ne[d] > (uint64_t)INT64_MAX || n > UINT64_MAX / t->ne[d])
                return gguf__fail(c, -EINVAL, "gguf: tensor '%s' dimension %u is %llu",
                                  name, d, (unsigned long long)t->ne[d]);
            n *= t->ne[d];
        }
        t->n_elements = n;
        if ((rc = cur__u32(c, &t->type, "tensor type")) ||
            (rc = cur__u64(c, &t->offset, "tensor offset")))
            return rc;
        if (!gguf__type_supported(t->type))
            return gguf__fail(c, strcmp(sinkd_ggml_type_name(t->type), "unknown") ? -ENOTSUP : -EINVAL,
                              "gguf: tensor '%s' has type %u (%s); sinkd reads f32, f16, bf16 and q8_0",
                              name, t->type, sinkd_ggml_type_name(t->type));
        if (gguf__tensor_bytes(t->type, t->ne[0], n, &t->size))
            return gguf__fail(c, -EINVAL, "gguf: tensor '%s' of type %s has a bad size (ne0 %llu)",
                              name, sinkd_ggml_type_name(t->type), (unsigned long long)t->ne[0]);
        if (t->offset % g->alignment)
            return gguf__fail(c, -EINVAL, "gguf: tensor '%s' offset %llu is not a multiple of %u",
                              name, (unsigned long long)t->offset, g->alignment);
        for (uint64_t j = 0; j < i; j++)
            if (gguf__str_same(g->tensors[j].name, t->name))
                return gguf__fail(c, -EINVAL, "gguf: duplicate tensor '%s'", name);
    }
    /* The data section starts at the next multiple of the alignment. */
    uint64_t off = cur__off(c);
    uint64_t pad = (g->alignment - off % g->alignment) % g->alignment;
    if (pad > g->file_size - off)
        return gguf__fail(c, -EINVAL, "gguf: file ends before its data section");
    g->data_offset = off + pad;
    uint64_t data_size = g->file_size - g->data_offset;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        sinkd_gguf_tensor *t = &g->tensors[i];
        if (t->offset > data_size || t->size > data_size - t->offset)
            return gguf__fail(c, -EINVAL,
                              "gguf: tensor '%s' (offset %llu, %llu bytes) runs past the end of the file",
                              gguf__show(t->name, name, sizeof name), (unsigned long long)t->offset,
                              (unsigned long long)t->size);
        t->data = g->base + g->data_offset + t->offset;
    }
    return 0;
}

static int gguf__parse(sinkd_gguf *g, char *err, size_t errlen)
{
    cur c = {.p = g->base, .end = g->base + g->file_size, .base = g->base,
             .err = err, .errlen = errlen};
    uint32_t magic;
    int rc = cur__u32(&c, &magic, "magic");
    if (rc)
        return rc;
    if (magic != GGUF_MAGIC)
        return gguf__fail(&c, -EINVAL, "gguf: bad magic 0x%08x (not a GGUF file)", magic);
    if ((rc = cur__u32(&c, &g->version, "version")))
        return rc;
    if (g->version != 2 && g->version != 3)
        return gguf__fail(&c, -ENOTSUP, "gguf: version %u is not supported (2 and 3 are)",
                          g->version);
    if ((rc = cur__u64(&c, &g->n_tensors, "tensor count")) ||
        (rc = cur__u64(&c, &g->n_kv, "metadata count")))
        return rc;
    /* A key is at least 8 + 1 bytes, a type 4 and a value 1; a tensor entry
     * at least 8 + 1 + 4 + 8 + 4 + 8. */
    if (g->n_kv > cur__left(&c) / 14)
        return gguf__fail(&c, -EINVAL, "gguf: metadata count %llu exceeds the file size",
                          (unsigned long long)g->n_kv);
    if (g->n_tensors > cur__left(&c) / 33)
        return gguf__fail(&c, -EINVAL, "gguf: tensor count %llu exceeds the file size",
                          (unsigned long long)g->n_tensors);
    g->kv = calloc(g->n_kv ? g->n_kv : 1, sizeof *g->kv);
    g->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors)
        return gguf__fail(&c, -ENOMEM, "gguf: out of memory");
    if ((rc = gguf__parse_kv(&c, g)))
        return rc;
    return gguf__parse_tensors(&c, g);
}

static int gguf__finish(sinkd_gguf *g, sinkd_gguf **out, char *err, size_t errlen)
{
    int rc = gguf__parse(g, err, errlen);
    if (rc) {
        sinkd_gguf_close(g);
        return rc;
    }
    *out = g;
    return 0;
}

int sinkd_gguf_open_mem(const void *buf, size_t len, sinkd_gguf **out, char *err, size_t errlen)
{
    if (!buf || !out)
        return -EINVAL;
    sinkd_gguf *g = calloc(1, sizeof *g);
    if (!g)
        return -ENOMEM;
    g->base = buf;
    g->file_size = len;
    return gguf__finish(g, out, err, errlen);
}

int sinkd_gguf_open(const char *path, sinkd_gguf **out, char *err, size_t errlen)
{
    if (!path || !out)
        return -EINVAL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int rc = -errno;
        return model__errf(err, errlen, rc, "gguf: cannot open %s: %s", path, strerror(-rc));
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int rc = -errno;
        close(fd);
        return model__errf(err, errlen, rc, "gguf: cannot stat %s: %s", path, strerror(-rc));
    }
    if (!S_ISREG(st.st_mode) || st.st_size == 0) {
        close(fd);
        return model__errf(err, errlen, -EINVAL, "gguf: %s is not a non-empty regular file", path);
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int mrc = m == MAP_FAILED ? -errno : 0;
    close(fd);
    if (mrc)
        return model__errf(err, errlen, mrc, "gguf: cannot map %s: %s", path, strerror(-mrc));
    sinkd_gguf *g = calloc(1, sizeof *g);
    if (!g) {
        munmap(m, (size_t)st.st_size);
        return -ENOMEM;
    }
    g->base = m;
    g->file_size = (uint64_t)st.st_size;
    g->mapped = true;
    return gguf__finish(g, out, err, errlen);
}

void sinkd_gguf_close(sinkd_gguf *g)
{
    if (!g)
        return;
    if (g->mapped)
        munmap((void *)g->base, g->file_size);
    free(g->kv);
    free(g->tensors);
    free(g);
}

bool sinkd_gguf_str_eq(sinkd_gguf_str s, const char *cstr)
{
    size_t n = strlen(cstr);
    return s.len == n && memcmp(s.ptr, cstr, n) == 0;
}

const sinkd_gguf_kv *sinkd_gguf_find(const sinkd_gguf *g, const char *key)
{
    if (!g || !key)
        return NULL;
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key.ptr && sinkd_gguf_str_eq(g->kv[i].key, key))
            return &g->kv[i];
    return NULL;
}

const sinkd_gguf_tensor *sinkd_gguf_tensor_find(const sinkd_gguf *g, const char *name)
{
    if (!g || !name)
        return NULL;
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].name.ptr && sinkd_gguf_str_eq(g->tensors[i].name, name))
            return &g->tensors[i];
    return NULL;
}

/* Scalar reads: integers are widened through the widest type of their sign. */
static int gguf__as_int(const sinkd_gguf_value *v, int64_t *s, uint64_t *u, bool *is_signed)
{
    const uint8_t *p = v->data;
    *is_signed = true;
    switch (v->type) {
    case SINKD_GGUF_UINT8: case SINKD_GGUF_BOOL: *u = p[0]; *is_signed = false; return 0;
    case SINKD_GGUF_INT8: { int8_t x; memcpy(&x, p, 1); *s = x; return 0; }
    case SINKD_GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); *u = x; *is_signed = false; return 0; }
    case SINKD_GGUF_INT16: { int16_t x; memcpy(&x, p, 2); *s = x; return 0; }
    case SINKD_GGUF_UINT32: { uint32_t x; memcpy(&x, p, 4); *u = x; *is_signed = false; return 0; }
    case SINKD_GGUF_INT32: { int32_t x; memcpy(&x, p, 4); *s = x; return 0; }
    case SINKD_GGUF_UINT64: memcpy(u, p, 8); *is_signed = false; return 0;
    case SINKD_GGUF_INT64: memcpy(s, p, 8); return 0;
    default: return -EINVAL;
    }
}

int sinkd_gguf_value_i64(const sinkd_gguf_value *v, int64_t *out)
{
    int64_t s = 0;
    uint64_t u = 0;
    bool sg;
    if (!v || gguf__as_int(v, &s, &u, &sg))
        return -EINVAL;
    if (!sg) {
        if (u > (uint64_t)INT64_MAX)
            return -EINVAL;
        s = (int64_t)u;
    }
    *out = s;
    return 0;
}

int sinkd_gguf_value_f64(const sinkd_gguf_value *v, double *out)
{
    if (!v)
        return -EINVAL;
    if (v->type == SINKD_GGUF_FLOAT32) {
        float f;
        memcpy(&f, v->data, 4);
        *out = f;
        return 0;
    }
    if (v->type == SINKD_GGUF_FLOAT64) {
        memcpy(out, v->data, 8);
        return 0;
    }
    int64_t s = 0;
    uint64_t u = 0;
    bool sg;
    if (gguf__as_int(v, &s, &u, &sg))
        return -EINVAL;
    *out = sg ? (double)s : (double)u;
    return 0;
}

static const sinkd_gguf_value *gguf__scalar(const sinkd_gguf *g, const char *key, int *rc)
{
    const sinkd_gguf_kv *kv = sinkd_gguf_find(g, key);
    *rc = kv ? 0 : -ENOENT;
    return kv ? &kv->value : NULL;
}

int sinkd_gguf_get_u64(const sinkd_gguf *g, const char *key, uint64_t *out)
{
    int rc;
    const sinkd_gguf_value *v = gguf__scalar(g, key, &rc);
    if (!v)
        return rc;
    int64_t s = 0;
    uint64_t u = 0;
    bool sg;
    if (v->type == SINKD_GGUF_BOOL || gguf__as_int(v, &s, &u, &sg))
        return -EINVAL;
    if (sg) {
        if (s < 0)
            return -EINVAL;
        u = (uint64_t)s;
    }
    *out = u;
    return 0;
}

int sinkd_gguf_get_u32(const sinkd_gguf *g, const char *key, uint32_t *out)
{
    uint64_t u;
    int rc = sinkd_gguf_get_u64(g, key, &u);
    if (rc)
        return rc;
    if (u > UINT32_MAX)
        return -EINVAL;
    *out = (uint32_t)u;
    return 0;
}

int sinkd_gguf_get_i64(const sinkd_gguf *g, const char *key, int64_t *out)
{
    int rc;
    const sinkd_gguf_value *v = gguf__scalar(g, key, &rc);
    if (!v)
        return rc;
    if (v->type == SINKD_GGUF_BOOL)
        return -EINVAL;
    return sinkd_gguf_value_i64(v, out);
}

int sinkd_gguf_get_f32(const sinkd_gguf *g, const char *key, float *out)
{
    int rc;
    const sinkd_gguf_value *v = gguf__scalar(g, key, &rc);
    if (!v)
        return rc;
    double d;
    if (v->type == SINKD_GGUF_BOOL || sinkd_gguf_value_f64(v, &d))
        return -EINVAL;
    *out = (float)d;
    return 0;
}

int sinkd_gguf_get_bool(const sinkd_gguf *g, const char *key, bool *out)
{
    int rc;
    const sinkd_gguf_value *v = gguf__scalar(g, key, &rc);
    if (!v)
        return rc;
    if (v->type != SINKD_GGUF_BOOL)
        return -EINVAL;
    *out = v->data[0] != 0;
    return 0;
}

int sinkd_gguf_get_str(const sinkd_gguf *g, const char *key, sinkd_gguf_str *out)
{
    int rc;
    const sinkd_gguf_value *v = gguf__scalar(g, key, &rc);
    if (!v)
        return rc;
    if (v->type != SINKD_GGUF_STRING)
        return -EINVAL;
    out->ptr = (const char *)v->data;
    out->len = v->count;
    return 0;
}

int sinkd_gguf_get_arr(const sinkd_gguf *g, const char *key, sinkd_gguf_value *out)
{
    int rc;
    const sinkd_gguf_value *v = gguf__scalar(g, key, &rc);
    if (!v)
        return rc;
    if (v->type != SINKD_GGUF_ARRAY)
        return -EINVAL;
    *out = *v;
    return 0;
}

/* Re-walk an element already validated at open: it cannot fail here. */
static void gguf__elem(const uint8_t *p, uint32_t t, sinkd_gguf_value *out)
{
    memset(out, 0, sizeof *out);
    out->type = t;
    if (t == SINKD_GGUF_STRING) {
        uint64_t len;
        memcpy(&len, p, 8);
        out->data = p + 8;
        out->count = len;
        out->size = len;
        return;
    }
    if (t == SINKD_GGUF_ARRAY) {
        uint32_t et;
        uint64_t n;
        memcpy(&et, p, 4);
        memcpy(&n, p + 4, 8);
        out->elem_type = et;
        out->count = n;
        out->data = p + 12;
        uint64_t fixed = gguf__scalar_size(et);
        if (fixed) {
            out->size = n * fixed;
            return;
        }
        const uint8_t *q = out->data;
        for (uint64_t i = 0; i < n; i++) {
            sinkd_gguf_value e;
            gguf__elem(q, et, &e);
            q = e.data + e.size;
        }
        out->size = (uint64_t)(q - out->data);
        return;
    }
    out->data = p;
    out->count = 1;
    out->size = gguf__scalar_size(t);
}

int sinkd_gguf_arr_at(const sinkd_gguf_value *arr, uint64_t i, sinkd_gguf_value *out)
{
    if (!arr || !out || arr->type != SINKD_GGUF_ARRAY)
        return -EINVAL;
    if (i >= arr->count)
        return -ERANGE;
    uint64_t fixed = gguf__scalar_size(arr->elem_type);
    if (fixed) {
        gguf__elem(arr->data + i * fixed, arr->elem_type, out);
        return 0;
    }
    const uint8_t *p = arr->data;
    for (uint64_t k = 0;; k++) {
        gguf__elem(p, arr->elem_type, out);
        if (k == i)
            return 0;
        p = out->data + out->size;
    }
}

int sinkd_gguf_arr_strings(const sinkd_gguf_value *arr, sinkd_gguf_str *out, uint64_t n)
{
    if (!arr || !out || arr->type != SINKD_GGUF_ARRAY || arr->elem_type != SINKD_GGUF_STRING ||
        n != arr->count)
        return -EINVAL;
    const uint8_t *p = arr->data;
    for (uint64_t i = 0; i < n; i++) {
        sinkd_gguf_value e;
        gguf__elem(p, SINKD_GGUF_STRING, &e);
        out[i].ptr = (const char *)e.data;
        out[i].len = e.count;
        p = e.data + e.size;
    }
    return 0;
}

/* Convert every element of a numeric array with @conv into @out. */
static int gguf__arr_convert(const sinkd_gguf_value *arr, uint64_t n, void *out,
                             int (*conv)(const sinkd_gguf_value *e, void *out, uint64_t i))
{
    if (!arr || !out || arr->type != SINKD_GGUF_ARRAY || n != arr->count ||
        !gguf__scalar_size(arr->elem_type))
        return -EINVAL;
    for (uint64_t i = 0; i < n; i++) {
        sinkd_gguf_value e;
        sinkd_gguf_arr_at(arr, i, &e);
        if (conv(&e, out, i))
            return -EINVAL;
    }
    return 0;
}

static int gguf__conv_f32(const sinkd_gguf_value *e, void *out, uint64_t i)
{
    double d;
    if (sinkd_gguf_value_f64(e, &d))
        return -EINVAL;
    ((float *)out)[i] = (float)d;
    return 0;
}

static int gguf__conv_i32(const sinkd_gguf_value *e, void *out, uint64_t i)
{
    int64_t x;
    if (sinkd_gguf_value_i64(e, &x) || x < INT32_MIN || x > INT32_MAX)
        return -EINVAL;
    ((int32_t *)out)[i] = (int32_t)x;
    return 0;
}

int sinkd_gguf_arr_f32(const sinkd_gguf_value *arr, float *out, uint64_t n)
{
    return gguf__arr_convert(arr, n, out, gguf__conv_f32);
}

int sinkd_gguf_arr_i32(const sinkd_gguf_value *arr, int32_t *out, uint64_t n)
{
    return gguf__arr_convert(arr, n, out, gguf__conv_i32);
}
