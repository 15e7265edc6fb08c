#!/usr/bin/env python3
"""sevpeb cross-host live-migration trials.

  trials/run.py --quick                 fast fixed subset (ping-pong x2, corrupted stream, not-ready)
  trials/run.py --full [--count N]      all scenarios
  trials/run.py --only corrupt,peer     chosen scenarios

The QEMU under test comes from --qemu, else $QEMU, else the env file written by
scripts/build-qemu.sh (${SEVPEB_CACHE:-/var/cache/sevpeb}/current.env). The stock
peer (scenario 8) is --peer-qemu, else Debian bookworm-backports' qemu-system-x86
extracted into the cache. Needs root (network namespaces, apt-get).
See docs/TRIALS.md.
"""
import argparse
import datetime
import os
import platform
import shlex
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sevtrials import assets, guestdriven, report, routing, scenarios   # noqa: E402
from sevtrials.hosts import Hosts, qemu_has_sevpeb, qemu_version  # noqa: E402
from sevtrials.util import cache_dir, log                         # noqa: E402

QMP_ALL = ["ping-pong", "reboot", "hotplug", "cancel", "dest-killed", "corrupt", "not-ready", "peer",
           "misroute-negative", "postcopy", "multifd", "routing-cost"]
LIBVIRT = ["lv-live", "lv-options", "lv-save", "lv-power", "lv-dimm", "lv-failure"]   # sevtrials/libvirt.py
ALL = QMP_ALL + LIBVIRT
# driven by the guest agent (trials/agent, sevtrials/guestdriven.py) unless --qmp-driver
GUEST_DRIVEN = ["ping-pong", "reboot", "hotplug", "cancel", "dest-killed", "corrupt"]
QUICK = ["ping-pong", "corrupt", "not-ready", "misroute-negative", "lv-live"]   # lv-live in --quick: one p2p migration


def read_env_file(path):
    env = {}
    try:
        for line in open(path):
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
    except OSError:
        pass
    return env


def leak_snapshot(*qemus, work=None):
    """Network namespaces, running processes of the QEMU binaries under
    test, and entries of the temp directory: compared before/after a run."""
    import subprocess
    import tempfile
    ns = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")) - {""}
    # only this run's namespaces (Hosts() names them after our PID): the machine may be shared
    ns = {n.split()[0] for n in ns if n.split()[0].endswith(f"-{os.getpid()}")}
    bins = {os.path.realpath(q) for q in qemus if q}
    procs = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                # only QEMUs of this run (their files are under its work dir): the
                # machine may be shared with other runs of the same binary
                if os.path.realpath(f"/proc/{pid}/exe") in bins and \
                        (not work or work.encode() in open(f"/proc/{pid}/cmdline", "rb").read()):
                    procs.add(int(pid))
            except OSError:
                pass
    # the harness keeps its files under trials/out/work; anything of ours in
    # the temp dir (the machine may be shared: only sevpeb/qemu names)
    tmp = {f for f in os.listdir(tempfile.gettempdir()) if f.startswith(("sevpeb", "qemu"))}
    return ns, procs, tmp


def leak_diff(before, after):
    """What the run left behind (namespaces, QEMUs, temp files), or ''."""
    out = []
    for what, b, a in zip(("network namespaces", "QEMU processes", "temp files"), before, after):
        new = sorted(str(x) for x in a - b)
        if new:
            out.append(f"{len(new)} {what}: {', '.join(new[:5])}")
    return "; ".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="fast fixed subset (default)")
    g.add_argument("--full", action="store_true", help="all scenarios")
    g.add_argument("--only", help=f"comma-separated scenarios: {','.join(ALL)}")
    ap.add_argument("--count", type=int, default=None, help="ping-pong migrations (quick 2, full 10)")
    ap.add_argument("--peer-count", type=int, default=None, help="migrations per side in scenario 8 (default 5)")
    ap.add_argument("--qemu", help="patched QEMU binary (with -object sev-page-enc-bitmap)")
    ap.add_argument("--peer-qemu", help="stock QEMU 10.0 binary for scenario 8")
    ap.add_argument("--fw-dirs", help="colon-separated firmware dirs (-L) for every QEMU")
    ap.add_argument("--env-file", default=None, help="build-qemu.sh env file (default $SEVPEB_CACHE/current.env)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    ap.add_argument("--bandwidth", type=float, default=64, help="migration max-bandwidth MiB/s (default 64)")
    ap.add_argument("--slow-bandwidth", type=float, default=24,
                    help="max-bandwidth for migrations that get interrupted (reboot/cancel/kill), MiB/s")
    ap.add_argument("--dirty-mb", type=int, default=8, help="MiB the guest rewrites per second")
    ap.add_argument("--churn-rate", type=float, default=400, help="max x-sev-page-enc-bitmap-set calls/s")
    ap.add_argument("--storm-rate", type=float, default=1000, help="max calls/s while the boot storm lasts")
    ap.add_argument("--storm-calls", type=int, default=None, help="boot-storm calls (quick 2000, full 19000)")
    ap.add_argument("--corrupt-modes", default=None, help="relay modes (quick bits-fixed,truncate; full magic,bits,bits-fixed,final,truncate)")
    ap.add_argument("--qmp-driver", action="store_true",
                    help="host-side QMP churn for every scenario (no guest agent; the pre-issue-10 trials)")
    ap.add_argument("--agent-storm", type=int, default=None,
                    help="boot-storm calls the guest agent makes at every boot (quick 2000, full 19500)")
    ap.add_argument("--agent-dirty-mb", type=int, default=4, help="MiB the agent guest rewrites per second")
    ap.add_argument("--mig-timeout", type=float, default=120, help="per-migration time bound, s")
    ap.add_argument("--cost-runs", type=int, default=None,
                    help="routing-cost: migrations with routing on and off each (full 7, else 2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--libvirt", action="store_true",
                    help="only the libvirt scenarios (two libvirtd, virsh; docs/LIBVIRT.md); --full runs them too")
    ap.add_argument("--lv-count", type=int, default=None,
                    help="virsh migrate --live per mode in lv-live (quick: 1 p2p; else 20 p2p + 20 managed = 10 round trips each)")
    ap.add_argument("--allow-stock", action="store_true",
                    help="run with a QEMU that lacks the object (plumbing only: ping-pong + peer without sevpeb)")
    ap.add_argument("--keep-work", action="store_true", help="keep serial/stderr logs of passing runs")
    args = ap.parse_args()

    full = args.full
    mode = "full" if full else ("only" if args.only else "quick")
    args.count = args.count or (10 if full else 2)
    args.peer_count = args.peer_count or (5 if full else 3)
    args.agent_storm = args.agent_storm if args.agent_storm is not None else (19500 if full else 2000)
    args.storm_calls = args.storm_calls if args.storm_calls is not None else (19000 if full else 2000)
    modes = (args.corrupt_modes or ("magic,bits,bits-fixed,final,truncate" if full or args.only
                                    else "bits-fixed,truncate")).split(",")
    todo = ALL if full else (args.only.split(",") if args.only else QUICK)
    if args.libvirt:
        todo = [s for s in todo if s in LIBVIRT] if (full or args.only) else list(LIBVIRT)
    bad = [s for s in todo if s not in ALL]
    if bad:
        ap.error(f"unknown scenario(s) {bad}; choose from {ALL}")
    if os.geteuid() != 0:
        ap.error("must run as root (network namespaces, apt-get)")

    # --- binaries --------------------------------------------------------
    env = read_env_file(args.env_file or os.path.join(cache_dir(), "current.env"))
    qemu = args.qemu or os.environ.get("QEMU") or env.get("QEMU")
    if not qemu or not os.access(qemu, os.X_OK):
        ap.error(f"no QEMU: pass --qemu or run scripts/build-qemu.sh (env file gave {qemu!r})")
    peb = qemu_has_sevpeb(qemu)
    if not peb and not args.qemu and not os.environ.get("QEMU"):
        # current.env may point at a stock (SEVPEB_LIB=no) build: take the newest linked one
        import glob
        for be in sorted(glob.glob(os.path.join(cache_dir(), "out", "*", "build.env")),
                         key=os.path.getmtime, reverse=True):
            e2 = read_env_file(be)
            if e2.get("SEVPEB_LINKED") == "1" and qemu_has_sevpeb(e2.get("QEMU", "")):
                log(f"{qemu} lacks the object; using the newest linked build {e2['QEMU']}", always=True)
                env, qemu, peb = e2, e2["QEMU"], True
                break
    if not peb and not args.allow_stock:
        ap.error(f"{qemu} has no sev-page-enc-bitmap object (stock build?). Build the patched QEMU "
                 f"(scripts/build-qemu.sh) or pass --allow-stock for a plumbing-only run")
    if not peb:
        todo = [s for s in todo if s in ("ping-pong", "peer")]
        log(f"WARNING: {qemu} lacks sev-page-enc-bitmap: plumbing-only run of {todo}", always=True)
    guest = assets.ensure_guest()
    agent = None
    if peb and not args.qmp_driver and any(s in GUEST_DRIVEN for s in todo):
        agent = assets.ensure_agent(guest)
    if args.fw_dirs:
        fw_dirs = args.fw_dirs.split(":")
    elif env.get("QEMU_FW_DIRS") and env.get("QEMU") == qemu:
        fw_dirs = env["QEMU_FW_DIRS"].split(":")
    else:
        fw_dirs = guest["fw_dirs"]
    peer_qemu = None
    if "peer" in todo:
        peer_qemu = args.peer_qemu or assets.ensure_peer()
    meta = {"mode": mode, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "qemu": qemu, "qemu_version": qemu_version(qemu), "sevpeb": peb,
            "peer_qemu": peer_qemu or "–", "peer_version": qemu_version(peer_qemu) if peer_qemu else "–",
            "guest": f"{os.path.basename(guest['kernel'])} + busybox initramfs", "fw_dirs": fw_dirs,
            "agent": (f"sevpeb_agent.ko for {agent['kver']} (key {agent['key']}), 4 vCPUs under MTTCG, "
                      f"{args.agent_storm}-call boot storm; guest-driven: "
                      f"{', '.join(s for s in todo if s in GUEST_DRIVEN)}") if agent else "none (QMP driver)",
            "host": f"{platform.node()} {platform.release()}, {os.cpu_count()} CPUs",
            "cmdline": "trials/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "args": {k: v for k, v in vars(args).items()}, "scenarios": todo}
    log(f"QEMU {meta['qemu_version']} ({qemu}), sevpeb object: {'yes' if peb else 'NO'}", always=True)
    if peer_qemu:
        log(f"peer {meta['peer_version']} ({peer_qemu})", always=True)
    log(f"scenarios: {', '.join(todo)}", always=True)

    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(args.out, "work")       # serial/stderr/relay logs of this run only
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    for f in os.listdir(args.out):          # no stale pictures from an earlier run
        if f.endswith(".png") or f in ("report.md", "results.json"):
            os.unlink(os.path.join(args.out, f))
    os.makedirs(work, exist_ok=True)
    hosts = Hosts()
    meta["ns"] = (hosts.ns["A"], hosts.ns["B"])
    leaks_before = leak_snapshot(qemu, peer_qemu, work=work)
    results = []
    lvctx = None
    try:
        hosts.create()
        ctx = scenarios.Ctx(args, qemu, peer_qemu, fw_dirs, guest, hosts, work, peb)
        ctx.agent = agent
        gd = guestdriven if agent else scenarios
        for i, key in enumerate(todo, 1):
            log(f"=== scenario {i}/{len(todo)}: {key} ===", always=True)
            t0 = time.monotonic()
            try:
                if key in LIBVIRT:
                    from sevtrials import libvirt as lv
                    if lvctx is None:
                        lv.ensure_libvirt()
                        meta["libvirt_version"] = lv.virsh_version()
                        lvctx = lv.LvCtx(args, qemu, fw_dirs, guest, hosts, work, peb)
                        lvctx.start()
                    if key == "lv-live":
                        quick = args.quick or (mode == "quick" and not args.libvirt)
                        n = args.lv_count or (1 if quick else 20)   # 20 = 10 round trips
                        r = lv.live(lvctx, n, ("p2p",) if quick else ("p2p", "managed"))
                    else:
                        r = lv.SCENARIOS[key](lvctx)
                elif key == "ping-pong":
                    r = gd.pingpong(ctx, args.count)
                elif key == "reboot":
                    r = gd.reboot(ctx)
                elif key == "hotplug":
                    r = gd.hotplug(ctx)
                elif key in ("cancel", "dest-killed"):
                    r = gd.interrupted(ctx, "cancel" if key == "cancel" else "kill")
                elif key == "corrupt":
                    r = gd.corrupt(ctx, modes)
                elif key == "not-ready":
                    r = scenarios.not_ready(ctx)
                elif key == "peer":
                    r = scenarios.peer(ctx, args.peer_count)
                elif key == "misroute-negative":
                    r = routing.negative(ctx)
                elif key == "postcopy":
                    r = routing.postcopy(ctx)
                elif key == "multifd":
                    r = routing.multifd(ctx)
                elif key == "routing-cost":
                    r = routing.cost(ctx, args.cost_runs or (7 if full else 2))
            except Exception as e:
                r = scenarios.Result(key, "(aborted)")
                r.error = f"{type(e).__name__}: {e}"
                log(f"scenario {key} aborted: {r.error}\n{traceback.format_exc()}", always=True)
            finally:
                ctx.cleanup()
            r.seconds = time.monotonic() - t0
            results.append(r)
            log(f"=== {key}: {'PASS' if r.passed else 'FAIL'} ({r.seconds:.0f} s) ===", always=True)
    except KeyboardInterrupt:
        log("interrupted", always=True)
    finally:
        try:
            ctx.cleanup()
        except Exception:
            pass
        if lvctx is not None:
            lvctx.stop()
            meta["libvirt_md"] = lv.markdown(lvctx, results)
        hosts.delete()

    leaks = leak_diff(leaks_before, leak_snapshot(qemu, peer_qemu, work=work))
    log(f"leak check: {leaks or 'no leaked network namespaces, QEMU processes or temp files'}", always=True)

    pics, why = report.pictures(results, args.out)
    if why:
        log(why, always=True)
    path = report.write_markdown(results, meta, args.out, pics)
    report.write_json(results, meta, args.out)
    print(report.text_summary(results, meta))
    print(f"report: {path}" + (f" (+ {len(pics)} pictures)" if pics else ""))
    npass = sum(r.passed for r in results)
    nfail = len(results) - npass + (1 if leaks else 0)
    if not peb:
        print("NOTE: QEMU under test has no sevpeb object; this was a plumbing run and counts as failed.")
        nfail += 1
    print(f"{npass} passed, {nfail} failed")
    return 1 if nfail or not results else 0


if __name__ == "__main__":
    sys.exit(main())
