/*
 * libsinkd: shared memory. The client creates the memfd, so nothing is
 * named anywhere another process could open it; the daemon maps the copy of
 * the descriptor it receives with SCM_RIGHTS.
 */
#include "client_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

struct shm__fields {
    const char *key;
    uint64_t value;
};

static int shm__pack(msgpack_packer *pk, void *arg)
{
    const struct shm__fields *f = arg;
    sinkd_pack_kv_u64(pk, f->key, f->value);
    return 0;
}

/* Send @op with the single uint field @key = @value (and @fd if >= 0). */
static int shm__call(sinkd_client *c, const char *op, const char *key,
                     uint64_t value, int fd, int timeout_ms, sinkd_client_reply *rep)
{
    struct shm__fields f = { key, value };
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.op = op;
    req.nfields = 1;
    req.pack = shm__pack;
    req.pack_arg = &f;
    req.fd = fd;
    req.timeout_ms = timeout_ms;
    return sinkd_client_request(c, &req, rep);
}

int sinkd_client_shm_register(sinkd_client *c, int fd, uint64_t size,
                              int timeout_ms, uint64_t *handle)
{
    if (c == NULL || fd < 0 || size == 0 || handle == NULL)
        return -EINVAL;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = shm__call(c, "shm.register", "size", size, fd, timeout_ms, &rep);
    if (rc == 0 && sinkd_map_u64(rep.map, "shm", handle) != 0)
        rc = -EPROTO;
    sinkd_client_reply_free(&rep);
    return rc;
}

int sinkd_client_shm_create(sinkd_client *c, size_t size, int timeout_ms,
                            sinkd_client_shm *shm)
{
    if (c == NULL || shm == NULL || size == 0 || shm->fd >= 0 || shm->base != NULL)
        return -EINVAL;

    int rc;
    int fd = memfd_create("sinkd-shm", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -errno;
    /* Sealed against shrinking, the daemon never faults on a short file. */
    if (ftruncate(fd, (off_t)size) != 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) != 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        rc = -errno;
        close(fd);
        return rc;
    }
    uint64_t handle;
    rc = sinkd_client_shm_register(c, fd, size, timeout_ms, &handle);
    if (rc != 0) {
        munmap(base, size);
        close(fd);
        return rc;
    }
    shm->fd = fd;
    shm->base = base;
    shm->size = size;
    shm->handle = handle;
    return 0;
}

int sinkd_client_shm_free(sinkd_client *c, sinkd_client_shm *shm, int timeout_ms)
{
    if (shm == NULL)
        return -EINVAL;
    int rc = 0;
    if (c != NULL && shm->fd >= 0)
        rc = shm__call(c, "shm.unregister", "shm", shm->handle, -1, timeout_ms, NULL);
    if (shm->base != NULL)
        munmap(shm->base, shm->size);
    if (shm->fd >= 0)
        close(shm->fd);
    *shm = (sinkd_client_shm)SINKD_CLIENT_SHM_INIT;
    return rc;
}
