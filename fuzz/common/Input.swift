// Fuzz input reader: turns libFuzzer's bytes into structured choices.
// Compiled into the SevPEB module together with the library sources (see
// fuzz/build.sh), so the fuzzers can reach internal state for invariant checks.

struct FuzzInput {
    let p: UnsafePointer<UInt8>
    let n: Int
    var i = 0

    init(_ p: UnsafePointer<UInt8>, _ n: Int) { self.p = p; self.n = n }

    var isEmpty: Bool { i >= n }
    var remaining: Int { n > i ? n - i : 0 }

    mutating func u8() -> UInt8 {
        if i < n { let v = p[i]; i += 1; return v }
        return 0
    }
    mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
    mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }
    mutating func bool() -> Bool { u8() & 1 != 0 }
    mutating func pick(_ k: Int) -> Int { k <= 1 ? 0 : Int(u8()) % k }

    /// The rest of the input, consumed.
    mutating func rest() -> [UInt8] {
        var r: [UInt8] = []
        r.reserveCapacity(remaining)
        while i < n { r.append(p[i]); i += 1 }
        return r
    }
    mutating func bytes(_ k: Int) -> [UInt8] {
        var r: [UInt8] = []
        r.reserveCapacity(k)
        for _ in 0..<k { r.append(u8()) }
        return r
    }

    /// A small signed delta, mostly 0 and +-1.
    mutating func delta() -> Int64 {
        let b = u8()
        switch b & 7 {
        case 0, 1, 2: return 0
        case 3: return 1
        case 4: return -1
        default: return Int64(Int8(bitPattern: b)) >> 3
        }
    }

    /// A page count: small, near chunk / word / group multiples, or wild.
    mutating func npages() -> UInt64 {
        switch u8() % 16 {
        case 0: return 0
        case 1...6: return UInt64(u8()) + 1
        case 7, 8: return UInt64(u16()) + 1
        case 9: return UInt64(Int64(Geometry.chunkPages) * Int64(u8() % 4 + 1) + delta())
        case 10: return UInt64(64 * Int64(u8() % 8 + 1) + delta())
        case 11: return UInt64(u32() % 300_000) + 1
        case 12: return UInt64(Int64(Geometry.groupPages) + delta())
        case 13: return u64()
        case 14: return UInt64.max - UInt64(u8())
        default: return UInt64(1) << UInt64(u8() % 64)
        }
    }

    /// A GFN near something interesting in `anchors` (slot bases and ends),
    /// at a chunk boundary inside, or wild.
    mutating func gfn(_ anchors: [UInt64]) -> UInt64 {
        let k = u8() % 8
        if anchors.isEmpty || k == 7 {
            switch u8() % 4 {
            case 0: return u64()
            case 1: return UInt64(u16())
            case 2: return Tracker.gfnLimit &- UInt64(u16())
            default: return UInt64.max &- UInt64(u8())
            }
        }
        let a = anchors[Int(u8()) % anchors.count]
        switch k {
        case 0, 1, 2: return a &+ UInt64(bitPattern: delta())
        case 3: return a &+ UInt64(u16())
        case 4: return a &+ UInt64(Geometry.chunkPages) &* UInt64(u8() % 8) &+ UInt64(bitPattern: delta())
        case 5: return a &+ UInt64(u32() % 400_000)
        default: return a &+ UInt64(64 * Int(u8() % 32)) &+ UInt64(bitPattern: delta())
        }
    }
}

/// SplitMix64, for filling buffers cheaply from a fuzzer-chosen seed.
struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Report a broken property and crash, so libFuzzer keeps the input.
func fuzzFail(_ what: String) -> Never {
    print("FUZZ CHECK FAILED: " + what)
    fatalError(what)
}
