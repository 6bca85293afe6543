/*
 * The error-code table: the enum the C API carries and the snake_case names
 * the wire carries. Append only, in enum order.
 */
#include "proto.h"

#include <string.h>

static const char *const names[SINKD_ERR__COUNT] = {
    [SINKD_ERR_NONE] = "none",
    [SINKD_ERR_BAD_FRAME] = "bad_frame",
    [SINKD_ERR_FRAME_TOO_LARGE] = "frame_too_large",
    [SINKD_ERR_BAD_REQUEST] = "bad_request",
    [SINKD_ERR_UNKNOWN_OP] = "unknown_op",
    [SINKD_ERR_UNSUPPORTED_VERSION] = "unsupported_version",
    [SINKD_ERR_PERMISSION_DENIED] = "permission_denied",
    [SINKD_ERR_NOT_FOUND] = "not_found",
    [SINKD_ERR_NO_MEMORY] = "no_memory",
    [SINKD_ERR_QUOTA_EXCEEDED] = "quota_exceeded",
    [SINKD_ERR_BUSY] = "busy",
    [SINKD_ERR_BAD_SHM] = "bad_shm",
    [SINKD_ERR_CANCELLED] = "cancelled",
    [SINKD_ERR_SHUTTING_DOWN] = "shutting_down",
    [SINKD_ERR_INVALID_ARGUMENT] = "invalid_argument",
    [SINKD_ERR_INTERNAL] = "internal",
    [SINKD_ERR_UNSUPPORTED] = "unsupported",
};

const char *sinkd_errcode_name(sinkd_errcode code)
{
    if ((unsigned)code >= SINKD_ERR__COUNT)
        return names[SINKD_ERR_INTERNAL];
    return names[code];
}

/* "none" is never on the wire: an error object that names it is still an
 * error, so the search starts after SINKD_ERR_NONE. */
sinkd_errcode sinkd_errcode_from_name(const char *name, size_t len)
{
    if (name == NULL)
        return SINKD_ERR_INTERNAL;
    for (int i = SINKD_ERR_NONE + 1; i < SINKD_ERR__COUNT; i++) {
        if (strlen(names[i]) == len && memcmp(names[i], name, len) == 0)
            return (sinkd_errcode)i;
    }
    return SINKD_ERR_INTERNAL;
}
