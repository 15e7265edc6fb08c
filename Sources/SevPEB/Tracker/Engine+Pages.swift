import CSevPEBShims

/// Page-state operations of the engine (lock held; no callbacks: the
/// Tracker calls them after it unlocks).
extension Engine {
    /// Tracker.setRange's work: set [gfn, gfn+n) private (`value` true) or
    /// shared; returns whether any page changed. On error nothing changed.
    /// (The hypercall-sized updates that need no allocation usually never
    /// get here: `Tracker.fastSetRange` does them without the lock.)
    func setRange(_ gfn: UInt64, _ n: UInt64, private value: Bool) throws(SevError) -> Bool {
        // A range inside one slot needs only the slot lookup; checkRange
        // (holes, overflow, messages) handles the rest.
        let s0: Int
        if n != 0, let s = slotIndex(containing: gfn), unsafe n <= slots[s].end &- gfn { s0 = s }
        else { s0 = try checkRange(gfn, n) }
        var any = false
        let sl = unsafe slots[s0]
        let rel = gfn &- sl.base
        let c = rel &>> UInt64(Geometry.chunkShift)
        if n <= UInt64(Geometry.chunkPages) && (rel &+ n &- 1) &>> UInt64(Geometry.chunkShift) == c
            && n <= sl.pages &- rel {
            // Fast path: one chunk of one slot (every hypercall-sized update).
            let a = Int(truncatingIfNeeded: rel & UInt64(Geometry.chunkPages &- 1))
            let b = a &+ Int(truncatingIfNeeded: n)
            if needsBlock(s0, c, a, b, value) && !materialize(s0, c) {
                throw .noMemory("out of memory allocating a 2 KiB chunk block")
            }
            any = setChunkRange(s0, c, a, b, value)
        } else {
            // Pass 1: blocks for partial chunks (at most the first and last).
            var oom = false
            forEachSegment(gfn, n, s0) { s, c, a, b, _ in
                if !oom && needsBlock(s, c, a, b, value) && !materialize(s, c) { oom = true }
            }
            if oom { throw .noMemory("out of memory allocating a 2 KiB chunk block") }
            forEachSegment(gfn, n, s0) { s, c, a, b, _ in
                if setChunkRange(s, c, a, b, value) { any = true }
            }
        }
        return any
    }

    /// State of one page: true = private.
    func test(_ gfn: UInt64) throws(SevError) -> Bool {
        guard let s = slotIndex(containing: gfn) else {
            throw .outOfRange("gfn \(hex(gfn)) outside the memory layout")
        }
        let rel = unsafe gfn &- slots[s].base
        let c = rel &>> UInt64(Geometry.chunkShift)
        let g = unsafe group(s, c)
        if let u = unsafe uniformValue(g, c & 63) { return u }
        return unsafe Bits.test(block(g, c & 63), Int(truncatingIfNeeded: rel & UInt64(Geometry.chunkPages &- 1)))
    }

    /// Shared pages in [gfn, gfn+n).
    func countShared(_ gfn: UInt64, _ n: UInt64) throws(SevError) -> UInt64 {
        let s0 = try checkRange(gfn, n)
        var total: UInt64 = 0
        forEachSegment(gfn, n, s0) { s, c, a, b, _ in
            let g = unsafe group(s, c)
            if let u = unsafe uniformValue(g, c & 63) {
                if !u { total &+= UInt64(b &- a) }
            } else {
                unsafe total &+= UInt64(b &- a &- Bits.countOnes(block(g, c & 63), from: a, to: b))
            }
        }
        return total
    }

    /// Copy [gfn, gfn+n) (arguments checked by the Tracker) out as bits
    /// (1 = private) into dst (LSB-first bytes).
    // SAFETY: dst holds ceil(n/8) bytes (Tracker.getBitmap checked dstLen); blocks are read under the lock.
    func getBitmap(_ gfn: UInt64, _ n: UInt64, _ dst: UnsafeMutablePointer<UInt8>) throws(SevError) {
        let s0 = try checkRange(gfn, n)
        var sink = unsafe ByteBitSink(dst)
        forEachSegment(gfn, n, s0) { s, c, a, b, _ in
            let g = unsafe group(s, c)
            if let u = unsafe uniformValue(g, c & 63) {
                sink.appendRepeated(u, b &- a)
            } else {
                unsafe sink.appendBits(UnsafePointer(block(g, c & 63)), from: a, to: b)
            }
        }
        sink.finish()
    }

    /// Set [gfn, gfn+n) to the exact bits of `source` (1 = private).
    /// Returns whether anything changed.
    // SAFETY: source.p holds ceil(n/8) bytes; a whole word is loaded only while 64 bits of the segment remain, at byte offset o/8 < that size; blocks are written under the lock.
    func setBitmap(_ gfn: UInt64, _ n: UInt64, _ source: ByteBitSource) throws(SevError) -> Bool {
        let s0 = try checkRange(gfn, n)
        // Pass 1: blocks for every chunk whose new content is mixed or
        // partial-and-different, so pass 2 cannot fail half-way.
        var oom = false
        forEachSegment(gfn, n, s0) { s, c, a, b, off in
            if oom { return }
            let g = unsafe group(s, c)
            guard let u = unsafe uniformValue(g, c & 63) else { return }
            let len = unsafe Geometry.chunkLen(c, slots[s].pages)
            let whole = a == 0 && b == len
            let uniformNew = sourceUniform(source, Int(off), b &- a)
            if let v = uniformNew, whole || v == u { return }
            if !materialize(s, c) { oom = true }
        }
        if oom { throw .noMemory("out of memory allocating chunk blocks") }
        var any = false
        forEachSegment(gfn, n, s0) { s, c, a, b, off in
            let g = unsafe group(s, c)
            let bit = c & 63
            let len = unsafe Geometry.chunkLen(c, slots[s].pages)
            if let u = unsafe uniformValue(g, bit) {
                // Uniform now: the new content is uniform too (pass 1).
                let newV = sourceUniform(source, Int(off), b &- a) != false
                if newV != u {
                    if a == 0 && b == len { unsafe setUniform(g, bit, newV) }
                    else { unsafe Bits.fill(block(g, bit), from: a, to: b, value: newV) }
                    unsafe markChanged(g, bit)
                    any = true
                }
                return
            }
            let w = unsafe block(g, bit)
            var diff: UInt64 = 0
            var i = a
            var o = Int(off)
            if i & 63 == 0 && o & 7 == 0 {
                // Word-aligned on both sides (every chunk of a BITS record
                // and of a slot-aligned SET): whole words straight from the bytes.
                while b &- i >= 64 {
                    let v = unsafe UInt64(littleEndian: UnsafeRawPointer(source.p + (o &>> 3)).loadUnaligned(as: UInt64.self))
                    let wi = i &>> 6
                    unsafe diff |= w[wi] ^ v
                    unsafe w[wi] = v
                    i &+= 64; o &+= 64
                }
            }
            while i < b {
                let lo = i & 63
                let k = min(64 &- lo, b &- i)
                let m = Bits.mask(lo, lo &+ k)
                let bitsIn = (source.read64(at: o) &<< UInt64(lo)) & m
                let wi = i &>> 6
                let old = unsafe w[wi]
                let new = (old & ~m) | bitsIn
                diff |= old ^ new
                unsafe w[wi] = new
                i &+= k; o &+= k
            }
            if diff != 0 { unsafe markChanged(g, bit); any = true }
        }
        return any
    }

    /// Whether bits [at, at+n) of src are all ones (true), all zeros (false)
    /// or mixed (nil); stops at the first word that shows both.
    @inline(__always) func sourceUniform(_ src: ByteBitSource, _ at: Int, _ n: Int) -> Bool? {
        var anyOne = false, anyZero = false, i = 0
        while i < n {
            let k = min(64, n &- i)
            let m: UInt64 = k == 64 ? ~0 : ((1 as UInt64) &<< UInt64(k)) &- 1
            let v = src.read64(at: at &+ i) & m
            if v != 0 { anyOne = true }
            if v != m { anyZero = true }
            if anyOne && anyZero { return nil }
            i &+= k
        }
        return anyOne
    }

    /// Every page of the layout private; with `mark`, flags each slot
    /// that had shared pages for `takeResetReport`. Returns whether any
    /// slot was flagged.
    func reset(mark: Bool) -> Bool {
        var marked = false
        for s in 0..<slotCount {
            let sl = unsafe slots[s]
            var any = false
            for gi in 0..<sl.groupCount {
                let g = unsafe sl.groups + gi
                var touched = unsafe g.pointee.shared | g.pointee.mixed
                while touched != 0 {
                    let bit = UInt64(touched.trailingZeroBitCount)
                    touched &= touched &- 1
                    // A mixed block can hold no shared page (after a
                    // shrink or partial updates): no page changes then.
                    let c = UInt64(gi) &<< 6 | bit
                    let len = Geometry.chunkLen(c, sl.pages)
                    let wasPrivate = unsafe g.pointee.mixed & (1 &<< bit) != 0
                        && Bits.countOnes(block(g, bit), from: 0, to: len) == len
                    unsafe setUniform(g, bit, true)
                    if !wasPrivate { unsafe markChanged(g, bit); any = true }
                }
            }
            if any && mark { unsafe slots[s].resetReport = true; marked = true }
        }
        return marked
    }

    /// The first slot at or above `from` that a reset flagged: its flag
    /// cleared, its range returned; nil when none is left.
    func takeResetReport(from: UInt64) -> (UInt64, UInt64)? {
        var lo = 0, hi = slotCount
        while lo < hi {
            let mid = (lo &+ hi) &>> 1
            if unsafe slots[mid].base < from { lo = mid &+ 1 } else { hi = mid }
        }
        for s in lo..<slotCount where unsafe slots[s].resetReport {
            unsafe slots[s].resetReport = false
            return unsafe (slots[s].base, slots[s].pages)
        }
        return nil
    }
}
