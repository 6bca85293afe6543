/*
 * sinkctl chat's persistent sessions: --persist opens one and says once, on
 * stderr, how to resume it; --attach ID resumes one.
 *
 * The secret never travels on a command line, where every user reads it
 * (/proc/PID/cmdline): --attach takes it from $SINKD_SECRET or the first
 * line of --secret-file PATH; --persist writes it to a new --secret-file
 * (mode 0600, never over an existing file) or, without one, prints it on
 * stderr.
 */
#ifndef SINKCTL_RESUME_H
#define SINKCTL_RESUME_H

#include "sinkctl.h"

/* Environment variable that holds the secret for --attach. */
#define SINKCTL_SECRET_ENV "SINKD_SECRET"

enum { SINKCTL_OPT_PERSIST = 0x300, SINKCTL_OPT_ATTACH, SINKCTL_OPT_SECRET_FILE };

/* The getopt_long entries of the options below, for a command's table. */
#define SINKCTL_RESUME_LONGOPTS \
    { "persist", no_argument, NULL, SINKCTL_OPT_PERSIST }, \
    { "attach", required_argument, NULL, SINKCTL_OPT_ATTACH }, \
    { "secret-file", required_argument, NULL, SINKCTL_OPT_SECRET_FILE }

#define SINKCTL_RESUME_HELP \
    "  --persist            open a persistent session: it outlives the chat\n" \
    "                       and restarts of sinkd; how to resume it is printed\n" \
    "                       once on stderr\n" \
    "  --attach ID          resume persistent session ID where it stopped;\n" \
    "                       the secret comes from $" SINKCTL_SECRET_ENV " or\n" \
    "                       --secret-file, never from the command line\n" \
    "  --secret-file PATH   with --persist: write the secret to PATH, a new\n" \
    "                       file of mode 0600 (an existing one is refused);\n" \
    "                       without it the secret is printed on stderr.\n" \
    "                       With --attach: read it from PATH's first line\n" \
    "                       (before $" SINKCTL_SECRET_ENV ")\n"

/* What the options asked. Zeroed: a plain session. */
typedef struct sinkctl_resume {
    bool persist;               /* --persist */
    bool attach;                /* --attach given */
    uint64_t session;           /* its ID */
    const char *secret_file;    /* --secret-file, or NULL; points into argv */
} sinkctl_resume;

/* Apply option @opt (one of SINKCTL_OPT_PERSIST..) with @arg to @r.
 * Returns SINKCTL_EXIT_OK, or a usage error's exit code (printed). */
int sinkctl_resume_option(const sinkctl_ctx *ctx, sinkctl_resume *r, int opt, const char *arg);

/* Check @r against the session options @opts once all options are read:
 * --persist and --attach exclude each other, an attached session keeps the
 * model, policy and budget it has, --secret-file needs one of them.
 * Returns SINKCTL_EXIT_OK or a usage error's exit code (printed). */
int sinkctl_resume_check(const sinkctl_ctx *ctx, const sinkctl_resume *r,
                         const sinkd_client_session_opts *opts);

/* Get the session @r asks for on @c: attach it (the secret read as above;
 * one stderr line names it with its n_past), or open it with @opts,
 * persistent with --persist (the secret file written, then the resume hint
 * printed). @info describes it and *@n_past gets the tokens already in its
 * conversation (0 for a new one). Nothing is left behind on failure: no
 * secret file this call created, no persistent session whose secret was
 * lost. Returns an exit code (the failure printed): 1 for an error reply,
 * 2 for a secret that is missing or a --secret-file that cannot be used,
 * 3 for a transport error. */
int sinkctl_resume_open(const sinkctl_ctx *ctx, sinkd_client *c, const sinkctl_resume *r,
                        const sinkd_client_session_opts *opts,
                        sinkd_client_session_info *info, uint64_t *n_past);

#endif /* SINKCTL_RESUME_H */
