"""Two libvirt "hosts" (Debian bookworm's packaged libvirtd 9.0) in the trial namespaces.

Each host is one `libvirtd --listen` started by the harness (PID kept, killed by PID):

  ip netns exec <ns> unshare -m --propagation private sh -c
      'mount --bind <state>/<d> /<d> for d in run/libvirt var/lib/libvirt etc/libvirt
       var/log/libvirt var/cache/libvirt; exec libvirtd --listen'

so every daemon has its own config, state, sockets, logs and capability cache
(`<work>/libvirt-<host>/...` seen from outside), and listens on TCP only on its
namespace address (listen_tls=0, listen_tcp=1, auth_tcp="none": nothing outside
the namespace pair can reach it). The QEMUs it spawns inherit both namespaces.
The harness reaches a daemon through its unix socket (the bind-mounted path seen
from the root mount namespace); the source daemon reaches the destination over
the veth (qemu+tcp://10.99.0.x/system), and so does the migration stream
(migration_address/migration_host in qemu.conf).

The system's own libvirt services are never started (no systemd in the sandbox,
and ours never touch /run/libvirt outside their private mount namespace).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from .churn import Churn
from .qmp import QMPError
from .util import log, run, wait_until

DIST = "/usr/lib/python3/dist-packages"   # python3-libvirt (Debian package) for the venv's python 3.11
if DIST not in sys.path and os.path.isdir(DIST):
    sys.path.append(DIST)
try:
    import libvirt          # noqa: E402
    import libvirt_qemu     # noqa: E402
except ImportError:         # ensure_libvirt() installs it
    libvirt = libvirt_qemu = None

PKGS = ["libvirt-daemon-system", "libvirt-clients", "libvirt-daemon-driver-qemu", "python3-libvirt"]
BIND = ["run/libvirt", "var/lib/libvirt", "etc/libvirt", "var/log/libvirt", "var/cache/libvirt"]
DOM = "sevpeb-lv"
# libvirt refuses a migration whose two ends report the same host UUID ("Attempt to migrate guest to
# the same host"); both daemons run on one machine, so each gets its own.
HOST_UUID = {"A": "5e7be000-0000-4000-8000-00000000000a", "B": "5e7be000-0000-4000-8000-00000000000b"}


def ensure_libvirt():
    """Install the packaged daemons and clients (idempotent). The packages' systemd units are
    never started here (no systemd in the sandbox); on a machine with systemd the harness's
    daemons still use only their private directories, so a running system libvirtd is
    not touched either."""
    global libvirt, libvirt_qemu
    missing = [p for p in PKGS if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p],
                                                 capture_output=True, text=True).stdout
               != "install ok installed"]
    if missing:
        log(f"apt-get install {' '.join(missing)}", always=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = run(["apt-get", "install", "-y", "--no-install-recommends"] + missing, check=False,
                capture=True, env=env)
        if r.returncode != 0:
            run(["apt-get", "update"], check=False, capture=True, env=env)
            run(["apt-get", "install", "-y", "--no-install-recommends"] + missing, capture=True, env=env)
    if libvirt is None:
        if DIST not in sys.path:
            sys.path.append(DIST)
        import libvirt as _l, libvirt_qemu as _q
        libvirt, libvirt_qemu = _l, _q
    libvirt.registerErrorHandler(lambda *a: None, None)   # errors come back as exceptions, not on stderr


def virsh_version():
    r = subprocess.run(["virsh", "--version"], capture_output=True, text=True)
    d = subprocess.run(["libvirtd", "--version"], capture_output=True, text=True)
    return f"virsh {r.stdout.strip()}, {d.stdout.strip()}"


class Daemon:
    """One libvirtd in namespace `ns`, private state under `root`."""

    def __init__(self, host, ns, ip, root):
        self.host, self.ns, self.ip, self.root = host, ns, ip, root
        self.proc = None
        self.sock = os.path.join(root, "run/libvirt/libvirt-sock")
        self.uri = f"qemu+unix:///system?socket={self.sock}"      # harness (root mount namespace)
        self.tcp_uri = f"qemu+tcp://{ip}/system"                   # peers (over the veth)
        self.log_path = os.path.join(root, "libvirtd.stderr")
        self.conn = None

    def prepare(self):
        shutil.rmtree(self.root, ignore_errors=True)
        for d in BIND:
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        etc = os.path.join(self.root, "etc/libvirt")
        shutil.copytree("/etc/libvirt", etc, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.xml"))     # keep no system domains/networks
        for sub in ("qemu/networks/autostart", "qemu/autostart"):
            shutil.rmtree(os.path.join(etc, sub), ignore_errors=True)
        os.makedirs(os.path.join(self.root, "var/lib/libvirt/sevpeb"), exist_ok=True)
        with open(os.path.join(etc, "libvirtd.conf"), "w") as f:
            f.write(f"""# written by trials/sevtrials/libvirt.py (private to host {self.host})
listen_tls = 0
listen_tcp = 1
listen_addr = "{self.ip}"
auth_tcp = "none"
auth_unix_rw = "none"
unix_sock_rw_perms = "0700"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
keepalive_interval = 5
host_uuid = "{HOST_UUID[self.host]}"
""")
        with open(os.path.join(etc, "qemu.conf"), "w") as f:
            f.write(f"""# written by trials/sevtrials/libvirt.py (private to host {self.host})
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = []
cgroup_controllers = []
stdio_handler = "file"
migration_address = "{self.ip}"
migration_host = "{self.ip}"
lock_manager = "nop"
""")
        # no default network or nwfilters: nothing to start
        shutil.rmtree(os.path.join(etc, "nwfilter"), ignore_errors=True)
        os.makedirs(os.path.join(etc, "nwfilter"), exist_ok=True)

    def start(self, timeout=60):
        self.prepare()
        binds = "; ".join(f"mkdir -p /{d}; mount --bind {os.path.join(self.root, d)} /{d}" for d in BIND)
        script = f"set -e; {binds}; exec libvirtd --listen --pid-file /run/libvirt/libvirtd.pid"
        args = ["ip", "netns", "exec", self.ns, "unshare", "-m", "--propagation", "private",
                "sh", "-c", script]
        self.err = open(self.log_path, "w")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.err,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"libvirtd on {self.host} exited {self.proc.returncode}: {self.tail()}")
            if os.path.exists(self.sock):
                try:
                    self.conn = libvirt.open(self.uri)
                    break
                except libvirt.libvirtError:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"libvirtd on {self.host} not up in {timeout}s: {self.tail()}")
            time.sleep(0.1)
        self.startup_s = time.monotonic() - t0
        log(f"libvirtd {self.host} pid {self.pid} in {self.ns}, {self.tcp_uri}, up in {self.startup_s:.1f}s")

    def tail(self, n=8):
        txt = ""
        for p in (self.log_path, os.path.join(self.root, "var/log/libvirt/libvirtd.log")):
            try:
                txt += open(p, errors="replace").read()
            except OSError:
                pass
        return " | ".join(txt.strip().splitlines()[-n:])

    def qemu_log(self, dom=DOM):
        try:
            return open(os.path.join(self.root, f"var/log/libvirt/qemu/{dom}.log"), errors="replace").read()
        except OSError:
            return ""

    def stop(self):
        """Kill this daemon's domains' QEMUs and the daemon, by PID."""
        if self.conn:
            try:
                for d in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                    try:
                        d.destroy()
                    except libvirt.libvirtError:
                        pass
            except libvirt.libvirtError:
                pass
            try:
                self.conn.close()
            except libvirt.libvirtError:
                pass
            self.conn = None
        if self.proc:                 # QEMUs this daemon started and did not reap, by their pid files
            for pid in self.qemu_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc and self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc:
            self.err.close()
            self.proc = None

    def qemu_pids(self):
        out = []
        d = os.path.join(self.root, "run/libvirt/qemu")
        try:
            for f in os.listdir(d):
                if f.endswith(".pid") and f != "driver.pid":     # driver.pid is libvirtd itself
                    try:
                        pid = int(open(os.path.join(d, f)).read().strip())
                        cmd = open(f"/proc/{pid}/cmdline", "rb").read()
                    except (OSError, ValueError):
                        continue
                    if b"qemu-system" in cmd and f"guest={f[:-4]}".encode() in cmd:   # not a reused pid
                        out.append(pid)
        except OSError:
            pass
        return out

    def dom(self, name=DOM):
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError:
            return None

    def virsh(self, *argv, timeout=240, check=False):
        """`virsh -c <this daemon> ...` run inside this host's network namespace. Returns
        (rc, output, seconds); the call is recorded by the caller."""
        cmd = ["ip", "netns", "exec", self.ns, "virsh", "-c", self.uri] + list(argv)
        t0 = time.monotonic()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            rc, out = r.returncode, (r.stdout + r.stderr).strip()
        except subprocess.TimeoutExpired as e:
            rc, out = -1, f"timed out after {timeout}s: {e.stdout or ''}{e.stderr or ''}"
        return rc, out, time.monotonic() - t0


class MonitorChannel:
    """The churn driver's `qmp` interface over libvirt: virDomainQemuMonitorCommand
    (what `virsh qemu-monitor-command` calls), looked up by domain name on one daemon."""

    def __init__(self, daemon, name=DOM):
        self.daemon, self.name = daemon, name

    def cmd(self, name, **args):
        d = self.daemon.dom(self.name)
        if d is None:
            raise EOFError(f"domain {self.name} gone from {self.daemon.host}")
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        try:
            r = json.loads(libvirt_qemu.qemuMonitorCommand(d, json.dumps(msg), 0))
        except libvirt.libvirtError as e:
            raise QMPError(name, {"class": "libvirt", "desc": str(e)})
        if "error" in r:
            raise QMPError(name, r["error"])
        return r.get("return")

    def close(self):
        pass


class LvChurn(Churn):
    """Churn whose calls go through libvirt (attach takes a MonitorChannel).

    A page-state change comes from a running vCPU. libvirt gives the harness no hook at
    the switchover (the QMP harness uses pause-before-switchover), and the source QEMU
    still accepts x-sev-page-enc-bitmap-set once the migration stopped its vCPUs, after
    the section's END was sent: such a call changes the source only, as no real guest
    could. So every call is followed by query-status: running -> the call happened
    while the guest ran (BQL-serialised with the stop) and goes into the model; not
    running -> the one ambiguous call is kept in `pending` (it may or may not have been
    sent) and the driver stops for this migration."""

    pending = None

    def attach(self, chan):
        self.qmp = chan
        self.vm_name = f"{chan.name}@{chan.daemon.host}"

    def detach(self):
        self.qmp = None

    def _set(self, gfn, npages, shared, kind):
        if self.pending is not None:
            self._stop.set()
            return False
        try:
            self.qmp.cmd("x-sev-page-enc-bitmap-set", gpa=gfn * 4096, npages=npages, encrypted=not shared)
        except QMPError as e:
            self.errors.append(f"{kind} set gfn {gfn:#x}+{npages} shared={shared}: {e.desc}")
            return False
        try:
            running = self.qmp.cmd("query-status")["status"] == "running"
        except (QMPError, EOFError):
            running = False
        if not running:
            self.pending = (gfn, npages, shared)
            self._stop.set()
            return False
        self.model.set(gfn, npages, shared)
        self.calls += 1
        self.counts[kind] += 1
        return True

    def settle(self, matches):
        """Resolve the ambiguous call: matches(model) tells whether a state equals the model;
        the call is applied to the model if the state shows it. Returns a note."""
        if self.pending is None:
            return "no call after the stop"
        g, n, sh = self.pending
        self.pending = None
        if matches(self.model):
            return f"last call (gfn {g:#x}+{n} shared={sh}) raced the stop and was not carried"
        trial = Model()
        for a, b in self.model.ranges():
            trial.set(a, b - a, True)
        trial.set(g, n, sh)
        if matches(trial):
            self.model.set(g, n, sh)
            return f"last call (gfn {g:#x}+{n} shared={sh}) raced the stop and was carried"
        return "state matches neither the model nor the model with the racing call"


def domain_xml(qemu, fw_dirs, guest, serial, *, mem_mb=256, dirty_mb=8, peb=True, name=DOM):
    """The trial guest as a libvirt domain: TCG, q35, named CPU model, direct kernel boot,
    memory hotplug slots, serial console appended to a file, and the object through
    <qemu:commandline> (libvirt 9.0 has no element for it)."""
    qargs = []
    for d in fw_dirs:
        qargs += ["-L", d]
    if peb:
        qargs += ["-object", "sev-page-enc-bitmap,id=peb0"]
    qcl = "\n".join(f"    <qemu:arg value='{a}'/>" for a in qargs)
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <maxMemory slots='2' unit='MiB'>{mem_mb * 4}</maxMemory>
  <memory unit='MiB'>{mem_mb}</memory>
  <currentMemory unit='MiB'>{mem_mb}</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{guest['kernel']}</kernel>
    <initrd>{guest['initrd']}</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet dirty_mb={dirty_mb}</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact' check='none'>
    <model fallback='forbid'>qemu64</model>
    <numa><cell id='0' cpus='0' memory='{mem_mb}' unit='MiB'/></numa>
  </cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{qemu}</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='{serial}' append='on'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='{serial}' append='on'/>
      <target type='serial' port='0'/>
    </console>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
{qcl}
  </qemu:commandline>
</domain>
"""


DIMM_XML = """<memory model='dimm'>
  <target><size unit='MiB'>{mb}</size><node>0</node></target>
</memory>"""


# ---------------------------------------------------------------------------
# scenarios (trials/run.py --libvirt)

from .churn import Model, normalize, diff_ranges   # noqa: E402

MiB = 1 << 20
QUERY = '{"execute":"x-query-sev-page-enc-bitmap","arguments":{"max-ranges":1048576}}'


def _parse_jobinfo(txt):
    out = {}
    for line in txt.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    def num(k):
        m = re.match(r"([\d.]+)", out.get(k, ""))
        return float(m.group(1)) if m else None
    def mib(k):
        m = re.match(r"([\d.]+)\s*(\w+)", out.get(k, ""))
        if not m:
            return None
        f = {"B": 1 / MiB, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024}.get(m.group(2), 1)
        return float(m.group(1)) * f
    return {"total_ms": num("Time elapsed"), "downtime_ms": num("Total downtime"),
            "ram_mib": mib("Memory processed"), "iterations": num("Iteration"),
            "postcopy_requests": num("Postcopy requests"), "operation": out.get("Operation")}


class LvCtx:
    """Two daemons and the record of every virsh operation."""

    def __init__(self, args, qemu, fw_dirs, guest, hosts, work, peb=True):
        self.args, self.qemu, self.fw_dirs, self.guest, self.hosts = args, qemu, fw_dirs, guest, hosts
        self.work, self.peb = work, peb
        self.d = {}
        self.ops = []           # (scenario, host, command, rc, seconds, first line of output)
        self.scenario = "-"
        self.n = 0

    def start(self):
        for h in "AB":
            self.d[h] = Daemon(h, self.hosts.ns[h], self.hosts.ip[h], os.path.join(self.work, f"libvirt-{h}"))
            self.d[h].start()

    def stop(self):
        for dm in self.d.values():
            dm.stop()

    def virsh(self, host, *argv, timeout=240, record=True):
        rc, out, s = self.d[host].virsh(*argv, timeout=timeout)
        if record:
            line = " ".join(argv)
            short = out.replace("\n", " ⏎ ")
            self.ops.append((self.scenario, host, line, rc, s, short[:300]))
            log(f"  virsh@{host} {line} -> rc {rc} in {s:.2f}s{': ' + short[:200] if rc else ''}")
        return rc, out, s

    def where(self):
        """The host whose daemon runs the domain (or None)."""
        for h, dm in self.d.items():
            d = dm.dom()
            if d is not None and d.isActive():
                return h
        return None

    def fresh_domain(self, host="A", wait_ticks=2):
        """Undefine/destroy leftovers on both daemons, define and start the trial domain on host."""
        for h, dm in self.d.items():
            d = dm.dom()
            if d is not None:
                try:
                    if d.isActive():
                        d.destroy()
                    d.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
                except libvirt.libvirtError:
                    pass
        self.n += 1
        self.serial = os.path.join(self.work, f"lv{self.n:02d}.serial")
        if os.path.exists(self.serial):
            os.unlink(self.serial)
        xml = domain_xml(self.qemu, self.fw_dirs, self.guest, self.serial, peb=self.peb,
                         dirty_mb=self.args.dirty_mb)
        self.xml_path = os.path.join(self.work, f"lv{self.n:02d}.xml")
        open(self.xml_path, "w").write(xml)
        rc, out, _ = self.virsh(host, "define", self.xml_path)
        if rc:
            raise RuntimeError(f"define: {out}")
        rc, out, _ = self.virsh(host, "start", DOM)
        if rc:
            raise RuntimeError(f"start: {out}")
        if wait_ticks:
            self.wait_tick(wait_ticks)

    def ticks(self):
        try:
            return [int(m) for m in re.findall(r"^tick (\d+)", open(self.serial, errors="replace").read(), re.M)]
        except OSError:
            return []

    def wait_tick(self, n, timeout=120):
        wait_until(lambda: len(self.ticks()) >= n, timeout, 0.2, f"guest tick {n}")

    def guest_progresses(self, timeout=20):
        n0 = len(self.ticks())
        try:
            wait_until(lambda: len(self.ticks()) >= n0 + 2, timeout, 0.2, "new guest ticks")
            return True
        except TimeoutError:
            return False

    def query(self, host, record=True):
        """x-query-sev-page-enc-bitmap through `virsh qemu-monitor-command`."""
        rc, out, s = self.virsh(host, "qemu-monitor-command", DOM, QUERY, record=record)
        if rc:
            raise RuntimeError(f"query on {host}: {out}")
        r = json.loads(out)
        if "error" in r:
            raise RuntimeError(f"query on {host}: {r['error']}")
        return r["return"]

    def chan(self, host):
        return MonitorChannel(self.d[host])

    def new_churn(self, host, model, seed_add=0, region=None):
        slots = self.chan(host).cmd("x-query-sev-page-enc-bitmap", **{"max-ranges": 1})["slots"]
        return LvChurn(model, slots, rate=min(self.args.churn_rate, 100), seed=self.args.seed + seed_add,
                       region=region)

    def check_state(self, r, host, model, what, other=None):
        """host's bitmap == model (and == other host's, when given)."""
        q = self.query(host)
        rs = normalize(q["shared-ranges"])
        probs = []
        if q.get("shared-ranges-truncated"):
            probs.append("shared-ranges truncated")
        if model is not None and rs != model.ranges():
            probs.append(f"{host} != model: {diff_ranges(rs, model.ranges())}")
        if other is not None:
            for k in ("digest", "total-pages", "shared-pages"):
                if q.get(k) != other.get(k):
                    probs.append(f"{k}: {host} {q.get(k)} != before {other.get(k)}")
        r.check(what, not probs, "; ".join(probs) or
                f"digest {q['digest']}, {q['shared-pages']} shared pages in {len(rs)} ranges")
        return q

    def jobinfo(self, host):
        rc, out, _ = self.virsh(host, "domjobinfo", "--completed", DOM)
        return _parse_jobinfo(out) if rc == 0 else {}

    def migrate(self, r, src, flags, label, churn=None, during=None, dst_uri=None, timeout=None):
        """virsh migrate DOM from src to the other host; churn (if given) runs on the source
        through libvirt while it lasts. Returns a record."""
        dst = self.hosts.other(src)
        timeout = timeout or self.args.mig_timeout
        argv = ["migrate", "--live", "--verbose", "--persistent", "--undefinesource"] + list(flags) + \
               [DOM, dst_uri or self.d[dst].tcp_uri]
        if "--p2p" not in flags:
            argv += ["--migrateuri", f"tcp://{self.hosts.ip[dst]}"]
        t0 = time.monotonic()
        cmd = ["ip", "netns", "exec", self.d[src].ns, "virsh", "-c", self.d[src].uri] + argv
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        calls0 = churn.calls if churn else 0
        if churn:
            churn.start(self.chan(src), max_seconds=timeout)
        if during:
            during(p, t0)
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
            out += f"\n(timed out after {timeout}s)"
        wall = time.monotonic() - t0
        if churn:
            churn.stop()
            host = self.where()
            if host is not None and churn.pending is not None:
                q = self.query(host, record=False)
                rs = normalize(q["shared-ranges"])
                note = churn.settle(lambda m: m.ranges() == rs)
                log(f"  churn: {note}")
        out = out.strip()
        line = " ".join(argv)
        self.ops.append((self.scenario, src, line, p.returncode, wall,
                         out.replace("\n", " ⏎ ")[-300:]))
        log(f"  virsh@{src} {line} -> rc {p.returncode} in {wall:.2f}s"
            + (f": {out[-300:]}" if p.returncode else ""))
        rec = {"label": label, "src": src, "dst": dst, "flags": " ".join(flags), "rc": p.returncode,
               "status": "completed" if p.returncode == 0 else "failed", "error": None if p.returncode == 0 else out,
               "wall_s": round(wall, 2), "churn_calls": (churn.calls - calls0) if churn else 0}
        if p.returncode == 0:
            rec.update(self.jobinfo(dst))
        return rec


def err_line(m):
    """virsh's error line (its output also carries the progress lines)."""
    txt = m.get("error") or ""
    i = txt.find("error:")          # --verbose progress ends in '\r', so the error may share its line
    if i >= 0:
        return " ".join(txt[i:].split())[:400]
    lines = txt.splitlines()
    return lines[-1][-300:] if lines else ""


def _mig_detail(m):
    if m["status"] != "completed":
        return f"rc {m['rc']}: {err_line(m)}"
    return (f"{m['wall_s']:.1f} s wall, libvirt: {_fmt(m.get('total_ms'))} ms total, "
            f"{_fmt(m.get('downtime_ms'))} ms downtime, {_fmt(m.get('ram_mib'), 1)} MiB RAM, "
            f"{_fmt(m.get('iterations'))} iterations, {m['churn_calls']} churn calls via libvirt")


def _fmt(v, nd=0):
    if v is None:
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _result(key, title):
    from .scenarios import Result
    r = Result(key, title)
    r.lv_migrations = []
    return r


def _migrate_checked(ctx, r, src, flags, label, model, churn=None, during=None):
    m = ctx.migrate(r, src, flags, label, churn=churn, during=during)
    r.lv_migrations.append(m)
    dst = ctx.hosts.other(src)
    ok = r.check(f"{label}: virsh migrate {' '.join(flags)} {src}->{dst} completed", m["status"] == "completed",
                 _mig_detail(m))
    if not ok:
        return None
    r.check(f"{label}: domain running on {dst} only", ctx.where() == dst and ctx.d[src].dom() is None,
            f"running on {ctx.where()}, source definition {'gone' if ctx.d[src].dom() is None else 'still there'}")
    ctx.check_state(r, dst, model, f"{label}: destination bitmap == model (== source's last state)")
    r.check(f"{label}: guest runs on {dst}", ctx.guest_progresses(), f"ticks up to {ctx.ticks()[-1:]}")
    return dst


def live(ctx, count, modes=("p2p", "managed")):
    """virsh migrate --live, peer-to-peer and client-managed, `count` migrations each (round trips)
    with page-state churn through libvirt on the source before and during each migration."""
    r = _result("lv-live", f"virsh migrate --live: {', '.join(modes)}, {count} migrations each, churn via libvirt")
    for mode in modes:
        ctx.scenario = f"lv-live/{mode}"
        ctx.fresh_domain("A")
        model = Model()
        churn = ctx.new_churn("A", model, seed_add=len(r.lv_migrations))
        churn.attach(ctx.chan("A"))
        churn.mark_boot()
        churn.detach()
        q0 = ctx.check_state(r, "A", model, f"{mode}: source bitmap == model after boot marks")
        src = "A"
        flags = ["--p2p"] if mode == "p2p" else []
        for i in range(count):
            dst = _migrate_checked(ctx, r, src, flags, f"{mode} #{i + 1}", model, churn=churn)
            if dst is None:
                break
            src = dst
        if mode == modes[-1] and ctx.where():
            # negative control: one page flipped behind the model's back must be caught
            h = ctx.where()
            probe = next(g for g in range(0x300, 0x10000) if not model.is_shared(g))
            ctx.chan(h).cmd("x-sev-page-enc-bitmap-set", gpa=probe * 4096, npages=1, encrypted=False)
            rs = normalize(ctx.query(h)["shared-ranges"])
            r.check("negative control: a page flipped behind the model's back is detected (state != model)",
                    rs != model.ranges(), f"gfn {probe:#x}: {diff_ranges(rs, model.ranges())}")
        r.numbers[f"{mode}_churn_calls"] = churn.calls
        r.numbers[f"{mode}_churn_errors"] = len(churn.errors)
        if churn.errors:
            r.numbers[f"{mode}_churn_error_sample"] = churn.errors[:3]
    return r


def options(ctx):
    """The other virsh migrate options: --postcopy + migrate-postcopy, --parallel (4 connections),
    --compressed, --tls, --direct. Options that cannot work here are recorded with libvirt's error."""
    r = _result("lv-options", "virsh migrate options: postcopy, parallel (multifd x4), compressed, tls, direct")
    ctx.scenario = "lv-options"
    ctx.fresh_domain("A")
    model = Model()
    churn = ctx.new_churn("A", model, seed_add=100)
    churn.attach(ctx.chan("A"))
    churn.mark_boot()
    churn.detach()
    src = "A"

    def postcopy_switch(p, t0):
        # after the first iteration (libvirt's job info shows iteration >= 2), switch to post-copy
        deadline = t0 + 60
        while time.monotonic() < deadline and p.poll() is None:
            rc, out, _ = ctx.d[src].virsh("domjobinfo", DOM)
            it = _parse_jobinfo(out).get("iterations") if rc == 0 else None
            if it and it >= 2:
                ctx.virsh(src, "migrate-postcopy", DOM)
                return
            time.sleep(0.2)

    # post-copy
    d = _migrate_checked(ctx, r, src, ["--p2p", "--postcopy", "--bandwidth", "16"], "postcopy", model,
                         churn=churn, during=postcopy_switch)
    if d:
        m = r.lv_migrations[-1]
        r.check("postcopy: libvirt reports the job as post-copy (post-copy requests or migrate-postcopy accepted)",
                any(o[2].startswith("migrate-postcopy") and o[3] == 0 for o in ctx.ops if o[0] == ctx.scenario),
                f"postcopy requests {m.get('postcopy_requests')}")
        src = d
    for label, flags in (("parallel", ["--p2p", "--parallel", "--parallel-connections", "4"]),
                         ("compressed", ["--p2p", "--compressed"])):
        d = _migrate_checked(ctx, r, src, flags, label, model, churn=churn)
        if d:
            src = d
    # expected refusals: record what libvirt says, and the domain must stay put and intact
    for label, flags, why in (("tls", ["--p2p", "--tls"], "the patched QEMU is built without GnuTLS (and the sandbox has no "
                                                         "x509 certificates under /etc/pki/qemu)"),
                              ("direct", ["--direct"], "unmanaged direct migration is not supported by the QEMU driver")):
        qb = ctx.query(src)
        m = ctx.migrate(r, src, flags, label)
        m["expected_failure"] = why
        r.lv_migrations.append(m)
        if m["status"] == "completed":
            src = ctx.hosts.other(src)
            ctx.check_state(r, src, model, f"{label}: completed; destination bitmap == model")
        else:
            r.check(f"{label}: refused ({why}); domain still running on {src} with its bitmap", ctx.where() == src,
                    err_line(m))
            ctx.check_state(r, src, model, f"{label}: source bitmap unchanged after the refusal", other=qb)
    return r


def save_restore(ctx):
    """virsh managedsave + start, virsh save + restore: the section goes through a file."""
    r = _result("lv-save", "virsh managedsave + start, virsh save + restore (the section in a save file)")
    ctx.scenario = "lv-save"
    ctx.fresh_domain("A")
    model = Model()
    churn = ctx.new_churn("A", model, seed_add=200)
    churn.attach(ctx.chan("A"))
    churn.mark_boot()
    for _ in range(200):
        churn.step()
    churn.detach()
    q0 = ctx.check_state(r, "A", model, "before managedsave: bitmap == model")
    rc, out, s = ctx.virsh("A", "managedsave", DOM)
    r.check("virsh managedsave", rc == 0, f"{s:.1f} s {out[-200:]}")
    r.check("domain shut off with a managed save image",
            ctx.where() is None and ctx.d["A"].dom() is not None and ctx.d["A"].dom().hasManagedSaveImage(0),
            f"active on {ctx.where()}")
    rc, out, s = ctx.virsh("A", "start", DOM)
    r.check("virsh start (restores the managed save image)", rc == 0, f"{s:.1f} s {out[-200:]}")
    if rc == 0:
        ctx.check_state(r, "A", model, "after managedsave + start: bitmap == model == before", other=q0)
        r.check("guest resumes after start", ctx.guest_progresses())
    churn.attach(ctx.chan("A"))
    for _ in range(200):
        churn.step()
    churn.detach()
    q1 = ctx.check_state(r, "A", model, "before save: bitmap == model")
    f = os.path.join(ctx.work, "lv.save")
    if os.path.exists(f):
        os.unlink(f)
    rc, out, s = ctx.virsh("A", "save", DOM, f)
    r.check("virsh save to a file", rc == 0 and os.path.exists(f),
            f"{s:.1f} s, {os.path.getsize(f) / MiB if os.path.exists(f) else 0:.1f} MiB file {out[-200:]}")
    rc, out, s = ctx.virsh("A", "restore", f)
    r.check("virsh restore from the file", rc == 0, f"{s:.1f} s {out[-200:]}")
    if rc == 0:
        ctx.check_state(r, "A", model, "after save + restore: bitmap == model == before", other=q1)
        r.check("guest resumes after restore", ctx.guest_progresses())
    return r


def power(ctx):
    """virsh reset (cold reset: all private), virsh shutdown + start (destroy + start if the
    busybox guest ignores the ACPI power button)."""
    r = _result("lv-power", "virsh reset (all private after), virsh shutdown / destroy + start")
    ctx.scenario = "lv-power"
    ctx.fresh_domain("A")
    model = Model()
    churn = ctx.new_churn("A", model, seed_add=300)
    churn.attach(ctx.chan("A"))
    churn.mark_boot()
    churn.detach()
    q = ctx.check_state(r, "A", model, "before reset: bitmap == model (shared pages present)")
    r.check("shared pages before reset", q["shared-pages"] > 0, f"{q['shared-pages']}")
    rc, out, s = ctx.virsh("A", "reset", DOM)
    r.check("virsh reset", rc == 0, f"{s:.2f} s {out[-200:]}")
    model.reset()
    q = ctx.check_state(r, "A", model, "after reset: all private (model reset)")
    n0 = len(ctx.ticks())
    r.check("guest boots again after reset", ctx.guest_progresses(60), f"{len(ctx.ticks()) - n0} new ticks")
    churn.attach(ctx.chan("A"))
    churn.after_reset()
    churn.mark_boot()
    churn.detach()
    ctx.check_state(r, "A", model, "marked again after reset: bitmap == model")
    rc, out, s = ctx.virsh("A", "shutdown", DOM)
    r.check("virsh shutdown accepted", rc == 0, f"{s:.2f} s {out[-200:]}")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10 and ctx.where() == "A":
        time.sleep(0.5)
    stopped = ctx.where() is None
    r.numbers["acpi_shutdown_worked"] = stopped
    if not stopped:
        log("  the busybox guest ignores the ACPI power button (no acpid): virsh destroy", always=True)
        rc, out, s = ctx.virsh("A", "destroy", DOM)
        r.check("virsh destroy (the guest has no ACPI power-button handler)", rc == 0, f"{s:.2f} s")
    rc, out, s = ctx.virsh("A", "start", DOM)
    r.check("virsh start after power-off", rc == 0, f"{s:.2f} s {out[-200:]}")
    model.reset()
    ctx.check_state(r, "A", model, "fresh start: all private")
    return r


def dimm(ctx):
    """virsh attach-device <memory model='dimm'>, mark pages in it, migrate, compare."""
    r = _result("lv-dimm", "virsh attach-device DIMM (128 MiB), pages in it marked, migrated both ways")
    ctx.scenario = "lv-dimm"
    ctx.fresh_domain("A")
    model = Model()
    f = os.path.join(ctx.work, "dimm.xml")
    open(f, "w").write(DIMM_XML.format(mb=128))
    q0 = ctx.query("A")
    rc, out, s = ctx.virsh("A", "attach-device", DOM, f, "--live", "--persistent")
    r.check("virsh attach-device --live --persistent (dimm)", rc == 0, f"{s:.2f} s {out[-200:]}")
    if rc:
        return r
    q1 = ctx.query("A")
    new = [s for s in q1["slots"] if (s["base-gfn"], s["npages"]) not in
           {(x["base-gfn"], x["npages"]) for x in q0["slots"]}]
    r.check("the object tracks a new slot for the DIMM", len(new) == 1 and new[0]["npages"] == 128 * 256,
            f"new slots {new}")
    if not new:
        return r
    region = (new[0]["base-gfn"], new[0]["npages"])
    churn = ctx.new_churn("A", model, seed_add=400, region=region)
    churn.attach(ctx.chan("A"))
    churn.mark_boot()
    churn.detach()
    q = ctx.check_state(r, "A", model, "DIMM pages marked: bitmap == model")
    r.check("shared pages lie in the DIMM", all(region[0] <= s and e <= region[0] + region[1]
                                               for s, e in model.ranges()) and q["shared-pages"] > 0,
            f"{q['shared-pages']} shared pages")
    src = "A"
    for i in range(2):
        d = _migrate_checked(ctx, r, src, ["--p2p"], f"dimm #{i + 1}", model, churn=churn)
        if not d:
            break
        qd = ctx.query(d)
        r.check(f"dimm #{i + 1}: destination has the DIMM slot", any(
            (s["base-gfn"], s["npages"]) == region for s in qd["slots"]), f"{qd['slots']}")
        src = d
    return r


def failure(ctx):
    """virsh migrate to a destination whose object is missing (migrate --xml without it), to
    one whose QEMU is killed mid-way, and through a relay that corrupts the sevpeb section
    (sevtrials/libvirt_refuse.py): libvirt reports the error, the source keeps running with its
    bitmap intact."""
    r = _result("lv-failure", "virsh migrate: destination without the object; destination QEMU killed mid-way")
    ctx.scenario = "lv-failure"
    ctx.fresh_domain("A")
    model = Model()
    churn = ctx.new_churn("A", model, seed_add=500)
    churn.attach(ctx.chan("A"))
    churn.mark_boot()
    churn.detach()
    qb = ctx.check_state(r, "A", model, "before: source bitmap == model")
    # 0. the guest has not declared itself ready (migration-control bit 0 clear, required):
    #    QEMU's migration blocker, which libvirt shows as its refusal
    a = ctx.chan("A")
    a.cmd("qom-set", path="/objects/peb0", property="migration-control", value=0)
    a.cmd("qom-set", path="/objects/peb0", property="require-migration-ready", value=True)
    m = ctx.migrate(r, "A", ["--p2p"], "guest not ready")
    r.lv_migrations.append(m)
    r.check("guest not ready: virsh migrate refused with the reason", m["status"] != "completed" and
            re.search(r"ready|migration.control", m["error"] or "", re.I), err_line(m))
    r.check("guest not ready: source keeps running", ctx.where() == "A", f"running on {ctx.where()}")
    ctx.check_state(r, "A", model, "guest not ready: source bitmap == model", other=qb)
    a.cmd("qom-set", path="/objects/peb0", property="migration-control", value=1)
    # 1. the destination XML lacks the object (an operator's edited XML)
    rc, xml, _ = ctx.virsh("A", "dumpxml", "--migratable", DOM)
    bad = re.sub(r"\s*<qemu:arg value='-object'/>\s*<qemu:arg value='sev-page-enc-bitmap,id=peb0'/>", "", xml)
    f = os.path.join(ctx.work, "no-object.xml")
    open(f, "w").write(bad)
    r.check("migration XML without the object prepared", "sev-page-enc-bitmap" not in bad and bad != xml)
    for mode, flags in (("p2p", ["--p2p"]), ("managed", [])):
        lb = f"object missing ({mode})"
        dlog = os.path.join(ctx.d["B"].root, "var/log/libvirt/libvirtd.log")
        off = os.path.getsize(dlog) if os.path.exists(dlog) else 0
        m = ctx.migrate(r, "A", flags + ["--xml", f], lb, churn=churn)
        r.lv_migrations.append(m)
        r.check(f"{lb}: virsh migrate fails", m["status"] != "completed", (m["error"] or "")[-300:])
        try:
            with open(dlog, errors="replace") as fh:
                fh.seek(off)
                dl = [l for l in fh.read().splitlines() if "sev-page-enc-bitmap" in l and "error" in l]
        except OSError:
            dl = []
        in_virsh = m["error"] is not None and "sev-page-enc-bitmap" in m["error"]
        r.numbers[f"{mode}_virsh_error_names_section"] = in_virsh
        r.check(f"{lb}: libvirt reports an error naming the section "
                f"({'in virsh migrate' if in_virsh else 'in the destination libvirtd log'})",
                in_virsh or bool(dl),
                err_line(m) + " | destination libvirtd: " +
                (dl[-1].split(": ", 2)[-1][:300] if dl else "nothing"))
        r.check(f"{lb}: source keeps running", ctx.where() == "A" and ctx.guest_progresses(),
                f"running on {ctx.where()}")
        ctx.check_state(r, "A", model, f"{lb}: source bitmap == model (churn included)")
    # 2. the destination QEMU is killed during the migration
    killed = {}

    def kill_dst(p, t0):
        deadline = t0 + 30
        while time.monotonic() < deadline and p.poll() is None:
            rc, out, _ = ctx.d["A"].virsh("domjobinfo", DOM)
            ji = _parse_jobinfo(out) if rc == 0 else {}
            if (ji.get("ram_mib") or 0) > 8:
                pids = ctx.d["B"].qemu_pids()
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                killed.update(pids=pids, at_s=round(time.monotonic() - t0, 2), ram_mib=ji.get("ram_mib"))
                log(f"  killed destination QEMU {pids} after {killed['at_s']} s", always=True)
                return
            time.sleep(0.1)

    m = ctx.migrate(r, "A", ["--p2p", "--bandwidth", "8"], "destination killed", churn=churn, during=kill_dst)
    r.lv_migrations.append(m)
    r.numbers["killed"] = killed
    r.check("destination QEMU killed mid-way", bool(killed.get("pids")), str(killed))
    r.check("destination killed: virsh migrate fails with an error", m["status"] != "completed", err_line(m))
    r.check("destination killed: source keeps running", ctx.where() == "A" and ctx.guest_progresses(),
            f"running on {ctx.where()}")
    ctx.check_state(r, "A", model, "destination killed: source bitmap == model (churn included)")
    # 3. the destination refuses a corrupted section (sevtrials/libvirt_refuse.py)
    from .libvirt_refuse import corrupted_section
    corrupted_section(ctx, r, model)
    d = _migrate_checked(ctx, r, "A", ["--p2p"], "retry after failures", model)
    return r


SCENARIOS = {"lv-live": live, "lv-options": options, "lv-save": save_restore, "lv-power": power,
             "lv-dimm": dimm, "lv-failure": failure}


def markdown(ctx, results):
    """The report section: every virsh operation with its result and time, and the migrations
    with libvirt's own figures (virsh domjobinfo --completed on the destination)."""
    L = ["## libvirt (virsh) trials", "",
         f"- {virsh_version()}; two daemons, one per network namespace, private state "
         f"(unshare -m + bind mounts), TCP transport on the namespace address without auth",
         f"- daemon start-up: " + ", ".join(f"{h} {dm.startup_s:.1f} s" for h, dm in ctx.d.items()
                                             if hasattr(dm, "startup_s")), "",
         "### Migrations (libvirt's figures: `virsh domjobinfo --completed` on the destination)", "",
         "| scenario | migration | flags | result | wall s | total ms | downtime ms | RAM MiB | iterations | churn calls |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for m in getattr(r, "lv_migrations", []):
            res = "completed" if m["status"] == "completed" else \
                ("refused (expected)" if m.get("expected_failure") else "failed") + \
                f": {err_line(m)}"
            L.append(f"| {r.key} | {m['label']} | `{m['flags']}` | {res} | {m['wall_s']:.1f} | "
                     f"{_fmt(m.get('total_ms'))} | {_fmt(m.get('downtime_ms'))} | {_fmt(m.get('ram_mib'), 1)} | "
                     f"{_fmt(m.get('iterations'))} | {m['churn_calls']} |")
    done = [m for r in results for m in getattr(r, "lv_migrations", []) if m["status"] == "completed"
            and m.get("downtime_ms") is not None]
    if done:
        import statistics
        L += ["", f"{len(done)} completed; median downtime {statistics.median(m['downtime_ms'] for m in done):.0f} ms, "
                  f"largest {max(m['downtime_ms'] for m in done):.0f} ms; median total "
                  f"{statistics.median(m['total_ms'] for m in done):.0f} ms."]
    L += ["", "### Every virsh operation", "", "| scenario | host | command | rc | s | output (end) |",
          "|---|---|---|---|---|---|"]
    for sc, h, cmd, rc, s, out in ctx.ops:
        if cmd.startswith("qemu-monitor-command"):
            cmd = "qemu-monitor-command sevpeb-lv x-query-sev-page-enc-bitmap"
            out = out[:80]
        out = out.replace("|", "\\|")
        L.append(f"| {sc} | {h} | `{cmd}` | {rc} | {s:.2f} | {out[-160:] if rc else out[:100]} |")
    return L
