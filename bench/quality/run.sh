#!/usr/bin/env bash
# Quality sweep: every policy x every budget streamed through sinkd, one
# decode step per token (`sinkctl eval fidelity`), compared with the
# sliding-window recompute oracle (computed once, reused through
# --ref-logits). Writes per-run JSON, a markdown table and gnuplot PNGs.
#
#   bench/quality/run.sh --model PATH.gguf --text FILE [options]
#
# Options (defaults in brackets):
#   --model PATH      GGUF model to load                      (required)
#   --text FILE       text to stream                           (required)
#   --tokens N        stream length, BOS included              [65536]
#   --policies LIST   comma-separated                          [all twelve]
#   --budgets LIST    tokens kept per lane, comma-separated    [128,256,512]
#   --ref R           recompute or full                        [recompute]
#   --window N        positions per perplexity window          [1024]
#   --jobs N          runs streamed side by side: sinkd batches  [1]
#                     their one-token appends into shared decode calls
#   --build DIR       build tree with daemon/sinkd, client/sinkctl, plugins/
#                                                              [./build]
#   --backend B       auto, cpu or cuda                        [auto]
#   --pool BYTES      KV pool size (0: sinkd's default share)  [0]
#   --daemons N       daemons to spread the policies over        [1]
#                     (each policy's runs share one daemon; on one GPU
#                     their kernels overlap only under CUDA MPS:
#                     start nvidia-cuda-mps-control -d first)
#   --out DIR         results                                  [bench/quality/out]
#   --socket PATH     use a running sinkd (its model named as --model-name)
#   --model-name N    model name in that daemon                [bench]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
model= text= tokens=65536 ref=recompute window=1024 build=./build backend=auto jobs=1 pool=0 daemons=1
out="$here/out" socket= model_name=bench
policies=full,window,streaming,h2o,tova,a2sf,scissorhands,keyformer,snapkv,pyramidkv,quest,tidal
budgets=128,256,512

die() { echo "run.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || die "$1 needs a value"
    case "$1" in
    --model) model=$2 ;;
    --text) text=$2 ;;
    --tokens) tokens=$2 ;;
    --policies) policies=$2 ;;
    --budgets) budgets=$2 ;;
    --ref) ref=$2 ;;
    --window) window=$2 ;;
    --jobs) jobs=$2 ;;
    --build) build=$2 ;;
    --backend) backend=$2 ;;
    --pool) pool=$2 ;;
    --daemons) daemons=$2 ;;
    --out) out=$2 ;;
    --socket) socket=$2 ;;
    --model-name) model_name=$2 ;;
    *) die "unknown option $1 (see the top of $0)" ;;
    esac
    shift 2
done
[ -n "$text" ] && [ -r "$text" ] || die "--text FILE is required and must be readable"
[ -n "$socket" ] || [ -r "$model" ] || die "--model PATH is required (or --socket)"
case "$jobs" in ''|*[!0-9]*|0) die "--jobs takes a positive integer" ;; esac
case "$daemons" in ''|*[!0-9]*|0) die "--daemons takes a positive integer" ;; esac
[ -z "$socket" ] || [ "$daemons" -eq 1 ] || die "--socket names one daemon: --daemons 1"
sinkctl=$build/client/sinkctl
[ -x "$sinkctl" ] || die "$sinkctl not found: build it or pass --build"

mkdir -p "$out/json"
out=$(cd "$out" && pwd)
daemon_pids=()
cleanup() {
    for pid in ${daemon_pids[@]+"${daemon_pids[@]}"}; do kill "$pid" 2>/dev/null || true; done
    for pid in ${daemon_pids[@]+"${daemon_pids[@]}"}; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

sockets=()
if [ -z "$socket" ]; then
    [ -x "$build/daemon/sinkd" ] || die "$build/daemon/sinkd not found"
    # Without --pool each daemon takes a share of the free memory it finds:
    # together, the 0.8 one daemon would take.
    pool_key="kv_pool_bytes = $pool"
    [ "$pool" = 0 ] && pool_key="kv_pool_fraction = $(awk "BEGIN { print 0.8 / $daemons }")"
    cat > "$out/sinkd.conf" <<CONF
[engine]
backend = $backend
$pool_key
[plugins]
dirs = $(cd "$build/plugins" && pwd)
[model "$model_name"]
path = $(cd "$(dirname "$model")" && pwd)/$(basename "$model")
CONF
    # one at a time: each sizes its pool from what the others left
    for d in $(seq "$daemons"); do
        sock=$out/sinkd-$d.sock
        rm -f "$sock"
        "$build/daemon/sinkd" --socket "$sock" --config "$out/sinkd.conf" > "$out/sinkd-$d.log" 2>&1 &
        daemon_pids+=("$!")
        sockets+=("$sock")
        for _ in $(seq 300); do
            "$sinkctl" --socket "$sock" ping > /dev/null 2>&1 && break
            kill -0 "${daemon_pids[d - 1]}" 2>/dev/null ||
                { cat "$out/sinkd-$d.log" >&2; die "sinkd exited"; }
            sleep 0.1
        done
    done
else
    sockets=("$socket")
fi
socket=${sockets[0]}
ctl() { "$sinkctl" --socket "$socket" "$@"; }

# The parameters that give policy $1 a budget of $2 tokens per lane. Every
# evicting policy re-indexes positions in its cache (rope=cache); full keeps
# original positions; quest and tidal evict nothing and select $2 tokens.
params_for() {
    case "$1" in
    full) echo "" ;;
    window) echo "window=$2 rope=cache" ;;
    streaming) echo "sinks=4 window=$(($2 - 4)) rope=cache" ;;
    quest|tidal) echo "budget=$2" ;;
    *) echo "budget=$2 rope=cache" ;;
    esac
}

ctl status --json > "$out/status.json"
{
    printf '{"tokens":%s,"ref":"%s","window":%s,"text":"%s","model":"%s",' \
        "$tokens" "$ref" "$window" "$(basename "$text")" "$(basename "${model:-$model_name}")"
    printf '"host":"%s","cpu":"%s","gpu":"%s","date":"%s"}\n' "$(uname -n)" \
        "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')" \
        "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)" \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$out/meta.json"

# One run: policy $1 at budget $2 into json/$3.json (or $3.failed), on the
# daemon at socket $4.
run_one() {
    local p=$1 b=$2 name=$3 sock=$4
    # shellcheck disable=SC2046  # the parameters are separate words
    if ! "$sinkctl" --socket "$sock" eval fidelity --model "$model_name" --policy "$p" $(params_for "$p" "$b") \
            --text "$text" --tokens "$tokens" --window "$window" --ref "$ref" \
            --ref-logits "$out/ref-$ref.f32" --json-out "$out/json/$name.json" \
            > "$out/json/$name.txt" 2> "$out/json/$name.err"; then
        echo "$p $(params_for "$p" "$b")" > "$out/json/$name.failed"
        echo "   $name failed: $(tail -1 "$out/json/$name.err")" >&2
    fi
}

IFS=, read -r -a plist <<< "$policies"
IFS=, read -r -a blist <<< "$budgets"
todo=()
for p in "${plist[@]}"; do
    for b in "${blist[@]}"; do
        name=$p-$b
        [ "$p" = full ] && name=full   # no budget: one run serves every row
        [ -e "$out/json/$name.json" ] && continue   # kept from an earlier run
        case " ${todo[*]} " in *":$name "*) continue ;; esac
        rm -f "$out/json/$name.failed"
        todo+=("$p:$b:$name")
    done
done
# The first run writes the reference's logits (--ref-logits) that every
# later run reads, so it runs alone; the rest run up to $jobs at a time.
# (The daemon is a child too: only the runs' pids are waited for.)
running=()
for t in ${todo[@]+"${todo[@]}"}; do
    IFS=: read -r p b name <<< "$t"
    # a policy's runs share a daemon: their appends batch together
    for i in "${!plist[@]}"; do [ "${plist[i]}" = "$p" ] && d=$((i % daemons)); done
    echo "== $name: $(params_for "$p" "$b") (daemon $((d + 1)))" >&2
    if [ ! -e "$out/ref-$ref.f32" ]; then
        run_one "$p" "$b" "$name" "${sockets[d]}"
        continue
    fi
    while [ "${#running[@]}" -ge "$jobs" ]; do
        sleep 0.2
        alive=()
        for pid in "${running[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        running=(${alive[@]+"${alive[@]}"})
    done
    run_one "$p" "$b" "$name" "${sockets[d]}" &
    running+=("$!")
done
[ "${#running[@]}" -eq 0 ] || wait "${running[@]}" || true

python3 "$here/report.py" "$out" --budgets "$budgets"
echo "results: $out/results.md and $out/*.png" >&2
