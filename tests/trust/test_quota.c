/*
 * [quota] enforcement, each limit on a daemon of its own: sessions_per_uid,
 * generations_per_uid, pages_per_uid, session_tokens and request_bytes answer
 * quota_exceeded with a message naming the key, count per uid (another uid
 * is unaffected), and leave nothing behind. Fair scheduling: while uid A
 * keeps 40 sessions generating, uid B's one session is in every decode batch,
 * counted in tokens (not time): A may advance at most max_batch - 1 tokens
 * per step of B's generation, plus the steps around its start and end.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sinkd_testwire.h"
#include "trust.h"

#define UID_A 1001
#define UID_B 1002
#define GID 100

static sinkd_testd d = SINKD_TESTD_INIT;

static void start(const char *quota)
{
    char conf[1024];

    if (geteuid() != 0)
        cr_skip_test("needs root: clients of several uids");
    snprintf(conf, sizeof conf, TRUST_ENGINE "%s[server]\nsocket_mode = 0666\n[quota]\n%s",
             strstr(quota, "max_batch") ? "" : "kv_pool_bytes = 64M\n", quota);
    cr_assert_eq(trust_start(&d, conf), 0, "sinkd did not start");
}

static void teardown(void)
{
    if (d.pid > 0)
        cr_assert_eq(sinkd_testd_stop(&d), 0, "sinkd did not exit cleanly");
    sinkd_testd_free(&d);
}

TestSuite(quota, .fini = teardown, .timeout = 120);

static sinkd_client *as(uid_t uid)
{
    sinkd_client *c = NULL;

    cr_assert_eq(trust_connect_as(&d, uid, GID, (gid_t)-1, &c), 0);
    return c;
}

static void expect_quota(sinkd_client *c, int rc, const char *key)
{
    cr_assert_eq(rc, SINKD_ERR_QUOTA_EXCEEDED, "expected quota_exceeded, got %d (%s)", rc,
                 sinkd_client_errmsg(c));
    cr_assert(trust_errmsg_has(c, key), "message does not name %s: %s", key,
              sinkd_client_errmsg(c));
}

Test(quota, sessions_per_uid)
{
    start("sessions_per_uid = 2\n");
    sinkd_client *a = as(UID_A), *b = as(UID_B);
    uint64_t s1 = trust_open(a, NULL), s2 = trust_open(a, NULL);

    cr_assert(s1 && s2);
    expect_quota(a, trust_call(a, NULL, "session.open", "model:s", "tiny"), "sessions_per_uid");
    cr_assert(trust_open(b, NULL), "uid B is limited by uid A's sessions");
    cr_assert_eq(trust_call(a, NULL, "session.close", "session:u", s1), 0);
    cr_assert(trust_open(a, NULL), "a closed session still counts");
    sinkd_client_close(a);
    sinkd_client_close(b);
}

/* Send session.generate for @s on the raw socket @fd without waiting. */
static void generate_async(int fd, uint64_t id, uint64_t s, uint64_t max_tokens)
{
    size_t len;
    uint8_t *p = trust_pack(&len, "session.generate", id, "session:u max_tokens:u ignore_eos:b",
                            s, max_tokens, 1);

    cr_assert(p && sinkd_testwire_send_frame(fd, p, len) == 0);
    free(p);
}

Test(quota, generations_per_uid)
{
    start("generations_per_uid = 1\n");
    sinkd_client *a = as(UID_A), *b = as(UID_B);
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    sinkd_testwire_frame f = SINKD_TESTWIRE_FRAME_INIT;
    uint64_t s1 = trust_open(a, "one"), s2 = trust_open(a, "two"), sb = trust_open(b, "three");
    int fd = trust_connect_raw_as(&d, UID_A, GID);
    const char *ev, *reason;
    size_t n;

    cr_assert(s1 && s2 && sb && fd >= 0);
    generate_async(fd, 1, s1, 1u << 16);
    /* the first token event: s1 is generating now */
    cr_assert_eq(sinkd_testwire_recv(fd, 30000, &f), 0);
    cr_assert(sinkd_map_str(&f.msg.root, "ev", &ev, &n) == 0 && n == 5);
    sinkd_testwire_frame_free(&f);
    expect_quota(a, trust_call(a, NULL, "session.generate", "session:u max_tokens:u", s2,
                               (uint64_t)4), "generations_per_uid");
    cr_assert_eq(trust_call(b, NULL, "session.generate", "session:u max_tokens:u", sb,
                            (uint64_t)4), 0, "uid B is limited by uid A's generation");
    cr_assert_eq(trust_call(a, NULL, "session.cancel", "session:u", s1), 0);
    do {
        sinkd_testwire_frame_free(&f);
        cr_assert_eq(sinkd_testwire_recv(fd, 30000, &f), 0);
    } while (sinkd_map_get(&f.msg.root, "ev"));
    cr_assert(sinkd_map_str(&f.msg.root, "reason", &reason, &n) == 0 && n == 9 &&
              !memcmp(reason, "cancelled", 9));
    sinkd_testwire_frame_free(&f);
    /* the slot is free again */
    cr_assert_eq(trust_call(a, &rep, "session.generate", "session:u max_tokens:u", s2,
                            (uint64_t)4), 0, "%s", sinkd_client_errmsg(a));
    sinkd_client_reply_free(&rep);
    close(fd);
    sinkd_client_close(a);
    sinkd_client_close(b);
}

static uint64_t used_bytes(sinkd_client *c)
{
    sinkd_client_status st;

    cr_assert_eq(sinkd_client_status_get(c, 5000, &st), 0);
    return st.kv_used_bytes;
}

Test(quota, pages_per_uid)
{
    /* tiny model: 4 layers x 2 kv heads = 8 lanes, 16 tokens a page, so 24
     * pages hold 48 tokens; the byte-level tokenizer makes a token a byte */
    start("pages_per_uid = 24\n");
    sinkd_client *a = as(UID_A), *b = as(UID_B);
    char text[201];
    uint64_t s = trust_open(a, NULL), sb;

    memset(text, 'x', 200);
    text[200] = '\0';
    cr_assert(s);
    expect_quota(a, trust_call(a, NULL, "session.append", "session:u text:s", s, text),
                 "pages_per_uid");
    cr_assert(!trust_errmsg_has(a, "session_tokens"), "%s", sinkd_client_errmsg(a));
    cr_assert_eq(used_bytes(a), 0, "the refused append kept pages");
    /* what fits still goes in, and uid B has a budget of its own */
    cr_assert_eq(trust_call(a, NULL, "session.append", "session:u text:s", s, "small"), 0,
                 "%s", sinkd_client_errmsg(a));
    sb = trust_open(b, "small too");
    cr_assert(sb, "%s", sinkd_client_errmsg(b));
    sinkd_client_close(a);
    sinkd_client_close(b);
}

Test(quota, session_tokens)
{
    /* the tiny model's byte-level tokenizer: 200 bytes are 200 tokens in
     * every lane, over the 64 a session without a budget of its own gets */
    start("session_tokens = 64\n");
    sinkd_client *a = as(UID_A);
    char text[201];
    uint64_t s = trust_open(a, NULL);

    memset(text, 'x', 200);
    text[200] = '\0';
    cr_assert(s);
    expect_quota(a, trust_call(a, NULL, "session.append", "session:u text:s", s, text),
                 "session_tokens");
    cr_assert(!trust_errmsg_has(a, "pages_per_uid"), "%s", sinkd_client_errmsg(a));
    cr_assert_eq(used_bytes(a), 0, "the refused append kept pages");
    cr_assert_eq(trust_call(a, NULL, "session.append", "session:u text:s", s, "small"), 0, "%s",
                 sinkd_client_errmsg(a));
    /* a budget over the cap is refused at open, one under it is kept */
    expect_quota(a, trust_call(a, NULL, "session.open", "model:s budget:u", "tiny", (uint64_t)65),
                 "session_tokens");
    cr_assert_eq(trust_call(a, NULL, "session.open", "model:s budget:u", "tiny", (uint64_t)16), 0,
                 "%s", sinkd_client_errmsg(a));
    sinkd_client_close(a);
}

Test(quota, request_bytes)
{
    start("request_bytes = 4K\n");
    sinkd_client *a = as(UID_A);
    sinkd_client_shm shm = SINKD_CLIENT_SHM_INIT;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    uint64_t s;

    cr_assert_eq(sinkd_client_shm_create(a, 1 << 16, 5000, &shm), 0);
    /* one token of 2 kv heads x 16 dims is 128 bytes of K and as much V */
    s = trust_open_raw(a, 1, 2, 2, 16);
    cr_assert(s, "%s", sinkd_client_errmsg(a));
    cr_assert_eq(trust_call(a, &rep, "kv.append", "session:u layer:u n:u k:r v:r", s,
                            (uint64_t)0, (uint64_t)16, shm.handle, (uint64_t)0, shm.handle,
                            (uint64_t)8192), 0, "4096 bytes: %s", sinkd_client_errmsg(a));
    cr_assert_eq(trust_u64(&rep, "len"), 16);
    sinkd_client_reply_free(&rep);
    expect_quota(a, trust_call(a, NULL, "kv.append", "session:u layer:u n:u k:r v:r", s,
                               (uint64_t)0, (uint64_t)17, shm.handle, (uint64_t)0, shm.handle,
                               (uint64_t)8192), "request_bytes");
    /* the lane kept what it had */
    cr_assert_eq(trust_call(a, &rep, "kv.append", "session:u layer:u n:u k:r v:r", s,
                            (uint64_t)0, (uint64_t)1, shm.handle, (uint64_t)0, shm.handle,
                            (uint64_t)8192), 0);
    cr_assert_eq(trust_u64(&rep, "len"), 17);
    sinkd_client_reply_free(&rep);
    sinkd_client_shm_free(a, &shm, 5000);
    sinkd_client_close(a);
}

/* Tokens the sessions of @uid have consumed, from an admin's session.list. */
static uint64_t uid_tokens(const sinkd_testwire_frame *f, uint64_t uid, unsigned *n)
{
    const msgpack_object_array *a;
    uint64_t sum = 0;

    *n = 0;
    cr_assert(sinkd_map_array(&f->msg.root, "sessions", &a) == 0);
    for (uint32_t i = 0; i < a->size; i++) {
        uint64_t u = 0, t = 0;
        sinkd_map_u64(&a->ptr[i], "uid", &u);
        sinkd_map_u64(&a->ptr[i], "tokens", &t);
        if (u == uid) {
            sum += t;
            (*n)++;
        }
    }
    return sum;
}

/* The next reply (not an event) on @fd. */
static void next_reply(int fd, sinkd_testwire_frame *f)
{
    do {
        sinkd_testwire_frame_free(f);
        cr_assert_eq(sinkd_testwire_recv(fd, 60000, f), 0);
    } while (sinkd_map_get(&f->msg.root, "ev"));
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define FAIR_A_SESSIONS 40
#define FAIR_B_TOKENS 32
#define FAIR_BATCH 4

Test(quota, fair_batches_across_uids)
{
    start("sessions_per_uid = 0\ngenerations_per_uid = 0\n"
          "[engine]\nmax_batch = 4\nkv_pool_bytes = 64M\n");
    sinkd_testwire_frame f = SINKD_TESTWIRE_FRAME_INIT;
    sinkd_client *a = as(UID_A), *b = as(UID_B);
    int fa = trust_connect_raw_as(&d, UID_A, GID), fr = sinkd_testd_connect_raw(&d);
    uint64_t sb, a0, a1, b0, b1;
    unsigned na;
    size_t len;
    uint8_t *p;
    double t0, t1;

    cr_assert(fa >= 0 && fr >= 0);
    for (uint64_t i = 0; i < FAIR_A_SESSIONS; i++) {
        uint64_t s = trust_open(a, "A");
        cr_assert(s, "%s", sinkd_client_errmsg(a));
        generate_async(fa, i + 1, s, 100000);
    }
    /* last in the session table: no help from table order */
    sb = trust_open(b, "B");
    cr_assert(sb);
    /* every A session is generating before B starts */
    do {
        cr_assert_eq(trust_call(a, NULL, "ping", NULL), 0);
        p = trust_pack(&len, "session.list", 1, NULL);
        cr_assert(sinkd_testwire_send_frame(fr, p, len) == 0);
        free(p);
        next_reply(fr, &f);
        a0 = uid_tokens(&f, UID_A, &na);
    } while (a0 < FAIR_A_SESSIONS * 4u);
    /* root: list, B's generation, list again as soon as it replied; the
     * first two reach the engine together */
    p = trust_pack(&len, "session.list", 2, NULL);
    cr_assert(sinkd_testwire_send_frame(fr, p, len) == 0);
    free(p);
    generate_async(fr, 3, sb, FAIR_B_TOKENS);
    next_reply(fr, &f);
    t0 = now_s();
    a0 = uid_tokens(&f, UID_A, &na);
    b0 = uid_tokens(&f, UID_B, &na);
    next_reply(fr, &f);
    t1 = now_s();
    cr_assert_eq(trust_u64(&(sinkd_client_reply){ .map = &f.msg.root }, "n_tokens"),
                 FAIR_B_TOKENS, "B's generation ended early");
    p = trust_pack(&len, "session.list", 4, NULL);
    cr_assert(sinkd_testwire_send_frame(fr, p, len) == 0);
    free(p);
    next_reply(fr, &f);
    a1 = uid_tokens(&f, UID_A, &na);
    b1 = uid_tokens(&f, UID_B, &na);
    sinkd_testwire_frame_free(&f);
    cr_assert_eq(na, 1);
    /* B's tokens: all but the last went through the model */
    cr_assert_eq(b1 - b0, FAIR_B_TOKENS - 1);
    /* B ran in every one of its ~32 steps, so A had max_batch - 1 slots in
     * them; allow 10 steps of A alone around B's start and end. Without
     * per-uid rounds B would get one step in ~10 and A ~1300 tokens. */
    cr_assert(a1 - a0 <= (uint64_t)(FAIR_BATCH - 1) * FAIR_B_TOKENS + FAIR_BATCH * 10,
              "uid A advanced %llu tokens during uid B's %d", (unsigned long long)(a1 - a0),
              FAIR_B_TOKENS);
    {
        double tb = (double)(b1 - b0) / (t1 - t0), ta = (double)(a1 - a0) / (t1 - t0);
        fprintf(stderr,
                "fairness: uid B (1 session) %.1f tok/s, uid A (%d sessions) %.1f tok/s total, "
                "%.2f per session; B/A-per-session %.1f, B/A-total %.2f\n",
                tb, FAIR_A_SESSIONS, ta, ta / FAIR_A_SESSIONS,
                ta > 0 ? tb / (ta / FAIR_A_SESSIONS) : 0.0, ta > 0 ? tb / ta : 0.0);
    }
    close(fa);
    close(fr);
    sinkd_client_close(a);
    sinkd_client_close(b);
}
