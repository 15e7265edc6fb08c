import CSevPEBShims
import FuzzModelC

/// The naive reference model of the tracker: a flat bitmap per slot, one
/// bit per page, LSB first (1 = private, 0 = shared; bits past the slot's
/// end are 0), every rule of include/sevpeb.h written out the obvious way,
/// including the errno each call must return. No chunks, no uniform
/// encoding, no caches: what the tracker keeps cleverly, the model keeps
/// flat. The fuzzers compare the real tracker with it after every op.
struct RefModel {
    struct Slot: Equatable {
        var base: UInt64
        var pages: Int
        var bits: [UInt8]
        init(base: UInt64, pages: Int, value: UInt8) {
            self.base = base
            self.pages = pages
            bits = [UInt8](repeating: value != 0 ? 0xff : 0, count: (pages + 7) / 8)
            if value != 0 && pages % 8 != 0 { bits[bits.count - 1] = UInt8(1 << (pages % 8) - 1) }
        }
        /// Slot s's bits, packed as the tracker's getBitmap writes them.
        init(base: UInt64, pages: Int, packed: UnsafeBufferPointer<UInt8>) {
            self.init(base: base, pages: pages, value: 0)
            bits.withUnsafeMutableBufferPointer { fz_copy($0.baseAddress!, 0, packed.baseAddress!, 0, pages) }
        }
        func bit(_ k: Int) -> UInt8 { (bits[k >> 3] >> UInt8(k & 7)) & 1 }
        func count(_ off: Int, _ n: Int, _ v: UInt8) -> Int {
            bits.withUnsafeBufferPointer { fz_count($0.baseAddress!, off, n, Int32(v)) }
        }
        mutating func fill(_ off: Int, _ n: Int, _ v: UInt8) -> Int {
            bits.withUnsafeMutableBufferPointer { fz_fill($0.baseAddress!, off, n, Int32(v)) }
        }
        /// First page at or after `from` whose bit is v, or `pages`.
        func find(_ from: Int, _ v: UInt8) -> Int {
            bits.withUnsafeBufferPointer { fz_find($0.baseAddress!, from, pages, Int32(v)) }
        }
    }
    var slots: [Slot] = []
    var shared: UInt64 = 0
    var control: UInt64 = 0
    /// Total pages the model is willing to hold (memory of the fuzz process).
    var pageBudget = 3 << 20

    var totalPages: UInt64 { slots.reduce(0) { $0 + UInt64($1.pages) } }
    var slotList: [Tracker.Slot] { slots.map { Tracker.Slot(base: $0.base, pages: UInt64($0.pages)) } }
    var anchors: [UInt64] {
        var a: [UInt64] = []
        for s in slots { a.append(s.base); a.append(end(s)) }
        return a
    }

    func end(_ s: Slot) -> UInt64 { s.base + UInt64(s.pages) }

    func slotIndex(_ gfn: UInt64) -> Int? {
        for (i, s) in slots.enumerated() where gfn >= s.base && gfn < end(s) { return i }
        return nil
    }

    /// 0 or the errno of a range check ([gfn, gfn+n) in touching slots).
    func checkRange(_ gfn: UInt64, _ n: UInt64) -> Int32 {
        if n == 0 { return EINVAL }
        let (e, o) = gfn.addingReportingOverflow(n)
        if o { return ERANGE }
        guard var i = slotIndex(gfn) else { return ERANGE }
        while end(slots[i]) < e {
            if i + 1 >= slots.count || slots[i + 1].base != end(slots[i]) { return ERANGE }
            i += 1
        }
        return 0
    }

    func get(_ gfn: UInt64) -> UInt8 {
        let i = slotIndex(gfn)!
        return slots[i].bit(Int(gfn - slots[i].base))
    }

    /// Visit [gfn, gfn+n) (valid) as (slot, offset in slot, count, offset from gfn).
    func segments(_ gfn: UInt64, _ n: UInt64, _ body: (Int, Int, Int, Int) -> Void) {
        var g = gfn
        let e = gfn + n
        while g < e {
            let i = slotIndex(g)!
            let se = min(e, end(slots[i]))
            body(i, Int(g - slots[i].base), Int(se - g), Int(g - gfn))
            g = se
        }
    }

    mutating func setRange(_ gfn: UInt64, _ n: UInt64, _ v: UInt8) -> Int32 {
        let r = checkRange(gfn, n)
        if r != 0 { return r }
        var segs: [(Int, Int, Int)] = []
        segments(gfn, n) { i, off, cnt, _ in segs.append((i, off, cnt)) }
        for (i, off, cnt) in segs {
            let flipped = slots[i].fill(off, cnt, v)
            if v == 0 { shared += UInt64(flipped) } else { shared -= UInt64(flipped) }
        }
        return 0
    }

    static func need(_ n: UInt64) -> UInt64 { n / 8 + (n % 8 != 0 ? 1 : 0) }

    mutating func setBitmap(_ gfn: UInt64, _ n: UInt64, _ src: [UInt8]?, _ srcLen: Int) -> Int32 {
        guard let src else { return setRange(gfn, n, 1) }
        if n == 0 { return EINVAL }
        if UInt64(srcLen) < RefModel.need(n) { return ENOSPC }
        let r = checkRange(gfn, n)
        if r != 0 { return r }
        var segs: [(Int, Int, Int, Int)] = []
        segments(gfn, n) { i, off, cnt, o in segs.append((i, off, cnt, o)) }
        for (i, off, cnt, o) in segs {
            let before = UInt64(slots[i].count(off, cnt, 0))
            src.withUnsafeBufferPointer { s in
                slots[i].bits.withUnsafeMutableBufferPointer { b in fz_copy(b.baseAddress!, off, s.baseAddress!, o, cnt) }
            }
            shared = shared - before + UInt64(slots[i].count(off, cnt, 0))
        }
        return 0
    }

    /// (errno, the buffer after the call). dst starts as `dst`.
    func getBitmap(_ gfn: UInt64, _ n: UInt64, _ dst: [UInt8]) -> (Int32, [UInt8]) {
        if n == 0 { return (EINVAL, dst) }
        if UInt64(dst.count) < RefModel.need(n) { return (ENOSPC, dst) }
        let r = checkRange(gfn, n)
        if r != 0 { return (r, dst) }
        var out = dst
        segments(gfn, n) { i, off, cnt, o in
            slots[i].bits.withUnsafeBufferPointer { p in
                out.withUnsafeMutableBufferPointer { d in fz_copy(d.baseAddress!, o, p.baseAddress!, off, cnt) }
            }
        }
        return (0, out)
    }

    func test(_ gfn: UInt64) -> Int32 {
        guard slotIndex(gfn) != nil else { return -ERANGE }
        return Int32(get(gfn))
    }

    func countShared(_ gfn: UInt64, _ n: UInt64) -> Int64 {
        let r = checkRange(gfn, n)
        if r != 0 { return Int64(-r) }
        var c: Int64 = 0
        segments(gfn, n) { i, off, cnt, _ in c += Int64(slots[i].count(off, cnt, 0)) }
        return c
    }

    /// First maximal shared run ending after `from`, clipped to start at
    /// `from` or later; runs continue across touching slots.
    func nextSharedRun(_ from: UInt64) -> (UInt64, UInt64)? {
        var start: UInt64? = nil
        var prevEnd: UInt64? = nil
        for s in slots {
            if end(s) <= from { continue }
            if let st = start {
                // A run is open: does it continue into this slot?
                if prevEnd != s.base { return (st, prevEnd! - st) }
                let k = s.find(0, 1)
                if k < s.pages { return (st, s.base + UInt64(k) - st) }
                prevEnd = end(s)
                continue
            }
            var k = s.find(from > s.base ? Int(from - s.base) : 0, 0)
            if k == s.pages { prevEnd = end(s); continue }
            let st = s.base + UInt64(k)
            k = s.find(k, 1)
            if k < s.pages { return (st, s.base + UInt64(k) - st) }
            start = st
            prevEnd = end(s)
        }
        if let st = start { return (st, prevEnd! - st) }
        return nil
    }

    mutating func reset() {
        for i in slots.indices { _ = slots[i].fill(0, slots[i].pages, 1) }
        shared = 0
    }

    /// Returns the errno, or nil when the model refuses to hold that many
    /// pages (the caller skips the op).
    mutating func addSlot(_ base: UInt64, _ pages: UInt64) -> Int32? {
        if pages == 0 { return EINVAL }
        let (e, o) = base.addingReportingOverflow(pages)
        if o || e > Tracker.gfnLimit { return ERANGE }
        for s in slots where base < end(s) && s.base < e { return EEXIST }
        if slots.count >= Tracker.maxSlots { return ENOSPC }
        if totalPages + pages > UInt64(pageBudget) { return nil }
        slots.append(Slot(base: base, pages: Int(pages), value: 1))
        slots.sort { $0.base < $1.base }
        return 0
    }

    mutating func removeSlot(_ base: UInt64) -> Int32 {
        guard let i = slots.firstIndex(where: { $0.base == base }) else { return ENOENT }
        shared -= UInt64(slots[i].count(0, slots[i].pages, 0))
        slots.remove(at: i)
        return 0
    }

    mutating func resizeSlot(_ base: UInt64, _ pages: UInt64) -> Int32? {
        if pages == 0 { return EINVAL }
        let (e, o) = base.addingReportingOverflow(pages)
        if o || e > Tracker.gfnLimit { return ERANGE }
        guard let i = slots.firstIndex(where: { $0.base == base }) else { return ENOENT }
        let old = slots[i].pages, new = Int(pages)
        if new == old { return 0 }
        if i + 1 < slots.count && e > slots[i + 1].base { return EEXIST }
        if new > old {
            if totalPages + UInt64(new - old) > UInt64(pageBudget) { return nil }
            // grown pages are private; the bits past the old end were 0
            slots[i].bits += [UInt8](repeating: 0, count: (new + 7) / 8 - slots[i].bits.count)
            slots[i].pages = new
            _ = slots[i].fill(old, new - old, 1)
        } else {
            shared -= UInt64(slots[i].count(new, old - new, 0))
            _ = slots[i].fill(new, old - new, 0)     // keep the bits past the end 0
            slots[i].bits.removeLast(slots[i].bits.count - (new + 7) / 8)
            slots[i].pages = new
        }
        return 0
    }

    /// KVM_HC_MAP_GPA_RANGE: the hypercall return value.
    mutating func mapGPARange(_ gpa: UInt64, _ npages: UInt64, _ attrs: UInt64) -> Int64 {
        if gpa & 0xfff != 0 || npages == 0 { return -22 }
        if attrs & ~0x1f != 0 || attrs & 0xf > 2 { return -22 }
        let r = setRange(gpa >> 12, npages, attrs & 0x10 != 0 ? 1 : 0)
        return r == 0 ? 0 : -22
    }

    // MARK: digest, computed from scratch (docs/FORMAT.md "Digest")

    func chunkHash(_ s: Slot, _ c: Int) -> UInt64 {
        let start = c * Geometry.chunkPages
        let len = min(Geometry.chunkPages, s.pages - start)
        // The chunk's words as little-endian bytes are exactly its packed
        // bits (a chunk starts on a byte boundary; bits past the end are 0).
        var packed = [UInt8](repeating: 0, count: (len + 63) / 64 * 8)
        s.bits.withUnsafeBufferPointer { p in
            packed.withUnsafeMutableBufferPointer { d in fz_copy(d.baseAddress!, 0, p.baseAddress!, start, len) }
        }
        return packed.withUnsafeBytes { XXH3.hash(bytes: $0.baseAddress!, count: $0.count) }
    }

    func digest() -> UInt64 {
        var x = XXH3()
        for s in slots {
            x.add(s.base)
            x.add(UInt64(s.pages))
            let nch = (s.pages + Geometry.chunkPages - 1) / Geometry.chunkPages
            var g = 0
            while g * 64 < nch {
                var gx = XXH3()
                for c in (g * 64)..<min(nch, g * 64 + 64) { gx.add(chunkHash(s, c)) }
                x.add(gx.finish())
                g += 1
            }
        }
        return x.finish()
    }
}
