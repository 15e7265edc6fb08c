import SevPEB

// The layout change written slot by slot, and the layout generator, shared by
// Tests/SevPEBTests/LayoutTests.swift and the setlayout fuzz target (fuzz/build.sh
// compiles this file into that target; there `import SevPEB` is the module
// itself and is ignored).

/// The slot-by-slot reference for `Tracker.setLayout`: qemu-patches/0003's
/// sev_peb_set_layout as it was, through removeSlot / resizeSlot / addSlot /
/// setRange, with the keep-shared rule for replaced slots.
public func applySlotBySlot(_ t: Tracker, _ new: [Tracker.Slot]) throws(SevError) {
    let old = t.slotList
    var shared: [(UInt64, UInt64)] = []
    for o in old where !new.contains(where: { $0.base == o.base }) {
        var from = o.base
        while let r = t.nextSharedRun(from: from), r.gfn < o.base &+ o.pages {
            let e = min(r.gfn &+ r.pages, o.base &+ o.pages)
            shared.append((r.gfn, e)); from = e
        }
        try t.removeSlot(base: o.base)
    }
    for grow in [false, true] {
        for o in old {
            guard let n = new.first(where: { $0.base == o.base }), n.pages != o.pages,
                  (n.pages > o.pages) == grow else { continue }
            try t.resizeSlot(base: n.base, pages: n.pages)
        }
    }
    for n in new where !old.contains(where: { $0.base == n.base }) { try t.addSlot(base: n.base, pages: n.pages) }
    for (a, b) in shared {
        for n in new {
            let s = max(a, n.base), e = min(b, n.base &+ n.pages)
            if s < e { try t.setRange(s, e &- s, private: false) }
        }
    }
}

/// A layout below `limit` whose boundaries often reuse the old ones (so
/// slots are kept, resized, merged and split): each old slot's boundaries
/// with chance 2/3, up to `maxNewPoints - 1` new points, and each gap
/// between neighbouring points a slot with chance 3/4. `pick(k)` is the
/// caller's random choice in 0..<k, `point()` a random value (taken modulo
/// `limit`). Old slots reaching past `limit` are not reused (a point near the
/// GFN limit would make a slot of 2^52 pages).
public func layoutNear(_ old: [Tracker.Slot], limit: UInt64, maxNewPoints: Int,
                       pick: (Int) -> Int, point: () -> UInt64) -> [Tracker.Slot] {
    var points: [UInt64] = []
    for o in old where o.base &+ o.pages <= limit && pick(3) != 0 {
        points.append(o.base); points.append(o.base &+ o.pages)
    }
    for _ in 0..<pick(maxNewPoints) { points.append(point() % limit) }
    points.sort()
    var new: [Tracker.Slot] = []
    var i = 0
    while i &+ 1 < points.count {
        if points[i] < points[i &+ 1] && pick(4) != 0 {
            new.append(Tracker.Slot(base: points[i], pages: points[i &+ 1] &- points[i]))
        }
        i &+= 1
    }
    return new
}
