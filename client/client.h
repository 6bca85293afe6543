/*
 * libsinkd: the C client library of sinkd. Installed as <sinkd/client.h>;
 * link with `pkg-config --libs sinkd`.
 *
 * A handle (sinkd_client) is one connection to the daemon's Unix socket. It
 * says hello on connect, numbers requests itself, and waits for each reply
 * with a timeout, handing the request's events (if any) to a callback while
 * it waits. The library starts no thread and installs no signal handler; it
 * sends with MSG_NOSIGNAL so a dead daemon is an -EPIPE, never a SIGPIPE.
 *
 * Threads: a handle is used by one thread at a time. Nothing is shared
 * between handles, so different threads may use different handles freely;
 * to share one handle, serialise every call on it with your own lock.
 *
 * Return values, everywhere below:
 *   0                  success
 *   negative errno     the transport failed or an argument was invalid:
 *                      -ENOENT/-ECONNREFUSED (no daemon), -ETIMEDOUT,
 *                      -EPIPE/-ECONNRESET (the daemon went away), -EPROTO
 *                      (the daemon sent something this library cannot read),
 *                      -EINVAL, -ENOMEM, ...
 *   positive value     the daemon answered with an error reply; the value is
 *                      its sinkd_errcode (SINKD_ERR_PERMISSION_DENIED, ...)
 *                      and sinkd_client_errmsg() returns its message.
 * sinkd_client_strerror() names either kind.
 */
#ifndef SINKD_CLIENT_H
#define SINKD_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include "proto.h"   /* installed beside this header */

#ifdef __cplusplus
extern "C" {
#endif

/* Socket used when the caller passes no path and neither $SINKD_SOCKET nor
 * $XDG_RUNTIME_DIR/sinkd.sock names one. */
#define SINKD_CLIENT_SOCKET_DEFAULT "/run/sinkd/sinkd.sock"
/* Name of the socket inside $XDG_RUNTIME_DIR. */
#define SINKD_CLIENT_SOCKET_XDG_NAME "sinkd.sock"

typedef struct sinkd_client sinkd_client;

/* What the daemon said in its hello reply. */
typedef struct sinkd_client_info {
    uint32_t proto;        /* negotiated protocol version */
    char server[32];       /* "sinkd" */
    char version[32];      /* daemon version, "0.1.0" */
    uint64_t max_frame;    /* largest payload the daemon accepts */
    uint64_t uid;          /* our uid as the daemon sees it (SO_PEERCRED) */
    bool admin;            /* whether admin ops (shutdown, ...) are allowed */
} sinkd_client_info;

/* Resolve the socket path the way sinkd_client_connect does for a NULL path:
 * $SINKD_SOCKET if set and non-empty, else $XDG_RUNTIME_DIR/sinkd.sock if
 * that file exists, else SINKD_CLIENT_SOCKET_DEFAULT. Writes a NUL-terminated
 * path into @buf of @size bytes. Returns 0, -EINVAL (bad arguments) or
 * -ENAMETOOLONG (the path does not fit @buf or a sockaddr_un). */
int sinkd_client_default_socket(char *buf, size_t size);

/* Connect to the daemon at @path (NULL: see sinkd_client_default_socket) and
 * say hello. @timeout_ms bounds the connect and the hello round trip
 * (negative: wait forever). On success *@out is a new handle the caller owns
 * and releases with sinkd_client_close. On failure *@out is NULL and the
 * return is a negative errno: the connect(2) error (-ENOENT, -ECONNREFUSED,
 * -EACCES), -ETIMEDOUT, -EPROTONOSUPPORT (no common protocol version) or
 * -EPROTO (the daemon refused hello otherwise or answered gibberish). */
int sinkd_client_connect(const char *path, int timeout_ms, sinkd_client **out);

/* Close the connection and free @c (NULL is a no-op). Requests still pending
 * in the daemon are abandoned; their replies are never read. */
void sinkd_client_close(sinkd_client *c);

/* The hello reply of @c. Valid as long as @c. Can't fail. */
const sinkd_client_info *sinkd_client_info_get(const sinkd_client *c);

/* The socket descriptor of @c, for poll(2) only: reading or writing it
 * behind the library's back desynchronises the stream. */
int sinkd_client_fd(const sinkd_client *c);

/* Message of the last error reply received on @c, or "" if the last call did
 * not end in one. Valid until the next call on @c. */
const char *sinkd_client_errmsg(const sinkd_client *c);

/* Human name of a return value of this library: "ok", strerror(-rc) for a
 * negative value, the wire code name ("permission_denied") for a positive
 * one. Never NULL; the string is static or thread-local. */
const char *sinkd_client_strerror(int rc);

/* ---------------------------------------------------------------------------
 * Generic requests.
 */

/* Packs the request's own fields into @pk: exactly `nfields` key/value pairs
 * (the library has already packed the map header, "op" and "id"). Returns 0,
 * or a negative errno that aborts the request. */
typedef int (*sinkd_client_pack_fn)(msgpack_packer *pk, void *arg);

/* Receives one event of the pending request: @ev is its "ev" string (not
 * NUL-terminated, @ev_len bytes) and @event the whole event map. Both are
 * valid only during the call. The callback must not call into the handle. */
typedef void (*sinkd_client_event_fn)(void *arg, const char *ev, size_t ev_len,
                                      const msgpack_object *event);

/* One request. Fill it with SINKD_CLIENT_REQ_INIT, then set what you need.
 * The fields come from at most one source: the pack callback, or a pre-packed
 * msgpack map whose entries are appended (keys "op" and "id" must not be in
 * it), or neither (a request with no fields). */
typedef struct sinkd_client_req {
    const char *op;                 /* required: the operation name */
    uint32_t nfields;               /* pairs that pack() writes */
    sinkd_client_pack_fn pack;      /* NULL: no callback */
    void *pack_arg;
    const void *fields;             /* pre-packed msgpack map, or NULL */
    size_t fields_len;              /* its size in bytes */
    int fd;                         /* -1, or one fd passed with SCM_RIGHTS */
    sinkd_client_event_fn on_event; /* NULL: events are dropped */
    void *event_arg;
    int timeout_ms;                 /* negative: wait forever */
} sinkd_client_req;

#define SINKD_CLIENT_REQ_INIT { NULL, 0, NULL, NULL, NULL, 0, -1, NULL, NULL, 5000 }

/* A decoded reply. The map points into memory the reply owns. */
typedef struct sinkd_client_reply {
    uint8_t *payload;              /* owned copy of the frame's payload */
    sinkd_msg msg;                 /* decoded view of payload */
    const msgpack_object *map;     /* the reply map, or NULL when empty */
} sinkd_client_reply;

#define SINKD_CLIENT_REPLY_INIT { .payload = NULL, .map = NULL }

/* Release @r and put it back in its init state. Safe on an init or already
 * released reply. */
void sinkd_client_reply_free(sinkd_client_reply *r);

/* Send @req on @c and wait for its reply, calling req->on_event for each of
 * its events meanwhile. The fd in req->fd (if >= 0) rides on the sendmsg(2)
 * that carries the frame's first byte; the caller keeps its own copy.
 * @reply may be NULL when only the outcome matters; otherwise it must be in
 * its init state and, on return 0 and also on a positive return (an error
 * reply), holds the whole reply map, which the caller frees with
 * sinkd_client_reply_free. Replies to earlier requests that timed out are
 * discarded as they arrive.
 * Returns 0, a positive sinkd_errcode (message: sinkd_client_errmsg), or a
 * negative errno: -EINVAL (no op, both field sources, fields not one
 * msgpack map), -EMSGSIZE (request over the daemon's max_frame), -ETIMEDOUT
 * (the request may still run; its reply will be discarded), -EPIPE or
 * -ECONNRESET (connection lost), -ECONNABORTED (a timeout cut a frame in
 * half), -EPROTO, -ENOMEM. After a lost or aborted connection the handle
 * stays valid to close, and every later call returns the same error. */
int sinkd_client_request(sinkd_client *c, const sinkd_client_req *req,
                         sinkd_client_reply *reply);

/* ---------------------------------------------------------------------------
 * Typed calls of the foundation ops. @timeout_ms as in sinkd_client_req.
 */

/* Round trip a ping. *@t_ns (may be NULL) gets the daemon's CLOCK_MONOTONIC
 * in nanoseconds. Returns as sinkd_client_request. */
int sinkd_client_ping(sinkd_client *c, int timeout_ms, uint64_t *t_ns);

/* Daemon status, copied out of the status reply. */
typedef struct sinkd_client_status {
    char version[32];
    uint32_t proto;
    uint64_t pid;
    double uptime_s;
    char backend[32];              /* backend name: "cpu", "cuda", "none" */
    char device[128];              /* device description */
    uint64_t mem_total;            /* device memory, bytes */
    uint64_t mem_free;
    uint64_t connections;
    uint64_t sessions;
    uint64_t rss_bytes;            /* daemon resident memory */
    uint64_t kv_pool_bytes;
    uint64_t kv_used_bytes;
} sinkd_client_status;

/* Fill @st from a status reply map @reply (strings that do not fit are
 * truncated). Returns 0 or -EPROTO if a field is missing or mistyped. */
int sinkd_client_status_decode(const msgpack_object *reply, sinkd_client_status *st);

/* Ask for the daemon's status and decode it into @st. Returns as
 * sinkd_client_request, or -EPROTO when the reply lacks a field. */
int sinkd_client_status_get(sinkd_client *c, int timeout_ms, sinkd_client_status *st);

/* Ask the daemon to exit (admin only: SINKD_ERR_PERMISSION_DENIED
 * otherwise). On 0 the daemon has stopped accepting and exits once in-flight
 * replies are flushed. */
int sinkd_client_shutdown(sinkd_client *c, int timeout_ms);

/* ---------------------------------------------------------------------------
 * Shared memory: bulk data travels through a memfd the daemon maps too.
 */

/* Register @fd (a memfd or other regular file of at least @size > 0 bytes)
 * with the daemon; *@handle gets the connection-local handle later requests
 * name. The caller keeps @fd. Returns as sinkd_client_request. */
int sinkd_client_shm_register(sinkd_client *c, int fd, uint64_t size,
                              int timeout_ms, uint64_t *handle);

/* A memfd this process created, mapped here and registered with the daemon. */
typedef struct sinkd_client_shm {
    int fd;            /* the memfd (close-on-exec, sealed against shrinking) */
    void *base;        /* its read/write mapping here */
    size_t size;       /* bytes */
    uint64_t handle;   /* the daemon's handle */
} sinkd_client_shm;

#define SINKD_CLIENT_SHM_INIT { -1, NULL, 0, 0 }

/* Create a memfd of @size bytes, seal it against shrinking, map it and
 * register it on @c. On success @shm (which must be in its init state) owns
 * the fd and the mapping; release it with sinkd_client_shm_free. On failure
 * @shm is left in its init state and nothing leaks. Returns as
 * sinkd_client_shm_register, or -EINVAL for @size 0, or the errno of
 * memfd_create/ftruncate/mmap. */
int sinkd_client_shm_create(sinkd_client *c, size_t size, int timeout_ms,
                            sinkd_client_shm *shm);

/* Unregister @shm on @c (skipped when @c is NULL, e.g. after the connection
 * is gone: the daemon unmaps with the connection), then unmap and close it;
 * @shm is back in its init state even when the unregister fails. Returns the
 * unregister's result (0 when skipped). */
int sinkd_client_shm_free(sinkd_client *c, sinkd_client_shm *shm, int timeout_ms);

#ifdef __cplusplus
}
#endif
#endif /* SINKD_CLIENT_H */
