/*
 * Every op table, one line each (see ops.h). Included with SINKD_OPS defined;
 * no include guard on purpose.
 */
SINKD_OPS(sinkd_ops_core)
SINKD_OPS(sinkd_ops_engine)
SINKD_OPS(sinkd_ops_persist)
