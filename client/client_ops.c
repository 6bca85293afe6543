/*
 * libsinkd: typed calls of the foundation ops (ping, status, shutdown).
 */
#include "client_internal.h"

#include <errno.h>

/* Send the field-less request @op and keep its reply in @rep. */
static int ops__call(sinkd_client *c, const char *op, int timeout_ms,
                     sinkd_client_reply *rep)
{
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.op = op;
    req.timeout_ms = timeout_ms;
    return sinkd_client_request(c, &req, rep);
}

int sinkd_client_ping(sinkd_client *c, int timeout_ms, uint64_t *t_ns)
{
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = ops__call(c, "ping", timeout_ms, &rep);
    uint64_t t = 0;
    if (rc == 0 && sinkd_map_u64(rep.map, "t_ns", &t) != 0)
        rc = -EPROTO;
    if (rc == 0 && t_ns != NULL)
        *t_ns = t;
    sinkd_client_reply_free(&rep);
    return rc;
}

int sinkd_client_status_decode(const msgpack_object *reply, sinkd_client_status *st)
{
    if (reply == NULL || st == NULL)
        return -EINVAL;
    const msgpack_object *backend, *memory;
    uint64_t proto;
    if (client__copy_str(reply, "version", st->version, sizeof(st->version)) != 0 ||
        sinkd_map_u64(reply, "proto", &proto) != 0 || proto > UINT32_MAX ||
        sinkd_map_u64(reply, "pid", &st->pid) != 0 ||
        sinkd_map_f64(reply, "uptime_s", &st->uptime_s) != 0 ||
        sinkd_map_u64(reply, "connections", &st->connections) != 0 ||
        sinkd_map_u64(reply, "sessions", &st->sessions) != 0 ||
        sinkd_map_map(reply, "backend", &backend) != 0 ||
        client__copy_str(backend, "name", st->backend, sizeof(st->backend)) != 0 ||
        client__copy_str(backend, "device", st->device, sizeof(st->device)) != 0 ||
        sinkd_map_u64(backend, "mem_total", &st->mem_total) != 0 ||
        sinkd_map_u64(backend, "mem_free", &st->mem_free) != 0 ||
        sinkd_map_map(reply, "memory", &memory) != 0 ||
        sinkd_map_u64(memory, "rss_bytes", &st->rss_bytes) != 0 ||
        sinkd_map_u64(memory, "kv_pool_bytes", &st->kv_pool_bytes) != 0 ||
        sinkd_map_u64(memory, "kv_used_bytes", &st->kv_used_bytes) != 0)
        return -EPROTO;
    st->proto = (uint32_t)proto;
    return 0;
}

int sinkd_client_status_get(sinkd_client *c, int timeout_ms, sinkd_client_status *st)
{
    if (st == NULL)
        return -EINVAL;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = ops__call(c, "status", timeout_ms, &rep);
    if (rc == 0)
        rc = sinkd_client_status_decode(rep.map, st);
    sinkd_client_reply_free(&rep);
    return rc;
}

int sinkd_client_shutdown(sinkd_client *c, int timeout_ms)
{
    return ops__call(c, "shutdown", timeout_ms, NULL);
}
