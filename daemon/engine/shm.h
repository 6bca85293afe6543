/*
 * Shared-memory regions registered by clients (shm.register): a memfd the
 * client created, mapped MAP_SHARED here, named by a per-connection handle.
 *
 *   region  one mapping, reference-counted: the connection's table holds one
 *           reference, and every engine job that names the region holds
 *           another, so a job in flight keeps its region mapped after the
 *           connection closed. The last sinkd_shm_unref unmaps and closes.
 *   table   the regions of every connection (loop thread only): handles are
 *           small integers counting up per connection, never reused on it.
 *
 * A client may shrink its memfd after registering; touching the pages past
 * the new end would raise SIGBUS. At register the daemon adds F_SEAL_SHRINK
 * (possible when the memfd was created with MFD_ALLOW_SEALING, as libsinkd
 * does); when the file cannot be sealed, every copy in or out of the region
 * runs under a SIGBUS guard (sigsetjmp with a thread-local jump buffer) and
 * a fault turns into -EFAULT, which the ops answer as bad_shm. The engine
 * only ever copies between a region and its own buffers with the two
 * functions below: there is no other access path.
 */
#ifndef SINKD_SHM_H
#define SINKD_SHM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Regions one connection may hold at once. */
#define SINKD_SHM_PER_CONN_MAX 64

typedef struct sinkd_shm_region {
    atomic_int refs;
    uint8_t *base;
    uint64_t size;      /* bytes mapped, as registered */
    bool sealed;        /* F_SEAL_SHRINK is in place: no guard needed */
} sinkd_shm_region;

/* Map @fd (taken: closed in every case, the mapping does not need it) for
 * @size bytes: fstat checks a regular file of at least @size > 0 bytes, then
 * seal, then mmap. On success *@out has one reference, owned by the caller.
 * Errors (@err says which): -EDOM (size 0), -EINVAL (not a regular file,
 * file shorter than @size), -ENOMEM, or mmap's errno. */
int sinkd_shm_map(int fd, uint64_t size, sinkd_shm_region **out, char *err, size_t errlen);

/* Take another reference (any thread). */
void sinkd_shm_ref(sinkd_shm_region *r);

/* Drop a reference (any thread); the last one unmaps and frees.
 * NULL is a no-op. */
void sinkd_shm_unref(sinkd_shm_region *r);

/* True when [@off, @off + @len) lies inside @r (overflow-safe). */
bool sinkd_shm_range_ok(const sinkd_shm_region *r, uint64_t off, uint64_t len);

/* Copy @len bytes at @off of @r to @dst / from @src to @off of @r. Returns
 * 0, -ERANGE when the range is outside the region, or -EFAULT when the
 * client shrank an unsealed file under the copy (the copy is then partial).
 * Thread-safe; async-signal-unsafe. */
int sinkd_shm_read(const sinkd_shm_region *r, uint64_t off, void *dst, size_t len);
int sinkd_shm_write(sinkd_shm_region *r, uint64_t off, const void *src, size_t len);

/* ---- per-connection table (loop thread only) --------------------------- */

typedef struct sinkd_shm_table sinkd_shm_table;

/* An empty table. Returns NULL on allocation failure. */
sinkd_shm_table *sinkd_shm_table_new(void);

/* Drop every region of every connection; frees @t. NULL is a no-op. */
void sinkd_shm_table_free(sinkd_shm_table *t);

/* Add @r (the table takes the caller's reference) to connection @conn_id
 * of user @uid; *@handle gets its handle. Errors: -EDQUOT
 * (SINKD_SHM_PER_CONN_MAX reached), -ENOMEM; the reference is then still
 * the caller's. */
int sinkd_shm_table_add(sinkd_shm_table *t, uint64_t conn_id, uint32_t uid,
                        sinkd_shm_region *r, uint64_t *handle);

/* Bytes mapped for the connections of user @uid. */
uint64_t sinkd_shm_table_uid_bytes(const sinkd_shm_table *t, uint32_t uid);

/* The region @handle of @conn_id with a new reference for the caller, or
 * NULL when there is none. */
sinkd_shm_region *sinkd_shm_table_get(sinkd_shm_table *t, uint64_t conn_id, uint64_t handle);

/* Drop region @handle of @conn_id. Returns 0 or -ENOENT. */
int sinkd_shm_table_remove(sinkd_shm_table *t, uint64_t conn_id, uint64_t handle);

/* Drop every region of @conn_id (its connection closed). */
void sinkd_shm_table_drop_conn(sinkd_shm_table *t, uint64_t conn_id);

#endif /* SINKD_SHM_H */
