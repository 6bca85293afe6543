#!/usr/bin/env python3
"""PyTorch SDPA on the shapes of sinkd-bench-attention, contiguous KV.

Decode: q [B, 32, 1, 128], k/v [B, 8, L, 128] bf16, enable_gqa (no RoPE:
the keys are already rotated, which favours SDPA). Bandwidth = K+V bytes /
time, buffers rotated so that L2 never holds the next call's KV.
Prefill: q [1, 32, n, 128], k/v [1, 8, n, 128], is_causal.
Writes JSON to argv[1] (default sdpa-ref.json).
"""
import json
import sys

import torch
import torch.nn.functional as F

NQ, NKV, HD = 32, 8, 128
RUNS = 7


def median_ms(fn, calls):
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn(0)
    torch.cuda.synchronize()
    ts = []
    for r in range(RUNS):
        e0.record()
        for i in range(calls):
            fn(r * calls + i)
        e1.record()
        torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1) / calls)
    ts.sort()
    return ts[RUNS // 2]


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "sdpa-ref.json"
    dev = torch.device("cuda")
    rows = []
    limit = 12 << 30
    for B in (1, 8, 32, 64, 128):
        for L in (512, 4096, 16384, 65536, 131072):
            kv_bytes = 2 * B * NKV * L * HD * 2
            if kv_bytes > limit:
                continue
            nsets = max(1, min((512 << 20) // kv_bytes + 1, limit // kv_bytes))
            q = torch.randn(B, NQ, 1, HD, device=dev, dtype=torch.bfloat16)
            ks = [torch.randn(B, NKV, L, HD, device=dev, dtype=torch.bfloat16) for _ in range(nsets)]
            vs = [torch.randn(B, NKV, L, HD, device=dev, dtype=torch.bfloat16) for _ in range(nsets)]

            def run(i):
                F.scaled_dot_product_attention(q, ks[i % nsets], vs[i % nsets], enable_gqa=True)

            ms = median_ms(run, max(4, nsets))
            gbs = kv_bytes / (ms * 1e-3) / 1e9
            rows.append({"kind": "decode", "batch": B, "context": L, "us": ms * 1e3, "gbs": gbs})
            print(f"sdpa decode B={B} L={L}: {ms * 1e3:.1f} us {gbs:.0f} GB/s", flush=True)
            del ks, vs
            torch.cuda.empty_cache()
    for n in (4096, 8192, 16384, 32768):
        q = torch.randn(1, NQ, n, HD, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, NKV, n, HD, device=dev, dtype=torch.bfloat16)
        v = torch.randn(1, NKV, n, HD, device=dev, dtype=torch.bfloat16)
        ms = median_ms(lambda i: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), 1)
        tf = 4.0 * n * (n + 1) / 2 * HD * NQ / (ms * 1e-3) / 1e12
        rows.append({"kind": "prefill", "n": n, "ms": ms, "tflops": tf})
        print(f"sdpa prefill n={n}: {ms:.2f} ms {tf:.1f} TFLOP/s", flush=True)
    with open(path, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
