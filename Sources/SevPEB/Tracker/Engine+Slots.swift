import CSevPEBShims

/// Slot-table operations of the engine (lock held).
extension Engine {
    /// Tracker.addSlot's work.
    func addSlot(base: UInt64, pages: UInt64) throws(SevError) {
        try Tracker.checkSlotArgs(base, pages)
        let i = firstSlotEndingAfter(base)
        if unsafe i < slotCount && slots[i].base < base &+ pages {
            let o = unsafe slots[i]
            throw SevError(EEXIST, "slot gfn \(hex(base))..\(hex(base &+ pages)) overlaps slot \(hex(o.base))..\(hex(o.end))")
        }
        if slotCount >= Tracker.maxSlots { throw SevError(ENOSPC, "slot table full (\(Tracker.maxSlots) slots)") }
        let ng = Int(truncatingIfNeeded: Geometry.groups(pages))
        guard let groups = unsafe Mem.calloc(ng, Group.self) else { throw .noMemory("out of memory allocating the chunk groups of a slot") }
        if slotCount == slotCap {
            let newCap = max(8, slotCap &* 2)
            guard let ns = unsafe Mem.calloc(newCap, SlotRec.self) else {
                unsafe Mem.free(groups)
                throw .noMemory("out of memory allocating the slot table")
            }
            unsafe ns.update(from: slots, count: slotCount)
            unsafe Mem.free(slots)
            memBytes &+= Mem.bytes(newCap &- slotCap, SlotRec.self)
            unsafe slots = unsafe ns
            slotCap = newCap
        }
        memBytes &+= Mem.bytes(ng, Group.self)
        var j = slotCount
        while j > i { unsafe slots[j] = unsafe slots[j &- 1]; j &-= 1 }
        unsafe slots[i] = unsafe SlotRec(base: base, pages: pages, groups: groups, groupCount: ng)
        slotCount &+= 1
        // New pages are private; mark them changed so that a destination
        // that saw an earlier slot at this base is told.
        markAllChanged(i, fromChunk: 0)
        layoutGeneration &+= 1
    }

    func markAllChanged(_ s: Int, fromChunk c0: UInt64) {
        let sl = unsafe slots[s]
        let nch = Geometry.chunks(sl.pages)
        var c = c0
        while c < nch {
            let g = unsafe group(s, c)
            let bit = c & 63
            let upto = min(nch, (c | 63) &+ 1)
            let cnt = upto &- c
            let m: UInt64 = cnt == 64 ? ~0 : (((1 as UInt64) &<< cnt) &- 1) &<< bit
            let newDirty = unsafe m & ~g.pointee.dirty
            unsafe g.pointee.dirty |= m
            unsafe g.pointee.hashOK &= ~m
            unsafe g.pointee.hashValid = false
            dirtyCount &+= newDirty.nonzeroBitCount
            c = upto
        }
    }

    func freeSlotStorage(_ sl: SlotRec) {
        for gi in 0..<sl.groupCount {
            let g = unsafe sl.groups + gi
            unsafe freeGroupBlocks(g)
            unsafe dirtyCount &-= g.pointee.dirty.nonzeroBitCount
        }
        unsafe Mem.free(sl.groups)
        memBytes &-= Mem.bytes(sl.groupCount, Group.self)
    }

    /// Tracker.removeSlot's work.
    func removeSlot(base: UInt64) throws(SevError) {
        guard let i = slotIndex(containing: base), unsafe slots[i].base == base else {
            throw SevError(ENOENT, "no slot starts at gfn \(hex(base))")
        }
        unsafe freeSlotStorage(slots[i])
        var j = i
        while j &+ 1 < slotCount { unsafe slots[j] = unsafe slots[j &+ 1]; j &+= 1 }
        slotCount &-= 1
        layoutGeneration &+= 1
    }

    /// Tracker.resizeSlot's work.
    func resizeSlot(base: UInt64, pages: UInt64) throws(SevError) {
        try Tracker.checkSlotArgs(base, pages)
        guard let i = slotIndex(containing: base), unsafe slots[i].base == base else {
            throw SevError(ENOENT, "no slot starts at gfn \(hex(base))")
        }
        let old = unsafe slots[i]
        if pages == old.pages { return }
        if unsafe i &+ 1 < slotCount && base &+ pages > slots[i &+ 1].base {
            let o = unsafe slots[i &+ 1]
            throw SevError(EEXIST, "slot \(hex(base)) grown to \(pages) pages overlaps slot \(hex(o.base))..\(hex(o.end))")
        }
        let newChunks = Geometry.chunks(pages)
        let ng = Int(truncatingIfNeeded: Geometry.groups(pages))
        // The old boundary chunk keeps its block; its pages beyond the old
        // end become private (grow) or are cut (shrink).
        let boundary = (min(old.pages, pages) &- 1) &>> UInt64(Geometry.chunkShift)
        if pages > old.pages {
            // Growing a partial chunk that is uniform shared needs a block.
            let g = unsafe group(i, boundary)
            if old.pages & UInt64(Geometry.chunkPages &- 1) != 0,
               let u = unsafe uniformValue(g, boundary & 63), !u,
               !materialize(i, boundary) {
                throw .noMemory("out of memory allocating a chunk block for a slot resize")
            }
        }
        var groups = unsafe old.groups
        if ng != old.groupCount {
            guard let ngp = unsafe Mem.calloc(ng, Group.self) else { throw .noMemory("out of memory allocating the chunk groups of a slot resize") }
            // Free storage of groups that disappear.
            if ng < old.groupCount {
                for gi in ng..<old.groupCount {
                    let g = unsafe old.groups + gi
                    unsafe freeGroupBlocks(g)
                    unsafe dirtyCount &-= g.pointee.dirty.nonzeroBitCount
                }
            }
            unsafe ngp.update(from: old.groups, count: min(ng, old.groupCount))
            unsafe Mem.free(old.groups)
            memBytes &+= Mem.bytes(ng, Group.self) &- Mem.bytes(old.groupCount, Group.self)
            unsafe groups = unsafe ngp
        }
        unsafe slots[i].groups = unsafe groups
        unsafe slots[i].groupCount = ng
        unsafe slots[i].pages = pages
        if pages < old.pages {
            // Drop chunks past the new end within the last group.
            let lastG = unsafe group(i, newChunks &- 1)
            let live = newChunks & 63 == 0 ? ~UInt64(0) : ((1 &<< (newChunks & 63)) &- 1)
            // Their blocks are the highest ranks of the compact array.
            let keep = unsafe (lastG.pointee.mixed & live).nonzeroBitCount
            let had = unsafe lastG.pointee.mixed.nonzeroBitCount
            for r in keep..<had {
                unsafe Mem.free(lastG.pointee.blocks![r]); memBytes &-= Mem.bytes(Geometry.blockWords, UInt64.self)
                unsafe lastG.pointee.blocks![r] = nil
            }
            unsafe dirtyCount &-= (lastG.pointee.dirty & ~live).nonzeroBitCount
            unsafe lastG.pointee.mixed &= live; unsafe lastG.pointee.shared &= live
            unsafe lastG.pointee.dirty &= live; unsafe lastG.pointee.hashOK &= live
            if unsafe lastG.pointee.mixed == 0 { unsafe freeBlockArray(lastG) }
            // Zero the padding of the new boundary chunk.
            let bg = unsafe group(i, boundary)
            if unsafe bg.pointee.mixed & (1 &<< (boundary & 63)) != 0 {
                let len = Geometry.chunkLen(boundary, pages)
                unsafe Bits.fill(block(bg, boundary & 63), from: len, to: Geometry.chunkPages, value: false)
            }
        } else {
            let bg = unsafe group(i, boundary)
            if unsafe bg.pointee.mixed & (1 &<< (boundary & 63)) != 0 {
                let from = Geometry.chunkLen(boundary, old.pages)
                let to = Geometry.chunkLen(boundary, pages)
                unsafe Bits.fill(block(bg, boundary & 63), from: from, to: to, value: true)
            }
        }
        markAllChanged(i, fromChunk: boundary)
        layoutGeneration &+= 1
    }
}
