/*
 * Recorded replays of the backend's stream (CUDA graphs): a stretch of ops
 * is captured once and relaunched with one call, which saves the host a few
 * microseconds per kernel (a decode step of a small batch is launch-bound).
 *
 * The capture is thread-local: it records this thread's ops on the
 * backend's stream and forbids this thread alone the calls a replay could
 * not repeat (synchronising, allocating). Other threads keep allocating
 * freely. sinkd_cuda_buf_reserve refuses to grow a buffer inside a capture
 * (-EBUSY), so a capture that would need a bigger scratch buffer fails
 * cleanly: the caller runs the ops eagerly once (growing it) before it
 * records them.
 */
#include <stdlib.h>

#include "common.cuh"

int sinkd_cuda_graph_begin(sinkd_cuda *c)
{
    cudaStreamCaptureStatus st;
    SINKD_CUDA_TRY(cudaStreamIsCapturing(c->stream, &st));
    if (st != cudaStreamCaptureStatusNone)
        return -EBUSY;
    SINKD_CUDA_TRY(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    return 0;
}

int sinkd_cuda_graph_end(sinkd_cuda *c, void **out)
{
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &g);
    if (out)
        *out = NULL;
    if (e != cudaSuccess || !g || !out) {
        if (g)
            cudaGraphDestroy(g);
        cudaGetLastError(); /* an invalidated capture leaves its error behind */
        return !out ? -EINVAL : e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO;
    }
    cudaGraphExec_t x = NULL;
    e = cudaGraphInstantiate(&x, g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO;
    }
    c->n_graphs++;
    *out = x;
    return 0;
}

int sinkd_cuda_graph_launch(sinkd_cuda *c, void *graph)
{
    if (!graph)
        return -EINVAL;
    SINKD_CUDA_TRY(cudaGraphLaunch((cudaGraphExec_t)graph, c->stream));
    return 0;
}

void sinkd_cuda_graph_free(sinkd_cuda *c, void *graph)
{
    if (!graph)
        return;
    /* A launch still in flight may read the parked buffers freed below. */
    cudaStreamSynchronize(c->stream);
    cudaGraphExecDestroy((cudaGraphExec_t)graph);
    if (--c->n_graphs == 0)
        sinkd_cuda_retired_free(c);
}

void sinkd_cuda_retired_free(sinkd_cuda *c)
{
    for (size_t i = 0; i < c->n_retired; i++)
        cudaFree(c->retired[i]);
    free(c->retired);
    c->retired = NULL;
    c->n_retired = c->cap_retired = 0;
}
