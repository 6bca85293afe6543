#!/bin/bash
# topk_pages on the GPU in one go: the twin tests of both paths (split and
# SINKD_TOPK_LEGACY=1), compute-sanitizer racecheck and memcheck of them,
# then sinkd-bench-topk. Logs and bench-topk.json go to $OUT (default
# ./device-out). Usage: bench/attention/topk_run.sh [BUILD_DIR]
# (BUILD_DIR configured with CUDA, default build-gpu; built here).
set -o pipefail
build=${1:-build-gpu}
out=${OUT:-device-out}
mkdir -p "$out"
cmake --build "$build" --target test_gpu_ops sinkd-bench-topk -j16 > "$out/topk-build.log" 2>&1 ||
  { tail -30 "$out/topk-build.log"; exit 1; }
filter='gpu_ops/*topk*'
"$build/tests/gpu/test_gpu_ops" --jobs 1 --verbose --filter "$filter" > "$out/topk-test.log" 2>&1
echo "topk tests rc=$?"
grep -E "seed|differ|error|Synthesis|FAIL" "$out/topk-test.log" | head -20
for tool in racecheck memcheck; do
  timeout 300 compute-sanitizer --tool $tool --error-exitcode 9 "$build/tests/gpu/test_gpu_ops" --jobs 1 \
    --filter "$filter" > "$out/topk-$tool.log" 2>&1
  echo "$tool rc=$?"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Synthesis" "$out/topk-$tool.log" | tail -2
done
timeout 300 "$build/bench/attention/sinkd-bench-topk" "$out/bench-topk.json"
echo "bench rc=$?"
