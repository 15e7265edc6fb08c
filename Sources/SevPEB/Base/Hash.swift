/// XXH64 (xxHash, 64-bit, Yann Collet), streaming over bytes. Used for the
/// state digest (over little-endian words) and the per-payload checksum
/// (over the payload bytes): docs/FORMAT.md. Checked against the reference
/// implementation's values in the tests.
public struct XXH64 {
    static let p1: UInt64 = 0x9E37_79B1_85EB_CA87
    static let p2: UInt64 = 0xC2B2_AE3D_27D4_EB4F
    static let p3: UInt64 = 0x1656_67B1_9E37_79F9
    static let p4: UInt64 = 0x85EB_CA77_C2B2_AE63
    static let p5: UInt64 = 0x27D4_EB2F_1656_67C5

    var v1: UInt64, v2: UInt64, v3: UInt64, v4: UInt64
    /// Up to 31 pending bytes, as four little-endian words.
    var mem: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    var memSize = 0
    var total: UInt64 = 0
    let seed: UInt64

    public init(seed: UInt64 = 0) {
        self.seed = seed
        v1 = seed &+ Self.p1 &+ Self.p2
        v2 = seed &+ Self.p2
        v3 = seed
        v4 = seed &- Self.p1
    }

    @inline(__always) static func rotl(_ x: UInt64, _ r: UInt64) -> UInt64 { (x &<< r) | (x &>> (64 &- r)) }
    @inline(__always) static func round(_ acc: UInt64, _ input: UInt64) -> UInt64 {
        rotl(acc &+ input &* p2, 31) &* p1
    }
    @inline(__always) static func merge(_ acc: UInt64, _ val: UInt64) -> UInt64 {
        (acc ^ round(0, val)) &* p1 &+ p4
    }
    @inline(__always) mutating func stripe(_ a: UInt64, _ b: UInt64, _ c: UInt64, _ d: UInt64) {
        v1 = Self.round(v1, a); v2 = Self.round(v2, b); v3 = Self.round(v3, c); v4 = Self.round(v4, d)
    }

    @inline(__always) func memWord(_ i: Int) -> UInt64 {
        switch i { case 0: return mem.0; case 1: return mem.1; case 2: return mem.2; default: return mem.3 }
    }
    @inline(__always) mutating func setMemWord(_ i: Int, _ v: UInt64) {
        switch i { case 0: mem.0 = v; case 1: mem.1 = v; case 2: mem.2 = v; default: mem.3 = v }
    }
    /// Append one byte to the pending buffer.
    @inline(__always) mutating func memAppend(_ b: UInt8) {
        let wi = memSize &>> 3, sh = UInt64((memSize & 7) &* 8)
        let old = memSize & 7 == 0 ? 0 : memWord(wi)
        setMemWord(wi, old | (UInt64(b) &<< sh))
        memSize &+= 1
        if memSize == 32 {
            stripe(mem.0, mem.1, mem.2, mem.3)
            memSize = 0
        }
    }

    /// Feed one 64-bit word as its 8 little-endian bytes.
    @inline(__always) public mutating func add(_ w: UInt64) {
        total &+= 8
        if memSize & 7 == 0 {
            setMemWord(memSize &>> 3, w)
            memSize &+= 8
            if memSize == 32 { stripe(mem.0, mem.1, mem.2, mem.3); memSize = 0 }
        } else {
            var x = w
            total &-= 8
            for _ in 0..<8 { memAppend(UInt8(truncatingIfNeeded: x)); x &>>= 8; total &+= 1 }
        }
    }

    /// Feed `count` words from memory (as little-endian bytes).
    public mutating func add(words p: UnsafePointer<UInt64>, count: Int) {
        var i = 0
        while memSize != 0 && i < count { add(p[i]); i &+= 1 }
        while i &+ 4 <= count {
            stripe(UInt64(littleEndian: p[i]), UInt64(littleEndian: p[i &+ 1]),
                   UInt64(littleEndian: p[i &+ 2]), UInt64(littleEndian: p[i &+ 3]))
            i &+= 4
            total &+= 32
        }
        while i < count { add(UInt64(littleEndian: p[i])); i &+= 1 }
    }

    /// Feed bytes.
    public mutating func update(_ p: UnsafeRawPointer, _ count: Int) {
        var i = 0
        while memSize != 0 && i < count {
            memAppend(p.load(fromByteOffset: i, as: UInt8.self)); i &+= 1; total &+= 1
        }
        while i &+ 32 <= count {
            stripe(UInt64(littleEndian: p.loadUnaligned(fromByteOffset: i, as: UInt64.self)),
                   UInt64(littleEndian: p.loadUnaligned(fromByteOffset: i &+ 8, as: UInt64.self)),
                   UInt64(littleEndian: p.loadUnaligned(fromByteOffset: i &+ 16, as: UInt64.self)),
                   UInt64(littleEndian: p.loadUnaligned(fromByteOffset: i &+ 24, as: UInt64.self)))
            i &+= 32
            total &+= 32
        }
        while i < count { memAppend(p.load(fromByteOffset: i, as: UInt8.self)); i &+= 1; total &+= 1 }
    }

    public func finish() -> UInt64 {
        var h: UInt64
        if total >= 32 {
            h = Self.rotl(v1, 1) &+ Self.rotl(v2, 7) &+ Self.rotl(v3, 12) &+ Self.rotl(v4, 18)
            h = Self.merge(h, v1); h = Self.merge(h, v2); h = Self.merge(h, v3); h = Self.merge(h, v4)
        } else {
            h = seed &+ Self.p5
        }
        h &+= total
        // Tail: the pending bytes, 8 at a time, then 4, then 1 (reference order).
        var off = 0
        let n = memSize
        while off &+ 8 <= n {
            let k1 = Self.round(0, memWord(off &>> 3))
            h ^= k1
            h = Self.rotl(h, 27) &* Self.p1 &+ Self.p4
            off &+= 8
        }
        if off &+ 4 <= n {
            let w = memWord(off &>> 3) &>> UInt64((off & 7) &* 8)
            h ^= (w & 0xFFFF_FFFF) &* Self.p1
            h = Self.rotl(h, 23) &* Self.p2 &+ Self.p3
            off &+= 4
        }
        while off < n {
            let b = (memWord(off &>> 3) &>> UInt64((off & 7) &* 8)) & 0xFF
            h ^= b &* Self.p5
            h = Self.rotl(h, 11) &* Self.p1
            off &+= 1
        }
        h ^= h &>> 33; h &*= Self.p2
        h ^= h &>> 29; h &*= Self.p3
        h ^= h &>> 32
        return h
    }

    /// One-shot hash of whole words.
    public static func hash(words p: UnsafePointer<UInt64>, count: Int, seed: UInt64 = 0) -> UInt64 {
        var x = XXH64(seed: seed)
        x.add(words: p, count: count)
        return x.finish()
    }

    /// One-shot hash of bytes.
    public static func hash(bytes p: UnsafeRawPointer, count: Int, seed: UInt64 = 0) -> UInt64 {
        var x = XXH64(seed: seed)
        x.update(p, count)
        return x.finish()
    }
}
