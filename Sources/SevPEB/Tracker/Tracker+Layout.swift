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
        if new.count > Tracker.maxSlots {
            throw SevError(ENOSPC, "layout of \(new.count) slots exceeds \(Tracker.maxSlots)")
        }
        for i in 0..<new.count {
            try Tracker.checkSlotArgs(new[i].base, new[i].pages)
            if i > 0 {
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
        var madeShared: [(UInt64, UInt64)] = []
        try locked { (e) throws(SevError) in
            try e.setLayout(new, keepShared: keepShared, &madeShared)
            if !madeShared.isEmpty { cb = e.pendingCallback }
        }
        if let f = cb.0 { for (g, n) in madeShared { f(cb.1, g, n, PageState.shared.rawValue) } }
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
    static func find(_ list: [Slot], _ base: UInt64) -> Slot? {
        var lo = 0, hi = list.count
        while lo < hi {
            let mid = (lo &+ hi) &>> 1
            if list[mid].base < base { lo = mid &+ 1 } else { hi = mid }
        }
        return lo < list.count && list[lo].base == base ? list[lo] : nil
    }
}

extension Engine {
    /// Tracker.setLayout's work after its argument checks; appends the
    /// ranges the keep-shared rule made shared to `madeShared`.
    func setLayout(_ new: [Tracker.Slot], keepShared: Bool, _ madeShared: inout [(UInt64, UInt64)]) throws(SevError) {
        var old: [Tracker.Slot] = []
        old.reserveCapacity(slotCount)
        for s in 0..<slotCount { old.append(Tracker.Slot(base: slots[s].base, pages: slots[s].pages)) }
        // Old slots that go: remember their shared pages, then remove.
        var shared: [(UInt64, UInt64)] = []
        for o in old where Tracker.find(new, o.base) == nil {
            var from = o.base
            let end = o.base &+ o.pages
            while keepShared, let r = nextSharedRun(from: from), r.gfn < end {
                let e = min(r.gfn &+ r.pages, end)
                shared.append((r.gfn, e))
                from = e
            }
            try removeSlot(base: o.base)
        }
        // Shrink first, so that a growing slot never meets an old neighbour.
        for grow in [false, true] {
            for o in old {
                guard let n = Tracker.find(new, o.base), n.pages != o.pages, (n.pages > o.pages) == grow else { continue }
                try resizeSlot(base: n.base, pages: n.pages)
            }
        }
        for n in new where Tracker.find(old, n.base) == nil {
            try addSlot(base: n.base, pages: n.pages)
        }
        for (a, b) in shared {
            for n in new {
                let start = max(a, n.base), end = min(b, n.base &+ n.pages)
                if start < end, try setRange(start, end &- start, private: false) {
                    madeShared.append((start, end &- start))
                }
            }
        }
    }
}
