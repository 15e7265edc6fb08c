#!/usr/bin/env python3
"""QEMU-level tests of the KVM path (-accel kvm on this host's /dev/kvm).

QEMU runs under Tests/c/kvm_interposer.c (LD_PRELOAD), which records the
ioctls QEMU issues on its VM fd and every ioctl of type 0xAE with nr
0xc5..0xc9 on any fd (KVMODEL_LOG), and for the seed dialects gives the REAL
VM fd the v6 or v8 kernel model (KVMODEL_QEMU=6|8): the model answers the
seed GET/SET/RESET and sees the memslots; everything else reaches KVM. Guest
code does not progress under KVM here, so the guest's hypercalls are played
into the model kernel from a file (KVMODEL_HC), and upstream page state is
set through QMP (x-sev-page-enc-bitmap-set), as test_qemu.py does.

-cpu is a named model (qemu64), never host. Skips, with a message, where
/dev/kvm is absent. Every wait is bounded; only processes started here are
killed, by PID.

Usage: test_kvm.py --env CURRENT_ENV [TEST ...]
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import QMPError, Qemu  # noqa: E402
from test_qemu import (check, free_port, parse_args, query, read_env, run_tests, set_shared,  # noqa: E402
                       state_of, wait_migration, wait_status)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MSR_KVM_MIGRATION_CONTROL = 0x4b564d08
MSR_CORE_THREAD_COUNT = 0x35
KVM_CAP_EXIT_HYPERCALL = 201
KVM_X86_SET_MSR_FILTER = 0x4188aec6
# What each dialect may issue in the 0xAEC5..0xAEC9 block: its own seed
# numbers, and QEMU's own MSR filter (QEMU filters MSRs for itself too).
ALLOWED = {
    "upstream": {KVM_X86_SET_MSR_FILTER},
    "seed-v6": {0x4018aec5, 0x4018aec6, 0xaec7, KVM_X86_SET_MSR_FILTER},
    "seed-v7-v9": {0x4018aec6, 0x4018aec7, KVM_X86_SET_MSR_FILTER},
}
MODEL = {"seed-v6": "6", "seed-v7-v9": "8"}
# Guest hypercalls played into the model kernel: (gfn, npages, enc)
HYPERCALLS = [(0x200, 16, 0), (0x1000, 3, 0), (0x5001, 70, 0), (0x5010, 2, 1)]
SHARED = [(0x200, 16), (0x1000, 3), (0x5001, 15), (0x5012, 53)]

INTERPOSER = None


def build_interposer(workdir):
    so = os.path.join(workdir, "kvm_interposer.so")
    subprocess.run(["cc", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
                    os.path.join(REPO, "Tests/c/kvm_interposer.c"), "-o", so, "-ldl", "-pthread"],
                   check=True)
    return so


class Rec:
    """The interposer's log of one QEMU process."""

    def __init__(self, path):
        self.path = path

    def lines(self):
        try:
            with open(self.path) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def requests(self):
        out = []
        for ln in self.lines():
            m = re.match(r"ioctl (\w+) req=(0x[0-9a-f]+|0) ret=(-?\d+)(.*)", ln)
            if m:
                out.append((m.group(1), int(m.group(2), 16), int(m.group(3)), m.group(4)))
        return out

    def block(self):
        """Requests of type 0xAE, nr 0xc5..0xc9, on any fd."""
        return [r for _, r, _, _ in self.requests() if (r >> 8) & 0xff == 0xae and 0xc5 <= r & 0xff <= 0xc9]

    def model(self):
        return [ln for ln in self.lines() if ln.startswith(("model ", "state "))]

    def last_state(self):
        st = [ln for ln in self.lines() if ln.startswith("state ")]
        return parse_state(st[-1]) if st else None


def parse_state(ln):
    runs = ln.split("shared=", 1)[1]
    return [tuple(int(x) for x in r.split("+")) for r in runs.split(",") if r]


def stray(rec, dialect):
    """Requests in 0xAEC5..0xAEC9 that `dialect` must not issue."""
    return sorted({r for r in rec.block() if r not in ALLOWED[dialect]})


def summary(rec):
    counts = {}
    for fd, r, ret, _ in rec.requests():
        if fd == "vm" or r in rec.block():
            counts[r] = counts.get(r, 0) + 1
    return ", ".join(f"{r:#x}x{n}" for r, n in sorted(counts.items()))


def our_filter(rec):
    """MSR filters whose ranges include MSR_KVM_MIGRATION_CONTROL."""
    return [x for _, r, ret, x in rec.requests()
            if r == KVM_X86_SET_MSR_FILTER and f"{MSR_KVM_MIGRATION_CONTROL:#x}/1" in x]


def kvm_qemu(E, name, dialect="upstream", incoming=None, cpu="qemu64", connect=True, model=True):
    log = os.path.join(E.workdir, f"{name}.ioctls")
    hc = os.path.join(E.workdir, f"{name}.hc")
    penv = {"LD_PRELOAD": INTERPOSER, "KVMODEL_LOG": log, "KVMODEL_HC": hc}
    if model and dialect in MODEL:
        penv["KVMODEL_QEMU"] = MODEL[dialect]
    q = Qemu(E.env, E.workdir, name, accel="kvm", incoming=incoming, proc_env=penv,
             obj_props=f",kvm-bitmap={dialect}", extra=["-cpu", cpu])
    E.procs.append(q)
    if connect:
        q.connect()
    q.rec = Rec(log)
    q.hc = hc
    return q


def play_hypercalls(q, calls):
    tmp = q.hc + ".tmp"
    with open(tmp, "w") as f:
        for gfn, n, enc in calls:
            f.write(f"{gfn << 12:x} {n} {enc}\n")
    os.rename(tmp, q.hc)


def migrate(src, dst):
    port = free_port()
    dst.qmp.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    return wait_migration(src.qmp)


def shared_runs(q):
    return [(r["gfn"], r["npages"]) for r in query(q.qmp)["shared-ranges"]]


def wait_for(cond, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


# --------------------------------------------------------------------------

def test_upstream(E):
    """upstream: cap + QEMU's own MSR filter (with ours) installed; CPUID bits; migration"""
    cpu = "qemu64,kvm-hc-map-gpa-range=on,kvm-migration-control=on"
    src = kvm_qemu(E, "src", cpu=cpu)
    dst = kvm_qemu(E, "dst", incoming="defer", cpu=cpu)
    for q in (src, dst):
        reqs = q.rec.requests()
        caps = [x for _, r, ret, x in reqs if r == 0x4068aea3 and f"cap={KVM_CAP_EXIT_HYPERCALL} " in x]
        check(caps == [" cap=201 args0=0x1000"], f"{q.name}: KVM_ENABLE_CAP(EXIT_HYPERCALL): {caps}")
        filters = our_filter(q.rec)
        check(filters and f"{MSR_CORE_THREAD_COUNT:#x}/1" in filters[-1],
              f"{q.name}: the last MSR filter must hold QEMU's MSRs and ours: {filters}")
        check(stray(q.rec, "upstream") == [], f"{q.name}: seed-block requests {stray(q.rec, 'upstream')}")
        check(q.rec.model() == [], f"{q.name}: model activity on upstream")
        out = q.output()
        # (this host lacks some qemu64 bits, e.g. pni: only ours matter)
        check(not [ln for ln in out.splitlines() if "doesn't support" in ln and "40000001" in ln], out[-600:])
        path = "/machine/unattached/device[0]"
        for f in ("kvm-hc-map-gpa-range", "kvm-migration-control"):
            check(q.qmp.cmd("qom-get", path=path, property=f) is True, f"{q.name}: {f} not on")
    set_shared(src.qmp, 0x300, 7)
    set_shared(src.qmp, 0x4000, 0x100)
    # Negative control: the guest has not set KVM_MIGRATION_READY, so
    # sevpeb_kvm_may_migrate refuses the migration with its reason
    port = free_port()
    dst.qmp.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    try:
        src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
        refused = None
    except QMPError as e:
        refused = str(e)
    check(refused and "migration-ready" in refused, f"migrate not refused: {refused}")
    print(f"    refused: {refused}")
    src.qmp.cmd("qom-set", path="/objects/peb0", property="migration-control", value=1)
    src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    info = wait_migration(src.qmp)
    check(info["status"] == "completed", info)
    wait_status(dst.qmp, ("running",))
    a, b = query(src.qmp), query(dst.qmp)
    check(state_of(a) == state_of(b) and b["shared-pages"] == 7 + 0x100, f"differs:\n{a}\n{b}")
    print(f"    upstream src ioctls on the VM fd / in 0xAEC5..9: {summary(src.rec)}")
    print(f"    upstream dst ioctls: {summary(dst.rec)}")
    print(f"    MSR filter: {our_filter(src.rec)[-1].strip()}")


def seed_pair(E, sd, dd):
    src = kvm_qemu(E, "src", sd)
    dst = kvm_qemu(E, "dst", dd, incoming="defer")
    for q, d in ((src, sd), (dst, dd)):
        reqs = q.rec.requests()
        check(not [x for _, r, _, x in reqs if r == 0x4068aea3 and "cap=201 " in x],
              f"{q.name}: KVM_CAP_EXIT_HYPERCALL enabled on {d}")
        check(our_filter(q.rec) == [], f"{q.name}: MSR_KVM_MIGRATION_CONTROL filtered on {d}")
        check(stray(q.rec, d) == [], f"{q.name}: {d} issued {[hex(r) for r in stray(q.rec, d)]}")
    # The guest's hypercalls reach the SOURCE kernel only
    play_hypercalls(src, HYPERCALLS)
    info = migrate(src, dst)
    check(info["status"] == "completed", info)
    wait_status(dst.qmp, ("running",))
    check(any(ln.startswith("model hypercall") for ln in src.rec.lines()), "hypercalls not played")
    check(src.rec.last_state() == SHARED, f"source model {src.rec.last_state()}")
    # Pulled into the source's section, loaded on the destination
    check(shared_runs(src) == SHARED, f"source tracker {shared_runs(src)}")
    check(shared_runs(dst) == SHARED, f"destination tracker {shared_runs(dst)}")
    check(state_of(query(src.qmp)) == state_of(query(dst.qmp)), "trackers differ")
    # ... and pushed into the destination's model kernel
    check(dst.rec.last_state() == SHARED, f"destination model {dst.rec.last_state()}")
    for q, d in ((src, sd), (dst, dd)):
        check(stray(q.rec, d) == [], f"{q.name}: {d} issued {[hex(r) for r in stray(q.rec, d)]}")
        print(f"    {q.name} {d} ioctls on the VM fd / in 0xAEC5..9: {summary(q.rec)}")
        model = [ln for ln in q.rec.model() if ln.startswith("model")]
        print(f"    {q.name} model received: {len(model)} calls, "
              f"{', '.join(sorted(set(re.sub(r' gfn=.*', '', ln) for ln in model)))}")
    # A cold reset resets the model kernel (after the push, with shared pages in it)
    for q, d in ((dst, dd), (src, sd)):
        n = len(q.rec.lines())
        q.qmp.cmd("system_reset")
        wait_for(lambda: any(ln.startswith("model RESET") or ("model SET" in ln and "NULL" in ln)
                             for ln in q.rec.lines()[n:]), f"{q.name}: no kernel reset")
        check(q.rec.last_state() == [], f"{q.name}: model after reset {q.rec.last_state()}")
        wait_for(lambda: query(q.qmp)["shared-pages"] == 0, f"{q.name}: tracker after reset")
        reset = [ln for ln in q.rec.lines()[n:] if ln.startswith("model")]
        print(f"    {q.name} {d} system_reset: {reset[-1]}")
    return src, dst


def test_seed_v6_to_v8(E):
    """seed v6 source -> seed v8 destination: pull, section, push, reset"""
    src, dst = seed_pair(E, "seed-v6", "seed-v7-v9")
    # Negative control of the recording check: the v6 source's own seed
    # ioctls are flagged when held to the upstream rule.
    check(0x4018aec5 in stray(src.rec, "upstream"), "the upstream check does not flag a v6 GET")


def test_seed_v8_to_v6(E):
    """seed v8 source -> seed v6 destination: pull, section, push, reset"""
    src, dst = seed_pair(E, "seed-v7-v9", "seed-v6")
    check(0x4018aec7 in stray(src.rec, "upstream"), "the upstream check does not flag a v8 SET")


def test_seed_on_plain_kernel(E):
    """a seed dialect on this (upstream) kernel fails at startup, naming ioctl and errno"""
    for d, get in (("seed-v6", 0x4018aec5), ("seed-v7-v9", 0x4018aec6)):
        # no model: the real kernel answers
        q = kvm_qemu(E, f"plain-{d}", d, connect=False, model=False)
        rc = q.wait_exit(30)
        out = q.output()
        check(rc not in (None, 0), f"{d}: QEMU did not fail (rc {rc})")
        check("KVM_GET_PAGE_ENC_BITMAP" in out and "ENOTTY" in out, f"{d}: {out[-600:]}")
        block = q.rec.block()
        check(block.count(get) == 1 and not [r for r in block if r not in (get, KVM_X86_SET_MSR_FILTER)],
              f"{d}: issued {[hex(r) for r in block]}")
        print(f"    {d}: {[ln for ln in out.splitlines() if 'KVM_GET_PAGE_ENC_BITMAP' in ln][0]}")


TESTS = [test_upstream, test_seed_v6_to_v8, test_seed_v8_to_v6, test_seed_on_plain_kernel]


def dump_ioctls(q):
    if hasattr(q, "rec"):
        print(f"  --- {q.name} ioctls (tail) ---\n" + "\n".join(q.rec.lines()[-25:]))


def main():
    global INTERPOSER
    args = parse_args()
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("SKIP: /dev/kvm absent or not accessible: the -accel kvm tests did not run")
        print("0 passed, 0 failed (skipped)")
        return
    env = read_env(args.env)
    build_dir = tempfile.mkdtemp(prefix="sevpeb-kvm-interposer-")
    try:
        INTERPOSER = build_interposer(build_dir)
        passed, failed = run_tests(TESTS, args, env, dump=dump_ioctls)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
