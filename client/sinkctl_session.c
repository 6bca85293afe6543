/*
 * sinkctl commands about sessions: sessions, session stats|close.
 */
#include "sinkctl.h"

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

static int print_closed(const sinkctl_ctx *ctx, sinkd_client *c, const msgpack_object *reply)
{
    (void)ctx, (void)c, (void)reply;
    return SINKCTL_EXIT_OK;
}

static int run_session(sinkctl_ctx *ctx, int argc, char **argv)
{
    int code = 0;
    if (sinkctl_getopt(ctx, argc, argv, "", NULL, &code) == SINKCTL_OPT_EXIT)
        return code;
    if (argc - optind != 2)
        return sinkctl_usage_error(ctx, "expected stats ID or close ID");
    const char *verb = argv[optind];
    sinkctl_field f = { .key = "session" };
    if (sinkctl_parse_u64(argv[optind + 1], UINT64_MAX, &f.u64) != 0)
        return sinkctl_usage_error(ctx, "a session ID is an unsigned integer");
    if (strcmp(verb, "stats") == 0)
        return sinkctl_query(ctx, "session.stats", &f, print_stats);
    if (strcmp(verb, "close") == 0)
        return sinkctl_query(ctx, "session.close", &f, print_closed);
    return sinkctl_usage_error(ctx, "expected stats ID or close ID");
}

const sinkctl_cmd sinkctl_cmd_session = {
    .name = "session",
    .summary = "Show a session's KV statistics, or close it",
    .usage = "stats ID | close ID",
    .help = "  stats ID   positions consumed, KV pages and bytes, evictions, and\n"
            "             per layer the lane lengths over its KV heads\n"
            "  close ID   close the session (also a persistent one)\n"
            "\n"
            "With --json, prints the session.stats or session.close reply.\n",
    .run = run_session,
};
