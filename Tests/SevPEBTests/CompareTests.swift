import CSevPEB
import CSevPEBShims
import Testing
@testable import SevPEB
import SevPEBTestSupport

/// countDifferences / sevpeb_count_differences: the migration path record
/// compared with the live state.
@Suite struct CompareTests {
    /// Differences as the naive model sees them.
    static func modelDiff(_ a: Model, _ b: Model) -> [UInt64] {
        var d: [UInt64] = []
        for (sa, sb) in zip(a.slots, b.slots) {
            for k in 0..<sa.bits.count where sa.bits[k] != sb.bits[k] { d.append(sa.base + UInt64(k)) }
        }
        return d
    }

    @Test func equalTrackersAndSelf() throws {
        let a = try Tracker.create(), b = try Tracker.create()
        for t in [a, b] { try t.addSlot(base: 0, pages: 1 << 20) }
        try a.setRange(100, 50, private: false); try b.setRange(100, 50, private: false)
        #expect(try a.countDifferences(b, 0, 1 << 20, nil, 0).count == 0)
        #expect(try a.countDifferences(a, 0, 1 << 20, nil, 0).count == 0)
    }

    @Test func uniformPiecesThatDiffer() throws {
        let a = try Tracker.create(), b = try Tracker.create()
        for t in [a, b] { try t.addSlot(base: 0x100, pages: 3 << 14) }
        try b.setRange(0x100, 3 << 14, private: false)       // all shared vs all private
        var out = [UInt64](repeating: 0, count: 4)
        let r = try out.withUnsafeMutableBufferPointer { p throws(SevError) in try a.countDifferences(b, 0x100, 3 << 14, p.baseAddress, 4) }
        #expect(r.count == 3 << 14 && r.stored == 4)
        #expect(out == [0x100, 0x101, 0x102, 0x103])
    }

    @Test func randomAgainstModel() throws {
        var rng = SeededRNG(seed: 11)
        for round in 0..<20 {
            let a = try Tracker.create(), b = try Tracker.create()
            var ma = Model(), mb = Model()
            // Two slots that touch and one apart, odd sizes so pieces and words end unaligned.
            let layout: [(UInt64, Int)] = [(0, 40_000 + round), (40_000 + UInt64(round), 777), (200_000, 20_001)]
            for (base, n) in layout {
                try a.addSlot(base: base, pages: UInt64(n)); try b.addSlot(base: base, pages: UInt64(n))
                _ = ma.add(base, n); _ = mb.add(base, n)
            }
            for _ in 0..<60 {
                let s = layout[Int(rng.next() % 3)]
                let g = s.0 + rng.next() % UInt64(s.1)
                let n = 1 + rng.next() % min(3000, s.0 + UInt64(s.1) - g)
                let v = rng.next() & 1 == 0
                let both = rng.next() % 3 == 0
                try a.setRange(g, n, private: v)
                for k in g..<(g + n) { ma.set(k, v) }
                if both || rng.next() & 1 == 0 {
                    let v2 = both ? v : !v
                    try b.setRange(g, n, private: v2)
                    for k in g..<(g + n) { mb.set(k, v2) }
                }
            }
            let want = Self.modelDiff(ma, mb)
            let span = UInt64(40_000 + round + 777)
            var out = [UInt64](repeating: 0, count: 10)
            let r1 = try out.withUnsafeMutableBufferPointer { p throws(SevError) in try a.countDifferences(b, 0, span, p.baseAddress, 10) }
            let w1 = want.filter { $0 < span }
            #expect(r1.count == UInt64(w1.count), "round \(round)")
            #expect(Array(out[0..<r1.stored]) == Array(w1.prefix(10)), "round \(round)")
            let r2 = try b.countDifferences(a, 200_000, 20_001, nil, 0)
            #expect(r2.count == UInt64(want.filter { $0 >= 200_000 }.count), "round \(round)")
        }
    }

    @Test func errorsChangeNothing() throws {
        let a = try Tracker.create(), b = try Tracker.create()
        try a.addSlot(base: 0, pages: 1000); try b.addSlot(base: 0, pages: 500)
        #expect(errno { () throws(SevError) in _ = try a.countDifferences(b, 0, 0, nil, 0) } == EINVAL)
        #expect(errno { () throws(SevError) in _ = try a.countDifferences(b, 0, 10, nil, 3) } == EINVAL)
        #expect(errno { () throws(SevError) in _ = try a.countDifferences(b, 400, 200, nil, 0) } == ERANGE)
        #expect(errno { () throws(SevError) in _ = try a.countDifferences(b, UInt64.max, 2, nil, 0) } == ERANGE)
        do throws(SevError) { _ = try a.countDifferences(b, 400, 200, nil, 0) } catch {
            #expect(error.message.hasPrefix("second tracker:"))
        }
    }

    @Test func cABI() throws {
        var a: OpaquePointer? = nil, b: OpaquePointer? = nil
        #expect(sevpeb_tracker_create(0, &a) == 0 && sevpeb_tracker_create(0, &b) == 0)
        defer { sevpeb_tracker_destroy(a); sevpeb_tracker_destroy(b) }
        #expect(sevpeb_slot_add(a, 16, 4096) == 0 && sevpeb_slot_add(b, 16, 4096) == 0)
        #expect(sevpeb_set_range(a, 100, 3, Int32(SEVPEB_SHARED)) == 0)
        #expect(sevpeb_set_range(b, 101, 5, Int32(SEVPEB_SHARED)) == 0)
        var count: UInt64 = 0
        var gfns = [UInt64](repeating: 0, count: 8)
        #expect(sevpeb_count_differences(a, b, 16, 4096, &count, &gfns, 8) == 4)
        #expect(count == 4 && Array(gfns[0..<4]) == [100, 103, 104, 105])
        #expect(sevpeb_count_differences(a, nil, 16, 4096, &count, nil, 0) == -EINVAL)
        #expect(sevpeb_count_differences(a, b, 16, 4096, nil, nil, 0) == -EINVAL)
        #expect(sevpeb_count_differences(a, b, 0, 4096, &count, nil, 0) == -ERANGE)
        #expect(String(cString: sevpeb_last_error()).contains("first tracker"))
    }
}
