/*
 * libsinkd internals shared by the library's own files; not installed.
 */
#ifndef SINKD_CLIENT_INTERNAL_H
#define SINKD_CLIENT_INTERNAL_H

#include "client.h"

#define CLIENT_ERRMSG_MAX 512

struct sinkd_client {
    int fd;                      /* connected AF_UNIX stream socket */
    int dead;                    /* sticky transport error, or 0 */
    uint64_t next_id;            /* id of the next request */
    sinkd_frame_reader rd;       /* incoming bytes */
    sinkd_client_info info;      /* from hello */
    char errmsg[CLIENT_ERRMSG_MAX]; /* message of the last error reply */
};

/* Copy the str field @key of @map into @dst of @size bytes (truncated,
 * NUL-terminated). Returns 0 or the getter's -ENOENT/-EINVAL. */
int client__copy_str(const msgpack_object *map, const char *key, char *dst, size_t size);

/* sinkd_client_request; with @idle the deadline is re-armed at each event of
 * the request, so req->timeout_ms bounds every wait, not the whole stream. */
int client__request(sinkd_client *c, const sinkd_client_req *req,
                    sinkd_client_reply *reply, bool idle);

/* Send @req without waiting for it. Its reply and events are dropped when
 * they arrive (a waiting request discards frames of other ids), so it is for
 * fire-and-forget requests such as session.cancel sent from inside an event
 * callback of the pending request. Returns 0 or a negative errno. */
int client__send_nowait(sinkd_client *c, const sinkd_client_req *req);

/* Request fields packed ahead of the request, counted as they go, so calls
 * with optional fields need not count them twice. Each client__arg packs a
 * key and returns the packer for its value. An allocation failure is sticky
 * and surfaces as -ENOMEM from the request. */
typedef struct client__args {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint32_t n;        /* pairs packed */
    int err;           /* 0 or -ENOMEM */
} client__args;

static inline int client__pack_bool(msgpack_packer *pk, bool b)
{
    return b ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
}

void client__args_init(client__args *a);
void client__args_free(client__args *a);
msgpack_packer *client__arg(client__args *a, const char *key);

/* Send @op with the fields in @a (NULL: none) and the other settings of
 * @req (op, nfields, pack and pack_arg are overwritten). Returns as
 * client__request. */
int client__call(sinkd_client *c, const char *op, client__args *a, sinkd_client_req *req,
                 sinkd_client_reply *reply, bool idle);

/* Send @op with the fields in @a without waiting (client__send_nowait). */
int client__send_args(sinkd_client *c, const char *op, client__args *a, int timeout_ms);

/* client__call of @op with @a (NULL: no fields), then the unsigned field
 * @key of the reply into *@v (may be NULL; -EPROTO when it is missing). */
int client__call_u64(sinkd_client *c, const char *op, client__args *a, int timeout_ms,
                     const char *key, uint64_t *v);

/* client__call of the field-less @op, then client__decode_list of its
 * reply. */
int client__call_list(sinkd_client *c, const char *op, int timeout_ms, const char *key,
                      size_t size, int (*one)(const msgpack_object *m, void *dst),
                      void **out, size_t *n);

/* Unsigned field @key of @map that fits in 32 bits. 0, -ENOENT or -EINVAL. */
int client__u32(const msgpack_object *map, const char *key, uint32_t *v);

/* The array field @key of maps, decoded into a new array of @n entries of
 * @size bytes by @one (0 or -EPROTO). Returns 0, -EPROTO or -ENOMEM. */
int client__decode_list(const msgpack_object *reply, const char *key, size_t size,
                        int (*one)(const msgpack_object *m, void *dst),
                        void **out, size_t *n);

/* A request whose only field is {session: @session}; @reply as in
 * client__call. */
int client__session_call(sinkd_client *c, const char *op, uint64_t session, int timeout_ms,
                         sinkd_client_reply *reply);

/* Decode the fields session.open, session.attach and session.restore
 * answer into @info. 0, or -EPROTO when one is missing or mistyped. */
int client__session_info(const msgpack_object *reply, sinkd_client_session_info *info);

/* Size of the fallback fields of the result structs. */
#define CLIENT_FALLBACK_MAX 128
_Static_assert(sizeof(((sinkd_client_gen_result *)0)->fallback) == CLIENT_FALLBACK_MAX &&
               sizeof(((sinkd_client_append_result *)0)->fallback) == CLIENT_FALLBACK_MAX,
               "fallback fields");

/* Event callback that keeps the reason of a policy_fallback event in the
 * char[CLIENT_FALLBACK_MAX] @arg and ignores other events. */
void client__on_fallback(void *arg, const char *ev, size_t ev_len, const msgpack_object *event);

#endif /* SINKD_CLIENT_INTERNAL_H */
