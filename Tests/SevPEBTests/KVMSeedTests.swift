import CSevPEB
import CSevPEBShims
import Glibc
import Testing
@testable import SevPEB
import SevPEBTestSupport

/// Unit tests of the seed-dialect plumbing that needs no kernel: the layout
/// stretches and the opt-in rules. (The bits at any offset go through the
/// tracker's own setBitmap / getBitmap, tested in TrackerTests.) The dialects themselves run against the
/// v6 / v8 kernel models through the real ioctl entry point in
/// Tests/c/kvm_test.c.
@Suite struct KVMSeedTests {
    @Test func stretchesJoinTouchingSlots() throws {
        let t = try Tracker.create()
        #expect(try t.stretches().count == 0 && t.layoutEnd == 0)
        try t.setLayout([.init(base: 0, pages: 10), .init(base: 10, pages: 5), .init(base: 20, pages: 1)])
        let s = try t.stretches()
        #expect((0..<s.count).map { [s[$0].0, s[$0].1] } == [[0, 15], [20, 21]])
        #expect(t.layoutEnd == 21)
        try t.setLayout([.init(base: 0, pages: 10), .init(base: 100, pages: 5)])
        #expect(t.layoutEnd == 105)
    }

    /// The seed numbers go out only on a VM bound with that dialect: on a
    /// pipe (no KVM at all) the seed calls reach the kernel as ioctls and
    /// come back ENOTTY; bound upstream they are refused before any ioctl.
    @Test func seedCallsNeedTheExplicitDialect() throws {
        var p: [Int32] = [0, 0]
        #expect(pipe(&p) == 0)
        defer { close(p[0]); close(p[1]) }
        let tr = try Tracker.create()
        try tr.addSlot(base: 0, pages: 128)
        func sev(_ body: () throws(SevError) -> Void) -> Int32 {
            do throws(SevError) { try body(); return 0 } catch { return error.code }
        }
        let b = try KVMBinding.create()
        var buf = [UInt8](repeating: 0, count: 16)
        #expect(sev { () throws(SevError) in try b.kernelGetBitmap(0, 64, &buf, 16) } == EBADF)   // not bound
        try b.bind(fd: VMFD(rawValue: p[0]), dialect: .seedV6)                                     // no ioctl: no probe
        #expect(sev { () throws(SevError) in try b.kernelGetBitmap(0, 64, &buf, 16) } == ENOTTY)
        #expect(sev { () throws(SevError) in _ = try b.syncFromKernel(tr) } == ENOTTY)
        #expect(sev { () throws(SevError) in _ = try b.enableHypercallExit() } == EOPNOTSUPP)
        #expect(b.cpuidFeatures() == 0)
        #expect(b.migrationRefusal(tr) == nil)   // the kernel keeps the bitmap
        #expect(sev { () throws(SevError) in try b.bind(fd: VMFD(rawValue: p[0]), dialect: .seedV7to9) } == EBUSY)
        b.unbind()
        #expect(sev { () throws(SevError) in try b.bind(fd: VMFD(rawValue: p[0]), dialect: .upstream) } == ENOTTY)
        // C ABI: an unknown dialect number is refused.
        var t: OpaquePointer? = nil
        #expect(sevpeb_tracker_create(0, &t) == 0)
        #expect(sevpeb_kvm_bind(t, p[0], 8) == -EINVAL)
        #expect(sevpeb_kvm_bind(t, p[0], SEVPEB_KVM_SEED_V7_V9) == 0)
        var n: UInt64 = 1
        #expect(sevpeb_kvm_kernel_bitmap_size(t, &n) == 0 && n == 0)   // empty layout
        sevpeb_tracker_destroy(t)
    }
}
