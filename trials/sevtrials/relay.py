#!/usr/bin/env python3
"""A TCP relay for one migration stream that finds the sevpeb section and corrupts it.

Run inside a namespace: relay.py --listen IP:PORT --connect IP:PORT --mode MODE --log FILE
The source connects to --listen; the relay connects to the destination at --connect
and forwards both directions (the return path too).

Finding the section: the START header is unambiguous (u8 0x01, be32 section_id,
u8 19, "sev-page-enc-bitmap", be32 instance, be32 version). PART/END headers are
(u8 0x02|0x03, be32 section_id); a candidate counts only if the bytes after it
parse as a sevpeb payload (docs/FORMAT.md records, through END_OF_PAYLOAD) and
are followed by the section footer (u8 0x7e, be32 section_id).

Modes:
  none      pass everything through, only log the sections found
  magic     flip one byte of the HEADER magic in the START payload
  bits      flip one page-state bit in the first state record of the START payload
            (BITS: bit 0 of the bitmap; FILL: the state byte; RUNS: low bit of the first run
            length); the END_OF_PAYLOAD check then no longer matches
  bits-fixed  the same flip, with the END_OF_PAYLOAD check recomputed, so only the FINAL
            digest / page counts can catch it
  final     flip one byte of the FINAL record's digest in the END payload (check recomputed)
  truncate  forward the START section only up to the middle of its payload, then close
"""
import argparse
import json
import socket
import struct
import sys
import threading
import time

from xxhash import xxh3_64_intdigest as xxh3    # PyPI xxhash (scripts/lib.sh installs it into the venv)

IDSTR = b"sev-page-enc-bitmap"
START_TAIL = bytes([len(IDSTR)]) + IDSTR
FOOTER = 0x7E
SECTION_NAMES = {1: "START", 2: "PART", 3: "END", 4: "FULL"}
REC = {0x01: "HEADER", 0x02: "LAYOUT", 0x03: "CONTROL", 0x10: "FILL", 0x11: "BITS", 0x12: "RUNS",
       0x20: "FINAL", 0xFF: "END_OF_PAYLOAD"}


MODES = ["none", "magic", "bits", "bits-fixed", "final", "truncate"]


class NeedMore(Exception):
    pass


class Invalid(Exception):
    pass


def parse_payload(buf, off, check=True):
    """Parse records from buf[off:] through END_OF_PAYLOAD (type 0xFF + be32 low half of
    XXH3-64 over the payload up to and including the 0xFF). Returns (end offset,
    [(type, rec_off, rec_len)]). Raises NeedMore if buf ends first, Invalid if it is
    not a sevpeb payload (with check, a wrong END_OF_PAYLOAD check is Invalid too)."""
    recs = []
    p = off

    def need(n):
        if p + n > len(buf):
            raise NeedMore()

    while True:
        need(1)
        t = buf[p]
        if t == 0xFF:
            need(5)
            want = xxh3(bytes(buf[off:p + 1])) & 0xFFFFFFFF
            got = struct.unpack_from(">I", buf, p + 1)[0]
            if check and got != want:
                raise Invalid(f"END_OF_PAYLOAD check {got:#x} != {want:#x}")
            recs.append((t, p, 5))
            return p + 5, recs
        if t == 0x01:
            n = 9
        elif t == 0x02:
            need(5)
            ns = struct.unpack_from(">I", buf, p + 1)[0]
            if ns > 32768:
                raise Invalid(f"LAYOUT nslots {ns}")
            n = 5 + 16 * ns
        elif t == 0x03:
            n = 9
        elif t == 0x10:
            n = 18
            need(n)
            if buf[p + 17] > 1:
                raise Invalid("FILL state")
        elif t == 0x11:
            need(13)
            np_ = struct.unpack_from(">I", buf, p + 9)[0]
            if not 1 <= np_ <= 65536:
                raise Invalid(f"BITS npages {np_}")
            n = 13 + (np_ + 7) // 8
        elif t == 0x12:
            need(17)
            np_, nr = struct.unpack_from(">II", buf, p + 9)
            if not 1 <= np_ <= 65536 or not 1 <= nr <= np_ // 2 + 1:
                raise Invalid(f"RUNS npages {np_} nruns {nr}")
            n = 17 + 4 * nr
        elif t == 0x20:
            n = 25
        else:
            raise Invalid(f"record type {t:#x}")
        need(n)
        recs.append((t, p, n))
        p += n
        if len(recs) > 100000:
            raise Invalid("too many records")


class Relay:
    def __init__(self, mode, log):
        self.mode, self.logf = mode, log
        self.buf = bytearray()
        self.base = 0               # stream offset of buf[0]
        self.sid = None             # section_id bytes once START was found
        self.state = "seek-start"
        self.done_corrupt = False
        self.cut_at = None          # absolute stream offset to truncate at
        self.closed = False
        self.up_bytes = self.down_bytes = 0

    def log(self, **kw):
        kw["t"] = round(time.time(), 3)
        self.logf.write(json.dumps(kw) + "\n")
        self.logf.flush()

    def flip(self, idx, what, mask=0x01):
        old = self.buf[idx]
        self.buf[idx] ^= mask
        self.done_corrupt = True
        self.log(ev="corrupt", what=what, stream_off=self.base + idx, old=old, new=self.buf[idx])

    def fix_check(self, p0, recs, what):
        """Recompute the END_OF_PAYLOAD check after a flip, so the corruption gets past it."""
        t, off, n = recs[-1]
        want = xxh3(bytes(self.buf[p0:off + 1])) & 0xFFFFFFFF
        struct.pack_into(">I", self.buf, off + 1, want)
        self.log(ev="fixed-check", what=what, stream_off=self.base + off + 1, value=want)

    def scan(self, final=False):
        """Look at buf (maybe corrupting it); return how many leading bytes may be forwarded now."""
        b = self.buf
        pos = 0
        if self.state == "seek-start":
            while True:
                i = b.find(START_TAIL, pos)
                if i < 0:
                    return len(b) if final else max(pos, len(b) - len(START_TAIL) - 5)
                k = i - 5
                if k < 0 or b[k] != 0x01:
                    pos = i + 1          # the idstr bytes without a START header before them
                    continue
                hdr_end = i + len(START_TAIL) + 8
                try:
                    if len(b) < hdr_end:
                        raise NeedMore()
                    end, recs = parse_payload(b, hdr_end)
                except NeedMore:
                    return len(b) if final else k
                except Invalid as e:
                    self.log(ev="error", what=f"START payload does not parse: {e}")
                    self.state = "passthrough"
                    return len(b)
                self.sid = bytes(b[k + 1:k + 5])
                inst, ver = struct.unpack_from(">II", b, i + len(START_TAIL))
                self.log(ev="section", type="START", section_id=struct.unpack(">I", self.sid)[0],
                         instance=inst, version=ver, stream_off=self.base + k,
                         payload_len=end - hdr_end, records=_summ(recs), check="ok")
                if len(b) >= end + 5 and (b[end] != FOOTER or bytes(b[end + 1:end + 5]) != self.sid):
                    self.log(ev="note", what="no section footer after START payload")
                self._corrupt_start(hdr_end, end, recs)
                self.state = "seek-part"
                if self.cut_at is not None:
                    return self.cut_at - self.base
                return end
        if self.state == "seek-part":
            sid = self.sid
            while True:
                cands = [x for x in (b.find(b"\x02" + sid, pos), b.find(b"\x03" + sid, pos)) if x >= 0]
                if not cands:
                    return len(b) if final else max(pos, len(b) - 5)
                k = min(cands)
                try:
                    end, recs = parse_payload(b, k + 5)
                    if len(b) < end + 5:
                        raise NeedMore()
                    if b[end] != FOOTER or bytes(b[end + 1:end + 5]) != sid:
                        raise Invalid("no footer")
                except NeedMore:
                    if final or len(b) - k > 1 << 20:   # a payload of ours is never this long unparsed
                        pos = k + 1
                        continue
                    return k
                except Invalid:
                    pos = k + 1          # not our section: keep looking
                    continue
                typ = SECTION_NAMES[b[k]]
                self.log(ev="section", type=typ, stream_off=self.base + k, payload_len=end - (k + 5),
                         records=_summ(recs), check="ok")
                if typ == "END" and self.mode == "final" and not self.done_corrupt:
                    fin = [r for r in recs if r[0] == 0x20]
                    if fin:
                        self.flip(fin[0][1] + 1 + 7, "FINAL digest low byte")
                        self.fix_check(k + 5, recs, "END payload")
                if typ == "END":
                    self.state = "passthrough"
                return end + 5
        return len(b)   # passthrough

    def _corrupt_start(self, p0, end, recs):
        m = self.mode
        if m == "magic":
            hdr = [r for r in recs if r[0] == 0x01]
            if hdr:
                self.flip(hdr[0][1] + 1, "HEADER magic first byte")
        elif m in ("bits", "bits-fixed"):
            # prefer BITS (one page flips), then FILL (a whole run flips), then RUNS
            by = {}
            for t, off, n in recs:
                by.setdefault(t, off)
            if 0x11 in by:
                self.flip(by[0x11] + 13, "BITS bitmap bit 0")
            elif 0x10 in by:
                self.flip(by[0x10] + 17, "FILL state byte")
            elif 0x12 in by:
                self.flip(by[0x12] + 17 + 3, "RUNS first run length low bit")
            else:
                self.log(ev="error", what="no state record in START payload to flip")
                return
            if m == "bits-fixed":
                self.fix_check(p0, recs, "START payload")
        elif m == "truncate":
            self.cut_at = self.base + p0 + max(1, (end - p0) // 2)
            self.log(ev="truncate", stream_off=self.cut_at, payload_start=self.base + p0,
                     payload_end=self.base + end)


def _summ(recs):
    out = {}
    for t, _, _ in recs:
        k = REC.get(t, hex(t))
        out[k] = out.get(k, 0) + 1
    return out


def pump_up(r, src, dst):
    while True:
        try:
            data = src.recv(1 << 16)
        except OSError:
            data = b""
        final = not data
        r.buf += data
        r.up_bytes += len(data)
        out = []
        while True:
            n = r.scan(final=final)
            if r.cut_at is not None and r.base + n >= r.cut_at:
                n = r.cut_at - r.base
                out.append(bytes(r.buf[:n]))
                try:
                    dst.sendall(b"".join(out))
                except OSError:
                    pass
                r.log(ev="closed", why="truncate", forwarded=r.cut_at)
                r.closed = True
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            if n <= 0:
                break
            out.append(bytes(r.buf[:n]))
            del r.buf[:n]
            r.base += n
            if not r.buf:
                break
        try:
            if out:
                dst.sendall(b"".join(out))
        except OSError as e:
            r.log(ev="closed", why=f"send to destination: {e}")
            return
        if final:
            try:
                if r.buf:
                    dst.sendall(bytes(r.buf))
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return


def pump_down(r, src, dst):
    while True:
        try:
            data = src.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
        r.down_bytes += len(data)
        try:
            dst.sendall(data)
        except OSError:
            return


def hostport(s):
    h, p = s.rsplit(":", 1)
    return h, int(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--connect", required=True)
    ap.add_argument("--mode", default="none", choices=MODES)
    ap.add_argument("--log", required=True)
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args()
    logf = open(a.log, "a")
    r = Relay(a.mode, logf)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(hostport(a.listen))
    ls.listen(1)
    ls.settimeout(a.timeout)
    r.log(ev="listening", addr=a.listen, mode=a.mode)
    print("ready", flush=True)
    try:
        c, peer = ls.accept()
    except socket.timeout:
        r.log(ev="error", what="no connection")
        return 2
    up = socket.create_connection(hostport(a.connect), timeout=30)
    up.settimeout(None)
    c.settimeout(None)
    r.log(ev="connected", src=f"{peer[0]}:{peer[1]}", dst=a.connect)
    t1 = threading.Thread(target=pump_up, args=(r, c, up), daemon=True)
    t2 = threading.Thread(target=pump_down, args=(r, up, c), daemon=True)
    t1.start(); t2.start()
    t1.join(a.timeout)
    t2.join(10)
    r.log(ev="done", up_bytes=r.up_bytes, down_bytes=r.down_bytes, sid_found=r.sid is not None,
          corrupted=r.done_corrupt)
    for s in (c, up):
        try:
            s.close()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
