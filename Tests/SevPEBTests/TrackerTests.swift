import CSevPEB
import CSevPEBShims
import Testing
@testable import SevPEB
import SevPEBTestSupport

@Suite struct TrackerTests {
    /// PageState is the header's spelling: its raw values are the macros.
    @Test func pageStateIsTheHeadersSpelling() {
        #expect(PageState.private.rawValue == SEVPEB_PRIVATE)
        #expect(PageState.shared.rawValue == SEVPEB_SHARED)
        #expect(PageState.mixed.rawValue == SEVPEB_MIXED)
        #expect(PageState(private: true) == .private && PageState(private: false) == .shared)
    }

    /// The update fast path reaches these group fields by byte offset.
    @Test func groupFieldOffsetsOfTheFastPath() {
        #expect(MemoryLayout<Group>.offset(of: \Group.dirty) == Group.dirtyOffset)
        #expect(MemoryLayout<Group>.offset(of: \Group.hashOK) == Group.hashOKOffset)
        #expect(MemoryLayout<Group>.offset(of: \Group.hashValid) == Group.hashValidOffset)
    }

    @Test func defaultsPrivateAndLayoutErrors() throws {
        let t = try Tracker.create()
        #expect(errno { () throws(SevError) in try t.addSlot(base: 0, pages: 0) } == EINVAL)
        #expect(errno { () throws(SevError) in try t.addSlot(base: Tracker.gfnLimit - 1, pages: 2) } == ERANGE)
        try t.addSlot(base: 0, pages: 0x80000)
        try t.addSlot(base: 0x100000, pages: 0x1000)
        #expect(errno { () throws(SevError) in try t.addSlot(base: 0x7ffff, pages: 2) } == EEXIST)
        #expect(try t.test(0x7ffff) == true)
        #expect(errno { () throws(SevError) in _ = try t.test(0x80000) } == ERANGE)
        #expect(errno { () throws(SevError) in try t.setRange(0x7fff0, 0x20, private: false) } == ERANGE)
        #expect(t.totals().shared == 0)   // the failed range changed nothing
        #expect(errno { () throws(SevError) in try t.removeSlot(base: 5) } == ENOENT)
        #expect(errno { () throws(SevError) in try t.resizeSlot(base: 0, pages: 0x100001) } == EEXIST)
    }

    @Test func rangesAcrossTouchingSlots() throws {
        let t = try Tracker.create()
        try t.addSlot(base: 0, pages: 100)
        try t.addSlot(base: 100, pages: 100)   // touches: one range may span both
        try t.setRange(90, 20, private: false)
        #expect(try t.countShared(0, 200) == 20)
        #expect(t.allRuns.map { [$0.0, $0.1] } == [[90, 20]])
    }

    @Test func highGFNsBeyond32Bits() throws {
        let t = try Tracker.create()
        let base: UInt64 = (1 << 52) - (1 << 21)   // ends exactly at the 2^52 limit
        try t.addSlot(base: base, pages: 1 << 21)
        try t.setRange(base + (1 << 20) + 3, 5, private: false)
        #expect(try t.test(base + (1 << 20) + 4) == false)
        #expect(t.allRuns.map { [$0.0, $0.1] } == [[base + (1 << 20) + 3, 5]])
        try t.mapGPARange(gpa: (base + 10) << 12, npages: 1, attrs: 0)
        #expect(try t.countShared(base, 1 << 21) == 6)
    }

    @Test func lazyMemoryForTheTypical1TiBGuest() throws {
        let t = try Tracker.create()
        try typicalGuest(t)
        let mem = t.memoryBytes
        #expect(mem <= 64 * 1024, "tracker memory \(mem) bytes")
        print("typical 1 TiB guest: tracker memory \(mem) bytes")
    }

    @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8])
    func randomOpsAgainstTheModel(seed: UInt64) throws {
        var rng = SeededRNG(seed: seed)
        let t = try Tracker.create()
        var m = Model()
        var trace: [String] = []
        for step in 0..<400 {
            let op = rng.next() % 100
            let anyBase = rng.next() % 3 == 0 ? (rng.next() % 8) * 40000 : (rng.next() % 300000)
            switch op {
            case 0..<8:   // add
                let pages = Int(1 + rng.next() % 70000)
                let ok = m.add(anyBase, pages)
                let e = errno { () throws(SevError) in try t.addSlot(base: anyBase, pages: UInt64(pages)) }
                trace.append("\(step): add \(anyBase)+\(pages) -> \(e)")
                #expect((e == 0) == ok, "\(trace.suffix(5))")
            case 8..<12:  // remove
                if let s = m.slots.randomElement(using: &rng) {
                    m.slots.removeAll { $0.base == s.base }
                    try t.removeSlot(base: s.base)
                    trace.append("\(step): remove \(s.base)")
                }
            case 12..<18: // resize
                if let s = m.slots.randomElement(using: &rng) {
                    let pages = Int(1 + rng.next() % 70000)
                    let ok = m.resize(s.base, pages)
                    let e = errno { () throws(SevError) in try t.resizeSlot(base: s.base, pages: UInt64(pages)) }
                    trace.append("\(step): resize \(s.base) to \(pages) -> \(e)")
                    #expect((e == 0) == ok, "\(trace.suffix(5))")
                }
            case 18..<20:
                t.reset()
                for i in m.slots.indices { m.slots[i].bits = Array(repeating: true, count: m.slots[i].bits.count) }
            default:
                guard let s = m.slots.randomElement(using: &rng) else { continue }
                let off = UInt64(rng.next() % UInt64(s.bits.count))
                let n = rng.next() % 4 == 0 ? 1 + rng.next() % 40000 : 1 + rng.next() % 200
                let gfn = s.base + off
                let valid = m.covers(gfn, n)
                if op < 70 {
                    let v = rng.next() & 1 == 1
                    let e = errno { () throws(SevError) in try t.setRange(gfn, n, private: v) }
                    #expect((e == 0) == valid)
                    if valid { for k in 0..<n { m.set(gfn + k, v) } }
                } else if op < 80 {
                    var bytes = [UInt8](repeating: 0, count: Int((n + 7) / 8))
                    for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: rng.next()) }
                    let e = errno { () throws(SevError) in
                        try bytes.withUnsafeBufferPointer { (b) throws(SevError) in _ = try t.setBitmap(gfn, n, b.baseAddress!, b.count) }
                    }
                    #expect((e == 0) == valid)
                    if valid { for k in 0..<n { m.set(gfn + k, bytes[Int(k / 8)] >> (k % 8) & 1 == 1) } }
                } else if op < 88 {
                    let attrs: UInt64 = (rng.next() & 1) << 4 | (rng.next() % 4 == 0 ? rng.next() % 4 : 0)
                    let (ret, _) = t.mapGPARangeRet(gpa: gfn << 12, npages: n, attrs: attrs)
                    let ok = valid && attrs & 0xf <= 2
                    #expect((ret == 0) == ok)
                    if ok { for k in 0..<n { m.set(gfn + k, attrs & 0x10 != 0) } }
                } else {
                    // GET with any start, checked bit by bit; the last byte's high bits are kept
                    var out = [UInt8](repeating: 0xA5, count: Int((n + 7) / 8))
                    let e = errno { () throws(SevError) in
                        try out.withUnsafeMutableBufferPointer { (b) throws(SevError) in try t.getBitmap(gfn, n, b.baseAddress!, b.count) }
                    }
                    #expect((e == 0) == valid)
                    if valid {
                        for k in 0..<n { #expect((out[Int(k / 8)] >> (k % 8) & 1 == 1) == m.get(gfn + k)!) }
                        if n % 8 != 0 { #expect(out[out.count - 1] >> (n % 8) == 0xA5 >> (n % 8)) }
                    }
                }
            }
            if let broken = t.checkInvariants() {
                Issue.record("invariant broken after \(trace.suffix(3)): \(broken)")
                return
            }
            if step % 50 == 49 || step == 399 {
                // Whole-state comparison through the public queries.
                #expect(t.slotList.map { [$0.base, $0.pages] } == m.slots.map { [$0.base, UInt64($0.bits.count)] })
                #expect(t.totals().shared == m.totalShared, "\(trace.suffix(8))")
                let runs = t.allRuns, want = m.sharedRuns
                #expect(runs.count == want.count && zip(runs, want).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 },
                        "runs differ after \(trace.suffix(8))")
            }
        }
    }

    @Test func hypercallStrictDecoding() throws {
        let t = try Tracker.create()
        try t.addSlot(base: 0, pages: 1 << 20)
        func ret(_ gpa: UInt64, _ n: UInt64, _ a: UInt64) -> Int64 { t.mapGPARangeRet(gpa: gpa, npages: n, attrs: a).ret }
        #expect(ret(0x1000, 1, 0) == 0)
        #expect(ret(0x1800, 1, 0) == -22)                   // not 4 KiB aligned
        #expect(ret(0x1000, 0, 0) == -22)                   // npages 0
        #expect(ret(0x1000, 1, 1 << 5) == -22)              // reserved bit 5
        #expect(ret(0x1000, 1, 1 << 63) == -22)             // reserved bit 63
        #expect(ret(0x1000, 1, 3) == -22)                   // page size 3
        #expect(ret(0x1000, 1, 0xf) == -22)                 // page size 15
        #expect(ret(0x1000, 1, 1) == 0 && ret(0x1000, 1, 2) == 0)   // 2M / 1G hints on a 4K range: accepted
        #expect(ret(~UInt64(0xfff), 2, 0x10) == -22)         // overflow
        #expect(ret(UInt64(1 << 20) << 12, 1, 0x10) == -22)  // past RAM
        #expect(ret(UInt64((1 << 20) - 1) << 12, 2, 0x10) == -22)  // straddles the end
        let before = t.totals().shared
        #expect(before == 1)
        let (r, e) = t.mapGPARangeRet(gpa: 0x1001, npages: 1, attrs: 0)
        #expect(r == -22 && e!.message.contains("0x1001"))
        #expect(t.totals().shared == before)
        #expect(ret(0x1000, 1, 0x10) == 0 && t.totals().shared == 0)
    }

    @Test func changeCallbackSeesEveryChange() throws {
        let t = try Tracker.create()
        try t.addSlot(base: 0, pages: 1 << 16)
        final class Box { var calls: [(UInt64, UInt64, Int32)] = [] }
        let box = Box()
        let cb: ChangeCallback = { op, g, n, s in
            Unmanaged<Box>.fromOpaque(op!).takeUnretainedValue().calls.append((g, n, s))
        }
        t.setCallback(cb, Unmanaged.passUnretained(box).toOpaque())
        try t.setRange(10, 5, private: false)
        try t.setRange(10, 5, private: false)     // no change: no call
        try t.mapGPARange(gpa: 0x20000, npages: 2, attrs: 0)
        t.reset()
        #expect(box.calls.map { [$0.0, $0.1, UInt64(bitPattern: Int64($0.2))] } == [[10, 5, 0], [0x20, 2, 0], [0, 1 << 16, 1]])
        t.setCallback(nil, nil)
    }

    /// A reset reports each slot that had shared pages once, in ascending
    /// order, from marks in the slot table (no list is allocated); the
    /// marks are cleared, so a second reset, or one made while no callback
    /// was set, reports nothing stale.
    @Test func resetReportsEachChangedSlotOnce() throws {
        let t = try Tracker.create()
        defer { t.destroy() }
        try t.setLayout([.init(base: 0, pages: 100), .init(base: 200, pages: 100), .init(base: 400, pages: 100)])
        final class Box { var calls: [[UInt64]] = [] }
        let box = Box()
        let cb: ChangeCallback = { op, g, n, s in
            Unmanaged<Box>.fromOpaque(op!).takeUnretainedValue().calls.append([g, n, UInt64(bitPattern: Int64(s))])
        }
        t.setCallback(cb, Unmanaged.passUnretained(box).toOpaque())
        try t.setRange(450, 3, private: false)
        try t.setRange(10, 1, private: false)
        box.calls.removeAll()
        t.reset()
        #expect(box.calls == [[0, 100, 1], [400, 100, 1]])
        #expect(t.totals().shared == 0 && t.checkInvariants() == nil)
        box.calls.removeAll()
        t.reset()
        #expect(box.calls.isEmpty)
        // Only the slot changed since: the first reset's marks are gone.
        try t.setRange(250, 2, private: false)
        box.calls.removeAll()
        t.reset()
        #expect(box.calls == [[200, 100, 1]])
        // Reset with no callback set, then with one: nothing left over.
        try t.setRange(210, 1, private: false)
        t.setCallback(nil, nil)
        t.reset()
        t.setCallback(cb, Unmanaged.passUnretained(box).toOpaque())
        box.calls.removeAll()
        t.reset()
        #expect(box.calls.isEmpty && t.totals().shared == 0)
        t.setCallback(nil, nil)
    }

    /// The header promises a call "after every update that changed at least
    /// one page". A shrink that cuts a chunk's shared pages leaves a block
    /// whose surviving pages are all private: a whole-chunk update to private
    /// (or a reset) then changes nothing and must not call back.
    @Test func noCallbackForNoOpUpdateAfterShrink() throws {
        let t = try Tracker.create()
        try t.addSlot(base: 0, pages: 1024)
        try t.setRange(100, 400, private: false)            // chunk 0 mixed: 0..99 private
        try t.resizeSlot(base: 0, pages: 100)               // survivors all private
        final class Box { var calls: [(UInt64, UInt64, Int32)] = [] }
        let box = Box()
        let cb: ChangeCallback = { op, g, n, s in
            Unmanaged<Box>.fromOpaque(op!).takeUnretainedValue().calls.append((g, n, s))
        }
        t.setCallback(cb, Unmanaged.passUnretained(box).toOpaque())
        #expect(try t.setRange(0, 100, private: true) == false)
        t.reset()
        #expect(box.calls.isEmpty)
        // Negative control: the same update after a real change does call.
        try t.setRange(5, 1, private: false)
        #expect(try t.setRange(0, 100, private: true) == true)
        #expect(box.calls.map { $0.2 } == [0, 1])
        // Partial fills make a mixed block all private too.
        try t.setRange(7, 1, private: false)
        try t.setRange(7, 1, private: true)
        box.calls.removeAll()
        #expect(try t.setRange(0, 100, private: true) == false)
        #expect(box.calls.isEmpty)
        #expect(t.checkInvariants() == nil)
        t.setCallback(nil, nil)
    }

    @Test func resizeKeepsSurvivingStateAndNewPagesArePrivate() throws {
        let t = try Tracker.create()
        try t.addSlot(base: 0, pages: 40000)
        try t.setRange(0, 40000, private: false)
        try t.resizeSlot(base: 0, pages: 20001)           // shrink inside a chunk
        #expect(try t.countShared(0, 20001) == 20001)
        try t.resizeSlot(base: 0, pages: 70000)           // grow: new pages private
        #expect(try t.countShared(0, 70000) == 20001)
        #expect(try t.test(20001) == true)
    }

    @Test func digestIsCachedAndExact() throws {
        let a = try Tracker.create(), b = try Tracker.create()
        for t in [a, b] { try t.addSlot(base: 0, pages: 1 << 22); try t.addSlot(base: 1 << 23, pages: 12345) }
        #expect(a.digest() == b.digest())
        try a.setRange(77, 1, private: false)
        #expect(a.digest() != b.digest())
        try b.setBitmap(77, 1, [0], 1)
        #expect(a.digest() == b.digest())
        // Uniform chunk and a block holding the same bits hash the same.
        try a.setRange(100, 5, private: false); try a.setRange(100, 5, private: true)
        #expect(a.digest() == b.digest())
    }

    @Test func xxh3KnownAnswers() {
        // Values from the reference implementation (python-xxhash 4.x, xxh3_64_intdigest):
        // every length class of XXH3 (0, 1-3, 4-8, 17-128, 129-240 via 37, > 240).
        func h(_ b: [UInt8]) -> UInt64 {
            b.withUnsafeBytes { XXH3.hash(bytes: $0.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, count: b.count) }
        }
        #expect(h([]) == 0x2d06800538d394c2)
        #expect(h(Array("a".utf8)) == 0xe6c632b61e964e1f)
        #expect(h(Array("abc".utf8)) == 0x78af5f94892f3950)
        #expect(h((0..<768).map { UInt8($0 % 256) }) == 0x4066a57f4496584a)
        #expect(h((0..<37).map { UInt8($0) }) == 0x29abb110fd909861)
        let long = (0..<5000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        #expect(h(long) == 0x6abe8be5abcb2760)
        let words: [UInt64] = [1, 2, 3, 4]
        #expect(words.withUnsafeBufferPointer { XXH3.hash(words: $0.baseAddress!, count: 4) } == 0x53e911333a923397)
        var wx = XXH3()
        for w in words { wx.add(w) }
        #expect(wx.finish() == 0x53e911333a923397)
        // Streaming in odd pieces equals one shot.
        var x = XXH3()
        var i = 0
        long.withUnsafeBytes { p in
            for step in [1, 3, 31, 33, 7, 64, 2, 300] { x.update(p.baseAddress! + i, step); i += step }
        }
        // The state is copied to addresses of every alignment mod 64 (the array's
        // stride is not a multiple of 64) and each copy continues correctly.
        var copies = Array(repeating: x, count: 9)
        #expect(Set((0..<9).map { k in copies.withUnsafeBufferPointer { UInt(bitPattern: $0.baseAddress! + k) % 64 } }).count > 1)
        long.withUnsafeBytes { p in
            for k in 0..<copies.count { copies[k].update(p.baseAddress! + i, long.count - i) }
        }
        for k in 0..<copies.count { #expect(copies[k].finish() == 0x6abe8be5abcb2760) }
        // Negative control: one byte less is another hash.
        var short = XXH3()
        long.withUnsafeBytes { p in short.update(p.baseAddress!, long.count - 1) }
        #expect(short.finish() != 0x6abe8be5abcb2760)
    }
}
