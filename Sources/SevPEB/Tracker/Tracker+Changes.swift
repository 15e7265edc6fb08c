import Synchronization
/// Change tracking for live migration.
///
/// Every update sets its chunk's dirty bit under the lock *after* changing
/// the bits; `takeNextChunk` copies a chunk and clears its dirty bit under
/// the same lock. So a change racing with the chunk's transmission either
/// happened before the copy (and is in it) or sets the bit again (and the
/// chunk is sent again later): nothing is lost, nothing is torn.
extension Tracker {
    public enum ChunkKind { case allPrivate, allShared, mixed }

    public struct ChunkSnapshot {
        public var gfn: UInt64
        public var pages: Int
        public var kind: ChunkKind
        /// Nothing was taken: the layout generation is not the one the
        /// caller passed (its stream must declare the new layout first).
        public var layoutChanged = false
    }

    public enum TakeMode {
        /// Chunks changed since they were last taken.
        case dirty
        /// Every chunk that is not uniformly private (a full send to a
        /// destination whose state starts private); clears every dirty bit
        /// passed over.
        case nonPrivate
    }

    /// Number of chunks changed since last taken (cheap, no lock).
    public var pendingChunks: Int { dirtyChunks.load(ordering: .relaxed) }

    /// Take the first chunk at or after GFN `cursor` that `mode` selects:
    /// copy its bits into `buf` (Geometry.chunkWords words, when mixed),
    /// clear its dirty bit, and make it uniform if its block turned out to
    /// be. Returns nil when no chunk is left after `cursor`. With
    /// `layoutGeneration`, takes nothing and returns a snapshot with
    /// `layoutChanged` set if the layout is no longer that generation (checked
    /// under the same lock as the take).
    // SAFETY: buf holds chunkBufferWords words (the caller's scratch, documented above); at most chunkWords are written.
    public func takeNextChunk(from cursor: UInt64, mode: TakeMode,
                              into buf: UnsafeMutablePointer<UInt64>,
                              layoutGeneration gen: UInt64? = nil) -> ChunkSnapshot? {
        locked { $0.takeNextChunk(from: cursor, mode: mode, into: buf, layoutGeneration: gen) }
    }

    /// The current layout generation (changes on every add/remove/resize).
    public var currentLayoutGeneration: UInt64 { locked { $0.layoutGeneration } }
}

extension Engine {
    /// Tracker.takeNextChunk's work.
    // SAFETY: buf as for Tracker.takeNextChunk; groups are reached through slots[s].groups below groupCount.
    func takeNextChunk(from cursor: UInt64, mode: Tracker.TakeMode,
                       into buf: UnsafeMutablePointer<UInt64>,
                       layoutGeneration gen: UInt64?) -> Tracker.ChunkSnapshot? {
        if let gen, gen != layoutGeneration {
            return Tracker.ChunkSnapshot(gfn: 0, pages: 0, kind: .allPrivate, layoutChanged: true)
        }
        var s = firstSlotEndingAfter(cursor)
        var first = true
        while s < slotCount {
            let sl = slots[s]
            let nch = Geometry.chunks(sl.pages)
            var c: UInt64 = 0
            if first && cursor > sl.base {
                // Resume at the chunk that starts at or after the cursor.
                let rel = cursor &- sl.base
                c = (rel &+ UInt64(Geometry.chunkPages &- 1)) &>> UInt64(Geometry.chunkShift)
            }
            first = false
            while c < nch {
                let gi = Int(truncatingIfNeeded: c &>> 6)
                let g = sl.groups + gi
                let lo = c & 63
                let inGroup = min(UInt64(64), nch &- (c & ~63))
                let live: UInt64 = inGroup == 64 ? ~0 : ((1 &<< inGroup) &- 1)
                let from: UInt64 = ~0 &<< lo
                let cand: UInt64
                switch mode {
                case .dirty: cand = g.pointee.dirty & live & from
                case .nonPrivate: cand = (g.pointee.shared | g.pointee.mixed) & live & from
                }
                if cand == 0 {
                    if mode == .nonPrivate { clearDirty(g, live & from) }
                    c = (c & ~63) &+ inGroup
                    continue
                }
                let bit = UInt64(cand.trailingZeroBitCount)
                if mode == .nonPrivate {
                    // Private chunks passed over count as sent.
                    let passed = from & ((1 &<< bit) &- 1)
                    clearDirty(g, passed)
                }
                let chunk = (c & ~63) | bit
                clearDirty(g, 1 &<< bit)
                return snapshot(s, chunk, g, bit, buf)
            }
            s &+= 1
        }
        return nil
    }

    // SAFETY: g is a live group of this engine, written under the lock.
    @inline(__always) func clearDirty(_ g: UnsafeMutablePointer<Group>, _ m: UInt64) {
        let was = g.pointee.dirty & m
        if was != 0 {
            g.pointee.dirty &= ~m
            dirtyCount &-= was.nonzeroBitCount
        }
    }

    // SAFETY: g is chunk c's group; buf holds chunkBufferWords words and at most ceil(len/64) <= chunkWords are written.
    func snapshot(_ s: Int, _ c: UInt64, _ g: UnsafeMutablePointer<Group>, _ bit: UInt64,
                  _ buf: UnsafeMutablePointer<UInt64>) -> Tracker.ChunkSnapshot {
        let sl = slots[s]
        let gfn = sl.base &+ (c &<< UInt64(Geometry.chunkShift))
        let len = Geometry.chunkLen(c, sl.pages)
        if let u = uniformValue(g, bit) {
            return Tracker.ChunkSnapshot(gfn: gfn, pages: len, kind: u ? .allPrivate : .allShared)
        }
        let blk = block(g, bit)
        let words = (len &+ 63) &>> 6
        var andAll: UInt64 = ~0, orAll: UInt64 = 0
        for i in 0..<words {
            var w = blk[i]
            buf[i] = w
            orAll |= w
            if i == words &- 1 && len & 63 != 0 { w |= ~Bits.mask(0, len & 63) }
            andAll &= w
        }
        if andAll == ~0 {
            setUniform(g, bit, true)   // a block that became all private: free it
            return Tracker.ChunkSnapshot(gfn: gfn, pages: len, kind: .allPrivate)
        }
        if orAll == 0 {
            setUniform(g, bit, false)
            return Tracker.ChunkSnapshot(gfn: gfn, pages: len, kind: .allShared)
        }
        return Tracker.ChunkSnapshot(gfn: gfn, pages: len, kind: .mixed)
    }

}
