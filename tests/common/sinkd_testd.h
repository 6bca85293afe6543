/*
 * Test helper: run the real sinkd binary as a child process on a private
 * socket, for integration tests and benchmarks. Not Criterion-specific.
 *
 *     sinkd_testd d = SINKD_TESTD_INIT;
 *     if (sinkd_testd_start(&d, "[server]\nmax_output = 64K\n", NULL) != 0)
 *         ... d.log_path holds what the daemon said ...
 *     ... connect to d.socket_path ...
 *     int status = sinkd_testd_stop(&d);   // SIGTERM; 0 = clean exit
 *     sinkd_testd_free(&d);                // removes the temporary files
 *
 * Each instance gets a fresh directory under $TMPDIR (or /tmp), mode 0755 so
 * that a child which drops privileges can still reach the socket. The daemon
 * runs with --socket DIR/sinkd.sock, --config DIR/sinkd.conf when config text
 * is given, its stdout and stderr in DIR/sinkd.log, STATE_DIRECTORY=DIR/state
 * and without NOTIFY_SOCKET/LISTEN_* from our environment. It gets SIGKILL if
 * the thread that started it dies, so a crashed test leaves no daemon behind.
 *
 * The binary is $SINKD_BIN if set, else SINKD_BINARY_DIR/daemon/sinkd (the
 * build tree; define SINKD_BINARY_DIR when compiling this file).
 *
 * Not thread-safe per instance: one thread starts and stops a daemon.
 */
#ifndef SINKD_TESTD_H
#define SINKD_TESTD_H

#include <stdbool.h>
#include <sys/types.h>

/* How long start waits for the socket to accept, and stop for the exit,
 * unless $SINKD_TESTD_TIMEOUT_MS says otherwise. Generous for ASan builds. */
#define SINKD_TESTD_TIMEOUT_MS 30000

typedef struct sinkd_testd {
    pid_t pid;               /* > 0 while the child has not been reaped */
    int exit_status;         /* after stop/wait: as their return value */
    char dir[96];            /* the private directory, "" before start */
    char socket_path[108];
    char config_path[128];   /* "" when started without config text */
    char log_path[128];      /* the daemon's stdout + stderr */
} sinkd_testd;

#define SINKD_TESTD_INIT { -1, -1, "", "", "", "" }

/* Start sinkd. @config_text (NULL: none) is written to the config file;
 * @args (NULL-terminated, may be NULL) are appended to the command line.
 * Waits until the socket accepts a connection. Returns 0, or a negative
 * errno: -ECHILD when the daemon exited during start-up (its log is kept and
 * copied to our stderr), -ETIMEDOUT (the daemon is killed), or the errno of
 * the failing setup call. @d must be in its init state or freed. */
int sinkd_testd_start(sinkd_testd *d, const char *config_text, const char *const *args);

/* Send SIGTERM and wait for the exit (SIGKILL after the timeout). Returns the
 * exit code (0..255), 128 + signal number if a signal ended it, or a
 * negative errno (-ESRCH when not running). Also stored in d->exit_status. */
int sinkd_testd_stop(sinkd_testd *d);

/* Wait up to @timeout_ms for the daemon to exit by itself (e.g. after a
 * shutdown request). Returns as sinkd_testd_stop, or -ETIMEDOUT (still
 * running; nothing sent to it). */
int sinkd_testd_wait(sinkd_testd *d, int timeout_ms);

/* True while the child runs (reaps it if it has exited; the status is then
 * in d->exit_status). */
bool sinkd_testd_alive(sinkd_testd *d);

/* The daemon's log so far, NUL-terminated, malloc'ed (caller frees), or NULL
 * when it cannot be read. */
char *sinkd_testd_log(const sinkd_testd *d);

/* A plain blocking AF_UNIX connection to the daemon (no hello): for tests
 * that speak raw bytes. Returns the fd (the caller closes it) or -errno. */
int sinkd_testd_connect_raw(const sinkd_testd *d);

/* Kill the daemon if it still runs, delete the directory and its files, and
 * put @d back in its init state. Safe on an init or already freed @d. */
void sinkd_testd_free(sinkd_testd *d);

/* Remove @path and everything below it, links as links (never followed):
 * for a test's own directories, such as a state directory shared by the
 * daemons it starts one after another. Returns 0, or -1 when something
 * could not be removed (the rest is gone). */
int sinkd_testd_rmtree(const char *path);

#endif /* SINKD_TESTD_H */
