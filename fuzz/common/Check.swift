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

/// The whole state of a tracker as a model (layout and bits).
func snapshotModel(_ t: Tracker) -> RefModel {
    var m = RefModel()
    for s in t.slotList {
        let slot = withPackedBits(t, s.base, s.pages, "snapshot") { RefModel.Slot(base: s.base, pages: Int(s.pages), packed: $0) }
        m.slots.append(slot)
        m.shared += UInt64(slot.count(0, slot.pages, 0))
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
        // The tracker's packed bits against the model's, in C.
        let (k, got) = withPackedBits(t, s.base, UInt64(s.pages), what) { b -> (Int, UInt8) in
            let k = s.bits.withUnsafeBufferPointer { m in fz_diff(b.baseAddress!, m.baseAddress!, s.pages) }
            return (k, k < s.pages ? (b[k / 8] >> UInt8(k % 8)) & 1 : 0)
        }
        if k != s.pages { fuzzFail("\(what): page \(hex(s.base + UInt64(k))) is \(got), model \(s.bit(k))") }
    }
    let (pages, shared) = t.totals()
    if pages != m.totalPages || shared != m.shared { fuzzFail("\(what): totals \(pages)/\(shared), model \(m.totalPages)/\(m.shared)") }
    if digest && t.digest() != m.digest() { fuzzFail("\(what): digest \(hex(t.digest())) != model digest \(hex(m.digest()))") }
}

/// One scratch buffer for packed slot bits, grown as needed and reused:
/// fresh allocations of up to 128 KiB per check went through ASan's mmap
/// path and cost page faults on every input.
nonisolated(unsafe) var fuzzScratch = [UInt8](repeating: 0, count: 1 << 17)

/// The tracker's bits of [base, base+pages) (valid), packed LSB first, in
/// fuzzScratch (valid during body only).
func withPackedBits<R>(_ t: Tracker, _ base: UInt64, _ pages: UInt64, _ what: String,
                       _ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
    let len = Int((pages + 7) / 8)
    if fuzzScratch.count < max(len, 1) { fuzzScratch = [UInt8](repeating: 0, count: max(len, 1)) }
    return fuzzScratch.withUnsafeMutableBufferPointer { b -> R in
        // getBitmap keeps the bits above `pages` of the last byte (the
        // seed dialect's contract): clear what an earlier call left there
        if len > 0 { b[len - 1] = 0 }
        do throws(SevError) { try t.getBitmap(base, pages, b.baseAddress!, len) } catch {
            fuzzFail("\(what): getBitmap of \(hex(base)) + \(pages): \(error.message)")
        }
        return body(UnsafeBufferPointer(start: b.baseAddress!, count: len))
    }
}

/// A tracker's state: layout, control value, digest and, per slot, an XXH3
/// of its packed bits (so that a stale cached digest cannot hide a change):
/// cheap to take and compare. (Copies of the bitmaps, compared byte by byte
/// with a coverage callback per byte, were half of the decode target's time.)
struct RawState: Equatable {
    var slots: [Tracker.Slot]
    var bits: [UInt64]
    var control: UInt64
    var digest: UInt64

    init(_ t: Tracker) {
        slots = t.slotList
        bits = []
        for s in slots {
            bits.append(withPackedBits(t, s.base, s.pages, "state") { b in XXH3.hash(bytes: UnsafeRawPointer(b.baseAddress!), count: b.count) })
        }
        control = t.migrationControl
        digest = t.digest()
    }
}
