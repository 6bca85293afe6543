/*
 * Backend selection and the dtype helpers shared by both backends.
 * Built with -DSINKD_HAVE_CUDA when the CUDA backend is linked in; otherwise
 * its entry points are stubs that report -ENODEV.
 */
#include <errno.h>
#include <string.h>

#include "backend.h"

size_t sinkd_dtype_bytes(sinkd_dtype dt, size_t n)
{
    switch (dt) {
    case SINKD_F32:
        return 4 * n;
    case SINKD_F16:
    case SINKD_BF16:
        return 2 * n;
    case SINKD_Q8_0:
        return n / 32 * 34; /* f16 scale + 32 int8 per block */
    }
    return 0;
}

const char *sinkd_dtype_name(sinkd_dtype dt)
{
    switch (dt) {
    case SINKD_F32:
        return "f32";
    case SINKD_F16:
        return "f16";
    case SINKD_BF16:
        return "bf16";
    case SINKD_Q8_0:
        return "q8_0";
    }
    return "?";
}

#ifndef SINKD_HAVE_CUDA
int sinkd_cuda_backend_open(sinkd_backend **out)
{
    (void)out;
    return -ENODEV;
}

void sinkd_cuda_backend_close(sinkd_backend *be)
{
    (void)be; /* nothing can have been opened */
}

bool sinkd_cuda_built(void)
{
    return false;
}
#else
bool sinkd_cuda_built(void)
{
    return true;
}
#endif

int sinkd_backend_open(const char *name, int threads, sinkd_backend **out)
{
    if (!name || !out || threads < 0)
        return -EINVAL;
    *out = NULL;
    if (strcmp(name, "cpu") == 0)
        return sinkd_cpu_backend_open(threads, out);
    if (strcmp(name, "cuda") == 0)
        return sinkd_cuda_backend_open(out);
    if (strcmp(name, "auto") == 0) {
        if (sinkd_cuda_backend_open(out) == 0)
            return 0;
        return sinkd_cpu_backend_open(threads, out);
    }
    return -EINVAL;
}

void sinkd_backend_close(sinkd_backend *be)
{
    if (!be)
        return;
    if (strcmp(be->info.name, "cuda") == 0)
        sinkd_cuda_backend_close(be);
    else
        sinkd_cpu_backend_close(be);
}
