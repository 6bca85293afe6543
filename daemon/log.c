#include "log.h"

#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

static atomic_int log__level = SINKD_LOG_INFO;

void sinkd_log_set_level(int prio)
{
    if (prio < SINKD_LOG_ERR)
        prio = SINKD_LOG_ERR;
    if (prio > SINKD_LOG_DEBUG)
        prio = SINKD_LOG_DEBUG;
    atomic_store(&log__level, prio);
}

int sinkd_log_level(void)
{
    return atomic_load(&log__level);
}

int sinkd_log_enabled(int prio)
{
    return prio <= atomic_load(&log__level);
}

void sinkd_vlog(int prio, const char *fmt, va_list ap)
{
    char line[1024 + 8];
    int head, n;

    if (!sinkd_log_enabled(prio))
        return;
    head = snprintf(line, sizeof line, "<%d>", prio);
    n = vsnprintf(line + head, sizeof line - (size_t)head - 1, fmt, ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - (size_t)head - 2)
        n = (int)(sizeof line - (size_t)head - 2);
    n += head;
    for (int i = head; i < n; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    line[n++] = '\n';
    /* One write per line keeps lines from different threads whole. */
    if (write(STDERR_FILENO, line, (size_t)n) < 0)
        return;
}

void sinkd_log(int prio, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    sinkd_vlog(prio, fmt, ap);
    va_end(ap);
}
