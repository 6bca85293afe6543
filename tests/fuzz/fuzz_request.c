/*
 * libFuzzer target for whole request handling: the input is the byte stream
 * of one client connection, fed through a real sinkd connection object
 * (socketpair, driven by the daemon's libuv loop) into the real dispatcher,
 * op handlers and engine thread, with the CPU backend and the tiny test model
 * loaded in process.
 *
 * Per input:
 *   1. a socketpair; the daemon end is accepted as a connection, then made to
 *      look like an ordinary non-admin peer of uid 1000 (its real
 *      credentials are ours), so isolation and admin checks run as they do
 *      for an untrusted client;
 *   2. the input is sent, its first byte carrying one 64 KiB sealable memfd
 *      as SCM_RIGHTS, so a leading shm.register frame gets region 1 and the
 *      shared-memory ops are reachable; replies are read and discarded;
 *   3. once the daemon has consumed the input (or stopped reading), a second
 *      connection, an admin, lists every session and closes each: that is a
 *      barrier behind every job the input queued (the engine runs jobs in
 *      order) and leaves the engine as it was;
 *   4. the client end closes, the loop runs until the connection is gone,
 *      and the engine's op attachment is dropped and re-made, releasing the
 *      connection's shared-memory regions; session ids restart at 1 (the
 *      barrier's answer orders the engine thread's last write before ours),
 *      so a seed can name "the first session it opens" as session 1.
 * Checks (abort on failure): no reply frame fails to decode; every request
 * the admin barrier sends is answered; nothing takes longer than
 * FUZZ_DEADLINE_MS (a hang is a finding). ASan/LSan do the rest.
 *
 * tests/fuzz/replay.c runs the same function over corpus/request.
 */
#include "config.h"
#include "conn.h"
#include "engine_internal.h"
#include "log.h"
#include "ops.h"
#include "ops_engine.h"
#include "proto.h"
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MODEL SINKD_TEST_DATA "/sinkd-ref-tiny-f32.gguf"
#define FUZZ_DEADLINE_MS 60000
#define FUZZ_SHM_BYTES 65536
#define FUZZ_INPUT_MAX (1u << 20)

#define CHECK(c)                                                              \
    do {                                                                      \
        if (!(c)) {                                                           \
            fprintf(stderr, "fuzz_request: check failed: %s (%s:%d)\n", #c,   \
                    __FILE__, __LINE__);                                      \
            abort();                                                          \
        }                                                                     \
    } while (0)

static struct {
    bool ready;
    uv_loop_t loop;
    sinkd_server srv;
    sinkd_engine *eng;
    uv_timer_t tick;    /* bounds each loop turn's sleep (fuzz__turn) */
} fz;

static uint64_t fuzz__now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void fuzz__teardown(void)
{
    if (!fz.ready)
        return;
    sinkd_engine_stop(fz.eng);
    sinkd_engine_ops_detach();
    uv_close((uv_handle_t *)&fz.tick, NULL);
    sinkd_server_stop(&fz.srv);
    uv_run(&fz.loop, UV_RUN_DEFAULT);
    sinkd_server_free(&fz.srv);
    sinkd_engine_close(fz.eng);
    uv_loop_close(&fz.loop);
    fz.ready = false;
}

static void fuzz__tick(uv_timer_t *t)
{
    (void)t;
}

static void fuzz__setup(void)
{
    static const char conf[] =
        "[engine]\nbackend = cpu\nthreads = 1\nkv_pool_bytes = 1M\nkv_dtype = f32\n"
        "max_batch = 4\nprefill_chunk = 64\n"
        "[quota]\nsessions_per_uid = 8\ngenerations_per_uid = 2\nrequest_bytes = 32K\n"
        "[server]\nmax_frame = 64K\nlog_level = err\n";
    char err[SINKD_CONFIG_ERR_MAX];
    sinkd_engine_config ec = { 0 };
    const char *names[] = { "tiny" }, *paths[] = { FUZZ_MODEL };
    sinkd_config cfg;

    CHECK(sinkd_config_init(&cfg) == 0);
    CHECK(sinkd_config_load_string(&cfg, conf, "fuzz", err, sizeof err) == 0);
    sinkd_log_set_level(cfg.log_level);
    ec.backend = "cpu";
    ec.threads = 1;
    ec.kv = (sinkd_kv_config)SINKD_KV_CONFIG_INIT;
    ec.kv.pool_bytes = cfg.kv_pool_bytes;
    ec.kv.page_tokens = (int32_t)cfg.page_tokens;
    ec.kv.dtype = SINKD_F32;
    ec.prefill_chunk = (int32_t)cfg.prefill_chunk;
    ec.max_batch = (int32_t)cfg.max_batch;
    ec.sessions_per_uid = (uint32_t)cfg.sessions_per_uid;
    ec.generations_per_uid = (uint32_t)cfg.generations_per_uid;
    ec.request_bytes = cfg.request_bytes;
    ec.snapshots_per_uid = (uint32_t)cfg.snapshots_per_uid;
    ec.model_names = names;
    ec.model_paths = paths;
    ec.n_models = 1;
    ec.max_frame = (size_t)cfg.max_frame;
    CHECK(uv_loop_init(&fz.loop) == 0);
    CHECK(uv_timer_init(&fz.loop, &fz.tick) == 0);
    CHECK(uv_timer_start(&fz.tick, fuzz__tick, 100, 100) == 0);
    uv_unref((uv_handle_t *)&fz.tick);
    CHECK(sinkd_server_init(&fz.srv, &fz.loop, &cfg, NULL, NULL) == 0);
    if (sinkd_engine_open(&ec, &fz.eng, err, sizeof err) < 0) {
        fprintf(stderr, "fuzz_request: engine: %s\n", err);
        abort();
    }
    CHECK(sinkd_engine_start(fz.eng, sinkd_engine_ops_post, &fz.srv) == 0);
    CHECK(sinkd_engine_ops_attach(&fz.srv, fz.eng) == 0);
    signal(SIGPIPE, SIG_IGN);
    fz.ready = true;
    atexit(fuzz__teardown);
}

/* A socketpair whose daemon end becomes a connection; returns the client
 * end (non-blocking) and the connection's id. */
static int fuzz__connect(uint64_t *id, bool admin)
{
    int sv[2];
    sinkd_conn *c;

    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    CHECK(fcntl(sv[0], F_SETFL, O_NONBLOCK) == 0 && fcntl(sv[1], F_SETFL, O_NONBLOCK) == 0);
    CHECK(sinkd_conn_accept(&fz.srv, sv[0]) == 0);
    *id = fz.srv.next_conn_id;
    c = sinkd_server_conn(&fz.srv, *id);
    CHECK(c != NULL);
    if (!admin) {
        c->uid = 1000;
        c->gid = 1000;
        c->admin = false;
    }
    return sv[1];
}

/* One loop turn; aborts past the deadline. */
static void fuzz__turn(uint64_t deadline)
{
    CHECK(fuzz__now_ms() < deadline);
    /* ONCE sleeps until an event; the unreferenced 100 ms tick bounds the
     * sleep */
    uv_run(&fz.loop, UV_RUN_ONCE);
}

/* Read what the daemon sent on @fd into @rd. Every whole frame must
 * decode; with @want_id, the first frame whose id is @want_id is copied to
 * *@kept (malloc'ed payload, decoded into @m) and reading stops there.
 * Returns 1 when that frame was found, 0 otherwise, -1 at EOF. */
static int fuzz__drain(int fd, sinkd_frame_reader *rd, const uint64_t *want_id,
                       uint8_t **kept, sinkd_msg *m)
{
    uint8_t buf[16384];
    const uint8_t *p;
    size_t len;
    ssize_t n;

    while ((n = read(fd, buf, sizeof buf)) > 0)
        CHECK(sinkd_frame_reader_feed(rd, buf, (size_t)n) == 0);
    while (sinkd_frame_reader_next(rd, &p, &len) == 1) {
        uint64_t id;
        sinkd_msg f;
        CHECK(sinkd_msg_decode(p, len, &f, NULL) == 0);
        bool hit = want_id && sinkd_map_u64(&f.root, "id", &id) == 0 && id == *want_id &&
                   !sinkd_map_get(&f.root, "ev");
        sinkd_msg_free(&f);
        if (hit) {
            *kept = malloc(len);
            CHECK(*kept != NULL);
            memcpy(*kept, p, len);
            CHECK(sinkd_msg_decode(*kept, len, m, NULL) == 0);
            return 1;
        }
    }
    return n == 0 ? -1 : 0;
}

static void fuzz__send_all(int fd, const uint8_t *p, size_t n, uint64_t deadline)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            CHECK(errno == EAGAIN || errno == EINTR);
            fuzz__turn(deadline);
            continue;
        }
        p += w;
        n -= (size_t)w;
    }
}

/* Admin request @op {session?} on @fd; waits for its reply, which the
 * caller gets decoded in @out over the payload *@kept (caller frees both). */
static void fuzz__admin(int fd, sinkd_frame_reader *rd, const char *op, bool has_session,
                        uint64_t session, uint8_t **kept, sinkd_msg *out, uint64_t deadline)
{
    static const uint64_t id = 7;
    sinkd_fw w;
    uint8_t *frame;
    size_t len;
    int got;

    CHECK(sinkd_fw_init(&w) == 0);
    sinkd_pack_request_head(&w.pk, op, id, has_session ? 1 : 0);
    if (has_session)
        sinkd_pack_kv_u64(&w.pk, "session", session);
    CHECK(sinkd_fw_finish(&w, 0) > 0);
    frame = sinkd_fw_release(&w, &len);
    sinkd_fw_free(&w);
    fuzz__send_all(fd, frame, len, deadline);
    free(frame);
    while ((got = fuzz__drain(fd, rd, &id, kept, out)) == 0)
        fuzz__turn(deadline);
    CHECK(got == 1);
}

static sinkd_errcode fuzz__code(const sinkd_msg *m)
{
    const msgpack_object *e;
    const char *s;
    size_t n;

    if (sinkd_map_map(&m->root, "error", &e) < 0 || sinkd_map_str(e, "code", &s, &n) < 0)
        return SINKD_ERR_INTERNAL;
    return sinkd_errcode_from_name(s, n);
}

/* Close every session the engine holds, through an admin connection. */
static void fuzz__reset_sessions(uint64_t deadline)
{
    sinkd_frame_reader rd;
    sinkd_msg m, r;
    uint8_t *kept;
    const msgpack_object_array *a;
    uint64_t id, *ids = NULL;
    uint32_t n = 0;
    int fd = fuzz__connect(&id, true);

    sinkd_frame_reader_init(&rd, 0);
    fuzz__admin(fd, &rd, "session.list", false, 0, &kept, &m, deadline);
    CHECK(sinkd_map_array(&m.root, "sessions", &a) == 0);
    ids = calloc((size_t)a->size + 1, sizeof *ids);
    CHECK(ids != NULL);
    for (uint32_t i = 0; i < a->size; i++)
        if (a->ptr[i].type == MSGPACK_OBJECT_MAP && sinkd_map_u64(&a->ptr[i], "session",
                                                                  &ids[n]) == 0)
            n++;
    sinkd_msg_free(&m);
    free(kept);
    for (uint32_t i = 0; i < n; i++) {
        fuzz__admin(fd, &rd, "session.close", true, ids[i], &kept, &r, deadline);
        /* not_found: closed with its connection meanwhile */
        CHECK(sinkd_map_get(&r.root, "ok") != NULL || fuzz__code(&r) == SINKD_ERR_NOT_FOUND);
        sinkd_msg_free(&r);
        free(kept);
    }
    free(ids);
    fz.eng->next_sess = 1;
    close(fd);
    while (sinkd_server_conn(&fz.srv, id))
        fuzz__turn(deadline);
    sinkd_frame_reader_free(&rd);
}

/* Send @data with a memfd on its first byte. */
static size_t fuzz__send_first(int fd, const uint8_t *data)
{
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = { (void *)data, 1 };
    struct msghdr mh = { 0 };
    struct cmsghdr *cm;
    int mfd = memfd_create("fuzz", MFD_CLOEXEC | MFD_ALLOW_SEALING);

    CHECK(mfd >= 0 && ftruncate(mfd, FUZZ_SHM_BYTES) == 0);
    memset(cbuf, 0, sizeof cbuf);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &mfd, sizeof mfd);
    CHECK(sendmsg(fd, &mh, MSG_NOSIGNAL) == 1);
    close(mfd);
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t deadline = fuzz__now_ms() + FUZZ_DEADLINE_MS, id;
    sinkd_frame_reader rd;
    sinkd_conn *c;
    size_t sent;
    int fd;

    if (size == 0 || size > FUZZ_INPUT_MAX)
        return 0;
    if (!fz.ready)
        fuzz__setup();
    sinkd_frame_reader_init(&rd, 0);
    fd = fuzz__connect(&id, false);
    sent = fuzz__send_first(fd, data);
    /* Send the rest while the daemon reads; stop if it stops reading. */
    while ((c = sinkd_server_conn(&fz.srv, id)) && c->reading && c->rx_total < size) {
        if (sent < size) {
            ssize_t w = write(fd, data + sent, size - sent);
            if (w > 0)
                sent += (size_t)w;
            else
                CHECK(w < 0 && (errno == EAGAIN || errno == EINTR || errno == EPIPE ||
                                errno == ECONNRESET));
        }
        fuzz__drain(fd, &rd, NULL, NULL, NULL);
        fuzz__turn(deadline);
    }
    fuzz__reset_sessions(deadline);
    close(fd);
    while (sinkd_server_conn(&fz.srv, id))
        fuzz__turn(deadline);
    sinkd_frame_reader_free(&rd);
    /* Drop every region: detach frees the table, attach makes a new one. */
    sinkd_engine_ops_detach();
    CHECK(sinkd_engine_ops_attach(&fz.srv, fz.eng) == 0);
    return 0;
}
