#include "trust.h"

#include <errno.h>
#include <grp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int trust_start(sinkd_testd *d, const char *conf)
{
    const char *args[] = { "--model", "tiny=" TRUST_MODEL, NULL };

    return sinkd_testd_start(d, conf, args);
}

/* Become @uid/@gid/@group (effective ids only) or, with @back, root again. */
static int trust__become(uid_t uid, gid_t gid, gid_t group, bool back)
{
    if (back)
        return seteuid(0) == 0 && setegid(0) == 0 && setgroups(0, NULL) == 0 ? 0 : -errno;
    if (setgroups(group == (gid_t)-1 ? 0 : 1, &group) < 0 || setegid(gid) < 0 ||
        seteuid(uid) < 0)
        return -errno;
    return 0;
}

int trust_connect_as(const sinkd_testd *d, uid_t uid, gid_t gid, gid_t group,
                     sinkd_client **out)
{
    int rc = trust__become(uid, gid, group, false);

    if (rc == 0)
        rc = sinkd_client_connect(d->socket_path, 10000, out);
    if (trust__become(0, 0, 0, true) < 0)
        abort(); /* a test left running as another uid proves nothing */
    return rc;
}

int trust_connect_raw_as(const sinkd_testd *d, uid_t uid, gid_t gid)
{
    int rc = trust__become(uid, gid, (gid_t)-1, false);

    if (rc == 0)
        rc = sinkd_testd_connect_raw(d);
    if (trust__become(0, 0, 0, true) < 0)
        abort();
    return rc;
}

/* Pack "key:type" words of @spec with values from @ap. 0 or -EINVAL. */
static int trust__vpack(msgpack_packer *pk, const char *spec, va_list ap)
{
    char key[64];

    while (spec && *spec) {
        const char *colon = strchr(spec, ':');
        size_t kl = colon ? (size_t)(colon - spec) : 0;
        if (!colon || kl == 0 || kl >= sizeof key)
            return -EINVAL;
        memcpy(key, spec, kl);
        key[kl] = '\0';
        sinkd_pack_str(pk, key);
        switch (colon[1]) {
        case 'u': msgpack_pack_uint64(pk, va_arg(ap, uint64_t)); break;
        case 'i': msgpack_pack_int64(pk, va_arg(ap, int64_t)); break;
        case 's': sinkd_pack_str(pk, va_arg(ap, const char *)); break;
        case 'b':
            if (va_arg(ap, int))
                msgpack_pack_true(pk);
            else
                msgpack_pack_false(pk);
            break;
        case 'r': {
            uint64_t shm = va_arg(ap, uint64_t), off = va_arg(ap, uint64_t);
            msgpack_pack_map(pk, 2);
            sinkd_pack_kv_u64(pk, "shm", shm);
            sinkd_pack_kv_u64(pk, "offset", off);
            break;
        }
        default: return -EINVAL;
        }
        spec = colon + 2;
        while (*spec == ' ')
            spec++;
    }
    return 0;
}

static uint32_t trust__nfields(const char *spec)
{
    uint32_t n = 0;

    for (; spec && *spec; spec++)
        n += *spec == ':';
    return n;
}

/* @sb gets {op, id, fields} (@op non-NULL) or just the fields map. Returns 0
 * or -EINVAL (@sb is then destroyed). */
static int trust__build(msgpack_sbuffer *sb, const char *op, uint64_t id, const char *spec,
                        va_list ap)
{
    msgpack_packer pk;
    int rc;

    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    if (op)
        sinkd_pack_request_head(&pk, op, id, trust__nfields(spec));
    else
        msgpack_pack_map(&pk, trust__nfields(spec));
    rc = trust__vpack(&pk, spec, ap);
    if (rc < 0)
        msgpack_sbuffer_destroy(sb);
    return rc;
}

int trust_call(sinkd_client *c, sinkd_client_reply *rep, const char *op, const char *spec, ...)
{
    sinkd_client_req r = SINKD_CLIENT_REQ_INIT;
    msgpack_sbuffer sb;
    va_list ap;
    int rc;

    va_start(ap, spec);
    rc = trust__build(&sb, NULL, 0, spec, ap);
    va_end(ap);
    if (rc < 0)
        return rc;
    r.op = op;
    r.fields = sb.data;
    r.fields_len = sb.size;
    r.timeout_ms = 60000;
    rc = sinkd_client_request(c, &r, rep);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

uint8_t *trust_pack(size_t *len, const char *op, uint64_t id, const char *spec, ...)
{
    msgpack_sbuffer sb;
    va_list ap;
    int rc;

    va_start(ap, spec);
    rc = trust__build(&sb, op, id, spec, ap);
    va_end(ap);
    if (rc < 0)
        return NULL;
    *len = sb.size;
    return (uint8_t *)msgpack_sbuffer_release(&sb);
}

uint64_t trust_u64(const sinkd_client_reply *rep, const char *key)
{
    uint64_t v = 0;

    if (rep->map)
        sinkd_map_u64(rep->map, key, &v);
    return v;
}

uint64_t trust_open(sinkd_client *c, const char *text)
{
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    uint64_t s;

    if (trust_call(c, &rep, "session.open", "model:s", "tiny") != 0)
        return 0;
    s = trust_u64(&rep, "session");
    sinkd_client_reply_free(&rep);
    if (text && trust_call(c, NULL, "session.append", "session:u text:s", s, text) != 0)
        return 0;
    return s;
}

uint64_t trust_open_raw(sinkd_client *c, uint32_t layers, uint32_t q_heads, uint32_t kv_heads,
                        uint32_t head_dim)
{
    sinkd_client_req r = SINKD_CLIENT_REQ_INIT;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint64_t s = 0;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 1);
    sinkd_pack_str(&pk, "geometry");
    msgpack_pack_map(&pk, 4);
    sinkd_pack_kv_u64(&pk, "layers", layers);
    sinkd_pack_kv_u64(&pk, "q_heads", q_heads);
    sinkd_pack_kv_u64(&pk, "kv_heads", kv_heads);
    sinkd_pack_kv_u64(&pk, "head_dim", head_dim);
    r.op = "session.open";
    r.fields = sb.data;
    r.fields_len = sb.size;
    if (sinkd_client_request(c, &r, &rep) == 0)
        s = trust_u64(&rep, "session");
    sinkd_client_reply_free(&rep);
    msgpack_sbuffer_destroy(&sb);
    return s;
}

bool trust_errmsg_has(sinkd_client *c, const char *needle)
{
    const char *m = sinkd_client_errmsg(c);

    return m && strstr(m, needle) != NULL;
}
