/*
 * The engine's side of the daemon: the op tables of the session-level
 * protocol (shared memory, models, sessions, raw KV, policies), the
 * per-connection shared-memory table, and the bridge from the loop thread
 * to the engine.
 *
 * Op handlers run on the loop thread. They parse and type-check a request,
 * resolve its shared-memory handles, queue a job and return
 * SINKD_REQ_DEFERRED; the engine answers through sinkd_server_post. Only
 * shm.register/unregister and model.list are answered on the loop thread
 * (they touch nothing the engine owns).
 *
 * Connections have no close callback in the server, so a sweep timer (every
 * 100 ms, unreferenced so it never keeps the loop alive) looks for
 * connections that own regions or sessions and are gone: their regions are
 * dropped and the engine closes their non-persistent sessions.
 */
#ifndef SINKD_OPS_ENGINE_H
#define SINKD_OPS_ENGINE_H

#include "engine.h"
#include "server.h"

/* Start-up in one call (loop thread, after sinkd_server_init): open the
 * engine from @s's configuration ([engine], [model "NAME"], [plugins],
 * [quota]: backend, models with a log line each, KV pool, policy registry
 * with a scan), attach it, start its thread and tie the watchdog to its
 * liveness. Returns 0, or a negative errno with @err set. */
int sinkd_engine_ops_start(sinkd_server *s, char *err, size_t errlen);

/* Shut-down counterpart, after uv_run returned and before
 * sinkd_server_free: stop the engine thread, detach (closing the sweep
 * timer: run the loop once more afterwards) and keep the engine for
 * sinkd_engine_ops_free. */
void sinkd_engine_ops_stop(void);

/* Free the engine stopped by sinkd_engine_ops_stop. */
void sinkd_engine_ops_free(void);

/* Loop thread: route the ops to @e (borrowed:
 * it must outlive the attachment) and start the sweep timer on @s's loop.
 * Returns 0 or -ENOMEM. */
int sinkd_engine_ops_attach(sinkd_server *s, sinkd_engine *e);

/* Loop thread: stop the sweep timer and drop every region. Call before the
 * loop's last uv_run (the timer's close needs one loop turn). Idempotent. */
void sinkd_engine_ops_detach(void);

/* Loop thread: remember that @conn_id now owns sessions (opened or
 * attached), so that its non-persistent ones close when it goes away.
 * Returns 0 or -ENOMEM. */
int sinkd_engine_ops_track(uint64_t conn_id);

/* The attached engine, or NULL (the status op asks). */
sinkd_engine *sinkd_engine_ops_engine(void);

/* Emit callback for sinkd_engine_start: posts @frame to the server @ud. */
int sinkd_engine_ops_post(void *ud, uint64_t conn_id, uint8_t *frame, size_t len);

#endif /* SINKD_OPS_ENGINE_H */
