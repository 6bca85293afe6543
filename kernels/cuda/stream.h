/*
 * The CUDA backend's stream, for programs that time its ops with CUDA events
 * (bench/attention). Plain C; include only where the CUDA runtime is linked.
 */
#ifndef SINKD_CUDA_STREAM_H
#define SINKD_CUDA_STREAM_H

#include <cuda_runtime.h>

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The stream every op of @be (opened by sinkd_cuda_backend_open) is queued
 * on; owned by @be, valid until sinkd_backend_close. This function can't
 * fail. */
cudaStream_t sinkd_cuda_backend_stream(sinkd_backend *be);

#ifdef __cplusplus
}
#endif
#endif
