import CSevPEBShims
@testable import SevPEB

/// SplitMix64: a seeded, repeatable generator for property tests.
struct SeededRNG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The deliberately naive reference model: one Bool per page per slot.
struct Model {
    struct Slot { var base: UInt64; var bits: [Bool] }   // true = private
    var slots: [Slot] = []

    func slotIndex(_ gfn: UInt64) -> Int? {
        slots.firstIndex { gfn >= $0.base && gfn < $0.base + UInt64($0.bits.count) }
    }
    /// Is every page of [gfn, gfn+n) in some slot (no holes)?
    func covers(_ gfn: UInt64, _ n: UInt64) -> Bool {
        if n == 0 { return false }
        var g = gfn
        let (end, o) = gfn.addingReportingOverflow(n)
        if o { return false }
        while g < end {
            guard let i = slotIndex(g) else { return false }
            g = slots[i].base + UInt64(slots[i].bits.count)
        }
        return true
    }
    func get(_ gfn: UInt64) -> Bool? {
        guard let i = slotIndex(gfn) else { return nil }
        return slots[i].bits[Int(gfn - slots[i].base)]
    }
    mutating func set(_ gfn: UInt64, _ v: Bool) {
        let i = slotIndex(gfn)!
        slots[i].bits[Int(gfn - slots[i].base)] = v
    }
    mutating func add(_ base: UInt64, _ pages: Int) -> Bool {
        let end = base + UInt64(pages)
        if pages == 0 { return false }
        for s in slots where base < s.base + UInt64(s.bits.count) && s.base < end { return false }
        slots.append(Slot(base: base, bits: Array(repeating: true, count: pages)))
        slots.sort { $0.base < $1.base }
        return true
    }
    mutating func resize(_ base: UInt64, _ pages: Int) -> Bool {
        guard let i = slots.firstIndex(where: { $0.base == base }), pages > 0 else { return false }
        if i + 1 < slots.count && base + UInt64(pages) > slots[i + 1].base { return false }
        if pages < slots[i].bits.count { slots[i].bits.removeLast(slots[i].bits.count - pages) }
        else { slots[i].bits += Array(repeating: true, count: pages - slots[i].bits.count) }
        return true
    }
    var sharedRuns: [(UInt64, UInt64)] {
        var runs: [(UInt64, UInt64)] = []
        var prevEnd: UInt64? = nil
        for s in slots {
            for (k, b) in s.bits.enumerated() where !b {
                let g = s.base + UInt64(k)
                if let last = runs.last, last.0 + last.1 == g, prevEnd != nil {
                    runs[runs.count - 1].1 += 1
                } else {
                    runs.append((g, 1))
                }
                prevEnd = g + 1
            }
        }
        return runs
    }
    var totalShared: UInt64 { slots.reduce(0) { $0 + UInt64($1.bits.filter { !$0 }.count) } }
}

extension Tracker {
    /// All shared runs via the public iterator.
    var allRuns: [(UInt64, UInt64)] {
        var r: [(UInt64, UInt64)] = []
        var from: UInt64 = 0
        while let run = nextSharedRun(from: from) {
            r.append((run.gfn, run.pages))
            from = run.gfn + run.pages
        }
        return r
    }
}

func errno(of body: () throws(SevError) -> Void) -> Int32 {
    do throws(SevError) { try body(); return 0 } catch { return error.code }
}

/// Adapts an inout ArraySink to the by-value ByteSink the encoder takes.
struct SinkBox: ByteSink {
    let p: UnsafeMutablePointer<ArraySink>
    init(_ s: UnsafeMutablePointer<ArraySink>) { p = s }
    mutating func write(_ b: UnsafeRawBufferPointer) throws(SevError) { try p.pointee.write(b) }
}

/// Collects each payload separately.
final class Channel {
    var payloads: [[UInt8]] = []
    func save(_ body: (SinkBox) throws(SevError) -> Void) throws(SevError) {
        var sink = ArraySink()
        try withUnsafeMutablePointer(to: &sink) { (p) throws(SevError) in try body(SinkBox(p)) }
        payloads.append(sink.bytes)
    }
    /// Load every payload in order; returns the load results.
    func load(into t: Tracker, _ l: LoadSession) throws(SevError) -> [Bool] {
        var r: [Bool] = []
        for p in payloads {
            var src = ArraySource(p)
            r.append(try l.load(t, &src, version: 1))
            if src.offset != p.count { throw SevError(EBADMSG, "payload not fully consumed: \(src.offset) of \(p.count)") }
        }
        return r
    }
}
