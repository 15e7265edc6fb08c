import CSevPEBShims
let fuzzTarget = "bitmap"
// Fuzz target: the seed-dialect bitmap import/export (Tracker.getBitmap of any
// start GFN and buffer length, setBitmap with exact values or nil = private)
// against the model, with range updates and run queries in between.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzBitmap(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var inp = FuzzInput(data, size)
    let t: Tracker
    do throws(SevError) { t = try Tracker.create() } catch { return 0 }
    defer { t.destroy() }
    var d = OpDriver(t)
    d.applyLayout(inp.pick(OpDriver.layouts.count))
    d.run(&inp, [.setBitmap, .setBitmap, .setBitmap, .getBitmap, .getBitmap, .getBitmap,
                 .setRange, .nextRun, .countShared, .digest])
    return 0
}
