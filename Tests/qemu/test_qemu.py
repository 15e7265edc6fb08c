#!/usr/bin/env python3
"""QEMU-level tests of the sev-page-enc-bitmap object (TCG, loopback only).

Each test starts its own QEMU processes (q35, 256 MiB, SeaBIOS with no boot
device, TCG), drives the page state with x-sev-page-enc-bitmap-set, migrates,
and compares x-query-sev-page-enc-bitmap on both sides. Every wait is bounded;
only processes started here are killed, by PID.

Usage: test_qemu.py --env CURRENT_ENV [TEST ...]
"""
import argparse
import json
import re
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import Qemu, QMPError  # noqa: E402

PAGE = 4096
MIG_TIMEOUT = 60.0
SECTION = b"sev-page-enc-bitmap"


def read_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
    for k in ("QEMU", "QEMU_FW_DIRS", "QEMU_ANALYZE_MIGRATION"):
        if k not in env:
            raise SystemExit(f"{path}: no {k}=")
    return env


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def query(m, **kw):
    return m.cmd("x-query-sev-page-enc-bitmap", **kw)


def state_of(q):
    """What must survive a migration: layout, shared runs, digest, control."""
    return {k: q[k] for k in ("slots", "shared-ranges", "total-pages", "shared-pages",
                              "digest", "migration-control")}


def set_shared(m, gfn, npages, shared=True):
    m.cmd("x-sev-page-enc-bitmap-set", gpa=gfn * PAGE, npages=npages, encrypted=not shared)


def wait_migration(m, timeout=MIG_TIMEOUT, on_poll=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = m.cmd("query-migrate")
        status = info.get("status")
        if status in ("completed", "failed", "cancelled"):
            return info
        if on_poll:
            on_poll(info)
        time.sleep(0.02)
    raise TimeoutError(f"migration still {status} after {timeout}s")


def wait_status(m, wanted, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = m.cmd("query-status")["status"]
        if st in wanted:
            return st
        time.sleep(0.05)
    raise TimeoutError(f"status {st}, wanted {wanted}")


def pattern(m):
    """A spread of shared runs in low RAM and above 1 MiB."""
    set_shared(m, 0x10, 3)
    for g in range(0x100, 0x2000, 0x81):
        set_shared(m, g, 1 + g % 13)
    set_shared(m, 0x4000, 0x3000)          # 48 MiB run
    set_shared(m, 0x4100, 5, shared=False)  # hole in it


class Env:
    def __init__(self, env, workdir):
        self.env = env
        self.workdir = workdir
        self.procs = []

    def qemu(self, name, **kw):
        q = Qemu(self.env, self.workdir, name, **kw)
        self.procs.append(q)
        q.connect()
        return q

    def cleanup(self):
        for q in self.procs:
            try:
                q.kill()
            except Exception:
                pass


# --------------------------------------------------------------------------
# loopback relay that can truncate or corrupt our section

class Relay:
    """Forwards src->dst (and dst->src for the return path) on 127.0.0.1.

    mode "truncate": close both connections `offset` bytes into the payload
    of our START section; "flip": xor one byte there with 0xff.
    """

    def __init__(self, dst_port, mode, offset):
        self.dst_port = dst_port
        self.mode = mode
        self.offset = offset
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.lsock.settimeout(MIG_TIMEOUT)
        self.port = self.lsock.getsockname()[1]
        self.hit = None
        self.error = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            a, _ = self.lsock.accept()
            b = socket.create_connection(("127.0.0.1", self.dst_port), timeout=MIG_TIMEOUT)
            back = threading.Thread(target=self.pump_back, args=(b, a), daemon=True)
            back.start()
            self.pump(a, b)
        except Exception as e:  # reported by the test
            self.error = e

    def pump_back(self, b, a):
        try:
            while True:
                d = b.recv(65536)
                if not d:
                    break
                a.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def pump(self, a, b):
        seen = bytearray()
        total = 0
        target = None
        while True:
            d = a.recv(65536)
            if not d:
                break
            d = bytearray(d)
            if target is None and len(seen) < (1 << 20):
                seen += d
                i = seen.find(bytes([len(SECTION)]) + SECTION + b"\x00\x00\x00\x00\x00\x00\x00\x01")
                if i >= 5 and seen[i - 5] == 0x01:
                    payload = i + 1 + len(SECTION) + 8
                    target = payload + self.offset
            if target is not None and total <= target < total + len(d):
                k = target - total
                if self.mode == "flip":
                    d[k] ^= 0xff
                    self.hit = target
                else:
                    b.sendall(d[:k])
                    self.hit = target
                    a.shutdown(socket.SHUT_RDWR)
                    b.shutdown(socket.SHUT_RDWR)
                    a.close()
                    b.close()
                    return
            b.sendall(d)
            total += len(d)
        b.shutdown(socket.SHUT_WR)


# --------------------------------------------------------------------------
# tests

def test_file_analyze_load(E):
    """save to file:, analyze-migration.py decodes it, load it: equal state"""
    src = E.qemu("src")
    pattern(src.qmp)
    before = query(src.qmp)
    check(before["shared-pages"] > 0x3000, before["shared-pages"])
    path = os.path.join(E.workdir, "stream.bin")
    src.qmp.cmd("migrate", uri=f"file:{path}")
    info = wait_migration(src.qmp)
    check(info["status"] == "completed", info)
    check(state_of(query(src.qmp)) == state_of(before), "source state changed by saving")

    out = subprocess.run([sys.executable, E.env["QEMU_ANALYZE_MIGRATION"], "-f", path],
                         capture_output=True, text=True, timeout=120, cwd=E.workdir)
    check(out.returncode == 0, f"analyze-migration.py rc={out.returncode}: {out.stderr[-1500:]}")
    dump = json.loads(out.stdout)
    secs = [v for k, v in dump.items() if k.startswith("sev-page-enc-bitmap ")]
    check(len(secs) == 1, f"sections: {list(dump)}")
    sec = secs[0]
    check(sec["final"]["digest"] == "0x%016x" % before["digest"], (sec["final"], before["digest"]))
    check(sec["final"]["shared_pages"] == before["shared-pages"], sec["final"])
    check(sec["final"]["total_pages"] == before["total-pages"], sec["final"])
    check(sec["layout"] == ["0x%x+0x%x" % (s["base-gfn"], s["npages"]) for s in before["slots"]],
          sec["layout"])
    check(len(sec["payloads"]) >= 2, sec["payloads"])
    # The END_OF_PAYLOAD check (XXH3-64) is verified when this python has xxhash.
    import importlib.util
    want = "verified" if importlib.util.find_spec("xxhash") else "not verified (python3 xxhash not installed)"
    check(all(p["check"].split(" ", 1)[1] == want for p in sec["payloads"]), (want, sec["payloads"]))

    # The inspector reads the same whole stream (skipping RAM and the rest)
    # and must verify the digest the source reported, and draw the map.
    svg = os.path.join(E.workdir, "map.svg")
    ins = subprocess.run([sevpeb_cli(), "inspect", path, "--svg", svg],
                         capture_output=True, text=True, timeout=120)
    check(ins.returncode == 0, f"sevpeb inspect rc={ins.returncode}: {ins.stdout[-800:]} {ins.stderr[-800:]}")
    m = re.search(r"FINAL: digest 0x([0-9a-f]+), (\d+) pages, (\d+) shared: verified", ins.stdout)
    check(m and int(m.group(1), 16) == before["digest"] and int(m.group(3)) == before["shared-pages"],
          ins.stdout[-1500:])
    check(os.path.getsize(svg) > 1000 and open(svg).read().lstrip().startswith("<"), "svg not written")

    dst = E.qemu("dst", incoming="defer")
    dst.qmp.cmd("migrate-incoming", uri=f"file:{path}")
    wait_status(dst.qmp, ("paused", "running"))
    after = query(dst.qmp)
    check(state_of(after) == state_of(before), f"destination differs:\n{after}\n{before}")
    src.qmp.cmd("cont")
    wait_status(src.qmp, ("running",))


def sevpeb_cli():
    """The sevpeb CLI of this checkout ($SEVPEB_CLI, or built with swift build)."""
    cli = os.environ.get("SEVPEB_CLI")
    if cli:
        return cli
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    subprocess.run(["swift", "build", "--product", "sevpeb"], cwd=repo, check=True,
                   stdout=subprocess.DEVNULL, timeout=900)
    return os.path.join(repo, ".build", "debug", "sevpeb")


def test_live_tcp_churn(E):
    """live migration over loopback TCP while ranges flip during iterations"""
    # 32 MiB of random guest RAM at 16 MiB/s: two seconds of iterations
    blob = os.path.join(E.workdir, "random.bin")
    with open(blob, "wb") as f:
        f.write(os.urandom(32 << 20))
    loader = ["-device", f"loader,file={blob},addr=0x2000000,force-raw=on"]
    src = E.qemu("src", extra=loader)
    dst = E.qemu("dst", incoming="defer", extra=loader)
    port = free_port()
    for m in (src.qmp, dst.qmp):
        m.cmd("migrate-set-capabilities", capabilities=[{"capability": "return-path", "state": True}])
    src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 16 << 20, "downtime-limit": 1})
    pattern(src.qmp)
    dst.qmp.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    flips = 0
    active_flips = 0
    t_end = time.monotonic() + 2.0
    g = 0x8000
    while time.monotonic() < t_end:
        st = src.qmp.cmd("query-migrate").get("status")
        if st in ("completed", "failed", "cancelled"):
            break
        set_shared(src.qmp, g, 1 + flips % 7, shared=(flips % 3 != 0))
        g = 0x8000 + (g * 7 + 0x101) % 0x6000
        flips += 1
        if st == "active":
            active_flips += 1
        time.sleep(0.01)
    iters_mid = query(src.qmp)["save"]["iterations"]
    src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 30, "downtime-limit": 300})
    info = wait_migration(src.qmp)
    check(info["status"] == "completed", info)
    wait_status(dst.qmp, ("running",))
    a, b = query(src.qmp), query(dst.qmp)
    check(state_of(a) == state_of(b), f"differs:\n{a}\n{b}")
    check(active_flips >= 20, f"only {active_flips} flips while active")
    check(a["save"]["iterations"] >= 2 and iters_mid >= 1, a["save"])
    print(f"    {flips} flips ({active_flips} during the migration), "
          f"{a['save']['iterations']} iterations, {a['shared-pages']} shared pages, "
          f"section bytes setup/iterate/complete {a['save']['setup-bytes']}/"
          f"{a['save']['iterate-bytes']}/{a['save']['complete-bytes']}, "
          f"downtime {info.get('downtime')} ms")


def test_reset_all_private(E):
    """system_reset makes every page private; the layout stays"""
    src = E.qemu("src")
    fresh = query(src.qmp)
    pattern(src.qmp)
    check(query(src.qmp)["shared-pages"] > 0, "pattern not applied")
    src.qmp.cmd("system_reset")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        q = query(src.qmp)
        if q["shared-pages"] == 0:
            break
        time.sleep(0.05)
    check(q["shared-pages"] == 0 and q["shared-ranges"] == [], q)
    check(q["slots"] == fresh["slots"] and q["digest"] == fresh["digest"], (q, fresh))


def test_hotplug_then_migrate(E):
    """hot-added DIMM grows the layout, state is kept, then migrate"""
    src = E.qemu("src", mem="256,slots=2,maxmem=1G")
    pattern(src.qmp)
    before = query(src.qmp)
    src.qmp.cmd("object-add", **{"qom-type": "memory-backend-ram", "id": "mem1", "size": 128 << 20})
    src.qmp.cmd("device_add", driver="pc-dimm", id="dimm1", memdev="mem1")
    grown = query(src.qmp)
    check(len(grown["slots"]) == len(before["slots"]) + 1, grown["slots"])
    check(grown["total-pages"] == before["total-pages"] + (128 << 20) // PAGE, grown)
    check(grown["shared-ranges"] == before["shared-ranges"], "shared ranges changed by hot-add")
    dimm = grown["slots"][-1]
    set_shared(src.qmp, dimm["base-gfn"] + 5, 100)
    set_shared(src.qmp, dimm["base-gfn"] + dimm["npages"] - 1, 1)
    dst = E.qemu("dst", incoming="defer", mem="256,slots=2,maxmem=1G",
                 extra=["-object", "memory-backend-ram,id=mem1,size=128M",
                        "-device", "pc-dimm,id=dimm1,memdev=mem1"])
    port = free_port()
    dst.qmp.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    info = wait_migration(src.qmp)
    check(info["status"] == "completed", info)
    wait_status(dst.qmp, ("running",))
    a, b = query(src.qmp), query(dst.qmp)
    check(state_of(a) == state_of(b), f"differs:\n{a}\n{b}")
    check(a["shared-pages"] == before["shared-pages"] + 101, a)


def last_error_line(log):
    """The last line QEMU printed: what an operator reads first."""
    lines = [line for line in log.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def expect_failed_migration(E, src, dst, uri, named, last_named=None):
    """Run a migration that must fail on the destination with a named error;
    with last_named, the destination's last line must name it too."""
    before = query(src.qmp)
    src.qmp.cmd("migrate", uri=uri)
    info = wait_migration(src.qmp)
    rc = dst.wait_exit(30)
    log = dst.output()
    check(rc not in (None, 0), f"destination did not fail (rc={rc})")
    check(named in log, f"destination log lacks {named!r}:\n{log[-1500:]}")
    if last_named:
        last = last_error_line(log)
        check(last_named in last, f"destination's last line does not name the problem "
                                  f"({last_named!r}): {last!r}")
        print(f"    last line: {last}")
    check(info["status"] in ("failed", "cancelled"), f"source saw {info['status']}")
    st = wait_status(src.qmp, ("running",), timeout=15)
    after = query(src.qmp)
    check(state_of(after) == state_of(before), "source state changed")
    set_shared(src.qmp, 0x7000, 1)  # the source still works
    print("    destination: " + " | ".join(
        line for line in log.splitlines() if "sev-page-enc-bitmap" in line or "Unknown" in line)[:400])
    return st


def start_pair(E, dst_obj=True):
    src = E.qemu("src")
    dst = E.qemu("dst", incoming="defer", obj=dst_obj)
    for m in (src.qmp, dst.qmp):
        m.cmd("migrate-set-capabilities", capabilities=[{"capability": "return-path", "state": True}])
    pattern(src.qmp)
    return src, dst


def test_dst_without_object(E):
    """destination without the object: unknown section, source keeps running"""
    src, dst = start_pair(E, dst_obj=False)
    port = free_port()
    dst.qmp.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    expect_failed_migration(E, src, dst, f"tcp:127.0.0.1:{port}",
                            "Unknown savevm section or instance 'sev-page-enc-bitmap'")


def test_truncated_stream(E):
    """stream cut inside our section: named load error, source keeps running"""
    src, dst = start_pair(E)
    port = free_port()
    dst.qmp.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    relay = Relay(port, "truncate", 40)
    expect_failed_migration(E, src, dst, f"tcp:127.0.0.1:{relay.port}",
                            "sev-page-enc-bitmap: load:", last_named="sev-page-enc-bitmap: load:")
    check(relay.hit is not None, f"relay never saw the section ({relay.error})")


def test_flipped_byte(E):
    """one byte flipped inside our section: named load error, source keeps running"""
    src, dst = start_pair(E)
    port = free_port()
    dst.qmp.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    relay = Relay(port, "flip", 60)
    expect_failed_migration(E, src, dst, f"tcp:127.0.0.1:{relay.port}",
                            "sev-page-enc-bitmap: load:", last_named="sev-page-enc-bitmap: load:")
    check(relay.hit is not None, f"relay never saw the section ({relay.error})")


def test_truncated_file(E):
    """file: stream truncated inside our section: destination fails, named"""
    src = E.qemu("src")
    pattern(src.qmp)
    path = os.path.join(E.workdir, "stream.bin")
    src.qmp.cmd("migrate", uri=f"file:{path}")
    check(wait_migration(src.qmp)["status"] == "completed", "save failed")
    data = open(path, "rb").read()
    i = data.find(bytes([len(SECTION)]) + SECTION)
    check(i > 0, "section not found in the file")
    cut = os.path.join(E.workdir, "cut.bin")
    with open(cut, "wb") as f:
        f.write(data[:i + 1 + len(SECTION) + 8 + 30])
    dst = E.qemu("dst", incoming="defer")
    dst.qmp.cmd("migrate-incoming", uri=f"file:{cut}")
    rc = dst.wait_exit(30)
    log = dst.output()
    check(rc not in (None, 0) and "sev-page-enc-bitmap: load:" in log, f"rc={rc} log={log[-800:]}")
    last = last_error_line(log)
    check("sev-page-enc-bitmap: load:" in last, f"last line does not name the problem: {last!r}")
    print(f"    last line: {last}")


def test_require_ready(E):
    """require-migration-ready refuses migration with a reason until the guest is ready"""
    src = E.qemu("src", obj_props=",require-migration-ready=on")
    q = query(src.qmp)
    check(q["migration-ready"] is False and q.get("not-ready-reason"), q)
    path = os.path.join(E.workdir, "stream.bin")
    try:
        src.qmp.cmd("migrate", uri=f"file:{path}")
        raise AssertionError("migrate was not refused")
    except QMPError as e:
        check("sev-page-enc-bitmap" in str(e), str(e))
        print(f"    refused: {e}")
    wait_status(src.qmp, ("running",))
    src.qmp.cmd("qom-set", path="/objects/peb0", property="migration-control", value=1)
    check(query(src.qmp)["migration-ready"] is True, "still not ready")
    src.qmp.cmd("migrate", uri=f"file:{path}")
    check(wait_migration(src.qmp)["status"] == "completed", "migration failed once ready")
    dst = E.qemu("dst", incoming="defer")
    dst.qmp.cmd("migrate-incoming", uri=f"file:{path}")
    wait_status(dst.qmp, ("paused", "running"))
    check(query(dst.qmp)["migration-control"] == 1, "migration-control not carried")


def test_bad_requests(E):
    """invalid ranges are refused with the library's reason, state unchanged"""
    src = E.qemu("src")
    before = query(src.qmp)
    for gpa, npages in ((0xa0000, 1), (0x1001, 1), (0x100000, 0), (1 << 40, 1)):
        try:
            src.qmp.cmd("x-sev-page-enc-bitmap-set", gpa=gpa, npages=npages, encrypted=False)
            raise AssertionError(f"accepted gpa {gpa:#x} npages {npages}")
        except QMPError as e:
            check(e.desc, str(e))
    check(state_of(query(src.qmp)) == state_of(before), "state changed")


TESTS = [
    test_file_analyze_load,
    test_live_tcp_churn,
    test_reset_all_private,
    test_hotplug_then_migrate,
    test_dst_without_object,
    test_truncated_stream,
    test_flipped_byte,
    test_truncated_file,
    test_require_ready,
    test_bad_requests,
]


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", required=True)
    ap.add_argument("--keep", action="store_true", help="keep the work directories")
    ap.add_argument("tests", nargs="*")
    return ap.parse_args()


def run_tests(all_tests, args, env, dump=lambda q: None):
    """Run the tests named in args.tests (all when none), each in its own work
    directory and Env; print PASS/FAIL lines, on failure each process's log tail
    (and what dump(q) prints). Returns (passed, failed)."""
    tests = [t for t in all_tests if not args.tests or t.__name__ in args.tests
             or t.__name__[5:] in args.tests]
    passed = failed = 0
    for t in tests:
        workdir = tempfile.mkdtemp(prefix=f"sevpeb-{t.__name__[5:]}-")
        E = Env(env, workdir)
        t0 = time.monotonic()
        try:
            t(E)
            passed += 1
            print(f"PASS {t.__name__[5:]} ({time.monotonic() - t0:.1f}s)", flush=True)
        except Exception:
            failed += 1
            print(f"FAIL {t.__name__[5:]} ({time.monotonic() - t0:.1f}s)", flush=True)
            traceback.print_exc(limit=4)
            for q in E.procs:
                print(f"  --- {q.name} log (tail) ---\n{q.output()[-1200:]}")
                dump(q)
        finally:
            E.cleanup()
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    return passed, failed


def main():
    args = parse_args()
    env = read_env(args.env)
    from test_routing import ROUTING_TESTS  # page routing (imports this module's helpers)
    passed, failed = run_tests(TESTS + ROUTING_TESTS, args, env)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
