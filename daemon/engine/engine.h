/*
 * The sinkd engine: one thread that owns every session, the KV store, the
 * models and all compute (DESIGN.md §2).
 *
 * Op handlers on the loop thread parse and type-check a request, turn it
 * into a job (sinkd_job, which owns copies of everything it needs) and
 * submit it; they never wait. The engine thread loops: run every queued job
 * (session control, appends, raw attention), then ONE decode step for all
 * generating sessions at once (continuous batching: sessions join and leave
 * between steps, at most max_batch per step), streaming token events and
 * finishing generations. A prompt of several chunks runs such a step
 * between two of its chunks too, and the waiting jobs that only read, or
 * open a session, naming none (eng_run_waiting), so that it stalls neither.
 * Every answer leaves through the emit callback (sinkd_server_post in the
 * daemon), addressed by connection id: a frame for a connection that is
 * gone is dropped there.
 *
 * Sessions belong to the uid of the connection that opened them (other uids
 * get not_found; admins see all) and close with that connection unless they
 * were opened with persist.
 */
#ifndef SINKD_ENGINE_H
#define SINKD_ENGINE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "kv.h"
#include "model.h"
#include "sample.h"
#include "shm.h"
#include "tokenizer.h"

typedef struct sinkd_engine sinkd_engine;

/* Hands a malloc'ed frame for connection @conn_id to the transport, which
 * owns it afterwards (also on failure); @frame NULL (@len 0): everything
 * the connection asked is answered, finish it (after a CONN_EOF job).
 * Called on the engine thread. */
typedef int (*sinkd_engine_emit_fn)(void *ud, uint64_t conn_id, uint8_t *frame, size_t len);

/* What sinkd_engine_open needs (config keys in brackets). */
typedef struct sinkd_engine_config {
    const char *backend;          /* [engine] backend: "auto", "cpu", "cuda" */
    int threads;                  /* [engine] threads, 0 = one per CPU */
    sinkd_kv_config kv;           /* [engine] kv_pool_bytes, kv_pool_fraction,
                                     page_tokens, kv_dtype (dtype 255 = auto:
                                     f32 on cpu, f16 on cuda), [quota] pages_per_uid;
                                     kv.head_dim_max is set from the models
                                     and head_dim_max below */
    int32_t head_dim_max;         /* [engine] head_dim_max, 0 = derived from the models */
    int32_t prefill_chunk;        /* [engine] prefill_chunk */
    int32_t max_batch;            /* [engine] max_batch */
    bool cuda_graphs_off;         /* [engine] cuda_graphs = off (zero keeps them on;
                                     SINKD_CUDA_GRAPHS=0 in the environment turns
                                     them off as well) */
    bool score_defer_off;         /* [engine] score_defer = off (zero keeps it on;
                                     SINKD_SCORE_DEFER=0 in the environment turns
                                     it off as well) */
    uint32_t sessions_per_uid;    /* [quota], 0 = unlimited */
    uint32_t generations_per_uid; /* [quota], 0 = unlimited */
    uint64_t session_tokens;      /* [quota] KV tokens per lane of a session: the
                                     default budget and the largest allowed;
                                     0 = unlimited */
    uint64_t request_bytes;       /* [quota] shared-memory bytes per request, 0 = unlimited */
    uint32_t snapshots_per_uid;   /* [quota] session.save files per owner uid, 0 = unlimited */
    const char *const *model_names; /* [model "NAME"] path */
    const char *const *model_paths;
    size_t n_models;
    const char *const *plugin_dirs; /* [plugins] dirs, split */
    size_t n_plugin_dirs;
    size_t max_frame;             /* [server] max_frame: frames built stay under it */
    const char *state_dir;        /* [server] state_dir: persistent sessions and
                                     snapshots; NULL = none */
} sinkd_engine_config;

#define SINKD_KV_DTYPE_AUTO_ENGINE 255

/* A loaded model as model.list shows it. Read-only after sinkd_engine_open. */
typedef struct sinkd_engine_model {
    char *name;
    sinkd_model *model;
    sinkd_tokenizer *tok;
    const sinkd_model_hparams *hp;
    bool add_bos;
    char dtype[8];                /* weight dtype in the file */
    uint64_t file_size, file_hash; /* sinkd_snap_fingerprint: snapshots name it */
} sinkd_engine_model;

/* Counters the loop thread reads for `status` (relaxed atomics). */
typedef struct sinkd_engine_counters {
    atomic_uint_fast64_t sessions;
    atomic_uint_fast64_t generating;
    atomic_uint_fast64_t kv_pool_bytes;
    atomic_uint_fast64_t kv_used_bytes;
    atomic_uint_fast64_t heartbeat_ns;   /* CLOCK_MONOTONIC of the last loop turn */
    atomic_bool busy;                    /* inside a job or a step */
} sinkd_engine_counters;

/* ---- jobs ---------------------------------------------------------------- */

typedef enum sinkd_job_kind {
    SINKD_JOB_SESSION_OPEN = 1,
    SINKD_JOB_SESSION_CLOSE,
    SINKD_JOB_SESSION_LIST,
    SINKD_JOB_SESSION_STATS,
    SINKD_JOB_SESSION_POLICY,
    SINKD_JOB_SESSION_APPEND,
    SINKD_JOB_SESSION_GENERATE,
    SINKD_JOB_SESSION_CANCEL,
    SINKD_JOB_SESSION_LOGITS,
    SINKD_JOB_KV_APPEND,
    SINKD_JOB_ATTEND,
    SINKD_JOB_TOKENIZE,
    SINKD_JOB_DETOKENIZE,
    SINKD_JOB_POLICY_LIST,
    SINKD_JOB_POLICY_LOAD,
    SINKD_JOB_POLICY_RELOAD,
    SINKD_JOB_POLICY_UNLOAD,
    SINKD_JOB_CONN_CLOSED,        /* no answer: close the connection's sessions */
    SINKD_JOB_CONN_EOF,           /* no answer: its peer sends no more; finish it once
                                     its generations end (emit with a NULL frame) */
    SINKD_JOB_DEBUG_STALL,        /* debug.stall (SINKD_DEBUG_OPS builds): sleep n ms */
    SINKD_JOB_SESSION_ATTACH,     /* persist.c: session (id), text (secret) */
    SINKD_JOB_SESSION_SAVE,
    SINKD_JOB_SESSION_RESTORE,    /* session, or text (a snapshot's path) */
    SINKD_JOB_SESSION_FORGET,     /* session (the id of a snapshot to delete) */
} sinkd_job_kind;

/* A range in a client region: the job holds a reference on @r. */
typedef struct sinkd_job_shm {
    sinkd_shm_region *r;          /* NULL: not given */
    uint64_t off;
} sinkd_job_shm;

/* Raw session geometry (session.open without a model). */
typedef struct sinkd_job_geometry {
    int32_t layers, q_heads, kv_heads, head_dim;
    uint8_t dtype;                /* sinkd_dtype of the caller's data; f32 only for now */
    sinkd_rope rope;
} sinkd_job_geometry;

/* Generation parameters of session.generate. */
typedef struct sinkd_job_gen {
    int32_t max_tokens;
    sinkd_sample_params sp;
    bool stream, ignore_eos;
    int32_t *stop_ids;            /* owned */
    size_t n_stop_ids;
    char **stop;                  /* owned, NUL-terminated strings */
    size_t n_stop;
} sinkd_job_gen;

/* One request for the engine. Strings and arrays are owned by the job and
 * freed by sinkd_job_free; shm references are dropped there too. */
typedef struct sinkd_job {
    struct sinkd_job *next;
    sinkd_job_kind kind;
    uint64_t conn_id;             /* who asked; answers go there */
    uint64_t id;                  /* the request id */
    uint32_t uid;
    bool admin;
    uint64_t session;
    char *model;                  /* model name ("" = the first), NULL = raw/none */
    char *policy;                 /* policy name, or a path for policy.load */
    char *params;                 /* policy params */
    char *text;                   /* append / tokenize */
    size_t text_len;
    int32_t *ids;                 /* append / detokenize; attend: page lists flat */
    size_t n_ids;
    int32_t *page_off;            /* attend: [kv_heads + 1] into ids, NULL = dense */
    size_t n_page_off;
    bool has_text, bos_set, bos, special, persist, has_geometry;
    uint64_t budget;
    sinkd_job_geometry geom;
    sinkd_job_gen gen;
    int32_t layer, n;
    bool has_q_pos;
    int64_t q_pos;
    sinkd_job_shm k, v, pos, q, out, scores;   /* kv.append / attend / logits (out) */
    bool spent;                   /* a session.cancel that already stopped what ran
                                   * when it came (engine thread; it stops nothing else) */
} sinkd_job;

/* A zeroed job of @kind for request @id of @conn_id, or NULL (ENOMEM). */
sinkd_job *sinkd_job_new(sinkd_job_kind kind, uint64_t conn_id, uint64_t id, uint32_t uid,
                         bool admin);

/* Free @j and everything it owns (shm references included). NULL is fine. */
void sinkd_job_free(sinkd_job *j);

/* ---- lifecycle ------------------------------------------------------------ */

/* Open the backend, the KV store, load every configured model (a log line
 * each) and the policy registry (scanning the plugin directories), then
 * restore the sessions saved in state_dir (persist.c; a snapshot that
 * cannot be restored is logged and set aside, never fatal). Starts no
 * thread. On success *@out is owned by the caller (sinkd_engine_close).
 * Errors: -ENODEV (backend), -EINVAL/-ENOTSUP (a model that does not load;
 * @err names it), -ENOMEM. */
int sinkd_engine_open(const sinkd_engine_config *cfg, sinkd_engine **out, char *err,
                      size_t errlen);

/* Start the engine thread; answers go to @emit(@ud, ...). Returns 0 or the
 * pthread_create error (negative). */
int sinkd_engine_start(sinkd_engine *e, sinkd_engine_emit_fn emit, void *ud);

/* Queue @j for the engine thread (any thread). The engine owns @j
 * afterwards in every case; once stopping, the job is answered
 * shutting_down. Never blocks on compute. */
void sinkd_engine_submit(sinkd_engine *e, sinkd_job *j);

/* Stop the thread: jobs still queued are answered shutting_down, the step
 * running finishes, running generations end (no reply: the daemon is going
 * away) and every persist=true session is saved to state_dir. Idempotent. */
void sinkd_engine_stop(sinkd_engine *e);

/* Stop if needed, close every session and free everything. NULL is fine. */
void sinkd_engine_close(sinkd_engine *e);

/* ---- read-only views (any thread) ------------------------------------------ */

sinkd_engine_counters *sinkd_engine_counters_get(sinkd_engine *e);
const sinkd_backend_info *sinkd_engine_backend_info(const sinkd_engine *e);
size_t sinkd_engine_n_models(const sinkd_engine *e);
const sinkd_engine_model *sinkd_engine_model_at(const sinkd_engine *e, size_t i);
/* The model named @name (@len bytes; len 0 = the first model), or NULL. */
const sinkd_engine_model *sinkd_engine_model_find(const sinkd_engine *e, const char *name,
                                                  size_t len);

/* Watchdog condition: false when the engine has been inside one job or step
 * for longer than @stall_ns (it is stuck), true otherwise. */
bool sinkd_engine_alive(sinkd_engine *e, uint64_t stall_ns);

#endif /* SINKD_ENGINE_H */
