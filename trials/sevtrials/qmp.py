"""A small synchronous QMP client (stdlib only). One instance per socket/thread."""
import json
import socket
import time


class QMPError(RuntimeError):
    def __init__(self, cmd, err):
        self.cmd, self.cls = cmd, err.get("class", "")
        self.desc = err.get("desc", str(err))
        super().__init__(f"{cmd}: {self.desc}")


class QMP:
    def __init__(self, path, timeout=30.0, connect_timeout=30.0):
        deadline = time.monotonic() + connect_timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"QMP socket {path} did not accept within {connect_timeout:.0f}s")
                time.sleep(0.05)
        self.sock = s
        self.sock.settimeout(timeout)
        self.f = s.makefile("rwb", buffering=0)
        self.events = []
        greeting = self._read()
        if "QMP" not in greeting:
            raise RuntimeError(f"not a QMP greeting: {greeting}")
        self.cmd("qmp_capabilities")

    def _read(self):
        line = self.f.readline()
        if not line:
            raise EOFError("QMP connection closed")
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._read()
            if "event" in r:
                self.events.append(r)
                if len(self.events) > 1000:
                    del self.events[:500]
                continue
            if "error" in r:
                raise QMPError(name, r["error"])
            return r.get("return")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
