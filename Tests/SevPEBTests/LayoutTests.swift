import Testing
import CSevPEB
import CSevPEBShims
@testable import SevPEB
import SevPEBTestSupport

/// sevpeb_set_layout against the same change applied slot by slot through
/// the old calls, in the order patch 0003's sev_peb_set_layout applies it.
@Suite struct LayoutTests {
    /// The slot-by-slot reference (SevPEBTestSupport, shared with the
    /// setlayout fuzz target): qemu-patches/0003's sev_peb_set_layout.
    static func applySlotBySlot(_ t: Tracker, _ new: [Tracker.Slot]) throws {
        try SevPEBTestSupport.applySlotBySlot(t, new)
    }

    /// A random layout whose boundaries often reuse the old ones (so slots
    /// are kept, resized, merged and split); the generator the fuzz target uses.
    static func layout(_ rng: inout SeededRNG, near old: [Tracker.Slot], limit: UInt64 = 300_000) -> [Tracker.Slot] {
        var g = rng
        defer { rng = g }
        return layoutNear(old, limit: limit, maxNewPoints: 8, pick: { Int(g.next() % UInt64($0)) }, point: { g.next() })
    }

    static func randomState(_ t: Tracker, _ rng: inout SeededRNG) throws {
        for sl in t.slotList {
            for _ in 0..<(rng.next() % 5) {
                let a = rng.next() % sl.pages
                let n = 1 + rng.next() % min(sl.pages - a, 40_000)
                try t.setRange(sl.base + a, n, private: rng.next() % 3 == 0)
            }
        }
    }

    static func bits(_ t: Tracker) throws -> [[UInt8]] {
        try t.slotList.map { sl in
            var b = [UInt8](repeating: 0, count: Int((sl.pages + 7) / 8))
            try b.withUnsafeMutableBufferPointer { p in try t.getBitmap(sl.base, sl.pages, p.baseAddress!, p.count) }
            return b
        }
    }

    final class Calls { var list: [[UInt64]] = [] }
    static let record: ChangeCallback = { op, g, n, s in
        Unmanaged<Calls>.fromOpaque(op!).takeUnretainedValue().list.append([g, n, UInt64(bitPattern: Int64(s))])
    }

    @Test(arguments: 0..<12) func atomicEqualsSlotBySlot(seed: UInt64) throws {
        var rng = SeededRNG(seed: seed &* 7919 &+ 1)
        var h: OpaquePointer? = nil
        #expect(sevpeb_tracker_create(0, &h) == 0)
        defer { sevpeb_tracker_destroy(h) }
        let a = UnsafeMutablePointer<Handle>(h!).pointee.tracker
        let b = try Tracker.create()
        var current: [Tracker.Slot] = []
        let callsA = Calls(), callsB = Calls()
        a.setCallback(Self.record, Unmanaged.passUnretained(callsA).toOpaque())
        b.setCallback(Self.record, Unmanaged.passUnretained(callsB).toOpaque())
        for _ in 0..<10 {
            let next = Self.layout(&rng, near: current)
            let c = next.map { sevpeb_slot(base_gfn: $0.base, npages: $0.pages) }
            callsA.list = []; callsB.list = []
            #expect(sevpeb_set_layout(h, c, UInt32(c.count)) == 0)
            try Self.applySlotBySlot(b, next)
            #expect(a.slotList == next && b.slotList == next)
            #expect(try Self.bits(a) == Self.bits(b))
            #expect(a.summary().digest == b.summary().digest)
            // Same changes reported, except the slot-by-slot calls' order.
            #expect(callsA.list.sorted { $0.lexicographicallyPrecedes($1) } == callsB.list.sorted { $0.lexicographicallyPrecedes($1) })
            #expect(a.checkInvariants() == nil)
            current = next
            try Self.randomState(a, &rng)
            // The same state into b (the comparison starts from equal trackers).
            for (sl, bm) in zip(a.slotList, try Self.bits(a)) {
                try bm.withUnsafeBufferPointer { p in try b.setBitmap(sl.base, sl.pages, p.baseAddress!, p.count) }
            }
        }
        a.setCallback(nil, nil); b.setCallback(nil, nil)
    }

    /// The keep-shared rule, by hand: two slots merged into one keep their
    /// shared pages; a negative control (the merged slot added fresh) does not.
    @Test func mergedSlotKeepsSharedPages() throws {
        let t = try Tracker.create()
        try t.setLayout([.init(base: 0, pages: 100), .init(base: 100, pages: 100), .init(base: 300, pages: 50)])
        try t.setRange(90, 20, private: false)       // across the two first slots
        try t.setRange(310, 5, private: false)
        try t.setLayout([.init(base: 0, pages: 250), .init(base: 400, pages: 10)])
        #expect(try t.countShared(0, 250) == 20)     // slot 0 kept 90..99, 100..109 kept by the rule
        #expect(try t.countShared(400, 10) == 0)     // 310..314 not covered: gone
        let fresh = try Tracker.create()
        try fresh.addSlot(base: 0, pages: 250)
        #expect(try fresh.countShared(0, 250) == 0)
    }

    @Test func badLayoutsChangeNothing() throws {
        var h: OpaquePointer? = nil
        #expect(sevpeb_tracker_create(0, &h) == 0)
        defer { sevpeb_tracker_destroy(h) }
        let good = [sevpeb_slot(base_gfn: 0, npages: 64), sevpeb_slot(base_gfn: 64, npages: 64)]
        #expect(sevpeb_set_layout(h, good, 2) == 0)
        #expect(sevpeb_set_range(h, 10, 70, 0) == 0)
        var d0: UInt64 = 0
        #expect(sevpeb_digest(h, &d0) == 0)
        let cases: [([sevpeb_slot], Int32)] = [
            ([.init(base_gfn: 0, npages: 0)], EINVAL),
            ([.init(base_gfn: 64, npages: 1), .init(base_gfn: 0, npages: 1)], EINVAL),
            ([.init(base_gfn: 0, npages: 65), .init(base_gfn: 64, npages: 1)], EEXIST),
            ([.init(base_gfn: 1 << 52, npages: 1)], ERANGE),
        ]
        for (c, e) in cases {
            #expect(sevpeb_set_layout(h, c, UInt32(c.count)) == -e)
            var d: UInt64 = 0
            #expect(sevpeb_digest(h, &d) == 0 && d == d0)
        }
        #expect(sevpeb_set_layout(h, nil, 1) == -EINVAL)
        #expect(sevpeb_set_layout(h, nil, UInt32(Tracker.maxSlots) + 1) == -EINVAL)
        #expect(sevpeb_set_layout(nil, good, 2) == -EINVAL)
        #expect(sevpeb_set_layout(h, nil, 0) == 0)
        #expect(sevpeb_slot_count(h) == 0)
    }
}
