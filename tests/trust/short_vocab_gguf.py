#!/usr/bin/env python3
"""Copy a GGUF model with its tokenizer cut to its first N tokens (the
tokens, scores and token types arrays), everything else as it was: a model
whose output has more rows than its tokenizer has tokens, which sinkd must
refuse at start. Standard library only.

    short_vocab_gguf.py IN OUT N
"""
import struct
import sys

STR, ARR = 8, 9
SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B",
          10: "<Q", 11: "<q", 12: "<d"}
CUT = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")


def read_str(d, p):
    n = struct.unpack_from("<Q", d, p)[0]
    return d[p + 8:p + 8 + n], p + 8 + n


def skip_value(d, p, t):
    """End offset of a value of type t at p, and its items when an array."""
    if t == STR:
        return read_str(d, p)[1], None
    if t != ARR:
        return p + struct.calcsize(SCALAR[t]), None
    et, n = struct.unpack_from("<IQ", d, p)
    p += 12
    items = []
    for _ in range(n):
        start = p
        p, _ = skip_value(d, p, et)
        items.append(d[start:p])
    return p, (et, items)


def main(src, dst, keep):
    d = open(src, "rb").read()
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", d, 4)
    p, kvs, align = 24, [], 32
    for _ in range(n_kv):
        start = p
        key, p = read_str(d, p)
        t = struct.unpack_from("<I", d, p)[0]
        end, arr = skip_value(d, p + 4, t)
        if key.decode() in CUT:
            et, items = arr
            body = struct.pack("<IIQ", ARR, et, keep) + b"".join(items[:keep])
            kvs.append(d[start:p] + body)
        else:
            kvs.append(d[start:end])
        if key == b"general.alignment":
            align = struct.unpack_from("<I", d, end - 4)[0]
        p = end
    info_start = p
    for _ in range(n_tensors):
        _, p = read_str(d, p)
        nd = struct.unpack_from("<I", d, p)[0]
        p += 4 + 8 * nd + 4 + 8
    info = d[info_start:p]
    data = d[p + (-p) % align:]
    out = b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + b"".join(kvs) + info
    out += b"\0" * ((-len(out)) % align)
    open(dst, "wb").write(out + data)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
