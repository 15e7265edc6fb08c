// Comparing two trackers page by page: the migration's path record against
// the live state (docs/QEMU.md, "Routing"). Uses only the Tracker's public
// API (countShared, getBitmap), one 64 MiB piece at a time.

extension Tracker {
    /// Pages per comparison piece: 2 KiB of bits per tracker.
    static let comparePiece: UInt64 = 1 << 14

    /// Count the pages of [gfn, gfn+n) whose state differs between self and
    /// `other`, and store the first `maxOut` of their GFNs (ascending) in
    /// `out`. The range must lie in both layouts. Each piece is read from
    /// each tracker at one instant; compare with updates stopped for an
    /// exact answer. Returns (differing pages, GFNs stored).
    // SAFETY: out (if maxOut > 0, checked non-NULL) holds maxOut entries, written below it; bufA/bufB are Mem byte buffers of comparePiece/8 bytes, read back as words with loadUnaligned.
    public func countDifferences(_ other: Tracker, _ gfn: UInt64, _ n: UInt64,
                                 _ out: UnsafeMutablePointer<UInt64>?, _ maxOut: Int) throws(SevError) -> (count: UInt64, stored: Int) {
        if n == 0 { throw .invalid("npages 0: must be > 0") }
        if maxOut < 0 { throw .invalid("max_gfns \(maxOut): must be >= 0") }
        if unsafe maxOut > 0 && out == nil { throw .invalid("gfns is NULL with max_gfns \(maxOut)") }
        let (end, overflow) = gfn.addingReportingOverflow(n)
        if overflow { throw .outOfRange("gfn \(hex(gfn)) + npages \(hex(n)) overflows") }
        // Both ranges checked up front, so a failure changes nothing and names the tracker.
        do throws(SevError) { _ = try countShared(gfn, n) } catch {
            throw SevError(error.code, "first tracker: \(error.message)")
        }
        do throws(SevError) { _ = try other.countShared(gfn, n) } catch {
            throw SevError(error.code, "second tracker: \(error.message)")
        }
        if other == self { return (0, 0) }
        let words = Int(Tracker.comparePiece &>> 6)
        // Byte buffers (getBitmap's LSB-first bytes), read back as words with
        // loadUnaligned: no memory is viewed as a type it is not bound to.
        guard let bufA = unsafe Mem.calloc(words &* 8, UInt8.self) else { throw .noMemory("out of memory allocating the comparison buffer") }
        defer { unsafe Mem.free(bufA) }
        guard let bufB = unsafe Mem.calloc(words &* 8, UInt8.self) else { throw .noMemory("out of memory allocating the comparison buffer") }
        defer { unsafe Mem.free(bufB) }
        var count: UInt64 = 0
        var stored = 0
        var cur = gfn
        while cur < end {
            let len = min(Tracker.comparePiece, end &- cur)
            // Uniform and equal on both sides: nothing to read.
            let sa = try countShared(cur, len)
            let sb = try other.countShared(cur, len)
            if !((sa == 0 && sb == 0) || (sa == len && sb == len)) {
                let nw = Int(truncatingIfNeeded: (len &+ 63) &>> 6)
                let bytes = nw &* 8
                for i in 0..<bytes { unsafe bufA[i] = 0; unsafe bufB[i] = 0 }
                unsafe try getBitmap(cur, len, bufA, bytes)
                unsafe try other.getBitmap(cur, len, bufB, bytes)
                for i in 0..<nw {
                    // Bytes are LSB-first: the little-endian word at byte 8i holds pages 64i..64i+63.
                    let wa = unsafe UnsafeRawPointer(bufA).loadUnaligned(fromByteOffset: i &* 8, as: UInt64.self)
                    let wb = unsafe UnsafeRawPointer(bufB).loadUnaligned(fromByteOffset: i &* 8, as: UInt64.self)
                    var d = UInt64(littleEndian: wa) ^ UInt64(littleEndian: wb)
                    let valid = len &- UInt64(i &* 64)
                    if valid < 64 { d &= (UInt64(1) &<< valid) &- 1 }
                    if d == 0 { continue }
                    count &+= UInt64(d.nonzeroBitCount)
                    while d != 0 && stored < maxOut {
                        unsafe out![stored] = cur &+ UInt64(i &* 64) &+ UInt64(d.trailingZeroBitCount)
                        stored &+= 1
                        d &= d &- 1
                    }
                }
            }
            cur &+= len
        }
        return (count, stored)
    }
}
