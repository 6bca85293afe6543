/*
 * The snapshot format on its own: CRC-32 against its published check value,
 * a round trip of every field and array, every truncated length and every
 * corrupted byte refused with a message, trailing bytes refused, atomic
 * writes (an aborted write leaves the old file and no temporary), and the
 * model fingerprint's sensitivity.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "snapshot.h"

#define LAYERS 2
#define KVH 2
#define HD 16
#define VOCAB 7

static char dir[64];
static char path[128];

static void setup(void)
{
    /* tmpfs when there is one: the exhaustive tests write thousands of files */
    snprintf(dir, sizeof dir, "%s/sinkd-snap-XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm"
                                                                                   : "/tmp");
    cr_assert(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/5.snap", dir);
}

static int rm(const char *p, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st, (void)type, (void)ftw;
    return remove(p);
}

static void teardown(void)
{
    nftw(dir, rm, 8, FTW_DEPTH | FTW_PHYS);
}

TestSuite(snapshot, .init = setup, .fini = teardown);

/* xorshift: reproducible test data */
static uint32_t rng_state = 12345;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

static void fill_meta(sinkd_snap_meta *m, bool model)
{
    memset(m, 0, sizeof *m);
    if (model) {
        strcpy(m->model, "tiny");
        m->model_size = 3425600;
        m->model_hash = 0xfedcba9876543210ull;
        m->n_vocab = VOCAB;
        m->has_logits = true;
        m->pending = 3;
    } else {
        m->pending = -1;
    }
    m->layers = LAYERS;
    m->q_heads = 4;
    m->kv_heads = KVH;
    m->head_dim = HD;
    m->geom_dtype = SINKD_F32;
    m->rope = (sinkd_rope){ .theta = 10000.0f, .scale = 1.0f, .style = SINKD_ROPE_NEOX,
                            .mode = SINKD_ROPE_ABSOLUTE };
    m->page_tokens = 16;
    m->kv_dtype = SINKD_F16;
    m->id = 5;
    m->uid = 1000;
    m->persist = true;
    strcpy(m->secret, "0123456789abcdef0123456789abcdef");
    m->max_pages = 12;
    m->tokens = 9;
    m->evictions = 2;
    m->evicted_tokens = 4;
    m->evicted_after_prefill = true;
    m->rope_mode = SINKD_ROPE_CACHE;
    strcpy(m->policy, "window");
    strcpy(m->params, "window=4 sinks=1");
    strcpy(m->fallback, "");
    m->hist_len = 5;
    m->hist = malloc(5 * sizeof *m->hist);
    for (int i = 0; i < 5; i++)
        m->hist[i] = (int32_t)(rnd() % VOCAB);
    m->next_pos = malloc(LAYERS * sizeof *m->next_pos);
    for (int i = 0; i < LAYERS; i++)
        m->next_pos[i] = 9 + i;
    if (model) {
        m->logits = malloc(VOCAB * sizeof *m->logits);
        for (int i = 0; i < VOCAB; i++)
            m->logits[i] = (float)(int32_t)rnd() / 1e6f;
    }
}

static void fill_layer(sinkd_snap_layer *l, int layer)
{
    /* lane lengths differ per head, one may be empty */
    int32_t len[KVH] = { 5 - 2 * layer, 3 + layer };

    cr_assert_eq(sinkd_snap_layer_alloc(l, KVH, HD, len), 0);
    for (int64_t t = 0; t < l->total; t++) {
        l->pos[t] = (int32_t)(rnd() % 100);
        l->score[t] = (float)rnd() / 4e9f;
    }
    for (int64_t i = 0; i < l->total * HD; i++) {
        l->k[i] = (float)(int32_t)rnd() / 3e9f;
        l->v[i] = (float)(int32_t)rnd() / 5e9f;
    }
}

/* Write a snapshot of @m and LAYERS layers (kept in @ls) at @path. */
static void write_snap(const sinkd_snap_meta *m, sinkd_snap_layer *ls)
{
    sinkd_snap_writer w = SINKD_SNAP_WRITER_INIT;

    cr_assert_eq(sinkd_snap_write_begin(&w, dir, "5.snap", m), 0);
    for (int i = 0; i < LAYERS; i++) {
        fill_layer(&ls[i], i);
        cr_assert_eq(sinkd_snap_write_layer(&w, &ls[i]), 0);
    }
    cr_assert_eq(sinkd_snap_write_commit(&w), 0);
}

/* Read the whole snapshot at @p; returns the first error (0: all fine). */
static int read_all(const char *p, char *err, size_t errlen)
{
    sinkd_snap_reader r = SINKD_SNAP_READER_INIT;
    sinkd_snap_meta m;
    int rc = sinkd_snap_read_begin(&r, p, &m, err, errlen);

    if (rc < 0)
        return rc;
    for (int i = 0; i < m.layers && rc == 0; i++) {
        sinkd_snap_layer l;
        rc = sinkd_snap_read_layer(&r, &l, err, errlen);
        sinkd_snap_layer_free(&l);
    }
    sinkd_snap_meta_free(&m);
    sinkd_snap_read_end(&r);
    return rc;
}

static uint8_t *slurp(const char *p, size_t *n)
{
    FILE *f = fopen(p, "rb");
    uint8_t *buf;
    long sz;

    cr_assert(f);
    fseek(f, 0, SEEK_END);
    sz = ftell(f);
    rewind(f);
    buf = malloc((size_t)sz + 1);
    cr_assert(fread(buf, 1, (size_t)sz, f) == (size_t)sz);
    fclose(f);
    *n = (size_t)sz;
    return buf;
}

static void spill(const char *p, const uint8_t *buf, size_t n)
{
    FILE *f = fopen(p, "wb");

    cr_assert(f);
    cr_assert(fwrite(buf, 1, n, f) == n);
    fclose(f);
}

Test(snapshot, crc32_check_value)
{
    /* the CRC-32/ISO-HDLC check value of "123456789" */
    cr_assert_eq(sinkd_snap_crc32(0, "123456789", 9), 0xCBF43926u);
    /* chunked == whole */
    cr_assert_eq(sinkd_snap_crc32(sinkd_snap_crc32(0, "1234", 4), "56789", 5), 0xCBF43926u);
    cr_assert_eq(sinkd_snap_crc32(0, NULL, 0), 0u);
}

static void round_trip(bool model)
{
    sinkd_snap_layer ls[LAYERS];
    sinkd_snap_reader r = SINKD_SNAP_READER_INIT;
    sinkd_snap_meta m, got;
    char err[256] = "";
    struct stat st;

    fill_meta(&m, model);
    write_snap(&m, ls);
    cr_assert(stat(path, &st) == 0);
    cr_assert_eq(st.st_mode & 0777, 0600, "a snapshot holds a secret: mode %o", st.st_mode & 0777);
    cr_assert_eq(sinkd_snap_read_begin(&r, path, &got, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(got.model, m.model);
    cr_assert_eq(got.model_size, m.model_size);
    cr_assert_eq(got.model_hash, m.model_hash);
    cr_assert_eq(got.n_vocab, m.n_vocab);
    cr_assert(got.layers == m.layers && got.q_heads == m.q_heads && got.kv_heads == m.kv_heads &&
              got.head_dim == m.head_dim && got.geom_dtype == m.geom_dtype);
    cr_assert(!memcmp(&got.rope, &m.rope, sizeof m.rope));
    cr_assert(got.page_tokens == m.page_tokens && got.kv_dtype == m.kv_dtype);
    cr_assert(got.id == m.id && got.uid == m.uid && got.persist == m.persist);
    cr_assert_str_eq(got.secret, m.secret);
    cr_assert(got.max_pages == m.max_pages && got.tokens == m.tokens &&
              got.evictions == m.evictions && got.evicted_tokens == m.evicted_tokens &&
              got.evicted_after_prefill == m.evicted_after_prefill &&
              got.rope_mode == m.rope_mode);
    cr_assert_str_eq(got.policy, m.policy);
    cr_assert_str_eq(got.params, m.params);
    cr_assert_str_eq(got.fallback, m.fallback);
    cr_assert(got.pending == m.pending && got.has_logits == m.has_logits);
    cr_assert_eq(got.hist_len, m.hist_len);
    cr_assert(!memcmp(got.hist, m.hist, m.hist_len * sizeof *m.hist));
    cr_assert(!memcmp(got.next_pos, m.next_pos, LAYERS * sizeof *m.next_pos));
    if (model)
        cr_assert(!memcmp(got.logits, m.logits, VOCAB * sizeof *m.logits));
    else
        cr_assert_null(got.logits);
    for (int i = 0; i < LAYERS; i++) {
        sinkd_snap_layer l;
        cr_assert_eq(sinkd_snap_read_layer(&r, &l, err, sizeof err), 0, "%s", err);
        cr_assert(l.n_lanes == KVH && l.head_dim == HD && l.total == ls[i].total);
        cr_assert(!memcmp(l.len, ls[i].len, KVH * sizeof *l.len));
        cr_assert(!memcmp(l.pos, ls[i].pos, (size_t)l.total * sizeof *l.pos));
        cr_assert(!memcmp(l.score, ls[i].score, (size_t)l.total * sizeof *l.score));
        cr_assert(!memcmp(l.k, ls[i].k, (size_t)l.total * HD * sizeof *l.k));
        cr_assert(!memcmp(l.v, ls[i].v, (size_t)l.total * HD * sizeof *l.v));
        sinkd_snap_layer_free(&l);
        sinkd_snap_layer_free(&ls[i]);
    }
    sinkd_snap_read_end(&r);
    sinkd_snap_meta_free(&got);
    sinkd_snap_meta_free(&m);
}

Test(snapshot, round_trip_model_session) { round_trip(true); }
Test(snapshot, round_trip_raw_session) { round_trip(false); }

Test(snapshot, every_truncation_refused)
{
    sinkd_snap_layer ls[LAYERS];
    sinkd_snap_meta m;
    char cut[160], err[256];
    uint8_t *buf;
    size_t n;

    fill_meta(&m, true);
    write_snap(&m, ls);
    for (int i = 0; i < LAYERS; i++)
        sinkd_snap_layer_free(&ls[i]);
    sinkd_snap_meta_free(&m);
    buf = slurp(path, &n);
    snprintf(cut, sizeof cut, "%s/cut.snap", dir);
    /* every length short of the whole file: section boundaries included */
    for (size_t len = 0; len < n; len++) {
        spill(cut, buf, len);
        err[0] = '\0';
        int rc = read_all(cut, err, sizeof err);
        cr_assert(rc == -EBADMSG, "truncated to %zu of %zu bytes: rc %d", len, n, rc);
        cr_assert(err[0] != '\0', "truncated to %zu: no message", len);
    }
    /* and one byte too many */
    buf = realloc(buf, n + 1);
    buf[n] = 0;
    spill(cut, buf, n + 1);
    cr_assert_eq(read_all(cut, err, sizeof err), -EBADMSG);
    cr_assert(strstr(err, "after the END"), "%s", err);
    spill(cut, buf, n);
    cr_assert_eq(read_all(cut, err, sizeof err), 0, "%s", err);
    free(buf);
}

Test(snapshot, every_corrupted_byte_refused)
{
    sinkd_snap_layer ls[LAYERS];
    sinkd_snap_meta m;
    char bad[160], err[256];
    uint8_t *buf;
    size_t n;

    fill_meta(&m, true);
    write_snap(&m, ls);
    for (int i = 0; i < LAYERS; i++)
        sinkd_snap_layer_free(&ls[i]);
    sinkd_snap_meta_free(&m);
    buf = slurp(path, &n);
    snprintf(bad, sizeof bad, "%s/bad.snap", dir);
    /* CRC-32 catches every error inside one byte; the framing fields are
     * checked by value. Every byte, a random nonzero flip each. */
    for (size_t i = 0; i < n; i++) {
        uint8_t x = (uint8_t)(rnd() % 255 + 1);
        buf[i] ^= x;
        spill(bad, buf, n);
        err[0] = '\0';
        int rc = read_all(bad, err, sizeof err);
        cr_assert(rc == -EBADMSG || rc == -ENOTSUP,
                  "byte %zu of %zu ^ 0x%02x accepted (rc %d)", i, n, x, rc);
        cr_assert(err[0] != '\0');
        buf[i] ^= x;
    }
    free(buf);
}

Test(snapshot, aborted_write_keeps_the_old_file)
{
    sinkd_snap_writer w = SINKD_SNAP_WRITER_INIT;
    sinkd_snap_layer ls[LAYERS];
    sinkd_snap_meta m;
    uint8_t *before, *after;
    size_t nb, na;
    char tmp[160], err[256];

    fill_meta(&m, false);
    write_snap(&m, ls);
    before = slurp(path, &nb);
    /* a second snapshot of the same name, cut short */
    m.tokens = 77;
    cr_assert_eq(sinkd_snap_write_begin(&w, dir, "5.snap", &m), 0);
    cr_assert_eq(sinkd_snap_write_layer(&w, &ls[0]), 0);
    snprintf(tmp, sizeof tmp, "%s/.tmp.5.snap", dir);
    cr_assert(access(tmp, F_OK) == 0, "the write goes to a temporary file");
    /* commit with a layer missing fails and cleans up */
    cr_assert_eq(sinkd_snap_write_commit(&w), -EINVAL);
    cr_assert(access(tmp, F_OK) != 0, "temporary file left behind");
    after = slurp(path, &na);
    cr_assert(na == nb && !memcmp(before, after, nb), "the old snapshot changed");
    cr_assert_eq(read_all(path, err, sizeof err), 0, "%s", err);
    /* abort also removes it */
    cr_assert_eq(sinkd_snap_write_begin(&w, dir, "5.snap", &m), 0);
    sinkd_snap_write_abort(&w);
    cr_assert(access(tmp, F_OK) != 0);
    /* names with a directory part are refused */
    cr_assert_eq(sinkd_snap_write_begin(&w, dir, "../5.snap", &m), -EINVAL);
    for (int i = 0; i < LAYERS; i++)
        sinkd_snap_layer_free(&ls[i]);
    sinkd_snap_meta_free(&m);
    free(before);
    free(after);
}

Test(snapshot, refuses_out_of_range_fields)
{
    sinkd_snap_layer ls[LAYERS];
    sinkd_snap_meta m;
    char err[256];

    /* a pending token outside the vocabulary passes the CRC (it is written
     * as given) but not the reader's range check */
    fill_meta(&m, true);
    m.pending = VOCAB;
    write_snap(&m, ls);
    cr_assert_eq(read_all(path, err, sizeof err), -EBADMSG);
    cr_assert(strstr(err, "pending"), "%s", err);
    for (int i = 0; i < LAYERS; i++)
        sinkd_snap_layer_free(&ls[i]);
    sinkd_snap_meta_free(&m);
    /* a secret that is not 32 hex digits */
    fill_meta(&m, true);
    strcpy(m.secret, "0123456789abcdef0123456789abcdeX");
    write_snap(&m, ls);
    cr_assert_eq(read_all(path, err, sizeof err), -EBADMSG);
    cr_assert(strstr(err, "secret"), "%s", err);
    for (int i = 0; i < LAYERS; i++)
        sinkd_snap_layer_free(&ls[i]);
    sinkd_snap_meta_free(&m);
    /* not a snapshot at all */
    spill(path, (const uint8_t *)"GGUF\3\0\0\0", 8);
    cr_assert_eq(read_all(path, err, sizeof err), -EBADMSG);
    cr_assert(strstr(err, "magic"), "%s", err);
}

Test(snapshot, fingerprint_follows_the_file)
{
    char a[160], b[160];
    uint64_t sa, ha, sb, hb;
    size_t n = 3u << 20;
    uint8_t *buf = malloc(n);

    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)rnd();
    snprintf(a, sizeof a, "%s/a.gguf", dir);
    snprintf(b, sizeof b, "%s/b.gguf", dir);
    spill(a, buf, n);
    spill(b, buf, n);
    cr_assert_eq(sinkd_snap_fingerprint(a, &sa, &ha), 0);
    cr_assert_eq(sinkd_snap_fingerprint(b, &sb, &hb), 0);
    cr_assert(sa == n && sb == n && ha == hb, "a copy has another fingerprint");
    /* one byte of the header region, then one of the last MiB */
    buf[100] ^= 1;
    spill(b, buf, n);
    cr_assert_eq(sinkd_snap_fingerprint(b, &sb, &hb), 0);
    cr_assert_neq(ha, hb);
    buf[100] ^= 1;
    buf[n - 10] ^= 0x80;
    spill(b, buf, n);
    cr_assert_eq(sinkd_snap_fingerprint(b, &sb, &hb), 0);
    cr_assert_neq(ha, hb);
    /* a different size alone */
    spill(b, buf, n - 1);
    cr_assert_eq(sinkd_snap_fingerprint(b, &sb, &hb), 0);
    cr_assert_eq(sb, n - 1);
    cr_assert_eq(sinkd_snap_fingerprint("/nonexistent/x.gguf", &sb, &hb), -ENOENT);
    free(buf);
}
