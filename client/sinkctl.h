/*
 * sinkctl internals: the context every subcommand receives, the command
 * table entry, and the helpers subcommands share. A subcommand group lives
 * in sinkctl_<group>.c and exports one `const sinkctl_cmd` per command; the
 * table in sinkctl.c lists them.
 */
#ifndef SINKCTL_H
#define SINKCTL_H

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>

#include "client.h"

/* Exit codes (documented in `sinkctl --help`). */
enum {
    SINKCTL_EXIT_OK = 0,
    SINKCTL_EXIT_REPLY = 1,      /* the daemon answered with an error */
    SINKCTL_EXIT_USAGE = 2,      /* bad command line */
    SINKCTL_EXIT_TRANSPORT = 3,  /* cannot connect, timeout, lost connection, an
                                    unreadable reply, a local write that failed */
};

#define SINKCTL_TIMEOUT_DEFAULT_MS 5000

typedef struct sinkctl_cmd sinkctl_cmd;

typedef struct sinkctl_ctx {
    const char *socket;          /* --socket, or NULL for the default */
    bool json;                   /* --json */
    int timeout_ms;              /* --timeout */
    const sinkctl_cmd *cmd;      /* the subcommand being run */
} sinkctl_ctx;

struct sinkctl_cmd {
    const char *name;
    const char *summary;         /* one line for the command list */
    const char *usage;           /* options after "sinkctl NAME", e.g. "[-c N]" */
    const char *help;            /* option lines and notes, ends with '\n' */
    /* Run with argv[0] = the command name. Returns an exit code. */
    int (*run)(sinkctl_ctx *ctx, int argc, char **argv);
};

/* getopt_long over the subcommand's @shortopts/@longopts plus the global
 * options (--socket, --json, --timeout, --help), which it handles itself.
 * Returns the next subcommand option, -1 at the end of options (optind then
 * indexes the first operand), or SINKCTL_OPT_EXIT with *@code set when the
 * command must stop (help printed: 0; usage error printed: 2). */
#define SINKCTL_OPT_EXIT (-2)
int sinkctl_getopt(sinkctl_ctx *ctx, int argc, char **argv, const char *shortopts,
                   const struct option *longopts, int *code);

/* Print "sinkctl: NAME: @msg" and the usage hint to stderr; returns 2. */
int sinkctl_usage_error(const sinkctl_ctx *ctx, const char *msg);

/* Connect as the global options say. On failure prints why and returns the
 * exit code (3); on success 0 and *@c is the caller's to close. */
int sinkctl_connect(const sinkctl_ctx *ctx, sinkd_client **c);

/* Report a failed library call @rc (with the handle's message for an error
 * reply) to stderr, or as the reply map @reply on stdout with --json; returns
 * the exit code: 1 for an error reply, 3 for a transport error. */
int sinkctl_fail(const sinkctl_ctx *ctx, sinkd_client *c, int rc,
                 const sinkd_client_reply *reply);

/* One request field: a str when @str is non-NULL, else the uint @u64. */
typedef struct sinkctl_field {
    const char *key;
    const char *str;
    uint64_t u64;
} sinkctl_field;

/* Prints a successful reply for humans; returns the exit code. */
typedef int (*sinkctl_human_fn)(const sinkctl_ctx *ctx, sinkd_client *c,
                                const msgpack_object *reply);

/* Connect, send @op with @field (NULL: no field), and print the reply: as
 * JSON with --json, else with @human. Returns the exit code. */
int sinkctl_query(const sinkctl_ctx *ctx, const char *op, const sinkctl_field *field,
                  sinkctl_human_fn human);

/* A whole command that takes only the global options: sinkctl_query of
 * the field-less @op. Returns the exit code. */
int sinkctl_run_query(sinkctl_ctx *ctx, int argc, char **argv, const char *op,
                      sinkctl_human_fn human);

/* Usage error (2) if operands remain after the options, else 0. */
int sinkctl_no_operands(const sinkctl_ctx *ctx, int argc, char **argv);

/* "512 B", "3.3 MiB". */
void sinkctl_format_bytes(char *buf, size_t size, uint64_t bytes);

/* Parse a decimal unsigned integer no larger than @max. 0 or -EINVAL. */
int sinkctl_parse_u64(const char *s, uint64_t max, uint64_t *out);

/* Parse a finite number in [@min, @max]. 0 or -EINVAL. */
int sinkctl_parse_double(const char *s, double min, double max, double *out);

/* True when @s looks like a policy parameter "key=value". */
bool sinkctl_is_param(const char *s);

/* Join the @n "key=value" @words with spaces into a new string *@out (NULL
 * when @n is 0; free(3) it). -EINVAL when one is not key=value, -ENOMEM. */
int sinkctl_join_params(char *const *words, int n, char **out);

/* Write @o as JSON to @f (strings escaped; bin as base64; NaN/inf as null). */
void sinkctl_json_write(FILE *f, const msgpack_object *o);

/* Write @n bytes of @s as a JSON string literal (quotes and escapes; a byte
 * that starts no well-formed UTF-8 sequence as \ufffd). */
void sinkctl_json_str(FILE *f, const char *s, size_t n);

#endif /* SINKCTL_H */
