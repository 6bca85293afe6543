/* [quota] limits checked on the engine thread that no other module owns:
 * request_bytes, the shared memory one request may make the engine copy.
 * (sessions_per_uid and generations_per_uid are checked where sessions open
 * and generations start; pages_per_uid by the KV store.) */
#include "engine_internal.h"

#include <errno.h>

int eng_quota_shm(sinkd_engine *e, const sinkd_job *j, const sinkd_job_shm *const *r,
                  const uint64_t *bytes, int n)
{
    uint64_t total = 0;

    if (!e->request_bytes)
        return 0;
    for (int i = 0; i < n; i++) {
        if (!r[i]->r)
            continue;
        /* saturate: a hostile count must not wrap below the quota */
        total = bytes[i] > UINT64_MAX - total ? UINT64_MAX : total + bytes[i];
    }
    if (total <= e->request_bytes)
        return 0;
    eng_error(e, j, SINKD_ERR_QUOTA_EXCEEDED,
              "[quota] request_bytes: the request references %llu bytes of shared memory, "
              "over %llu", (unsigned long long)total, (unsigned long long)e->request_bytes);
    return -EDQUOT;
}
