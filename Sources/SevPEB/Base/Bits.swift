import CSevPEBHash

/// Word-level bit primitives over raw `UInt64` storage (bit i = word i/64,
/// bit i%64, least significant first: a Linux bitmap on little-endian x86).
/// Range operations go head word -> full words -> tail word with a same-word
/// fast path, after swift-collections' `_UnsafeBitSet` and QEMU's
/// util/bitmap.c. Callers guarantee ranges are in bounds; nothing here traps
/// on valid input (wrapping arithmetic only).
enum Bits {
    /// Mask of bits [lo, hi) within one word, 0 <= lo < hi <= 64.
    @inline(__always) static func mask(_ lo: Int, _ hi: Int) -> UInt64 {
        let upper: UInt64 = hi >= 64 ? ~0 : ((1 as UInt64) &<< UInt64(hi)) &- 1
        let lower: UInt64 = ((1 as UInt64) &<< UInt64(lo)) &- 1
        return upper & ~lower
    }

    /// Set bits [from, to) to `value`; returns true if any bit changed.
    // SAFETY: w holds at least ceil(to/64) words (a chunk block or a caller buffer sized for the range); only words of [from, to) are touched.
    @discardableResult
    static func fill(_ w: UnsafeMutablePointer<UInt64>, from: Int, to: Int, value: Bool) -> Bool {
        if from >= to { return false }
        let fw = from &>> 6, lw = (to &- 1) &>> 6
        var changed: UInt64 = 0
        if fw == lw {
            let m = mask(from & 63, ((to &- 1) & 63) &+ 1)
            let old = unsafe w[fw]
            let new = value ? old | m : old & ~m
            changed = old ^ new
            unsafe w[fw] = new
            return changed != 0
        }
        let hm = mask(from & 63, 64)
        var old = unsafe w[fw]
        var new = value ? old | hm : old & ~hm
        changed |= old ^ new
        unsafe w[fw] = new
        let full: UInt64 = value ? ~0 : 0
        var i = fw &+ 1
        while i < lw {
            unsafe changed |= w[i] ^ full
            unsafe w[i] = full
            i &+= 1
        }
        let tm = mask(0, ((to &- 1) & 63) &+ 1)
        old = unsafe w[lw]
        new = value ? old | tm : old & ~tm
        changed |= old ^ new
        unsafe w[lw] = new
        return changed != 0
    }

    /// Number of one bits in [from, to).
    // SAFETY: w holds at least ceil(to/64) words; only words of [from, to) are read.
    static func countOnes(_ w: UnsafePointer<UInt64>, from: Int, to: Int) -> Int {
        if from >= to { return 0 }
        let fw = from &>> 6, lw = (to &- 1) &>> 6
        if fw == lw {
            return unsafe (w[fw] & mask(from & 63, ((to &- 1) & 63) &+ 1)).nonzeroBitCount
        }
        var n = unsafe (w[fw] & mask(from & 63, 64)).nonzeroBitCount
        var i = fw &+ 1
        while i < lw { unsafe n &+= w[i].nonzeroBitCount; i &+= 1 }
        unsafe n &+= (w[lw] & mask(0, ((to &- 1) & 63) &+ 1)).nonzeroBitCount
        return n
    }

    // SAFETY: i is below the block length the caller got w for; reads word i/64 only.
    @inline(__always) static func test(_ w: UnsafePointer<UInt64>, _ i: Int) -> Bool {
        unsafe (w[i &>> 6] &>> UInt64(i & 63)) & 1 != 0
    }

    /// First index in [from, to) whose bit equals `value`, or `to`.
    // SAFETY: w holds at least ceil(to/64) words; only words of [from, to) are read.
    static func find(_ w: UnsafePointer<UInt64>, value: Bool, from: Int, to: Int) -> Int {
        if from >= to { return to }
        var wi = from &>> 6
        let lw = (to &- 1) &>> 6
        var word = unsafe (value ? w[wi] : ~w[wi]) & mask(from & 63, 64)
        while true {
            if word != 0 {
                let r = (wi &<< 6) &+ word.trailingZeroBitCount
                return r < to ? r : to
            }
            wi &+= 1
            if wi > lw { return to }
            word = unsafe value ? w[wi] : ~w[wi]
        }
    }

    /// 64 bits starting at bit `at` of `w` (which has `words` words; bits past
    /// the end read as 0).
    // SAFETY: reads words at/64 and at/64+1 only when below `words`, the size of w.
    @inline(__always) static func read64(_ w: UnsafePointer<UInt64>, words: Int, at: Int) -> UInt64 {
        let wi = at &>> 6, sh = UInt64(at & 63)
        let lo = unsafe wi < words ? w[wi] : 0
        if sh == 0 { return lo }
        let hi = unsafe wi &+ 1 < words ? w[wi &+ 1] : 0
        return (lo &>> sh) | (hi &<< (64 &- sh))
    }

    /// Number of maximal runs of zero bits in [0, n).
    /// Stops early and returns a value above `limit` once the count
    /// exceeds it (the encoder only needs to know whether RUNS is smaller).
    // SAFETY: w holds ceil(n/64) words; the scan stops at bit n.
    static func zeroRuns(_ w: UnsafePointer<UInt64>, bits n: Int, limit: Int = Int.max) -> Int {
        // A zero run starts at i where bit i == 0 and (i == 0 or bit i-1 == 1).
        let words = (n &+ 63) &>> 6
        var runs = 0
        var prevTop: UInt64 = 1  // "bit -1" counts as one
        var i = 0
        while i < words {
            var x = unsafe w[i]
            if i == words &- 1 && n & 63 != 0 { x |= ~mask(0, n & 63) } // past-end bits as ones
            let zeros = ~x
            let prevOnes = (x &<< 1) | prevTop
            runs &+= (zeros & prevOnes).nonzeroBitCount
            if runs > limit { return runs }
            prevTop = x &>> 63
            i &+= 1
        }
        return runs
    }
}

/// Reads bits at arbitrary offsets from a byte buffer (LSB-first bytes), never
/// past `bytes`.
@safe struct ByteBitSource {
    // SAFETY: p is valid for `bytes` bytes (the caller checked its length); read64 never reads past it.
    let p: UnsafePointer<UInt8>
    let bytes: Int

    /// 64 bits starting at bit `at` (bits past the buffer read as 0).
    @inline(__always) func read64(at: Int) -> UInt64 {
        let b = at &>> 3, sh = UInt64(at & 7)
        var lo: UInt64 = 0
        if b &+ 8 <= bytes {
            // SAFETY: bytes b..<b+8 lie inside the buffer (checked on the line above).
            lo = unsafe UInt64(littleEndian: UnsafeRawPointer(p + b).loadUnaligned(as: UInt64.self))
        } else {
            var k = 0
            while b &+ k < bytes && k < 8 { unsafe lo |= UInt64(p[b &+ k]) &<< UInt64(k &* 8); k &+= 1 }
        }
        if sh == 0 { return lo }
        let extra: UInt64 = unsafe b &+ 8 < bytes ? UInt64(p[b &+ 8]) : 0
        return (lo &>> sh) | (extra &<< (64 &- sh))
    }
}

/// Appends bits to a byte buffer, LSB first, starting at bit 0. Whole 64-bit
/// words are stored directly; the final partial byte keeps the buffer's bits
/// above the end (the seed's GET preserves them).
@safe struct ByteBitSink {
    // SAFETY: p is valid for ceil(n/8) bytes of the range being written (the caller checked dst_len); unaligned stores go through storeBytes.
    let p: UnsafeMutablePointer<UInt8>
    var acc: UInt64 = 0
    var accBits = 0
    var outByte = 0

    // SAFETY: p as for the stored property: valid for the range the caller sized it for.
    init(_ p: UnsafeMutablePointer<UInt8>) { unsafe self.p = unsafe p }

    // SAFETY: outByte + 8 <= the buffer size: a whole word is emitted only while 64 or more bits of the range remain.
    @inline(__always) mutating func emitWord(_ w: UInt64) {
        unsafe UnsafeMutableRawPointer(p + outByte).storeBytes(of: w.littleEndian, as: UInt64.self)
        outByte &+= 8
    }

    /// Append the low `n` bits of `v` (1...64).
    @inline(__always) mutating func append(_ v: UInt64, _ n: Int) {
        let v = n == 64 ? v : v & ((1 as UInt64) &<< UInt64(n) &- 1)
        acc |= v &<< UInt64(accBits)
        let total = accBits &+ n
        if total >= 64 {
            emitWord(acc)
            acc = accBits == 0 ? 0 : v &>> UInt64(64 &- accBits)
            accBits = total &- 64
        } else {
            accBits = total
        }
    }

    /// Append `count` copies of `value`: whole bytes as one memset.
    mutating func appendRepeated(_ value: Bool, _ count: Int) {
        var n = count
        let w: UInt64 = value ? ~0 : 0
        if accBits != 0 && n > 0 {
            let k = min(64 &- accBits, n)
            append(w, k)
            n &-= k
        }
        if n >= 64 {  // accBits == 0 here
            let words = n &>> 6
            unsafe (p + outByte).update(repeating: value ? 0xff : 0, count: words &* 8)
            outByte &+= words &* 8
            n &-= words &* 64
        }
        if n > 0 { append(w, n) }
    }

    /// Append bits [a, b) of the chunk block `w` (Geometry.chunkWords words;
    /// b <= the chunk length). Once the sink is at a word boundary, each
    /// output word is one load (aligned source) or one two-word shift-merge,
    /// as QEMU's bitmap_copy_with_src_offset; never reads past word (b-1)/64.
    // SAFETY: w is a chunk block (chunkWords words, b <= chunk length); whole output words are stored only while 64 bits of [a, b) remain, so never past the buffer.
    mutating func appendBits(_ w: UnsafePointer<UInt64>, from a: Int, to b: Int) {
        var i = a
        if accBits != 0 && i < b {
            let k = min(64 &- accBits, b &- i)
            unsafe append(Bits.read64(w, words: Geometry.chunkWords, at: i), k)
            i &+= k
        }
        let words = (b &- i) &>> 6
        if words > 0 {  // accBits == 0 here
            let out = unsafe UnsafeMutableRawPointer(p + outByte)
            let sh = UInt64(i & 63)
            let src = unsafe w + (i &>> 6)
            if sh == 0 {
                #if _endian(little)
                unsafe out.copyMemory(from: src, byteCount: words &* 8)
                #else
                for k in 0..<words {
                    out.storeBytes(of: src[k].littleEndian, toByteOffset: k &* 8, as: UInt64.self)
                }
                #endif
            } else {
                #if _endian(little)
                // SAFETY: `out` is the caller's buffer (whole words fit: the
                // caller checked its length), `src` the chunk block; they
                // never overlap. The C loop is the Swift one below, vectorised.
                unsafe spb_copy_shifted(out, src, words, UInt32(sh))
                #else
                for k in 0..<words {
                    let v = (src[k] &>> sh) | (src[k &+ 1] &<< (64 &- sh))
                    out.storeBytes(of: v.littleEndian, toByteOffset: k &* 8, as: UInt64.self)
                }
                #endif
            }
            outByte &+= words &* 8
            i &+= words &* 64
        }
        if i < b { unsafe append(Bits.read64(w, words: Geometry.chunkWords, at: i), b &- i) }
    }

    /// Write out the remaining bits, preserving bits above them in the last byte.
    mutating func finish() {
        var bits = accBits
        var v = acc
        while bits >= 8 {
            unsafe p[outByte] = UInt8(truncatingIfNeeded: v)
            v &>>= 8; bits &-= 8; outByte &+= 1
        }
        if bits > 0 {
            let m = UInt8(truncatingIfNeeded: ((1 as UInt64) &<< UInt64(bits)) &- 1)
            unsafe p[outByte] = unsafe (p[outByte] & ~m) | (UInt8(truncatingIfNeeded: v) & m)
        }
        acc = 0; accBits = 0
    }
}
