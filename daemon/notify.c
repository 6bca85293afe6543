#include "notify.h"

#include <errno.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(((sinkd_notify *)0)->addr) >= sizeof(struct sockaddr_un),
               "sinkd_notify.addr must hold a sockaddr_un");

static uint64_t notify__env_u64(const char *name)
{
    const char *v = getenv(name);
    char *end;
    unsigned long long x;

    if (!v || !*v)
        return 0;
    errno = 0;
    x = strtoull(v, &end, 10);
    return (errno || *end) ? 0 : (uint64_t)x;
}

int sinkd_notify_init(sinkd_notify *n)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa;
    uint64_t wd_pid;
    size_t len;

    if (!n)
        return -EINVAL;
    *n = (sinkd_notify)SINKD_NOTIFY_INIT;
    wd_pid = notify__env_u64("WATCHDOG_PID");
    if (wd_pid == 0 || wd_pid == (uint64_t)getpid())
        n->watchdog_usec = notify__env_u64("WATCHDOG_USEC");
    if (!path || !*path)
        return 0;
    len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof sa.sun_path)
        return -EINVAL;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@')
        sa.sun_path[0] = '\0';  /* abstract namespace: no terminating NUL counted */
    else
        len++;
    n->addrlen = (unsigned)(offsetof(struct sockaddr_un, sun_path) + len);
    memcpy(n->addr, &sa, sizeof sa);
    n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    return n->fd < 0 ? -errno : 0;
}

int sinkd_notify_send(const sinkd_notify *n, const char *msg)
{
    if (!n || !msg)
        return -EINVAL;
    if (n->fd < 0)
        return 0;
    if (sendto(n->fd, msg, strlen(msg), MSG_NOSIGNAL,
               (const struct sockaddr *)n->addr, n->addrlen) < 0)
        return -errno;
    return 0;
}

int sinkd_notify_sendf(const sinkd_notify *n, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return sinkd_notify_send(n, msg);
}

int sinkd_notify_reloading(const sinkd_notify *n)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return sinkd_notify_sendf(n, "RELOADING=1\nMONOTONIC_USEC=%llu",
                              (unsigned long long)ts.tv_sec * 1000000ull +
                                  (unsigned long long)ts.tv_nsec / 1000ull);
}

void sinkd_notify_free(sinkd_notify *n)
{
    if (!n)
        return;
    if (n->fd >= 0)
        close(n->fd);
    *n = (sinkd_notify)SINKD_NOTIFY_INIT;
}
