"""QEMU-level tests of page routing: the RAM saver asks the page-encryption
state of every page it sends and records the path; at completion the
source counts misrouted pages (latest copy's path != final state).

Each migration converts chosen pages at chosen moments:
  A  before its first copy             (never misrouted)
  B  after its copy, while iterating   (resent because the change callback
                                        marks it dirty)
  C  during the final iteration        (VM stopped at pre-switchover; the
                                        final sync finds it dirty)
  D  postcopy: after its copy, before the switch (resent in postcopy)
  E  postcopy: on the stopped source after the destination requested and
     received it (no sync follows: the check must catch it in both modes)
  F  postcopy: on the stopped source before it was sent (goes by its new
     state in the background pass)
and is run twice: as shipped (misrouted == 0, except E) and with
x-no-dirty-on-change=on, the negative control, where exactly the pages
converted after their copy (B, C, D; E) are misrouted, by GFN.
"""
import os
import time

from test_qemu import (PAGE, check, free_port, query, set_shared, wait_migration,
                       wait_status)

A, B, C, D = 0x300, 0x400, 0x500, 0x600
E, F = 0x3f00, 0x3f80       # in the random blob, sent last
BLOB_GFN = 0x2000          # 32 MiB of random RAM at 32 MiB: ~2 s at 16 MiB/s
NO_DIRTY = ",x-no-dirty-on-change=on"


def blob_args(E_):
    blob = os.path.join(E_.workdir, "random.bin")
    if not os.path.exists(blob):
        with open(blob, "wb") as f:
            f.write(os.urandom(32 << 20))
    return ["-device", f"loader,file={blob},addr={BLOB_GFN * PAGE:#x},force-raw=on"]


def route_of(m):
    return query(m)["route"]


def wait_ram_transferred(m, nbytes, timeout=30.0):
    """Wait until the source has sent nbytes of RAM (pages below BLOB_GFN are copied)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = m.cmd("query-migrate")
        if info.get("status") not in ("setup", "active", None):
            raise AssertionError(f"migration ended early: {info.get('status')}")
        if info.get("ram", {}).get("transferred", 0) >= nbytes:
            return info
        time.sleep(0.01)
    raise TimeoutError("RAM transfer did not progress")


def precopy_moments(E_, uri_of, negative, multifd=False, mapped_ram=False):
    """A before, B mid-iteration, C at pre-switchover; returns the route stats."""
    props = NO_DIRTY if negative else ""
    src = E_.qemu("src", extra=blob_args(E_), obj_props=props)
    dst = None
    uri = uri_of(E_)
    caps = [{"capability": "pause-before-switchover", "state": True}]
    if uri.startswith("tcp:"):
        dst = E_.qemu("dst", incoming="defer", extra=blob_args(E_))
        caps.append({"capability": "return-path", "state": True})
        if multifd:
            caps.append({"capability": "multifd", "state": True})
        dst.qmp.cmd("migrate-set-capabilities", capabilities=caps[1:])
        dst.qmp.cmd("migrate-incoming", uri=uri)
    if mapped_ram:
        caps.append({"capability": "mapped-ram", "state": True})
    src.qmp.cmd("migrate-set-capabilities", capabilities=caps)
    src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 16 << 20})
    set_shared(src.qmp, A, 1)                        # A: before its first copy
    src.qmp.cmd("migrate", uri=uri)
    wait_ram_transferred(src.qmp, 4 << 20)           # pages below 32 MiB are sent
    set_shared(src.qmp, B, 1)                        # B: between copy and completion
    src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 30})
    wait_status_mig(src.qmp, "pre-switchover")
    set_shared(src.qmp, C, 1)                        # C: during the final iteration
    src.qmp.cmd("migrate-continue", state="pre-switchover")
    info = wait_migration(src.qmp)
    check(info["status"] == "completed", info)
    if dst:
        wait_status(dst.qmp, ("running",))
    return route_of(src.qmp)


def wait_status_mig(m, wanted, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = m.cmd("query-migrate").get("status")
        if st == wanted:
            return
        if st in ("completed", "failed", "cancelled"):
            raise AssertionError(f"migration {st}, wanted {wanted}")
        time.sleep(0.01)
    raise TimeoutError(f"migration never reached {wanted}")


def expect(r, misrouted_gfns, what):
    check(r["checked"] and r["unverified-pages"] == 0 and r["record-errors"] == 0, (what, r))
    check(r["misrouted"] == len(misrouted_gfns) and r["misrouted-gfns"] == misrouted_gfns,
          f"{what}: misrouted {r['misrouted']} {[hex(g) for g in r['misrouted-gfns']]}, "
          f"expected {[hex(g) for g in misrouted_gfns]}")
    check(r["private-pages"] > 60000 and r["shared-pages"] >= 1 and r["untracked-pages"] > 0, (what, r))
    print(f"    {what}: private {r['private-pages']} shared {r['shared-pages']} "
          f"untracked {r['untracked-pages']} misrouted {r['misrouted']} "
          f"{[hex(g) for g in r['misrouted-gfns']]}, lookup {r['lookup-ns-per-page']:.2f} ns/page")


def file_uri(E_):
    return "file:" + os.path.join(E_.workdir, "stream.bin")


def tcp_uri(E_):
    return f"tcp:127.0.0.1:{free_port()}"


def test_route_file(E_):
    """file: migration (mapped-ram), pages converted before / after their copy / at the final iteration"""
    expect(precopy_moments(E_, file_uri, False, mapped_ram=True), [], "file mapped-ram")


def test_route_file_negative(E_):
    """the same with x-no-dirty-on-change=on: B and C misrouted"""
    expect(precopy_moments(E_, file_uri, True), [B, C], "file, negative control")


def test_route_tcp(E_):
    """TCP migration with multifd (decided at queue time), the same moments"""
    expect(precopy_moments(E_, tcp_uri, False, multifd=True), [], "tcp multifd")


def test_route_tcp_negative(E_):
    """TCP with x-no-dirty-on-change=on: B and C misrouted"""
    expect(precopy_moments(E_, tcp_uri, True), [B, C], "tcp, negative control")


def postcopy_moments(E_, negative):
    """D converted after its copy before the switch; in postcopy the destination
    requests E (by reading it) and the source converts it after sending it; F,
    converted in postcopy before it was sent, goes by its new state."""
    props = NO_DIRTY if negative else ""
    src = E_.qemu("src", extra=blob_args(E_), obj_props=props)
    dst = E_.qemu("dst", incoming="defer", extra=blob_args(E_))
    caps = [{"capability": "postcopy-ram", "state": True},
            {"capability": "return-path", "state": True}]
    for m in (src.qmp, dst.qmp):
        m.cmd("migrate-set-capabilities", capabilities=caps)
    port = free_port()
    dst.qmp.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 4 << 20})
    src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    wait_ram_transferred(src.qmp, 4 << 20)
    set_shared(src.qmp, D, 1)                        # D: after its copy, before the switch
    src.qmp.cmd("migrate-start-postcopy")
    wait_status_mig(src.qmp, "postcopy-active")
    set_shared(src.qmp, F, 1)                        # F: not sent yet
    # The destination reads E, not received yet: a postcopy request.
    dst.qmp.cmd("pmemsave", val=E * PAGE, size=PAGE,
                filename=os.path.join(E_.workdir, "e.bin"))
    info = src.qmp.cmd("query-migrate")
    check(info["status"] == "completed" or info["ram"]["postcopy-requests"] > 0, info)
    set_shared(src.qmp, E, 1)                        # E: after its postcopy request
    src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 30})
    info = wait_migration(src.qmp)
    check(info["status"] == "completed", info)
    check(info["ram"]["postcopy-requests"] > 0, info["ram"])
    return route_of(src.qmp)


def test_route_postcopy(E_):
    """postcopy: D (converted before the switch) is resent; E (converted on the stopped source) is caught"""
    expect(postcopy_moments(E_, False), [E], "postcopy")


def test_route_postcopy_negative(E_):
    """postcopy with x-no-dirty-on-change=on: D and E misrouted"""
    expect(postcopy_moments(E_, True), [D, E], "postcopy, negative control")


ROUTING_TESTS = [
    test_route_file,
    test_route_file_negative,
    test_route_tcp,
    test_route_tcp_negative,
    test_route_postcopy,
    test_route_postcopy_negative,
]
