/*
 * sinkctl: command-line control of sinkd. This file holds main, the global
 * options, help, and the command table; each command group lives in its own
 * sinkctl_<group>.c. Adding a command = one file (or one function in a
 * group's file) + one line in `commands` below.
 */
#include "sinkctl.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

extern const sinkctl_cmd sinkctl_cmd_status;
extern const sinkctl_cmd sinkctl_cmd_ping;
extern const sinkctl_cmd sinkctl_cmd_shutdown;
extern const sinkctl_cmd sinkctl_cmd_eval;
extern const sinkctl_cmd sinkctl_cmd_run;
extern const sinkctl_cmd sinkctl_cmd_chat;
extern const sinkctl_cmd sinkctl_cmd_tokenize;
extern const sinkctl_cmd sinkctl_cmd_models;
extern const sinkctl_cmd sinkctl_cmd_sessions;
extern const sinkctl_cmd sinkctl_cmd_session;
extern const sinkctl_cmd sinkctl_cmd_policy;

static const sinkctl_cmd *const commands[] = {
    &sinkctl_cmd_status,
    &sinkctl_cmd_ping,
    &sinkctl_cmd_shutdown,
    &sinkctl_cmd_eval,
    &sinkctl_cmd_run,
    &sinkctl_cmd_chat,
    &sinkctl_cmd_tokenize,
    &sinkctl_cmd_models,
    &sinkctl_cmd_sessions,
    &sinkctl_cmd_session,
    &sinkctl_cmd_policy,
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

enum { OPT_SOCKET = 0x100, OPT_JSON, OPT_TIMEOUT, OPT_VERSION };

static const struct option global_opts[] = {
    { "socket", required_argument, NULL, OPT_SOCKET },
    { "json", no_argument, NULL, OPT_JSON },
    { "timeout", required_argument, NULL, OPT_TIMEOUT },
    { "help", no_argument, NULL, 'h' },
};

#define NGLOBAL (sizeof(global_opts) / sizeof(global_opts[0]))

static void print_tool_help(FILE *f)
{
    fprintf(f,
        "usage: sinkctl [--socket PATH] [--json] [--timeout MS] COMMAND [ARGS]\n"
        "\n"
        "Control and inspect sinkd, the local language-model daemon.\n"
        "\n"
        "Commands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %-10s %s\n", commands[i]->name, commands[i]->summary);
    fprintf(f,
        "  %-10s %s\n"
        "\n"
        "Global options (accepted before or after COMMAND):\n"
        "  --socket PATH  daemon socket (default: $SINKD_SOCKET, else\n"
        "                 $XDG_RUNTIME_DIR/" SINKD_CLIENT_SOCKET_XDG_NAME
        " if it exists, else\n"
        "                 " SINKD_CLIENT_SOCKET_DEFAULT ")\n"
        "  --json         machine output: the daemon's reply map as JSON on stdout\n"
        "  --timeout MS   timeout of each request in milliseconds (default %d)\n"
        "  -h, --help     this help; `sinkctl help COMMAND` or\n"
        "                 `sinkctl COMMAND --help` for one command\n"
        "  --version      print sinkctl's version\n"
        "\n"
        "Exit status:\n"
        "  0  success\n"
        "  1  the daemon answered with an error\n"
        "  2  usage error (an input file that cannot be used included)\n"
        "  3  cannot connect to the daemon, timeout, connection lost, a reply\n"
        "     sinkctl cannot read, or a local file that could not be written\n",
        "help", "Show help for a command", SINKCTL_TIMEOUT_DEFAULT_MS);
}

static void print_cmd_help(FILE *f, const sinkctl_cmd *cmd)
{
    fprintf(f, "usage: sinkctl [GLOBAL OPTIONS] %s%s%s\n\n%s.\n\n%s"
               "\nGlobal options and exit status: sinkctl --help\n",
            cmd->name, cmd->usage[0] ? " " : "", cmd->usage, cmd->summary,
            cmd->help);
}

static const sinkctl_cmd *find_cmd(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(commands[i]->name, name) == 0)
            return commands[i];
    return NULL;
}

int sinkctl_usage_error(const sinkctl_ctx *ctx, const char *msg)
{
    if (ctx->cmd != NULL)
        fprintf(stderr, "sinkctl: %s: %s\nTry 'sinkctl %s --help'.\n",
                ctx->cmd->name, msg, ctx->cmd->name);
    else
        fprintf(stderr, "sinkctl: %s\nTry 'sinkctl --help'.\n", msg);
    return SINKCTL_EXIT_USAGE;
}

static int parse_timeout(const char *s, int *ms)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v <= 0 || v > INT_MAX)
        return -EINVAL;
    *ms = (int)v;
    return 0;
}

/* Apply global option @opt. 1 = handled, 0 = not a global option,
 * SINKCTL_OPT_EXIT = stop with *@code. */
static int apply_global(sinkctl_ctx *ctx, int opt, const char *arg, int *code)
{
    switch (opt) {
    case OPT_SOCKET:
        if (arg[0] == '\0') {
            *code = sinkctl_usage_error(ctx, "--socket needs a path");
            return SINKCTL_OPT_EXIT;
        }
        ctx->socket = arg;
        return 1;
    case OPT_JSON:
        ctx->json = true;
        return 1;
    case OPT_TIMEOUT:
        if (parse_timeout(arg, &ctx->timeout_ms) != 0) {
            *code = sinkctl_usage_error(ctx, "--timeout needs a positive number of milliseconds");
            return SINKCTL_OPT_EXIT;
        }
        return 1;
    case 'h':
        if (ctx->cmd != NULL)
            print_cmd_help(stdout, ctx->cmd);
        else
            print_tool_help(stdout);
        *code = SINKCTL_EXIT_OK;
        return SINKCTL_OPT_EXIT;
    default:
        return 0;
    }
}

/* getopt_long's complaint (@opt '?' or ':') in words. optopt is a short
 * option's character, but a long-only option's internal code (past ASCII)
 * or 0 for an unknown long option: those are named as typed, without any
 * "=value" (long options take their whole argv element, so it is the one
 * before optind). */
static void option_error(char *msg, size_t cap, int opt, int argc, char **argv)
{
    const char *what = opt == ':' ? "missing argument for" : "unknown option";

    if (optopt > 0 && optopt < 128 && isprint(optopt)) {
        snprintf(msg, cap, "%s '-%c'", what, optopt);
        return;
    }
    const char *arg = optind > 0 && optind <= argc ? argv[optind - 1] : "";
    int len = (int)strcspn(arg, "=");
    if (opt == '?' && optopt != 0) /* a known option that takes no value, given one */
        snprintf(msg, cap, "option '%.*s' takes no value", len, arg);
    else
        snprintf(msg, cap, "%s '%.*s'", what, len, arg);
}

int sinkctl_getopt(sinkctl_ctx *ctx, int argc, char **argv, const char *shortopts,
                   const struct option *longopts, int *code)
{
    struct option all[NGLOBAL + 16 + 1];
    size_t n = 0;
    for (; n < NGLOBAL; n++)
        all[n] = global_opts[n];
    for (size_t i = 0; longopts != NULL && longopts[i].name != NULL; i++) {
        if (n == NGLOBAL + 16)
            abort();   /* a subcommand with more options: grow the array */
        all[n++] = longopts[i];
    }
    all[n] = (struct option){ 0 };

    /* GNU getopt: a leading '+' (stop at the first operand) must stay first,
     * ':' next (report missing arguments as ':'). */
    char shorts[64];
    const char *rest = shortopts != NULL ? shortopts : "";
    bool stop = rest[0] == '+';
    snprintf(shorts, sizeof(shorts), "%s:h%s", stop ? "+" : "", rest + stop);
    for (;;) {
        int opt = getopt_long(argc, argv, shorts, all, NULL);
        if (opt == '?' || opt == ':') {
            char msg[160];
            option_error(msg, sizeof(msg), opt, argc, argv);
            *code = sinkctl_usage_error(ctx, msg);
            return SINKCTL_OPT_EXIT;
        }
        int g = apply_global(ctx, opt, optarg, code);
        if (g == SINKCTL_OPT_EXIT)
            return g;
        if (g == 0)
            return opt;
    }
}

int sinkctl_connect(const sinkctl_ctx *ctx, sinkd_client **c)
{
    int rc = sinkd_client_connect(ctx->socket, ctx->timeout_ms, c);
    if (rc == 0)
        return SINKCTL_EXIT_OK;
    char path[128];
    const char *shown = ctx->socket;
    if (shown == NULL)
        shown = sinkd_client_default_socket(path, sizeof(path)) == 0 ? path : "(default)";
    fprintf(stderr, "sinkctl: cannot connect to %s: %s\n", shown, sinkd_client_strerror(rc));
    return SINKCTL_EXIT_TRANSPORT;
}

int sinkctl_fail(const sinkctl_ctx *ctx, sinkd_client *c, int rc,
                 const sinkd_client_reply *reply)
{
    if (rc < 0) {
        fprintf(stderr, "sinkctl: %s: %s\n", ctx->cmd->name, sinkd_client_strerror(rc));
        return SINKCTL_EXIT_TRANSPORT;
    }
    if (ctx->json && reply != NULL && reply->map != NULL) {
        sinkctl_json_write(stdout, reply->map);
        fputc('\n', stdout);
    } else {
        fprintf(stderr, "sinkctl: %s: %s: %s\n", ctx->cmd->name,
                sinkd_client_strerror(rc), sinkd_client_errmsg(c));
    }
    return SINKCTL_EXIT_REPLY;
}

int main(int argc, char **argv)
{
    sinkctl_ctx ctx = { .timeout_ms = SINKCTL_TIMEOUT_DEFAULT_MS };
    static const struct option version_opt[] = {
        { "version", no_argument, NULL, OPT_VERSION },
        { NULL, 0, NULL, 0 },
    };
    int code = 0;
    int opt = sinkctl_getopt(&ctx, argc, argv, "+", version_opt, &code);
    if (opt == SINKCTL_OPT_EXIT)
        return code;
    if (opt == OPT_VERSION) {
        printf("sinkctl %s\n", SINKD_VERSION);
        return SINKCTL_EXIT_OK;
    }
    if (optind >= argc)
        return sinkctl_usage_error(&ctx, "missing command");

    const char *name = argv[optind];
    if (strcmp(name, "help") == 0) {
        if (optind + 1 >= argc) {
            print_tool_help(stdout);
            return SINKCTL_EXIT_OK;
        }
        const sinkctl_cmd *cmd = find_cmd(argv[optind + 1]);
        if (cmd == NULL)
            return sinkctl_usage_error(&ctx, "unknown command");
        print_cmd_help(stdout, cmd);
        return SINKCTL_EXIT_OK;
    }
    ctx.cmd = find_cmd(name);
    if (ctx.cmd == NULL) {
        char msg[160];
        snprintf(msg, sizeof(msg), "unknown command '%s'", name);
        return sinkctl_usage_error(&ctx, msg);
    }
    int sub_argc = argc - optind;
    char **sub_argv = argv + optind;
    optind = 0;   /* glibc: 0 fully re-initialises getopt for the subcommand */
    return ctx.cmd->run(&ctx, sub_argc, sub_argv);
}
