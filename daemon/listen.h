/*
 * The listening socket: taken from systemd socket activation (LISTEN_FDS) or
 * bound by sinkd itself. A socket file left behind by a dead daemon is
 * replaced; one a live daemon still accepts on is never stolen.
 */
#ifndef SINKD_LISTEN_H
#define SINKD_LISTEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct sinkd_listener {
    int fd;              /* non-blocking, close-on-exec listening socket; -1: none */
    bool activated;      /* passed in by systemd: never unlinked by sinkd */
    char path[108];      /* bound path ("" when unnamed) */
    dev_t dev;           /* identity of the socket file we created, so that */
    ino_t ino;           /* shutdown never unlinks a successor's socket */
} sinkd_listener;

#define SINKD_LISTENER_INIT { -1, false, { 0 }, 0, 0 }

/* Socket activation: if $LISTEN_PID is our pid, take fd 3 after checking
 * that $LISTEN_FDS is 1 and fd 3 is a listening AF_UNIX stream socket. The
 * LISTEN_* variables are unset in every case, so children never see them.
 * Returns 1 with @l filled, 0 when not activated, or -EINVAL with @err. */
int sinkd_listen_activated(sinkd_listener *l, char *err, size_t errlen);

/* Bind and listen on @path with permission bits @mode and, when @gid is not
 * (gid_t)-1, group @gid. An existing socket file that refuses connections is
 * unlinked first; a live one gives -EADDRINUSE; a non-socket file gives
 * -EEXIST. A missing parent directory is created (mode 0755) if its own
 * parent exists. Returns 0 or a negative errno, with @err set on failure. */
int sinkd_listen_bind(sinkd_listener *l, const char *path, uint32_t mode, gid_t gid,
                      int backlog, char *err, size_t errlen);

/* Close the socket and, when sinkd bound it and the file is still the one it
 * created, unlink it. @l is back to SINKD_LISTENER_INIT. */
void sinkd_listen_close(sinkd_listener *l);

#endif /* SINKD_LISTEN_H */
