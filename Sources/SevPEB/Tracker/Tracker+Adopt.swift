import Synchronization
import CSevPEBShims

extension Tracker {
    /// Make the layout exactly `want` (sorted, non-overlapping): remove
    /// slots not in it, resize slots with the same base, add new ones.
    /// Surviving pages keep their state; new pages are private. Used by the
    /// destination's staging copy for LAYOUT records.
    public func applyLayout(_ want: [Slot]) throws(SevError) {
        let have = slotList
        for s in have where !want.contains(where: { $0.base == s.base }) {
            try removeSlot(base: s.base)
        }
        // Shrink first so that growth never collides with a neighbour.
        for w in want {
            if let h = have.first(where: { $0.base == w.base }), h.pages > w.pages {
                try resizeSlot(base: w.base, pages: w.pages)
            }
        }
        for w in want {
            if let h = have.first(where: { $0.base == w.base }) {
                if h.pages < w.pages { try resizeSlot(base: w.base, pages: w.pages) }
            } else {
                try addSlot(base: w.base, pages: w.pages)
            }
        }
    }

    /// Replace this tracker's page state with `other`'s (same layout
    /// required), leaving `other` empty. The adopted state counts as sent
    /// (no dirty chunks). No change callback is made.
    public func adopt(_ other: Tracker) throws(SevError) {
        let mine = slotList, theirs = other.slotList
        if mine != theirs {
            throw SevError(EREMCHG, "received layout (\(theirs.count) slots) differs from the destination's (\(mine.count) slots)")
        }
        other.withLock { withLock {
            for s in 0..<slotCount { freeSlotStorage(slots![s]) }
            Mem.free(slots)
            memBytes &-= Mem.bytes(slotCap, SlotRec.self)
            slots = other.slots; slotCount = other.slotCount; slotCap = other.slotCap
            memBytes &+= other.memBytes
            other.slots = nil; other.slotCount = 0; other.slotCap = 0; other.memBytes = 0
            // The adopted chunks count as sent. Their dirty bits were counted
            // in `other`'s counter, not ours (ours is 0: freeSlotStorage above
            // subtracted our old chunks), so clear the bits directly.
            for s in 0..<slotCount {
                for gi in 0..<slots![s].groupCount { slots![s].groups[gi].dirty = 0 }
            }
            dirtyChunks.store(0, ordering: .relaxed)
            other.dirtyChunks.store(0, ordering: .relaxed)
            layoutGeneration &+= 1
        } }
    }
}
