/*
 * sinkctl: opening a persistent session and resuming one (chat --persist,
 * --attach, --secret-file). The contract is in sinkctl_resume.h.
 */
#include "sinkctl_resume.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Room for a secret: sinkd's are 32 hex digits; anything near this long is
 * not one. */
#define RESUME_SECRET_MAX 128

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
    return SINKCTL_EXIT_OK;
}

/* Print that the --secret-file @path cannot be used because of @err;
 * returns the exit code. */
static int resume__file_error(const sinkctl_ctx *ctx, const char *path, const char *err)
{
    fprintf(stderr, "sinkctl: %s: --secret-file %s: %s\n", ctx->cmd->name, path, err);
    return SINKCTL_EXIT_USAGE;
}

/* The secret for --attach into @buf of @size bytes: the first line of
 * --secret-file, else $SINKD_SECRET. Returns an exit code. */
static int resume__secret(const sinkctl_ctx *ctx, const sinkctl_resume *r, char *buf,
                          size_t size)
{
    if (r->secret_file == NULL) {
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
    FILE *f = fopen(r->secret_file, "re");
    if (f == NULL)
        return resume__file_error(ctx, r->secret_file, strerror(errno));
    bool got = fgets(buf, (int)size, f) != NULL;
    fclose(f);
    size_t n = got ? strcspn(buf, "\r\n") : 0;
    if (n == 0)
        return resume__file_error(ctx, r->secret_file, "no secret on its first line");
    if (n + 1 >= size)
        return resume__file_error(ctx, r->secret_file, "its first line is too long for a secret");
    buf[n] = '\0';
    return SINKCTL_EXIT_OK;
}

static int resume__attach(const sinkctl_ctx *ctx, sinkd_client *c, const sinkctl_resume *r,
                          sinkd_client_session_info *info, uint64_t *n_past)
{
    char secret[RESUME_SECRET_MAX];
    int code = resume__secret(ctx, r, secret, sizeof(secret));
    if (code != SINKCTL_EXIT_OK)
        return code;
    int rc = sinkd_client_session_attach(c, r->session, secret, ctx->timeout_ms, info, n_past);
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
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    return rc;
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
        fprintf(stderr, "sinkctl: its secret is in %s; resume it with: sinkctl %s --attach "
                        "%llu --secret-file %s\n", r->secret_file, cmd, id, r->secret_file);
        return;
    }
    fprintf(stderr, "sinkctl: its secret, which resumes it (keep it private): %s\n"
                    "sinkctl: resume it with: " SINKCTL_SECRET_ENV "=<the secret> sinkctl %s "
                    "--attach %llu\n", info->secret, cmd, id);
}

static int resume__persist(const sinkctl_ctx *ctx, sinkd_client *c, const sinkctl_resume *r,
                           const sinkd_client_session_opts *opts,
                           sinkd_client_session_info *info)
{
    /* The file first: one that exists is refused before a session opens.
     * O_EXCL also refuses a symbolic link planted where it goes. */
    int fd = -1;
    if (r->secret_file != NULL) {
        fd = open(r->secret_file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
            return resume__file_error(ctx, r->secret_file, errno == EEXIST
                                      ? "exists; not overwriting it (name a new file)"
                                      : strerror(errno));
    }
    sinkd_client_session_opts o = *opts;
    o.persist = true;
    int rc = sinkd_client_session_open(c, &o, ctx->timeout_ms, info);
    if (rc != 0) {
        int code = sinkctl_fail(ctx, c, rc, NULL);
        if (fd >= 0) {
            close(fd);
            unlink(r->secret_file);
        }
        return code;
    }
    if (fd >= 0 && (rc = resume__write(fd, info->secret)) != 0) {
        unlink(r->secret_file);
        /* nobody could resume it: do not leave it in the daemon */
        sinkd_client_session_close(c, info->session, ctx->timeout_ms);
        return resume__file_error(ctx, r->secret_file, strerror(-rc));
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
