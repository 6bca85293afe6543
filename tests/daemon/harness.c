#include "harness.h"
#include "sinkd_testwire.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void h_sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

void h_tmpdir(char *dir, size_t cap)
{
    snprintf(dir, cap, "/tmp/sinkd-daemon-XXXXXX");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
}

void h_rmdir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[512];

    if (!d)
        return;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

void h_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    cr_assert_eq(fputs(text, f) >= 0, 1);
    cr_assert_eq(fclose(f), 0);
}

void h_start(h_daemon *d, const char *dir, const char *name, const h_spawn *sp)
{
    static const char *const none[] = { NULL };
    const char *const *args = sp && sp->args ? sp->args : none;
    const char *const *env = sp && sp->env ? sp->env : none;
    char bin[512];
    const char *argv[64];
    size_t n = 0;
    pid_t parent = getpid();

    snprintf(bin, sizeof bin, "%s/daemon/sinkd", SINKD_BINARY_DIR);
    snprintf(d->log, sizeof d->log, "%s/%s.log", dir, name);
    argv[n++] = bin;
    while (*args && n < 63)
        argv[n++] = *args++;
    argv[n] = NULL;
    d->pid = fork();
    cr_assert_geq(d->pid, 0, "fork: %s", strerror(errno));
    if (d->pid == 0) {
        char pid[32];
        int log = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        /* A crashed test must not leave a daemon behind. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent || log < 0 || dup2(log, STDERR_FILENO) < 0)
            _exit(126);
        unsetenv("NOTIFY_SOCKET");
        unsetenv("WATCHDOG_USEC");
        unsetenv("WATCHDOG_PID");
        unsetenv("LISTEN_FDS");
        unsetenv("LISTEN_PID");
        for (; *env; env++)
            putenv((char *)*env);
        if (sp && sp->listen_fd >= 0) {
            if (sp->listen_fd == 3) {
                int fl = fcntl(3, F_GETFD);
                fcntl(3, F_SETFD, fl & ~FD_CLOEXEC);
            } else if (dup2(sp->listen_fd, 3) < 0) {
                _exit(126);
            }
            snprintf(pid, sizeof pid, "%d", (int)getpid());
            setenv("LISTEN_FDS", "1", 1);
            setenv("LISTEN_PID", pid, 1);
        }
        execv(bin, (char *const *)argv);
        _exit(127);
    }
}

int h_connect(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
        return fd;
    if (fd >= 0)
        close(fd);
    return -1;
}

static bool h_exited(h_daemon *d, int *status)
{
    return d->pid > 0 && waitpid(d->pid, status, WNOHANG) == d->pid;
}

bool h_wait_socket(h_daemon *d, const char *path)
{
    int status;

    for (int t = 0; t < H_TIMEOUT_MS; t += 10) {
        int fd = h_connect(path);
        if (fd >= 0) {
            close(fd);
            return true;
        }
        if (h_exited(d, &status)) {
            d->pid = -1;
            return false;
        }
        h_sleep_ms(10);
    }
    return false;
}

int h_wait_exit(h_daemon *d)
{
    int status;

    for (int t = 0; t < H_TIMEOUT_MS; t += 10) {
        if (h_exited(d, &status)) {
            d->pid = -1;
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        h_sleep_ms(10);
    }
    kill(d->pid, SIGKILL);
    waitpid(d->pid, &status, 0);
    d->pid = -1;
    return -1;
}

int h_stop(h_daemon *d)
{
    cr_assert_gt(d->pid, 0);
    kill(d->pid, SIGTERM);
    return h_wait_exit(d);
}

bool h_log_wait(const h_daemon *d, const char *needle)
{
    for (int t = 0; t < H_TIMEOUT_MS; t += 20) {
        char buf[65536];
        FILE *f = fopen(d->log, "r");
        size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f)
            fclose(f);
        buf[n] = '\0';
        if (strstr(buf, needle))
            return true;
        h_sleep_ms(20);
    }
    return false;
}

bool h_ping(int fd, unsigned id)
{
    sinkd_testwire_frame f = SINKD_TESTWIRE_FRAME_INIT;
    sinkd_fw w;
    bool ok = false, okv;
    uint64_t got;
    long n;

    if (sinkd_fw_init(&w) < 0)
        return false;
    sinkd_pack_request_head(&w.pk, "ping", id, 0);
    n = sinkd_fw_finish(&w, 0);
    if (n > 0 && sinkd_testwire_send(fd, w.sb.data, (size_t)n) == 0 &&
        sinkd_testwire_recv(fd, H_TIMEOUT_MS, &f) == 0)
        ok = sinkd_map_u64(&f.msg.root, "id", &got) == 0 && got == id &&
             sinkd_map_bool(&f.msg.root, "ok", &okv) == 0 && okv;
    sinkd_fw_free(&w);
    sinkd_testwire_frame_free(&f);
    return ok;
}

int h_listen_at(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    cr_assert_geq(fd, 0);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0, "bind: %s", strerror(errno));
    cr_assert_eq(listen(fd, 16), 0);
    return fd;
}
