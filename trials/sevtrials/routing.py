"""Page routing in the trials (docs/QEMU.md, "Routing").

The patched RAM saver asks the page-encryption state of every page it sends
and records the path the copy took; at completion the source counts the
misrouted pages (latest copy's path != final state) and reports them in
x-query-sev-page-enc-bitmap's "route". Here:

- check(): every completed migration asserts misrouted == 0 (nothing
  unverified) and reports pages sent per path;
- negative(): the negative control, x-no-dirty-on-change=on under churn,
  must produce misrouted pages, named by GFN;
- postcopy() and multifd(): churned migrations in those modes, checked like
  every other;
- cost(): total migration time with routing on vs off (x-routing), medians.
"""
import statistics

from .churn import Model
from .migrate import migrate, set_caps, compare_state, check_alive
from .util import log


def summary(route):
    return (f"private {route['private-pages']}, shared {route['shared-pages']}, "
            f"untracked {route['untracked-pages']} pages sent; misrouted {route['misrouted']}"
            + (f" (GFNs {', '.join(hex(g) for g in route['misrouted-gfns'])})" if route["misrouted-gfns"] else "")
            + (f", unverified {route['unverified-pages']}" if route["unverified-pages"] else "")
            + f"; lookup {route['lookup-ns-per-page']:.2f} ns/page")


def check(r, rec, what):
    """After a completed migration whose source reported routing: misrouted == 0."""
    route = rec.get("route")
    if not route or not route.get("enabled"):
        return True
    ok = route["checked"] and route["misrouted"] == 0 and route["unverified-pages"] == 0 \
        and route["record-errors"] == 0
    return r.check(f"{what}: every page's latest copy took its final state's path (misrouted 0)",
                   ok, summary(route))


def _churned(ctx, r, title_key, *, src_props=(), caps=None, hook_factory=None, label,
             expect_misrouted=False, bandwidth=None):
    """One churned migration A -> B; returns (rec, route)."""
    src = ctx.boot("A", tag="rt")
    for prop, value in src_props:
        src.peb_set_prop(prop, value)
    model = Model()
    churn = ctx.new_churn(model, src, seed_add=31)
    churn.attach(src)
    churn.mark_boot()
    churn.detach()
    dst = ctx.boot("B", incoming=True, tag="rt")
    if caps:
        set_caps(src, caps)
        set_caps(dst, caps)
    churn.start(src)
    hook = hook_factory(src, churn) if hook_factory else None
    rec = migrate(src, dst, ctx.uri("B"), label=label, churn=churn, pause=hook is None,
                  bandwidth_mib=bandwidth or ctx.args.bandwidth, hook=hook,
                  timeout=ctx.args.mig_timeout, peb=True)
    churn.stop()
    r.migrations.append(rec)
    if rec["status"] != "completed":
        r.check(f"{label} completed", False, f"status {rec['status']}: {rec.get('error')}")
        return rec, None
    r.check(f"{label} completed", True,
            f"{rec['total_ms']} ms total, {rec['downtime_ms']} ms downtime, {rec['churn_calls']} churn calls")
    problems, qs, qd = compare_state(src, dst, model)
    r.check(f"{label}: destination == source == model", not problems, "; ".join(problems) or
            f"{qd['shared-pages']} shared pages")
    r.check(f"{label}: guest alive on destination", *check_alive(dst, src.last_tick()))
    r.check("every churn call accepted", not churn.errors, "; ".join(churn.errors[:3]))
    route = rec.get("route") or {}
    if not expect_misrouted:
        check(r, rec, label)
    ctx.drop(src)
    ctx.drop(dst)
    return rec, route


def negative(ctx):
    """x-no-dirty-on-change=on under churn: the check must find misrouted pages."""
    r = Result_("misroute-negative", "negative control: change callback does not dirty RAM "
                "(x-no-dirty-on-change=on) under churn; misrouted pages must be found and named")
    rec, route = _churned(ctx, r, "neg", src_props=[("x-no-dirty-on-change", True)],
                          label="negative control migration", expect_misrouted=True,
                          bandwidth=min(ctx.args.bandwidth, 32))
    if route is not None:
        r.check("negative control: misrouted > 0, named", route.get("checked") and route["misrouted"] > 0
                and len(route["misrouted-gfns"]) > 0, summary(route))
        r.numbers.update(misrouted=route["misrouted"], misrouted_gfns=[hex(g) for g in route["misrouted-gfns"]],
                         private_pages=route["private-pages"], shared_pages=route["shared-pages"])
    return r


def postcopy(ctx):
    """Churn during precopy, then migrate-start-postcopy; every page checked."""
    r = Result_("postcopy", "precopy with churn, then postcopy (requests and the background pass); "
                "misrouted 0")

    def hook_factory(src, churn):
        started = {"done": False}

        def hook(st):
            # Switch once the first pass is under way; the churn stops first (after the
            # switch the guest runs on the destination: a QMP set on the source would be
            # a change the guest never made).
            if not started["done"] and st["status"] == "active" and st["elapsed"] >= 1.0:
                churn.stop()
                src.qmp.cmd("migrate-start-postcopy")
                started["done"] = True
        return hook
    rec, route = _churned(ctx, r, "pc", caps={"postcopy-ram": True}, hook_factory=hook_factory,
                          label="postcopy migration", bandwidth=min(ctx.args.bandwidth, 16))
    if rec.get("status") == "completed":
        r.numbers["postcopy_requests"] = rec.get("postcopy_requests")
    return r


def multifd(ctx):
    """multifd (routing decided when a page is queued), churn throughout."""
    r = Result_("multifd", "multifd migration with churn; misrouted 0")
    _churned(ctx, r, "mf", caps={"multifd": True}, label="multifd migration")
    return r


def cost(ctx, runs):
    """Total migration time with routing on vs off (x-routing on the source), alternating."""
    r = Result_("routing-cost", f"total migration time, routing on vs off, {runs} migrations each, "
                f"alternating on one guest, max-bandwidth {COST_BANDWIDTH_MIB} MiB/s so that the saver is "
                "CPU-bound (ratio of medians)")
    vm = ctx.boot("A", tag="rc")
    per = {True: [], False: []}
    fractions = []
    # A warm-up migration (not counted: the first one of a fresh guest is slower), then
    # on/off in ABBA order so that a drift of the machine's load hits both alike.
    order = [None] + [(i % 4) in (0, 3) for i in range(2 * runs)]
    for i, on in enumerate(order):
        vm.peb_set_prop("x-routing", on is not False)
        h = ctx.hosts.other(vm.host)
        dst = ctx.boot(h, incoming=True, tag="rc")
        label = "warm-up" if on is None else f"routing {'on' if on else 'off'} {len(per[on]) + 1}"
        rec = migrate(vm, dst, ctx.uri(h), label=label,
                      pause=False, bandwidth_mib=COST_BANDWIDTH_MIB, timeout=ctx.args.mig_timeout, peb=True)
        rec["routing"] = on
        r.migrations.append(rec)
        if not r.check(f"{rec['label']} completed", rec["status"] == "completed",
                       f"{rec.get('total_ms')} ms" if rec["status"] == "completed" else str(rec.get("error"))):
            break
        if on is not False:
            check(r, rec, rec["label"])
        if on is not None:
            per[on].append(rec["total_ms"])
        if on and rec.get("route") and rec["total_ms"]:
            # the library lookups' own time (timed in QEMU) as a share of the migration
            fractions.append(rec["route"]["lookup-ns"] / (rec["total_ms"] * 1e6))
        ctx.drop(vm)
        vm = dst
    ctx.drop(vm)
    if per[True] and per[False]:
        a, b = statistics.median(per[True]), statistics.median(per[False])
        ratio = a / max(b, 1)
        lookup_share = statistics.median(fractions) if fractions else None
        r.numbers.update(total_ms_on=per[True], total_ms_off=per[False], median_on=a, median_off=b,
                         ratio=round(ratio, 3), lookup_share=lookup_share)
        log(f"[routing-cost] median total {a:.0f} ms on vs {b:.0f} ms off: ratio {ratio:.3f}", always=True)
        r.check("routing on/off total-time ratio measured (target <= 1.02)", True,
                f"median {a:.0f} vs {b:.0f} ms, ratio {ratio:.3f}"
                + ("" if ratio <= 1.02 else " (above the target: see the spread)")
                + f"; on {sorted(per[True])}, off {sorted(per[False])} ms"
                + (f"; the lookups themselves took {100 * lookup_share:.3f} % of a routed migration's "
                   "total time (median)" if lookup_share is not None else ""))
    return r


# routing-cost: no bandwidth cap to hide behind (the default trials run at 64 MiB/s)
COST_BANDWIDTH_MIB = 4096


def Result_(key, title):
    from .scenarios import Result
    return Result(key, title)
