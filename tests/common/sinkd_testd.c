/*
 * Run the real sinkd as a child process for tests (see sinkd_testd.h).
 */
#include "sinkd_testd.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
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

#ifndef SINKD_BINARY_DIR
#error "compile with -DSINKD_BINARY_DIR=\"<build dir>\""
#endif

#define TESTD_MAX_ARGS 64
#define TESTD_MAX_ENV 512

extern char **environ;

static int testd__timeout_ms(void)
{
    const char *v = getenv("SINKD_TESTD_TIMEOUT_MS");
    long ms = v != NULL ? strtol(v, NULL, 10) : 0;
    return ms > 0 && ms < 3600000 ? (int)ms : SINKD_TESTD_TIMEOUT_MS;
}

static void testd__sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int64_t testd__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Decode a wait status the way the header promises. */
static int testd__status(int ws)
{
    if (WIFEXITED(ws))
        return WEXITSTATUS(ws);
    if (WIFSIGNALED(ws))
        return 128 + WTERMSIG(ws);
    return -ECHILD;
}

static int testd__write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    size_t n = strlen(text), off = 0;
    while (off < n) {
        ssize_t w = write(fd, text + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            int rc = -errno;
            close(fd);
            return rc;
        }
        off += (size_t)w;
    }
    return close(fd) == 0 ? 0 : -errno;
}

/* Our environment minus what would make the daemon talk to systemd, plus a
 * private state directory. @state must outlive the exec. */
static void testd__env(char **env, const char *state)
{
    size_t n = 0;
    for (char **e = environ; *e != NULL && n < TESTD_MAX_ENV - 2; e++) {
        if (strncmp(*e, "NOTIFY_SOCKET=", 14) == 0 || strncmp(*e, "LISTEN_", 7) == 0 ||
            strncmp(*e, "STATE_DIRECTORY=", 16) == 0 || strncmp(*e, "WATCHDOG_", 9) == 0)
            continue;
        env[n++] = *e;
    }
    env[n++] = (char *)state;
    env[n] = NULL;
}

int sinkd_testd_connect_raw(const sinkd_testd *d)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    if (d == NULL || strlen(d->socket_path) >= sizeof(addr.sun_path))
        return -EINVAL;
    strcpy(addr.sun_path, d->socket_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}

bool sinkd_testd_alive(sinkd_testd *d)
{
    if (d == NULL || d->pid <= 0)
        return false;
    int ws;
    pid_t r = waitpid(d->pid, &ws, WNOHANG);
    if (r == 0)
        return true;
    if (r == d->pid)
        d->exit_status = testd__status(ws);
    d->pid = -1;
    return false;
}

static void testd__dump_log(const sinkd_testd *d)
{
    char *log = sinkd_testd_log(d);
    fprintf(stderr, "sinkd_testd: daemon log (%s):\n%s\n", d->log_path, log ? log : "(unreadable)");
    free(log);
}

int sinkd_testd_start(sinkd_testd *d, const char *config_text, const char *const *args)
{
    if (d == NULL || d->pid > 0 || d->dir[0] != '\0')
        return -EINVAL;

    const char *bin = getenv("SINKD_BIN");
    if (bin == NULL || bin[0] == '\0')
        bin = SINKD_BINARY_DIR "/daemon/sinkd";
    if (access(bin, X_OK) != 0)
        return -errno;

    const char *tmp = getenv("TMPDIR");
    if (tmp == NULL || tmp[0] != '/' || strlen(tmp) > 40)
        tmp = "/tmp";
    snprintf(d->dir, sizeof(d->dir), "%s/sinkd-test-XXXXXX", tmp);
    if (mkdtemp(d->dir) == NULL) {
        int rc = -errno;
        d->dir[0] = '\0';
        return rc;
    }
    chmod(d->dir, 0755);
    snprintf(d->socket_path, sizeof(d->socket_path), "%s/sinkd.sock", d->dir);
    snprintf(d->log_path, sizeof(d->log_path), "%s/sinkd.log", d->dir);
    char state[160], state_env[192];
    snprintf(state, sizeof(state), "%s/state", d->dir);
    snprintf(state_env, sizeof(state_env), "STATE_DIRECTORY=%s", state);
    if (mkdir(state, 0700) != 0)
        return -errno;
    if (config_text != NULL) {
        snprintf(d->config_path, sizeof(d->config_path), "%s/sinkd.conf", d->dir);
        int rc = testd__write_file(d->config_path, config_text);
        if (rc < 0)
            return rc;
    }

    /* Everything the child needs is built before fork: the test may have
     * threads, and only async-signal-safe calls are allowed after it. */
    const char *argv[TESTD_MAX_ARGS];
    size_t argc = 0;
    argv[argc++] = bin;
    argv[argc++] = "--socket";
    argv[argc++] = d->socket_path;
    if (config_text != NULL) {
        argv[argc++] = "--config";
        argv[argc++] = d->config_path;
    }
    for (size_t i = 0; args != NULL && args[i] != NULL; i++) {
        if (argc == TESTD_MAX_ARGS - 1)
            return -E2BIG;
        argv[argc++] = args[i];
    }
    argv[argc] = NULL;
    char *env[TESTD_MAX_ENV];
    testd__env(env, state_env);

    int log = open(d->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log < 0)
        return -errno;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int rc = -errno;
        close(log);
        return rc;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int null = open("/dev/null", O_RDONLY);
        if (null < 0 || dup2(null, 0) < 0 || dup2(log, 1) < 0 || dup2(log, 2) < 0)
            _exit(127);
        execve(bin, (char *const *)argv, env);
        _exit(127);
    }
    close(log);
    d->pid = pid;

    int64_t deadline = testd__now_ms() + testd__timeout_ms();
    for (;;) {
        int fd = sinkd_testd_connect_raw(d);
        if (fd >= 0) {
            close(fd);
            return 0;
        }
        if (!sinkd_testd_alive(d)) {
            testd__dump_log(d);
            return -ECHILD;
        }
        if (testd__now_ms() > deadline) {
            kill(d->pid, SIGKILL);
            waitpid(d->pid, NULL, 0);
            d->pid = -1;
            testd__dump_log(d);
            return -ETIMEDOUT;
        }
        testd__sleep_ms(5);
    }
}

int sinkd_testd_wait(sinkd_testd *d, int timeout_ms)
{
    if (d == NULL)
        return -EINVAL;
    if (d->pid <= 0)
        return d->exit_status >= 0 ? d->exit_status : -ESRCH;
    int64_t deadline = testd__now_ms() + timeout_ms;
    while (sinkd_testd_alive(d)) {
        if (testd__now_ms() > deadline)
            return -ETIMEDOUT;
        testd__sleep_ms(5);
    }
    return d->exit_status;
}

int sinkd_testd_stop(sinkd_testd *d)
{
    if (d == NULL)
        return -EINVAL;
    if (d->pid <= 0)
        return -ESRCH;
    kill(d->pid, SIGTERM);
    int rc = sinkd_testd_wait(d, testd__timeout_ms());
    if (rc == -ETIMEDOUT) {
        fprintf(stderr, "sinkd_testd: daemon ignored SIGTERM, killing it\n");
        kill(d->pid, SIGKILL);
        int ws;
        if (waitpid(d->pid, &ws, 0) == d->pid)
            d->exit_status = testd__status(ws);
        d->pid = -1;
        rc = d->exit_status;
    }
    return rc;
}

char *sinkd_testd_log(const sinkd_testd *d)
{
    if (d == NULL || d->log_path[0] == '\0')
        return NULL;
    FILE *f = fopen(d->log_path, "re");
    if (f == NULL)
        return NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 4096) {
            char *p = realloc(buf, cap + 65536);
            if (p == NULL) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = p;
            cap += 65536;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0)
            break;
    }
    fclose(f);
    buf[len] = '\0';
    return buf;
}

static int testd__remove(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st, (void)type, (void)ftw;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

int sinkd_testd_rmtree(const char *path)
{
    return nftw(path, testd__remove, 8, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : -1;
}

void sinkd_testd_free(sinkd_testd *d)
{
    if (d == NULL)
        return;
    if (d->pid > 0) {
        kill(d->pid, SIGKILL);
        waitpid(d->pid, NULL, 0);
    }
    if (d->dir[0] != '\0') {
        /* The state directory holds whatever the daemon wrote there. */
        if (sinkd_testd_rmtree(d->dir) != 0)
            fprintf(stderr, "sinkd_testd: could not remove %s\n", d->dir);
    }
    *d = (sinkd_testd)SINKD_TESTD_INIT;
}
