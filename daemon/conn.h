/*
 * One client connection: a non-blocking Unix stream socket driven by a
 * uv_poll_t, with reads and writes done by hand (recvmsg/sendmsg) so that
 * file descriptors can arrive as SCM_RIGHTS with a frame.
 *
 * Descriptors: every fd received is queued with the stream offset of the
 * bytes it came with. A request sees (and may take) the fds that arrived
 * within its own frame; whatever it leaves is closed when the next frame
 * completes, or when the connection closes.
 *
 * Output: frames are queued and written as the socket accepts them. More than
 * max_output unsent bytes drop the connection (a client that does not read
 * must not hold the daemon's memory).
 *
 * Lifetime: a closing connection is unregistered at once (posts to its id are
 * dropped from then on) and freed by the loop after its poll handle closed,
 * so a pointer stays valid until the current callback returns.
 */
#ifndef SINKD_CONN_H
#define SINKD_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "proto.h"

#include "server.h"

#define SINKD_CONN_FDS_MAX 16

typedef struct sinkd_conn_out sinkd_conn_out;

struct sinkd_conn {
    sinkd_server *srv;
    sinkd_conn *hnext;        /* server's id bucket chain */
    uv_poll_t poll;
    int fd;
    uint64_t id;              /* unique for the daemon's lifetime */
    uid_t uid;                /* SO_PEERCRED at accept */
    gid_t gid;
    pid_t pid;
    bool admin;
    uint32_t proto;           /* negotiated by hello; 1 until then */
    sinkd_frame_reader rd;
    uint64_t rx_total;        /* bytes received so far */
    uint64_t frame_start;     /* stream offset of the next frame's first byte */
    uint64_t frame_end;       /* end of the frame being dispatched */
    /* Received fds, each with the stream range [fd_lo, fd_hi) of the read
     * that brought it: a frame whose first byte lies there may take it. */
    int fds[SINKD_CONN_FDS_MAX];
    uint64_t fd_lo[SINKD_CONN_FDS_MAX], fd_hi[SINKD_CONN_FDS_MAX];
    size_t n_fds;
    sinkd_conn_out *out_head, *out_tail;
    size_t out_bytes;         /* unsent */
    int events;               /* UV_READABLE/UV_WRITABLE currently polled */
    bool reading;             /* false once finishing or closed */
    bool closing;             /* close once the output is flushed */
    bool closed;              /* uv_close issued */
};

/* Accept @fd (a connected, non-blocking socket; ownership passes to the
 * connection even on failure) for @s. Reads the peer's credentials and
 * starts polling. Returns 0 or a negative errno. */
int sinkd_conn_accept(sinkd_server *s, int fd);

/* Queue the malloc'ed @frame (@len bytes) for sending; the connection owns it
 * afterwards, also on failure. Returns 0, -EPIPE when the connection is
 * closing or was dropped (e.g. over max_output). */
int sinkd_conn_send(sinkd_conn *c, uint8_t *frame, size_t len);

/* Send a connection-level error (no id) with @code and @msg, then finish:
 * for bad_frame and frame_too_large, after which the stream cannot be
 * trusted to be in step. */
void sinkd_conn_fail(sinkd_conn *c, sinkd_errcode code, const char *msg);

/* Stop reading; close once every queued byte is written. */
void sinkd_conn_finish(sinkd_conn *c);

/* Close now, dropping unsent output. Safe to call twice. */
void sinkd_conn_close(sinkd_conn *c);

/* Take the oldest fd received by the read that brought the first byte of
 * the frame now being dispatched. The caller owns the returned fd. Returns
 * it, or -ENOENT when there is none. */
int sinkd_conn_take_fd(sinkd_conn *c);

#endif /* SINKD_CONN_H */
