/*
 * shutdown: refused for a non-admin peer (the daemon keeps running), and for
 * an admin it answers, then the daemon exits 0. As root the non-admin side
 * runs in a child that drops to uid/gid 65534; as a normal user, admin comes
 * from configuring our own primary group as admin_group.
 */
#include "ipc_check.h"

#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <sys/wait.h>

#define NOBODY 65534


/* Socket open to everyone (auth is by peer credentials), and as a normal
 * user our primary group is admin. */
static void daemon_start(void)
{
    char config[256] = "[server]\nsocket_mode = 0666\n";
    if (getuid() != 0) {
        struct group *g = getgrgid(getgid());
        cr_assert_not_null(g, "no name for gid %d", (int)getgid());
        snprintf(config + strlen(config), sizeof(config) - strlen(config),
                 "admin_group = %s\n", g->gr_name);
    }
    ipc_daemon_start(config);
}

TestSuite(shutdown, .init = daemon_start, .fini = ipc_daemon_stop);

/* In a child: drop to nobody, then run @fn; exit status = its result. */
static int as_nobody(int (*fn)(void))
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (setgroups(0, NULL) != 0 || setgid(NOBODY) != 0 || setuid(NOBODY) != 0)
            _exit(100);
        _exit(fn());
    }
    int ws;
    cr_assert_eq(waitpid(pid, &ws, 0), pid);
    cr_assert(WIFEXITED(ws), "child died");
    return WEXITSTATUS(ws);
}

/* 0 when shutdown is refused with permission_denied, else a code to show. */
static int nobody_shutdown(void)
{
    sinkd_client *c = NULL;
    if (sinkd_client_connect(ipc_daemon.socket_path, IPC_TIMEOUT_MS, &c) != 0)
        return 101;
    const sinkd_client_info *info = sinkd_client_info_get(c);
    if (info->uid != NOBODY || info->admin)
        return 102;
    int rc = sinkd_client_shutdown(c, IPC_TIMEOUT_MS);
    sinkd_client_close(c);
    return rc == SINKD_ERR_PERMISSION_DENIED ? 0 : 103;
}

static int nobody_sinkctl_shutdown(void)
{
    char sinkctl[512];
    snprintf(sinkctl, sizeof(sinkctl), "%s/client/sinkctl", SINKD_BINARY_DIR);
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0)
        dup2(null, 2);
    execl(sinkctl, "sinkctl", "--socket", ipc_daemon.socket_path, "shutdown", (char *)NULL);
    return 104;
}

Test(shutdown, refused_for_non_admin)
{
    if (getuid() == 0) {
        cr_expect_eq(as_nobody(nobody_shutdown), 0, "libsinkd as nobody");
        /* sinkctl maps an error reply to exit status 1. */
        cr_expect_eq(as_nobody(nobody_sinkctl_shutdown), 1, "sinkctl as nobody");
    } else {
        /* As a normal user we are admin here (admin_group): connect to a
         * second daemon without it instead. */
        sinkd_testd plain = SINKD_TESTD_INIT;
        cr_assert_eq(sinkd_testd_start(&plain, NULL, NULL), 0);
        sinkd_client *c = NULL;
        cr_assert_eq(sinkd_client_connect(plain.socket_path, IPC_TIMEOUT_MS, &c), 0);
        cr_expect_not(sinkd_client_info_get(c)->admin);
        int rc = sinkd_client_shutdown(c, IPC_TIMEOUT_MS);
        cr_expect_eq(rc, SINKD_ERR_PERMISSION_DENIED, "got %s", sinkd_client_strerror(rc));
        sinkd_client_close(c);
        cr_expect_eq(sinkd_testd_stop(&plain), 0);
        sinkd_testd_free(&plain);
    }
    cr_expect(sinkd_testd_alive(&ipc_daemon), "a refused shutdown stopped the daemon");
    ipc_ping_fresh(&ipc_daemon);
}

Test(shutdown, admin_shutdown_exits_0)
{
    sinkd_client *c = NULL;
    cr_assert_eq(sinkd_client_connect(ipc_daemon.socket_path, IPC_TIMEOUT_MS, &c), 0);
    cr_expect(sinkd_client_info_get(c)->admin);
    int rc = sinkd_client_shutdown(c, IPC_TIMEOUT_MS);
    cr_expect_eq(rc, 0, "shutdown: %s (%s)", sinkd_client_strerror(rc), sinkd_client_errmsg(c));
    sinkd_client_close(c);
    int status = sinkd_testd_wait(&ipc_daemon, 20000);
    cr_expect_eq(status, 0, "daemon exit status %d after shutdown", status);
}

Test(shutdown, sinkctl_shutdown_exits_0)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "%s/client/sinkctl --socket '%s' shutdown >/dev/null",
             SINKD_BINARY_DIR, ipc_daemon.socket_path);
    int ws = system(cmd);
    cr_expect(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "sinkctl shutdown: status %d", ws);
    cr_expect_eq(sinkd_testd_wait(&ipc_daemon, 20000), 0);
}
