import Synchronization
/// The storage invariants of Storage.swift, checked: tests call this after
/// every batch of random operations. Returns nil, or the first violation.
extension Tracker {
    public func checkInvariants() -> String? {
        locked { $0.checkInvariants() }
    }
}

extension Engine {
    func checkInvariants() -> String? {
        var dirty = 0
        var mem = 0
        var prevEnd: UInt64 = 0
        for s in 0..<slotCount {
            let sl = unsafe slots[s]
            if sl.pages == 0 { return "slot \(s) is empty" }
            if s > 0 && sl.base < prevEnd { return "slot \(s) at \(hex(sl.base)) overlaps the previous one" }
            prevEnd = sl.end
            if sl.groupCount != Int(Geometry.groups(sl.pages)) { return "slot \(s): \(sl.groupCount) groups for \(sl.pages) pages" }
            mem &+= Mem.bytes(sl.groupCount, Group.self)
            let nch = Geometry.chunks(sl.pages)
            for gi in 0..<sl.groupCount {
                let g = unsafe sl.groups + gi
                let first = UInt64(gi) &<< 6
                let inGroup = min(64, nch &- first)
                let live: UInt64 = inGroup == 64 ? ~0 : ((1 &<< inGroup) &- 1)
                let p = unsafe g.pointee
                if (p.shared | p.mixed | p.dirty | p.hashOK) & ~live != 0 { return "slot \(s) group \(gi): bits set past the last chunk" }
                if p.shared & p.mixed != 0 { return "slot \(s) group \(gi): chunk both shared-uniform and mixed" }
                if p.hashOK & ~p.mixed != 0 { return "slot \(s) group \(gi): hashOK on a uniform chunk" }
                if unsafe (p.mixed == 0) != (p.blocks == nil) { return "slot \(s) group \(gi): block array presence does not match mixed mask" }
                if p.mixed.nonzeroBitCount > Int(p.blockCap) { return "slot \(s) group \(gi): more mixed chunks than array capacity" }
                if p.hashValid {
                    // The cached summary must equal a fresh computation.
                    unsafe g.pointee.hashValid = false
                    let fresh = groupSummary(s, gi)
                    if fresh.hash != p.hash || fresh.shared != UInt64(p.sharedPages) {
                        return "slot \(s) group \(gi): stale cached group hash or shared count"
                    }
                }
                dirty &+= p.dirty.nonzeroBitCount
                unsafe mem &+= Mem.bytes(Int(p.blockCap), UnsafeMutablePointer<UInt64>?.self)
                var mx = p.mixed
                while mx != 0 {
                    let bit = UInt64(mx.trailingZeroBitCount); mx &= mx &- 1
                    guard unsafe p.blocks![rank(p.mixed, bit)] != nil else { return "slot \(s) group \(gi) chunk \(bit): missing block" }
                    mem &+= Mem.bytes(Geometry.blockWords, UInt64.self)
                    let len = Geometry.chunkLen(first | bit, sl.pages)
                    let blk = unsafe block(g, bit)
                    if len < Geometry.chunkPages {
                        if unsafe Bits.countOnes(blk, from: len, to: Geometry.chunkPages) != 0 {
                            return "slot \(s) group \(gi) chunk \(bit): padding bits set past length \(len)"
                        }
                    }
                    if unsafe p.hashOK & (1 &<< bit) != 0 && blk[Geometry.chunkWords] != XXH3.hash(words: blk, count: (len &+ 63) &>> 6) {
                        return "slot \(s) group \(gi) chunk \(bit): stale cached hash"
                    }
                }
            }
        }
        if summaryCache.gen == stateGeneration {
            let cached = summaryCache
            summaryCache.gen = 0
            let fresh = summary()
            if fresh.digest != cached.digest || fresh.pages != cached.pages || fresh.shared != cached.shared {
                return "stale whole-state summary cache"
            }
        }
        mem &+= Mem.bytes(slotCap, SlotRec.self)
        if dirty != dirtyCount { return "dirty chunk count \(dirtyCount) but \(dirty) dirty bits" }
        if mem != memBytes { return "memory accounting \(memBytes) but structures hold \(mem)" }
        return nil
    }
}
