/*
 * Recorded replays of the decode step's fixed stretches (see model_graph.h).
 */
#include "model_graph.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void model_graph__init(model_graphs *g, int32_t n_stretch, int32_t max_n)
{
    const char *env = getenv("SINKD_CUDA_GRAPHS");
    memset(g, 0, sizeof *g);
    g->on = !(env && strcmp(env, "0") == 0);
    g->n_stretch = n_stretch;
    g->max_n = max_n;
}

void model_graph__free(model_graphs *g, sinkd_backend *be)
{
    if (g->by_n) {
        for (int32_t n = 0; n < g->max_n; n++) {
            if (!g->by_n[n])
                continue;
            for (int32_t s = 0; s < g->n_stretch; s++)
                be->ops->graph_free(be, g->by_n[n][s].graph);
            free(g->by_n[n]);
        }
        free(g->by_n);
    }
    g->by_n = NULL;
    g->count = 0;
    g->failed = false;
}

bool model_graph__active(const model_graphs *g, const sinkd_backend *be)
{
    const sinkd_ops *ops = be->ops;
    return g->on && !g->failed && ops->graph_begin && ops->graph_end && ops->graph_launch &&
           ops->graph_free;
}

/* The slot of stretch @s at @n rows, or NULL when a table cannot be had. */
static model_graph_slot *graph__slot(model_graphs *g, int32_t n, int32_t s)
{
    if (n < 1 || n > g->max_n || s < 0 || s >= g->n_stretch)
        return NULL;
    if (!g->by_n && !(g->by_n = calloc((size_t)g->max_n, sizeof *g->by_n)))
        return NULL;
    model_graph_slot **row = &g->by_n[n - 1];
    if (!*row && !(*row = calloc((size_t)g->n_stretch, sizeof **row)))
        return NULL;
    return &(*row)[s];
}

static int graph__record(model_graphs *g, sinkd_backend *be, model_graph_slot *slot, int32_t s,
                         model_graph_fn fn, const void *ctx)
{
    void *graph = NULL;
    int rc = be->ops->graph_begin(be);
    if (rc == 0) {
        int rc_fn = fn(ctx, s);
        rc = be->ops->graph_end(be, &graph);
        if (rc == 0 && rc_fn) {
            be->ops->graph_free(be, graph);
            rc = rc_fn;
        }
    }
    if (rc) {
        /* Nothing of the stretch ran while it was being recorded. */
        fprintf(stderr, "<4>sinkd: model: recording a CUDA graph of the decode step failed (%s); "
                "decoding without graphs from now on\n", strerror(-rc));
        g->failed = true;
        return fn(ctx, s);
    }
    slot->graph = graph;
    g->count++;
    return be->ops->graph_launch(be, graph);
}

int model_graph__run(model_graphs *g, sinkd_backend *be, int32_t n, int32_t s, model_graph_fn fn,
                     const void *ctx)
{
    model_graph_slot *slot = model_graph__active(g, be) ? graph__slot(g, n, s) : NULL;
    if (!slot)
        return fn(ctx, s);
    if (slot->graph)
        return be->ops->graph_launch(be, slot->graph);
    if (!slot->warm) {
        int rc = fn(ctx, s);
        slot->warm = rc == 0;
        return rc;
    }
    return graph__record(g, be, slot, s, fn, ctx);
}
