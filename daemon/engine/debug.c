/* The engine side of the debug-only ops (daemon built with SINKD_DEBUG_OPS;
 * the op table of a normal build has no way to queue these jobs). */
#include "engine_internal.h"

#include <time.h>

void eng_job_debug_stall(sinkd_engine *e, sinkd_job *j)
{
    struct timespec ts = { j->n / 1000, (long)(j->n % 1000) * 1000000L };

    /* No eng_beat: to the watchdog this is an engine stuck in one job. */
    while (nanosleep(&ts, &ts) != 0)
        ;
    eng_reply_empty(e, j);
}
