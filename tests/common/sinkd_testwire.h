/*
 * Test helper: speak raw frames on a socket, with timeouts, bypassing
 * libsinkd. For tests that send what a correct client never would and need
 * to see exactly which frames come back and whether the daemon hangs up.
 * Uses the codec (sinkd_proto) to decode what it reads.
 */
#ifndef SINKD_TESTWIRE_H
#define SINKD_TESTWIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"

/* One received frame. */
typedef struct sinkd_testwire_frame {
    uint8_t *payload;        /* owned */
    size_t len;
    sinkd_msg msg;           /* decoded; msg.root is the map */
} sinkd_testwire_frame;

#define SINKD_TESTWIRE_FRAME_INIT { .payload = NULL, .len = 0 }

/* Write all @n bytes of @buf to @fd (blocking, no SIGPIPE). 0 or -errno. */
int sinkd_testwire_send(int fd, const void *buf, size_t n);

/* Write a frame: the 4-byte big-endian length of @n, then @payload. */
int sinkd_testwire_send_frame(int fd, const void *payload, size_t n);

/* Read exactly one frame (never a byte more) within @timeout_ms and decode
 * it into @f (in its init state; the caller frees it). Returns 0,
 * -ETIMEDOUT, -ECONNRESET (the peer closed, before or inside the frame),
 * -EBADMSG (the daemon sent something that does not decode), -ENOMEM. */
int sinkd_testwire_recv(int fd, int timeout_ms, sinkd_testwire_frame *f);

/* Release @f back to its init state. */
void sinkd_testwire_frame_free(sinkd_testwire_frame *f);

/* True when the peer closes @fd within @timeout_ms without sending another
 * byte (EOF or ECONNRESET); false on data or timeout. */
bool sinkd_testwire_closed(int fd, int timeout_ms);

/* Read an error reply: *@code gets the code (SINKD_ERR_NONE when @f is not an
 * error reply), *@has_id whether it carries an id and *@id the id, *@msg
 * (may be NULL) the message as a NUL-terminated malloc'ed copy. */
void sinkd_testwire_error(const sinkd_testwire_frame *f, sinkd_errcode *code,
                          bool *has_id, uint64_t *id, char **msg);

#endif /* SINKD_TESTWIRE_H */
