/*
 * sinkd policy plugins: the ABI, version 1.
 *
 * A policy decides what stays in each KV-cache lane of a session (eviction)
 * and what each decode step attends to (selection). It is a shared object
 * that exports ONE function,
 *
 *     const sinkd_policy *sinkd_policy_v1(void);
 *
 * returning a pointer to a constant descriptor that lives as long as the
 * object is loaded. A function and not a data symbol, because dlsym() on data
 * is not portable and because the function may pick a descriptor at run time.
 * The daemon (the "host") dlopen()s the file, calls sinkd_policy_v1(),
 * validates what it gets and runs a self-test before any session may use it.
 *
 * This header is the whole contract: it includes only <stdint.h>, and a
 * plugin includes only this header. Build one with
 *
 *     cc -shared -fPIC -O2 -I/usr/include/sinkd mypolicy.c -o mypolicy.so
 *
 * TWO LEVELS. A policy describes itself with a *plan* (struct sinkd_policy_plan):
 * which statistic the engine keeps per cached token, the budgets, sinks,
 * recent window, when to evict, the rope mode and the decode selection. The
 * engine executes a plan in two places:
 *
 *   - Every step, on the device: the statistic (updated by the attention
 *     kernel, or by the engine's statistic kernels right after it), the
 *     per-page key bounds, and decode-time selection (top-k pages by their
 *     bound, or the pages of the top-k tokens). The plan adds no copy to
 *     the host per step.
 *   - At each eviction point (enum sinkd_policy_evict_at), on the host and
 *     then the device: for each layer with a lane over its limit (checked
 *     on the host from the lane lengths), the engine reads every lane of
 *     that layer (positions, and scores unless the statistic is NONE) from
 *     the device into host arrays, waiting for the device to finish (for
 *     STAT_KEY_NORM it first computes the norms on the device); computes
 *     the keep lists on the host (ranking, pooling, sinks, recent, head
 *     kinds, scope); uploads them; and the device compacts the lanes (K, V,
 *     positions, scores, bounds) and returns whole pages to the pool.
 *
 * So an eviction costs a read of its layers' lanes to the host, a device
 * synchronisation and a host sort, O(len log len) per lane. It is amortised:
 * each eviction cuts a lane to its budget, so the next comes `slack` tokens
 * later (default one page), not every step (slack=0 evicts at every step
 * once over budget). On the CPU backend the "device" is host memory and
 * the reads are copies.
 *
 * The optional evict and select callbacks are the escape hatch for rules no
 * plan can express. evict replaces only the host's keep rule, at the same
 * eviction points and on the same host arrays: it costs what a plan-driven
 * eviction costs, the same read, sort budget and compaction, with the
 * plugin's code in place of the engine's own C rule (and a failure ends the
 * policy for the session, see evict). select replaces the device's top-k,
 * and that costs at every step: for each selecting layer the engine copies
 * positions and page bounds or this step's probabilities to the host,
 * waits, calls select and uploads its pages; and a session whose policy
 * selects this way decodes alone, not batched with other sessions. Prefer
 * the plan.
 *
 * VERSIONING (SQLite's habit). Structs carry their size. Fields are only
 * ever appended; a new field bumps SINKD_POLICY_ABI_MINOR; a change that
 * breaks old plugins bumps SINKD_POLICY_ABI_MAJOR and the host refuses
 * plugins of another major. The host reads a descriptor field only if the
 * descriptor's struct_size covers it; a plugin built against a newer minor
 * therefore loads on an older host (the fields it added are ignored), and a
 * plugin must check a host struct's struct_size before touching a field newer
 * than the minor it was built against (SINKD_POLICY_HAS).
 *
 * CONVENTIONS. Fixed-width integers only; every padding byte is an explicit
 * field, checked below with _Static_assert on LP64. Every callback returns 0
 * or a negative errno value (-EINVAL, -ENOMEM, ...; the numbers are Linux's).
 * The "lane" is the KV cache of one (session, layer, kv head); "index" is a
 * token's place in its lane, 0 = oldest kept token; "position" is the
 * token's original position in the conversation.
 *
 * THREADS. sinkd calls into plugins from one thread, its engine thread:
 * the thread that also runs every session's prefill and decode steps. That
 * holds for loading (dlopen, sinkd_policy_v1() and the self-test, which
 * calls create, plan, the evict/select/reconfigure callbacks the plugin
 * has, and destroy, for policy.load and policy.reload) and for every
 * callback of every session.
 * The exceptions run while no engine thread exists: at start-up the scan
 * of the plugin directories and the restore of saved sessions run on the
 * daemon's main thread before the engine thread starts, and at shutdown the
 * states left are destroyed there after it has stopped. So no two calls
 * into plugins overlap; in particular the host never calls two callbacks
 * on the same state at once. (The contract promises only that last part:
 * keep no mutable globals, per-session data belongs in the state.)
 *
 * What follows for plugin authors: while any callback runs, no session
 * anywhere makes progress. create, plan and reconfigure (and destroy) must
 * be quick and must not block: no network, no waiting on locks, pipes or
 * other processes, no I/O beyond reading a small local file (opened
 * without blocking and size-checked, as plugins/duo.c does); evict and
 * select have the tighter budgets given with them. A call stuck for two
 * minutes (less under a shorter systemd WatchdogSec) also makes the daemon
 * withhold its watchdog ping, so systemd takes it for hung.
 */
#ifndef SINKD_POLICY_H
#define SINKD_POLICY_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SINKD_POLICY_ABI_MAJOR 1
#define SINKD_POLICY_ABI_MINOR 0

/* The symbol the host looks up. */
#define SINKD_POLICY_ENTRY "sinkd_policy_v1"

/* Mark the entry point exported even when building with -fvisibility=hidden. */
#if defined(__GNUC__)
#define SINKD_POLICY_EXPORT __attribute__((visibility("default")))
#else
#define SINKD_POLICY_EXPORT
#endif

/* True when the struct @s (which has a struct_size field) covers @field. */
#define SINKD_POLICY_HAS(s, field) \
    ((s)->struct_size >= (uint32_t)((const char *)&(s)->field - (const char *)(s)) + sizeof((s)->field))

/* ------------------------------------------------------------------------ */
/* Capabilities: what the descriptor promises. The host refuses a descriptor
 * with a bit it does not know, and one whose bits and callbacks disagree. */
enum {
    SINKD_POLICY_CAP_EVICT = 1u << 0,       /* evict() replaces the plan's keep rule */
    SINKD_POLICY_CAP_SELECT = 1u << 1,      /* select() replaces the plan's selection */
    SINKD_POLICY_CAP_RECONFIGURE = 1u << 2, /* reconfigure() changes params live */
};
#define SINKD_POLICY_CAPS_KNOWN 0x7u

/* The per-token statistic the engine keeps in each cached token's score
 * slot, on the device: updated at every step by the attention kernel or the
 * engine's statistic kernels after it (KEY_NORM: computed at each eviction
 * point instead). For every statistic a HIGHER score means MORE worth
 * keeping. p is the attention probability of a key, summed over the query
 * heads of its GQA group. On raw sessions (driven by a client through
 * kv.append and attend, see protocol/PROTOCOL.md) QUANTILE and GUMBEL
 * accumulate plain sums of p instead: their rules run in the model's
 * forward only. */
enum sinkd_policy_stat {
    SINKD_STAT_NONE = 0,      /* no score: recency/position rules only (the
                                 score slots are unspecified; with token
                                 selection they hold the selecting layer's
                                 last probabilities) */
    SINKD_STAT_SUM = 1,       /* score += p every step (H2O) */
    SINKD_STAT_DECAY = 2,     /* score = decay * score + p (A2SF) */
    SINKD_STAT_LAST = 3,      /* score = p of the last query (TOVA) */
    SINKD_STAT_OBS_WINDOW = 4,/* SnapKV's vote: when an append's chunk holds the whole
                                 window, score = sum of p over its last obs_window
                                 queries; otherwise (short appends, decode steps) a
                                 running sum decayed by 1 - 1/obs_window per query */
    SINKD_STAT_KEY_NORM = 5,  /* score = -||k||_2 of the pre-RoPE key (low norm = important) */
    SINKD_STAT_QUANTILE = 6,  /* score = (1 - 1/history) * score + (p beats the
                                 quantile of its row ? 1 : 0): how often a token was
                                 heavy, each step's hit fading by (1 - 1/history) per
                                 step after it (to ~1/e after `history` steps), not an
                                 exact window of the last `history` steps (Scissorhands) */
    SINKD_STAT_GUMBEL = 7,    /* score += softmax((logit + g) / temperature), g ~ Gumbel(0,1)
                                 drawn by the engine (Keyformer) */
};

/* Pooling of scores along the lane before ranking (SnapKV's clustering). A
 * window of pool_kernel tokens centred on each token; tokens past the ends
 * count as -inf for MAX and as 0 for AVG, which divides by pool_kernel
 * (PyTorch's avg_pool1d with count_include_pad). */
enum sinkd_policy_pool {
    SINKD_POOL_NONE = 0,
    SINKD_POOL_MAX = 1,
    SINKD_POOL_AVG = 2,
};

/* Where a ranking is made. */
enum sinkd_policy_scope {
    SINKD_SCOPE_LANE = 0,  /* each (layer, kv head) ranks its own tokens */
    SINKD_SCOPE_LAYER = 1, /* scores are summed over the kv heads of a layer
                              and every head of it keeps the same tokens */
};

/* When the engine evicts. */
enum sinkd_policy_evict_at {
    SINKD_EVICT_NEVER = 0,    /* keep everything (full attention, selection-only policies) */
    SINKD_EVICT_BUDGET = 1,   /* when a lane exceeds budget + slack, cut it to budget */
    SINKD_EVICT_PREFILL = 2,  /* at the end of every append (a prompt, a chat turn, a
                                 streamed token), lanes over budget + slack are cut to
                                 budget; never during a generation */
};

/* Kind of a (layer, kv head), DuoAttention/RazorAttention style. */
enum sinkd_policy_head_kind {
    SINKD_HEAD_FULL = 0,      /* follows budget, sinks, recent and the statistic */
    SINKD_HEAD_STREAMING = 1, /* keeps stream_sinks first + stream_recent last tokens */
};

/* Decode-time selection: which of a lane's pages the query attends to. */
enum sinkd_policy_select {
    SINKD_SELECT_DENSE = 0,  /* every page */
    SINKD_SELECT_PAGES = 1,  /* top-k pages by the Quest bound sum_i max(q_i*kmax_i, q_i*kmin_i) */
    SINKD_SELECT_TOKENS = 2, /* top-k tokens by exact attention at the selecting layer
                                (TidalDecode); the pages holding them are attended */
};

/* Rope modes, the same numbers as kernels/backend.h's sinkd_rope_mode. */
enum sinkd_policy_rope {
    SINKD_POLICY_ROPE_ABSOLUTE = 0, /* keys rotated at their original position */
    SINKD_POLICY_ROPE_CACHE = 1,    /* keys rotated at their index in the lane (StreamingLLM) */
};

/* Log levels for sinkd_policy_host.log, syslog numbering. */
enum {
    SINKD_POLICY_LOG_ERR = 3,
    SINKD_POLICY_LOG_WARNING = 4,
    SINKD_POLICY_LOG_INFO = 6,
    SINKD_POLICY_LOG_DEBUG = 7,
};

/* ------------------------------------------------------------------------ */
/* The model's shape, given to create(). Read-only for the plugin. */
typedef struct sinkd_policy_geometry {
    uint32_t struct_size;  /* sizeof as the host knows it */
    int32_t n_layers;      /* >= 1 */
    int32_t n_q_heads;     /* query heads per layer */
    int32_t n_kv_heads;    /* kv heads per layer (lanes per layer) */
    int32_t head_dim;
    int32_t page_tokens;   /* tokens per KV page (the unit memory is freed in);
                              1 .. SINKD_POLICY_MAX_TOKENS */
    int32_t max_tokens;    /* the model's context length */
    int32_t _pad;
} sinkd_policy_geometry;

/* Parameters of one create() or reconfigure() call: the session's
 * "key=value key=value" string, parsed by the host. Opaque; read it through
 * the host's param_* functions, and only during that call. Every key must be
 * read: a key no param_* call asked for fails the call with "unknown
 * parameter", so a typo never passes silently. Two keys belong to the host
 * and never reach the plugin: slack=N and rope=absolute|cache, which the
 * host applies over the plan's slack and rope_mode. */
typedef struct sinkd_policy_params sinkd_policy_params;

/* Services of the host. The pointer given to create() stays valid for the
 * life of the state; the functions are thread-safe. */
typedef struct sinkd_policy_host sinkd_policy_host;
struct sinkd_policy_host {
    uint32_t struct_size;  /* check with SINKD_POLICY_HAS before newer fields */
    uint32_t abi_minor;    /* the host's SINKD_POLICY_ABI_MINOR */
    /* One line to the daemon's log, prefixed with the policy's name. */
    void (*log)(const sinkd_policy_host *host, int32_t level, const char *msg);
    /* *out = the integer value of @key, or @def when absent. A value that is
     * not a base-10 integer in [min, max] records a message naming the key,
     * the range and the value, and returns -EINVAL: return it from create(). */
    int32_t (*param_int)(const sinkd_policy_params *p, const char *key, int64_t def,
                         int64_t min, int64_t max, int64_t *out);
    /* The same for a finite real number in [min, max]. */
    int32_t (*param_float)(const sinkd_policy_params *p, const char *key, double def,
                           double min, double max, double *out);
    /* *out = the raw value of @key (valid during the call) or NULL when
     * absent; returns 0. */
    int32_t (*param_str)(const sinkd_policy_params *p, const char *key, const char **out);
    /* *out = the index in @choices[0..n) of @key's value, or @def when
     * absent. Any other value records "key: expected one of a, b, got 'x'"
     * and returns -EINVAL. */
    int32_t (*param_choice)(const sinkd_policy_params *p, const char *key,
                            const char *const *choices, int32_t n, int32_t def, int32_t *out);
    /* Record @msg as the reason the call fails (the client sees it); returns
     * -EINVAL for the plugin to return. The first message recorded wins. */
    int32_t (*param_fail)(const sinkd_policy_params *p, const char *msg);
    void *ctx;             /* the host's; do not touch */
};

/* The most tokens any count of a plan may name: 16,777,216, the cap every
 * built-in puts on its token parameters. Every count field below is at most
 * this (select_pages: at most this many tokens' worth of pages) so that the
 * sums and products the host and engine form of two of them (budget +
 * slack, stream_sinks + stream_recent, select_pages * page_tokens, ...) stay
 * within int32_t; a plan past a bound is refused like any invalid plan,
 * with a message naming the field. It is also the largest budget `window`
 * takes, so the fallback to `window` can always keep a plan's budget.
 * (The first hosts checked only that counts were >= 0, and a plan with a
 * count near 2^31 crashed them in the self-test; the bound is what they
 * now check, and every plan within it means what it meant before.) */
#define SINKD_POLICY_MAX_TOKENS (1 << 24)

/* The plan: filled by plan() after create() and after each reconfigure().
 * The host allocates it, sets every field to the default named here, and
 * keeps it; the arrays are the host's, sized by the geometry, and the plugin
 * only writes their elements. The host validates the result (a bad plan
 * fails create with a message) before the engine sees it. Counts are
 * bounded as SINKD_POLICY_MAX_TOKENS says; "<= MAX" below is that bound. */
typedef struct sinkd_policy_plan {
    uint32_t struct_size;  /* set by the host */
    uint32_t flags;        /* SINKD_PLAN_* bits; default 0 */
    uint8_t stat;          /* enum sinkd_policy_stat; default NONE */
    uint8_t pool;          /* enum sinkd_policy_pool; default NONE */
    uint8_t scope;         /* enum sinkd_policy_scope; default LANE */
    uint8_t rope_mode;     /* enum sinkd_policy_rope; default ABSOLUTE */
    uint8_t evict_at;      /* enum sinkd_policy_evict_at; default NEVER */
    uint8_t select;        /* enum sinkd_policy_select; default DENSE */
    uint8_t _pad0[2];
    float decay;           /* STAT_DECAY's lambda in (0, 1]; default 1 */
    float quantile;        /* STAT_QUANTILE's row quantile in (0, 1); default 0.9 */
    float temperature;     /* STAT_GUMBEL's temperature > 0; default 1 */
    int32_t obs_window;    /* STAT_OBS_WINDOW's w (last w prompt queries), <= MAX;
                              default 0 */
    int32_t history;       /* STAT_QUANTILE's time constant in steps: the count
                              decays by (1 - 1/history) per step, it is not a
                              window; >= 1 when used, <= MAX; default 0 */
    int32_t pool_kernel;   /* odd, in [1, 1023]; default 1 */
    int32_t budget;        /* tokens a FULL lane keeps, <= MAX; 0 = unlimited; default 0 */
    int32_t sinks;         /* first tokens always kept, <= MAX; default 0 */
    int32_t recent;        /* last tokens always kept, <= MAX; default 0 */
    int32_t slack;         /* tokens over budget before evicting: an eviction
                              cuts to budget, so its cost (TWO LEVELS) is paid
                              once per slack tokens; <= MAX; default
                              geometry.page_tokens */
    int32_t stream_sinks;  /* what a STREAMING head keeps at the start; default 0 */
    int32_t stream_recent; /* ... and at the end; stream_sinks + stream_recent
                              <= MAX; default 0 */
    int32_t select_pages;  /* k for SELECT_PAGES, <= MAX / geometry.page_tokens;
                              default 0 */
    int32_t select_tokens; /* token budget: k = ceil(tokens / page_tokens) pages for
                              SELECT_PAGES when select_pages is 0, the k of
                              SELECT_TOKENS; <= MAX; default 0 */
    int32_t dense_layers;  /* the first dense_layers layers attend densely; default 0 */
    int32_t _pad1;
    /* [n_layers] per-layer budget overriding `budget`, <= MAX; -1 = use budget
     * (default) */
    int32_t *layer_budget;
    /* [n_layers * n_kv_heads], index layer * n_kv_heads + kv_head: enum
     * sinkd_policy_head_kind; default FULL */
    uint8_t *head_kind;
    /* [n_layers]: the layer whose selection this layer reuses; default its
     * own index. A source must be at or below the layer, not dense, and select
     * by itself. */
    int32_t *select_src;
} sinkd_policy_plan;

/* plan.flags */
enum {
    SINKD_PLAN_PAGE_BOUNDS = 1u << 0, /* the engine must keep per-page key min/max */
};

/* One lane handed to evict() or select(). The host fills the inputs; the
 * plugin writes the elements of out[] and `n_out`, and nothing else: the
 * host checks the list against the len, n_pages and out it filled in, and
 * undoes a change to any other field. Every array is the host's, in host
 * memory, valid only during the call: write out[] in place, free nothing,
 * keep no pointer into a lane after returning. */
typedef struct sinkd_policy_lane {
    int32_t layer;
    int32_t kv_head;
    int32_t len;              /* tokens in the lane */
    int32_t n_pages;          /* ceil(len / page_tokens) */
    const int32_t *pos;       /* [len] original positions, ascending */
    const float *score;       /* evict(): [len] the plan's statistic, or NULL for
                                 STAT_NONE; select(): [len] this step's p at the
                                 selecting layer for SELECT_TOKENS, NULL for PAGES */
    const float *page_score;  /* select(): [n_pages] Quest bounds of this step's
                                 query when the plan keeps page bounds, else NULL */
    int32_t *out;             /* evict(): room for len indices to KEEP;
                                 select(): room for n_pages page indices to attend;
                                 strictly ascending, each < len (resp. n_pages) */
    int32_t n_out;            /* written by the plugin: entries of out used */
    int32_t _pad;
} sinkd_policy_lane;

/* ------------------------------------------------------------------------ */
/* The descriptor. Return a pointer to a static const one. */
typedef struct sinkd_policy sinkd_policy;
struct sinkd_policy {
    uint16_t abi_major;    /* SINKD_POLICY_ABI_MAJOR: another major is refused */
    uint16_t abi_minor;    /* SINKD_POLICY_ABI_MINOR the plugin was built with */
    uint32_t struct_size;  /* sizeof(sinkd_policy): at least SINKD_POLICY_SIZE_1_0 */
    uint32_t caps;         /* SINKD_POLICY_CAP_* bits */
    uint32_t _pad;
    /* Unique name, [a-z0-9_-], 1..31 characters: what sessions ask for. */
    const char *name;
    /* Free-form version shown by policy.list, e.g. "1.2.0"; at most 31 chars. */
    const char *version;
    /* One line for humans (policy.list); may be NULL. */
    const char *summary;
    /* Parameters the host's self-test creates a state with (NULL = none). The
     * self-test geometry is SINKD_POLICY_SELFTEST_*, below. */
    const char *selftest_params;

    /* Create a state for one session. Called on the engine thread (see
     * THREADS) when a session opens with the policy or switches to it
     * (session.open, session.policy), when a saved session is restored, and
     * by the self-test. Every session waits while it runs: it may allocate,
     * and may read a small local file named in the params, opened so that
     * it cannot block (O_NONBLOCK, a regular file only, a size cap: see
     * plugins/duo.c); no other I/O; milliseconds at most. Read every
     * parameter through @host. On success store the state in *state (NULL is
     * a valid state) and return 0; on failure return a negative errno,
     * having freed everything: record the reason with host->param_fail,
     * which the client then gets as an invalid_argument error (-ENOMEM is
     * reported as out of memory). Required. */
    int32_t (*create)(const sinkd_policy_host *host, const sinkd_policy_geometry *geom,
                      const sinkd_policy_params *params, void **state);
    /* Free a state. Called on the engine thread (at shutdown, on the main
     * thread: see THREADS) when its session closes, switches policy or falls
     * back to `window`, and after the self-test; once per successful create,
     * never during another callback on it. Cannot fail; free memory and
     * nothing slower. Required. */
    void (*destroy)(void *state);
    /* Describe the state's behaviour in @plan (pre-filled with defaults).
     * Called on the engine thread right after create and after each
     * successful reconfigure, never per step: the host keeps the result.
     * Must not allocate what outlives the call, nor block; it only fills
     * fields, O(n_layers * n_kv_heads). Required. */
    int32_t (*plan)(void *state, sinkd_policy_plan *plan);
    /* Escape hatch, with SINKD_POLICY_CAP_EVICT: called on the engine thread
     * at each eviction point the plan's evict_at defines, with the lanes of
     * one layer (all its kv heads) just read from the device into host
     * memory (see TWO LEVELS). For each lane write the indices to keep into
     * out[] (strictly ascending, < len) and their count into n_out.
     * Memory: the lanes and every array in them, out[] included, are the
     * host's (scratch it reuses across calls and sessions), valid during
     * the call only; the result is written in place and needs no
     * allocation. Working memory the rule needs may be malloc()ed and freed
     * before returning, or better kept in the state and grown when a longer
     * lane comes: a failed allocation can only be reported as an error, and
     * any error ends the policy for the session.
     * Runs between the decode steps of every session: no blocking, no I/O;
     * O(len log len) per lane at most. An out-of-range, duplicate or
     * unsorted index, n_out < 0 or > len, or an error return makes the host
     * switch the session to `window` (with this plan's budget) and tell the
     * client why. */
    int32_t (*evict)(void *state, sinkd_policy_lane *lanes, int32_t n_lanes);
    /* Escape hatch, with SINKD_POLICY_CAP_SELECT: called on the engine thread
     * at EVERY decode step for every selecting layer, after the engine has
     * copied the lanes' positions and page_score or score to the host (see
     * TWO LEVELS): write the pages to attend into out[] (strictly
     * ascending, < n_pages) and n_out >= 1. The hottest host call sinkd
     * makes: O(n_pages), no allocation, memory as for evict. The plan still
     * describes the selection (select names the input: page_score for PAGES,
     * score for TOKENS; dense_layers and select_src say which layers call
     * it); the callback replaces only the ranking. Invalid output is handled
     * as for evict, the step then attending every page. */
    int32_t (*select)(void *state, sinkd_policy_lane *lanes, int32_t n_lanes);
    /* With SINKD_POLICY_CAP_RECONFIGURE: apply new parameters to a live
     * state. Called on the engine thread between two decode steps: when a
     * session's session.policy names the policy version the session already
     * runs (the state is kept, not made anew), and by the self-test with
     * selftest_params. Costs as create does: it may allocate (replace arrays
     * of the state), must not block, no I/O beyond a small local file read
     * as create reads one, milliseconds at most. On failure the state must
     * be unchanged. The host then calls plan() again; when that plan is
     * refused or a parameter went unread, it calls reconfigure once more
     * with the parameters the state had before, which must succeed. */
    int32_t (*reconfigure)(void *state, const sinkd_policy_params *params);
};

/* Bytes of the version 1.0 descriptor: the host refuses shorter ones. */
#define SINKD_POLICY_SIZE_1_0 96u

/* The synthetic model the host's self-test runs on. */
#define SINKD_POLICY_SELFTEST_LAYERS 4
#define SINKD_POLICY_SELFTEST_Q_HEADS 4
#define SINKD_POLICY_SELFTEST_KV_HEADS 2
#define SINKD_POLICY_SELFTEST_HEAD_DIM 16
#define SINKD_POLICY_SELFTEST_PAGE_TOKENS 16
#define SINKD_POLICY_SELFTEST_MAX_TOKENS 4096

/* The entry point every plugin defines. */
SINKD_POLICY_EXPORT const sinkd_policy *sinkd_policy_v1(void);

/* Layout checks: the ABI is the bytes, so the bytes are pinned. */
#if UINTPTR_MAX == 0xffffffffffffffffu && !defined(__cplusplus)
#define SINKD_POLICY__AT(T, f, off) _Static_assert(__builtin_offsetof(T, f) == (off), #T "." #f)
SINKD_POLICY__AT(sinkd_policy_geometry, n_layers, 4);
SINKD_POLICY__AT(sinkd_policy_geometry, max_tokens, 24);
_Static_assert(sizeof(sinkd_policy_geometry) == 32, "geometry size");
SINKD_POLICY__AT(sinkd_policy_host, log, 8);
SINKD_POLICY__AT(sinkd_policy_host, param_choice, 40);
SINKD_POLICY__AT(sinkd_policy_host, param_fail, 48);
SINKD_POLICY__AT(sinkd_policy_host, ctx, 56);
_Static_assert(sizeof(sinkd_policy_host) == 64, "host size");
SINKD_POLICY__AT(sinkd_policy_plan, stat, 8);
SINKD_POLICY__AT(sinkd_policy_plan, decay, 16);
SINKD_POLICY__AT(sinkd_policy_plan, obs_window, 28);
SINKD_POLICY__AT(sinkd_policy_plan, budget, 40);
SINKD_POLICY__AT(sinkd_policy_plan, dense_layers, 72);
SINKD_POLICY__AT(sinkd_policy_plan, layer_budget, 80);
SINKD_POLICY__AT(sinkd_policy_plan, select_src, 96);
_Static_assert(sizeof(sinkd_policy_plan) == 104, "plan size");
SINKD_POLICY__AT(sinkd_policy_lane, pos, 16);
SINKD_POLICY__AT(sinkd_policy_lane, out, 40);
SINKD_POLICY__AT(sinkd_policy_lane, n_out, 48);
_Static_assert(sizeof(sinkd_policy_lane) == 56, "lane size");
SINKD_POLICY__AT(sinkd_policy, caps, 8);
SINKD_POLICY__AT(sinkd_policy, name, 16);
SINKD_POLICY__AT(sinkd_policy, create, 48);
SINKD_POLICY__AT(sinkd_policy, reconfigure, 88);
_Static_assert(sizeof(sinkd_policy) == SINKD_POLICY_SIZE_1_0, "descriptor size");
#undef SINKD_POLICY__AT
#endif

#ifdef __cplusplus
}
#endif
#endif /* SINKD_POLICY_H */
