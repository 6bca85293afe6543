/* sinkd: command line, configuration, then the server loop. */
#include "config.h"
#include "log.h"
#include "ops.h"
#include "ops_engine.h"
#include "server.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
    size_t n;
    const sinkd_cfg_key *k = sinkd_config_keys(&n);

    fprintf(f,
            "Usage: sinkd [OPTION]...\n"
            "Serve a language model and its KV caches to local clients over a Unix socket.\n\n"
            "  --config FILE       read the INI configuration FILE (re-read on SIGHUP)\n"
            "  --socket PATH       listen on PATH (overrides [server] socket)\n"
            "  --log-level LEVEL   err, warning, notice, info or debug\n"
            "  --backend NAME      auto, cpu or cuda (overrides [engine] backend)\n"
            "  --model NAME=PATH   add or replace model NAME (repeatable)\n"
            "  --help              show this help and exit\n"
            "  --version           show the version and exit\n\n"
            "Configuration keys (default in brackets):\n");
    for (size_t i = 0; i < n; i++)
        fprintf(f, "  [%s] %-20s %s [%s]\n", k[i].section, k[i].key, k[i].help, k[i].def);
}

/* Command-line flags become overrides so that SIGHUP re-applies them on top
 * of the re-read file. Returns 0, 1 when the program should exit 0 (help,
 * version), or -1 after printing an error. */
static int parse_args(int argc, char **argv, const char **config, sinkd_config_overrides *ov)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "socket", required_argument, NULL, 's' },
        { "log-level", required_argument, NULL, 'l' },
        { "backend", required_argument, NULL, 'b' },
        { "model", required_argument, NULL, 'm' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    char section[128];
    int o, rc = 0;

    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1 && rc == 0) {
        switch (o) {
        case 'c':
            *config = optarg;
            break;
        case 's':
            rc = sinkd_config_override_add(ov, "server", "socket", optarg, "--socket");
            break;
        case 'l':
            rc = sinkd_config_override_add(ov, "server", "log_level", optarg, "--log-level");
            break;
        case 'b':
            rc = sinkd_config_override_add(ov, "engine", "backend", optarg, "--backend");
            break;
        case 'm': {
            const char *eq = strchr(optarg, '=');
            if (!eq || (size_t)(eq - optarg) > 64) {
                fprintf(stderr, "<3>sinkd: --model %s: expected NAME=PATH\n", optarg);
                return -1;
            }
            snprintf(section, sizeof section, "model \"%.*s\"", (int)(eq - optarg), optarg);
            rc = sinkd_config_override_add(ov, section, "path", eq + 1, "--model");
            break;
        }
        case 'h':
            usage(stdout);
            return 1;
        case 'V':
            printf("sinkd %s (protocol %d)\n", SINKD_VERSION, SINKD_PROTO_VERSION);
            return 1;
        default:
            fprintf(stderr, "<3>sinkd: try --help\n");
            return -1;
        }
    }
    if (rc < 0) {
        fprintf(stderr, "<3>sinkd: out of memory\n");
        return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "<3>sinkd: unexpected argument '%s' (try --help)\n", argv[optind]);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    sinkd_config_overrides ov = SINKD_CONFIG_OVERRIDES_INIT;
    char err[SINKD_CONFIG_ERR_MAX];
    const char *config = NULL;
    sinkd_config cfg;
    sinkd_server srv;
    uv_loop_t loop;
    int rc, status = 1;

    rc = parse_args(argc, argv, &config, &ov);
    if (rc != 0) {
        sinkd_config_overrides_free(&ov);
        return rc > 0 ? 0 : 1;
    }
    if (sinkd_config_read(&cfg, config, &ov, err, sizeof err) < 0) {
        sinkd_log(SINKD_LOG_ERR, "configuration: %s", err);
        sinkd_config_overrides_free(&ov);
        return 1;
    }
    sinkd_log_set_level(cfg.log_level);
    if (sinkd_ops_check() < 0) {
        sinkd_config_free(&cfg);
        sinkd_config_overrides_free(&ov);
        return 1;
    }
    /* Writes use MSG_NOSIGNAL; this covers any other path to a dead peer. */
    signal(SIGPIPE, SIG_IGN);
    sinkd_log(SINKD_LOG_NOTICE, "sinkd %s starting (pid %d, config %s)", SINKD_VERSION,
              (int)getpid(), config ? config : "none");

    rc = uv_loop_init(&loop);
    if (rc < 0) {
        sinkd_log(SINKD_LOG_ERR, "event loop: %s", uv_strerror(rc));
        sinkd_config_free(&cfg);
        sinkd_config_overrides_free(&ov);
        return 1;
    }
    rc = sinkd_server_init(&srv, &loop, &cfg, config, &ov);
    if (rc < 0) {
        sinkd_log(SINKD_LOG_ERR, "server: %s", strerror(-rc));
    } else {
        /* The engine (backend, models, KV pool, policies) before listening:
         * a client never sees a daemon that cannot serve. */
        rc = sinkd_engine_ops_start(&srv, err, sizeof err);
        if (rc == 0)
            rc = sinkd_server_listen(&srv, err, sizeof err);
        if (rc < 0) {
            sinkd_log(SINKD_LOG_ERR, "%s", err);
            sinkd_server_stop(&srv);
        }
        uv_run(&loop, UV_RUN_DEFAULT);
        sinkd_engine_ops_stop();
        uv_run(&loop, UV_RUN_DEFAULT);  /* the engine's timer closes */
        sinkd_server_free(&srv);
        sinkd_engine_ops_free();
        if (rc == 0) {
            sinkd_log(SINKD_LOG_NOTICE, "stopped");
            status = 0;
        }
    }
    if (uv_loop_close(&loop) < 0)
        sinkd_log(SINKD_LOG_WARNING, "event loop closed with handles still open");
    sinkd_config_overrides_free(&ov);
    return status;
}
