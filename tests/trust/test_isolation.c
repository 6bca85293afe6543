/*
 * Isolation between uids, with real clients of different uids on one sinkd:
 * the socket's mode and group, sessions invisible to other uids (every
 * session op answers not_found exactly as for a session that does not
 * exist, and changes nothing), admins (root and admin_group) seeing and
 * closing everything, and the admin-only ops refused to everyone else.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "trust.h"

#define UID_A 1001
#define UID_B 1002
#define UID_OP 1003   /* an operator: admin through admin_group */
#define GID_USERS 100 /* socket_group */
#define GID_ADM 4     /* admin_group */
#define GID_NOGROUP 65534

#define CONF TRUST_ENGINE "kv_pool_bytes = 16M\n[server]\nsocket_mode = 0660\n" \
             "socket_group = users\nadmin_group = adm\n"

static sinkd_testd d = SINKD_TESTD_INIT;

static void setup(void)
{
    if (geteuid() != 0)
        cr_skip_test("needs root: clients of several uids");
    cr_assert_eq(trust_start(&d, CONF), 0, "sinkd did not start");
}

static void teardown(void)
{
    if (d.pid > 0)
        cr_assert_eq(sinkd_testd_stop(&d), 0, "sinkd did not exit cleanly");
    sinkd_testd_free(&d);
}

TestSuite(isolation, .init = setup, .fini = teardown, .timeout = 60);

static sinkd_client *as(uid_t uid, gid_t gid)
{
    sinkd_client *c = NULL;
    int rc = trust_connect_as(&d, uid, gid, GID_USERS, &c);

    cr_assert_eq(rc, 0, "connect as %u: %s", (unsigned)uid, strerror(-rc));
    return c;
}

static unsigned n_listed(sinkd_client *c, uint64_t s)
{
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    const msgpack_object_array *a;
    unsigned n = 0, has = 0;

    cr_assert_eq(trust_call(c, &rep, "session.list", NULL), 0);
    cr_assert(sinkd_map_array(rep.map, "sessions", &a) == 0);
    for (uint32_t i = 0; i < a->size; i++) {
        uint64_t id = 0;
        sinkd_map_u64(&a->ptr[i], "session", &id);
        has += id == s;
        n++;
    }
    sinkd_client_reply_free(&rep);
    return s ? has : n;
}

Test(isolation, socket_mode_and_group)
{
    struct stat st;
    sinkd_client *c = NULL;

    cr_assert(stat(d.socket_path, &st) == 0);
    cr_assert_eq(st.st_mode & 0777, 0660, "mode %o", st.st_mode & 0777);
    cr_assert_eq(st.st_gid, GID_USERS);
    /* outside the group: the kernel refuses the connect */
    cr_assert_eq(trust_connect_as(&d, UID_A, GID_NOGROUP, (gid_t)-1, &c), -EACCES);
    /* inside it, by primary or supplementary group: accepted */
    cr_assert_eq(trust_connect_as(&d, UID_A, GID_USERS, (gid_t)-1, &c), 0);
    sinkd_client_close(c);
    cr_assert_eq(trust_connect_as(&d, UID_A, GID_NOGROUP, GID_USERS, &c), 0);
    sinkd_client_close(c);
}

/* What uid B gets for op @op on session @s, and the same for a session that
 * does not exist: both must be not_found. Returns false for an op this
 * daemon does not have. */
static bool refused_like_missing(sinkd_client *b, const char *op, uint64_t s, uint64_t shm)
{
    static const uint64_t missing = 1u << 30;
    uint64_t ids[2] = { s, missing };

    for (int k = 0; k < 2; k++) {
        uint64_t id = ids[k];
        int rc;
        if (!strcmp(op, "session.append"))
            rc = trust_call(b, NULL, op, "session:u text:s", id, " more");
        else if (!strcmp(op, "session.generate"))
            rc = trust_call(b, NULL, op, "session:u max_tokens:u", id, (uint64_t)4);
        else if (!strcmp(op, "session.policy"))
            rc = trust_call(b, NULL, op, "session:u policy:s", id, "window");
        else if (!strcmp(op, "session.logits"))
            rc = trust_call(b, NULL, op, "session:u shm:u offset:u", id, shm, (uint64_t)0);
        else if (!strcmp(op, "kv.append"))
            rc = trust_call(b, NULL, op, "session:u layer:u n:u k:r v:r", id, (uint64_t)0,
                            (uint64_t)1, shm, (uint64_t)0, shm, (uint64_t)4096);
        else if (!strcmp(op, "attend"))
            rc = trust_call(b, NULL, op, "session:u layer:u q:r out:r", id, (uint64_t)0, shm,
                            (uint64_t)0, shm, (uint64_t)4096);
        else
            rc = trust_call(b, NULL, op, "session:u", id);
        if (rc == SINKD_ERR_UNKNOWN_OP)
            return false;
        cr_assert_eq(rc, SINKD_ERR_NOT_FOUND, "%s on %s session: %d (%s)", op,
                     k ? "a missing" : "another uid's", rc, sinkd_client_errmsg(b));
    }
    return true;
}

Test(isolation, other_uid_gets_not_found)
{
    static const char *const ops[] = {
        "session.stats", "session.append", "session.generate", "session.policy",
        "session.cancel", "session.logits", "session.save", "kv.append", "attend",
        "session.close",
    };
    sinkd_client_shm shm = SINKD_CLIENT_SHM_INIT;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    sinkd_client *a = as(UID_A, GID_USERS), *b = as(UID_B, GID_USERS);
    uint64_t s = trust_open(a, "Once upon a time"), tokens;
    unsigned tried = 0;

    cr_assert(s, "open: %s", sinkd_client_errmsg(a));
    cr_assert_eq(trust_call(a, &rep, "session.stats", "session:u", s), 0);
    tokens = trust_u64(&rep, "tokens");
    sinkd_client_reply_free(&rep);
    cr_assert(tokens > 0);

    cr_assert_eq(n_listed(b, 0), 0, "uid B lists uid A's session");
    cr_assert_eq(sinkd_client_shm_create(b, 1 << 16, 5000, &shm), 0);
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        tried += refused_like_missing(b, ops[i], s, shm.handle);
    cr_assert(tried >= 9);
    /* nothing B did reached A's session */
    cr_assert_eq(trust_call(a, &rep, "session.stats", "session:u", s), 0,
                 "%s", sinkd_client_errmsg(a));
    cr_assert_eq(trust_u64(&rep, "tokens"), tokens);
    sinkd_client_reply_free(&rep);
    cr_assert_eq(n_listed(a, s), 1);
    sinkd_client_shm_free(b, &shm, 5000);
    sinkd_client_close(a);
    sinkd_client_close(b);
}

Test(isolation, admins_list_all_and_close_any)
{
    sinkd_client *a = as(UID_A, GID_USERS), *b = as(UID_B, GID_USERS);
    sinkd_client *op = as(UID_OP, GID_ADM), *root = as(0, 0);
    uint64_t sa = trust_open(a, "alpha"), sb = trust_open(b, "beta");

    cr_assert(sa && sb);
    cr_assert(sinkd_client_info_get(op)->admin, "admin_group member is not admin");
    cr_assert(!sinkd_client_info_get(a)->admin);
    cr_assert_eq(n_listed(a, 0), 1);
    cr_assert_eq(n_listed(b, 0), 1);
    cr_assert_eq(n_listed(op, 0), 2);
    cr_assert_eq(n_listed(root, sa) + n_listed(root, sb), 2);
    /* the operator closes A's session, root closes B's */
    cr_assert_eq(trust_call(op, NULL, "session.close", "session:u", sa), 0);
    cr_assert_eq(trust_call(root, NULL, "session.close", "session:u", sb), 0);
    cr_assert_eq(trust_call(a, NULL, "session.stats", "session:u", sa), SINKD_ERR_NOT_FOUND);
    cr_assert_eq(trust_call(b, NULL, "session.stats", "session:u", sb), SINKD_ERR_NOT_FOUND);
    cr_assert_eq(n_listed(op, 0), 0);
    sinkd_client_close(a);
    sinkd_client_close(b);
    sinkd_client_close(op);
    sinkd_client_close(root);
}

Test(isolation, admin_only_ops)
{
    sinkd_client *b = as(UID_B, GID_USERS), *op = as(UID_OP, GID_ADM);
    int rc;

    cr_assert_eq(trust_call(b, NULL, "policy.load", "path:s", "/nonexistent.so"),
                 SINKD_ERR_PERMISSION_DENIED);
    cr_assert_eq(trust_call(b, NULL, "policy.reload", "name:s", "window"),
                 SINKD_ERR_PERMISSION_DENIED);
    cr_assert_eq(trust_call(b, NULL, "policy.unload", "name:s", "window"),
                 SINKD_ERR_PERMISSION_DENIED);
    rc = trust_call(b, NULL, "model.load", "name:s path:s", "x", TRUST_MODEL);
    cr_assert(rc == SINKD_ERR_PERMISSION_DENIED || rc == SINKD_ERR_UNKNOWN_OP,
              "model.load by a user: %d", rc);
    rc = trust_call(b, NULL, "model.unload", "name:s", "tiny");
    cr_assert(rc == SINKD_ERR_PERMISSION_DENIED || rc == SINKD_ERR_UNKNOWN_OP);
    cr_assert_eq(sinkd_client_shutdown(b, 5000), SINKD_ERR_PERMISSION_DENIED);
    cr_assert(sinkd_testd_alive(&d));
    /* the same ops pass the admin check for the operator: whatever they
     * answer, it is not permission_denied */
    rc = trust_call(op, NULL, "policy.load", "path:s", "/nonexistent.so");
    cr_assert(rc != 0 && rc != SINKD_ERR_PERMISSION_DENIED, "policy.load by admin: %d", rc);
    cr_assert_eq(sinkd_client_shutdown(op, 5000), 0);
    cr_assert_eq(sinkd_testd_wait(&d, 30000), 0, "sinkd did not exit 0 after shutdown");
    sinkd_client_close(b);
    sinkd_client_close(op);
}
