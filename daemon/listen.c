#include "listen.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define LISTEN__FD_START 3  /* SD_LISTEN_FDS_START */

static long listen__env_long(const char *name)
{
    const char *v = getenv(name);
    char *end;
    long x;

    if (!v || !*v)
        return -1;
    errno = 0;
    x = strtol(v, &end, 10);
    return (errno || *end || x < 0) ? -1 : x;
}

int sinkd_listen_activated(sinkd_listener *l, char *err, size_t errlen)
{
    long pid = listen__env_long("LISTEN_PID");
    long nfds = listen__env_long("LISTEN_FDS");
    int fd = LISTEN__FD_START, domain = 0, type = 0, acc = 0, flags;
    socklen_t len = sizeof domain;
    struct sockaddr_un sa;
    socklen_t salen = sizeof sa;

    if (!l)
        return -EINVAL;
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    if (pid < 0 || pid != (long)getpid())
        return 0;
    if (nfds != 1)
        return snprintf(err, errlen, "socket activation passed %ld sockets, expected 1", nfds),
               -EINVAL;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0 ||
        (len = sizeof type, getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len)) < 0 ||
        (len = sizeof acc, getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len)) < 0)
        return snprintf(err, errlen, "socket activation: fd 3 is not a socket: %s",
                        strerror(errno)), -EINVAL;
    if (domain != AF_UNIX || type != SOCK_STREAM || !acc)
        return snprintf(err, errlen, "socket activation: fd 3 is not a listening AF_UNIX "
                        "stream socket"), -EINVAL;
    flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0 ||
        fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        return snprintf(err, errlen, "socket activation: fcntl: %s", strerror(errno)), -EINVAL;
    *l = (sinkd_listener)SINKD_LISTENER_INIT;
    l->fd = fd;
    l->activated = true;
    memset(&sa, 0, sizeof sa);
    if (getsockname(fd, (struct sockaddr *)&sa, &salen) == 0 && sa.sun_path[0])
        snprintf(l->path, sizeof l->path, "%.*s", (int)sizeof sa.sun_path, sa.sun_path);
    return 1;
}

/* 1: a daemon accepts on @sa; 0: nobody does (stale file or none); <0 error. */
static int listen__probe(const struct sockaddr_un *sa)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), rc;

    if (fd < 0)
        return -errno;
    rc = connect(fd, (const struct sockaddr *)sa, sizeof *sa);
    rc = rc == 0 ? 1 : (errno == ECONNREFUSED || errno == ENOENT) ? 0 : -errno;
    close(fd);
    return rc;
}

static void listen__mkparent(const char *path)
{
    char *dup = strdup(path);

    if (dup) {
        /* One level only: creating a whole missing tree would hide a typo. */
        (void)mkdir(dirname(dup), 0755);
        free(dup);
    }
}

int sinkd_listen_bind(sinkd_listener *l, const char *path, uint32_t mode, gid_t gid,
                      int backlog, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    struct stat sb;
    mode_t old_umask;
    int fd, rc;

    if (!l || !path || !*path || strlen(path) >= sizeof sa.sun_path || mode > 0777)
        return -EINVAL;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));
    if (lstat(path, &sb) == 0) {
        if (!S_ISSOCK(sb.st_mode))
            return snprintf(err, errlen, "%s exists and is not a socket", path), -EEXIST;
        rc = listen__probe(&sa);
        if (rc > 0)
            return snprintf(err, errlen, "another sinkd is already listening on %s", path),
                   -EADDRINUSE;
        if (rc < 0)
            return snprintf(err, errlen, "cannot probe %s: %s", path, strerror(-rc)), rc;
        if (unlink(path) < 0 && errno != ENOENT)
            return rc = -errno, snprintf(err, errlen, "cannot remove stale %s: %s", path,
                                         strerror(errno)), rc;
    } else {
        listen__mkparent(path);
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return rc = -errno, snprintf(err, errlen, "socket: %s", strerror(errno)), rc;
    /* Bind with no access at all, then open up: no window in which the file
     * has the process umask's (possibly wider) permissions. */
    old_umask = umask(0777);
    rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old_umask);
    if (rc < 0) {
        rc = -errno;
        snprintf(err, errlen, "bind %s: %s", path, strerror(errno));
        close(fd);
        return rc;
    }
    if ((gid != (gid_t)-1 && chown(path, (uid_t)-1, gid) < 0) || chmod(path, mode) < 0 ||
        lstat(path, &sb) < 0 || listen(fd, backlog) < 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        unlink(path);
        close(fd);
        return rc;
    }
    *l = (sinkd_listener)SINKD_LISTENER_INIT;
    l->fd = fd;
    snprintf(l->path, sizeof l->path, "%s", path);
    l->dev = sb.st_dev;
    l->ino = sb.st_ino;
    return 0;
}

void sinkd_listen_close(sinkd_listener *l)
{
    struct stat sb;

    if (!l)
        return;
    if (!l->activated && l->path[0] && lstat(l->path, &sb) == 0 && sb.st_dev == l->dev &&
        sb.st_ino == l->ino)
        unlink(l->path);
    if (l->fd >= 0)
        close(l->fd);
    *l = (sinkd_listener)SINKD_LISTENER_INIT;
}
