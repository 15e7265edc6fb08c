#!/usr/bin/env python3
"""Negative control of the trials' leak check (trials/run.py leak_snapshot /
leak_diff): leak each kind of resource on purpose and show that the check
names it, then clean up and show that it is quiet again.

  - a temp file named like the harness's (sevpeb-*) in the temp directory;
  - a network namespace named like the harness's (sevpeb-*), needs root;
  - a running process of the "QEMU binary" the check watches (here /bin/sleep
    stands in for it: the check matches /proc/<pid>/exe against the binary).

Run: $SEVPEB_CACHE/pyvenv/bin/python trials/selftest_leaks.py   (prints "leak-check self-test: ok")
Exits non-zero if the check misses a leak or reports one that is not there.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def load_run():
    """trials/run.py as a module (its main() only runs as a script)."""
    spec = importlib.util.spec_from_file_location("sevpeb_trials_run", os.path.join(HERE, "run.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    run = load_run()
    snap, diff = run.leak_snapshot, run.leak_diff
    fake_qemu = shutil.which("sleep") or "/bin/sleep"
    failures = []
    checks = 0

    def expect(what, got, want_substrings):
        nonlocal checks
        checks += 1
        if not want_substrings:
            ok = got == ""
        else:
            ok = all(s in got for s in want_substrings)
        print(f"  [{'ok' if ok else 'FAIL'}] {what}: {got or 'nothing reported'}")
        if not ok:
            failures.append(what)

    # 0. Nothing done: nothing reported (the check does not cry wolf).
    b = snap(fake_qemu)
    expect("no leak", diff(b, snap(fake_qemu)), [])

    # 1. A leaked temp file.
    b = snap(fake_qemu)
    fd, path = tempfile.mkstemp(prefix="sevpeb-selftest-leak-")
    os.close(fd)
    try:
        expect("leaked temp file", diff(b, snap(fake_qemu)), ["1 temp files", os.path.basename(path)])
    finally:
        os.unlink(path)
    expect("temp file removed", diff(b, snap(fake_qemu)), [])

    # 2. A leaked process of the watched binary.
    b = snap(fake_qemu)
    p = subprocess.Popen([fake_qemu, "30"])
    try:
        expect("leaked QEMU process", diff(b, snap(fake_qemu)), ["1 QEMU processes", str(p.pid)])
    finally:
        p.kill()
        p.wait()
    expect("process ended", diff(b, snap(fake_qemu)), [])

    # 3. A leaked network namespace (root only).
    if os.geteuid() == 0 and shutil.which("ip"):
        b = snap(fake_qemu)
        ns = f"sevpeb-selftest-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            expect("leaked network namespace", diff(b, snap(fake_qemu)), ["1 network namespaces", ns])
        finally:
            subprocess.run(["ip", "netns", "delete", ns], check=False)
        expect("namespace deleted", diff(b, snap(fake_qemu)), [])
    else:
        print("  [skip] network namespace leak: needs root and ip(8)")

    if failures:
        print(f"leak-check self-test: FAILED ({len(failures)} of {checks}: {', '.join(failures)})")
        return 1
    print(f"leak-check self-test: ok ({checks} checks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
