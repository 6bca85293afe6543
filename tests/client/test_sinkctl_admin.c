/*
 * sinkctl's listing and control commands against the real daemon serving
 * the tiny reference model: sessions and session stats/close, policy
 * ls/show and, with a real plugin in a private directory, load, reload and
 * unload; exit codes and per-command help.
 */
#include "client_check.h"

TestSuite(sinkctl, .init = check_daemon_start, .fini = check_daemon_stop, .timeout = 120);

static check_golden golden[CHECK_GOLDEN_CASES];

Test(sinkctl, sessions_and_session_stats)
{
    check_golden_load(golden);
    sinkd_client *c = check_connect();
    sinkd_client_session_info info;
    int rc = sinkd_client_session_open(c, NULL, CHECK_TIMEOUT_MS, &info);
    cr_assert_eq(rc, 0, "open: %s %s", sinkd_client_strerror(rc), sinkd_client_errmsg(c));
    rc = sinkd_client_session_append(c, info.session, golden[2].prompt_ids, golden[2].n_prompt,
                                     0, CHECK_TIMEOUT_MS, NULL);
    cr_assert_eq(rc, 0, "append: %s %s", sinkd_client_strerror(rc), sinkd_client_errmsg(c));
    size_t n = golden[2].n_prompt;

    check_run r = CHECK_SINKCTL_RUN(NULL, "sessions");
    cr_assert_eq(r.status, 0, "%s", r.err);
    char id[32];
    snprintf(id, sizeof(id), "\n%llu ", (unsigned long long)info.session);
    const char *row = strstr(r.out, id);
    cr_assert_not_null(row, "%s", r.out);
    unsigned long long uid, tokens;
    char model[32], policy[32], state[16];
    cr_assert_eq(sscanf(row + strlen(id), "%llu %31s %31s %llu %*u %*s %*s %15s", &uid, model,
                        policy, &tokens, state), 5, "%s", row);
    cr_expect_eq(uid, (unsigned long long)getuid());
    cr_expect_str_eq(model, "tiny");
    cr_expect_str_eq(policy, "full");
    cr_expect_eq(tokens, n);
    cr_expect_str_eq(state, "idle");
    check_run_free(&r);

    char sid[32];
    snprintf(sid, sizeof(sid), "%llu", (unsigned long long)info.session);
    r = CHECK_SINKCTL_RUN(NULL, "session", "stats", sid);
    cr_assert_eq(r.status, 0, "%s", r.err);
    char line[64];
    snprintf(line, sizeof(line), "\ntokens     %zu\n", n);
    cr_expect_not_null(strstr(r.out, line), "%s", r.out);
    cr_expect_not_null(strstr(r.out, "\nevictions  0 (0 tokens)\n"), "%s", r.out);
    /* full policy: every lane of every layer holds every token */
    for (int layer = 0; layer < 4; layer++) {
        snprintf(line, sizeof(line), "\n%-6d %8zu %10.1f %8zu ", layer, n, (double)n, n);
        cr_expect_not_null(strstr(r.out, line), "layer %d: %s", layer, r.out);
    }
    check_run_free(&r);

    r = CHECK_SINKCTL_RUN(NULL, "--json", "session", "stats", sid);
    cr_assert_eq(r.status, 0, "%s", r.err);
    snprintf(line, sizeof(line), "\"tokens\":%zu,", n);
    cr_expect_not_null(strstr(r.out, line), "%s", r.out);
    check_run_free(&r);

    r = CHECK_SINKCTL_RUN(NULL, "session", "close", sid);
    cr_expect_eq(r.status, 0, "%s", r.err);
    check_run_free(&r);
    r = CHECK_SINKCTL_RUN(NULL, "session", "stats", sid);
    cr_expect_eq(r.status, 1, "stats of a closed session: %d %s", r.status, r.err);
    cr_expect_not_null(strstr(r.err, "not_found"), "%s", r.err);
    check_run_free(&r);
    sinkd_client_close(c);
}

Test(sinkctl, policy_ls_and_show)
{
    check_run r = CHECK_SINKCTL_RUN(NULL, "policy", "ls");
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "\nfull "), "%s", r.out);
    cr_expect_not_null(strstr(r.out, "\nwindow "), "%s", r.out);
    check_run_free(&r);

    r = CHECK_SINKCTL_RUN(NULL, "policy", "show", "window");
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_eq(strncmp(r.out, "name        window\n", 18), 0, "%s", r.out);
    cr_expect_not_null(strstr(r.out, "\nkind        builtin\n"), "%s", r.out);
    check_run_free(&r);

    r = CHECK_SINKCTL_RUN(NULL, "--json", "policy", "show", "full");
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_eq(strncmp(r.out, "{\"name\":\"full\",", 15), 0, "%s", r.out);
    cr_expect_not_null(strstr(r.out, "\"builtin\":true"), "%s", r.out);
    check_run_free(&r);

    r = CHECK_SINKCTL_RUN(NULL, "policy", "show", "no-such-policy");
    cr_expect_eq(r.status, 1, "%s", r.err);
    check_run_free(&r);
}

/* A usage error names the option as typed: long options too, whose
 * getopt code is no character (it printed as garbage before). */
Test(sinkctl, option_errors_name_the_option)
{
    static const struct {
        const char *args[4];
        const char *msg;
    } cases[] = {
        { { "run", "x", "--model" }, "missing argument for '--model'" },
        { { "models", "--timeout" }, "missing argument for '--timeout'" },
        { { "--json=1", "models" }, "option '--json' takes no value" },
        { { "models", "--frob=2" }, "unknown option '--frob'" },
        { { "run", "-n" }, "missing argument for '-n'" },
        { { "run", "-Z", "x" }, "unknown option '-Z'" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        check_run r = check_sinkctl(NULL, cases[i].args);
        cr_expect_eq(r.status, 2, "%s %s: exit %d", cases[i].args[0], cases[i].args[1], r.status);
        cr_expect(strstr(r.err, cases[i].msg) != NULL, "%s %s: stderr '%s' lacks \"%s\"",
                  cases[i].args[0], cases[i].args[1], r.err, cases[i].msg);
        check_run_free(&r);
    }
}

Test(sinkctl, exit_codes)
{
    static const struct {
        int status;
        const char *args[6];
    } cases[] = {
        { 1, { "run", "--model", "no-such-model", "x" } },
        { 1, { "tokenize", "--model", "no-such-model", "x" } },
        { 1, { "session", "stats", "987654" } },
        { 1, { "policy", "unload", "no-such-policy" } },
        { 2, { "run" } },
        { 2, { "run", "-n", "0", "x" } },
        { 2, { "run", "--temp", "hot", "x" } },
        { 2, { "run", "window=4", "x" } },          /* parameters need --policy */
        { 2, { "chat", "--policy", "window", "not-a-param" } },
        { 2, { "tokenize" } },
        { 2, { "session", "frob", "1" } },
        { 2, { "session", "stats", "x" } },
        { 2, { "policy" } },
        { 2, { "models", "extra" } },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *const *a = cases[i].args;
        check_run r = check_sinkctl(NULL, a);
        cr_expect_eq(r.status, cases[i].status, "%s %s: exit %d, stderr: %s", a[0],
                     a[1] ? a[1] : "", r.status, r.err);
        cr_expect_neq(r.err[0], '\0', "%s: no message on stderr", a[0]);
        check_run_free(&r);
    }

    char *argv[] = { (char *)CHECK_SINKCTL, (char *)"--socket", (char *)"/nonexistent/sinkd.sock",
                     (char *)"run", (char *)"x", NULL };
    check_run r = check_exec(argv, NULL);
    cr_expect_eq(r.status, 3, "%s", r.err);
    check_run_free(&r);

    static const char *const helped[] = { "run", "chat", "tokenize", "models", "sessions",
                                          "session", "policy" };
    for (size_t i = 0; i < sizeof(helped) / sizeof(helped[0]); i++) {
        /* Help only: nothing else happens, nothing goes to stderr. */
        r = CHECK_SINKCTL_RUN(NULL, helped[i], "--help");
        cr_expect_eq(r.status, 0, "%s --help", helped[i]);
        char usage[64];
        snprintf(usage, sizeof(usage), "usage: sinkctl [GLOBAL OPTIONS] %s", helped[i]);
        cr_expect_eq(strncmp(r.out, usage, strlen(usage)), 0, "%s", r.out);
        cr_expect_str_eq(r.err, "", "%s --help", helped[i]);
        check_run_free(&r);
    }
}

/* eval sends the text in one frame, less room for the request's other
 * fields: under a daemon whose max_frame is below that room (1K is allowed)
 * it still reads a text instead of asking for ~2^64 bytes. */
Test(sinkctl, eval_under_a_small_max_frame)
{
    check_daemon_stop();
    check_daemon_start_with("max_frame = 2K\n");
    char path[] = "/tmp/sinkd-eval-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    static const char text[] = "Once upon a time there was a little cat. The cat sat on the mat "
                               "and looked at the moon for a long time.\n";
    cr_assert_eq(write(fd, text, sizeof(text) - 1), (ssize_t)(sizeof(text) - 1));
    close(fd);
    check_run r = CHECK_SINKCTL_RUN(NULL, "eval", "ppl", "--policy", "window", "window=16",
                                    "--text", path);
    cr_expect_eq(r.status, 0, "exit %d: %s", r.status, r.err);
    check_run_free(&r);
    /* a report that cannot be written is a local I/O error (3), not the
     * daemon's (1) */
    r = CHECK_SINKCTL_RUN(NULL, "eval", "ppl", "--policy", "window", "window=16", "--text", path,
                          "--json-out", "/nonexistent-dir/report.json");
    unlink(path);
    cr_expect_eq(r.status, 3, "exit %d: %s", r.status, r.err);
    cr_expect_not_null(strstr(r.err, "/nonexistent-dir/report.json"), "%s", r.err);
    check_run_free(&r);
}

/* --- policy load, reload, unload with a real plugin ---------------------- */

#define PLUGIN_SRC SINKD_PLUGIN_BUILD_DIR "/h2o.so"

static char plugin_dir[64];
static char plugin_path[128];

/* A private plugin directory holding a copy of the h2o plugin, and a daemon
 * that scans it. */
static void plugin_daemon_start(void)
{
    snprintf(plugin_dir, sizeof(plugin_dir), "/tmp/sinkd-plugins-XXXXXX");
    cr_assert_not_null(mkdtemp(plugin_dir));
    cr_assert_eq(chmod(plugin_dir, 0755), 0);
    snprintf(plugin_path, sizeof(plugin_path), "%s/h2o.so", plugin_dir);
    int in = open(PLUGIN_SRC, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(in, 0, "%s: %s", PLUGIN_SRC, strerror(errno));
    size_t len;
    char *bytes = check_slurp_fd(in, &len);
    close(in);
    int out = open(plugin_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    cr_assert_geq(out, 0);
    cr_assert_eq(write(out, bytes, len), (ssize_t)len);
    close(out);
    free(bytes);

    char config[256];
    snprintf(config, sizeof(config), "[engine]\nkv_pool_bytes = 64M\n[plugins]\ndirs = %s\n",
             plugin_dir);
    static const char *const args[] = { "--model", "tiny=" CHECK_MODEL, "--backend", "cpu",
                                         NULL };
    cr_assert_eq(sinkd_testd_start(&check_daemon, config, args), 0, "sinkd did not start");
}

static void plugin_daemon_stop(void)
{
    check_daemon_stop();
    unlink(plugin_path);
    rmdir(plugin_dir);
}

/* The generation `policy show NAME` prints, or -1 with exit status 1. */
static long long shown_generation(const char *name)
{
    check_run r = CHECK_SINKCTL_RUN(NULL, "policy", "show", name);
    long long gen = -1;
    const char *g = strstr(r.out, "\ngeneration  ");
    if (r.status == 0 && g != NULL)
        gen = atoll(g + 13);
    else
        cr_expect_eq(r.status, 1, "%s", r.err);
    check_run_free(&r);
    return gen;
}

TestSuite(plugins, .init = plugin_daemon_start, .fini = plugin_daemon_stop, .timeout = 120);

Test(plugins, load_reload_unload)
{
    check_run r = CHECK_SINKCTL_RUN(NULL, "policy", "ls");
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "\nh2o "), "the scan loaded it: %s", r.out);
    check_run_free(&r);
    long long gen = shown_generation("h2o");
    cr_assert_geq(gen, 0);

    if (getuid() != 0) {
        r = CHECK_SINKCTL_RUN(NULL, "policy", "reload", "h2o");
        cr_expect_eq(r.status, 1, "non-admin: %s", r.err);
        cr_expect_not_null(strstr(r.err, "permission_denied"), "%s", r.err);
        check_run_free(&r);
        return;
    }

    /* The same file again is refused; a changed one is a new generation. */
    r = CHECK_SINKCTL_RUN(NULL, "policy", "reload", "h2o");
    cr_expect_eq(r.status, 1, "unchanged file: %s", r.err);
    check_run_free(&r);
    struct timespec later[2] = { { 0, UTIME_OMIT }, { 2000000000, 0 } };
    cr_assert_eq(utimensat(AT_FDCWD, plugin_path, later, 0), 0);
    r = CHECK_SINKCTL_RUN(NULL, "policy", "reload", "h2o");
    cr_expect_eq(r.status, 0, "%s", r.err);
    char want[64];
    snprintf(want, sizeof(want), "reloaded, generation %lld\n", gen + 1);
    cr_expect_str_eq(r.out, want);
    check_run_free(&r);
    cr_expect_eq(shown_generation("h2o"), gen + 1);

    r = CHECK_SINKCTL_RUN(NULL, "policy", "unload", "h2o");
    cr_expect_eq(r.status, 0, "%s", r.err);
    check_run_free(&r);
    cr_expect_eq(shown_generation("h2o"), -1, "gone after unload");

    r = CHECK_SINKCTL_RUN(NULL, "--json", "policy", "load", plugin_path);
    cr_expect_eq(r.status, 0, "%s", r.err);
    /* --json prints the daemon's reply map */
    cr_expect_not_null(strstr(r.out, "\"ok\":true,\"name\":\"h2o\"}\n"), "%s", r.out);
    check_run_free(&r);
    cr_expect_geq(shown_generation("h2o"), 0, "back after load");

    /* a path that resolves to the file is answered like its own name */
    r = CHECK_SINKCTL_RUN(NULL, "policy", "unload", "h2o");
    cr_expect_eq(r.status, 0, "%s", r.err);
    check_run_free(&r);
    char odd[160];
    snprintf(odd, sizeof(odd), "%s//./h2o.so", plugin_dir);
    r = CHECK_SINKCTL_RUN(NULL, "--json", "policy", "load", odd);
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "\"ok\":true,\"name\":\"h2o\"}\n"), "%s", r.out);
    check_run_free(&r);

    r = CHECK_SINKCTL_RUN(NULL, "policy", "load", PLUGIN_SRC);
    cr_expect_eq(r.status, 1, "outside the plugin directories: %s", r.err);
    check_run_free(&r);
}
