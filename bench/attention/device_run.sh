#!/bin/bash
# One full device call: build, GPU tests, sanitizers, benchmark. Logs go to
# $OUT (the device tool's result folder) or ./device-out.
set -o pipefail
out=${OUT:-device-out}
mkdir -p "$out"
bash .devkit/setup.sh >/dev/null && source /opt/devkit/env.sh || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$out/gpu.txt"
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
./build-gpu/tests/gpu/test_gpu_ops --jobs 1 --verbose > "$out/test.log" 2>&1; echo "test rc=$?"
grep -E "seed|error|Synthesis|FAIL|fail" "$out/test.log" | head -40
if [ -n "${SAN-memcheck racecheck}" ]; then
  for tool in ${SAN-memcheck racecheck}; do
    timeout ${SAN_TIMEOUT:-200} compute-sanitizer --tool $tool --error-exitcode 9 ./build-gpu/tests/gpu/test_gpu_ops --jobs 1 \
      > "$out/sanitizer-$tool.log" 2>&1; echo "$tool rc=$?"
    grep -E "ERROR SUMMARY|Synthesis|RACECHECK SUMMARY" "$out/sanitizer-$tool.log" | tail -3
  done
fi
if [ "${BENCH:-1}" = 1 ]; then
  timeout 300 bash bench/attention/run.sh build-gpu "$out" > "$out/bench.log" 2>&1; echo "bench rc=$?"
  sed -n '/^$/,$p' "$out/bench.log" | tail -60
fi
