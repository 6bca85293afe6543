/* Client shared-memory regions: mapping, sealing, guarded copies, and the
 * per-connection handle table. */
#include "shm.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int sinkd_shm_map(int fd, uint64_t size, sinkd_shm_region **out, char *err, size_t errlen)
{
    struct stat st;
    sinkd_shm_region *r;
    int seals;
    void *p;

    if (fd < 0 || !out)
        return -EINVAL;
    if (size == 0 || size > (uint64_t)SIZE_MAX) {
        snprintf(err, errlen, "size must be between 1 and %zu bytes", (size_t)SIZE_MAX);
        close(fd);
        return -EDOM;
    }
    /* Memory only (a memfd, or a tmpfs file: what takes seals): a file of
     * a disk, or of a FUSE mount the client serves itself, could stall the
     * engine thread inside a page fault for as long as it pleases. */
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || fcntl(fd, F_GET_SEALS) < 0) {
        snprintf(err, errlen, "the descriptor is not a memfd (use memfd_create)");
        close(fd);
        return -EINVAL;
    }
    if ((uint64_t)st.st_size < size) {
        snprintf(err, errlen, "file holds %lld bytes, fewer than size %llu",
                 (long long)st.st_size, (unsigned long long)size);
        close(fd);
        return -EINVAL;
    }
    r = calloc(1, sizeof *r);
    if (!r) {
        close(fd);
        return -ENOMEM;
    }
    /* Sealed, the file can never shrink under the mapping; a file that was
     * already sealed by the client reports the seal. Checked after fstat so
     * that a shrink racing the seal is seen by the size check below. */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0)
        r->sealed = true;
    seals = fcntl(fd, F_GET_SEALS);
    if (seals >= 0 && (seals & F_SEAL_SHRINK))
        r->sealed = true;
    if (r->sealed && (fstat(fd, &st) < 0 || (uint64_t)st.st_size < size)) {
        snprintf(err, errlen, "file shrank below size %llu while registering",
                 (unsigned long long)size);
        free(r);
        close(fd);
        return -EINVAL;
    }
    p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        int e = errno;
        snprintf(err, errlen, "mmap: %s", strerror(e));
        free(r);
        close(fd);
        return -e;
    }
    /* The mapping outlives the descriptor. */
    close(fd);
    atomic_init(&r->refs, 1);
    r->base = p;
    r->size = size;
    *out = r;
    return 0;
}

void sinkd_shm_ref(sinkd_shm_region *r)
{
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
}

void sinkd_shm_unref(sinkd_shm_region *r)
{
    if (!r || atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
        return;
    munmap(r->base, (size_t)r->size);
    free(r);
}

bool sinkd_shm_range_ok(const sinkd_shm_region *r, uint64_t off, uint64_t len)
{
    return r && off <= r->size && len <= r->size - off;
}

/* ---- SIGBUS guard ------------------------------------------------------- */

/* The jump buffer of the copy this thread is doing, NULL outside one. */
static _Thread_local sigjmp_buf *volatile shm__jb;
static struct sigaction shm__old_bus;
static pthread_once_t shm__once = PTHREAD_ONCE_INIT;

static void shm__on_sigbus(int sig, siginfo_t *si, void *uc)
{
    sigjmp_buf *jb = shm__jb;

    if (jb)
        siglongjmp(*jb, 1);
    /* Not ours: restore whatever was there and let the fault happen again. */
    (void)si;
    (void)uc;
    sigaction(sig, &shm__old_bus, NULL);
}

static void shm__install(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = shm__on_sigbus;
    /* NODEFER: we leave the handler by siglongjmp without restoring the
     * mask (sigsetjmp(.., 0) costs no system call), so SIGBUS must not stay
     * blocked. */
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &shm__old_bus);
}

static int shm__copy(void *dst, const void *src, size_t len, bool guarded)
{
    sigjmp_buf jb;

    if (!guarded) {
        memcpy(dst, src, len);
        return 0;
    }
    pthread_once(&shm__once, shm__install);
    if (sigsetjmp(jb, 0)) {
        shm__jb = NULL;
        return -EFAULT;
    }
    shm__jb = &jb;
    memcpy(dst, src, len);
    shm__jb = NULL;
    return 0;
}

int sinkd_shm_read(const sinkd_shm_region *r, uint64_t off, void *dst, size_t len)
{
    if (!sinkd_shm_range_ok(r, off, len))
        return -ERANGE;
    return shm__copy(dst, r->base + off, len, !r->sealed);
}

int sinkd_shm_write(sinkd_shm_region *r, uint64_t off, const void *src, size_t len)
{
    if (!sinkd_shm_range_ok(r, off, len))
        return -ERANGE;
    return shm__copy(r->base + off, src, len, !r->sealed);
}

/* ---- per-connection table ----------------------------------------------- */

typedef struct shm__conn {
    uint64_t conn_id;
    uint32_t uid;
    uint64_t next_handle;
    size_t n;
    uint64_t handle[SINKD_SHM_PER_CONN_MAX];
    sinkd_shm_region *region[SINKD_SHM_PER_CONN_MAX];
} shm__conn;

struct sinkd_shm_table {
    shm__conn **v;
    size_t n, cap;
};

sinkd_shm_table *sinkd_shm_table_new(void)
{
    return calloc(1, sizeof(sinkd_shm_table));
}

static shm__conn *shm__find(sinkd_shm_table *t, uint64_t conn_id, size_t *at)
{
    for (size_t i = 0; i < t->n; i++) {
        if (t->v[i]->conn_id == conn_id) {
            if (at)
                *at = i;
            return t->v[i];
        }
    }
    return NULL;
}

void sinkd_shm_table_drop_conn(sinkd_shm_table *t, uint64_t conn_id)
{
    size_t at;
    shm__conn *c = t ? shm__find(t, conn_id, &at) : NULL;

    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        sinkd_shm_unref(c->region[i]);
    free(c);
    t->v[at] = t->v[--t->n];
}

void sinkd_shm_table_free(sinkd_shm_table *t)
{
    if (!t)
        return;
    while (t->n)
        sinkd_shm_table_drop_conn(t, t->v[0]->conn_id);
    free(t->v);
    free(t);
}

int sinkd_shm_table_add(sinkd_shm_table *t, uint64_t conn_id, uint32_t uid,
                        sinkd_shm_region *r, uint64_t *handle)
{
    shm__conn *c = shm__find(t, conn_id, NULL);

    if (!c) {
        if (t->n == t->cap) {
            size_t cap = t->cap ? 2 * t->cap : 8;
            shm__conn **v = realloc(t->v, cap * sizeof *v);
            if (!v)
                return -ENOMEM;
            t->v = v;
            t->cap = cap;
        }
        c = calloc(1, sizeof *c);
        if (!c)
            return -ENOMEM;
        c->conn_id = conn_id;
        c->uid = uid;
        c->next_handle = 1;
        t->v[t->n++] = c;
    }
    if (c->n == SINKD_SHM_PER_CONN_MAX)
        return -EDQUOT;
    c->handle[c->n] = c->next_handle++;
    c->region[c->n] = r;
    *handle = c->handle[c->n++];
    return 0;
}

uint64_t sinkd_shm_table_uid_bytes(const sinkd_shm_table *t, uint32_t uid)
{
    uint64_t sum = 0;

    for (size_t i = 0; t && i < t->n; i++)
        for (size_t k = 0; t->v[i]->uid == uid && k < t->v[i]->n; k++)
            sum += t->v[i]->region[k]->size;
    return sum;
}

sinkd_shm_region *sinkd_shm_table_get(sinkd_shm_table *t, uint64_t conn_id, uint64_t handle)
{
    shm__conn *c = shm__find(t, conn_id, NULL);

    for (size_t i = 0; c && i < c->n; i++) {
        if (c->handle[i] == handle) {
            sinkd_shm_ref(c->region[i]);
            return c->region[i];
        }
    }
    return NULL;
}

int sinkd_shm_table_remove(sinkd_shm_table *t, uint64_t conn_id, uint64_t handle)
{
    shm__conn *c = shm__find(t, conn_id, NULL);

    for (size_t i = 0; c && i < c->n; i++) {
        if (c->handle[i] == handle) {
            sinkd_shm_unref(c->region[i]);
            c->handle[i] = c->handle[c->n - 1];
            c->region[i] = c->region[--c->n];
            return 0;
        }
    }
    return -ENOENT;
}

