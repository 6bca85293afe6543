#!/bin/sh
# Build sinkd, start it on a temporary socket with the bundled tiny model
# (CUDA backend when a GPU is present, else the CPU), and show it working
# through sinkctl. Usage: scripts/demo.sh ["prompt"]
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$jobs" >/dev/null

dir=$(mktemp -d)
sock="$dir/sinkd.sock"
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT INT TERM
cat >"$dir/sinkd.conf" <<CONF
[engine]
kv_pool_bytes = 256M
[plugins]
dirs = $PWD/build/plugins
[model "tiny"]
path = $PWD/tests/data/sinkd-ref-tiny-f32.gguf
CONF
build/daemon/sinkd --config "$dir/sinkd.conf" --socket "$sock" --log-level info \
    2>"$dir/sinkd.log" &
pid=$!
i=0
while [ ! -S "$sock" ]; do
    i=$((i + 1))
    if [ $i -gt 100 ] || ! kill -0 "$pid" 2>/dev/null; then
        cat "$dir/sinkd.log" >&2; exit 1
    fi
    sleep 0.1
done
ctl="build/client/sinkctl --socket $sock"
$ctl status
$ctl ping -c 3
if $ctl help run >/dev/null 2>&1; then
    $ctl run --model tiny -n 120 "${1:-In the beginning God created}"
    echo
    # the same prompt with a bounded cache: StreamingLLM's sinks + window
    $ctl run --model tiny --policy streaming sinks=4 window=60 -n 120 \
        "${1:-In the beginning God created}"
    echo
fi
echo "--- sinkd log ---"
cat "$dir/sinkd.log"
