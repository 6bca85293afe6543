#!/usr/bin/env python3
"""A small Python client of sinkd (standard library + msgpack).

    from sinkd_client import Client
    with Client() as c:                      # same socket rules as libsinkd
        s = c.session_open(model="tiny")
        c.session_append(s, text="Once upon a time")
        for ev in c.session_generate(s, max_tokens=32):
            if ev["ev"] in ("token", "text"):
                print(ev["text"], end="", flush=True)
            elif ev["ev"] == "done":         # the final reply
                print("\\n", ev["reason"], ev["n_tokens"])
        c.session_close(s)

Frames are a 4-byte big-endian length and one msgpack map
(protocol/PROTOCOL.md). One request is in flight at a time; replies and
events of other ids (requests abandoned after an error) are skipped.
Errors the daemon answers raise SinkdError with its code and message; a
frame that is not a msgpack map raises ConnectionError. Leaving a
generation's loop early (break, an exception) cancels the generation.

As a program: python3 sinkd_client.py [--socket S] [--model M] [-n N]
[--temp T] [--seed S] [--timeout SECONDS] "prompt" streams a generation
to stdout.
"""

import argparse
import os
import socket
import struct
import sys

import msgpack

SOCKET_DEFAULT = "/run/sinkd/sinkd.sock"
SOCKET_XDG_NAME = "sinkd.sock"
PROTO_VERSION = 1
# Payload limits until the daemon's hello reply says what it enforces: the
# protocol's default max_frame for what we send, and a generous bound on
# what we accept (a daemon may be configured above the default).
FRAME_DEFAULT = 16 * 1024 * 1024
FRAME_ACCEPT = 256 * 1024 * 1024


def default_socket():
    """$SINKD_SOCKET, else $XDG_RUNTIME_DIR/sinkd.sock if it exists, else
    /run/sinkd/sinkd.sock (libsinkd's sinkd_client_default_socket)."""
    env = os.environ.get("SINKD_SOCKET")
    if env:
        return env
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        path = os.path.join(xdg, SOCKET_XDG_NAME)
        if os.path.exists(path):
            return path
    return SOCKET_DEFAULT


class SinkdError(Exception):
    """An error reply: .code is the wire name ("not_found"), .message the
    daemon's text."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _error(err):
    """The SinkdError of an error reply's "error" field."""
    if not isinstance(err, dict):
        return SinkdError("protocol", f"an error reply whose error is not a map: {err!r}")
    return SinkdError(err.get("code"), err.get("message"))


class Client:
    """One connection to sinkd. Not thread-safe: one thread per Client.
    @timeout: seconds a reply may take (None: no limit), except a prompt's
    prefill (session_append), which waits as long as it takes."""

    def __init__(self, path=None, timeout=30.0, hello=True):
        self.path = path or default_socket()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(self.path)
        self.next_id = 1
        self.buf = bytearray()
        self.max_frame = None  # the daemon's, once hello() has run
        self.info = self.hello() if hello else None

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- framing ---------------------------------------------------------

    def _send(self, op, fields):
        rid = self.next_id
        self.next_id += 1
        msg = {"op": op, "id": rid}
        msg.update({k: v for k, v in fields.items() if v is not None})
        payload = msgpack.packb(msg, use_bin_type=True)
        limit = self.max_frame or FRAME_DEFAULT
        if len(payload) > limit:
            # the daemon would answer frame_too_large and close the
            # connection: refuse it here and keep the connection
            raise SinkdError("frame_too_large", f"a request of {len(payload)} bytes is over "
                             f"the daemon's max_frame ({limit}); nothing was sent")
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)
        return rid

    def _recv(self):
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack(">I", self.buf[:4])[0]
                limit = self.max_frame or FRAME_ACCEPT
                if n > limit:
                    raise ConnectionError(f"a frame of {n} bytes from the daemon, over "
                                          f"{limit} bytes")
                if len(self.buf) >= 4 + n:
                    payload = bytes(self.buf[4:4 + n])
                    del self.buf[:4 + n]
                    try:
                        msg = msgpack.unpackb(payload, raw=False,
                                              unicode_errors="surrogateescape")
                    except (ValueError, msgpack.UnpackException) as e:
                        raise ConnectionError(f"a malformed frame from the daemon: {e}") from e
                    if not isinstance(msg, dict):
                        raise ConnectionError("the daemon sent a frame that is not a map")
                    return msg
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            self.buf += chunk

    def stream(self, op, **fields):
        """Send a request; yield its events (maps with "ev"), then return
        its reply map. Raises SinkdError on an error reply."""
        rid = self._send(op, fields)
        while True:
            msg = self._recv()
            if "id" not in msg and "error" in msg:
                raise _error(msg["error"])  # the daemon could not read our frame
            if msg.get("id") != rid:
                continue
            if "ev" in msg:
                yield msg
                continue
            if "error" in msg:
                raise _error(msg["error"])
            return msg

    def request(self, op, **fields):
        """Send a request and return its reply map (events are dropped)."""
        gen = self.stream(op, **fields)
        while True:
            try:
                next(gen)
            except StopIteration as done:
                return done.value

    # --- ops ---------------------------------------------------------------

    def hello(self):
        info = self.request("hello", proto_min=PROTO_VERSION, proto_max=PROTO_VERSION,
                            client="sinkd_client.py")
        mf = info.get("max_frame")
        if isinstance(mf, int) and mf > 0:
            self.max_frame = mf
        return info

    def models(self):
        return self.request("model.list")["models"]

    def tokenize(self, text, model=None, bos=None):
        return self.request("tokenize", text=text, model=model, bos=bos)["ids"]

    def detokenize(self, ids, model=None):
        return self.request("detokenize", ids=list(ids), model=model)["text"]

    def session_open(self, model=None, policy=None, params=None, budget=None, persist=None):
        """Open a session; returns its id (the reply is in .last_open).
        With persist=True it outlives this connection and restarts of the
        daemon: keep .last_open["secret"] (a str, as the daemon sent it;
        private) to session_attach it later. A daemon without a state
        directory refuses persist=True (SinkdError "unsupported")."""
        self.last_open = self.request("session.open", model=model, policy=policy,
                                      params=params, budget=budget, persist=persist)
        return self.last_open["session"]

    def session_append(self, session, text=None, ids=None, bos=None):
        """Prefill a prompt: no timeout (a long prompt, or other sessions'
        prompts ahead of it, may take longer than any reply)."""
        old = self.sock.gettimeout()
        self.sock.settimeout(None)
        try:
            return self.request("session.append", session=session, text=text,
                                ids=None if ids is None else list(ids), bos=bos)
        finally:
            if self.sock is not None:
                self.sock.settimeout(old)

    def session_generate(self, session, max_tokens=128, temperature=0.0, seed=0, **more):
        """Generator of the generation's events: {"ev": "token", "token",
        "text"} for each token (and "policy_fallback" events), then
        {"ev": "text", "text"} with the end of the text no token carried,
        if any (held back as the possible start of a stop string, or an
        incomplete character), so that the pieces add up to the reply's
        text, then the final reply with "ev" set to "done" (reason,
        n_tokens, text, timings). Closed before that reply (a break out of
        the loop, an exception in it), it cancels the generation, which
        would otherwise run on and keep the session busy."""
        gen = self.stream("session.generate", session=session, max_tokens=max_tokens,
                          temperature=float(temperature), seed=seed, **more)
        finished = refused = False
        streamed = 0
        try:
            while True:
                try:
                    ev = next(gen)
                except SinkdError:
                    refused = True  # an error reply: nothing of ours runs
                    raise
                except StopIteration as done:
                    finished = True
                    reply = dict(done.value)
                    reply["ev"] = "done"
                    if more.get("stream", True) and len(reply.get("text", "")) > streamed:
                        yield {"ev": "text", "text": reply["text"][streamed:]}
                    yield reply
                    return
                if ev.get("ev") == "token":
                    streamed += len(ev.get("text", ""))
                yield ev
        finally:
            # a refusal (busy: another caller's generation runs) is not ours
            # to cancel
            if not finished and not refused and self.sock is not None:
                try:
                    self.session_cancel(session)
                except (OSError, SinkdError):
                    pass    # a lost connection cancels it too

    def session_cancel(self, session):
        return self.request("session.cancel", session=session)

    def session_stats(self, session):
        return self.request("session.stats", session=session)

    def session_close(self, session):
        return self.request("session.close", session=session)

    # --- persistent sessions and snapshots (PROTOCOL.md, "Persistent sessions")

    def session_attach(self, session, secret):
        """Become the owner connection of @session again (after a restart,
        or from another connection of the same uid). Returns the reply:
        session.open's fields plus n_past, the tokens in the conversation.
        A wrong secret, another uid's and a missing session all raise
        SinkdError "not_found"."""
        return self.request("session.attach", session=session, secret=secret)

    def session_save(self, session):
        """Write a snapshot of @session now; returns its path (a str)."""
        return self.request("session.save", session=session)["path"]

    def session_restore(self, session=None, path=None):
        """Reopen the snapshot of @session, or the one at @path (a path
        session_save returned): exactly one of them. A live session of that
        id rolls back to it. Returns the reply, as session_attach's."""
        if (session is None) == (path is None):
            raise ValueError("session_restore: give exactly one of session and path")
        return self.request("session.restore", session=session, path=path)

    def session_forget(self, session):
        """Delete the snapshot session_save wrote of @session (the live
        session, if any, stays)."""
        return self.request("session.forget", session=session)


class _StdoutGone(Exception):
    """stdout's reader went away (| head)."""


def main(argv=None):
    ap = argparse.ArgumentParser(description="Stream a generation from sinkd.")
    ap.add_argument("--socket", help="daemon socket (default as libsinkd)")
    ap.add_argument("--model", help="model name (default: the daemon's first)")
    ap.add_argument("-n", type=int, default=128, help="max tokens (default 128)")
    ap.add_argument("--temp", type=float, default=0.0, help="temperature (0: greedy)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="seconds a reply may take, 0: no limit (default 30; the "
                         "prompt's prefill waits as long as it takes)")
    ap.add_argument("prompt")
    args = ap.parse_args(argv)
    if args.timeout < 0:
        ap.error("--timeout must be 0 or more seconds")
    try:
        with Client(args.socket, timeout=args.timeout or None) as c:
            s = c.session_open(model=args.model)
            c.session_append(s, text=args.prompt)
            out = sys.stdout.buffer
            for ev in c.session_generate(s, max_tokens=args.n, temperature=args.temp,
                                         seed=args.seed):
                if ev["ev"] in ("token", "text"):
                    try:
                        out.write(ev["text"].encode("utf-8", "surrogateescape"))
                        out.flush()
                    except BrokenPipeError as e:
                        raise _StdoutGone() from e
                elif ev["ev"] == "done":
                    print(f"[{ev['n_tokens']} tokens, "
                          f"{ev['timings']['tokens_per_s']:.1f} tokens/s, {ev['reason']}]",
                          file=sys.stderr)
    except SinkdError as e:
        print(f"sinkd_client.py: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nsinkd_client.py: interrupted", file=sys.stderr)
        return 130
    except _StdoutGone:
        # nothing more to say; stdout to /dev/null, so that the
        # interpreter's final flush is quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:
        print(f"sinkd_client.py: {args.socket or default_socket()}: {e}", file=sys.stderr)
        return 3
    except (KeyError, TypeError, AttributeError) as e:
        # a reply or event without a field it must have, or of another type
        print(f"sinkd_client.py: a malformed answer from the daemon ({type(e).__name__}: {e})",
              file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
