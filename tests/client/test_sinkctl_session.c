/*
 * sinkctl's generation and text commands against the real daemon serving
 * the tiny reference model: run (greedy output equals the golden tokens,
 * decoded from the model's documented byte vocabulary), chat over a pipe
 * with Ctrl-C, tokenize, models. Sessions, policies and exit codes are in
 * test_sinkctl_admin.c.
 */
#include "client_check.h"

TestSuite(sinkctl, .init = check_daemon_start, .fini = check_daemon_stop, .timeout = 120);

static check_golden golden[CHECK_GOLDEN_CASES];

Test(sinkctl, run_greedy_equals_golden)
{
    check_golden_load(golden);
    for (int k = 0; k < CHECK_GOLDEN_CASES; k++) {
        char n[16], want[CHECK_GREEDY_MAX + 1];
        snprintf(n, sizeof(n), "%zu", golden[k].n_greedy);
        check_detok(golden[k].greedy, golden[k].n_greedy, want, sizeof(want));
        check_run r = CHECK_SINKCTL_RUN(NULL, "run", "-n", n, golden[k].prompt);
        cr_assert_eq(r.status, 0, "case %d: exit %d: %s", k, r.status, r.err);
        /* stdout is not a terminal: exactly the generated text, no newline */
        cr_expect_str_eq(r.out, want, "case %d", k);
        char stats[64];
        snprintf(stats, sizeof(stats), "[%zu tokens, ", golden[k].n_greedy);
        cr_expect_not_null(strstr(r.err, stats), "case %d stderr: %s", k, r.err);
        cr_expect_not_null(strstr(r.err, "tokens/s"), "%s", r.err);
        cr_expect_not_null(strstr(r.err, ", length]"), "%s", r.err);
        check_run_free(&r);
    }
}

Test(sinkctl, run_prompt_from_stdin_and_json)
{
    check_golden_load(golden);
    char want[CHECK_GREEDY_MAX + 1];
    check_detok(golden[1].greedy, 5, want, sizeof(want));

    check_run r = CHECK_SINKCTL_RUN(golden[1].prompt, "run", "-n", "5", "-");
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_str_eq(r.out, want);
    check_run_free(&r);

    r = CHECK_SINKCTL_RUN(NULL, "--json", "run", "-n", "5", golden[1].prompt);
    cr_assert_eq(r.status, 0, "%s", r.err);
    size_t events = 0;
    for (const char *p = r.out; (p = strstr(p, "{\"ev\":\"token\"")) != NULL; p++)
        events++;
    cr_expect_eq(events, 5, "%s", r.out);
    char token[64];
    snprintf(token, sizeof(token), "{\"ev\":\"token\",\"token\":%d,", golden[1].greedy[0]);
    cr_expect_eq(strncmp(r.out, token, strlen(token)), 0, "%s", r.out);
    cr_expect_not_null(strstr(r.out, "\"reason\":\"length\",\"n_tokens\":5,"), "%s", r.out);
    char prompt_tokens[48];
    snprintf(prompt_tokens, sizeof(prompt_tokens), "\"prompt_tokens\":%zu,", golden[1].n_prompt);
    cr_expect_not_null(strstr(r.out, prompt_tokens), "%s", r.out);
    check_run_free(&r);
}

/* A generation that ends (by length) while the start of a stop string is
 * held back prints it all the same: the output is the golden text of its
 * 30 tokens, whose last one ends inside "the" (" of the same of th"). */
Test(sinkctl, run_prints_text_held_back_for_a_stop_string)
{
    check_golden_load(golden);
    cr_assert_str_eq(golden[0].prompt, "Once upon a time");
    cr_assert_geq(golden[0].n_greedy, 30);
    char want[CHECK_GREEDY_MAX + 1];
    check_detok(golden[0].greedy, 30, want, sizeof(want));
    cr_assert_eq(strcmp(want + strlen(want) - 3, " th"), 0, "golden text '%s'", want);

    check_run r = CHECK_SINKCTL_RUN(NULL, "run", "-n", "30", "--stop", "the end", "--ignore-eos",
                                    golden[0].prompt);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_str_eq(r.out, want);
    check_run_free(&r);
    r = CHECK_SINKCTL_RUN(NULL, "--json", "run", "-n", "30", "--stop", "the end", "--ignore-eos",
                          golden[0].prompt);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "{\"ev\":\"text\",\"text\":\"th\"}\n"), "%s", r.out);
    check_run_free(&r);
}

Test(sinkctl, chat_two_turns_over_a_pipe)
{
    check_golden_load(golden);
    enum { N = 24 };
    /* Turn one continues the golden prompt in a fresh session. */
    char reply1[N + 1];
    check_detok(golden[0].greedy, N, reply1, sizeof(reply1));

    char input[256];
    snprintf(input, sizeof(input), "%s\nAnd then\n", golden[0].prompt);
    check_run r = CHECK_SINKCTL_RUN(input, "chat", "-n", "24");
    cr_assert_eq(r.status, 0, "%s", r.err);

    /* Turn two continues the whole conversation: the same as one fresh run
     * over its text, if the session kept its cache between the turns. */
    char whole[256];
    snprintf(whole, sizeof(whole), "%s%sAnd then", golden[0].prompt, reply1);
    check_run fresh = CHECK_SINKCTL_RUN(NULL, "run", "-n", "24", whole);
    cr_assert_eq(fresh.status, 0, "%s", fresh.err);
    cr_assert_eq(strlen(fresh.out), N, "%s", fresh.out);

    char want[128];
    snprintf(want, sizeof(want), "%s\n%s\n", reply1, fresh.out);
    cr_expect_str_eq(r.out, want);
    check_run_free(&fresh);
    check_run_free(&r);
}

Test(sinkctl, tokenize_prints_the_golden_ids)
{
    check_golden_load(golden);
    for (int k = 0; k < CHECK_GOLDEN_CASES; k++) {
        char want[1024];
        size_t len = 0;
        for (size_t i = 0; i < golden[k].n_prompt; i++)
            len += (size_t)snprintf(want + len, sizeof(want) - len, "%s%d", i ? " " : "",
                                    golden[k].prompt_ids[i]);
        snprintf(want + len, sizeof(want) - len, "\n");
        check_run r = CHECK_SINKCTL_RUN(NULL, "tokenize", golden[k].prompt);
        cr_assert_eq(r.status, 0, "%s", r.err);
        cr_expect_str_eq(r.out, want, "case %d", k);
        check_run_free(&r);
    }

    /* -v: one line per token with its text; "a b" = BOS, 'a', space, 'b' */
    check_run r = CHECK_SINKCTL_RUN(NULL, "tokenize", "-v", "a b");
    cr_assert_eq(r.status, 0, "%s", r.err);
    char want[256];
    snprintf(want, sizeof(want), "%6d  ''\n%6d  'a'\n%6d  ' '\n%6d  'b'\n", 1, 'a' + 3, 259,
             'b' + 3);
    cr_expect_str_eq(r.out, want);
    check_run_free(&r);

    r = CHECK_SINKCTL_RUN(NULL, "--json", "tokenize", "--no-bos", "ab");
    cr_assert_eq(r.status, 0, "%s", r.err);
    snprintf(want, sizeof(want), "{\"ids\":[%d,%d]}\n", 'a' + 3, 'b' + 3);
    cr_expect_str_eq(r.out, want);
    check_run_free(&r);

    /* A character split over byte tokens: each piece alone is not UTF-8,
     * and JSON text must be; whole characters pass through */
    r = CHECK_SINKCTL_RUN(NULL, "--json", "tokenize", "-v", "--no-bos", "\xe2\x82\xac\"x");
    cr_assert_eq(r.status, 0, "%s", r.err);
    snprintf(want, sizeof(want),
             "{\"ids\":[%d,%d,%d,%d,%d],\"pieces\":[\"\\ufffd\",\"\\ufffd\",\"\\ufffd\",\"\\\"\",\"x\"]}\n",
             0xe2 + 3, 0x82 + 3, 0xac + 3, '"' + 3, 'x' + 3);
    cr_expect_str_eq(r.out, want);
    check_run_free(&r);
}

Test(sinkctl, models_lists_the_tiny_geometry)
{
    /* Geometry from the model's documentation table. */
    check_run r = CHECK_SINKCTL_RUN(NULL, "models");
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_eq(strncmp(r.out, "NAME ", 5), 0, "%s", r.out);
    const char *row = strstr(r.out, "\ntiny ");
    cr_assert_not_null(row, "%s", r.out);
    int layers, heads, kv, hdim, dim, vocab, ctx;
    cr_assert_eq(sscanf(row, "\ntiny llama %d %d %d %d %d %d %d f32", &layers, &heads, &kv,
                        &hdim, &dim, &vocab, &ctx), 7, "%s", row);
    cr_expect(layers == 4 && heads == 4 && kv == 2 && hdim == 32 && dim == 128 &&
              vocab == 260 && ctx == 512, "%s", row);
    check_run_free(&r);

    r = CHECK_SINKCTL_RUN(NULL, "--json", "models");
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "\"name\":\"tiny\",\"arch\":\"llama\",\"n_layers\":4,"
                                     "\"n_heads\":4,\"n_kv_heads\":2,\"head_dim\":32,"
                                     "\"dim\":128,\"n_vocab\":260,\"ctx_len\":512"), "%s", r.out);
    check_run_free(&r);
}

Test(sinkctl, run_with_a_policy_and_its_parameters)
{
    check_golden_load(golden);
    /* A window wider than prompt + reply keeps everything: same as full. */
    char want[CHECK_GREEDY_MAX + 1];
    check_detok(golden[0].greedy, 16, want, sizeof(want));
    check_run r = CHECK_SINKCTL_RUN(NULL, "run", "--policy", "window", "window=128", "-n", "16",
                                    golden[0].prompt);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_str_eq(r.out, want);
    check_run_free(&r);
}

/* Wait until the memory file @fd holds more than @after bytes and a newline
 * after them; returns its content (malloc'ed). */
static char *wait_output(int fd, size_t after, bool newline)
{
    for (int i = 0; i < 6000; i++) {
        size_t len;
        char *s = check_slurp_fd(fd, &len);
        if (len > after && (!newline || strchr(s + after, '\n') != NULL))
            return s;
        free(s);
        usleep(10000);
    }
    cr_assert_fail("no output after %zu bytes", after);
    return NULL;
}

/* sinkctl --socket S with the arguments @args (up to 12, NULL-terminated:
 * global options, the command and its arguments), stdin a pipe (*@in: its
 * write end), stdout and stderr memory files (*@out, *@err). */
static pid_t sinkctl_start(const char *const *args, int *in, int *out, int *err)
{
    const char *argv[16] = {CHECK_SINKCTL, "--socket", check_daemon.socket_path};
    int fds[2], argc = 3;
    while (*args && argc < 15)
        argv[argc++] = *args++;
    cr_assert_null(*args, "too many arguments");
    cr_assert_eq(pipe(fds), 0);
    *out = memfd_create("stdout", MFD_CLOEXEC);
    *err = memfd_create("stderr", MFD_CLOEXEC);
    cr_assert(*out >= 0 && *err >= 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(fds[0], 0);
        dup2(*out, 1);
        dup2(*err, 2);
        close(fds[1]);
        execv(CHECK_SINKCTL, (char *const *)argv);
        _exit(127);
    }
    close(fds[0]);
    *in = fds[1];
    return pid;
}

/* sinkctl chat with the arguments @extra (up to 11, NULL-terminated). */
static pid_t chat_start(const char *const *extra, int *in, int *out, int *err)
{
    const char *args[13] = {"chat"};
    for (int i = 0; extra[i]; i++) {
        cr_assert_lt(i, 11, "too many arguments");
        args[1 + i] = extra[i];
    }
    return sinkctl_start(args, in, out, err);
}

/* Ctrl-C in a long prompt's prefill stops it (the daemon undoes it at its
 * next layer and answers cancelled): no error, the chat goes on, and the
 * next line starts the conversation afresh, BOS included, so its reply is
 * the golden one. The daemon's answer to the cancel waits for the layer in
 * progress, which may outlast --timeout: stopping the daemon for longer
 * than that makes it do so. */
Test(sinkctl, chat_ctrl_c_in_a_long_prompt_undoes_it)
{
    check_golden_load(golden);
    int in, out, err;
    static const char *const args[] = {"--timeout", "2000", "chat", "--policy", "window",
                                        "-n", "8", "--ignore-eos", "window=64", NULL};
    pid_t pid = sinkctl_start(args, &in, &out, &err);
    /* 216K tokens (one a byte): minutes of prefill on the CPU */
    static const char piece[] = "Once upon a time. ";
    for (int i = 0; i < 12000; i++)
        cr_assert_eq(write(in, piece, sizeof piece - 1), (ssize_t)(sizeof piece - 1));
    cr_assert_eq(write(in, "\n", 1), 1);
    usleep(500000);
    cr_assert_eq(kill(check_daemon.pid, SIGSTOP), 0);
    cr_assert_eq(kill(pid, SIGINT), 0);
    usleep(3500000);
    cr_assert_eq(kill(check_daemon.pid, SIGCONT), 0);

    char line[160];
    int n = snprintf(line, sizeof(line), "%s\n", golden[0].prompt);
    cr_assert_eq(write(in, line, (size_t)n), n);
    close(in);
    int ws;
    cr_assert_eq(waitpid(pid, &ws, 0), pid);
    char *all = check_slurp_fd(out, NULL);
    char *errs = check_slurp_fd(err, NULL);
    cr_expect(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "status %d: %s", ws, errs);
    cr_expect_str_empty(errs);
    char want[CHECK_GREEDY_MAX + 3];
    want[0] = '\n';
    check_detok(golden[0].greedy, 8, want + 1, sizeof(want) - 2);
    strcat(want, "\n");
    cr_expect_str_eq(all, want);
    free(errs);
    free(all);
    close(out);
    close(err);
}

Test(sinkctl, chat_ctrl_c_cancels_the_reply_not_the_chat)
{
    check_golden_load(golden);
    int in, out, err;
    static const char *const args[] = {"-n", "4000", "--ignore-eos", NULL};
    pid_t pid = chat_start(args, &in, &out, &err);
    char line[160];
    int n = snprintf(line, sizeof(line), "%s\n", golden[0].prompt);
    cr_assert_eq(write(in, line, (size_t)n), n);

    /* Ctrl-C while the first reply streams: it ends, the chat goes on. */
    free(wait_output(out, 8, false));
    cr_assert_eq(kill(pid, SIGINT), 0);
    char *first = wait_output(out, 0, true);
    size_t len1 = (size_t)(strchr(first, '\n') - first);
    cr_expect_lt(len1, 4000, "the reply was cut short");
    char want[CHECK_GREEDY_MAX + 1];
    size_t k = len1 < golden[0].n_greedy ? len1 : golden[0].n_greedy;
    check_detok(golden[0].greedy, k, want, sizeof(want));
    cr_expect_eq(strncmp(first, want, k), 0, "reply so far: %.*s", (int)len1, first);

    n = snprintf(line, sizeof(line), "And then\n");
    cr_assert_eq(write(in, line, (size_t)n), n);
    close(in);
    free(wait_output(out, len1 + 1 + 8, false));
    cr_assert_eq(kill(pid, SIGINT), 0);

    /* The second reply ends too, then end of input ends the chat. */
    int ws;
    cr_assert_eq(waitpid(pid, &ws, 0), pid);
    char *all = check_slurp_fd(out, NULL);
    char *errs = check_slurp_fd(err, NULL);
    cr_expect(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "status %d: %s", ws, errs);
    size_t lines = 0;
    for (const char *p = all; (p = strchr(p, '\n')) != NULL; p++)
        lines++;
    cr_expect_eq(lines, 2, "%s", all);
    free(errs);
    free(all);
    free(first);
    close(out);
    close(err);
}

