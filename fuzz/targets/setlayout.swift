import CSevPEBShims
let fuzzTarget = "setlayout"
// Fuzz target: Tracker.setLayout (sevpeb_set_layout) against the same change
// applied slot by slot through addSlot / removeSlot / resizeSlot / setRange,
// in the order qemu-patches/0003's sev_peb_set_layout applies it; layouts
// reuse old boundaries (keep, resize, merge, split), with random updates in
// between. Raw layouts (any order, overlaps, GFN limit) must either apply or
// fail with nothing changed.

func slotBySlot(_ t: Tracker, _ new: [Tracker.Slot]) throws(SevError) {
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

/// Per slot, an XXH3 of its packed bits (fuzz/common/Check.swift: a reused
/// buffer; fresh copies compared with `==` cost a coverage callback per byte).
func layoutBits(_ t: Tracker) -> [UInt64] {
    t.slotList.map { sl in
        withPackedBits(t, sl.base, sl.pages, "layout") { b in XXH3.hash(bytes: UnsafeRawPointer(b.baseAddress!), count: b.count) }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSetLayout(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var inp = FuzzInput(data, size)
    let a: Tracker, b: Tracker
    do throws(SevError) { a = try Tracker.create(); b = try Tracker.create() } catch { return 0 }
    let limit: UInt64 = 1 << 18
    var rounds = 0
    while !inp.isEmpty && rounds < 24 {
        rounds += 1
        if inp.pick(8) == 0 {
            // A raw layout: applies, or fails with nothing changed.
            var raw: [Tracker.Slot] = []
            for _ in 0..<inp.pick(5) {
                let big = inp.pick(16) == 0
                raw.append(Tracker.Slot(base: big ? (Tracker.gfnLimit &- UInt64(inp.u16())) : UInt64(inp.u32()) % limit,
                                        pages: UInt64(inp.u16())))
            }
            let before = a.summary().digest, beforeSlots = a.slotList
            do throws(SevError) {
                try a.setLayout(raw)
                if a.slotList != raw { fuzzFail("raw layout applied as \(a.slotList)") }
                do throws(SevError) { try slotBySlot(b, raw) } catch { fuzzFail("slot by slot refused \(raw): \(error.message)") }
            } catch {
                if a.summary().digest != before || a.slotList != beforeSlots { fuzzFail("failed setLayout (\(error.message)) changed the tracker") }
            }
        } else {
            // Boundaries: some old ones kept, some new.
            var points: [UInt64] = []
            // (Only slots below `limit`: a point near the GFN limit would make a
            // slot of 2^52 pages, an honest ENOMEM, not a finding.)
            for o in a.slotList where o.base &+ o.pages <= limit && inp.pick(3) != 0 {
                points.append(o.base); points.append(o.base &+ o.pages)
            }
            for _ in 0..<inp.pick(6) { points.append(UInt64(inp.u32()) % limit) }
            points.sort()
            var new: [Tracker.Slot] = []
            var i = 0
            while i &+ 1 < points.count {
                if points[i] < points[i &+ 1] && inp.pick(4) != 0 {
                    new.append(Tracker.Slot(base: points[i], pages: points[i &+ 1] &- points[i]))
                }
                i &+= 1
            }
            do throws(SevError) { try a.setLayout(new) } catch { fuzzFail("setLayout \(new): \(error.message)") }
            do throws(SevError) { try slotBySlot(b, new) } catch { fuzzFail("slot by slot \(new): \(error.message)") }
        }
        if a.slotList != b.slotList { fuzzFail("layouts differ: \(a.slotList) vs \(b.slotList)") }
        if layoutBits(a) != layoutBits(b) { fuzzFail("page states differ after layout \(a.slotList)") }
        if let v = a.fuzzInvariantViolation() { fuzzFail("after setLayout: \(v)") }
        // Random updates, the same on both.
        for _ in 0..<inp.pick(4) {
            let list = a.slotList
            if list.isEmpty { break }
            let sl = list[inp.pick(list.count)]
            let off = UInt64(inp.u32()) % sl.pages
            let n = 1 &+ UInt64(inp.u32()) % (sl.pages &- off)
            let v = inp.bool()
            do throws(SevError) {
                try a.setRange(sl.base &+ off, n, private: v); try b.setRange(sl.base &+ off, n, private: v)
            } catch { fuzzFail("setRange: \(error.message)") }
        }
    }
    return 0
}
