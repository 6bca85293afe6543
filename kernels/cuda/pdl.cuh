/*
 * Programmatic dependent launch (sm_90) for the decode step's kernels.
 *
 * A kernel launched with pdl_launch may start its blocks while the kernel
 * ahead of it on the stream drains. It reads before pdl_wait() only what no
 * recent kernel writes (weights; lane arrays and positions, which come from
 * copies) and touches everything else after it: pdl_wait() returns once
 * the kernel ahead has completed and its writes are visible, and since that
 * kernel waited the same way, everything before it has too. pdl_trigger()
 * lets the next kernel's blocks launch; without it they launch as this
 * kernel exits. Both are no-ops in a kernel launched without the attribute.
 *
 * SINKD_PDL=0 launches every such kernel plainly (read once).
 */
#ifndef SINKD_CUDA_PDL_CUH
#define SINKD_CUDA_PDL_CUH

#include <stdlib.h>
#include <string.h>
#include <utility>

#include "common.cuh"

static __device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
static __device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;"); }

/* False when the environment sets @name to "0" (a switch that turns early
 * launches off). */
static inline bool pdl_env_allows(const char *name)
{
    const char *e = getenv(name);
    return !(e && strcmp(e, "0") == 0);
}

/* Whether pdl_launch sets the attribute: SINKD_PDL unset or not "0". */
static inline bool pdl_env_on(void)
{
    static const bool on = pdl_env_allows("SINKD_PDL");
    return on;
}

/* Launch @k on @stream, as a programmatic dependent launch when @pdl. */
template <typename... P, typename... A>
static cudaError_t pdl_launch(bool pdl, cudaStream_t stream, void (*k)(P...), dim3 grid, dim3 block,
                              size_t smem, A &&...args)
{
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cfg.attrs = &attr;
    cfg.numAttrs = pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, k, std::forward<A>(args)...);
}

#endif
