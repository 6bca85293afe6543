#!/usr/bin/env python3
"""Writes the hand-made seeds of tests/fuzz/corpus/frame/ (seed-*).

Each file is a byte stream as a client would send it: frames of a 4-byte
big-endian length and a msgpack payload. The encoder below is deliberately
minimal and independent of msgpack-c, so the seeds can also hold encodings
msgpack-c would never produce (hostile counts, non-minimal widths).
Files the fuzzer added (by -merge=1) have other names and are left alone.
"""
import os
import struct
import sys

def mp(v):
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 0x80:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack("b", v)
        if v >= 0:
            for code, fmt, lim in ((0xcc, ">B", 1 << 8), (0xcd, ">H", 1 << 16),
                                   (0xce, ">I", 1 << 32), (0xcf, ">Q", 1 << 64)):
                if v < lim:
                    return bytes([code]) + struct.pack(fmt, v)
        for code, fmt, lim in ((0xd0, ">b", 1 << 7), (0xd1, ">h", 1 << 15),
                               (0xd2, ">i", 1 << 31), (0xd3, ">q", 1 << 63)):
            if v >= -lim:
                return bytes([code]) + struct.pack(fmt, v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xa0 | len(b)]) + b
        if len(b) < 256:
            return b"\xd9" + bytes([len(b)]) + b
        return b"\xda" + struct.pack(">H", len(b)) + b
    if isinstance(v, bytes):
        return b"\xc4" + bytes([len(v)]) + v
    if isinstance(v, list):
        head = bytes([0x90 | len(v)]) if len(v) < 16 else b"\xdc" + struct.pack(">H", len(v))
        return head + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        head = bytes([0x80 | len(v)]) if len(v) < 16 else b"\xde" + struct.pack(">H", len(v))
        return head + b"".join(mp(k) + mp(x) for k, x in v.items())
    raise TypeError(v)

def frame(payload):
    return struct.pack(">I", len(payload)) + payload

def req(op, id, **fields):
    return mp({"op": op, "id": id, **fields})

SEEDS = {
    # valid requests of each foundation op, and replies
    "hello": frame(req("hello", 1, proto_min=1, proto_max=1, client="sinkctl/0.1.0")),
    "hello-bare": frame(req("hello", 1)),
    "hello-noversion": frame(req("hello", 2, proto_min=7, proto_max=9)),
    "ping": frame(req("ping", 3)),
    "status": frame(req("status", 4)),
    "shutdown": frame(req("shutdown", 5)),
    "shm-register": frame(req("shm.register", 6, size=1 << 20)),
    "shm-unregister": frame(req("shm.unregister", 7, shm=1)),
    "pipeline": b"".join(frame(req(op, i)) for i, op in
                         enumerate(["hello", "ping", "status", "ping", "shutdown"])),
    "reply-hello": frame(mp({"id": 1, "ok": True, "proto": 1, "server": "sinkd",
                             "version": "0.1.0", "max_frame": 16 << 20, "uid": 1000,
                             "admin": False})),
    "reply-status": frame(mp({"id": 4, "ok": True, "version": "0.1.0", "proto": 1,
                              "pid": 4242, "uptime_s": 12.5,
                              "backend": {"name": "none", "device": "", "mem_total": 0,
                                          "mem_free": 0},
                              "connections": 1, "sessions": 0,
                              "memory": {"rss_bytes": 1 << 23, "kv_pool_bytes": 0,
                                         "kv_used_bytes": 0}})),
    "reply-error": frame(mp({"id": 9, "error": {"code": "unknown_op",
                                                "message": "unknown op 'x'"}})),
    "event": frame(mp({"id": 9, "ev": "token", "token": 42, "logprob": -0.25})),
    # the examples of protocol/PROTOCOL.md, byte for byte
    "doc-hello": frame(req("hello", 1, proto_min=1, proto_max=1, client="sinkctl")),
    "doc-hello-reply": frame(mp({"id": 1, "ok": True, "proto": 1, "server": "sinkd",
                                 "version": "0.1.0", "max_frame": 16777216, "uid": 1000,
                                 "admin": False})),
    "doc-ping": frame(req("ping", 2)) + frame(mp({"id": 2, "ok": True, "t_ns": 123456789012345})),
    "doc-error": frame(mp({"id": 3, "error": {"code": "unknown_op",
                                              "message": "unknown op 'frobnicate'"}})),
    "doc-shm": frame(req("shm.register", 4, size=1048576)) + frame(mp({"id": 4, "ok": True, "shm": 1})),
    # every scalar format under one map
    "all-formats": frame(
        b"\xde\x00\x15" +
        mp("fix") + b"\x05" + mp("neg") + b"\xe0" + mp("nil") + b"\xc0" +
        mp("t") + b"\xc3" + mp("u8") + b"\xcc\xff" + mp("u16") + b"\xcd\xff\xff" +
        mp("u32") + b"\xce\xff\xff\xff\xff" + mp("u64") + b"\xcf" + b"\xff" * 8 +
        mp("i8") + b"\xd0\x80" + mp("i16") + b"\xd1\x80\x00" +
        mp("i32") + b"\xd2\x80\x00\x00\x00" + mp("i64") + b"\xd3\x80" + b"\x00" * 7 +
        mp("f32") + b"\xca" + struct.pack(">f", 1.5) + mp("f64") + b"\xcb" + struct.pack(">d", -2.25) +
        mp("s8") + b"\xd9\x03abc" + mp("s16") + b"\xda\x00\x02hi" + mp("s32") + b"\xdb\x00\x00\x00\x01z" +
        mp("b") + b"\xc5\x00\x02\x01\x02" +
        mp("ext") + b"\xd5\x05\xaa\xbb" + mp("ts") + b"\xd6\xff\x00\x00\x00\x01" +
        mp("a32") + b"\xdd\x00\x00\x00\x01\x01"),
    "ext-forms": frame(b"\x87" + mp("a") + b"\xd4\x01\x00" + mp("b") + b"\xd7\x01" + b"\x00" * 8 +
                       mp("c") + b"\xd8\x01" + b"\x00" * 16 + mp("d") + b"\xc7\x03\x02abc" +
                       mp("e") + b"\xc8\x00\x01\x02z" + mp("f") + b"\xc9\x00\x00\x00\x00\x02" +
                       mp("g") + b"\xc7\x0c\xff" + b"\x00" * 12),
    "map32": frame(b"\xdf\x00\x00\x00\x02" + mp("op") + mp("ping") + mp("id") + mp(1)),
    "zero-frame": frame(b""),
    "max-len-min": frame(mp({"op": "ping", "id": 1, "pad": "x" * 990})),
    # hostile: counts larger than the bytes left
    "map32-huge": frame(b"\xdf\xff\xff\xff\xff" + b"\xa1a\x01"),
    "array32-huge": frame(b"\x81\xa1a\xdd\xff\xff\xff\xff\x00"),
    "array16-over": frame(b"\x81\xa1a\xdc\x00\x10\x01\x02"),
    "map16-over": frame(b"\x81\xa1a\xde\x00\x08\xa1b\x01"),
    "str32-past": frame(b"\x81\xa1a\xdb\x7f\xff\xff\xff" + b"abc"),
    "bin32-past": frame(b"\x81\xa1a\xc6\x00\x01\x00\x00" + b"abc"),
    "ext32-past": frame(b"\x81\xa1a\xc9\x00\x10\x00\x00\x01" + b"abc"),
    "bad-timestamp": frame(b"\x81\xa1a\xd5\xff\x00\x00"),
    "c1": frame(b"\x81\xa1a\xc1"),
    "trailing": frame(mp({"op": "ping", "id": 1}) + b"\x00"),
    "root-array": frame(mp(["ping", 1])),
    "root-int": frame(b"\x01"),
    # nesting around the limit of 32 levels
    "depth-32": frame(b"\x81\xa1a" + b"\x91" * 30 + b"\x80"),
    "depth-33": frame(b"\x81\xa1a" + b"\x91" * 31 + b"\x80"),
    "deep-10000": frame(b"\x81\xa1a" + b"\x91" * 10000),
    # framing
    "truncated-payload": frame(req("ping", 1))[:-3],
    "truncated-header": b"\x00\x00",
    "too-large": b"\xff\xff\xff\xff" + b"\x81",
    "frame-then-too-large": frame(req("ping", 1)) + b"\x01\x00\x00\x01" + frame(req("ping", 2)),
    "missing-id": frame(mp({"op": "ping"})),
    "bad-types": frame(mp({"op": 5, "id": -1, "size": "big", "shm": 1.5})),
    "nested-errors": frame(mp({"op": "x", "id": 1, "a": [{"b": {"c": [1, {"d": None}]}}]})),
}

def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "corpus", "frame")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, "seed-" + name), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds written to {out}")

if __name__ == "__main__":
    main()
