/*
 * The policy loader and registry against real plugin files: every broken
 * plugin of broken.c is refused with its exact reason, file permissions are
 * enforced, a misbehaving plugin makes its session fall back to `window`,
 * reload keeps old and new versions side by side until the last instance
 * of the old one goes (checked on the dynamic linker's own list), and the
 * example out-of-tree plugin builds and runs. Plans past the host's bounds,
 * callbacks that rewrite their lanes, links out of the plugin directories
 * and generations reused after an unload are the defects fixed since.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "host.h"
#include "internal.h"

static char dir[64];
static sinkd_policy_registry *reg;

static const sinkd_policy_geometry G = {
    .struct_size = sizeof G, .n_layers = 4, .n_q_heads = 4, .n_kv_heads = 2,
    .head_dim = 16, .page_tokens = 16, .max_tokens = 4096,
};

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/sinkd-plugins-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    const char *dirs[] = {dir};
    cr_assert_eq(sinkd_policy_registry_open(dirs, 1, &reg), 0);
}

static void teardown(void)
{
    sinkd_policy_registry_close(reg);
    DIR *d = opendir(dir);
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.')
            continue;
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (unlink(p) != 0)
            rmdir(p);
    }
    if (d != NULL)
        closedir(d);
    rmdir(dir);
}

TestSuite(loader, .init = setup, .fini = teardown);

/* Copy @src to dir/@name with @mode through a new inode (write + rename,
 * as package managers do), so a reload sees a changed file. */
static void install(const char *src, const char *name, mode_t mode)
{
    char dst[512], tmp[512], buf[65536];
    snprintf(dst, sizeof dst, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
    int in = open(src, O_RDONLY), out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert(in >= 0 && out >= 0, "install %s", src);
    for (ssize_t n; (n = read(in, buf, sizeof buf)) > 0;)
        cr_assert_eq(write(out, buf, (size_t)n), n);
    cr_assert_eq(fchmod(out, mode), 0);
    close(in);
    close(out);
    cr_assert_eq(rename(tmp, dst), 0);
}

static const char *broken(const char *name)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/%s.so", BROKEN_DIR, name);
    return p;
}

static const char *builtin_so(const char *name)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/%s.so", SINKD_PLUGIN_BUILD_DIR, name);
    return p;
}

static int load(const char *name, char *err, size_t errlen)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return sinkd_policy_load(reg, p, err, errlen);
}

static void expect_refused(const char *file, int rc, const char *needle)
{
    char err[512] = "";
    int got = load(file, err, sizeof err);
    cr_assert_eq(got, rc, "%s: rc %d, want %d (%s)", file, got, rc, err);
    cr_assert(strstr(err, needle) != NULL, "%s: '%s' lacks '%s'", file, err, needle);
}

static size_t count_policies(void)
{
    size_t n = 0;
    cr_assert_eq(sinkd_policy_list(reg, NULL, 0, &n), 0);
    return n;
}

Test(loader, broken_descriptors_are_refused)
{
    static const struct { const char *file; int rc; const char *needle; } cases[] = {
        {"wrong_major", -EINVAL, "ABI major 2, this sinkd speaks 1"},
        {"short_struct", -EINVAL, "descriptor of 64 bytes, version 1.0 has 96"},
        {"unknown_cap", -EINVAL, "unknown caps bits 0x80"},
        {"null_plan", -EINVAL, "create, destroy and plan are required"},
        {"caps_mismatch", -EINVAL, "caps and optional callbacks disagree"},
        {"no_entry", -ENOEXEC, "no sinkd_policy_v1() symbol"},
        {"selftest_fail", -EPROTO, "self-test failed"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s.so", cases[i].file);
        install(broken(cases[i].file), name, 0755);
        expect_refused(name, cases[i].rc, cases[i].needle);
    }
    expect_refused("selftest_fail.so", -EPROTO, "not sorted");
    int fd = open(strcat(strcpy((char[512]){0}, dir), "/text.so"), O_WRONLY | O_CREAT, 0644);
    cr_assert_eq(write(fd, "not an ELF file\n", 16), 16);
    close(fd);
    expect_refused("text.so", -ENOEXEC, "dlopen");
    cr_assert_eq(count_policies(), 2, "only the built-ins remain");
}

Test(loader, a_newer_minor_still_loads)
{
    char err[512] = "";
    install(broken("newer_minor"), "future.so", 0755);
    cr_assert_eq(load("future.so", err, sizeof err), 0, "%s", err);
    sinkd_policy_info info[4];
    size_t n;
    cr_assert_eq(sinkd_policy_list(reg, info, 4, &n), 0);
    cr_assert_eq(n, 3);
    cr_assert_str_eq(info[0].name, "full");
    cr_assert_str_eq(info[1].name, "window");
    cr_assert_str_eq(info[2].name, "future");
    cr_assert_eq(info[2].builtin, 0);
    sinkd_policy_inst *inst;
    cr_assert_eq(sinkd_policy_inst_create(reg, "future", &G, NULL, &inst, err, sizeof err), 0,
                 "%s", err);
    sinkd_policy_inst_destroy(inst);
}

Test(loader, names_are_unique)
{
    char err[512] = "";
    install(broken("probe1"), "a.so", 0755);
    install(broken("probe1"), "b.so", 0755);
    install(builtin_so("window"), "window.so", 0755);
    cr_assert_eq(load("a.so", err, sizeof err), 0, "%s", err);
    expect_refused("a.so", -EEXIST, "already loaded as probe");
    expect_refused("b.so", -EEXIST, "duplicate policy name 'probe'");
    expect_refused("window.so", -EEXIST, "duplicate policy name 'window'");
}

Test(loader, file_permissions)
{
    install(builtin_so("h2o"), "gw.so", 0775);
    expect_refused("gw.so", -EACCES, "group- or world-writable (mode 0775)");
    install(builtin_so("h2o"), "ow.so", 0757);
    expect_refused("ow.so", -EACCES, "group- or world-writable (mode 0757)");
    char p[512];
    snprintf(p, sizeof p, "%s/dir.so", dir);
    cr_assert_eq(mkdir(p, 0755), 0);
    expect_refused("dir.so", -EACCES, "not a regular file");
    char err[512] = "";
    cr_assert_eq(sinkd_policy_load(reg, builtin_so("h2o"), err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "not in a configured plugin directory") != NULL, "%s", err);
    snprintf(p, sizeof p, "%s/link.so", dir);
    cr_assert_eq(symlink(builtin_so("h2o"), p), 0);
    expect_refused("link.so", -EINVAL, "not in a configured plugin directory");
    if (geteuid() == 0) {
        install(builtin_so("h2o"), "nobody.so", 0755);
        snprintf(p, sizeof p, "%s/nobody.so", dir);
        cr_assert_eq(chown(p, 65534, 65534), 0);
        expect_refused("nobody.so", -EACCES, "owned by uid 65534");
    }
    install(builtin_so("h2o"), "ok.so", 0755);
    cr_assert_eq(load("ok.so", err, sizeof err), 0, "%s", err);
}

typedef struct lanes2 {
    int32_t pos[256];
    float score[2][256];
    int32_t out[2][256];
    sinkd_policy_lane l[2];
} lanes2;

static void lanes_init(lanes2 *x, int layer, int len)
{
    memset(x, 0, sizeof *x);
    for (int i = 0; i < len; i++) {
        x->pos[i] = 2 * i;
        x->score[0][i] = x->score[1][i] = (float)((i * 37) % 101);
    }
    for (int h = 0; h < 2; h++)
        x->l[h] = (sinkd_policy_lane){.layer = layer, .kv_head = h, .len = len,
                                      .n_pages = (len + 15) / 16, .pos = x->pos,
                                      .score = x->score[h], .out = x->out[h]};
}

Test(loader, misbehaving_plugins_fall_back_to_window)
{
    static const struct { const char *fault; const char *needle; } cases[] = {
        {"oob", "outside [0, 100)"},
        {"dup", "repeats index"},
        {"unsorted", "not sorted"},
        {"long", "101 entries for a list of at most 100"},
        {"error", "evict returned -5"},
    };
    char err[512] = "";
    install(broken("faulty"), "faulty.so", 0755);
    cr_assert_eq(load("faulty.so", err, sizeof err), 0, "%s", err);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char params[64];
        snprintf(params, sizeof params, "fault=%s", cases[i].fault);
        sinkd_policy_inst *inst;
        cr_assert_eq(sinkd_policy_inst_create(reg, "broken", &G, params, &inst, err, sizeof err), 0,
                     "%s", err);
        lanes2 x;
        lanes_init(&x, 1, 100);
        cr_assert_eq(sinkd_policy_inst_evict(inst, x.l, 2), SINKD_POLICY_FELL_BACK, "%s",
                     cases[i].fault);
        const char *why = sinkd_policy_inst_fallback_reason(inst);
        cr_assert_not_null(why);
        cr_assert(strstr(why, cases[i].needle) != NULL, "'%s' lacks '%s'", why, cases[i].needle);
        cr_assert_str_eq(sinkd_policy_inst_name(inst), "window");
        /* window of the plugin's budget (32): the last 32 tokens */
        for (int h = 0; h < 2; h++) {
            cr_assert_eq(x.l[h].n_out, 32);
            for (int j = 0; j < 32; j++)
                cr_assert_eq(x.out[h][j], 68 + j);
        }
        lanes_init(&x, 2, 100);
        cr_assert_eq(sinkd_policy_inst_evict(inst, x.l, 2), 0, "window from now on");
        sinkd_policy_inst_destroy(inst);
    }

    sinkd_policy_inst *inst;
    cr_assert_eq(sinkd_policy_inst_create(reg, "broken", &G, "fault=none", &inst, err, sizeof err),
                 0, "%s", err);
    lanes2 x;
    lanes_init(&x, 0, 100);
    cr_assert_eq(sinkd_policy_inst_evict(inst, x.l, 2), 0);
    cr_assert_eq(x.l[0].n_out, 50);
    cr_assert_eq(sinkd_policy_inst_select(inst, x.l, 2), 0);
    cr_assert_eq(x.l[1].n_out, 1);
    cr_assert_eq(x.out[1][0], 6);
    cr_assert_null(sinkd_policy_inst_fallback_reason(inst));
    sinkd_policy_inst_destroy(inst);

    cr_assert_eq(sinkd_policy_inst_create(reg, "broken", &G, "fault=pages", &inst, err, sizeof err),
                 0, "%s", err);
    lanes_init(&x, 3, 100);
    cr_assert_eq(sinkd_policy_inst_select(inst, x.l, 2), SINKD_POLICY_FELL_BACK);
    cr_assert(strstr(sinkd_policy_inst_fallback_reason(inst), "select, layer 3 head 0: entry 0 is 7")
              != NULL, "%s", sinkd_policy_inst_fallback_reason(inst));
    cr_assert_eq(x.l[0].n_out, 7, "dense after the fallback");
    sinkd_policy_inst_destroy(inst);

    /* malformed lanes are the caller's error, not the plugin's */
    cr_assert_eq(sinkd_policy_inst_create(reg, "broken", &G, "fault=none", &inst, err, sizeof err),
                 0, "%s", err);
    lanes_init(&x, 9, 100);
    cr_assert_eq(sinkd_policy_inst_evict(inst, x.l, 2), -EINVAL);
    cr_assert_null(sinkd_policy_inst_fallback_reason(inst));
    sinkd_policy_inst_destroy(inst);
}

Test(loader, builtins_always_there_never_unloaded)
{
    char err[512] = "";
    sinkd_policy_inst *inst;
    cr_assert_eq(sinkd_policy_unload(reg, "full", err, sizeof err), -EPERM);
    cr_assert_eq(sinkd_policy_unload(reg, "window", err, sizeof err), -EPERM);
    cr_assert_eq(sinkd_policy_reload(reg, "window", err, sizeof err), -EPERM);
    cr_assert_eq(sinkd_policy_unload(reg, "nosuch", err, sizeof err), -ENOENT);
    cr_assert_eq(sinkd_policy_inst_create(reg, "nosuch", &G, NULL, &inst, err, sizeof err), -ENOENT);
    cr_assert_eq(sinkd_policy_inst_create(reg, "window", &G, "window=8", &inst, err, sizeof err), 0);
    sinkd_policy_registry_close(reg); /* instances may outlive the registry */
    const char *dirs[] = {dir};
    cr_assert_eq(sinkd_policy_registry_open(dirs, 1, &reg), 0);
    cr_assert_eq(sinkd_plan_lane_budget(sinkd_policy_inst_plan(inst), &G, 0, 0), 8);

    /* window resizes live; a bad reconfigure changes nothing */
    cr_assert_eq(sinkd_policy_inst_reconfigure(inst, "window=9 slack=3", err, sizeof err), 0, "%s",
                 err);
    cr_assert_eq(sinkd_plan_lane_budget(sinkd_policy_inst_plan(inst), &G, 1, 1), 9);
    cr_assert_eq(sinkd_policy_inst_plan(inst)->slack, 3);
    cr_assert_eq(sinkd_policy_inst_reconfigure(inst, "window=0", err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "window: expected an integer in [1, 16777216], got '0'") != NULL, "%s",
              err);
    cr_assert_eq(sinkd_policy_inst_reconfigure(inst, "size=4", err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "unknown parameter 'size'") != NULL, "%s", err);
    cr_assert_eq(sinkd_plan_lane_budget(sinkd_policy_inst_plan(inst), &G, 1, 1), 9);
    sinkd_policy_inst_destroy(inst);

    cr_assert_eq(sinkd_policy_inst_create(reg, "full", &G, NULL, &inst, err, sizeof err), 0);
    cr_assert_eq(sinkd_policy_inst_reconfigure(inst, "", err, sizeof err), -EOPNOTSUPP);
    sinkd_policy_inst_destroy(inst);
}

/* Generations of the probe plugin the dynamic linker holds right now. */
static int probe__cb(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    int *mask = data;
    if (info->dlpi_name == NULL || info->dlpi_name[0] == '\0')
        return 0;
    void *h = dlopen(info->dlpi_name, RTLD_NOW | RTLD_NOLOAD);
    if (h == NULL)
        return 0;
    const int *gen = dlsym(h, "sinkd_test_probe_generation");
    if (gen != NULL)
        *mask |= 1 << *gen;
    dlclose(h);
    return 0;
}

static int probe_generations(void)
{
    int mask = 0;
    dl_iterate_phdr(probe__cb, &mask);
    return mask;
}

Test(loader, reload_keeps_old_version_until_its_last_instance)
{
    char err[512] = "";
    sinkd_policy_inst *old, *new;
    install(broken("probe1"), "probe.so", 0755);
    cr_assert_eq(load("probe.so", err, sizeof err), 0, "%s", err);
    cr_assert_eq(sinkd_policy_inst_create(reg, "probe", &G, NULL, &old, err, sizeof err), 0);
    cr_assert_eq(probe_generations(), 1 << 1);
    cr_assert_eq(sinkd_policy_reload(reg, "probe", err, sizeof err), -EALREADY);

    install(broken("probe2"), "probe.so", 0755);
    cr_assert_eq(sinkd_policy_reload(reg, "probe", err, sizeof err), 0, "%s", err);
    cr_assert_eq(probe_generations(), (1 << 1) | (1 << 2), "both versions loaded");
    cr_assert_eq(sinkd_policy_inst_create(reg, "probe", &G, NULL, &new, err, sizeof err), 0);
    cr_assert_eq(sinkd_policy_inst_generation(old), 1);
    cr_assert_eq(sinkd_policy_inst_generation(new), 2);
    cr_assert_str_eq(sinkd_policy_inst_version(old), "0.0.1");
    cr_assert_str_eq(sinkd_policy_inst_version(new), "0.0.2");

    sinkd_policy_inst_destroy(old);
    cr_assert_eq(probe_generations(), 1 << 2, "old version closed with its last instance");
    cr_assert_eq(sinkd_policy_unload(reg, "probe", err, sizeof err), 0);
    cr_assert_eq(probe_generations(), 1 << 2, "unloaded, but an instance still runs it");
    sinkd_policy_inst_destroy(new);
    cr_assert_eq(probe_generations(), 0);

    /* a reload that fails leaves the current version in place */
    install(broken("probe1"), "probe.so", 0755);
    cr_assert_eq(load("probe.so", err, sizeof err), 0, "%s", err);
    install(broken("wrong_major"), "probe.so", 0755);
    cr_assert_eq(sinkd_policy_reload(reg, "probe", err, sizeof err), -EINVAL);
    cr_assert_eq(probe_generations(), 1 << 1);
}

Test(loader, scan_loads_what_passes)
{
    install(builtin_so("h2o"), "h2o.so", 0755);
    install(builtin_so("full"), "full.so", 0755);
    install(broken("probe1"), "probe.so", 0755);
    install(broken("wrong_major"), "old.so", 0755);
    install(broken("probe1"), "notaplugin.txt", 0755);
    int n = -1;
    cr_assert_eq(sinkd_policy_scan(reg, &n), 0);
    cr_assert_eq(n, 2);
    sinkd_policy_info info[8];
    size_t total;
    cr_assert_eq(sinkd_policy_list(reg, info, 8, &total), 0);
    cr_assert_eq(total, 4);
    cr_assert_str_eq(info[2].name, "h2o");
    cr_assert_str_eq(info[3].name, "probe");
    cr_assert(strstr(info[2].path, "/h2o.so") != NULL);
    cr_assert_eq(sinkd_policy_scan(reg, &n), 0);
    cr_assert_eq(n, 0, "a second scan loads nothing new");
}

Test(loader, example_plugin_builds_and_runs)
{
    char err[512] = "";
    install(EXAMPLE_SO, "strided.so", 0644);
    cr_assert_eq(load("strided.so", err, sizeof err), 0, "%s", err);
    sinkd_policy_inst *inst;
    cr_assert_eq(sinkd_policy_inst_create(reg, "strided", &G, "budget=40 sinks=2 recent=10 stride=4",
                                          &inst, err, sizeof err), 0, "%s", err);
    lanes2 x;
    lanes_init(&x, 1, 100); /* pos = 2i: a multiple of 4 for every even i */
    cr_assert_eq(sinkd_policy_inst_evict(inst, x.l, 2), 0);
    /* 2 sinks, then the 28 newest even indices below 90 (34..88), then 90..99 */
    int want[40], n = 0;
    for (int i = 0; i < 2; i++)
        want[n++] = i;
    for (int i = 34; i < 90; i += 2)
        want[n++] = i;
    for (int i = 90; i < 100; i++)
        want[n++] = i;
    cr_assert_eq(n, 40);
    cr_assert_eq(x.l[0].n_out, 40);
    for (int i = 0; i < 40; i++)
        cr_assert_eq(x.out[0][i], want[i], "entry %d", i);
    sinkd_policy_inst_destroy(inst);
}

typedef struct churn {
    int created;
    int errors;
} churn;

/* Sessions come and go while the main thread reloads under them. */
static void *churn_main(void *arg)
{
    churn *c = arg;
    for (int i = 0; i < 150; i++) {
        char err[256];
        sinkd_policy_inst *inst;
        if (sinkd_policy_inst_create(reg, "probe", &G, "fault=none", &inst, err, sizeof err) != 0) {
            c->errors++;
            continue;
        }
        lanes2 x;
        lanes_init(&x, i % 4, 64);
        c->errors += sinkd_policy_inst_evict(inst, x.l, 2) != 0;
        c->created++;
        sinkd_policy_inst_destroy(inst);
    }
    return NULL;
}

Test(loader, reload_while_sessions_come_and_go)
{
    char err[512] = "";
    install(broken("probe1"), "probe.so", 0755);
    cr_assert_eq(load("probe.so", err, sizeof err), 0, "%s", err);
    pthread_t t[4];
    churn c[4] = {{0, 0}};
    for (int i = 0; i < 4; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, churn_main, &c[i]), 0);
    for (int r = 0; r < 12; r++) {
        install(broken(r % 2 ? "probe1" : "probe2"), "probe.so", 0755);
        cr_assert_eq(sinkd_policy_reload(reg, "probe", err, sizeof err), 0, "round %d: %s", r, err);
    }
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(pthread_join(t[i], NULL), 0);
        cr_assert_eq(c[i].errors, 0);
        cr_assert_eq(c[i].created, 150);
    }
    sinkd_policy_info info[3];
    size_t n;
    cr_assert_eq(sinkd_policy_list(reg, info, 3, &n), 0);
    cr_assert_eq(info[2].generation, 13);
    cr_assert_eq(info[2].instances, 0);
    cr_assert_eq(probe_generations(), 1 << 1, "every replaced version was closed");
}

Test(loader, explicit_fallback)
{
    char err[512] = "";
    sinkd_policy_inst *inst;
    install(builtin_so("h2o"), "h2o.so", 0755);
    cr_assert_eq(load("h2o.so", err, sizeof err), 0, "%s", err);
    cr_assert_eq(sinkd_policy_inst_create(reg, "h2o", &G, "budget=48", &inst, err, sizeof err), 0);
    cr_assert_null(sinkd_policy_inst_fallback_reason(inst));
    cr_assert_eq(sinkd_policy_inst_fallback(inst, "operator asked"), 0);
    cr_assert_str_eq(sinkd_policy_inst_fallback_reason(inst), "operator asked");
    cr_assert_str_eq(sinkd_policy_inst_name(inst), "window");
    const sinkd_policy_plan *p = sinkd_policy_inst_plan(inst);
    cr_assert_eq(p->stat, SINKD_STAT_NONE);
    cr_assert_eq(sinkd_plan_lane_budget(p, &G, 3, 1), 48, "window keeps the old budget");
    sinkd_policy_info info[3];
    size_t n;
    cr_assert_eq(sinkd_policy_list(reg, info, 3, &n), 0);
    cr_assert_str_eq(info[2].name, "h2o");
    cr_assert_eq(info[2].instances, 0, "the h2o state is gone");
    sinkd_policy_inst_destroy(inst);
}

/* Plans past the host's bounds are refused where they are made: at load
 * (the self-test's create), at create and at reconfigure, each with a
 * message naming the field. Before the bounds these two self-tests wrote
 * 2^31 entries into a lane or sorted a negative count. */
Test(loader, plans_past_the_bounds_are_refused)
{
    install(broken("huge_stream"), "huge_stream.so", 0755);
    expect_refused("huge_stream.so", -EPROTO,
                   "stream_sinks 2147483647 + stream_recent 1 exceed 16777216");
    install(broken("huge_select"), "huge_select.so", 0755);
    expect_refused("huge_select.so", -EPROTO, "select_pages 201326592 exceeds 1048576");

    char err[512] = "";
    sinkd_policy_inst *inst;
    install(broken("faulty"), "faulty.so", 0755);
    cr_assert_eq(load("faulty.so", err, sizeof err), 0, "%s", err);
    cr_assert_eq(sinkd_policy_inst_create(reg, "broken", &G, "budget=16777217", &inst, err,
                                          sizeof err), -EINVAL);
    cr_assert(strstr(err, "invalid plan: budget 16777217 exceeds 16777216") != NULL, "%s", err);
    cr_assert_eq(sinkd_policy_inst_create(reg, "broken", &G, "budget=16777216", &inst, err,
                                          sizeof err), 0, "%s", err);
    sinkd_policy_inst_destroy(inst);

    install(broken("probe_reconf"), "probe.so", 0755);
    cr_assert_eq(load("probe.so", err, sizeof err), 0, "%s", err);
    cr_assert_eq(sinkd_policy_inst_create(reg, "probe", &G, "budget=64", &inst, err, sizeof err),
                 0, "%s", err);
    cr_assert_eq(sinkd_policy_inst_reconfigure(inst, "budget=2147483647", err, sizeof err),
                 -EINVAL);
    cr_assert(strstr(err, "budget 2147483647 exceeds 16777216") != NULL, "%s", err);
    cr_assert_eq(sinkd_policy_inst_plan(inst)->budget, 64, "the refused plan changed nothing");
    cr_assert_eq(sinkd_policy_inst_reconfigure(inst, "budget=16777216", err, sizeof err), 0, "%s",
                 err);
    cr_assert_eq(sinkd_policy_inst_plan(inst)->budget, 16777216);
    sinkd_policy_inst_destroy(inst);
}

/* A callback may write n_out and the elements of out[], nothing else: a
 * lane whose len, n_pages or out it changed is judged by, and handed back
 * with, what the host put there. */
Test(loader, callbacks_cannot_move_what_their_output_is_checked_against)
{
    char err[512] = "";
    sinkd_policy_inst *inst;
    install(broken("faulty"), "faulty.so", 0755);
    cr_assert_eq(load("faulty.so", err, sizeof err), 0, "%s", err);

    /* evict makes a 100-token lane 400 long and keeps 300..399 */
    cr_assert_eq(sinkd_policy_inst_create(reg, "broken", &G, "fault=grow", &inst, err, sizeof err),
                 0, "%s", err);
    lanes2 x;
    lanes_init(&x, 1, 100);
    cr_assert_eq(sinkd_policy_inst_evict(inst, x.l, 2), SINKD_POLICY_FELL_BACK);
    const char *why = sinkd_policy_inst_fallback_reason(inst);
    cr_assert(strstr(why, "entry 0 is 300, outside [0, 100)") != NULL, "%s", why);
    for (int h = 0; h < 2; h++) {
        cr_assert_eq(x.l[h].len, 100, "len restored");
        cr_assert_eq(x.l[h].out, x.out[h]);
        cr_assert_eq(x.l[h].n_out, 32, "window's answer");
        cr_assert_eq(x.out[h][0], 68);
    }
    sinkd_policy_inst_destroy(inst);

    /* evict writes a valid list, but into an array of its own */
    cr_assert_eq(sinkd_policy_inst_create(reg, "broken", &G, "fault=moveout", &inst, err,
                                          sizeof err), 0, "%s", err);
    lanes_init(&x, 1, 100);
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 100; j++)
            x.out[h][j] = 1000; /* what the host's array holds: out of range */
    cr_assert_eq(sinkd_policy_inst_evict(inst, x.l, 2), SINKD_POLICY_FELL_BACK);
    cr_assert(strstr(sinkd_policy_inst_fallback_reason(inst), "outside [0, 100)") != NULL, "%s",
              sinkd_policy_inst_fallback_reason(inst));
    cr_assert_eq(x.l[0].out, x.out[0], "out restored");
    sinkd_policy_inst_destroy(inst);

    /* select claims 2^26 pages and an invalid list: the dense answer that
     * follows covers the 7 pages the lane has, not 2^26 */
    cr_assert_eq(sinkd_policy_inst_create(reg, "broken", &G, "fault=bigpages", &inst, err,
                                          sizeof err), 0, "%s", err);
    lanes_init(&x, 2, 100);
    cr_assert_eq(sinkd_policy_inst_select(inst, x.l, 2), SINKD_POLICY_FELL_BACK);
    cr_assert(strstr(sinkd_policy_inst_fallback_reason(inst), "-7 entries for a list of at most 7")
              != NULL, "%s", sinkd_policy_inst_fallback_reason(inst));
    for (int h = 0; h < 2; h++) {
        cr_assert_eq(x.l[h].n_pages, 7, "n_pages restored");
        cr_assert_eq(x.l[h].n_out, 7);
        for (int p = 0; p < 7; p++)
            cr_assert_eq(x.out[h][p], p);
        cr_assert_eq(x.out[h][7], 0, "nothing written past the lane's pages");
    }
    sinkd_policy_inst_destroy(inst);
}

/* The fallback is window with the failed plan's budget: at the largest
 * budget a plan may have it still opens, and past it no plan exists to
 * fall back from. */
Test(loader, fallback_at_the_largest_budget)
{
    char err[512] = "";
    sinkd_policy_inst *inst;
    install(broken("faulty"), "faulty.so", 0755);
    cr_assert_eq(load("faulty.so", err, sizeof err), 0, "%s", err);
    cr_assert_eq(sinkd_policy_inst_create(reg, "broken", &G, "fault=error budget=20000000", &inst,
                                          err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "budget 20000000 exceeds 16777216") != NULL, "%s", err);

    cr_assert_eq(sinkd_policy_inst_create(reg, "broken", &G, "fault=error budget=16777216", &inst,
                                          err, sizeof err), 0, "%s", err);
    lanes2 x;
    lanes_init(&x, 0, 100); /* far below budget: the plugin fails anyway */
    cr_assert_eq(sinkd_policy_inst_evict(inst, x.l, 2), SINKD_POLICY_FELL_BACK);
    cr_assert_str_eq(sinkd_policy_inst_name(inst), "window");
    cr_assert_str_eq(sinkd_policy_inst_params(inst), "window=16777216");
    cr_assert_eq(sinkd_plan_lane_budget(sinkd_policy_inst_plan(inst), &G, 2, 1), 16777216);
    cr_assert_eq(x.l[0].n_out, 100, "window keeps all of a short lane");
    sinkd_policy_inst_destroy(inst);
}

/* Reload judges the file as load does: one replaced by a link out of the
 * plugin directories is refused, and the version in use stays. */
Test(loader, reload_does_not_follow_a_link_out_of_the_directories)
{
    char err[512] = "", other[64], target[128], p[512];
    install(broken("probe1"), "probe.so", 0755);
    cr_assert_eq(load("probe.so", err, sizeof err), 0, "%s", err);

    snprintf(other, sizeof other, "/tmp/sinkd-other-XXXXXX");
    cr_assert_not_null(mkdtemp(other));
    snprintf(target, sizeof target, "%s/probe.so", other);
    snprintf(p, sizeof p, "%s/probe.so", dir);
    int in = open(broken("probe2"), O_RDONLY), out = open(target, O_WRONLY | O_CREAT, 0755);
    char buf[65536];
    for (ssize_t n; (n = read(in, buf, sizeof buf)) > 0;)
        cr_assert_eq(write(out, buf, (size_t)n), n);
    close(in);
    close(out);
    cr_assert_eq(unlink(p), 0);
    cr_assert_eq(symlink(target, p), 0);

    cr_assert_eq(sinkd_policy_reload(reg, "probe", err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "not in a configured plugin directory") != NULL, "%s", err);
    cr_assert_eq(probe_generations(), 1 << 1, "the file outside was never opened");
    sinkd_policy_info info[3];
    size_t n;
    cr_assert_eq(sinkd_policy_list(reg, info, 3, &n), 0);
    cr_assert_eq(info[2].generation, 1);

    /* nor does the loader itself open a link, whatever path it is given */
    policy__lib *lib = NULL;
    cr_assert_eq(policy__lib_open(p, &lib, err, sizeof err), -ELOOP);
    cr_assert(strstr(err, "a symbolic link") != NULL, "%s", err);
    cr_assert_null(lib);

    cr_assert_eq(unlink(target), 0);
    cr_assert_eq(rmdir(other), 0);
}

/* caps of the version (name, generation) names, as the engine looks a
 * session's version up; 0 and *found = 0 when it is not current */
static uint32_t current_caps(const char *name, uint32_t generation, int *found)
{
    sinkd_policy_info info[8];
    size_t n;
    cr_assert_eq(sinkd_policy_list(reg, info, 8, &n), 0);
    *found = 0;
    for (size_t i = 0; i < n && i < 8; i++)
        if (strcmp(info[i].name, name) == 0 && info[i].generation == generation) {
            *found = 1;
            return info[i].caps;
        }
    return 0;
}

/* Unload, then load another file under the same name: the new version
 * gets a generation of its own, so a session still on the unloaded one is
 * not taken for it (it would get reconfigure calls its version lacks, or
 * miss those it has). */
Test(loader, generations_survive_unload)
{
    char err[512] = "";
    sinkd_policy_inst *old, *new;
    int found;
    install(broken("probe_reconf"), "probe.so", 0755);
    cr_assert_eq(load("probe.so", err, sizeof err), 0, "%s", err);
    cr_assert_eq(sinkd_policy_inst_create(reg, "probe", &G, NULL, &old, err, sizeof err), 0);
    cr_assert_eq(sinkd_policy_inst_generation(old), 1);
    cr_assert(current_caps("probe", 1, &found) & SINKD_POLICY_CAP_RECONFIGURE);

    cr_assert_eq(sinkd_policy_unload(reg, "probe", err, sizeof err), 0);
    install(broken("probe2"), "probe.so", 0755);
    cr_assert_eq(load("probe.so", err, sizeof err), 0, "%s", err);
    cr_assert_eq(sinkd_policy_inst_create(reg, "probe", &G, NULL, &new, err, sizeof err), 0);
    cr_assert_eq(sinkd_policy_inst_generation(new), 2);
    cr_assert_neq(sinkd_policy_inst_generation(old), sinkd_policy_inst_generation(new));
    current_caps("probe", sinkd_policy_inst_generation(old), &found);
    cr_assert_eq(found, 0, "the session on the unloaded version must switch");
    cr_assert_eq(current_caps("probe", 2, &found) & SINKD_POLICY_CAP_RECONFIGURE, 0);
    cr_assert_eq(found, 1);

    /* a reload after that continues the count */
    install(broken("probe1"), "probe.so", 0755);
    cr_assert_eq(sinkd_policy_reload(reg, "probe", err, sizeof err), 0, "%s", err);
    current_caps("probe", 3, &found);
    cr_assert_eq(found, 1);
    sinkd_policy_inst_destroy(old);
    sinkd_policy_inst_destroy(new);
}
