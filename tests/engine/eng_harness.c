/* The in-process engine harness (eng_harness.h). */
#include "eng_harness.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MODEL_PATH SINKD_TEST_DATA "/sinkd-ref-tiny-f32.gguf"

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    eng_h_frame *head, *tail;
} col = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL};

static sinkd_engine *cur;
static uint64_t next_id = 1;

static int collect(void *ud, uint64_t conn_id, uint8_t *buf, size_t len)
{
    (void)ud;
    (void)conn_id;
    if (!buf) /* a connection's finish (CONN_EOF): no frame */
        return 0;
    eng_h_frame *f = calloc(1, sizeof *f);
    cr_assert(f);
    cr_assert(sinkd_msg_decode(buf + 4, len - 4, &f->msg, NULL) == 0);
    f->buf = buf;
    pthread_mutex_lock(&col.mu);
    if (col.tail)
        col.tail->next = f;
    else
        col.head = f;
    col.tail = f;
    pthread_cond_broadcast(&col.cv);
    pthread_mutex_unlock(&col.mu);
    return 0;
}

sinkd_engine *eng_h_open(const char *const *dirs, size_t n_dirs)
{
    return eng_h_open_state(dirs, n_dirs, NULL);
}

sinkd_engine *eng_h_open_state(const char *const *dirs, size_t n_dirs, const char *state_dir)
{
    eng_h_config c = {0};

    c.dirs = dirs;
    c.n_dirs = n_dirs;
    c.state_dir = state_dir;
    return eng_h_open_with(&c);
}

sinkd_engine *eng_h_open_with(const eng_h_config *hc)
{
    const char *names[] = {hc->model_name ? hc->model_name : "tiny"};
    const char *paths[] = {hc->model_path ? hc->model_path : MODEL_PATH};
    sinkd_engine_config c = {0};
    char err[512] = "";

    cr_assert(!cur, "one engine at a time");
    c.backend = hc->backend ? hc->backend : "cpu";
    c.threads = 1;
    c.kv = (sinkd_kv_config)SINKD_KV_CONFIG_INIT;
    c.kv.pool_bytes = hc->pool_bytes ? hc->pool_bytes : 32u << 20;
    c.kv.dtype = hc->kv_dtype;
    c.score_defer_off = hc->score_defer_off;
    c.prefill_chunk = 8;
    c.max_batch = 4;
    c.model_names = names;
    c.model_paths = paths;
    c.n_models = 1;
    c.plugin_dirs = hc->dirs;
    c.n_plugin_dirs = hc->n_dirs;
    c.state_dir = hc->state_dir;
    cr_assert(sinkd_engine_open(&c, &cur, err, sizeof err) == 0, "%s", err);
    cr_assert(sinkd_engine_start(cur, collect, NULL) == 0);
    return cur;
}

void eng_h_frame_free(eng_h_frame *f)
{
    sinkd_msg_free(&f->msg);
    free(f->buf);
    free(f);
}

void eng_h_close(sinkd_engine *e)
{
    sinkd_engine_close(e);
    cur = NULL;
    while (col.head) {
        eng_h_frame *f = col.head;
        col.head = f->next;
        eng_h_frame_free(f);
    }
    col.tail = NULL;
}

eng_h_frame *eng_h_next(uint64_t id)
{
    struct timespec dl;
    eng_h_frame *got = NULL;

    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 60;
    pthread_mutex_lock(&col.mu);
    while (!got) {
        eng_h_frame **pp = &col.head, *prev = NULL;
        for (; *pp; prev = *pp, pp = &(*pp)->next) {
            uint64_t fid;
            if (sinkd_map_u64(&(*pp)->msg.root, "id", &fid) == 0 && fid == id) {
                got = *pp;
                *pp = got->next;
                if (col.tail == got)
                    col.tail = prev;
                break;
            }
        }
        if (!got && pthread_cond_timedwait(&col.cv, &col.mu, &dl) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&col.mu);
    cr_assert(got, "no answer for request %llu", (unsigned long long)id);
    return got;
}

bool eng_h_is_event(const eng_h_frame *f)
{
    return sinkd_map_get(&f->msg.root, "ev") != NULL;
}

void eng_h_event_name(const eng_h_frame *f, char out[32])
{
    const char *s = "";
    size_t n = 0;

    sinkd_map_str(&f->msg.root, "ev", &s, &n);
    snprintf(out, 32, "%.*s", (int)n, s);
}

static eng_h_frame *reply_of(uint64_t id)
{
    eng_h_frame *f;

    while (eng_h_is_event(f = eng_h_next(id)))
        eng_h_frame_free(f);
    return f;
}

eng_h_frame *eng_h_reply_ok(uint64_t id)
{
    eng_h_frame *f = reply_of(id);
    const msgpack_object *err = sinkd_map_get(&f->msg.root, "error");

    if (err) {
        const char *m = "";
        size_t n = 0;
        sinkd_map_str(err, "message", &m, &n);
        cr_assert_fail("request %llu failed: %.*s", (unsigned long long)id, (int)n, m);
    }
    return f;
}

void eng_h_reply_code(uint64_t id, char out[32])
{
    eng_h_frame *f = reply_of(id);
    const msgpack_object *err = sinkd_map_get(&f->msg.root, "error");
    const char *c = "";
    size_t n = 0;

    if (err)
        sinkd_map_str(err, "code", &c, &n);
    snprintf(out, 32, "%.*s", (int)n, c);
    eng_h_frame_free(f);
}

uint64_t eng_h_u64(const eng_h_frame *f, const char *key)
{
    uint64_t v = 0;

    cr_assert(sinkd_map_u64(&f->msg.root, key, &v) == 0, "field %s", key);
    return v;
}

void eng_h_str(const eng_h_frame *f, const char *key, char *out, size_t cap)
{
    const char *s;
    size_t n;

    cr_assert(sinkd_map_str(&f->msg.root, key, &s, &n) == 0, "field %s", key);
    snprintf(out, cap, "%.*s", (int)n, s);
}

sinkd_job *eng_h_job(sinkd_job_kind kind, uint64_t session)
{
    sinkd_job *j = sinkd_job_new(kind, 1, next_id++, 1000, false);

    cr_assert(j);
    j->session = session;
    return j;
}

uint64_t eng_h_submit(sinkd_job *j)
{
    uint64_t id = j->id;

    sinkd_engine_submit(cur, j);
    return id;
}

uint64_t eng_h_open_session(const char *policy, const char *params)
{
    sinkd_job *j = eng_h_job(SINKD_JOB_SESSION_OPEN, 0);
    eng_h_frame *f;
    uint64_t s;

    j->policy = policy ? strdup(policy) : NULL;
    j->params = params ? strdup(params) : NULL;
    f = eng_h_reply_ok(eng_h_submit(j));
    s = eng_h_u64(f, "session");
    eng_h_frame_free(f);
    return s;
}

void eng_h_append(uint64_t s, const int32_t *ids, size_t n)
{
    sinkd_job *j = eng_h_job(SINKD_JOB_SESSION_APPEND, s);

    j->ids = malloc(n * sizeof *ids);
    memcpy(j->ids, ids, n * sizeof *ids);
    j->n_ids = n;
    j->bos_set = true;
    eng_h_frame_free(eng_h_reply_ok(eng_h_submit(j)));
}

uint64_t eng_h_generate(uint64_t s, int32_t max_tokens)
{
    sinkd_job *j = eng_h_job(SINKD_JOB_SESSION_GENERATE, s);

    j->gen.max_tokens = max_tokens;
    j->gen.sp = (sinkd_sample_params)SINKD_SAMPLE_PARAMS_INIT;
    j->gen.stream = true;
    j->gen.ignore_eos = true;
    return eng_h_submit(j);
}

size_t eng_h_tokens(uint64_t id, int32_t *out, size_t cap, char reason[16], char *events,
                    size_t events_cap)
{
    size_t n = 0;
    eng_h_frame *f;

    while (eng_h_is_event(f = eng_h_next(id))) {
        char ev[32];
        eng_h_event_name(f, ev);
        if (!strcmp(ev, "token")) {
            int64_t t;
            cr_assert(sinkd_map_i64(&f->msg.root, "token", &t) == 0);
            cr_assert(n < cap);
            out[n++] = (int32_t)t;
        } else if (events) {
            size_t at = strlen(events);
            snprintf(events + at, events_cap - at, "%s ", ev);
        }
        eng_h_frame_free(f);
    }
    cr_assert(!sinkd_map_get(&f->msg.root, "error"), "generate failed");
    eng_h_str(f, "reason", reason, 16);
    cr_assert_eq(eng_h_u64(f, "n_tokens"), n);
    eng_h_frame_free(f);
    return n;
}

void eng_h_layer_lens(const eng_h_frame *f, uint32_t l, uint64_t *mn, uint64_t *mx)
{
    const msgpack_object *layers = sinkd_map_get(&f->msg.root, "layers");

    cr_assert(layers && layers->type == MSGPACK_OBJECT_ARRAY && l < layers->via.array.size);
    cr_assert(sinkd_map_u64(&layers->via.array.ptr[l], "len_min", mn) == 0);
    cr_assert(sinkd_map_u64(&layers->via.array.ptr[l], "len_max", mx) == 0);
}

void eng_h_logits(uint64_t s, float *out, size_t n_vocab)
{
    size_t bytes = n_vocab * sizeof *out;
    int fd = memfd_create("logits", MFD_CLOEXEC);
    sinkd_shm_region *r;
    char err[128];

    cr_assert(fd >= 0 && ftruncate(fd, (off_t)bytes) == 0);
    cr_assert(sinkd_shm_map(dup(fd), bytes, &r, err, sizeof err) == 0, "%s", err);
    sinkd_job *j = eng_h_job(SINKD_JOB_SESSION_LOGITS, s);
    j->out.r = r; /* the job takes our reference */
    eng_h_frame *f = eng_h_reply_ok(eng_h_submit(j));
    cr_assert_eq(eng_h_u64(f, "n_vocab"), n_vocab);
    eng_h_frame_free(f);
    cr_assert(pread(fd, out, bytes, 0) == (ssize_t)bytes);
    close(fd);
}
