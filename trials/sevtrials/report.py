"""Markdown report and PNG pictures."""
import bisect
import json
import os
import statistics

MiB = 1 << 20


def _fmt(v, nd=0):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _peb(rec, k):
    return (rec.get("peb_save") or {}).get(k)


def _route_pages(rec):
    """Pages sent per path (routing; trials/sevtrials/routing.py)."""
    rt = rec.get("route")
    if not rt or not rt.get("checked"):
        return "–"
    return f"{rt['private-pages']:,} / {rt['shared-pages']:,} / {rt['untracked-pages']:,}"


def _route_misrouted(rec):
    rt = rec.get("route")
    if not rt or not rt.get("checked"):
        return "–"
    gfns = rt.get("misrouted-gfns") or []
    return f"{rt['misrouted']}" + (f" ({', '.join(hex(g) for g in gfns[:4])}{', ...' if len(gfns) > 4 else ''})"
                                   if gfns else "")


def routing_lines(results):
    """Per scenario: routed migrations, pages per path, misrouted (the negative control apart)."""
    out = []
    for r in results:
        rts = [m["route"] for m in r.migrations if m.get("status") == "completed"
               and (m.get("route") or {}).get("checked")]
        if not rts:
            continue
        out.append(f"routing {r.key}: {len(rts)} migrations checked, pages private "
                   f"{sum(x['private-pages'] for x in rts):,} / shared {sum(x['shared-pages'] for x in rts):,} / "
                   f"untracked {sum(x['untracked-pages'] for x in rts):,}, misrouted "
                   f"{sum(x['misrouted'] for x in rts)}"
                   + (" (negative control: must be > 0)" if r.key == "misroute-negative" else ""))
    for r in results:
        if r.key == "routing-cost" and "ratio" in r.numbers:
            out.append(f"routing on/off (median total): {r.numbers['median_on']:.0f}/"
                       f"{r.numbers['median_off']:.0f} ms = {r.numbers['ratio']:.3f}x"
                       + (f"; lookups {100 * r.numbers['lookup_share']:.3f} % of a routed migration"
                          if r.numbers.get("lookup_share") is not None else ""))
    return out


def section_bytes(rec):
    s = rec.get("peb_save")
    if not s:
        return None
    return (s.get("setup-bytes") or 0) + (s.get("iterate-bytes") or 0) + (s.get("complete-bytes") or 0)


def totals(results):
    migs = [m for r in results for m in r.migrations]
    done = [m for m in migs if m["status"] == "completed"]
    sec = [section_bytes(m) for m in done if section_bytes(m) is not None]
    ram = [m["ram_transferred"] for m in done if section_bytes(m) is not None and m.get("ram_transferred")]
    t = {"migrations": len(migs), "completed": len(done),
         "section_bytes": sum(sec), "ram_bytes": sum(ram)}
    if done:
        t["median_total_ms"] = statistics.median(m["total_ms"] for m in done)
        t["median_downtime_ms"] = statistics.median(m["downtime_ms"] for m in done)
        t["max_downtime_ms"] = max(m["downtime_ms"] for m in done)
    cb = [_peb(m, "complete-bytes") for m in done if _peb(m, "complete-bytes") is not None]
    if cb:
        t["max_complete_bytes"] = max(cb)
    return t


def guest_rows(results):
    """Migrations with guest-side figures (sevtrials/guestdriven.py)."""
    return [(r, m, m["guest"]) for r in results for m in r.migrations if m.get("guest")]


def guest_totals(results):
    rows = guest_rows(results)
    rates = [x for _, _, g in rows if g.get("rate_until") != "end" for x in (g.get("rate_per_vcpu") or [])]
    before = [x for _, _, g in rows for x in (g.get("rate_before_per_vcpu") or [])]
    cmp_ = [g["compare"] for _, _, g in rows if g.get("compare")]
    t = {"migrations": len(rows), "rates": rates, "before": before,
         "downtime_calls": sum(g.get("downtime_calls", 0) for _, _, g in rows),
         "downtime_measured": sum(1 for _, _, g in rows if "downtime_calls" in g),
         "inflight_max": max([g.get("inflight_max") or 0 for _, _, g in rows], default=0),
         "compared": len(cmp_), "equal": sum(1 for c in cmp_ if c["equal"]),
         "verified": [c.get("verified") for c in cmp_ if c.get("verified") is not None],
         "crc_fail": sum(c.get("crc_fail") or 0 for c in cmp_)}
    for r in results:
        if "malformed" in r.numbers:
            t["malformed"], t["cpl3"] = r.numbers["malformed"], r.numbers.get("cpl3")
    return t


def guest_lines(results):
    t = guest_totals(results)
    if not t["migrations"]:
        return []
    out = []
    if t["rates"]:
        out.append(f"guest agent: {len(t['rates'])} vCPU-migrations, hypercalls/s per vCPU during migration "
                   f"min {min(t['rates']):.1f} / median {statistics.median(t['rates']):.1f} / max {max(t['rates']):.1f}"
                   + (f" (1 s before each: median {statistics.median(t['before']):.0f}); " if t["before"] else "; ")
                   + f"calls in the downtime window {t['downtime_calls']} over {t['downtime_measured']} migrations; "
                   f"largest in flight at once {t['inflight_max']}")
    if t["compared"]:
        out.append(f"guest record == host tracker {t['equal']}/{t['compared']}; pages the guest verified per "
                   f"comparison {min(t['verified'], default=0)}-{max(t['verified'], default=0)} "
                   f"({t['crc_fail']} checksum mismatches)")
    if t.get("malformed"):
        out.append("malformed calls: " + ", ".join(f"{k} {v}" for k, v in t["malformed"].items())
                   + f"; ring 3: {t.get('cpl3')}")
    return out


def text_summary(results, meta):
    lines = ["", "=" * 78, f"sevpeb migration trials — {meta['mode']}  ({meta['qemu_version']})", "=" * 78]
    for r in results:
        nmig = len(r.migrations)
        mark = "PASS" if r.passed else "FAIL"
        ok = sum(1 for _, o, _ in r.checks if o)
        lines.append(f"[{mark}] {r.key:<12} {ok}/{len(r.checks)} checks, {nmig} migrations, {r.seconds:.0f} s — {r.title}")
        for d, o, det in r.checks:
            if not o:
                lines.append(f"         FAIL: {d}: {det}")
        if r.error:
            lines.append(f"         ERROR: {r.error}")
    t = totals(results)
    lines.append("-" * 78)
    lines.append(f"migrations: {t['completed']}/{t['migrations']} completed"
                 + (f"; median total {t['median_total_ms']:.0f} ms, median downtime {t['median_downtime_ms']:.0f} ms, "
                    f"max downtime {t['max_downtime_ms']} ms" if t.get("completed") else ""))
    if t["ram_bytes"]:
        lines.append(f"sevpeb section bytes {t['section_bytes']:,} vs RAM bytes {t['ram_bytes']:,} "
                     f"({100.0 * t['section_bytes'] / t['ram_bytes']:.4f} %); largest downtime (END) payload "
                     f"{t.get('max_complete_bytes', 0):,} B")
    lines += routing_lines(results)
    lines += guest_lines(results)
    for r in results:
        if r.key == "peer" and "ratio_total" in r.numbers:
            p = r.numbers["per_side"]
            a = next(k for k in p if k != "stock")
            lines.append(f"with/without sevpeb (median): total {p[a]['total_ms']:.0f}/{p['stock']['total_ms']:.0f} ms "
                         f"= {r.numbers['ratio_total']:.2f}x, downtime {p[a]['downtime_ms']:.0f}/"
                         f"{p['stock']['downtime_ms']:.0f} ms = {r.numbers['ratio_downtime']:.2f}x")
    return "\n".join(lines)


def write_markdown(results, meta, outdir, pictures):
    t = totals(results)
    L = [f"# sevpeb migration trials ({meta['mode']})", "",
         f"- date: {meta['date']}", f"- QEMU under test: `{meta['qemu']}` — {meta['qemu_version']}"
         f"{'' if meta['sevpeb'] else ' — **no sev-page-enc-bitmap object (plumbing run only)**'}",
         f"- peer (stock) QEMU: `{meta['peer_qemu']}` — {meta['peer_version']}",
         f"- guest: {meta['guest']}, 256 MiB q35, TCG; QMP-driven scenarios 1 vCPU, dirtying "
         f"{meta['args']['dirty_mb']} MiB/s; guest agent: {meta.get('agent', 'none')}, dirtying "
         f"{meta['args'].get('agent_dirty_mb')} MiB/s",
         f"- hosts: network namespaces `{meta['ns'][0]}` / `{meta['ns'][1]}` joined by a veth pair",
         f"- migration: max-bandwidth {meta['args']['bandwidth']} MiB/s "
         f"(interrupted/reboot runs {meta['args']['slow_bandwidth']} MiB/s), return-path on; "
         f"churn ≤ {meta['args']['churn_rate']} calls/s; boot storm {meta['args']['storm_calls']} calls",
         f"- machine: {meta['host']}", f"- command: `{meta['cmdline']}`", "",
         "## Summary", "", "| scenario | result | checks | migrations | time | what |", "|---|---|---|---|---|---|"]
    for r in results:
        ok = sum(1 for _, o, _ in r.checks if o)
        L.append(f"| {r.key} | {'**PASS**' if r.passed else '**FAIL**'} | {ok}/{len(r.checks)} | "
                 f"{len(r.migrations)} | {r.seconds:.0f} s | {r.title} |")
    npass = sum(r.passed for r in results)
    L += ["", f"**{npass} passed, {len(results) - npass} failed.**", "",
          f"Migrations: {t['completed']}/{t['migrations']} completed."]
    if t.get("completed"):
        L.append(f"Median total time {t['median_total_ms']:.0f} ms, median downtime {t['median_downtime_ms']:.0f} ms, "
                 f"largest downtime {t['max_downtime_ms']} ms.")
    if t["ram_bytes"]:
        L.append(f"sevpeb section bytes over all completed migrations: {t['section_bytes']:,} B, against "
                 f"{t['ram_bytes']:,} B of RAM sent ({100.0 * t['section_bytes'] / t['ram_bytes']:.4f} %). "
                 f"Largest END (downtime) payload: {t.get('max_complete_bytes', 0):,} B.")
    rl = routing_lines(results)
    if rl:
        L += ["", "## Page routing", "",
              "Every completed migration's source counted the pages whose latest copy took the path of a "
              "state they no longer had (misrouted); the negative control turns off the change "
              "callback's dirtying and must find some.", ""] + [f"- {x}" for x in rl]
    rows = guest_rows(results)
    if rows:
        L += ["", "## Guest-driven page state", "",
              "The guest agent (trials/agent) makes every page-state change with KVM_HC_MAP_GPA_RANGE on 4 vCPUs "
              "under MTTCG. Calls/s per vCPU: the source's per-vCPU hypercall counts (`hypercalls` of "
              "x-query-sev-page-enc-bitmap) at `migrate` and at pre-switchover, over that time. Downtime window: "
              "from the source's stop (pause-before-switchover: the source is stopped in pre-switchover, the "
              "harness reads its counts there and the destination's, whose vCPUs have not run yet) to the "
              "destination's resume; calls in it = source counts at the end minus at the stop, plus the "
              "destination's counts at the stop (must be 0). After each migration the guest pauses its "
              "churn, its own record (debugfs, read over ttyS1) is compared with the tracker of the host it runs "
              "on, and it verifies the CRC32 of every page it wrote.", ""]
        L += [f"- {x}" for x in guest_lines(results)]
        L += ["", "| scenario | migration | status | calls/s per vCPU (1 s before) | calls/s per vCPU during | "
                  "calls in downtime window (src+dst) | "
                  "max in flight | compared on | guest record == tracker | shared pages | pages verified | "
                  "checksum mismatches |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r, m, g in rows:
            c = g.get("compare") or {}
            L.append(f"| {r.key} | {m['label']} | {m['status']} | "
                     f"{' / '.join(f'{x:.0f}' for x in g['rate_before_per_vcpu']) if g.get('rate_before_per_vcpu') else '–'} | "
                     f"{' / '.join(f'{x:.1f}' for x in g['rate_per_vcpu']) if g.get('rate_per_vcpu') else ('churn paused' if g.get('paused') else '–')}"
                     f"{' (to the end)' if g.get('rate_until') == 'end' else ''} | "
                     f"{_fmt(g.get('downtime_calls'))}"
                     f"{' (' + str(g.get('downtime_calls_src')) + '+' + str(g.get('downtime_calls_dst')) + ')' if 'downtime_calls' in g else ''} | "
                     f"{_fmt(g.get('inflight_max'))} | {c.get('label', '–')} | "
                     f"{('yes' if c['equal'] else '**NO**') if c else '–'} | {_fmt(c.get('guest_pages'))} | "
                     f"{_fmt(c.get('verified'))} | {_fmt(c.get('crc_fail'))} |")
    for r in results:
        if r.key == "peer" and r.numbers.get("per_side"):
            p = r.numbers["per_side"]
            L += ["", "## With vs without sevpeb (scenario 8, medians)", "",
                  "| | migrations | total time (ms) | downtime (ms) | RAM sent (MiB) |", "|---|---|---|---|---|"]
            for side, v in p.items():
                L.append(f"| {side} | {v['n']} | {v['total_ms']:.0f} | {v['downtime_ms']:.0f} | {v['ram_mib']:.1f} |")
            if "ratio_total" in r.numbers:
                L.append(f"| ratio sevpeb/stock | | {r.numbers['ratio_total']:.2f} | {r.numbers['ratio_downtime']:.2f} | |")
    L += ["", "## Scenarios", ""]
    for r in results:
        L += [f"### {r.key}: {'PASS' if r.passed else 'FAIL'}", "", r.title, ""]
        if r.error:
            L += [f"**Error:** `{r.error}`", ""]
        for d, o, det in r.checks:
            L.append(f"- {'✅' if o else '❌'} {d}" + (f" — {det}" if det else ""))
        extra = {k: v for k, v in r.numbers.items() if k not in ("per_side",)}
        if extra:
            L += ["", "Numbers: `" + json.dumps(extra, default=str)[:1500] + "`"]
        L.append("")
    L += ["## Migrations", "",
          "| scenario | migration | status | total ms | downtime ms | RAM MiB | syncs | sevpeb iters | "
          "setup B | iterate B | END B | section/RAM | churn calls | pages private / shared / untracked | misrouted |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for m in r.migrations:
            sb = section_bytes(m)
            ratio = f"{100.0 * sb / m['ram_transferred']:.4f} %" if sb and m.get("ram_transferred") else "–"
            L.append(f"| {r.key} | {m['label']} | {m['status']} | {_fmt(m.get('total_ms'))} | "
                     f"{_fmt(m.get('downtime_ms'))} | "
                     f"{_fmt((m.get('ram_transferred') or 0) / MiB, 1) if m.get('ram_transferred') else '–'} | "
                     f"{_fmt(m.get('dirty_syncs'))} | {_fmt(_peb(m, 'iterations'))} | {_fmt(_peb(m, 'setup-bytes'))} | "
                     f"{_fmt(_peb(m, 'iterate-bytes'))} | {_fmt(_peb(m, 'complete-bytes'))} | {ratio} | "
                     f"{_fmt(m.get('churn_calls'))} | {_route_pages(m)} | {_route_misrouted(m)} |")
    if meta.get("libvirt_md"):           # sevtrials/libvirt.py's section
        L += [""] + meta["libvirt_md"]
    if pictures:
        L += ["", "## Pictures", ""]
        for title, fn in pictures:
            L += [f"### {title}", "", f"![{title}]({fn})", ""]
    path = os.path.join(outdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")
    return path


def write_json(results, meta, outdir):
    data = {"meta": meta, "scenarios": [{
        "key": r.key, "title": r.title, "passed": r.passed, "error": r.error, "seconds": r.seconds,
        "checks": [{"check": d, "ok": o, "detail": det} for d, o, det in r.checks],
        "numbers": r.numbers,
        "migrations": [{k: v for k, v in m.items() if k != "samples"} for m in r.migrations]}
        for r in results]}
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(data, f, indent=1, default=str)


# ---------------------------------------------------------------------------
# pictures

def _gpa_label(a):
    if a >= 1 << 30 and a % (1 << 30) == 0:
        return f"{a >> 30} GiB"
    if a >= 1 << 30:
        return f"{a / (1 << 30):.2f} GiB"
    if a >= 1 << 20:
        return f"{a / (1 << 20):.0f} MiB"
    return f"{a >> 10} KiB"


def _shared_fractions(base, npages, nb, ranges):
    """[base, base+npages) in nb buckets: (start, end, shared fraction) offsets
    relative to base, equal neighbours merged, all-private buckets left out."""
    edges = [npages * i // nb for i in range(nb + 1)]
    shared = [0] * nb
    for rg in ranges:
        a, b = max(rg["gfn"], base) - base, min(rg["gfn"] + rg["npages"], base + npages) - base
        if a >= b:
            continue
        i = bisect.bisect_right(edges, a) - 1
        while i < nb and edges[i] < b:
            shared[i] += min(b, edges[i + 1]) - max(a, edges[i])
            i += 1
    out = []
    for i in range(nb):
        f = shared[i] / (edges[i + 1] - edges[i])
        if f == 0:
            continue
        if out and out[-1][1] == edges[i] and abs(out[-1][2] - f) < 1e-3:
            out[-1] = (out[-1][0], edges[i + 1], out[-1][2])
        else:
            out.append((edges[i], edges[i + 1], f))
    return out


def pictures(results, outdir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        return [], "matplotlib not installed (pip install matplotlib): no pictures"
    out = []
    migs = [(r.key, m) for r in results for m in r.migrations if m.get("peb_save") and m["status"] == "completed"]

    # 1. section bytes per iteration + per-migration totals vs RAM
    if migs:
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 9.5), gridspec_kw={"hspace": 0.6})
        cmap = plt.get_cmap("tab10")
        shown = [x for x in migs if x[0] == "ping-pong"] or migs
        for i, (key, m) in enumerate(shown[:10]):
            s = m["peb_save"]
            ys = [s.get("setup-bytes") or 0] + list(m.get("iter_bytes") or []) + [s.get("complete-bytes") or 0]
            xs = list(range(len(ys)))
            ax1.step(xs, [max(y, 0.8) for y in ys], where="mid", color=cmap(i % 10), lw=1.4,
                     label=f"{m['label']} ({len(ys) - 2} iterations)")
            ax1.plot([xs[0], xs[-1]], [max(ys[0], 0.8), max(ys[-1], 0.8)], "o", color=cmap(i % 10), ms=4)
        ax1.set_yscale("log")
        ax1.set_xlabel("save step: 0 = setup (START), 1..n = iterate (PART), last = complete (END, downtime)",
                       fontsize=9)
        ax1.set_ylabel("sevpeb section payload bytes (log)")
        ax1.set_title("sevpeb section bytes per migration step")
        ax1.grid(True, which="both", alpha=0.3)
        ax1.legend(fontsize=7, ncol=min(5, len(shown[:10])), loc="upper center", bbox_to_anchor=(0.5, -0.16))
        labels = [f"{m['label']}" for _, m in migs]
        x = range(len(migs))
        setup = [m["peb_save"].get("setup-bytes") or 0 for _, m in migs]
        it = [m["peb_save"].get("iterate-bytes") or 0 for _, m in migs]
        end = [m["peb_save"].get("complete-bytes") or 0 for _, m in migs]
        ram = [m.get("ram_transferred") or 0 for _, m in migs]
        w = 0.2
        ax2.bar([i - 1.5 * w for i in x], [max(v, 1) for v in setup], w, label="setup (START)", color="#4c72b0")
        ax2.bar([i - 0.5 * w for i in x], [max(v, 1) for v in it], w, label="iterate (all PART)", color="#55a868")
        ax2.bar([i + 0.5 * w for i in x], [max(v, 1) for v in end], w, label="complete (END, in downtime)", color="#c44e52")
        ax2.bar([i + 1.5 * w for i in x], [max(v, 1) for v in ram], w, label="RAM sent", color="#8c8c8c")
        ax2.set_yscale("log")
        ax2.set_xticks(list(x))
        ax2.set_xticklabels(labels, rotation=35, ha="right", fontsize=7)
        ax2.set_ylabel("bytes (log)")
        ax2.set_title("sevpeb section bytes vs RAM bytes, per completed migration")
        ax2.grid(True, axis="y", which="major", alpha=0.3)
        ax2.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.3))
        fig.subplots_adjust(left=0.08, right=0.98, top=0.95, bottom=0.17)
        fn = "section-bytes.png"
        fig.savefig(os.path.join(outdir, fn), dpi=110)
        plt.close(fig)
        out.append(("sevpeb section bytes per iteration and vs RAM", fn))

    # 2. downtime / total time with vs without sevpeb
    peer = next((r for r in results if r.key == "peer"), None)
    if peer and peer.migrations:
        sides = {}
        for m in peer.migrations:
            if m["status"] == "completed":
                sides.setdefault(m.get("side", "?"), []).append(m)
        if sides:
            fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
            colors = {"sevpeb": "#c44e52", "stock": "#4c72b0"}
            for ax, key, title in ((axes[0], "downtime_ms", "downtime (ms)"), (axes[1], "total_ms", "total time (ms)")):
                names = list(sides)
                for j, name in enumerate(names):
                    vals = [m[key] for m in sides[name]]
                    ax.bar(j, statistics.median(vals), 0.6, color=colors.get(name, "gray"), alpha=0.45,
                           label="median" if j == 0 else None)
                    ax.plot([j + (k - (len(vals) - 1) / 2) * 0.08 for k in range(len(vals))], vals, "o",
                            color=colors.get(name, "gray"), ms=6, label="each migration" if j == 0 else None)
                    ax.text(j, statistics.median(vals) * 0.5, f"median\n{statistics.median(vals):.0f} ms",
                            ha="center", va="center", fontsize=9)
                ax.set_xticks(range(len(names)))
                ax.set_xticklabels([f"{n}\n({'patched + object' if n == 'sevpeb' else 'QEMU 10.0 bpo, no object'})"
                                    for n in names], fontsize=9)
                ax.set_ylabel(title)
                ax.set_ylim(0, max(m[key] for v in sides.values() for m in v) * 1.5 + 1)
                ax.grid(True, axis="y", alpha=0.3)
                ax.set_title(title + " with vs without sevpeb")
                ax.legend(fontsize=8, loc="upper right")
            fig.tight_layout()
            fn = "downtime-peer.png"
            fig.savefig(os.path.join(outdir, fn), dpi=110)
            plt.close(fig)
            out.append(("Downtime and total time with vs without sevpeb", fn))

    # 3. memory maps before/after
    maps = [(f"{r.key}: {k}", q) for r in results for k, q in r.maps.items()]
    if maps:
        fig, ax = plt.subplots(figsize=(11, 1.9 + 0.75 * len(maps)))
        # compress the address axis: slots placed side by side with small gaps (holes are huge above 4 GiB)
        slots_all = sorted({(s["base-gfn"], s["npages"]) for _, q in maps for s in q["slots"]})
        pos, x = {}, 0.0
        gap = max(1, sum(n for _, n in slots_all) // 80)
        for b, n in slots_all:
            pos[(b, n)] = x
            x += n + gap

        for row, (label, q) in enumerate(maps):
            y = len(maps) - 1 - row
            for s in q["slots"]:
                p = pos[(s["base-gfn"], s["npages"])]
                ax.broken_barh([(p, s["npages"])], (y - 0.35, 0.7), color="#3b4cc0")
                # Shared pages to scale: one bucket per ~pixel column, a bar from the
                # bottom as tall as the bucket's fraction of shared pages (so a guest
                # with 6.5 % of its pages shared shows 6.5 % of its band shaded).
                nb = max(1, min(s["npages"], int(900 * s["npages"] / x)))
                for b0, b1, frac in _shared_fractions(s["base-gfn"], s["npages"], nb, q["shared-ranges"]):
                    ax.broken_barh([(p + b0, b1 - b0)], (y - 0.35, 0.7 * frac), color="#f4a582")
            pct = 100 * q["shared-pages"] / max(1, q["total-pages"])
            ax.text(x, y, f" {q['shared-pages']} shared ({pct:.1f} %)\n of {q['total-pages']} pages\n"
                    f" {len(q['shared-ranges'])} ranges",
                    va="center", fontsize=7)
        ax.set_yticks(range(len(maps)))
        ax.set_yticklabels([m[0] for m in reversed(maps)], fontsize=8)
        # ~10 ticks across, each labelled with the guest physical address it stands for
        ticks = []
        for k in range(11):
            px = x * k / 10
            for (b, n), p in pos.items():
                if p <= px <= p + n:
                    g = b + int(px - p)
                    ticks.append((px, _gpa_label(g * 4096)))
                    break
        for (b, n), p in pos.items():   # slot starts, unless a tick is already close
            if all(abs(p - t[0]) > x / 25 for t in ticks):
                ticks.append((p, _gpa_label(b * 4096)))
        ax.set_xticks([t[0] for t in ticks])
        ax.set_xticklabels([t[1] for t in ticks], fontsize=7, rotation=30)
        ax.set_xlim(0, x * 1.22)
        ax.set_xlabel("guest physical address (slots side by side; holes between slots not to scale)", fontsize=9)
        # the legend below the axis label, in a strip of its own (never over the label)
        fig.legend(handles=[Patch(color="#3b4cc0", label="private (encrypted)"),
                            Patch(color="#f4a582", label="shared: bar height = fraction of the pages "
                                                        "under it that are shared (0-100 %)")],
                   fontsize=8, loc="lower center", ncol=2)
        ax.set_title("Guest memory map (page-encryption bitmap) before and after migration")
        fig.tight_layout(rect=(0, 0.3 / fig.get_figheight(), 1, 1))
        fn = "memory-map.png"
        fig.savefig(os.path.join(outdir, fn), dpi=110)
        plt.close(fig)
        out.append(("Guest memory map before/after", fn))

    # 4. guest-driven: hypercalls/s per vCPU during each migration
    rows = [(f"{r.key}: {m['label']}", g) for r, m, g in guest_rows(results)
            if g.get("rate_per_vcpu") and g.get("rate_until") != "end"]
    if rows:
        nv = max(len(g["rate_per_vcpu"]) for _, g in rows)
        fig, ax = plt.subplots(figsize=(11, 1.6 + 0.32 * len(rows) * 1.2))
        h = 0.8 / nv
        colors = ["#3b4cc0", "#f4a582", "#5aae61", "#9970ab", "#999999", "#d6604d", "#4393c3", "#000000"]
        for i, (label, g) in enumerate(rows):
            y = len(rows) - 1 - i
            for v, rate in enumerate(g["rate_per_vcpu"]):
                ax.barh(y + 0.4 - (v + 0.5) * h, rate, height=h, color=colors[v % len(colors)],
                        label=f"vCPU {v}" if i == 0 else None)
            ax.text(max(g["rate_per_vcpu"]) * 1.02 + 0.5, y,
                    f"{g.get('downtime_calls', '–')} in downtime, max {g.get('inflight_max', '–')} in flight",
                    va="center", fontsize=7)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([l for l, _ in reversed(rows)], fontsize=8)
        ax.set_xlabel("KVM_HC_MAP_GPA_RANGE calls per second (source, from migrate to the switchover)")
        ax.set_xlim(0, max(x for _, g in rows for x in g["rate_per_vcpu"]) * 1.45 + 1)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        ax.set_title("Guest-driven page state: hypercalls per second per vCPU during each migration")
        fig.tight_layout()
        fn = "guest-hypercalls.png"
        fig.savefig(os.path.join(outdir, fn), dpi=110)
        plt.close(fig)
        out.append(("Guest hypercalls per vCPU during migration", fn))
    return out, None
