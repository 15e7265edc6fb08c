import CSevPEB
import CSevPEBShims
let fuzzTarget = "kvmexit"
// Fuzz target: the upstream exit handlers of the C header
// (sevpeb_kvm_handle_hypercall, sevpeb_kvm_handle_msr_exit) fed hostile
// struct kvm_run contents: any exit reason, hypercall number and
// arguments, MSR index and data, random bytes anywhere in the struct;
// both handlers see every exit, as a VMM's exit loop may call them.
//
// Checks, against the reference model: a handler returns 1 exactly for its
// own exit (KVM_EXIT_HYPERCALL with nr 12; RDMSR / WRMSR of
// MSR_KVM_MIGRATION_CONTROL), else 0 with the struct untouched byte for
// byte. A handled hypercall writes only hypercall.ret (0, or -KVM_EINVAL
// when the model refuses it) and changes the tracker exactly as the model;
// a handled RDMSR writes only msr.data (the recorded value) and msr.error
// (0); a handled WRMSR writes only msr.error (1, #GP, for reserved bits,
// the value unchanged; else 0 and the value recorded). A NULL run is
// -EINVAL.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzKVMExit(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var inp = FuzzInput(data, size)
    var hp: OpaquePointer? = nil
    guard sevpeb_tracker_create(0, &hp) == 0, let h = hp else { return 0 }
    defer { sevpeb_tracker_destroy(h) }
    // The C handle's own tracker, driven through the C entry points and
    // checked with the model driver.
    var d = OpDriver(UnsafeMutablePointer<Handle>(h).pointee.tracker)
    d.applyLayout(inp.pick(OpDriver.layouts.count))
    let runSize = MemoryLayout<kvm_run>.size
    let run = UnsafeMutablePointer<kvm_run>.allocate(capacity: 1)
    defer { run.deallocate() }
    let raw = UnsafeMutableRawPointer(run)
    func offset(_ p: UnsafeMutableRawPointer) -> Int { p - raw }
    let retAt = offset(UnsafeMutableRawPointer(sevpeb_shim_run_hypercall_ret(run)))
    let dataAt = offset(UnsafeMutableRawPointer(sevpeb_shim_run_msr_data(run)))
    let errorAt = offset(UnsafeMutableRawPointer(sevpeb_shim_run_msr_error(run)))
    var before = [UInt8](repeating: 0, count: runSize)
    /// The struct equals `before` outside the fields `written` (offset, size).
    func untouched(_ what: String, except written: [(Int, Int)]) {
        let now = UnsafeRawBufferPointer(start: raw, count: runSize)
        for i in 0..<runSize where now[i] != before[i] && !written.contains(where: { i >= $0.0 && i < $0.0 + $0.1 }) {
            fuzzFail("\(what): byte \(i) of struct kvm_run changed (\(before[i]) -> \(now[i]))")
        }
    }
    var control: UInt64 = 0
    if sevpeb_kvm_handle_hypercall(h, nil) != -EINVAL || sevpeb_kvm_handle_msr_exit(h, nil) != -EINVAL {
        fuzzFail("a NULL run is not -EINVAL")
    }
    var exits = 0
    while !inp.isEmpty && exits < 64 {
        exits += 1
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: runSize)
        let kind = inp.u8()
        // Random bytes anywhere first (the fields below are then set on top).
        if kind & 0x80 != 0 {
            let at = Int(inp.u16()) % runSize
            for (k, b) in inp.bytes(8).enumerated() where at + k < runSize { raw.storeBytes(of: b, toByteOffset: at + k, as: UInt8.self) }
        }
        var gpa: UInt64 = 0, npages: UInt64 = 0, attrs: UInt64 = 0
        switch kind & 3 {
        case 0:
            sevpeb_shim_run_exit_reason(run).pointee = UpstreamKVM.exitHypercall
            sevpeb_shim_run_hypercall_nr(run).pointee = kind & 4 == 0 ? MapGPARange.nr : inp.u64()
            gpa = inp.gfn(d.m.anchors) << 12
            if kind & 8 != 0 { gpa |= UInt64(inp.u16() & 0xfff) }
            npages = inp.npages()
            attrs = kind & 16 != 0 ? inp.u64() : UInt64(inp.u8() % 3) | (inp.bool() ? 0x10 : 0)
            // A valid range over the model's page budget cannot be checked: skip it.
            if d.m.checkRange(gpa >> 12, npages) == 0 && npages > UInt64(d.m.pageBudget) { continue }
            let a = sevpeb_shim_run_hypercall_args(run)!
            a[0] = gpa; a[1] = npages; a[2] = attrs
            a[3] = inp.u64(); a[4] = inp.u64(); a[5] = inp.u64()
        case 1, 2:
            sevpeb_shim_run_exit_reason(run).pointee = kind & 3 == 1 ? UpstreamKVM.exitRDMSR : UpstreamKVM.exitWRMSR
            sevpeb_shim_run_msr_index(run).pointee = kind & 4 == 0 ? MigrationControl.msr : inp.u32()
            let v: UInt64
            switch (kind >> 3) & 3 {
            case 0: v = 0
            case 1: v = MigrationControl.ready
            case 2: v = UInt64(1) << UInt64(inp.u8() % 64)
            default: v = inp.u64()
            }
            sevpeb_shim_run_msr_data(run).pointee = v
            sevpeb_shim_run_msr_error(run).pointee = inp.u8()
        default:
            sevpeb_shim_run_exit_reason(run).pointee = inp.u32()
        }
        let reason = sevpeb_shim_run_exit_reason(run).pointee
        let isMapGPA = reason == UpstreamKVM.exitHypercall && sevpeb_shim_run_hypercall_nr(run).pointee == MapGPARange.nr
        let isMSR = (reason == UpstreamKVM.exitRDMSR || reason == UpstreamKVM.exitWRMSR)
            && sevpeb_shim_run_msr_index(run).pointee == MigrationControl.msr
        let what = "exit \(exits) (reason \(reason))"

        before.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(start: raw, count: runSize)) }
        if exits & 1 == 0 { d.t.openUpdateGate() }   // the lock-free path too (OpDriver.step)
        let hr = sevpeb_kvm_handle_hypercall(h, run)
        if isMapGPA {
            let a = sevpeb_shim_run_hypercall_args(run)!
            let want = d.m.mapGPARange(a[0], a[1], a[2])
            if hr != 1 { fuzzFail("\(what): MAP_GPA_RANGE not handled (\(hr))") }
            let got = Int64(bitPattern: sevpeb_shim_run_hypercall_ret(run).pointee)
            if got != want { fuzzFail("\(what): MAP_GPA_RANGE(\(hex(a[0])), \(a[1]), \(hex(a[2]))) ret \(got), model \(want)") }
            untouched(what, except: [(retAt, 8)])
            if d.m.checkRange(a[0] >> 12, a[1]) == 0 { d.compareRange(a[0] >> 12, min(a[1], 1 << 18), what) }
        } else {
            if hr != 0 { fuzzFail("\(what): hypercall handler claimed a foreign exit (\(hr))") }
            untouched(what + " (hypercall handler)", except: [])
        }

        before.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(start: raw, count: runSize)) }
        let mr = sevpeb_kvm_handle_msr_exit(h, run)
        if isMSR {
            if mr != 1 { fuzzFail("\(what): MIGRATION_CONTROL exit not handled (\(mr))") }
            let err = sevpeb_shim_run_msr_error(run).pointee
            if reason == UpstreamKVM.exitRDMSR {
                if sevpeb_shim_run_msr_data(run).pointee != control || err != 0 {
                    fuzzFail("\(what): RDMSR data \(hex(sevpeb_shim_run_msr_data(run).pointee)) error \(err), model \(hex(control)) 0")
                }
                untouched(what, except: [(dataAt, 8), (errorAt, 1)])
            } else {
                let v = sevpeb_shim_run_msr_data(run).pointee
                let ok = v & ~MigrationControl.ready == 0
                if err != (ok ? 0 : 1) { fuzzFail("\(what): WRMSR \(hex(v)) error \(err), expected \(ok ? 0 : 1)") }
                if ok { control = v }
                untouched(what, except: [(errorAt, 1)])
            }
            if d.t.migrationControl != control { fuzzFail("\(what): control \(hex(d.t.migrationControl)), model \(hex(control))") }
        } else {
            if mr != 0 { fuzzFail("\(what): MSR handler claimed a foreign exit (\(mr))") }
            untouched(what + " (MSR handler)", except: [])
        }
    }
    expectEqual(d.t, d.m, "end after \(exits) exits", digest: true)
    return 0
}
