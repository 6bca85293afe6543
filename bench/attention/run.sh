#!/bin/sh
# Run sinkd-bench-attention and the PyTorch SDPA reference, then print one
# table side by side. Usage: bench/attention/run.sh BUILD_DIR [OUT_DIR]
set -eu
build=${1:?usage: run.sh BUILD_DIR [OUT_DIR]}
out=${2:-.}
here=$(dirname "$0")
"$build/bench/attention/sinkd-bench-attention" "$out/bench-attention.json"
PYTHONUNBUFFERED=1 python3 "$here/sdpa_ref.py" "$out/sdpa-ref.json"
python3 - "$out/bench-attention.json" "$out/sdpa-ref.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); r = json.load(open(sys.argv[2]))
ref = {(x["kind"], x.get("batch"), x.get("context"), x.get("n")): x for x in r["rows"]}
print(f"\n{s['device']}: copy {s['copy_gbs']:.0f} GB/s, spec {s['spec_gbs']:.0f} GB/s; torch {r['torch']}")
print(f"{'decode':<7}{'batch':>6}{'ctx':>8}{'sinkd us':>10}{'GB/s':>7}{'%spec':>7}{'%copy':>7}"
      f"{'+score':>8}{'+defer':>8}{'sdpa us':>9}{'vs sdpa':>8}")
for x in s["rows"]:
    if x["kind"] != "decode":
        continue
    y = ref.get(("decode", x["batch"], x["context"], None))
    sp = f"{y['us']:9.1f}{y['us'] / x['us']:7.2f}x" if y else f"{'-':>9}{'-':>8}"
    print(f"{'':<7}{x['batch']:>6}{x['context']:>8}{x['us']:10.1f}{x['gbs']:7.0f}{x['pct_spec']:6.1f}%"
          f"{x['pct_copy']:6.1f}%{100 * (x['score_us'] / x['us'] - 1):7.1f}%"
          f"{100 * (x['defer_us'] / x['us'] - 1):7.1f}%{sp}")
for x in s["rows"]:
    if x["kind"] == "sparse":
        print(f"sparse  batch {x['batch']} ctx {x['context']} kept {x['fraction']:<8g} {x['us']:9.1f} us"
              f"  {x['dense_us'] / x['us']:5.2f}x faster than dense")
    if x["kind"] == "topk":
        print(f"topk    batch {x['batch']} ctx {x['context']} k {x['k']}: {x['us']:.1f} us")
for x in s["rows"]:
    if x["kind"] == "prefill":
        y = ref.get(("prefill", None, None, x["n"]))
        print(f"prefill n {x['n']:>6}: sinkd {x['ms']:8.2f} ms {x['tflops']:6.1f} TFLOP/s | sdpa "
              + (f"{y['ms']:8.2f} ms {y['tflops']:6.1f} TFLOP/s" if y else "-"))
PY
