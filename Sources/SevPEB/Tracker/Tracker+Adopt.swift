import CSevPEBShims

extension Tracker {
    /// Replace this tracker's page state with `other`'s (same layout
    /// required), leaving `other` empty. The adopted state counts as sent
    /// (no dirty chunks). No change callback is made.
    public func adopt(_ other: Tracker) throws(SevError) {
        // Compared under both locks, slot table against slot table (no
        // Swift arrays: nothing here can fail to allocate).
        try other.locked { (o) throws(SevError) in
            try locked { (e) throws(SevError) in
                if !e.sameLayout(o) {
                    throw SevError(EREMCHG, "received layout (\(o.slotCount) slots) differs from the destination's (\(e.slotCount) slots)")
                }
                e.adopt(o)
            }
        }
    }
}

extension Engine {
    /// Whether both engines hold the same slots.
    func sameLayout(_ other: borrowing Engine) -> Bool {
        if slotCount != other.slotCount { return false }
        for s in 0..<slotCount where unsafe slots[s].base != other.slots[s].base || slots[s].pages != other.slots[s].pages {
            return false
        }
        return true
    }

    /// Tracker.adopt's work, with both locks held: free this engine's slot
    /// storage, then swap slot tables with `other` (which keeps this
    /// engine's emptied table).
    func adopt(_ other: borrowing Engine) {
        for s in 0..<slotCount { unsafe freeSlotStorage(slots[s]) }
        let myTable = Mem.bytes(slotCap, SlotRec.self)
        memBytes = memBytes &- myTable &+ other.memBytes
        let (t, cap) = unsafe (slots, slotCap)
        unsafe slots = unsafe other.slots; slotCount = other.slotCount; slotCap = other.slotCap
        unsafe other.slots = unsafe t; other.slotCount = 0; other.slotCap = cap; other.memBytes = myTable
        // The adopted chunks count as sent. Their dirty bits were counted
        // in `other`'s count, not ours (ours is 0: freeSlotStorage above
        // subtracted our old chunks), so clear the bits directly.
        for s in 0..<slotCount {
            for gi in unsafe 0..<slots[s].groupCount { unsafe slots[s].groups[gi].dirty = 0 }
        }
        dirtyCount = 0
        other.dirtyCount = 0
        layoutGeneration &+= 1
    }
}
