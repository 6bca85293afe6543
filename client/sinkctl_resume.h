/*
 * sinkctl chat's persistent sessions: --persist opens one and says once, on
 * stderr, how to resume it; --attach ID resumes one.
 *
 * The secret never travels on a command line, where every user reads it
 * (/proc/PID/cmdline): --attach takes it from $SINKD_SECRET or the first
 * line of --secret-file PATH (a regular file of the user's that nobody else
 * may read, as ssh wants of a key; --secret S is refused outright);
 * --persist writes it to a new --secret-file (mode 0600, never over an
 * existing file or link) or, without one, prints it on stderr, and only
 * when stderr is a terminal: a file or a pipe there (a log, nohup.out,
 * journald) keeps what it is given where others may read it.
 */
#ifndef SINKCTL_RESUME_H
#define SINKCTL_RESUME_H

#include "sinkctl.h"

/* Environment variable that holds the secret for --attach. */
#define SINKCTL_SECRET_ENV "SINKD_SECRET"

enum {
    SINKCTL_OPT_PERSIST = 0x300, SINKCTL_OPT_ATTACH, SINKCTL_OPT_SECRET_FILE,
    SINKCTL_OPT_SECRET,
};

/* The getopt_long entries of the options below, for a command's table.
 * --secret exists only to be refused: without it getopt_long would take
 * "--secret S" as an abbreviation of --secret-file and read a file named
 * after the secret. */
#define SINKCTL_RESUME_LONGOPTS \
    { "persist", no_argument, NULL, SINKCTL_OPT_PERSIST }, \
    { "attach", required_argument, NULL, SINKCTL_OPT_ATTACH }, \
    { "secret-file", required_argument, NULL, SINKCTL_OPT_SECRET_FILE }, \
    { "secret", required_argument, NULL, SINKCTL_OPT_SECRET }

#define SINKCTL_RESUME_HELP \
    "  --persist            open a persistent session: it outlives the chat\n" \
    "                       and restarts of sinkd; how to resume it is printed\n" \
    "                       once on stderr\n" \
    "  --attach ID          resume persistent session ID where it stopped;\n" \
    "                       the secret comes from $" SINKCTL_SECRET_ENV " or\n" \
    "                       --secret-file, never from the command line\n" \
    "  --secret-file PATH   with --persist: write the secret to PATH, a new\n" \
    "                       file of mode 0600 (an existing one is refused);\n" \
    "                       without it the secret is printed on stderr, which\n" \
    "                       must then be a terminal. With --attach: read it\n" \
    "                       from PATH's first line (before $" SINKCTL_SECRET_ENV "):\n" \
    "                       a regular file of yours, unreadable to others\n" \
    "                       (mode 0600 or 0400)\n"

/* What the options asked. Zeroed: a plain session. */
typedef struct sinkctl_resume {
    bool persist;               /* --persist */
    bool attach;                /* --attach given */
    uint64_t session;           /* its ID */
    const char *secret_file;    /* --secret-file, or NULL; points into argv */
} sinkctl_resume;

/* Apply option @opt (one of SINKCTL_OPT_PERSIST..) with @arg to @r.
 * Returns SINKCTL_EXIT_OK, or a usage error's exit code (printed):
 * SINKCTL_OPT_SECRET always is one. */
int sinkctl_resume_option(const sinkctl_ctx *ctx, sinkctl_resume *r, int opt, const char *arg);

/* Check @r against the session options @opts once all options are read:
 * --persist and --attach exclude each other, an attached session keeps the
 * model, policy and budget it has, --secret-file needs one of them, and
 * --persist without --secret-file needs stderr to be a terminal (the
 * secret is printed there). Runs before any connection, so a refusal opens
 * nothing. Returns SINKCTL_EXIT_OK or a usage error's exit code (printed). */
int sinkctl_resume_check(const sinkctl_ctx *ctx, const sinkctl_resume *r,
                         const sinkd_client_session_opts *opts);

/* Get the session @r asks for on @c: attach it (the secret read as above;
 * one stderr line names it with its n_past), or open it with @opts,
 * persistent with --persist. A persistent session is then attached once on
 * @c to learn that the daemon can keep it across a restart (one without a
 * state directory cannot), the secret file written, and the resume hint
 * printed. @info describes the session and *@n_past gets the tokens already
 * in its conversation (0 for a new one); the caller wipes @info->secret
 * when done.
 *
 * On failure no secret file this call created is left, and a persistent
 * session it opened is closed again, with two exceptions that stderr names
 * with the command that ends the session: the close failed too
 * ('sinkctl session close N'), or the open's reply was lost to a transport
 * error after the daemon may have opened one ('sinkctl sessions' lists it).
 *
 * Returns an exit code (the failure printed): 1 for an error reply, also a
 * daemon that cannot keep a persistent session; 2 for a missing secret or a
 * --secret-file that cannot be used (it exists, a path that does not lead
 * to a new file, one others may read); 3 for a transport error, and for an
 * I/O error reading or writing the secret file once it is open. */
int sinkctl_resume_open(const sinkctl_ctx *ctx, sinkd_client *c, const sinkctl_resume *r,
                        const sinkd_client_session_opts *opts,
                        sinkd_client_session_info *info, uint64_t *n_past);

#endif /* SINKCTL_RESUME_H */
