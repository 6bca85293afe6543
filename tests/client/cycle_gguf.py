#!/usr/bin/env python3
"""Copy the tiny reference model (f32 GGUF, byte tokens <0xXX> at id 3 + X)
into a bigram model whose greedy continuation cycles through given bytes:
every layer's attention output and FFN down projection are zeroed, so the
residual stream is the input token's embedding, and the embeddings and
output rows are one-hot vectors that make byte i of the cycle predict byte
i + 1. Its text is then known exactly, multibyte characters included.
Standard library only.

    cycle_gguf.py IN OUT HEXBYTES [--nan]   e.g. 61e282ac62 for "a€b"

--nan makes the last byte's embedding NaN: a generation runs through the
cycle and fails (NaN logits) at the step that feeds that byte.
"""
import struct
import sys

STR, ARR = 8, 9
SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B",
          10: "<Q", 11: "<q", 12: "<d"}
BYTE0 = 3  # id of <0x00>


def read_str(d, p):
    n = struct.unpack_from("<Q", d, p)[0]
    return d[p + 8:p + 8 + n], p + 8 + n


def skip_value(d, p, t):
    if t == STR:
        return read_str(d, p)[1]
    if t != ARR:
        return p + struct.calcsize(SCALAR[t])
    et, n = struct.unpack_from("<IQ", d, p)
    p += 12
    for _ in range(n):
        p = skip_value(d, p, et)
    return p


def tensors(d):
    """name -> (offset of its data in the file, element count), f32 only."""
    _, n_tensors, n_kv = struct.unpack_from("<IQQ", d, 4)
    p, align = 24, 32
    for _ in range(n_kv):
        key, p = read_str(d, p)
        t = struct.unpack_from("<I", d, p)[0]
        end = skip_value(d, p + 4, t)
        if key == b"general.alignment":
            align = struct.unpack_from("<I", d, end - 4)[0]
        p = end
    infos = []
    for _ in range(n_tensors):
        name, p = read_str(d, p)
        nd = struct.unpack_from("<I", d, p)[0]
        dims = struct.unpack_from("<%dQ" % nd, d, p + 4)
        p += 4 + 8 * nd
        ttype, off = struct.unpack_from("<IQ", d, p)
        p += 12
        if ttype != 0:
            sys.exit("cycle_gguf.py: %s is not f32" % name.decode())
        count = 1
        for x in dims:
            count *= x
        infos.append((name.decode(), off, count, dims))
    base = (p + align - 1) // align * align
    return {n: (base + off, count, dims) for n, off, count, dims in infos}


def main(src, dst, hexbytes, nan=False):
    cyc = [BYTE0 + b for b in bytes.fromhex(hexbytes)]
    if len(set(cyc)) != len(cyc):
        sys.exit("cycle_gguf.py: the bytes of the cycle must differ")
    d = bytearray(open(src, "rb").read())
    t = tensors(d)

    def put(name, values):
        off, count, _ = t[name]
        assert len(values) == count
        struct.pack_into("<%df" % count, d, off, *values)

    dim, n_vocab = t["token_embd.weight"][2]
    if len(cyc) >= dim:
        sys.exit("cycle_gguf.py: a cycle of at most %d bytes" % (dim - 1))
    emb = [0.0] * (dim * n_vocab)
    out = [0.0] * (dim * n_vocab)
    for tok in range(n_vocab):  # tokens off the cycle: a direction no row reads
        emb[tok * dim + dim - 1] = 1.0
    for i, tok in enumerate(cyc):
        emb[tok * dim + dim - 1] = 0.0
        emb[tok * dim + i] = 1.0
        out[cyc[(i + 1) % len(cyc)] * dim + i] = 1.0
    if nan:
        emb[cyc[-1] * dim:(cyc[-1] + 1) * dim] = [float("nan")] * dim
    put("token_embd.weight", emb)
    put("output.weight", out)
    put("output_norm.weight", [1.0] * dim)
    for name, (_, count, _) in t.items():
        if name.endswith("attn_output.weight") or name.endswith("ffn_down.weight"):
            put(name, [0.0] * count)
    open(dst, "wb").write(bytes(d))


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5) or (len(sys.argv) == 5 and sys.argv[4] != "--nan"):
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3], len(sys.argv) == 5)
