/* Op handlers of the session-level protocol: parse, type-check, queue. */
#include "ops_engine.h"
#include "engine_internal.h"
#include "log.h"
#include "ops.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OPS_STOP_MAX 16

/* A thread stuck this long inside one job or step withholds the watchdog;
 * a shorter WatchdogSec (WATCHDOG_USEC) shortens it to match. */
#define OPS_STALL_NS (120ull * 1000000000ull)

static struct {
    sinkd_server *srv;
    sinkd_engine *eng;
    sinkd_engine *owned;        /* opened by sinkd_engine_ops_start */
    sinkd_shm_table *shm;
    uint64_t *conns;            /* connections that opened sessions */
    size_t n_conns, cap_conns;
} ops_eng;

sinkd_engine *sinkd_engine_ops_engine(void)
{
    return ops_eng.eng;
}

int sinkd_engine_ops_post(void *ud, uint64_t conn_id, uint8_t *frame, size_t len)
{
    int rc = sinkd_server_post(ud, conn_id, frame, len);

    if (rc < 0)
        free(frame);
    return rc;
}

/* ---- connections that go away --------------------------------------------- */

/* A closed connection's regions are unmapped (jobs still running keep their
 * reference) and, if it opened sessions or asked for generations, the
 * engine ends its generations and closes its non-persistent sessions. */
static void ops__conn_closed(void *ud, uint64_t conn_id)
{
    (void)ud;
    sinkd_shm_table_drop_conn(ops_eng.shm, conn_id);
    for (size_t i = 0; i < ops_eng.n_conns; i++) {
        if (ops_eng.conns[i] != conn_id)
            continue;
        ops_eng.conns[i] = ops_eng.conns[--ops_eng.n_conns];
        sinkd_job *j = sinkd_job_new(SINKD_JOB_CONN_CLOSED, conn_id, 0, 0, false);
        if (j)
            sinkd_engine_submit(ops_eng.eng, j);
        else
            sinkd_log(SINKD_LOG_ERR, "conn %llu: out of memory closing its sessions",
                      (unsigned long long)conn_id);
        return;
    }
}

/* The peer of @conn_id sends no more but reads: the engine answers what it
 * asked (behind its other jobs), then finishes it. */
static void ops__conn_eof(void *ud, uint64_t conn_id)
{
    sinkd_job *j = sinkd_job_new(SINKD_JOB_CONN_EOF, conn_id, 0, 0, false);
    sinkd_conn *c;

    (void)ud;
    if (j) {
        sinkd_engine_submit(ops_eng.eng, j);
    } else if ((c = sinkd_server_conn(ops_eng.srv, conn_id)) != NULL) {
        sinkd_log(SINKD_LOG_ERR, "conn %llu: out of memory: answers it is owed are lost",
                  (unsigned long long)conn_id);
        sinkd_conn_finish(c); /* on the loop thread: at once */
    }
}

/* Remember that @conn_id may own sessions or generations. */
static int ops__track(uint64_t conn_id)
{
    for (size_t i = 0; i < ops_eng.n_conns; i++)
        if (ops_eng.conns[i] == conn_id)
            return 0;
    if (ops_eng.n_conns == ops_eng.cap_conns) {
        size_t cap = ops_eng.cap_conns ? 2 * ops_eng.cap_conns : 16;
        uint64_t *p = realloc(ops_eng.conns, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        ops_eng.conns = p;
        ops_eng.cap_conns = cap;
    }
    ops_eng.conns[ops_eng.n_conns++] = conn_id;
    return 0;
}

int sinkd_engine_ops_track(uint64_t conn_id)
{
    return ops__track(conn_id);
}

/* The server stops: the engine answers the jobs it holds (shutting_down
 * for those not started), saves the persistent sessions and ends; its
 * frames are posted by the time this returns. */
static void ops__stop(void *ud)
{
    (void)ud;
    if (ops_eng.owned)
        sinkd_engine_stop(ops_eng.owned);
}

int sinkd_engine_ops_attach(sinkd_server *s, sinkd_engine *e)
{
    ops_eng.shm = sinkd_shm_table_new();
    if (!ops_eng.shm)
        return -ENOMEM;
    ops_eng.srv = s;
    ops_eng.eng = e;
    sinkd_server_set_conn_closed(s, ops__conn_closed, NULL);
    sinkd_server_set_conn_eof(s, ops__conn_eof, NULL);
    sinkd_server_set_stop(s, ops__stop, NULL);
    return 0;
}

void sinkd_engine_ops_detach(void)
{
    if (ops_eng.srv) {
        sinkd_server_set_conn_closed(ops_eng.srv, NULL, NULL);
        sinkd_server_set_conn_eof(ops_eng.srv, NULL, NULL);
        sinkd_server_set_stop(ops_eng.srv, NULL, NULL);
    }
    sinkd_shm_table_free(ops_eng.shm);
    ops_eng.shm = NULL;
    free(ops_eng.conns);
    ops_eng.conns = NULL;
    ops_eng.n_conns = ops_eng.cap_conns = 0;
    ops_eng.eng = NULL;
}

/* ---- start-up -------------------------------------------------------------- */

static bool ops__alive(void *ud)
{
    uint64_t wd_ns = ops_eng.srv ? ops_eng.srv->notify.watchdog_usec * 1000ull : 0;

    return sinkd_engine_alive(ud, wd_ns && wd_ns < OPS_STALL_NS ? wd_ns : OPS_STALL_NS);
}

static uint8_t ops__kv_dtype(int v)
{
    switch (v) {
    case SINKD_KV_DTYPE_F32: return SINKD_F32;
    case SINKD_KV_DTYPE_F16: return SINKD_F16;
    case SINKD_KV_DTYPE_BF16: return SINKD_BF16;
    default: return SINKD_KV_DTYPE_AUTO_ENGINE;
    }
}

int sinkd_engine_ops_start(sinkd_server *s, char *err, size_t errlen)
{
    const sinkd_config *cfg = &s->cfg;
    sinkd_engine_config ec = { 0 };
    const char **names = calloc(cfg->n_models + 1, sizeof *names);
    const char **paths = calloc(cfg->n_models + 1, sizeof *paths);
    const char *dirs[64];
    char *dirbuf = cfg->plugin_dirs ? strdup(cfg->plugin_dirs) : NULL;
    size_t n_dirs = 0;
    sinkd_engine *e = NULL;
    int rc = -ENOMEM;

    snprintf(err, errlen, "out of memory");
    if (!names || !paths || (cfg->plugin_dirs && !dirbuf))
        goto out;
    for (char *save = NULL, *d = dirbuf ? strtok_r(dirbuf, ":", &save) : NULL; d && n_dirs < 64;
         d = strtok_r(NULL, ":", &save))
        dirs[n_dirs++] = d;
    for (size_t i = 0; i < cfg->n_models; i++) {
        names[i] = cfg->models[i].name;
        paths[i] = cfg->models[i].path;
    }
    ec.backend = sinkd_config_choice_name("engine", "backend", cfg->backend);
    ec.threads = (int)cfg->threads;
    ec.kv = (sinkd_kv_config)SINKD_KV_CONFIG_INIT;
    ec.kv.pool_bytes = cfg->kv_pool_bytes;
    ec.kv.pool_fraction = cfg->kv_pool_fraction;
    ec.kv.page_tokens = (int32_t)cfg->page_tokens;
    ec.kv.dtype = ops__kv_dtype(cfg->kv_dtype);
    ec.kv.uid_pages = (int64_t)cfg->pages_per_uid;
    ec.head_dim_max = (int32_t)cfg->head_dim_max;
    ec.prefill_chunk = (int32_t)cfg->prefill_chunk;
    ec.max_batch = (int32_t)cfg->max_batch;
    ec.cuda_graphs_off = cfg->cuda_graphs == 0;
    ec.score_defer_off = cfg->score_defer == 0;
    ec.sessions_per_uid = (uint32_t)cfg->sessions_per_uid;
    ec.generations_per_uid = (uint32_t)cfg->generations_per_uid;
    ec.session_tokens = cfg->session_tokens;
    ec.request_bytes = cfg->request_bytes;
    ec.snapshots_per_uid = (uint32_t)cfg->snapshots_per_uid;
    ec.model_names = names;
    ec.model_paths = paths;
    ec.n_models = cfg->n_models;
    ec.plugin_dirs = dirs;
    ec.n_plugin_dirs = n_dirs;
    ec.max_frame = (size_t)cfg->max_frame;
    ec.state_dir = cfg->state_dir;
    err[0] = '\0';
    if ((rc = sinkd_engine_open(&ec, &e, err, errlen)) < 0)
        goto out;
    if ((rc = sinkd_engine_ops_attach(s, e)) < 0 ||
        (rc = sinkd_engine_start(e, sinkd_engine_ops_post, s)) < 0) {
        snprintf(err, errlen, "engine start: %s", strerror(-rc));
        sinkd_engine_ops_detach();
        sinkd_engine_close(e);
        goto out;
    }
    ops_eng.owned = e;
    sinkd_server_set_liveness(s, ops__alive, e);
    sinkd_log(SINKD_LOG_NOTICE, "engine: backend %s (%s), %zu model(s), KV pool %.1f MiB",
              sinkd_engine_backend_info(e)->name, sinkd_engine_backend_info(e)->device,
              cfg->n_models,
              (double)atomic_load(&sinkd_engine_counters_get(e)->kv_pool_bytes) / 1048576.0);
out:
    free(names);
    free(paths);
    free(dirbuf);
    return rc;
}

void sinkd_engine_ops_stop(void)
{
    if (ops_eng.owned)
        sinkd_engine_stop(ops_eng.owned);
    sinkd_engine_ops_detach();
}

void sinkd_engine_ops_free(void)
{
    sinkd_engine_close(ops_eng.owned);
    ops_eng.owned = NULL;
}

/* ---- field parsing --------------------------------------------------------- */

/* Each returns 1 (present), 0 (absent, not required) or -EINVAL after
 * answering bad_request naming @field. */
static int ops__bad(sinkd_req *r, const char *field, const char *expected, int why)
{
    sinkd_req_error(r, SINKD_ERR_BAD_REQUEST,
                    why == -ENOENT ? "field '%s': missing (%s)" : "field '%s': expected %s",
                    field, expected);
    return -EINVAL;
}

#define OPS__GETTER(name, type, getter, what)                                       \
    static int name(sinkd_req *r, const msgpack_object *m, const char *key,           \
                    const char *field, bool req, type *v)                             \
    {                                                                                 \
        int rc = getter(m, key, v);                                                   \
        if (rc == 0)                                                                  \
            return 1;                                                                 \
        if (rc == -ENOENT && !req)                                                    \
            return 0;                                                                 \
        return ops__bad(r, field, what, rc);                                          \
    }
OPS__GETTER(ops__u64, uint64_t, sinkd_map_u64, "unsigned integer")
OPS__GETTER(ops__i64, int64_t, sinkd_map_i64, "integer")
OPS__GETTER(ops__f64, double, sinkd_map_f64, "number")
OPS__GETTER(ops__bool, bool, sinkd_map_bool, "boolean")
OPS__GETTER(ops__arr, const msgpack_object_array *, sinkd_map_array, "array")
OPS__GETTER(ops__map, const msgpack_object *, sinkd_map_map, "map")
#undef OPS__GETTER

/* An unsigned field that must also fit in [0, max]. */
static int ops__uint(sinkd_req *r, const msgpack_object *m, const char *key, bool req,
                     uint64_t max, int32_t *out)
{
    uint64_t v;
    int rc = ops__u64(r, m, key, key, req, &v);

    if (rc == 1 && v > max) {
        sinkd_req_error(r, SINKD_ERR_INVALID_ARGUMENT, "field '%s': %llu is over %llu", key,
                        (unsigned long long)v, (unsigned long long)max);
        return -EINVAL;
    }
    if (rc == 1)
        *out = (int32_t)v;
    return rc;
}

/* A string field copied with a NUL added (text may hold NULs: @len counts
 * every byte); @name: refuse empty strings and embedded NULs. */
static int ops__strdup(sinkd_req *r, const msgpack_object *m, const char *key, bool req,
                       bool name, char **out, size_t *len)
{
    const char *s;
    size_t n;
    int rc = sinkd_map_str(m, key, &s, &n);

    if (rc == -ENOENT && !req)
        return 0;
    if (rc < 0)
        return ops__bad(r, key, "string", rc);
    if (name && (n == 0 || memchr(s, 0, n))) {
        sinkd_req_error(r, SINKD_ERR_INVALID_ARGUMENT, "field '%s': empty or contains NUL", key);
        return -EINVAL;
    }
    if (!(*out = malloc(n + 1))) {
        sinkd_req_error(r, SINKD_ERR_NO_MEMORY, "out of memory");
        return -ENOMEM;
    }
    memcpy(*out, s, n);
    (*out)[n] = '\0';
    if (len)
        *len = n;
    return 1;
}

/* An array of integers that fit int32, copied. */
static int ops__i32s(sinkd_req *r, const msgpack_object *m, const char *key, bool req,
                     int32_t **out, size_t *n)
{
    const msgpack_object_array *a;
    int rc = ops__arr(r, m, key, key, req, &a);

    if (rc != 1)
        return rc;
    *out = malloc(((size_t)a->size + 1) * sizeof **out);
    if (!*out) {
        sinkd_req_error(r, SINKD_ERR_NO_MEMORY, "out of memory");
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < a->size; i++) {
        const msgpack_object *o = &a->ptr[i];
        int64_t v;
        if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT32_MAX)
            v = (int64_t)o->via.u64;
        else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && o->via.i64 >= INT32_MIN)
            v = o->via.i64;
        else
            return ops__bad(r, key, "array of 32-bit integers", -EINVAL);
        (*out)[i] = (int32_t)v;
    }
    *n = a->size;
    return 1;
}

/* A {shm, offset} map naming a region of this connection; the job gets a
 * reference. */
static int ops__region(sinkd_req *r, const char *key, bool req, sinkd_job_shm *out)
{
    const msgpack_object *m;
    uint64_t h, off;
    int rc = ops__map(r, r->args, key, key, req, &m);

    if (rc != 1)
        return rc;
    if (sinkd_map_u64(m, "shm", &h) < 0 || sinkd_map_u64(m, "offset", &off) < 0)
        return ops__bad(r, key, "map {shm: uint, offset: uint}", -EINVAL);
    out->r = sinkd_shm_table_get(ops_eng.shm, r->conn_id, h);
    if (!out->r) {
        sinkd_req_error(r, SINKD_ERR_NOT_FOUND, "field '%s': no region %llu on this connection",
                        key, (unsigned long long)h);
        return -EINVAL;
    }
    out->off = off;
    return 1;
}

/* Answers unsupported when no engine is attached (a daemon started without
 * one, e.g. in the core's own tests). */
static bool ops__no_engine(sinkd_req *r)
{
    if (ops_eng.eng)
        return false;
    sinkd_req_error(r, SINKD_ERR_UNSUPPORTED, "op '%s': this daemon runs no engine", r->op);
    return true;
}

static sinkd_job *ops__job(sinkd_req *r, sinkd_job_kind kind)
{
    sinkd_job *j;

    if (ops__no_engine(r))
        return NULL;
    j = sinkd_job_new(kind, r->conn_id, r->id, (uint32_t)r->conn->uid, r->conn->admin);
    if (!j)
        sinkd_req_error(r, SINKD_ERR_NO_MEMORY, "out of memory");
    return j;
}

/* Queue @j (or free it when parsing failed: @rc < 0, already answered). */
static int ops__submit(sinkd_job *j, int rc)
{
    if (rc < 0) {
        sinkd_job_free(j);
        return 0;
    }
    sinkd_engine_submit(ops_eng.eng, j);
    return SINKD_REQ_DEFERRED;
}

/* ops__submit for a request whose job the connection's close must reach:
 * its sessions close with it, its generations and prefills stop. */
static int ops__submit_tracked(sinkd_req *r, sinkd_job *j, int rc)
{
    if (rc >= 0 && ops__track(r->conn_id) < 0) {
        sinkd_req_error(r, SINKD_ERR_NO_MEMORY, "out of memory");
        rc = -ENOMEM;
    }
    return ops__submit(j, rc);
}

/* A job that names a session: {session: uint} plus the rest. */
static sinkd_job *ops__session_job(sinkd_req *r, sinkd_job_kind kind)
{
    sinkd_job *j = ops__job(r, kind);

    if (j && ops__u64(r, r->args, "session", "session", true, &j->session) < 0) {
        sinkd_job_free(j);
        return NULL;
    }
    return j;
}

/* ---- shared memory ---------------------------------------------------------- */

static int op_shm_register(sinkd_req *r)
{
    sinkd_shm_region *reg;
    char why[256] = "";
    uint64_t size, handle;
    sinkd_fw w;
    int fd, rc;

    if (ops__no_engine(r) || sinkd_req_u64(r, "size", true, &size) < 0)
        return 0;
    fd = sinkd_req_take_fd(r);
    if (fd < 0)
        return sinkd_req_error(r, SINKD_ERR_BAD_SHM,
                               "no file descriptor came with the request (SCM_RIGHTS)");
    if ((rc = sinkd_req_take_fd(r)) >= 0) {
        while (rc >= 0) {
            close(rc);
            rc = sinkd_req_take_fd(r);
        }
        close(fd);
        return sinkd_req_error(r, SINKD_ERR_BAD_SHM, "more than one file descriptor came "
                               "with the request");
    }
    /* address space is what a sparse memfd costs: capped per user */
    uint64_t cap = ops_eng.srv ? ops_eng.srv->cfg.shm_bytes_per_uid : 0;
    uint64_t held = sinkd_shm_table_uid_bytes(ops_eng.shm, (uint32_t)r->conn->uid);
    if (cap && (held > cap || size > cap - held)) {
        close(fd);
        return sinkd_req_error(r, SINKD_ERR_QUOTA_EXCEEDED, "[quota] shm_bytes_per_uid: %llu "
                               "bytes registered, %llu more would pass %llu",
                               (unsigned long long)held, (unsigned long long)size,
                               (unsigned long long)cap);
    }
    rc = sinkd_shm_map(fd, size, &reg, why, sizeof why);
    if (rc < 0)
        return sinkd_req_error(r, rc == -ENOMEM ? SINKD_ERR_NO_MEMORY :
                               rc == -EDOM ? SINKD_ERR_INVALID_ARGUMENT : SINKD_ERR_BAD_SHM,
                               "%s", why[0] ? why : strerror(-rc));
    rc = sinkd_shm_table_add(ops_eng.shm, r->conn_id, (uint32_t)r->conn->uid, reg, &handle);
    if (rc < 0) {
        sinkd_shm_unref(reg);
        return sinkd_req_error(r, rc == -EDQUOT ? SINKD_ERR_QUOTA_EXCEEDED : SINKD_ERR_NO_MEMORY,
                               rc == -EDQUOT ? "at most %d regions per connection"
                                             : "out of memory (%d)", SINKD_SHM_PER_CONN_MAX);
    }
    sinkd_log(SINKD_LOG_DEBUG, "conn %llu: shm %llu registered, %llu bytes, %s",
              (unsigned long long)r->conn_id, (unsigned long long)handle,
              (unsigned long long)size, reg->sealed ? "sealed" : "unsealed (guarded)");
    if ((rc = sinkd_req_begin_reply(r, &w, 1)) < 0)
        return rc;
    sinkd_pack_kv_u64(&w.pk, "shm", handle);
    return sinkd_req_send(r, &w);
}

static int op_shm_unregister(sinkd_req *r)
{
    uint64_t h;

    if (ops__no_engine(r) || sinkd_req_u64(r, "shm", true, &h) < 0)
        return 0;
    if (sinkd_shm_table_remove(ops_eng.shm, r->conn_id, h) < 0)
        return sinkd_req_error(r, SINKD_ERR_NOT_FOUND, "no region %llu on this connection",
                               (unsigned long long)h);
    return sinkd_req_ok(r);
}

/* ---- models and text -------------------------------------------------------- */

static int op_model_list(sinkd_req *r)
{
    size_t n;
    sinkd_fw w;
    int rc;

    if (ops__no_engine(r))
        return 0;
    n = sinkd_engine_n_models(ops_eng.eng);
    if ((rc = sinkd_req_begin_reply(r, &w, 1)) < 0)
        return rc;
    sinkd_pack_str(&w.pk, "models");
    msgpack_pack_array(&w.pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        const sinkd_engine_model *m = sinkd_engine_model_at(ops_eng.eng, i);
        msgpack_pack_map(&w.pk, 11);
        sinkd_pack_kv_str(&w.pk, "name", m->name);
        sinkd_pack_kv_str(&w.pk, "arch", m->hp->arch == SINKD_ARCH_QWEN2 ? "qwen2" : "llama");
        sinkd_pack_kv_u64(&w.pk, "n_layers", (uint64_t)m->hp->n_layers);
        sinkd_pack_kv_u64(&w.pk, "n_heads", (uint64_t)m->hp->n_heads);
        sinkd_pack_kv_u64(&w.pk, "n_kv_heads", (uint64_t)m->hp->n_kv_heads);
        sinkd_pack_kv_u64(&w.pk, "head_dim", (uint64_t)m->hp->head_dim);
        sinkd_pack_kv_u64(&w.pk, "dim", (uint64_t)m->hp->dim);
        sinkd_pack_kv_u64(&w.pk, "n_vocab", (uint64_t)m->hp->n_vocab);
        sinkd_pack_kv_u64(&w.pk, "ctx_len", (uint64_t)m->hp->ctx_len);
        sinkd_pack_kv_u64(&w.pk, "weight_bytes", sinkd_model_weight_bytes(m->model));
        sinkd_pack_kv_str(&w.pk, "dtype", m->dtype);
    }
    return sinkd_req_send(r, &w);
}

static int op_tokenize(sinkd_req *r)
{
    sinkd_job *j = ops__job(r, SINKD_JOB_TOKENIZE);
    int rc;

    if (!j)
        return 0;
    j->has_text = true;
    rc = ops__strdup(r, r->args, "model", false, true, &j->model, NULL);
    if (rc >= 0)
        rc = ops__strdup(r, r->args, "text", true, false, &j->text, &j->text_len);
    if (rc >= 0 && (rc = ops__bool(r, r->args, "bos", "bos", false, &j->bos)) == 1)
        j->bos_set = true;
    if (rc >= 0)
        rc = ops__bool(r, r->args, "special", "special", false, &j->special);
    return ops__submit(j, rc);
}

static int op_detokenize(sinkd_req *r)
{
    sinkd_job *j = ops__job(r, SINKD_JOB_DETOKENIZE);
    int rc;

    if (!j)
        return 0;
    rc = ops__strdup(r, r->args, "model", false, true, &j->model, NULL);
    if (rc >= 0)
        rc = ops__i32s(r, r->args, "ids", true, &j->ids, &j->n_ids);
    return ops__submit(j, rc);
}

/* ---- sessions --------------------------------------------------------------- */

static int ops__choice(sinkd_req *r, const msgpack_object *m, const char *key,
                       const char *const *names, int n, int *out)
{
    const char *s;
    size_t len;
    int rc = sinkd_map_str(m, key, &s, &len);

    if (rc == -ENOENT)
        return 0;
    for (int i = 0; rc == 0 && i < n; i++) {
        if (strlen(names[i]) == len && !memcmp(names[i], s, len)) {
            *out = i;
            return 1;
        }
    }
    sinkd_req_error(r, SINKD_ERR_BAD_REQUEST, "field 'geometry.%s': expected one of %s%s%s",
                    key, names[0], n > 1 ? ", " : "", n > 1 ? names[1] : "");
    return -EINVAL;
}

static int ops__geometry(sinkd_req *r, const msgpack_object *g, sinkd_job_geometry *out)
{
    static const char *const dtypes[] = { "f32", "f16", "bf16" };
    static const char *const styles[] = { "adjacent", "neox" };
    static const char *const modes[] = { "absolute", "cache" };
    double theta = 10000.0, scale = 1.0;
    int dt = 0, style = 0, mode = 0;

    if (ops__uint(r, g, "layers", true, 4096, &out->layers) < 0 ||
        ops__uint(r, g, "q_heads", true, 4096, &out->q_heads) < 0 ||
        ops__uint(r, g, "kv_heads", true, 4096, &out->kv_heads) < 0 ||
        ops__uint(r, g, "head_dim", true, 4096, &out->head_dim) < 0 ||
        ops__choice(r, g, "dtype", dtypes, 3, &dt) < 0 ||
        ops__choice(r, g, "rope_style", styles, 2, &style) < 0 ||
        ops__choice(r, g, "rope_mode", modes, 2, &mode) < 0 ||
        ops__f64(r, g, "rope_theta", "geometry.rope_theta", false, &theta) < 0 ||
        ops__f64(r, g, "rope_scale", "geometry.rope_scale", false, &scale) < 0)
        return -EINVAL;
    out->dtype = (uint8_t)dt;
    out->rope = (sinkd_rope){ .theta = (float)theta, .scale = (float)scale,
                              .style = (uint8_t)style, .mode = (uint8_t)mode };
    return 0;
}

static int op_session_open(sinkd_req *r)
{
    sinkd_job *j = ops__job(r, SINKD_JOB_SESSION_OPEN);
    const msgpack_object *g;
    int rc;

    if (!j)
        return 0;
    rc = ops__strdup(r, r->args, "model", false, true, &j->model, NULL);
    if (rc >= 0 && (rc = ops__map(r, r->args, "geometry", "geometry", false, &g)) == 1) {
        j->has_geometry = true;
        rc = ops__geometry(r, g, &j->geom);
    }
    if (rc >= 0)
        rc = ops__strdup(r, r->args, "policy", false, true, &j->policy, NULL);
    if (rc >= 0)
        rc = ops__strdup(r, r->args, "params", false, false, &j->params, NULL);
    if (rc >= 0)
        rc = ops__u64(r, r->args, "budget", "budget", false, &j->budget);
    if (rc >= 0)
        rc = ops__bool(r, r->args, "persist", "persist", false, &j->persist);
    if (rc >= 0 && j->has_geometry && j->model) {
        sinkd_req_error(r, SINKD_ERR_INVALID_ARGUMENT, "give either model or geometry");
        rc = -EINVAL;
    }
    return ops__submit_tracked(r, j, rc);
}

static int ops__plain(sinkd_req *r, sinkd_job_kind kind)
{
    sinkd_job *j = ops__session_job(r, kind);

    return j ? ops__submit(j, 0) : 0;
}

static int op_session_close(sinkd_req *r) { return ops__plain(r, SINKD_JOB_SESSION_CLOSE); }
static int op_session_stats(sinkd_req *r) { return ops__plain(r, SINKD_JOB_SESSION_STATS); }
static int op_session_cancel(sinkd_req *r) { return ops__plain(r, SINKD_JOB_SESSION_CANCEL); }

static int op_session_list(sinkd_req *r)
{
    sinkd_job *j = ops__job(r, SINKD_JOB_SESSION_LIST);

    return j ? ops__submit(j, 0) : 0;
}

static int op_session_policy(sinkd_req *r)
{
    sinkd_job *j = ops__session_job(r, SINKD_JOB_SESSION_POLICY);
    int rc;

    if (!j)
        return 0;
    rc = ops__strdup(r, r->args, "policy", true, true, &j->policy, NULL);
    if (rc >= 0)
        rc = ops__strdup(r, r->args, "params", false, false, &j->params, NULL);
    return ops__submit(j, rc);
}

static int op_session_append(sinkd_req *r)
{
    sinkd_job *j = ops__session_job(r, SINKD_JOB_SESSION_APPEND);
    int rc, has_ids;

    if (!j)
        return 0;
    rc = has_ids = ops__i32s(r, r->args, "ids", false, &j->ids, &j->n_ids);
    if (rc >= 0 && (rc = ops__strdup(r, r->args, "text", false, false, &j->text,
                                     &j->text_len)) == 1)
        j->has_text = true;
    if (rc >= 0 && (rc = ops__bool(r, r->args, "bos", "bos", false, &j->bos)) == 1)
        j->bos_set = true;
    if (rc >= 0)
        rc = ops__bool(r, r->args, "special", "special", false, &j->special);
    if (rc >= 0 && (has_ids == 1) == j->has_text) {
        sinkd_req_error(r, SINKD_ERR_BAD_REQUEST, "give exactly one of 'ids' and 'text'");
        rc = -EINVAL;
    }
    return ops__submit_tracked(r, j, rc);
}

static int ops__stops(sinkd_req *r, sinkd_job_gen *g)
{
    const msgpack_object_array *a;
    int rc = ops__arr(r, r->args, "stop", "stop", false, &a);

    if (rc != 1)
        return rc;
    if (a->size > OPS_STOP_MAX) {
        sinkd_req_error(r, SINKD_ERR_INVALID_ARGUMENT, "at most %d stop strings", OPS_STOP_MAX);
        return -EINVAL;
    }
    g->stop = calloc(a->size + 1, sizeof *g->stop);
    if (!g->stop) {
        sinkd_req_error(r, SINKD_ERR_NO_MEMORY, "out of memory");
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < a->size; i++) {
        const msgpack_object *o = &a->ptr[i];
        if (o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0 ||
            o->via.str.size > ENG_STOP_MAX || memchr(o->via.str.ptr, 0, o->via.str.size)) {
            sinkd_req_error(r, SINKD_ERR_BAD_REQUEST,
                            "field 'stop': expected strings of 1..%d bytes without NUL",
                            ENG_STOP_MAX);
            return -EINVAL;
        }
        g->stop[i] = strndup(o->via.str.ptr, o->via.str.size);
        if (!g->stop[i]) {
            sinkd_req_error(r, SINKD_ERR_NO_MEMORY, "out of memory");
            return -ENOMEM;
        }
        g->n_stop = i + 1;
    }
    return 1;
}

static int op_session_generate(sinkd_req *r)
{
    sinkd_job *j = ops__session_job(r, SINKD_JOB_SESSION_GENERATE);
    sinkd_job_gen *g;
    double temp = 0, top_p = 1, min_p = 0, rp = 1;
    int32_t top_k = 0, last_n = 64;
    uint64_t seed = 0;
    int rc;

    if (!j)
        return 0;
    g = &j->gen;
    g->max_tokens = 128;
    g->stream = true;
    if ((rc = ops__uint(r, r->args, "max_tokens", false, 1 << 20, &g->max_tokens)) < 0 ||
        (rc = ops__f64(r, r->args, "temperature", "temperature", false, &temp)) < 0 ||
        (rc = ops__uint(r, r->args, "top_k", false, INT32_MAX, &top_k)) < 0 ||
        (rc = ops__f64(r, r->args, "top_p", "top_p", false, &top_p)) < 0 ||
        (rc = ops__f64(r, r->args, "min_p", "min_p", false, &min_p)) < 0 ||
        (rc = ops__f64(r, r->args, "repeat_penalty", "repeat_penalty", false, &rp)) < 0 ||
        (rc = ops__uint(r, r->args, "repeat_last_n", false, ENG_HIST, &last_n)) < 0 ||
        (rc = ops__u64(r, r->args, "seed", "seed", false, &seed)) < 0 ||
        (rc = ops__i32s(r, r->args, "stop_ids", false, &g->stop_ids, &g->n_stop_ids)) < 0 ||
        (rc = ops__stops(r, g)) < 0 ||
        (rc = ops__bool(r, r->args, "stream", "stream", false, &g->stream)) < 0 ||
        (rc = ops__bool(r, r->args, "ignore_eos", "ignore_eos", false, &g->ignore_eos)) < 0)
        return ops__submit(j, rc);
    if (!(top_p >= 0 && top_p <= 1) || !(min_p >= 0 && min_p <= 1) || !(rp > 0) ||
        !(temp >= -1e30 && temp <= 1e30)) {
        sinkd_req_error(r, SINKD_ERR_INVALID_ARGUMENT,
                        "need 0 <= top_p, min_p <= 1, repeat_penalty > 0, a finite temperature");
        return ops__submit(j, -EINVAL);
    }
    g->sp = (sinkd_sample_params){ (float)temp, top_k, (float)top_p, (float)min_p, (float)rp,
                                   last_n, seed };
    return ops__submit_tracked(r, j, 0);
}

static int op_session_logits(sinkd_req *r)
{
    sinkd_job *j = ops__session_job(r, SINKD_JOB_SESSION_LOGITS);
    uint64_t h;
    int rc;

    if (!j)
        return 0;
    /* {session, shm, offset}: the region fields sit in the request itself */
    rc = ops__u64(r, r->args, "shm", "shm", true, &h);
    if (rc >= 0)
        rc = ops__u64(r, r->args, "offset", "offset", true, &j->out.off);
    if (rc >= 0 && !(j->out.r = sinkd_shm_table_get(ops_eng.shm, r->conn_id, h))) {
        sinkd_req_error(r, SINKD_ERR_NOT_FOUND, "no region %llu on this connection",
                        (unsigned long long)h);
        rc = -EINVAL;
    }
    return ops__submit(j, rc);
}

/* ---- raw sessions ------------------------------------------------------------ */

static int op_kv_append(sinkd_req *r)
{
    sinkd_job *j = ops__session_job(r, SINKD_JOB_KV_APPEND);
    int rc;

    if (!j)
        return 0;
    if ((rc = ops__uint(r, r->args, "layer", true, INT32_MAX, &j->layer)) >= 0 &&
        (rc = ops__uint(r, r->args, "n", true, INT32_MAX, &j->n)) >= 0 &&
        (rc = ops__region(r, "k", true, &j->k)) >= 0 &&
        (rc = ops__region(r, "v", true, &j->v)) >= 0)
        rc = ops__region(r, "pos", false, &j->pos);
    return ops__submit(j, rc);
}

/* pages: [[uint]] per kv head, flattened into ids with page_off. */
static int ops__pages(sinkd_req *r, sinkd_job *j)
{
    const msgpack_object_array *a;
    size_t total = 0;
    int rc = ops__arr(r, r->args, "pages", "pages", false, &a);

    if (rc != 1)
        return rc;
    for (uint32_t h = 0; h < a->size; h++) {
        if (a->ptr[h].type != MSGPACK_OBJECT_ARRAY)
            return ops__bad(r, "pages", "array of arrays of unsigned integers", -EINVAL);
        total += a->ptr[h].via.array.size;
    }
    j->page_off = malloc(((size_t)a->size + 1) * sizeof *j->page_off);
    j->ids = malloc((total + 1) * sizeof *j->ids);
    if (!j->page_off || !j->ids) {
        sinkd_req_error(r, SINKD_ERR_NO_MEMORY, "out of memory");
        return -ENOMEM;
    }
    j->page_off[0] = 0;
    for (uint32_t h = 0; h < a->size; h++) {
        const msgpack_object_array *p = &a->ptr[h].via.array;
        for (uint32_t i = 0; i < p->size; i++) {
            if (p->ptr[i].type != MSGPACK_OBJECT_POSITIVE_INTEGER || p->ptr[i].via.u64 > INT32_MAX)
                return ops__bad(r, "pages", "array of arrays of unsigned integers", -EINVAL);
            j->ids[j->n_ids++] = (int32_t)p->ptr[i].via.u64;
        }
        j->page_off[h + 1] = (int32_t)j->n_ids;
    }
    j->n_page_off = (size_t)a->size + 1;
    return 1;
}

static int op_attend(sinkd_req *r)
{
    sinkd_job *j = ops__session_job(r, SINKD_JOB_ATTEND);
    int rc;

    if (!j)
        return 0;
    j->n = 1;
    if ((rc = ops__uint(r, r->args, "layer", true, INT32_MAX, &j->layer)) >= 0 &&
        (rc = ops__uint(r, r->args, "n", false, INT32_MAX, &j->n)) >= 0 &&
        (rc = ops__region(r, "q", true, &j->q)) >= 0 &&
        (rc = ops__region(r, "out", true, &j->out)) >= 0 &&
        (rc = ops__region(r, "scores", false, &j->scores)) >= 0 &&
        (rc = ops__pages(r, j)) >= 0 &&
        (rc = ops__i64(r, r->args, "q_pos", "q_pos", false, &j->q_pos)) == 1) {
        j->has_q_pos = true;
        if (j->q_pos < 0 || j->q_pos > INT32_MAX) {
            sinkd_req_error(r, SINKD_ERR_INVALID_ARGUMENT, "q_pos must be in 0..%d", INT32_MAX);
            rc = -EINVAL;
        }
    }
    return ops__submit(j, rc);
}

/* ---- policies ----------------------------------------------------------------- */

static int op_policy_list(sinkd_req *r)
{
    sinkd_job *j = ops__job(r, SINKD_JOB_POLICY_LIST);

    return j ? ops__submit(j, 0) : 0;
}

static int ops__policy_admin(sinkd_req *r, sinkd_job_kind kind, const char *key)
{
    sinkd_job *j = ops__job(r, kind);

    if (!j)
        return 0;
    return ops__submit(j, ops__strdup(r, r->args, key, true, true, &j->policy, NULL));
}

static int op_policy_load(sinkd_req *r) { return ops__policy_admin(r, SINKD_JOB_POLICY_LOAD, "path"); }
static int op_policy_reload(sinkd_req *r) { return ops__policy_admin(r, SINKD_JOB_POLICY_RELOAD, "name"); }
static int op_policy_unload(sinkd_req *r) { return ops__policy_admin(r, SINKD_JOB_POLICY_UNLOAD, "name"); }

const sinkd_op sinkd_ops_engine[] = {
    { "shm.register", op_shm_register, 0 },
    { "shm.unregister", op_shm_unregister, 0 },
    { "model.list", op_model_list, 0 },
    { "tokenize", op_tokenize, 0 },
    { "detokenize", op_detokenize, 0 },
    { "session.open", op_session_open, 0 },
    { "session.close", op_session_close, 0 },
    { "session.list", op_session_list, 0 },
    { "session.stats", op_session_stats, 0 },
    { "session.policy", op_session_policy, 0 },
    { "session.append", op_session_append, 0 },
    { "session.generate", op_session_generate, 0 },
    { "session.cancel", op_session_cancel, 0 },
    { "session.logits", op_session_logits, 0 },
    { "kv.append", op_kv_append, 0 },
    { "attend", op_attend, 0 },
    { "policy.list", op_policy_list, 0 },
    { "policy.load", op_policy_load, SINKD_OP_ADMIN },
    { "policy.reload", op_policy_reload, SINKD_OP_ADMIN },
    { "policy.unload", op_policy_unload, SINKD_OP_ADMIN },
    { NULL, NULL, 0 },
};
