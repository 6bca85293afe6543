/* The foundation ops: hello, ping, status, shutdown. */
#include "ops.h"
#include "log.h"
#include "ops_engine.h"

#include <errno.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static uint64_t ops_core__monotonic_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int op_hello(sinkd_req *r)
{
    uint64_t lo = SINKD_PROTO_VERSION_MIN, hi = SINKD_PROTO_VERSION, common;
    const char *client = NULL;
    size_t client_len = 0;
    sinkd_fw w;
    int rc;

    if (sinkd_req_u64(r, "proto_min", false, &lo) < 0 ||
        sinkd_req_u64(r, "proto_max", false, &hi) < 0 ||
        sinkd_req_str(r, "client", false, &client, &client_len) < 0)
        return 0;
    if (lo > hi)
        return sinkd_req_error(r, SINKD_ERR_INVALID_ARGUMENT,
                               "proto_min %llu is above proto_max %llu",
                               (unsigned long long)lo, (unsigned long long)hi);
    common = hi < SINKD_PROTO_VERSION ? hi : SINKD_PROTO_VERSION;
    if (common < lo || common < SINKD_PROTO_VERSION_MIN)
        return sinkd_req_error(r, SINKD_ERR_UNSUPPORTED_VERSION,
                               "client speaks %llu..%llu, sinkd %d..%d",
                               (unsigned long long)lo, (unsigned long long)hi,
                               SINKD_PROTO_VERSION_MIN, SINKD_PROTO_VERSION);
    r->conn->proto = (uint32_t)common;
    if (client)
        sinkd_log(SINKD_LOG_INFO, "conn %llu: hello from '%.*s', protocol %llu",
                  (unsigned long long)r->conn_id, (int)(client_len > 64 ? 64 : client_len),
                  client, (unsigned long long)common);
    rc = sinkd_req_begin_reply(r, &w, 6);
    if (rc < 0)
        return rc;
    sinkd_pack_kv_u64(&w.pk, "proto", common);
    sinkd_pack_kv_str(&w.pk, "server", "sinkd");
    sinkd_pack_kv_str(&w.pk, "version", SINKD_VERSION);
    sinkd_pack_kv_u64(&w.pk, "max_frame", r->srv->cfg.max_frame);
    sinkd_pack_kv_u64(&w.pk, "uid", r->conn->uid);
    sinkd_pack_kv_bool(&w.pk, "admin", r->conn->admin);
    return sinkd_req_send(r, &w);
}

static int op_ping(sinkd_req *r)
{
    sinkd_fw w;
    int rc = sinkd_req_begin_reply(r, &w, 1);

    if (rc < 0)
        return rc;
    sinkd_pack_kv_u64(&w.pk, "t_ns", ops_core__monotonic_ns());
    return sinkd_req_send(r, &w);
}

/* Resident set size from /proc/self/statm (pages), 0 if unreadable. */
static uint64_t ops_core__rss_bytes(void)
{
    unsigned long long size = 0, resident = 0;
    long page = sysconf(_SC_PAGESIZE);
    FILE *f = fopen("/proc/self/statm", "re");

    if (!f)
        return 0;
    if (fscanf(f, "%llu %llu", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return page > 0 ? resident * (uint64_t)page : 0;
}

static int op_status(sinkd_req *r)
{
    sinkd_engine *e = sinkd_engine_ops_engine();
    const sinkd_backend_info *bi = e ? sinkd_engine_backend_info(e) : NULL;
    sinkd_engine_counters *ctr = e ? sinkd_engine_counters_get(e) : NULL;
    sinkd_fw w;
    int rc = sinkd_req_begin_reply(r, &w, 8);

    if (rc < 0)
        return rc;
    sinkd_pack_kv_str(&w.pk, "version", SINKD_VERSION);
    sinkd_pack_kv_u64(&w.pk, "proto", r->conn->proto);
    sinkd_pack_kv_u64(&w.pk, "pid", (uint64_t)getpid());
    sinkd_pack_kv_f64(&w.pk, "uptime_s", (double)(uv_hrtime() - r->srv->start_ns) / 1e9);
    sinkd_pack_str(&w.pk, "backend");
    msgpack_pack_map(&w.pk, 4);
    sinkd_pack_kv_str(&w.pk, "name", bi ? bi->name : "none");
    sinkd_pack_kv_str(&w.pk, "device", bi ? bi->device : "");
    sinkd_pack_kv_u64(&w.pk, "mem_total", bi ? bi->mem_total : 0);
    sinkd_pack_kv_u64(&w.pk, "mem_free", bi ? bi->mem_free : 0);
    sinkd_pack_kv_u64(&w.pk, "connections", r->srv->n_conns);
    sinkd_pack_kv_u64(&w.pk, "sessions", ctr ? atomic_load(&ctr->sessions) : 0);
    sinkd_pack_str(&w.pk, "memory");
    msgpack_pack_map(&w.pk, 3);
    sinkd_pack_kv_u64(&w.pk, "rss_bytes", ops_core__rss_bytes());
    sinkd_pack_kv_u64(&w.pk, "kv_pool_bytes", ctr ? atomic_load(&ctr->kv_pool_bytes) : 0);
    sinkd_pack_kv_u64(&w.pk, "kv_used_bytes", ctr ? atomic_load(&ctr->kv_used_bytes) : 0);
    return sinkd_req_send(r, &w);
}

static int op_shutdown(sinkd_req *r)
{
    int rc = sinkd_req_ok(r);

    sinkd_log(SINKD_LOG_NOTICE, "shutdown requested by uid %u pid %d",
              (unsigned)r->conn->uid, (int)r->conn->pid);
    /* After the reply is queued: the stop flushes it before closing. */
    sinkd_server_stop(r->srv);
    return rc == -EPIPE ? 0 : rc;
}

#ifdef SINKD_DEBUG_OPS
/* debug.stall {ms} (admin; only in daemons built with SINKD_DEBUG_OPS, such
 * as the tests' sinkd-debug): the engine thread sleeps @ms inside one job
 * without a heartbeat, as if stuck, then replies {}. Lets a test watch the
 * watchdog withhold WATCHDOG=1 while the engine makes no progress. */
static int op_debug_stall(sinkd_req *r)
{
    sinkd_engine *e = sinkd_engine_ops_engine();
    sinkd_job *j;
    uint64_t ms;

    if (sinkd_req_u64(r, "ms", true, &ms) < 0)
        return 0;
    if (ms > 600000)
        return sinkd_req_error(r, SINKD_ERR_INVALID_ARGUMENT, "field 'ms': at most 600000");
    if (!e)
        return sinkd_req_error(r, SINKD_ERR_UNSUPPORTED, "this daemon runs no engine");
    j = sinkd_job_new(SINKD_JOB_DEBUG_STALL, r->conn_id, r->id, (uint32_t)r->conn->uid, true);
    if (!j)
        return -ENOMEM;
    j->n = (int32_t)ms;
    sinkd_log(SINKD_LOG_WARNING, "debug.stall: stalling the engine for %llu ms",
              (unsigned long long)ms);
    sinkd_engine_submit(e, j);
    return SINKD_REQ_DEFERRED;
}
#endif

const sinkd_op sinkd_ops_core[] = {
    { "hello", op_hello, 0 },
    { "ping", op_ping, 0 },
    { "status", op_status, 0 },
    { "shutdown", op_shutdown, SINKD_OP_ADMIN },
#ifdef SINKD_DEBUG_OPS
    { "debug.stall", op_debug_stall, SINKD_OP_ADMIN },
#endif
    { NULL, NULL, 0 },
};
