import CSevPEBShims
import FuzzModelC

/// The tracker's own invariant check (Tracker+Invariants.swift: storage,
/// accounting, dirty count, cached chunk hashes), plus the cached group
/// hashes, which it does not check. Returns the first violation, or nil.
extension Tracker {
    func fuzzInvariantViolation() -> String? {
        if let v = checkInvariants() { return v }
        return locked { e -> String? in
            for s in 0..<e.slotCount {
                let sl = e.slots[s]
                let nch = Geometry.chunks(sl.pages)
                for gi in 0..<sl.groupCount {
                    let g = sl.groups + gi
                    guard g.pointee.hashValid else { continue }
                    let first = UInt64(gi) << 6
                    var x = XXH3()
                    var c = first
                    while c < min(nch, first + 64) {
                        let bit = c & 63
                        let len = Geometry.chunkLen(c, sl.pages)
                        if let u = e.uniformValue(g, bit) {
                            // full chunks: the library's constants (rehashing 2 KiB per
                            // uniform chunk was a third of the decode target's time)
                            x.add(len == Geometry.chunkPages ? (u ? Tracker.privateChunkHash : Tracker.sharedChunkHash)
                                                              : Tracker.uniformHash(len: len, value: u))
                        } else {
                            x.add(XXH3.hash(words: e.block(g, bit), count: (len + 63) >> 6))
                        }
                        c += 1
                    }
                    if x.finish() != g.pointee.hash { return "slot \(s) group \(gi): stale cached group hash" }
                }
            }
            return nil
        }
    }
}

/// Bits of [gfn, gfn+n) from the tracker, as one byte per page.
func trackerPages(_ t: Tracker, _ base: UInt64, _ n: Int) -> [UInt8] {
    var buf = [UInt8](repeating: 0, count: (n + 7) / 8)
    do throws(SevError) {
        try buf.withUnsafeMutableBufferPointer { (b) throws(SevError) in try t.getBitmap(base, UInt64(n), b.baseAddress!, b.count) }
    } catch { fuzzFail("getBitmap of slot \(hex(base)) + \(n): \(error.message)") }
    var out = [UInt8](repeating: 0, count: n)
    buf.withUnsafeBufferPointer { b in out.withUnsafeMutableBufferPointer { o in _ = fz_get_bits(b.baseAddress!, 0, o.baseAddress!, n) } }
    return out
}

/// The whole state of a tracker as a model (layout and bits).
func snapshotModel(_ t: Tracker) -> RefModel {
    var m = RefModel()
    for s in t.slotList {
        let bits = trackerPages(t, s.base, Int(s.pages))
        m.slots.append(RefModel.Slot(base: s.base, bits: bits))
        m.shared += UInt64(bits.withUnsafeBufferPointer { fz_count($0.baseAddress!, $0.count, 0) })
    }
    m.control = t.migrationControl
    return m
}

/// Full comparison: layout, every page, totals, invariants, and (if asked)
/// the digest against one computed from scratch over the model.
func expectEqual(_ t: Tracker, _ m: RefModel, _ what: String, digest: Bool = false) {
    if let v = t.fuzzInvariantViolation() { fuzzFail("\(what): invariant: \(v)") }
    if t.slotList != m.slotList { fuzzFail("\(what): layout \(t.slotList) != model \(m.slotList)") }
    for s in m.slots {
        let got = trackerPages(t, s.base, s.bits.count)
        if memcmp(got, s.bits, got.count) != 0 {
            let k = zip(got, s.bits).enumerated().first { $0.element.0 != $0.element.1 }!.offset
            fuzzFail("\(what): page \(hex(s.base + UInt64(k))) is \(got[k]), model \(s.bits[k])")
        }
    }
    let (pages, shared) = t.totals()
    if pages != m.totalPages || shared != m.shared { fuzzFail("\(what): totals \(pages)/\(shared), model \(m.totalPages)/\(m.shared)") }
    if digest && t.digest() != m.digest() { fuzzFail("\(what): digest \(hex(t.digest())) != model digest \(hex(m.digest()))") }
}

/// A tracker's state as raw bitmaps (one LSB-first byte string per slot),
/// layout, control value and digest: cheap to take and compare.
struct RawState: Equatable {
    var slots: [Tracker.Slot]
    var bits: [[UInt8]]
    var control: UInt64
    var digest: UInt64

    init(_ t: Tracker) {
        slots = t.slotList
        bits = []
        for s in slots {
            var buf = [UInt8](repeating: 0, count: Int((s.pages + 7) / 8))
            do throws(SevError) {
                try buf.withUnsafeMutableBufferPointer { (b) throws(SevError) in try t.getBitmap(s.base, s.pages, b.baseAddress!, b.count) }
            } catch { fuzzFail("getBitmap of slot \(hex(s.base)): \(error.message)") }
            bits.append(buf)
        }
        control = t.migrationControl
        digest = t.digest()
    }

    /// memcmp per slot: the synthesized `==` compared byte by byte with a
    /// coverage callback per byte (a quarter of the decode target's time).
    static func == (a: RawState, b: RawState) -> Bool {
        if a.slots != b.slots || a.control != b.control || a.digest != b.digest || a.bits.count != b.bits.count {
            return false
        }
        for i in 0..<a.bits.count where a.bits[i].count != b.bits[i].count || memcmp(a.bits[i], b.bits[i], a.bits[i].count) != 0 {
            return false
        }
        return true
    }
}
