import CSevPEBShims
let fuzzTarget = "roundtrip"
// Fuzz target: a live migration driven by the input. Random updates, layout
// changes (mirrored on the destination, as a VMM's own memory map would be)
// and control writes interleave with save_iterate (fuzzed byte budgets); a
// destination decodes every payload as it is produced. At the end
// complete's payload must commit, and source, destination and model agree
// (decode(encode(state)) == state, digest included). One flag corrupts a
// byte of one payload instead: then the load must fail and leave the
// destination as it was just before that payload.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRoundtrip(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var inp = FuzzInput(data, size)
    guard let src = try? Tracker.create() else { return 0 }
    defer { src.destroy() }
    guard let dst = try? Tracker.create() else { return 0 }
    defer { dst.destroy() }
    var ss: SaveSession
    do throws(SevError) { ss = try SaveSession.create() } catch { return 0 }
    var ls: LoadSession
    do throws(SevError) { ls = try LoadSession.create() } catch { return 0 }
    var d = OpDriver(src)
    d.m.pageBudget = 2 << 20
    let flags = inp.u8()
    d.applyLayout(inp.pick(OpDriver.layouts.count))
    // A few updates before the migration starts.
    let table: [FuzzOp] = [.setRange, .setRange, .setRange, .setBitmap, .setBitmap, .mapGPA, .mapGPA,
                           .reset, .control, .addSlot, .removeSlot, .resizeSlot, .digest]
    for _ in 0..<Int(inp.u8() % 16) where !inp.isEmpty { d.step(table[inp.pick(table.count)], &inp) }
    func syncLayout() {
        do throws(SevError) { try dst.applyLayout(src.slotList) } catch { fuzzFail("dst layout: \(error.message)") }
    }
    syncLayout()
    // The destination has a stale state of its own before the migration.
    if flags & 2 != 0, let s = dst.slotList.first { _ = try? dst.setRange(s.base, (s.pages + 1) / 2, private: false) }
    var corruptAt = flags & 1 != 0 ? Int(inp.u8() % 6) : -1
    let corruptByte = Int(inp.u16())
    let corruptXor = inp.u8() | 1
    ls.setup()
    var failed = false
    func deliver(_ bytes: [UInt8], final: Bool) {
        if failed { return }
        var b = bytes
        var corrupted = false
        // The live destination only changes at a commit (or by its own
        // layout changes, mirrored above): a failed load must leave it as now.
        var dstBefore: RefModel? = nil
        if corruptAt == 0 {
            dstBefore = snapshotModel(dst)
            b[corruptByte % b.count] ^= corruptXor
            corrupted = true
        }
        corruptAt -= 1
        var s = ArraySource(b)
        do throws(SevError) {
            let c = try ls.load(dst, &s, version: 1)
            if s.offset != b.count { fuzzFail("payload of \(b.count) bytes: decoder stopped at \(s.offset)") }
            if c != final { fuzzFail("load returned committed=\(c) for a \(final ? "final" : "part") payload (corrupted \(corrupted))") }
        } catch {
            if !corrupted { fuzzFail("load of an intact payload failed: \(error.message)") }
            failed = true
            expectEqual(dst, dstBefore!, "destination after a corrupted payload")
        }
    }
    var sink = FuzzSink()
    do throws(SevError) { try ss.setup(src, &sink) } catch { fuzzFail("setup: \(error.message)") }
    deliver(sink.bytes, final: false)
    var steps = 0
    while !inp.isEmpty && steps < 200 {
        steps += 1
        let k = inp.u8()
        if k < 40 {
            sink.bytes = []
            let budget = k & 1 == 0 ? 0 : UInt64(inp.u16())
            do throws(SevError) { _ = try ss.iterate(src, &sink, budget: budget) } catch { fuzzFail("iterate: \(error.message)") }
            deliver(sink.bytes, final: false)
        } else {
            let before = src.slotList
            d.step(table[Int(k) % table.count], &inp)
            if src.slotList != before { syncLayout() }
        }
    }
    sink.bytes = []
    do throws(SevError) { try ss.complete(src, &sink) } catch { fuzzFail("complete: \(error.message)") }
    ss.cleanup()
    deliver(sink.bytes, final: true)
    expectEqual(src, d.m, "source after migration", digest: true)
    if failed { return 0 }
    expectEqual(dst, d.m, "destination after migration", digest: true)
    if dst.migrationControl != d.m.control { fuzzFail("control \(dst.migrationControl) arrived, source has \(d.m.control)") }
    return 0
}
