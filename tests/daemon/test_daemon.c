/*
 * Integration: the real sinkd binary as a child process. systemd readiness
 * and socket activation, the socket-file rules, signals, and the parts of
 * the wire behaviour that belong to the connection layer (fds with frames,
 * max_connections, max_output, bad frames, admin).
 */
#include "harness.h"
#include "sinkd_testwire.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[64];
static char sock[128];

static void setup(void)
{
    h_tmpdir(dir, sizeof dir);
    snprintf(sock, sizeof sock, "%s/sinkd.sock", dir);
}

static void teardown(void)
{
    h_rmdir(dir);
}

TestSuite(daemon, .init = setup, .fini = teardown, .timeout = 60);

/* Start sinkd on `sock` (with @conf_text as its --config file when not NULL,
 * path in @conf) and wait until it accepts. */
static void serve(h_daemon *d, const char *conf_text, char *conf, size_t cap)
{
    const char *args[] = { "--socket", sock, conf_text ? "--config" : NULL, conf, NULL };
    h_spawn sp = { args, NULL, -1 };

    if (conf_text) {
        snprintf(conf, cap, "%s/sinkd.conf", dir);
        h_write_file(conf, conf_text);
    }
    h_start(d, dir, "sinkd", &sp);
    cr_assert(h_wait_socket(d, sock), "sinkd did not start serving");
}

/* Datagram socket standing in for systemd's notify socket. */
static int notify_socket(const char *name, bool abstract)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    socklen_t len;

    cr_assert_geq(fd, 0);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", name);
    len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name) + !abstract);
    if (abstract)
        sa.sun_path[0] = '\0';
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, len), 0, "bind: %s", strerror(errno));
    return fd;
}

/* Receive datagrams until one contains @needle; the texts seen so far are
 * appended to @seen. */
static bool notify_wait(int fd, const char *needle, char *seen, size_t cap)
{
    for (;;) {
        struct pollfd p = { fd, POLLIN, 0 };
        char buf[1024];
        ssize_t n;
        if (poll(&p, 1, H_TIMEOUT_MS) != 1)
            return false;
        n = recv(fd, buf, sizeof buf - 1, 0);
        if (n < 0)
            return false;
        buf[n] = '\0';
        strncat(seen, buf, cap - strlen(seen) - 2);
        strcat(seen, "\n");
        if (strstr(buf, needle))
            return true;
    }
}

static void check_notify(const char *notify_name, bool abstract)
{
    char env_notify[160], seen[8192] = "";
    int nfd = notify_socket(notify_name, abstract);
    const char *args[] = { "--socket", sock, NULL };
    const char *env[] = { env_notify, "WATCHDOG_USEC=200000", NULL };
    h_spawn sp = { args, env, -1 };
    h_daemon d;
    int c;

    snprintf(env_notify, sizeof env_notify, "NOTIFY_SOCKET=%s%s", abstract ? "@" : "",
             abstract ? notify_name + 1 : notify_name);
    h_start(&d, dir, "sinkd", &sp);
    cr_assert(notify_wait(nfd, "READY=1", seen, sizeof seen), "no READY=1; got: %s", seen);
    /* READY=1 promises a live listener: connect without retrying. */
    c = h_connect(sock);
    cr_assert_geq(c, 0, "READY=1 before the socket accepts");
    cr_assert(h_ping(c, 7));
    cr_assert(strstr(seen, "STATUS=serving on "), "no STATUS=: %s", seen);
    cr_assert(notify_wait(nfd, "WATCHDOG=1", seen, sizeof seen), "no WATCHDOG=1: %s", seen);
    close(c);
    kill(d.pid, SIGTERM);
    cr_assert(notify_wait(nfd, "STOPPING=1", seen, sizeof seen), "no STOPPING=1: %s", seen);
    cr_assert_eq(h_wait_exit(&d), 0);
    close(nfd);
}

Test(daemon, notify_path_socket)
{
    char name[128];

    snprintf(name, sizeof name, "%s/notify", dir);
    check_notify(name, false);
}

Test(daemon, notify_abstract_socket)
{
    char name[64];

    snprintf(name, sizeof name, "@sinkd-test-%d", (int)getpid());
    check_notify(name, true);
}

Test(daemon, socket_activation)
{
    char act[128], other[128];
    const char *args[] = { "--socket", other, NULL };
    h_spawn sp = { args, NULL, -1 };
    h_daemon d;
    struct stat sb;
    int c;

    snprintf(act, sizeof act, "%s/activated.sock", dir);
    snprintf(other, sizeof other, "%s/other.sock", dir);
    sp.listen_fd = h_listen_at(act);
    h_start(&d, dir, "sinkd", &sp);
    close(sp.listen_fd);
    cr_assert(h_wait_socket(&d, act), "the activated socket does not serve");
    c = h_connect(act);
    cr_assert(h_ping(c, 1));
    close(c);
    cr_assert_neq(stat(other, &sb), 0, "bound %s despite activation", other);
    cr_assert(h_log_wait(&d, "socket passed by systemd"));
    cr_assert_eq(h_stop(&d), 0);
    /* systemd owns the activated socket file: sinkd must leave it. */
    cr_assert_eq(stat(act, &sb), 0);
}

Test(daemon, socket_activation_rejects_non_listening_fd)
{
    h_spawn sp = { NULL, NULL, -1 };
    h_daemon d;
    int sv[2];

    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    sp.listen_fd = sv[0];
    h_start(&d, dir, "sinkd", &sp);
    cr_assert_eq(h_wait_exit(&d), 1);
    cr_assert(h_log_wait(&d, "not a listening AF_UNIX stream socket"));
    close(sv[0]);
    close(sv[1]);
}

Test(daemon, stale_socket_replaced)
{
    h_daemon d;
    int fd = h_listen_at(sock), c;

    /* Closed without unlink: the file stays and refuses connections. */
    close(fd);
    cr_assert_lt(h_connect(sock), 0);
    serve(&d, NULL, NULL, 0);
    c = h_connect(sock);
    cr_assert(h_ping(c, 3));
    close(c);
    cr_assert_eq(h_stop(&d), 0);
}

Test(daemon, live_socket_not_stolen)
{
    const char *args[] = { "--socket", sock, NULL };
    h_spawn sp = { args, NULL, -1 };
    h_daemon first, second;
    int c;

    h_start(&first, dir, "first", &sp);
    cr_assert(h_wait_socket(&first, sock));
    h_start(&second, dir, "second", &sp);
    cr_assert_eq(h_wait_exit(&second), 1);
    cr_assert(h_log_wait(&second, "already listening on"));
    c = h_connect(sock);
    cr_assert(h_ping(c, 4), "the first daemon lost its socket");
    close(c);
    cr_assert_eq(h_stop(&first), 0);
}

Test(daemon, refuses_a_file_that_is_not_a_socket)
{
    const char *args[] = { "--socket", sock, NULL };
    h_spawn sp = { args, NULL, -1 };
    h_daemon d;
    struct stat sb;

    h_write_file(sock, "precious\n");
    h_start(&d, dir, "sinkd", &sp);
    cr_assert_eq(h_wait_exit(&d), 1);
    cr_assert(h_log_wait(&d, "is not a socket"));
    cr_assert_eq(stat(sock, &sb), 0);
    cr_assert_eq(sb.st_size, 9);
}

Test(daemon, sighup_good_and_bad_config)
{
    char conf[128];
    h_daemon d;
    int c;

    serve(&d, "[server]\nlog_level = info\n", conf, sizeof conf);
    c = h_connect(sock);
    cr_assert(h_ping(c, 1));

    h_write_file(conf, "[server]\nlog_level = debug\nmax_frame = 1M\n");
    kill(d.pid, SIGHUP);
    cr_assert(h_log_wait(&d, "configuration reloaded"));
    cr_assert(h_log_wait(&d, "[server] max_frame changed: takes effect after a restart"));
    cr_assert(h_ping(c, 2));
    /* The new level is live: requests are now logged at debug. */
    cr_assert(h_log_wait(&d, "<7>conn 2: ping id 2"));

    h_write_file(conf, "[server]\nlog_level = info\n\n[engine]\nturbo = yes\n");
    kill(d.pid, SIGHUP);
    cr_assert(h_log_wait(&d, "<4>reload failed, keeping the old configuration"));
    cr_assert(h_log_wait(&d, ":5: unknown key 'turbo' in [engine]"));
    cr_assert(h_ping(c, 3));
    cr_assert(h_log_wait(&d, "<7>conn 2: ping id 3"), "the failed reload changed the level");
    close(c);
    cr_assert_eq(h_stop(&d), 0);
}

Test(daemon, bad_config_at_start_exits_1)
{
    char conf[128];
    const char *args[] = { "--socket", sock, "--config", conf, NULL };
    h_spawn sp = { args, NULL, -1 };
    h_daemon d;

    snprintf(conf, sizeof conf, "%s/sinkd.conf", dir);
    h_write_file(conf, "[server]\nmax_connections = many\n");
    h_start(&d, dir, "sinkd", &sp);
    cr_assert_eq(h_wait_exit(&d), 1);
    cr_assert(h_log_wait(&d, "sinkd.conf:2: [server] max_connections: 'many'"));
}

/* Send {op, id} and read one frame into @f. 0 or a negative errno; no
 * assertions, so that a forked child may use it. */
static int request_raw(int fd, const char *op, uint64_t id, sinkd_testwire_frame *f)
{
    sinkd_fw w;
    long n;
    int rc;

    if (sinkd_fw_init(&w) < 0)
        return -ENOMEM;
    sinkd_pack_request_head(&w.pk, op, id, 0);
    n = sinkd_fw_finish(&w, 0);
    rc = n > 0 ? sinkd_testwire_send(fd, w.sb.data, (size_t)n) : -EINVAL;
    sinkd_fw_free(&w);
    return rc < 0 ? rc : sinkd_testwire_recv(fd, H_TIMEOUT_MS, f);
}

static sinkd_testwire_frame request(int fd, const char *op, uint64_t id)
{
    sinkd_testwire_frame f = SINKD_TESTWIRE_FRAME_INIT;

    cr_assert_eq(request_raw(fd, op, id, &f), 0, "%s: no answer", op);
    return f;
}

static sinkd_errcode error_of(const sinkd_testwire_frame *f, bool *has_id, uint64_t *id)
{
    sinkd_errcode code;

    sinkd_testwire_error(f, &code, has_id, id, NULL);
    return code;
}

Test(daemon, sigterm_flushes_and_exits_0)
{
    sinkd_testwire_frame f;
    h_daemon d;
    struct stat sb;
    bool ok;
    int c;

    serve(&d, NULL, NULL, 0);
    c = h_connect(sock);
    f = request(c, "status", 11);
    cr_assert_eq(sinkd_map_bool(&f.msg.root, "ok", &ok), 0);
    sinkd_testwire_frame_free(&f);
    cr_assert_eq(h_stop(&d), 0);
    cr_assert(sinkd_testwire_closed(c, H_TIMEOUT_MS));
    cr_assert_neq(stat(sock, &sb), 0, "the socket file outlived the daemon");
    close(c);
}

Test(daemon, shutdown_op_replies_then_exits_0)
{
    sinkd_testwire_frame f;
    h_daemon d;
    uint64_t id;
    bool ok;
    int c;

    serve(&d, NULL, NULL, 0);
    c = h_connect(sock);
    f = request(c, "shutdown", 5);  /* the test runs as root: admin */
    cr_assert_eq(sinkd_map_u64(&f.msg.root, "id", &id), 0);
    cr_assert_eq(id, 5);
    cr_assert_eq(sinkd_map_bool(&f.msg.root, "ok", &ok), 0);
    sinkd_testwire_frame_free(&f);
    cr_assert_eq(h_wait_exit(&d), 0);
    close(c);
}

Test(daemon, non_admin_gets_permission_denied)
{
    char conf[128];
    struct passwd *nobody = getpwnam("nobody");
    h_daemon d;
    pid_t child;
    int status, c;

    if (getuid() != 0 || !nobody)
        cr_skip_test("needs root and a 'nobody' user to connect as another uid");
    chmod(dir, 0755);
    serve(&d, "[server]\nsocket_mode = 0666\n", conf, sizeof conf);
    child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        sinkd_testwire_frame f = SINKD_TESTWIRE_FRAME_INIT;
        sinkd_errcode code;
        bool has_id;
        uint64_t id;
        if (setgid(nobody->pw_gid) || setuid(nobody->pw_uid))
            _exit(2);
        c = h_connect(sock);
        if (c < 0)
            _exit(3);
        if (request_raw(c, "shutdown", 9, &f) < 0)
            _exit(4);
        sinkd_testwire_error(&f, &code, &has_id, &id, NULL);
        _exit(code == SINKD_ERR_PERMISSION_DENIED && has_id && id == 9 ? 0 : 5);
    }
    cr_assert_eq(waitpid(child, &status, 0), child);
    cr_assert(WIFEXITED(status));
    cr_assert_eq(WEXITSTATUS(status), 0, "non-admin: step %d failed", WEXITSTATUS(status));
    c = h_connect(sock);
    cr_assert(h_ping(c, 1), "the daemon stopped for a non-admin");
    close(c);
    cr_assert_eq(h_stop(&d), 0);
}

Test(daemon, max_connections_refuses_with_busy)
{
    char conf[128];
    sinkd_testwire_frame f = SINKD_TESTWIRE_FRAME_INIT;
    h_daemon d;
    bool has_id;
    uint64_t id;
    int a, b;

    serve(&d, "[server]\nmax_connections = 1\nlog_level = debug\n", conf, sizeof conf);
    cr_assert(h_log_wait(&d, "conn 1: closed"), "the readiness probe was not closed");
    a = h_connect(sock);
    cr_assert(h_ping(a, 1));
    b = h_connect(sock);
    cr_assert_eq(sinkd_testwire_recv(b, H_TIMEOUT_MS, &f), 0);
    cr_assert_eq(error_of(&f, &has_id, &id), SINKD_ERR_BUSY);
    cr_assert_not(has_id);
    cr_assert(sinkd_testwire_closed(b, H_TIMEOUT_MS));
    sinkd_testwire_frame_free(&f);
    cr_assert(h_ping(a, 2), "the admitted connection suffered");
    close(a);
    close(b);
    cr_assert_eq(h_stop(&d), 0);
}

Test(daemon, bad_frame_closes_after_error)
{
    static const uint8_t not_a_map[] = { 0x93, 0x01, 0x02, 0x03 };
    sinkd_testwire_frame f = SINKD_TESTWIRE_FRAME_INIT;
    h_daemon d;
    bool has_id;
    uint64_t id;
    int c;

    serve(&d, NULL, NULL, 0);
    c = h_connect(sock);
    /* Request-level errors leave the connection usable... */
    f = request(c, "no.such.op", 3);
    cr_assert_eq(error_of(&f, &has_id, &id), SINKD_ERR_UNKNOWN_OP);
    cr_assert(has_id && id == 3);
    sinkd_testwire_frame_free(&f);
    cr_assert(h_ping(c, 4));
    /* ...an undecodable frame does not. */
    cr_assert_eq(sinkd_testwire_send_frame(c, not_a_map, sizeof not_a_map), 0);
    cr_assert_eq(sinkd_testwire_recv(c, H_TIMEOUT_MS, &f), 0);
    cr_assert_eq(error_of(&f, &has_id, &id), SINKD_ERR_BAD_FRAME);
    cr_assert_not(has_id);
    sinkd_testwire_frame_free(&f);
    cr_assert(sinkd_testwire_closed(c, H_TIMEOUT_MS));
    close(c);
    cr_assert_eq(h_stop(&d), 0);
}

/* Number of our test memfds that process @pid holds open. */
static int count_test_memfds(pid_t pid)
{
    char path[64], link[512], target[256];
    struct dirent *e;
    DIR *d;
    int n = 0;

    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    d = opendir(path);
    cr_assert_not_null(d);
    while ((e = readdir(d)) != NULL) {
        ssize_t len;
        snprintf(link, sizeof link, "%s/%s", path, e->d_name);
        len = readlink(link, target, sizeof target - 1);
        if (len <= 0)
            continue;
        target[len] = '\0';
        n += strncmp(target, "/memfd:sinkd-test", 17) == 0;
    }
    closedir(d);
    return n;
}

/* sendmsg of @buf with @fds as SCM_RIGHTS; its result. */
static ssize_t sendmsg_fds(int c, const void *buf, size_t len, const int *fds, int nfds)
{
    cr_assert(nfds >= 1 && nfds <= 16);
    union {
        char buf[CMSG_SPACE(sizeof(int) * 16)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = { (void *)buf, len };
    struct msghdr mh = { 0 };
    struct cmsghdr *cm;

    memset(&ctl, 0, sizeof ctl);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.buf;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
    cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
    return sendmsg(c, &mh, MSG_NOSIGNAL);
}

static void send_with_fds(int c, const void *buf, size_t len, const int *fds, int nfds)
{
    cr_assert_eq(sendmsg_fds(c, buf, len, fds, nfds), (ssize_t)len);
}

Test(daemon, unconsumed_fds_are_closed)
{
    sinkd_testwire_frame f = SINKD_TESTWIRE_FRAME_INIT;
    h_daemon d;
    int c, fds[3];
    sinkd_fw w;
    long n;

    serve(&d, NULL, NULL, 0);
    c = h_connect(sock);
    cr_assert(h_ping(c, 1));
    for (int i = 0; i < 3; i++) {
        fds[i] = memfd_create("sinkd-test", MFD_CLOEXEC);
        cr_assert_geq(fds[i], 0);
    }
    cr_assert_eq(sinkd_fw_init(&w), 0);
    sinkd_pack_request_head(&w.pk, "ping", 2, 0);
    n = sinkd_fw_finish(&w, 0);
    send_with_fds(c, w.sb.data, (size_t)n, fds, 3);
    sinkd_fw_free(&w);
    cr_assert_eq(sinkd_testwire_recv(c, H_TIMEOUT_MS, &f), 0);
    sinkd_testwire_frame_free(&f);
    /* ping does not take them: they wait for the next frame... */
    cr_assert_eq(count_test_memfds(d.pid), 3);
    cr_assert(h_ping(c, 3));
    /* ...which closes them. */
    cr_assert_eq(count_test_memfds(d.pid), 0);
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    close(c);
    cr_assert_eq(h_stop(&d), 0);
}

/* CPU seconds process @pid has used (user + system). */
static double cpu_seconds(pid_t pid)
{
    char path[64], buf[1024];
    unsigned long ut = 0, st = 0;

    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* fields 14 and 15, counted after the command's closing parenthesis */
    const char *p = strrchr(buf, ')');
    cr_assert_not_null(p);
    cr_assert_eq(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st),
                 2);
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* A daemon out of descriptors (clients holding the most fds a connection
 * may keep, behind a frame they never finish) refuses new connections with
 * busy instead of spinning on the listening socket, and serves again once
 * the hogs are gone. */
Test(daemon, out_of_descriptors_refuses_without_spinning)
{
    enum { HOGS = 8 };
    struct rlimit old, low;
    h_daemon d;
    int hogs[HOGS], fds[16];

    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
    low = old;
    low.rlim_cur = 64;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
    serve(&d, NULL, NULL, 0); /* inherits the soft limit of 64 */
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
    for (int i = 0; i < 16; i++)
        cr_assert_geq(fds[i] = memfd_create("sinkd-test", MFD_CLOEXEC), 0);
    int held = 0;
    for (int i = 0; i < HOGS; i++) {
        hogs[i] = h_connect(sock);
        cr_assert_geq(hogs[i], 0);
        /* a length's first byte; a hog the daemon had to refuse fails */
        held += sendmsg_fds(hogs[i], "", 1, fds, 16) == 1;
        usleep(20 * 1000);
    }
    cr_assert_gt(held, 2, "only %d connections took their fds", held);
    usleep(300 * 1000);

    int c = h_connect(sock);
    cr_assert_geq(c, 0);
    sinkd_testwire_frame f = SINKD_TESTWIRE_FRAME_INIT;
    bool has_id;
    uint64_t id;
    cr_assert_eq(sinkd_testwire_recv(c, H_TIMEOUT_MS, &f), 0, "no answer when out of fds");
    cr_expect_eq(error_of(&f, &has_id, &id), SINKD_ERR_BUSY);
    sinkd_testwire_frame_free(&f);
    close(c);
    double t0 = cpu_seconds(d.pid);
    usleep(1000 * 1000);
    double used = cpu_seconds(d.pid) - t0;
    cr_expect_lt(used, 0.25, "the daemon used %.2f s of CPU in 1 s while out of fds", used);

    for (int i = 0; i < HOGS; i++)
        close(hogs[i]);
    for (int i = 0; i < 16; i++)
        close(fds[i]);
    usleep(200 * 1000);
    c = h_connect(sock);
    cr_assert(h_ping(c, 9), "no service after the hogs left");
    close(c);
    cr_assert_eq(h_stop(&d), 0);
}

Test(daemon, reader_that_does_not_read_is_dropped)
{
    char conf[128];
    uint8_t batch[64 * 16];
    size_t one = 0;
    h_daemon d;
    sinkd_fw w;
    bool dropped = false;
    int c, other, size = 4096;

    serve(&d, "[server]\nmax_output = 64K\n", conf, sizeof conf);
    c = h_connect(sock);
    setsockopt(c, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    cr_assert_eq(sinkd_fw_init(&w), 0);
    sinkd_pack_request_head(&w.pk, "status", 1, 0);
    one = (size_t)sinkd_fw_finish(&w, 0);
    cr_assert_leq(one * 16, sizeof batch);
    for (int i = 0; i < 16; i++)
        memcpy(batch + (size_t)i * one, w.sb.data, one);
    sinkd_fw_free(&w);
    /* Status replies are ~200 bytes: a bounded number of requests must push
     * the unread output past 64 KiB plus the socket buffers. */
    for (int i = 0; i < 40000 && !dropped; i++) {
        struct pollfd p = { c, POLLOUT, 0 };
        if (poll(&p, 1, H_TIMEOUT_MS) != 1 || (p.revents & (POLLERR | POLLHUP)))
            break;
        dropped = send(c, batch, one * 16, MSG_NOSIGNAL) < 0;
    }
    cr_assert(h_log_wait(&d, "exceed max_output (65536): dropping the connection"));
    other = h_connect(sock);
    cr_assert(h_ping(other, 1), "the daemon suffered from one slow reader");
    close(other);
    close(c);
    cr_assert_eq(h_stop(&d), 0);
}
