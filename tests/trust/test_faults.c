/*
 * Faults the daemon must survive: the KV pool running out (an error to that
 * request, nothing lost, other clients unaffected), a truncated or hostile
 * GGUF file at start (a clear error and exit status 1, not a crash), and an
 * engine that stops making progress (the watchdog withholds WATCHDOG=1 until
 * it moves again; sinkd-debug's debug.stall op stalls it on purpose).
 * A client killed mid-generation and a shrunk memfd: tests/sessions.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "sinkd_testwire.h"
#include "trust.h"

static sinkd_testd d = SINKD_TESTD_INIT;

static void teardown(void)
{
    if (d.pid > 0)
        cr_assert_eq(sinkd_testd_stop(&d), 0, "sinkd did not exit cleanly");
    sinkd_testd_free(&d);
}

TestSuite(faults, .fini = teardown, .timeout = 120);

static uint64_t used_bytes(sinkd_client *c)
{
    sinkd_client_status st;

    cr_assert_eq(sinkd_client_status_get(c, 5000, &st), 0);
    return st.kv_used_bytes;
}

Test(faults, out_of_pages)
{
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    sinkd_client *a, *b;
    char text[3001];
    uint64_t sa, sb, used;

    cr_assert_eq(trust_start(&d, TRUST_ENGINE "kv_pool_bytes = 512K\n[server]\n"
                             "socket_mode = 0666\n"), 0);
    cr_assert_eq(sinkd_client_connect(d.socket_path, 5000, &a), 0);
    cr_assert_eq(sinkd_client_connect(d.socket_path, 5000, &b), 0);
    sb = trust_open(b, "a short prompt");
    sa = trust_open(a, "hello");
    cr_assert(sa && sb);
    used = used_bytes(a);
    memset(text, 'z', 3000);
    text[3000] = '\0';
    cr_assert_eq(trust_call(a, NULL, "session.append", "session:u text:s", sa, text),
                 SINKD_ERR_NO_MEMORY, "%s", sinkd_client_errmsg(a));
    cr_assert_eq(used_bytes(a), used, "the failed append kept pages");
    /* the other client's session generates as before, and so does A's */
    cr_assert_eq(trust_call(b, &rep, "session.generate", "session:u max_tokens:u ignore_eos:b",
                            sb, (uint64_t)8, 1), 0, "%s", sinkd_client_errmsg(b));
    cr_assert_eq(trust_u64(&rep, "n_tokens"), 8);
    sinkd_client_reply_free(&rep);
    cr_assert_eq(trust_call(a, NULL, "session.append", "session:u text:s", sa, " world"), 0);
    cr_assert_eq(trust_call(a, &rep, "session.stats", "session:u", sa), 0);
    cr_assert_eq(trust_u64(&rep, "tokens"), 1 + 5 + 6, "BOS + 'hello' + ' world'");
    sinkd_client_reply_free(&rep);
    sinkd_client_close(a);
    sinkd_client_close(b);
}

/* Write @n bytes of @data to @path. */
static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");

    cr_assert(f && fwrite(data, 1, n, f) == n && fclose(f) == 0);
}

/* sinkd with model "bad" at @path must refuse to start: exit status 1 and a
 * log line naming the model (and saying @why, when not NULL). */
static void expect_refused_why(const char *path, const char *what, const char *why)
{
    char arg[512];
    const char *args[] = { "--model", arg, "--backend", "cpu", NULL };
    char *log;

    snprintf(arg, sizeof arg, "bad=%s", path);
    cr_assert_eq(sinkd_testd_start(&d, "[engine]\nkv_pool_bytes = 4M\n", args), -ECHILD,
                 "%s: sinkd started", what);
    cr_assert_eq(d.exit_status, 1, "%s: exit status %d (a signal is 128 + n)", what,
                 d.exit_status);
    log = sinkd_testd_log(&d);
    cr_assert(log && strstr(log, "model bad"), "%s: no error naming the model:\n%s", what,
              log ? log : "");
    cr_assert(!why || strstr(log, why), "%s: the log does not say '%s':\n%s", what, why, log);
    free(log);
    sinkd_testd_free(&d);
}

static void expect_refused(const char *path, const char *what)
{
    expect_refused_why(path, what, NULL);
}

Test(faults, bad_gguf_at_start)
{
    char dir[] = "/tmp/sinkd-gguf-XXXXXX", path[128];
    uint8_t *good;
    size_t n = 0;
    FILE *f = fopen(TRUST_MODEL, "rb");

    cr_assert(f && mkdtemp(dir));
    good = malloc(1 << 16);
    cr_assert(good);
    n = fread(good, 1, 1 << 16, f);
    fclose(f);
    cr_assert(n == 1 << 16);
    /* truncated: the header and part of the metadata, then nothing */
    snprintf(path, sizeof path, "%s/truncated.gguf", dir);
    write_file(path, good, 4096);
    expect_refused(path, "truncated");
    /* hostile: a valid header claiming 2^62 tensors and 2^62 keys */
    {
        uint8_t h[24] = { 'G', 'G', 'U', 'F', 3, 0, 0, 0 };
        h[8 + 7] = 0x40;
        h[16 + 7] = 0x40;
        snprintf(path, sizeof path, "%s/hostile.gguf", dir);
        write_file(path, h, sizeof h);
        expect_refused(path, "hostile counts");
    }
    /* hostile: the real header with a metadata key length of 2^63 */
    memset(good + 24, 0xff, 8);
    snprintf(path, sizeof path, "%s/keylen.gguf", dir);
    write_file(path, good, 1 << 16);
    expect_refused(path, "huge key length");
    /* not a GGUF file at all, and an empty one */
    snprintf(path, sizeof path, "%s/empty.gguf", dir);
    write_file(path, "", 0);
    expect_refused(path, "empty");
    snprintf(path, sizeof path, "%s/text.gguf", dir);
    write_file(path, "[model]\npath = nowhere\n", 23);
    expect_refused(path, "not gguf");
    /* a tokenizer of 200 tokens for an output of 260 rows: some sampled ids
     * would have no text */
    char cmd[512];
    snprintf(path, sizeof path, "%s/short.gguf", dir);
    snprintf(cmd, sizeof cmd, "python3 %s/tests/trust/short_vocab_gguf.py %s %s 200",
             SINKD_SOURCE_DIR, TRUST_MODEL, path);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    expect_refused_why(path, "short vocabulary", "the tokenizer has 200 tokens, fewer than the "
                       "260 rows of the output");
    free(good);
    /* the files are ours: remove them and the directory */
    for (const char *const *nm = (const char *const[]){ "truncated", "hostile", "keylen",
                                                         "empty", "text", "short", NULL };
         *nm; nm++) {
        snprintf(path, sizeof path, "%s/%s.gguf", dir, *nm);
        unlink(path);
    }
    rmdir(dir);
}

/* ---- watchdog -------------------------------------------------------------- */

#define WD_USEC 200000   /* WatchdogSec=200ms: WATCHDOG=1 every 100 ms */

/* Datagrams on @fd for @ms milliseconds: how many carried WATCHDOG=1. */
static int watchdogs(int fd, int ms)
{
    struct timespec t0, t;
    int n = 0;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        char buf[1024];
        struct pollfd p = { fd, POLLIN, 0 };
        long left;
        clock_gettime(CLOCK_MONOTONIC, &t);
        left = ms - ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
        if (left <= 0)
            return n;
        if (poll(&p, 1, (int)left) == 1) {
            ssize_t r = recv(fd, buf, sizeof buf - 1, 0);
            if (r > 0) {
                buf[r] = '\0';
                n += strstr(buf, "WATCHDOG=1") != NULL;
            }
        }
    }
}

Test(faults, watchdog_withheld_while_engine_stalls)
{
    char dir[] = "/tmp/sinkd-wd-XXXXXX", wrapper[128], notify[128], script[512];
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    sinkd_testwire_frame f = SINKD_TESTWIRE_FRAME_INIT;
    sinkd_client *c;
    size_t len;
    uint8_t *p;
    char *log;
    int nfd, fd;

    cr_assert(mkdtemp(dir));
    snprintf(notify, sizeof notify, "%s/notify", dir);
    snprintf(wrapper, sizeof wrapper, "%s/sinkd", dir);
    nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    memcpy(sa.sun_path, notify, strlen(notify) + 1);
    cr_assert(nfd >= 0 && bind(nfd, (struct sockaddr *)&sa, sizeof sa) == 0);
    /* sinkd_testd keeps systemd's variables away from the daemon: put them
     * back in a wrapper it runs as the binary */
    snprintf(script, sizeof script, "#!/bin/sh\nexec env NOTIFY_SOCKET=%s WATCHDOG_USEC=%d %s "
             "\"$@\"\n", notify, WD_USEC, SINKD_DEBUG_BIN);
    write_file(wrapper, script, strlen(script));
    cr_assert(chmod(wrapper, 0755) == 0);
    cr_assert(setenv("SINKD_BIN", wrapper, 1) == 0);
    cr_assert_eq(sinkd_testd_start(&d, TRUST_ENGINE "kv_pool_bytes = 4M\n", NULL), 0);
    unsetenv("SINKD_BIN");

    cr_assert(watchdogs(nfd, 1000) >= 3, "no watchdog pings from a healthy daemon");
    cr_assert_eq(sinkd_client_connect(d.socket_path, 5000, &c), 0);
    fd = sinkd_testd_connect_raw(&d);
    cr_assert(fd >= 0);
    p = trust_pack(&len, "debug.stall", 1, "ms:u", (uint64_t)4000);
    cr_assert(p && sinkd_testwire_send_frame(fd, p, len) == 0);
    free(p);
    /* the loop still answers, but the engine is stuck: past the first
     * WatchdogSec no ping may go out */
    cr_assert_eq(sinkd_client_ping(c, 5000, NULL), 0);
    watchdogs(nfd, 1000);
    cr_assert_eq(watchdogs(nfd, 1500), 0, "WATCHDOG=1 sent while the engine was stuck");
    cr_assert_eq(sinkd_testwire_recv(fd, 30000, &f), 0);
    cr_assert(sinkd_map_get(&f.msg.root, "ok"), "debug.stall did not reply ok");
    sinkd_testwire_frame_free(&f);
    cr_assert(watchdogs(nfd, 2000) >= 1, "the pings did not resume after the stall");
    log = sinkd_testd_log(&d);
    cr_assert(log && strstr(log, "watchdog: liveness check failed"));
    free(log);
    close(fd);
    sinkd_client_close(c);
    cr_assert_eq(sinkd_testd_stop(&d), 0);
    sinkd_testd_free(&d);
    close(nfd);
    unlink(notify);
    unlink(wrapper);
    rmdir(dir);
}

/* SIGTERM while a request is in flight in the engine: the request gets its
 * final answer before the connection closes (PROTOCOL.md §8), and one
 * queued behind it gets shutting_down. */
Test(faults, stop_answers_the_requests_in_flight)
{
    sinkd_testwire_frame f = SINKD_TESTWIRE_FRAME_INIT;
    size_t len;
    uint8_t *p;

    cr_assert(setenv("SINKD_BIN", SINKD_DEBUG_BIN, 1) == 0);
    cr_assert_eq(sinkd_testd_start(&d, TRUST_ENGINE "kv_pool_bytes = 4M\n", NULL), 0);
    unsetenv("SINKD_BIN");
    int fd = sinkd_testd_connect_raw(&d);
    cr_assert(fd >= 0);
    p = trust_pack(&len, "debug.stall", 1, "ms:u", (uint64_t)1500);
    cr_assert(p && sinkd_testwire_send_frame(fd, p, len) == 0);
    free(p);
    usleep(300 * 1000); /* the engine runs it */
    p = trust_pack(&len, "debug.stall", 2, "ms:u", (uint64_t)1);
    cr_assert(p && sinkd_testwire_send_frame(fd, p, len) == 0);
    free(p);
    usleep(200 * 1000); /* queued behind it */
    cr_assert_eq(kill(d.pid, SIGTERM), 0);

    cr_assert_eq(sinkd_testwire_recv(fd, 30000, &f), 0, "no answer to the stall in flight");
    uint64_t id = 0;
    cr_assert(sinkd_map_u64(&f.msg.root, "id", &id) == 0 && id == 1);
    cr_assert(sinkd_map_get(&f.msg.root, "ok"), "debug.stall did not reply ok");
    sinkd_testwire_frame_free(&f);
    cr_assert_eq(sinkd_testwire_recv(fd, 30000, &f), 0, "no answer to the queued request");
    sinkd_errcode code;
    bool has_id;
    sinkd_testwire_error(&f, &code, &has_id, &id, NULL);
    cr_assert_eq(code, SINKD_ERR_SHUTTING_DOWN);
    cr_assert_eq(id, 2);
    sinkd_testwire_frame_free(&f);
    cr_assert(sinkd_testwire_closed(fd, 30000), "the connection stayed open");
    close(fd);
    cr_assert_eq(sinkd_testd_wait(&d, 30000), 0, "sinkd did not exit 0");
}

/* SIGTERM while a generation streams: it ends with its final reply
 * (reason cancelled) before the connection closes. */
Test(faults, stop_ends_a_generation_with_its_reply)
{
    sinkd_testwire_frame f = SINKD_TESTWIRE_FRAME_INIT;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    sinkd_client *c;
    uint64_t s = 0, id = 0;
    size_t len;

    cr_assert_eq(trust_start(&d, TRUST_ENGINE "kv_pool_bytes = 4M\n"), 0);
    cr_assert_eq(sinkd_client_connect(d.socket_path, 5000, &c), 0);
    cr_assert_eq(trust_call(c, &rep, "session.open", "policy:s params:s", "window", "window=16"),
                 0);
    cr_assert(sinkd_map_u64(rep.map, "session", &s) == 0);
    sinkd_client_reply_free(&rep);
    cr_assert_eq(trust_call(c, NULL, "session.append", "session:u text:s", s, "Once upon"), 0);
    int fd = sinkd_testd_connect_raw(&d);
    cr_assert(fd >= 0);
    uint8_t *p = trust_pack(&len, "session.generate", 7, "session:u max_tokens:u ignore_eos:b",
                            s, (uint64_t)1000000, 1);
    cr_assert(p && sinkd_testwire_send_frame(fd, p, len) == 0);
    free(p);
    cr_assert_eq(sinkd_testwire_recv(fd, 30000, &f), 0);
    cr_assert(sinkd_map_get(&f.msg.root, "ev"), "the first frame is a token event");
    sinkd_testwire_frame_free(&f);
    cr_assert_eq(kill(d.pid, SIGTERM), 0);
    const char *reason = NULL;
    size_t n = 0;
    for (;;) { /* token events, then the reply */
        cr_assert_eq(sinkd_testwire_recv(fd, 30000, &f), 0, "EOF before the final reply");
        if (!sinkd_map_get(&f.msg.root, "ev"))
            break;
        sinkd_testwire_frame_free(&f);
    }
    cr_assert(sinkd_map_u64(&f.msg.root, "id", &id) == 0 && id == 7);
    cr_assert(sinkd_map_str(&f.msg.root, "reason", &reason, &n) == 0);
    cr_assert(n == 9 && !memcmp(reason, "cancelled", 9), "reason %.*s", (int)n, reason);
    sinkd_testwire_frame_free(&f);
    cr_assert(sinkd_testwire_closed(fd, 30000));
    close(fd);
    sinkd_client_close(c);
    cr_assert_eq(sinkd_testd_wait(&d, 30000), 0, "sinkd did not exit 0");
}

Test(faults, release_build_has_no_debug_ops)
{
    cr_assert_eq(trust_start(&d, TRUST_ENGINE "kv_pool_bytes = 4M\n"), 0);
    sinkd_client *c;
    cr_assert_eq(sinkd_client_connect(d.socket_path, 5000, &c), 0);
    cr_assert_eq(trust_call(c, NULL, "debug.stall", "ms:u", (uint64_t)1), SINKD_ERR_UNKNOWN_OP);
    sinkd_client_close(c);
}
