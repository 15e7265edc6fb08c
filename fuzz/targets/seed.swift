import CSevPEB
import CSevPEBShims
import KvmModelC
let fuzzTarget = "seed"
// Fuzz target: the seed-dialect helpers of the C header
// (sevpeb_kvm_kernel_get_bitmap / _set_bitmap, sync_from_kernel,
// push_to_kernel, reset_kernel) against the v6 and v8 kernel models of
// Tests/c/kvm_interposer.c (linked in; it answers ioctl() on model fds).
//
// Input: byte 0 picks v6 or v8 and one of two layouts, then operations:
// guest hypercalls into the model kernel, GET / SET of any range and
// buffer length, sync, push, reset, tracker updates.
//
// Checks: nothing traps; every error is a negative errno; a GET that
// succeeds equals the model bit for bit (pages beyond the kernel's bitmap
// read 1) and writes nothing past ceil(npages/8); a SET that succeeds makes
// the model equal the source bits; after a sync the tracker equals the model
// on every page of the layout; after a push the model equals the tracker.
let seedLayouts: [[(UInt64, UInt64)]] = [
    [(0, 300), (300, 1000), (2061, 5000)],
    [(16, 17000), (20000, 64)],
]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSeed(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var inp = FuzzInput(data, size)
    let sel = inp.u8()
    let version: Int32 = sel & 1 == 0 ? 6 : 8
    let layout = seedLayouts[Int(sel >> 1) % seedLayouts.count]
    let end = layout.map { $0.0 + $0.1 }.max()!
    let fd = kvmodel_open(version)
    if fd < 0 { fuzzFail("model open: \(fd)") }
    defer { _ = kvmodel_close(fd) }
    var tp: OpaquePointer? = nil
    guard sevpeb_tracker_create(0, &tp) == 0, let t = tp else { return 0 }
    defer { sevpeb_tracker_destroy(t) }
    for (i, (b, p)) in layout.enumerated() {
        _ = kvmodel_memslot(fd, UInt32(i), b, p)
        if sevpeb_slot_add(t, b, p) != 0 { fuzzFail("slot add") }
    }
    let dialect = version == 6 ? UInt32(SEVPEB_KVM_SEED_V6) : UInt32(SEVPEB_KVM_SEED_V7_V9)
    if sevpeb_kvm_bind(t, fd, dialect) != 0 { fuzzFail("bind v\(version)") }
    var buf = [UInt8](repeating: 0, count: 2100)
    func errnoOK(_ r: Int32, _ what: String) {
        if r > 0 || r < -4095 { fuzzFail("\(what): \(r) is not 0 or a negative errno") }
    }
    var slotBits = [UInt8](repeating: 0, count: Int((17000 + 7) / 8))
    func trackerEqualsModel(_ what: String) {
        for (b, p) in layout {
            if sevpeb_get_bitmap(t, b, p, &slotBits, slotBits.count) != 0 { fuzzFail("get_bitmap of slot \(hex(b))") }
            let k = kvmodel_diff(fd, b, p, slotBits)
            if k >= 0 { fuzzFail("\(what) v\(version): gfn \(hex(b + UInt64(k))) tracker != kernel") }
        }
    }
    var ops = 0
    while !inp.isEmpty && ops < 48 {
        ops += 1
        let op = inp.u8() % 7
        let gfn = UInt64(inp.u16()) % (end + 200)
        let n = UInt64(inp.u16()) % 16_000
        switch op {
        case 0:
            _ = kvmodel_hypercall(fd, gfn << 12, n, UInt64(inp.u8() & 1))
        case 1, 2:
            let len = min(Int(inp.u16()) % 2101, buf.count)
            let fill = inp.u8()
            for i in 0..<buf.count { buf[i] = fill &+ UInt8(truncatingIfNeeded: i &* 7) }
            if op == 1 {
                let before = buf
                let r = sevpeb_kvm_kernel_get_bitmap(t, gfn, n, &buf, len)
                errnoOK(r, "get")
                if r == 0 {
                    let k = kvmodel_diff(fd, gfn, n, buf)
                    if k >= 0 { fuzzFail("get v\(version) [\(gfn), +\(n)): bit \(k) differs from the kernel") }
                    let used = Int((n + 7) / 8)
                    if n & 7 != 0 && (buf[used - 1] ^ before[used - 1]) >> (n & 7) != 0 { fuzzFail("get: bits above npages changed") }
                    if buf[used...] != before[used...] { fuzzFail("get: wrote past ceil(npages/8)") }
                } else if buf != before { fuzzFail("get failed (\(r)) but wrote the buffer") }
            } else {
                let nullSrc = inp.u8() & 15 == 0
                let r = nullSrc ? sevpeb_kvm_kernel_set_bitmap(t, gfn, n, nil, 0)
                                : sevpeb_kvm_kernel_set_bitmap(t, gfn, n, buf, len)
                errnoOK(r, "set")
                if r == 0 {
                    let k = nullSrc ? kvmodel_diff(fd, gfn, n, nil) : kvmodel_diff(fd, gfn, n, buf)
                    if k >= 0 { fuzzFail("set v\(version) [\(gfn), +\(n)): bit \(k) not applied") }
                }
            }
        case 3:
            let r = sevpeb_kvm_sync_from_kernel(t)
            if r < 0 { errnoOK(r, "sync") } else { trackerEqualsModel("after sync") }
        case 4:
            let r = sevpeb_kvm_push_to_kernel(t)
            errnoOK(r, "push")
            if r == 0 { trackerEqualsModel("after push") }
        case 5:
            errnoOK(sevpeb_kvm_reset_kernel(t), "reset")
        default:
            if n > 0 { errnoOK(sevpeb_set_range(t, gfn, n, Int32(inp.u8() & 1)), "set_range") }
        }
    }
    return 0
}
