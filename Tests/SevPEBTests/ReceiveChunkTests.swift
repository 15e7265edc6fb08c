import CSevPEBShims
import Testing
@testable import SevPEB
import SevPEBTestSupport

/// The decoder's whole-chunk path (Tracker.receiveChunk, issue 13 phase 2):
/// BITS/RUNS records read straight into a chunk's block. Hand-built payloads
/// cover what a sevpeb source never sends but a stream may: a whole-chunk
/// BITS that is all private or all shared (the block must be dropped), a
/// chunk sent again over an existing block, RUNS over a shared chunk, and a
/// partial last chunk. The result must equal the same bits applied through
/// setBitmap (the general path), digest and all.
@Suite struct ReceiveChunkTests {
    struct Stream {
        var w: [UInt8] = []
        mutating func be(_ v: UInt64, _ n: Int) { for i in (0..<n).reversed() { w.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
        mutating func bits(_ gfn: UInt64, _ b: [Bool]) {
            w.append(0x11); be(gfn, 8); be(UInt64(b.count), 4)
            var bytes = [UInt8](repeating: 0, count: (b.count + 7) / 8)
            for (i, v) in b.enumerated() where v { bytes[i / 8] |= 1 << (i % 8) }
            w += bytes
        }
        mutating func runs(_ gfn: UInt64, _ n: Int, _ r: [(Int, Int)]) {
            w.append(0x12); be(gfn, 8); be(UInt64(n), 4); be(UInt64(r.count), 4)
            for (o, l) in r { be(UInt64(o), 2); be(UInt64(l - 1), 2) }
        }
        mutating func end() -> [UInt8] {
            w.append(0xFF)
            let c = UInt32(truncatingIfNeeded: w.withUnsafeBytes { XXH3.hash(bytes: $0.baseAddress!, count: $0.count) })
            be(UInt64(c), 4)
            defer { w = [] }
            return w
        }
    }

    func apply(_ t: Tracker, _ gfn: UInt64, _ b: [Bool]) throws {
        var bytes = [UInt8](repeating: 0, count: (b.count + 7) / 8)
        for (i, v) in b.enumerated() where v { bytes[i / 8] |= 1 << (i % 8) }
        try bytes.withUnsafeBufferPointer { (p) throws(SevError) in _ = try t.setBitmap(gfn, UInt64(b.count), p.baseAddress!, p.count) }
    }

    @Test func wholeChunkRecordsEqualTheGeneralPath() throws {
        let c = Tracker.chunkPages
        let pages = 2 * c + 7232   // a partial last chunk
        let layout = [Tracker.Slot(base: 0, pages: UInt64(pages))]
        let want = try Tracker.create()
        try want.addSlot(base: 0, pages: UInt64(pages))
        var rng = SeededRNG(seed: 5)
        let mixed0 = (0..<c).map { _ in rng.next() & 3 != 0 }
        let mixed2 = (0..<7232).map { _ in rng.next() & 1 == 0 }
        var runs2 = [Bool](repeating: true, count: 7232)
        for i in 100..<300 { runs2[i] = false }
        for i in 7000..<7232 { runs2[i] = false }

        var s = Stream()
        s.w.append(0x01); s.be(0x5356_5042, 4); s.be(UInt64(Wire.version), 2); s.w.append(12); s.w.append(0)
        s.w.append(0x02); s.be(1, 4); s.be(0, 8); s.be(UInt64(pages), 8)
        s.bits(0, [Bool](repeating: true, count: c))              // all private: no block kept
        s.bits(UInt64(c), [Bool](repeating: false, count: c))     // all shared: uniform shared
        s.runs(UInt64(2 * c), 7232, [(100, 200), (7000, 232)])    // partial chunk, runs
        let p1 = s.end()
        try apply(want, 0, [Bool](repeating: true, count: c))
        try apply(want, UInt64(c), [Bool](repeating: false, count: c))
        try apply(want, UInt64(2 * c), runs2)

        s.bits(0, mixed0)                                         // over a private chunk
        s.runs(UInt64(c), c, [(0, 10), (c - 5, 5)])               // RUNS over a shared chunk
        s.bits(UInt64(2 * c), mixed2)                             // over an existing block
        var runs1 = [Bool](repeating: true, count: c)
        for i in 0..<10 { runs1[i] = false }
        for i in (c - 5)..<c { runs1[i] = false }
        try apply(want, 0, mixed0)
        try apply(want, UInt64(c), runs1)
        try apply(want, UInt64(2 * c), mixed2)
        let sum = want.summary()
        s.w.append(0x20); s.be(sum.digest, 8); s.be(sum.pages, 8); s.be(sum.shared, 8)
        let p2 = s.end()

        let live = try Tracker.create()
        try live.applyLayout(layout)
        var d = try LoadSession.create()
        d.setup()
        var src1 = ArraySource(p1)
        #expect(try d.load(live, &src1, version: Wire.sectionVersion) == false)
        var src2 = ArraySource(p2)
        #expect(try d.load(live, &src2, version: Wire.sectionVersion) == true)
        #expect(live.digest() == want.digest())
        #expect(live.allRuns.map { [$0.0, $0.1] } == want.allRuns.map { [$0.0, $0.1] })
        #expect(live.checkInvariants() == nil)
        // The first payload's two uniform BITS left no block: memory is the
        // same as the general path's.
        #expect(live.memoryBytes == want.memoryBytes)
    }
}
