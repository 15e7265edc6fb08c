"""One live migration between two VMs, with polling, hooks and measurements."""
import time

from .churn import normalize, diff_ranges
from .qmp import QMPError
from .util import log

TERMINAL = ("completed", "failed", "cancelled")


def set_caps(vm, caps):
    vm.qmp.cmd("migrate-set-capabilities",
               capabilities=[{"capability": c, "state": bool(v)} for c, v in caps.items()])


def migrate(src, dst, uri, *, label, churn=None, pause=True, bandwidth_mib=64, downtime_ms=300,
            hook=None, timeout=180, dst_uri=None, peb=True, poll=0.02, at_switchover=None):
    """Migrate src -> dst (dst already started with -incoming defer, or None when the
    caller arranged the listener). Returns a record dict; never raises for a failed
    migration (status says so)."""
    rec = {"label": label, "src": src.name, "dst": dst.name if dst else None,
           "src_host": src.host, "dst_host": dst.host if dst else None, "uri": uri,
           "status": None, "error": None, "bandwidth_mib": bandwidth_mib}
    caps = {"return-path": True, "pause-before-switchover": pause}
    calls0 = churn.calls if churn else 0
    try:
        if dst is not None:
            set_caps(dst, {"return-path": True})
            dst.qmp.cmd("migrate-incoming", uri=dst_uri or uri)
        set_caps(src, caps)
        src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": int(bandwidth_mib * 1024 * 1024),
                                                  "downtime-limit": downtime_ms})
        t0 = time.monotonic()
        src.qmp.cmd("migrate", uri=uri)
    except QMPError as e:
        rec.update(status="refused", error=e.desc)
        return rec
    except (EOFError, OSError) as e:
        rec.update(status="qemu-lost", error=f"{e}; {_exits(src, dst)}")
        return rec
    samples, peb_samples = [], []
    last_peb = 0.0
    info = {}
    state = {"rec": rec, "t0": t0, "src": src, "dst": dst, "churn": churn}
    switch_wait = None
    while True:
        now = time.monotonic()
        try:
            info = src.qmp.cmd("query-migrate")
        except (EOFError, OSError) as e:
            time.sleep(0.5)
            rec.update(status="source-lost", error=f"{e}; {_exits(src, dst)}")
            break
        st = info.get("status")
        ram = info.get("ram", {})
        samples.append((round(now - t0, 3), st, ram.get("transferred", 0), ram.get("remaining", 0),
                        ram.get("dirty-sync-count", 0)))
        if peb and now - last_peb >= 0.1 and st not in TERMINAL:
            try:
                s = src.peb_save().get("save", {})
                peb_samples.append((round(now - t0, 3), s.get("iterations", 0), s.get("iterate-bytes", 0)))
            except QMPError:
                pass
            last_peb = now
        if st == "pre-switchover":
            ts = time.monotonic()
            if churn and churn.running():
                churn.stop()
            if at_switchover:
                at_switchover(state)     # the source is stopped, the destination not yet running
            src.qmp.cmd("migrate-continue", state="pre-switchover")
            switch_wait = (time.monotonic() - ts) * 1000
        state["info"], state["status"], state["elapsed"] = info, st, now - t0
        if hook and st not in TERMINAL:
            hook(state)
        if st in TERMINAL:
            break
        if now - t0 > timeout:
            log(f"{label}: timed out after {timeout}s in state {st}; cancelling")
            try:
                src.qmp.cmd("migrate_cancel")
            except QMPError:
                pass
            rec["error"] = f"timeout after {timeout}s"
            timeout += 30   # give cancel a bounded grace period
            if now - t0 > timeout + 60:
                rec["status"] = "stuck"
                break
        time.sleep(poll)
    rec["status"] = rec["status"] or info.get("status")
    rec["error"] = rec["error"] or info.get("error-desc")
    ram = info.get("ram", {})
    rec.update(total_ms=info.get("total-time"), downtime_ms=info.get("downtime"),
               setup_ms=info.get("setup-time"), ram_transferred=ram.get("transferred"),
               ram_total=ram.get("total"), dirty_syncs=ram.get("dirty-sync-count"),
               postcopy_requests=ram.get("postcopy-requests"),
               wall_s=round(time.monotonic() - t0, 3), switchover_wait_ms=switch_wait,
               churn_calls=(churn.calls - calls0) if churn else 0,
               samples=samples)
    if peb:
        try:
            q = src.peb_save()
            s = q.get("save", {})
            rec["peb_save"] = s
            rec["route"] = q.get("route")   # page routing (trials/sevtrials/routing.py)
            peb_samples.append((round(time.monotonic() - t0, 3), s.get("iterations", 0), s.get("iterate-bytes", 0)))
            rec["iter_bytes"] = per_iteration(peb_samples)
        except (QMPError, EOFError, OSError) as e:
            rec["peb_save_error"] = str(e)
    rec["peb_samples"] = peb_samples
    return rec


def _exits(*vms):
    """Which of the VMs died, and how (a negative code is the signal number)."""
    out = []
    for vm in vms:
        if vm is not None and not vm.alive():
            code = vm.proc.returncode
            how = f"signal {-code}" if code < 0 else f"exit {code}"
            out.append(f"{vm.name} died ({how}){': ' + vm.stderr_tail(3) if vm.stderr_tail(3) else ''}")
    return "; ".join(out) or "both QEMUs still running"


def per_iteration(peb_samples):
    """(t, iterations, cumulative iterate-bytes) samples -> bytes per iteration (spread evenly
    over iterations that happened between two samples)."""
    out = []
    pi, pb = 0, 0
    for _, it, b in peb_samples:
        if it > pi:
            d = (b - pb) / (it - pi)
            out.extend([d] * (it - pi))
            pi, pb = it, b
    return out


def compare_state(src, dst, model=None):
    """Problems (list of str) between source and destination x-query, and the model."""
    problems = []
    qs, qd = src.peb_query(), dst.peb_query()
    rs, rd = normalize(qs["shared-ranges"]), normalize(qd["shared-ranges"])
    for name, q in (("source", qs), ("destination", qd)):
        if q.get("shared-ranges-truncated"):
            problems.append(f"{name}: shared-ranges truncated (raise max-ranges)")
    for k in ("digest", "total-pages", "shared-pages", "migration-control"):
        if qs.get(k) != qd.get(k):
            problems.append(f"{k}: source {qs.get(k)} != destination {qd.get(k)}")
    if rs != rd:
        problems.append(f"shared ranges differ: {diff_ranges(rs, rd)}")
    if [(s["base-gfn"], s["npages"]) for s in qs["slots"]] != [(s["base-gfn"], s["npages"]) for s in qd["slots"]]:
        problems.append(f"slots differ: {qs['slots']} vs {qd['slots']}")
    if model is not None:
        mr = model.ranges()
        if rs != mr:
            problems.append(f"source != harness model: {diff_ranges(rs, mr)}")
    return problems, qs, qd


def check_model(vm, model):
    q = vm.peb_query()
    r = normalize(q["shared-ranges"])
    if r != model.ranges():
        return [f"{vm.name} != harness model: {diff_ranges(r, model.ranges())}"], q
    if q["shared-pages"] != model.shared_pages():
        return [f"{vm.name} shared-pages {q['shared-pages']} != model {model.shared_pages()}"], q
    return [], q


def check_alive(dst, src_last_tick, timeout=20, after_reset=False):
    """The guest runs on dst: status running and serial ticks continue. Returns (ok, detail)."""
    try:
        st = dst.status()
    except Exception as e:
        return False, f"query-status failed: {e}"
    if st != "running":
        return False, f"destination status {st}"
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        t = dst.ticks()
        if t and (after_reset or len(t) >= 2):
            if after_reset:
                return True, f"ticks after reset: {t[0]}..{t[-1]}"
            if src_last_tick is None or t[0] > src_last_tick:
                cont = "continuous" if src_last_tick is None or t[0] == src_last_tick + 1 else "gap"
                return True, f"source last tick {src_last_tick}, destination ticks {t[0]}..{t[-1]} ({cont})"
            return False, f"destination restarted counting: first tick {t[0]} <= source last {src_last_tick}"
        time.sleep(0.2)
    return False, f"no new serial ticks on destination within {timeout}s"
