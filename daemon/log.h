/*
 * Logging: one line per event on stderr, prefixed with the journald/syslog
 * priority "<N>" so that journald files each line at the right level when
 * sinkd runs under systemd. Safe to call from any thread: the threshold is an
 * atomic and each line leaves in a single write(2).
 */
#ifndef SINKD_LOG_H
#define SINKD_LOG_H

#include <stdarg.h>

/* Priorities as syslog(3) numbers them; only these five are used. */
#define SINKD_LOG_ERR 3
#define SINKD_LOG_WARNING 4
#define SINKD_LOG_NOTICE 5
#define SINKD_LOG_INFO 6
#define SINKD_LOG_DEBUG 7

/* Lines with a priority number above @prio are dropped from now on.
 * Values outside ERR..DEBUG are clamped. Can't fail. */
void sinkd_log_set_level(int prio);

/* The current threshold. */
int sinkd_log_level(void);

/* True when a line of @prio would be written (to skip building costly ones). */
int sinkd_log_enabled(int prio);

/* Write "<prio>message\n" to stderr if @prio passes the threshold. The
 * message is truncated at 1 KiB; embedded newlines are replaced by spaces so
 * that one event stays one line. Never fails (a failed write is ignored). */
void sinkd_log(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sinkd_vlog(int prio, const char *fmt, va_list ap);

#endif /* SINKD_LOG_H */
