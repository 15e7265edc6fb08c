import CSevPEBShims
let fuzzTarget = "hypercall"
// Fuzz target: KVM_HC_MAP_GPA_RANGE(gpa, npages, attrs) from a hostile guest
// against a fixed layout, compared with the reference model after each call.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHypercall(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var inp = FuzzInput(data, size)
    let t: Tracker
    do throws(SevError) { t = try Tracker.create() } catch { return 0 }
    defer { t.destroy() }
    var d = OpDriver(t)
    d.applyLayout(inp.pick(OpDriver.layouts.count))
    d.run(&inp, [.mapGPA, .mapGPA, .mapGPA, .mapGPA, .mapGPA, .mapGPA, .test, .countShared, .nextRun, .digest, .reset])
    return 0
}
