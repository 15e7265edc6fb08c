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
    /// all before anything changes; ENOMEM, with nothing changed.
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
    /// ranges the keep-shared rule made shared to `madeShared`.
    ///
    /// Failure-atomic: every slot that changes (resized or new) is built
    /// aside, in a private engine, from this engine's state, which is only
    /// read; every allocation (the new slots' storage, the new table, the
    /// lists) happens then, so out of memory is ENOMEM with nothing changed.
    /// The commit that follows only moves slot records and frees: a slot
    /// that stays as it was keeps its record, storage, dirty bits and
    /// caches; a resized one keeps the dirty bits of the chunks below its
    /// old boundary chunk (as `resizeSlot` does), every other chunk of a
    /// rebuilt slot counts as changed.
    func setLayout<L: RandomAccessCollection>(_ new: L, keepShared: Bool,
                                              _ madeShared: inout MemList<(UInt64, UInt64)>) throws(SevError)
    where L.Element == Tracker.Slot, L.Index == Int {
        // The old layout, and the shared runs of the slots that go.
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
        let kept = unsafe old.withBuffer { (was) in
            new.reduce(0) { unsafe $0 &+ (Tracker.find(was, $1.base) == $1 ? 1 : 0) }
        }
        if kept == new.count && kept == old.count { return }   // the same layout: nothing to do

        // The new table, and the changed slots built aside.
        let cap = max(new.count, EngineState.initialSlotCap)
        guard let table = unsafe Mem.calloc(cap, SlotRec.self) else { throw .noMemory("out of memory allocating the slot table") }
        guard let asideTable = unsafe Mem.calloc(max(new.count &- kept, 1), SlotRec.self) else {
            unsafe Mem.free(table)
            throw .noMemory("out of memory allocating the slot table")
        }
        guard let asideState = unsafe Mem.calloc(1, EngineState.self) else {
            unsafe Mem.free(asideTable); unsafe Mem.free(table)
            throw .noMemory("out of memory allocating the tracker state")
        }
        // SAFETY: fresh calloc'd memory for one EngineState (trivial fields).
        unsafe asideState.initialize(to: EngineState(slots: asideTable, slotCap: max(new.count &- kept, 1), memBytes: 0))
        let aside = unsafe Engine.unshared(asideState)
        do throws(SevError) {
            try unsafe old.withBuffer { (was) throws(SevError) in
                for n in new where unsafe Tracker.find(was, n.base) != n {
                    try aside.addSlot(base: n.base, pages: n.pages)
                    guard let o = unsafe Tracker.find(was, n.base) else { continue }
                    // Resized: the surviving pages keep their state and the
                    // chunks below the old boundary chunk their dirty bits.
                    let keepEnd = n.base &+ min(o.pages, n.pages)
                    var from = n.base
                    while let r = nextSharedRun(from: from), r.gfn < keepEnd {
                        let e = min(r.gfn &+ r.pages, keepEnd)
                        _ = try aside.setRange(r.gfn, e &- r.gfn, private: false)
                        from = e
                    }
                    let boundary = (min(o.pages, n.pages) &- 1) &>> UInt64(Geometry.chunkShift)
                    aside.copyDirty(below: boundary, of: aside.slotIndex(containing: n.base)!,
                                           from: self, slotIndex(containing: n.base)!)
                }
            }
            for k in 0..<shared.count {
                let (a, b) = shared[k]
                for n in new {
                    let start = max(a, n.base), end = min(b, n.base &+ n.pages)
                    if start < end, try aside.setRange(start, end &- start, private: false) {
                        _ = madeShared.append((start, end &- start))   // reserved above: cannot fail
                    }
                }
            }
        } catch {
            for s in 0..<aside.slotCount { unsafe aside.freeSlotStorage(aside.slots[s]) }
            unsafe Mem.free(aside.slots); unsafe Mem.free(asideState)   // the aside table as it is now
            unsafe Mem.free(table)
            throw error
        }

        // Commit: nothing below allocates.
        var dirty = 0, bytes = 0
        unsafe old.withBuffer { (was) in
            var j = 0   // next built slot (ascending, as `new`)
            for (i, n) in new.enumerated() {
                if let o = unsafe Tracker.find(was, n.base), o == n {
                    unsafe table[i] = unsafe slots[slotIndex(containing: n.base)!]
                } else {
                    unsafe table[i] = unsafe aside.slots[j]
                    if let o = unsafe Tracker.find(was, n.base), unsafe slots[slotIndex(containing: o.base)!].resetReport {
                        unsafe table[i].resetReport = true
                    }
                    j &+= 1
                }
            }
        }
        for s in 0..<slotCount {
            let o = unsafe slots[s]
            if Tracker.find(new, o.base).map({ $0.pages == o.pages }) != true { freeSlotStorage(o) }
        }
        dirty = aside.dirtyCount
        bytes = aside.memBytes
        unsafe Mem.free(slots)
        memBytes &+= bytes &+ Mem.bytes(cap, SlotRec.self) &- Mem.bytes(slotCap, SlotRec.self)
        dirtyCount &+= dirty
        unsafe slots = unsafe table
        slotCap = cap
        slotCount = new.count
        layoutGeneration &+= 1
        unsafe Mem.free(aside.slots); unsafe Mem.free(asideState)
    }

    /// Chunks below `boundary` of slot `s` take the dirty bits of chunks
    /// below `boundary` of `other`'s slot `os` (same base, a layout change
    /// built aside); their hashes are recomputed when next needed.
    // SAFETY: both slots hold more than `boundary` chunks (the smaller of the two sizes), so the groups read are below both group counts.
    func copyDirty(below boundary: UInt64, of s: Int, from other: borrowing Engine, _ os: Int) {
        var c: UInt64 = 0
        while c < boundary {
            let g = unsafe group(s, c), og = unsafe other.group(os, c)
            let bit = c & 63
            let upto = min(boundary, (c | 63) &+ 1)
            let cnt = upto &- c
            let m: UInt64 = cnt == 64 ? ~0 : (((1 as UInt64) &<< cnt) &- 1) &<< bit
            let was = unsafe g.pointee.dirty & m
            let now = unsafe og.pointee.dirty & m
            unsafe g.pointee.dirty = (g.pointee.dirty & ~m) | now
            dirtyCount &+= now.nonzeroBitCount &- was.nonzeroBitCount
            c = upto
        }
    }
}
