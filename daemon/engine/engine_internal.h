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
/* Device (and host staging) buffer slots of the engine. */
#define ENG_DBUF 12

/* What a plan asks of a forward; sessions whose exec compare equal (and
 * whose plans select from the same layers) share one decode call. */
typedef struct eng_exec {
    int32_t score_op;             /* the attention op's own statistic */
    float decay;
    uint8_t stat;                 /* sinkd_policy_stat */
    uint8_t select;               /* sinkd_policy_select; DENSE when k covers every lane */
    bool host_select;             /* the plugin's select callback ranks (a group of one) */
    bool post;                    /* a rule runs after attention (QUANTILE, GUMBEL) */
    float quantile, keep, temperature;
    int32_t k;                    /* selected pages (PAGES) or tokens (TOKENS) per lane */
} eng_exec;

/* Decode batch selection (sched.c): scratch grown on demand and a step
 * counter that stamps the sessions each step serves. */
typedef struct eng_sched {
    struct eng_sched_cand *cand;
    size_t cap;
    uint64_t step;
} eng_sched;

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
    uint32_t inst_caps;           /* SINKD_POLICY_CAP_* of inst (policy.c) */
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
    /* detok holds the first bytes of a character that the last
     * generation's last token began: the next generation completes it when
     * nothing was appended in between (an append drops it) */
    bool detok_carry;
    bool gen_eof;                 /* gen's connection waits for its end to finish */
    int32_t gen_n;                /* tokens sent */
    int32_t feed;                 /* token to run through the model next step */
    char *text;                   /* generated text so far */
    size_t text_len, text_cap, text_sent;
    bool cancel;
    bool prompting;               /* a prompt runs (gen__prefill): jobs that run
                                   * between its chunks list prompt_p0 tokens */
    int64_t prompt_p0;
    uint64_t gen_start_ns, decode_ns;
    uint64_t tok_first_ns, tok_last_ns; /* when the first and last token of
                                           the generation were sampled */
    double prefill_ms;            /* of the last append */
    uint64_t sched_stamp;         /* sched.c: the step that last served it */
    /* defer.c: the deferral block (device, NULL until a step defers), which
     * layers may hold pending probabilities, and the plan and rotation they
     * were left under (its op and decay; rows mode for QUANTILE and GUMBEL,
     * whose rule runs on each row) */
    void *defer;
    uint8_t *defer_pend;          /* [layers] */
    eng_exec defer_x;
    uint8_t defer_rope_mode;
    bool defer_off;               /* no block could be had: score at once */
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
} eng_scratch;

struct sinkd_engine {
    sinkd_backend *be;
    sinkd_kv *kv;
    sinkd_engine_model *models;
    size_t n_models;
    sinkd_policy_registry *reg;
    int32_t prefill_chunk, max_batch, page_tokens;
    bool score_defer;             /* [engine] score_defer (defer.c) */
    /* defer.c: blocks of closed sessions kept for the next ones (a
     * cudaFree waits for the whole device: a session closing would stall
     * every other session's stream) */
    struct eng_defer_spare {
        void *p;
        size_t bytes;
    } *defer_spare;
    size_t n_defer_spare;
    int32_t defer_up_n;           /* defer.c: the pointers last uploaded to */
    void *defer_up_dev;           /* ENG_SLOT_DEFER (h holds them), 0: none */
    uint32_t sessions_per_uid, generations_per_uid;
    uint64_t session_tokens;      /* session.c: budget default and cap, 0 = none */
    uint64_t request_bytes;       /* quota.c */
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
    eng_sched sched;              /* sched.c: fair batch selection */

    /* decode step scratch, sized for max_batch */
    eng_session **batch;
    sinkd_kv_seq **seqs;
    int32_t *ids, *pos;
    int32_t *picked;              /* tokens the backend's argmax chose */
    float *logits;                /* [max_batch][n_vocab_max] */
    eng_session **ab_sess;        /* one-token appends waiting to run as */
    sinkd_job **ab_jobs;          /* one batch, [max_batch] each */
    int32_t n_vocab_max;

    /* device buffers for raw sessions and selection, grown on demand */
    void *dbuf[ENG_DBUF];
    size_t dcap[ENG_DBUF];
    float *hbuf[ENG_DBUF];             /* host staging, same slots as dbuf */
    size_t hcap[ENG_DBUF];
    sinkd_job *run_rest;          /* jobs taken from the queue, not yet run */
    sinkd_stat_args *rules;       /* exec.c: a step's rules, run at its end */
    int32_t rules_cap;

    eng_scratch sc;
    char *state_dir;              /* persist.c; NULL: sessions do not persist */
    /* persist.c: the files of snapshots/ and their owners, read once at
     * start and kept by session.save and session.forget ([quota]
     * snapshots_per_uid counts them without reading a file) */
    struct eng_snap_ref {
        uint64_t id;
        uint32_t uid;             /* ENG_SNAP_NOBODY: the head did not read */
    } *snaps;
    size_t n_snaps, cap_snaps;
    uint32_t snapshots_per_uid;
};

/* The owner of a snapshot whose head cannot be read: (uid_t)-1, which no
 * connection has. It keeps its id and counts for nobody. */
#define ENG_SNAP_NOBODY UINT32_MAX

/* engine.c: answers (engine thread) */
void eng_error(sinkd_engine *e, const sinkd_job *j, sinkd_errcode code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Answer the error a negative errno from the store, the model or a region
 * means: -EDQUOT quota_exceeded, -ENOMEM no_memory, -ERANGE/-EFAULT
 * bad_shm, -EINVAL invalid_argument, else internal. @what prefixes it. */
void eng_error_errno(sinkd_engine *e, const sinkd_job *j, int rc, const char *what);
/* Which KV budget the store's last -EDQUOT hit, in words (static). */
const char *eng_quota_reason(const sinkd_engine *e);
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
/* Sessions @uid holds ([quota] sessions_per_uid counts them). */
size_t eng_uid_sessions(const sinkd_engine *e, uint32_t uid);

/* Pairs eng_pack_session packs: the reply of session.open (and attach). */
#define ENG_SESSION_REPLY_PAIRS 8
void eng_pack_session(sinkd_fw *w, const eng_session *s);
/* The geometry a policy instance of @s is created with. */
void eng_policy_geometry(const sinkd_engine *e, const eng_session *s, sinkd_policy_geometry *g);
/* The session @j names if @j's uid may use it, else NULL (another uid's
 * session looks like one that does not exist). */
eng_session *eng_session_lookup(const sinkd_engine *e, const sinkd_job *j);
/* eng_session_lookup, with a not_found reply to @j when it finds none. */
eng_session *eng_session_find(sinkd_engine *e, const sinkd_job *j);
void eng_session_destroy(sinkd_engine *e, eng_session *s);
/* Room in e->sess for one more session: 0, or -ENOMEM with the table as it
 * was. */
int eng_sess_room(sinkd_engine *e);
void eng_job_session_open(sinkd_engine *e, sinkd_job *j);
/* Whether a prefill of @s asked by @req (may be NULL) should stop now,
 * for a job waiting behind the running one: -ECONNABORTED when @req's
 * connection has closed (its CONN_CLOSED job waits), -ECANCELED for a
 * session.close of @s, or a session.cancel of @s that no session.generate
 * of @s waits ahead of (that one is the generation's) and that stopped
 * nothing yet (it is spent here), from a caller who may touch it; 0
 * otherwise. Engine thread. */
int eng_prefill_stop(sinkd_engine *e, const eng_session *s, const sinkd_job *req);
/* Before a step inside a long prompt (gen__prefill), which runs ahead of
 * the jobs queued behind the prompt: mark cancelled every generation whose
 * session.cancel (spent here) or session.close waits, or whose connection
 * has closed, so that it ends as it would have. Engine thread. */
void eng_gen_stops_waiting(sinkd_engine *e);
/* Whether sinkd_engine_stop was called (then no step runs: the main loop
 * runs none either). Any thread. */
bool eng_stopping(sinkd_engine *e);
/* Inside a long prompt asked by @req (may be NULL), between two chunks:
 * run the waiting jobs that read, or create a session, and name no
 * existing session (tokenize, detokenize; session.list, policy.list and
 * session.open unless a job that changes which sessions or policies exist
 * waits ahead of them), so that they do not wait for the whole prompt. A
 * connection's answers keep their order: none of @req's connection runs,
 * nor any behind a job of its connection that must wait (the first 31
 * such connections; the scan stops there). Engine thread. */
void eng_run_waiting(sinkd_engine *e, const sinkd_job *req);
void eng_job_session_close(sinkd_engine *e, sinkd_job *j);
void eng_job_session_list(sinkd_engine *e, sinkd_job *j);
void eng_job_session_stats(sinkd_engine *e, sinkd_job *j);
void eng_job_session_policy(sinkd_engine *e, sinkd_job *j);
void eng_job_conn_closed(sinkd_engine *e, sinkd_job *j);
/* The connection's peer sends no more: finish it now, or when the last
 * generation it asked for ends. */
void eng_job_conn_eof(sinkd_engine *e, sinkd_job *j);
/* Tell the transport that connection @conn_id has every answer it is owed
 * (its peer having shut down its sending side): it closes once they are
 * written. */
void eng_conn_finish(sinkd_engine *e, uint64_t conn_id);
void eng_job_policy(sinkd_engine *e, sinkd_job *j);

/* raw.c */
void eng_job_kv_append(sinkd_engine *e, sinkd_job *j);
void eng_job_attend(sinkd_engine *e, sinkd_job *j);

/* gen.c */
void eng_job_append(sinkd_engine *e, sinkd_job *j);
/* The session @j appends exactly one token to, when that append may run in
 * one decode call with others (ids not text, one valid id, no BOS or
 * pending token to feed first, a model session that is not generating);
 * NULL otherwise. Answers nothing: such a job runs alone and answers then. */
eng_session *eng_append_single(sinkd_engine *e, const sinkd_job *j);
/* Run the @n one-token appends @jobs (their sessions @ss, from
 * eng_append_single, pairwise distinct) as decode calls of compatible
 * groups and answer each. Reorders both arrays; the caller keeps and frees
 * the jobs. */
void eng_append_batch(sinkd_engine *e, eng_session **ss, sinkd_job **jobs, int32_t n);
void eng_job_generate(sinkd_engine *e, sinkd_job *j);
void eng_job_cancel(sinkd_engine *e, sinkd_job *j);
void eng_job_logits(sinkd_engine *e, sinkd_job *j);
void eng_job_tokenize(sinkd_engine *e, sinkd_job *j);
void eng_job_detokenize(sinkd_engine *e, sinkd_job *j);
/* Run one decode step over the generating sessions; false when none. */
bool eng_step(sinkd_engine *e);
/* End @s's generation with @reason, replying unless @silent. */
void eng_gen_finish(sinkd_engine *e, eng_session *s, const char *reason, bool silent);

/* sched.c */
/* Fill e->batch with the sessions the next decode step runs: round-robin
 * across uids, then across each uid's sessions, least recently served
 * first, at most max_batch. Ends the generations cancelled meanwhile.
 * Returns the count. Never fails (without scratch memory it falls back to
 * table order). */
int32_t eng_sched_fill(sinkd_engine *e);
void eng_sched_free(sinkd_engine *e);

/* debug.c: sleep j->n ms inside the job without a heartbeat (a stuck
 * engine, for the watchdog test), then reply {}. */
void eng_job_debug_stall(sinkd_engine *e, sinkd_job *j);

/* quota.c */
/* [quota] request_bytes: answers quota_exceeded and returns -EDQUOT when the
 * given ones of the @n ranges @r (@bytes each) that @j references add up to
 * more than the quota; 0 otherwise. */
int eng_quota_shm(sinkd_engine *e, const sinkd_job *j, const sinkd_job_shm *const *r,
                  const uint64_t *bytes, int n);

/* policy.c: statistics, hooks and eviction; exec.c: decode-time plan
 * execution (statistics around attention, page and token selection) */

/* Device and host staging slots of e->dbuf / e->hbuf: raw.c uses 0..3. */
enum {
    ENG_SLOT_SEL_OFF = 4,
    ENG_SLOT_SEL_PAGES = 5,
    ENG_SLOT_PREV = 6,
    ENG_SLOT_PSCORE = 7,
    ENG_SLOT_POST_LANES = 8, /* the lane arrays of the layer whose post step is
                              * due ([layers] of them with batch_rules) */
    ENG_SLOT_PICKED = 9,     /* the argmax's ids of a greedy step */
    ENG_SLOT_DEFER = 10,     /* a deferring step's block pointers, [n] */
    ENG_SLOT_ROW_LEN = 11,   /* deferred rows' lengths: [layers][lanes] in a
                              * step, [kv heads] in a settle (defer.c) */
};


/* Score op and decay of the plan's statistic for an attention op that
 * updates pool->score by itself (raw attend; QUANTILE and GUMBEL read as
 * plain sums there). */
void eng_plan_score_op(const eng_session *s, int32_t *op, float *decay);
/* The attention op's own prefill statistics for session @ctx (a model
 * hook callback), and a hook running only them (raw attend). */
int eng_prefill_stat(void *ctx, int32_t layer, sinkd_prefill_args *a);
void eng_prefill_hook(eng_session *s, sinkd_model_hook *h);
/* The exec of @s's current plan. */
void eng_plan_exec(const sinkd_engine *e, const eng_session *s, eng_exec *x);
/* Whether @a and @b can share one decode call (model, rope, exec, selection
 * layers). */
bool eng_plan_compatible(const sinkd_engine *e, const eng_session *a, const eng_session *b);
/* Record what the engine needs to know of @s's instance (its caps); call
 * after every change of s->inst. */
void eng_policy_attach(sinkd_engine *e, eng_session *s);
/* The caps of @inst's version when it is the registry's current one, else 0. */
uint32_t eng_policy_caps(sinkd_engine *e, const sinkd_policy_inst *inst);
/* After a swap from a plan keeping statistic @old_stat: zero every score
 * slot of @s when the new plan keeps another statistic. */
int eng_policy_swapped(sinkd_engine *e, eng_session *s, uint8_t old_stat);
/* Run stat op @op (ZERO, or KEY_NORM of every token) over @lanes of @s. */
int eng_stat_lanes(sinkd_engine *e, const eng_session *s, const sinkd_lanes *lanes, int32_t op);
/* Record and announce (policy_fallback event on @j, may be NULL) that @s's
 * instance fell back to window. */
void eng_tell_fallback(sinkd_engine *e, eng_session *s, const sinkd_job *j);
/* Evict every lane of @layer (-1: all layers) of @s over its threshold:
 * budget + slack, for SINKD_EVICT_PREFILL only at @append_end (the end of
 * a session.append: in a conversation every append is a prompt). @j is the
 * request in flight, told when the policy falls back. Returns 0 or a
 * negative errno. */
int eng_evict(sinkd_engine *e, eng_session *s, int32_t layer, bool append_end,
              const sinkd_job *j);
/* Apply the instance's rope mode to @s's lanes. */
int eng_apply_rope(sinkd_engine *e, eng_session *s);

/* Hook context of one forward: a prefill chunk of one session or a decode
 * step of a group of sessions sharing model, rope and exec. */
typedef struct eng_fwd_ctx {
    sinkd_engine *e;
    eng_session **ss;
    int32_t n;
    eng_session *self;            /* prefill: ss = &self */
    eng_exec x;
    int32_t n_lanes;              /* n * kv_heads */
    int32_t width;                /* entries per lane of a selection row */
    int32_t pending;              /* layer whose post-attention work is due, -1 none */
    sinkd_lanes post_lanes;       /* its lane arrays, kept in ENG_SLOT_POST_LANES */
    /* QUANTILE and GUMBEL of a decode step run at its end, every layer's
     * lanes in one ops->stat_rules (e->rules[0 .. n_rules)); each layer's
     * lane arrays stay at lanes_stride ints apart in ENG_SLOT_POST_LANES */
    bool batch_rules;
    int32_t n_rules;
    size_t lanes_stride;
    bool fell_back;               /* a select callback failed: dense from here */
    const sinkd_job *req;         /* told of a fallback: the generation or the append */
    const sinkd_job *stop_req;    /* prefill: the append, stopped between layers
                                   * when eng_prefill_stop says so */
    uint64_t seed;                /* Gumbel noise of this forward's own rows
                                   * (a deferred row takes its step's) */
    bool defer;                   /* the step's scores are deferred (defer.c) */
} eng_fwd_ctx;

/* defer.c: deferred decode scores */
/* Decide whether @c's decode step defers its scores: settle any session
 * whose pending probabilities this step would not apply (another op, or no
 * deferral), give each session its block and upload the step's block
 * pointers (ENG_SLOT_DEFER). Sets c->defer. Returns 0 or a negative errno. */
int eng_defer_begin(eng_fwd_ctx *c);
/* Apply @s's pending probabilities of @layer (-1: every layer) to its
 * scores; a no-op where none are pending. Call before anything but a
 * deferring decode step reads scores or moves keys. Returns 0 or a negative
 * errno. */
int eng_defer_settle(sinkd_engine *e, eng_session *s, int32_t layer);
/* Device bytes of @s's deferral block, 0 while it has none. */
size_t eng_defer_bytes(const sinkd_engine *e, const eng_session *s);
/* Drop @s's pending probabilities (their scores stay as they were): when
 * settling failed and keys must move anyway. */
void eng_defer_drop(sinkd_engine *e, eng_session *s);
/* Give up @s's block (pending probabilities are dropped): kept as a spare
 * for the next session, or freed. */
void eng_defer_free(sinkd_engine *e, eng_session *s);
/* Free the spare blocks (engine close). */
void eng_defer_spares_free(sinkd_engine *e);

/* Prepare @c and @h for a decode step of @ss[0..n) (buffers, selection
 * offsets). Returns 0 or a negative errno. */
int eng_decode_begin(eng_fwd_ctx *c, sinkd_model_hook *h, sinkd_engine *e, eng_session **ss,
                     int32_t n);
/* Prepare @c and @h for a prefill chunk of @s. Returns 0 or a negative
 * errno. */
int eng_prefill_begin(eng_fwd_ctx *c, sinkd_model_hook *h, sinkd_engine *e, eng_session *s);
/* After the forward returned @rc: run the work still due after the last
 * attention op, whatever rc is (so that scores are whole again). Returns rc,
 * or the error of that work when rc was 0. */
int eng_fwd_end(eng_fwd_ctx *c, int rc);
/* The rule of @s's rows mode (s->defer_x: QUANTILE or GUMBEL) on the row
 * that ops->score_flush just wrote for @ln (@s's lanes of @layer) into
 * ENG_SLOT_PREV, with its lengths in ENG_SLOT_ROW_LEN. Returns 0 or a
 * negative errno. */
int eng_exec_row_rule(sinkd_engine *e, eng_session *s, int32_t layer, const sinkd_lanes *ln);
/* Reserve ENG_SLOT_PREV: one float per pool slot. */
int eng_exec_prev(sinkd_engine *e);

/* persist.c: snapshots in the state directory */
/* Use @state_dir (created 0700 if missing, with sessions/ and snapshots/)
 * and restore every session saved in sessions/. Before the thread starts.
 * Returns 0 or a negative errno (logged; sessions then do not persist). */
int eng_persist_open(sinkd_engine *e, const char *state_dir);
/* Save every persist=true session to sessions/ (shutdown, generations
 * ended). Failures are logged; the older file of a session whose save
 * failed is set aside (<id>.snap.bad), not restored as if current. */
void eng_persist_save_all(sinkd_engine *e);
/* session.attach, session.save, session.restore, session.forget. */
void eng_job_persist(sinkd_engine *e, sinkd_job *j);
/* Free what eng_persist_open kept (engine close). Safe when it never ran. */
void eng_persist_close(sinkd_engine *e);

#endif /* SINKD_ENGINE_INTERNAL_H */
