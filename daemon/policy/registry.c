/*
 * The registry: named policies, their current versions, load/reload/unload.
 * One mutex guards the table; loads hold it across dlopen and the self-test
 * (rare, and it keeps two loads of one name from racing). Libraries are
 * reference-counted on their own, so instances never touch the registry.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

struct sinkd_policy_registry {
    pthread_mutex_t mu;
    char **dirs;
    size_t n_dirs;
    policy__lib **libs;       /* current versions of loaded plugins, one ref each */
    size_t n_libs, cap_libs;
    /* The last generation given to each name ever loaded. It outlives an
     * unload: the engine tells versions apart by (name, generation), and a
     * session still on an unloaded version must not pass for the version
     * loaded after it under the same name. */
    struct registry__gen {
        char name[32];
        uint32_t last;
    } *gens;
    size_t n_gens, cap_gens;
};

static const char *const registry__builtins[] = {"full", "window"};

int sinkd_policy_registry_open(const char *const *dirs, size_t n_dirs,
                               sinkd_policy_registry **out)
{
    if (out == NULL || (n_dirs > 0 && dirs == NULL) || n_dirs > 64)
        return -EINVAL;
    for (size_t i = 0; i < n_dirs; i++)
        if (dirs[i] == NULL || dirs[i][0] != '/' || strlen(dirs[i]) >= PATH_MAX)
            return -EINVAL;
    sinkd_policy_registry *reg = calloc(1, sizeof *reg);
    if (reg == NULL)
        return -ENOMEM;
    reg->dirs = calloc(n_dirs + 1, sizeof *reg->dirs);
    if (reg->dirs == NULL) {
        free(reg);
        return -ENOMEM;
    }
    for (; reg->n_dirs < n_dirs; reg->n_dirs++) {
        reg->dirs[reg->n_dirs] = strdup(dirs[reg->n_dirs]);
        if (reg->dirs[reg->n_dirs] == NULL) {
            sinkd_policy_registry_close(reg);
            return -ENOMEM;
        }
    }
    pthread_mutex_init(&reg->mu, NULL);
    policy__builtin(NULL); /* resolve the built-ins now, not under a lock later */
    *out = reg;
    return 0;
}

void sinkd_policy_registry_close(sinkd_policy_registry *reg)
{
    if (reg == NULL)
        return;
    for (size_t i = 0; i < reg->n_libs; i++)
        policy__lib_unref(reg->libs[i]);
    for (size_t i = 0; i < reg->n_dirs; i++)
        free(reg->dirs[i]);
    free(reg->dirs);
    free(reg->libs);
    free(reg->gens);
    pthread_mutex_destroy(&reg->mu);
    free(reg);
}

/* Index of the current library of @name, or -1. Caller holds mu. */
static ssize_t registry__find(const sinkd_policy_registry *reg, const char *name)
{
    for (size_t i = 0; i < reg->n_libs; i++)
        if (strcmp(reg->libs[i]->desc.name, name) == 0)
            return (ssize_t)i;
    return -1;
}

/* Is @rp (a resolved path) a file directly inside a configured directory? */
static int registry__in_dirs(const sinkd_policy_registry *reg, const char *rp)
{
    const char *slash = strrchr(rp, '/');
    size_t dlen = (size_t)(slash - rp);
    for (size_t i = 0; i < reg->n_dirs; i++) {
        char dir[PATH_MAX];
        if (realpath(reg->dirs[i], dir) == NULL)
            continue;
        if (strlen(dir) == (dlen == 0 ? 1 : dlen) && strncmp(dir, rp, dlen == 0 ? 1 : dlen) == 0)
            return 1;
    }
    return 0;
}

/* The generation the next version of @name gets (1 for a name never
 * loaded), recorded as given. Caller holds mu. 0 when out of memory. */
static uint32_t registry__next_generation(sinkd_policy_registry *reg, const char *name)
{
    for (size_t i = 0; i < reg->n_gens; i++)
        if (strcmp(reg->gens[i].name, name) == 0)
            return ++reg->gens[i].last;
    if (reg->n_gens == reg->cap_gens) {
        size_t cap = reg->cap_gens ? 2 * reg->cap_gens : 8;
        struct registry__gen *gens = realloc(reg->gens, cap * sizeof *gens);
        if (gens == NULL)
            return 0;
        reg->gens = gens;
        reg->cap_gens = cap;
    }
    struct registry__gen *g = &reg->gens[reg->n_gens++];
    snprintf(g->name, sizeof g->name, "%s", name);
    g->last = 1;
    return 1;
}

/* Resolve @path into @rp (PATH_MAX), check that it lies in a configured
 * directory, and open it; returns the descriptor or -errno with @err. Load
 * and reload both come through here, so a file is judged the same way
 * whichever asks. realpath() and open() are two lookups: O_NOFOLLOW keeps
 * the last component from having become a link in between, and the
 * descriptor's own name, read back from /proc, must still be @rp, so no
 * directory on the way can have been swapped for a link either. */
static int registry__open(const sinkd_policy_registry *reg, const char *path, char *rp,
                          char *err, size_t errlen)
{
    if (realpath(path, rp) == NULL) {
        int e = errno;
        snprintf(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    if (!registry__in_dirs(reg, rp)) {
        snprintf(err, errlen, "%s: not in a configured plugin directory", path);
        return -EINVAL;
    }
    int fd = open(rp, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | O_NOFOLLOW);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "%s: %s", rp, e == ELOOP ? "became a symbolic link" : strerror(e));
        return -e;
    }
    char proc[64], at[PATH_MAX];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(proc, at, sizeof at);
    bool same;
    if (n < 0) { /* no /proc: the file @rp names now must be the one opened */
        struct stat a, b;
        same = fstat(fd, &a) == 0 && stat(rp, &b) == 0 && a.st_dev == b.st_dev &&
               a.st_ino == b.st_ino;
    } else {
        same = (size_t)n < sizeof at && (at[n] = '\0', strcmp(at, rp) == 0);
    }
    if (!same) {
        close(fd);
        snprintf(err, errlen, "%s: changed while being opened", rp);
        return -EAGAIN;
    }
    return fd;
}

/* Load @rp (resolved, open as @fd) under mu and add it. */
static int registry__load_locked(sinkd_policy_registry *reg, const char *rp, int fd, char *err,
                                 size_t errlen)
{
    for (size_t i = 0; i < reg->n_libs; i++) {
        if (strcmp(reg->libs[i]->path, rp) == 0) {
            snprintf(err, errlen, "%s: already loaded as %s; reload it instead", rp,
                     reg->libs[i]->desc.name);
            return -EEXIST;
        }
    }
    if (reg->n_libs == reg->cap_libs) {
        size_t cap = reg->cap_libs ? 2 * reg->cap_libs : 8;
        policy__lib **libs = realloc(reg->libs, cap * sizeof *libs);
        if (libs == NULL)
            return -ENOMEM;
        reg->libs = libs;
        reg->cap_libs = cap;
    }
    policy__lib *lib;
    int rc = policy__lib_open_fd(fd, rp, &lib, err, errlen);
    if (rc < 0)
        return rc;
    if (policy__builtin(lib->desc.name) != NULL || registry__find(reg, lib->desc.name) >= 0) {
        snprintf(err, errlen, "%s: duplicate policy name '%s'", rp, lib->desc.name);
        policy__lib_unref(lib);
        return -EEXIST;
    }
    lib->generation = registry__next_generation(reg, lib->desc.name);
    if (lib->generation == 0) {
        policy__lib_unref(lib);
        return -ENOMEM;
    }
    reg->libs[reg->n_libs++] = lib;
    policy__log(SINKD_POLICY_LOG_INFO, "loaded %s %s from %s", lib->desc.name, lib->desc.version,
                rp);
    return 0;
}

int sinkd_policy_load(sinkd_policy_registry *reg, const char *path, char *err, size_t errlen)
{
    if (reg == NULL || path == NULL || err == NULL)
        return -EINVAL;
    char rp[PATH_MAX];
    int fd = registry__open(reg, path, rp, err, errlen);
    if (fd < 0)
        return fd;
    pthread_mutex_lock(&reg->mu);
    int rc = registry__load_locked(reg, rp, fd, err, errlen);
    pthread_mutex_unlock(&reg->mu);
    close(fd);
    return rc;
}

static int registry__so_filter(const struct dirent *d)
{
    size_t n = strlen(d->d_name);
    return n > 3 && d->d_name[0] != '.' && strcmp(d->d_name + n - 3, ".so") == 0;
}

int sinkd_policy_scan(sinkd_policy_registry *reg, int *n_loaded)
{
    if (reg == NULL)
        return -EINVAL;
    int loaded = 0;
    for (size_t i = 0; i < reg->n_dirs; i++) {
        struct dirent **names;
        int n = scandir(reg->dirs[i], &names, registry__so_filter, alphasort);
        if (n < 0) {
            policy__log(SINKD_POLICY_LOG_WARNING, "plugin directory %s: %s", reg->dirs[i],
                        strerror(errno));
            continue;
        }
        for (int j = 0; j < n; j++) {
            char path[PATH_MAX + 256], err[512];
            snprintf(path, sizeof path, "%s/%s", reg->dirs[i], names[j]->d_name);
            free(names[j]);
            int rc = sinkd_policy_load(reg, path, err, sizeof err);
            if (rc == 0)
                loaded++;
            else
                policy__log(rc == -EEXIST ? SINKD_POLICY_LOG_DEBUG : SINKD_POLICY_LOG_WARNING,
                            "not loaded: %s", err);
        }
        free(names);
    }
    if (n_loaded != NULL)
        *n_loaded = loaded;
    return 0;
}

int sinkd_policy_reload(sinkd_policy_registry *reg, const char *name, char *err, size_t errlen)
{
    if (reg == NULL || name == NULL || err == NULL)
        return -EINVAL;
    if (policy__builtin(name) != NULL) {
        snprintf(err, errlen, "%s is built in", name);
        return -EPERM;
    }
    pthread_mutex_lock(&reg->mu);
    int rc = 0, fd = -1;
    ssize_t i = registry__find(reg, name);
    struct stat st;
    char rp[PATH_MAX];
    policy__lib *old = i >= 0 ? reg->libs[i] : NULL, *lib = NULL;
    if (old == NULL) {
        snprintf(err, errlen, "no policy named '%s'", name);
        rc = -ENOENT;
    } else if ((fd = registry__open(reg, old->path, rp, err, errlen)) < 0) {
        rc = fd; /* gone, or now a link out of the plugin directories */
    } else if (fstat(fd, &st) != 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: %s", rp, strerror(-rc));
    } else if (strcmp(rp, old->path) == 0 && st.st_dev == old->dev && st.st_ino == old->ino &&
               st.st_size == old->size && st.st_mtim.tv_sec == old->mtime.tv_sec &&
               st.st_mtim.tv_nsec == old->mtime.tv_nsec) {
        snprintf(err, errlen, "%s: unchanged", old->path);
        rc = -EALREADY;
    } else if ((rc = policy__lib_open_fd(fd, rp, &lib, err, errlen)) == 0) {
        if (strcmp(lib->desc.name, name) != 0) {
            snprintf(err, errlen, "%s now names policy '%s', not '%s'", rp, lib->desc.name, name);
            policy__lib_unref(lib);
            rc = -EINVAL;
        } else if ((lib->generation = registry__next_generation(reg, name)) == 0) {
            policy__lib_unref(lib);
            rc = -ENOMEM;
        } else {
            reg->libs[i] = lib;
            policy__log(SINKD_POLICY_LOG_INFO, "reloaded %s: %s (generation %u) replaces %s "
                        "(generation %u, %d instances)", name, lib->desc.version, lib->generation,
                        old->desc.version, old->generation, atomic_load(&old->instances));
            policy__lib_unref(old);
        }
    }
    pthread_mutex_unlock(&reg->mu);
    if (fd >= 0)
        close(fd);
    return rc;
}

int sinkd_policy_unload(sinkd_policy_registry *reg, const char *name, char *err, size_t errlen)
{
    if (reg == NULL || name == NULL || err == NULL)
        return -EINVAL;
    if (policy__builtin(name) != NULL) {
        snprintf(err, errlen, "%s is built in and cannot be unloaded", name);
        return -EPERM;
    }
    pthread_mutex_lock(&reg->mu);
    ssize_t i = registry__find(reg, name);
    policy__lib *lib = i >= 0 ? reg->libs[i] : NULL;
    if (lib != NULL)
        reg->libs[i] = reg->libs[--reg->n_libs];
    pthread_mutex_unlock(&reg->mu);
    if (lib == NULL) {
        snprintf(err, errlen, "no policy named '%s'", name);
        return -ENOENT;
    }
    policy__log(SINKD_POLICY_LOG_INFO, "unloaded %s (%d instances keep it loaded)", name,
                atomic_load(&lib->instances));
    policy__lib_unref(lib);
    return 0;
}

static void registry__info(const policy__lib *lib, sinkd_policy_info *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", lib->desc.name);
    snprintf(out->version, sizeof out->version, "%s", lib->desc.version);
    snprintf(out->summary, sizeof out->summary, "%s", lib->desc.summary ? lib->desc.summary : "");
    snprintf(out->path, sizeof out->path, "%s", lib->path);
    out->caps = lib->desc.caps;
    out->generation = lib->generation;
    out->instances = atomic_load(&lib->instances);
    out->builtin = lib->builtin;
}

static int registry__info_cmp(const void *a, const void *b)
{
    const sinkd_policy_info *x = a, *y = b;
    if (x->builtin != y->builtin)
        return y->builtin - x->builtin;
    return strcmp(x->name, y->name);
}

int sinkd_policy_list(sinkd_policy_registry *reg, sinkd_policy_info *out, size_t cap, size_t *n)
{
    if (reg == NULL || n == NULL || (cap > 0 && out == NULL))
        return -EINVAL;
    pthread_mutex_lock(&reg->mu);
    size_t total = 2 + reg->n_libs;
    sinkd_policy_info *all = calloc(total, sizeof *all);
    if (all == NULL) {
        pthread_mutex_unlock(&reg->mu);
        return -ENOMEM;
    }
    for (size_t i = 0; i < 2; i++)
        registry__info(policy__builtin(registry__builtins[i]), &all[i]);
    for (size_t i = 0; i < reg->n_libs; i++)
        registry__info(reg->libs[i], &all[2 + i]);
    pthread_mutex_unlock(&reg->mu);
    qsort(all, total, sizeof *all, registry__info_cmp);
    if (cap > 0)
        memcpy(out, all, (cap < total ? cap : total) * sizeof *all);
    free(all);
    *n = total;
    return 0;
}

int sinkd_policy_inst_create(sinkd_policy_registry *reg, const char *name,
                             const sinkd_policy_geometry *geom, const char *params,
                             sinkd_policy_inst **out, char *err, size_t errlen)
{
    if (reg == NULL || name == NULL || out == NULL || err == NULL)
        return -EINVAL;
    policy__lib *lib = policy__builtin(name);
    if (lib == NULL) {
        pthread_mutex_lock(&reg->mu);
        ssize_t i = registry__find(reg, name);
        if (i >= 0) {
            lib = reg->libs[i];
            policy__lib_ref(lib);
        }
        pthread_mutex_unlock(&reg->mu);
    } else {
        policy__lib_ref(lib);
    }
    if (lib == NULL) {
        snprintf(err, errlen, "no policy named '%s'", name);
        return -ENOENT;
    }
    int rc = policy__inst_create(lib, geom, params, out, err, errlen);
    policy__lib_unref(lib);
    return rc;
}
