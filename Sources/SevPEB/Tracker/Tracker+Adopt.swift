import CSevPEBShims

extension Tracker {
    /// Replace this tracker's page state with `other`'s (same layout
    /// required), leaving `other` empty. The adopted state counts as sent
    /// (no dirty chunks). No change callback is made.
    public func adopt(_ other: Tracker) throws(SevError) {
        let mine = slotList, theirs = other.slotList
        if mine != theirs {
            throw SevError(EREMCHG, "received layout (\(theirs.count) slots) differs from the destination's (\(mine.count) slots)")
        }
        other.locked { o in locked { e in e.adopt(o) } }
    }
}

extension Engine {
    /// Tracker.adopt's work, with both locks held: free this engine's slot
    /// storage, then swap slot tables with `other` (which keeps this
    /// engine's emptied table).
    func adopt(_ other: borrowing Engine) {
        for s in 0..<slotCount { freeSlotStorage(slots[s]) }
        let myTable = Mem.bytes(slotCap, SlotRec.self)
        memBytes = memBytes &- myTable &+ other.memBytes
        let (t, cap) = (slots, slotCap)
        slots = other.slots; slotCount = other.slotCount; slotCap = other.slotCap
        other.slots = t; other.slotCount = 0; other.slotCap = cap; other.memBytes = myTable
        // The adopted chunks count as sent. Their dirty bits were counted
        // in `other`'s count, not ours (ours is 0: freeSlotStorage above
        // subtracted our old chunks), so clear the bits directly.
        for s in 0..<slotCount {
            for gi in 0..<slots[s].groupCount { slots[s].groups[gi].dirty = 0 }
        }
        dirtyCount = 0
        other.dirtyCount = 0
        layoutGeneration &+= 1
    }
}
