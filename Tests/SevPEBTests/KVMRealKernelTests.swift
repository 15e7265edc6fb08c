import CSevPEB
import CSevPEBShims
import Glibc
import Testing
@testable import SevPEB

/// The upstream path against the real /dev/kvm (VM-level ioctls work on this
/// host; vCPUs never run and KVM_RUN is never issued). Every test prints a
/// visible SKIP line and returns when /dev/kvm cannot be opened.
///
/// The seed dialects cannot run on any upstream kernel; they are tested
/// against the v6/v8 kernel models behind the real ioctl entry point in
/// Tests/c/kvm_test.c (make kvm-check).
@Suite(.serialized) struct KVMRealKernelTests {
    /// A real VM with two memslots and one vCPU whose struct kvm_run is mmap'ed.
    final class RealVM {
        let kvm: Int32, vm: Int32, vcpu: Int32
        let run: UnsafeMutablePointer<kvm_run>
        let runSize: Int
        let mem: UnsafeMutableRawPointer
        static let slots: [(UInt64, UInt64)] = [(0, 512), (0x100000, 1024)]   // (gfn, pages)

        init?() {
            kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)
            if kvm < 0 {
                print("SKIP: /dev/kvm cannot be opened (errno \(Glibc.errno)): real-kernel KVM test not run")
                return nil
            }
            vm = sevpeb_shim_ioctl_val(kvm, KVMIoctl.createVM.rawValue, 0)
            if vm < 0 {
                print("SKIP: KVM_CREATE_VM failed (\(vm)): real-kernel KVM test not run")
                close(kvm)
                return nil
            }
            mem = mmap(nil, 1536 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
            var off = 0
            for (i, (gfn, pages)) in RealVM.slots.enumerated() {
                var r = kvm_userspace_memory_region(slot: UInt32(i), flags: 0, guest_phys_addr: gfn << 12,
                                                    memory_size: pages << 12,
                                                    userspace_addr: UInt64(UInt(bitPattern: mem + off)))
                precondition(sevpeb_shim_ioctl_ptr(vm, KVMIoctl.setUserMemoryRegion.rawValue, &r) == 0)
                off += Int(pages) * 4096
            }
            vcpu = sevpeb_shim_ioctl_val(vm, KVMIoctl.createVCPU.rawValue, 0)
            runSize = Int(sevpeb_shim_ioctl_val(kvm, KVMIoctl.getVCPUMmapSize.rawValue, 0))
            precondition(vcpu >= 0 && runSize >= sevpeb_shim_kvm_run_size())
            run = mmap(nil, runSize, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0)!.bindMemory(to: kvm_run.self, capacity: 1)
        }
        deinit {
            munmap(run, runSize); close(vcpu); close(vm); close(kvm)
            munmap(mem, 1536 * 4096)
        }
        func tracker() -> OpaquePointer {
            var t: OpaquePointer? = nil
            precondition(sevpeb_tracker_create(0, &t) == 0)
            for (gfn, pages) in RealVM.slots { precondition(sevpeb_slot_add(t, gfn, pages) == 0) }
            return t!
        }
    }

    func lastError() -> String { String(cString: sevpeb_last_error()) }

    @Test func upstreamPathThroughTheCABI() {
        guard let v = RealVM() else { return }
        let t = v.tracker()
        defer { sevpeb_tracker_destroy(t) }
        var eax: UInt32 = 0xffff_ffff

        #expect(sevpeb_kvm_bind(t, v.vm, SEVPEB_KVM_UPSTREAM) == 0)
        #expect(sevpeb_kvm_cpuid_features(t, &eax) == 0 && eax == 0)
        #expect(sevpeb_kvm_may_migrate(t) == 0 && lastError().contains("KVM_CAP_EXIT_HYPERCALL"))
        let mask = sevpeb_shim_ioctl_val(v.vm, KVMIoctl.checkExtension.rawValue, UInt(KVMCap.exitHypercall.rawValue))
        guard mask & 0x1000 != 0 else {
            print("SKIP: kernel reports KVM_CAP_EXIT_HYPERCALL mask \(mask): exit tests not run")
            #expect(sevpeb_kvm_enable_hypercall_exit(t) == -EOPNOTSUPP)
            return
        }
        #expect(sevpeb_kvm_enable_hypercall_exit(t) == 0)
        #expect(sevpeb_kvm_cpuid_features(t, &eax) == 0 && eax == 1 << 16)
        #expect(sevpeb_kvm_install_msr_filter(t, 0) == 0, "\(lastError())")
        #expect(sevpeb_kvm_cpuid_features(t, &eax) == 0 && eax == (1 << 16 | 1 << 17))

        // A synthetic KVM_EXIT_HYPERCALL in the real vCPU's run struct.
        let run = v.run
        sevpeb_shim_run_exit_reason(run).pointee = UpstreamKVM.exitHypercall
        sevpeb_shim_run_hypercall_nr(run).pointee = 12
        let a = sevpeb_shim_run_hypercall_args(run)!
        a[0] = (0x100000 + 8) << 12; a[1] = 16; a[2] = 0
        sevpeb_shim_run_hypercall_ret(run).pointee = 0xdead
        #expect(sevpeb_kvm_handle_hypercall(t, run) == 1)
        #expect(sevpeb_shim_run_hypercall_ret(run).pointee == 0)
        #expect(sevpeb_count_shared(t, 0x100000, 1024) == 16)
        a[2] = 1 << 5   // reserved bit
        #expect(sevpeb_kvm_handle_hypercall(t, run) == 1)
        #expect(Int64(bitPattern: sevpeb_shim_run_hypercall_ret(run).pointee) == -22)
        #expect(lastError().contains("reserved"))
        #expect(sevpeb_count_shared(t, 0x100000, 1024) == 16)

        // RDMSR / WRMSR of MSR_KVM_MIGRATION_CONTROL.
        sevpeb_shim_run_exit_reason(run).pointee = UpstreamKVM.exitWRMSR
        sevpeb_shim_run_msr_index(run).pointee = MigrationControl.msr
        sevpeb_shim_run_msr_data(run).pointee = 1
        #expect(sevpeb_kvm_handle_msr_exit(t, run) == 1 && sevpeb_shim_run_msr_error(run).pointee == 0)
        sevpeb_shim_run_exit_reason(run).pointee = UpstreamKVM.exitRDMSR
        sevpeb_shim_run_msr_data(run).pointee = 0
        #expect(sevpeb_kvm_handle_msr_exit(t, run) == 1 && sevpeb_shim_run_msr_data(run).pointee == 1)
        #expect(sevpeb_kvm_may_migrate(t) == 1, "\(lastError())")
        sevpeb_shim_run_exit_reason(run).pointee = UpstreamKVM.exitWRMSR
        sevpeb_shim_run_msr_data(run).pointee = 4
        #expect(sevpeb_kvm_handle_msr_exit(t, run) == 1 && sevpeb_shim_run_msr_error(run).pointee == 1)
        #expect(sevpeb_get_migration_control(t) == 1)

        // This host has no guest_memfd VM type: a clear error.
        #expect(sevpeb_kvm_apply_memory_attributes(t) == -EOPNOTSUPP && lastError().contains("PRIVATE"))
    }

    /// kvm-ioctls' test_faulty_vm_fd: a VMFD around -2 gives EBADF from every
    /// call, and a non-KVM fd gives the kernel's ENOTTY.
    @Test func faultyFileDescriptors() throws {
        let bad = VMFD(rawValue: -2)
        func code(_ body: () throws(Errno) -> Void) -> Int32 {
            do throws(Errno) { try body(); return 0 } catch { return error.rawValue }
        }
        #expect(code { () throws(Errno) in _ = try bad.checkExtension(.exitHypercall) } == EBADF)
        #expect(code { () throws(Errno) in _ = try bad.checkExtension(raw: 201) } == EBADF)
        #expect(code { () throws(Errno) in try bad.enableCap(.exitHypercall, 0x1000) } == EBADF)
        var f = kvm_msr_filter()
        #expect(code { () throws(Errno) in try bad.setMSRFilter(&f) } == EBADF)
        #expect(code { () throws(Errno) in try bad.setMemoryAttributes(address: 0, size: 4096, attributes: 8) } == EBADF)
        let null = VMFD(rawValue: open("/dev/null", O_RDONLY))
        defer { close(null.rawValue) }
        #expect(code { () throws(Errno) in _ = try null.checkExtension(.exitHypercall) } == ENOTTY)

        let b = try KVMBinding.create()
        let tr = try Tracker.create()
        func sev(_ body: () throws(SevError) -> Void) -> Int32 {
            do throws(SevError) { try body(); return 0 } catch { return error.code }
        }
        #expect(sev { () throws(SevError) in try b.bind(fd: bad, dialect: .upstream) } == EBADF)
        #expect(sev { () throws(SevError) in try b.bind(fd: null, dialect: .upstream) } == ENOTTY)
        #expect(sev { () throws(SevError) in _ = try b.enableHypercallExit() } == EBADF)
        #expect(sev { () throws(SevError) in try b.installMSRFilter(byVMM: false) } == EBADF)
        #expect(sev { () throws(SevError) in _ = try b.applyMemoryAttributes(tr) } == EBADF)
        #expect(sev { () throws(SevError) in _ = try b.syncFromKernel(tr) } == EBADF)
        #expect(b.migrationRefusal(tr)?.code == EBADF)
    }

    @Test func realKernelRefusesWhatTheLibraryNeverSends() {
        guard let v = RealVM() else { return }
        // api.rst 8.33: the ENABLE_CAP argument must be a subset of CHECK_EXTENSION's mask.
        let fd = VMFD(rawValue: v.vm)
        do throws(Errno) {
            try fd.enableCap(.exitHypercall, 0x1000 | 0x2)
            Issue.record("kernel accepted a hypercall mask outside KVM_EXIT_HYPERCALL_VALID_MASK")
        } catch {
            #expect(error == .invalidArgument)
        }
        // No memory attributes on this host's default VM type.
        #expect((try? fd.checkExtension(.memoryAttributes)) == 0)
    }
}
