/*
 * Engine internals shared by the engine's source files. Everything here is
 * touched by the engine thread only, except the job queue (under mu) and the
 * counters (atomics).
 */
#ifndef SINKD_ENGINE_INTERNAL_H
#define SINKD_ENGINE_INTERNAL_H

#include <pthread.h>

#include "engine.h"
#include "host.h"
#include "proto.h"

/* Recent tokens a session remembers for the repetition penalty. */
#define ENG_HIST 1024
/* Longest stop string accepted, bytes. */
#define ENG_STOP_MAX 256

typedef struct eng_session {
    uint64_t id;
    char secret[33];              /* 128 random bits, hex */
    uint32_t uid;
    uint64_t conn_id;             /* the connection that opened it */
    bool persist;
    const sinkd_engine_model *m;  /* NULL: raw session */
    sinkd_job_geometry geom;      /* shape (derived from the model for model sessions) */
    sinkd_kv_seq *seq;
    int64_t max_pages;            /* the KV budget, < 0 none */
    sinkd_policy_inst *inst;
    uint8_t rope_mode;            /* what the lanes run with now */
    int32_t *next_pos;            /* [layers] next original position per layer */
    int64_t tokens;               /* positions consumed (model: n_past) */
    uint64_t evictions, evicted_tokens;
    bool evicted_after_prefill;   /* SINKD_EVICT_PREFILL has run */
    char fallback[160];           /* "" unless the policy fell back */
    /* model sessions */
    float *logits;                /* [n_vocab] of the last position */
    bool has_logits;
    int32_t pending;              /* sampled, sent, not yet in the KV; -1 none */
    int32_t hist[ENG_HIST];       /* ring of recent tokens */
    int64_t n_hist;
    /* the generation in flight */
    sinkd_job *gen;               /* owns the request; NULL when idle */
    sinkd_sampler sampler;
    sinkd_detok detok;
    int32_t gen_n;                /* tokens sent */
    int32_t feed;                 /* token to run through the model next step */
    char *text;                   /* generated text so far */
    size_t text_len, text_cap, text_sent;
    bool cancel;
    uint64_t gen_start_ns, decode_ns;
    double prefill_ms;            /* of the last append */
    bool prefill_final;           /* the prefill chunk running is the prompt's last */
} eng_session;

/* Host scratch for eviction and statistics, grown on demand (never per step
 * once warm). */
typedef struct eng_scratch {
    int32_t *pos;
    float *score;
    int32_t *keep;
    size_t cap;                   /* entries of pos/score/keep, per lane set */
    int32_t *keep_off;            /* [lanes + 1] */
    sinkd_policy_lane *lanes;
    size_t lanes_cap;
    float *kbuf;                  /* KEY_NORM: one lane's keys */
    size_t kbuf_cap;
} eng_scratch;

struct sinkd_engine {
    sinkd_backend *be;
    sinkd_kv *kv;
    sinkd_engine_model *models;
    size_t n_models;
    sinkd_policy_registry *reg;
    int32_t prefill_chunk, max_batch, page_tokens;
    uint32_t sessions_per_uid, generations_per_uid;
    size_t max_frame;

    pthread_t thr;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    sinkd_job *head, *tail;       /* under mu */
    bool stopping;                /* under mu */
    sinkd_engine_emit_fn emit;
    void *emit_ud;
    sinkd_engine_counters ctr;

    eng_session **sess;
    size_t n_sess, cap_sess;
    uint64_t next_sess;
    size_t rr;                    /* round-robin start of the next batch */

    /* decode step scratch, sized for max_batch */
    eng_session **batch;
    sinkd_kv_seq **seqs;
    int32_t *ids, *pos;
    float *logits;                /* [max_batch][n_vocab_max] */
    int32_t n_vocab_max;

    /* device buffers for raw sessions and selection, grown on demand */
    void *dbuf[4];
    size_t dcap[4];
    float *hbuf[4];               /* host staging, same slots as dbuf */
    size_t hcap[4];

    eng_scratch sc;
};

/* engine.c: answers (engine thread) */
void eng_error(sinkd_engine *e, const sinkd_job *j, sinkd_errcode code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Answer the error a negative errno from the store, the model or a region
 * means: -EDQUOT quota_exceeded, -ENOMEM no_memory, -ERANGE/-EFAULT
 * bad_shm, -EINVAL invalid_argument, else internal. @what prefixes it. */
void eng_error_errno(sinkd_engine *e, const sinkd_job *j, int rc, const char *what);
int eng_begin_reply(sinkd_fw *w, const sinkd_job *j, uint32_t extra);
int eng_begin_event(sinkd_fw *w, const sinkd_job *j, const char *ev, uint32_t extra);
/* Finish and emit @w (released in every case); a frame over max_frame is
 * replaced by an internal error when it was the reply. */
void eng_send(sinkd_engine *e, const sinkd_job *j, sinkd_fw *w, bool reply);
void eng_reply_empty(sinkd_engine *e, const sinkd_job *j);
uint64_t eng_now_ns(void);
/* Make sure *@p (device, @slot of e->dbuf) holds at least @bytes. */
int eng_dev_reserve(sinkd_engine *e, int slot, size_t bytes);
int eng_host_reserve(sinkd_engine *e, int slot, size_t floats);
void eng_update_memory(sinkd_engine *e);
/* Liveness: the engine is working (@busy) and made progress now. */
void eng_beat(sinkd_engine *e, bool busy);

/* session.c */
eng_session *eng_session_find(sinkd_engine *e, const sinkd_job *j);
void eng_session_destroy(sinkd_engine *e, eng_session *s);
void eng_job_session_open(sinkd_engine *e, sinkd_job *j);
void eng_job_session_close(sinkd_engine *e, sinkd_job *j);
void eng_job_session_list(sinkd_engine *e, sinkd_job *j);
void eng_job_session_stats(sinkd_engine *e, sinkd_job *j);
void eng_job_session_policy(sinkd_engine *e, sinkd_job *j);
void eng_job_conn_closed(sinkd_engine *e, sinkd_job *j);
void eng_job_policy(sinkd_engine *e, sinkd_job *j);

/* raw.c */
void eng_job_kv_append(sinkd_engine *e, sinkd_job *j);
void eng_job_attend(sinkd_engine *e, sinkd_job *j);

/* gen.c */
void eng_job_append(sinkd_engine *e, sinkd_job *j);
void eng_job_generate(sinkd_engine *e, sinkd_job *j);
void eng_job_cancel(sinkd_engine *e, sinkd_job *j);
void eng_job_logits(sinkd_engine *e, sinkd_job *j);
void eng_job_tokenize(sinkd_engine *e, sinkd_job *j);
void eng_job_detokenize(sinkd_engine *e, sinkd_job *j);
/* Run one decode step over the generating sessions; false when none. */
bool eng_step(sinkd_engine *e);
/* End @s's generation with @reason, replying unless @silent. */
void eng_gen_finish(sinkd_engine *e, eng_session *s, const char *reason, bool silent);

/* policy.c: plan execution */
/* Score op and decay of the plan's statistic during decode. */
void eng_plan_score_op(const eng_session *s, int32_t *op, float *decay);
/* The model hook for @s (prefill) with its context. */
void eng_prefill_hook(eng_session *s, sinkd_model_hook *h);
/* Evict every lane of @layer (-1: all layers) of @s over its threshold
 * (@after_prefill: the end of a prompt). @j is the request in flight, told
 * when the policy falls back. Returns 0 or a negative errno. */
int eng_evict(sinkd_engine *e, eng_session *s, int32_t layer, bool after_prefill,
              const sinkd_job *j);
/* Apply the instance's rope mode to @s's lanes. */
int eng_apply_rope(sinkd_engine *e, eng_session *s);
/* Hook context of a decode batch: sessions sharing model, rope and stat. */
typedef struct eng_decode_ctx {
    sinkd_engine *e;
    eng_session **ss;
    int32_t n;
    int32_t score_op;
    float decay;
    int32_t select_k;             /* > 0: Quest pages per lane (a group of one) */
} eng_decode_ctx;
int eng_decode_hook(void *ctx, int32_t layer, sinkd_decode_args *a);
/* Pages a session's plan selects per lane at decode, 0 = dense. */
int32_t eng_select_k(const eng_session *s, int32_t page_tokens);
/* Device buffers of the selection of a decode group (@c->select_k > 0). */
int eng_select_prepare(eng_decode_ctx *c);

#endif /* SINKD_ENGINE_INTERNAL_H */
