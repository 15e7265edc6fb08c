import CSevPEBShims
let fuzzTarget = "setlayout"
// Fuzz target: Tracker.setLayout (sevpeb_set_layout) against the same change
// applied slot by slot through addSlot / removeSlot / resizeSlot / setRange,
// in the order qemu-patches/0003's sev_peb_set_layout applies it; layouts
// reuse old boundaries (keep, resize, merge, split), with random updates in
// between. Raw layouts (any order, overlaps, GFN limit) must either apply or
// fail with nothing changed.

// The slot-by-slot reference and the layout generator are LayoutTests'
// (Tests/SevPEBTestSupport/LayoutReference.swift, compiled in by fuzz/build.sh).
func slotBySlot(_ t: Tracker, _ new: [Tracker.Slot]) throws(SevError) { try applySlotBySlot(t, new) }

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
    defer { a.destroy(); b.destroy() }
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
            let new = layoutNear(a.slotList, limit: limit, maxNewPoints: 6,
                                 pick: { inp.pick($0) }, point: { UInt64(inp.u32()) })
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
