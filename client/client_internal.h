/*
 * libsinkd internals shared by the library's own files; not installed.
 */
#ifndef SINKD_CLIENT_INTERNAL_H
#define SINKD_CLIENT_INTERNAL_H

#include "client.h"

#define CLIENT_ERRMSG_MAX 512

struct sinkd_client {
    int fd;                      /* connected AF_UNIX stream socket */
    int dead;                    /* sticky transport error, or 0 */
    uint64_t next_id;            /* id of the next request */
    sinkd_frame_reader rd;       /* incoming bytes */
    sinkd_client_info info;      /* from hello */
    char errmsg[CLIENT_ERRMSG_MAX]; /* message of the last error reply */
};

/* Copy the str field @key of @map into @dst of @size bytes (truncated,
 * NUL-terminated). Returns 0 or the getter's -ENOENT/-EINVAL. */
int client__copy_str(const msgpack_object *map, const char *key, char *dst, size_t size);

#endif /* SINKD_CLIENT_INTERNAL_H */
