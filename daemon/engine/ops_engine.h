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
 * When a connection closes (the server's conn_closed hook) its regions are
 * dropped and the engine closes the non-persistent sessions it opened.
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
 * sinkd_server_free: stop the engine thread, detach and keep the engine for
 * sinkd_engine_ops_free. */
void sinkd_engine_ops_stop(void);

/* Free the engine stopped by sinkd_engine_ops_stop. */
void sinkd_engine_ops_free(void);

/* Loop thread: route the ops to @e (borrowed:
 * it must outlive the attachment) and listen for connections closing on @s.
 * Returns 0 or -ENOMEM. */
int sinkd_engine_ops_attach(sinkd_server *s, sinkd_engine *e);

/* Loop thread: stop listening for closing connections and drop every
 * region. Idempotent. */
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
