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
        bdeb = _download("busybox-static", debs)
        with tempfile.TemporaryDirectory(dir=base) as tmp:
            ex = os.path.join(tmp, "bb")
            run(["dpkg-deb", "-x", bdeb, ex])
            root = os.path.join(tmp, "root")
            for d in ("bin", "proc", "sys", "dev", "tmp"):
                os.makedirs(os.path.join(root, d))
            shutil.copy2(os.path.join(ex, "bin", "busybox"), os.path.join(root, "bin", "busybox"))
            with open(os.path.join(root, "init"), "w") as f:
                f.write(INIT_SCRIPT)
            os.chmod(os.path.join(root, "init"), 0o755)
            initrd = os.path.join(base, "initramfs.cpio.gz")
            bb = os.path.join(root, "bin", "busybox")
            subprocess.run(f"cd '{root}' && find . | '{bb}' cpio -o -H newc 2>/dev/null | gzip -9 > '{initrd}.tmp'",
                           shell=True, check=True)
            os.replace(initrd + ".tmp", initrd)
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
