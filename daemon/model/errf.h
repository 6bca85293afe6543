/*
 * Error messages of the model runner's loaders: a printf into the caller's
 * optional (err, errlen) buffer that returns the error code, so that a
 * failure is one statement: return model__errf(err, errlen, -EINVAL, "...").
 */
#ifndef SINKD_MODEL_ERRF_H
#define SINKD_MODEL_ERRF_H

#include <stddef.h>

/* Format into @err (when not NULL and errlen > 0, NUL-terminated, truncated)
 * and return @rc. */
int model__errf(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
