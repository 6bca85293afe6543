/*
 * Loading one plugin file, and the built-in policies.
 *
 * The file is checked through the descriptor we read it with (no window
 * between the check and the load), copied into a sealed memfd and loaded
 * from /proc/self/fd/N. Loading a copy does two things: the bytes that were
 * checked are the bytes that run, even if the file is rewritten in place
 * later; and every load gets a name the dynamic linker has never seen, so a
 * changed file at the same path really is loaded beside the old version
 * (glibc hands back the already-loaded object for a name it knows). The
 * memfd stays open while the library is loaded, so no other load can reuse
 * its /proc/self/fd name.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

const sinkd_policy *sinkd_policy_builtin_full(void);
const sinkd_policy *sinkd_policy_builtin_window(void);

static int lib__fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int lib__fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

static int lib__name_ok(const char *s)
{
    size_t n = strnlen(s, 32);
    if (n == 0 || n > 31)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' ||
              s[i] == '-'))
            return 0;
    return 1;
}

int policy__desc_validate(const sinkd_policy *d, char *err, size_t errlen)
{
    if (d == NULL)
        return lib__fail(err, errlen, -EINVAL, "sinkd_policy_v1() returned NULL");
    if (d->abi_major != SINKD_POLICY_ABI_MAJOR)
        return lib__fail(err, errlen, -EINVAL, "ABI major %u, this sinkd speaks %u",
                         d->abi_major, SINKD_POLICY_ABI_MAJOR);
    if (d->struct_size < SINKD_POLICY_SIZE_1_0)
        return lib__fail(err, errlen, -EINVAL, "descriptor of %u bytes, version 1.0 has %u",
                         d->struct_size, SINKD_POLICY_SIZE_1_0);
    if (d->caps & ~SINKD_POLICY_CAPS_KNOWN)
        return lib__fail(err, errlen, -EINVAL, "unknown caps bits 0x%x",
                         d->caps & ~SINKD_POLICY_CAPS_KNOWN);
    if (d->name == NULL || !lib__name_ok(d->name))
        return lib__fail(err, errlen, -EINVAL, "name must be 1-31 of [a-z0-9_-]");
    if (d->version == NULL || strnlen(d->version, 32) > 31)
        return lib__fail(err, errlen, -EINVAL, "%s: version missing or longer than 31", d->name);
    if (d->create == NULL || d->destroy == NULL || d->plan == NULL)
        return lib__fail(err, errlen, -EINVAL, "%s: create, destroy and plan are required",
                         d->name);
    if (!(d->caps & SINKD_POLICY_CAP_EVICT) != (d->evict == NULL) ||
        !(d->caps & SINKD_POLICY_CAP_SELECT) != (d->select == NULL) ||
        !(d->caps & SINKD_POLICY_CAP_RECONFIGURE) != (d->reconfigure == NULL))
        return lib__fail(err, errlen, -EINVAL, "%s: caps and optional callbacks disagree",
                         d->name);
    return 0;
}

/* Copy @d as this host knows it: fields past its struct_size read as zero,
 * fields this host does not know are not read at all. */
static void lib__take_desc(policy__lib *lib, const sinkd_policy *d)
{
    size_t n = d->struct_size < sizeof lib->desc ? d->struct_size : sizeof lib->desc;
    memset(&lib->desc, 0, sizeof lib->desc);
    memcpy(&lib->desc, d, n);
    policy__host_init(&lib->host, lib->desc.name);
}

static policy__lib lib__full = {.memfd = -1, .refs = 1, .generation = 1, .builtin = 1};
static policy__lib lib__window = {.memfd = -1, .refs = 1, .generation = 1, .builtin = 1};
static pthread_once_t lib__builtin_once = PTHREAD_ONCE_INIT;

static void lib__builtin_init(void)
{
    lib__take_desc(&lib__full, sinkd_policy_builtin_full());
    lib__take_desc(&lib__window, sinkd_policy_builtin_window());
}

policy__lib *policy__builtin(const char *name)
{
    pthread_once(&lib__builtin_once, lib__builtin_init);
    if (name != NULL && strcmp(name, "full") == 0)
        return &lib__full;
    if (name != NULL && strcmp(name, "window") == 0)
        return &lib__window;
    return NULL;
}

void policy__lib_ref(policy__lib *lib)
{
    if (!lib->builtin)
        atomic_fetch_add(&lib->refs, 1);
}

void policy__lib_unref(policy__lib *lib)
{
    if (lib == NULL || lib->builtin || atomic_fetch_sub(&lib->refs, 1) != 1)
        return;
    policy__log(SINKD_POLICY_LOG_INFO, "closing %s %s (generation %u)", lib->desc.name,
                lib->desc.version, lib->generation);
    dlclose(lib->handle);
    close(lib->memfd);
    free(lib);
}

/* Check the open file: regular, owner root or us, no group/world write. */
static int lib__check_file(int fd, const char *path, struct stat *st, char *err, size_t errlen)
{
    if (fstat(fd, st) != 0)
        return lib__fail(err, errlen, -errno, "%s: %s", path, strerror(errno));
    if (!S_ISREG(st->st_mode))
        return lib__fail(err, errlen, -EACCES, "%s: not a regular file", path);
    if (st->st_uid != 0 && st->st_uid != geteuid())
        return lib__fail(err, errlen, -EACCES, "%s: owned by uid %u, not root or the daemon's "
                         "user", path, (unsigned)st->st_uid);
    if (st->st_mode & (S_IWGRP | S_IWOTH))
        return lib__fail(err, errlen, -EACCES, "%s: group- or world-writable (mode %04o)", path,
                         (unsigned)(st->st_mode & 07777));
    return 0;
}

/* Copy @fd (size bytes) into a new sealed memfd; returns it or -errno. */
static int lib__copy_to_memfd(int fd, off_t size)
{
    int mfd = memfd_create("sinkd-policy", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (mfd < 0)
        return -errno;
    char buf[65536];
    off_t done = 0;
    while (done < size) {
        ssize_t r = pread(fd, buf, sizeof buf, done);
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            close(mfd);
            return -e;
        }
        for (ssize_t w = 0; w < r;) {
            ssize_t n = write(mfd, buf + w, (size_t)(r - w));
            if (n < 0) {
                int e = errno;
                close(mfd);
                return -e;
            }
            w += n;
        }
        done += r;
    }
    if (fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
        int e = errno;
        close(mfd);
        return -e;
    }
    return mfd;
}

static int lib__dlopen(policy__lib *lib, const char *path, char *err, size_t errlen)
{
    char name[64];
    snprintf(name, sizeof name, "/proc/self/fd/%d", lib->memfd);
    dlerror();
    lib->handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (lib->handle == NULL) {
        const char *e = dlerror();
        return lib__fail(err, errlen, -ENOEXEC, "%s: dlopen: %s", path, e ? e : "failed");
    }
    const sinkd_policy *(*entry)(void);
    *(void **)&entry = dlsym(lib->handle, SINKD_POLICY_ENTRY);
    if (entry == NULL)
        return lib__fail(err, errlen, -ENOEXEC, "%s: no %s() symbol", path, SINKD_POLICY_ENTRY);
    const sinkd_policy *d = entry();
    char why[POLICY__ERR_LEN];
    int rc = policy__desc_validate(d, why, sizeof why);
    if (rc < 0)
        return lib__fail(err, errlen, rc, "%s: %s", path, why);
    lib__take_desc(lib, d);
    return 0;
}

int policy__lib_open_fd(int fd, const char *path, policy__lib **out, char *err, size_t errlen)
{
    if (fd < 0 || path == NULL || out == NULL || strlen(path) >= sizeof((policy__lib *)0)->path)
        return lib__fail(err, errlen, -EINVAL, "bad plugin path");
    policy__lib *lib = calloc(1, sizeof *lib);
    if (lib == NULL)
        return -ENOMEM;
    lib->memfd = -1;
    atomic_init(&lib->refs, 1);
    lib->generation = 1;
    snprintf(lib->path, sizeof lib->path, "%s", path);

    struct stat st;
    int rc = lib__check_file(fd, path, &st, err, errlen);
    if (rc == 0) {
        lib->memfd = lib__copy_to_memfd(fd, st.st_size);
        if (lib->memfd < 0)
            rc = lib__fail(err, errlen, lib->memfd, "%s: copy: %s", path, strerror(-lib->memfd));
    }
    if (rc < 0)
        goto fail;
    lib->dev = st.st_dev;
    lib->ino = st.st_ino;
    lib->size = st.st_size;
    lib->mtime = st.st_mtim;
    rc = lib__dlopen(lib, path, err, errlen);
    if (rc < 0)
        goto fail;
    char why[POLICY__ERR_LEN];
    rc = policy__selftest(lib, why, sizeof why);
    if (rc < 0) {
        rc = lib__fail(err, errlen, rc, "%s: %s: self-test failed: %s", path, lib->desc.name, why);
        goto fail;
    }
    *out = lib;
    return 0;
fail:
    if (lib->handle != NULL)
        dlclose(lib->handle);
    if (lib->memfd >= 0)
        close(lib->memfd);
    free(lib);
    return rc;
}

int policy__lib_open(const char *path, policy__lib **out, char *err, size_t errlen)
{
    if (path == NULL)
        return lib__fail(err, errlen, -EINVAL, "bad plugin path");
    /* O_NOFOLLOW: a caller passes a resolved path, so a link here is one
     * put there since, and it must not lead the load elsewhere (the
     * registry opens its files itself, registry__open, and loads by fd) */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | O_NOFOLLOW);
    if (fd < 0)
        return lib__fail(err, errlen, -errno, "%s: %s", path,
                         errno == ELOOP ? "a symbolic link" : strerror(errno));
    int rc = policy__lib_open_fd(fd, path, out, err, errlen);
    close(fd);
    return rc;
}
