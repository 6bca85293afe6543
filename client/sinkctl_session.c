/*
 * sinkctl commands about sessions: sessions, session stats|close|save|forget.
 */
#include "sinkctl.h"

#include <errno.h>
#include <string.h>

static int print_sessions(const sinkctl_ctx *ctx, sinkd_client *c, const msgpack_object *reply)
{
    sinkd_client_session_entry *s;
    size_t n;
    int rc = sinkd_client_session_list_decode(reply, &s, &n);
    if (rc != 0)
        return sinkctl_fail(ctx, c, rc, NULL);
    printf("%-8s %-6s %-16s %-12s %8s %7s %10s %s\n", "SESSION", "UID", "MODEL", "POLICY",
           "TOKENS", "PAGES", "KV", "STATE");
    for (size_t i = 0; i < n; i++) {
        char kv[32];
        sinkctl_format_bytes(kv, sizeof(kv), s[i].bytes);
        printf("%-8llu %-6llu %-16s %-12s %8llu %7llu %10s %s\n",
               (unsigned long long)s[i].session, (unsigned long long)s[i].uid,
               s[i].model[0] ? s[i].model : "(raw)", s[i].policy,
               (unsigned long long)s[i].tokens, (unsigned long long)s[i].pages, kv,
               s[i].generating ? "generating" : "idle");
    }
    sinkd_client_free(s);
    return SINKCTL_EXIT_OK;
}

static int run_sessions(sinkctl_ctx *ctx, int argc, char **argv)
{
    return sinkctl_run_query(ctx, argc, argv, "session.list", print_sessions);
}

const sinkctl_cmd sinkctl_cmd_sessions = {
    .name = "sessions",
    .summary = "List the sessions you own (an admin sees all)",
    .usage = "",
    .help = "Columns: id, owner uid, model, KV policy, positions consumed, KV\n"
            "pages and bytes held, and whether it is generating.\n"
            "With --json, prints the session.list reply.\n",
    .run = run_sessions,
};

static int print_stats(const sinkctl_ctx *ctx, sinkd_client *c, const msgpack_object *reply)
{
    sinkd_client_session_stats st = SINKD_CLIENT_SESSION_STATS_INIT;
    int rc = sinkd_client_session_stats_decode(reply, &st);
    if (rc != 0)
        return sinkctl_fail(ctx, c, rc, NULL);
    char kv[32];
    sinkctl_format_bytes(kv, sizeof(kv), st.bytes);
    printf("session    %llu\n"
           "model      %s\n"
           "policy     %s%s%s\n"
           "tokens     %llu\n"
           "kv         %llu pages, %s\n"
           "evictions  %llu (%llu tokens)\n",
           (unsigned long long)st.session, st.model[0] ? st.model : "(raw)", st.policy,
           st.fallback[0] ? ", fell back: " : "", st.fallback,
           (unsigned long long)st.tokens, (unsigned long long)st.pages, kv,
           (unsigned long long)st.evictions, (unsigned long long)st.evicted_tokens);
    printf("%-6s %8s %10s %8s %7s\n", "LAYER", "LEN_MIN", "LEN_MEAN", "LEN_MAX", "PAGES");
    for (size_t i = 0; i < st.n_layers; i++)
        printf("%-6zu %8llu %10.1f %8llu %7llu\n", i, (unsigned long long)st.layers[i].len_min,
               st.layers[i].len_mean, (unsigned long long)st.layers[i].len_max,
               (unsigned long long)st.layers[i].pages);
    sinkd_client_session_stats_free(&st);
    return SINKCTL_EXIT_OK;
}

/* The reply of close and forget is empty: success says it all. */
static int print_nothing(const sinkctl_ctx *ctx, sinkd_client *c, const msgpack_object *reply)
{
    (void)ctx, (void)c, (void)reply;
    return SINKCTL_EXIT_OK;
}

static int print_saved(const sinkctl_ctx *ctx, sinkd_client *c, const msgpack_object *reply)
{
    const char *path;
    size_t len;
    if (sinkd_map_str(reply, "path", &path, &len) != 0)
        return sinkctl_fail(ctx, c, -EPROTO, NULL);
    printf("%.*s\n", (int)len, path);
    return SINKCTL_EXIT_OK;
}

/* The verbs of `session`, each one op on {session: ID}. */
static const struct {
    const char *verb;
    const char *op;
    sinkctl_human_fn human;
} session_verbs[] = {
    { "stats", "session.stats", print_stats },
    { "close", "session.close", print_nothing },
    { "save", "session.save", print_saved },
    { "forget", "session.forget", print_nothing },
};

#define SESSION_VERBS_USAGE "expected stats, close, save or forget, then a session ID"

static int run_session(sinkctl_ctx *ctx, int argc, char **argv)
{
    int code = 0;
    if (sinkctl_getopt(ctx, argc, argv, "", NULL, &code) == SINKCTL_OPT_EXIT)
        return code;
    if (argc - optind != 2)
        return sinkctl_usage_error(ctx, SESSION_VERBS_USAGE);
    const char *verb = argv[optind];
    sinkctl_field f = { .key = "session" };
    if (sinkctl_parse_u64(argv[optind + 1], UINT64_MAX, &f.u64) != 0)
        return sinkctl_usage_error(ctx, "a session ID is an unsigned integer");
    for (size_t i = 0; i < sizeof(session_verbs) / sizeof(session_verbs[0]); i++)
        if (strcmp(verb, session_verbs[i].verb) == 0)
            return sinkctl_query(ctx, session_verbs[i].op, &f, session_verbs[i].human);
    return sinkctl_usage_error(ctx, SESSION_VERBS_USAGE);
}

const sinkctl_cmd sinkctl_cmd_session = {
    .name = "session",
    .summary = "Show a session's KV statistics, close it, save or forget a snapshot",
    .usage = "stats ID | close ID | save ID | forget ID",
    .help = "  stats ID   positions consumed, KV pages and bytes, evictions, and\n"
            "             per layer the lane lengths over its KV heads\n"
            "  close ID   close the session (also a persistent one)\n"
            "  save ID    write a snapshot of the session now and print its path;\n"
            "             it outlives the session and restarts of sinkd, and\n"
            "             counts against [quota] snapshots_per_uid until forgotten\n"
            "  forget ID  delete the snapshot `save` wrote (the session, if it is\n"
            "             still open, stays)\n"
            "\n"
            "With --json, prints the daemon's reply (session.stats, .close, .save\n"
            "or .forget).\n",
    .run = run_session,
};
