/*
 * Shared helpers of the client tests: a daemon serving the tiny reference
 * model on the CPU, the golden greedy outputs of that model, and running
 * sinkctl (or any program) as a child with given stdin, capturing stdout.
 * Header-only (static functions): each test executable includes it once.
 */
#ifndef SINKD_CLIENT_CHECK_H
#define SINKD_CLIENT_CHECK_H

#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "sinkd_testd.h"

#define CHECK_TIMEOUT_MS 30000
#define CHECK_MODEL SINKD_TEST_DATA "/sinkd-ref-tiny-f32.gguf"
#define CHECK_GOLDEN SINKD_TEST_DATA "/golden-tiny.txt"
#define CHECK_SINKCTL SINKD_BINARY_DIR "/client/sinkctl"
#define CHECK_GREEDY_MAX 64

/* The daemon of the current test (Criterion runs each test in its own
 * process; each suite's .init starts a fresh one). */
static sinkd_testd check_daemon = SINKD_TESTD_INIT;

/* Start the daemon with @server_conf (may be "") as its [server] section. */
static inline void check_daemon_start_with(const char *server_conf)
{
    static const char *const args[] = { "--model", "tiny=" CHECK_MODEL, "--backend", "cpu",
                                         NULL };
    char conf[512];
    snprintf(conf, sizeof(conf), "[server]\n%s[engine]\nkv_pool_bytes = 64M\n", server_conf);
    int rc = sinkd_testd_start(&check_daemon, conf, args);
    cr_assert_eq(rc, 0, "sinkd did not start (%d)", rc);
}

static inline void check_daemon_start(void)
{
    check_daemon_start_with("");
}

/* Start it with [server] state_dir = @state_dir: the daemon's own directory
 * is new at every start, this one keeps persistent sessions and snapshots
 * across a restart. */
static inline void check_daemon_start_state(const char *state_dir)
{
    char line[256];
    cr_assert_lt((size_t)snprintf(line, sizeof(line), "state_dir = %s\n", state_dir),
                 sizeof(line));
    check_daemon_start_with(line);
}

static inline void check_daemon_stop(void)
{
    int status = check_daemon.pid > 0 ? sinkd_testd_stop(&check_daemon)
                                      : check_daemon.exit_status;
    sinkd_testd_free(&check_daemon);
    cr_expect_eq(status, 0, "sinkd exit status %d", status);
}

static inline sinkd_client *check_connect(void)
{
    sinkd_client *c = NULL;
    int rc = sinkd_client_connect(check_daemon.socket_path, CHECK_TIMEOUT_MS, &c);
    cr_assert_eq(rc, 0, "connect: %s", sinkd_client_strerror(rc));
    return c;
}

/* One case of golden-tiny.txt: computed by an independent float64 forward
 * (see /shared/models/README.md in the model's documentation). */
typedef struct check_golden {
    char prompt[128];                 /* NUL-terminated prompt bytes */
    int32_t prompt_ids[128];
    size_t n_prompt;
    int32_t greedy[CHECK_GREEDY_MAX];
    size_t n_greedy;
    float logits[512];                /* at the prompt's last position */
    size_t n_logits;
} check_golden;

#define CHECK_GOLDEN_CASES 3

/* All cases of the golden file into @g[CHECK_GOLDEN_CASES]. The file is
 * "KEY N v1 .. vN" lists; "prompt_hex HEX" starts a case. */
static inline void check_golden_load(check_golden *g)
{
    memset(g, 0, CHECK_GOLDEN_CASES * sizeof(*g));
    FILE *f = fopen(CHECK_GOLDEN, "r");
    cr_assert_not_null(f, "%s: %s", CHECK_GOLDEN, strerror(errno));
    char key[32];
    int k = -1;
    while (fscanf(f, "%31s", key) == 1) {
        if (strcmp(key, "prompt_hex") == 0) {
            cr_assert_lt(++k, CHECK_GOLDEN_CASES);
            char hex[2 * sizeof(g->prompt)];
            cr_assert_eq(fscanf(f, "%255s", hex), 1);
            for (size_t i = 0; 2 * i + 1 < strlen(hex); i++) {
                unsigned b;
                cr_assert_eq(sscanf(hex + 2 * i, "%2x", &b), 1);
                g[k].prompt[i] = (char)b;
            }
            continue;
        }
        size_t n = 0;
        cr_assert_eq(fscanf(f, "%zu", &n), 1, "%s", key);
        if (strcmp(key, "cases") == 0)
            continue;
        cr_assert_geq(k, 0);
        cr_assert_leq(n, 512);
        for (size_t i = 0; i < n; i++) {
            double v;
            cr_assert_eq(fscanf(f, "%lf", &v), 1, "%s[%zu]", key, i);
            if (strcmp(key, "prompt_ids") == 0 && i < 128)
                g[k].prompt_ids[i] = (int32_t)v;
            else if (strcmp(key, "greedy_ids") == 0 && i < CHECK_GREEDY_MAX)
                g[k].greedy[i] = (int32_t)v;
            else if (strcmp(key, "last_logits") == 0)
                g[k].logits[i] = (float)v;
        }
        if (strcmp(key, "prompt_ids") == 0)
            g[k].n_prompt = n;
        else if (strcmp(key, "greedy_ids") == 0)
            g[k].n_greedy = n;
        else if (strcmp(key, "last_logits") == 0)
            g[k].n_logits = n;
    }
    fclose(f);
    cr_assert_eq(k + 1, CHECK_GOLDEN_CASES);
    for (int i = 0; i < CHECK_GOLDEN_CASES; i++)
        cr_assert(g[i].n_greedy > 0 && g[i].n_greedy <= CHECK_GREEDY_MAX &&
                  g[i].n_prompt <= 128 && g[i].n_logits > 0);
}

/* The tiny model's vocabulary, written down from its documentation: id
 * 3..258 is the byte id-3, 259 is a space; 0..2 (unk, BOS, EOS) have no
 * text. Writes NUL-terminated text of @n ids into @out. */
static inline void check_detok(const int32_t *ids, size_t n, char *out, size_t cap)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        cr_assert_lt(len + 1, cap);
        if (ids[i] == 259)
            out[len++] = ' ';
        else if (ids[i] >= 3 && ids[i] <= 258)
            out[len++] = (char)(ids[i] - 3);
    }
    out[len] = '\0';
}

/* Result of one child process. */
typedef struct check_run {
    int status;       /* exit code, or 128 + signal */
    char *out;        /* stdout, NUL-terminated, malloc'ed */
    size_t out_len;
    char *err;        /* stderr, likewise */
} check_run;

static inline char *check_slurp_fd(int fd, size_t *len)
{
    /* pread, never lseek + read: a child still writing shares the file
     * offset, and a read that moved it put the child's next bytes over the
     * start of the file (a flaky chat test read "sof the a") */
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    cr_assert_not_null(buf);
    for (;;) {
        if (n + 1 == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            cr_assert_not_null(buf);
        }
        ssize_t r = pread(fd, buf + n, cap - n - 1, (off_t)n);
        cr_assert_geq(r, 0);
        if (r == 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    if (len != NULL)
        *len = n;
    return buf;
}

/* Run @argv (argv[0] a path) with @input (may be NULL: empty) on stdin,
 * stdout and stderr into memory files. */
static inline check_run check_exec(char *const argv[], const char *input)
{
    int in = memfd_create("stdin", MFD_CLOEXEC);
    int out = memfd_create("stdout", MFD_CLOEXEC);
    int err = memfd_create("stderr", MFD_CLOEXEC);
    cr_assert(in >= 0 && out >= 0 && err >= 0);
    size_t ilen = input != NULL ? strlen(input) : 0;
    cr_assert_eq(write(in, input != NULL ? input : "", ilen), (ssize_t)ilen);
    cr_assert_eq(lseek(in, 0, SEEK_SET), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(in, 0);
        dup2(out, 1);
        dup2(err, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    int ws;
    cr_assert_eq(waitpid(pid, &ws, 0), pid);
    check_run r = { .status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws) };
    r.out = check_slurp_fd(out, &r.out_len);
    r.err = check_slurp_fd(err, NULL);
    close(in);
    close(out);
    close(err);
    return r;
}

static inline void check_run_free(check_run *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

/* Run sinkctl --socket <the daemon> followed by the NULL-terminated
 * arguments in @args. */
static inline check_run check_sinkctl(const char *input, const char *const *args)
{
    char *argv[32];
    size_t n = 0;
    argv[n++] = (char *)CHECK_SINKCTL;
    argv[n++] = (char *)"--socket";
    argv[n++] = check_daemon.socket_path;
    for (size_t i = 0; args[i] != NULL; i++) {
        cr_assert_lt(n + 1, sizeof(argv) / sizeof(argv[0]));
        argv[n++] = (char *)args[i];
    }
    argv[n] = NULL;
    return check_exec(argv, input);
}

#define CHECK_SINKCTL_RUN(input, ...) \
    check_sinkctl((input), (const char *const[]){ __VA_ARGS__, NULL })

#endif /* SINKD_CLIENT_CHECK_H */
