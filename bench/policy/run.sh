#!/bin/bash
# Policy machinery benchmark on the GPU machine. Builds nothing: run it from
# the repository root after building, e.g.
#
#   cmake -B build-gpu -DCMAKE_BUILD_TYPE=Release && cmake --build build-gpu
#   bash bench/policy/run.sh [BUILD_DIR [OUT_DIR]]   (default build-gpu, /tmp/sinkd-bench-policy)
#
# 1. runs sinkd-bench-policy on the sinkd-ref-small geometry ($SMALL_GGUF,
#    default .models/sinkd-ref-small-f16.gguf; when that file is missing, a
#    random-weight file of its shape is made with make_llama1b_gguf.py),
# 2. makes the random Llama-3.2-1B-geometry GGUF if it is missing
#    ($LLAMA1B_GGUF, default /tmp/sinkd-llama-3.2-1b-random.gguf; never in
#    the repository) and runs the bench on it,
#    both at 32768 tokens x 16 sessions, every built-in policy,
# 3. prints one summary table last; exits 1 if any part failed (the others
#    still run and report).
# JSON and logs go to OUT_DIR. BACKEND=cpu runs the same chain on the CPU
# with small settings (for checking the script: CPU numbers).
set -euo pipefail
export PYTHONUNBUFFERED=1

here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build-gpu}
out=${2:-/tmp/sinkd-bench-policy}
backend=${BACKEND:-cuda}
small=${SMALL_GGUF:-.models/sinkd-ref-small-f16.gguf}
big=${LLAMA1B_GGUF:-/tmp/sinkd-llama-3.2-1b-random.gguf}
bench="$build/bench/policy/sinkd-bench-policy"
plugins="$build/plugins"

die() { echo "run.sh: $*" >&2; exit 1; }
[ -x "$bench" ] || die "$bench not found: build first (cmake --build $build)"
[ -f "$plugins/h2o.so" ] || die "$plugins/h2o.so not found: build the plugins (cmake --build $build)"
mkdir -p "$out"
rm -f "$out/small.json" "$out/llama1b.json"

if [ "$backend" = cuda ]; then
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw \
      --format=csv | tee "$out/gpu.txt" || true
  fi
  # prefill in chunks of 4096: a 1B model fills 16 x 32K tokens in seconds,
  # not the minutes of 512-token chunks
  args=(--backend cuda --context 32768 --batch 16 --steps 32 --warmup 4 --evict-budget 4096
        --chunk 4096)
  limit=150       # seconds per geometry; with the random 1B file, under 4 minutes in all
  make_limit=120
  big_make=()
else
  args=(--backend cpu --context 512 --batch 2 --steps 8 --warmup 2 --evict-budget 128)
  limit=600
  make_limit=600
  # a scaled-down file of the same shape: the CPU cannot run the real one in minutes
  big_make=(--layers 2 --dim 256 --heads 4 --kv-heads 1 --ffn 1024 --vocab 4096)
fi

failed=()
make_gguf() { # PATH NAME ARGS...: a random-weight GGUF through make_llama1b_gguf.py
  local path=$1 name=$2; shift 2
  echo "run.sh: making $path"
  local t0=$SECONDS
  mkdir -p "$(dirname "$path")"
  if ! timeout "$make_limit" python3 "$here/../e2e/make_llama1b_gguf.py" "$path" "$@" \
      > "$out/make-$name.log" 2>&1; then
    tail -20 "$out/make-$name.log" >&2
    echo "run.sh: making $path failed (log: $out/make-$name.log)" >&2
    failed+=("make-$name")
    return 1
  fi
  echo "run.sh: made $path in $((SECONDS - t0)) s"
}
run() { # NAME MODEL: the bench's table to stdout, its messages to NAME.log
  local name=$1 model=$2
  echo "run.sh: $name: $bench --model $model ${args[*]}"
  local t0=$SECONDS
  if ! timeout "$limit" "$bench" --model "$model" --plugin-dir "$plugins" "${args[@]}" \
      --json-out "$out/$name.json" 2> "$out/$name.log"; then
    grep -v 'policy now\|opened by\| closed$' "$out/$name.log" | tail -40 >&2 || true
    echo "run.sh: $name failed or timed out after ${limit}s (log: $out/$name.log)" >&2
    if grep -qi tokenizer "$out/$name.log"; then
      echo "run.sh: $model has no tokenizer: it predates make_llama1b_gguf.py's byte" \
        "vocabulary; delete it and rerun" >&2
    fi
    failed+=("$name")
  fi
  echo "run.sh: $name took $((SECONDS - t0)) s"
}

# One failing part does not stop the other: each keeps what it measured.
if [ ! -f "$small" ]; then
  small=/tmp/sinkd-ref-small-geometry-random.gguf
  [ -f "$small" ] || make_gguf "$small" small --layers 8 --dim 384 --heads 6 --kv-heads 2 \
    --ffn 1024 --vocab 260 || true
fi
[ -f "$small" ] && run small "$small"
[ -f "$big" ] || make_gguf "$big" llama1b "${big_make[@]}" || true
[ -f "$big" ] && run llama1b "$big"

python3 - "$out/small.json" "$out/llama1b.json" <<'PY'
import json, os, sys

runs = [(os.path.basename(p)[:-5], json.load(open(p))) for p in sys.argv[1:] if os.path.exists(p)]
print("\n=== sinkd policy machinery summary ===")
if not runs:
    print("no results: see the logs")
    sys.exit(0)
for name, r in runs:
    g = r["geometry"]
    cpu = "  [CPU backend: CPU numbers]" if r["backend"] == "cpu" else ""
    print(f"{name}: {r['name'] or r['model']}: {g['layers']} layers, {g['heads']}/{g['kv_heads']} heads, "
          f"head_dim {g['head_dim']}; {r['backend']} ({r['device']}){cpu}; {r['batch']} sessions x "
          f"{r['context']} tokens; full holds {r['full']['bytes'] / 2**20:.0f} MiB per session")
    f0 = next((p["decode"]["step_ms_med"] for p in r["policies"] if p["name"] == "full" and "decode" in p), 0)
    if f0 and r["full_again_step_ms"]:
        print(f"  full {f0:.3f} ms/step first, {r['full_again_step_ms']:.3f} measured again last "
              f"({(r['full_again_step_ms'] / f0 - 1) * 100:+.1f}%: longer lanes and the machine's drift; each policy is compared with full interpolated to its lane length)")
head = f"{'policy':<13}"
for name, _ in runs:
    head += f" | {name + ' step ms':>15} {'vs full':>8} {'us/page':>9} {'mem/full':>8}"
print("\n" + head)
names = []
for _, r in runs:
    names += [p["name"] for p in r["policies"] if p["name"] not in names]
over = []
for pol in names:
    line = f"{pol:<13}"
    for name, r in runs:
        p = next((x for x in r["policies"] if x["name"] == pol), None)
        d = p.get("decode") if p else None
        e = p.get("evict") if p else None
        step = f"{d['step_ms_med']:.3f}" if d else "-"
        ovh = f"{d['overhead'] * 100:+.1f}%" if d else "-"
        upp = (f"{e['us_per_page']:.2f}" + ("*" if e["by_append"] else "")) if e and e["evicted"] else "-"
        mem = f"{e['mem_ratio']:.3f}" if e else ("1.000" if pol == "full" else "-")
        line += f" | {step:>15} {ovh:>8} {upp:>9} {mem:>8}"
        if d and pol != "full" and d["overhead"] > r["overhead_target"]:
            over.append(f"{pol} ({name})")
        if p and p["error"]:
            line += f"  ! {p['error']}"
    print(line)
print("\nvs full: decode step against full at the same lane length (the policy's budget above the"
      " context: nothing evicted);\nus/page: one eviction to the evict budget per page freed (* = a"
      " prompt-end policy, timed as an append minus the same append without it);\nmem/full: KV bytes"
      " per session after that eviction against full at the same context.")
t = runs[0][1]["overhead_target"] * 100
print(f"target: machinery <= {t:.0f}% over full: " + ("met by every policy" if not over else
      "over for " + ", ".join(over)))
PY
echo "run.sh: JSON and logs in $out"
if [ ${#failed[@]} -gt 0 ]; then
  echo "run.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
