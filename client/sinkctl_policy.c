/*
 * sinkctl policy: list, load, reload, unload and show KV policies.
 */
#include "sinkctl.h"

#include <string.h>

static int print_policies(const sinkctl_ctx *ctx, sinkd_client *c, const msgpack_object *reply)
{
    sinkd_client_policy *p;
    size_t n;
    int rc = sinkd_client_policy_list_decode(reply, &p, &n);
    if (rc != 0)
        return sinkctl_fail(ctx, c, rc, NULL);
    printf("%-14s %-8s %-7s %9s %4s  %s\n", "NAME", "VERSION", "KIND", "SESSIONS", "GEN",
           "SUMMARY");
    for (size_t i = 0; i < n; i++)
        printf("%-14s %-8s %-7s %9llu %4llu  %s\n", p[i].name, p[i].version,
               p[i].builtin ? "builtin" : "plugin", (unsigned long long)p[i].instances,
               (unsigned long long)p[i].generation, p[i].summary);
    sinkd_client_free(p);
    return SINKCTL_EXIT_OK;
}

/* The entry named @name of a policy.list reply, or NULL. */
static const msgpack_object *find_policy(const msgpack_object *reply, const char *name)
{
    const msgpack_object_array *arr;
    if (sinkd_map_array(reply, "policies", &arr) != 0)
        return NULL;
    for (uint32_t i = 0; i < arr->size; i++)
        if (sinkd_obj_streq(sinkd_map_get(&arr->ptr[i], "name"), name))
            return &arr->ptr[i];
    return NULL;
}

static int run_show(const sinkctl_ctx *ctx, const char *name)
{
    sinkd_client *c = NULL;
    int code = sinkctl_connect(ctx, &c);
    if (code != SINKCTL_EXIT_OK)
        return code;
    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.op = "policy.list";
    req.timeout_ms = ctx->timeout_ms;
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = sinkd_client_request(c, &req, &rep);
    const msgpack_object *m = rc == 0 ? find_policy(rep.map, name) : NULL;
    sinkd_client_policy p;
    if (rc != 0) {
        code = sinkctl_fail(ctx, c, rc, &rep);
    } else if (m == NULL) {
        fprintf(stderr, "sinkctl: policy: not_found: no policy '%s'\n", name);
        code = SINKCTL_EXIT_REPLY;
    } else if (ctx->json) {
        sinkctl_json_write(stdout, m);
        fputc('\n', stdout);
    } else if ((rc = sinkd_client_policy_decode(m, &p)) != 0) {
        code = sinkctl_fail(ctx, c, rc, NULL);
    } else {
        printf("name        %s\n"
               "version     %s\n"
               "summary     %s\n"
               "kind        %s\n"
               "path        %s\n"
               "sessions    %llu\n"
               "generation  %llu\n",
               p.name, p.version, p.summary, p.builtin ? "builtin" : "plugin",
               p.path[0] ? p.path : "-", (unsigned long long)p.instances,
               (unsigned long long)p.generation);
    }
    sinkd_client_reply_free(&rep);
    sinkd_client_close(c);
    return code;
}

static int print_loaded(const sinkctl_ctx *ctx, sinkd_client *c, const msgpack_object *reply)
{
    (void)ctx, (void)c;
    const char *name;
    size_t len;
    if (sinkd_map_str(reply, "name", &name, &len) == 0)
        printf("loaded %.*s\n", (int)len, name);
    return SINKCTL_EXIT_OK;
}

static int print_reloaded(const sinkctl_ctx *ctx, sinkd_client *c, const msgpack_object *reply)
{
    (void)ctx, (void)c;
    uint64_t gen;
    if (sinkd_map_u64(reply, "generation", &gen) == 0)
        printf("reloaded, generation %llu\n", (unsigned long long)gen);
    return SINKCTL_EXIT_OK;
}

static int print_nothing(const sinkctl_ctx *ctx, sinkd_client *c, const msgpack_object *reply)
{
    (void)ctx, (void)c, (void)reply;
    return SINKCTL_EXIT_OK;
}

static int run_policy(sinkctl_ctx *ctx, int argc, char **argv)
{
    int code = 0;
    if (sinkctl_getopt(ctx, argc, argv, "", NULL, &code) == SINKCTL_OPT_EXIT)
        return code;
    int n = argc - optind;
    const char *verb = n > 0 ? argv[optind] : "";
    const char *arg = n > 1 ? argv[optind + 1] : NULL;
    if ((strcmp(verb, "ls") == 0 || strcmp(verb, "list") == 0) && n == 1)
        return sinkctl_query(ctx, "policy.list", NULL, print_policies);
    if (n != 2 || arg[0] == '\0')
        return sinkctl_usage_error(ctx, "expected ls, load PATH, reload NAME, unload NAME "
                                        "or show NAME");
    if (strcmp(verb, "show") == 0)
        return run_show(ctx, arg);
    sinkctl_field f = { .key = "name", .str = arg };
    if (strcmp(verb, "load") == 0) {
        f.key = "path";
        return sinkctl_query(ctx, "policy.load", &f, print_loaded);
    }
    if (strcmp(verb, "reload") == 0)
        return sinkctl_query(ctx, "policy.reload", &f, print_reloaded);
    if (strcmp(verb, "unload") == 0)
        return sinkctl_query(ctx, "policy.unload", &f, print_nothing);
    return sinkctl_usage_error(ctx, "expected ls, load PATH, reload NAME, unload NAME "
                                    "or show NAME");
}

const sinkctl_cmd sinkctl_cmd_policy = {
    .name = "policy",
    .summary = "List, load, reload, unload or show KV-cache policies",
    .usage = "ls | load PATH | reload NAME | unload NAME | show NAME",
    .help = "  ls            the policies the daemon knows (built-ins and plugins)\n"
            "  load PATH     load a plugin (admin; PATH in a configured plugin dir)\n"
            "  reload NAME   load NAME's file again; sessions keep their instance\n"
            "                until they switch (admin)\n"
            "  unload NAME   unload a plugin no session uses (admin)\n"
            "  show NAME     one policy's details\n"
            "\n"
            "With --json, prints the reply (show: the policy's policy.list entry).\n",
    .run = run_policy,
};
