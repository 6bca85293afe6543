/*
 * The policy host: loads policy plugins (plugins/policy.h) from configured
 * directories, keeps a registry of named, versioned policies, and gives each
 * session an *instance* (a plugin state plus its validated plan).
 *
 *   registry  the set of policies sessions may pick: the built-ins `full`
 *             and `window` (compiled in, never unloaded) and every plugin
 *             loaded from the configured directories. Thread-safe.
 *   library   one loaded version of a plugin file, reference-counted by the
 *             registry (while current) and by every instance made from it;
 *             dlclose()d when the last reference goes, never before.
 *   instance  what a session holds: a plugin state created with the
 *             session's parameters, the plan, and the fallback flag. Used by
 *             one thread at a time; may outlive the registry.
 *
 * Reload loads a changed file beside the version in use: new sessions get
 * the new version, existing instances keep theirs until they are destroyed
 * (or switched: destroy + create), and the old library is closed when its
 * last instance goes.
 *
 * When a plugin misbehaves at run time (an evict/select callback returns an
 * error or an invalid list) the instance falls back to the built-in `window`
 * (window = the failed plan's budget, or window's default) and records a
 * reason; the daemon tells the client and logs it. The daemon keeps running.
 *
 * Parameters are "key=value" pairs separated by blanks. Besides the
 * policy's own keys the host reads two itself: slack=N (tokens over budget
 * before an eviction batch) and rope=absolute|cache, both applied over the
 * policy's plan.
 *
 * Logging goes through sinkd_policy_set_log (default: stderr, one line per
 * event with a "<N>" priority prefix).
 */
#ifndef SINKD_POLICY_HOST_H
#define SINKD_POLICY_HOST_H

#include <stddef.h>
#include <stdint.h>

#include "plan.h"
#include "policy.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sinkd_policy_registry sinkd_policy_registry;
typedef struct sinkd_policy_inst sinkd_policy_inst;

/* What sinkd_policy_inst_evict/_select return when the plugin misbehaved:
 * the instance now runs `window`, the lanes hold window's answer, and
 * sinkd_policy_inst_fallback_reason() says why. Not an error. */
#define SINKD_POLICY_FELL_BACK 1

/* Route the host's log lines to @fn (prio is syslog's 3..7, @line has no
 * prefix and no newline). NULL restores the stderr default. Process-wide;
 * call before opening a registry. */
void sinkd_policy_set_log(void (*fn)(int prio, const char *line));

/* Open a registry over @n_dirs plugin directories (absolute paths; they
 * need not exist yet). Loads nothing: call sinkd_policy_scan. On success the
 * caller owns *out (close with sinkd_policy_registry_close).
 * Errors: -EINVAL (NULL, relative or over-long directory), -ENOMEM. */
int sinkd_policy_registry_open(const char *const *dirs, size_t n_dirs,
                               sinkd_policy_registry **out);

/* Drop the registry's references and free it. Libraries still used by
 * instances stay loaded until those instances are destroyed. NULL is fine. */
void sinkd_policy_registry_close(sinkd_policy_registry *reg);

/* Load every "*.so" in the directories that is not loaded yet (sorted by
 * name, directories in order). A refused file is logged with its reason and
 * skipped; files named like a built-in (full.so, window.so) are skipped
 * quietly. *n_loaded (may be NULL) counts the files loaded. Returns 0 or
 * -ENOMEM. */
int sinkd_policy_scan(sinkd_policy_registry *reg, int *n_loaded);

/* Load one plugin file. @path, resolved, must lie in one of the registry's
 * directories; it is opened without following links after that check and
 * refused (-EAGAIN) if what was opened no longer has the resolved name. The
 * first load of a name gets generation 1, a later one the next unused.
 * Errors, with a message in @err: -EINVAL (not in a plugin
 * directory), -EEXIST (that file or a policy of that name is loaded),
 * and those of a refused file: -EACCES (permissions/owner), -ENOEXEC
 * (dlopen), -EINVAL (descriptor), -EPROTO (self-test). */
int sinkd_policy_load(sinkd_policy_registry *reg, const char *path, char *err, size_t errlen);

/* Reload the file policy @name was loaded from, its path checked again as
 * sinkd_policy_load checks one (resolved, inside a configured directory: a
 * file since replaced by a link out of them is refused). When the file
 * changed (path it resolves to, device, inode, size or mtime) its new
 * version is loaded, validated and self-tested beside the old one and
 * becomes current with the next generation; instances of the old one are
 * untouched. Generations are per name and never reused while the registry
 * lives, through unload and load too, so (name, generation) names one
 * version. Errors: -ENOENT (no such policy), -EPERM (built-in), -EALREADY
 * (file unchanged), -EINVAL (the new file names another policy, or lies
 * outside the plugin directories), and load's; on error the old version
 * stays current. */
int sinkd_policy_reload(sinkd_policy_registry *reg, const char *name, char *err, size_t errlen);

/* Remove policy @name from the registry: new sessions can no longer pick
 * it; live instances keep it loaded. Errors: -ENOENT, -EPERM (built-in). */
int sinkd_policy_unload(sinkd_policy_registry *reg, const char *name, char *err, size_t errlen);

/* One policy as listed. Strings are copies. */
typedef struct sinkd_policy_info {
    char name[32];
    char version[32];
    char summary[160];
    char path[4096];     /* "" for built-ins */
    uint32_t caps;
    uint32_t generation;
    int32_t instances;   /* live instances of this version */
    int32_t builtin;     /* 1 for full and window */
} sinkd_policy_info;

/* Copy up to @cap entries (built-ins first, then by name) to @out and the
 * total number of policies to *n (which may exceed @cap). Returns 0 or
 * -EINVAL. */
int sinkd_policy_list(sinkd_policy_registry *reg, sinkd_policy_info *out, size_t cap, size_t *n);

/* Create an instance of the current version of policy @name for a model
 * of shape @geom with @params ("k=v ..." or NULL). On success the caller
 * owns *out (destroy with sinkd_policy_inst_destroy); it holds a reference
 * to its library. Errors, with a message in @err for the client: -ENOENT
 * (no such policy), -EINVAL (bad geometry, bad or unknown parameter, invalid
 * plan), the plugin's create() error, -ENOMEM. */
int sinkd_policy_inst_create(sinkd_policy_registry *reg, const char *name,
                             const sinkd_policy_geometry *geom, const char *params,
                             sinkd_policy_inst **out, char *err, size_t errlen);

/* Destroy the plugin state and drop the library reference (which may
 * dlclose an unloaded or replaced version). NULL is fine. */
void sinkd_policy_inst_destroy(sinkd_policy_inst *inst);

/* Apply new parameters to a live instance. Policies without
 * SINKD_POLICY_CAP_RECONFIGURE get -EOPNOTSUPP (switch instead: create a new
 * instance, destroy the old). On any error the instance is unchanged. */
int sinkd_policy_inst_reconfigure(sinkd_policy_inst *inst, const char *params, char *err,
                                  size_t errlen);

/* The instance's validated plan and geometry; valid until the next
 * reconfigure, fallback or destroy. */
const sinkd_policy_plan *sinkd_policy_inst_plan(const sinkd_policy_inst *inst);
const sinkd_policy_geometry *sinkd_policy_inst_geometry(const sinkd_policy_inst *inst);

/* Name, version and generation of the policy the instance runs now
 * ("window" after a fallback). */
const char *sinkd_policy_inst_name(const sinkd_policy_inst *inst);
const char *sinkd_policy_inst_version(const sinkd_policy_inst *inst);
uint32_t sinkd_policy_inst_generation(const sinkd_policy_inst *inst);
/* The parameter string the instance runs with now ("" for none; after a
 * fallback, window's), so that it can be re-created. Valid as the plan. */
const char *sinkd_policy_inst_params(const sinkd_policy_inst *inst);

/* Keep lists for the lanes of one layer at an eviction point (the engine
 * decides when, from sinkd_plan_evict_threshold). Lanes as in policy.h; out
 * must have room for len entries. Runs the plugin's evict callback when it
 * has one, else the plan's rule (sinkd_plan_keep). Returns 0,
 * SINKD_POLICY_FELL_BACK (see above), or -EINVAL/-ENOMEM for bad lanes. */
int sinkd_policy_inst_evict(sinkd_policy_inst *inst, sinkd_policy_lane *lanes, int32_t n_lanes);

/* Page lists for the lanes of a selecting layer (see sinkd_plan_select):
 * the plugin's select callback, else the plan's rule. Returns as evict. */
int sinkd_policy_inst_select(sinkd_policy_inst *inst, sinkd_policy_lane *lanes, int32_t n_lanes);

/* Switch the instance to `window` now, recording @reason (copied). The
 * plugin state is destroyed. Returns 0 or -ENOMEM (the instance is then
 * unchanged). */
int sinkd_policy_inst_fallback(sinkd_policy_inst *inst, const char *reason);

/* Why the instance fell back, or NULL when it never did. */
const char *sinkd_policy_inst_fallback_reason(const sinkd_policy_inst *inst);

#ifdef __cplusplus
}
#endif
#endif /* SINKD_POLICY_HOST_H */
