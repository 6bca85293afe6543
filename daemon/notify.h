/*
 * systemd readiness protocol (sd_notify(3)), written by hand: datagrams of
 * "KEY=VALUE\n..." sent to the AF_UNIX socket named by $NOTIFY_SOCKET (a path,
 * or an abstract name when it starts with '@'). Without $NOTIFY_SOCKET every
 * call is a successful no-op, so sinkd runs the same outside systemd.
 */
#ifndef SINKD_NOTIFY_H
#define SINKD_NOTIFY_H

#include <stdint.h>

typedef struct sinkd_notify {
    int fd;            /* datagram socket, -1 when not under systemd */
    char addr[112];    /* struct sockaddr_un, filled at init */
    unsigned addrlen;
    uint64_t watchdog_usec; /* 0: no watchdog requested for this process */
} sinkd_notify;

#define SINKD_NOTIFY_INIT { -1, { 0 }, 0, 0 }

/* Read $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID (the watchdog counts
 * only if WATCHDOG_PID is unset or our pid). Returns 0 (also when not under
 * systemd), -EINVAL for a malformed address, or a socket(2) error. */
int sinkd_notify_init(sinkd_notify *n);

/* Send @msg ("READY=1\nSTATUS=...") as one datagram. Returns 0 or a negative
 * errno; a no-op returning 0 when not under systemd. */
int sinkd_notify_send(const sinkd_notify *n, const char *msg);

/* printf-style sinkd_notify_send. Messages are limited to 1 KiB. */
int sinkd_notify_sendf(const sinkd_notify *n, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* "RELOADING=1\nMONOTONIC_USEC=<now>" as systemd 253+ expects before a
 * reload (followed by READY=1 when it is done). */
int sinkd_notify_reloading(const sinkd_notify *n);

/* Close the socket; @n is back to SINKD_NOTIFY_INIT. */
void sinkd_notify_free(sinkd_notify *n);

#endif /* SINKD_NOTIFY_H */
