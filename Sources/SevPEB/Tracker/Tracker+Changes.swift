import Synchronization
import CSevPEBHash
/// Change tracking for live migration.
///
/// Every update sets its chunk's dirty bit under the lock *after* changing
/// the bits; `takeChunks` clears a chunk's dirty bit and hands its bits to
/// the encoder under the same lock. So a change racing with the chunk's
/// transmission either happened before the encoder read it (and is in the
/// record) or sets the bit again (and the chunk is sent again later): nothing
/// is lost, nothing is torn.
extension Tracker {
    public enum ChunkKind { case allPrivate, allShared, mixed }

    public struct ChunkSnapshot {
        public var gfn: UInt64
        public var pages: Int
        public var kind: ChunkKind
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
    public var pendingChunks: Int {
        unsafe core.pointee.dirtyChunks.load(ordering: .relaxed) &+ core.pointee.fastDirty.load(ordering: .relaxed)
    }

    /// How a `takeChunks` batch ended.
    public enum TakeEnd {
        /// No chunk is left after the cursor.
        case end
        /// The visitor asked to stop (it took the chunk it was given).
        case stopped
        /// Nothing was taken: the layout generation is not the one the
        /// caller passed (its stream must declare the new layout first).
        case layoutChanged
    }

    /// Take the chunks at or after GFN `cursor` that `mode` selects, in
    /// order, under one lock round trip: for each, clear its dirty bit, make
    /// it uniform if its block turned out to be, and hand it to `visit` with
    /// its block's bits (Geometry.chunkWords words, when mixed; valid only
    /// during the call, which runs with the lock held and must not call back
    /// into the tracker). `visit` returns false to stop after that chunk.
    /// Takes nothing and returns `.layoutChanged` if the layout is no longer
    /// generation `gen` (checked under the same lock).
    // SAFETY: the block pointer given to visit is valid only during that call (under the lock).
    public func takeChunks(from cursor: UInt64, mode: TakeMode, layoutGeneration gen: UInt64,
                           _ visit: (ChunkSnapshot, UnsafePointer<UInt64>?) -> Bool) -> TakeEnd {
        locked { unsafe $0.takeChunks(from: cursor, mode: mode, layoutGeneration: gen, visit) }
    }

    /// The current layout generation (changes on every add/remove/resize).
    public var currentLayoutGeneration: UInt64 { locked { $0.layoutGeneration } }
}

extension Engine {
    /// Tracker.takeChunks's work.
    // SAFETY: groups are reached through slots[s].groups below the slot's group count; the block
    // pointer handed to visit is valid while the lock is held (visit must not call back in).
    func takeChunks(from cursor: UInt64, mode: Tracker.TakeMode, layoutGeneration gen: UInt64,
                    _ visit: (Tracker.ChunkSnapshot, UnsafePointer<UInt64>?) -> Bool) -> Tracker.TakeEnd {
        if gen != layoutGeneration { return .layoutChanged }
        var s = firstSlotEndingAfter(cursor)
        var first = true
        while s < slotCount {
            let sl = unsafe slots[s]
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
                let g = unsafe sl.groups + gi
                let lo = c & 63
                let inGroup = min(UInt64(64), nch &- (c & ~63))
                let live: UInt64 = inGroup == 64 ? ~0 : ((1 &<< inGroup) &- 1)
                let from: UInt64 = ~0 &<< lo
                let cand: UInt64
                switch mode {
                case .dirty: cand = unsafe g.pointee.dirty & live & from
                case .nonPrivate: cand = unsafe (g.pointee.shared | g.pointee.mixed) & live & from
                }
                if cand == 0 {
                    if mode == .nonPrivate { unsafe clearDirty(g, live & from) }
                    c = (c & ~63) &+ inGroup
                    continue
                }
                let bit = UInt64(cand.trailingZeroBitCount)
                if mode == .nonPrivate {
                    // Private chunks passed over count as sent.
                    let passed = from & ((1 &<< bit) &- 1)
                    unsafe clearDirty(g, passed)
                }
                let chunk = (c & ~63) | bit
                unsafe clearDirty(g, 1 &<< bit)
                let (snap, bits) = unsafe view(s, chunk, g, bit)
                if unsafe bits != nil {
                    // Start reading the group's next block while this one is written.
                    let later = unsafe g.pointee.mixed & ~((2 &<< bit) &- 1)
                    if later != 0 {
                        let nb = unsafe block(g, UInt64(later.trailingZeroBitCount))
                        unsafe spb_prefetch(nb, Geometry.chunkWords &* 8)
                    }
                }
                if unsafe !visit(snap, bits) { return .stopped }
                c = chunk &+ 1
            }
            s &+= 1
        }
        return .end
    }

    // SAFETY: g is a live group of this engine, written under the lock.
    @inline(__always) func clearDirty(_ g: UnsafeMutablePointer<Group>, _ m: UInt64) {
        let was = unsafe g.pointee.dirty & m
        if was != 0 {
            unsafe g.pointee.dirty &= ~m
            dirtyCount &-= was.nonzeroBitCount
        }
    }

    /// Chunk c of slot s as the encoder sees it: uniform, or mixed with its
    /// block. A block that turned out uniform is freed first. The check stops
    /// at the first word pair that shows both states (random bits: one word).
    // SAFETY: g is chunk c's group; its block (when mixed) holds chunkWords words, read below ceil(len/64).
    func view(_ s: Int, _ c: UInt64, _ g: UnsafeMutablePointer<Group>, _ bit: UInt64)
        -> (Tracker.ChunkSnapshot, UnsafePointer<UInt64>?) {
        let sl = unsafe slots[s]
        let gfn = sl.base &+ (c &<< UInt64(Geometry.chunkShift))
        let len = Geometry.chunkLen(c, sl.pages)
        if let u = unsafe uniformValue(g, bit) {
            return (Tracker.ChunkSnapshot(gfn: gfn, pages: len, kind: u ? .allPrivate : .allShared), nil)
        }
        let blk = unsafe block(g, bit)
        if let u = unsafe blockUniformity(blk, len) {
            unsafe setUniform(g, bit, u)   // a block that became uniform: free it
            return (Tracker.ChunkSnapshot(gfn: gfn, pages: len, kind: u ? .allPrivate : .allShared), nil)
        }
        return unsafe (Tracker.ChunkSnapshot(gfn: gfn, pages: len, kind: .mixed), UnsafePointer(blk))
    }

    /// Whether the first `len` bits of a block are all 1 (true: all
    /// private), all 0 (false: all shared) or mixed (nil). Stops at the
    /// first word pair that shows both states (random bits: one word).
    // SAFETY: blk holds at least ceil(len/64) words (a chunk's block).
    @inline(__always) func blockUniformity(_ blk: UnsafePointer<UInt64>, _ len: Int) -> Bool? {
        let words = (len &+ 63) &>> 6
        var andAll: UInt64 = ~0, orAll: UInt64 = 0
        var i = 0
        while i < words {
            var w = unsafe blk[i]
            orAll |= w
            if i == words &- 1 && len & 63 != 0 { w |= ~Bits.mask(0, len & 63) }
            andAll &= w
            if orAll != 0 && andAll != ~0 { return nil }
            i &+= 1
        }
        return andAll == ~0 ? true : (orAll == 0 ? false : nil)
    }
}
