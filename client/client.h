/*
 * libsinkd: the C client library of sinkd. Installed as <sinkd/client.h>;
 * link with `pkg-config --libs sinkd`.
 *
 * A handle (sinkd_client) is one connection to the daemon's Unix socket. It
 * says hello on connect, numbers requests itself, and waits for each reply
 * with a timeout, handing the request's events (if any) to a callback while
 * it waits. The library starts no thread and installs no signal handler; it
 * sends with MSG_NOSIGNAL so a dead daemon is an -EPIPE, never a SIGPIPE.
 *
 * Threads: a handle is used by one thread at a time. Nothing is shared
 * between handles, so different threads may use different handles freely;
 * to share one handle, serialise every call on it with your own lock.
 *
 * Return values, everywhere below:
 *   0                  success
 *   negative errno     the transport failed or an argument was invalid:
 *                      -ENOENT/-ECONNREFUSED (no daemon), -ETIMEDOUT,
 *                      -EPIPE/-ECONNRESET (the daemon went away), -EPROTO
 *                      (the daemon sent something this library cannot read),
 *                      -EINVAL, -ENOMEM, ...
 *   positive value     the daemon answered with an error reply; the value is
 *                      its sinkd_errcode (SINKD_ERR_PERMISSION_DENIED, ...)
 *                      and sinkd_client_errmsg() returns its message.
 * sinkd_client_strerror() names either kind.
 */
#ifndef SINKD_CLIENT_H
#define SINKD_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include "proto.h"   /* installed beside this header */

#ifdef __cplusplus
extern "C" {
#endif

/* Socket used when the caller passes no path and neither $SINKD_SOCKET nor
 * $XDG_RUNTIME_DIR/sinkd.sock names one. */
#define SINKD_CLIENT_SOCKET_DEFAULT "/run/sinkd/sinkd.sock"
/* Name of the socket inside $XDG_RUNTIME_DIR. */
#define SINKD_CLIENT_SOCKET_XDG_NAME "sinkd.sock"

typedef struct sinkd_client sinkd_client;

/* What the daemon said in its hello reply. */
typedef struct sinkd_client_info {
    uint32_t proto;        /* negotiated protocol version */
    char server[32];       /* "sinkd" */
    char version[32];      /* daemon version, "0.1.0" */
    uint64_t max_frame;    /* largest payload the daemon accepts */
    uint64_t uid;          /* our uid as the daemon sees it (SO_PEERCRED) */
    bool admin;            /* whether admin ops (shutdown, ...) are allowed */
} sinkd_client_info;

/* Resolve the socket path the way sinkd_client_connect does for a NULL path:
 * $SINKD_SOCKET if set and non-empty, else $XDG_RUNTIME_DIR/sinkd.sock if
 * that file exists, else SINKD_CLIENT_SOCKET_DEFAULT. Writes a NUL-terminated
 * path into @buf of @size bytes. Returns 0, -EINVAL (bad arguments) or
 * -ENAMETOOLONG (the path does not fit @buf or a sockaddr_un). */
int sinkd_client_default_socket(char *buf, size_t size);

/* Connect to the daemon at @path (NULL: see sinkd_client_default_socket) and
 * say hello. @timeout_ms bounds the connect and the hello round trip
 * (negative: wait forever). On success *@out is a new handle the caller owns
 * and releases with sinkd_client_close. On failure *@out is NULL and the
 * return is a negative errno: the connect(2) error (-ENOENT, -ECONNREFUSED,
 * -EACCES), -ETIMEDOUT, -EPROTONOSUPPORT (no common protocol version) or
 * -EPROTO (the daemon refused hello otherwise or answered gibberish). */
int sinkd_client_connect(const char *path, int timeout_ms, sinkd_client **out);

/* Close the connection and free @c (NULL is a no-op). Requests still pending
 * in the daemon are abandoned; their replies are never read. */
void sinkd_client_close(sinkd_client *c);

/* The hello reply of @c. Valid as long as @c. Can't fail. */
const sinkd_client_info *sinkd_client_info_get(const sinkd_client *c);

/* The socket descriptor of @c, for poll(2) only: reading or writing it
 * behind the library's back desynchronises the stream. */
int sinkd_client_fd(const sinkd_client *c);

/* Message of the last error reply received on @c, or "" if the last call did
 * not end in one. Valid until the next call on @c. */
const char *sinkd_client_errmsg(const sinkd_client *c);

/* Human name of a return value of this library: "ok", strerror(-rc) for a
 * negative value, the wire code name ("permission_denied") for a positive
 * one. Never NULL; the string is static or thread-local. */
const char *sinkd_client_strerror(int rc);

/* ---------------------------------------------------------------------------
 * Generic requests.
 */

/* Packs the request's own fields into @pk: exactly `nfields` key/value pairs
 * (the library has already packed the map header, "op" and "id"). Returns 0,
 * or a negative errno that aborts the request. */
typedef int (*sinkd_client_pack_fn)(msgpack_packer *pk, void *arg);

/* Receives one event of the pending request: @ev is its "ev" string (not
 * NUL-terminated, @ev_len bytes) and @event the whole event map. Both are
 * valid only during the call. The callback must not call into the handle. */
typedef void (*sinkd_client_event_fn)(void *arg, const char *ev, size_t ev_len,
                                      const msgpack_object *event);

/* One request. Fill it with SINKD_CLIENT_REQ_INIT, then set what you need.
 * The fields come from at most one source: the pack callback, or a pre-packed
 * msgpack map whose entries are appended (keys "op" and "id" must not be in
 * it), or neither (a request with no fields). */
typedef struct sinkd_client_req {
    const char *op;                 /* required: the operation name */
    uint32_t nfields;               /* pairs that pack() writes */
    sinkd_client_pack_fn pack;      /* NULL: no callback */
    void *pack_arg;
    const void *fields;             /* pre-packed msgpack map, or NULL */
    size_t fields_len;              /* its size in bytes */
    int fd;                         /* -1, or one fd passed with SCM_RIGHTS */
    sinkd_client_event_fn on_event; /* NULL: events are dropped */
    void *event_arg;
    int timeout_ms;                 /* negative: wait forever */
} sinkd_client_req;

#define SINKD_CLIENT_REQ_INIT { NULL, 0, NULL, NULL, NULL, 0, -1, NULL, NULL, 5000 }

/* A decoded reply. The map points into memory the reply owns. */
typedef struct sinkd_client_reply {
    uint8_t *payload;              /* owned copy of the frame's payload */
    sinkd_msg msg;                 /* decoded view of payload */
    const msgpack_object *map;     /* the reply map, or NULL when empty */
} sinkd_client_reply;

#define SINKD_CLIENT_REPLY_INIT { .payload = NULL, .map = NULL }

/* Release @r and put it back in its init state. Safe on an init or already
 * released reply. */
void sinkd_client_reply_free(sinkd_client_reply *r);

/* Send @req on @c and wait for its reply, calling req->on_event for each of
 * its events meanwhile. The fd in req->fd (if >= 0) rides on the sendmsg(2)
 * that carries the frame's first byte; the caller keeps its own copy.
 * @reply may be NULL when only the outcome matters; otherwise it must be in
 * its init state and, on return 0 and also on a positive return (an error
 * reply), holds the whole reply map, which the caller frees with
 * sinkd_client_reply_free. Replies to earlier requests that timed out are
 * discarded as they arrive.
 * Returns 0, a positive sinkd_errcode (message: sinkd_client_errmsg), or a
 * negative errno: -EINVAL (no op, both field sources, fields not one
 * msgpack map), -EMSGSIZE (request over the daemon's max_frame), -ETIMEDOUT
 * (the request may still run; its reply will be discarded), -EPIPE or
 * -ECONNRESET (connection lost), -ECONNABORTED (a timeout cut a frame in
 * half), -EPROTO, -ENOMEM. After a lost or aborted connection, or memory
 * running out while a reply was being received (its bytes are gone from
 * the socket), the handle stays valid to close, and every later call
 * returns the same error. */
int sinkd_client_request(sinkd_client *c, const sinkd_client_req *req,
                         sinkd_client_reply *reply);

/* ---------------------------------------------------------------------------
 * Typed calls of the foundation ops. @timeout_ms as in sinkd_client_req.
 */

/* Round trip a ping. *@t_ns (may be NULL) gets the daemon's CLOCK_MONOTONIC
 * in nanoseconds. Returns as sinkd_client_request. */
int sinkd_client_ping(sinkd_client *c, int timeout_ms, uint64_t *t_ns);

/* Daemon status, copied out of the status reply. */
typedef struct sinkd_client_status {
    char version[32];
    uint32_t proto;
    uint64_t pid;
    double uptime_s;
    char backend[32];              /* backend name: "cpu", "cuda", "none" */
    char device[128];              /* device description */
    uint64_t mem_total;            /* device memory, bytes */
    uint64_t mem_free;
    uint64_t connections;
    uint64_t sessions;
    uint64_t rss_bytes;            /* daemon resident memory */
    uint64_t kv_pool_bytes;
    uint64_t kv_used_bytes;
} sinkd_client_status;

/* Fill @st from a status reply map @reply (strings that do not fit are
 * truncated). Returns 0 or -EPROTO if a field is missing or mistyped. */
int sinkd_client_status_decode(const msgpack_object *reply, sinkd_client_status *st);

/* Ask for the daemon's status and decode it into @st. Returns as
 * sinkd_client_request, or -EPROTO when the reply lacks a field. */
int sinkd_client_status_get(sinkd_client *c, int timeout_ms, sinkd_client_status *st);

/* Ask the daemon to exit (admin only: SINKD_ERR_PERMISSION_DENIED
 * otherwise). On 0 the daemon has stopped accepting and exits once in-flight
 * replies are flushed. */
int sinkd_client_shutdown(sinkd_client *c, int timeout_ms);

/* ---------------------------------------------------------------------------
 * Shared memory: bulk data travels through a memfd the daemon maps too.
 */

/* Register @fd (a memfd or other regular file of at least @size > 0 bytes)
 * with the daemon; *@handle gets the connection-local handle later requests
 * name. The caller keeps @fd. Returns as sinkd_client_request. */
int sinkd_client_shm_register(sinkd_client *c, int fd, uint64_t size,
                              int timeout_ms, uint64_t *handle);

/* A memfd this process created, mapped here and registered with the daemon. */
typedef struct sinkd_client_shm {
    int fd;            /* the memfd (close-on-exec, sealed against shrinking) */
    void *base;        /* its read/write mapping here */
    size_t size;       /* bytes */
    uint64_t handle;   /* the daemon's handle */
} sinkd_client_shm;

#define SINKD_CLIENT_SHM_INIT { -1, NULL, 0, 0 }

/* Create a memfd of @size bytes, seal it against shrinking, map it and
 * register it on @c. On success @shm (which must be in its init state) owns
 * the fd and the mapping; release it with sinkd_client_shm_free. On failure
 * @shm is left in its init state and nothing leaks. Returns as
 * sinkd_client_shm_register, or -EINVAL for @size 0, or the errno of
 * memfd_create/ftruncate/mmap. */
int sinkd_client_shm_create(sinkd_client *c, size_t size, int timeout_ms,
                            sinkd_client_shm *shm);

/* Unregister @shm on @c (skipped when @c is NULL, e.g. after the connection
 * is gone: the daemon unmaps with the connection), then unmap and close it;
 * @shm is back in its init state even when the unregister fails. Returns the
 * unregister's result (0 when skipped). */
int sinkd_client_shm_free(sinkd_client *c, sinkd_client_shm *shm, int timeout_ms);

/* ---------------------------------------------------------------------------
 * Session-level ops (models, text, sessions, raw KV, policies). Every call
 * below returns as sinkd_client_request: 0, a negative errno, or a positive
 * sinkd_errcode with the daemon's message in sinkd_client_errmsg(). A reply
 * that lacks a field the contract promises is -EPROTO. Arguments are checked
 * first (-EINVAL) and nothing is sent when they are wrong. Fixed-size string
 * fields of the structs below are NUL-terminated and truncated to fit.
 *
 * Arrays and strings these calls return are allocated by the library and
 * owned by the caller, who releases them with sinkd_client_free (or the
 * struct's own _free where one is named).
 */

/* Release an array or string that a call below returned. NULL is a no-op. */
void sinkd_client_free(void *p);

/* A byte range in a region registered with sinkd_client_shm_register or
 * sinkd_client_shm_create: the wire's {shm, offset}. */
typedef struct sinkd_client_region {
    uint64_t shm;          /* the daemon's handle */
    uint64_t offset;       /* bytes from the start of the region */
} sinkd_client_region;

/* --- models and text ---------------------------------------------------- */

/* One entry of model.list. */
typedef struct sinkd_client_model {
    char name[64];
    char arch[16];          /* "llama", "qwen2" */
    uint32_t n_layers, n_heads, n_kv_heads, head_dim, dim, n_vocab, ctx_len;
    uint64_t weight_bytes;
    char dtype[16];         /* weight dtype in the file: "f32", "f16", ... */
} sinkd_client_model;

/* Decode a model.list reply map into a new array *@models of *@n entries
 * (NULL and 0 when the daemon has none); free it with sinkd_client_free.
 * Returns 0, -EINVAL, -ENOMEM or -EPROTO. */
int sinkd_client_model_list_decode(const msgpack_object *reply,
                                   sinkd_client_model **models, size_t *n);

/* The daemon's models, as sinkd_client_model_list_decode. */
int sinkd_client_model_list(sinkd_client *c, int timeout_ms,
                            sinkd_client_model **models, size_t *n);

/* For @bos arguments: let the daemon use the model's add_bos. */
#define SINKD_CLIENT_BOS_DEFAULT (-1)

/* Tokenize @len bytes of @text with @model (NULL: the daemon's first).
 * @bos: 0, 1 or SINKD_CLIENT_BOS_DEFAULT; @special: parse special-token
 * text such as "<s>". *@ids gets a new array of *@n token ids (free with
 * sinkd_client_free; NULL when empty). */
int sinkd_client_tokenize(sinkd_client *c, const char *model, const char *text,
                          size_t len, int bos, bool special, int timeout_ms,
                          int32_t **ids, size_t *n);

/* Turn @n ids into text with @model (NULL: the first). *@text gets a new
 * NUL-terminated string of *@len bytes (the text itself may hold NULs; @len
 * may be NULL); free it with sinkd_client_free. */
int sinkd_client_detokenize(sinkd_client *c, const char *model, const int32_t *ids,
                            size_t n, int timeout_ms, char **text, size_t *len);

/* --- sessions ----------------------------------------------------------- */

/* Geometry of a raw session (no model: the caller streams its own K, V, Q).
 * The strings name the wire values; NULL takes the daemon's default. */
typedef struct sinkd_client_geometry {
    uint32_t layers, q_heads, kv_heads, head_dim;
    const char *dtype;         /* "f32", "f16", "bf16" */
    double rope_theta;         /* 10000 */
    double rope_scale;         /* 1 */
    const char *rope_style;    /* "adjacent" or "neox" */
    const char *rope_mode;     /* "absolute" or "cache" */
} sinkd_client_geometry;

#define SINKD_CLIENT_GEOMETRY_INIT { 0, 0, 0, 0, "f32", 10000.0, 1.0, NULL, NULL }

/* How to open a session. Zeroed/NULL fields take the daemon's defaults. */
typedef struct sinkd_client_session_opts {
    const char *model;                       /* NULL: the first model */
    const sinkd_client_geometry *geometry;   /* non-NULL: a raw session */
    const char *policy;                      /* NULL: "full" */
    const char *params;                      /* policy parameters "k=v k=v" */
    uint64_t budget;                         /* max tokens per lane, 0 = none */
    bool persist;                            /* outlive this connection and,
                                                with a state directory,
                                                restarts of the daemon: see
                                                sinkd_client_session_open */
} sinkd_client_session_opts;

#define SINKD_CLIENT_SESSION_OPTS_INIT { NULL, NULL, NULL, NULL, 0, false }

/* What session.open answered. */
typedef struct sinkd_client_session_info {
    uint64_t session;
    char secret[64];         /* the session's secret, as the daemon sent it
                                (32 hex digits): what sinkd_client_session_attach
                                needs. It lives in this struct, which is the
                                caller's: nothing to free; keep it private and
                                wipe it when done */
    char model[64];          /* "" for a raw session */
    char policy[64];
    uint32_t n_layers, n_kv_heads, head_dim;
    uint32_t n_vocab;        /* 0 for a raw session */
} sinkd_client_session_info;

/* Open a session as @opts says (NULL: all defaults) and describe it in
 * @info. Model and geometry together are -EINVAL. A session that is not
 * persistent closes with @c's connection; a persistent one lives on until
 * sinkd_client_session_close, across restarts of the daemon, and another
 * connection of the same uid takes it back with its id and @info->secret.
 * Surviving a restart needs the daemon's state directory: a daemon without
 * a usable one opens a persistent session all the same, but it outlives
 * only the connection and is lost when the daemon stops. To know before
 * relying on it, attach to the new session on @c with @info->secret: that
 * daemon answers SINKD_ERR_UNSUPPORTED. */
int sinkd_client_session_open(sinkd_client *c, const sinkd_client_session_opts *opts,
                              int timeout_ms, sinkd_client_session_info *info);

/* Close session @session (a running generate ends first). */
int sinkd_client_session_close(sinkd_client *c, uint64_t session, int timeout_ms);

/* One entry of session.list. */
typedef struct sinkd_client_session_entry {
    uint64_t session;
    uint64_t uid;            /* owner */
    char model[64];
    char policy[64];
    uint64_t tokens;         /* positions consumed */
    uint64_t pages;
    uint64_t bytes;          /* KV memory held */
    bool generating;         /* state "generating" (else "idle") */
} sinkd_client_session_entry;

/* Decode a session.list reply into a new array (free with
 * sinkd_client_free; NULL when empty). */
int sinkd_client_session_list_decode(const msgpack_object *reply,
                                     sinkd_client_session_entry **sessions, size_t *n);

/* The sessions we may see (our uid's; an admin sees all). */
int sinkd_client_session_list(sinkd_client *c, int timeout_ms,
                              sinkd_client_session_entry **sessions, size_t *n);

/* What session.append answered, plus the reason of a policy fallback that
 * happened meanwhile ("" when none). */
typedef struct sinkd_client_append_result {
    uint64_t n_tokens;       /* tokens appended */
    uint64_t n_past;         /* positions in the session afterwards */
    double prefill_ms;
    char fallback[128];
} sinkd_client_append_result;

/* Append @n token ids to a model session and run them through the model.
 * @bos: 0, 1 or SINKD_CLIENT_BOS_DEFAULT. @result may be NULL. @timeout_ms
 * bounds the whole prefill. */
int sinkd_client_session_append(sinkd_client *c, uint64_t session, const int32_t *ids,
                                size_t n, int bos, int timeout_ms,
                                sinkd_client_append_result *result);

/* Same with @len bytes of @text, tokenized by the session's model. */
int sinkd_client_session_append_text(sinkd_client *c, uint64_t session, const char *text,
                                     size_t len, int bos, int timeout_ms,
                                     sinkd_client_append_result *result);

/* Sampling parameters of session.generate. */
typedef struct sinkd_client_gen_params {
    uint32_t max_tokens;        /* 128 */
    double temperature;         /* 0 = greedy */
    uint32_t top_k;             /* 0 = off */
    double top_p;               /* 1 = off */
    double min_p;               /* 0 = off */
    double repeat_penalty;      /* 1 = off */
    uint32_t repeat_last_n;     /* 64 */
    uint64_t seed;              /* 0 */
    const int32_t *stop_ids;    /* extra tokens that end the generation */
    size_t n_stop_ids;
    const char *const *stop;    /* strings that end it (not part of the text) */
    size_t n_stop;
    bool stream;                /* token events (true) or only the reply */
    bool ignore_eos;
} sinkd_client_gen_params;

#define SINKD_CLIENT_GEN_PARAMS_INIT \
    { 128, 0.0, 0, 1.0, 0.0, 1.0, 64, 0, NULL, 0, NULL, 0, true, false }

/* Why a generation ended. */
typedef enum sinkd_client_gen_reason {
    SINKD_CLIENT_GEN_LENGTH = 1,   /* max_tokens reached */
    SINKD_CLIENT_GEN_STOP,         /* a stop id or stop string */
    SINKD_CLIENT_GEN_EOS,          /* the model's end of sequence */
    SINKD_CLIENT_GEN_CANCELLED,    /* session.cancel, or the token callback */
} sinkd_client_gen_reason;

/* The final reply of session.generate. Fill with SINKD_CLIENT_GEN_RESULT_INIT;
 * release with sinkd_client_gen_result_free. */
typedef struct sinkd_client_gen_result {
    sinkd_client_gen_reason reason;
    char reason_name[16];        /* the wire name: "length", "stop", ... */
    uint64_t n_tokens;           /* tokens generated */
    char *text;                  /* owned, NUL-terminated: the whole text */
    size_t text_len;
    double prefill_ms, decode_ms, tokens_per_s;
    char fallback[128];          /* policy_fallback reason, "" when none */
} sinkd_client_gen_result;

#define SINKD_CLIENT_GEN_RESULT_INIT { .reason = 0, .text = NULL }

/* Free @r's text and put it back in its init state. */
void sinkd_client_gen_result_free(sinkd_client_gen_result *r);

/* Called for each token event of a streaming generate: the token id and its
 * text piece (@len bytes, not NUL-terminated, "" while a multibyte
 * character is incomplete), valid only during the call. After the last
 * one, unless the callback cancelled, it is called once more with token
 * SINKD_CLIENT_TOKEN_TAIL for the end of the reply's text that no event
 * carried, if any (text the daemon held back as the possible start of a
 * stop string, or a character left incomplete): the pieces then add up to
 * the result's text. Its return value is ignored. Return 0 to go on,
 * non-zero to cancel: the library then sends session.cancel for the session
 * once (on the same connection, without waiting) and keeps reading until
 * the final reply, whose reason is normally "cancelled" (a generation that
 * ended meanwhile keeps its own reason); tokens still in flight are counted
 * in the result but not passed to the callback again. This is the only
 * way to cancel on the same handle: the callback must not call into the
 * handle, and no other thread may use it (see Threads above). To cancel from
 * elsewhere (a UI thread, a Ctrl-C watcher), open a second connection of
 * the same uid and call sinkd_client_session_cancel on it; calling it on
 * that other handle from inside this callback is fine too. */
typedef int (*sinkd_client_token_fn)(void *arg, int32_t token, const char *text, size_t len);
#define SINKD_CLIENT_TOKEN_TAIL (-1)

/* Generate on @session with @params (NULL: defaults), calling @on_token
 * (may be NULL) for each streamed token. @timeout_ms bounds each wait (for
 * the next token, or the reply), not the whole generation. On 0, @result
 * (in its init state; may be NULL) holds the reply; the caller frees it
 * with sinkd_client_gen_result_free. Another generate running on the
 * session is SINKD_ERR_BUSY. */
int sinkd_client_session_generate(sinkd_client *c, uint64_t session,
                                  const sinkd_client_gen_params *params,
                                  sinkd_client_token_fn on_token, void *arg,
                                  int timeout_ms, sinkd_client_gen_result *result);

/* Ask the running generate of @session to stop (it then replies with reason
 * "cancelled"). Meant for a second connection of the same uid: see
 * sinkd_client_token_fn. */
int sinkd_client_session_cancel(sinkd_client *c, uint64_t session, int timeout_ms);

/* Write the logits of the session's last position, n_vocab little-endian
 * f32, at @dst in a registered region; *@n_vocab (may be NULL) gets their
 * count. A range past the region is SINKD_ERR_BAD_SHM. */
int sinkd_client_session_logits(sinkd_client *c, uint64_t session,
                                sinkd_client_region dst, int timeout_ms,
                                uint32_t *n_vocab);

/* Lane lengths of one layer, summarised over its kv heads. */
typedef struct sinkd_client_layer_stats {
    uint64_t len_min;
    double len_mean;
    uint64_t len_max;
    uint64_t pages;
} sinkd_client_layer_stats;

/* session.stats. Fill with SINKD_CLIENT_SESSION_STATS_INIT; release with
 * sinkd_client_session_stats_free. */
typedef struct sinkd_client_session_stats {
    uint64_t session;
    char model[64];
    char policy[64];
    uint64_t tokens;                   /* positions consumed */
    uint64_t pages, bytes;
    uint64_t evictions, evicted_tokens;
    sinkd_client_layer_stats *layers;  /* owned: [n_layers] */
    size_t n_layers;
    char fallback[128];                /* why it fell back, "" if it did not */
} sinkd_client_session_stats;

#define SINKD_CLIENT_SESSION_STATS_INIT { .session = 0, .layers = NULL, .n_layers = 0 }

/* Free @st's layers and put it back in its init state. */
void sinkd_client_session_stats_free(sinkd_client_session_stats *st);

/* Decode a session.stats reply into @st (in its init state). On failure
 * @st stays in its init state. */
int sinkd_client_session_stats_decode(const msgpack_object *reply,
                                      sinkd_client_session_stats *st);

/* Statistics of @session into @st (in its init state). */
int sinkd_client_session_stats_get(sinkd_client *c, uint64_t session, int timeout_ms,
                                   sinkd_client_session_stats *st);

/* Switch @session to @policy with @params (NULL: none) at runtime. @name
 * (may be NULL) of @name_size bytes gets the policy the daemon installed. */
int sinkd_client_session_policy(sinkd_client *c, uint64_t session, const char *policy,
                                const char *params, int timeout_ms,
                                char *name, size_t name_size);

/* --- persistent sessions and snapshots ----------------------------------- */

/* Make @c the owner connection of @session again (session.attach): after a
 * restart of the daemon, or from another connection of the owner's uid.
 * @secret is the NUL-terminated secret session.open gave (info->secret).
 * @info (may be NULL) gets the session as sinkd_client_session_open
 * describes it, *@n_past (may be NULL) the tokens in its conversation (the
 * pending one included: the next append or generate continues after them).
 * @info and *@n_past are written only on success. A session that is not
 * persistent then closes with @c. A wrong secret, another uid's session and
 * a missing one are all SINKD_ERR_NOT_FOUND; -EINVAL for a NULL or empty
 * @secret; SINKD_ERR_UNSUPPORTED when the daemon has no usable state
 * directory (nothing of it survives a restart), also for the connection
 * that already owns @session. */
int sinkd_client_session_attach(sinkd_client *c, uint64_t session, const char *secret,
                                int timeout_ms, sinkd_client_session_info *info,
                                uint64_t *n_past);

/* Write a snapshot of @session now (session.save; it replaces the
 * session's earlier one, and the session stays live). @path (may be NULL)
 * of @path_size bytes gets the file's absolute path, NUL-terminated
 * (PATH_MAX bytes hold any path open(2) accepts). A path that does not fit
 * is -ENAMETOOLONG with @path set to "", never a cut path that names
 * another file (the snapshot was written all the same). Errors of the
 * daemon: SINKD_ERR_NOT_FOUND, SINKD_ERR_BUSY (generating),
 * SINKD_ERR_QUOTA_EXCEEDED ([quota] snapshots_per_uid: forget one first),
 * SINKD_ERR_UNSUPPORTED (no state directory), SINKD_ERR_INTERNAL (I/O). */
int sinkd_client_session_save(sinkd_client *c, uint64_t session, int timeout_ms,
                              char *path, size_t path_size);

/* Reopen a snapshot that session.save wrote (session.restore), named by
 * @session when @path is NULL, else by @path, a path that
 * sinkd_client_session_save returned (then @session must be 0: -EINVAL
 * otherwise, and for a NULL @path with @session 0). A live session of that
 * id is replaced by the snapshot (a rollback); after a restart it comes
 * back. Either way @c becomes its owner connection. @info and @n_past (may
 * be NULL) as in sinkd_client_session_attach. Errors of the daemon:
 * SINKD_ERR_NOT_FOUND (no snapshot, or another uid's), SINKD_ERR_BUSY,
 * SINKD_ERR_INVALID_ARGUMENT (a path session.save did not write; a refused
 * snapshot, with the reason), SINKD_ERR_QUOTA_EXCEEDED,
 * SINKD_ERR_NO_MEMORY (KV pool), SINKD_ERR_UNSUPPORTED (no state
 * directory). */
int sinkd_client_session_restore(sinkd_client *c, uint64_t session, const char *path,
                                 int timeout_ms, sinkd_client_session_info *info,
                                 uint64_t *n_past);

/* Delete the snapshot session.save wrote of @session (session.forget): it
 * no longer counts against [quota] snapshots_per_uid. A live session of that
 * id is untouched, and so is what a shutdown saved of a persistent one.
 * Errors of the daemon: SINKD_ERR_NOT_FOUND (no snapshot, or another uid's:
 * the same answer), SINKD_ERR_UNSUPPORTED (no state directory),
 * SINKD_ERR_INTERNAL (I/O). */
int sinkd_client_session_forget(sinkd_client *c, uint64_t session, int timeout_ms);

/* --- raw sessions -------------------------------------------------------- */

/* Append @n tokens' K and V (f32 [n][kv_heads][head_dim] each, at @k and
 * @v) to @layer of raw @session; @pos (NULL: continue from the lane's last
 * position) holds int32 [n] original positions. *@len (may be NULL) gets the
 * lane length afterwards. */
int sinkd_client_kv_append(sinkd_client *c, uint64_t session, uint32_t layer, uint32_t n,
                           sinkd_client_region k, sinkd_client_region v,
                           const sinkd_client_region *pos, int timeout_ms, uint64_t *len);

/* Arguments of attend. Fill with SINKD_CLIENT_ATTEND_INIT. */
typedef struct sinkd_client_attend_args {
    uint32_t layer;
    uint32_t n;                          /* queries: the last n appended tokens */
    sinkd_client_region q;               /* f32 [n][q_heads][head_dim], before RoPE */
    sinkd_client_region out;             /* f32 [n][q_heads][head_dim] */
    const sinkd_client_region *scores;   /* NULL, or f32 [kv_heads][lane len] (n = 1) */
    bool has_q_pos;
    int64_t q_pos;                       /* position of the last query */
    const uint32_t *const *pages;        /* NULL (dense), or per kv head the */
    const size_t *n_pages;               /* logical pages to attend (n = 1) */
    size_t n_heads;                      /* entries of pages and n_pages */
} sinkd_client_attend_args;

#define SINKD_CLIENT_ATTEND_INIT { .n = 1, .scores = NULL, .has_q_pos = false, \
                                   .pages = NULL, .n_pages = NULL, .n_heads = 0 }

/* Attend the last @a->n queries of a raw session's layer over its cache.
 * @lens (may be NULL) of @cap entries gets the lane length per kv head and
 * *@n_lens (may be NULL) their count (entries past @cap are dropped). */
int sinkd_client_attend(sinkd_client *c, uint64_t session,
                        const sinkd_client_attend_args *a, int timeout_ms,
                        uint64_t *lens, size_t cap, size_t *n_lens);

/* --- policies ------------------------------------------------------------ */

/* One entry of policy.list. */
typedef struct sinkd_client_policy {
    char name[64];
    char version[32];
    char summary[256];
    char path[512];           /* "" for a built-in */
    bool builtin;
    uint64_t instances;       /* sessions using it */
    uint64_t generation;      /* bumped by each reload */
} sinkd_client_policy;

/* Decode one entry (a map) of a policy.list reply into @policy. */
int sinkd_client_policy_decode(const msgpack_object *entry, sinkd_client_policy *policy);

/* Decode a policy.list reply into a new array (free with sinkd_client_free;
 * NULL when empty). */
int sinkd_client_policy_list_decode(const msgpack_object *reply,
                                    sinkd_client_policy **policies, size_t *n);

/* The policies the daemon knows. */
int sinkd_client_policy_list(sinkd_client *c, int timeout_ms,
                             sinkd_client_policy **policies, size_t *n);

/* Load the plugin at @path (admin). @name (may be NULL) of @name_size bytes
 * gets the policy's name. */
int sinkd_client_policy_load(sinkd_client *c, const char *path, int timeout_ms,
                             char *name, size_t name_size);

/* Reload policy @name from its file (admin); *@generation (may be NULL)
 * gets the new generation. */
int sinkd_client_policy_reload(sinkd_client *c, const char *name, int timeout_ms,
                               uint64_t *generation);

/* Unload policy @name (admin; built-ins never unload). */
int sinkd_client_policy_unload(sinkd_client *c, const char *name, int timeout_ms);

#ifdef __cplusplus
}
#endif
#endif /* SINKD_CLIENT_H */
