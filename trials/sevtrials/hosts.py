"""Two "hosts" (network namespaces joined by a veth pair) and QEMU processes in them."""
import os
import re
import shutil
import signal
import subprocess
import time

from .qmp import QMP, QMPError
from .util import log, run, wait_until

PEB_ID = "peb0"
PEB_PATH = f"/objects/{PEB_ID}"


class Hosts:
    """Namespaces A and B, veth between them, 10.99.0.1/30 (A) and 10.99.0.2/30 (B)."""

    def __init__(self, tag=None, net="10.99.0"):
        tag = tag or str(os.getpid())
        self.ns = {"A": f"sevpeb-a-{tag}", "B": f"sevpeb-b-{tag}"}
        self.ip = {"A": f"{net}.1", "B": f"{net}.2"}
        self.veth = {"A": f"spa{tag}"[:15], "B": f"spb{tag}"[:15]}
        self.up = False

    def create(self):
        self.delete(quiet=True)
        for h in "AB":
            run(["ip", "netns", "add", self.ns[h]])
        self.up = True
        run(["ip", "link", "add", self.veth["A"], "type", "veth", "peer", "name", self.veth["B"]])
        for h in "AB":
            ns, dev = self.ns[h], self.veth[h]
            run(["ip", "link", "set", dev, "netns", ns])
            run(["ip", "-n", ns, "addr", "add", f"{self.ip[h]}/30", "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        if shutil.which("ping"):     # reachability, bounded (iputils-ping may be absent)
            r = run(["ip", "netns", "exec", self.ns["A"], "ping", "-c1", "-W2", self.ip["B"]],
                    check=False, capture=True)
            if r.returncode != 0:
                raise RuntimeError(f"{self.ns['A']} cannot reach {self.ip['B']}: {r.stdout}{r.stderr}")
        log(f"hosts: {self.ns['A']} {self.ip['A']} <-veth-> {self.ns['B']} {self.ip['B']}")

    def delete(self, quiet=False):
        for h in "AB":
            r = run(["ip", "netns", "del", self.ns[h]], check=False, capture=True)
            if r.returncode == 0 and not quiet:
                log(f"deleted netns {self.ns[h]}")
        self.up = False

    def other(self, h):
        return "B" if h == "A" else "A"


class VM:
    """One QEMU process (TCG, q35) in a namespace, with two QMP sockets (control + churn)."""

    def __init__(self, name, *, qemu, fw_dirs, guest, workdir, ns=None, host=None,
                 sevpeb=True, incoming=False, mem_mb=256, extra=(), dirty_mb=8, agent=None, smp=4,
                 storm_calls=19500):
        self.name, self.qemu, self.ns, self.host = name, qemu, ns, host
        self.sevpeb, self.incoming = sevpeb, incoming
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.serial = os.path.join(workdir, f"{name}.serial")
        self.stderr_path = os.path.join(workdir, f"{name}.stderr")
        self.qmp_path = os.path.join(workdir, f"{name}.qmp")
        self.churn_path = os.path.join(workdir, f"{name}.churn.qmp")
        self.agent_path = os.path.join(workdir, f"{name}.agent")
        self.agent = agent
        self._chan = None
        for p in (self.serial, self.qmp_path, self.churn_path, self.agent_path):
            if os.path.exists(p):
                os.unlink(p)
        # the guest agent (trials/agent): 4 vCPUs under MTTCG, the KVM paravirt bits the
        # agent checks, and a second serial port (ttyS1) for the harness's requests
        # (a QEMU without the object, e.g. stock 10.0, gets plain qemu64: it knows neither bit's name)
        cpu = (["-smp", str(smp), "-cpu", "qemu64,kvm-hc-map-gpa-range=on,kvm-migration-control=on"
                if sevpeb else "qemu64"] if agent else ["-smp", "1"])
        args = [qemu, "-name", name, "-M", "q35", "-accel", "tcg,thread=multi" if agent else "tcg", *cpu,
                "-m", f"{mem_mb}M,slots=2,maxmem={mem_mb * 4}M",
                "-nodefaults", "-display", "none", "-no-user-config"]
        for d in fw_dirs:
            args += ["-L", d]
        args += ["-kernel", guest["kernel"], "-initrd", agent["initrd"] if agent else guest["initrd"],
                 "-append", f"console=ttyS0 panic=-1 quiet dirty_mb={dirty_mb}"
                 + (f" storm_calls={storm_calls}" if agent else ""),
                 "-serial", f"file:{self.serial}",
                 "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                 "-qmp", f"unix:{self.churn_path},server=on,wait=off"]
        if agent:
            args += ["-serial", f"unix:{self.agent_path},server=on,wait=off"]     # COM2 = ttyS1
        if sevpeb:
            args += ["-object", f"sev-page-enc-bitmap,id={PEB_ID}"]
        args += list(extra)
        if incoming:
            args += ["-incoming", "defer"]
        if ns:
            args = ["ip", "netns", "exec", ns] + args
        self.args = args
        self.err = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.err,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.t_start = time.monotonic()
        try:
            self.qmp = QMP(self.qmp_path, timeout=60)
        except Exception:
            self.kill()
            raise RuntimeError(f"{name}: QEMU did not start: {self.stderr_tail()}")

    # -- process ---------------------------------------------------------
    def alive(self):
        return self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL):
        """Kill this QEMU by its PID (never by name)."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        try:
            self.qmp.close()
        except Exception:
            pass
        if self._chan:
            self._chan.close()
            self._chan = None
        self.err.close()

    def quit(self):
        if self.proc.poll() is None:
            try:
                self.qmp.cmd("quit")
            except Exception:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stderr_text(self):
        try:
            return open(self.stderr_path, errors="replace").read()
        except OSError:
            return ""

    def stderr_tail(self, n=6):
        return " | ".join(l for l in self.stderr_text().strip().splitlines()[-n:])

    # -- guest -----------------------------------------------------------
    def serial_text(self):
        try:
            return open(self.serial, errors="replace").read()
        except OSError:
            return ""

    def ticks(self):
        return [int(m) for m in re.findall(r"^tick (\d+)", self.serial_text(), re.M)]

    def last_tick(self):
        t = self.ticks()
        return t[-1] if t else None

    def wait_tick(self, n, timeout=90):
        """Wait until the guest printed 'tick n' (or a later one) since this process started."""
        return wait_until(lambda: (self.last_tick() or 0) >= n or (not self.alive() and
                                                                  _raise(f"{self.name} exited: {self.stderr_tail()}")),
                          timeout, 0.2, f"{self.name}: tick {n}")

    def chan(self):
        """The agent's request channel (ttyS1 of this QEMU)."""
        if self._chan is None:
            self._chan = AgentChannel(self.agent_path, self.name)
        return self._chan

    def status(self):
        return self.qmp.cmd("query-status")["status"]

    # -- sevpeb ----------------------------------------------------------
    def peb_query(self, max_ranges=1 << 20):
        return self.qmp.cmd("x-query-sev-page-enc-bitmap", **{"max-ranges": max_ranges})

    def peb_save(self):
        return self.qmp.cmd("x-query-sev-page-enc-bitmap", **{"max-ranges": 1})

    def peb_set_prop(self, prop, value):
        return self.qmp.cmd("qom-set", path=PEB_PATH, property=prop, value=value)

    def peb_get_prop(self, prop):
        return self.qmp.cmd("qom-get", path=PEB_PATH, property=prop)


class AgentChannel:
    """Requests to the guest's /init on ttyS1: "ID CMD ARGS" -> output lines, "END ID RC"."""

    def __init__(self, path, name):
        import socket
        self.name, self.n = name, 0
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(5)
        self.s.connect(path)
        self.buf = b""

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def req(self, cmd, timeout=60):
        """Send one request; return (rc, [lines]). Raises TimeoutError when the guest does not answer."""
        self.n += 1
        tag = f"r{self.n}"
        self.s.sendall(f"{tag} {cmd}\n".encode())
        deadline = time.monotonic() + timeout
        lines = []
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                line = line.decode(errors="replace").strip("\r")
                if line.startswith(f"END {tag} "):
                    return int(line.split()[2]), lines
                if line.startswith("END "):
                    lines = []            # the answer to an earlier, abandoned request
                    continue
                lines.append(line)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: guest agent did not answer {cmd!r} within {timeout:.0f}s")
            self.s.settimeout(min(left, 5))
            try:
                d = self.s.recv(65536)
            except OSError:
                continue
            if not d:
                raise EOFError(f"{self.name}: agent channel closed")
            self.buf += d


def _raise(msg):
    raise RuntimeError(msg)


def qemu_has_sevpeb(qemu):
    try:
        r = subprocess.run([qemu, "-object", "help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "sev-page-enc-bitmap" in r.stdout


def qemu_version(qemu):
    r = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30)
    return r.stdout.splitlines()[0] if r.stdout else "?"
