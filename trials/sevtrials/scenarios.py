"""The trial scenarios. Each returns a Result with pass/fail checks and numbers."""
import json
import os
import re
import signal
import statistics
from collections import Counter
import subprocess
import sys
import time

from . import relay as relay_mod
from . import routing
from .churn import Churn, Model
from .hosts import VM
from .migrate import migrate, compare_state, check_model, check_alive
from .qmp import QMPError
from .util import log, wait_until

MiB = 1 << 20


class Result:
    def __init__(self, key, title):
        self.key, self.title = key, title
        self.checks = []          # (desc, ok, detail)
        self.numbers = {}
        self.migrations = []
        self.maps = {}            # label -> x-query snapshot (for pictures)
        self.error = None
        self.seconds = 0.0

    def check(self, desc, ok, detail=""):
        ok = bool(ok)
        self.checks.append((desc, ok, detail))
        log(f"  [{'ok' if ok else 'FAIL'}] {desc}{': ' + detail if detail else ''}", always=not ok)
        return ok

    @property
    def passed(self):
        return self.error is None and bool(self.checks) and all(ok for _, ok, _ in self.checks)


class Ctx:
    def __init__(self, args, qemu, peer_qemu, fw_dirs, guest, hosts, workdir, peb):
        self.args, self.qemu, self.peer_qemu = args, qemu, peer_qemu
        self.fw_dirs, self.guest, self.hosts, self.workdir = fw_dirs, guest, hosts, workdir
        self.peb = peb
        self.agent = None          # assets.ensure_agent(): set by run.py for guest-driven scenarios
        self.vms, self.relays = [], []
        self.n = 0
        self.port = 4400

    def boot(self, host, *, qemu=None, sevpeb=None, incoming=False, extra=(), tag="vm", wait_tick=2, agent=False):
        self.n += 1
        name = f"{tag}{self.n:02d}-{host}"
        vm = VM(name, qemu=qemu or self.qemu, fw_dirs=self.fw_dirs, guest=self.guest,
                workdir=self.workdir, ns=self.hosts.ns[host], host=host,
                sevpeb=self.peb if sevpeb is None else sevpeb, incoming=incoming, extra=extra,
                dirty_mb=self.args.agent_dirty_mb if agent else self.args.dirty_mb,
                agent=self.agent if agent else None, storm_calls=self.args.agent_storm)
        self.vms.append(vm)
        if not incoming and wait_tick:
            vm.wait_tick(wait_tick, timeout=120)
        return vm

    def uri(self, host):
        self.port += 1
        return f"tcp:{self.hosts.ip[host]}:{self.port}"

    def new_churn(self, model, vm, storm=0, region=None, seed_add=0):
        slots = vm.peb_query(max_ranges=1)["slots"]
        return Churn(model, slots, rate=self.args.churn_rate, seed=self.args.seed + seed_add,
                     storm_calls=storm, region=region, storm_rate=self.args.storm_rate)

    def start_relay(self, host, listen, connect, mode, log_path):
        args = ["ip", "netns", "exec", self.hosts.ns[host], sys.executable, relay_mod.__file__,
                "--listen", listen, "--connect", connect, "--mode", mode, "--log", log_path,
                "--timeout", "180"]
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(log_path + ".stderr", "w"),
                             start_new_session=True, text=True)
        self.relays.append(p)
        line = p.stdout.readline()   # "ready" once listening
        if "ready" not in line:
            raise RuntimeError(f"relay did not start: {open(log_path + '.stderr').read()[-500:]}")
        return p

    def cleanup(self):
        for vm in self.vms:
            vm.kill()
        for p in self.relays:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
        self.vms, self.relays = [], []

    def drop(self, vm):
        vm.quit()
        if vm in self.vms:
            self.vms.remove(vm)


def _summary(q):
    return f"digest {q['digest']}, {q['shared-pages']} shared pages in {len(q['shared-ranges'])} ranges"


def _completed(r, rec, what):
    ok = rec["status"] == "completed"
    detail = (f"{rec['total_ms']} ms total, {rec['downtime_ms']} ms downtime, "
              f"{(rec.get('ram_transferred') or 0) / MiB:.1f} MiB RAM, {rec.get('dirty_syncs')} dirty syncs"
              + (f", sevpeb {rec['peb_save'].get('iterations')} iterations / "
                 f"{rec['peb_save'].get('setup-bytes')}+{rec['peb_save'].get('iterate-bytes')}+"
                 f"{rec['peb_save'].get('complete-bytes')} B" if rec.get("peb_save") else "")
              + (f", {rec['churn_calls']} churn calls" if rec.get("churn_calls") else "")) if ok else \
        f"status {rec['status']}: {rec.get('error')}"
    r.check(what, ok, detail)
    if ok:
        routing.check(r, rec, what)
    return ok


def _wait_all_private(vm, timeout=10):
    return wait_until(lambda: (q := vm.peb_query()) and q["shared-pages"] == 0 and q,
                      timeout, 0.05, f"{vm.name}: all pages private")


def _reset_and_reboot(vm, t0):
    """system_reset, then wait until the guest's /init runs again (GUEST-UP on the serial).
    The firmware may reset the machine once more by itself (SeaBIOS does a hard reboot
    after a warm reset): the driver must only re-mark once the guest is up again.
    Returns ((ok, detail) all private, (ok, detail) rebooted)."""
    n0 = vm.serial_text().count("GUEST-UP")
    vm.qmp.events.clear()
    vm.qmp.cmd("system_reset")
    try:
        q = _wait_all_private(vm)
        t_priv = round(time.monotonic() - t0, 2)
    except TimeoutError as e:
        return (False, str(e)), (False, "not checked")
    try:
        wait_until(lambda: vm.serial_text().count("GUEST-UP") > n0, 40, 0.1, f"{vm.name}: guest up again")
        boot = (True, f"GUEST-UP after {round(time.monotonic() - t0, 2)} s")
    except TimeoutError as e:
        boot = (False, str(e))
    q2 = vm.peb_query()
    resets = [e.get("data", {}) for e in vm.qmp.events if e.get("event") == "RESET"]
    ok = q2["shared-pages"] == 0
    return (ok, f"0 shared pages {t_priv} s in; still {q2['shared-pages']} when the guest was up again; "
                f"{len(resets)} RESET events ("
                f"{', '.join(f'{n} {k}' for k, n in Counter(str(x.get('reason')) for x in resets).items())})"), boot


def _src_keeps_running(r, src, what):
    try:
        st = src.status()
    except Exception as e:
        return r.check(what, False, f"query-status: {e}")
    t0 = src.last_tick() or 0
    try:
        src.wait_tick(t0 + 1, timeout=15)
        return r.check(what, st == "running", f"status {st}, ticks {t0} -> {src.last_tick()}")
    except Exception as e:
        return r.check(what, False, f"status {st}, no new tick: {e}")


# ---------------------------------------------------------------------------
# (1) ping-pong

def pingpong(ctx, count):
    r = Result("ping-pong", f"{count} back-to-back migrations A->B->A... with churn throughout")
    src = ctx.boot("A", tag="pp")
    model = Model()
    churn = None
    if ctx.peb:
        q0 = src.peb_query()
        r.check("fresh guest: all pages private", q0["shared-pages"] == 0, _summary(q0))
        churn = ctx.new_churn(model, src, storm=ctx.args.storm_calls)
        churn.start(src)
        # the storm is a boot-time burst: let a third of it happen before the first
        # migration starts (bounded), the rest runs during the migrations
        t0 = time.monotonic()
        while time.monotonic() - t0 < 20 and (time.monotonic() - t0 < 1 or
                                              churn.storm_left > ctx.args.storm_calls * 2 // 3):
            time.sleep(0.2)
        r.maps["source before migration 1"] = src.peb_query()
    for i in range(1, count + 1):
        h = ctx.hosts.other(src.host)
        dst = ctx.boot(h, incoming=True, tag="pp")
        log(f"[ping-pong] migration {i}/{count}: {src.name} ({src.host}) -> {dst.name} ({h})"
            + (f"; {churn.calls} churn calls so far, storm left {churn.storm_left}" if churn else ""), always=True)
        rec = migrate(src, dst, ctx.uri(h), label=f"ping-pong {i}", churn=churn, pause=bool(churn),
                      bandwidth_mib=ctx.args.bandwidth, timeout=ctx.args.mig_timeout, peb=ctx.peb)
        if churn:
            churn.stop()
        r.migrations.append(rec)
        if not _completed(r, rec, f"migration {i}/{count} {src.host}->{h} completed"):
            break
        if ctx.peb:
            problems, qs, qd = compare_state(src, dst, model)
            rec["shared_pages"], rec["shared_ranges"] = qd["shared-pages"], len(qd["shared-ranges"])
            rec["memory_bytes"] = qd.get("memory-bytes")
            r.check(f"migration {i}: destination == source final == model", not problems,
                    "; ".join(problems) or _summary(qd))
            if i == count:
                r.maps[f"source final (switchover {i})"] = qs
                r.maps[f"destination after migration {i}"] = qd
        r.check(f"migration {i}: guest alive on destination", *check_alive(dst, src.last_tick()))
        ctx.drop(src)
        src = dst
        if churn and i < count:
            churn.start(src)
    if churn:
        r.check("every churn call accepted", not churn.errors, "; ".join(churn.errors[:3]))
        r.numbers.update(churn_calls=churn.calls, **{f"churn_{k}": v for k, v in churn.counts.items()},
                         storm_calls_not_made=churn.storm_left)
    ctx.drop(src)
    return r


# ---------------------------------------------------------------------------
# (2) reboot

def reboot(ctx):
    r = Result("reboot", "system_reset on the source mid-migration and on the destination after arrival")
    src = ctx.boot("A", tag="rb")
    model = Model()
    churn = ctx.new_churn(model, src, seed_add=2)
    churn.attach(src); churn.mark_boot(); churn.detach()
    r.check("guest marked its boot-time shared pages", check_model(src, model)[0] == [],
            f"{model.shared_pages()} shared pages")
    churn.start(src)
    dst = ctx.boot("B", incoming=True, tag="rb")
    done = {}

    def hook(st):
        if done or st["elapsed"] < 1.5 or st["status"] != "active":
            return
        done["at"] = round(st["elapsed"], 2)
        churn.stop()
        log(f"[reboot] system_reset on {src.name} mid-migration at {done['at']} s", always=True)
        # Hold the migration back while the guest reboots: at the slow bandwidth it could
        # converge during the wait, reach pre-switchover and stop the VM, and a stopped
        # guest never boots again (seen on a loaded machine).
        src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 * MiB, "downtime-limit": 1})
        done["private"], done["boot"] = _reset_and_reboot(src, st["t0"])
        churn.after_reset()
        churn.attach(src); churn.mark_boot(); churn.detach()     # the rebooted guest re-marks
        done["ev_mark"] = len(src.qmp.events)
        churn.start(src)
        # the reboot rewrites much of RAM: let the rest go at the normal bandwidth
        src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": int(ctx.args.bandwidth * MiB),
                                                 "downtime-limit": 300})

    rec = migrate(src, dst, ctx.uri("B"), label="reboot mid-migration", churn=churn, pause=True,
                  bandwidth_mib=ctx.args.slow_bandwidth, hook=hook, timeout=ctx.args.mig_timeout)
    churn.stop()
    r.migrations.append(rec)
    r.check("system_reset issued mid-migration", bool(done), f"at {done.get('at')} s" if done else "migration ended first")
    if done:
        r.check("source all private after the reset (until the rebooted guest marks again)", *done["private"])
        r.check("guest rebooted on the source mid-migration", *done["boot"])
    if _completed(r, rec, "migration with a reset in the middle completed"):
        problems, qs, qd = compare_state(src, dst)
        r.check("destination == source final (digest, counts, every shared range)", not problems,
                "; ".join(problems) or _summary(qd))
        src.qmp.cmd("query-status")        # collect pending events
        later = [e for e in src.qmp.events[done.get("ev_mark", 0):] if e.get("event") == "RESET"]
        problems, q = check_model(src, model)
        r.check("source == model (reset, then re-marked by the driver)", not problems,
                "; ".join(problems) + (f" — the guest reset itself {len(later)} more times after the re-mark "
                                       f"({later[-1]['data'].get('reason') if later else ''}); each cold reset "
                                       f"makes every page private, so the model is stale: see 'guest rebooted'"
                                       if problems and later else "") or _summary(q))
        r.check("guest alive on destination", *check_alive(dst, None, timeout=40, after_reset=True))
        ctx.drop(src)
        # reset after arrival, on the destination
        private, boot = _reset_and_reboot(dst, time.monotonic())
        r.check("destination all private after system_reset", *private)
        r.check("guest rebooted on destination", *boot)
        churn.after_reset()
        churn.attach(dst); churn.mark_boot(); churn.detach()
        time.sleep(1.0)
        problems, q = check_model(dst, model)
        r.check("destination re-marked by the driver == model", not problems, "; ".join(problems) or _summary(q))
    r.check("every churn call accepted", not churn.errors, "; ".join(churn.errors[:3]))
    return r


# ---------------------------------------------------------------------------
# (3) hotplug

DIMM_MB = 128


def hotplug(ctx):
    r = Result("hotplug", f"hot-plugged {DIMM_MB} MiB pc-dimm on the source, ranges marked in it, migrated")
    src = ctx.boot("A", tag="hp")
    n0 = len(src.peb_query(max_ranges=1)["slots"])
    src.qmp.cmd("object-add", **{"qom-type": "memory-backend-ram", "id": "mem1", "size": DIMM_MB * MiB})
    src.qmp.cmd("device_add", driver="pc-dimm", id="dimm1", memdev="mem1")
    addr = src.qmp.cmd("qom-get", path="/machine/peripheral/dimm1", property="addr")
    slots = src.peb_query(max_ranges=1)["slots"]
    dimm = [s for s in slots if s["base-gfn"] == addr >> 12]
    r.check("the DIMM appears as a new slot in the tracker", len(slots) == n0 + 1 and dimm,
            f"slots {n0} -> {len(slots)}, DIMM at {addr:#x}: {dimm}")
    model = Model()
    if dimm:
        d = (dimm[0]["base-gfn"], dimm[0]["npages"])
        c = Churn(model, [d], rate=ctx.args.churn_rate, seed=ctx.args.seed + 3)
        c.attach(src); c.mark_boot(singles=128); c.detach()
        r.check("ranges marked inside the DIMM", check_model(src, model)[0] == [],
                f"{model.shared_pages()} shared pages in the DIMM")
    churn = ctx.new_churn(model, src, seed_add=4)
    churn.start(src)
    dst = ctx.boot("B", incoming=True, tag="hp",
                   extra=["-object", f"memory-backend-ram,id=mem1,size={DIMM_MB}M",
                          "-device", "pc-dimm,id=dimm1,memdev=mem1"])
    rec = migrate(src, dst, ctx.uri("B"), label="hotplug", churn=churn, pause=True,
                  bandwidth_mib=ctx.args.bandwidth, timeout=ctx.args.mig_timeout)
    churn.stop()
    r.migrations.append(rec)
    if _completed(r, rec, "migration with the hot-plugged DIMM completed"):
        problems, qs, qd = compare_state(src, dst, model)
        r.check("destination == source final == model (DIMM included)", not problems,
                "; ".join(problems) or _summary(qd) + f", {len(qd['slots'])} slots")
        in_dimm = sum(min(x["gfn"] + x["npages"], addr // 4096 + DIMM_MB * 256) - max(x["gfn"], addr // 4096)
                      for x in qd["shared-ranges"]
                      if x["gfn"] < addr // 4096 + DIMM_MB * 256 and x["gfn"] + x["npages"] > addr // 4096)
        r.check("shared pages inside the DIMM arrived", in_dimm > 0, f"{in_dimm} shared pages in the DIMM")
        r.check("guest alive on destination", *check_alive(dst, src.last_tick()))
        r.maps["destination (DIMM hot-plugged on the source)"] = qd
    r.check("every churn call accepted", not churn.errors, "; ".join(churn.errors[:3]))
    return r


# ---------------------------------------------------------------------------
# (4) cancel and (5) destination killed

def interrupted(ctx, how):
    key = "cancel" if how == "cancel" else "dest-killed"
    title = ("migrate_cancel mid-way; source keeps running, state intact, second migration succeeds"
             if how == "cancel" else
             "destination QEMU SIGKILLed mid-stream; source keeps running, state intact, second migration succeeds")
    r = Result(key, title)
    src = ctx.boot("A", tag=key[:2])
    model = Model()
    churn = ctx.new_churn(model, src, seed_add=5 if how == "cancel" else 6)
    churn.attach(src); churn.mark_boot(); churn.detach()
    churn.start(src)
    dst = ctx.boot("B", incoming=True, tag=key[:2])
    done = {}

    def hook(st):
        if done or st["elapsed"] < 1.5 or st["status"] != "active":
            return
        ram = st["info"].get("ram", {})
        done["at"] = round(st["elapsed"], 2)
        done["ram"] = ram.get("transferred", 0)
        if how == "cancel":
            log(f"[{key}] migrate_cancel at {done['at']} s, {done['ram'] / MiB:.0f} MiB sent", always=True)
            src.qmp.cmd("migrate_cancel")
        else:
            log(f"[{key}] SIGKILL destination pid {dst.pid} at {done['at']} s, {done['ram'] / MiB:.0f} MiB sent",
                always=True)
            os.kill(dst.pid, signal.SIGKILL)

    rec = migrate(src, dst, ctx.uri("B"), label=f"{key} (interrupted)", churn=churn, pause=True,
                  bandwidth_mib=ctx.args.slow_bandwidth, hook=hook, timeout=ctx.args.mig_timeout)
    r.migrations.append(rec)
    want = "cancelled" if how == "cancel" else "failed"
    r.check(f"interrupted mid-way ({'migrate_cancel' if how == 'cancel' else 'kill -9 destination'})",
            bool(done), f"at {done.get('at')} s after {done.get('ram', 0) / MiB:.0f} MiB" if done else "never triggered")
    r.check(f"migration status {want}", rec["status"] == want, f"status {rec['status']}: {rec.get('error')}")
    time.sleep(1.0)                       # churn keeps going on the source for a while
    _src_keeps_running(r, src, "source keeps running (status running, ticks continue)")
    churn.stop()
    problems, q = check_model(src, model)
    r.check("source state intact (== model, churn applied throughout)", not problems,
            "; ".join(problems) or _summary(q))
    code = dst.wait_exit(15)
    r.numbers["first_destination_exit"] = code
    ctx.drop(dst)
    dst2 = ctx.boot("B", incoming=True, tag=key[:2])
    churn.start(src)
    rec2 = migrate(src, dst2, ctx.uri("B"), label=f"{key} (second)", churn=churn, pause=True,
                   bandwidth_mib=ctx.args.bandwidth, timeout=ctx.args.mig_timeout)
    churn.stop()
    r.migrations.append(rec2)
    if _completed(r, rec2, "second migration completed"):
        problems, qs, qd = compare_state(src, dst2, model)
        r.check("destination == source final == model", not problems, "; ".join(problems) or _summary(qd))
        r.check("guest alive on destination", *check_alive(dst2, src.last_tick()))
    r.check("every churn call accepted", not churn.errors, "; ".join(churn.errors[:3]))
    return r


# ---------------------------------------------------------------------------
# (6) corrupted stream

# what the destination's stderr must say: QEMU prints "sev-page-enc-bitmap: load: <why>"
CORRUPT_EXPECT = {
    "magic": r"sev-page-enc-bitmap: load: .*magic",
    "bits": r"sev-page-enc-bitmap: load: .*checksum",
    "bits-fixed": r"sev-page-enc-bitmap: load: .*(digest|counts)",
    "final": r"sev-page-enc-bitmap: load: .*digest",
    "truncate": r"sev-page-enc-bitmap: load: .*(I/O error|read callback|truncat|ENODATA)",
}


def relay_migration(ctx, r, src, dst, mode):
    """src -> the corrupting relay on host B (mode) -> dst, without pause-before-switchover;
    the record is appended to r.migrations. Returns (record, the relay's events)."""
    ctx.port += 2
    lport, dport = ctx.port - 1, ctx.port
    rlog = os.path.join(ctx.workdir, f"relay-{mode}-{dst.name}.jsonl")
    log(f"[corrupt] mode {mode}: {src.name} -> relay {ctx.hosts.ip['B']}:{lport} -> {dst.name} 127.0.0.1:{dport}",
        always=True)
    relay = ctx.start_relay("B", f"{ctx.hosts.ip['B']}:{lport}", f"127.0.0.1:{dport}", mode, rlog)
    rec = migrate(src, dst, f"tcp:{ctx.hosts.ip['B']}:{lport}", dst_uri=f"tcp:127.0.0.1:{dport}",
                  label=f"corrupt {mode}", pause=False, bandwidth_mib=ctx.args.bandwidth,
                  timeout=ctx.args.mig_timeout)
    rec["relay_mode"] = mode
    r.migrations.append(rec)
    try:
        relay.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.kill(relay.pid, signal.SIGKILL)
        relay.wait(timeout=10)
    events = [json.loads(l) for l in open(rlog)] if os.path.exists(rlog) else []
    return rec, events


def corrupt(ctx, modes):
    r = Result("corrupt", f"relay corrupts the sevpeb section ({', '.join(modes)}); destination refuses, "
                          f"source unaffected")
    st = {}
    details = []

    def new_source():
        st["src"] = ctx.boot("A", tag="cs")
        st["model"] = Model()
        st["churn"] = ctx.new_churn(st["model"], st["src"], seed_add=7 + len(details))
        c = st["churn"]
        c.attach(st["src"]); c.mark_boot(singles=256); c.detach()
    new_source()
    for mode in modes + ["none"]:
        src, model, churn = st["src"], st["model"], st["churn"]
        if src.status() != "running":
            r.check(f"{mode}: the source from the previous attempt is usable", False, f"status {src.status()}; "
                    f"booting a new source")
            ctx.drop(src)
            new_source()
            src, model, churn = st["src"], st["model"], st["churn"]
        # change the state a little between attempts, then keep it still during the
        # migration: a chunk re-sent by a later PART would legitimately heal a corruption
        churn.attach(src)
        for _ in range(50):
            churn.step()
        churn.detach()
        dst = ctx.boot("B", incoming=True, tag="cs")
        rec, events = relay_migration(ctx, r, src, dst, mode)
        secs = [e for e in events if e["ev"] == "section"]
        hits = [e for e in events if e["ev"] in ("corrupt", "truncate")]
        r.check(f"{mode}: relay found the sevpeb section in the stream",
                any(e["type"] == "START" for e in secs),
                ", ".join(f"{e['type']}@{e['stream_off']}({e['payload_len']} B)" for e in secs[:4])
                + (f" ... {len(secs)} sections" if len(secs) > 4 else ""))
        if mode == "none":
            if _completed(r, rec, "clean migration through the relay (no corruption) completed"):
                problems, qs, qd = compare_state(src, dst, model)
                r.check("clean: destination == source == model", not problems, "; ".join(problems) or _summary(qd))
                r.check("clean: relay saw START, PART and END sections with valid checks",
                        {"START", "END"} <= {e["type"] for e in secs},
                        f"{sum(e['type'] == 'PART' for e in secs)} PART sections")
                r.check("clean: guest alive on destination", *check_alive(dst, src.last_tick()))
            break
        r.check(f"{mode}: relay corrupted the section", bool(hits),
                "; ".join(f"{e.get('what', 'truncate')} at stream offset {e['stream_off']}" for e in hits))
        r.check(f"{mode}: migration failed on the source", rec["status"] == "failed",
                f"status {rec['status']}: {rec.get('error')}")
        code = dst.wait_exit(20)
        err = dst.stderr_text()
        lines = err.splitlines()
        hit = next((l for l in lines if re.search(CORRUPT_EXPECT[mode], l, re.I)), None)
        shown = hit or next((l for l in lines if "sev-page-enc-bitmap" in l), None) or (lines[-1] if lines else "")
        if code is None and rec["status"] == "completed":
            problems, qs, qd = compare_state(src, dst, model)
            shown = "destination ACCEPTED the corrupted stream; " + (
                "its state equals the source's" if not problems else "; ".join(problems))
        r.check(f"{mode}: destination refused with the named error", code not in (None, 0) and hit,
                f"exit {code}; stderr: {shown.strip()[:300]}")
        details.append({"mode": mode, "dst_exit": code, "dst_error": shown.strip()[:300],
                        "src_error": rec.get("error")})
        _src_keeps_running(r, src, f"{mode}: source keeps running")
        problems, q = check_model(src, model)
        r.check(f"{mode}: source state intact", not problems, "; ".join(problems) or _summary(q))
        ctx.drop(dst)
    r.numbers["refusals"] = details
    r.check("every churn call accepted", not st["churn"].errors, "; ".join(st["churn"].errors[:3]))
    return r


# ---------------------------------------------------------------------------
# (7) guest not ready

def not_ready(ctx):
    r = Result("not-ready", "migration-control bit 0 clear + require-migration-ready on: migrate refused")
    src = ctx.boot("A", tag="nr")
    src.peb_set_prop("migration-control", 0)
    src.peb_set_prop("require-migration-ready", True)
    r.check("properties set", src.peb_get_prop("require-migration-ready") is True
            and src.peb_get_prop("migration-control") == 0,
            f"require-migration-ready={src.peb_get_prop('require-migration-ready')}, "
            f"migration-control={src.peb_get_prop('migration-control')}")
    dst = ctx.boot("B", incoming=True, tag="nr")
    rec = migrate(src, dst, ctx.uri("B"), label="not ready", pause=False, bandwidth_mib=ctx.args.bandwidth,
                  timeout=60)
    r.migrations.append(rec)
    err = rec.get("error") or ""
    r.check("migration refused", rec["status"] in ("refused", "failed"), f"status {rec['status']}")
    r.check("with a clear reason", re.search(r"ready|migration.control", err, re.I), f"reason: {err}")
    _src_keeps_running(r, src, "source keeps running")
    ctx.drop(dst)
    # the guest declares itself ready: now it may migrate, and the value travels
    model = Model()
    churn = ctx.new_churn(model, src, seed_add=8)
    churn.attach(src); churn.mark_boot(); churn.detach()
    src.peb_set_prop("migration-control", 1)
    dst = ctx.boot("B", incoming=True, tag="nr")
    rec2 = migrate(src, dst, ctx.uri("B"), label="ready", pause=False, bandwidth_mib=ctx.args.bandwidth,
                   timeout=ctx.args.mig_timeout)
    r.migrations.append(rec2)
    if _completed(r, rec2, "after setting bit 0 the migration completes"):
        problems, qs, qd = compare_state(src, dst, model)
        r.check("destination == source, migration-control carried", not problems and
                qd.get("migration-control") == 1 and qd.get("migration-ready") is True,
                "; ".join(problems) or f"migration-control {qd.get('migration-control')}, "
                                       f"migration-ready {qd.get('migration-ready')}")
    return r


# ---------------------------------------------------------------------------
# (8) peer: with vs without sevpeb

def peer(ctx, count):
    r = Result("peer", f"same guest, {count} migrations each: patched QEMU with sevpeb vs stock QEMU 10.0 (no object)")
    sides = [("sevpeb" if ctx.peb else "under-test", ctx.qemu, ctx.peb), ("stock", ctx.peer_qemu, False)]
    per = {}
    for side, qemu, peb in sides:
        src = ctx.boot("A", qemu=qemu, sevpeb=peb, tag="sv" if peb else "st")
        model = churn = None
        if peb:
            model = Model()
            churn = ctx.new_churn(model, src, seed_add=9)
            churn.attach(src); churn.mark_boot(); churn.detach()
        recs = []
        for i in range(1, count + 1):
            h = ctx.hosts.other(src.host)
            dst = ctx.boot(h, qemu=qemu, sevpeb=peb, incoming=True, tag="sv" if peb else "st")
            log(f"[peer] {side} migration {i}/{count}: {src.name} -> {dst.name}", always=True)
            if churn:
                churn.start(src)

            def hook(st):
                # churn only early in the first RAM pass (no pause-before-switchover here, so
                # that both sides are timed alike): a set after the switchover would reach
                # the source only
                if churn and churn.running() and st["elapsed"] >= 0.5:
                    churn.stop()
            rec = migrate(src, dst, ctx.uri(h), label=f"{side} {i}", churn=churn, pause=False, peb=peb,
                          bandwidth_mib=ctx.args.bandwidth, hook=hook, timeout=ctx.args.mig_timeout)
            if churn:
                churn.stop()
            rec["side"] = side
            recs.append(rec)
            r.migrations.append(rec)
            if not _completed(r, rec, f"{side} migration {i} completed"):
                break
            if peb:
                problems, qs, qd = compare_state(src, dst, model)
                r.check(f"{side} {i}: destination == source == model", not problems,
                        "; ".join(problems) or _summary(qd))
            r.check(f"{side} {i}: guest alive on destination", *check_alive(dst, src.last_tick()))
            ctx.drop(src)
            src = dst
        ctx.drop(src)
        done = [x for x in recs if x["status"] == "completed"]
        if done:
            per[side] = {k: statistics.median([x[k] for x in done]) for k in ("total_ms", "downtime_ms")}
            per[side]["ram_mib"] = statistics.median([x["ram_transferred"] / MiB for x in done])
            per[side]["n"] = len(done)
    r.numbers["per_side"] = per
    if ctx.agent:
        # the guest agent cannot drive the stock side: without the object QEMU offers no KVM
        # signature under TCG (and VMMCALL stays #UD), and the agent checks CPUID first
        vm = ctx.boot("A", qemu=ctx.peer_qemu, sevpeb=False, tag="sa", wait_tick=0, agent=True)
        try:
            wait_until(lambda: "AGENT-" in vm.serial_text() or not vm.alive(), 120, 0.2,
                       f"{vm.name}: agent loaded or refused")
            t = vm.serial_text()
            line = next((l for l in t.splitlines() if l.startswith("AGENT-")), "")
        except TimeoutError as e:
            line = str(e)
        r.check("stock QEMU: the guest agent refuses to load (CPUID 0x40000001 lacks bits 16/17), "
                "so this scenario keeps the QMP driver", line.startswith("AGENT-FAILED") and "NO-FEATURES" in line,
                line.strip()[:200])
        ctx.drop(vm)
    if sides[0][0] in per and "stock" in per:
        a, b = per[sides[0][0]], per["stock"]
        r.numbers["ratio_total"] = a["total_ms"] / max(b["total_ms"], 1)
        r.numbers["ratio_downtime"] = a["downtime_ms"] / max(b["downtime_ms"], 1)
        log(f"[peer] median total {a['total_ms']:.0f} vs {b['total_ms']:.0f} ms, "
            f"downtime {a['downtime_ms']:.0f} vs {b['downtime_ms']:.0f} ms", always=True)
    return r
