/*
 * sinkctl commands about the daemon itself: status, ping, shutdown.
 */
#include "sinkctl.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <time.h>

#define MIB (1024.0 * 1024.0)

/* "3d 04:05:06", "04:05:06.2" under a day. */
static void format_uptime(char *buf, size_t size, double s)
{
    if (!(s >= 0))
        s = 0;
    unsigned long long whole = (unsigned long long)s;
    unsigned long long days = whole / 86400;
    unsigned h = (unsigned)(whole / 3600 % 24), m = (unsigned)(whole / 60 % 60);
    unsigned sec = (unsigned)(whole % 60);
    if (days > 0)
        snprintf(buf, size, "%llud %02u:%02u:%02u", days, h, m, sec);
    else
        snprintf(buf, size, "%02u:%02u:%04.1f", h, m, s - (double)(whole - whole % 60));
}

static int print_status(const sinkctl_ctx *ctx, sinkd_client *c, const msgpack_object *reply)
{
    sinkd_client_status st;
    int rc = sinkd_client_status_decode(reply, &st);
    if (rc != 0)
        return sinkctl_fail(ctx, c, rc, NULL);
    char up[48];
    format_uptime(up, sizeof(up), st.uptime_s);
    printf("sinkd %s (protocol %u), pid %llu\n"
           "uptime       %s\n"
           "backend      %s (%s)\n"
           "device mem   %.1f MiB free of %.1f MiB\n"
           "memory       rss %.1f MiB, KV pool %.1f MiB (%.1f MiB used)\n"
           "connections  %llu\n"
           "sessions     %llu\n",
           st.version, st.proto, (unsigned long long)st.pid, up,
           st.backend, st.device[0] ? st.device : "no device",
           st.mem_free / MIB, st.mem_total / MIB,
           st.rss_bytes / MIB, st.kv_pool_bytes / MIB, st.kv_used_bytes / MIB,
           (unsigned long long)st.connections, (unsigned long long)st.sessions);
    return SINKCTL_EXIT_OK;
}

static int run_status(sinkctl_ctx *ctx, int argc, char **argv)
{
    return sinkctl_run_query(ctx, argc, argv, "status", print_status);
}

const sinkctl_cmd sinkctl_cmd_status = {
    .name = "status",
    .summary = "Show the daemon's version, uptime, backend, memory and load",
    .usage = "",
    .help = "With --json, prints the status reply as JSON.\n",
    .run = run_status,
};

static int print_shutdown(const sinkctl_ctx *ctx, sinkd_client *c, const msgpack_object *reply)
{
    (void)ctx, (void)c, (void)reply;
    printf("sinkd is shutting down\n");
    return SINKCTL_EXIT_OK;
}

static int run_shutdown(sinkctl_ctx *ctx, int argc, char **argv)
{
    return sinkctl_run_query(ctx, argc, argv, "shutdown", print_shutdown);
}

const sinkctl_cmd sinkctl_cmd_shutdown = {
    .name = "shutdown",
    .summary = "Stop the daemon (needs admin: root or the admin_group)",
    .usage = "",
    .help = "The daemon stops accepting, finishes in-flight replies and exits.\n",
    .run = run_shutdown,
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int parse_count(const char *s, long min, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > INT_MAX)
        return -EINVAL;
    *out = v;
    return 0;
}

static int run_ping(sinkctl_ctx *ctx, int argc, char **argv)
{
    long count = 1, interval_ms = 1000;
    int code = 0, opt;
    while ((opt = sinkctl_getopt(ctx, argc, argv, "c:i:", NULL, &code)) != -1) {
        if (opt == SINKCTL_OPT_EXIT)
            return code;
        if (opt == 'c' && parse_count(optarg, 1, &count) != 0)
            return sinkctl_usage_error(ctx, "-c needs a count of at least 1");
        if (opt == 'i' && parse_count(optarg, 0, &interval_ms) != 0)
            return sinkctl_usage_error(ctx, "-i needs milliseconds (0 or more)");
    }
    code = sinkctl_no_operands(ctx, argc, argv);
    if (code != SINKCTL_EXIT_OK)
        return code;
    sinkd_client *c = NULL;
    code = sinkctl_connect(ctx, &c);
    if (code != SINKCTL_EXIT_OK)
        return code;

    /* --json lists every round trip: kept as they come, not sized by -c
     * up front (-c 2147483647 would ask for 16 GiB before the first ping) */
    double *rtt = NULL;
    size_t rtt_cap = 0;
    const sinkd_client_info *info = sinkd_client_info_get(c);
    if (!ctx->json)
        printf("PING %s %s\n", info->server, info->version);
    long sent = 0, received = 0;
    double min = 0, max = 0, sum = 0, start = now_ms();
    for (long seq = 1; seq <= count; seq++) {
        if (seq > 1 && interval_ms > 0) {
            struct timespec ts = { interval_ms / 1000, interval_ms % 1000 * 1000000L };
            nanosleep(&ts, NULL);
        }
        double t0 = now_ms();
        int rc = sinkd_client_ping(c, ctx->timeout_ms, NULL);
        double dt = now_ms() - t0;
        sent++;
        if (rc == -ETIMEDOUT) {
            if (!ctx->json)
                printf("no reply: seq=%ld timeout after %d ms\n", seq, ctx->timeout_ms);
            continue;
        }
        if (rc != 0) {
            code = sinkctl_fail(ctx, c, rc, NULL);
            break;
        }
        if (ctx->json && (size_t)received == rtt_cap) {
            size_t cap = rtt_cap ? 2 * rtt_cap : 64;
            double *grown = realloc(rtt, cap * sizeof(*rtt));
            if (grown == NULL) {
                code = sinkctl_fail(ctx, NULL, -ENOMEM, NULL);
                break;
            }
            rtt = grown;
            rtt_cap = cap;
        }
        if (ctx->json)
            rtt[received] = dt;
        received++;
        min = received == 1 || dt < min ? dt : min;
        max = dt > max ? dt : max;
        sum += dt;
        if (!ctx->json)
            printf("reply from %s: seq=%ld time=%.3f ms\n", info->server, seq, dt);
    }
    double avg = received > 0 ? sum / (double)received : 0;
    long loss = sent > 0 ? (sent - received) * 100 / sent : 0;
    if (ctx->json) {
        printf("{\"sent\":%ld,\"received\":%ld,\"min_ms\":%.6f,\"avg_ms\":%.6f,"
               "\"max_ms\":%.6f,\"rtt_ms\":[", sent, received, min, avg, max);
        for (long i = 0; i < received; i++)
            printf("%s%.6f", i > 0 ? "," : "", rtt[i]);
        printf("]}\n");
    } else {
        printf("\n--- %s ping statistics ---\n"
               "%ld requests sent, %ld replies received, %ld%% loss, time %.0f ms\n",
               info->server, sent, received, loss, now_ms() - start);
        if (received > 0)
            printf("rtt min/avg/max = %.3f/%.3f/%.3f ms\n", min, avg, max);
    }
    if (code == SINKCTL_EXIT_OK && received < sent)
        code = SINKCTL_EXIT_TRANSPORT;
    free(rtt);
    sinkd_client_close(c);
    return code;
}

const sinkctl_cmd sinkctl_cmd_ping = {
    .name = "ping",
    .summary = "Measure the round trip to the daemon, like ping(8)",
    .usage = "[-c N] [-i MS]",
    .help = "Options:\n"
            "  -c N   send N pings (default 1)\n"
            "  -i MS  wait MS milliseconds between pings (default 1000)\n"
            "\n"
            "Prints each round-trip time and a min/avg/max summary. A ping that\n"
            "times out (--timeout) counts as lost; any loss exits with status 3.\n"
            "With --json, prints {sent, received, min_ms, avg_ms, max_ms, rtt_ms}.\n",
    .run = run_ping,
};
