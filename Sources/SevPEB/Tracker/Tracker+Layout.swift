import CSevPEBShims

/// The whole memory layout set in one lock hold (sevpeb_set_layout): a
/// concurrent update or reader sees the old layout or the new one, never
/// one in between.
extension Tracker {
    /// Replace the layout with `new` (ascending, non-overlapping slots).
    /// A slot whose base is in both layouts is resized (its surviving pages
    /// keep their state); an old slot whose base is not in `new` is removed,
    /// and its shared pages stay shared where a new slot covers them (the
    /// keep-shared rule: a slot merged with a neighbour keeps its shared
    /// pages); other new pages start private. Each range the rule makes
    /// shared is reported to the change callback as shared, after the lock.
    /// Errors: EINVAL (npages 0, bases not ascending), ERANGE (beyond the GFN
    /// limit), EEXIST (two new slots overlap), ENOSPC (more than maxSlots),
    /// all before anything changes; ENOMEM (the change may be partly applied).
    /// `keepShared` false drops the rule: every new page starts private
    /// (`applyLayout`).
    public func setLayout(_ new: [Slot], keepShared: Bool = true) throws(SevError) {
        try setLayout(slots: new, keepShared: keepShared)
    }

    /// setLayout over any random-access list of slots (the C ABI passes a
    /// view of the caller's array, so no Swift array is allocated).
    func setLayout<L: RandomAccessCollection>(slots new: L, keepShared: Bool) throws(SevError)
    where L.Element == Slot, L.Index == Int {
        if new.count > Tracker.maxSlots {
            throw SevError(ENOSPC, "layout of \(new.count) slots exceeds \(Tracker.maxSlots)")
        }
        for i in new.indices {
            try Tracker.checkSlotArgs(new[i].base, new[i].pages)
            if i > new.startIndex {
                let p = new[i &- 1]
                if new[i].base <= p.base {
                    throw .invalid("slot \(i) at gfn \(hex(new[i].base)): bases must ascend (slot \(i &- 1) is at \(hex(p.base)))")
                }
                if new[i].base < p.base &+ p.pages {
                    throw SevError(EEXIST, "slot \(i) at gfn \(hex(new[i].base)) overlaps slot \(i &- 1) \(hex(p.base))..\(hex(p.base &+ p.pages))")
                }
            }
        }
        var cb: PendingCallback = (nil, nil)
        var madeShared = MemList<(UInt64, UInt64)>()
        try locked { (e) throws(SevError) in
            try e.setLayout(new, keepShared: keepShared, &madeShared)
            if madeShared.count > 0 { unsafe cb = unsafe e.pendingCallback }
        }
        if let f = unsafe cb.0 {
            for i in 0..<madeShared.count { unsafe f(cb.1, madeShared[i].0, madeShared[i].1, PageState.shared.rawValue) }
        }
    }

    /// Make the layout exactly `want` (ascending, non-overlapping): remove
    /// slots not in it, resize slots with the same base, add new ones.
    /// Surviving pages keep their state; new pages are private. Used by the
    /// destination's staging copy for LAYOUT records. (`setLayout` without
    /// the keep-shared rule.)
    public func applyLayout(_ want: [Slot]) throws(SevError) {
        try setLayout(want, keepShared: false)
    }

    /// The slot of an ascending list that starts at `base` (binary search).
    static func find<L: RandomAccessCollection>(_ list: L, _ base: UInt64) -> Slot?
    where L.Element == Slot, L.Index == Int {
        var lo = list.startIndex, hi = list.endIndex
        while lo < hi {
            let mid = (lo &+ hi) &>> 1
            if list[mid].base < base { lo = mid &+ 1 } else { hi = mid }
        }
        return lo < list.endIndex && list[lo].base == base ? list[lo] : nil
    }
}

extension Engine {
    /// Tracker.setLayout's work after its argument checks; appends the
    /// ranges the keep-shared rule made shared to `madeShared`. Its lists are
    /// `MemList`s: out of memory is ENOMEM, before any change for the
    /// copies it takes first.
    func setLayout<L: RandomAccessCollection>(_ new: L, keepShared: Bool,
                                              _ madeShared: inout MemList<(UInt64, UInt64)>) throws(SevError)
    where L.Element == Tracker.Slot, L.Index == Int {
        // The old layout, and the shared runs of the slots that go: taken
        // before anything changes.
        var old = MemList<Tracker.Slot>()
        if !old.reserve(slotCount) { throw .noMemory("out of memory allocating a copy of the layout") }
        for s in 0..<slotCount { _ = unsafe old.append(Tracker.Slot(base: slots[s].base, pages: slots[s].pages)) }
        var shared = MemList<(UInt64, UInt64)>()
        var pairs = 0
        for k in 0..<old.count where keepShared && Tracker.find(new, old[k].base) == nil {
            let o = old[k]
            var from = o.base
            let end = o.base &+ o.pages
            while let r = nextSharedRun(from: from), r.gfn < end {
                let e = min(r.gfn &+ r.pages, end)
                if !shared.append((r.gfn, e)) { throw .noMemory("out of memory allocating the shared runs of a removed slot") }
                for n in new where max(r.gfn, n.base) < min(e, n.base &+ n.pages) { pairs &+= 1 }
                from = e
            }
        }
        // Room for every range the rule can report, so no report is lost.
        if !madeShared.reserve(pairs) { throw .noMemory("out of memory allocating the kept-shared ranges") }
        for k in 0..<old.count where Tracker.find(new, old[k].base) == nil {
            try removeSlot(base: old[k].base)
        }
        // Shrink first, so that a growing slot never meets an old neighbour.
        for pass in 0..<2 {
            let grow = pass == 1
            for k in 0..<old.count {
                let o = old[k]
                guard let n = Tracker.find(new, o.base), n.pages != o.pages, (n.pages > o.pages) == grow else { continue }
                try resizeSlot(base: n.base, pages: n.pages)
            }
        }
        unsafe try old.withBuffer { (was) throws(SevError) in
            for n in new where unsafe Tracker.find(was, n.base) == nil {
                try addSlot(base: n.base, pages: n.pages)
            }
        }
        for k in 0..<shared.count {
            let (a, b) = shared[k]
            for n in new {
                let start = max(a, n.base), end = min(b, n.base &+ n.pages)
                if start < end, try setRange(start, end &- start, private: false) {
                    _ = madeShared.append((start, end &- start))   // reserved above: cannot fail
                }
            }
        }
    }
}
