/*
 * sinkd-bench-ipc: round-trip latency of `ping` through libsinkd, with one
 * client and with N concurrent clients (one thread and one connection each,
 * every client waiting for its reply before the next ping), and the request
 * rate each run sustains. Prints a table and writes JSON.
 *
 *   sinkd-bench-ipc [--socket PATH] [--pings N] [--clients N]
 *                   [--json-out FILE]
 *
 * Without --socket it starts build/daemon/sinkd (or $SINKD_BIN) on a private
 * socket and stops it afterwards.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "sinkd_testd.h"

#define WARMUP 1000
#define TIMEOUT_MS 10000

typedef struct run {
    int clients;
    long pings;             /* per client */
    double p50_us, p99_us, mean_us, max_us;
    double req_per_s;
    long errors;
} run;

typedef struct worker {
    const char *socket;
    long pings;
    double *lat_us;         /* pings entries */
    long errors;
    pthread_barrier_t *start;
} worker;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    sinkd_client *c = NULL;
    int rc = sinkd_client_connect(w->socket, TIMEOUT_MS, &c);
    if (rc != 0) {
        fprintf(stderr, "sinkd-bench-ipc: connect: %s\n", sinkd_client_strerror(rc));
        w->errors = w->pings;
    }
    for (int i = 0; c != NULL && i < WARMUP; i++)
        sinkd_client_ping(c, TIMEOUT_MS, NULL);
    pthread_barrier_wait(w->start);
    for (long i = 0; c != NULL && i < w->pings; i++) {
        double t0 = now_s();
        rc = sinkd_client_ping(c, TIMEOUT_MS, NULL);
        w->lat_us[i] = (now_s() - t0) * 1e6;
        if (rc != 0)
            w->errors++;
    }
    sinkd_client_close(c);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted @v. */
static double percentile(const double *v, size_t n, double p)
{
    size_t rank = (size_t)ceil(p / 100.0 * (double)n);
    return v[rank > 0 ? rank - 1 : 0];
}

static int measure(const char *socket, int clients, long pings, run *out)
{
    worker *w = calloc((size_t)clients, sizeof(*w));
    pthread_t *th = calloc((size_t)clients, sizeof(*th));
    double *lat = calloc((size_t)clients * (size_t)pings, sizeof(*lat));
    if (w == NULL || th == NULL || lat == NULL) {
        free(w), free(th), free(lat);
        return -ENOMEM;
    }
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)clients + 1);
    for (int i = 0; i < clients; i++) {
        w[i] = (worker){ socket, pings, lat + (size_t)i * (size_t)pings, 0, &start };
        pthread_create(&th[i], NULL, worker_main, &w[i]);
    }
    pthread_barrier_wait(&start);
    double t0 = now_s();
    for (int i = 0; i < clients; i++)
        pthread_join(th[i], NULL);
    double wall = now_s() - t0;
    pthread_barrier_destroy(&start);

    size_t n = (size_t)clients * (size_t)pings;
    double sum = 0;
    out->errors = 0;
    for (int i = 0; i < clients; i++)
        out->errors += w[i].errors;
    for (size_t i = 0; i < n; i++)
        sum += lat[i];
    qsort(lat, n, sizeof(*lat), cmp_double);
    out->clients = clients;
    out->pings = pings;
    out->p50_us = percentile(lat, n, 50);
    out->p99_us = percentile(lat, n, 99);
    out->mean_us = sum / (double)n;
    out->max_us = lat[n - 1];
    out->req_per_s = (double)n / wall;
    free(w), free(th), free(lat);
    return 0;
}

static void cpu_model(char *buf, size_t size)
{
    snprintf(buf, size, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "re");
    if (f == NULL)
        return;
    char line[256];
    while (fgets(line, sizeof(line), f) != NULL) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon != NULL) {
            snprintf(buf, size, "%s", colon + 2);
            buf[strcspn(buf, "\n")] = '\0';
            break;
        }
    }
    fclose(f);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: sinkd-bench-ipc [--socket PATH] [--pings N] [--clients N] "
               "[--json-out FILE]\n"
               "  --socket PATH    measure a running daemon (default: start one)\n"
               "  --pings N        pings of the single client (default 20000);\n"
               "                   each concurrent client sends N / clients\n"
               "  --clients N      concurrent clients of the second run (default 32)\n"
               "  --json-out FILE  results as JSON (default bench-ipc.json)\n");
}

int main(int argc, char **argv)
{
    const char *socket = NULL, *json_out = "bench-ipc.json";
    long pings = 20000, clients = 32;
    static const struct option opts[] = {
        { "socket", required_argument, NULL, 's' },
        { "pings", required_argument, NULL, 'n' },
        { "clients", required_argument, NULL, 'c' },
        { "json-out", required_argument, NULL, 'o' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case 's': socket = optarg; break;
        case 'n': pings = strtol(optarg, NULL, 10); break;
        case 'c': clients = strtol(optarg, NULL, 10); break;
        case 'o': json_out = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || pings < 100 || clients < 1 || clients > 1024 || pings / clients < 1) {
        usage(stderr);
        return 2;
    }

    sinkd_testd d = SINKD_TESTD_INIT;
    if (socket == NULL) {
        int rc = sinkd_testd_start(&d, NULL, NULL);
        if (rc != 0) {
            fprintf(stderr, "sinkd-bench-ipc: cannot start sinkd: %s\n", strerror(-rc));
            return 1;
        }
        socket = d.socket_path;
    }

    run runs[2];
    int nruns = 0, rc = measure(socket, 1, pings, &runs[nruns++]);
    if (rc == 0 && clients > 1)
        rc = measure(socket, (int)clients, pings / clients, &runs[nruns++]);
    if (d.pid > 0)
        sinkd_testd_stop(&d);
    sinkd_testd_free(&d);
    if (rc != 0) {
        fprintf(stderr, "sinkd-bench-ipc: %s\n", strerror(-rc));
        return 1;
    }

    char cpu[128], host[2 * sizeof(((struct utsname *)0)->release) + 2] = "";
    struct utsname u;
    cpu_model(cpu, sizeof(cpu));
    if (uname(&u) == 0)
        snprintf(host, sizeof(host), "%.64s %.64s", u.sysname, u.release);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    printf("sinkd IPC: ping round trip through libsinkd\n"
           "machine: %s, %ld CPUs, %s\n\n"
           "%8s %10s %10s %10s %10s %10s %12s %7s\n",
           cpu, ncpu, host, "clients", "pings", "p50 us", "p99 us", "mean us", "max us",
           "requests/s", "errors");
    for (int i = 0; i < nruns; i++)
        printf("%8d %10ld %10.1f %10.1f %10.1f %10.1f %12.0f %7ld\n", runs[i].clients,
               runs[i].pings * runs[i].clients, runs[i].p50_us, runs[i].p99_us,
               runs[i].mean_us, runs[i].max_us, runs[i].req_per_s, runs[i].errors);

    FILE *f = fopen(json_out, "we");
    if (f == NULL) {
        fprintf(stderr, "sinkd-bench-ipc: %s: %s\n", json_out, strerror(errno));
        return 1;
    }
    fprintf(f, "{\"benchmark\":\"ipc\",\"machine\":{\"cpu\":\"%s\",\"cpus\":%ld,\"os\":\"%s\"},"
               "\"runs\":[", cpu, ncpu, host);
    for (int i = 0; i < nruns; i++)
        fprintf(f, "%s{\"clients\":%d,\"pings\":%ld,\"p50_us\":%.2f,\"p99_us\":%.2f,"
                   "\"mean_us\":%.2f,\"max_us\":%.2f,\"requests_per_s\":%.0f,\"errors\":%ld}",
                i > 0 ? "," : "", runs[i].clients, runs[i].pings * runs[i].clients,
                runs[i].p50_us, runs[i].p99_us, runs[i].mean_us, runs[i].max_us,
                runs[i].req_per_s, runs[i].errors);
    fprintf(f, "]}\n");
    fclose(f);
    printf("\nwrote %s\n", json_out);
    long errors = 0;
    for (int i = 0; i < nruns; i++)
        errors += runs[i].errors;
    return errors == 0 ? 0 : 1;
}
