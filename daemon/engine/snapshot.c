/* Session snapshot files: format, checksums, atomic writer, checked reader
 * (see snapshot.h for the layout). */
#include "snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "snapshot files are little-endian and written from memory as they are"
#endif

static const char snap__magic[8] = { 'S', 'I', 'N', 'K', 'D', 'S', 'N', 'P' };

#define SNAP__TAG(a, b, c, d) \
    ((uint32_t)(a) | (uint32_t)(b) << 8 | (uint32_t)(c) << 16 | (uint32_t)(d) << 24)
#define SNAP__HEAD SNAP__TAG('H', 'E', 'A', 'D')
#define SNAP__LAYR SNAP__TAG('L', 'A', 'Y', 'R')
#define SNAP__END SNAP__TAG('E', 'N', 'D', ' ')
#define SNAP__SECTION_HDR 16u
#define SNAP__FILE_HDR 16u
#define SNAP__FP_SPAN (1u << 20)

/* ---- checksums and fingerprints ----------------------------------------------- */

static uint32_t snap__crc_table[256];
static pthread_once_t snap__crc_once = PTHREAD_ONCE_INIT;

static void snap__crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        snap__crc_table[i] = c;
    }
}

uint32_t sinkd_snap_crc32(uint32_t crc, const void *p, size_t n)
{
    const uint8_t *b = p;

    pthread_once(&snap__crc_once, snap__crc_init);
    crc = ~crc;
    for (size_t i = 0; i < n; i++)
        crc = snap__crc_table[(crc ^ b[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

static uint64_t snap__fnv(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* Hash @len bytes of @fd from @off into *@h. */
static int snap__hash_span(int fd, uint64_t off, uint64_t len, uint8_t *buf, uint64_t *h)
{
    while (len > 0) {
        ssize_t n = pread(fd, buf, len < 65536 ? (size_t)len : 65536, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        *h = snap__fnv(*h, buf, (size_t)n);
        off += (uint64_t)n;
        len -= (uint64_t)n;
    }
    return 0;
}

int sinkd_snap_fingerprint(const char *path, uint64_t *size, uint64_t *hash)
{
    uint64_t h = 0xcbf29ce484222325ull, head, tail;
    struct stat st;
    uint8_t *buf;
    int fd, rc;

    if (!path || !size || !hash)
        return -EINVAL;
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return -errno;
    if (fstat(fd, &st) < 0 || !(buf = malloc(65536))) {
        rc = -errno;
        close(fd);
        return rc ? rc : -ENOMEM;
    }
    head = (uint64_t)st.st_size < SNAP__FP_SPAN ? (uint64_t)st.st_size : SNAP__FP_SPAN;
    tail = (uint64_t)st.st_size - head < SNAP__FP_SPAN ? (uint64_t)st.st_size - head
                                                       : SNAP__FP_SPAN;
    rc = snap__hash_span(fd, 0, head, buf, &h);
    if (rc == 0)
        rc = snap__hash_span(fd, (uint64_t)st.st_size - tail, tail, buf, &h);
    free(buf);
    close(fd);
    *size = (uint64_t)st.st_size;
    *hash = h;
    return rc;
}

/* ---- owned structs ----------------------------------------------------------- */

void sinkd_snap_meta_free(sinkd_snap_meta *m)
{
    if (!m)
        return;
    free(m->hist);
    free(m->next_pos);
    free(m->logits);
    memset(m, 0, sizeof *m);
}

void sinkd_snap_layer_free(sinkd_snap_layer *l)
{
    if (!l)
        return;
    free(l->len);
    free(l->pos);
    free(l->score);
    free(l->k);
    free(l->v);
    memset(l, 0, sizeof *l);
}

int sinkd_snap_layer_alloc(sinkd_snap_layer *l, int32_t n_lanes, int32_t head_dim,
                           const int32_t *len)
{
    int64_t total = 0;

    memset(l, 0, sizeof *l);
    if (n_lanes < 1 || n_lanes > SINKD_SNAP_HEADS_MAX || head_dim < 1 ||
        head_dim > SINKD_SNAP_HEAD_DIM_MAX || !len)
        return -EINVAL;
    for (int32_t h = 0; h < n_lanes; h++) {
        if (len[h] < 0)
            return -EINVAL;
        total += len[h];
    }
    l->n_lanes = n_lanes;
    l->head_dim = head_dim;
    l->total = total;
    l->len = malloc((size_t)n_lanes * sizeof *l->len);
    l->pos = calloc((size_t)total + 1, sizeof *l->pos);
    l->score = calloc((size_t)total + 1, sizeof *l->score);
    l->k = calloc((size_t)total * (size_t)head_dim + 1, sizeof *l->k);
    l->v = calloc((size_t)total * (size_t)head_dim + 1, sizeof *l->v);
    if (!l->len || !l->pos || !l->score || !l->k || !l->v) {
        sinkd_snap_layer_free(l);
        return -ENOMEM;
    }
    memcpy(l->len, len, (size_t)n_lanes * sizeof *l->len);
    return 0;
}

/* ---- HEAD encoding -------------------------------------------------------------- */

typedef struct snap__buf {
    uint8_t *p;
    size_t len, cap;
    bool oom;
} snap__buf;

static void snap__put(snap__buf *b, const void *p, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        uint8_t *q;
        while (cap < b->len + n)
            cap *= 2;
        if (!(q = realloc(b->p, cap))) {
            b->oom = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
}

#define SNAP__PUT(b, type, val)        \
    do {                               \
        type v__ = (type)(val);        \
        snap__put((b), &v__, sizeof v__); \
    } while (0)

static void snap__put_str(snap__buf *b, const char *s)
{
    uint32_t n = (uint32_t)strlen(s);

    SNAP__PUT(b, uint32_t, n);
    snap__put(b, s, n);
}

static void snap__encode_head(snap__buf *b, const sinkd_snap_meta *m)
{
    snap__put_str(b, m->model);
    SNAP__PUT(b, uint64_t, m->model_size);
    SNAP__PUT(b, uint64_t, m->model_hash);
    SNAP__PUT(b, int32_t, m->n_vocab);
    SNAP__PUT(b, int32_t, m->layers);
    SNAP__PUT(b, int32_t, m->q_heads);
    SNAP__PUT(b, int32_t, m->kv_heads);
    SNAP__PUT(b, int32_t, m->head_dim);
    SNAP__PUT(b, uint8_t, m->geom_dtype);
    SNAP__PUT(b, float, m->rope.theta);
    SNAP__PUT(b, float, m->rope.scale);
    SNAP__PUT(b, uint8_t, m->rope.style);
    SNAP__PUT(b, uint8_t, m->rope.mode);
    SNAP__PUT(b, int32_t, m->page_tokens);
    SNAP__PUT(b, uint8_t, m->kv_dtype);
    SNAP__PUT(b, uint64_t, m->id);
    SNAP__PUT(b, uint32_t, m->uid);
    SNAP__PUT(b, uint8_t, m->persist);
    snap__put_str(b, m->secret);
    SNAP__PUT(b, int64_t, m->max_pages);
    SNAP__PUT(b, int64_t, m->tokens);
    SNAP__PUT(b, uint64_t, m->evictions);
    SNAP__PUT(b, uint64_t, m->evicted_tokens);
    SNAP__PUT(b, uint8_t, m->evicted_after_prefill);
    SNAP__PUT(b, uint8_t, m->rope_mode);
    snap__put_str(b, m->policy);
    snap__put_str(b, m->params);
    snap__put_str(b, m->fallback);
    SNAP__PUT(b, int32_t, m->pending);
    SNAP__PUT(b, uint8_t, m->has_logits);
    SNAP__PUT(b, uint32_t, m->hist_len);
    snap__put(b, m->hist, (size_t)m->hist_len * sizeof *m->hist);
    snap__put(b, m->next_pos, (size_t)m->layers * sizeof *m->next_pos);
    if (m->has_logits)
        snap__put(b, m->logits, (size_t)m->n_vocab * sizeof *m->logits);
}

/* A cursor over a checked payload. The first failure sticks; its message
 * names the field. */
typedef struct snap__cur {
    const uint8_t *p;
    size_t len, off;
    const char *bad;              /* the first field that failed, or NULL */
} snap__cur;

static bool snap__get(snap__cur *c, void *out, size_t n, const char *field)
{
    if (c->bad)
        return false;
    if (n > c->len - c->off) {
        c->bad = field;
        return false;
    }
    memcpy(out, c->p + c->off, n);
    c->off += n;
    return true;
}

static void snap__range(snap__cur *c, int64_t v, int64_t lo, int64_t hi, const char *field)
{
    if (!c->bad && (v < lo || v > hi))
        c->bad = field;
}

/* An integer field that fits int64_t, read and range-checked. */
#define SNAP__GET(c, type, dst, lo, hi, field)                   \
    do {                                                         \
        type v__ = 0;                                            \
        if (snap__get((c), &v__, sizeof v__, (field)))           \
            snap__range((c), (int64_t)v__, (lo), (hi), (field)); \
        (dst) = v__;                                             \
    } while (0)

static void snap__get_bool(snap__cur *c, bool *dst, const char *field)
{
    uint8_t v = 0;

    if (snap__get(c, &v, 1, field) && v > 1)
        c->bad = field;
    *dst = v == 1;
}

/* A string of at most @max bytes without NUL into @dst[max + 1]. */
static void snap__get_str(snap__cur *c, char *dst, size_t max, const char *field)
{
    uint32_t n = 0;

    dst[0] = '\0';
    if (!snap__get(c, &n, 4, field))
        return;
    if (n > max || n > c->len - c->off || memchr(c->p + c->off, 0, n)) {
        c->bad = field;
        return;
    }
    memcpy(dst, c->p + c->off, n);
    dst[n] = '\0';
    c->off += n;
}

/* An array of @n items of @size; the count was checked against the bytes
 * left before allocating. */
static void *snap__get_array(snap__cur *c, size_t n, size_t size, const char *field)
{
    void *p;

    if (c->bad)
        return NULL;
    if (n > (c->len - c->off) / size) {
        c->bad = field;
        return NULL;
    }
    if (!(p = malloc(n * size + 1))) {
        c->bad = "(out of memory)";
        return NULL;
    }
    memcpy(p, c->p + c->off, n * size);
    c->off += n * size;
    return p;
}

static bool snap__hex32(const char *s)
{
    if (strlen(s) != 32)
        return false;
    for (int i = 0; i < 32; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static void snap__decode_head(snap__cur *c, sinkd_snap_meta *m)
{
    snap__get_str(c, m->model, SINKD_SNAP_NAME_MAX, "model");
    snap__get(c, &m->model_size, 8, "model_size");
    snap__get(c, &m->model_hash, 8, "model_hash");
    SNAP__GET(c, int32_t, m->n_vocab, 0, SINKD_SNAP_VOCAB_MAX, "n_vocab");
    SNAP__GET(c, int32_t, m->layers, 1, SINKD_SNAP_LAYERS_MAX, "layers");
    SNAP__GET(c, int32_t, m->q_heads, 1, SINKD_SNAP_HEADS_MAX, "q_heads");
    SNAP__GET(c, int32_t, m->kv_heads, 1, SINKD_SNAP_HEADS_MAX, "kv_heads");
    SNAP__GET(c, int32_t, m->head_dim, 16, SINKD_SNAP_HEAD_DIM_MAX, "head_dim");
    SNAP__GET(c, uint8_t, m->geom_dtype, 0, SINKD_BF16, "geometry dtype");
    snap__get(c, &m->rope.theta, 4, "rope_theta");
    snap__get(c, &m->rope.scale, 4, "rope_scale");
    SNAP__GET(c, uint8_t, m->rope.style, 0, SINKD_ROPE_NEOX, "rope_style");
    SNAP__GET(c, uint8_t, m->rope.mode, 0, SINKD_ROPE_CACHE, "rope_mode");
    SNAP__GET(c, int32_t, m->page_tokens, 1, 4096, "page_tokens");
    SNAP__GET(c, uint8_t, m->kv_dtype, 0, SINKD_BF16, "kv_dtype");
    if (snap__get(c, &m->id, 8, "id") && m->id == 0)
        c->bad = "id";
    SNAP__GET(c, uint32_t, m->uid, 0, UINT32_MAX, "uid");
    snap__get_bool(c, &m->persist, "persist");
    snap__get_str(c, m->secret, 32, "secret");
    SNAP__GET(c, int64_t, m->max_pages, -1, INT64_MAX, "max_pages");
    SNAP__GET(c, int64_t, m->tokens, 0, INT32_MAX, "tokens");
    snap__get(c, &m->evictions, 8, "evictions");
    snap__get(c, &m->evicted_tokens, 8, "evicted_tokens");
    snap__get_bool(c, &m->evicted_after_prefill, "evicted_after_prefill");
    SNAP__GET(c, uint8_t, m->rope_mode, 0, SINKD_ROPE_CACHE, "lane rope mode");
    snap__get_str(c, m->policy, SINKD_SNAP_NAME_MAX, "policy");
    snap__get_str(c, m->params, SINKD_SNAP_PARAMS_MAX, "params");
    snap__get_str(c, m->fallback, SINKD_SNAP_NAME_MAX, "fallback");
    SNAP__GET(c, int32_t, m->pending, -1, m->n_vocab - 1, "pending");
    snap__get_bool(c, &m->has_logits, "has_logits");
    SNAP__GET(c, uint32_t, m->hist_len, 0, SINKD_SNAP_HIST_MAX, "hist_len");
    if (c->bad)
        return;
    if (!(m->rope.theta > 0) || !isfinite(m->rope.theta) || !(m->rope.scale >= 1) ||
        !isfinite(m->rope.scale))
        c->bad = "rope";
    else if (m->q_heads % m->kv_heads != 0 || m->head_dim % 16 != 0)
        c->bad = "geometry";
    else if ((m->model[0] != '\0') != (m->n_vocab > 0) || (m->has_logits && !m->n_vocab))
        c->bad = "model/n_vocab";
    else if (!snap__hex32(m->secret))
        c->bad = "secret";
    else if (!m->policy[0])
        c->bad = "policy";
    if (c->bad)
        return;
    m->hist = snap__get_array(c, m->hist_len, sizeof *m->hist, "hist");
    for (uint32_t i = 0; !c->bad && i < m->hist_len; i++)
        if (m->hist[i] < 0 || m->hist[i] >= (m->n_vocab ? m->n_vocab : INT32_MAX))
            c->bad = "hist";
    m->next_pos = snap__get_array(c, (size_t)m->layers, sizeof *m->next_pos, "next_pos");
    for (int32_t i = 0; !c->bad && i < m->layers; i++)
        if (m->next_pos[i] < 0)
            c->bad = "next_pos";
    if (m->has_logits)
        m->logits = snap__get_array(c, (size_t)m->n_vocab, sizeof *m->logits, "logits");
    if (!c->bad && c->off != c->len)
        c->bad = "trailing bytes";
}

/* ---- writer ---------------------------------------------------------------------- */

static void snap__wr(sinkd_snap_writer *w, const void *p, size_t n)
{
    if (!w->err && n && fwrite(p, 1, n, w->f) != n)
        w->err = errno ? -errno : -EIO;
}

static void snap__wr_section(sinkd_snap_writer *w, uint32_t tag, uint32_t crc, uint64_t len)
{
    snap__wr(w, &tag, 4);
    snap__wr(w, &crc, 4);
    snap__wr(w, &len, 8);
}

void sinkd_snap_write_abort(sinkd_snap_writer *w)
{
    if (!w)
        return;
    if (w->f) {
        fclose(w->f);
        unlinkat(w->dirfd, w->tmp, 0);
    }
    if (w->dirfd >= 0)
        close(w->dirfd);
    *w = (sinkd_snap_writer)SINKD_SNAP_WRITER_INIT;
}

int sinkd_snap_write_begin(sinkd_snap_writer *w, const char *dir, const char *name,
                           const sinkd_snap_meta *m)
{
    snap__buf b = { 0 };
    uint32_t hdr[2];
    int fd;

    if (!w || !dir || !name || !m || !name[0] || strchr(name, '/') ||
        strlen(name) + 6 > sizeof w->tmp || m->layers < 1 ||
        (m->has_logits && (!m->logits || m->n_vocab < 1)) || (m->hist_len && !m->hist) ||
        !m->next_pos)
        return -EINVAL;
    *w = (sinkd_snap_writer)SINKD_SNAP_WRITER_INIT;
    snprintf(w->name, sizeof w->name, "%s", name);
    snprintf(w->tmp, sizeof w->tmp, ".tmp.%s", name);
    if ((w->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        int rc = -errno;
        *w = (sinkd_snap_writer)SINKD_SNAP_WRITER_INIT;
        return rc;
    }
    fd = openat(w->dirfd, w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 || !(w->f = fdopen(fd, "wb"))) {
        int rc = -errno;
        if (fd >= 0) {
            close(fd);
            unlinkat(w->dirfd, w->tmp, 0);
        }
        close(w->dirfd);
        *w = (sinkd_snap_writer)SINKD_SNAP_WRITER_INIT;
        return rc;
    }
    w->layers_left = m->layers;
    snap__encode_head(&b, m);
    if (b.oom) {
        free(b.p);
        sinkd_snap_write_abort(w);
        return -ENOMEM;
    }
    hdr[0] = SINKD_SNAP_VERSION;
    hdr[1] = (uint32_t)m->layers;
    snap__wr(w, snap__magic, sizeof snap__magic);
    snap__wr(w, hdr, sizeof hdr);
    snap__wr_section(w, SNAP__HEAD, sinkd_snap_crc32(0, b.p, b.len), b.len);
    snap__wr(w, b.p, b.len);
    free(b.p);
    if (w->err) {
        int rc = w->err;
        sinkd_snap_write_abort(w);
        return rc;
    }
    return 0;
}

/* The pieces of one lane in file order: pos, score, K, V. */
static void snap__lane_pieces(const sinkd_snap_layer *l, int64_t o, int32_t len,
                              const void *p[4], size_t n[4])
{
    size_t hd = (size_t)l->head_dim;

    p[0] = l->pos + o;
    p[1] = l->score + o;
    p[2] = l->k + (size_t)o * hd;
    p[3] = l->v + (size_t)o * hd;
    n[0] = n[1] = (size_t)len * 4;
    n[2] = n[3] = (size_t)len * hd * 4;
}

int sinkd_snap_write_layer(sinkd_snap_writer *w, const sinkd_snap_layer *l)
{
    uint64_t bytes;
    uint32_t crc;
    int64_t o = 0;

    if (!w || !w->f || !l || w->layers_left < 1)
        return -EINVAL;
    if (w->err)
        return w->err;
    bytes = (uint64_t)l->n_lanes * 4 + (uint64_t)l->total * (8 + 8 * (uint64_t)l->head_dim);
    crc = sinkd_snap_crc32(0, l->len, (size_t)l->n_lanes * 4);
    for (int32_t h = 0; h < l->n_lanes; o += l->len[h++]) {
        const void *p[4];
        size_t n[4];
        snap__lane_pieces(l, o, l->len[h], p, n);
        for (int i = 0; i < 4; i++)
            crc = sinkd_snap_crc32(crc, p[i], n[i]);
    }
    snap__wr_section(w, SNAP__LAYR, crc, bytes);
    snap__wr(w, l->len, (size_t)l->n_lanes * 4);
    o = 0;
    for (int32_t h = 0; h < l->n_lanes; o += l->len[h++]) {
        const void *p[4];
        size_t n[4];
        snap__lane_pieces(l, o, l->len[h], p, n);
        for (int i = 0; i < 4; i++)
            snap__wr(w, p[i], n[i]);
    }
    w->layers_left--;
    return w->err;
}

int sinkd_snap_write_commit(sinkd_snap_writer *w)
{
    int rc;

    if (!w || !w->f)
        return -EINVAL;
    if (w->layers_left != 0 && !w->err)
        w->err = -EINVAL;
    snap__wr_section(w, SNAP__END, sinkd_snap_crc32(0, NULL, 0), 0);
    if (!w->err && fflush(w->f) != 0)
        w->err = -errno;
    if (!w->err && fsync(fileno(w->f)) != 0)
        w->err = -errno;
    if (!w->err && renameat(w->dirfd, w->tmp, w->dirfd, w->name) != 0)
        w->err = -errno;
    if (w->err) {
        rc = w->err;
        sinkd_snap_write_abort(w);
        return rc;
    }
    /* the file is in place: from here a failure cannot undo the rename */
    rc = fclose(w->f) == 0 ? 0 : SINKD_SNAP_NOT_DURABLE;
    w->f = NULL;
    /* the rename is durable only once the directory is */
    if (fsync(w->dirfd) != 0)
        rc = SINKD_SNAP_NOT_DURABLE;
    close(w->dirfd);
    *w = (sinkd_snap_writer)SINKD_SNAP_WRITER_INIT;
    return rc;
}

/* ---- reader ---------------------------------------------------------------------- */

static int snap__fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int snap__fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

void sinkd_snap_read_end(sinkd_snap_reader *r)
{
    if (!r)
        return;
    if (r->f)
        fclose(r->f);
    *r = (sinkd_snap_reader)SINKD_SNAP_READER_INIT;
}

static int snap__read(sinkd_snap_reader *r, void *p, size_t n)
{
    if (n > r->size - r->off)
        return -EBADMSG;
    if (n && fread(p, 1, n, r->f) != n)
        return ferror(r->f) ? -EIO : -EBADMSG;
    r->off += n;
    return 0;
}

/* The header of the next section, which must be @tag, and its length
 * (checked against the bytes left). */
static int snap__section(sinkd_snap_reader *r, uint32_t tag, const char *what, uint32_t *crc,
                         uint64_t *len, char *err, size_t errlen)
{
    uint32_t h[2];
    int rc;

    if ((rc = snap__read(r, h, 8)) < 0 || (rc = snap__read(r, len, 8)) < 0)
        return snap__fail(err, errlen, rc, "truncated before the %s section (offset %llu)",
                          what, (unsigned long long)r->off);
    if (h[0] != tag)
        return snap__fail(err, errlen, -EBADMSG, "expected the %s section at offset %llu",
                          what, (unsigned long long)(r->off - SNAP__SECTION_HDR));
    if (*len > r->size - r->off)
        return snap__fail(err, errlen, -EBADMSG,
                          "%s section of %llu bytes runs past the end of the file (truncated)",
                          what, (unsigned long long)*len);
    *crc = h[1];
    return 0;
}

/* Read the @len-byte payload of section @what and check its CRC. */
static int snap__payload(sinkd_snap_reader *r, void *p, uint64_t len, uint32_t crc,
                         const char *what, char *err, size_t errlen)
{
    int rc = snap__read(r, p, (size_t)len);

    if (rc < 0)
        return snap__fail(err, errlen, rc, "%s section: %s", what,
                          rc == -EIO ? "read error" : "truncated");
    if (sinkd_snap_crc32(0, p, (size_t)len) != crc)
        return snap__fail(err, errlen, -EBADMSG, "%s section: checksum mismatch", what);
    return 0;
}

int sinkd_snap_read_begin(sinkd_snap_reader *r, const char *path, sinkd_snap_meta *m,
                          char *err, size_t errlen)
{
    uint32_t crc, hdr[2];
    uint64_t len;
    struct stat st;
    snap__cur c = { 0 };
    char magic[8];
    uint8_t *buf = NULL;
    int rc;

    if (!r || !path || !m)
        return -EINVAL;
    *r = (sinkd_snap_reader)SINKD_SNAP_READER_INIT;
    memset(m, 0, sizeof *m);
    if (!(r->f = fopen(path, "rbe")))
        return snap__fail(err, errlen, -errno, "%s", strerror(errno));
    if (fstat(fileno(r->f), &st) < 0 || !S_ISREG(st.st_mode)) {
        sinkd_snap_read_end(r);
        return snap__fail(err, errlen, -EBADMSG, "not a regular file");
    }
    r->size = (uint64_t)st.st_size;
    if (snap__read(r, magic, 8) < 0 || memcmp(magic, snap__magic, 8) != 0) {
        rc = snap__fail(err, errlen, -EBADMSG, "not a sinkd snapshot (bad magic)");
        goto fail;
    }
    if ((rc = snap__read(r, hdr, 8)) < 0) {
        rc = snap__fail(err, errlen, -EBADMSG, "truncated in the file header");
        goto fail;
    }
    if (hdr[0] != SINKD_SNAP_VERSION) {
        rc = snap__fail(err, errlen, -ENOTSUP, "format version %u, this sinkd reads %u",
                        hdr[0], SINKD_SNAP_VERSION);
        goto fail;
    }
    if ((rc = snap__section(r, SNAP__HEAD, "HEAD", &crc, &len, err, errlen)) < 0)
        goto fail;
    if (!(buf = malloc((size_t)len + 1))) {
        rc = snap__fail(err, errlen, -ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = snap__payload(r, buf, len, crc, "HEAD", err, errlen)) < 0)
        goto fail;
    c = (snap__cur){ buf, (size_t)len, 0, NULL };
    snap__decode_head(&c, m);
    if (!c.bad && (int64_t)hdr[1] != m->layers)
        c.bad = "layer count";
    if (c.bad) {
        rc = snap__fail(err, errlen, strcmp(c.bad, "(out of memory)") ? -EBADMSG : -ENOMEM,
                        "HEAD section: bad or truncated field '%s'", c.bad);
        goto fail;
    }
    free(buf);
    r->layers = r->layers_left = m->layers;
    r->kv_heads = m->kv_heads;
    r->head_dim = m->head_dim;
    return 0;
fail:
    free(buf);
    sinkd_snap_meta_free(m);
    sinkd_snap_read_end(r);
    return rc;
}

/* After the last layer: END, then nothing. */
static int snap__end(sinkd_snap_reader *r, char *err, size_t errlen)
{
    uint32_t crc;
    uint64_t len;
    int rc = snap__section(r, SNAP__END, "END", &crc, &len, err, errlen);

    if (rc < 0)
        return rc;
    if (len != 0 || crc != sinkd_snap_crc32(0, NULL, 0))
        return snap__fail(err, errlen, -EBADMSG, "END section: not empty");
    if (r->off != r->size)
        return snap__fail(err, errlen, -EBADMSG, "%llu bytes after the END section",
                          (unsigned long long)(r->size - r->off));
    return 0;
}

int sinkd_snap_read_layer(sinkd_snap_reader *r, sinkd_snap_layer *l, char *err, size_t errlen)
{
    int32_t layer, nl, hd, *len = NULL;
    uint64_t bytes, per = 0, total = 0;
    int64_t o = 0;
    uint32_t crc, got;
    char what[32];
    int rc;

    if (!r || !r->f || !l || r->layers_left < 1)
        return -EINVAL;
    memset(l, 0, sizeof *l);
    layer = r->layers - r->layers_left;
    nl = r->kv_heads;
    hd = r->head_dim;
    snprintf(what, sizeof what, "LAYR %d", layer);
    if ((rc = snap__section(r, SNAP__LAYR, what, &crc, &bytes, err, errlen)) < 0)
        return rc;
    if (bytes < (uint64_t)nl * 4)
        return snap__fail(err, errlen, -EBADMSG, "%s section: shorter than its lengths", what);
    if (!(len = malloc((size_t)nl * sizeof *len)))
        return snap__fail(err, errlen, -ENOMEM, "out of memory");
    if ((rc = snap__read(r, len, (size_t)nl * 4)) < 0) {
        free(len);
        return snap__fail(err, errlen, rc, "%s section: truncated", what);
    }
    /* The lengths must account for the section's size exactly. */
    per = 8 + 8 * (uint64_t)hd;
    for (int32_t h = 0; h < nl; h++) {
        if (len[h] < 0)
            rc = -EBADMSG;
        total += len[h] < 0 ? 0 : (uint64_t)len[h];
    }
    if (rc == 0 && (total > (bytes - (uint64_t)nl * 4) / per ||
                    (uint64_t)nl * 4 + total * per != bytes))
        rc = -EBADMSG;
    if (rc < 0) {
        free(len);
        return snap__fail(err, errlen, rc, "%s section: lane lengths do not match its size",
                          what);
    }
    rc = sinkd_snap_layer_alloc(l, nl, hd, len);
    got = sinkd_snap_crc32(0, len, (size_t)nl * 4);
    free(len);
    if (rc < 0)
        return snap__fail(err, errlen, rc, "out of memory");
    for (int32_t h = 0; h < nl && rc == 0; o += l->len[h++]) {
        void *p[4];
        size_t n[4];
        snap__lane_pieces(l, o, l->len[h], (const void **)p, n);
        for (int i = 0; i < 4 && rc == 0; i++) {
            rc = snap__read(r, p[i], n[i]);
            got = sinkd_snap_crc32(got, p[i], n[i]);
        }
    }
    if (rc == 0 && got != crc)
        rc = snap__fail(err, errlen, -EBADMSG, "%s section: checksum mismatch", what);
    else if (rc < 0)
        rc = snap__fail(err, errlen, rc, "%s section: truncated", what);
    for (int64_t t = 0; rc == 0 && t < l->total; t++)
        if (l->pos[t] < 0)
            rc = snap__fail(err, errlen, -EBADMSG, "%s section: negative position", what);
    if (rc == 0 && --r->layers_left == 0)
        rc = snap__end(r, err, errlen);
    if (rc < 0)
        sinkd_snap_layer_free(l);
    return rc;
}
