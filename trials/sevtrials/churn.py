"""Page-state model and the churn driver.

The model is the harness's own idea of the bitmap (an interval set of shared
GFN ranges). The driver issues x-sev-page-enc-bitmap-set on a source QEMU in
realistic patterns, at a bounded call rate, and applies each successful call
to the model, so the harness can check QEMU's state against an independent
expectation as well as destination against source.
"""
import bisect
import random
import threading
import time

from .qmp import QMP, QMPError
from .util import log

PAGE = 4096


class Model:
    """Shared ranges as sorted, disjoint, non-touching [start, end) GFN intervals."""

    def __init__(self):
        self.starts, self.ends = [], []
        self.lock = threading.Lock()

    def set(self, gfn, npages, shared):
        with self.lock:
            self._set(gfn, gfn + npages, shared)

    def _set(self, a, b, shared):
        S, E = self.starts, self.ends
        # intervals touching or overlapping [a, b)
        i = bisect.bisect_left(E, a)          # first interval with end >= a
        j = bisect.bisect_right(S, b)          # first interval with start > b
        new = []
        if i < j:
            lo, hi = min(S[i], a), max(E[j - 1], b)
            if shared:
                new = [(lo, hi)]
            else:
                if S[i] < a:
                    new.append((S[i], a))
                if E[j - 1] > b:
                    new.append((b, E[j - 1]))
        elif shared:
            new = [(a, b)]
        S[i:j] = [x for x, _ in new]
        E[i:j] = [y for _, y in new]

    def reset(self):
        with self.lock:
            self.starts, self.ends = [], []

    def ranges(self):
        with self.lock:
            return list(zip(self.starts, self.ends))

    def shared_pages(self):
        with self.lock:
            return sum(e - s for s, e in zip(self.starts, self.ends))

    def is_shared(self, gfn):
        with self.lock:
            i = bisect.bisect_right(self.starts, gfn) - 1
            return i >= 0 and self.ends[i] > gfn


def normalize(ranges):
    """[(gfn, npages)...] or [{"gfn","npages"}...] -> merged [(start, end)]."""
    out = []
    for r in sorted((r["gfn"], r["gfn"] + r["npages"]) if isinstance(r, dict) else (r[0], r[0] + r[1])
                    for r in ranges):
        if out and r[0] <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], r[1]))
        else:
            out.append(r)
    return out


def diff_ranges(a, b, limit=3):
    """Human-readable first differences between two normalized range lists."""
    sa, sb = set(a), set(b)
    only_a = sorted(sa - sb)[:limit]
    only_b = sorted(sb - sa)[:limit]
    return f"{len(sa - sb)} only-left e.g. {[(hex(x), hex(y)) for x, y in only_a]}, " \
           f"{len(sb - sa)} only-right e.g. {[(hex(x), hex(y)) for x, y in only_b]}"


class Churn:
    """A thread that flips page ranges on one QEMU via its churn QMP socket.

    Patterns (mixed by `plan`):
      storm      OVMF-like boot storm: many small (1-4 page) allocate/free pairs
                 (shared then private again), some left shared; 85% of the calls
                 while it lasts, at up to storm_rate calls/s.
      bounce     a large contiguous shared range (bounce buffers / SWIOTLB, 8 or 16 MiB),
                 moved every bounce_period seconds and partly re-flipped (1-64 pages)
                 by 5% of the calls. Every changed page is also re-sent as RAM (the
                 change callback dirties it), so moves are kept rare on purpose.
      scattered  single pages flipped at random.
    """

    def __init__(self, model, slots, *, rate=500, seed=1, storm_calls=0, region=None, bounce_period=3.0,
                 storm_rate=1000):
        self.model = model
        self.slots = [(s["base-gfn"], s["npages"]) for s in slots] if slots and isinstance(slots[0], dict) else slots
        self.rate = rate
        self.storm_rate = storm_rate  # calls/s while the boot storm lasts (OVMF makes them in a burst)
        self.rng = random.Random(seed)
        self.storm_left = storm_calls
        self.region = region          # restrict to (gfn, npages) if given
        self.calls = 0
        self.errors = []
        self.counts = {"storm": 0, "bounce": 0, "scattered": 0}
        self.bounce = None            # (gfn, npages) currently shared as bounce buffer
        self.bounce_period = bounce_period   # s between moves of the bounce buffer
        self._bounce_t = 0.0
        self._pending_free = []
        self._thread = None
        self._stop = threading.Event()
        self.qmp = None
        self.vm_name = None

    # -- ranges -----------------------------------------------------------
    def _pick_slot(self, min_pages=1):
        cands = [s for s in (self.slots if not self.region else [self.region]) if s[1] >= min_pages]
        if not cands:
            return None
        weights = [s[1] for s in cands]
        return self.rng.choices(cands, weights)[0]

    def _rand_range(self, n):
        s = self._pick_slot(n)
        if not s:
            return None
        g = s[0] + self.rng.randrange(0, s[1] - n + 1)
        return g, n

    # -- one call ---------------------------------------------------------
    def _set(self, gfn, npages, shared, kind):
        try:
            self.qmp.cmd("x-sev-page-enc-bitmap-set", gpa=gfn * PAGE, npages=npages, encrypted=not shared)
        except QMPError as e:
            self.errors.append(f"{kind} set gfn {gfn:#x}+{npages} shared={shared}: {e.desc}")
            return False
        self.model.set(gfn, npages, shared)
        self.calls += 1
        self.counts[kind] += 1
        return True

    def step(self):
        """Issue one call of the current pattern mix."""
        r = self.rng.random()
        if self.storm_left > 0 and self.rng.random() < 0.85:   # the storm, mixed with the rest
            self.storm_left -= 1
            if self._pending_free and (r < 0.5 or len(self._pending_free) > 8):
                g, n = self._pending_free.pop(self.rng.randrange(len(self._pending_free)))
                return self._set(g, n, False, "storm")           # free: back to private
            rr = self._rand_range(self.rng.choice((1, 1, 1, 2, 4)))
            if rr:
                ok = self._set(rr[0], rr[1], True, "storm")      # allocate: shared
                if ok and self.rng.random() > 0.03:              # ~3% stay shared
                    self._pending_free.append(rr)
                return ok
            return False
        now = time.monotonic()
        if self.bounce is None or now - self._bounce_t >= self.bounce_period:
            return self.move_bounce()
        if r < 0.05:
            # the driver remaps part of its bounce buffer (1-64 pages)
            g, n = self.bounce
            k = self.rng.randrange(1, 65)
            off = self.rng.randrange(0, n - k + 1)
            return self._set(g + off, k, self.rng.random() < 0.7, "bounce")
        rr = self._rand_range(1)
        if rr:
            return self._set(rr[0], 1, not self.model.is_shared(rr[0]), "scattered")
        return False

    def move_bounce(self, npages=None):
        """Make a new large contiguous shared range (4096 pages = 16 MiB by default); drop the old one."""
        npages = npages or self.rng.choice((2048, 4096))
        if self.bounce:
            g, n = self.bounce
            if not self._set(g, n, False, "bounce"):
                return False
            self.bounce = None
        rr = self._rand_range(npages)
        if not rr:
            return False
        self._bounce_t = time.monotonic()
        if self._set(rr[0], rr[1], True, "bounce"):
            self.bounce = rr
            return True
        return False

    def mark_boot(self, singles=64):
        """What a freshly booted guest would have: one bounce range plus scattered shared pages."""
        self.bounce = None
        self.move_bounce(4096)
        for _ in range(singles):
            rr = self._rand_range(1)
            if rr:
                self._set(rr[0], 1, True, "scattered")

    def after_reset(self):
        """The guest was reset: everything is private now; forget pattern state."""
        self.model.reset()
        self.bounce = None
        self._pending_free = []

    # -- thread -----------------------------------------------------------
    def attach(self, vm):
        self.qmp = QMP(vm.churn_path, timeout=30)
        self.vm_name = vm.name

    def detach(self):
        if self.qmp:
            self.qmp.close()
            self.qmp = None

    def start(self, vm, max_seconds=600):
        assert self._thread is None
        self.attach(vm)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(max_seconds,), daemon=True)
        self._thread.start()

    def _run(self, max_seconds):
        t_end = time.monotonic() + max_seconds
        nxt = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < t_end:
            period = 1.0 / (max(self.rate, self.storm_rate) if self.storm_left > 0 else self.rate)
            try:
                self.step()
            except (EOFError, OSError) as e:
                self.errors.append(f"QMP connection to {self.vm_name} lost: {e}")
                return
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -1.0:
                nxt = time.monotonic()     # fell behind: do not burst to catch up

    def stop(self):
        """Stop the thread (it finishes its in-flight call) and close the connection."""
        if self._thread:
            self._stop.set()
            self._thread.join(timeout=30)
            self._thread = None
        self.detach()

    def running(self):
        return self._thread is not None
