/*
 * The sinkd server: one libuv loop thread that accepts on the Unix socket,
 * reads and dispatches requests, writes replies, handles signals (SIGTERM and
 * SIGINT stop, SIGHUP reloads the configuration) and talks to systemd
 * (readiness, status, watchdog).
 *
 * Threading rule: everything in this header runs on the loop thread, except
 * sinkd_server_post(). The ONLY thing that crosses from another thread (an
 * engine, a loader) into the loop is a uv_async_send, done for you by
 * sinkd_server_post(); nothing on the loop thread waits for another thread.
 */
#ifndef SINKD_SERVER_H
#define SINKD_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "listen.h"
#include "notify.h"
#include "post.h"

typedef struct sinkd_conn sinkd_conn;

/* Watchdog liveness condition: returns false while the component it checks
 * is stuck, which withholds WATCHDOG=1 so that systemd restarts sinkd. */
typedef bool (*sinkd_liveness_fn)(void *ud);

/* Called on the loop thread when connection @conn_id goes away (after it left
 * the connection table, before its memory is released). */
typedef void (*sinkd_conn_closed_fn)(void *ud, uint64_t conn_id);
/* Called on the loop thread when the peer of connection @conn_id shut down
 * its sending side and still reads: once everything the connection asked
 * is answered, the callee posts its finish (sinkd_server_post with a NULL
 * frame). Until then the connection reads nothing and stays open. */
typedef void (*sinkd_conn_eof_fn)(void *ud, uint64_t conn_id);
/* See sinkd_server_set_stop. */
typedef void (*sinkd_stop_fn)(void *ud);

typedef struct sinkd_server {
    uv_loop_t *loop;
    sinkd_config cfg;                        /* live configuration (owned) */
    const char *config_path;                 /* re-read on SIGHUP; NULL: none */
    const sinkd_config_overrides *overrides; /* re-applied on SIGHUP; may be NULL */
    sinkd_listener listener;
    uv_poll_t listen_poll;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t watchdog;
    uv_timer_t stop_timer;                   /* bounds the flush at shutdown */
    sinkd_post post;
    sinkd_notify notify;
    sinkd_liveness_fn liveness;
    void *liveness_ud;
    sinkd_conn_closed_fn conn_closed;
    void *conn_closed_ud;
    sinkd_conn_eof_fn conn_eof;
    void *conn_eof_ud;
    sinkd_stop_fn stop_fn;
    void *stop_ud;
    sinkd_conn **buckets;                    /* connections by id (chained) */
    size_t n_buckets;                        /* power of two */
    size_t n_conns;
    uint64_t next_conn_id;
    uint64_t start_ns;                       /* uv_hrtime() at init */
    int spare_fd;                            /* /dev/null, given up to refuse at EMFILE */
    bool fd_starved;                         /* out of fds: said once, accepting paused
                                              * when even the spare is gone */
    bool listening;
    bool stopping;
    bool finished;                           /* handles closed, loop ending */
} sinkd_server;

/* Prepare @s on @loop with configuration @cfg, whose contents @s takes over
 * (@cfg is left zeroed). @config_path and @ov must outlive @s. Installs no
 * handle that could keep the loop alive until sinkd_server_listen.
 * Returns 0 or a negative errno (then @cfg was still taken and freed). */
int sinkd_server_init(sinkd_server *s, uv_loop_t *loop, sinkd_config *cfg,
                      const char *config_path, const sinkd_config_overrides *ov);

/* Take the activated socket or bind the configured one, start accepting,
 * install the signal handlers and the watchdog timer, then tell systemd
 * READY=1. Returns 0 or a negative errno with @err set (-EADDRINUSE: another
 * daemon owns the socket). */
int sinkd_server_listen(sinkd_server *s, char *err, size_t errlen);

/* Begin a graceful stop: stop accepting and reading, flush every
 * connection's output (at most a few seconds), then close all handles so that
 * uv_run returns. Idempotent. */
void sinkd_server_stop(sinkd_server *s);

/* Re-read the configuration file (and the command-line overrides) and swap in
 * the keys that may change at runtime; on any error keep the old
 * configuration and log a warning. Returns 0 or the load error. */
int sinkd_server_reload(sinkd_server *s);

/* Thread-safe: queue the malloc'ed @frame for connection @conn_id, which may
 * be gone by the time it is delivered (the frame is then dropped). Takes
 * ownership of @frame on success; -ESHUTDOWN once the server is stopping.
 * @frame NULL (@len 0) finishes the connection instead, after the frames
 * posted before it: it reads no more and closes once its output is
 * written (the answer to a conn_eof call). */
int sinkd_server_post(sinkd_server *s, uint64_t conn_id, uint8_t *frame, size_t len);

/* Loop thread: the live connection with id @id, or NULL. */
sinkd_conn *sinkd_server_conn(sinkd_server *s, uint64_t id);

/* Add the engine's liveness condition to the watchdog (one; a later call
 * replaces it). */
void sinkd_server_set_liveness(sinkd_server *s, sinkd_liveness_fn fn, void *ud);

/* Be told of every connection that closes (one listener; a later call
 * replaces it, NULL removes it). Loop thread. */
void sinkd_server_set_conn_closed(sinkd_server *s, sinkd_conn_closed_fn fn, void *ud);

/* Be told of every connection whose peer shut down only its sending side
 * (one listener; a later call replaces it, NULL removes it: such a
 * connection then finishes at once, dropping answers still owed). Loop
 * thread. */
void sinkd_server_set_conn_eof(sinkd_server *s, sinkd_conn_eof_fn fn, void *ud);

/* Have @fn(@ud) called once when the server stops (one; a later call
 * replaces it, NULL removes it), on the loop thread, after the socket
 * closed and before any connection is flushed and closed: when it returns,
 * every answer another thread still owes (to requests in flight) must have
 * been posted (sinkd_server_post), so that it goes out before the
 * connection closes. It may block. */
void sinkd_server_set_stop(sinkd_server *s, sinkd_stop_fn fn, void *ud);

/* Call @fn for every live connection (loop thread; @fn must not close any). */
void sinkd_server_foreach_conn(sinkd_server *s, void (*fn)(sinkd_conn *c, void *ud), void *ud);

/* After uv_run returned: release what @s still holds. */
void sinkd_server_free(sinkd_server *s);

/* Internal to the connection module: register/unregister a connection. */
void sinkd_server__conn_added(sinkd_server *s, sinkd_conn *c);
void sinkd_server__conn_removed(sinkd_server *s, sinkd_conn *c);

#endif /* SINKD_SERVER_H */
