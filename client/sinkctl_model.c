/*
 * sinkctl commands about models and text: models, tokenize.
 */
#include "sinkctl.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int print_models(const sinkctl_ctx *ctx, sinkd_client *c, const msgpack_object *reply)
{
    sinkd_client_model *m;
    size_t n;
    int rc = sinkd_client_model_list_decode(reply, &m, &n);
    if (rc != 0)
        return sinkctl_fail(ctx, c, rc, NULL);
    printf("%-16s %-6s %6s %7s %5s %5s %6s %7s %8s %-5s %10s\n", "NAME", "ARCH", "LAYERS",
           "HEADS", "KV", "HDIM", "DIM", "VOCAB", "CONTEXT", "DTYPE", "WEIGHTS");
    for (size_t i = 0; i < n; i++) {
        char size[32];
        sinkctl_format_bytes(size, sizeof(size), m[i].weight_bytes);
        printf("%-16s %-6s %6u %7u %5u %5u %6u %7u %8u %-5s %10s\n", m[i].name, m[i].arch,
               m[i].n_layers, m[i].n_heads, m[i].n_kv_heads, m[i].head_dim, m[i].dim,
               m[i].n_vocab, m[i].ctx_len, m[i].dtype, size);
    }
    sinkd_client_free(m);
    return SINKCTL_EXIT_OK;
}

static int run_models(sinkctl_ctx *ctx, int argc, char **argv)
{
    return sinkctl_run_query(ctx, argc, argv, "model.list", print_models);
}

const sinkctl_cmd sinkctl_cmd_models = {
    .name = "models",
    .summary = "List the daemon's models and their geometry",
    .usage = "",
    .help = "Columns: layers, attention heads, KV heads, head size, model width,\n"
            "vocabulary, trained context, weight type and size.\n"
            "With --json, prints the model.list reply.\n",
    .run = run_models,
};

/* @len bytes of a token's text, readable: printable ASCII as is, the rest
 * as C escapes (pieces of a multibyte character are not text on their own). */
static void print_piece(FILE *f, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '\\')
            fputs("\\\\", f);
        else if (ch == '\n')
            fputs("\\n", f);
        else if (ch == '\t')
            fputs("\\t", f);
        else if (isprint(ch))
            fputc(ch, f);
        else
            fprintf(f, "\\x%02x", ch);
    }
}

enum { OPT_MODEL = 0x200, OPT_BOS, OPT_NO_BOS, OPT_SPECIAL };

static int run_tokenize(sinkctl_ctx *ctx, int argc, char **argv)
{
    static const struct option longopts[] = {
        { "model", required_argument, NULL, OPT_MODEL },
        { "bos", no_argument, NULL, OPT_BOS },
        { "no-bos", no_argument, NULL, OPT_NO_BOS },
        { "special", no_argument, NULL, OPT_SPECIAL },
        { NULL, 0, NULL, 0 },
    };
    const char *model = NULL;
    int bos = SINKD_CLIENT_BOS_DEFAULT;
    bool special = false, verbose = false;
    int code = 0, opt;
    while ((opt = sinkctl_getopt(ctx, argc, argv, "v", longopts, &code)) != -1) {
        if (opt == SINKCTL_OPT_EXIT)
            return code;
        if (opt == OPT_MODEL)
            model = optarg;
        else if (opt == OPT_BOS || opt == OPT_NO_BOS)
            bos = opt == OPT_BOS;
        else if (opt == OPT_SPECIAL)
            special = true;
        else if (opt == 'v')
            verbose = true;
    }
    if (argc - optind != 1)
        return sinkctl_usage_error(ctx, "expected one TEXT operand");
    const char *text = argv[optind];

    sinkd_client *c = NULL;
    code = sinkctl_connect(ctx, &c);
    if (code != SINKCTL_EXIT_OK)
        return code;
    int32_t *ids = NULL;
    size_t n = 0;
    char **pieces = NULL;
    size_t *lens = NULL;
    int rc = sinkd_client_tokenize(c, model, text, strlen(text), bos, special,
                                   ctx->timeout_ms, &ids, &n);
    if (rc == 0 && verbose && n > 0) {
        pieces = calloc(n, sizeof(*pieces));
        lens = calloc(n, sizeof(*lens));
        if (pieces == NULL || lens == NULL)
            rc = -ENOMEM;
        /* One request per token: the text of each id on its own. */
        for (size_t i = 0; rc == 0 && i < n; i++)
            rc = sinkd_client_detokenize(c, model, &ids[i], 1, ctx->timeout_ms,
                                         &pieces[i], &lens[i]);
    }
    if (rc != 0) {
        code = sinkctl_fail(ctx, c, rc, NULL);
    } else if (ctx->json) {
        fputs("{\"ids\":[", stdout);
        for (size_t i = 0; i < n; i++)
            printf("%s%d", i > 0 ? "," : "", (int)ids[i]);
        if (verbose) {
            fputs("],\"pieces\":[", stdout);
            for (size_t i = 0; i < n; i++) {
                if (i > 0)
                    fputc(',', stdout);
                sinkctl_json_str(stdout, pieces[i], lens[i]);
            }
        }
        fputs("]}\n", stdout);
    } else if (verbose) {
        for (size_t i = 0; i < n; i++) {
            printf("%6d  '", (int)ids[i]);
            print_piece(stdout, pieces[i], lens[i]);
            fputs("'\n", stdout);
        }
    } else {
        for (size_t i = 0; i < n; i++)
            printf("%s%d", i > 0 ? " " : "", (int)ids[i]);
        fputc('\n', stdout);
    }
    for (size_t i = 0; pieces != NULL && i < n; i++)
        sinkd_client_free(pieces[i]);
    free(pieces);
    free(lens);
    sinkd_client_free(ids);
    sinkd_client_close(c);
    return code;
}

const sinkctl_cmd sinkctl_cmd_tokenize = {
    .name = "tokenize",
    .summary = "Show the token ids of TEXT",
    .usage = "[--model M] [--bos|--no-bos] [--special] [-v] TEXT",
    .help = "Options:\n"
            "  --model M      tokenizer of model M (default: the daemon's first)\n"
            "  --bos          start with the beginning-of-sequence token\n"
            "  --no-bos       do not (default: as the model says)\n"
            "  --special      read special-token text such as <s> as that token\n"
            "  -v             one token per line with its text (C escapes)\n"
            "\n"
            "Prints the ids on one line. With --json, prints {ids} ({ids, pieces}\n"
            "with -v).\n",
    .run = run_tokenize,
};
