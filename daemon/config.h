/*
 * sinkd configuration: an INI file (libinih) plus command-line overrides.
 *
 * Every key is one row of a table (config.c: section, key, type, default,
 * range, help), so a component adds a key with one row and one field of
 * struct sinkd_config. The same parser handles the file, the defaults and the
 * command line, so a default is always a value the parser accepts and an
 * override is validated exactly like the file.
 *
 * Sections: [server] [engine] [plugins] [quota] and any number of
 * [model "NAME"] sections (each with `path`). Unknown sections and keys, bad
 * values, repeated keys and lines the INI syntax rejects are errors whose
 * message names the file, the line and the key.
 *
 * Ownership: a sinkd_config owns every string it points to.
 */
#ifndef SINKD_CONFIG_H
#define SINKD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Value types of table rows; the C type of the field follows the type. */
typedef enum sinkd_cfg_type {
    SINKD_CFG_STR,      /* char *, NULL when empty */
    SINKD_CFG_PATH,     /* char *, absolute path, NULL when empty */
    SINKD_CFG_PATHLIST, /* char *, colon-separated absolute paths, NULL when empty */
    SINKD_CFG_GROUP,    /* sinkd_cfg_group: a group name resolved to its gid */
    SINKD_CFG_UINT,     /* uint64_t, decimal */
    SINKD_CFG_SIZE,     /* uint64_t, bytes; suffix K, M, G, T (optionally KiB...) */
    SINKD_CFG_MODE,     /* uint32_t, octal permission bits */
    SINKD_CFG_FRAC,     /* double, 0 < x <= 1 */
    SINKD_CFG_ENUM,     /* int, the value of the chosen sinkd_cfg_choice */
} sinkd_cfg_type;

/* Row flags. */
#define SINKD_CFG_RUNTIME 0x1u   /* SIGHUP swaps the new value in */
#define SINKD_CFG_EMPTY_OK 0x2u  /* an empty value is accepted (means "default") */

typedef struct sinkd_cfg_choice {
    const char *name;
    int value;
} sinkd_cfg_choice;

typedef struct sinkd_cfg_key {
    const char *section;   /* "server", "engine", ...; "model" for [model "NAME"] */
    const char *key;
    sinkd_cfg_type type;
    size_t offset;         /* of the field in struct sinkd_config (unused for model) */
    const char *def;       /* default, in file syntax ("" for none) */
    uint64_t min, max;     /* inclusive range of UINT, SIZE, MODE and string lengths */
    const sinkd_cfg_choice *choices; /* ENUM only; ends with a NULL name */
    unsigned flags;
    const char *help;
} sinkd_cfg_key;

typedef struct sinkd_cfg_group {
    char *name;  /* NULL: not set */
    gid_t gid;   /* valid when name is set */
} sinkd_cfg_group;

typedef struct sinkd_model_cfg {
    char *name;  /* [model "NAME"] */
    char *path;
} sinkd_model_cfg;

enum { SINKD_BACKEND_AUTO, SINKD_BACKEND_CPU, SINKD_BACKEND_CUDA };
enum { SINKD_KV_DTYPE_AUTO, SINKD_KV_DTYPE_F32, SINKD_KV_DTYPE_F16, SINKD_KV_DTYPE_BF16 };

typedef struct sinkd_config {
    /* [server] */
    char *socket;                 /* NULL until sinkd_config_resolve */
    uint32_t socket_mode;
    sinkd_cfg_group socket_group;
    sinkd_cfg_group admin_group;
    uint64_t max_frame;
    uint64_t max_output;
    uint64_t max_connections;
    int log_level;                /* SINKD_LOG_ERR..SINKD_LOG_DEBUG */
    char *state_dir;              /* NULL until sinkd_config_resolve */
    /* [engine] */
    int backend;                  /* SINKD_BACKEND_* */
    uint64_t threads;             /* 0: one per online CPU */
    uint64_t kv_pool_bytes;       /* 0: use kv_pool_fraction */
    double kv_pool_fraction;
    uint64_t page_tokens;
    int kv_dtype;                 /* SINKD_KV_DTYPE_* */
    uint64_t head_dim_max;        /* 0: the largest model's head_dim, or 128 */
    uint64_t prefill_chunk;
    uint64_t max_batch;
    int cuda_graphs;              /* 1 on, 0 off */
    int score_defer;              /* 1 on, 0 off */
    /* [plugins] */
    char *plugin_dirs;            /* NULL until sinkd_config_resolve */
    /* [model "NAME"] */
    sinkd_model_cfg *models;
    size_t n_models;
    /* [quota] (0 = unlimited) */
    uint64_t sessions_per_uid;
    uint64_t pages_per_uid;
    uint64_t session_tokens;
    uint64_t generations_per_uid;
    uint64_t request_bytes;
    uint64_t shm_bytes_per_uid;
    uint64_t snapshots_per_uid;
} sinkd_config;

/* Command-line overrides, kept so that a reload re-applies them on top of
 * the re-read file. Values are validated when applied, not when added. */
typedef struct sinkd_config_override {
    char *section;
    char *key;
    char *value;
    char *origin;   /* for messages: "--log-level" */
} sinkd_config_override;

typedef struct sinkd_config_overrides {
    sinkd_config_override *v;
    size_t n;
} sinkd_config_overrides;

#define SINKD_CONFIG_OVERRIDES_INIT { NULL, 0 }

/* Error messages fit in this many bytes. */
#define SINKD_CONFIG_ERR_MAX 512

/* The key table, @*n rows. Static; never fails. */
const sinkd_cfg_key *sinkd_config_keys(size_t *n);

/* Fill @c with every default. Returns 0 or -ENOMEM (then @c is freed). */
int sinkd_config_init(sinkd_config *c);

/* Release everything @c owns; @c is left zeroed (call _init to reuse). */
void sinkd_config_free(sinkd_config *c);

/* Set one key from its text form. @section is "server", ..., or
 * `model "NAME"`. On a bad section, key or value returns -EINVAL (-ENOMEM on
 * allocation failure) with a message naming @origin ("FILE:LINE" or a flag)
 * and the key in @err; @c is unchanged then. */
int sinkd_config_set(sinkd_config *c, const char *section, const char *key,
                     const char *value, const char *origin, char *err, size_t errlen);

/* Parse INI @text into @c (already initialised); @name names the text in
 * messages. The first error stops the load: -EINVAL with "NAME:LINE: ..." in
 * @err, or -ENOMEM. @c may hold some of the keys then: discard it. */
int sinkd_config_load_string(sinkd_config *c, const char *text, const char *name,
                             char *err, size_t errlen);

/* Read the file @path (at most 1 MiB) and parse it as load_string does.
 * -ENOENT/-EACCES/... when it cannot be read, -EFBIG when too large. */
int sinkd_config_load_file(sinkd_config *c, const char *path, char *err, size_t errlen);

/* Remember "@section.@key = @value" to apply after the file. Copies the
 * strings. Returns 0 or -ENOMEM. */
int sinkd_config_override_add(sinkd_config_overrides *ov, const char *section,
                              const char *key, const char *value, const char *origin);

/* Apply every override to @c in order (a model override replaces the path of
 * a model of the same name). Errors as sinkd_config_set. */
int sinkd_config_override_apply(sinkd_config *c, const sinkd_config_overrides *ov,
                                char *err, size_t errlen);

/* Release the overrides; @ov is left empty and reusable. */
void sinkd_config_overrides_free(sinkd_config_overrides *ov);

/* Fill the keys whose default depends on who runs the daemon, for a daemon
 * running as @uid:
 *   socket       root: /run/sinkd/sinkd.sock; other users:
 *                $XDG_RUNTIME_DIR/sinkd.sock (-ENOENT when unset)
 *   state_dir    $STATE_DIRECTORY (systemd), else /var/lib/sinkd for root,
 *                else $XDG_STATE_HOME/sinkd or $HOME/.local/state/sinkd
 *   plugins.dirs the installed plugin directory
 * Keys already set are left alone. Returns 0, -ENOENT with @err, -ENOMEM. */
int sinkd_config_resolve(sinkd_config *c, uid_t uid, char *err, size_t errlen);

/* What sinkd does at start and on SIGHUP: defaults, then the file @path (may
 * be NULL: no file), then @ov (may be NULL), then sinkd_config_resolve for
 * the current uid. On failure @out is freed and @err says why. */
int sinkd_config_read(sinkd_config *out, const char *path,
                      const sinkd_config_overrides *ov, char *err, size_t errlen);

/* Called by sinkd_config_apply_runtime for each key whose value differs:
 * @applied says whether it was swapped in or needs a restart. */
typedef void (*sinkd_config_change_fn)(void *ud, const char *section, const char *key,
                                       bool applied);

/* Reload semantics: copy into @live every SINKD_CFG_RUNTIME key whose value
 * in @fresh differs; report the others that differ (and changed model
 * sections) through @fn (may be NULL) without touching them. Returns the
 * number of keys swapped in, or -ENOMEM (then @live keeps, for the key that
 * failed, its old value). @fresh is not modified. */
int sinkd_config_apply_runtime(sinkd_config *live, const sinkd_config *fresh,
                               sinkd_config_change_fn fn, void *ud);

/* Name of the choice @value of the ENUM key @section.@key ("?" if none). */
const char *sinkd_config_choice_name(const char *section, const char *key, int value);

#endif /* SINKD_CONFIG_H */
