/*
 * Configuration: defaults, every key with a good and a bad value, error
 * messages naming file, line and key, model sections, command-line
 * overrides, path defaults, the example config, and reload semantics.
 */
#include "config.h"
#include "log.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ERRLEN SINKD_CONFIG_ERR_MAX

static sinkd_config cfg;
static char err[ERRLEN];

static void setup(void)
{
    cr_assert_eq(sinkd_config_init(&cfg), 0);
    err[0] = '\0';
}

static void teardown(void)
{
    sinkd_config_free(&cfg);
}

TestSuite(config, .init = setup, .fini = teardown);

/* A group every system has, for the group keys. */
static const char *some_group(void)
{
    struct group *g = getgrgid(0);
    cr_assert_not_null(g);
    return g->gr_name;
}

Test(config, defaults)
{
    cr_assert_null(cfg.socket);
    cr_assert_eq(cfg.socket_mode, 0660);
    cr_assert_null(cfg.socket_group.name);
    cr_assert_null(cfg.admin_group.name);
    cr_assert_eq(cfg.max_frame, 16u << 20);
    cr_assert_eq(cfg.max_output, 64u << 20);
    cr_assert_eq(cfg.max_connections, 256);
    cr_assert_eq(cfg.log_level, SINKD_LOG_INFO);
    cr_assert_null(cfg.state_dir);
    cr_assert_eq(cfg.backend, SINKD_BACKEND_AUTO);
    cr_assert_eq(cfg.threads, 0);
    cr_assert_eq(cfg.kv_pool_bytes, 0);
    cr_assert_float_eq(cfg.kv_pool_fraction, 0.8, 1e-12);
    cr_assert_eq(cfg.page_tokens, 16);
    cr_assert_eq(cfg.kv_dtype, SINKD_KV_DTYPE_AUTO);
    cr_assert_eq(cfg.prefill_chunk, 512);
    cr_assert_eq(cfg.max_batch, 32);
    cr_assert_eq(cfg.cuda_graphs, 1);
    cr_assert_eq(cfg.score_defer, 1);
    cr_assert_null(cfg.plugin_dirs);
    cr_assert_eq(cfg.n_models, 0);
    cr_assert_eq(cfg.sessions_per_uid, 64);
    cr_assert_eq(cfg.pages_per_uid, 0);
    cr_assert_eq(cfg.session_tokens, 0);
    cr_assert_eq(cfg.head_dim_max, 0);
    cr_assert_eq(cfg.generations_per_uid, 8);
    cr_assert_eq(cfg.request_bytes, 256u << 20);
    cr_assert_eq(cfg.shm_bytes_per_uid, 64ull << 30);
    cr_assert_eq(cfg.snapshots_per_uid, 16);
}

Test(config, every_key_in_a_file_lands_in_its_field)
{
    char text[2048];
    const char *g = some_group();

    snprintf(text, sizeof text,
             "; comment\n# another\n"
             "[server]\nsocket = /tmp/x/s.sock\nsocket_mode = 0600\nsocket_group = %s\n"
             "admin_group = %s\nmax_frame = 1M\nmax_output = 2GiB\nmax_connections = 7\n"
             "log_level = debug ; inline comment\nstate_dir = /var/tmp/st\n"
             "[engine]\nbackend = cuda\nthreads = 3\nkv_pool_bytes = 3G\n"
             "kv_pool_fraction = 0.25\npage_tokens = 32\nkv_dtype = bf16\n"
             "prefill_chunk = 128\nmax_batch = 9\n"
             "[plugins]\ndirs = /a/b:/c\n"
             "[model \"tiny\"]\npath = /m/tiny.gguf\n"
             "[quota]\nsessions_per_uid = 2\npages_per_uid = 1000\nsession_tokens = 4096\n"
             "generations_per_uid = 0\nrequest_bytes = 512K\nsnapshots_per_uid = 3\n"
             "shm_bytes_per_uid = 2T\n",
             g, g);
    cr_assert_eq(sinkd_config_load_string(&cfg, text, "t.conf", err, ERRLEN), 0, "%s", err);
    cr_assert_str_eq(cfg.socket, "/tmp/x/s.sock");
    cr_assert_eq(cfg.socket_mode, 0600);
    cr_assert_str_eq(cfg.socket_group.name, g);
    cr_assert_eq(cfg.socket_group.gid, 0);
    cr_assert_str_eq(cfg.admin_group.name, g);
    cr_assert_eq(cfg.max_frame, 1048576);
    cr_assert_eq(cfg.max_output, 2147483648ull);
    cr_assert_eq(cfg.max_connections, 7);
    cr_assert_eq(cfg.log_level, SINKD_LOG_DEBUG);
    cr_assert_str_eq(cfg.state_dir, "/var/tmp/st");
    cr_assert_eq(cfg.backend, SINKD_BACKEND_CUDA);
    cr_assert_eq(cfg.threads, 3);
    cr_assert_eq(cfg.kv_pool_bytes, 3ull * 1024 * 1024 * 1024);
    cr_assert_float_eq(cfg.kv_pool_fraction, 0.25, 1e-12);
    cr_assert_eq(cfg.page_tokens, 32);
    cr_assert_eq(cfg.kv_dtype, SINKD_KV_DTYPE_BF16);
    cr_assert_eq(cfg.prefill_chunk, 128);
    cr_assert_eq(cfg.max_batch, 9);
    cr_assert_str_eq(cfg.plugin_dirs, "/a/b:/c");
    cr_assert_eq(cfg.n_models, 1);
    cr_assert_str_eq(cfg.models[0].name, "tiny");
    cr_assert_str_eq(cfg.models[0].path, "/m/tiny.gguf");
    cr_assert_eq(cfg.sessions_per_uid, 2);
    cr_assert_eq(cfg.pages_per_uid, 1000);
    cr_assert_eq(cfg.session_tokens, 4096);
    cr_assert_eq(cfg.generations_per_uid, 0);
    cr_assert_eq(cfg.request_bytes, 524288);
    cr_assert_eq(cfg.shm_bytes_per_uid, 2ull << 40);
    cr_assert_eq(cfg.snapshots_per_uid, 3);
}

typedef struct changes {
    char seen[16][64];
    bool applied[16];
    int n;
} changes;

static void note(void *ud, const char *section, const char *key, bool applied)
{
    changes *c = ud;
    if (c->n < 16) {
        snprintf(c->seen[c->n], sizeof c->seen[0], "%s.%s", section, key);
        c->applied[c->n++] = applied;
    }
}

static bool noted(const changes *c, const char *what, bool applied)
{
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->seen[i], what))
            return c->applied[i] == applied;
    return false;
}

/* Keys (and model sections) whose values differ between @a and @b, all of
 * them reported by apply_runtime's callback. @a's runtime keys take @b's
 * values: pass a scratch config. */
static int differences(sinkd_config *a, const sinkd_config *b, changes *ch)
{
    memset(ch, 0, sizeof *ch);
    cr_assert_geq(sinkd_config_apply_runtime(a, b, note, ch), 0);
    return ch->n;
}

/* One good and one bad value per key; the bad one must be refused with a
 * message naming the key, and leave the old value. */
static const struct {
    const char *section, *key, *good, *bad;
} cases[] = {
    { "server", "socket", "/run/a.sock", "relative.sock" },
    { "server", "socket", "/run/a.sock",
      "/a-path-that-is-far-too-long-for-sun-path-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
      "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy" },
    { "server", "socket_mode", "0644", "0800" },
    { "server", "socket_mode", "755", "rw-" },
    { "server", "socket_group", "@group", "no-such-group-sinkd" },
    { "server", "admin_group", "@group", "no-such-group-sinkd" },
    { "server", "max_frame", "1024", "1023" },
    { "server", "max_frame", "1G", "2G" },
    { "server", "max_output", "64K", "1K" },
    { "server", "max_output", "1MB", "1X" },
    { "server", "max_connections", "65536", "0" },
    { "server", "max_connections", "1", "-1" },
    { "server", "log_level", "err", "verbose" },
    { "server", "state_dir", "/var/lib/x", "var/lib/x" },
    { "engine", "backend", "cpu", "gpu" },
    { "engine", "threads", "1024", "1025" },
    { "engine", "kv_pool_bytes", "1T", "99999999999999999999" },
    { "engine", "kv_pool_fraction", "1", "0" },
    { "engine", "kv_pool_fraction", "0.5", "1.5" },
    { "engine", "kv_pool_fraction", "1e-3", "nan" },
    { "engine", "page_tokens", "256", "24" },
    { "engine", "page_tokens", "1", "512" },
    { "engine", "kv_dtype", "f16", "fp16" },
    { "engine", "kv_dtype", "f32", "q8_0" },
    { "engine", "prefill_chunk", "65536", "65537" },
    { "engine", "max_batch", "1024", "0" },
    { "engine", "head_dim_max", "256", "2048" },
    { "engine", "cuda_graphs", "off", "yes" },
    { "engine", "score_defer", "off", "maybe" },
    { "plugins", "dirs", "/a:/b/c", "/a::/b" },
    { "plugins", "dirs", "/a", "a:/b" },
    { "quota", "sessions_per_uid", "0", "x" },
    { "quota", "pages_per_uid", "12345", "1.5" },
    { "quota", "session_tokens", "8192", "-1" },
    { "quota", "generations_per_uid", "4", " 4x" },
    { "quota", "request_bytes", "0", "12Q" },
    { "quota", "shm_bytes_per_uid", "0", "2000T" },
    { "quota", "snapshots_per_uid", "0", "1048577" },
    { "quota", "snapshots_per_uid", "1048576", "-3" },
};

Test(config, every_key_good_and_bad)
{
    size_t nkeys;
    const sinkd_cfg_key *keys = sinkd_config_keys(&nkeys);

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *good = strcmp(cases[i].good, "@group") ? cases[i].good : some_group();
        sinkd_config before;
        int rc;

        /* Each case on fresh defaults, so @before and @cfg differ only by
         * what the bad value might change. */
        sinkd_config_free(&cfg);
        cr_assert_eq(sinkd_config_init(&cfg), 0);
        rc = sinkd_config_set(&cfg, cases[i].section, cases[i].key, good, "t", err, ERRLEN);
        cr_assert_eq(rc, 0, "%s.%s = %s: %s", cases[i].section, cases[i].key, good, err);
        /* The bad value must leave the config as it was. */
        cr_assert_eq(sinkd_config_init(&before), 0);
        cr_assert_eq(sinkd_config_set(&before, cases[i].section, cases[i].key, good, "t", err,
                                      ERRLEN), 0);
        err[0] = '\0';
        rc = sinkd_config_set(&cfg, cases[i].section, cases[i].key, cases[i].bad, "t:9", err,
                              ERRLEN);
        cr_assert_eq(rc, -EINVAL, "%s.%s accepted '%s'", cases[i].section, cases[i].key,
                     cases[i].bad);
        cr_assert(strstr(err, cases[i].key) && strstr(err, "t:9"), "message: %s", err);
        {
            changes ch;
            cr_assert_eq(differences(&before, &cfg, &ch), 0, "%s.%s changed after a refused value",
                         cases[i].section, cases[i].key);
        }
        sinkd_config_free(&before);
    }
    /* Every key of the table is covered above (model.path has its own test). */
    for (size_t k = 0; k < nkeys; k++) {
        bool seen = !strcmp(keys[k].section, "model");
        for (size_t i = 0; i < sizeof cases / sizeof cases[0] && !seen; i++)
            seen = !strcmp(cases[i].section, keys[k].section) && !strcmp(cases[i].key, keys[k].key);
        cr_assert(seen, "key [%s] %s has no test case", keys[k].section, keys[k].key);
    }
}

static void expect_load_error(const char *text, const char *needle)
{
    sinkd_config c;

    cr_assert_eq(sinkd_config_init(&c), 0);
    err[0] = '\0';
    cr_assert_lt(sinkd_config_load_string(&c, text, "f.conf", err, ERRLEN), 0,
                 "accepted: %s", text);
    cr_assert(strstr(err, needle), "expected '%s' in '%s'", needle, err);
    sinkd_config_free(&c);
}

Test(config, errors_name_the_key_and_the_line)
{
    expect_load_error("[server]\nlog_level = info\n\nbogus = 1\n",
                      "f.conf:4: unknown key 'bogus' in [server]");
    expect_load_error("# c\n[nosuch]\nx = 1\n", "f.conf:3: unknown section [nosuch]");
    expect_load_error("[engine]\nthreads = 2\nthreads = 3\n",
                      "f.conf:3: [engine] threads: repeated (first set on line 2)");
    expect_load_error("[server]\nmax_frame = 12 parsecs\n", "f.conf:2: [server] max_frame");
    expect_load_error("x = 1\n", "f.conf:1: key 'x' outside any [section]");
    expect_load_error("[server\nsocket = /a\n", "f.conf:1: syntax error");
    expect_load_error("[server]\nno equals sign here\n", "f.conf:2: syntax error");
    /* A continuation line is not a silent multi-line value. */
    expect_load_error("[server]\nsocket = /a\n  /b\n", "f.conf:3: syntax error");
    /* The first error wins, also when a syntax error follows. */
    expect_load_error("[server]\nmax_batch = 1\n[\n", "f.conf:2: unknown key 'max_batch'");
}

Test(config, long_line_is_an_error_not_a_split)
{
    char text[600];

    snprintf(text, sizeof text, "[server]\nstate_dir = /%0300d\n", 0);
    expect_load_error(text, "f.conf:2: line longer than");
}

Test(config, model_sections)
{
    const char *text = "[model \"llama-3.2_1b\"]\npath = /m/a.gguf\n"
                       "[model  \"tiny\"]\npath = /m/b.gguf\n";

    cr_assert_eq(sinkd_config_load_string(&cfg, text, "m.conf", err, ERRLEN), 0, "%s", err);
    cr_assert_eq(cfg.n_models, 2);
    cr_assert_str_eq(cfg.models[0].name, "llama-3.2_1b");
    cr_assert_str_eq(cfg.models[0].path, "/m/a.gguf");
    cr_assert_str_eq(cfg.models[1].name, "tiny");
    cr_assert_str_eq(cfg.models[1].path, "/m/b.gguf");
    expect_load_error("[model \"a\"]\npath = /x\n[model \"a\"]\npath = /y\n",
                      "f.conf:4: [model \"a\"] path: repeated");
    expect_load_error("[model \"a b\"]\npath = /x\n", "f.conf:2: bad section [model \"a b\"]");
    expect_load_error("[model a]\npath = /x\n", "f.conf:2: bad section [model a]");
    expect_load_error("[model \"\"]\npath = /x\n", "f.conf:2: bad section");
    expect_load_error("[model]\npath = /x\n", "f.conf:2: bad section [model]");
    expect_load_error("[model \"a\"]\nfile = /x\n", "f.conf:2: unknown key 'file' in [model \"a\"]");
    expect_load_error("[model \"a\"]\npath = x.gguf\n", "f.conf:2: [model] path: 'x.gguf'");
}

Test(config, flags_override_the_file)
{
    sinkd_config_overrides ov = SINKD_CONFIG_OVERRIDES_INIT;
    const char *text = "[server]\nlog_level = err\nsocket = /file.sock\n"
                       "[engine]\nbackend = cuda\n[model \"a\"]\npath = /file/a.gguf\n";

    cr_assert_eq(sinkd_config_load_string(&cfg, text, "o.conf", err, ERRLEN), 0, "%s", err);
    cr_assert_eq(sinkd_config_override_add(&ov, "server", "log_level", "debug", "--log-level"), 0);
    cr_assert_eq(sinkd_config_override_add(&ov, "server", "socket", "/flag.sock", "--socket"), 0);
    cr_assert_eq(sinkd_config_override_add(&ov, "engine", "backend", "cpu", "--backend"), 0);
    cr_assert_eq(sinkd_config_override_add(&ov, "model \"a\"", "path", "/flag/a.gguf", "--model"), 0);
    cr_assert_eq(sinkd_config_override_add(&ov, "model \"b\"", "path", "/flag/b.gguf", "--model"), 0);
    cr_assert_eq(sinkd_config_override_apply(&cfg, &ov, err, ERRLEN), 0, "%s", err);
    cr_assert_eq(cfg.log_level, SINKD_LOG_DEBUG);
    cr_assert_str_eq(cfg.socket, "/flag.sock");
    cr_assert_eq(cfg.backend, SINKD_BACKEND_CPU);
    cr_assert_eq(cfg.n_models, 2);
    cr_assert_str_eq(cfg.models[0].path, "/flag/a.gguf");
    cr_assert_str_eq(cfg.models[1].name, "b");
    sinkd_config_overrides_free(&ov);

    cr_assert_eq(sinkd_config_override_add(&ov, "server", "log_level", "loud", "--log-level"), 0);
    cr_assert_eq(sinkd_config_override_apply(&cfg, &ov, err, ERRLEN), -EINVAL);
    cr_assert(strstr(err, "--log-level") && strstr(err, "log_level"), "%s", err);
    cr_assert_eq(cfg.log_level, SINKD_LOG_DEBUG);
    sinkd_config_overrides_free(&ov);
    cr_assert_eq(ov.n, 0);
}

Test(config, read_applies_file_then_flags)
{
    char path[] = "/tmp/sinkd-config-XXXXXX";
    int fd = mkstemp(path);
    sinkd_config_overrides ov = SINKD_CONFIG_OVERRIDES_INIT;
    sinkd_config c;
    const char *text = "[server]\nmax_connections = 5\nlog_level = err\n";

    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    cr_assert_eq(sinkd_config_override_add(&ov, "server", "log_level", "notice", "--log-level"), 0);
    cr_assert_eq(sinkd_config_read(&c, path, &ov, err, ERRLEN), 0, "%s", err);
    cr_assert_eq(c.max_connections, 5);
    cr_assert_eq(c.log_level, SINKD_LOG_NOTICE);
    cr_assert_not_null(c.socket);
    cr_assert_not_null(c.state_dir);
    cr_assert_not_null(c.plugin_dirs);
    sinkd_config_free(&c);
    unlink(path);
    cr_assert_eq(sinkd_config_read(&c, path, &ov, err, ERRLEN), -ENOENT);
    cr_assert(strstr(err, path), "%s", err);
    sinkd_config_overrides_free(&ov);
}

Test(config, resolve_defaults_by_user)
{
    setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
    setenv("XDG_STATE_HOME", "/home/u/.st", 1);
    unsetenv("STATE_DIRECTORY");
    cr_assert_eq(sinkd_config_resolve(&cfg, 1000, err, ERRLEN), 0, "%s", err);
    cr_assert_str_eq(cfg.socket, "/run/user/1000/sinkd.sock");
    cr_assert_str_eq(cfg.state_dir, "/home/u/.st/sinkd");
    cr_assert_str_eq(cfg.plugin_dirs, SINKD_PLUGIN_DIR);
    sinkd_config_free(&cfg);

    cr_assert_eq(sinkd_config_init(&cfg), 0);
    setenv("STATE_DIRECTORY", "/var/lib/sinkd-unit", 1);
    cr_assert_eq(sinkd_config_resolve(&cfg, 0, err, ERRLEN), 0, "%s", err);
    cr_assert_str_eq(cfg.socket, "/run/sinkd/sinkd.sock");
    cr_assert_str_eq(cfg.state_dir, "/var/lib/sinkd-unit");
    sinkd_config_free(&cfg);

    /* A user without XDG_RUNTIME_DIR must name the socket. */
    cr_assert_eq(sinkd_config_init(&cfg), 0);
    unsetenv("XDG_RUNTIME_DIR");
    cr_assert_eq(sinkd_config_resolve(&cfg, 1000, err, ERRLEN), -ENOENT);
    cr_assert(strstr(err, "--socket"), "%s", err);
    /* Explicit values are kept. */
    cr_assert_eq(sinkd_config_set(&cfg, "server", "socket", "/s.sock", "t", err, ERRLEN), 0);
    cr_assert_eq(sinkd_config_resolve(&cfg, 1000, err, ERRLEN), 0, "%s", err);
    cr_assert_str_eq(cfg.socket, "/s.sock");
}

/* systemd/sinkd.conf documents every key, commented out with its default:
 * uncommenting every "#key = value" line must give exactly the defaults. */
Test(config, example_config_documents_every_key_with_its_default)
{
    FILE *f = fopen(SINKD_SOURCE_DIR "/systemd/sinkd.conf", "r");
    char line[512], *text = calloc(1, 65536);
    size_t nkeys, used = 0;
    const sinkd_cfg_key *keys = sinkd_config_keys(&nkeys);
    sinkd_config ex;

    cr_assert_not_null(f);
    cr_assert_not_null(text);
    while (fgets(line, sizeof line, f)) {
        const char *p = line;
        /* "#key = value" and "#[section]" are the documented settings;
         * "# prose" (hash, space) stays a comment. */
        if (p[0] == '#' && p[1] != ' ' && p[1] != '\n' && p[1] != '#')
            p++;
        used += (size_t)snprintf(text + used, 65536 - used, "%s", p);
    }
    fclose(f);
    cr_assert_eq(sinkd_config_init(&ex), 0);
    cr_assert_eq(sinkd_config_load_string(&ex, text, "sinkd.conf", err, ERRLEN), 0, "%s", err);
    {
        changes ch;
        int n = differences(&cfg, &ex, &ch);
        cr_assert_eq(n, 1, "sinkd.conf differs from the defaults in %s", ch.seen[0]);
        cr_assert_str_eq(ch.seen[0], "model \"llama-3.2-1b\".path");
    }
    for (size_t k = 0; k < nkeys; k++) {
        char needle[96];
        snprintf(needle, sizeof needle, "\n%s =", keys[k].key);
        cr_assert(strstr(text, needle), "sinkd.conf does not document %s", keys[k].key);
    }
    cr_assert_eq(ex.n_models, 1, "sinkd.conf shows one [model \"NAME\"] example");
    sinkd_config_free(&ex);
    free(text);
}

Test(config, reload_swaps_runtime_keys_only)
{
    sinkd_config fresh;
    changes ch = { 0 };
    const char *g = some_group();
    char text[512];

    cr_assert_eq(sinkd_config_load_string(&cfg, "[model \"a\"]\npath = /a\n", "old", err, ERRLEN),
                 0);
    snprintf(text, sizeof text,
             "[server]\nlog_level = debug\nmax_output = 1M\nadmin_group = %s\n"
             "max_frame = 2M\nmax_connections = 3\n"
             "[quota]\nsessions_per_uid = 1\npages_per_uid = 2\ngenerations_per_uid = 3\n"
             "request_bytes = 4K\nsnapshots_per_uid = 5\nshm_bytes_per_uid = 1M\n[engine]\nbackend = cpu\n[model \"b\"]\npath = /b\n", g);
    cr_assert_eq(sinkd_config_init(&fresh), 0);
    cr_assert_eq(sinkd_config_load_string(&fresh, text, "new", err, ERRLEN), 0, "%s", err);
    cr_assert_eq(sinkd_config_apply_runtime(&cfg, &fresh, note, &ch), 3);
    sinkd_config_free(&fresh);
    /* swapped in */
    cr_assert_eq(cfg.log_level, SINKD_LOG_DEBUG);
    cr_assert_eq(cfg.max_output, 1u << 20);
    cr_assert_str_eq(cfg.admin_group.name, g);
    /* kept until a restart, and reported: the engine copies the quotas and
     * the KV store's per-uid budget when it starts */
    cr_assert_eq(cfg.sessions_per_uid, 64);
    cr_assert_eq(cfg.pages_per_uid, 0);
    cr_assert_eq(cfg.generations_per_uid, 8);
    cr_assert_eq(cfg.request_bytes, 256u << 20);
    cr_assert_eq(cfg.shm_bytes_per_uid, 64ull << 30);
    cr_assert_eq(cfg.snapshots_per_uid, 16);
    cr_assert(noted(&ch, "quota.sessions_per_uid", false));
    cr_assert(noted(&ch, "quota.shm_bytes_per_uid", false));
    cr_assert(noted(&ch, "quota.snapshots_per_uid", false));
    cr_assert_eq(cfg.max_frame, 16u << 20);
    cr_assert_eq(cfg.max_connections, 256);
    cr_assert_eq(cfg.backend, SINKD_BACKEND_AUTO);
    cr_assert_eq(cfg.n_models, 1);
    cr_assert_str_eq(cfg.models[0].name, "a");
    cr_assert(noted(&ch, "server.log_level", true));
    cr_assert(noted(&ch, "server.max_frame", false));
    cr_assert(noted(&ch, "engine.backend", false));
    cr_assert(noted(&ch, "model \"b\".path", false));
    cr_assert(noted(&ch, "model \"a\".path", false));
}

Test(config, reload_with_a_bad_file_keeps_the_old_config)
{
    char path[] = "/tmp/sinkd-config-XXXXXX";
    int fd = mkstemp(path);
    const char *bad = "[server]\nlog_level = debug\nmax_output = lots\n";
    sinkd_config fresh;

    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, bad, strlen(bad)), (ssize_t)strlen(bad));
    close(fd);
    /* What the daemon does on SIGHUP: read fully, swap only on success. */
    cr_assert_eq(sinkd_config_read(&fresh, path, NULL, err, ERRLEN), -EINVAL);
    cr_assert(strstr(err, ":3: [server] max_output: 'lots'"), "%s", err);
    cr_assert_eq(cfg.log_level, SINKD_LOG_INFO);
    cr_assert_eq(cfg.max_output, 64u << 20);
    unlink(path);
}
