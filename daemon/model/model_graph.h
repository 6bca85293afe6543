/*
 * Recorded replays (CUDA graphs) of the decode step's fixed stretches.
 *
 * A decode step alternates stretches of ops whose every argument is the same
 * at each step of a batch of n sequences (norms, matmuls, elementwise ops
 * over the model's scratch buffers) with ops whose arguments change every
 * step (uploads, KV append, the lane tables, the policy hook, attention).
 * Stretch s of batch size n runs eagerly the first time (so the backend's
 * scratch buffers reach their size and its kernels are loaded), is recorded
 * the second time and replayed from then on. Graphs live as long as the
 * model. Internal to daemon/model.
 */
#ifndef SINKD_MODEL_GRAPH_H
#define SINKD_MODEL_GRAPH_H

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"

/* Issues the ops of stretch @s (eagerly, or into an open recording). */
typedef int (*model_graph_fn)(const void *ctx, int32_t s);

typedef struct model_graph_slot {
    void *graph; /* the backend's executable graph, or NULL */
    bool warm;   /* ran eagerly once: the next run records */
} model_graph_slot;

typedef struct model_graphs {
    bool on;                 /* wanted (SINKD_CUDA_GRAPHS, sinkd_model_graphs_set) */
    bool failed;             /* a recording failed: eager from then on */
    int32_t n_stretch;       /* stretches per step */
    int32_t max_n;           /* largest batch size */
    int32_t count;           /* graphs recorded */
    model_graph_slot **by_n; /* [max_n], each [n_stretch] or NULL; lazily */
} model_graphs;

/* Set up @g for steps of at most @max_n rows made of @n_stretch stretches;
 * on = false when the environment has SINKD_CUDA_GRAPHS=0. Allocates
 * nothing (tables come with the first step). */
void model_graph__init(model_graphs *g, int32_t n_stretch, int32_t max_n);

/* Free every graph on @be and the tables; @g is then as after init with
 * nothing recorded. */
void model_graph__free(model_graphs *g, sinkd_backend *be);

/* True when decode steps on @be replay graphs: wanted, the backend has the
 * graph ops, and no recording failed. */
bool model_graph__active(const model_graphs *g, const sinkd_backend *be);

/* Run stretch @s of a step of @n rows (1..max_n): replay its graph, record
 * it, or call @fn(@ctx, @s) eagerly (graphs inactive, first run, or out of
 * memory for the table). A failed recording logs once, turns graphs off for
 * good and runs the stretch eagerly. Returns 0, @fn's error or the
 * backend's. */
int model_graph__run(model_graphs *g, sinkd_backend *be, int32_t n, int32_t s, model_graph_fn fn,
                     const void *ctx);

#endif /* SINKD_MODEL_GRAPH_H */
