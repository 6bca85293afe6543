#!/usr/bin/env python3
"""Reference models for sinkd's model runner, from Hugging Face transformers.

For each geometry below this builds a random-weight LlamaForCausalLM or
Qwen2ForCausalLM (weights rounded to bf16 values), writes it as GGUF (version 3, f32 tensors) the way
llama.cpp's convert_hf_to_gguf.py lays it out -- including the q/k row
permutation of llama models, which turns HF's half-split RoPE pairs into the
adjacent pairs GGUF llama files use; qwen2 files are not permuted and use the
half-split ("neox") pairs -- and runs the HF forward in float64 on the CPU on
a 200-token prompt followed by 50 greedy steps. It writes, per geometry:

    <name>.gguf      the model
    <name>.ref.txt   prompt ids, logits at the last prompt position, the 50
                     greedy tokens, the top1 - top2 margin before each and
                     the logits after each (step_logits), in the format of
                     tests/data/golden-*.txt

The GGUF writer is plain `struct` (the gguf package is not needed).
tests/gpu/model_hf_test.c (label gpu, directory in $SINKD_HF_REF_DIR) loads
every model with sinkd's CPU and CUDA backends and compares.

Usage: model_make_hf_gguf.py OUT_DIR
"""
import os
import struct
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

PROMPT_LEN = 200
GREEDY_STEPS = 50
VOCAB = 512
# Standard deviation of the random weights. At 0.08 these small models
# amplified rounding noise about a hundredfold (transformers' own CUDA
# forward in f32 ended up 5-44% off its float64 forward after 50 steps), so
# a 2e-2 bound on a bf16 forward judged the model's conditioning more than
# the forward. At 0.04 the smallest greedy margins are 2.6e-3 to 2.2e-2.
INIT_RANGE = 0.04

# name, arch, heads, kv heads, head_dim, layers, ffn, rope theta, tied
GEOMETRIES = [
    ("llama-mha-hd64", "llama", 4, 4, 64, 2, 512, 1e4, False),
    ("llama-gqa-hd128", "llama", 8, 2, 128, 2, 1024, 5e5, True),
    ("llama-gqa-hd64-tied", "llama", 8, 4, 64, 3, 768, 1e4, True),
    ("qwen2-gqa-hd64", "qwen2", 4, 2, 64, 2, 512, 5e5, True),
    ("qwen2-mha-hd128", "qwen2", 2, 2, 128, 2, 512, 1e4, False),
]

# ---- GGUF writer ---------------------------------------------------------

GGUF_UINT32, GGUF_INT32, GGUF_FLOAT32, GGUF_BOOL, GGUF_STRING, GGUF_ARRAY = 4, 5, 6, 7, 8, 9
GGML_F32, GGML_BF16 = 0, 30
ALIGN = 32


def gguf_str(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def gguf_value(vtype, value):
    if vtype == GGUF_UINT32:
        return struct.pack("<I", value)
    if vtype == GGUF_INT32:
        return struct.pack("<i", value)
    if vtype == GGUF_FLOAT32:
        return struct.pack("<f", value)
    if vtype == GGUF_BOOL:
        return struct.pack("<B", 1 if value else 0)
    if vtype == GGUF_STRING:
        return gguf_str(value)
    if vtype == GGUF_ARRAY:  # value: (element type, [elements])
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(gguf_value(etype, v) for v in items)
    raise ValueError(vtype)


def gguf_kv(key, vtype, value):
    return gguf_str(key) + struct.pack("<I", vtype) + gguf_value(vtype, value)


def byte_tokenizer_meta(n_vocab):
    """The reference models' SentencePiece byte vocabulary (README of the
    models): <unk> <s> </s>, the 256 byte tokens, U+2581, padded to n_vocab
    with control tokens so that a model of any vocabulary size can serve text."""
    assert n_vocab >= 260
    toks = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + ["\u2581"]
    types = [2, 3, 3] + [6] * 256 + [1]
    toks += ["<extra_%d>" % i for i in range(n_vocab - len(toks))]
    types += [3] * (n_vocab - len(types))
    return [("tokenizer.ggml.model", GGUF_STRING, "llama"),
            ("tokenizer.ggml.tokens", GGUF_ARRAY, (GGUF_STRING, toks)),
            ("tokenizer.ggml.scores", GGUF_ARRAY, (GGUF_FLOAT32, [0.0] * n_vocab)),
            ("tokenizer.ggml.token_type", GGUF_ARRAY, (GGUF_INT32, types)),
            ("tokenizer.ggml.bos_token_id", GGUF_UINT32, 1),
            ("tokenizer.ggml.eos_token_id", GGUF_UINT32, 2),
            ("tokenizer.ggml.add_bos_token", GGUF_BOOL, True),
            ("tokenizer.ggml.add_space_prefix", GGUF_BOOL, False)]


def write_gguf(path, kvs, tensors):
    """kvs: [(key, type, value)]; tensors: [(name, tensor)], written as BF16
    when the tensor is bfloat16 and as F32 otherwise."""
    infos, offset, blobs = b"", 0, []
    for name, t in tensors:
        if t.dtype == torch.bfloat16:
            data, ty = t.detach().contiguous().cpu().view(torch.int16).numpy().tobytes(), GGML_BF16
        else:
            data, ty = t.detach().to(torch.float32).contiguous().cpu().numpy().tobytes(), GGML_F32
        pad = (-offset) % ALIGN
        offset += pad
        blobs.append(b"\0" * pad + data)
        dims = list(reversed(t.shape))  # ne[0] is the contiguous dimension
        infos += gguf_str(name) + struct.pack("<I", len(dims))
        infos += b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ty, offset)
        offset += len(data)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    head += b"".join(gguf_kv(*kv) for kv in kvs) + infos
    head += b"\0" * ((-len(head)) % ALIGN)
    with open(path, "wb") as f:
        f.write(head)
        for b in blobs:
            f.write(b)


def permute(w, n_head):
    """llama.cpp's q/k permutation: half-split pairs -> adjacent pairs."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


# ---- models --------------------------------------------------------------

def build(arch, heads, kv_heads, head_dim, layers, ffn, theta, tied, seed):
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=heads * head_dim, intermediate_size=ffn,
                  num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, max_position_embeddings=1024,
                  rms_norm_eps=1e-5, rope_theta=theta, tie_word_embeddings=tied,
                  initializer_range=INIT_RANGE, torch_dtype=torch.float32)
    if arch == "llama":
        cfg = LlamaConfig(**common, attention_bias=False, mlp_bias=False)
        model = LlamaForCausalLM(cfg)
    else:
        cfg = Qwen2Config(**common, use_sliding_window=False)
        model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)     # HF initialises biases to zero
            elif "norm" in name:
                p.uniform_(0.8, 1.2)    # not all ones, so a missed norm shows
            # bf16-representable values (still written as f32): the model a
            # bf16 backend loads is then exactly this one, as with a model
            # published in bf16, and the bf16 comparison measures sinkd's
            # arithmetic rather than the rounding of the file at load (which
            # alone put one geometry's logits 2.6% off after a greedy step)
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return model.eval()


def gguf_tensors(model, arch, heads, kv_heads, tied):
    sd = model.state_dict()
    out = [("token_embd.weight", sd["model.embed_tokens.weight"]),
           ("output_norm.weight", sd["model.norm.weight"])]
    if not tied:
        out.append(("output.weight", sd["lm_head.weight"]))
    names = {"input_layernorm.weight": "attn_norm.weight",
             "self_attn.q_proj.weight": "attn_q.weight",
             "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight",
             "self_attn.q_proj.bias": "attn_q.bias",
             "self_attn.k_proj.bias": "attn_k.bias",
             "self_attn.v_proj.bias": "attn_v.bias",
             "self_attn.o_proj.weight": "attn_output.weight",
             "post_attention_layernorm.weight": "ffn_norm.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight",
             "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight"}
    for i in range(model.config.num_hidden_layers):
        for hf, gg in names.items():
            key = "model.layers.%d.%s" % (i, hf)
            if key not in sd:
                continue
            t = sd[key]
            if arch == "llama" and hf.startswith("self_attn.q_proj"):
                t = permute(t, heads)
            elif arch == "llama" and hf.startswith("self_attn.k_proj"):
                t = permute(t, kv_heads)
            out.append(("blk.%d.%s" % (i, gg), t))
    return out


def rope_theta(cfg):
    """The RoPE base of a config: newer transformers keep it in
    rope_parameters instead of a rope_theta attribute."""
    theta = getattr(cfg, "rope_theta", None)
    if theta is None:
        theta = cfg.rope_parameters["rope_theta"]
    return float(theta)


def gguf_meta(name, arch, cfg):
    p = arch + "."
    return [("general.architecture", GGUF_STRING, arch),
            ("general.name", GGUF_STRING, name),
            ("general.alignment", GGUF_UINT32, ALIGN),
            (p + "context_length", GGUF_UINT32, cfg.max_position_embeddings),
            (p + "embedding_length", GGUF_UINT32, cfg.hidden_size),
            (p + "block_count", GGUF_UINT32, cfg.num_hidden_layers),
            (p + "feed_forward_length", GGUF_UINT32, cfg.intermediate_size),
            (p + "attention.head_count", GGUF_UINT32, cfg.num_attention_heads),
            (p + "attention.head_count_kv", GGUF_UINT32, cfg.num_key_value_heads),
            (p + "rope.dimension_count", GGUF_UINT32, cfg.hidden_size // cfg.num_attention_heads),
            (p + "rope.freq_base", GGUF_FLOAT32, rope_theta(cfg)),
            (p + "attention.layer_norm_rms_epsilon", GGUF_FLOAT32, float(cfg.rms_norm_eps))]


@torch.no_grad()
def reference(model, seed):
    """float64 forward: last prompt logits, greedy tokens, margins and the
    logits after each greedy token."""
    m = model.to(torch.float64)
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, VOCAB, (1, PROMPT_LEN), generator=g)
    out = m(prompt, use_cache=True)
    logits, past = out.logits[0, -1], out.past_key_values
    last = logits.clone()
    tokens, margins, steps = [], [], []
    for _ in range(GREEDY_STEPS):
        top = torch.topk(logits, 2)
        tokens.append(int(top.indices[0]))
        margins.append(float(top.values[0] - top.values[1]))
        out = m(torch.tensor([[tokens[-1]]]), past_key_values=past, use_cache=True)
        logits, past = out.logits[0, -1], out.past_key_values
        steps.extend(logits.tolist())
    return prompt[0].tolist(), last.tolist(), tokens, margins, steps


def write_ref(path, prompt, last, tokens, margins, steps):
    lines = ["cases 1", "prompt_hex " + b"random".hex(),
             "prompt_ids %d %s" % (len(prompt), " ".join(map(str, prompt))),
             "last_logits %d %s" % (len(last), " ".join(repr(float(x)) for x in last)),
             "greedy_ids %d %s" % (len(tokens), " ".join(map(str, tokens))),
             "greedy_margins %d %s" % (len(margins), " ".join(repr(x) for x in margins)),
             "step_logits %d %s" % (len(steps), " ".join(repr(float(x)) for x in steps))]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    for k, (name, arch, heads, kvh, hd, layers, ffn, theta, tied) in enumerate(GEOMETRIES):
        model = build(arch, heads, kvh, hd, layers, ffn, theta, tied, seed=1000 + k)
        write_gguf(os.path.join(out_dir, name + ".gguf"), gguf_meta(name, arch, model.config),
                   gguf_tensors(model, arch, heads, kvh, tied))
        prompt, last, tokens, margins, steps = reference(model, seed=2000 + k)
        write_ref(os.path.join(out_dir, name + ".ref.txt"), prompt, last, tokens, margins, steps)
        print("%s: min margin %.4g, logit range %.3g..%.3g" %
              (name, min(margins), min(last), max(last)))


if __name__ == "__main__":
    main()
