import Testing
@testable import SevPEB
import SevPEBTestSupport

/// The word-at-a-time scan of `sharedRuns` (issue 13, phase 2) against the
/// one-run-at-a-time `nextSharedRun` it replaces in sevpeb_shared_runs, on
/// random layouts (touching slots, holes, partial last chunks) and states
/// that put run edges on word, chunk, group and slot boundaries.
@Suite struct SharedRunsScanTests {
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
    func batchEqualsOneByOne(seed: Int) throws {
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
            let want = runsOneByOne(t, from: from)
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
        let want = runsOneByOne(t, from: 0)
        #expect(want.count > 20_000)
        #expect(runsBatched(t, from: 0, max: 4096) == want)
        #expect(runsBatched(t, from: 39_999, max: 5) == runsOneByOne(t, from: 39_999))
        #expect(t.sharedRuns(from: 0, max: 0) { _, _, _ in } == 0)
    }
}
