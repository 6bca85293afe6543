#!/usr/bin/env python3
"""Writes the hand-made seeds of tests/fuzz/corpus/gguf/ (seed-*).

Each file is a small GGUF image. The writer below is deliberately minimal and
independent of daemon/model/gguf.c, so the seeds can also hold what a correct
writer never produces (hostile counts, bad types, truncations). The "tiny"
seeds carry the metadata of tests/data/sinkd-ref-tiny-f32.gguf, copied entry
by entry, with the shape keys rewritten so that the tensors (every tensor of
the reference model, shrunk) keep each seed under 64 KB.
Files the fuzzer added (by -set_cover_merge=1) have other names and are left
alone.
"""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "data", "sinkd-ref-tiny-f32.gguf")

# metadata value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
       BOOL: "<B", U64: "<Q", I64: "<q", F64: "<d"}
# tensor types
T_F32, T_F16, T_Q8_0, T_BF16 = 0, 1, 8, 30


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def s(v):
    b = v.encode() if isinstance(v, str) else v
    return u64(len(b)) + b


def val(t, v):
    """Encoded value of type @t (no type tag)."""
    if t == STR:
        return s(v)
    if t == ARR:
        et, items = v
        return u32(et) + u64(len(items)) + b"".join(val(et, x) for x in items)
    return struct.pack(FMT[t], v)


def kv(key, t, v):
    return s(key) + u32(t) + val(t, v)


def elem_bytes(t, ne):
    n = 1
    for d in ne:
        n *= d
    if t == T_F32:
        return 4 * n
    if t in (T_F16, T_BF16):
        return 2 * n
    return n // 32 * 34


def tensor_data(t, ne, salt):
    """Deterministic, non-trivial contents of the right size."""
    n = elem_bytes(t, ne)
    return bytes((i * 131 + salt * 7 + 1) & 0xFF for i in range(n))


def gguf(kvs, tensors=(), version=3, alignment=32, n_kv=None, n_tensors=None):
    """@kvs: encoded entries; @tensors: (name, type, ne, data or None)."""
    info, data = b"", b""
    for name, t, ne, payload in tensors:
        if payload is None:
            payload = tensor_data(t, ne, len(data))
        pad = (-len(data)) % alignment
        data += b"\0" * pad
        info += s(name) + u32(len(ne)) + b"".join(u64(d) for d in ne) + u32(t) + u64(len(data))
        data += payload
    head = b"GGUF" + u32(version)
    head += u64(len(tensors) if n_tensors is None else n_tensors)
    head += u64(len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + info
    body += b"\0" * ((-len(body)) % alignment)
    return body + data


# ---- the reference model's metadata -------------------------------------------

def read_tiny_kvs():
    """(key, encoded entry) of every metadata entry of the tiny model."""
    with open(TINY, "rb") as f:
        d = f.read(1 << 16)
    p = 24
    n_kv = struct.unpack_from("<Q", d, 16)[0]
    size = {U8: 1, I8: 1, U16: 2, I16: 2, U32: 4, I32: 4, F32: 4, BOOL: 1,
            U64: 8, I64: 8, F64: 8}

    def skip(t, p):
        if t == STR:
            return p + 8 + struct.unpack_from("<Q", d, p)[0]
        if t == ARR:
            et, n = struct.unpack_from("<IQ", d, p)
            p += 12
            for _ in range(n):
                p = skip(et, p)
            return p
        return p + size[t]

    out = []
    for _ in range(n_kv):
        start = p
        klen = struct.unpack_from("<Q", d, p)[0]
        key = d[p + 8:p + 8 + klen].decode()
        p += 8 + klen
        t = struct.unpack_from("<I", d, p)[0]
        p = skip(t, p + 4)
        out.append((key, d[start:p]))
    return out


TINY_KVS = read_tiny_kvs()


def tiny_kvs(arch="llama", drop=(), **override):
    """The tiny model's entries with llama.* keys rewritten for @arch and
    shape keys replaced by @override (key suffix -> (type, value))."""
    shape = {"embedding_length": (U32, 8), "feed_forward_length": (U32, 16),
             "attention.head_count": (U32, 2), "attention.head_count_kv": (U32, 1),
             "rope.dimension_count": (U32, 4), "block_count": (U32, 2)}
    shape.update(override)
    out = []
    for key, raw in TINY_KVS:
        if key in drop:
            continue
        if key == "general.architecture":
            out.append(kv(key, STR, arch))
        elif key.startswith("llama."):
            suffix = key[len("llama."):]
            if suffix in drop:
                continue
            if suffix in shape:
                t, v = shape.pop(suffix)
                out.append(kv(arch + "." + suffix, t, v))
            else:
                out.append(s(arch + "." + suffix) + raw[8 + len(key):])
        else:
            out.append(raw)
    for suffix, (t, v) in shape.items():
        out.append(kv(arch + "." + suffix, t, v))
    return out


def model_tensors(dim=8, ffn=16, heads=2, kv_heads=1, layers=2, vocab=260, t=T_F32,
                  tied=False, bias=False):
    hd = dim // heads
    ts = [("token_embd.weight", [dim, vocab])]
    for i in range(layers):
        b = "blk.%d." % i
        ts += [(b + "attn_norm.weight", [dim]), (b + "attn_q.weight", [dim, heads * hd]),
               (b + "attn_k.weight", [dim, kv_heads * hd]), (b + "attn_v.weight", [dim, kv_heads * hd]),
               (b + "attn_output.weight", [heads * hd, dim]), (b + "ffn_norm.weight", [dim]),
               (b + "ffn_gate.weight", [dim, ffn]), (b + "ffn_up.weight", [dim, ffn]),
               (b + "ffn_down.weight", [ffn, dim])]
        if bias:
            ts += [(b + "attn_q.bias", [heads * hd]), (b + "attn_k.bias", [kv_heads * hd]),
                   (b + "attn_v.bias", [kv_heads * hd])]
    ts.append(("output_norm.weight", [dim]))
    if not tied:
        ts.append(("output.weight", [dim, vocab]))
    # norms and biases stay f32, as llama.cpp writes them; Q8_0 needs ne0 % 32
    out = []
    for name, ne in ts:
        tt = t if len(ne) == 2 and (t != T_Q8_0 or ne[0] % 32 == 0) else T_F32
        out.append((name, tt, ne, None))
    return out


# ---- tokenizers ----------------------------------------------------------------

def bpe_byte_chars():
    """GPT-2's byte-to-unicode map."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cps, n = [], 0
    for b in range(256):
        if b in keep:
            cps.append(b)
        else:
            cps.append(256 + n)
            n += 1
    return [chr(c) for c in cps]


def bpe_kvs(pre=None, extra=()):
    chars = bpe_byte_chars()
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "Ġ 1", "1 2", "Ġ1 2", "Ġa n", "Ġan d"]
    tokens = list(chars)
    for m in merges:
        a, b = m.split(" ")
        if a + b not in tokens:
            tokens.append(a + b)
    specials = [("<|endoftext|>", 3), ("<|im_start|>", 3), ("<|im_end|>", 3), ("<tool>", 4)]
    types = [1] * len(tokens) + [t for _, t in specials]
    tokens += [x for x, _ in specials]
    out = [kv("tokenizer.ggml.model", STR, "gpt2")]
    if pre is not None:
        out.append(kv("tokenizer.ggml.pre", STR, pre))
    out += [kv("tokenizer.ggml.tokens", ARR, (STR, tokens)),
            kv("tokenizer.ggml.token_type", ARR, (I32, types)),
            kv("tokenizer.ggml.merges", ARR, (STR, merges)),
            kv("tokenizer.ggml.bos_token_id", U32, len(tokens) - 4),
            kv("tokenizer.ggml.eos_token_id", U32, len(tokens) - 4),
            kv("tokenizer.ggml.eot_token_id", U32, len(tokens) - 2)]
    return out + list(extra)


def spm_kvs(extra=()):
    tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    words = ["\u2581", "a", "b", "\u2581a", "ab", "\u2581ab", "\u2581the", "t", "h", "e",
             "th", "he", "\u2581t", "\u2581th", "é", "中", "<user>"]
    tokens += words
    types += [1] * (len(words) - 1) + [4]
    scores = [0.0] * 259 + [-float(i) for i in range(len(words))]
    return [kv("tokenizer.ggml.model", STR, "llama"),
            kv("tokenizer.ggml.tokens", ARR, (STR, tokens)),
            kv("tokenizer.ggml.scores", ARR, (F32, scores)),
            kv("tokenizer.ggml.token_type", ARR, (I32, types)),
            kv("tokenizer.ggml.bos_token_id", U32, 1),
            kv("tokenizer.ggml.eos_token_id", U32, 2),
            kv("tokenizer.ggml.add_space_prefix", BOOL, 1)] + list(extra)


def qwen2_kvs(**override):
    shape = {"embedding_length": (U32, 8), "feed_forward_length": (U32, 16),
             "attention.head_count": (U32, 2), "attention.head_count_kv": (U32, 2),
             "block_count": (U32, 1), "context_length": (U32, 32768),
             "attention.layer_norm_rms_epsilon": (F32, 1e-6), "rope.freq_base": (F32, 1000000.0)}
    shape.update(override)
    return ([kv("general.architecture", STR, "qwen2"), kv("general.name", STR, "Qwen2 0.5B mini")] +
            [kv("qwen2." + k, t, v) for k, (t, v) in shape.items()] + bpe_kvs("qwen2"))


# ---- every metadata type -------------------------------------------------------

def all_types_kvs():
    nested = (ARR, [(U8, [1, 2]), (STR, ["x", ""]), (ARR, [(I64, [-1]), (F64, [])])])
    deep = (U32, [7])
    for _ in range(7):  # 8 levels: the deepest the parser accepts
        deep = (ARR, [deep])
    return [kv("t.u8", U8, 255), kv("t.i8", I8, -128), kv("t.u16", U16, 65535),
            kv("t.i16", I16, -32768), kv("t.u32", U32, 0xFFFFFFFF), kv("t.i32", I32, -(1 << 31)),
            kv("t.f32", F32, 1.5), kv("t.bool", BOOL, 1), kv("t.str", STR, "héllo"),
            kv("t.u64", U64, (1 << 64) - 1), kv("t.i64", I64, -(1 << 63)), kv("t.f64", F64, -2.25),
            kv("t.nan", F32, float("nan")), kv("t.inf", F64, float("inf")),
            kv("t.empty", STR, ""), kv("t.zero", U64, 0), kv("t.false", BOOL, 0),
            kv("a.u8", ARR, (U8, [0, 1, 255])), kv("a.i8", ARR, (I8, [-1, 0, 1])),
            kv("a.u16", ARR, (U16, [1, 65535])), kv("a.i16", ARR, (I16, [-2, 2])),
            kv("a.u32", ARR, (U32, [0, 1 << 31])), kv("a.i32", ARR, (I32, [-5, 5])),
            kv("a.f32", ARR, (F32, [0.5, -1e30])), kv("a.bool", ARR, (BOOL, [0, 1])),
            kv("a.str", ARR, (STR, ["a", "", "ccc"])), kv("a.u64", ARR, (U64, [1 << 40])),
            kv("a.i64", ARR, (I64, [-(1 << 40)])), kv("a.f64", ARR, (F64, [3.0, -0.0])),
            kv("a.empty", ARR, (U32, [])), kv("a.nested", ARR, nested),
            kv("a.deep8", ARR, deep)]


def raw_entry(key, t, payload):
    return s(key) + u32(t) + payload


def main():
    tiny = tiny_kvs()
    emb = [("token_embd.weight", T_F32, [8, 260], None)]
    seeds = {
        # the reference model: every entry and tensor, shapes shrunk
        "tiny-v3": gguf(tiny, model_tensors()),
        "tiny-v2": gguf(tiny, model_tensors(), version=2),
        "tiny-f16": gguf(tiny, model_tensors(t=T_F16)),
        "tiny-bf16": gguf(tiny, model_tensors(t=T_BF16)),
        "tiny-q8_0": gguf(tiny_kvs(embedding_length=(U32, 32), feed_forward_length=(U32, 32),
                                   **{"rope.dimension_count": (U32, 16)}),
                          model_tensors(dim=32, ffn=32, layers=1, t=T_Q8_0)),
        "tiny-tied": gguf(tiny, model_tensors(tied=True)),
        "tiny-align64": gguf([kv("general.alignment", U32, 64)] +
                             tiny_kvs(drop=("general.alignment",)), model_tensors(), alignment=64),
        "tiny-align1": gguf([kv("general.alignment", U32, 1)] +
                            tiny_kvs(drop=("general.alignment",)), model_tensors(layers=1), alignment=1),
        "tiny-header-only": gguf(tiny),
        "tiny-rope-linear": gguf(tiny + [kv("llama.rope.scaling.type", STR, "linear"),
                                         kv("llama.rope.scaling.factor", F32, 4.0)], emb),
        "tiny-rope-yarn": gguf(tiny + [kv("llama.rope.scaling.type", STR, "yarn")], emb),
        "tiny-rope-freqs": gguf(tiny, emb + [("rope_freqs.weight", T_F32, [2], None)]),
        "tiny-keylen": gguf(tiny + [kv("llama.attention.key_length", U32, 6),
                                    kv("llama.attention.value_length", U32, 6)], emb),
        "tiny-hparams-i64": gguf(tiny_kvs(embedding_length=(I64, 8), block_count=(U8, 1),
                                          **{"attention.head_count": (I16, 2),
                                             "attention.layer_norm_rms_epsilon": (F64, 1e-6)}), emb),
        "tiny-no-vocab": gguf(tiny_kvs(drop=("tokenizer.ggml.tokens",)), emb),
        # tokenizers
        "spm": gguf(spm_kvs()),
        "spm-no-prefix": gguf(spm_kvs([kv("tokenizer.ggml.add_eos_token", BOOL, 1)])),
        "bpe-gpt2": gguf(bpe_kvs()),
        "bpe-default": gguf(bpe_kvs("default")),
        "bpe-llama3": gguf(bpe_kvs("llama-bpe", [kv("tokenizer.ggml.add_bos_token", BOOL, 1)])),
        "bpe-falcon": gguf(bpe_kvs("falcon")),
        "qwen2": gguf(qwen2_kvs(), model_tensors(heads=2, kv_heads=2, layers=1,
                                                 vocab=len(bpe_byte_chars()) + 15, bias=True)),
        "qwen2-v2": gguf(qwen2_kvs(), model_tensors(heads=2, kv_heads=2, layers=1,
                                                    vocab=271, tied=True), version=2),
        # metadata of every type, arrays nested to the limit
        "all-types-v3": gguf(all_types_kvs(), [("x", T_F16, [2, 3, 4, 1], None)]),
        "all-types-v2": gguf(all_types_kvs(), version=2),
        "deep9": gguf([kv("d", ARR, (ARR, [(ARR, [(ARR, [(ARR, [(ARR, [(ARR, [(ARR, [(ARR, [
            (U8, [1])])])])])])])])]))]),
        # hostile headers and entries
        "empty": gguf([]),
        "version1": gguf(tiny[:3], version=1),
        "bad-magic": b"GGUL" + gguf([])[4:],
        "kv-count-huge": gguf([kv("a", U32, 1)], n_kv=(1 << 64) - 1),
        "tensor-count-huge": gguf([kv("a", U32, 1)], n_tensors=1 << 40),
        "array-count-huge": gguf([raw_entry("a", ARR, u32(U32) + u64(1 << 62) + u32(1))]),
        "string-len-huge": gguf([raw_entry("a", STR, u64((1 << 64) - 2) + b"ab")]),
        "unknown-type": gguf([raw_entry("a", 13, u32(1))]),
        "bad-bool": gguf([raw_entry("a", BOOL, b"\x02")]),
        "dup-key": gguf([kv("a", U32, 1), kv("a", U32, 2)]),
        "dup-tensor": gguf([], [("w", T_F32, [4], None), ("w", T_F32, [4], None)]),
        "tensor-past-end": gguf([], [("w", T_F32, [4], None)])[:-4],
        "tensor-q4k": gguf([], [("w", 12, [256], b"\0" * 144)]),
        "tensor-dims-overflow": gguf([], [("w", T_F32, [1 << 32, 1 << 32], b"")]),
        "bad-alignment": gguf([kv("general.alignment", U32, 48)]),
        "truncated-tiny": gguf(tiny, model_tensors())[:5000],
    }
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus", "gguf")
    os.makedirs(out, exist_ok=True)
    for name, data in seeds.items():
        assert len(data) < 65536, (name, len(data))
        with open(os.path.join(out, "seed-" + name), "wb") as f:
            f.write(data)
    print(f"{len(seeds)} seeds written to {out}")


if __name__ == "__main__":
    main()
