"""libvirt path: the destination refuses a corrupted sevpeb section, the source survives.

A step of the `lv-failure` scenario (sevtrials/libvirt.py). `virsh migrate --p2p` is
pointed through the corrupting relay (sevtrials/relay.py, in namespace B):

  source QEMU -> relay <B ip>:<port> (flips a bit of a BITS record, END check recomputed)
              -> destination QEMU, listening on 127.0.0.1:<port> in namespace B
                 (virsh migrate --listen-address 127.0.0.1 --migrateuri tcp://<B ip>:<port>)

Passes when the relay found and corrupted our section, virsh migrate fails, the destination
QEMU's log names the refusal (`sev-page-enc-bitmap: load: ...`), the domain still runs on
the source, and the source's bitmap equals the model (and its state before the attempt).
The state is kept still during the attempt (a chunk re-sent by a later PART would
legitimately heal the corruption), as the QMP `corrupt` scenario does.
"""
import json
import os
import re
import signal
import subprocess
import sys

from . import relay as relay_mod
from .util import log

MODE = "bits-fixed"
EXPECT = r"sev-page-enc-bitmap: load: .*(digest|counts)"


def start_relay(ctx, listen, connect, log_path):
    args = ["ip", "netns", "exec", ctx.hosts.ns["B"], sys.executable, relay_mod.__file__,
            "--listen", listen, "--connect", connect, "--mode", MODE, "--log", log_path, "--timeout", "120"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(log_path + ".stderr", "w"),
                         start_new_session=True, text=True)
    line = p.stdout.readline()
    if "ready" not in line:
        p.kill()
        p.wait(timeout=10)
        raise RuntimeError(f"relay did not start: {open(log_path + '.stderr').read()[-500:]}")
    return p


def stop_relay(p):
    try:
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)


def corrupted_section(ctx, r, model):
    """One `virsh migrate --p2p` A -> B through the relay; the checks go into r."""
    from .libvirt import DOM, err_line
    port = 49400 + ctx.n          # outside libvirt's own range (49152..49215)
    bip = ctx.hosts.ip["B"]
    rlog = os.path.join(ctx.work, f"lv-relay-{MODE}-{ctx.n}.jsonl")
    qlog_off = len(ctx.d["B"].qemu_log())
    before = ctx.check_state(r, "A", model, "corrupted section: source bitmap == model before")
    log(f"[lv-failure] corrupted section: A -> relay {bip}:{port} ({MODE}) -> B 127.0.0.1:{port}", always=True)
    relay = start_relay(ctx, f"{bip}:{port}", f"127.0.0.1:{port}", rlog)
    try:
        m = ctx.migrate(r, "A", ["--p2p", "--listen-address", "127.0.0.1", "--migrateuri", f"tcp://{bip}:{port}"],
                        "corrupted section")
    finally:
        stop_relay(relay)
    m["expected_failure"] = True
    r.lv_migrations.append(m)
    events = [json.loads(l) for l in open(rlog)] if os.path.exists(rlog) else []
    secs = [e for e in events if e["ev"] == "section"]
    hits = [e for e in events if e["ev"] == "corrupt"]
    r.check("corrupted section: the relay found the sevpeb section in libvirt's stream",
            any(e["type"] == "START" for e in secs),
            ", ".join(f"{e['type']}@{e['stream_off']}" for e in secs[:4]) or "no section seen")
    r.check("corrupted section: the relay corrupted it", bool(hits),
            "; ".join(f"{e.get('what')} at stream offset {e['stream_off']}" for e in hits) or "nothing corrupted")
    r.check("corrupted section: virsh migrate fails", m["status"] != "completed", err_line(m))
    qlog = ctx.d["B"].qemu_log()[qlog_off:]
    hit = next((l for l in qlog.splitlines() if re.search(EXPECT, l, re.I)), None)
    r.numbers["lv_corrupt_refusal"] = {"virsh": err_line(m), "destination_qemu_log": (hit or "").strip()[:300]}
    r.check("corrupted section: the destination QEMU refused with the named error (its libvirt log)", bool(hit),
            (hit or "nothing matching in the destination's QEMU log: " +
             " | ".join(qlog.strip().splitlines()[-3:]))[:400])
    bdom = ctx.d["B"].dom()
    r.check("corrupted section: the domain still runs on the source only",
            ctx.where() == "A" and (bdom is None or not bdom.isActive()),
            f"running on {ctx.where()}, destination domain {'gone' if bdom is None else 'still defined'}")
    r.check("corrupted section: the guest progresses on the source", ctx.guest_progresses(),
            f"ticks up to {ctx.ticks()[-1:]}")
    ctx.check_state(r, "A", model, "corrupted section: source bitmap == model == before the attempt", other=before)
    return m
