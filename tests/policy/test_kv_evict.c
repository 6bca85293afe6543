/*
 * A policy's keep lists applied to a real KV store on the CPU backend:
 * scores accumulated by the real attention kernel (SINKD_SCORE_ADD, what
 * H2O's SINKD_STAT_SUM asks for), keep lists from the policy host, the
 * store's compaction. Eviction must shorten each lane to its budget, free
 * whole pages, lower the pool's usage, and keep exactly the tokens the
 * keep list named (their positions and scores travel with them).
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "host.h"
#include "kv.h"

#define LAYERS 2
#define KVH 2
#define QH 4
#define HD 16
#define LEN 200
#define STEPS 8

static float frand(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) / 8388608.0f - 1.0f;
}

Test(kv_evict, h2o_eviction_frees_pages)
{
    sinkd_backend *be;
    cr_assert_eq(sinkd_cpu_backend_open(1, &be), 0);
    sinkd_kv_config cfg = SINKD_KV_CONFIG_INIT;
    cfg.pool_bytes = 4u << 20;
    cfg.head_dim_max = HD;
    cfg.dtype = SINKD_F32;
    sinkd_kv *kv;
    cr_assert_eq(sinkd_kv_open(be, &cfg, &kv), 0);
    sinkd_rope rope = {.theta = 10000.0f, .scale = 1.0f};
    sinkd_kv_seq_params sp = {.uid = 1, .n_layers = LAYERS, .n_kv_heads = KVH, .head_dim = HD,
                              .rope = rope, .max_pages = -1};
    sinkd_kv_seq *seq;
    cr_assert_eq(sinkd_kv_seq_open(kv, &sp, &seq), 0);

    /* prompt + decode steps with score accumulation */
    uint32_t seed = 7;
    static float k[LEN + STEPS][KVH][HD], v[LEN + STEPS][KVH][HD], q[QH][HD], out[QH][HD];
    static int32_t pos[LEN + STEPS];
    for (int t = 0; t < LEN + STEPS; t++) {
        pos[t] = t;
        for (int h = 0; h < KVH; h++)
            for (int d = 0; d < HD; d++)
                k[t][h][d] = frand(&seed), v[t][h][d] = frand(&seed);
    }
    for (int l = 0; l < LAYERS; l++)
        cr_assert_eq(sinkd_kv_append(seq, l, LEN, &k[0][0][0], &v[0][0][0], pos), 0);
    for (int s = 0; s < STEPS; s++) {
        int t = LEN + s;
        for (int l = 0; l < LAYERS; l++) {
            cr_assert_eq(sinkd_kv_append(seq, l, 1, &k[t][0][0], &v[t][0][0], &pos[t]), 0);
            for (int h = 0; h < QH; h++)
                for (int d = 0; d < HD; d++)
                    q[h][d] = 4.0f * frand(&seed);
            sinkd_decode_args a = {.pool = sinkd_kv_pool_get(kv), .n_seqs = 1, .n_q_heads = QH,
                                   .n_kv_heads = KVH, .head_dim = HD, .rope = rope,
                                   .softmax_scale = 0.25f, .q = &q[0][0], .out = &out[0][0],
                                   .q_pos = &pos[t], .score_op = SINKD_SCORE_ADD};
            cr_assert_eq(sinkd_kv_lanes_seq(seq, l, &a.lanes), 0);
            cr_assert_eq(be->ops->attn_decode(be, &a), 0);
        }
    }
    cr_assert_eq(be->ops->sync(be), 0);

    const char *dirs[] = {SINKD_PLUGIN_BUILD_DIR};
    sinkd_policy_registry *reg;
    char err[256];
    cr_assert_eq(sinkd_policy_registry_open(dirs, 1, &reg), 0);
    cr_assert_eq(sinkd_policy_load(reg, SINKD_PLUGIN_BUILD_DIR "/h2o.so", err, sizeof err), 0,
                 "%s", err);
    sinkd_policy_geometry g = {.struct_size = sizeof g, .n_layers = LAYERS, .n_q_heads = QH,
                               .n_kv_heads = KVH, .head_dim = HD, .page_tokens = cfg.page_tokens,
                               .max_tokens = 4096};
    sinkd_policy_inst *inst;
    cr_assert_eq(sinkd_policy_inst_create(reg, "h2o", &g, "budget=64 recent=16", &inst, err,
                                          sizeof err), 0, "%s", err);
    const sinkd_policy_plan *plan = sinkd_policy_inst_plan(inst);
    cr_assert_eq(plan->stat, SINKD_STAT_SUM, "h2o asks for SINKD_SCORE_ADD");

    sinkd_kv_stats before, after;
    sinkd_kv_stats_get(kv, &before);
    int32_t len = LEN + STEPS;
    cr_assert_gt(len, sinkd_plan_evict_threshold(plan, &g, 0, 0));
    static int32_t lpos[KVH][LEN + STEPS], keep[KVH][LEN + STEPS], flat[KVH * 64];
    static float lscore[KVH][LEN + STEPS];
    static int32_t kept_pos[LAYERS][KVH][64];
    for (int l = 0; l < LAYERS; l++) {
        sinkd_policy_lane lanes[KVH];
        int32_t keep_off[KVH + 1] = {0};
        for (int h = 0; h < KVH; h++) {
            cr_assert_eq(sinkd_kv_lane_read(seq, l, h, lpos[h], lscore[h]), 0);
            lanes[h] = (sinkd_policy_lane){.layer = l, .kv_head = h, .len = len,
                                           .n_pages = (len + 15) / 16, .pos = lpos[h],
                                           .score = lscore[h], .out = keep[h]};
        }
        cr_assert_eq(sinkd_policy_inst_evict(inst, lanes, KVH), 0);
        for (int h = 0; h < KVH; h++) {
            cr_assert_eq(lanes[h].n_out, 64);
            for (int j = 0; j < 64; j++)
                kept_pos[l][h][j] = lpos[h][keep[h][j]];
            memcpy(flat + keep_off[h], keep[h], 64 * sizeof(int32_t));
            keep_off[h + 1] = keep_off[h] + 64;
        }
        cr_assert_eq(sinkd_kv_compact(seq, l, keep_off, flat), 0);
    }
    sinkd_kv_stats_get(kv, &after);
    int per_lane_before = (len + 15) / 16, per_lane_after = 64 / 16;
    cr_assert_eq(before.pages_used - after.pages_used,
                 (int64_t)LAYERS * KVH * (per_lane_before - per_lane_after));
    cr_assert_lt(after.bytes_used, before.bytes_used);
    cr_assert_eq(sinkd_kv_seq_pages(seq), (int64_t)LAYERS * KVH * per_lane_after);

    int differ = 0;
    for (int l = 0; l < LAYERS; l++) {
        for (int h = 0; h < KVH; h++) {
            int32_t p2[64];
            cr_assert_eq(sinkd_kv_lane_len(seq, l, h), 64);
            cr_assert_eq(sinkd_kv_lane_read(seq, l, h, p2, NULL), 0);
            cr_assert_arr_eq(p2, kept_pos[l][h], sizeof p2, "layer %d head %d", l, h);
            cr_assert_eq(p2[63], len - 1, "the recent window survives");
        }
        differ += memcmp(kept_pos[l][0], kept_pos[l][1], sizeof kept_pos[l][0]) != 0;
    }
    cr_assert_gt(differ, 0, "heads keep different tokens");

    sinkd_policy_inst_destroy(inst);
    sinkd_policy_registry_close(reg);
    sinkd_kv_seq_close(seq);
    sinkd_kv_close(kv);
    sinkd_backend_close(be);
}
