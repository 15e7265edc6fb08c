import SevPEB
import SevPEBInspect

// Test support shared by every Swift test: one SplitMix64, one reference
// model, one typical-guest builder. SplitMix64 and the typical guest live in
// SevPEBInspect (the CLI builds the same guest) and are re-exported here;
// tests name errnos with SevPEB's errnoName (the one table, Base/SevError.swift).

/// SplitMix64: a seeded, repeatable generator for property tests.
public typealias SeededRNG = SplitMix64

/// A typical 1 TiB guest (the definition): memslots [0, 2 GiB) and
/// [4 GiB, 1 TiB + 2 GiB); a 1 GiB bounce buffer in low memory, 64 per-vCPU
/// pages spread through one 64 MiB region, 16 single pages scattered.
public func typicalGuest(_ t: Tracker) throws(SevError) { try buildTypicalGuest(t) }

/// The deliberately naive reference model: one Bool per page per slot.
public struct Model {
    public struct Slot {
        public var base: UInt64; public var bits: [Bool]
        public init(base: UInt64, bits: [Bool]) { self.base = base; self.bits = bits }
    }   // true = private
    public var slots: [Slot] = []
    public init() {}

    public func slotIndex(_ gfn: UInt64) -> Int? {
        slots.firstIndex { gfn >= $0.base && gfn < $0.base + UInt64($0.bits.count) }
    }
    /// Is every page of [gfn, gfn+n) in some slot (no holes)?
    public func covers(_ gfn: UInt64, _ n: UInt64) -> Bool {
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
    public func get(_ gfn: UInt64) -> Bool? {
        guard let i = slotIndex(gfn) else { return nil }
        return slots[i].bits[Int(gfn - slots[i].base)]
    }
    public mutating func set(_ gfn: UInt64, _ v: Bool) {
        let i = slotIndex(gfn)!
        slots[i].bits[Int(gfn - slots[i].base)] = v
    }
    public mutating func add(_ base: UInt64, _ pages: Int) -> Bool {
        let end = base + UInt64(pages)
        if pages == 0 { return false }
        for s in slots where base < s.base + UInt64(s.bits.count) && s.base < end { return false }
        slots.append(Slot(base: base, bits: Array(repeating: true, count: pages)))
        slots.sort { $0.base < $1.base }
        return true
    }
    public mutating func resize(_ base: UInt64, _ pages: Int) -> Bool {
        guard let i = slots.firstIndex(where: { $0.base == base }), pages > 0 else { return false }
        if i + 1 < slots.count && base + UInt64(pages) > slots[i + 1].base { return false }
        if pages < slots[i].bits.count { slots[i].bits.removeLast(slots[i].bits.count - pages) }
        else { slots[i].bits += Array(repeating: true, count: pages - slots[i].bits.count) }
        return true
    }
    public var sharedRuns: [(UInt64, UInt64)] {
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
    public var totalShared: UInt64 { slots.reduce(0) { $0 + UInt64($1.bits.filter { !$0 }.count) } }
}

extension Tracker {
    /// All shared runs via the public iterator.
    public var allRuns: [(UInt64, UInt64)] {
        var r: [(UInt64, UInt64)] = []
        var from: UInt64 = 0
        while let run = nextSharedRun(from: from) {
            r.append((run.gfn, run.pages))
            from = run.gfn + run.pages
        }
        return r
    }
}

