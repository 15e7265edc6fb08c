/// The state digest (docs/FORMAT.md, "Digest"): a three-level XXH3 tree.
///
///   chunk hash  = XXH3 of the chunk's bits as little-endian words (bits at
///                 or above the chunk length are zero)
///   group hash  = XXH3 of the hashes of the group's chunks (up to 64 words)
///   digest      = XXH3 of, for each slot in GFN order: base, npages, then
///                 its group hashes (all as little-endian words)
///
/// Chunk and group hashes are cached and invalidated by every change, so a
/// digest after few changes costs O(changed groups + groups).
extension Tracker {
    static let privateChunkHash = uniformHash(len: Geometry.chunkPages, value: true)
    static let sharedChunkHash = uniformHash(len: Geometry.chunkPages, value: false)

    static func uniformHash(len: Int, value: Bool) -> UInt64 {
        var x = XXH3()
        let words = (len &+ 63) &>> 6
        for i in 0..<words {
            var w: UInt64 = value ? ~0 : 0
            if value && i == words &- 1 && len & 63 != 0 { w = Bits.mask(0, len & 63) }
            x.add(w)
        }
        return x.finish()
    }

    /// Digest of the whole state (layout and bits), one consistent snapshot.
    public func digest() -> UInt64 { locked { $0.summary().digest } }

    /// Digest and page counts in one consistent snapshot (the FINAL record).
    public func summary() -> (digest: UInt64, pages: UInt64, shared: UInt64) { locked { $0.summary() } }

    /// Recompute stale group hashes, taking the lock once per group, so that
    /// a later `digest()` (at downtime) only hashes what changed since.
    public func refreshDigestCache() {
        var s = 0
        var gi = 0
        while true {
            let more = locked { e -> Bool in
                while s < e.slotCount {
                    if unsafe gi < e.slots[s].groupCount {
                        e.groupSummary(s, gi)
                        gi &+= 1
                        return true
                    }
                    s &+= 1; gi = 0
                }
                return false
            }
            if !more {
                _ = locked { $0.summary() }   // O(groups), all cached now
                return
            }
        }
    }
}

extension Engine {
    /// Hash of chunk c of slot s.
    func chunkHash(_ s: Int, _ c: UInt64) -> UInt64 {
        let g = unsafe group(s, c)
        let bit = c & 63
        let len = unsafe Geometry.chunkLen(c, slots[s].pages)
        if let u = unsafe uniformValue(g, bit) {
            if len == Geometry.chunkPages { return u ? Tracker.privateChunkHash : Tracker.sharedChunkHash }
            return Tracker.uniformHash(len: len, value: u)
        }
        let blk = unsafe block(g, bit)
        if unsafe g.pointee.hashOK & (1 &<< bit) != 0 { return unsafe blk[Geometry.chunkWords] }
        let h = unsafe XXH3.hash(words: blk, count: (len &+ 63) &>> 6)
        unsafe blk[Geometry.chunkWords] = h
        unsafe g.pointee.hashOK |= 1 &<< bit
        return h
    }

    /// Hash and shared-page count of group gi of slot s, cached.
    @discardableResult
    func groupSummary(_ s: Int, _ gi: Int) -> (hash: UInt64, shared: UInt64) {
        let g = unsafe slots[s].groups + gi
        if unsafe g.pointee.hashValid { return unsafe (g.pointee.hash, UInt64(g.pointee.sharedPages)) }
        let pages = unsafe slots[s].pages
        let nch = Geometry.chunks(pages)
        let first = UInt64(gi) &<< 6
        let last = min(nch, first &+ 64)
        var x = XXH3()
        var shared: UInt64 = 0
        var c = first
        while c < last {
            x.add(chunkHash(s, c))
            let bit = c & 63
            let len = Geometry.chunkLen(c, pages)
            if let u = unsafe uniformValue(g, bit) {
                if !u { shared &+= UInt64(len) }
            } else {
                unsafe shared &+= UInt64(len &- Bits.countOnes(block(g, bit), from: 0, to: len))
            }
            c &+= 1
        }
        let h = x.finish()
        unsafe g.pointee.hash = h
        unsafe g.pointee.sharedPages = UInt32(truncatingIfNeeded: shared)   // <= 2^20
        unsafe g.pointee.hashValid = true
        return (h, shared)
    }

    /// Digest and page counts of the whole state: O(1) when
    /// nothing changed since the last call, else O(groups) plus the changed
    /// chunks' hashes.
    func summary() -> (digest: UInt64, pages: UInt64, shared: UInt64) {
        if summaryCache.gen == stateGeneration {
            return (summaryCache.digest, summaryCache.pages, summaryCache.shared)
        }
        var x = XXH3()
        var pages: UInt64 = 0, shared: UInt64 = 0
        for s in 0..<slotCount {
            unsafe x.add(slots[s].base)
            unsafe x.add(slots[s].pages)
            unsafe pages &+= slots[s].pages
            for gi in unsafe 0..<slots[s].groupCount {
                let (h, sh) = groupSummary(s, gi)
                x.add(h)
                shared &+= sh
            }
        }
        let d = x.finish()
        summaryCache = (stateGeneration, d, pages, shared)
        return (d, pages, shared)
    }
}
