/*
 * Daemon-core test harness: run the built sinkd as a child with exactly the
 * environment and file descriptors a test needs (NOTIFY_SOCKET, socket
 * activation on fd 3), in a private mkdtemp directory. Frames are spoken
 * with tests/common's sinkd_testwire.
 */
#ifndef SINKD_TEST_HARNESS_H
#define SINKD_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Generous: ASan builds start slowly. Not an assertion on speed. */
#define H_TIMEOUT_MS 20000

typedef struct h_daemon {
    pid_t pid;
    char log[160];       /* the child's stderr */
} h_daemon;

typedef struct h_spawn {
    const char *const *args;   /* after argv[0], NULL-terminated */
    const char *const *env;    /* "K=V" added to the environment, NULL-terminated */
    int listen_fd;             /* >= 0: becomes fd 3 with LISTEN_FDS=1, LISTEN_PID=child */
} h_spawn;

/* A fresh private directory; @dir gets its path (cap >= 64). */
void h_tmpdir(char *dir, size_t cap);

/* Remove @dir and the files in it (one level). */
void h_rmdir(const char *dir);

/* Write @text to @path (asserts on failure). */
void h_write_file(const char *path, const char *text);

/* Start sinkd with @sp; stderr goes to @dir/@name.log. Asserts on failure. */
void h_start(h_daemon *d, const char *dir, const char *name, const h_spawn *sp);

/* Wait until the unix socket @path accepts; false on timeout or if @d died. */
bool h_wait_socket(h_daemon *d, const char *path);

/* Wait for the child's exit; returns the exit code, 128+signal, or -1 on
 * timeout (the child is then killed). */
int h_wait_exit(h_daemon *d);

/* SIGTERM then h_wait_exit. */
int h_stop(h_daemon *d);

/* Wait until the log contains @needle (true) or the timeout passes. */
bool h_log_wait(const h_daemon *d, const char *needle);

/* A blocking connection to @path, or -1. */
int h_connect(const char *path);

/* Send {op, id} and read one frame; true when it is {id, ok: true}. */
bool h_ping(int fd, unsigned id);

/* Bind a unix stream socket at @path and listen (returns the fd). */
int h_listen_at(const char *path);

#endif /* SINKD_TEST_HARNESS_H */
