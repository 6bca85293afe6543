#!/usr/bin/env python3
"""Writes the hand-made seeds of tests/fuzz/corpus/request/ (seed-*).

Each file is the byte stream of one client connection for fuzz_request.c:
frames of a 4-byte big-endian length and a msgpack payload. The harness
attaches a 64 KiB memfd to the first byte, so a stream that starts with
shm.register {size: 65536} owns region 1; session ids restart at 1 for every
input, so "session": 1 is the first session the stream opens. One valid
stream per op, then malformed variants (wrong types, missing fields, hostile
ranges, frames the codec refuses). Files the fuzzer added have other names
and are left alone.
"""
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_corpus import frame, mp  # noqa: E402


def r(op, id, **fields):
    return frame(mp({"op": op, "id": id, **fields}))


SHM = r("shm.register", 1, size=65536)
OPEN = r("session.open", 2, model="tiny")
RAW = r("session.open", 2, geometry={"layers": 2, "q_heads": 4, "kv_heads": 2, "head_dim": 16})
APPEND = r("session.append", 3, session=1, text="Once upon a time")
REG = lambda off: {"shm": 1, "offset": off}  # noqa: E731

SEEDS = {
    # one valid stream per op
    "hello": r("hello", 1, proto_min=1, proto_max=1, client="fuzz"),
    "ping": r("ping", 1),
    "status": r("status", 1),
    "shutdown": r("shutdown", 1),
    "shm-register": SHM + r("shm.unregister", 2, shm=1),
    "model-list": r("model.list", 1),
    "tokenize": r("tokenize", 1, text="Hello, world", bos=True),
    "detokenize": r("detokenize", 1, ids=[72, 101, 108, 108, 111]),
    "session-open": OPEN,
    "session-open-raw": RAW + r("session.stats", 3, session=1),
    "session-close": OPEN + r("session.close", 3, session=1),
    "session-list": OPEN + r("session.list", 3),
    "session-stats": OPEN + APPEND + r("session.stats", 4, session=1),
    "session-policy": OPEN + APPEND + r("session.policy", 4, session=1, policy="window",
                                          params="sink=4 window=16"),
    "session-append": OPEN + APPEND + r("session.append", 4, session=1, ids=[10, 20, 30]),
    "session-generate": OPEN + APPEND + r("session.generate", 4, session=1, max_tokens=8,
                                            temperature=0.8, top_k=20, top_p=0.9, seed=3,
                                            stop=["the"], stop_ids=[1], ignore_eos=True),
    "session-generate-nostream": OPEN + APPEND + r("session.generate", 4, session=1,
                                                     max_tokens=4, stream=False),
    "session-cancel": OPEN + APPEND + r("session.generate", 4, session=1, max_tokens=64,
                                          ignore_eos=True) + r("session.cancel", 5, session=1),
    "session-logits": SHM + OPEN + APPEND + r("session.logits", 4, session=1, shm=1, offset=0),
    "kv-append": SHM + RAW + r("kv.append", 3, session=1, layer=0, n=4, k=REG(0),
                                v=REG(4096)),
    "attend": SHM + RAW + r("kv.append", 3, session=1, layer=1, n=8, k=REG(0), v=REG(4096))
    + r("attend", 4, session=1, layer=1, q=REG(8192), out=REG(12288), scores=REG(16384)),
    "attend-sparse": SHM + RAW + r("kv.append", 3, session=1, layer=0, n=20, k=REG(0),
                                    v=REG(8192))
    + r("attend", 4, session=1, layer=0, q=REG(16384), out=REG(20480), pages=[[0], [1]]),
    "policy-list": r("policy.list", 1),
    "policy-load": r("policy.load", 1, path="/nonexistent/policy.so"),
    "policy-reload": r("policy.reload", 1, name="window"),
    "policy-unload": r("policy.unload", 1, name="window"),
    # malformed variants
    "bad-no-id": frame(mp({"op": "ping"})),
    "bad-op-type": frame(mp({"op": 5, "id": 1})),
    "bad-unknown-op": r("session.explode", 1),
    "bad-field-type": r("session.open", 1, model=7),
    "bad-missing-session": r("session.stats", 1),
    "bad-other-session": OPEN + r("session.stats", 3, session=99),
    "bad-geometry": r("session.open", 1, geometry={"layers": 0, "q_heads": 3, "kv_heads": 2,
                                                   "head_dim": 17, "dtype": "f8"}),
    "bad-both": r("session.open", 1, model="tiny", geometry={"layers": 1}),
    "bad-policy": OPEN + r("session.policy", 3, session=1, policy="nope", params="x"),
    "bad-params": r("session.open", 1, model="tiny", policy="window", params="window=-5 =="),
    "bad-append-both": OPEN + r("session.append", 3, session=1, ids=[1], text="x"),
    "bad-append-ids": OPEN + r("session.append", 3, session=1, ids=[-1, 99999]),
    "bad-generate-args": OPEN + APPEND + r("session.generate", 4, session=1, top_p=2.0,
                                             max_tokens=1 << 30),
    "bad-generate-empty": OPEN + r("session.generate", 3, session=1),
    "bad-generate-twice": OPEN + APPEND + r("session.generate", 4, session=1, max_tokens=32,
                                              ignore_eos=True)
    + r("session.generate", 5, session=1),
    "bad-shm-range": SHM + RAW + r("kv.append", 3, session=1, layer=0, n=1 << 20,
                                    k=REG(0), v=REG((1 << 64) - 8)),
    "bad-shm-handle": RAW + r("kv.append", 3, session=1, layer=0, n=1, k={"shm": 9, "offset": 0},
                              v=REG(0)),
    "bad-shm-quota": SHM + RAW + r("kv.append", 3, session=1, layer=0, n=256, k=REG(0),
                                    v=REG(32768)),
    "bad-attend-layer": SHM + RAW + r("attend", 3, session=1, layer=7, n=3, q=REG(0),
                                       out=REG(0), q_pos=-1, pages=[[5, 6], [1 << 31]]),
    "bad-raw-generate": RAW + r("session.generate", 3, session=1),
    "bad-register-nofd": SHM + r("shm.register", 2, size=4096),
    "bad-register-size": r("shm.register", 1, size=1 << 40),
    "bad-tokenize-model": r("tokenize", 1, model="none", text="x"),
    "bad-detokenize": r("detokenize", 1, ids=[1 << 30]),
    "bad-stop": OPEN + APPEND + r("session.generate", 4, session=1, stop=["", 5]),
    "bad-pool": OPEN + r("session.append", 3, session=1, text="x" * 600)
    + r("session.append", 4, session=1, text="y" * 600),
    "bad-quota-sessions": b"".join(r("session.open", i, model="tiny") for i in range(1, 11)),
    "bad-frame-garbage": frame(b"\xc1\xc1\xc1"),
    "bad-frame-empty": frame(b""),
    "bad-frame-huge": struct.pack(">I", 0xFFFFFFF0) + b"\x80",
    "bad-frame-count": frame(b"\xdf\xff\xff\xff\xff"),
    "bad-frame-truncated": OPEN[:-3],
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "corpus", "request")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, "seed-" + name), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds in {out}")


if __name__ == "__main__":
    main()
