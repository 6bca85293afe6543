/*
 * libsinkd: the policy registry (policy.list/load/reload/unload).
 */
#include "client_internal.h"

#include <errno.h>
#include <stdio.h>

static int policy__entry(const msgpack_object *m, void *dst)
{
    sinkd_client_policy *p = dst;
    if (client__copy_str(m, "name", p->name, sizeof(p->name)) != 0 ||
        client__copy_str(m, "version", p->version, sizeof(p->version)) != 0 ||
        client__copy_str(m, "summary", p->summary, sizeof(p->summary)) != 0 ||
        client__copy_str(m, "path", p->path, sizeof(p->path)) != 0 ||
        sinkd_map_bool(m, "builtin", &p->builtin) != 0 ||
        sinkd_map_u64(m, "instances", &p->instances) != 0 ||
        sinkd_map_u64(m, "generation", &p->generation) != 0)
        return -EPROTO;
    return 0;
}

int sinkd_client_policy_decode(const msgpack_object *entry, sinkd_client_policy *policy)
{
    if (entry == NULL || policy == NULL)
        return -EINVAL;
    return entry->type == MSGPACK_OBJECT_MAP ? policy__entry(entry, policy) : -EPROTO;
}

int sinkd_client_policy_list_decode(const msgpack_object *reply,
                                    sinkd_client_policy **policies, size_t *n)
{
    if (reply == NULL || policies == NULL || n == NULL)
        return -EINVAL;
    return client__decode_list(reply, "policies", sizeof(**policies), policy__entry,
                               (void **)policies, n);
}

int sinkd_client_policy_list(sinkd_client *c, int timeout_ms,
                             sinkd_client_policy **policies, size_t *n)
{
    return client__call_list(c, "policy.list", timeout_ms, "policies", sizeof(**policies),
                             policy__entry, (void **)policies, n);
}

/* @op with the one str field @key = @value; the reply stays in @rep. */
static int policy__call(sinkd_client *c, const char *op, const char *key, const char *value,
                        int timeout_ms, sinkd_client_reply *rep)
{
    if (c == NULL || value == NULL || value[0] == '\0')
        return -EINVAL;
    client__args a;
    client__args_init(&a);
    sinkd_pack_str(client__arg(&a, key), value);
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.timeout_ms = timeout_ms;
    int rc = client__call(c, op, &a, &req, rep, false);
    client__args_free(&a);
    return rc;
}

int sinkd_client_policy_load(sinkd_client *c, const char *path, int timeout_ms,
                             char *name, size_t name_size)
{
    if (name != NULL && name_size == 0)
        return -EINVAL;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = policy__call(c, "policy.load", "path", path, timeout_ms, &rep);
    char got[64];
    if (rc == 0 && client__copy_str(rep.map, "name", got, sizeof(got)) != 0)
        rc = -EPROTO;
    if (rc == 0 && name != NULL)
        snprintf(name, name_size, "%s", got);
    sinkd_client_reply_free(&rep);
    return rc;
}

int sinkd_client_policy_reload(sinkd_client *c, const char *name, int timeout_ms,
                               uint64_t *generation)
{
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = policy__call(c, "policy.reload", "name", name, timeout_ms, &rep);
    uint64_t gen = 0;
    if (rc == 0 && sinkd_map_u64(rep.map, "generation", &gen) != 0)
        rc = -EPROTO;
    if (rc == 0 && generation != NULL)
        *generation = gen;
    sinkd_client_reply_free(&rep);
    return rc;
}

int sinkd_client_policy_unload(sinkd_client *c, const char *name, int timeout_ms)
{
    return policy__call(c, "policy.unload", "name", name, timeout_ms, NULL);
}
