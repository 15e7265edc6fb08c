import CSevPEBShims
import Testing
@testable import SevPEB
import SevPEBTestSupport

func sameLayout(_ a: Tracker) throws(SevError) -> Tracker {
    let b = try Tracker.create()
    for s in a.slotList { try b.addSlot(base: s.base, pages: s.pages) }
    return b
}

@Suite struct WireTests {
    @Test func fullRoundTripTypicalGuest() throws {
        let src = try Tracker.create()
        try typicalGuest(src)
        let dst = try sameLayout(src)
        var s = try SaveSession.create(), l = try LoadSession.create()
        let ch = Channel()
        try ch.save { (k: inout ArraySink) throws(SevError) in try s.setup(src, &k) }
        try ch.save { (k: inout ArraySink) throws(SevError) in try s.complete(src, &k) }
        #expect(ch.payloads[0].count <= 4096, "full state of the typical 1 TiB guest: \(ch.payloads[0].count) bytes")
        print("typical 1 TiB guest: setup payload \(ch.payloads[0].count) bytes, complete \(ch.payloads[1].count) bytes")
        #expect(ch.payloads[1].count <= 64)
        l.setup()
        #expect(try ch.load(into: dst, &l) == [false, true])
        #expect(dst.digest() == src.digest())
        #expect(dst.allRuns.map { [$0.0, $0.1] } == src.allRuns.map { [$0.0, $0.1] })
    }

    @Test(arguments: [11, 12, 13, 14])
    func iterativeRoundTripWithUpdatesBetween(seed: UInt64) throws {
        var rng = SeededRNG(seed: seed)
        let src = try Tracker.create()
        try src.addSlot(base: 0, pages: 1 << 20)
        try src.addSlot(base: 1 << 21, pages: 300_000)
        let dst = try sameLayout(src)
        var s = try SaveSession.create(), l = try LoadSession.create()
        let ch = Channel()
        func churn(_ k: Int) throws(SevError) {
            for _ in 0..<k {
                let slot = src.slotList[Int(rng.next() % 2)]
                let off = rng.next() % slot.pages
                let n = min(slot.pages - off, 1 + rng.next() % (rng.next() % 5 == 0 ? 50000 : 300))
                if rng.next() % 7 == 0 {
                    var b = [UInt8](repeating: 0, count: Int((n + 7) / 8))
                    for i in b.indices { b[i] = UInt8(truncatingIfNeeded: rng.next()) }
                    try src.setBitmap(slot.base + off, n, b, b.count)
                } else {
                    try src.setRange(slot.base + off, n, private: rng.next() & 1 == 0)
                }
            }
        }
        try churn(200)
        try ch.save { (k: inout ArraySink) throws(SevError) in try s.setup(src, &k) }
        for i in 0..<12 {
            try churn(50)
            if i == 5 { src.reset() }                           // a reboot mid-migration
            if i == 7 { try src.resizeSlot(base: 1 << 21, pages: 200_000) }
            if i == 8 { try src.resizeSlot(base: 1 << 21, pages: 310_000) }   // shrink then grow
            try ch.save { (k: inout ArraySink) throws(SevError) in _ = try s.iterate(src, &k, budget: 3000) }
        }
        try ch.save { (k: inout ArraySink) throws(SevError) in try s.complete(src, &k) }
        // The destination sees the final layout (a QEMU destination is started with it).
        try dst.resizeSlot(base: 1 << 21, pages: 310_000)
        l.setup()
        let r = try ch.load(into: dst, &l)
        #expect(r.last == true && r.dropLast().allSatisfy { !$0 })
        #expect(dst.digest() == src.digest())
        #expect(dst.totals() == src.totals())
    }

    @Test func completionWithNothingChangedIsTiny() throws {
        let src = try Tracker.create()
        try typicalGuest(src)
        var s = try SaveSession.create()
        let ch = Channel()
        try ch.save { (k: inout ArraySink) throws(SevError) in try s.setup(src, &k) }
        try ch.save { (k: inout ArraySink) throws(SevError) in #expect(try s.iterate(src, &k, budget: 0)) }
        try ch.save { (k: inout ArraySink) throws(SevError) in try s.complete(src, &k) }
        #expect(ch.payloads[2].count == Wire.finalBytes + 5)
        #expect(ch.payloads[1].count == 5)   // an empty PART is just END_OF_PAYLOAD
    }

    @Test func fullSendSkipsChunksThatWentBackToPrivate() throws {
        // Pages shared then private again leave a mixed block until the
        // encoder passes; the full send must not spend records on them.
        let a = try Tracker.create(), b = try Tracker.create()
        for t in [a, b] { try t.addSlot(base: 0, pages: 1 << 20) }
        for i in 0..<50 { try a.setRange(UInt64(i) * 20000, 3, private: false) }
        for i in 0..<50 { try a.setRange(UInt64(i) * 20000, 3, private: true) }
        var sa = try SaveSession.create(), sb = try SaveSession.create()
        let ca = Channel(), cb = Channel()
        try ca.save { (k: inout ArraySink) throws(SevError) in try sa.setup(a, &k) }
        try cb.save { (k: inout ArraySink) throws(SevError) in try sb.setup(b, &k) }
        #expect(ca.payloads[0].count == cb.payloads[0].count)
        #expect(a.checkInvariants() == nil)
    }

    // MARK: hostile input: each class, its exact error

    func stream() throws -> (Tracker, [[UInt8]]) {
        let src = try Tracker.create()
        try src.addSlot(base: 0, pages: 100_000)
        try src.setRange(5, 3, private: false)
        try src.setRange(20000, 9000, private: false)
        var b = [UInt8](repeating: 0x5a, count: 200)
        try src.setBitmap(40000, 1600, &b, b.count)
        var s = try SaveSession.create()
        let ch = Channel()
        try ch.save { (k: inout ArraySink) throws(SevError) in try s.setup(src, &k) }
        try ch.save { (k: inout ArraySink) throws(SevError) in try s.complete(src, &k) }
        return (src, ch.payloads)
    }

    /// Load `payloads` into a fresh destination; returns the error code and
    /// checks the destination is unchanged on failure.
    func loadError(_ payloads: [[UInt8]], version: UInt32 = 1, layout: [Tracker.Slot]? = nil) throws -> (Int32, String) {
        let dst = try Tracker.create()
        for s in layout ?? [Tracker.Slot(base: 0, pages: 100_000)] { try dst.addSlot(base: s.base, pages: s.pages) }
        try dst.setRange(1, 1, private: false)
        let before = dst.digest()
        var l = try LoadSession.create()
        l.setup()
        for p in payloads {
            var src = ArraySource(p)
            do throws(SevError) { _ = try l.load(dst, &src, version: version) } catch {
                #expect(dst.digest() == before, "failed load changed the destination")
                return (error.code, error.message)
            }
        }
        return (0, "")
    }

    @Test func hostileInputClasses() throws {
        let (_, p) = try stream()
        func patched(_ i: Int, _ at: Int, _ bytes: [UInt8]) -> [[UInt8]] {
            var q = p
            q[i].replaceSubrange(at..<(at + bytes.count), with: bytes)
            return q
        }
        #expect(try loadError(p).0 == 0)
        #expect(try loadError(p, version: 2).0 == EPROTONOSUPPORT)
        #expect(try loadError(patched(0, 1, [0, 0, 0, 0])).0 == EBADMSG)          // magic
        #expect(try loadError(patched(0, 5, [0, 3])).0 == EPROTONOSUPPORT)        // format version 3
        // format version 1 (XXH64 checksums): refused by name, before its checksum is looked at
        let (e1, m1) = try loadError(patched(0, 5, [0, 1]))
        #expect(e1 == EPROTONOSUPPORT && m1.contains("format version 1") && m1.contains("XXH64"), "\(m1)")
        #expect(try loadError(patched(0, 7, [13])).0 == EBADMSG)                  // page shift
        #expect(try loadError(patched(0, 0, [0x77])).1.contains("unknown record type 0x77"))
        #expect(try loadError(patched(0, 10, [0, 1, 0, 0])).0 == EMSGSIZE)        // nslots 65536
        #expect(try loadError(p, layout: [Tracker.Slot(base: 0, pages: 99_999)]).0 == EREMCHG)
        // truncation at 0, n-2, half, and of the second payload
        for cut in [0, p[0].count - 2, p[0].count / 2] {
            #expect(try loadError([Array(p[0][..<cut])]).0 == ENODATA)
        }
        #expect(try loadError([p[0], Array(p[1].dropLast(3))]).0 == ENODATA)
        // digest mismatch: change FINAL's digest and fix the payload checksum
        var q = p
        q[1][1] ^= 1
        q[1] = refreshChecksum(q[1])
        let (e, m) = try loadError(q)
        #expect(e == EILSEQ && m.contains("digest"), "\(m)")
        // a flipped byte anywhere is refused
        for i in 0..<(p[0].count + p[1].count) {
            var f = p
            if i < p[0].count { f[0][i] ^= 0x04 } else { f[1][i - p[0].count] ^= 0x04 }
            #expect(try loadError(f).0 != 0, "flip at \(i) accepted")
        }
    }

    /// Recompute a payload's END_OF_PAYLOAD check after editing it.
    func refreshChecksum(_ p: [UInt8]) -> [UInt8] {
        var q = p
        let end = q.count - 5
        let c = UInt32(truncatingIfNeeded: q.withUnsafeBytes { XXH3.hash(bytes: $0.baseAddress!, count: end + 1) })
        q[end + 1] = UInt8(c >> 24); q[end + 2] = UInt8(truncatingIfNeeded: c >> 16)
        q[end + 3] = UInt8(truncatingIfNeeded: c >> 8); q[end + 4] = UInt8(truncatingIfNeeded: c)
        return q
    }

    @Test func rangeOutsideDeclaredLayoutIsERANGE() throws {
        // A hand-built stream: HEADER, LAYOUT [0, 100), FILL at 200.
        var w = [UInt8]()
        func be(_ v: UInt64, _ n: Int) { for i in (0..<n).reversed() { w.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
        w.append(0x01); be(0x5356_5042, 4); be(UInt64(Wire.version), 2); w.append(12); w.append(0)
        w.append(0x02); be(1, 4); be(0, 8); be(100, 8)
        w.append(0x10); be(200, 8); be(5, 8); w.append(0)
        w.append(0xFF); be(0, 4)
        let (e, m) = try loadError([refreshChecksum(w)], layout: [Tracker.Slot(base: 0, pages: 100)])
        #expect(e == ERANGE && m.contains("FILL at offset 30"), "\(m)")
    }

    @Test func fillWithZeroPagesIsEBADMSG() throws {
        // FORMAT.md: FILL npages > 0, malformed records are EBADMSG.
        var w = [UInt8]()
        func be(_ v: UInt64, _ n: Int) { for i in (0..<n).reversed() { w.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
        w.append(0x01); be(0x5356_5042, 4); be(UInt64(Wire.version), 2); w.append(12); w.append(0)
        w.append(0x02); be(1, 4); be(0, 8); be(100, 8)
        w.append(0x10); be(20, 8); be(0, 8); w.append(0)
        w.append(0xFF); be(0, 4)
        let (e, m) = try loadError([refreshChecksum(w)], layout: [Tracker.Slot(base: 0, pages: 100)])
        #expect(e == EBADMSG && m.contains("FILL at offset 30: npages 0"), "\(e) \(m)")
    }
}
