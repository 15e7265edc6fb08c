#!/usr/bin/env python3
"""Self-test of the QMP client (trials/sevtrials/qmp.py) against a scripted
QMP server on a unix socket: no QEMU needed, a few seconds.

Checks: 1,500 events sent before one reply are all seen, in order (the
hand-written client this replaced kept only the last 500-1,000); error
replies raise QMPError with class and desc; a hang-up raises EOFError; two
clients driven from two threads at once (the churn thread) both work.

Run: <venv>/bin/python trials/selftest_qmp.py   (prints "qmp self-test: ok")
"""
import json
import os
import shutil
import socket
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sevtrials.qmp import QMP, QMPError  # noqa: E402

EVENTS = 1500


def serve(path, ready):
    """Accept clients on `path`; each gets its own handler thread."""
    ls = socket.socket(socket.AF_UNIX)
    ls.bind(path)
    ls.listen(4)
    ls.settimeout(30)
    ready.set()
    while True:
        try:
            c, _ = ls.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def messages(c):
    """JSON objects as the client sends them (not newline-separated)."""
    dec, buf = json.JSONDecoder(), ""
    while True:
        data = c.recv(65536)
        if not data:
            return
        buf += data.decode()
        while buf.strip():
            try:
                obj, n = dec.raw_decode(buf.lstrip())
            except ValueError:
                break
            buf = buf.lstrip()[n:]
            yield obj


def handle(c):
    c.settimeout(30)
    f = c.makefile("rwb", buffering=0)

    def send(obj):
        f.write(json.dumps(obj).encode() + b"\n")

    def reply(mid, **obj):
        send(dict(obj, id=mid) if mid is not None else obj)

    send({"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 13}, "package": ""},
                  "capabilities": []}})
    for msg in messages(c):
        name, mid = msg["execute"], msg.get("id")
        if name == "burst":
            for i in range(EVENTS):
                send({"event": "TEST", "data": {"i": i},
                      "timestamp": {"seconds": 0, "microseconds": i}})
            reply(mid, **{"return": {"sent": EVENTS}})
        elif name == "fail":
            reply(mid, error={"class": "GenericError", "desc": "no such thing"})
        elif name == "hangup":
            c.close()
            return
        else:
            reply(mid, **{"return": {"echo": name}})


def main():
    d = tempfile.mkdtemp(prefix="sevpeb-qmp-")
    try:
        run(os.path.join(d, "qmp.sock"))
    finally:
        shutil.rmtree(d, ignore_errors=True)     # no temp dir left behind (the trials' leak check)


def run(path):
    ready = threading.Event()
    threading.Thread(target=serve, args=(path, ready), daemon=True).start()
    ready.wait(10)

    q = QMP(path, timeout=20)
    assert q.cmd("burst") == {"sent": EVENTS}
    got = [e["data"]["i"] for e in q.events if e["event"] == "TEST"]
    assert got == list(range(EVENTS)), f"saw {len(got)} of {EVENTS} events"
    q.events.clear()
    assert q.cmd("burst") and len(q.events) == EVENTS, len(q.events)

    try:
        q.cmd("fail")
        raise AssertionError("error reply not raised")
    except QMPError as e:
        assert (e.cmd, e.cls, e.desc) == ("fail", "GenericError", "no such thing"), vars(e)
    assert q.cmd("still-there") == {"echo": "still-there"}

    # Two clients, two threads, at the same time (one made in this thread).
    other = QMP(path, timeout=20)
    errors = []

    def worker():
        try:
            for i in range(200):
                assert other.cmd(f"w{i}") == {"echo": f"w{i}"}
        except Exception as e:  # reported below
            errors.append(repr(e))
    t = threading.Thread(target=worker)
    t.start()
    for i in range(200):
        assert q.cmd(f"m{i}") == {"echo": f"m{i}"}
    t.join(30)
    assert not errors, errors
    other.close()

    try:
        q.cmd("hangup")
        raise AssertionError("hang-up not noticed")
    except EOFError:
        pass
    q.close()
    q.close()
    print("qmp self-test: ok")


if __name__ == "__main__":
    main()
