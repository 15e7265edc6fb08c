import CSevPEBShims
let fuzzTarget = "qemustream"
// Fuzz target: the QEMU migration-stream reader of `sevpeb inspect`
// (Sources/SevPEBInspect/QemuStream.swift) on hostile stream files.
//
// Input: the file's bytes. Checks: nothing traps or hangs; a failure is an
// InspectError with a message; the report renders.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzQemuStream(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let p = QemuStreamParser(Array(UnsafeBufferPointer(start: data, count: size)))
    do throws(InspectError) { try p.parse() } catch {
        if error.description.isEmpty { fuzzFail("an InspectError without a message") }
    }
    _ = p.report.lines(maxRuns: 16)
    return 0
}
