import CSevPEBShims

/// Slot-table operations of the engine (lock held).
extension Engine {
    /// Tracker.addSlot's work.
    func addSlot(base: UInt64, pages: UInt64) throws(SevError) {
        try Tracker.checkSlotArgs(base, pages)
        let i = firstSlotEndingAfter(base)
        if i < slotCount && slots[i].base < base &+ pages {
            let o = slots[i]
            throw SevError(EEXIST, "slot gfn \(hex(base))..\(hex(base &+ pages)) overlaps slot \(hex(o.base))..\(hex(o.end))")
        }
        if slotCount >= Tracker.maxSlots { throw SevError(ENOSPC, "slot table full (\(Tracker.maxSlots) slots)") }
        let ng = Int(truncatingIfNeeded: Geometry.groups(pages))
        guard let groups = Mem.calloc(ng, Group.self) else { throw .noMemory("\(ng) groups for slot \(hex(base))") }
        if slotCount == slotCap {
            let newCap = max(8, slotCap &* 2)
            guard let ns = Mem.calloc(newCap, SlotRec.self) else {
                Mem.free(groups)
                throw .noMemory("slot table")
            }
            ns.update(from: slots, count: slotCount)
            Mem.free(slots)
            memBytes &+= Mem.bytes(newCap &- slotCap, SlotRec.self)
            slots = ns
            slotCap = newCap
        }
        memBytes &+= Mem.bytes(ng, Group.self)
        var j = slotCount
        while j > i { slots[j] = slots[j &- 1]; j &-= 1 }
        slots[i] = SlotRec(base: base, pages: pages, groups: groups, groupCount: ng)
        slotCount &+= 1
        // New pages are private; mark them changed so that a destination
        // that saw an earlier slot at this base is told.
        markAllChanged(i, fromChunk: 0)
        layoutGeneration &+= 1
    }

    func markAllChanged(_ s: Int, fromChunk c0: UInt64) {
        let sl = slots[s]
        let nch = Geometry.chunks(sl.pages)
        var c = c0
        while c < nch {
            let g = group(s, c)
            let bit = c & 63
            let upto = min(nch, (c | 63) &+ 1)
            let cnt = upto &- c
            let m: UInt64 = cnt == 64 ? ~0 : (((1 as UInt64) &<< cnt) &- 1) &<< bit
            let newDirty = m & ~g.pointee.dirty
            g.pointee.dirty |= m
            g.pointee.hashOK &= ~m
            g.pointee.hashValid = false
            dirtyCount &+= newDirty.nonzeroBitCount
            c = upto
        }
    }

    func freeSlotStorage(_ sl: SlotRec) {
        for gi in 0..<sl.groupCount {
            let g = sl.groups + gi
            freeGroupBlocks(g)
            dirtyCount &-= g.pointee.dirty.nonzeroBitCount
        }
        Mem.free(sl.groups)
        memBytes &-= Mem.bytes(sl.groupCount, Group.self)
    }

    /// Tracker.removeSlot's work.
    func removeSlot(base: UInt64) throws(SevError) {
        guard let i = slotIndex(containing: base), slots[i].base == base else {
            throw SevError(ENOENT, "no slot starts at gfn \(hex(base))")
        }
        freeSlotStorage(slots[i])
        var j = i
        while j &+ 1 < slotCount { slots[j] = slots[j &+ 1]; j &+= 1 }
        slotCount &-= 1
        layoutGeneration &+= 1
    }

    /// Tracker.resizeSlot's work.
    func resizeSlot(base: UInt64, pages: UInt64) throws(SevError) {
        try Tracker.checkSlotArgs(base, pages)
        guard let i = slotIndex(containing: base), slots[i].base == base else {
            throw SevError(ENOENT, "no slot starts at gfn \(hex(base))")
        }
        let old = slots[i]
        if pages == old.pages { return }
        if i &+ 1 < slotCount && base &+ pages > slots[i &+ 1].base {
            let o = slots[i &+ 1]
            throw SevError(EEXIST, "slot \(hex(base)) grown to \(pages) pages overlaps slot \(hex(o.base))..\(hex(o.end))")
        }
        let newChunks = Geometry.chunks(pages)
        let ng = Int(truncatingIfNeeded: Geometry.groups(pages))
        // The old boundary chunk keeps its block; its pages beyond the old
        // end become private (grow) or are cut (shrink).
        let boundary = (min(old.pages, pages) &- 1) &>> UInt64(Geometry.chunkShift)
        if pages > old.pages {
            // Growing a partial chunk that is uniform shared needs a block.
            let g = group(i, boundary)
            if old.pages & UInt64(Geometry.chunkPages &- 1) != 0,
               let u = uniformValue(g, boundary & 63), !u,
               !materialize(i, boundary) {
                throw .noMemory("chunk block for slot \(hex(base)) resize")
            }
        }
        var groups = old.groups
        if ng != old.groupCount {
            guard let ngp = Mem.calloc(ng, Group.self) else { throw .noMemory("\(ng) groups for slot \(hex(base)) resize") }
            // Free storage of groups that disappear.
            if ng < old.groupCount {
                for gi in ng..<old.groupCount {
                    let g = old.groups + gi
                    freeGroupBlocks(g)
                    dirtyCount &-= g.pointee.dirty.nonzeroBitCount
                }
            }
            ngp.update(from: old.groups, count: min(ng, old.groupCount))
            Mem.free(old.groups)
            memBytes &+= Mem.bytes(ng, Group.self) &- Mem.bytes(old.groupCount, Group.self)
            groups = ngp
        }
        slots[i].groups = groups
        slots[i].groupCount = ng
        slots[i].pages = pages
        if pages < old.pages {
            // Drop chunks past the new end within the last group.
            let lastG = group(i, newChunks &- 1)
            let live = newChunks & 63 == 0 ? ~UInt64(0) : ((1 &<< (newChunks & 63)) &- 1)
            // Their blocks are the highest ranks of the compact array.
            let keep = (lastG.pointee.mixed & live).nonzeroBitCount
            let had = lastG.pointee.mixed.nonzeroBitCount
            for r in keep..<had {
                Mem.free(lastG.pointee.blocks![r]); memBytes &-= Mem.bytes(Geometry.blockWords, UInt64.self)
                lastG.pointee.blocks![r] = nil
            }
            dirtyCount &-= (lastG.pointee.dirty & ~live).nonzeroBitCount
            lastG.pointee.mixed &= live; lastG.pointee.shared &= live
            lastG.pointee.dirty &= live; lastG.pointee.hashOK &= live
            if lastG.pointee.mixed == 0 { freeBlockArray(lastG) }
            // Zero the padding of the new boundary chunk.
            let bg = group(i, boundary)
            if bg.pointee.mixed & (1 &<< (boundary & 63)) != 0 {
                let len = Geometry.chunkLen(boundary, pages)
                Bits.fill(block(bg, boundary & 63), from: len, to: Geometry.chunkPages, value: false)
            }
        } else {
            let bg = group(i, boundary)
            if bg.pointee.mixed & (1 &<< (boundary & 63)) != 0 {
                let from = Geometry.chunkLen(boundary, old.pages)
                let to = Geometry.chunkLen(boundary, pages)
                Bits.fill(block(bg, boundary & 63), from: from, to: to, value: true)
            }
        }
        markAllChanged(i, fromChunk: boundary)
        layoutGeneration &+= 1
    }
}
