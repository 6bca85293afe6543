/* Persistent sessions: snapshots of sessions in the state directory, the
 * save of every persist=true session at shutdown and their restore at
 * start, and the ops session.attach, session.save, session.restore and
 * session.forget.
 *
 * State directory layout (0700 directories, 0600 files):
 *   sessions/<id>.snap   written at shutdown for every persistent session
 *                        (files of sessions closed since are removed then);
 *                        restored at the next start. A file that cannot be
 *                        restored is renamed <id>.snap.bad and logged, never
 *                        deleted. So is the file of an earlier shutdown
 *                        when this shutdown's save of its session fails:
 *                        restored, it would roll the conversation back
 *                        without a word. A daemon killed without a
 *                        shutdown restores the same files again: the last
 *                        clean shutdown's.
 *   snapshots/<id>.snap  session.save; read back by session.restore,
 *                        deleted by session.forget. [quota]
 *                        snapshots_per_uid caps how many a uid owns (the
 *                        disk is the daemon's, not the user's): the owners
 *                        are indexed at start from each file's HEAD and
 *                        kept in memory, so a save reads no other file.
 *
 * What a snapshot restores: the lanes (K, V, positions, scores), the
 * counters, the policy re-created from its name and parameters (plugin
 * state is not saved: its statistics are the saved scores), the last
 * logits, the pending token and the repetition penalty's window. A
 * generation in flight is not resumed (its request died with the old
 * connection); the sampler is seeded afresh by every session.generate, so
 * that is all of the sampler's state that outlives a generation. */
#include "engine_internal.h"
#include "log.h"
#include "ops.h"
#include "ops_engine.h"
#include "snapshot.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PERSIST_SESSIONS "sessions"
#define PERSIST_SNAPSHOTS "snapshots"
#define PERSIST_EXT ".snap"
/* How many <name>.bad, <name>.1.bad, ... are tried before giving up. */
#define PERSIST_BAD_MAX 100

/* "<dir>/<sub>" into @buf; false when it does not fit. */
static bool persist__path(char *buf, size_t n, const char *dir, const char *sub)
{
    int k = snprintf(buf, n, "%s/%s", dir, sub);
    return k > 0 && (size_t)k < n;
}

/* The id a file name "<id>.snap" carries (with @any, also "<id>.snap"
 * followed by more: a set-aside "<id>.snap.bad"), or 0. */
static uint64_t persist__file_id(const char *name, bool any)
{
    size_t n = strlen(PERSIST_EXT);
    char *end;
    uint64_t id;

    if (name[0] < '1' || name[0] > '9')
        return 0;
    errno = 0;
    id = strtoull(name, &end, 10);
    if (errno != 0 || strncmp(end, PERSIST_EXT, n) != 0 || (!any && end[n] != '\0'))
        return 0;
    return id;
}

static uint64_t persist__name_id(const char *name)
{
    return persist__file_id(name, false);
}

/* ---- session -> snapshot ----------------------------------------------------- */

static int persist__meta(const sinkd_engine *e, const eng_session *s, sinkd_snap_meta *m)
{
    const sinkd_kv_pool *pool = sinkd_kv_pool_get(e->kv);
    int64_t first;

    memset(m, 0, sizeof *m);
    if (s->m) {
        snprintf(m->model, sizeof m->model, "%s", s->m->name);
        m->model_size = s->m->file_size;
        m->model_hash = s->m->file_hash;
        m->n_vocab = s->m->hp->n_vocab;
    }
    m->layers = s->geom.layers;
    m->q_heads = s->geom.q_heads;
    m->kv_heads = s->geom.kv_heads;
    m->head_dim = s->geom.head_dim;
    m->geom_dtype = s->geom.dtype;
    m->rope = s->geom.rope;
    m->page_tokens = pool->page_tokens;
    m->kv_dtype = pool->dtype;
    m->id = s->id;
    m->uid = s->uid;
    m->persist = s->persist;
    memcpy(m->secret, s->secret, sizeof m->secret);
    m->max_pages = s->max_pages;
    m->tokens = s->tokens;
    m->evictions = s->evictions;
    m->evicted_tokens = s->evicted_tokens;
    m->evicted_after_prefill = s->evicted_after_prefill;
    m->rope_mode = s->rope_mode;
    snprintf(m->policy, sizeof m->policy, "%s", sinkd_policy_inst_name(s->inst));
    snprintf(m->params, sizeof m->params, "%s", sinkd_policy_inst_params(s->inst));
    snprintf(m->fallback, sizeof m->fallback, "%s", s->fallback);
    m->pending = s->m ? s->pending : -1;
    m->has_logits = s->m && s->has_logits;
    m->hist_len = (uint32_t)(s->n_hist < ENG_HIST ? s->n_hist : ENG_HIST);
    m->hist = malloc(((size_t)m->hist_len + 1) * sizeof *m->hist);
    m->next_pos = malloc((size_t)m->layers * sizeof *m->next_pos);
    m->logits = m->has_logits ? malloc((size_t)m->n_vocab * sizeof *m->logits) : NULL;
    if (!m->hist || !m->next_pos || (m->has_logits && !m->logits)) {
        sinkd_snap_meta_free(m);
        return -ENOMEM;
    }
    first = s->n_hist - m->hist_len;
    for (uint32_t i = 0; i < m->hist_len; i++)
        m->hist[i] = s->hist[(first + i) % ENG_HIST];
    memcpy(m->next_pos, s->next_pos, (size_t)m->layers * sizeof *m->next_pos);
    if (m->has_logits)
        memcpy(m->logits, s->logits, (size_t)m->n_vocab * sizeof *m->logits);
    return 0;
}

/* One layer's lanes copied from the store. */
static int persist__layer(const eng_session *s, int32_t layer, sinkd_snap_layer *l)
{
    int32_t nkv = s->geom.kv_heads, hd = s->geom.head_dim, len[SINKD_SNAP_HEADS_MAX];
    int64_t o = 0;
    int rc;

    for (int32_t h = 0; h < nkv; h++)
        len[h] = sinkd_kv_lane_len(s->seq, layer, h);
    if ((rc = sinkd_snap_layer_alloc(l, nkv, hd, len)) < 0)
        return rc;
    for (int32_t h = 0; h < nkv && rc == 0; o += len[h++]) {
        rc = sinkd_kv_lane_read(s->seq, layer, h, l->pos + o, l->score + o);
        if (rc == 0)
            rc = sinkd_kv_lane_read_kv(s->seq, layer, h, l->k + (size_t)o * hd,
                                       l->v + (size_t)o * hd);
    }
    if (rc < 0)
        sinkd_snap_layer_free(l);
    return rc;
}

/* Write @s to @dir/<id>.snap atomically. */
static int persist__save(sinkd_engine *e, eng_session *s, const char *dir)
{
    sinkd_snap_writer w = SINKD_SNAP_WRITER_INIT;
    sinkd_snap_meta m;
    char name[32];
    int rc;

    if ((rc = eng_defer_settle(e, s, -1)) < 0) /* the scores are saved whole */
        return rc;
    snprintf(name, sizeof name, "%" PRIu64 PERSIST_EXT, s->id);
    if ((rc = persist__meta(e, s, &m)) < 0)
        return rc;
    rc = sinkd_snap_write_begin(&w, dir, name, &m);
    sinkd_snap_meta_free(&m);
    for (int32_t layer = 0; layer < s->geom.layers && rc == 0; layer++) {
        sinkd_snap_layer l;
        if ((rc = persist__layer(s, layer, &l)) == 0)
            rc = sinkd_snap_write_layer(&w, &l);
        sinkd_snap_layer_free(&l);
        eng_beat(e, true);
    }
    if (rc == 0)
        return sinkd_snap_write_commit(&w);
    sinkd_snap_write_abort(&w);
    return rc;
}

/* ---- snapshot -> session ------------------------------------------------------ */

/* @m's KV budget in this pool's pages. It was counted in the saving
 * pool's (ceil(tokens / page_tokens) a lane, session.open): a restart with
 * another [engine] page_tokens keeps the tokens a lane may hold, not the
 * page count. */
static int64_t persist__budget(const sinkd_engine *e, const sinkd_snap_meta *m)
{
    int64_t lanes = (int64_t)m->layers * m->kv_heads;

    if (m->max_pages <= 0 || m->page_tokens == e->page_tokens || lanes <= 0)
        return m->max_pages;
    int64_t tokens = m->max_pages / lanes * m->page_tokens;
    return (tokens + e->page_tokens - 1) / e->page_tokens * lanes;
}

/* A session shaped by @m, its policy instance and an empty KV sequence;
 * NULL with @err set. */
static eng_session *persist__shell(sinkd_engine *e, const sinkd_snap_meta *m, char *err,
                                   size_t errlen)
{
    const sinkd_engine_model *em = NULL;
    sinkd_policy_geometry g;
    sinkd_kv_seq_params sp;
    char why[256] = "";
    eng_session *s;
    int rc;

    if (m->model[0]) {
        em = sinkd_engine_model_find(e, m->model, strlen(m->model));
        if (!em) {
            snprintf(err, errlen, "model '%s' is not configured", m->model);
            return NULL;
        }
        if (em->file_size != m->model_size || em->file_hash != m->model_hash ||
            em->hp->n_layers != m->layers || em->hp->n_heads != m->q_heads ||
            em->hp->n_kv_heads != m->kv_heads || em->hp->head_dim != m->head_dim ||
            em->hp->n_vocab != m->n_vocab) {
            snprintf(err, errlen, "model '%s' changed since the snapshot (file or shape)",
                     m->model);
            return NULL;
        }
    }
    if (!(s = calloc(1, sizeof *s))) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->m = em;
    s->geom = (sinkd_job_geometry){ m->layers, m->q_heads, m->kv_heads, m->head_dim,
                                    m->geom_dtype, m->rope };
    s->next_pos = malloc((size_t)m->layers * sizeof *s->next_pos);
    s->logits = em ? calloc((size_t)m->n_vocab, sizeof *s->logits) : NULL;
    if (!s->next_pos || (em && !s->logits)) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    eng_policy_geometry(e, s, &g);
    rc = sinkd_policy_inst_create(e->reg, m->policy, &g, m->params, &s->inst, why, sizeof why);
    if (rc < 0) {
        snprintf(err, errlen, "policy '%s': %s", m->policy,
                 rc == -ENOENT ? "not loaded" : why[0] ? why : strerror(-rc));
        goto fail;
    }
    eng_policy_attach(e, s);
    memset(&sp, 0, sizeof sp);
    sp.uid = m->uid;
    sp.n_layers = m->layers;
    sp.n_kv_heads = m->kv_heads;
    sp.head_dim = m->head_dim;
    sp.rope = m->rope;
    sp.rope.mode = em ? SINKD_ROPE_ABSOLUTE : m->rope.mode;
    sp.max_pages = persist__budget(e, m);
    s->max_pages = sp.max_pages;
    s->rope_mode = sp.rope.mode;
    if ((rc = sinkd_kv_seq_open(e->kv, &sp, &s->seq)) < 0 ||
        (rc = eng_apply_rope(e, s)) < 0) {
        snprintf(err, errlen, "KV sequence: %s", strerror(-rc));
        goto fail;
    }
    return s;
fail:
    sinkd_kv_seq_close(s->seq);
    sinkd_policy_inst_destroy(s->inst);
    free(s->next_pos);
    free(s->logits);
    free(s);
    return NULL;
}

/* Free a session that never entered the table. */
static void persist__discard(eng_session *s)
{
    sinkd_kv_seq_close(s->seq);
    sinkd_policy_inst_destroy(s->inst);
    free(s->next_pos);
    free(s->logits);
    free(s);
}

/* The session fields of @m that the lanes do not carry. */
static void persist__fields(eng_session *s, const sinkd_snap_meta *m)
{
    uint32_t n = m->hist_len < ENG_HIST ? m->hist_len : ENG_HIST;

    s->id = m->id;
    s->uid = m->uid;
    s->persist = m->persist;
    memcpy(s->secret, m->secret, sizeof s->secret);
    s->tokens = m->tokens;
    s->evictions = m->evictions;
    s->evicted_tokens = m->evicted_tokens;
    s->evicted_after_prefill = m->evicted_after_prefill;
    snprintf(s->fallback, sizeof s->fallback, "%.*s", (int)sizeof s->fallback - 1, m->fallback);
    memcpy(s->next_pos, m->next_pos, (size_t)m->layers * sizeof *s->next_pos);
    s->pending = m->pending;
    s->detok_carry = false;
    s->feed = -1;
    s->has_logits = m->has_logits;
    if (m->has_logits)
        memcpy(s->logits, m->logits, (size_t)m->n_vocab * sizeof *s->logits);
    /* the window the repetition penalty can look at: the last ENG_HIST */
    for (uint32_t i = 0; i < n; i++)
        s->hist[i] = m->hist[m->hist_len - n + i];
    s->n_hist = n;
}

/* Load the snapshot at @path into a new session (not in the table yet).
 * @uid/@admin: who asks (UINT32_MAX + admin at start-up); a snapshot of
 * another uid reads as -ENOENT. Returns 0 or a negative errno with @err. */
static int persist__load(sinkd_engine *e, const char *path, uint32_t uid, bool admin,
                         eng_session **out, char *err, size_t errlen)
{
    sinkd_snap_reader r = SINKD_SNAP_READER_INIT;
    sinkd_snap_meta m;
    eng_session *s;
    int rc;

    *out = NULL;
    if ((rc = sinkd_snap_read_begin(&r, path, &m, err, errlen)) < 0)
        return rc;
    if (!admin && m.uid != uid) {
        sinkd_snap_meta_free(&m);
        sinkd_snap_read_end(&r);
        return -ENOENT;
    }
    if (!(s = persist__shell(e, &m, err, errlen))) {
        sinkd_snap_meta_free(&m);
        sinkd_snap_read_end(&r);
        return -EINVAL;
    }
    for (int32_t layer = 0; layer < m.layers && rc == 0; layer++) {
        sinkd_snap_layer l;
        if ((rc = sinkd_snap_read_layer(&r, &l, err, errlen)) < 0)
            break;
        rc = sinkd_kv_layer_load(s->seq, layer, l.len, l.k, l.v, l.pos, l.score);
        if (rc < 0)
            snprintf(err, errlen, "layer %d: %s", layer,
                     rc == -ENOMEM ? "KV pool exhausted" :
                     rc == -EDQUOT ? eng_quota_reason(e) : strerror(-rc));
        sinkd_snap_layer_free(&l);
        eng_beat(e, true);
    }
    if (rc == 0)
        persist__fields(s, &m);
    sinkd_snap_meta_free(&m);
    sinkd_snap_read_end(&r);
    if (rc < 0) {
        persist__discard(s);
        return rc;
    }
    *out = s;
    return 0;
}

/* Put @s in the session table; ids handed out later stay above it. */
static int persist__insert(sinkd_engine *e, eng_session *s)
{
    if (eng_sess_room(e) < 0)
        return -ENOMEM;
    e->sess[e->n_sess++] = s;
    if (s->id >= e->next_sess)
        e->next_sess = s->id + 1;
    eng_update_memory(e);
    return 0;
}

static eng_session *persist__by_id(sinkd_engine *e, uint64_t id)
{
    for (size_t i = 0; i < e->n_sess; i++)
        if (e->sess[i]->id == id)
            return e->sess[i];
    return NULL;
}

/* ---- the index of snapshots/ ------------------------------------------------------ */

static struct eng_snap_ref *persist__ref(sinkd_engine *e, uint64_t id)
{
    for (size_t i = 0; i < e->n_snaps; i++)
        if (e->snaps[i].id == id)
            return &e->snaps[i];
    return NULL;
}

/* Snapshots @uid owns ([quota] snapshots_per_uid counts them). */
static size_t persist__owned(const sinkd_engine *e, uint32_t uid)
{
    size_t n = 0;

    for (size_t i = 0; i < e->n_snaps; i++)
        n += e->snaps[i].uid == uid;
    return n;
}

/* Room for one more entry: taken before a file is written, so that
 * recording it afterwards cannot fail. Returns 0 or -ENOMEM. */
static int persist__ref_reserve(sinkd_engine *e)
{
    size_t cap = e->cap_snaps ? 2 * e->cap_snaps : 16;
    struct eng_snap_ref *p;

    if (e->n_snaps < e->cap_snaps)
        return 0;
    if (!(p = reallocarray(e->snaps, cap, sizeof *p)))
        return -ENOMEM;
    e->snaps = p;
    e->cap_snaps = cap;
    return 0;
}

/* Record that snapshots/<@id>.snap belongs to @uid (replacing what was
 * known of it). Needs room reserved; can't fail. */
static void persist__ref_set(sinkd_engine *e, uint64_t id, uint32_t uid)
{
    struct eng_snap_ref *r = persist__ref(e, id);

    if (!r)
        r = &e->snaps[e->n_snaps++];
    *r = (struct eng_snap_ref){ id, uid };
}

static void persist__ref_drop(sinkd_engine *e, struct eng_snap_ref *r)
{
    *r = e->snaps[--e->n_snaps];
}

/* ---- start-up and shutdown ------------------------------------------------------- */

/* Whether @name in @dirfd is what this daemon writes: a regular file it
 * owns, not writable by others. A file another user could have planted
 * would hand its sessions to whoever it names. */
static bool persist__trusted(int dirfd, const char *name)
{
    struct stat st;

    return fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
           st.st_uid == geteuid() && !(st.st_mode & 022);
}

/* Rename @name in @dir to the first free "<name>.bad", "<name>.1.bad", ...
 * By path, not through a directory fd: it must work when no descriptor
 * can be had (EMFILE at shutdown), or a stale file would be restored. */
static void persist__set_aside(const char *dir, const char *name, const char *why)
{
    char from[4200], bad[4300];

    if (snprintf(from, sizeof from, "%s/%s", dir, name) >= (int)sizeof from) {
        errno = ENAMETOOLONG;
        goto fail;
    }
    for (int i = 0; i < PERSIST_BAD_MAX; i++) {
        if (i == 0)
            snprintf(bad, sizeof bad, "%s.bad", from);
        else
            snprintf(bad, sizeof bad, "%s.%d.bad", from, i);
        if (link(from, bad) == 0) {
            unlink(from);
            sinkd_log(SINKD_LOG_WARNING, "persist: %s/%s refused (%s); kept as %s", dir, name,
                      why, bad);
            return;
        }
        if (errno != EEXIST)
            break;
    }
fail:
    sinkd_log(SINKD_LOG_ERR, "persist: %s/%s refused (%s) and could not be set aside: %s",
              dir, name, why, strerror(errno));
}

/* Restore one file of sessions/ (@dirfd); failures are set aside. */
static void persist__restore_one(sinkd_engine *e, int dirfd, const char *dir, const char *name)
{
    char path[4096], err[512] = "";
    eng_session *s = NULL;
    int rc;

    if (!persist__path(path, sizeof path, dir, name)) {
        persist__set_aside(dir, name, "path too long");
        return;
    }
    if (!persist__trusted(dirfd, name)) {
        persist__set_aside(dir, name, "not a regular file owned by sinkd, mode 0600");
        return;
    }
    rc = persist__load(e, path, UINT32_MAX, true, &s, err, sizeof err);
    if (rc == 0 && (persist__name_id(name) != s->id || persist__by_id(e, s->id))) {
        snprintf(err, sizeof err, "session id %" PRIu64 " does not match the file name or is "
                 "taken", s->id);
        persist__discard(s);
        rc = -EINVAL;
    }
    if (rc == 0 && persist__insert(e, s) < 0) {
        snprintf(err, sizeof err, "out of memory");
        persist__discard(s);
        rc = -ENOMEM;
    }
    if (rc < 0) {
        persist__set_aside(dir, name, err[0] ? err : strerror(-rc));
        return;
    }
    sinkd_log(SINKD_LOG_NOTICE, "session %" PRIu64 " restored for uid %u: %s, policy %s, "
              "%" PRId64 " tokens", s->id, s->uid, s->m ? s->m->name : "raw",
              sinkd_policy_inst_name(s->inst), s->tokens);
}

/* Index @name (snapshot @id) of snapshots/ (@dirfd, @dir) under the owner
 * its HEAD names; a file whose HEAD does not read keeps its id for
 * ENG_SNAP_NOBODY. Returns 0 or -ENOMEM. */
static int persist__index_one(sinkd_engine *e, int dirfd, const char *dir, const char *name,
                              uint64_t id)
{
    sinkd_snap_reader r = SINKD_SNAP_READER_INIT;
    char path[4096], err[512] = "not a regular file owned by sinkd, mode 0600";
    uint32_t uid = ENG_SNAP_NOBODY;
    sinkd_snap_meta m;

    if (persist__ref_reserve(e) < 0)
        return -ENOMEM;
    if (!persist__path(path, sizeof path, dir, name))
        snprintf(err, sizeof err, "path too long");
    else if (persist__trusted(dirfd, name) &&
             sinkd_snap_read_begin(&r, path, &m, err, sizeof err) == 0) {
        uid = m.uid;
        sinkd_snap_meta_free(&m);
        sinkd_snap_read_end(&r);
    }
    if (uid == ENG_SNAP_NOBODY)
        sinkd_log(SINKD_LOG_WARNING, "persist: %s/%s: owner unknown (%s); it keeps its id and "
                  "only an admin can forget it", dir, name, err);
    persist__ref_set(e, id, uid);
    return 0;
}

/* Make @dir (0700) if missing. */
static int persist__mkdir(const char *dir)
{
    struct stat st;

    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return -errno;
    if (stat(dir, &st) < 0)
        return -errno;
    return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

/* Walk @sub of the state directory: restore its snapshots (@restore) or
 * index them (their ids stay above the ids new sessions get). Returns 0
 * or -ENOMEM (index). */
static int persist__scan(sinkd_engine *e, const char *sub, bool restore)
{
    char dir[4096];
    struct dirent *d;
    int rc = 0;
    DIR *dp;

    if (!persist__path(dir, sizeof dir, e->state_dir, sub) || !(dp = opendir(dir)))
        return 0;
    while (rc == 0 && (d = readdir(dp))) {
        uint64_t id = persist__name_id(d->d_name), any = persist__file_id(d->d_name, true);
        /* a set-aside <id>.snap.bad keeps its id too: an administrator may
         * rename it back */
        if (any >= e->next_sess)
            e->next_sess = any + 1;
        if (!restore || d->d_name[0] == '.') {
            if (!strncmp(d->d_name, ".tmp.", 5)) {
                /* a write cut short (shutdown or session.save): never a
                 * committed snapshot */
                if (unlinkat(dirfd(dp), d->d_name, 0) == 0)
                    sinkd_log(SINKD_LOG_INFO, "persist: removed unfinished %s/%s", dir,
                              d->d_name);
            } else if (id) {
                rc = persist__index_one(e, dirfd(dp), dir, d->d_name, id);
            }
            continue;
        }
        if (strlen(d->d_name) > strlen(PERSIST_EXT) &&
            !strcmp(d->d_name + strlen(d->d_name) - strlen(PERSIST_EXT), PERSIST_EXT))
            persist__restore_one(e, dirfd(dp), dir, d->d_name);
    }
    closedir(dp);
    return rc;
}

int eng_persist_open(sinkd_engine *e, const char *state_dir)
{
    char sub[4096];
    int rc;

    if (!state_dir || state_dir[0] != '/')
        return -EINVAL;
    if ((rc = persist__mkdir(state_dir)) < 0 ||
        (rc = persist__path(sub, sizeof sub, state_dir, PERSIST_SESSIONS) ? 0 : -ENAMETOOLONG) < 0 ||
        (rc = persist__mkdir(sub)) < 0 ||
        (rc = persist__path(sub, sizeof sub, state_dir, PERSIST_SNAPSHOTS) ? 0 : -ENAMETOOLONG) < 0 ||
        (rc = persist__mkdir(sub)) < 0) {
        sinkd_log(SINKD_LOG_ERR, "persist: state directory %s: %s; sessions will not persist",
                  state_dir, strerror(-rc));
        return rc;
    }
    if (!(e->state_dir = strdup(state_dir)))
        return -ENOMEM;
    /* Explicit snapshots keep their ids: new sessions must not take them. */
    if ((rc = persist__scan(e, PERSIST_SNAPSHOTS, false)) < 0) {
        sinkd_log(SINKD_LOG_ERR, "persist: indexing %s/%s: %s; sessions will not persist",
                  state_dir, PERSIST_SNAPSHOTS, strerror(-rc));
        eng_persist_close(e);
        return rc;
    }
    persist__scan(e, PERSIST_SESSIONS, true);
    return 0;
}

void eng_persist_close(sinkd_engine *e)
{
    free(e->state_dir);
    free(e->snaps);
    e->state_dir = NULL;
    e->snaps = NULL;
    e->n_snaps = e->cap_snaps = 0;
}

/* Remove the files of sessions/ whose session is no longer a live
 * persistent one (closed since the start). */
static void persist__prune(sinkd_engine *e, const char *dir)
{
    struct dirent *d;
    DIR *dp = opendir(dir);

    while (dp && (d = readdir(dp))) {
        uint64_t id = persist__name_id(d->d_name);
        eng_session *s = id ? persist__by_id(e, id) : NULL;
        if (id && (!s || !s->persist) && unlinkat(dirfd(dp), d->d_name, 0) == 0)
            sinkd_log(SINKD_LOG_INFO, "persist: session %" PRIu64 " is closed: removed %s/%s",
                      id, dir, d->d_name);
    }
    if (dp)
        closedir(dp);
}

/* After @s's save to sessions/ (@dir) failed with @rc (before its rename:
 * SINKD_SNAP_NOT_DURABLE is a save): the file an earlier shutdown left for
 * it is older than the conversation, so it is set aside rather than
 * restored at the next start as if current. */
static void persist__save_failed(const char *dir, const eng_session *s, int rc)
{
    char name[32], path[4200], why[128];
    struct stat st;

    sinkd_log(SINKD_LOG_ERR, "persist: session %" PRIu64 " not saved: %s", s->id,
              strerror(-rc));
    snprintf(name, sizeof name, "%" PRIu64 PERSIST_EXT, s->id);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (lstat(path, &st) < 0 && errno == ENOENT)
        return;
    snprintf(why, sizeof why, "older than session %" PRIu64 ", whose save failed: %s", s->id,
             strerror(-rc));
    persist__set_aside(dir, name, why);
}

/* A save whose rename happened but whose directory sync failed is a save:
 * say that a crash may undo it. */
static void persist__not_durable(const eng_session *s, const char *dir)
{
    sinkd_log(SINKD_LOG_WARNING, "persist: session %" PRIu64 " saved in %s, but the directory "
              "could not be synced: a crash may bring its older snapshot back", s->id, dir);
}

void eng_persist_save_all(sinkd_engine *e)
{
    char dir[4096];
    size_t saved = 0, failed = 0;

    if (!e->state_dir || !persist__path(dir, sizeof dir, e->state_dir, PERSIST_SESSIONS))
        return;
    for (size_t i = 0; i < e->n_sess; i++) {
        eng_session *s = e->sess[i];
        int rc;
        if (!s->persist)
            continue;
        rc = persist__save(e, s, dir);
        if (rc < 0) {
            failed++;
            persist__save_failed(dir, s, rc);
        } else {
            if (rc == SINKD_SNAP_NOT_DURABLE)
                persist__not_durable(s, dir);
            saved++;
        }
    }
    persist__prune(e, dir);
    if (saved || failed)
        sinkd_log(failed ? SINKD_LOG_ERR : SINKD_LOG_NOTICE,
                  "persist: %zu session(s) saved to %s, %zu failed", saved, dir, failed);
}

/* ---- jobs -------------------------------------------------------------------------- */

static void persist__reply(sinkd_engine *e, const sinkd_job *j, const eng_session *s)
{
    sinkd_fw w;

    if (eng_begin_reply(&w, j, ENG_SESSION_REPLY_PAIRS + 1) < 0)
        return;
    eng_pack_session(&w, s);
    sinkd_pack_kv_u64(&w.pk, "n_past", (uint64_t)s->tokens + (s->pending >= 0));
    eng_send(e, j, &w, true);
}

/* Constant-time comparison of two secrets. */
static bool persist__secret_eq(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char d = la != lb;

    for (size_t i = 0; i < la && i < lb; i++)
        d |= (unsigned char)(a[i] ^ b[i]);
    return d == 0;
}

static void persist__attach(sinkd_engine *e, sinkd_job *j)
{
    eng_session *s = persist__by_id(e, j->session);

    /* A wrong secret, another uid and no such session read the same. */
    if (!s || s->uid != j->uid || !persist__secret_eq(s->secret, j->text)) {
        eng_error(e, j, SINKD_ERR_NOT_FOUND, "no session %" PRIu64, j->session);
        return;
    }
    s->conn_id = j->conn_id;
    sinkd_log(SINKD_LOG_INFO, "session %" PRIu64 " attached by uid %u", s->id, j->uid);
    persist__reply(e, j, s);
}

static void persist__save_job(sinkd_engine *e, sinkd_job *j)
{
    eng_session *s = eng_session_find(e, j);
    char dir[4096], path[4200];
    sinkd_fw w;
    int rc;

    if (!s)
        return;
    if (s->gen) {
        eng_error(e, j, SINKD_ERR_BUSY, "session %" PRIu64 " is generating", s->id);
        return;
    }
    /* a new file counts against its owner; replacing one is always allowed */
    if (!persist__ref(e, s->id) && e->snapshots_per_uid &&
        persist__owned(e, s->uid) >= e->snapshots_per_uid) {
        eng_error(e, j, SINKD_ERR_QUOTA_EXCEEDED, "[quota] snapshots_per_uid (%u) reached: "
                  "session.forget one first", e->snapshots_per_uid);
        return;
    }
    if (persist__ref_reserve(e) < 0) {
        eng_error(e, j, SINKD_ERR_NO_MEMORY, "out of memory");
        return;
    }
    persist__path(dir, sizeof dir, e->state_dir, PERSIST_SNAPSHOTS);
    rc = persist__save(e, s, dir);
    if (rc < 0) {
        sinkd_log(SINKD_LOG_ERR, "persist: session %" PRIu64 " snapshot: %s", s->id,
                  strerror(-rc));
        eng_error_errno(e, j, rc, "session.save");
        return;
    }
    if (rc == SINKD_SNAP_NOT_DURABLE)
        persist__not_durable(s, dir);
    persist__ref_set(e, s->id, s->uid);
    snprintf(path, sizeof path, "%s/%" PRIu64 PERSIST_EXT, dir, s->id);
    sinkd_log(SINKD_LOG_INFO, "session %" PRIu64 " saved to %s", s->id, path);
    if (eng_begin_reply(&w, j, 1) < 0)
        return;
    sinkd_pack_kv_str(&w.pk, "path", path);
    eng_send(e, j, &w, true);
}

/* The session id the restore request names: {session}, or {path} of a
 * file in snapshots/ (nothing else can be read). 0 when invalid. */
static uint64_t persist__restore_id(const sinkd_engine *e, const sinkd_job *j)
{
    char dir[4096];
    size_t n;

    if (!j->text)
        return j->session;
    if (!persist__path(dir, sizeof dir, e->state_dir, PERSIST_SNAPSHOTS))
        return 0;
    n = strlen(dir);
    if (strncmp(j->text, dir, n) != 0 || j->text[n] != '/' || strchr(j->text + n + 1, '/'))
        return 0;
    return persist__name_id(j->text + n + 1);
}

static void persist__restore_job(sinkd_engine *e, sinkd_job *j)
{
    uint64_t want = persist__restore_id(e, j), id = want;
    char path[4200], err[512] = "";
    eng_session *s, *live;
    int rc;

    if (!id) {
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT, "path: not a snapshot that session.save "
                  "wrote (%s/%s/<id>%s)", e->state_dir, PERSIST_SNAPSHOTS, PERSIST_EXT);
        return;
    }
    live = persist__by_id(e, id);
    if (live && live->uid != j->uid && !j->admin)
        live = NULL, id = 0;
    if (live && live->gen) {
        eng_error(e, j, SINKD_ERR_BUSY, "session %" PRIu64 " is generating", id);
        return;
    }
    snprintf(path, sizeof path, "%s/%s/%" PRIu64 PERSIST_EXT, e->state_dir, PERSIST_SNAPSHOTS,
             id);
    rc = id ? persist__load(e, path, j->uid, j->admin, &s, err, sizeof err) : -ENOENT;
    if (rc == -ENOENT) {
        eng_error(e, j, SINKD_ERR_NOT_FOUND, "no snapshot of session %" PRIu64, want);
        return;
    }
    if (rc < 0) {
        sinkd_log(SINKD_LOG_WARNING, "persist: %s refused: %s", path, err);
        eng_error(e, j, rc == -ENOMEM ? SINKD_ERR_NO_MEMORY
                        : rc == -EDQUOT ? SINKD_ERR_QUOTA_EXCEEDED : SINKD_ERR_INVALID_ARGUMENT,
                  "snapshot of session %" PRIu64 " refused: %s", id, err);
        return;
    }
    /* A file copied or renamed under another session's name would replace
     * that session and bring a second session of its own id. */
    if (s->id != id) {
        eng_error(e, j, SINKD_ERR_INVALID_ARGUMENT, "%s holds session %" PRIu64 ", not %" PRIu64,
                  path, s->id, id);
        persist__discard(s);
        return;
    }
    /* a session that comes back counts like one that opens */
    if (!live && e->sessions_per_uid && eng_uid_sessions(e, s->uid) >= e->sessions_per_uid) {
        eng_error(e, j, SINKD_ERR_QUOTA_EXCEEDED, "[quota] sessions_per_uid (%u) reached",
                  e->sessions_per_uid);
        persist__discard(s);
        return;
    }
    /* the snapshot replaces the live session (a rollback) */
    if (live)
        eng_session_destroy(e, live);
    s->conn_id = j->conn_id;
    if (persist__insert(e, s) < 0) {
        persist__discard(s);
        eng_error(e, j, SINKD_ERR_NO_MEMORY, "out of memory");
        return;
    }
    sinkd_log(SINKD_LOG_INFO, "session %" PRIu64 " restored from %s by uid %u", s->id, path,
              j->uid);
    persist__reply(e, j, s);
}

static void persist__forget_job(sinkd_engine *e, sinkd_job *j)
{
    struct eng_snap_ref *r = persist__ref(e, j->session);
    char path[4200];
    int rc = 0;

    /* Another uid's snapshot and none read the same; one whose owner is
     * unknown is an admin's to remove. */
    if (r && !j->admin && (r->uid != j->uid || r->uid == ENG_SNAP_NOBODY))
        r = NULL;
    snprintf(path, sizeof path, "%s/%s/%" PRIu64 PERSIST_EXT, e->state_dir, PERSIST_SNAPSHOTS,
             j->session);
    if (r && unlink(path) < 0)
        rc = -errno;
    if (r && rc == -ENOENT) { /* removed behind the daemon's back */
        persist__ref_drop(e, r);
        r = NULL;
    }
    if (!r) {
        eng_error(e, j, SINKD_ERR_NOT_FOUND, "no snapshot of session %" PRIu64, j->session);
        return;
    }
    if (rc < 0) {
        sinkd_log(SINKD_LOG_ERR, "persist: %s not removed: %s", path, strerror(-rc));
        eng_error_errno(e, j, rc, "session.forget");
        return;
    }
    persist__ref_drop(e, r);
    sinkd_log(SINKD_LOG_INFO, "session %" PRIu64 ": snapshot %s forgotten by uid %u", j->session,
              path, j->uid);
    eng_reply_empty(e, j);
}

void eng_job_persist(sinkd_engine *e, sinkd_job *j)
{
    if (!e->state_dir) {
        eng_error(e, j, SINKD_ERR_UNSUPPORTED, "sessions cannot be saved: no usable "
                  "[server] state_dir");
        return;
    }
    switch (j->kind) {
    case SINKD_JOB_SESSION_ATTACH: persist__attach(e, j); break;
    case SINKD_JOB_SESSION_SAVE: persist__save_job(e, j); break;
    case SINKD_JOB_SESSION_FORGET: persist__forget_job(e, j); break;
    default: persist__restore_job(e, j); break;
    }
}

/* ---- ops (loop thread) ------------------------------------------------------------ */

/* Queue a job of @kind for @r with its fields; answers and returns 0 when a
 * field is bad. */
static int persist__op(sinkd_req *r, sinkd_job_kind kind, bool need_session, const char *str,
                       bool need_str)
{
    sinkd_engine *e = sinkd_engine_ops_engine();
    const char *s = NULL;
    size_t n = 0;
    uint64_t id = 0;
    sinkd_job *j;
    int has_id, has_str;

    if (!e)
        return sinkd_req_error(r, SINKD_ERR_UNSUPPORTED, "op '%s': this daemon runs no engine",
                               r->op);
    if ((has_id = sinkd_req_u64(r, "session", need_session, &id)) < 0 ||
        (has_str = str ? sinkd_req_str(r, str, need_str, &s, &n) : 0) < 0)
        return 0;
    if (has_str && memchr(s, 0, n))
        return sinkd_req_error(r, SINKD_ERR_INVALID_ARGUMENT, "field '%s': contains NUL", str);
    if (kind == SINKD_JOB_SESSION_RESTORE && has_id == has_str)
        return sinkd_req_error(r, SINKD_ERR_BAD_REQUEST, "give exactly one of 'session' and "
                               "'path'");
    /* attach and restore make the connection a session's owner */
    if (!(j = sinkd_job_new(kind, r->conn_id, r->id, (uint32_t)r->conn->uid, r->conn->admin)) ||
        (has_str && !(j->text = strndup(s, n))) ||
        ((kind == SINKD_JOB_SESSION_ATTACH || kind == SINKD_JOB_SESSION_RESTORE) &&
         sinkd_engine_ops_track(r->conn_id) < 0)) {
        sinkd_job_free(j);
        return sinkd_req_error(r, SINKD_ERR_NO_MEMORY, "out of memory");
    }
    j->session = id;
    sinkd_engine_submit(e, j);
    return SINKD_REQ_DEFERRED;
}

static int op_session_attach(sinkd_req *r)
{
    return persist__op(r, SINKD_JOB_SESSION_ATTACH, true, "secret", true);
}

static int op_session_save(sinkd_req *r)
{
    return persist__op(r, SINKD_JOB_SESSION_SAVE, true, NULL, false);
}

static int op_session_restore(sinkd_req *r)
{
    return persist__op(r, SINKD_JOB_SESSION_RESTORE, false, "path", false);
}

static int op_session_forget(sinkd_req *r)
{
    return persist__op(r, SINKD_JOB_SESSION_FORGET, true, NULL, false);
}

const sinkd_op sinkd_ops_persist[] = {
    { "session.attach", op_session_attach, 0 },
    { "session.save", op_session_save, 0 },
    { "session.restore", op_session_restore, 0 },
    { "session.forget", op_session_forget, 0 },
    { NULL, NULL, 0 },
};
