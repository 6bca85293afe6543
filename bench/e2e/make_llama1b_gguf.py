#!/usr/bin/env python3
"""A random-weight GGUF with Llama-3.2-1B's geometry, for sinkd-bench-e2e.

16 layers, dim 2048, 32 query heads / 8 kv heads, head_dim 64, ffn 8192,
vocab 128256, rope theta 500000, context 131072, tied embeddings, no
rope_freqs tensor (no llama3 rope scaling), no tokenizer. The weights are a
Hugging Face LlamaForCausalLM's random initialisation (normal, std 0.02;
norm gains 1), rounded to bf16, and written by the GGUF writer of
tests/gpu/model_make_hf_gguf.py -- tensor names, the q/k row permutation
and the metadata are that module's. The file's tensor type is whatever that
writer writes for a bf16 tensor (f32 until it learns bf16: the values are
bf16 either way, so `--weights bf16` loads the same model).

The file is about 2.5 GB in bf16 (4.9 GB in f32): write it outside the
repository (run.sh puts it in /tmp). It is written to PATH.part and renamed
when complete, so an interrupted run leaves no truncated PATH.

Usage: make_llama1b_gguf.py PATH [--layers N] [--dim N] [--heads N]
       [--kv-heads N] [--ffn N] [--vocab N] [--seed N]
The overrides make smaller files of the same shape for checking this script.
"""
import argparse
import contextlib
import os
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "gpu"))

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import model_make_hf_gguf as hfgguf  # noqa: E402

NAME = "llama-3.2-1b-geometry-random"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()

    t0 = time.time()
    geometry = dict(vocab_size=a.vocab, hidden_size=a.dim, intermediate_size=a.ffn,
                    num_hidden_layers=a.layers, num_attention_heads=a.heads,
                    num_key_value_heads=a.kv_heads, max_position_embeddings=131072,
                    rms_norm_eps=1e-5, rope_theta=500000.0)
    torch.manual_seed(a.seed)
    # initialised on the GPU where there is one: a minute of CPU time less
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device) if device != "cpu" else contextlib.nullcontext():
        model = LlamaForCausalLM(LlamaConfig(**geometry, tie_word_embeddings=True,
                                             initializer_range=0.02, attention_bias=False,
                                             mlp_bias=False)).eval()
    tensors = [(name, t.detach().to(torch.bfloat16).cpu())
               for name, t in hfgguf.gguf_tensors(model, "llama", a.heads, a.kv_heads, True)]
    del model
    params = sum(t.numel() for _, t in tensors)
    print("%s: %d tensors, %.3f G parameters, built on %s in %.1f s" %
          (NAME, len(tensors), params / 1e9, device, time.time() - t0), flush=True)

    part = a.path + ".part"
    # the metadata from our own numbers, not from whatever attribute names
    # the installed transformers gives its config
    meta = hfgguf.gguf_meta(NAME, "llama", types.SimpleNamespace(**geometry))
    # a byte-level vocabulary padded to the geometry's size, so that the
    # daemon can serve the file over the socket (text in, text out)
    meta += hfgguf.byte_tokenizer_meta(geometry["vocab_size"])
    hfgguf.write_gguf(part, meta, tensors)
    os.replace(part, a.path)
    print("wrote %s: %.2f GB in %.1f s" % (a.path, os.path.getsize(a.path) / 1e9, time.time() - t0),
          flush=True)


if __name__ == "__main__":
    main()
