/// `sevpeb_shared_runs`: many shared runs per lock round trip, in the order
/// `nextSharedRun` would return them one at a time.
extension Tracker {
    /// Store up to `max` consecutive maximal shared runs from `from` into
    /// `gfns`/`pages` (one consistent snapshot). Returns how many were stored;
    /// fewer than `max` means there are no more.
    public func sharedRuns(from: UInt64, max: Int, _ store: (Int, UInt64, UInt64) -> Void) -> Int {
        locked { $0.sharedRuns(from: from, max: max, store) }
    }
}

extension Engine {
    /// The one run extractor (`sharedRuns`, and `nextSharedRun` as max 1):
    /// one pass over the layout (issue 13, phase 2). A run is open or not;
    /// uniform chunks that do not end or start a run are skipped a group at a
    /// time (a trailing-zero count over the group's masks), and a mixed
    /// chunk's block is read a word at a time, each run edge one trailing-zero
    /// count on the word or its complement. Runs continue across slots that
    /// touch; a hole or the end of the layout closes one. The first run is
    /// clipped to start at `from` or later.
    // SAFETY: groups are reached through slots[s].groups below the slot's group count, blocks
    // through block(g, bit) of a mixed chunk, words below ceil(len/64) <= chunkWords.
    func sharedRuns(from: UInt64, max: Int, _ store: (Int, UInt64, UInt64) -> Void) -> Int {
        if slotCount == 0 || max <= 0 { return 0 }
        var n = 0
        var open = false          // inside a shared run that started at `start`
        var start: UInt64 = 0
        var prevEnd: UInt64 = 0   // end of the previous slot (valid when open)
        var s = firstSlotEndingAfter(from)
        var first = true
        while s < slotCount {
            let sl = unsafe slots[s]
            if open && sl.base != prevEnd {
                // A hole ends the run.
                store(n, start, prevEnd &- start); n &+= 1; open = false
                if n == max { return n }
            }
            var rel: UInt64 = first && from > sl.base ? from &- sl.base : 0
            first = false
            let nch = Geometry.chunks(sl.pages)
            while rel < sl.pages {
                let c = rel &>> UInt64(Geometry.chunkShift)
                let g = unsafe sl.groups + Int(truncatingIfNeeded: c &>> UInt64(Geometry.groupShift))
                let bit = c & 63
                let groupFirst = c & ~63
                let inGroup = Swift.min(UInt64(Geometry.chunksPerGroup), nch &- groupFirst)
                let live: UInt64 = inGroup == 64 ? ~0 : ((1 &<< inGroup) &- 1)
                // Chunks that can start (not open) or end (open) a run.
                let shared = unsafe g.pointee.shared, mixed = unsafe g.pointee.mixed
                let edges = (open ? ~shared | mixed : shared | mixed) & live & (~0 &<< bit)
                if edges == 0 {
                    rel = (groupFirst &+ inGroup) &<< UInt64(Geometry.chunkShift)
                    continue
                }
                let eb = UInt64(edges.trailingZeroBitCount)
                if eb != bit {
                    rel = (groupFirst | eb) &<< UInt64(Geometry.chunkShift)
                    continue
                }
                let cStart = c &<< UInt64(Geometry.chunkShift)
                let len = Geometry.chunkLen(c, sl.pages)
                let cEnd = cStart &+ UInt64(len)
                if mixed & (1 &<< bit) == 0 {
                    // Uniform: shared starts a run (not open), private ends one (open).
                    if open {
                        store(n, start, sl.base &+ rel &- start); n &+= 1; open = false
                        if n == max { return n }
                    } else {
                        open = true; start = sl.base &+ rel
                    }
                    rel = cEnd
                    continue
                }
                // Mixed: walk the block's words from page `a`; bit 1 = private.
                let blk = unsafe block(g, bit)
                let a = Int(truncatingIfNeeded: rel &- cStart)
                let lastW = (len &- 1) &>> 6
                let gfn0 = sl.base &+ cStart
                var wi = a &>> 6
                var consumed: UInt64 = ~0 &<< UInt64(a & 63)   // bits still to look at
                while wi <= lastW {
                    let w = unsafe blk[wi]
                    var valid = consumed
                    if wi == lastW && len & 63 != 0 { valid &= Bits.mask(0, len & 63) }
                    // Bits that are an edge: a private page when open, a shared one when not.
                    var x = (open ? w : ~w) & valid
                    while x != 0 {
                        let p = UInt64(x.trailingZeroBitCount)
                        let at = gfn0 &+ UInt64(wi &<< 6) &+ p
                        if open {
                            store(n, start, at &- start); n &+= 1; open = false
                            if n == max { return n }
                        } else {
                            open = true; start = at
                        }
                        valid &= (~0 &<< p) &<< 1
                        x = (open ? w : ~w) & valid
                    }
                    wi &+= 1
                    consumed = ~0
                }
                rel = cEnd
            }
            prevEnd = sl.end
            s &+= 1
        }
        if open { store(n, start, prevEnd &- start); n &+= 1 }
        return n
    }

    /// The first maximal shared run ending after `from`, clipped to start at
    /// `from` or later; runs continue across slots that touch.
    func nextSharedRun(from: UInt64) -> (gfn: UInt64, pages: UInt64)? {
        var run: (gfn: UInt64, pages: UInt64)? = nil
        _ = sharedRuns(from: from, max: 1) { _, g, n in run = (g, n) }
        return run
    }
}
