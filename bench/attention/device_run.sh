#!/bin/bash
# One full GPU check of the attention kernels: build, GPU tests, sanitizers,
# benchmark (the build dependencies must be installed and visible to CMake).
# Logs go to $OUT if set, else ./device-out, in at most eight
# files: build.log test.log sanitizer.log bench.log bench-attention.json
# sdpa-ref.json sass.txt and, with BASE, base.json.
#   SAN="memcheck racecheck"  compute-sanitizer tools to run (default both)
#   BENCH=0                   skip the benchmark
#   BASE=DIR                  A/B: DIR holds earlier versions of files of
#                             kernels/cuda; a copy of the tree with them is
#                             built and benchmarked too (base.json), and
#                             the last table compares the two
set -o pipefail
out=${OUT:-device-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$out/bench.log"
if [ -n "$BASE" ]; then
  # The base tree builds on the CPUs while the tests use the GPU.
  rm -rf /tmp/sinkd-base && mkdir -p /tmp/sinkd-base &&
    tar --exclude='./build*' -cf - . | tar -C /tmp/sinkd-base -xf - &&
    cp "$BASE"/* /tmp/sinkd-base/kernels/cuda/
  (cd /tmp/sinkd-base && cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSINKD_WERROR=ON &&
     cmake --build build --target sinkd-bench-attention -j8) > /tmp/sinkd-base.log 2>&1 &
  base_pid=$!
fi
# The whole tree first; if another component does not configure, a minimal
# project of kernels/, tests/gpu/ and bench/attention/ alone.
if ! cmake -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DSINKD_WERROR=ON > "$out/build.log" 2>&1; then
  src=$PWD; mkdir -p /tmp/sinkd-gpu
  cat > /tmp/sinkd-gpu/CMakeLists.txt <<CM
cmake_minimum_required(VERSION 3.25)
project(sinkd_gpu LANGUAGES C CUDA)
set(CMAKE_C_STANDARD 11)
set(CMAKE_CUDA_ARCHITECTURES 90)
add_compile_options(-Wall -Wextra -D_GNU_SOURCE)
find_package(CUDAToolkit REQUIRED)
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
find_library(M_LIB m)
pkg_check_modules(CRITERION REQUIRED IMPORTED_TARGET criterion)
set(SINKD_HAVE_CUDA ON)
add_subdirectory($src/kernels kernels)
enable_testing()
function(sinkd_add_test name)
  cmake_parse_arguments(T "" "LABEL;TIMEOUT" "SOURCES;LIBS" \${ARGN})
  add_executable(\${name} \${T_SOURCES})
  target_link_libraries(\${name} PRIVATE PkgConfig::CRITERION \${T_LIBS})
endfunction()
add_subdirectory($src/tests/gpu tests/gpu)
add_subdirectory($src/bench/attention bench/attention)
CM
  cmake -S /tmp/sinkd-gpu -B build-gpu-only -G Ninja -DCMAKE_BUILD_TYPE=Release >> "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
  rm -rf build-gpu; ln -s build-gpu-only build-gpu
fi
cmake --build build-gpu --target test_gpu_ops sinkd-bench-attention -j16 >> "$out/build.log" 2>&1 ||
  { tail -30 "$out/build.log"; exit 1; }
lib=$(find build-gpu -name libsinkd_cuda.a | head -1)
if command -v cuobjdump > /dev/null && [ -n "$lib" ]; then
  cuobjdump -res-usage "$lib" 2>&1 | grep -A1 -E "decode_mma|prefill_mma" > "$out/sass.txt"
  cuobjdump -sass "$lib" 2>/dev/null | awk '/Function : .*decode_mma_kernel.*bfloat16.*Li128/{f=1} /Function : /&&!/decode_mma_kernel.*bfloat16.*Li128/{f=0} f' |
    grep -oE "(LDGSTS|HMMA|LDSM|MUFU|SHFL|BAR|STG|LDG|ATOMG|CCTL|DISCARD|MEMBAR)[.A-Z0-9_]*" | sort | uniq -c >> "$out/sass.txt"
fi
./build-gpu/tests/gpu/test_gpu_ops --jobs 1 --verbose > "$out/test.log" 2>&1; echo "test rc=$?"
grep -E "seed|error|Synthesis|FAIL|fail" "$out/test.log" | head -40
if [ -n "${SAN-memcheck racecheck}" ]; then
  for tool in ${SAN-memcheck racecheck}; do
    echo "== $tool" >> "$out/sanitizer.log"
    timeout ${SAN_TIMEOUT:-200} compute-sanitizer --tool $tool --error-exitcode 9 ./build-gpu/tests/gpu/test_gpu_ops --jobs 1 \
      >> "$out/sanitizer.log" 2>&1; echo "$tool rc=$?"
    grep -E "ERROR SUMMARY|Synthesis|RACECHECK SUMMARY" "$out/sanitizer.log" | tail -3
  done
fi
if [ "${BENCH:-1}" = 1 ]; then
  timeout 300 bash bench/attention/run.sh build-gpu "$out" >> "$out/bench.log" 2>&1; echo "bench rc=$?"
  if [ -n "$BASE" ]; then
    wait $base_pid && timeout 120 /tmp/sinkd-base/build/bench/attention/sinkd-bench-attention "$out/base.json" \
      > /tmp/sinkd-base-bench.log 2>&1; echo "base bench rc=$?"; [ -s "$out/base.json" ] || tail -5 /tmp/sinkd-base.log
  fi
  sed -n '/: copy [0-9]* GB\/s, spec/,$p' "$out/bench.log" | tail -60
  [ ! -f "$out/base.json" ] || python3 - "$out/base.json" "$out/bench-attention.json" <<'PY'
import json, sys
b, n = (json.load(open(p))["rows"] for p in sys.argv[1:3])
key = lambda x: (x["kind"], x.get("batch"), x.get("context"), x.get("n"), x.get("fraction"))
base = {key(x): x for x in b}
print(f"\n{'A/B':<8}{'batch':>6}{'ctx':>8}{'base us':>10}{'new us':>10}{'speedup':>9}{'base+sc':>9}{'new+sc':>8}")
for x in n:
    y = base.get(key(x))
    if not y or x["kind"] != "decode":
        continue
    sc = lambda r: 100 * (r["score_us"] / r["us"] - 1)
    print(f"{'decode':<8}{x['batch']:>6}{x['context']:>8}{y['us']:10.1f}{x['us']:10.1f}{y['us'] / x['us']:8.2f}x"
          f"{sc(y):8.1f}%{sc(x):7.1f}%")
for x in n:
    y = base.get(key(x))
    if y and x["kind"] == "prefill":
        print(f"prefill n {x['n']:>6}: base {y['tflops']:6.1f} new {x['tflops']:6.1f} TFLOP/s")
PY
fi
