/*
 * sinkd wire protocol: framing, guarded msgpack decoding, reply building and
 * the error-code table. Shared by the daemon and libsinkd; installed as
 * <sinkd/proto.h>. protocol/PROTOCOL.md is the normative description of the
 * bytes; this header is the C view of it.
 *
 * A frame is a 4-byte big-endian payload length followed by exactly one
 * msgpack map of that many bytes. Nothing in this module does I/O: callers
 * feed bytes in and take bytes out.
 *
 * Every function returns 0 (or a documented positive value) on success and a
 * negative errno on failure unless stated otherwise.
 */
#ifndef SINKD_PROTO_H
#define SINKD_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <msgpack.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Protocol version spoken by this codec (negotiated in `hello`). */
#define SINKD_PROTO_VERSION 1
/* Oldest protocol version this codec still speaks. */
#define SINKD_PROTO_VERSION_MIN 1

/* Default hard maximum payload size of one frame (config `max_frame`). */
#define SINKD_FRAME_MAX_DEFAULT (16u * 1024u * 1024u)
/* Smallest max_frame a reader accepts: a hello must always fit. */
#define SINKD_FRAME_MAX_MIN 1024u
/* Maximum nesting depth of arrays/maps inside one message (root map = 1). */
#define SINKD_DEPTH_MAX 32
/* Size of the length prefix. */
#define SINKD_FRAME_HEADER 4

/* ---------------------------------------------------------------------------
 * Error codes. The wire carries the name (a short snake_case string); the C
 * API carries the enum. Append only: values are never renumbered.
 */
typedef enum sinkd_errcode {
    SINKD_ERR_NONE = 0,
    SINKD_ERR_BAD_FRAME,           /* "bad_frame": payload is not one valid msgpack map */
    SINKD_ERR_FRAME_TOO_LARGE,     /* "frame_too_large": length prefix over max_frame */
    SINKD_ERR_BAD_REQUEST,         /* "bad_request": missing or mistyped field */
    SINKD_ERR_UNKNOWN_OP,          /* "unknown_op" */
    SINKD_ERR_UNSUPPORTED_VERSION, /* "unsupported_version": no common protocol version */
    SINKD_ERR_PERMISSION_DENIED,   /* "permission_denied": op needs admin */
    SINKD_ERR_NOT_FOUND,           /* "not_found": no such session/model/policy/shm */
    SINKD_ERR_NO_MEMORY,           /* "no_memory": allocation or KV pool exhausted */
    SINKD_ERR_QUOTA_EXCEEDED,      /* "quota_exceeded": a per-session or per-uid limit */
    SINKD_ERR_BUSY,                /* "busy": conflicting request in flight */
    SINKD_ERR_BAD_SHM,             /* "bad_shm": offset/length outside a registered region */
    SINKD_ERR_CANCELLED,           /* "cancelled" */
    SINKD_ERR_SHUTTING_DOWN,       /* "shutting_down" */
    SINKD_ERR_INVALID_ARGUMENT,    /* "invalid_argument": well-typed but out of range */
    SINKD_ERR_INTERNAL,            /* "internal": a bug or backend failure */
    SINKD_ERR_UNSUPPORTED,         /* "unsupported": valid but not available here */
    SINKD_ERR__COUNT
} sinkd_errcode;

/* Wire name of @code ("unknown_op"); "internal" for out-of-range values.
 * Never NULL; the string is static. */
const char *sinkd_errcode_name(sinkd_errcode code);

/* Parse a wire name of @len bytes. Unknown names map to SINKD_ERR_INTERNAL
 * so that a newer daemon's codes still read as an error. */
sinkd_errcode sinkd_errcode_from_name(const char *name, size_t len);

/* ---------------------------------------------------------------------------
 * Incremental frame reader. Bytes arrive in any split (a byte at a time, many
 * frames in one read); frames leave whole. The reader owns its buffer.
 */
typedef struct sinkd_frame_reader {
    uint8_t *buf;       /* owned; NULL until the first feed */
    size_t len;         /* bytes buffered */
    size_t cap;         /* bytes allocated */
    size_t head;        /* start of the unconsumed bytes */
    size_t max_frame;   /* hard payload limit */
    int error;          /* sticky: once a frame was refused the stream is dead */
} sinkd_frame_reader;

#define SINKD_FRAME_READER_INIT { NULL, 0, 0, 0, SINKD_FRAME_MAX_DEFAULT, 0 }

/* Initialise @r with payload limit @max_frame (0 = default). Can't fail. */
void sinkd_frame_reader_init(sinkd_frame_reader *r, size_t max_frame);

/* Release the buffer; @r is back in its init state (limit kept). */
void sinkd_frame_reader_free(sinkd_frame_reader *r);

/* Append @n bytes. The reader copies them; the caller keeps @data.
 * Returns 0, -ENOMEM, or the sticky error (-EMSGSIZE) of an earlier refusal.
 * Never buffers more than max_frame + SINKD_FRAME_HEADER bytes of one frame:
 * a length prefix over the limit is refused as soon as its 4 bytes arrive.
 * The feed that brings such a prefix keeps nothing after it and still
 * returns 0, so the whole frames before it stay available from
 * sinkd_frame_reader_next, which then returns -EMSGSIZE; every later feed
 * returns -EMSGSIZE. -ENOMEM takes nothing: the caller may retry. */
int sinkd_frame_reader_feed(sinkd_frame_reader *r, const void *data, size_t n);

/* Take the next whole frame. Returns 1 and sets *@payload and *@len to the
 * payload (valid until the next feed/next/free call on @r), 0 when more bytes
 * are needed, or -EMSGSIZE when the declared length exceeds max_frame (sticky:
 * the connection must be closed after replying frame_too_large). A zero-length
 * frame is returned as a frame (its decode fails with bad_frame). */
int sinkd_frame_reader_next(sinkd_frame_reader *r, const uint8_t **payload, size_t *len);

/* ---------------------------------------------------------------------------
 * Guarded decoding. Before msgpack-c sees a payload, a validator walks its
 * bytes and refuses: nesting deeper than SINKD_DEPTH_MAX, any array or map
 * whose declared count exceeds the bytes left in the payload (msgpack-c would
 * allocate from the count), any str/bin/ext length past the end, trailing
 * bytes after the root object, and a root that is not a map.
 */
typedef struct sinkd_msg {
    msgpack_zone zone;      /* owns every object below */
    msgpack_object root;    /* type MSGPACK_OBJECT_MAP after a successful decode */
    bool live;              /* zone initialised */
} sinkd_msg;

/* Validate and decode @len bytes of @payload into @out (which need not be
 * initialised). On failure returns -EBADMSG (invalid or hostile encoding),
 * -ENOMEM, and sets *@why (if non-NULL) to a static human message; @out is
 * then left freed. On success the caller owns @out: call sinkd_msg_free. The
 * decoded objects point into @out's zone and may reference @payload (str/bin
 * are not copied): keep the payload alive as long as @out is used. */
int sinkd_msg_decode(const uint8_t *payload, size_t len, sinkd_msg *out, const char **why);

/* Only the validation step of sinkd_msg_decode. 0 or -EBADMSG with *@why. */
int sinkd_msg_validate(const uint8_t *payload, size_t len, const char **why);

/* Release @m (safe on a failed or already freed message). */
void sinkd_msg_free(sinkd_msg *m);

/* ---------------------------------------------------------------------------
 * Field access on a map object. Each getter returns 0 and fills its output,
 * -ENOENT when the key is absent (or nil), -EINVAL when it has another type
 * (or @map is not a map, or an output pointer is NULL). When a map repeats a
 * key, the first entry counts. Strings are not NUL-terminated: use the
 * length; an empty str or bin gives a non-NULL pointer.
 */
const msgpack_object *sinkd_map_get(const msgpack_object *map, const char *key);
int sinkd_map_str(const msgpack_object *map, const char *key, const char **s, size_t *len);
/* Non-negative integers; a negative integer or one over UINT64_MAX is -EINVAL. */
int sinkd_map_u64(const msgpack_object *map, const char *key, uint64_t *v);
int sinkd_map_i64(const msgpack_object *map, const char *key, int64_t *v);
/* Accepts float32, float64 and integers. */
int sinkd_map_f64(const msgpack_object *map, const char *key, double *v);
int sinkd_map_bool(const msgpack_object *map, const char *key, bool *v);
int sinkd_map_array(const msgpack_object *map, const char *key, const msgpack_object_array **a);
int sinkd_map_map(const msgpack_object *map, const char *key, const msgpack_object **m);
int sinkd_map_bin(const msgpack_object *map, const char *key, const void **p, size_t *len);

/* True when @o is a str equal to the NUL-terminated @s. */
bool sinkd_obj_streq(const msgpack_object *o, const char *s);

/* ---------------------------------------------------------------------------
 * Frame building. A writer packs one msgpack map after a 4-byte placeholder;
 * sinkd_fw_finish fills in the length. The writer owns its buffer until
 * sinkd_fw_release hands it to the caller.
 */
typedef struct sinkd_fw {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} sinkd_fw;

/* Start a frame (reserves the header). Returns 0 or -ENOMEM. */
int sinkd_fw_init(sinkd_fw *w);
/* Free the buffer (if not released). Safe to call twice. */
void sinkd_fw_free(sinkd_fw *w);
/* Write the header. Returns the whole frame length (header included), or
 * -EMSGSIZE if the payload exceeds @max_frame (0 = no check). */
long sinkd_fw_finish(sinkd_fw *w, size_t max_frame);
/* After finish: give the frame's bytes to the caller, who frees them with
 * free(3). *@len gets the frame length. @w is left empty (re-init to reuse). */
uint8_t *sinkd_fw_release(sinkd_fw *w, size_t *len);

/* Pack helpers over msgpack-c (errors are sticky inside the sbuffer; a frame
 * that failed to allocate makes finish return -ENOMEM). */
void sinkd_pack_str(msgpack_packer *pk, const char *s);
void sinkd_pack_strn(msgpack_packer *pk, const char *s, size_t n);
void sinkd_pack_kv_str(msgpack_packer *pk, const char *key, const char *val);
void sinkd_pack_kv_u64(msgpack_packer *pk, const char *key, uint64_t v);
void sinkd_pack_kv_i64(msgpack_packer *pk, const char *key, int64_t v);
void sinkd_pack_kv_f64(msgpack_packer *pk, const char *key, double v);
void sinkd_pack_kv_bool(msgpack_packer *pk, const char *key, bool v);

/* Complete frames for the common shapes. Each returns a malloc'ed frame the
 * caller frees, with its length in *@len, or NULL on allocation failure.
 *   error reply: {id, error:{code, message}}   (id omitted when @has_id is false)
 */
uint8_t *sinkd_frame_error(uint64_t id, bool has_id, sinkd_errcode code,
                           const char *message, size_t *len);

/* Start a reply map: packs the map header for 2 + @extra entries followed by
 * "id": @id and "ok": true. The caller then packs exactly @extra key/value
 * pairs and finishes the writer. */
void sinkd_pack_reply_head(msgpack_packer *pk, uint64_t id, uint32_t extra);

/* Start an event map: 2 + @extra entries, "id": @id and "ev": @ev first. */
void sinkd_pack_event_head(msgpack_packer *pk, uint64_t id, const char *ev, uint32_t extra);

/* Start a request map: 2 + @extra entries, "op": @op and "id": @id first. */
void sinkd_pack_request_head(msgpack_packer *pk, const char *op, uint64_t id, uint32_t extra);

#ifdef __cplusplus
}
#endif
#endif /* SINKD_PROTO_H */
