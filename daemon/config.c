#include "config.h"
#include "log.h"

#include <errno.h>
#include <ctype.h>
#include <fcntl.h>
#include <grp.h>
#include <ini.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef SINKD_PLUGIN_DIR
#define SINKD_PLUGIN_DIR "/usr/local/lib/sinkd/plugins"
#endif

#define CONFIG__FILE_MAX (1u << 20)
#define CONFIG__MODEL_NAME_MAX 64
#define CONFIG__SUN_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)
#define KiB (1ull << 10)
#define MiB (1ull << 20)
#define GiB (1ull << 30)
#define TiB (1ull << 40)

static const sinkd_cfg_choice config__log_levels[] = {
    { "err", SINKD_LOG_ERR },   { "warning", SINKD_LOG_WARNING },
    { "notice", SINKD_LOG_NOTICE }, { "info", SINKD_LOG_INFO },
    { "debug", SINKD_LOG_DEBUG }, { NULL, 0 },
};
static const sinkd_cfg_choice config__backends[] = {
    { "auto", SINKD_BACKEND_AUTO }, { "cpu", SINKD_BACKEND_CPU },
    { "cuda", SINKD_BACKEND_CUDA }, { NULL, 0 },
};
static const sinkd_cfg_choice config__on_off[] = {
    { "on", 1 }, { "off", 0 }, { NULL, 0 },
};
static const sinkd_cfg_choice config__kv_dtypes[] = {
    { "auto", SINKD_KV_DTYPE_AUTO }, { "f32", SINKD_KV_DTYPE_F32 },
    { "f16", SINKD_KV_DTYPE_F16 }, { "bf16", SINKD_KV_DTYPE_BF16 }, { NULL, 0 },
};

#define OFF(f) offsetof(sinkd_config, f)
#define RT SINKD_CFG_RUNTIME
#define EMPTY SINKD_CFG_EMPTY_OK

/* The one place a key is defined. String rows use min/max as length bounds.
 * Keep systemd/sinkd.conf in step (a test parses it against this table). */
static const sinkd_cfg_key config__keys[] = {
    { "server", "socket", SINKD_CFG_PATH, OFF(socket), "", 1, CONFIG__SUN_PATH_MAX, NULL, EMPTY,
      "listening socket; empty: /run/sinkd/sinkd.sock (root) or $XDG_RUNTIME_DIR/sinkd.sock" },
    { "server", "socket_mode", SINKD_CFG_MODE, OFF(socket_mode), "0660", 0, 0777, NULL, 0,
      "permission bits of the socket file (octal)" },
    { "server", "socket_group", SINKD_CFG_GROUP, OFF(socket_group), "", 0, 0, NULL, EMPTY,
      "group owning the socket file; empty: the daemon's group" },
    { "server", "admin_group", SINKD_CFG_GROUP, OFF(admin_group), "", 0, 0, NULL, EMPTY | RT,
      "members may run admin ops (shutdown, ...); root always may" },
    { "server", "max_frame", SINKD_CFG_SIZE, OFF(max_frame), "16M", 1024, 1 * GiB, NULL, 0,
      "largest frame payload accepted or sent, bytes" },
    { "server", "max_output", SINKD_CFG_SIZE, OFF(max_output), "64M", 64 * KiB, 16 * GiB, NULL, RT,
      "unsent output buffered per connection before it is dropped, bytes" },
    { "server", "max_connections", SINKD_CFG_UINT, OFF(max_connections), "256", 1, 65536, NULL, 0,
      "connections served at once; further ones get a busy error" },
    { "server", "log_level", SINKD_CFG_ENUM, OFF(log_level), "info", 0, 0, config__log_levels, RT,
      "err, warning, notice, info or debug" },
    { "server", "state_dir", SINKD_CFG_PATH, OFF(state_dir), "", 1, PATH_MAX - 1, NULL, EMPTY,
      "persistent state; empty: $STATE_DIRECTORY, /var/lib/sinkd (root) or $XDG_STATE_HOME/sinkd" },

    { "engine", "backend", SINKD_CFG_ENUM, OFF(backend), "auto", 0, 0, config__backends, 0,
      "compute backend: auto (cuda when a GPU is usable), cpu or cuda" },
    { "engine", "threads", SINKD_CFG_UINT, OFF(threads), "0", 0, 1024, NULL, 0,
      "CPU backend threads; 0: one per online CPU" },
    { "engine", "kv_pool_bytes", SINKD_CFG_SIZE, OFF(kv_pool_bytes), "0", 0, 1024 * TiB, NULL, 0,
      "KV page pool size, bytes; 0: kv_pool_fraction of free memory" },
    { "engine", "kv_pool_fraction", SINKD_CFG_FRAC, OFF(kv_pool_fraction), "0.8", 0, 0, NULL, 0,
      "fraction of free device memory for the KV pool when kv_pool_bytes is 0" },
    { "engine", "page_tokens", SINKD_CFG_UINT, OFF(page_tokens), "16", 1, 256, NULL, 0,
      "tokens per KV page (a power of two)" },
    { "engine", "kv_dtype", SINKD_CFG_ENUM, OFF(kv_dtype), "auto", 0, 0, config__kv_dtypes, 0,
      "KV cache element type: auto (f16 on GPU, f32 on CPU), f32, f16 or bf16" },
    { "engine", "head_dim_max", SINKD_CFG_UINT, OFF(head_dim_max), "0", 0, 1024, NULL, 0,
      "widest head_dim the KV pool stores (a multiple of 16, at least every model's; raw "
      "sessions may use up to it); 0: the largest model's head_dim, or 128 without a model" },
    { "engine", "prefill_chunk", SINKD_CFG_UINT, OFF(prefill_chunk), "512", 1, 65536, NULL, 0,
      "prompt tokens per forward step; generations step between two" },
    { "engine", "max_batch", SINKD_CFG_UINT, OFF(max_batch), "32", 1, 1024, NULL, 0,
      "sessions decoded together in one step" },
    { "engine", "cuda_graphs", SINKD_CFG_ENUM, OFF(cuda_graphs), "on", 0, 0, config__on_off, 0,
      "replay a decode step's dense stretches from CUDA graphs: on or off" },
    { "engine", "score_defer", SINKD_CFG_ENUM, OFF(score_defer), "on", 0, 0, config__on_off, 0,
      "apply a decode step's attention scores in the next step's pass over the keys: on or off" },

    { "plugins", "dirs", SINKD_CFG_PATHLIST, OFF(plugin_dirs), "", 1, 4095, NULL, EMPTY,
      "policy plugin directories, colon-separated; empty: the installed plugin directory" },

    { "model", "path", SINKD_CFG_PATH, 0, "", 1, PATH_MAX - 1, NULL, 0,
      "[model \"NAME\"] section: GGUF file of the model NAME" },

    { "quota", "sessions_per_uid", SINKD_CFG_UINT, OFF(sessions_per_uid), "64", 0, 1u << 20, NULL, 0,
      "open sessions per user; 0: unlimited" },
    { "quota", "pages_per_uid", SINKD_CFG_UINT, OFF(pages_per_uid), "0", 0, 1ull << 40, NULL, 0,
      "KV pages held per user; 0: unlimited" },
    { "quota", "session_tokens", SINKD_CFG_UINT, OFF(session_tokens), "0", 0, 1ull << 31, NULL, 0,
      "KV tokens each lane of a session may hold: a session that names no budget gets this one, "
      "a larger budget is refused; 0: unlimited" },
    { "quota", "generations_per_uid", SINKD_CFG_UINT, OFF(generations_per_uid), "8", 0, 1u << 20, NULL, 0,
      "generations running at once per user; 0: unlimited" },
    { "quota", "request_bytes", SINKD_CFG_SIZE, OFF(request_bytes), "256M", 0, 1024 * TiB, NULL, 0,
      "bytes of shared memory one request may reference; 0: unlimited" },
    { "quota", "shm_bytes_per_uid", SINKD_CFG_SIZE, OFF(shm_bytes_per_uid), "64G", 0, 1024 * TiB, NULL,
      0, "bytes of shared memory a user's connections may have registered at once (mapped "
      "address space, not memory used); 0: unlimited" },
    { "quota", "snapshots_per_uid", SINKD_CFG_UINT, OFF(snapshots_per_uid), "16", 0, 1u << 20, NULL, 0,
      "session.save snapshots kept per user (session.forget deletes one); 0: unlimited" },
};

#undef OFF
#undef RT
#undef EMPTY

#define CONFIG__NKEYS (sizeof config__keys / sizeof config__keys[0])

const sinkd_cfg_key *sinkd_config_keys(size_t *n)
{
    *n = CONFIG__NKEYS;
    return config__keys;
}

__attribute__((format(printf, 3, 4)))
static int config__fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

static const sinkd_cfg_key *config__find(const char *section, const char *key)
{
    for (size_t i = 0; i < CONFIG__NKEYS; i++)
        if (!strcmp(config__keys[i].section, section) && !strcmp(config__keys[i].key, key))
            return &config__keys[i];
    return NULL;
}

static bool config__section_known(const char *section)
{
    for (size_t i = 0; i < CONFIG__NKEYS; i++)
        if (!strcmp(config__keys[i].section, section))
            return true;
    return false;
}

/* `model "NAME"` → NAME in @name. 1 if @section has that shape, 0 if it is
 * not a model section at all, -EINVAL for a malformed one. */
static int config__model_section(const char *section, char *name, size_t cap)
{
    const char *p = section, *q;
    size_t n;

    if (strncmp(p, "model", 5) != 0 || (p[5] != '\0' && !isspace((unsigned char)p[5])))
        return 0;
    p += 5;
    while (isspace((unsigned char)*p))
        p++;
    if (*p++ != '"')
        return -EINVAL;
    q = strchr(p, '"');
    if (!q || q[1] != '\0')
        return -EINVAL;
    n = (size_t)(q - p);
    if (n == 0 || n >= cap)
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)p[i]) && !strchr("._-", p[i]))
            return -EINVAL;
    memcpy(name, p, n);
    name[n] = '\0';
    return 1;
}

/* Decimal, no sign, no overflow. Returns the characters consumed (0: none). */
static size_t config__digits(const char *s, uint64_t *v)
{
    uint64_t x = 0;
    size_t i = 0;

    for (; s[i] >= '0' && s[i] <= '9'; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (x > (UINT64_MAX - d) / 10)
            return 0;
        x = x * 10 + d;
    }
    *v = x;
    return i;
}

static int config__parse_size(const char *s, uint64_t *out)
{
    uint64_t v, mul = 1;
    size_t n = config__digits(s, &v);
    const char *u = s + n;

    if (n == 0)
        return -EINVAL;
    switch (*u) {
    case '\0': break;
    case 'k': case 'K': mul = KiB; break;
    case 'm': case 'M': mul = MiB; break;
    case 'g': case 'G': mul = GiB; break;
    case 't': case 'T': mul = TiB; break;
    default: return -EINVAL;
    }
    if (*u) {
        u++;
        if (!strcmp(u, "iB"))
            u += 2;
        else if (!strcmp(u, "B"))
            u += 1;
        if (*u)
            return -EINVAL;
    }
    if (v > UINT64_MAX / mul)
        return -EINVAL;
    *out = v * mul;
    return 0;
}

static bool config__absolute_path_ok(const char *s, size_t n)
{
    return n > 0 && s[0] == '/' && !memchr(s, '\n', n);
}

static int config__check_pathlist(const char *s)
{
    const char *p = s;

    for (;;) {
        const char *c = strchr(p, ':');
        size_t n = c ? (size_t)(c - p) : strlen(p);
        if (!config__absolute_path_ok(p, n))
            return -EINVAL;
        if (!c)
            return 0;
        p = c + 1;
    }
}

static int config__lookup_group(const char *name, gid_t *gid)
{
    struct group gr, *res = NULL;
    char buf[4096];
    int rc = getgrnam_r(name, &gr, buf, sizeof buf, &res);

    if (rc != 0 || !res)
        return -ENOENT;
    *gid = gr.gr_gid;
    return 0;
}

static bool config__power_of_two(uint64_t v)
{
    return v && !(v & (v - 1));
}

/* Parse @value for @k into the field at @field. Strings are duplicated and
 * replace the old one; nothing changes on failure. */
static int config__store(const sinkd_cfg_key *k, void *field, const char *value,
                         const char *where, char *err, size_t errlen)
{
    size_t len = strlen(value);
    uint64_t u = 0; /* gcc -O3 cannot see that a failed parse returns first */

    if (len == 0 && (k->flags & SINKD_CFG_EMPTY_OK) &&
        (k->type == SINKD_CFG_STR || k->type == SINKD_CFG_PATH ||
         k->type == SINKD_CFG_PATHLIST || k->type == SINKD_CFG_GROUP)) {
        if (k->type == SINKD_CFG_GROUP) {
            sinkd_cfg_group *g = field;
            free(g->name);
            g->name = NULL;
            g->gid = 0;
        } else {
            free(*(char **)field);
            *(char **)field = NULL;
        }
        return 0;
    }
    switch (k->type) {
    case SINKD_CFG_STR:
    case SINKD_CFG_PATH:
    case SINKD_CFG_PATHLIST: {
        char *dup;
        if (len < k->min || len > k->max)
            return config__fail(err, errlen, "%s: [%s] %s: length %zu outside %llu..%llu",
                                where, k->section, k->key, len,
                                (unsigned long long)k->min, (unsigned long long)k->max);
        if (k->type == SINKD_CFG_PATH && !config__absolute_path_ok(value, len))
            return config__fail(err, errlen, "%s: [%s] %s: '%s' is not an absolute path",
                                where, k->section, k->key, value);
        if (k->type == SINKD_CFG_PATHLIST && config__check_pathlist(value) < 0)
            return config__fail(err, errlen,
                                "%s: [%s] %s: '%s' is not a colon-separated list of absolute paths",
                                where, k->section, k->key, value);
        dup = strdup(value);
        if (!dup)
            return -ENOMEM;
        free(*(char **)field);
        *(char **)field = dup;
        return 0;
    }
    case SINKD_CFG_GROUP: {
        sinkd_cfg_group *g = field;
        gid_t gid;
        char *dup;
        if (config__lookup_group(value, &gid) < 0)
            return config__fail(err, errlen, "%s: [%s] %s: no such group '%s'",
                                where, k->section, k->key, value);
        dup = strdup(value);
        if (!dup)
            return -ENOMEM;
        free(g->name);
        g->name = dup;
        g->gid = gid;
        return 0;
    }
    case SINKD_CFG_UINT:
    case SINKD_CFG_SIZE: {
        int bad = k->type == SINKD_CFG_SIZE ? config__parse_size(value, &u)
                                            : (config__digits(value, &u) != len || len == 0);
        if (bad)
            return config__fail(err, errlen, "%s: [%s] %s: '%s' is not %s", where,
                                k->section, k->key, value,
                                k->type == SINKD_CFG_SIZE ? "a size (bytes, or with K, M, G, T)"
                                                          : "an unsigned decimal integer");
        if (u < k->min || u > k->max)
            return config__fail(err, errlen, "%s: [%s] %s: %s outside %llu..%llu", where,
                                k->section, k->key, value, (unsigned long long)k->min,
                                (unsigned long long)k->max);
        if (k->offset == offsetof(sinkd_config, page_tokens) && !config__power_of_two(u))
            return config__fail(err, errlen, "%s: [%s] %s: %s is not a power of two",
                                where, k->section, k->key, value);
        *(uint64_t *)field = u;
        return 0;
    }
    case SINKD_CFG_MODE: {
        char *end;
        unsigned long m;
        errno = 0;
        m = strtoul(value, &end, 8);
        if (len == 0 || *end || errno || !isdigit((unsigned char)value[0]) ||
            m < k->min || m > k->max)
            return config__fail(err, errlen, "%s: [%s] %s: '%s' is not an octal mode 0..%llo",
                                where, k->section, k->key, value, (unsigned long long)k->max);
        *(uint32_t *)field = (uint32_t)m;
        return 0;
    }
    case SINKD_CFG_FRAC: {
        char *end;
        double d;
        errno = 0;
        d = strtod(value, &end);
        if (len == 0 || *end || errno || !isfinite(d) || !(d > 0.0) || d > 1.0)
            return config__fail(err, errlen, "%s: [%s] %s: '%s' is not a fraction in (0, 1]",
                                where, k->section, k->key, value);
        *(double *)field = d;
        return 0;
    }
    case SINKD_CFG_ENUM:
        for (const sinkd_cfg_choice *c = k->choices; c->name; c++) {
            if (!strcmp(c->name, value)) {
                *(int *)field = c->value;
                return 0;
            }
        }
        return config__fail(err, errlen, "%s: [%s] %s: '%s' is not one of the choices",
                            where, k->section, k->key, value);
    }
    return config__fail(err, errlen, "%s: [%s] %s: bad key type", where, k->section, k->key);
}

static sinkd_model_cfg *config__model(sinkd_config *c, const char *name)
{
    for (size_t i = 0; i < c->n_models; i++)
        if (!strcmp(c->models[i].name, name))
            return &c->models[i];
    return NULL;
}

static int config__set_model(sinkd_config *c, const char *name, const char *key,
                             const char *value, const char *where, char *err, size_t errlen)
{
    const sinkd_cfg_key *k = config__find("model", key);
    sinkd_model_cfg *m = config__model(c, name), *grown;
    char *path = NULL, *dup;
    int rc;

    if (!k)
        return config__fail(err, errlen, "%s: unknown key '%s' in [model \"%s\"]", where, key, name);
    rc = config__store(k, &path, value, where, err, errlen);
    if (rc < 0)
        return rc;
    if (m) {
        free(m->path);
        m->path = path;
        return 0;
    }
    dup = strdup(name);
    grown = dup ? realloc(c->models, (c->n_models + 1) * sizeof *grown) : NULL;
    if (!grown) {
        free(dup);
        free(path);
        return -ENOMEM;
    }
    c->models = grown;
    c->models[c->n_models++] = (sinkd_model_cfg){ dup, path };
    return 0;
}

int sinkd_config_set(sinkd_config *c, const char *section, const char *key,
                     const char *value, const char *origin, char *err, size_t errlen)
{
    char model[CONFIG__MODEL_NAME_MAX + 1];
    const sinkd_cfg_key *k;
    int m;

    if (!c || !section || !key || !value || !origin)
        return -EINVAL;
    if (section[0] == '\0')
        return config__fail(err, errlen, "%s: key '%s' outside any [section]", origin, key);
    m = config__model_section(section, model, sizeof model);
    if (m < 0)
        return config__fail(err, errlen,
                            "%s: bad section [%s] (expected [model \"NAME\"], NAME of 1..%d "
                            "letters, digits, '.', '_' or '-')",
                            origin, section, CONFIG__MODEL_NAME_MAX);
    if (m > 0)
        return config__set_model(c, model, key, value, origin, err, errlen);
    if (!strcmp(section, "model") || !config__section_known(section))
        return config__fail(err, errlen, "%s: unknown section [%s]", origin, section);
    k = config__find(section, key);
    if (!k)
        return config__fail(err, errlen, "%s: unknown key '%s' in [%s]", origin, key, section);
    return config__store(k, (char *)c + k->offset, value, origin, err, errlen);
}

int sinkd_config_init(sinkd_config *c)
{
    char err[SINKD_CONFIG_ERR_MAX];

    if (!c)
        return -EINVAL;
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < CONFIG__NKEYS; i++) {
        const sinkd_cfg_key *k = &config__keys[i];
        int rc;
        if (!strcmp(k->section, "model"))
            continue;
        rc = config__store(k, (char *)c + k->offset, k->def, "default", err, sizeof err);
        if (rc < 0) {
            sinkd_config_free(c);
            return rc == -ENOMEM ? -ENOMEM : -EINVAL;
        }
    }
    return 0;
}

static void config__free_field(const sinkd_cfg_key *k, void *field)
{
    switch (k->type) {
    case SINKD_CFG_STR:
    case SINKD_CFG_PATH:
    case SINKD_CFG_PATHLIST:
        free(*(char **)field);
        *(char **)field = NULL;
        break;
    case SINKD_CFG_GROUP:
        free(((sinkd_cfg_group *)field)->name);
        ((sinkd_cfg_group *)field)->name = NULL;
        break;
    default:
        break;
    }
}

void sinkd_config_free(sinkd_config *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < CONFIG__NKEYS; i++)
        if (strcmp(config__keys[i].section, "model"))
            config__free_field(&config__keys[i], (char *)c + config__keys[i].offset);
    for (size_t i = 0; i < c->n_models; i++) {
        free(c->models[i].name);
        free(c->models[i].path);
    }
    free(c->models);
    memset(c, 0, sizeof *c);
}

/* ---------------------------------------------------------------------------
 * File parsing. inih does the syntax; a reader of our own feeds it lines so
 * that we know the line number in the handler (the system libinih is built
 * without INI_HANDLER_LINENO), refuse over-long lines instead of letting
 * inih split them, and strip leading blanks so that no line is taken as a
 * continuation of the previous value.
 */
typedef struct config__parse {
    sinkd_config *c;
    const char *name;
    const char *p, *end;     /* unread text */
    unsigned line;           /* number of the line last handed to inih */
    unsigned err_line;       /* first error (0: none) */
    int err_rc;
    char *err;
    size_t errlen;
    /* line of each key's first assignment, to refuse repeats */
    unsigned seen[CONFIG__NKEYS];
    char (*model_seen)[CONFIG__MODEL_NAME_MAX + 1];
    size_t n_model_seen;
} config__parse;

static void config__record(config__parse *st, int rc)
{
    if (st->err_line == 0) {
        st->err_line = st->line;
        st->err_rc = rc;
    }
}

static char *config__reader(char *str, int num, void *stream)
{
    config__parse *st = stream;
    const char *nl, *s;
    size_t n;

    if (st->p >= st->end)
        return NULL;
    nl = memchr(st->p, '\n', (size_t)(st->end - st->p));
    s = st->p;
    n = nl ? (size_t)(nl - s) : (size_t)(st->end - s);
    st->p = nl ? nl + 1 : st->end;
    st->line++;
    while (n && (*s == ' ' || *s == '\t')) {
        s++;
        n--;
    }
    if (n > (size_t)num - 2) {
        if (st->err_line == 0)
            snprintf(st->err, st->errlen, "%s:%u: line longer than %d characters",
                     st->name, st->line, num - 2);
        config__record(st, -EINVAL);
        n = 0;
    }
    memcpy(str, s, n);
    str[n] = '\n';
    str[n + 1] = '\0';
    return str;
}

/* A repeated key is an error: a later line silently winning hides typos. */
static bool config__repeat(config__parse *st, const char *section, const char *key,
                           char *where)
{
    char model[CONFIG__MODEL_NAME_MAX + 1];
    const sinkd_cfg_key *k;

    if (config__model_section(section, model, sizeof model) > 0) {
        for (size_t i = 0; i < st->n_model_seen; i++)
            if (!strcmp(st->model_seen[i], model)) {
                snprintf(st->err, st->errlen, "%s: [model \"%s\"] %s: repeated (a model is "
                         "defined once)", where, model, key);
                return true;
            }
        return false;
    }
    k = config__find(section, key);
    if (!k)
        return false;
    if (st->seen[k - config__keys]) {
        snprintf(st->err, st->errlen, "%s: [%s] %s: repeated (first set on line %u)",
                 where, section, key, st->seen[k - config__keys]);
        return true;
    }
    return false;
}

static void config__mark(config__parse *st, const char *section, const char *key)
{
    char model[CONFIG__MODEL_NAME_MAX + 1];
    const sinkd_cfg_key *k;

    if (config__model_section(section, model, sizeof model) > 0) {
        void *grown = realloc(st->model_seen, (st->n_model_seen + 1) * sizeof *st->model_seen);
        if (!grown) {
            config__record(st, -ENOMEM);
            return;
        }
        st->model_seen = grown;
        memcpy(st->model_seen[st->n_model_seen++], model, sizeof model);
        return;
    }
    k = config__find(section, key);
    if (k)
        st->seen[k - config__keys] = st->line;
}

static int config__handler(void *user, const char *section, const char *name, const char *value)
{
    config__parse *st = user;
    char where[PATH_MAX + 16];
    int rc;

    if (st->err_line)
        return 0;
    snprintf(where, sizeof where, "%s:%u", st->name, st->line);
    if (config__repeat(st, section, name, where)) {
        config__record(st, -EINVAL);
        return 0;
    }
    rc = sinkd_config_set(st->c, section, name, value, where, st->err, st->errlen);
    if (rc < 0) {
        config__record(st, rc);
        return 0;
    }
    config__mark(st, section, name);
    return st->err_line ? 0 : 1;
}

int sinkd_config_load_string(sinkd_config *c, const char *text, const char *name,
                             char *err, size_t errlen)
{
    char dummy[1];
    config__parse st;
    int rc;

    if (!c || !text || !name)
        return -EINVAL;
    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof dummy;
    }
    memset(&st, 0, sizeof st);
    st.c = c;
    st.name = name;
    st.p = text;
    st.end = text + strlen(text);
    st.err = err;
    st.errlen = errlen;
    rc = ini_parse_stream(config__reader, &st, config__handler, &st);
    free(st.model_seen);
    if (rc < 0) /* inih could not allocate its line buffer */
        return -ENOMEM;
    if (st.err_line && (rc == 0 || st.err_line <= (unsigned)rc)) {
        if (st.err_rc == -ENOMEM)
            snprintf(err, errlen, "%s:%u: out of memory", name, st.err_line);
        return st.err_rc;
    }
    if (rc > 0)
        return config__fail(err, errlen, "%s:%d: syntax error (expected [section] or key = value)",
                            name, rc);
    return 0;
}

int sinkd_config_load_file(sinkd_config *c, const char *path, char *err, size_t errlen)
{
    struct stat sb;
    char *text;
    ssize_t got;
    size_t len = 0;
    int fd, rc;

    if (!c || !path)
        return -EINVAL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: %s", path, strerror(-rc));
        return rc;
    }
    if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) || sb.st_size > CONFIG__FILE_MAX) {
        rc = !S_ISREG(sb.st_mode) ? -EINVAL : -EFBIG;
        snprintf(err, errlen, "%s: %s", path,
                 rc == -EFBIG ? "larger than 1 MiB" : "not a regular file");
        close(fd);
        return rc;
    }
    text = malloc((size_t)sb.st_size + 1);
    if (!text) {
        close(fd);
        return -ENOMEM;
    }
    while (len < (size_t)sb.st_size &&
           (got = read(fd, text + len, (size_t)sb.st_size - len)) != 0) {
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            rc = -errno;
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            free(text);
            close(fd);
            return rc;
        }
        len += (size_t)got;
    }
    close(fd);
    text[len] = '\0';
    if (memchr(text, '\0', len)) {
        free(text);
        return config__fail(err, errlen, "%s: contains a NUL byte", path);
    }
    rc = sinkd_config_load_string(c, text, path, err, errlen);
    free(text);
    return rc;
}

int sinkd_config_override_add(sinkd_config_overrides *ov, const char *section,
                              const char *key, const char *value, const char *origin)
{
    sinkd_config_override o, *grown;

    if (!ov || !section || !key || !value || !origin)
        return -EINVAL;
    o.section = strdup(section);
    o.key = strdup(key);
    o.value = strdup(value);
    o.origin = strdup(origin);
    grown = realloc(ov->v, (ov->n + 1) * sizeof *grown);
    if (!o.section || !o.key || !o.value || !o.origin || !grown) {
        free(o.section);
        free(o.key);
        free(o.value);
        free(o.origin);
        if (grown)
            ov->v = grown;
        return -ENOMEM;
    }
    ov->v = grown;
    ov->v[ov->n++] = o;
    return 0;
}

int sinkd_config_override_apply(sinkd_config *c, const sinkd_config_overrides *ov,
                                char *err, size_t errlen)
{
    if (!c || !ov)
        return -EINVAL;
    for (size_t i = 0; i < ov->n; i++) {
        const sinkd_config_override *o = &ov->v[i];
        int rc = sinkd_config_set(c, o->section, o->key, o->value, o->origin, err, errlen);
        if (rc < 0)
            return rc;
    }
    return 0;
}

void sinkd_config_overrides_free(sinkd_config_overrides *ov)
{
    if (!ov)
        return;
    for (size_t i = 0; i < ov->n; i++) {
        free(ov->v[i].section);
        free(ov->v[i].key);
        free(ov->v[i].value);
        free(ov->v[i].origin);
    }
    free(ov->v);
    ov->v = NULL;
    ov->n = 0;
}

static int config__default_path(char **field, const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 1;

    if (*field)
        return 0;
    *field = malloc(n);
    if (!*field)
        return -ENOMEM;
    snprintf(*field, n, "%s%s", a, b);
    return 0;
}

static const char *config__env_abs(const char *name)
{
    const char *v = getenv(name);
    return v && v[0] == '/' ? v : NULL;
}

int sinkd_config_resolve(sinkd_config *c, uid_t uid, char *err, size_t errlen)
{
    const char *run = config__env_abs("XDG_RUNTIME_DIR");
    const char *state = config__env_abs("STATE_DIRECTORY");
    const char *xdg_state = config__env_abs("XDG_STATE_HOME");
    const char *home = config__env_abs("HOME");
    int rc;

    if (!c)
        return -EINVAL;
    if (!c->socket && uid != 0 && !run)
        return snprintf(err, errlen, "XDG_RUNTIME_DIR is not set: give the socket with "
                        "--socket or [server] socket"), -ENOENT;
    if (!c->state_dir && uid != 0 && !state && !xdg_state && !home)
        return snprintf(err, errlen, "neither STATE_DIRECTORY, XDG_STATE_HOME nor HOME is set: "
                        "give [server] state_dir"), -ENOENT;
    if (state && strchr(state, ':')) /* systemd lists several directories */
        state = NULL;
    rc = uid == 0 ? config__default_path(&c->socket, "/run/sinkd/sinkd.sock", "")
                  : config__default_path(&c->socket, run ? run : "", "/sinkd.sock");
    if (rc == 0)
        rc = state ? config__default_path(&c->state_dir, state, "")
           : uid == 0 ? config__default_path(&c->state_dir, "/var/lib/sinkd", "")
           : xdg_state ? config__default_path(&c->state_dir, xdg_state, "/sinkd")
           : config__default_path(&c->state_dir, home, "/.local/state/sinkd");
    if (rc == 0)
        rc = config__default_path(&c->plugin_dirs, SINKD_PLUGIN_DIR, "");
    if (rc < 0)
        snprintf(err, errlen, "out of memory");
    if (rc == 0 && strlen(c->socket) > CONFIG__SUN_PATH_MAX)
        return config__fail(err, errlen, "socket path %s is longer than %zu bytes", c->socket,
                            CONFIG__SUN_PATH_MAX);
    return rc;
}

int sinkd_config_read(sinkd_config *out, const char *path,
                      const sinkd_config_overrides *ov, char *err, size_t errlen)
{
    int rc = sinkd_config_init(out);

    if (rc < 0) {
        snprintf(err, errlen, "out of memory");
        return rc;
    }
    if (path)
        rc = sinkd_config_load_file(out, path, err, errlen);
    if (rc == 0 && ov)
        rc = sinkd_config_override_apply(out, ov, err, errlen);
    if (rc == 0)
        rc = sinkd_config_resolve(out, getuid(), err, errlen);
    if (rc < 0)
        sinkd_config_free(out);
    return rc;
}

static bool config__str_eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

static bool config__field_eq(const sinkd_cfg_key *k, const void *a, const void *b)
{
    switch (k->type) {
    case SINKD_CFG_STR:
    case SINKD_CFG_PATH:
    case SINKD_CFG_PATHLIST:
        return config__str_eq(*(char *const *)a, *(char *const *)b);
    case SINKD_CFG_GROUP:
        return config__str_eq(((const sinkd_cfg_group *)a)->name,
                              ((const sinkd_cfg_group *)b)->name);
    case SINKD_CFG_UINT:
    case SINKD_CFG_SIZE:
        return *(const uint64_t *)a == *(const uint64_t *)b;
    case SINKD_CFG_MODE:
        return *(const uint32_t *)a == *(const uint32_t *)b;
    case SINKD_CFG_FRAC:
        return *(const double *)a == *(const double *)b;
    case SINKD_CFG_ENUM:
        return *(const int *)a == *(const int *)b;
    }
    return false;
}

static int config__field_copy(const sinkd_cfg_key *k, void *dst, const void *src)
{
    switch (k->type) {
    case SINKD_CFG_STR:
    case SINKD_CFG_PATH:
    case SINKD_CFG_PATHLIST: {
        const char *s = *(char *const *)src;
        char *dup = s ? strdup(s) : NULL;
        if (s && !dup)
            return -ENOMEM;
        free(*(char **)dst);
        *(char **)dst = dup;
        return 0;
    }
    case SINKD_CFG_GROUP: {
        const sinkd_cfg_group *s = src;
        sinkd_cfg_group *d = dst;
        char *dup = s->name ? strdup(s->name) : NULL;
        if (s->name && !dup)
            return -ENOMEM;
        free(d->name);
        d->name = dup;
        d->gid = s->gid;
        return 0;
    }
    case SINKD_CFG_UINT:
    case SINKD_CFG_SIZE:
        *(uint64_t *)dst = *(const uint64_t *)src;
        return 0;
    case SINKD_CFG_MODE:
        *(uint32_t *)dst = *(const uint32_t *)src;
        return 0;
    case SINKD_CFG_FRAC:
        *(double *)dst = *(const double *)src;
        return 0;
    case SINKD_CFG_ENUM:
        *(int *)dst = *(const int *)src;
        return 0;
    }
    return -EINVAL;
}

static void config__note_models(const sinkd_config *a, const sinkd_config *b,
                                sinkd_config_change_fn fn, void *ud)
{
    char section[CONFIG__MODEL_NAME_MAX + 16];

    for (size_t i = 0; i < b->n_models; i++) {
        const sinkd_model_cfg *m = config__model((sinkd_config *)a, b->models[i].name);
        if (!m || !config__str_eq(m->path, b->models[i].path)) {
            snprintf(section, sizeof section, "model \"%s\"", b->models[i].name);
            fn(ud, section, "path", false);
        }
    }
    for (size_t i = 0; i < a->n_models; i++) {
        if (!config__model((sinkd_config *)b, a->models[i].name)) {
            snprintf(section, sizeof section, "model \"%s\"", a->models[i].name);
            fn(ud, section, "path", false);
        }
    }
}

int sinkd_config_apply_runtime(sinkd_config *live, const sinkd_config *fresh,
                               sinkd_config_change_fn fn, void *ud)
{
    int swapped = 0;

    if (!live || !fresh)
        return -EINVAL;
    for (size_t i = 0; i < CONFIG__NKEYS; i++) {
        const sinkd_cfg_key *k = &config__keys[i];
        void *dst = (char *)live + k->offset;
        const void *src = (const char *)fresh + k->offset;
        bool runtime = k->flags & SINKD_CFG_RUNTIME;
        if (!strcmp(k->section, "model") || config__field_eq(k, dst, src))
            continue;
        if (runtime) {
            int rc = config__field_copy(k, dst, src);
            if (rc < 0)
                return rc;
            swapped++;
        }
        if (fn)
            fn(ud, k->section, k->key, runtime);
    }
    if (fn)
        config__note_models(live, fresh, fn, ud);
    return swapped;
}

const char *sinkd_config_choice_name(const char *section, const char *key, int value)
{
    const sinkd_cfg_key *k = config__find(section, key);

    if (!k || k->type != SINKD_CFG_ENUM)
        return "?";
    for (const sinkd_cfg_choice *c = k->choices; c->name; c++)
        if (c->value == value)
            return c->name;
    return "?";
}
