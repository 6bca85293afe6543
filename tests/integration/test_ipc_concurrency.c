/*
 * 200 clients, 100 pings each, all at once: every reply arrives, matches its
 * request id, and is ok. The clients are non-blocking sockets driven by one
 * poll loop (threads would mostly measure the scheduler on a small machine).
 */
#include "ipc_check.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>

enum { CLIENTS = 200, PINGS = 100, FRAME = IPC_PING_FRAME };

TestSuite(concurrency, .init = ipc_daemon_default, .fini = ipc_daemon_stop);

typedef struct client {
    int fd;
    uint32_t next;         /* id of the next ping to send (1-based) */
    uint32_t done;         /* replies received */
    uint8_t out[FRAME];
    size_t out_off;        /* bytes of out already written; FRAME = nothing pending */
    sinkd_frame_reader rd;
} client;

static void build_ping(client *c, uint32_t id)
{
    ipc_ping_frame(c->out, id);
    c->out_off = 0;
}

/* A distinct id space per client. */
/* A distinct id space per client. */
static uint32_t ping_id(size_t client, uint32_t seq)
{
    return (uint32_t)(client * 1000000u + seq);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

Test(concurrency, clients_200_pings_100, .timeout = 120)
{
    static client cl[CLIENTS];
    static struct pollfd pfd[CLIENTS];
    for (size_t i = 0; i < CLIENTS; i++) {
        cl[i].fd = sinkd_testd_connect_raw(&ipc_daemon);
        cr_assert_geq(cl[i].fd, 0, "client %zu: connect: %s", i, strerror(-cl[i].fd));
        cr_assert_eq(fcntl(cl[i].fd, F_SETFL, O_NONBLOCK), 0);
        sinkd_frame_reader_init(&cl[i].rd, 0);
        cl[i].next = 1;
        build_ping(&cl[i], ping_id(i, cl[i].next++));
    }

    size_t finished = 0, errors = 0;
    int64_t deadline = now_ms() + 100000;
    while (finished < CLIENTS) {
        cr_assert_lt(now_ms(), deadline, "stalled: %zu of %d clients done", finished, CLIENTS);
        for (size_t i = 0; i < CLIENTS; i++) {
            pfd[i].fd = cl[i].done == PINGS ? -1 : cl[i].fd;
            pfd[i].events = POLLIN | (cl[i].out_off < FRAME ? POLLOUT : 0);
            pfd[i].revents = 0;
        }
        int n = poll(pfd, CLIENTS, 1000);
        cr_assert_geq(n, 0);
        for (size_t i = 0; i < CLIENTS; i++) {
            client *c = &cl[i];
            if (pfd[i].revents & POLLOUT) {
                ssize_t w = send(c->fd, c->out + c->out_off, FRAME - c->out_off, MSG_NOSIGNAL);
                if (w > 0)
                    c->out_off += (size_t)w;
            }
            if (!(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            uint8_t buf[4096];
            ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
            cr_assert_gt(r, 0, "client %zu: connection lost after %u replies", i, c->done);
            cr_assert_eq(sinkd_frame_reader_feed(&c->rd, buf, (size_t)r), 0);
            const uint8_t *payload;
            size_t len;
            while (sinkd_frame_reader_next(&c->rd, &payload, &len) == 1) {
                sinkd_msg m;
                uint64_t id = 0, t = 0;
                bool ok = false;
                if (sinkd_msg_decode(payload, len, &m, NULL) != 0) {
                    errors++;
                    continue;
                }
                if (sinkd_map_u64(&m.root, "id", &id) != 0 || id != ping_id(i, c->done + 1) ||
                    sinkd_map_bool(&m.root, "ok", &ok) != 0 || !ok ||
                    sinkd_map_u64(&m.root, "t_ns", &t) != 0)
                    errors++;
                sinkd_msg_free(&m);
                c->done++;
                if (c->done == PINGS)
                    finished++;
                else
                    build_ping(c, ping_id(i, c->next++));
            }
        }
    }
    for (size_t i = 0; i < CLIENTS; i++) {
        cr_expect_eq(cl[i].done, PINGS);
        sinkd_frame_reader_free(&cl[i].rd);
        close(cl[i].fd);
    }
    cr_expect_eq(errors, 0, "%zu bad replies", errors);
    ipc_ping_fresh(&ipc_daemon);
}
