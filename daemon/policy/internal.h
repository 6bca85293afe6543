/*
 * Policy host internals shared by its files (and the tests): parsed
 * parameters, loaded libraries and the self-test. Nothing outside
 * daemon/policy/ and tests/ includes this; the daemon uses host.h.
 */
#ifndef SINKD_POLICY_INTERNAL_H
#define SINKD_POLICY_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "host.h"
#include "policy.h"

#define POLICY__PARAMS_MAX 32     /* keys in one parameter string */
#define POLICY__PARAMS_LEN 4096   /* bytes in one parameter string */
#define POLICY__ERR_LEN 256

/* ---- parameters (params.c) ---------------------------------------------- */

struct sinkd_policy_params {
    int32_t n;
    struct {
        const char *key, *value; /* into buf */
        int used;                /* a param_* call asked for it */
    } kv[POLICY__PARAMS_MAX];
    char err[POLICY__ERR_LEN];   /* first failure recorded by a param_* call */
    char buf[POLICY__PARAMS_LEN + 1];
};

/* Parse "k=v k=v" (keys [a-z0-9_], values without blanks, each key once)
 * into @p. @text may be NULL or empty. Returns 0 or -EINVAL with @err. */
int policy__params_parse(sinkd_policy_params *p, const char *text, char *err, size_t errlen);

/* Remove @key from @p (the host's own keys, read before the plugin runs);
 * *value receives a copy or "" when absent. Returns 1 when found, 0 when
 * not, -E2BIG when found but longer than valuelen - 1 (*value then holds a
 * truncated copy, fit for a message only: a cut value can read as another
 * valid one). */
int policy__params_take(sinkd_policy_params *p, const char *key, char *value, size_t valuelen);

/* After a create/reconfigure call returned @rc: the error to report. Copies
 * the plugin's recorded message, or names the first parameter nobody read
 * (then returns -EINVAL even when @rc was 0), or describes @rc. */
int policy__params_finish(const sinkd_policy_params *p, const char *policy, int rc,
                          char *err, size_t errlen);

/* The services every plugin gets (log prefixes the policy's name). */
void policy__host_init(sinkd_policy_host *host, const char *name);

/* One line to the configured log sink: "<prio>policy: ...". */
void policy__log(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- libraries (lib.c) -------------------------------------------------- */

/* One loaded version of a policy: a dlopen'ed file, or a built-in. Shared by
 * the registry (while it is the current version) and every instance made
 * from it; the last reference closes the file. */
typedef struct policy__lib {
    sinkd_policy desc;          /* the descriptor, fields past its struct_size zeroed */
    sinkd_policy_host host;     /* what create() receives */
    void *handle;               /* dlopen handle; NULL for a built-in */
    int memfd;                  /* the sealed copy the handle was loaded from; -1 built-in */
    atomic_int refs;            /* built-ins: never reach 0 */
    atomic_int instances;       /* live states */
    uint32_t generation;        /* per name, one past the previous version loaded
                                   from any file (unloaded ones included) */
    int builtin;
    char path[4096];            /* the file it came from ("" for built-ins) */
    dev_t dev;                  /* identity of that file when it was read */
    ino_t ino;
    off_t size;
    struct timespec mtime;
} policy__lib;

/* Load the plugin file at @path: check the file (regular, owned by root or
 * the effective uid, not group/world writable; @path itself not a symbolic
 * link: pass a resolved path), copy it to a sealed memfd,
 * dlopen the copy (RTLD_NOW | RTLD_LOCAL), validate the descriptor and run
 * the self-test. On success *out holds one reference. Errors (with @err):
 * -EACCES/-EPERM (file refused), -ENOEXEC (dlopen/dlsym failed), -EINVAL
 * (descriptor refused), -EPROTO (self-test failed), -ENOMEM, -errno. */
int policy__lib_open(const char *path, policy__lib **out, char *err, size_t errlen);

/* The same for the file open as @fd (read from, not closed), named @path in
 * messages and in the library. The check is made on the descriptor. */
int policy__lib_open_fd(int fd, const char *path, policy__lib **out, char *err, size_t errlen);

/* Validate a descriptor as the host reads it; 0 or -EINVAL with @err. */
int policy__desc_validate(const sinkd_policy *d, char *err, size_t errlen);

/* The built-in `full` and `window` (static; references are no-ops). */
policy__lib *policy__builtin(const char *name);

void policy__lib_ref(policy__lib *lib);
/* Drop a reference; the last one dlcloses the library and frees it. */
void policy__lib_unref(policy__lib *lib);

/* The self-test a library must pass before use (selftest.c): create a state
 * with the descriptor's selftest_params on SINKD_POLICY_SELFTEST_* geometry,
 * validate its plan, run evict/select/reconfigure where the caps say so on
 * synthetic lanes, validate their output, destroy. 0 or -EPROTO with @err. */
int policy__selftest(policy__lib *lib, char *err, size_t errlen);

/* ---- instances (inst.c) ------------------------------------------------- */

/* Create an instance of @lib (takes a reference). See sinkd_policy_inst_create. */
int policy__inst_create(policy__lib *lib, const sinkd_policy_geometry *geom, const char *params,
                        sinkd_policy_inst **out, char *err, size_t errlen);

/* Run evict (callback or plan rule) and validate, without falling back:
 * 0, or the callback's error / -EPROTO with @err. */
int policy__inst_evict_checked(sinkd_policy_inst *inst, sinkd_policy_lane *lanes, int32_t n_lanes,
                               char *err, size_t errlen);
/* The same for select. */
int policy__inst_select_checked(sinkd_policy_inst *inst, sinkd_policy_lane *lanes, int32_t n_lanes,
                                char *err, size_t errlen);

#endif /* SINKD_POLICY_INTERNAL_H */
