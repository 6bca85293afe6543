/*
 * The engine in-process for tests: a collector for the frames it emits,
 * jobs built and submitted by hand, and the helpers that read the answers.
 * One engine at a time (eng_h_open in the suite's init, eng_h_close in fini;
 * or several one after the other within a test).
 */
#ifndef SINKD_ENG_HARNESS_H
#define SINKD_ENG_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "proto.h"

/* One emitted frame, decoded. */
typedef struct eng_h_frame {
    struct eng_h_frame *next;
    uint8_t *buf;
    sinkd_msg msg;
} eng_h_frame;

/* What eng_h_open_with sets up; a zero field takes what eng_h_open uses. */
typedef struct eng_h_config {
    const char *backend;          /* [engine] backend; NULL = "cpu" */
    const char *model_name;       /* NULL = "tiny" */
    const char *model_path;       /* NULL = the tiny reference model (f32) */
    size_t pool_bytes;            /* KV pool; 0 = 32 MiB */
    sinkd_dtype kv_dtype;         /* KV dtype; zero is SINKD_F32 */
    bool score_defer_off;         /* [engine] score_defer = off */
    const char *const *dirs;      /* plugin directories [0..n_dirs) */
    size_t n_dirs;
    const char *state_dir;        /* [server] state_dir (session.save writes
                                     its snapshots/ there); NULL = none */
} eng_h_config;

/* Open and start an engine as @hc says, one thread, prefill chunks of 8, at
 * most 4 sessions a step. One engine at a time: the frames of every engine
 * go to one collector. Asserts on failure. */
sinkd_engine *eng_h_open_with(const eng_h_config *hc);
/* Open and start an engine on the CPU backend with the tiny model and the
 * plugin directories @dirs[0..n_dirs). Asserts on failure. */
sinkd_engine *eng_h_open(const char *const *dirs, size_t n_dirs);
/* The same with [server] state_dir = @state_dir (session.save writes its
 * snapshots/ there). */
sinkd_engine *eng_h_open_state(const char *const *dirs, size_t n_dirs, const char *state_dir);
/* Close the engine and drop every frame not taken. */
void eng_h_close(sinkd_engine *e);

void eng_h_frame_free(eng_h_frame *f);
/* The next frame (event or reply) for request @id; asserts after 60 s. */
eng_h_frame *eng_h_next(uint64_t id);
bool eng_h_is_event(const eng_h_frame *f);
/* The name of an event frame ("" for a reply). */
void eng_h_event_name(const eng_h_frame *f, char out[32]);
/* The reply of @id, skipping events; asserts it is ok. */
eng_h_frame *eng_h_reply_ok(uint64_t id);
/* The error code of the reply of @id, skipping events ("" when ok). */
void eng_h_reply_code(uint64_t id, char out[32]);
uint64_t eng_h_u64(const eng_h_frame *f, const char *key);
/* Copy string field @key of @f to @out (asserts it is there). */
void eng_h_str(const eng_h_frame *f, const char *key, char *out, size_t cap);

/* A job for @session from uid 1000 (or an admin). */
sinkd_job *eng_h_job(sinkd_job_kind kind, uint64_t session);
uint64_t eng_h_submit(sinkd_job *j);
uint64_t eng_h_open_session(const char *policy, const char *params);
void eng_h_append(uint64_t s, const int32_t *ids, size_t n);
uint64_t eng_h_generate(uint64_t s, int32_t max_tokens);
/* Token events of generate @id into @out (room for @cap); names of other
 * events seen are appended to @events (may be NULL). Returns the count;
 * @reason gets the reply's. */
size_t eng_h_tokens(uint64_t id, int32_t *out, size_t cap, char reason[16], char *events,
                    size_t events_cap);

/* len_min/len_max of layer @l of a session.stats reply. */
void eng_h_layer_lens(const eng_h_frame *f, uint32_t l, uint64_t *mn, uint64_t *mx);
/* The last position's logits of session @s ([n_vocab]), through
 * session.logits and a memfd. */
void eng_h_logits(uint64_t s, float *out, size_t n_vocab);

#endif /* SINKD_ENG_HARNESS_H */
