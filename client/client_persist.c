/*
 * libsinkd: persistent sessions and snapshots (session.attach, save,
 * restore, forget).
 */
#include "client_internal.h"

#include <errno.h>
#include <string.h>

/* The reply of attach and restore: the session, as session.open describes
 * it, and n_past. Decoded into locals first so that the caller's @info is
 * written only on success. */
static int persist__reopened(sinkd_client *c, const char *op, client__args *a, int timeout_ms,
                             sinkd_client_session_info *info, uint64_t *n_past)
{
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.timeout_ms = timeout_ms;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    sinkd_client_session_info got;
    uint64_t past = 0;
    int rc = client__call(c, op, a, &req, &rep, false);
    if (rc == 0 && (client__session_info(rep.map, &got) != 0 ||
                    sinkd_map_u64(rep.map, "n_past", &past) != 0))
        rc = -EPROTO;
    if (rc == 0 && info != NULL)
        *info = got;
    if (rc == 0 && n_past != NULL)
        *n_past = past;
    /* got.secret resumes the session: no copy of it outlives this call
     * but the caller's */
    explicit_bzero(&got, sizeof(got));
    sinkd_client_reply_free(&rep);
    return rc;
}

int sinkd_client_session_attach(sinkd_client *c, uint64_t session, const char *secret,
                                int timeout_ms, sinkd_client_session_info *info,
                                uint64_t *n_past)
{
    if (c == NULL || secret == NULL || secret[0] == '\0')
        return -EINVAL;
    client__args a;
    client__args_init(&a);
    msgpack_pack_uint64(client__arg(&a, "session"), session);
    sinkd_pack_str(client__arg(&a, "secret"), secret);
    int rc = persist__reopened(c, "session.attach", &a, timeout_ms, info, n_past);
    client__args_free(&a);
    return rc;
}

int sinkd_client_session_save(sinkd_client *c, uint64_t session, int timeout_ms,
                              char *path, size_t path_size)
{
    if (c == NULL || (path != NULL && path_size == 0))
        return -EINVAL;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = client__session_call(c, "session.save", session, timeout_ms, &rep);
    const char *p;
    size_t len;
    if (rc == 0 && sinkd_map_str(rep.map, "path", &p, &len) != 0)
        rc = -EPROTO;
    if (rc == 0 && path != NULL) {
        /* a cut path names another file: none rather than a wrong one */
        if (len < path_size) {
            memcpy(path, p, len);
            path[len] = '\0';
        } else {
            path[0] = '\0';
            rc = -ENAMETOOLONG;
        }
    }
    sinkd_client_reply_free(&rep);
    return rc;
}

int sinkd_client_session_restore(sinkd_client *c, uint64_t session, const char *path,
                                 int timeout_ms, sinkd_client_session_info *info,
                                 uint64_t *n_past)
{
    if (c == NULL || (path == NULL) == (session == 0) || (path != NULL && path[0] == '\0'))
        return -EINVAL;
    client__args a;
    client__args_init(&a);
    if (path != NULL)
        sinkd_pack_str(client__arg(&a, "path"), path);
    else
        msgpack_pack_uint64(client__arg(&a, "session"), session);
    int rc = persist__reopened(c, "session.restore", &a, timeout_ms, info, n_past);
    client__args_free(&a);
    return rc;
}

int sinkd_client_session_forget(sinkd_client *c, uint64_t session, int timeout_ms)
{
    if (c == NULL)
        return -EINVAL;
    return client__session_call(c, "session.forget", session, timeout_ms, NULL);
}
