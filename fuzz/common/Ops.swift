import CSevPEBShims
import FuzzModelC

/// Operations a fuzzer can apply to a tracker and the reference model at
/// once; each compares return values (errno included) and the state.
enum FuzzOp: CaseIterable {
    case addSlot, removeSlot, resizeSlot, setRange, setBitmap, getBitmap
    case test, countShared, nextRun, reset, mapGPA, digest, control
}

struct OpDriver {
    let t: Tracker
    var m = RefModel()
    var ops = 0
    /// Range the last op changed, compared right after it.
    var touched: (UInt64, UInt64)? = nil

    init(_ t: Tracker) { self.t = t }

    func err(_ body: () throws(SevError) -> Void) -> Int32 {
        do throws(SevError) { try body(); return 0 } catch { return error.code }
    }

    mutating func expect(_ what: @autoclosure () -> String, _ got: Int32, _ want: Int32) {
        if got != want { fuzzFail("op \(ops) \(what()): tracker errno \(got), model \(want)") }
    }

    /// A layout from a small table of interesting shapes (chunk, group and
    /// GFN-limit boundaries, touching slots, holes), for targets that do
    /// not fuzz the layout itself.
    static let layouts: [[(UInt64, UInt64)]] = [
        [(0, 1000)],
        [(0, UInt64(Geometry.chunkPages) + 100)],
        [(0, 5000), (5000, 40000)],
        [(0x100, 300), (0x10_0000, 70000)],
        [(Tracker.gfnLimit - 20000, 20000)],
        [],
        [(10, 64), (74, 1), (75, 16383), (0x4_0000, 33)],
        [(0, Geometry.groupPages + 17)],
    ]

    mutating func applyLayout(_ k: Int) {
        for (b, p) in OpDriver.layouts[k % OpDriver.layouts.count] {
            let r = err { () throws(SevError) in try t.addSlot(base: b, pages: p) }
            expect("layout add", r, m.addSlot(b, p) ?? -1)
        }
    }

    mutating func step(_ op: FuzzOp, _ inp: inout FuzzInput) {
        ops += 1
        // The checks after each op are locked operations, which leave the
        // update gate closed; reopen it on every other op so that updates
        // take both the lock-free path and the locked one.
        if ops & 1 == 0 { t.openUpdateGate() }
        let anchors = m.anchors
        switch op {
        case .addSlot:
            let b = inp.gfn(anchors), p = inp.npages()
            var probe = m
            guard let want = probe.addSlot(b, p) else { return }
            let r = err { () throws(SevError) in try t.addSlot(base: b, pages: p) }
            expect("addSlot(\(hex(b)), \(p))", r, want)
            m = probe
        case .removeSlot:
            let b = inp.bool() && !m.slots.isEmpty ? m.slots[inp.pick(m.slots.count)].base : inp.gfn(anchors)
            let r = err { () throws(SevError) in try t.removeSlot(base: b) }
            expect("removeSlot(\(hex(b)))", r, m.removeSlot(b))
        case .resizeSlot:
            let b = inp.bool() && !m.slots.isEmpty ? m.slots[inp.pick(m.slots.count)].base : inp.gfn(anchors)
            let p = inp.npages()
            var probe = m
            guard let want = probe.resizeSlot(b, p) else { return }
            let r = err { () throws(SevError) in try t.resizeSlot(base: b, pages: p) }
            expect("resizeSlot(\(hex(b)), \(p))", r, want)
            m = probe
        case .setRange:
            let g = inp.gfn(anchors), n = inp.npages(), v = inp.bool()
            if m.checkRange(g, n) == 0 && n > UInt64(m.pageBudget) { return }
            let r = err { () throws(SevError) in try t.setRange(g, n, private: v) }
            expect("setRange(\(hex(g)), \(n), \(v))", r, m.setRange(g, n, v ? 1 : 0))
            touched = (g, n)
        case .setBitmap:
            let g = inp.gfn(anchors), n = inp.npages()
            let mode = inp.u8()
            if m.checkRange(g, n) == 0 && n > UInt64(m.pageBudget) { return }
            let need = RefModel.need(n)
            // Buffers over ~128 KiB only as too-short ones (the -ENOSPC path).
            let len = need > 140_000 ? Int(mode) : (mode & 3 == 0 ? max(0, Int(need) - Int(mode >> 2 & 3)) : Int(need) + Int(mode >> 4))
            let style = mode >> 2 & 3
            var src = [UInt8](repeating: style == 1 ? 0xff : 0, count: len)
            var rng = SplitMix(state: inp.u64())
            if style == 0 || style == 3, len > 0 {
                // Random bytes (style 0) or sparse noise on zero runs (style 3).
                let count = style == 0 ? min(len, 2048) : min(len, 64)
                for _ in 0..<count {
                    let v = rng.next()
                    src[Int(v % UInt64(len))] = UInt8(truncatingIfNeeded: v >> 32)
                }
            }
            let useNil = mode == 0xff
            let r = err { () throws(SevError) in
                if useNil { try t.setBitmap(g, n, nil, 0) } else {
                    try src.withUnsafeBufferPointer { (b) throws(SevError) in
                        // A zero-length buffer still needs a valid pointer.
                        var one: UInt8 = 0
                        if b.count == 0 { try t.setBitmap(g, n, &one, 0) } else { try t.setBitmap(g, n, b.baseAddress!, b.count) }
                    }
                }
            }
            expect("setBitmap(\(hex(g)), \(n), len \(len), nil \(useNil))", r, m.setBitmap(g, n, useNil ? nil : src, len))
            touched = (g, n)
        case .getBitmap:
            let g = inp.gfn(anchors), n = inp.npages()
            let mode = inp.u8()
            if m.checkRange(g, n) == 0 && n > UInt64(m.pageBudget) { return }
            let need = RefModel.need(n)
            let len = need > 140_000 ? Int(mode) : (mode & 3 == 0 ? max(0, Int(need) - Int(mode >> 2 & 3)) : Int(need) + Int(mode >> 4))
            let fillByte = inp.u8()
            var dst = [UInt8](repeating: fillByte, count: len + 1)   // + a guard byte
            let r = err { () throws(SevError) in
                try dst.withUnsafeMutableBufferPointer { (b) throws(SevError) in try t.getBitmap(g, n, b.baseAddress!, len) }
            }
            let (want, wantBuf) = m.getBitmap(g, n, [UInt8](repeating: fillByte, count: len))
            expect("getBitmap(\(hex(g)), \(n), len \(len))", r, want)
            if dst[len] != fillByte { fuzzFail("getBitmap(\(hex(g)), \(n), len \(len)) wrote past dst_len") }
            let k = firstDifference(dst, wantBuf, len)
            if k < len {
                fuzzFail("getBitmap(\(hex(g)), \(n), len \(len)): byte \(k) is \(hex(UInt64(dst[k]))), model \(hex(UInt64(wantBuf[k])))")
            }
        case .test:
            let g = inp.gfn(anchors)
            var r: Int32
            do throws(SevError) { r = try t.test(g) ? 1 : 0 } catch { r = -error.code }
            if r != m.test(g) { fuzzFail("test(\(hex(g))) = \(r), model \(m.test(g))") }
        case .countShared:
            let g = inp.gfn(anchors), n = inp.npages()
            if m.checkRange(g, n) == 0 && n > UInt64(m.pageBudget) { return }
            var r: Int64
            do throws(SevError) { r = Int64(try t.countShared(g, n)) } catch { r = Int64(-error.code) }
            if r != m.countShared(g, n) { fuzzFail("countShared(\(hex(g)), \(n)) = \(r), model \(m.countShared(g, n))") }
        case .nextRun:
            let f = inp.gfn(anchors)
            let r = t.nextSharedRun(from: f)
            let w = m.nextSharedRun(f)
            if r?.gfn != w?.0 || r?.pages != w?.1 {
                fuzzFail("nextSharedRun(\(hex(f))) = \(String(describing: r)), model \(String(describing: w))")
            }
        case .reset:
            t.reset(); m.reset()
        case .mapGPA:
            var gpa = inp.gfn(anchors) &<< 12
            let k = inp.u8()
            if k & 15 == 0 { gpa |= UInt64(inp.u16() & 0xfff) }
            if k & 15 == 1 { gpa = inp.u64() }
            let n = inp.npages()
            var attrs: UInt64
            switch k >> 4 {
            case 0: attrs = inp.u64()
            case 1: attrs = UInt64(inp.u8())
            case 2: attrs = UInt64(1) << UInt64(inp.u8() % 64)
            default: attrs = UInt64(inp.u8() % 3) | (inp.bool() ? 0x10 : 0)
            }
            if m.checkRange(gpa >> 12, n) == 0 && n > UInt64(m.pageBudget) { return }
            let (ret, e) = t.mapGPARangeRet(gpa: gpa, npages: n, attrs: attrs)
            let want = m.mapGPARange(gpa, n, attrs)
            if ret != want { fuzzFail("mapGPARange(\(hex(gpa)), \(n), \(hex(attrs))) = \(ret), model \(want) (\(e?.message ?? ""))") }
            if (ret == 0) != (e == nil) { fuzzFail("mapGPARange: ret \(ret) with error \(e?.message ?? "nil")") }
            touched = (gpa >> 12, n)
        case .digest:
            _ = t.digest()   // exercises the caches; checked against the model at the end
        case .control:
            let v = inp.bool() ? UInt64(inp.u8() & 3) : inp.u64()
            let r = err { () throws(SevError) in try t.setMigrationControl(v) }
            let want: Int32 = v & ~1 != 0 ? EINVAL : 0
            expect("setMigrationControl(\(hex(v)))", r, want)
            if want == 0 { m.control = v }
            if t.migrationControl != m.control { fuzzFail("migration control \(t.migrationControl), model \(m.control)") }
        }
        let (pages, shared) = t.totals()
        if pages != m.totalPages || shared != m.shared {
            fuzzFail("after op \(ops) \(op): totals \(pages)/\(shared), model \(m.totalPages)/\(m.shared)")
        }
        if let (g, n) = touched {
            touched = nil
            if m.checkRange(g, n) == 0 { compareRange(g, min(n, 1 << 18), "after op \(ops) \(op)") }
        }
        if ops % 32 == 0 || m.totalPages <= 4096 { expectEqual(t, m, "after op \(ops) \(op)") }
    }

    /// Compare [g, g+n) (valid) page by page.
    func compareRange(_ g: UInt64, _ n: UInt64, _ what: String) {
        var buf = [UInt8](repeating: 0, count: Int((n + 7) / 8))
        do throws(SevError) {
            try buf.withUnsafeMutableBufferPointer { (b) throws(SevError) in try t.getBitmap(g, n, b.baseAddress!, b.count) }
        } catch { fuzzFail("\(what): getBitmap(\(hex(g)), \(n)): \(error.message)") }
        let (_, want) = m.getBitmap(g, n, [UInt8](repeating: 0, count: buf.count))
        let k = firstDifference(buf, want, buf.count)
        if k < buf.count {
            fuzzFail("\(what): pages \(hex(g + UInt64(k) * 8))..+8 are \(hex(UInt64(buf[k]))), model \(hex(UInt64(want[k])))")
        }
    }

    /// Run ops chosen by `table` (weights) until the input ends or `limit`.
    mutating func run(_ inp: inout FuzzInput, _ table: [FuzzOp], limit: Int = 400) {
        while !inp.isEmpty && ops < limit {
            step(table[inp.pick(table.count)], &inp)
        }
        expectEqual(t, m, "end after \(ops) ops", digest: true)
    }
}

/// Index of the first of bytes [0, n) where a and b differ, or n (in C: an
/// Array == here compiled to a coverage-instrumented byte loop).
func firstDifference(_ a: [UInt8], _ b: [UInt8], _ n: Int) -> Int {
    if n == 0 { return 0 }
    return a.withUnsafeBufferPointer { p in b.withUnsafeBufferPointer { q in fz_diff(p.baseAddress!, q.baseAddress!, n * 8) / 8 } }
}
