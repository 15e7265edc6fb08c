import Testing
@testable import SevPEB
import SevPEBTestSupport

/// The word-at-a-time scan (issue 13, phase 2) behind `sharedRuns` and
/// `nextSharedRun`, against runs read off `getBitmap`, on
/// random layouts (touching slots, holes, partial last chunks) and states
/// that put run edges on word, chunk, group and slot boundaries.
@Suite struct SharedRunsScanTests {
    /// The reference: every shared run from `from`, read off the bitmap
    /// (`getBitmap`, 1 = private) of the slots, a run closed by a private
    /// page, a hole or the end of the layout. Independent of the scan, which
    /// both `sharedRuns` and `nextSharedRun` use.
    func runsFromBitmap(_ t: Tracker, _ slots: [(UInt64, UInt64)], from: UInt64) throws -> [[UInt64]] {
        var r: [[UInt64]] = []
        var open: UInt64? = nil
        var prevEnd: UInt64 = 0
        for (b, p) in slots.sorted(by: { $0.0 < $1.0 }) {
            if let st = open, b != prevEnd { r.append([st, prevEnd - st]); open = nil }
            var bytes = [UInt8](repeating: 0, count: Int((p + 7) / 8))
            try bytes.withUnsafeMutableBufferPointer { (d) throws(SevError) in
                try t.getBitmap(b, p, d.baseAddress!, d.count)
            }
            var i: UInt64 = 0
            while i < p {
                let byte = bytes[Int(i / 8)]
                // whole bytes that cannot hold an edge
                if i % 8 == 0 && i + 8 <= p && b + i >= from && ((open == nil && byte == 0xff) || (open != nil && byte == 0)) {
                    i += 8; continue
                }
                let g = b + i
                if g >= from {
                    let priv = (byte >> UInt8(i % 8)) & 1 == 1
                    if !priv && open == nil { open = g }
                    if priv, let st = open { r.append([st, g - st]); open = nil }
                }
                i += 1
            }
            prevEnd = b + p
        }
        if let st = open { r.append([st, prevEnd - st]) }
        return r
    }

    /// Every run from `from`, one `nextSharedRun` call each.
    func runsOneByOne(_ t: Tracker, from: UInt64) -> [[UInt64]] {
        var r: [[UInt64]] = []
        var at = from
        while let run = t.nextSharedRun(from: at) { r.append([run.gfn, run.pages]); at = run.gfn + run.pages }
        return r
    }

    /// Every run from `from`, fetched `max` at a time.
    func runsBatched(_ t: Tracker, from: UInt64, max: Int) -> [[UInt64]] {
        var r: [[UInt64]] = []
        var at = from
        while true {
            var got: [[UInt64]] = []
            let n = t.sharedRuns(from: at, max: max) { i, g, p in
                #expect(i == got.count)
                got.append([g, p])
            }
            #expect(n == got.count && n <= max)
            r += got
            if n < max { return r }
            at = got[n - 1][0] + got[n - 1][1]
        }
    }

    @Test(arguments: 0..<12)
    func scanEqualsBitmap(seed: Int) throws {
        var rng = SeededRNG(seed: UInt64(seed) &* 7919 &+ 13)
        let t = try Tracker.create()
        // 1-4 slots, some touching, some with a hole before them.
        var base: UInt64 = rng.next() % 3 == 0 ? 0 : rng.next() % (1 << 21)
        var slots: [(UInt64, UInt64)] = []
        for _ in 0..<(1 + Int(rng.next() % 4)) {
            let pages = 1 + rng.next() % (3 << 20)
            try t.addSlot(base: base, pages: pages)
            slots.append((base, pages))
            base += pages + (rng.next() % 2 == 0 ? 0 : 1 + rng.next() % 100_000)
        }
        for (b, p) in slots {
            // Uniform shared stretches (whole chunks and groups), then single
            // pages and short runs anywhere, edges on word boundaries.
            for _ in 0..<(rng.next() % 4) {
                let at = b + rng.next() % p
                try t.setRange(at, Swift.min(p - (at - b), 1 + rng.next() % (1 << 21)), private: false)
            }
            for _ in 0..<(rng.next() % 200) {
                let at = b + (rng.next() % 2 == 0 ? rng.next() % p : (rng.next() % (p / 64 + 1)) * 64 % p)
                let n = Swift.min(p - (at - b), 1 + rng.next() % 130)
                try t.setRange(at, n, private: rng.next() % 3 == 0)
            }
            if rng.next() % 2 == 0 { try t.setRange(b + p - 1, 1, private: false) }   // a run to the slot's end
        }
        let froms: [UInt64] = [0] + (0..<6).map { _ in
            let (b, p) = slots[Int(rng.next() % UInt64(slots.count))]
            return b + rng.next() % (p + 10)
        }
        for from in froms {
            let want = try runsFromBitmap(t, slots, from: from)
            #expect(runsOneByOne(t, from: from) == want, "seed \(seed) from \(from): nextSharedRun")
            for max in [1, 2, 3, 7, 4096] {
                let got = runsBatched(t, from: from, max: max)
                #expect(got == want, "seed \(seed) from \(from) max \(max): \(got.count) runs vs \(want.count)")
            }
        }
    }

    @Test func dense() throws {
        // Every page its own random state over two touching slots: ~1 run per 4 pages.
        var rng = SeededRNG(seed: 42)
        let t = try Tracker.create()
        try t.addSlot(base: 0, pages: 40_000)
        try t.addSlot(base: 40_000, pages: 70_001)
        var bytes = [UInt8](repeating: 0, count: 110_001 / 8 + 1)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: rng.next()) }
        bytes[bytes.count - 1] &= 1
        try bytes.withUnsafeBufferPointer { (b) throws(SevError) in try t.setBitmap(0, 110_001, b.baseAddress!, b.count) }
        let slots: [(UInt64, UInt64)] = [(0, 40_000), (40_000, 70_001)]
        let want = try runsFromBitmap(t, slots, from: 0)
        #expect(want.count > 20_000)
        #expect(runsOneByOne(t, from: 0) == want)
        #expect(runsBatched(t, from: 0, max: 4096) == want)
        #expect(runsBatched(t, from: 39_999, max: 5) == (try runsFromBitmap(t, slots, from: 39_999)))
        #expect(t.sharedRuns(from: 0, max: 0) { _, _, _ in } == 0)
    }
}
