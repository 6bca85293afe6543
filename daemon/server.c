#include "server.h"
#include "auth.h"
#include "conn.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* How long a stop waits for clients to take their last replies. */
#define SERVER__STOP_FLUSH_MS 3000
#define SERVER__BACKLOG 128
#define SERVER__ACCEPTS_PER_WAKEUP 64

static size_t server__bucket(const sinkd_server *s, uint64_t id)
{
    /* Ids are sequential: the low bits spread them evenly already. */
    return (size_t)(id & (s->n_buckets - 1));
}

void sinkd_server__conn_added(sinkd_server *s, sinkd_conn *c)
{
    size_t b;

    c->id = ++s->next_conn_id;
    b = server__bucket(s, c->id);
    c->hnext = s->buckets[b];
    s->buckets[b] = c;
    s->n_conns++;
}

static void server__finish(sinkd_server *s);
static void server__unstarve(sinkd_server *s);

void sinkd_server__conn_removed(sinkd_server *s, sinkd_conn *c)
{
    sinkd_conn **pp = &s->buckets[server__bucket(s, c->id)];

    while (*pp && *pp != c)
        pp = &(*pp)->hnext;
    if (!*pp)
        return;
    *pp = c->hnext;
    s->n_conns--;
    server__unstarve(s);
    if (s->conn_closed)
        s->conn_closed(s->conn_closed_ud, c->id);
    if (s->stopping && s->n_conns == 0)
        server__finish(s);
}

sinkd_conn *sinkd_server_conn(sinkd_server *s, uint64_t id)
{
    sinkd_conn *c;

    if (!s || !s->buckets)
        return NULL;
    for (c = s->buckets[server__bucket(s, id)]; c; c = c->hnext)
        if (c->id == id)
            return c;
    return NULL;
}

void sinkd_server_foreach_conn(sinkd_server *s, void (*fn)(sinkd_conn *c, void *ud), void *ud)
{
    for (size_t b = 0; b < s->n_buckets; b++)
        for (sinkd_conn *c = s->buckets[b], *next; c; c = next) {
            next = c->hnext;
            fn(c, ud);
        }
}

static void server__deliver(void *ud, uint64_t conn_id, uint8_t *frame, size_t len)
{
    sinkd_conn *c = sinkd_server_conn(ud, conn_id);

    if (!c) {
        sinkd_log(SINKD_LOG_DEBUG, "conn %llu: gone, dropping a posted frame",
                  (unsigned long long)conn_id);
        free(frame);
        return;
    }
    if (!frame) {
        sinkd_conn_finish(c);
        return;
    }
    sinkd_conn_send(c, frame, len);
}

int sinkd_server_post(sinkd_server *s, uint64_t conn_id, uint8_t *frame, size_t len)
{
    if (!s)
        return -EINVAL;
    return sinkd_post_frame(&s->post, conn_id, frame, len);
}

void sinkd_server_set_conn_closed(sinkd_server *s, sinkd_conn_closed_fn fn, void *ud)
{
    s->conn_closed = fn;
    s->conn_closed_ud = ud;
}

void sinkd_server_set_conn_eof(sinkd_server *s, sinkd_conn_eof_fn fn, void *ud)
{
    s->conn_eof = fn;
    s->conn_eof_ud = ud;
}

void sinkd_server_set_stop(sinkd_server *s, sinkd_stop_fn fn, void *ud)
{
    s->stop_fn = fn;
    s->stop_ud = ud;
}

void sinkd_server_set_liveness(sinkd_server *s, sinkd_liveness_fn fn, void *ud)
{
    s->liveness = fn;
    s->liveness_ud = ud;
}

int sinkd_server_init(sinkd_server *s, uv_loop_t *loop, sinkd_config *cfg,
                      const char *config_path, const sinkd_config_overrides *ov)
{
    int rc;

    if (!s || !loop || !cfg)
        return -EINVAL;
    memset(s, 0, sizeof *s);
    s->cfg = *cfg;
    memset(cfg, 0, sizeof *cfg);
    s->loop = loop;
    s->config_path = config_path;
    s->overrides = ov;
    s->listener = (sinkd_listener)SINKD_LISTENER_INIT;
    s->notify = (sinkd_notify)SINKD_NOTIFY_INIT;
    s->spare_fd = -1;
    s->start_ns = uv_hrtime();
    for (s->n_buckets = 16; s->n_buckets < s->cfg.max_connections; s->n_buckets <<= 1)
        ;
    s->buckets = calloc(s->n_buckets, sizeof *s->buckets);
    if (!s->buckets) {
        sinkd_config_free(&s->cfg);
        return -ENOMEM;
    }
    rc = sinkd_notify_init(&s->notify);
    if (rc == 0)
        rc = sinkd_post_init(&s->post, loop, server__deliver, s);
    if (rc < 0) {
        sinkd_notify_free(&s->notify);
        free(s->buckets);
        sinkd_config_free(&s->cfg);
        return rc;
    }
    /* Initialised now so that a stop can always close them; none keeps the
     * loop alive before sinkd_server_listen starts it. */
    uv_unref((uv_handle_t *)&s->post.async);
    uv_signal_init(loop, &s->sig_term);
    uv_signal_init(loop, &s->sig_int);
    uv_signal_init(loop, &s->sig_hup);
    uv_timer_init(loop, &s->watchdog);
    uv_timer_init(loop, &s->stop_timer);
    s->sig_term.data = s->sig_int.data = s->sig_hup.data = s;
    s->watchdog.data = s->stop_timer.data = s;
    uv_unref((uv_handle_t *)&s->watchdog);
    uv_unref((uv_handle_t *)&s->stop_timer);
    return 0;
}

/* Answer busy with @why on a connection just accepted, and close it. */
static void server__refuse(int fd, const char *why)
{
    size_t len;
    uint8_t *f = sinkd_frame_error(0, false, SINKD_ERR_BUSY, why, &len);

    /* A fresh socket buffer always takes one small frame: no queue needed. */
    if (f && send(fd, f, len, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        sinkd_log(SINKD_LOG_DEBUG, "busy reply: %s", strerror(errno));
    free(f);
    close(fd);
}

static void server__on_listen(uv_poll_t *h, int status, int events);

/* accept4 failed for want of a descriptor. A connection left in the backlog
 * keeps the listening socket readable, and the loop would spin on it: give
 * up the spare descriptor to accept it and refuse it, or, with no spare
 * left, stop watching the socket until a connection closes. */
static void server__starved(sinkd_server *s)
{
    if (!s->fd_starved)
        sinkd_log(SINKD_LOG_WARNING, "out of file descriptors (%s): refusing new connections "
                  "until some close (raise LimitNOFILE or lower max_connections)",
                  strerror(errno));
    s->fd_starved = true;
    if (s->spare_fd >= 0) {
        close(s->spare_fd);
        int fd = accept4(s->listener.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0)
            server__refuse(fd, "sinkd is out of file descriptors");
        s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    if (s->spare_fd < 0 && s->listening)
        uv_poll_stop(&s->listen_poll);
}

/* A descriptor was given back: watch the listening socket again. */
static void server__unstarve(sinkd_server *s)
{
    if (!s->fd_starved)
        return;
    if (s->spare_fd < 0)
        s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (s->spare_fd < 0)
        return;
    s->fd_starved = false;
    if (s->listening)
        uv_poll_start(&s->listen_poll, UV_READABLE, server__on_listen);
}

static void server__on_listen(uv_poll_t *h, int status, int events)
{
    sinkd_server *s = h->data;

    (void)events;
    if (status < 0) {
        sinkd_log(SINKD_LOG_ERR, "listening socket: %s", uv_strerror(status));
        return;
    }
    for (int i = 0; i < SERVER__ACCEPTS_PER_WAKEUP && s->listening; i++) {
        int fd = accept4(s->listener.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC), rc;
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE) {
                server__starved(s);
                return;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                sinkd_log(SINKD_LOG_WARNING, "accept: %s", strerror(errno));
            return;
        }
        if (s->n_conns >= s->cfg.max_connections) {
            sinkd_log(SINKD_LOG_NOTICE, "refusing a connection: %zu open (max_connections)",
                      s->n_conns);
            server__refuse(fd, "too many connections (max_connections)");
            continue;
        }
        rc = sinkd_conn_accept(s, fd);
        if (rc < 0)
            sinkd_log(SINKD_LOG_WARNING, "accepting a connection: %s", strerror(-rc));
    }
}

static void server__ready(sinkd_server *s)
{
    sinkd_notify_sendf(&s->notify, "READY=1\nSTATUS=serving on %s\nMAINPID=%d",
                       s->listener.path, (int)getpid());
}

static void server__on_signal(uv_signal_t *h, int signum)
{
    sinkd_server *s = h->data;

    if (signum == SIGHUP) {
        sinkd_server_reload(s);
        return;
    }
    sinkd_log(SINKD_LOG_NOTICE, "%s: stopping", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    sinkd_server_stop(s);
}

static void server__on_watchdog(uv_timer_t *t)
{
    sinkd_server *s = t->data;

    if (s->liveness && !s->liveness(s->liveness_ud)) {
        sinkd_log(SINKD_LOG_WARNING, "watchdog: liveness check failed, not pinging systemd");
        return;
    }
    sinkd_notify_send(&s->notify, "WATCHDOG=1");
}

int sinkd_server_listen(sinkd_server *s, char *err, size_t errlen)
{
    uint64_t half_ms;
    int rc;

    /* Before the socket exists: once a client can connect, a SIGTERM must
     * stop the daemon in order (sessions saved, replies flushed), not kill
     * it. A signal that comes before uv_run waits in libuv's queue. */
    uv_signal_start(&s->sig_term, server__on_signal, SIGTERM);
    uv_signal_start(&s->sig_int, server__on_signal, SIGINT);
    uv_signal_start(&s->sig_hup, server__on_signal, SIGHUP);

    rc = sinkd_listen_activated(&s->listener, err, errlen);
    if (rc == 0) {
        rc = sinkd_listen_bind(&s->listener, s->cfg.socket, s->cfg.socket_mode,
                               s->cfg.socket_group.name ? s->cfg.socket_group.gid : (gid_t)-1,
                               SERVER__BACKLOG, err, errlen);
    } else if (rc > 0) {
        sinkd_log(SINKD_LOG_INFO, "using the socket passed by systemd (%s)",
                  s->listener.path[0] ? s->listener.path : "unnamed");
        rc = 0;
    }
    if (rc < 0)
        return rc;
    rc = uv_poll_init(s->loop, &s->listen_poll, s->listener.fd);
    if (rc < 0) {
        snprintf(err, errlen, "poll on the listening socket: %s", uv_strerror(rc));
        sinkd_listen_close(&s->listener);
        return rc;
    }
    s->listen_poll.data = s;
    s->listening = true;
    s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    uv_poll_start(&s->listen_poll, UV_READABLE, server__on_listen);

    if (s->notify.watchdog_usec) {
        half_ms = s->notify.watchdog_usec / 2000;
        uv_timer_start(&s->watchdog, server__on_watchdog, half_ms ? half_ms : 1,
                       half_ms ? half_ms : 1);
    }

    sinkd_log(SINKD_LOG_NOTICE, "listening on %s", s->listener.path);
    server__ready(s);
    return 0;
}

static void server__close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Every connection is gone: close the server's own handles so uv_run ends. */
static void server__finish(sinkd_server *s)
{
    if (s->finished)
        return;
    s->finished = true;
    uv_timer_stop(&s->stop_timer);
    server__close_handle((uv_handle_t *)&s->stop_timer);
    server__close_handle((uv_handle_t *)&s->watchdog);
    server__close_handle((uv_handle_t *)&s->sig_term);
    server__close_handle((uv_handle_t *)&s->sig_int);
    server__close_handle((uv_handle_t *)&s->sig_hup);
    /* Closing the handles gave the signals back their default action; a
     * second SIGTERM now would kill the engine while it saves persistent
     * sessions. Shutdown is already under way: ignore it (systemd still
     * escalates to SIGKILL after TimeoutStopSec). */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    sinkd_post_close(&s->post);
}

static void server__close_conn(sinkd_conn *c, void *ud)
{
    (void)ud;
    sinkd_conn_close(c);
}

static void server__on_stop_timer(uv_timer_t *t)
{
    sinkd_server *s = t->data;

    sinkd_log(SINKD_LOG_WARNING, "%zu connection(s) did not take their output in time: closing",
              s->n_conns);
    sinkd_server_foreach_conn(s, server__close_conn, NULL);
}

static void server__finish_conn(sinkd_conn *c, void *ud)
{
    (void)ud;
    sinkd_conn_finish(c);
}

void sinkd_server_stop(sinkd_server *s)
{
    if (!s || s->stopping)
        return;
    s->stopping = true;
    sinkd_notify_send(&s->notify, "STOPPING=1\nSTATUS=shutting down");
    if (s->listening) {
        s->listening = false;
        uv_close((uv_handle_t *)&s->listen_poll, NULL);
        sinkd_listen_close(&s->listener);
    }
    /* Requests in flight get their final answers before their connections
     * close (the engine answers what it holds; while this blocks, no frame
     * is read, so none is dispatched). */
    if (s->stop_fn) {
        sinkd_stop_fn fn = s->stop_fn;
        s->stop_fn = NULL;
        fn(s->stop_ud);
    }
    /* Frames already posted by other threads are replies in flight. */
    sinkd_post_drain(&s->post);
    if (s->n_conns == 0) {
        server__finish(s);
        return;
    }
    sinkd_log(SINKD_LOG_INFO, "flushing %zu connection(s)", s->n_conns);
    uv_timer_start(&s->stop_timer, server__on_stop_timer, SERVER__STOP_FLUSH_MS, 0);
    uv_ref((uv_handle_t *)&s->stop_timer);
    sinkd_server_foreach_conn(s, server__finish_conn, NULL);
}

static void server__note_change(void *ud, const char *section, const char *key, bool applied)
{
    (void)ud;
    if (applied)
        sinkd_log(SINKD_LOG_NOTICE, "reload: [%s] %s changed", section, key);
    else
        sinkd_log(SINKD_LOG_WARNING, "reload: [%s] %s changed: takes effect after a restart",
                  section, key);
}

static void server__recheck_admin(sinkd_conn *c, void *ud)
{
    c->admin = sinkd_auth_is_admin(c->uid, c->gid, ud);
}

int sinkd_server_reload(sinkd_server *s)
{
    char err[SINKD_CONFIG_ERR_MAX];
    sinkd_config fresh;
    int rc;

    sinkd_notify_reloading(&s->notify);
    sinkd_log(SINKD_LOG_INFO, "SIGHUP: reloading %s",
              s->config_path ? s->config_path : "(no configuration file)");
    rc = sinkd_config_read(&fresh, s->config_path, s->overrides, err, sizeof err);
    if (rc < 0) {
        sinkd_log(SINKD_LOG_WARNING, "reload failed, keeping the old configuration: %s", err);
        sinkd_notify_sendf(&s->notify, "READY=1\nSTATUS=reload failed: %s", err);
        return rc;
    }
    rc = sinkd_config_apply_runtime(&s->cfg, &fresh, server__note_change, NULL);
    sinkd_config_free(&fresh);
    if (rc < 0) {
        sinkd_log(SINKD_LOG_WARNING, "reload: out of memory, configuration partly applied");
        server__ready(s);
        return rc;
    }
    sinkd_log_set_level(s->cfg.log_level);
    sinkd_server_foreach_conn(s, server__recheck_admin, &s->cfg.admin_group);
    sinkd_log(SINKD_LOG_NOTICE, "configuration reloaded (%d key(s) changed)", rc);
    server__ready(s);
    return 0;
}

void sinkd_server_free(sinkd_server *s)
{
    if (!s)
        return;
    sinkd_listen_close(&s->listener);
    if (s->spare_fd >= 0)
        close(s->spare_fd);
    sinkd_post_free(&s->post);
    sinkd_notify_free(&s->notify);
    free(s->buckets);
    sinkd_config_free(&s->cfg);
    memset(s, 0, sizeof *s);
    s->spare_fd = -1;
}
