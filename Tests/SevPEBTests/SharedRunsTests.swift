import CSevPEB
import Testing
@testable import SevPEB

/// sevpeb_shared_runs against sevpeb_next_shared_run (its one-at-a-time
/// form) on random states, for batch sizes from 1 to larger than the answer.
@Suite struct SharedRunsTests {
    func oneByOne(_ t: OpaquePointer, from: UInt64) -> [sevpeb_run] {
        var out: [sevpeb_run] = []
        var at = from, g: UInt64 = 0, n: UInt64 = 0
        while sevpeb_next_shared_run(t, at, &g, &n) == 1 { out.append(sevpeb_run(gfn: g, npages: n)); at = g + n }
        return out
    }

    func batched(_ t: OpaquePointer, from: UInt64, max: Int) -> [sevpeb_run] {
        var out: [sevpeb_run] = []
        var buf = [sevpeb_run](repeating: sevpeb_run(), count: max)
        var at = from
        while true {
            let r = buf.withUnsafeMutableBufferPointer { sevpeb_shared_runs(t, at, $0.baseAddress, max) }
            #expect(r >= 0 && r <= Int64(max))
            out += buf[0..<Int(r)]
            if r < Int64(max) { return out }
            at = buf[max - 1].gfn + buf[max - 1].npages
        }
    }

    @Test(arguments: [1, 2, 3]) func matchesNextSharedRun(seed: UInt64) {
        var tp: OpaquePointer?
        #expect(sevpeb_tracker_create(0, &tp) == 0)
        let t = tp!
        defer { sevpeb_tracker_destroy(t) }
        // Touching slots [0, 0x10000) + [0x10000, 0x30000), a hole, then [0x100000, +0x8000).
        #expect(sevpeb_slot_add(t, 0, 0x10000) == 0)
        #expect(sevpeb_slot_add(t, 0x10000, 0x20000) == 0)
        #expect(sevpeb_slot_add(t, 0x100000, 0x8000) == 0)
        var rng = seed &* 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng }
        let spans: [(UInt64, UInt64)] = [(0, 0x30000), (0x100000, 0x8000)]
        for _ in 0..<400 {
            let (b, p) = spans[Int(next() % 2)]
            let g = b + next() % p
            let n = min(1 + next() % 300, b + p - g)
            #expect(sevpeb_set_range(t, g, n, Int32(next() % 3 == 0 ? 1 : 0)) == 0)
        }
        // A run across the touching slots' boundary.
        #expect(sevpeb_set_range(t, 0xFFF0, 0x20, 0) == 0)
        let want = oneByOne(t, from: 0)
        #expect(want.count > 50)
        #expect(want.contains { $0.gfn < 0x10000 && $0.gfn + $0.npages > 0x10000 })
        for max in [1, 2, 7, 64, want.count, want.count + 1, 10_000] {
            let got = batched(t, from: 0, max: max)
            #expect(got.map { [$0.gfn, $0.npages] } == want.map { [$0.gfn, $0.npages] }, "max \(max)")
        }
        // From the middle of a run: clipped like next_shared_run.
        let mid = want[want.count / 2]
        let from = mid.gfn + mid.npages / 2
        #expect(batched(t, from: from, max: 5).map { [$0.gfn, $0.npages] } == oneByOne(t, from: from).map { [$0.gfn, $0.npages] })
        // Negative control: a changed state changes the answer.
        #expect(sevpeb_set_range(t, want[0].gfn, 1, 1) == 0)
        #expect(batched(t, from: 0, max: 8).map { [$0.gfn, $0.npages] } != want.map { [$0.gfn, $0.npages] })
    }
}
