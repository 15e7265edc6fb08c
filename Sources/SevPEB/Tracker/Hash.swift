/// XXH64 (xxHash, 64-bit, Yann Collet), the hash behind the state digest
/// (docs/FORMAT.md, "Digest"). Streaming over whole 64-bit words only: every
/// input the digest hashes is a multiple of 8 bytes, given as little-endian
/// words. Checked against the reference vectors in the tests.
struct XXH64 {
    static let p1: UInt64 = 0x9E37_79B1_85EB_CA87
    static let p2: UInt64 = 0xC2B2_AE3D_27D4_EB4F
    static let p3: UInt64 = 0x1656_67B1_9E37_79F9
    static let p4: UInt64 = 0x85EB_CA77_C2B2_AE63
    static let p5: UInt64 = 0x27D4_EB2F_1656_67C5

    var v1: UInt64, v2: UInt64, v3: UInt64, v4: UInt64
    var buf: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    var bufCount = 0          // words in buf
    var totalWords: UInt64 = 0
    let seed: UInt64

    init(seed: UInt64 = 0) {
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

    /// Feed one 64-bit word (hashed as its 8 little-endian bytes).
    @inline(__always) mutating func add(_ w: UInt64) {
        totalWords &+= 1
        switch bufCount {
        case 0: buf.0 = w; bufCount = 1
        case 1: buf.1 = w; bufCount = 2
        case 2: buf.2 = w; bufCount = 3
        default:
            stripe(buf.0, buf.1, buf.2, w); bufCount = 0
        }
    }

    /// Feed `count` words from memory.
    mutating func add(words p: UnsafePointer<UInt64>, count: Int) {
        var i = 0
        while bufCount != 0 && i < count { add(p[i]); i &+= 1 }
        let stripeStart = i
        while i &+ 4 <= count {
            stripe(p[i], p[i &+ 1], p[i &+ 2], p[i &+ 3])
            i &+= 4
        }
        totalWords &+= UInt64(truncatingIfNeeded: i &- stripeStart)
        while i < count { add(p[i]); i &+= 1 }
    }

    func finish() -> UInt64 {
        var h: UInt64
        if totalWords >= 4 {
            h = Self.rotl(v1, 1) &+ Self.rotl(v2, 7) &+ Self.rotl(v3, 12) &+ Self.rotl(v4, 18)
            h = Self.merge(h, v1); h = Self.merge(h, v2); h = Self.merge(h, v3); h = Self.merge(h, v4)
        } else {
            h = seed &+ Self.p5
        }
        h &+= totalWords &* 8
        var rest: (UInt64, UInt64, UInt64) = (buf.0, buf.1, buf.2)
        var n = bufCount
        while n > 0 {
            let w = rest.0
            rest = (rest.1, rest.2, 0)
            n &-= 1
            h ^= Self.round(0, w)
            h = Self.rotl(h, 27) &* Self.p1 &+ Self.p4
        }
        h ^= h &>> 33; h &*= Self.p2
        h ^= h &>> 29; h &*= Self.p3
        h ^= h &>> 32
        return h
    }

    /// One-shot hash of whole words.
    static func hash(words p: UnsafePointer<UInt64>, count: Int, seed: UInt64 = 0) -> UInt64 {
        var x = XXH64(seed: seed)
        x.add(words: p, count: count)
        return x.finish()
    }
}
