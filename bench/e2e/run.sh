#!/bin/bash
# End-to-end generation benchmark on the GPU machine. Builds nothing: run it
# from the repository root after building, e.g.
#
#   cmake -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release && cmake --build build-gpu
#   bash bench/e2e/run.sh [BUILD_DIR]            (default build-gpu)
#
# 1. makes the random Llama-3.2-1B-geometry GGUF if it is missing
#    ($LLAMA1B_GGUF, default /tmp/sinkd-llama-3.2-1b-random.gguf; never in
#    the repository),
# 2. runs sinkd-bench-e2e on it with bf16 weights at batch 1, 8, 32, 64,
#    each batch size with CUDA graphs off and then on (GRAPHS=on: only on),
# 3. runs it on sinkd-ref-small ($SMALL_GGUF, default
#    .models/sinkd-ref-small-f16.gguf), f16 as stored, with the socket part
#    (the 1B file carries a byte-level vocabulary padded to its size),
# 4. prints one summary table last; exits 1 if any part failed (the others
#    still run and report).
# JSON and logs go to $OUT if set, else /tmp/sinkd-bench-e2e. BACKEND=cpu
# runs the same on the CPU backend (small settings: for checking the script).
set -euo pipefail
export PYTHONUNBUFFERED=1

here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build-gpu}
out=${OUT:-/tmp/sinkd-bench-e2e}
backend=${BACKEND:-cuda}
small=${SMALL_GGUF:-.models/sinkd-ref-small-f16.gguf}
big=${LLAMA1B_GGUF:-/tmp/sinkd-llama-3.2-1b-random.gguf}
bench="$build/bench/e2e/sinkd-bench-e2e"

die() { echo "run.sh: $*" >&2; exit 1; }
[ -x "$bench" ] || die "$bench not found: build first (cmake --build $build)"
[ -x "$build/daemon/sinkd" ] || die "$build/daemon/sinkd not found: build first"
[ -f "$small" ] || die "$small not found: copy sinkd-ref-small-f16.gguf there (or set SMALL_GGUF)"
mkdir -p "$out"
rm -f "$out/llama1b.json" "$out/small.json"

if [ "$backend" = cuda ]; then
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw \
      --format=csv | tee "$out/gpu.txt" || true
  fi
  common=(--backend cuda)
  small_args=(--batches "1,8,32,64" --prompt 512 --steps 128 --graphs "${GRAPHS:-off,on}")
  big_args=(--batches "1,8,32,64" --prompt 512 --steps 128 --socket --graphs "${GRAPHS:-off,on}")
  big_make=()
else
  common=(--backend cpu --copy-mib 1024 --runs 3 --warmup 2)
  small_args=(--batches "1,8" --prompt 64 --steps 8 --socket-tokens 16)
  big_args=(--batches "1,8" --prompt 32 --steps 4)
  # a scaled-down file of the same shape: the CPU cannot run the real one in minutes
  big_make=(--layers 2 --dim 256 --heads 4 --kv-heads 1 --ffn 1024 --vocab 4096)
fi

failed=()
run() { # NAME ARGS...: the bench's table to stdout, its messages to NAME.log
  local name=$1; shift
  echo "run.sh: $name: $bench $*"
  if ! "$bench" "$@" --json-out "$out/$name.json" 2> "$out/$name.log"; then
    tail -40 "$out/$name.log" >&2
    echo "run.sh: $name failed (log: $out/$name.log)" >&2
    failed+=("$name")
  fi
}

# One failing part does not stop the others: each keeps what it measured.
if [ ! -f "$big" ]; then
  echo "run.sh: making $big"
  mkdir -p "$(dirname "$big")"
  python3 "$here/make_llama1b_gguf.py" "$big" "${big_make[@]}" 2>&1 | tee "$out/make-1b.log" ||
    failed+=(make-1b)
fi
if [ -f "$big" ]; then
  run llama1b "${common[@]}" --model "$big" --weights bf16 "${big_args[@]}"
fi
run small "${common[@]}" --model "$small" --weights keep --socket "${small_args[@]}"

python3 - "$out/llama1b.json" "$out/small.json" <<'PY'
import json, os, sys

rows = [json.load(open(p)) for p in sys.argv[1:] if os.path.exists(p)]
print("\n=== sinkd end-to-end summary ===")
for r in rows:
    m = r.get("in_process")
    if not m or not m.get("decode"):
        print(f"\n{r['model']}: incomplete, see its log")
        continue
    g = m["geometry"]
    cpu = "  [CPU backend: CPU numbers]" if m["backend"] == "cpu" else ""
    print(f"\n{m['name'] or r['model']}: {g['layers']} layers, dim {g['dim']}, "
          f"{g['heads']}/{g['kv_heads']} heads, vocab {g['vocab']}; {m['weights']} weights "
          f"{m['weight_bytes'] / 2**20:.0f} MiB; {m['backend']} ({m['device']}){cpu}")
    print(f"  memory used: model {m['memory']['model'] / 2**20:.0f} MiB, KV {m['memory']['kv'] / 2**20:.0f} MiB, "
          f"peak {m['memory']['peak'] / 2**20:.0f} MiB; copy {m['copy']['gbs']:.0f} GB/s; "
          f"floor {m['floor_ms']:.3f} ms/step")
    p = m["prefill"]
    print(f"  prefill {p['tokens']} tokens: {p['ms']:.2f} ms = {p['tok_s']:.0f} tok/s ({p['tflops']:.1f} TFLOP/s)")
    print(f"  {'batch':>5} {'graphs':>6} {'step ms':>9} {'tok/s':>10} {'x b1':>6} {'/floor':>7} {'host-lg tok/s':>14}")
    for d in m["decode"]:
        g = "on" if d.get("graphs") else "off"
        print(f"  {d['batch']:>5} {g:>6} {d['step_ms_med']:>9.3f} {d['tok_s']:>10.1f} {d['speedup_vs_b1']:>6.1f} "
              f"{d['step_over_floor']:>7.2f} {d['host_tok_s']:>14.1f}")
    t = m["targets"]
    if "b1_over_floor" in t:
        ok = "met" if t["b1_over_floor"] <= t["b1_over_floor_max"] else "MISSED"
        print(f"  target batch-1 step / weight floor {t['b1_over_floor']:.2f} <= {t['b1_over_floor_max']}: {ok}")
    if "speedup" in t:
        ok = "met" if t["speedup"] >= t["speedup_min"] else "MISSED"
        print(f"  target batch-{t['batch_max']} / batch-1 tok/s {t['speedup']:.1f}x >= {t['speedup_min']:.0f}x: {ok}")
    s = r.get("socket")
    if s:
        ok = "met" if s["ratio_mean"] <= s["ratio_max"] else "MISSED"
        print(f"  socket: {s['tokens']} tokens, client gap mean {s['gap_ms_mean']:.3f} ms "
              f"(median {s['gap_ms_med']:.3f}) vs engine step {s['engine_step_ms']:.3f} ms "
              f"[{s['engine_step_source']}]: ratio {s['ratio_mean']:.3f} <= {s['ratio_max']}: {ok}")
PY
echo "run.sh: JSON and logs in $out"
if [ ${#failed[@]} -gt 0 ]; then
  echo "run.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
