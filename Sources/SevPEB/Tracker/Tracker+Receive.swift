/// The decoder's fast path for a BITS or RUNS record that covers exactly one
/// chunk (every mixed chunk a source sends): the record is written straight
/// into the chunk's block, no staging copy (issue 13, phase 2).
extension Tracker {
    /// If [gfn, gfn+n) is exactly one whole chunk, give `write` that chunk's
    /// block (Geometry.chunkWords words: its current bits if it is mixed,
    /// zeros if it was uniform, so a BITS record is not preceded by a fill)
    /// to overwrite with the new bits (bits at or above n left zero), then make the chunk uniform if
    /// the new bits are, else cache its chunk hash while the block is in
    /// cache (the FINAL digest then reads no block again). Returns false,
    /// having done nothing, when the range is not one chunk. An error from
    /// `write` leaves the block with whatever it wrote: for the decoder's
    /// staging tracker only, which is discarded on any error.
    // SAFETY: write gets the chunk's block (chunkWords words) only for the duration of the call.
    public func receiveChunk(_ gfn: UInt64, _ n: UInt64,
                      _ write: (UnsafeMutablePointer<UInt64>) throws(SevError) -> Void) throws(SevError) -> Bool {
        try locked { (e) throws(SevError) -> Bool in unsafe try e.receiveChunk(gfn, n, write) }
    }
}

extension Engine {
    /// Tracker.receiveChunk's work.
    // SAFETY: g is chunk c's group and blk its block of chunkWords + 1 words (the last one the
    // cached chunk hash); write gets the block for the duration of the call, under the lock.
    func receiveChunk(_ gfn: UInt64, _ n: UInt64,
                      _ write: (UnsafeMutablePointer<UInt64>) throws(SevError) -> Void) throws(SevError) -> Bool {
        guard let s = slotIndex(containing: gfn) else { return false }
        let rel = unsafe gfn &- slots[s].base
        if rel & UInt64(Geometry.chunkPages &- 1) != 0 { return false }
        let c = rel &>> UInt64(Geometry.chunkShift)
        let len = unsafe Geometry.chunkLen(c, slots[s].pages)
        if n != UInt64(len) { return false }
        let g = unsafe group(s, c)
        let bit = c & 63
        // A uniform chunk gets a zero block (as if shared: no fill of
        // ones that the record would overwrite); restored if that fails.
        let prior = unsafe uniformValue(g, bit)
        if prior == true { unsafe setUniform(g, bit, false) }
        if !materialize(s, c) {
            if let p = prior { unsafe setUniform(g, bit, p) }
            throw .noMemory("out of memory allocating a 2 KiB chunk block")
        }
        let blk = unsafe block(g, bit)
        unsafe try write(blk)
        unsafe markChanged(g, bit)
        let words = (len &+ 63) &>> 6
        if let u = unsafe blockUniformity(blk, len) {
            unsafe setUniform(g, bit, u)   // frees the block: the next chunk reuses its memory
        } else {
            unsafe blk[Geometry.chunkWords] = unsafe XXH3.hash(words: blk, count: words)
            unsafe g.pointee.hashOK |= 1 &<< bit
        }
        return true
    }
}
