"""Guest assets (Debian kernel + busybox initramfs), firmware, and the stock peer QEMU.

Everything lands under ${SEVPEB_CACHE:-/var/cache/sevpeb}/guest (and .../peer),
outside the clone. Idempotent: a stamp file records what was built from what.
Packages are fetched with `apt-get download` and extracted with dpkg-deb;
nothing here installs a kernel or QEMU on the host.
"""
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile

from .util import cache_dir, log, run

# /init of the guest. It prints "tick N" every second on the serial console and
# rewrites DIRTY MiB of tmpfs every second so that live migration has to iterate.
INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs -o size=96m tmpfs /tmp
DIRTY=8
for a in $(cat /proc/cmdline); do case "$a" in dirty_mb=*) DIRTY=${a#dirty_mb=};; esac; done
echo "GUEST-UP $(uname -r) dirty_mb=$DIRTY"
( n=0; while true; do
    dd if=/dev/urandom of=/tmp/dirty.$((n % 2)) bs=1M count=$DIRTY 2>/dev/null
    n=$((n + 1)); sleep 1
  done ) &
i=0
while true; do i=$((i+1)); echo "tick $i uptime=$(cut -d' ' -f1 /proc/uptime)"; sleep 1; done
"""

APT_HELPERS = ["dpkg-dev", "xz-utils", "gzip"]
PEER_LIBS = ["libcapstone4", "libpmem1", "librdmacm1", "libibverbs1", "libvdeplug2",
             "libfuse3-3", "libaio1", "liburing2"]
BPO_SOURCES = "/etc/apt/sources.list.d/sevpeb-bookworm-backports.sources"

_apt_updated = False


def _apt_update():
    global _apt_updated
    if not _apt_updated:
        log("apt-get update")
        run(["apt-get", "update", "-qq"], timeout=600)
        _apt_updated = True


def _ensure_installed(pkgs):
    missing = []
    for p in pkgs:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True)
        if "install ok installed" not in r.stdout:
            missing.append(p)
    if missing:
        _apt_update()
        log(f"apt-get install {' '.join(missing)}")
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=900)


def _download(pkg, dest):
    """apt-get download pkg into dest; return the .deb path."""
    os.makedirs(dest, exist_ok=True)
    name = pkg.split("/")[0].split("=")[0]
    try:
        run(["apt-get", "download", "-qq", pkg], cwd=dest, timeout=900, capture=True)
    except RuntimeError:
        _apt_update()
        run(["apt-get", "download", "-qq", pkg], cwd=dest, timeout=900, capture=True)
    debs = sorted(glob.glob(os.path.join(dest, f"{name}_*.deb")), key=os.path.getmtime)
    if not debs:
        raise RuntimeError(f"apt-get download {pkg}: no .deb in {dest}")
    return debs[-1]


def _candidate(pkg):
    r = run(["apt-cache", "policy", pkg], capture=True)
    for line in r.stdout.splitlines():
        if "Candidate:" in line:
            return line.split()[1]
    return None


class _Lock:
    def __init__(self, path):
        self.path = path

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.f = open(self.path, "w")
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *a):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def _busybox_initramfs(busybox_deb, init, extra, initrd, workdir):
    """Write `initrd`: a gzip'd newc initramfs of busybox (from the
    busybox-static deb, packed by busybox's own cpio), `init` as /init and
    the `extra` files in /."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        ex = os.path.join(tmp, "bb")
        run(["dpkg-deb", "-x", busybox_deb, ex])
        root = os.path.join(tmp, "root")
        for d in ("bin", "proc", "sys", "dev", "tmp"):
            os.makedirs(os.path.join(root, d))
        bb = os.path.join(root, "bin", "busybox")
        shutil.copy2(os.path.join(ex, "bin", "busybox"), bb)
        for f in extra:
            shutil.copy2(f, root)
        with open(os.path.join(root, "init"), "w") as f:
            f.write(init)
        os.chmod(os.path.join(root, "init"), 0o755)
        subprocess.run(f"cd '{root}' && find . | '{bb}' cpio -o -H newc 2>/dev/null | gzip -9 > '{initrd}.tmp'",
                       shell=True, check=True)
        os.replace(initrd + ".tmp", initrd)


def ensure_guest():
    """Build (once) and return {"kernel", "initrd", "fw_dirs"}."""
    base = os.path.join(cache_dir(), "guest")
    stamp = os.path.join(base, "stamp.json")
    with _Lock(os.path.join(base, ".lock")):
        want_key = hashlib.sha256(INIT_SCRIPT.encode()).hexdigest()[:16]
        if os.path.exists(stamp):
            st = json.load(open(stamp))
            if st.get("init_key") == want_key and all(os.path.exists(st[k]) for k in ("kernel", "initrd")) \
                    and all(os.path.isdir(d) for d in st["fw_dirs"]):
                return st
        log(f"building guest assets in {base}")
        _ensure_installed(APT_HELPERS)
        debs = os.path.join(base, "debs")
        os.makedirs(debs, exist_ok=True)
        # kernel: whatever linux-image-amd64 depends on right now
        r = run(["apt-cache", "depends", "linux-image-amd64"], capture=True)
        kpkg = next((l.split()[1] for l in r.stdout.splitlines()
                     if "Depends:" in l and "linux-image-" in l), None)
        if not kpkg:
            raise RuntimeError("cannot resolve linux-image-amd64's kernel package")
        kdeb = _download(kpkg, debs)
        kdir = os.path.join(base, "kernel")
        os.makedirs(kdir, exist_ok=True)
        p1 = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", kdeb], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", kdir, "--wildcards", "./boot/vmlinuz-*"], stdin=p1.stdout, check=True)
        p1.wait()
        kernel = sorted(glob.glob(os.path.join(kdir, "boot", "vmlinuz-*")))[-1]
        # busybox-static -> initramfs (busybox's own cpio; `cpio` is not needed)
        initrd = os.path.join(base, "initramfs.cpio.gz")
        _busybox_initramfs(_download("busybox-static", debs), INIT_SCRIPT, [], initrd, base)
        # firmware: seabios (bios-256k.bin) + qemu-system-data (linuxboot_dma.bin etc.)
        fw = os.path.join(base, "fw")
        shutil.rmtree(fw, ignore_errors=True)
        for pkg in ("seabios", "qemu-system-data"):
            run(["dpkg-deb", "-x", _download(pkg, debs), fw])
        st = {"init_key": want_key, "kernel": kernel, "initrd": initrd, "kernel_pkg": kpkg,
              "fw_dirs": [os.path.join(fw, "usr/share/seabios"), os.path.join(fw, "usr/share/qemu")]}
        with open(stamp, "w") as f:
            json.dump(st, f, indent=1)
        for d in glob.glob(os.path.join(debs, "linux-image-*.deb")):
            os.unlink(d)   # 70 MB, only the vmlinuz is kept
        log(f"guest: {os.path.basename(kernel)} + {os.path.getsize(initrd)} B initramfs")
        return st


def ensure_peer():
    """Stock QEMU 10.0 from bookworm-backports, extracted (not installed). Returns its path."""
    base = os.path.join(cache_dir(), "peer")
    with _Lock(os.path.join(base, ".lock")):
        found = sorted(glob.glob(os.path.join(base, "*/usr/bin/qemu-system-x86_64")))
        if found and os.path.exists(os.path.join(os.path.dirname(found[-1]), "../../.complete")):
            _ensure_installed(PEER_LIBS)
            return found[-1]
        if not any("bookworm-backports" in open(f).read() for f in
                   glob.glob("/etc/apt/sources.list.d/*") + ["/etc/apt/sources.list"] if os.path.isfile(f)):
            log(f"adding bookworm-backports ({BPO_SOURCES})")
            with open(BPO_SOURCES, "w") as f:
                f.write("Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n"
                        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
            global _apt_updated
            _apt_updated = False
        _apt_update()
        _ensure_installed(PEER_LIBS + APT_HELPERS)
        deb = _download("qemu-system-x86/bookworm-backports", os.path.join(base, "debs"))
        ver = os.path.basename(deb).split("_")[1].replace(":", "%3a")
        dest = os.path.join(base, ver)
        shutil.rmtree(dest, ignore_errors=True)
        run(["dpkg-deb", "-x", deb, dest])
        open(os.path.join(dest, ".complete"), "w").close()
        os.unlink(deb)
        q = os.path.join(dest, "usr/bin/qemu-system-x86_64")
        log(f"peer QEMU: {run([q, '--version'], capture=True).stdout.splitlines()[0]}")
        return q


# ---------------------------------------------------------------------------
# The guest agent (trials/agent): a kernel module for the trial guest's Debian
# kernel, the ring-3 probe cpl3call, and an initramfs that loads them.

AGENT_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "agent")
AGENT_FILES = ("sevpeb_agent.c", "Makefile", "cpl3call.c")

# /init of the agent guest: loads the module (which makes the boot-time calls and
# starts one churn kthread per CPU), prints "tick N" each second, rewrites DIRTY
# MiB each second, and serves the harness on the second serial port (ttyS1): one
# request "ID CMD ARGS" per line, the answer ends with "END ID RC".
AGENT_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
mount -t debugfs none /sys/kernel/debug
mount -t tmpfs -o size=64m tmpfs /tmp
DIRTY=4; STORM=19500
for a in $(cat /proc/cmdline); do case "$a" in
  dirty_mb=*) DIRTY=${a#dirty_mb=};; storm_calls=*) STORM=${a#storm_calls=};; esac; done
echo "GUEST-UP $(uname -r) cpus=$(nproc) dirty_mb=$DIRTY storm_calls=$STORM"
D=/sys/kernel/debug/sevpeb
if insmod /sevpeb_agent.ko storm_calls=$STORM; then echo "AGENT-READY $(cat $D/stats)"
else echo "AGENT-FAILED $(dmesg | grep sevpeb-agent | tail -1)"; fi
( n=0; while true; do
    dd if=/dev/urandom of=/tmp/dirty.$((n % 2)) bs=1M count=$DIRTY 2>/dev/null
    n=$((n + 1)); sleep 1
  done ) &
( i=0; while true; do i=$((i+1)); echo "tick $i uptime=$(cut -d' ' -f1 /proc/uptime)"; sleep 1; done ) &
stty -F /dev/ttyS1 raw -echo
exec 3<>/dev/ttyS1
echo "AGENT-CHANNEL $(grep '^1:' /proc/tty/driver/serial)"
while read -r id cmd arg <&3; do
  case "$cmd" in
    record) cat $D/record ;;
    stats) cat $D/stats ;;
    bad) cat $D/bad ;;
    ctl) echo "$arg" > $D/ctl ;;
    cpl3) /cpl3call ;;
    online) for m in /sys/devices/system/memory/memory*; do
              if [ "$(cat $m/state)" = offline ]; then
                echo online > $m/state && echo "ONLINE $(cat $m/phys_index) $(cat $m/state)"; fi; done
            echo "BLOCK $(cat /sys/devices/system/memory/block_size_bytes)" ;;
    reboot) echo reboot > $D/ctl; echo "REBOOTING"; sync; (sleep 0.3; reboot -f) & ;;
    *) echo "unknown $cmd"; false ;;
  esac >&3 2>&1
  echo "END $id $?" >&3
done
echo "AGENT-CHANNEL-CLOSED"
while true; do sleep 1; done
"""


def _agent_key(kver):
    h = hashlib.sha256(kver.encode())
    for f in AGENT_FILES:
        h.update(f.encode() + b"\0" + open(os.path.join(AGENT_SRC, f), "rb").read())
    h.update(AGENT_INIT.encode())
    return h.hexdigest()[:16]


def ensure_agent(guest):
    """Build (once per guest kernel version + agent source) the agent module, cpl3call and
    an initramfs with both; returns {"key", "kver", "ko", "cpl3call", "initrd"}. The
    headers are Debian's linux-headers-<kver> for the exact guest kernel, fetched with
    apt-get download and extracted into the cache (not installed)."""
    kver = os.path.basename(guest["kernel"])[len("vmlinuz-"):]
    base = os.path.join(cache_dir(), "agent")
    key = _agent_key(kver)
    out = os.path.join(base, f"build-{key}")
    stamp = os.path.join(out, "stamp.json")
    with _Lock(os.path.join(base, ".lock")):
        if os.path.exists(stamp):
            st = json.load(open(stamp))
            if all(os.path.exists(st[k]) for k in ("ko", "cpl3call", "initrd")):
                return st
        log(f"building the guest agent for {kver} (key {key}) in {out}")
        _ensure_installed(APT_HELPERS + ["make", "gcc", "libc6-dev", "bc", "libelf-dev"])
        root = os.path.join(base, f"headers-{kver}")
        hdir = os.path.join(root, "usr", "src", f"linux-headers-{kver}")
        if not os.path.exists(os.path.join(hdir, ".complete")):
            shutil.rmtree(root, ignore_errors=True)
            debs = os.path.join(base, "debs")
            shutil.rmtree(debs, ignore_errors=True)
            # linux-headers-<kver> depends on -common (same source version) and linux-kbuild-<x.y>
            pkgs = [f"linux-headers-{kver}"]
            r = run(["apt-cache", "depends", f"linux-headers-{kver}"], capture=True, check=False)
            if r.returncode != 0:
                _apt_update()
                r = run(["apt-cache", "depends", f"linux-headers-{kver}"], capture=True)
            pkgs += [l.split()[1] for l in r.stdout.splitlines()
                     if "Depends:" in l and ("linux-headers-" in l or "linux-kbuild-" in l)]
            for p in pkgs:
                run(["dpkg-deb", "-x", _download(p, debs), root])
            common = next(iter(glob.glob(os.path.join(root, "usr", "src", "linux-headers-*-common"))), None)
            if not common:
                raise RuntimeError(f"no linux-headers-*-common among {pkgs}")
            # the arch Makefile includes the -common one by absolute /usr/src path;
            # the scripts symlink is relative (../../lib/linux-kbuild-x.y/scripts)
            mk = os.path.join(hdir, "Makefile")
            txt = open(mk).read()
            open(mk, "w").write(re.sub(r"/usr/src/(linux-headers-\S+-common)", os.path.join(root, "usr/src/") + r"\1",
                                       txt))
            open(os.path.join(hdir, ".complete"), "w").close()
            shutil.rmtree(debs, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        bdir = os.path.join(out, "src")
        os.makedirs(bdir)
        for f in AGENT_FILES:
            shutil.copy2(os.path.join(AGENT_SRC, f), bdir)
        r = run(["make", "-C", hdir, f"M={bdir}", "modules"], capture=True, check=False, timeout=600)
        ko = os.path.join(bdir, "sevpeb_agent.ko")
        if r.returncode != 0 or not os.path.exists(ko):
            raise RuntimeError(f"building the agent module failed:\n{(r.stdout or '')[-1500:]}{(r.stderr or '')[-1500:]}")
        cpl3 = os.path.join(out, "cpl3call")
        run(["gcc", "-static", "-nostdlib", "-O2", "-mgeneral-regs-only", "-o", cpl3,
             os.path.join(bdir, "cpl3call.c")])
        initrd = os.path.join(out, "initramfs-agent.cpio.gz")
        _busybox_initramfs(_download("busybox-static", os.path.join(base, "bb")), AGENT_INIT, [ko, cpl3], initrd, out)
        for old in glob.glob(os.path.join(base, "build-*")):
            if old != out:
                shutil.rmtree(old, ignore_errors=True)
        st = {"key": key, "kver": kver, "ko": ko, "cpl3call": cpl3, "initrd": initrd,
              "kernel": guest["kernel"]}
        with open(stamp, "w") as f:
            json.dump(st, f, indent=1)
        log(f"agent: {os.path.getsize(ko)} B module, initramfs {os.path.getsize(initrd)} B")
        return st
