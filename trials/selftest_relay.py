#!/usr/bin/env python3
"""Self-test of the corrupting relay and the XXH3-64 check, on 127.0.0.1 only.

Builds a synthetic stream (random bytes, decoy section headers, and a sevpeb
START / PART / END with valid END_OF_PAYLOAD checks), pushes it through
sevtrials/relay.py in every mode, and checks which bytes changed.
Run: $SEVPEB_CACHE/pyvenv/bin/python trials/selftest_relay.py   (prints "relay self-test: ok")
"""
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sevtrials import relay as R          # noqa: E402
from xxhash import xxh3_64_intdigest as xxh3   # noqa: E402

# docs/FORMAT.md section 9, vector 1: the END_OF_PAYLOAD checks of both payloads
V1 = bytes.fromhex("0153565042 0002 0c00 02 00000001 0000000000000000 0000000000000100 03 0000000000000000"
                   "12 0000000000000000 00000100 00000001 0010 0003 ff".replace(" ", ""))
assert xxh3(b"") == 0x2D06800538D394C2 and xxh3(b"abc") == 0x78AF5F94892F3950
assert xxh3(V1) & 0xFFFFFFFF == 0xF76B4195, hex(xxh3(V1))
V1b = bytes.fromhex("20425fdc1ac1f96579 0000000000000100 0000000000000004 ff".replace(" ", ""))
assert xxh3(V1b) & 0xFFFFFFFF == 0xF0C5B13C

rng = random.Random(3)
SID = struct.pack(">I", 7)


def ck(p):
    return p + struct.pack(">I", xxh3(p) & 0xFFFFFFFF)


START = ck(b"\x01SVPB\x00\x02\x0c\x00" + b"\x02" + struct.pack(">IQQQQ", 2, 0, 0xa0, 0x100, 0xff00)
           + b"\x03" + struct.pack(">Q", 1) + b"\x10" + struct.pack(">QQB", 0, 0xa0, 1)
           + b"\x11" + struct.pack(">QI", 0x100, 16) + b"\xfe\xff"
           + b"\x12" + struct.pack(">QII", 0x200, 100, 2) + struct.pack(">HHHH", 3, 0, 10, 4) + b"\xff")
PART = ck(b"\x10" + struct.pack(">QQB", 0x300, 5, 0) + b"\xff")
END = ck(b"\x20" + struct.pack(">QQQ", 0x1122334455667788, 0xffa0, 12) + b"\xff")


def sec(t, p, start=False):
    h = bytes([t]) + SID
    if start:
        h += bytes([19]) + b"sev-page-enc-bitmap" + struct.pack(">II", 0, 1)
    return h + p + b"\x7e" + SID


def rnd(n):
    return bytes(rng.getrandbits(8) for _ in range(n))


HDR = 5 + 1 + 19 + 8
S0 = 5000 + 6 + 3000          # offset of the START section
P0 = S0 + HDR                 # START payload
STREAM = (b"QEVM" + rnd(4996) + b"\x02" + SID + b"\x55" + rnd(3000) + sec(1, START, True) + rnd(200000)
          + sec(2, PART) + rnd(1000) + b"\x03" + SID + b"\xff\x00" + rnd(50000) + sec(3, END) + rnd(9000))
E0 = STREAM.index(sec(3, END)) + 5   # END payload


def run(mode, tmp):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    rport = probe.getsockname()[1]
    probe.close()
    log = os.path.join(tmp, f"{mode}.jsonl")
    p = subprocess.Popen([sys.executable, R.__file__, "--listen", f"127.0.0.1:{rport}",
                          "--connect", f"127.0.0.1:{ls.getsockname()[1]}", "--mode", mode, "--log", log,
                          "--timeout", "30"], stdout=subprocess.PIPE, text=True)
    assert "ready" in p.stdout.readline()
    got = []

    def sink():
        c, _ = ls.accept()
        while True:
            d = c.recv(65536)
            if not d:
                break
            got.append(d)
    th = threading.Thread(target=sink)
    th.start()
    s = socket.create_connection(("127.0.0.1", rport))
    i = 0
    while i < len(STREAM):
        n = rng.choice((1, 7, 100, 4096, 65536))
        try:
            s.sendall(STREAM[i:i + n])
        except OSError:
            break
        i += n
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    th.join(30)
    p.wait(30)
    s.close()
    out = b"".join(got)
    ev = [json.loads(l) for l in open(log)]
    return out, ev


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for mode in R.MODES:
            out, ev = run(mode, tmp)
            secs = [e["type"] for e in ev if e["ev"] == "section"]
            diffs = [j for j in range(len(out)) if out[j] != STREAM[j]] if len(out) == len(STREAM) else None
            if mode == "truncate":
                assert len(out) < P0 + len(START) and len(out) > P0, (mode, len(out))
                assert out == STREAM[:len(out)]
                continue
            assert secs == ["START", "PART", "END"], (mode, secs)
            want = {"none": [], "magic": [P0 + 1], "bits": [P0 + START.index(b"\x11\x00") + 13],
                    "bits-fixed": [P0 + START.index(b"\x11\x00") + 13] + list(range(P0 + len(START) - 4, P0 + len(START))),
                    "final": [E0 + 8] + list(range(E0 + len(END) - 4, E0 + len(END)))}[mode]
            got = [d for d in diffs if d not in want] if diffs is not None else None
            assert diffs is not None and set(diffs) <= set(want) and (mode == "none" or diffs), (mode, diffs, want)
            if mode in ("bits-fixed", "final"):
                # the rewritten check is valid for the corrupted payload
                a = P0 if mode == "bits-fixed" else E0
                body = START if mode == "bits-fixed" else END
                pay = out[a:a + len(body)]
                assert struct.unpack(">I", pay[-4:])[0] == xxh3(pay[:-4]) & 0xFFFFFFFF, mode
            print(f"  {mode:<10} ok: sections {secs}, changed offsets {diffs}")
    print("relay self-test: ok")


if __name__ == "__main__":
    main()
