/*
 * sinkctl: opening a persistent session and resuming one (chat --persist,
 * --attach, --secret-file). The contract is in sinkctl_resume.h.
 */
#include "sinkctl_resume.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Room for a secret: sinkd's are 32 hex digits; anything near this long is
 * not one. */
#define RESUME_SECRET_MAX 128

/* A local I/O error on the secret file once it is open: the code run gives
 * one reading its prompt from stdin (sinkctl_fail of a negative errno). */
#define RESUME_EXIT_IO SINKCTL_EXIT_TRANSPORT

int sinkctl_resume_option(const sinkctl_ctx *ctx, sinkctl_resume *r, int opt, const char *arg)
{
    switch (opt) {
    case SINKCTL_OPT_PERSIST:
        r->persist = true;
        return SINKCTL_EXIT_OK;
    case SINKCTL_OPT_ATTACH:
        if (sinkctl_parse_u64(arg, UINT64_MAX, &r->session) != 0 || r->session == 0)
            return sinkctl_usage_error(ctx, "--attach needs a session ID");
        r->attach = true;
        return SINKCTL_EXIT_OK;
    case SINKCTL_OPT_SECRET_FILE:
        if (arg[0] == '\0')
            return sinkctl_usage_error(ctx, "--secret-file needs a path");
        r->secret_file = arg;
        return SINKCTL_EXIT_OK;
    case SINKCTL_OPT_SECRET:
        return sinkctl_usage_error(ctx, "a secret never goes on the command line, where every "
                                   "user can read it: put it in $" SINKCTL_SECRET_ENV " or "
                                   "--secret-file PATH");
    default:
        return SINKCTL_EXIT_USAGE;   /* not reached: the caller passes only these */
    }
}

int sinkctl_resume_check(const sinkctl_ctx *ctx, const sinkctl_resume *r,
                         const sinkd_client_session_opts *opts)
{
    if (r->persist && r->attach)
        return sinkctl_usage_error(ctx, "--persist and --attach exclude each other");
    if (r->attach && (opts->model != NULL || opts->policy != NULL || opts->budget > 0))
        return sinkctl_usage_error(ctx, "--attach resumes the session as it was opened: no "
                                   "--model, --policy, --budget or policy parameters");
    if (r->secret_file != NULL && !r->persist && !r->attach)
        return sinkctl_usage_error(ctx, "--secret-file goes with --persist or --attach");
    /* A log, a pipe or nohup.out keeps the secret where others may read
     * it; only a terminal shows it to the user alone. */
    if (r->persist && r->secret_file == NULL && !isatty(STDERR_FILENO))
        return sinkctl_usage_error(ctx, "stderr is not a terminal, so --persist will not "
                                   "print the session's secret there: name a --secret-file "
                                   "PATH to write it to");
    return SINKCTL_EXIT_OK;
}

/* Print that the --secret-file @path cannot be used because of @err;
 * returns @code. */
static int resume__file_error(const sinkctl_ctx *ctx, const char *path, const char *err,
                              int code)
{
    fprintf(stderr, "sinkctl: %s: --secret-file %s: %s\n", ctx->cmd->name, path, err);
    return code;
}

/* Open the --secret-file @path to read the secret from, refusing what ssh
 * refuses for a private key: anything but a regular file, another user's
 * file, one that the group or others may read or change. The checks look
 * at the opened file (fstat), so a file swapped in after them is never the
 * one read. Returns the fd, or -1 with the refusal printed and *@code
 * set. */
static int resume__open_secret(const sinkctl_ctx *ctx, const char *path, int *code)
{
    /* O_NONBLOCK: a FIFO is refused below instead of waited on for a
     * writer; reading a regular file ignores the flag */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    struct stat st;
    char why[128] = "";
    if (fd < 0 || fstat(fd, &st) != 0)
        snprintf(why, sizeof(why), "%s", strerror(errno));
    else if (!S_ISREG(st.st_mode))
        snprintf(why, sizeof(why), "not a regular file");
    else if (st.st_uid != geteuid())
        snprintf(why, sizeof(why), "owned by uid %u, not by you (uid %u)",
                 (unsigned)st.st_uid, (unsigned)geteuid());
    else if ((st.st_mode & 077) != 0)
        snprintf(why, sizeof(why), "mode %04o lets others at the secret: chmod 600 it",
                 (unsigned)(st.st_mode & 07777));
    if (why[0] == '\0')
        return fd;
    if (fd >= 0)
        close(fd);
    *code = resume__file_error(ctx, path, why, SINKCTL_EXIT_USAGE);
    return -1;
}

/* The first line of the --secret-file @path into @buf of @size bytes,
 * read with read(2): no stdio buffer keeps a copy. Returns an exit code. */
static int resume__read_secret(const sinkctl_ctx *ctx, const char *path, char *buf,
                               size_t size)
{
    int code = SINKCTL_EXIT_OK;
    int fd = resume__open_secret(ctx, path, &code);
    if (fd < 0)
        return code;
    size_t got = 0;
    while (got + 1 < size) {
        ssize_t n = read(fd, buf + got, size - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            code = resume__file_error(ctx, path, strerror(errno), RESUME_EXIT_IO);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    buf[got] = '\0';
    size_t len = strcspn(buf, "\r\n");
    if (code != SINKCTL_EXIT_OK)
        return code;
    if (len == 0)
        return resume__file_error(ctx, path, "no secret on its first line", SINKCTL_EXIT_USAGE);
    if (len == got && got + 1 == size)
        return resume__file_error(ctx, path, "its first line is too long for a secret",
                                  SINKCTL_EXIT_USAGE);
    buf[len] = '\0';
    return SINKCTL_EXIT_OK;
}

/* The secret for --attach into @buf of @size bytes: the first line of
 * --secret-file, else $SINKD_SECRET. Returns an exit code. */
static int resume__secret(const sinkctl_ctx *ctx, const sinkctl_resume *r, char *buf,
                          size_t size)
{
    if (r->secret_file != NULL)
        return resume__read_secret(ctx, r->secret_file, buf, size);
    const char *env = getenv(SINKCTL_SECRET_ENV);
    if (env == NULL || env[0] == '\0')
        return sinkctl_usage_error(ctx, "--attach needs the session's secret in $"
                                   SINKCTL_SECRET_ENV " or the first line of "
                                   "--secret-file PATH (never on the command line)");
    if (strlen(env) >= size)
        return sinkctl_usage_error(ctx, "$" SINKCTL_SECRET_ENV " is too long for a secret");
    strcpy(buf, env);
    return SINKCTL_EXIT_OK;
}

static int resume__attach(const sinkctl_ctx *ctx, sinkd_client *c, const sinkctl_resume *r,
                          sinkd_client_session_info *info, uint64_t *n_past)
{
    char secret[RESUME_SECRET_MAX];
    int code = resume__secret(ctx, r, secret, sizeof(secret));
    int rc = code == SINKCTL_EXIT_OK
             ? sinkd_client_session_attach(c, r->session, secret, ctx->timeout_ms, info, n_past)
             : 0;
    explicit_bzero(secret, sizeof(secret));
    if (code != SINKCTL_EXIT_OK)
        return code;
    if (rc == SINKD_ERR_NOT_FOUND) {
        /* The daemon says no more, so that a guess learns nothing; the
         * user needs to hear that the secret may be what is wrong. */
        fprintf(stderr, "sinkctl: %s: %s: %s (no such session of yours, or a wrong secret)\n",
                ctx->cmd->name, sinkd_client_strerror(rc), sinkd_client_errmsg(c));
        return SINKCTL_EXIT_REPLY;
    }
    if (rc != 0)
        return sinkctl_fail(ctx, c, rc, NULL);
    fprintf(stderr, "sinkctl: session %llu attached: n_past %llu (%s, policy %s)\n",
            (unsigned long long)info->session, (unsigned long long)*n_past, info->model,
            info->policy);
    return SINKCTL_EXIT_OK;
}

/* Write @secret (of session_info's size: it fits @line) and a newline to
 * @fd and close it. 0 or a negative errno. */
static int resume__write(int fd, const char *secret)
{
    char line[sizeof(((sinkd_client_session_info *)0)->secret) + 1];
    size_t len = strnlen(secret, sizeof(line) - 2);
    memcpy(line, secret, len);
    line[len++] = '\n';
    ssize_t w = write(fd, line, len);
    int rc = w < 0 ? -errno : (size_t)w != len ? -EIO : 0;
    explicit_bzero(line, sizeof(line));
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    return rc;
}

/* Write @s to @f as one shell word: in single quotes, each ' inside as
 * '\'' (a hint the user pastes must name the file whatever its name). */
static void resume__put_quoted(FILE *f, const char *s)
{
    fputc('\'', f);
    for (; *s != '\0'; s++) {
        if (*s == '\'')
            fputs("'\\''", f);
        else
            fputc(*s, f);
    }
    fputc('\'', f);
}

/* Say once how to resume the persistent session @info. */
static void resume__announce(const sinkctl_ctx *ctx, const sinkctl_resume *r,
                             const sinkd_client_session_info *info)
{
    unsigned long long id = info->session;
    const char *cmd = ctx->cmd->name;
    fprintf(stderr, "sinkctl: session %llu is persistent: it outlives this %s and restarts "
                    "of sinkd ('sinkctl session close %llu' ends it)\n", id, cmd, id);
    if (r->secret_file != NULL) {
        /* absolute: the hint works from any directory */
        char *abs = realpath(r->secret_file, NULL);
        const char *path = abs != NULL ? abs : r->secret_file;
        fputs("sinkctl: its secret is in ", stderr);
        resume__put_quoted(stderr, path);
        fprintf(stderr, "; resume it with: sinkctl %s --attach %llu --secret-file ", cmd, id);
        resume__put_quoted(stderr, path);
        fputc('\n', stderr);
        free(abs);
        return;
    }
    fprintf(stderr, "sinkctl: its secret, which resumes it (keep it private): %s\n"
                    "sinkctl: resume it with: " SINKCTL_SECRET_ENV "=<the secret> sinkctl %s "
                    "--attach %llu\n", info->secret, cmd, id);
}

/* Close the persistent session @id that could not be handed over; when
 * that fails too, say how to end it. */
static void resume__abandon(const sinkctl_ctx *ctx, sinkd_client *c, uint64_t id)
{
    int rc = sinkd_client_session_close(c, id, ctx->timeout_ms);
    if (rc != 0)
        fprintf(stderr, "sinkctl: %s: session %llu could not be closed (%s): "
                        "'sinkctl session close %llu' ends it\n", ctx->cmd->name,
                (unsigned long long)id, sinkd_client_strerror(rc), (unsigned long long)id);
}

static int resume__persist(const sinkctl_ctx *ctx, sinkd_client *c, const sinkctl_resume *r,
                           const sinkd_client_session_opts *opts,
                           sinkd_client_session_info *info)
{
    /* The file first: one that exists is refused before a session opens.
     * O_EXCL also refuses a symbolic link planted where it goes, even one
     * that leads nowhere yet (its target is not created). */
    int fd = -1;
    if (r->secret_file != NULL) {
        fd = open(r->secret_file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
            return resume__file_error(ctx, r->secret_file, errno == EEXIST
                                      ? "exists (a file or a link); not overwriting it "
                                        "(name a new file)"
                                      : strerror(errno), SINKCTL_EXIT_USAGE);
    }
    sinkd_client_session_opts o = *opts;
    o.persist = true;
    int rc = sinkd_client_session_open(c, &o, ctx->timeout_ms, info);
    const bool opened = rc == 0;
    int code = SINKCTL_EXIT_OK;
    if (rc == SINKD_ERR_UNSUPPORTED) {
        fprintf(stderr, "sinkctl: %s: sinkd keeps no state directory, so a --persist session "
                        "could not survive a restart (%s)\n", ctx->cmd->name,
                sinkd_client_errmsg(c));
        code = SINKCTL_EXIT_REPLY;
    } else if (!opened) {
        code = sinkctl_fail(ctx, c, rc, NULL);
    }
    if (rc < 0)
        fprintf(stderr, "sinkctl: %s: the daemon may have opened the session before the reply "
                        "was lost: 'sinkctl sessions' lists it\n", ctx->cmd->name);
    if (code == SINKCTL_EXIT_OK && fd >= 0) {
        rc = resume__write(fd, info->secret);
        fd = -1;   /* closed, even on failure */
        if (rc != 0)
            code = resume__file_error(ctx, r->secret_file, strerror(-rc), RESUME_EXIT_IO);
    }
    if (code != SINKCTL_EXIT_OK) {
        if (fd >= 0)
            close(fd);
        if (r->secret_file != NULL)
            unlink(r->secret_file);   /* this call created it (O_EXCL) */
        /* nobody could resume it, or it would not last: do not leave it */
        if (opened)
            resume__abandon(ctx, c, info->session);
        return code;
    }
    resume__announce(ctx, r, info);
    return SINKCTL_EXIT_OK;
}

int sinkctl_resume_open(const sinkctl_ctx *ctx, sinkd_client *c, const sinkctl_resume *r,
                        const sinkd_client_session_opts *opts,
                        sinkd_client_session_info *info, uint64_t *n_past)
{
    *n_past = 0;
    if (r->attach)
        return resume__attach(ctx, c, r, info, n_past);
    if (r->persist)
        return resume__persist(ctx, c, r, opts, info);
    int rc = sinkd_client_session_open(c, opts, ctx->timeout_ms, info);
    return rc != 0 ? sinkctl_fail(ctx, c, rc, NULL) : SINKCTL_EXIT_OK;
}
