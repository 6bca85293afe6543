/*
 * Request dispatch. Each component declares its ops in a table of its own
 * file and adds one line to daemon/ops_list.h:
 *
 *     // daemon/ops_session.c
 *     static int op_open(sinkd_req *r) { ... return sinkd_req_ok(r); }
 *     const sinkd_op sinkd_ops_session[] = {
 *         { "session.open", op_open, 0 },
 *         { NULL, NULL, 0 },
 *     };
 *     // daemon/ops_list.h
 *     SINKD_OPS(sinkd_ops_session)
 *
 * The dispatcher decodes the frame, checks "id" and "op", finds the op,
 * checks SINKD_OP_ADMIN against the connection, and calls the handler on the
 * loop thread. A handler answers exactly once: a reply or an error, sent with
 * the helpers below (events, if any, go before the reply). The request map
 * and everything in it live only until the handler returns.
 *
 * Handler return values:
 *   0                   a reply or error was sent
 *   SINKD_REQ_DEFERRED  the answer comes later, e.g. from the engine thread
 *                       through sinkd_server_post() with r->conn_id and r->id
 *   < 0 (-errno)        failure; if nothing was sent yet the dispatcher
 *                       answers no_memory (-ENOMEM) or internal
 */
#ifndef SINKD_OPS_H
#define SINKD_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"
#include "conn.h"
#include "server.h"

#define SINKD_OP_ADMIN 0x1u   /* root or admin_group only */

#define SINKD_REQ_DEFERRED 1

typedef struct sinkd_req {
    sinkd_server *srv;
    sinkd_conn *conn;            /* valid until the handler returns */
    uint64_t conn_id;            /* valid forever: for deferred answers */
    uint64_t id;                 /* the client's request id */
    const char *op;              /* the op's name (static) */
    const msgpack_object *args;  /* the request map (op and id included) */
    bool answered;               /* a reply or an error went out */
    bool reply_pending;          /* begin_reply called, reply not sent yet */
} sinkd_req;

typedef int (*sinkd_op_fn)(sinkd_req *r);

typedef struct sinkd_op {
    const char *name;   /* NULL ends a table */
    sinkd_op_fn fn;
    unsigned flags;     /* SINKD_OP_* */
} sinkd_op;

#define SINKD_OPS(table) extern const sinkd_op table[];
#include "ops_list.h"
#undef SINKD_OPS

/* Decode and answer one frame of @c (loop thread). A frame that fails the
 * guarded decode gets bad_frame and the connection is finished; every other
 * error is answered and the connection stays usable. */
void sinkd_ops_dispatch(sinkd_conn *c, const uint8_t *payload, size_t len);

/* The op named @name (@len bytes), or NULL. */
const sinkd_op *sinkd_ops_find(const char *name, size_t len);

/* Check the op tables: every op has a handler and a unique name. Returns 0,
 * or -EEXIST/-EINVAL naming the culprit in the log. Called once at start. */
int sinkd_ops_check(void);

/* Start a reply: initialises @w and packs {id, ok: true} plus room for
 * @extra more pairs, which the caller packs before sinkd_req_send. Returns 0
 * or -ENOMEM. */
int sinkd_req_begin_reply(sinkd_req *r, sinkd_fw *w, uint32_t extra);

/* Start an event {id, ev: @ev} with @extra more pairs. 0 or -ENOMEM. */
int sinkd_req_begin_event(sinkd_req *r, sinkd_fw *w, const char *ev, uint32_t extra);

/* Finish the frame in @w and queue it on the connection; @w is released in
 * every case. Returns 0, -EMSGSIZE (frame over max_frame: an internal error
 * is sent instead when this was the reply), -ENOMEM, or -EPIPE when the
 * connection went away. */
int sinkd_req_send(sinkd_req *r, sinkd_fw *w);

/* Reply {id, ok: true} with no other field. */
int sinkd_req_ok(sinkd_req *r);

/* Answer with error @code and a printf-style message. Returns 0 or -EPIPE
 * (a failed allocation drops the connection: the client cannot be left
 * waiting for an answer that will never come). */
int sinkd_req_error(sinkd_req *r, sinkd_errcode code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Request fields. Each returns 1 when present (filling the output), 0 when
 * absent and not @required (output untouched), or -EINVAL after answering
 * bad_request naming the field (absent but required, or wrong type). */
int sinkd_req_u64(sinkd_req *r, const char *field, bool required, uint64_t *v);
int sinkd_req_str(sinkd_req *r, const char *field, bool required, const char **s, size_t *len);

/* Take the next file descriptor that arrived with this request's frame.
 * The caller owns it. Returns the fd or -ENOENT. */
int sinkd_req_take_fd(sinkd_req *r);

#endif /* SINKD_OPS_H */
