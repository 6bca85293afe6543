/*
 * The real sinkd over its socket: raw sessions through shared memory against
 * a double-precision reference computed here from the same K, V and Q; bad
 * ranges and a client that shrinks its memfd; session ownership; streaming
 * generation; a client killed mid-generation gives its pages back.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "sinkd_testd.h"

#define MODEL SINKD_TEST_DATA "/sinkd-ref-tiny-f32.gguf"
#define CONF "[server]\nsocket_mode = 0666\n[engine]\nbackend = cpu\nthreads = 1\nkv_pool_bytes = 16M\nkv_dtype = f32\n"

static sinkd_testd d = SINKD_TESTD_INIT;

/* Start sinkd on CONF plus @extra engine keys (NULL: none), with the tiny
 * model when @model. Returns sinkd_testd_start's result. */
static int start_with(const char *extra, bool model)
{
    const char *args[] = { "--model", "tiny=" MODEL, NULL };
    char conf[512];

    snprintf(conf, sizeof conf, "%s%s", CONF, extra ? extra : "");
    return sinkd_testd_start(&d, conf, model ? args : NULL);
}

static void start(bool model)
{
    cr_assert(start_with(NULL, model) == 0, "sinkd did not start");
}

static void stop(void)
{
    cr_assert_eq(sinkd_testd_stop(&d), 0, "sinkd did not exit cleanly");
    sinkd_testd_free(&d);
}

static sinkd_client *conn(void)
{
    sinkd_client *c;

    cr_assert(sinkd_client_connect(d.socket_path, 10000, &c) == 0);
    return c;
}

/* ---- requests from a pre-packed map ---------------------------------------- */

typedef struct req {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} req;

static void req_init(req *q, uint32_t n)
{
    msgpack_sbuffer_init(&q->sb);
    msgpack_packer_init(&q->pk, &q->sb, msgpack_sbuffer_write);
    msgpack_pack_map(&q->pk, n);
}

static void kv_u(req *q, const char *k, uint64_t v) { sinkd_pack_kv_u64(&q->pk, k, v); }

static void kv_region(req *q, const char *k, uint64_t shm, uint64_t off)
{
    sinkd_pack_str(&q->pk, k);
    msgpack_pack_map(&q->pk, 2);
    kv_u(q, "shm", shm);
    kv_u(q, "offset", off);
}

typedef struct events {
    int n;
    int32_t tokens[256];
    char text[4096];
    size_t text_len;
} events;

static void on_event(void *arg, const char *ev, size_t len, const msgpack_object *m)
{
    events *e = arg;
    int64_t t;
    const char *s;
    size_t sl;

    if (len != 5 || memcmp(ev, "token", 5) || !e)
        return;
    if (sinkd_map_i64(m, "token", &t) == 0 && e->n < 256)
        e->tokens[e->n] = (int32_t)t;
    e->n++;
    if (sinkd_map_str(m, "text", &s, &sl) == 0 && e->text_len + sl < sizeof e->text) {
        memcpy(e->text + e->text_len, s, sl);
        e->text_len += sl;
    }
}

/* Send @op with @q's fields; returns as sinkd_client_request. */
static int call(sinkd_client *c, const char *op, req *q, sinkd_client_reply *rep, events *ev)
{
    sinkd_client_req r = SINKD_CLIENT_REQ_INIT;
    int rc;

    r.op = op;
    if (q) {
        r.fields = q->sb.data;
        r.fields_len = q->sb.size;
    }
    r.on_event = on_event;
    r.event_arg = ev;
    r.timeout_ms = 60000;
    rc = sinkd_client_request(c, &r, rep);
    if (q)
        msgpack_sbuffer_destroy(&q->sb);
    return rc;
}

static uint64_t rep_u64(const sinkd_client_reply *rep, const char *k)
{
    uint64_t v = 0;

    cr_assert(sinkd_map_u64(rep->map, k, &v) == 0, "reply lacks %s", k);
    return v;
}

/* session.open of a raw session, with geometry.dtype @dtype unless NULL;
 * returns as call, the session id in @s on success. */
static int try_open_raw(sinkd_client *c, int layers, int qh, int kvh, int hd, const char *dtype,
                        uint64_t *s)
{
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    req q;
    int rc;

    req_init(&q, 1);
    sinkd_pack_str(&q.pk, "geometry");
    msgpack_pack_map(&q.pk, dtype ? 5 : 4);
    kv_u(&q, "layers", (uint64_t)layers);
    kv_u(&q, "q_heads", (uint64_t)qh);
    kv_u(&q, "kv_heads", (uint64_t)kvh);
    kv_u(&q, "head_dim", (uint64_t)hd);
    if (dtype)
        sinkd_pack_kv_str(&q.pk, "dtype", dtype);
    if ((rc = call(c, "session.open", &q, &rep, NULL)) == 0)
        *s = rep_u64(&rep, "session");
    if (rc >= 0) /* an error reply is held too */
        sinkd_client_reply_free(&rep);
    return rc;
}

static uint64_t open_raw(sinkd_client *c, int layers, int qh, int kvh, int hd)
{
    uint64_t s = 0;

    cr_assert_eq(try_open_raw(c, layers, qh, kvh, hd, NULL, &s), 0, "%s",
                 sinkd_client_errmsg(c));
    return s;
}

static int kv_append(sinkd_client *c, uint64_t s, int layer, int n, uint64_t shm, uint64_t koff,
                     uint64_t voff)
{
    req q;

    req_init(&q, 5);
    kv_u(&q, "session", s);
    kv_u(&q, "layer", (uint64_t)layer);
    kv_u(&q, "n", (uint64_t)n);
    kv_region(&q, "k", shm, koff);
    kv_region(&q, "v", shm, voff);
    return call(c, "kv.append", &q, NULL, NULL);
}

/* ---- the double-precision reference ----------------------------------------- */

#define L 20   /* tokens */
#define QH 4
#define KVH 2
#define HD 16

/* Adjacent-pair RoPE (theta 10000, scale 1) of @x[HD] at @pos into @y. */
static void rope(const float *x, int pos, double *y)
{
    for (int i = 0; i < HD / 2; i++) {
        double a = pos * pow(10000.0, -2.0 * i / HD);
        y[2 * i] = x[2 * i] * cos(a) - x[2 * i + 1] * sin(a);
        y[2 * i + 1] = x[2 * i] * sin(a) + x[2 * i + 1] * cos(a);
    }
}

/* Query head @qh at position @qpos over keys [0, nk) of its kv head, only
 * those whose page bit is set in @mask (NULL: all). out[HD], p[nk] (added). */
static void ref_attend(const float *q, int qpos, const float *k, const float *v, int qh, int nk,
                       const bool *mask, double *out, double *p)
{
    int h = qh / (QH / KVH);
    double qr[HD], kr[HD], s[L], mx = -INFINITY, z = 0;

    rope(q + (size_t)qh * HD, qpos, qr);
    for (int t = 0; t < nk; t++) {
        s[t] = -INFINITY;
        if (mask && !mask[t / 16])
            continue;
        rope(k + ((size_t)t * KVH + h) * HD, t, kr);
        s[t] = 0;
        for (int i = 0; i < HD; i++)
            s[t] += qr[i] * kr[i];
        s[t] /= sqrt((double)HD);
        mx = fmax(mx, s[t]);
    }
    for (int t = 0; t < nk; t++)
        z += s[t] == -INFINITY ? 0 : exp(s[t] - mx);
    memset(out, 0, HD * sizeof *out);
    for (int t = 0; t < nk; t++) {
        double w = s[t] == -INFINITY ? 0 : exp(s[t] - mx) / z;
        if (p)
            p[t] += w;
        for (int i = 0; i < HD; i++)
            out[i] += w * v[((size_t)t * KVH + h) * HD + i];
    }
}

static float frand(unsigned *st)
{
    *st = *st * 1103515245u + 12345u;
    return (float)((*st >> 8) & 0xffff) / 32768.0f - 1.0f;
}

TestSuite(sessions, .timeout = 120);

Test(sessions, raw_session_matches_reference)
{
    sinkd_client_shm shm = SINKD_CLIENT_SHM_INIT;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    enum { KOFF = 0, VOFF = 8192, QOFF = 16384, OOFF = 20480, SOFF = 24576 };
    unsigned st = 7;
    sinkd_client *c;
    uint64_t s;
    req q;

    start(false);
    c = conn();
    cr_assert(sinkd_client_shm_create(c, 1 << 16, 5000, &shm) == 0);
    float *base = shm.base, *k = base + KOFF / 4, *v = base + VOFF / 4, *qv = base + QOFF / 4;
    for (int i = 0; i < L * KVH * HD; i++) {
        k[i] = frand(&st);
        v[i] = frand(&st);
    }
    for (int i = 0; i < 4 * QH * HD; i++)
        qv[i] = frand(&st);
    s = open_raw(c, 2, QH, KVH, HD);
    cr_assert_eq(kv_append(c, s, 0, L, shm.handle, KOFF, VOFF), 0, "%s", sinkd_client_errmsg(c));

    /* decode: one query at the last position, with scores */
    req_init(&q, 5);
    kv_u(&q, "session", s);
    kv_u(&q, "layer", 0);
    kv_region(&q, "q", shm.handle, QOFF);
    kv_region(&q, "out", shm.handle, OOFF);
    kv_region(&q, "scores", shm.handle, SOFF);
    cr_assert_eq(call(c, "attend", &q, &rep, NULL), 0, "%s", sinkd_client_errmsg(c));
    sinkd_client_reply_free(&rep);
    double p[KVH][L] = { { 0 } }, ref[HD];
    for (int h = 0; h < QH; h++) {
        ref_attend(qv, L - 1, k, v, h, L, NULL, ref, p[h / (QH / KVH)]);
        for (int i = 0; i < HD; i++)
            cr_assert_float_eq(base[OOFF / 4 + h * HD + i], ref[i], 1e-4, "head %d dim %d", h, i);
    }
    for (int h = 0; h < KVH; h++)
        for (int t = 0; t < L; t++)
            cr_assert_float_eq(base[SOFF / 4 + h * L + t], p[h][t], 1e-4, "score %d %d", h, t);

    /* prefill path: the last 4 tokens attend causally */
    req_init(&q, 5);
    kv_u(&q, "session", s);
    kv_u(&q, "layer", 0);
    kv_u(&q, "n", 4);
    kv_region(&q, "q", shm.handle, QOFF);
    kv_region(&q, "out", shm.handle, OOFF);
    cr_assert_eq(call(c, "attend", &q, NULL, NULL), 0, "%s", sinkd_client_errmsg(c));
    for (int r = 0; r < 4; r++)
        for (int h = 0; h < QH; h++) {
            ref_attend(qv + r * QH * HD, L - 4 + r, k, v, h, L - 3 + r, NULL, ref, NULL);
            for (int i = 0; i < HD; i++)
                cr_assert_float_eq(base[OOFF / 4 + (r * QH + h) * HD + i], ref[i], 1e-4,
                                   "row %d head %d dim %d", r, h, i);
        }

    /* sparse decode: kv head 0 attends page 0, kv head 1 page 1 */
    req_init(&q, 5);
    kv_u(&q, "session", s);
    kv_u(&q, "layer", 0);
    kv_region(&q, "q", shm.handle, QOFF);
    kv_region(&q, "out", shm.handle, OOFF);
    sinkd_pack_str(&q.pk, "pages");
    msgpack_pack_array(&q.pk, 2);
    msgpack_pack_array(&q.pk, 1);
    msgpack_pack_uint32(&q.pk, 0);
    msgpack_pack_array(&q.pk, 1);
    msgpack_pack_uint32(&q.pk, 1);
    cr_assert_eq(call(c, "attend", &q, NULL, NULL), 0, "%s", sinkd_client_errmsg(c));
    for (int h = 0; h < QH; h++) {
        bool mask[2] = { h / (QH / KVH) == 0, h / (QH / KVH) == 1 };
        ref_attend(qv, L - 1, k, v, h, L, mask, ref, NULL);
        for (int i = 0; i < HD; i++)
            cr_assert_float_eq(base[OOFF / 4 + h * HD + i], ref[i], 1e-4, "sparse head %d", h);
    }
    sinkd_client_shm_free(c, &shm, 5000);
    sinkd_client_close(c);
    stop();
}

/* Pages of PT tokens: the daemon's default page_tokens, which ref_attend's
 * page mask (t / 16) assumes too. */
#define PT 16
#define NPG ((L + PT - 1) / PT)

/* attend with n = 1 and scores at layer 0 of @s; @sel (NULL: dense) names
 * the pages each kv head attends. The scores region is first filled with
 * -1 so that every value checked afterwards is one the daemon wrote. */
static void attend_scores(sinkd_client *c, uint64_t s, const sinkd_client_shm *shm, uint64_t qoff,
                          uint64_t ooff, uint64_t soff, const bool (*sel)[NPG])
{
    float *sc = (float *)((char *)shm->base + soff);
    req q;

    for (int i = 0; i < KVH * L; i++)
        sc[i] = -1.0f;
    req_init(&q, sel ? 6 : 5);
    kv_u(&q, "session", s);
    kv_u(&q, "layer", 0);
    kv_region(&q, "q", shm->handle, qoff);
    kv_region(&q, "out", shm->handle, ooff);
    kv_region(&q, "scores", shm->handle, soff);
    if (sel) {
        sinkd_pack_str(&q.pk, "pages");
        msgpack_pack_array(&q.pk, KVH);
        for (int h = 0; h < KVH; h++) {
            uint32_t n = 0;
            for (int pg = 0; pg < NPG; pg++)
                n += sel[h][pg];
            msgpack_pack_array(&q.pk, n);
            for (int pg = 0; pg < NPG; pg++)
                if (sel[h][pg])
                    msgpack_pack_uint32(&q.pk, (uint32_t)pg);
        }
    }
    cr_assert_eq(call(c, "attend", &q, NULL, NULL), 0, "%s", sinkd_client_errmsg(c));
}

/* A dense attend with scores, then sparse ones on the same lanes, each
 * leaving out pages the call before attended: keys on unselected pages must
 * read exactly 0, not what an earlier call left in their score slots. */
Test(sessions, sparse_scores_zero_off_selection)
{
    sinkd_client_shm shm = SINKD_CLIENT_SHM_INIT;
    enum { KOFF = 0, VOFF = 8192, QOFF = 16384, OOFF = 20480, SOFF = 24576 };
    /* round 0 dense; then kv head 0 / 1 on page 1 / 0, then the complement */
    static const bool sel[2][KVH][NPG] = {
        { { false, true }, { true, false } },
        { { true, false }, { false, true } },
    };
    const int group = QH / KVH;
    unsigned st = 11;
    sinkd_client *c;
    uint64_t s;

    start(false);
    c = conn();
    cr_assert(sinkd_client_shm_create(c, 1 << 16, 5000, &shm) == 0);
    float *base = shm.base, *k = base + KOFF / 4, *v = base + VOFF / 4, *qv = base + QOFF / 4;
    const float *out = base + OOFF / 4, *sc = base + SOFF / 4;
    for (int i = 0; i < L * KVH * HD; i++) {
        k[i] = frand(&st);
        v[i] = frand(&st);
    }
    for (int i = 0; i < QH * HD; i++)
        qv[i] = frand(&st);
    s = open_raw(c, 1, QH, KVH, HD);
    cr_assert_eq(kv_append(c, s, 0, L, shm.handle, KOFF, VOFF), 0, "%s", sinkd_client_errmsg(c));

    for (int round = 0; round < 3; round++) {
        const bool (*rs)[NPG] = round ? sel[round - 1] : NULL;
        double p[KVH][L] = { { 0 } }, ref[HD];

        attend_scores(c, s, &shm, QOFF, OOFF, SOFF, rs);
        for (int h = 0; h < QH; h++) {
            ref_attend(qv, L - 1, k, v, h, L, rs ? rs[h / group] : NULL, ref, p[h / group]);
            for (int i = 0; i < HD; i++)
                cr_assert_float_eq(out[h * HD + i], ref[i], 1e-4, "round %d head %d dim %d",
                                   round, h, i);
        }
        for (int h = 0; h < KVH; h++) {
            double sum = 0;
            for (int t = 0; t < L; t++) {
                float got = sc[h * L + t];
                if (rs && !rs[h][t / PT])
                    cr_assert(got == 0.0f, "round %d kv head %d key %d (unselected): %g", round,
                              h, t, (double)got);
                else
                    cr_assert_float_eq(got, p[h][t], 1e-4, "round %d kv head %d key %d", round,
                                       h, t);
                sum += got;
            }
            /* each query head's probabilities sum to 1 over the keys it saw */
            cr_assert_float_eq(sum, (double)group, 1e-4, "round %d kv head %d: sum %g", round, h,
                               sum);
        }
    }
    sinkd_client_shm_free(c, &shm, 5000);
    sinkd_client_close(c);
    stop();
}

Test(sessions, bad_ranges_and_shrunk_memfd)
{
    sinkd_client_shm shm = SINKD_CLIENT_SHM_INIT;
    sinkd_client *c;
    uint64_t s, h;
    int fd;

    start(false);
    c = conn();
    cr_assert(sinkd_client_shm_create(c, 4096, 5000, &shm) == 0);
    s = open_raw(c, 1, 2, 2, 16);
    /* 1 token of 2 heads x 16 floats = 128 bytes: past the end at 4000 */
    cr_assert_eq(kv_append(c, s, 0, 1, shm.handle, 4000, 0), SINKD_ERR_BAD_SHM);
    cr_assert_eq(kv_append(c, s, 0, 1, shm.handle, UINT64_MAX - 8, 0), SINKD_ERR_BAD_SHM);
    cr_assert_eq(kv_append(c, s, 0, 1, shm.handle + 99, 0, 0), SINKD_ERR_NOT_FOUND);
    cr_assert_eq(kv_append(c, s, 0, 1 << 20, shm.handle, 0, 0), SINKD_ERR_BAD_SHM);
    cr_assert_eq(sinkd_client_ping(c, 5000, NULL), 0);

    /* A memfd that cannot be sealed, shrunk after registering. */
    fd = memfd_create("unsealed", MFD_CLOEXEC);
    cr_assert(fd >= 0 && ftruncate(fd, 65536) == 0);
    cr_assert_eq(sinkd_client_shm_register(c, fd, 65536, 5000, &h), 0);
    cr_assert(ftruncate(fd, 0) == 0);
    cr_assert_eq(kv_append(c, s, 0, 1, h, 0, 1024), SINKD_ERR_BAD_SHM);
    cr_assert_eq(sinkd_client_ping(c, 5000, NULL), 0);
    cr_assert(sinkd_testd_alive(&d));
    /* the sealed region still works */
    cr_assert_eq(kv_append(c, s, 0, 1, shm.handle, 0, 1024), 0, "%s", sinkd_client_errmsg(c));
    close(fd);

    /* A file of a disk is refused: a page fault there (or on a FUSE mount
     * the client serves) could stall the engine. */
    char path[] = SINKD_BINARY_DIR "/sinkd-shm-XXXXXX";
    struct statfs sf;
    fd = mkstemp(path);
    cr_assert(fd >= 0 && ftruncate(fd, 65536) == 0 && fstatfs(fd, &sf) == 0);
    unlink(path);
    if (sf.f_type != TMPFS_MAGIC) {
        cr_assert_eq(sinkd_client_shm_register(c, fd, 65536, 5000, &h), SINKD_ERR_BAD_SHM);
        cr_assert_not_null(strstr(sinkd_client_errmsg(c), "not a memfd"), "%s",
                           sinkd_client_errmsg(c));
    }
    close(fd);
    sinkd_client_shm_free(c, &shm, 5000);
    sinkd_client_close(c);
    stop();
}

/* A memfd of @size bytes (sparse: no memory behind it). */
static int sparse_memfd(uint64_t size)
{
    int fd = memfd_create("sinkd-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    cr_assert(fd >= 0 && ftruncate(fd, (off_t)size) == 0);
    return fd;
}

/* [quota] shm_bytes_per_uid caps what a user's connections have mapped at
 * once, over all of them (a sparse memfd costs the daemon address space,
 * not memory): the registration past it is quota_exceeded, and one that
 * fits again after an unregister goes through. */
Test(sessions, shm_bytes_per_uid_caps_registered_bytes)
{
    cr_assert(start_with("[quota]\nshm_bytes_per_uid = 3M\n", false) == 0);
    sinkd_client *a = conn(), *b = conn();
    uint64_t h1, h2, h3;
    int f1 = sparse_memfd(2 << 20), f2 = sparse_memfd(1 << 20), f3 = sparse_memfd(1ull << 40);

    cr_assert_eq(sinkd_client_shm_register(a, f1, 2 << 20, 5000, &h1), 0);
    cr_assert_eq(sinkd_client_shm_register(b, f2, 1 << 20, 5000, &h2), 0, "%s",
                 sinkd_client_errmsg(b));
    cr_assert_eq(sinkd_client_shm_register(a, f2, 4096, 5000, &h3), SINKD_ERR_QUOTA_EXCEEDED);
    cr_assert_not_null(strstr(sinkd_client_errmsg(a), "shm_bytes_per_uid"), "%s",
                       sinkd_client_errmsg(a));
    cr_assert_eq(sinkd_client_shm_register(b, f3, 1ull << 40, 5000, &h3),
                 SINKD_ERR_QUOTA_EXCEEDED);
    sinkd_client_close(b); /* its megabyte goes with it, once the daemon sees it go */
    int rc = SINKD_ERR_QUOTA_EXCEEDED;
    for (int i = 0; i < 200 && rc == SINKD_ERR_QUOTA_EXCEEDED; i++) {
        usleep(i ? 25 * 1000 : 0);
        rc = sinkd_client_shm_register(a, f2, 1 << 20, 5000, &h3);
    }
    cr_assert_eq(rc, 0, "%s", sinkd_client_errmsg(a));
    close(f1);
    close(f2);
    close(f3);
    sinkd_client_close(a);
    stop();
}

static int n_sessions(sinkd_client *c)
{
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    const msgpack_object_array *a;
    int n;

    cr_assert_eq(call(c, "session.list", NULL, &rep, NULL), 0);
    cr_assert(sinkd_map_array(rep.map, "sessions", &a) == 0);
    n = (int)a->size;
    sinkd_client_reply_free(&rep);
    return n;
}

static int stats(sinkd_client *c, uint64_t s)
{
    req q;

    req_init(&q, 1);
    kv_u(&q, "session", s);
    return call(c, "session.stats", &q, NULL, NULL);
}

Test(sessions, ownership_across_connections)
{
    sinkd_client *a, *b;
    uint64_t s;

    start(false);
    a = conn();
    b = conn();
    s = open_raw(a, 1, 2, 2, 16);
    /* same uid: visible from another connection */
    cr_assert_eq(stats(b, s), 0);
    cr_assert_eq(stats(b, s + 1000), SINKD_ERR_NOT_FOUND);
    if (geteuid() == 0) {
        /* another uid sees nothing, exactly as for a missing session */
        pid_t pid = fork();
        if (pid == 0) {
            sinkd_client *o;
            if (setgid(65534) || setuid(65534) || sinkd_client_connect(d.socket_path, 5000, &o))
                _exit(2);
            _exit(stats(o, s) == SINKD_ERR_NOT_FOUND && n_sessions(o) == 0 ? 0 : 1);
        }
        int status;
        cr_assert(waitpid(pid, &status, 0) == pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "other uid: child status %d", status);
    }
    /* closing the owner's connection closes the session */
    sinkd_client_close(a);
    int n = 1;
    for (int i = 0; i < 100 && n; i++) {
        usleep(10000);
        n = n_sessions(b);
    }
    cr_assert_eq(n, 0);
    cr_assert_eq(stats(b, s), SINKD_ERR_NOT_FOUND);
    sinkd_client_close(b);
    stop();
}

/* K, V, Q and out in shared memory are f32 whatever the pool stores: a raw
 * geometry that asks for another dtype is refused, not silently ignored. */
Test(sessions, raw_geometry_dtype)
{
    sinkd_client_shm shm = SINKD_CLIENT_SHM_INIT;
    static const char *const bad[] = { "f16", "bf16" };
    sinkd_client *c;
    uint64_t s = 0;

    start(false);
    c = conn();
    cr_assert(sinkd_client_shm_create(c, 4096, 5000, &shm) == 0);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_assert_eq(try_open_raw(c, 1, 2, 2, 16, bad[i], &s), SINKD_ERR_INVALID_ARGUMENT,
                     "dtype %s", bad[i]);
        cr_assert(strstr(sinkd_client_errmsg(c), "f32") &&
                      strstr(sinkd_client_errmsg(c), "kv_dtype"),
                  "dtype %s: message '%s'", bad[i], sinkd_client_errmsg(c));
    }
    cr_assert_eq(n_sessions(c), 0);
    /* f32, given or by default, opens a session that takes K and V */
    cr_assert_eq(try_open_raw(c, 1, 2, 2, 16, "f32", &s), 0, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(kv_append(c, s, 0, 1, shm.handle, 0, 1024), 0, "%s", sinkd_client_errmsg(c));
    s = open_raw(c, 1, 2, 2, 16);
    cr_assert_eq(kv_append(c, s, 0, 1, shm.handle, 0, 1024), 0, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(n_sessions(c), 2);
    sinkd_client_shm_free(c, &shm, 5000);
    sinkd_client_close(c);
    stop();
}

/* The KV pool's rows are as wide as the widest model's head_dim (the tiny
 * model: 32) unless [engine] head_dim_max says wider: raw sessions of a
 * larger head_dim open only then, and the daemon refuses a value below a
 * model's or not a multiple of 16. */
Test(sessions, head_dim_max_widens_the_pool)
{
    sinkd_client_shm shm = SINKD_CLIENT_SHM_INIT;
    sinkd_client *c;
    uint64_t s = 0;

    start(true);
    c = conn();
    cr_assert_eq(try_open_raw(c, 1, 2, 2, 64, NULL, &s), SINKD_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(sinkd_client_errmsg(c), "up to 32"), "%s", sinkd_client_errmsg(c));
    sinkd_client_close(c);
    stop();

    cr_assert_eq(start_with("head_dim_max = 64\n", true), 0, "sinkd did not start");
    c = conn();
    cr_assert(sinkd_client_shm_create(c, 4096, 5000, &shm) == 0);
    cr_assert_eq(try_open_raw(c, 1, 2, 2, 64, NULL, &s), 0, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(kv_append(c, s, 0, 1, shm.handle, 0, 1024), 0, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(try_open_raw(c, 1, 2, 2, 80, NULL, &s), SINKD_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(sinkd_client_errmsg(c), "up to 64"), "%s", sinkd_client_errmsg(c));
    sinkd_client_shm_free(c, &shm, 5000);
    sinkd_client_close(c);
    stop();

    static const char *const refused[] = { "head_dim_max = 16\n", "head_dim_max = 40\n" };
    for (size_t i = 0; i < 2; i++) {
        cr_assert_eq(start_with(refused[i], true), -ECHILD, "%s", refused[i]);
        char *log = sinkd_testd_log(&d);
        cr_assert(log && strstr(log, "head_dim_max") && strstr(log, "multiple of 16"), "%s",
                  log ? log : "(no log)");
        free(log);
        sinkd_testd_free(&d);
    }
}

static uint64_t open_model(sinkd_client *c, const char *text)
{
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    uint64_t s;
    req q;

    req_init(&q, 1);
    sinkd_pack_kv_str(&q.pk, "model", "tiny");
    cr_assert_eq(call(c, "session.open", &q, &rep, NULL), 0, "%s", sinkd_client_errmsg(c));
    s = rep_u64(&rep, "session");
    cr_assert_eq(rep_u64(&rep, "n_vocab"), 260);
    sinkd_client_reply_free(&rep);
    req_init(&q, 2);
    kv_u(&q, "session", s);
    sinkd_pack_kv_str(&q.pk, "text", text);
    cr_assert_eq(call(c, "session.append", &q, &rep, NULL), 0, "%s", sinkd_client_errmsg(c));
    sinkd_client_reply_free(&rep);
    return s;
}

Test(sessions, generate_streams_tokens)
{
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    events ev = { 0 };
    const char *text;
    size_t tl;
    sinkd_client *c;
    uint64_t s;
    req q;

    start(true);
    c = conn();
    s = open_model(c, "Once upon a time");
    req_init(&q, 3);
    kv_u(&q, "session", s);
    kv_u(&q, "max_tokens", 24);
    sinkd_pack_kv_bool(&q.pk, "ignore_eos", true);
    cr_assert_eq(call(c, "session.generate", &q, &rep, &ev), 0, "%s", sinkd_client_errmsg(c));
    cr_assert_eq(rep_u64(&rep, "n_tokens"), 24);
    cr_assert_eq(ev.n, 24);
    cr_assert(sinkd_map_str(rep.map, "text", &text, &tl) == 0);
    cr_assert(tl == ev.text_len && !memcmp(text, ev.text, tl), "streamed text differs");
    sinkd_client_reply_free(&rep);
    /* a second generate continues the same conversation */
    req_init(&q, 2);
    kv_u(&q, "session", s);
    kv_u(&q, "max_tokens", 4);
    cr_assert_eq(call(c, "session.generate", &q, NULL, NULL), 0);
    sinkd_client_close(c);
    stop();
}

static void status(sinkd_client *c, sinkd_client_status *st)
{
    cr_assert_eq(sinkd_client_status_get(c, 5000, st), 0);
}

Test(sessions, killed_client_returns_pages)
{
    sinkd_client_status st;
    sinkd_client *c;
    int fds[2];
    pid_t pid;

    start(true);
    c = conn();
    status(c, &st);
    cr_assert_eq(st.kv_used_bytes, 0);
    cr_assert(pipe(fds) == 0);
    pid = fork();
    if (pid == 0) {
        sinkd_client *k;
        req q;
        close(fds[0]);
        if (sinkd_client_connect(d.socket_path, 5000, &k))
            _exit(2);
        uint64_t s = open_model(k, "In the beginning");
        if (write(fds[1], "x", 1) != 1)
            _exit(3);
        req_init(&q, 3);
        kv_u(&q, "session", s);
        kv_u(&q, "max_tokens", 1 << 20);
        sinkd_pack_kv_bool(&q.pk, "ignore_eos", true);
        call(k, "session.generate", &q, NULL, NULL);
        _exit(4);
    }
    char x;
    close(fds[1]);
    cr_assert(read(fds[0], &x, 1) == 1);
    close(fds[0]);
    usleep(100000);
    status(c, &st);
    cr_assert_eq(st.sessions, 1);
    cr_assert(st.kv_used_bytes > 0);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    for (int i = 0; i < 20; i++) {
        usleep(50000);
        status(c, &st);
        if (st.sessions == 0 && st.kv_used_bytes == 0)
            break;
    }
    cr_assert_eq(st.sessions, 0, "the session outlived its client by 1 s");
    cr_assert_eq(st.kv_used_bytes, 0, "pages not back in the pool within 1 s");
    sinkd_client_close(c);
    stop();
}
