#!/bin/sh
# On the GPU machine (PyTorch + transformers there): make the Hugging Face
# reference models, then compare sinkd's CPU and CUDA forwards with them.
#   tests/gpu/model_hf_run.sh BUILD_DIR      (a build with CUDA, e.g. build-gpu)
set -eu
cd "$(dirname "$0")/../.."
build=${1:-build-gpu}
ref="$build/hfref"
python3 tests/gpu/model_make_hf_gguf.py "$ref"
SINKD_HF_REF_DIR="$PWD/$ref" "$build/tests/model/model_hf_test" --jobs 1 --verbose
