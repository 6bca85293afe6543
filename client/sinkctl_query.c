/*
 * sinkctl: the shape most commands share. Connect, send one request with at
 * most one field, print the reply as JSON (--json) or through the command's
 * own printer.
 */
#include "sinkctl.h"

static int query__pack(msgpack_packer *pk, void *arg)
{
    const sinkctl_field *f = arg;
    if (f->str != NULL)
        sinkd_pack_kv_str(pk, f->key, f->str);
    else
        sinkd_pack_kv_u64(pk, f->key, f->u64);
    return 0;
}

int sinkctl_query(const sinkctl_ctx *ctx, const char *op, const sinkctl_field *field,
                  sinkctl_human_fn human)
{
    sinkd_client *c = NULL;
    int code = sinkctl_connect(ctx, &c);
    if (code != SINKCTL_EXIT_OK)
        return code;

    sinkd_client_req req = SINKD_CLIENT_REQ_INIT;
    req.op = op;
    req.timeout_ms = ctx->timeout_ms;
    if (field != NULL) {
        req.nfields = 1;
        req.pack = query__pack;
        req.pack_arg = (void *)field;
    }
    sinkd_client_reply rep = SINKD_CLIENT_REPLY_INIT;
    int rc = sinkd_client_request(c, &req, &rep);
    if (rc != 0) {
        code = sinkctl_fail(ctx, c, rc, &rep);
    } else if (ctx->json) {
        sinkctl_json_write(stdout, rep.map);
        fputc('\n', stdout);
    } else {
        code = human(ctx, c, rep.map);
    }
    sinkd_client_reply_free(&rep);
    sinkd_client_close(c);
    return code;
}

int sinkctl_run_query(sinkctl_ctx *ctx, int argc, char **argv, const char *op,
                      sinkctl_human_fn human)
{
    int code = 0;
    if (sinkctl_getopt(ctx, argc, argv, "", NULL, &code) == SINKCTL_OPT_EXIT)
        return code;
    code = sinkctl_no_operands(ctx, argc, argv);
    if (code != SINKCTL_EXIT_OK)
        return code;
    return sinkctl_query(ctx, op, NULL, human);
}

int sinkctl_no_operands(const sinkctl_ctx *ctx, int argc, char **argv)
{
    if (optind < argc) {
        char msg[160];
        snprintf(msg, sizeof(msg), "unexpected argument '%s'", argv[optind]);
        return sinkctl_usage_error(ctx, msg);
    }
    return SINKCTL_EXIT_OK;
}

void sinkctl_format_bytes(char *buf, size_t size, uint64_t bytes)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    double v = (double)bytes;
    size_t u = 0;
    while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, size, "%llu B", (unsigned long long)bytes);
    else
        snprintf(buf, size, "%.1f %s", v, units[u]);
}
