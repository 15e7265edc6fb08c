"""QEMU process helper for the QEMU-level tests (the QMP client is the
trial harness's, trials/sevtrials/qmp.py: one client for the project)."""
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from trials.sevtrials.qmp import QMP, QMPError  # noqa: E402,F401


class Qemu:
    """One QEMU process we started; killed by PID only."""

    def __init__(self, env, workdir, name, extra=(), obj=True, incoming=None,
                 obj_props="", mem="256", accel="tcg", proc_env=None):
        self.name = name
        self.workdir = workdir
        self.qmp_path = os.path.join(workdir, f"{name}.qmp")
        self.log_path = os.path.join(workdir, f"{name}.log")
        args = [env["QEMU"], "-name", name, "-M", "q35", "-m", mem,
                "-nodefaults", "-display", "none", "-accel", accel,
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        for d in env["QEMU_FW_DIRS"].split(":"):
            args += ["-L", d]
        if obj:
            args += ["-object", "sev-page-enc-bitmap,id=peb0" + obj_props]
        if incoming:
            args += ["-incoming", incoming]
        args += list(extra)
        self.args = args
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, **(proc_env or {})))
        self.qmp = None

    def connect(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.qmp_path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early rc={self.proc.returncode}: "
                                   f"{self.output()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no QMP socket")
            time.sleep(0.05)
        self.qmp = QMP(self.qmp_path, timeout)
        return self.qmp

    def output(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.qmp:
            self.qmp.close()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()
