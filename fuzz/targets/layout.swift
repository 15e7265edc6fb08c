import CSevPEBShims
let fuzzTarget = "layout"
// Fuzz target: random layout change sequences (add / remove / resize at
// chunk, group and GFN-limit boundaries) mixed with updates, against the model.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLayout(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var inp = FuzzInput(data, size)
    let t: Tracker
    do throws(SevError) { t = try Tracker.create() } catch { return 0 }
    defer { t.destroy() }
    var d = OpDriver(t)
    d.run(&inp, [.addSlot, .addSlot, .addSlot, .removeSlot, .resizeSlot, .resizeSlot, .resizeSlot,
                 .setRange, .setRange, .setBitmap, .reset, .digest, .nextRun, .countShared, .test])
    // Removing every slot must give back all memory.
    for s in t.slotList {
        do throws(SevError) { try t.removeSlot(base: s.base) } catch { fuzzFail("remove \(hex(s.base)): \(error.message)") }
    }
    if let v = t.fuzzInvariantViolation() { fuzzFail("after removing all slots: \(v)") }
    return 0
}
