"""Guest-driven scenarios: the page state comes from the guest agent (trials/agent), which
makes KVM_HC_MAP_GPA_RANGE hypercalls on 4 vCPUs under MTTCG (QEMU patch 0014). The
harness never sets page state here; after every migration it compares the guest's own
record (debugfs, read over ttyS1) with the destination's tracker and has the guest verify
the checksums of every page it wrote. See docs/TRIALS.md "Guest-driven page state"."""
import os
import re
import signal
import time

from .churn import normalize, diff_ranges
from .hosts import PEB_PATH
from .migrate import migrate, check_alive, compare_state
from .scenarios import relay_migration, Result, _completed, _src_keeps_running, _wait_all_private, CORRUPT_EXPECT, MiB
from .util import log, wait_until

DIMM_MB = 128

# The guest's layout puts two shared runs close together in one chunk, so the relay's
# flip of a RUNS run-length bit makes the runs touch: the destination then refuses on
# the record's structure before any checksum or digest (named error all the same).
GUEST_CORRUPT_EXPECT = dict(CORRUPT_EXPECT)
for _m in ("bits", "bits-fixed"):
    GUEST_CORRUPT_EXPECT[_m] = CORRUPT_EXPECT[_m] + r"|sev-page-enc-bitmap: load: malformed stream record: RUNS"


# -- the guest side -------------------------------------------------------------

def boot(ctx, host, *, incoming=False, tag="g", extra=()):
    vm = ctx.boot(host, incoming=incoming, tag=tag, extra=extra, wait_tick=0, agent=True)
    if not incoming:
        wait_ready(vm, 1)
    return vm


def wait_ready(vm, n, timeout=None):
    """Wait until the n-th AGENT-READY (one per boot) on the serial; returns seconds since start."""
    timeout = timeout or 240
    t0 = time.monotonic()

    def ready():
        t = vm.serial_text()
        if "AGENT-FAILED" in t:
            raise RuntimeError(f"{vm.name}: the agent did not load: "
                               f"{t[t.index('AGENT-FAILED'):].splitlines()[0]}")
        if not vm.alive():
            raise RuntimeError(f"{vm.name} exited: {vm.stderr_tail()}")
        return t.count("AGENT-CHANNEL") >= n     # printed once ttyS1 is open, after AGENT-READY
    wait_until(ready, timeout, 0.2, f"{vm.name}: agent ready (boot {n})")
    return time.monotonic() - t0


def stats(vm):
    rc, lines = vm.chan().req("stats", timeout=30)
    w = " ".join(lines).split()
    return {w[i]: int(w[i + 1]) for i in range(0, len(w) - 1, 2) if w[i + 1].lstrip("-").isdigit()}


def ctl(vm, what, timeout=30):
    rc, lines = vm.chan().req(f"ctl {what}", timeout=timeout)
    if rc != 0:
        raise RuntimeError(f"{vm.name}: agent ctl {what!r} failed (rc {rc}): {' '.join(lines)[:200]}")
    return lines


def record(vm):
    rc, lines = vm.chan().req("record", timeout=60)
    runs = [tuple(int(x) for x in l.split()[:2]) for l in lines if re.match(r"^\d+ \d+$", l)]
    return normalize(runs)


def hcounts(vm):
    q = vm.peb_query(max_ranges=1)
    return list(q.get("hypercalls", [])), q.get("hypercalls-in-flight-max", 0)


def compare(r, vm, label, *, verify=True, keep_paused=False):
    """Pause the churn, compare the guest's record with vm's tracker, verify every written
    page's checksum, resume. Adds checks to r and returns a summary dict."""
    ctl(vm, "pause")
    before = stats(vm)
    rec = record(vm)
    q = vm.peb_query()
    host = normalize(q["shared-ranges"])
    gpages = sum(b - a for a, b in rec)
    out = {"label": label, "guest_runs": len(rec), "guest_pages": gpages, "host_pages": q["shared-pages"],
           "equal": rec == host and gpages == q["shared-pages"], "calls": before.get("calls"),
           "errors": before.get("errors"), "migration_control": q.get("migration-control")}
    r.check(f"{label}: guest record == {vm.name} tracker", out["equal"],
            f"{len(rec)} runs / {gpages} pages both" if out["equal"] else
            f"guest {gpages} pages in {len(rec)} runs, host {q['shared-pages']} pages: {diff_ranges(rec, host)}")
    if verify:
        ctl(vm, "verify", timeout=60)
        after = stats(vm)
        out["verified"] = after.get("verified", 0) - before.get("verified", 0)
        out["crc_fail"] = after.get("crc_fail", 0) - before.get("crc_fail", 0)
        r.check(f"{label}: guest verified the checksums of every page it wrote",
                out["verified"] > 0 and out["crc_fail"] == 0,
                f"{out['verified']} pages verified, {out['crc_fail']} mismatches")
    r.check(f"{label}: every hypercall of the guest succeeded", before.get("errors") == 0,
            f"{before.get('calls')} calls, {before.get('errors')} errors")
    if not keep_paused:
        ctl(vm, "resume")
    return out


def gmigrate(ctx, r, src, dst, uri, *, label, bandwidth=None, hook=None, timeout=None, check=True,
             transit_negative=False, **kw):
    """One migration with the guest churning on every vCPU: per-vCPU hypercall counts at
    start, at the switchover (source stopped, destination not yet running) and after;
    then the guest-vs-destination comparison and the checksum verification."""
    # the same rate over 1 s just before, for comparison
    cb, tb = hcounts(src)[0], time.monotonic()
    time.sleep(1.0)
    c0, _ = hcounts(src)
    t0 = time.monotonic()
    before = [round((b - a) / (t0 - tb), 1) for a, b in zip(cb, c0)]
    sw = {}

    def at_switchover(st):
        sw["t"] = time.monotonic()
        sw["src"], _ = hcounts(src)
        if dst is not None:
            sw["dst"], _ = hcounts(dst)
            # Hold the destination after the load (QEMU's `stop` on an incoming VM turns
            # autostart off), so its tracker can be compared with the stopped source's
            # before any vCPU of the destination runs: the transit check, exact.
            try:
                dst.qmp.cmd("stop")
                sw["held"] = True
            except Exception:
                sw["held"] = False
    rec = migrate(src, dst, uri, label=label, pause=True, bandwidth_mib=bandwidth or ctx.args.bandwidth,
                  hook=hook, timeout=timeout or ctx.args.mig_timeout, at_switchover=at_switchover, **kw)
    try:
        c1, inf_s = hcounts(src)
    except Exception:
        c1, inf_s = None, None
    g = {"vcpus": len(c0), "rate_before_per_vcpu": before}
    if sw and c1 is not None:
        dt = sw["t"] - t0
        per = [b - a for a, b in zip(c0, sw["src"])]
        g.update(calls_per_vcpu=per, seconds=round(dt, 2),
                 rate_per_vcpu=[round(x / dt, 1) for x in per] if dt > 0 else None,
                 downtime_calls_src=sum(b - a for a, b in zip(sw["src"], c1)),
                 downtime_calls_dst=sum(sw.get("dst") or []))
        g["downtime_calls"] = g["downtime_calls_src"] + g["downtime_calls_dst"]
    elif c1 is not None:
        # no switchover (cancelled, failed): the rate from migrate to the end
        dt = time.monotonic() - t0
        per = [b - a for a, b in zip(c0, c1)]
        g.update(calls_per_vcpu=per, seconds=round(dt, 2), rate_until="end",
                 rate_per_vcpu=[round(x / dt, 1) for x in per] if dt > 0 else None)
    if dst is not None and dst.alive():
        try:
            g["inflight_max"] = max(inf_s or 0, hcounts(dst)[1])
        except Exception:
            pass
    rec["guest"] = g
    if rec["status"] == "completed" and sw.get("held"):
        try:
            wait_until(lambda: dst.status() == "paused", 60, what=f"{dst.name} loaded and held")
            if transit_negative:
                _transit_negative_control(r, src, dst)
            problems, qs, qd = compare_state(src, dst)
            detail = "; ".join(problems) or (f"digest {qd['digest']}, {qd['shared-pages']} shared pages "
                                             f"in {len(qd['shared-ranges'])} ranges")
        except Exception as e:
            problems, detail = [str(e)], f"{type(e).__name__}: {e}"
        g["transit_equal"] = not problems
        r.check(f"{label}: destination == stopped source before the destination runs "
                "(digest, pages, shared ranges, slots, migration control)", not problems, detail)
        dst.qmp.cmd("cont")
    if rec["status"] == "completed":
        if "downtime_calls" in g:
            r.check(f"{label}: 0 hypercalls in the downtime window", g["downtime_calls"] == 0,
                    f"source {g['downtime_calls_src']} between stop and end, destination "
                    f"{g['downtime_calls_dst']} before resume; during migration "
                    f"{'/'.join(str(x) for x in g['rate_per_vcpu'])} calls/s per vCPU over {g['seconds']} s")
        if check:
            g["compare"] = compare(r, dst, f"{label} (destination)")
    return rec


def _transit_negative_control(r, src, dst):
    """The transit check must be able to fail: one page of the held destination flipped
    (then flipped back) is reported by compare_state."""
    q = dst.peb_query(max_ranges=1)
    slot = max(q["slots"], key=lambda s: s["npages"])
    gfn = slot["base-gfn"] + slot["npages"] // 2
    before = dst.qmp.cmd("x-query-sev-page-enc-bitmap", **{"max-ranges": 1})["digest"]
    # the page's state: shared if it lies in one of the destination's shared ranges
    shared = any(a <= gfn < b for a, b in normalize(dst.peb_query()["shared-ranges"]))
    dst.qmp.cmd("x-sev-page-enc-bitmap-set", gpa=gfn << 12, npages=1, encrypted=shared)
    flipped, _, _ = compare_state(src, dst)
    dst.qmp.cmd("x-sev-page-enc-bitmap-set", gpa=gfn << 12, npages=1, encrypted=not shared)
    after = dst.qmp.cmd("x-query-sev-page-enc-bitmap", **{"max-ranges": 1})["digest"]
    r.check("negative control: one page flipped on the held destination is reported by the transit check",
            bool(flipped) and before == after,
            f"gfn {gfn:#x}: {'; '.join(flipped)[:200]}; flipped back: digest "
            f"{'restored' if before == after else 'NOT restored'}")


def _peb_prop(vm, prop):
    return vm.qmp.cmd("qom-get", path=PEB_PATH, property=prop)


def boot_checks(r, vm, label="boot"):
    s = stats(vm)
    r.numbers.setdefault("boot_calls", s.get("calls"))
    r.check(f"{label}: agent loaded on {vm.name}, boot pattern + storm made its calls",
            s.get("calls", 0) > ctx_storm(vm) and s.get("errors") == 0,
            f"{s.get('calls')} calls, {s.get('errors')} errors; MIGRATION_CONTROL "
            f"{_peb_prop(vm, 'migration-control')}")


def ctx_storm(vm):
    m = re.search(r"storm_calls=(\d+)", vm.serial_text())
    return int(m.group(1)) if m else 0


def malformed(r, vm):
    """Malformed calls from ring 0 and one from ring 3: each gets its documented error and
    nothing changes (the tracker's digest and the guest's record are the same after)."""
    ctl(vm, "pause")
    d0, rec0 = vm.peb_query()["digest"], record(vm)
    ctl(vm, "bad")
    rc, lines = vm.chan().req("bad")
    res = [l.split() for l in lines if len(l.split()) == 3]
    rc3, l3 = vm.chan().req("cpl3")
    cpl3 = next((l for l in l3 if "CPL3-CALL" in l), "")
    d1, rec1 = vm.peb_query()["digest"], record(vm)
    ctl(vm, "resume")
    ok = res and all(a == b for _, a, b in res)
    r.numbers["malformed"] = {n: int(a) for n, a, _ in res}
    r.numbers["cpl3"] = cpl3.split("=")[-1].strip() if cpl3 else None
    r.check("malformed calls from ring 0 get the documented errors", ok,
            ", ".join(f"{n} -> {a}" + ("" if a == b else f" (want {b})") for n, a, b in res) or "no results")
    r.check("a call from ring 3 gets -KVM_EPERM (-1)", rc3 == 0 and cpl3, cpl3 or f"cpl3call rc {rc3}: {l3}")
    r.check("nothing changed by the refused calls (tracker digest, guest record)", d0 == d1 and rec0 == rec1,
            f"digest {d0} -> {d1}, record {'same' if rec0 == rec1 else 'changed'}")


def negative_control(r, vm):
    """The comparison must be able to fail: a host-side set the guest never declared."""
    ctl(vm, "pause")
    rec = record(vm)
    q = vm.peb_query(max_ranges=1)
    slot = max(q["slots"], key=lambda s: s["npages"])
    gfn = next(g for g in range(slot["base-gfn"] + slot["npages"] // 2, slot["base-gfn"] + slot["npages"])
               if not any(a <= g < b for a, b in rec))
    vm.qmp.cmd("x-sev-page-enc-bitmap-set", gpa=gfn << 12, npages=1, encrypted=False)
    host = normalize(vm.peb_query()["shared-ranges"])
    vm.qmp.cmd("x-sev-page-enc-bitmap-set", gpa=gfn << 12, npages=1, encrypted=True)
    host2 = normalize(vm.peb_query()["shared-ranges"])
    ctl(vm, "resume")
    r.check("negative control: a host-side set of a page the guest never declared is detected",
            host != rec and host2 == rec, f"gfn {gfn:#x}: {diff_ranges(rec, host)}; undone: "
                                          f"{'equal again' if host2 == rec else 'STILL DIFFERENT'}")


# -- scenarios --------------------------------------------------------------------

def pingpong(ctx, count):
    r = Result("ping-pong", f"{count} back-to-back migrations A->B->A..., the guest agent churning on 4 vCPUs")
    t0 = time.monotonic()
    src = boot(ctx, "A", tag="pp")
    r.numbers["boot_to_ready_s"] = round(time.monotonic() - t0, 1)
    boot_checks(r, src)
    r.numbers["boot_compare"] = compare(r, src, "after boot (source)", keep_paused=True)
    r.maps["source after boot (guest-driven, churn paused)"] = src.peb_query()
    ctl(src, "resume")
    malformed(r, src)
    for i in range(1, count + 1):
        h = ctx.hosts.other(src.host)
        dst = boot(ctx, h, incoming=True, tag="pp")
        log(f"[ping-pong] guest-driven migration {i}/{count}: {src.name} -> {dst.name}", always=True)
        rec = gmigrate(ctx, r, src, dst, ctx.uri(h), label=f"migration {i}/{count}", transit_negative=i == 1)
        r.migrations.append(rec)
        if not _completed(r, rec, f"migration {i}/{count} {src.host}->{h} completed"):
            break
        q = dst.peb_query()
        rec["shared_pages"], rec["shared_ranges"] = q["shared-pages"], len(q["shared-ranges"])
        if i == 1:
            negative_control(r, dst)
        if i == count:
            ctl(dst, "pause")
            r.maps[f"destination after migration {i} (guest-driven, churn paused)"] = dst.peb_query()
            ctl(dst, "resume")
        r.check(f"migration {i}: guest alive on destination", *check_alive(dst, src.last_tick()))
        ctx.drop(src)
        src = dst
    ctx.drop(src)
    return r


def reboot(ctx):
    r = Result("reboot", "the guest reboots itself mid-migration (MIGRATION_CONTROL cleared first) and "
                         "re-marks; then again on the destination")
    src = boot(ctx, "A", tag="rb")
    boot_checks(r, src)
    dst = boot(ctx, "B", incoming=True, tag="rb")
    done = {}

    def guest_reboot(vm, t0):
        """Requested reboot: the agent clears MIGRATION_CONTROL, the guest reboots, the
        tracker resets to all private, the rebooted guest's agent marks again."""
        n = vm.serial_text().count("AGENT-CHANNEL")
        rc, lines = vm.chan().req("reboot")
        mc = _peb_prop(vm, "migration-control")
        try:
            _wait_all_private(vm, timeout=30)
            priv = (True, f"all private {time.monotonic() - t0:.1f} s in")
        except TimeoutError as e:
            priv = (False, str(e))
        try:
            s = wait_ready(vm, n + 1, timeout=240)
            up = (True, f"agent ready again after {s:.1f} s; MIGRATION_CONTROL "
                        f"{_peb_prop(vm, 'migration-control')}")
        except (TimeoutError, RuntimeError) as e:
            up = (False, str(e))
        return (mc == 0, f"MIGRATION_CONTROL {mc} after the request (REBOOTING: {'REBOOTING' in lines})"), priv, up

    def hook(st):
        if done or st["elapsed"] < 1.5 or st["status"] != "active":
            return
        done["at"] = round(st["elapsed"], 2)
        log(f"[reboot] guest reboots itself mid-migration at {done['at']} s", always=True)
        # hold the migration back while the guest reboots (it must not converge meanwhile)
        src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 * MiB, "downtime-limit": 1})
        done["mc"], done["private"], done["up"] = guest_reboot(src, st["t0"])
        src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": int(ctx.args.bandwidth * MiB),
                                                 "downtime-limit": 300})

    rec = gmigrate(ctx, r, src, dst, ctx.uri("B"), label="reboot mid-migration", bandwidth=ctx.args.slow_bandwidth,
                   hook=hook, timeout=ctx.args.mig_timeout + 300)
    r.migrations.append(rec)
    r.check("guest reboot requested mid-migration", bool(done), f"at {done.get('at')} s" if done else "migration ended first")
    if done:
        r.check("MIGRATION_CONTROL cleared before the requested reboot", *done["mc"])
        r.check("source all private after the reset", *done["private"])
        r.check("guest came back and re-marked (agent ready again)", *done["up"])
    if _completed(r, rec, "migration with a guest reboot in the middle completed"):
        r.check("guest alive on destination", *check_alive(dst, None, timeout=40, after_reset=True))
        ctx.drop(src)
        mc, priv, up = guest_reboot(dst, time.monotonic())
        r.check("destination: MIGRATION_CONTROL cleared before the requested reboot", *mc)
        r.check("destination all private after the reset", *priv)
        r.check("destination: guest came back and re-marked", *up)
        if up[0]:
            r.numbers["after_reboot"] = compare(r, dst, "after the reboot on the destination")
    return r


def hotplug(ctx):
    r = Result("hotplug", f"{DIMM_MB} MiB pc-dimm hot-plugged on the source; the guest onlines it and marks "
                          f"pages inside it; migrated")
    src = boot(ctx, "A", tag="hp")
    n0 = len(src.peb_query(max_ranges=1)["slots"])
    src.qmp.cmd("object-add", **{"qom-type": "memory-backend-ram", "id": "mem1", "size": DIMM_MB * MiB})
    src.qmp.cmd("device_add", driver="pc-dimm", id="dimm1", memdev="mem1")
    addr = src.qmp.cmd("qom-get", path="/machine/peripheral/dimm1", property="addr")
    slots = src.peb_query(max_ranges=1)["slots"]
    r.check("the DIMM appears as a new slot in the tracker", len(slots) == n0 + 1,
            f"slots {n0} -> {len(slots)}, DIMM at {addr:#x}")
    # the guest onlines the new memory block(s) (ACPI hotplug) and marks inside it
    lines = []
    for _ in range(20):
        rc, lines = src.chan().req("online")
        if any(l.startswith("ONLINE") for l in lines):
            break
        time.sleep(1)
    onl = [l for l in lines if l.startswith("ONLINE")]
    r.check("the guest onlined the DIMM's memory", bool(onl), "; ".join(lines)[:200])
    gfn, npages = addr >> 12, DIMM_MB * 256
    step = 64
    try:
        ctl(src, f"mark {gfn} {npages} {step}")
        marked = True
    except RuntimeError as e:
        marked = str(e)
    q = src.peb_query()
    in_dimm = sum(min(b, gfn + npages) - max(a, gfn) for a, b in normalize(q["shared-ranges"])
                  if a < gfn + npages and b > gfn)
    r.check("the guest marked pages inside the DIMM", marked is True and in_dimm == npages // step,
            f"{in_dimm} shared pages in the DIMM (every {step}th page)" if marked is True else marked)
    dst = boot(ctx, "B", incoming=True, tag="hp",
               extra=["-object", f"memory-backend-ram,id=mem1,size={DIMM_MB}M",
                      "-device", "pc-dimm,id=dimm1,memdev=mem1"])
    rec = gmigrate(ctx, r, src, dst, ctx.uri("B"), label="hotplug")
    r.migrations.append(rec)
    if _completed(r, rec, "migration with the hot-plugged DIMM completed"):
        qd = dst.peb_query()
        in_dimm = sum(min(b, gfn + npages) - max(a, gfn) for a, b in normalize(qd["shared-ranges"])
                      if a < gfn + npages and b > gfn)
        r.check("shared pages inside the DIMM arrived", in_dimm == npages // step,
                f"{in_dimm} shared pages in the DIMM, {len(qd['slots'])} slots")
        r.check("guest alive on destination", *check_alive(dst, src.last_tick()))
        r.maps["destination (DIMM hot-plugged, marked by the guest)"] = qd
    return r


def interrupted(ctx, how):
    key = "cancel" if how == "cancel" else "dest-killed"
    r = Result(key, ("migrate_cancel mid-way" if how == "cancel" else "destination QEMU SIGKILLed mid-stream")
               + "; the guest keeps churning, source state == guest record, second migration succeeds")
    src = boot(ctx, "A", tag=key[:2])
    dst = boot(ctx, "B", incoming=True, tag=key[:2])
    done = {}

    def hook(st):
        if done or st["elapsed"] < 1.5 or st["status"] != "active":
            return
        done["at"] = round(st["elapsed"], 2)
        done["ram"] = st["info"].get("ram", {}).get("transferred", 0)
        if how == "cancel":
            src.qmp.cmd("migrate_cancel")
        else:
            os.kill(dst.pid, signal.SIGKILL)
        log(f"[{key}] {'cancel' if how == 'cancel' else 'SIGKILL destination'} at {done['at']} s", always=True)

    s0 = stats(src)
    rec = gmigrate(ctx, r, src, dst, ctx.uri("B"), label=f"{key} (interrupted)",
                   bandwidth=ctx.args.slow_bandwidth, hook=hook, check=False)
    r.migrations.append(rec)
    want = "cancelled" if how == "cancel" else "failed"
    r.check("interrupted mid-way", bool(done), f"at {done.get('at')} s after {done.get('ram', 0) / MiB:.0f} MiB"
            if done else "never triggered")
    r.check(f"migration status {want}", rec["status"] == want, f"status {rec['status']}: {rec.get('error')}")
    time.sleep(2.0)
    _src_keeps_running(r, src, "source keeps running")
    s1 = stats(src)
    r.check("the guest kept making hypercalls on the source", s1["calls"] > s0["calls"] and s1["errors"] == 0,
            f"{s1['calls'] - s0['calls']} calls since the migration began, {s1['errors']} errors")
    rec["guest"]["compare"] = compare(r, src, "after the interruption (source)")
    dst.wait_exit(15)
    ctx.drop(dst)
    dst2 = boot(ctx, "B", incoming=True, tag=key[:2])
    rec2 = gmigrate(ctx, r, src, dst2, ctx.uri("B"), label=f"{key} (second)")
    r.migrations.append(rec2)
    if _completed(r, rec2, "second migration completed"):
        r.check("guest alive on destination", *check_alive(dst2, src.last_tick()))
    return r


def corrupt(ctx, modes):
    r = Result("corrupt", f"relay corrupts the sevpeb section ({', '.join(modes)}); destination refuses, the "
                          f"guest-driven source survives")
    details = []
    src = boot(ctx, "A", tag="cs")
    for mode in modes + ["none"]:
        # the guest churns between attempts; during one the state is still (a chunk that a
        # later PART re-sends would legitimately heal a corruption: docs/TRIALS.md)
        time.sleep(1.0)
        ctl(src, "pause")
        dst = boot(ctx, "B", incoming=True, tag="cs")
        rec, events = relay_migration(ctx, r, src, dst, mode)
        hits = [e for e in events if e["ev"] in ("corrupt", "truncate")]
        if mode == "none":
            if _completed(r, rec, "clean migration through the relay completed"):
                ctl(dst, "resume")
                rec["guest"] = {"compare": compare(r, dst, "clean (destination)"), "paused": True}
                r.check("clean: guest alive on destination", *check_alive(dst, src.last_tick()))
            break
        r.check(f"{mode}: relay corrupted the section", bool(hits),
                "; ".join(f"{e.get('what', 'truncate')} at {e['stream_off']}" for e in hits)[:200])
        r.check(f"{mode}: migration failed on the source", rec["status"] == "failed",
                f"status {rec['status']}: {rec.get('error')}")
        code = dst.wait_exit(20)
        lines = dst.stderr_text().splitlines()
        hit = next((l for l in lines if re.search(GUEST_CORRUPT_EXPECT[mode], l, re.I)), None)
        r.check(f"{mode}: destination refused with the named error", code not in (None, 0) and hit,
                f"exit {code}; stderr: {(hit or (lines[-1] if lines else '')).strip()[:300]}")
        details.append({"mode": mode, "dst_exit": code, "dst_error": (hit or "").strip()[:300],
                        "src_error": rec.get("error")})
        ctx.drop(dst)
        # destination refused, source survives: running, the guest's calls still succeed,
        # and the source tracker equals the guest's record
        _src_keeps_running(r, src, f"{mode}: source keeps running")
        s0 = stats(src)
        ctl(src, "resume")
        time.sleep(2.0)
        s1 = stats(src)
        r.check(f"{mode}: the guest keeps issuing hypercalls successfully",
                s1["calls"] > s0["calls"] and s1["errors"] == 0,
                f"{s1['calls'] - s0['calls']} calls in 2 s after the refusal, {s1['errors']} errors")
        rec["guest"] = {"compare": compare(r, src, f"{mode}: after the refusal (source)"), "paused": True}
    r.numbers["refusals"] = details
    return r
