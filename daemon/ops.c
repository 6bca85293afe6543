#include "ops.h"
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define SINKD_OPS(table) table,
static const sinkd_op *const ops__tables[] = {
#include "ops_list.h"
};
#undef SINKD_OPS

#define OPS__NTABLES (sizeof ops__tables / sizeof ops__tables[0])

const sinkd_op *sinkd_ops_find(const char *name, size_t len)
{
    for (size_t t = 0; t < OPS__NTABLES; t++)
        for (const sinkd_op *op = ops__tables[t]; op->name; op++)
            if (strlen(op->name) == len && !memcmp(op->name, name, len))
                return op;
    return NULL;
}

int sinkd_ops_check(void)
{
    for (size_t t = 0; t < OPS__NTABLES; t++) {
        for (const sinkd_op *op = ops__tables[t]; op->name; op++) {
            if (!op->fn) {
                sinkd_log(SINKD_LOG_ERR, "op '%s' has no handler", op->name);
                return -EINVAL;
            }
            if (sinkd_ops_find(op->name, strlen(op->name)) != op) {
                sinkd_log(SINKD_LOG_ERR, "op '%s' is defined twice", op->name);
                return -EEXIST;
            }
        }
    }
    return 0;
}

/* Queue a whole frame; a failed allocation of an answer drops the
 * connection rather than leave the client waiting forever. */
static int ops__queue(sinkd_conn *c, uint8_t *frame, size_t len)
{
    if (!frame) {
        sinkd_log(SINKD_LOG_ERR, "conn %llu: out of memory building an answer: dropping",
                  (unsigned long long)c->id);
        sinkd_conn_close(c);
        return -EPIPE;
    }
    return sinkd_conn_send(c, frame, len);
}

static int ops__verror(sinkd_conn *c, uint64_t id, bool has_id, sinkd_errcode code,
                       const char *fmt, va_list ap)
{
    char msg[512];
    size_t len = 0;
    uint8_t *frame;

    vsnprintf(msg, sizeof msg, fmt, ap);
    frame = sinkd_frame_error(id, has_id, code, msg, &len);
    return ops__queue(c, frame, len);
}

__attribute__((format(printf, 5, 6)))
static int ops__error(sinkd_conn *c, uint64_t id, bool has_id, sinkd_errcode code,
                      const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = ops__verror(c, id, has_id, code, fmt, ap);
    va_end(ap);
    return rc;
}

int sinkd_req_error(sinkd_req *r, sinkd_errcode code, const char *fmt, ...)
{
    va_list ap;
    int rc;

    r->answered = true;
    va_start(ap, fmt);
    rc = ops__verror(r->conn, r->id, true, code, fmt, ap);
    va_end(ap);
    return rc;
}

int sinkd_req_begin_reply(sinkd_req *r, sinkd_fw *w, uint32_t extra)
{
    int rc = sinkd_fw_init(w);

    if (rc < 0)
        return rc;
    sinkd_pack_reply_head(&w->pk, r->id, extra);
    r->reply_pending = true;
    return 0;
}

int sinkd_req_begin_event(sinkd_req *r, sinkd_fw *w, const char *ev, uint32_t extra)
{
    int rc = sinkd_fw_init(w);

    if (rc < 0)
        return rc;
    sinkd_pack_event_head(&w->pk, r->id, ev, extra);
    return 0;
}

int sinkd_req_send(sinkd_req *r, sinkd_fw *w)
{
    long n = sinkd_fw_finish(w, (size_t)r->srv->cfg.max_frame);
    bool reply = r->reply_pending;
    uint8_t *frame;
    size_t len;

    r->reply_pending = false;
    if (n < 0) {
        sinkd_fw_free(w);
        return (int)n;
    }
    frame = sinkd_fw_release(w, &len);
    sinkd_fw_free(w);
    if (!frame)
        return -ENOMEM;
    if (reply)
        r->answered = true;
    return sinkd_conn_send(r->conn, frame, len);
}

int sinkd_req_ok(sinkd_req *r)
{
    sinkd_fw w;
    int rc = sinkd_req_begin_reply(r, &w, 0);

    if (rc < 0)
        return rc;
    return sinkd_req_send(r, &w);
}

static int ops__bad_field(sinkd_req *r, const char *field, const char *expected, int why)
{
    sinkd_req_error(r, SINKD_ERR_BAD_REQUEST, why == -ENOENT ? "field '%s': missing (%s)"
                                                             : "field '%s': expected %s",
                    field, expected);
    return -EINVAL;
}

int sinkd_req_u64(sinkd_req *r, const char *field, bool required, uint64_t *v)
{
    int rc = sinkd_map_u64(r->args, field, v);

    if (rc == 0)
        return 1;
    if (rc == -ENOENT && !required)
        return 0;
    return ops__bad_field(r, field, "unsigned integer", rc);
}

int sinkd_req_str(sinkd_req *r, const char *field, bool required, const char **s, size_t *len)
{
    int rc = sinkd_map_str(r->args, field, s, len);

    if (rc == 0)
        return 1;
    if (rc == -ENOENT && !required)
        return 0;
    return ops__bad_field(r, field, "string", rc);
}

int sinkd_req_take_fd(sinkd_req *r)
{
    return sinkd_conn_take_fd(r->conn);
}

/* Printable, bounded copy of a client-supplied name for messages and logs. */
static void ops__printable(char *dst, size_t cap, const char *s, size_t len)
{
    size_t n = len < cap - 1 ? len : cap - 1;

    for (size_t i = 0; i < n; i++)
        dst[i] = (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\'') ? s[i] : '?';
    dst[n] = '\0';
}

static void ops__run(sinkd_conn *c, const sinkd_msg *m)
{
    sinkd_req r = { c->srv, c, c->id, 0, NULL, &m->root, false, false };
    char name[65];
    const char *opname;
    const sinkd_op *op;
    size_t oplen;
    int rc;

    rc = sinkd_map_u64(&m->root, "id", &r.id);
    if (rc < 0) {
        ops__error(c, 0, false, SINKD_ERR_BAD_REQUEST,
                   rc == -ENOENT ? "field 'id': missing (unsigned integer)"
                                 : "field 'id': expected unsigned integer");
        return;
    }
    if (sinkd_req_str(&r, "op", true, &opname, &oplen) < 0)
        return;
    op = sinkd_ops_find(opname, oplen);
    ops__printable(name, sizeof name, opname, oplen);
    if (!op) {
        sinkd_req_error(&r, SINKD_ERR_UNKNOWN_OP, "unknown op '%s'", name);
        return;
    }
    r.op = op->name;
    sinkd_log(SINKD_LOG_DEBUG, "conn %llu: %s id %llu", (unsigned long long)c->id, op->name,
              (unsigned long long)r.id);
    if ((op->flags & SINKD_OP_ADMIN) && !c->admin) {
        sinkd_req_error(&r, SINKD_ERR_PERMISSION_DENIED,
                        "op '%s' needs root or membership of admin_group", op->name);
        return;
    }
    rc = op->fn(&r);
    if (rc == SINKD_REQ_DEFERRED || (rc == 0 && r.answered) || c->closed)
        return;
    if (rc == 0) {
        sinkd_log(SINKD_LOG_ERR, "op '%s' returned without answering", op->name);
        rc = -EPROTO;
    }
    if (!r.answered)
        sinkd_req_error(&r, rc == -ENOMEM ? SINKD_ERR_NO_MEMORY : SINKD_ERR_INTERNAL,
                        "%s: %s", op->name, strerror(-rc));
}

void sinkd_ops_dispatch(sinkd_conn *c, const uint8_t *payload, size_t len)
{
    const char *why = NULL;
    sinkd_msg m;
    int rc = sinkd_msg_decode(payload, len, &m, &why);

    if (rc == -ENOMEM) {
        ops__error(c, 0, false, SINKD_ERR_NO_MEMORY, "out of memory decoding the request");
        return;
    }
    if (rc < 0) {
        sinkd_log(SINKD_LOG_NOTICE, "conn %llu: undecodable frame (%s): closing",
                  (unsigned long long)c->id, why ? why : "invalid msgpack");
        sinkd_conn_fail(c, SINKD_ERR_BAD_FRAME, why ? why : "invalid msgpack");
        return;
    }
    ops__run(c, &m);
    sinkd_msg_free(&m);
}
