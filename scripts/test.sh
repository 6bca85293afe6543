#!/bin/sh
# Build sinkd and run every test: once in an optimised build with warnings as
# errors, once under AddressSanitizer + UndefinedBehaviorSanitizer. Tests that
# need a GPU skip (with the reason) where none is present.
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh systemd clang libclang-rt-14-dev python3-msgpack
jobs=$(nproc 2>/dev/null || echo 2)

cmake -S . -B build -DSINKD_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"

cmake -S . -B build-asan -DSINKD_WERROR=ON -DCMAKE_BUILD_TYPE=Debug \
      -DSINKD_SANITIZE=address,undefined -DSINKD_CUDA=OFF -DSINKD_BENCH=OFF
cmake --build build-asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs" -L 'unit|integration'
echo "sinkd: all tests passed"
