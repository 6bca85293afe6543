/*
 * Helpers of the trust tests: a sinkd of their own (the tiny model on the CPU
 * backend), clients that connect as another uid, and one-line requests.
 *
 * Identity: sinkd reads the peer's credentials with SO_PEERCRED, which are
 * the effective ids at connect(2). trust_connect_as switches the effective
 * uid, gid and supplementary groups of this (root) process around the
 * connect and restores them, so one test holds clients of several uids at
 * once. Tests that need it skip when not run as root.
 *
 * Requests: trust_call(c, "session.append", "session:u text:s", id, "hi")
 * packs the fields from a spec of "key:type" words: u uint64_t, i int64_t,
 * s string, b bool (int), r region {shm, offset} (two uint64_t). It returns
 * as sinkd_client_request: 0, a positive error code, or a negative errno.
 */
#ifndef SINKD_TRUST_H
#define SINKD_TRUST_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "client.h"
#include "sinkd_testd.h"

#define TRUST_MODEL SINKD_TEST_DATA "/sinkd-ref-tiny-f32.gguf"
/* What every trust daemon runs with; tests append their own sections. */
#define TRUST_ENGINE "[engine]\nbackend = cpu\nthreads = 1\nkv_dtype = f32\n"

/* Start @d with config @conf and the tiny model as "tiny". 0 or as
 * sinkd_testd_start. */
int trust_start(sinkd_testd *d, const char *conf);

/* Connect to @d as @uid/@gid with the one supplementary group @group
 * ((gid_t)-1: none). Returns 0 or a negative errno (-EACCES: the socket's
 * permissions refused us). */
int trust_connect_as(const sinkd_testd *d, uid_t uid, gid_t gid, gid_t group,
                     sinkd_client **out);

/* The same for a raw socket (sinkd_testwire). Returns the fd or -errno. */
int trust_connect_raw_as(const sinkd_testd *d, uid_t uid, gid_t gid);

/* Request @op with fields from @spec (see above); @rep may be NULL. */
int trust_call(sinkd_client *c, sinkd_client_reply *rep, const char *op, const char *spec, ...);

/* Pack a request frame {op, id, fields...} from @spec for a raw socket:
 * returns the malloc'ed payload (caller frees) and its length in @len. */
uint8_t *trust_pack(size_t *len, const char *op, uint64_t id, const char *spec, ...);

/* Open a session of the tiny model and append @text. Returns its id, 0 on
 * failure (the error is in sinkd_client_errmsg). */
uint64_t trust_open(sinkd_client *c, const char *text);

/* Open a raw session (f32, default rope) of @layers x @q_heads/@kv_heads x
 * @head_dim. Returns its id, 0 on failure. */
uint64_t trust_open_raw(sinkd_client *c, uint32_t layers, uint32_t q_heads, uint32_t kv_heads,
                        uint32_t head_dim);

/* The uint field @key of @rep's map (0 when missing). */
uint64_t trust_u64(const sinkd_client_reply *rep, const char *key);

/* True when @needle occurs in the client's last error message. */
bool trust_errmsg_has(sinkd_client *c, const char *needle);

#endif /* SINKD_TRUST_H */
