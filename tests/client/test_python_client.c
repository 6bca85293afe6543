/*
 * client/python/sinkd_client.py against the real daemon: its streamed greedy
 * generation equals `sinkctl run` and the golden tokens. Skipped when no
 * python3 with the msgpack module is installed.
 */
#include "client_check.h"

TestSuite(python, .init = check_daemon_start, .fini = check_daemon_stop, .timeout = 120);

#define CLIENT_PY SINKD_SOURCE_DIR "/client/python/sinkd_client.py"

/* The first python3 that can import msgpack, or NULL. */
static const char *find_python(void)
{
    static const char *const candidates[] = { "/usr/bin/python3", "/usr/local/bin/python3",
                                              "/bin/python3" };
    for (size_t i = 0; i < sizeof(candidates) / sizeof(candidates[0]); i++) {
        if (access(candidates[i], X_OK) != 0)
            continue;
        char *argv[] = { (char *)candidates[i], (char *)"-c", (char *)"import msgpack", NULL };
        check_run r = check_exec(argv, NULL);
        int status = r.status;
        check_run_free(&r);
        if (status == 0)
            return candidates[i];
    }
    return NULL;
}

static check_golden golden[CHECK_GOLDEN_CASES];

Test(python, streams_the_same_text_as_sinkctl)
{
    const char *py = find_python();
    if (py == NULL)
        cr_skip_test("no python3 with the msgpack module (Debian: python3-msgpack)");
    check_golden_load(golden);
    for (int k = 0; k < CHECK_GOLDEN_CASES; k++) {
        char n[16], want[CHECK_GREEDY_MAX + 1];
        snprintf(n, sizeof(n), "%zu", golden[k].n_greedy);
        check_detok(golden[k].greedy, golden[k].n_greedy, want, sizeof(want));

        char *argv[] = { (char *)py, (char *)CLIENT_PY, (char *)"--socket",
                         check_daemon.socket_path, (char *)"-n", n, golden[k].prompt, NULL };
        check_run r = check_exec(argv, NULL);
        cr_assert_eq(r.status, 0, "case %d: exit %d: %s", k, r.status, r.err);
        check_run c = CHECK_SINKCTL_RUN(NULL, "run", "-n", n, golden[k].prompt);
        cr_assert_eq(c.status, 0, "%s", c.err);
        cr_expect_str_eq(r.out, c.out, "case %d: python vs sinkctl", k);
        cr_expect_str_eq(r.out, want, "case %d: python vs golden", k);
        cr_expect_not_null(strstr(r.err, ", length]"), "%s", r.err);
        check_run_free(&c);
        check_run_free(&r);
    }

    /* An unknown model is the daemon's error: exit 1 with its code. */
    char *argv[] = { (char *)py, (char *)CLIENT_PY, (char *)"--socket",
                     check_daemon.socket_path, (char *)"--model", (char *)"no-such-model",
                     (char *)"x", NULL };
    check_run r = check_exec(argv, NULL);
    cr_expect_eq(r.status, 1, "%s", r.err);
    cr_expect_not_null(strstr(r.err, "not_found"), "%s", r.err);
    check_run_free(&r);
}
