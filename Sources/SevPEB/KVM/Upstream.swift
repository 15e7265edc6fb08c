import CSevPEBShims

/// Upstream KVM constants sevpeb uses (include/uapi/linux/kvm.h,
/// arch/x86/include/uapi/asm/kvm_para.h; docs/SOURCES.md §3.1–§3.4).
public enum UpstreamKVM {
    /// KVM_EXIT_HYPERCALL 3.
    public static let exitHypercall: UInt32 = 3
    /// KVM_EXIT_X86_RDMSR 29.
    public static let exitRDMSR: UInt32 = 29
    /// KVM_EXIT_X86_WRMSR 30.
    public static let exitWRMSR: UInt32 = 30
    /// KVM_MSR_EXIT_REASON_FILTER (1 << 2): exit on accesses the filter denies.
    public static let msrExitReasonFilter: UInt64 = 1 << 2
    /// KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE.
    public static let msrFilterReadWrite: UInt32 = 3
    /// KVM_MSR_FILTER_DEFAULT_ALLOW 0: MSRs outside every range stay with KVM.
    public static let msrFilterDefaultAllow: UInt32 = 0
    /// The KVM_CAP_EXIT_HYPERCALL bit for KVM_HC_MAP_GPA_RANGE (1 << 12).
    public static let hypercallExitMapGPARange: UInt64 = 1 << MapGPARange.nr
    /// KVM_CPUID_FEATURES leaf 0x40000001 (EAX bits).
    public static let cpuidFeaturesLeaf: UInt32 = 0x4000_0001
    /// KVM_FEATURE_HC_MAP_GPA_RANGE 16.
    public static let featureHCMapGPARange: UInt32 = 16
    /// KVM_FEATURE_MIGRATION_CONTROL 17.
    public static let featureMigrationControl: UInt32 = 17
}

extension KVMBinding {
    /// Make the guest's KVM_HC_MAP_GPA_RANGE exit to the VMM.
    ///
    /// Kernel: KVM_CAP_EXIT_HYPERCALL 201 (Linux 5.14), api.rst 8.33:
    /// "Calling KVM_CHECK_EXTENSION for this capability will return a bitmask
    /// of hypercalls that can be configured to exit to userspace. Right now,
    /// the only such hypercall is KVM_HC_MAP_GPA_RANGE. The argument to
    /// KVM_ENABLE_CAP is also a bitmask, and must be a subset of the result
    /// of KVM_CHECK_EXTENSION. KVM will forward to userspace the hypercalls
    /// whose corresponding bit is in the argument, and return ENOSYS for the
    /// others." Enables exactly `1 << KVM_HC_MAP_GPA_RANGE`, after checking
    /// the kernel reports it. Idempotent.
    /// - Returns: the mask the kernel reported.
    /// - Throws: EBADF (not bound), EOPNOTSUPP (seed dialect, or the kernel's
    ///   mask lacks bit 12: Linux < 5.14), or the ioctl's errno.
    public func enableHypercallExit() throws(SevError) -> UInt64 {
        try locked { () throws(SevError) -> UInt64 in
            let b = try require("enable KVM_CAP_EXIT_HYPERCALL")
            if b.dialect.seed != nil {
                throw SevError(EOPNOTSUPP, "KVM_CAP_EXIT_HYPERCALL is an upstream capability; VM is bound with the \(b.dialect.name) dialect, whose kernel handles the hypercall itself")
            }
            let mask: UInt64
            do throws(Errno) { mask = UInt64(try b.fd.checkExtension(.exitHypercall)) } catch {
                throw kvmError(error, "KVM_CHECK_EXTENSION(KVM_CAP_EXIT_HYPERCALL)")
            }
            let want = UpstreamKVM.hypercallExitMapGPARange
            if mask & want == 0 {
                throw SevError(EOPNOTSUPP, "kernel reports KVM_CAP_EXIT_HYPERCALL mask \(hex(mask)): KVM_HC_MAP_GPA_RANGE (bit 12) cannot exit to userspace (needs Linux >= 5.14)")
            }
            do throws(Errno) { try b.fd.enableCap(.exitHypercall, want) } catch {
                throw kvmError(error, "KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL, \(hex(want)))")
            }
            insert(.hypercallExit)
            return mask
        }
    }

    /// Route guest accesses to MSR_KVM_MIGRATION_CONTROL to the VMM.
    ///
    /// Kernel: msr.rst (MSR_KVM_MIGRATION_CONTROL 0x4b564d08): KVM has no
    /// handler; hypercalls.rst: "if the guest supports
    /// KVM_FEATURE_MIGRATION_CONTROL, userspace must also set up an MSR
    /// filter to process writes to MSR_KVM_MIGRATION_CONTROL."
    /// With `byVMM == false`: KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR,
    /// KVM_MSR_EXIT_REASON_FILTER), then KVM_X86_SET_MSR_FILTER with one
    /// read/write range holding this MSR, denied (bit 0), default allow — this
    /// replaces any filter the VM had and sets the user-space-MSR mask to
    /// FILTER only. With `byVMM == true` no ioctl is issued: the VMM adds
    /// `msrFilterRange` to its own filter and promises to route the exits.
    /// - Throws: EBADF (not bound), EOPNOTSUPP (seed dialect; kernel without
    ///   KVM_CAP_X86_USER_SPACE_MSR / KVM_CAP_X86_MSR_FILTER), ioctl errnos.
    public func installMSRFilter(byVMM: Bool) throws(SevError) {
        try locked { () throws(SevError) in
            let b = try require("install the MSR_KVM_MIGRATION_CONTROL filter")
            if b.dialect.seed != nil {
                throw SevError(EOPNOTSUPP, "MSR_KVM_MIGRATION_CONTROL is upstream ABI; VM is bound with the \(b.dialect.name) dialect")
            }
            if byVMM { insert(.msrFilterByVMM); return }
            for cap in [KVMCap.x86UserSpaceMSR, KVMCap.x86MSRFilter] {
                let r: Int32
                do throws(Errno) { r = try b.fd.checkExtension(cap) } catch {
                    throw kvmError(error, "KVM_CHECK_EXTENSION(\(cap.rawValue))")
                }
                if r == 0 {
                    throw SevError(EOPNOTSUPP, "kernel lacks capability \(cap.rawValue) (KVM_CAP_X86_USER_SPACE_MSR 188 / KVM_CAP_X86_MSR_FILTER 189, Linux >= 5.10)")
                }
            }
            do throws(Errno) { try b.fd.enableCap(.x86UserSpaceMSR, UpstreamKVM.msrExitReasonFilter) } catch {
                throw kvmError(error, "KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER)")
            }
            var deny: UInt8 = 0
            var filter = kvm_msr_filter()
            filter.flags = UpstreamKVM.msrFilterDefaultAllow
            do throws(Errno) {
                // SAFETY: p points at `deny` only for the closure, which issues the ioctl that reads it.
                unsafe try withUnsafeMutablePointer(to: &deny) { (p) throws(Errno) in
                    unsafe filter.ranges.0 = unsafe kvm_msr_filter_range(flags: UpstreamKVM.msrFilterReadWrite, nmsrs: 1,
                                                           base: MigrationControl.msr, bitmap: p)
                    // SAFETY: the one range's bitmap points at `deny`, one byte,
                    // alive for the whole call; the other ranges are zero.
                    try b.fd.setMSRFilter(&filter)
                }
            } catch {
                throw kvmError(error, "KVM_X86_SET_MSR_FILTER(MSR_KVM_MIGRATION_CONTROL)")
            }
            insert(.msrFilterInstalled)
        }
    }

    /// The CPUID 0x40000001 EAX bits that are safe to advertise now
    /// (hypercalls.rst: "Userspace must enable that capability before
    /// advertising KVM_FEATURE_HC_MAP_GPA_RANGE in the guest CPUID"):
    /// HC_MAP_GPA_RANGE once the hypercall exit is enabled; MIGRATION_CONTROL
    /// once, in addition, the MSR exits are routed (a Linux guest that sees
    /// MIGRATION_CONTROL starts issuing MAP_GPA_RANGE: arch/x86/kernel/kvm.c).
    /// Seed dialects: 0 (their kernels set their own bits; v9/v10 even used
    /// bit 16 for KVM_FEATURE_SEV_LIVE_MIGRATION, docs/SOURCES.md §2.7).
    public func cpuidFeatures() -> UInt32 {
        guard let b = snapshot, b.dialect.seed == nil else { return 0 }
        let s = b.state
        var bits: UInt32 = 0
        if s.contains(.hypercallExit) {
            bits |= 1 << UpstreamKVM.featureHCMapGPARange
            if !s.isDisjoint(with: [.msrFilterInstalled, .msrFilterByVMM]) {
                bits |= 1 << UpstreamKVM.featureMigrationControl
            }
        }
        return bits
    }

    /// Why the VM may not be migrated now (nil: it may). Upstream: the
    /// hypercall exit must be enabled, the MSR exits routed and the guest
    /// must have written KVM_MIGRATION_READY; then the tracker's own check.
    /// Seed dialects: the kernel keeps the bitmap (and its own enable MSR),
    /// so only the tracker's check applies.
    public func migrationRefusal(_ tracker: Tracker) -> SevError? {
        guard let b = snapshot else {
            return SevError(EBADF, "no VM fd bound (sevpeb_kvm_bind): the library cannot know the guest's shared pages")
        }
        if b.dialect.seed == nil {
            let s = b.state
            if !s.contains(.hypercallExit) {
                return SevError(EAGAIN, "KVM_CAP_EXIT_HYPERCALL not enabled: the guest's KVM_HC_MAP_GPA_RANGE calls do not reach the tracker")
            }
            if s.isDisjoint(with: [.msrFilterInstalled, .msrFilterByVMM]) {
                return SevError(EAGAIN, "MSR_KVM_MIGRATION_CONTROL exits not set up: the guest cannot declare itself migration-ready")
            }
            let v = tracker.migrationControl
            if v & MigrationControl.ready == 0 {
                return SevError(EAGAIN, "guest has not declared itself migration-ready (MSR_KVM_MIGRATION_CONTROL = \(hex(v)), KVM_MIGRATION_READY clear)")
            }
        }
        return tracker.migrationRefusal()
    }
}

/// The run-struct exit handlers. Static: they need no binding (any VMM that
/// sees the exit may call them) and take no lock but the tracker's.
public enum KVMExits {
    /// Handle a KVM_EXIT_HYPERCALL.
    ///
    /// Kernel: api.rst 5 (KVM_EXIT_HYPERCALL) and hypercalls.rst
    /// (KVM_HC_MAP_GPA_RANGE 12: a0 gpa, a1 npages, a2 attributes). For nr 12
    /// the request is decoded strictly (`Tracker.mapGPARangeRet`) and
    /// `run->hypercall.ret` is always written: 0, or -KVM_EINVAL with nothing
    /// changed (KVM pre-zeroes ret only because QEMU <= 9.2 never wrote it,
    /// docs/SOURCES.md §3.3). The VMM must then KVM_RUN again before saving vCPU
    /// state: "KVM_EXIT_HYPERCALL requires userspace to do KVM_RUN before
    /// state save/restore, so that KVM can skip the hypercall instruction"
    /// (Documentation, Sean Christopherson, January 2025).
    /// - Returns: 1 handled (ret written), 0 not ours (another exit reason or
    ///   hypercall number: left to the VMM, `run` untouched).
    /// - Safety: `run` points at a whole struct kvm_run (the vCPU's mmap).
    // SAFETY: run is the vCPU's kvm_run (checked non-NULL by the C entry point); only the hypercall union member is read, after exit_reason says it is one.
    public static func handleHypercall(_ run: UnsafeMutablePointer<kvm_run>, _ tracker: Tracker) -> (handled: Bool, error: SevError?) {
        guard unsafe sevpeb_shim_run_exit_reason(run).pointee == UpstreamKVM.exitHypercall,
              unsafe sevpeb_shim_run_hypercall_nr(run).pointee == MapGPARange.nr else { return (false, nil) }
        let a = unsafe sevpeb_shim_run_hypercall_args(run)!
        let (ret, err) = unsafe tracker.mapGPARangeRet(gpa: a[0], npages: a[1], attrs: a[2])
        unsafe sevpeb_shim_run_hypercall_ret(run).pointee = UInt64(bitPattern: ret)
        return (true, err)
    }

    /// Handle a KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR for
    /// MSR_KVM_MIGRATION_CONTROL.
    ///
    /// Kernel: api.rst 5 (KVM_EXIT_X86_RDMSR/WRMSR): "The 'index' field tells
    /// userspace which MSR the guest wants to read/write. ... If the 'error'
    /// field is set, KVM injects a #GP"; msr.rst: bit 0 KVM_MIGRATION_READY,
    /// other bits reserved. RDMSR returns the recorded value; WRMSR records
    /// it, or sets `error` = 1 (#GP) for reserved bits. One value per VM
    /// (the guest writes it from the boot CPU and clears it when a CPU goes
    /// offline, docs/SOURCES.md §3.5); it travels in the migration stream.
    /// - Returns: 1 handled, 0 not ours (other exit reason or MSR index).
    /// - Safety: `run` points at a whole struct kvm_run.
    // SAFETY: run is the vCPU's kvm_run (checked non-NULL by the C entry point); only the msr union member is used, after exit_reason says it is one.
    public static func handleMSRExit(_ run: UnsafeMutablePointer<kvm_run>, _ tracker: Tracker) -> (handled: Bool, error: SevError?) {
        let reason = unsafe sevpeb_shim_run_exit_reason(run).pointee
        guard reason == UpstreamKVM.exitRDMSR || reason == UpstreamKVM.exitWRMSR,
              unsafe sevpeb_shim_run_msr_index(run).pointee == MigrationControl.msr else { return (false, nil) }
        if reason == UpstreamKVM.exitRDMSR {
            unsafe sevpeb_shim_run_msr_data(run).pointee = tracker.migrationControl
            unsafe sevpeb_shim_run_msr_error(run).pointee = 0
            return (true, nil)
        }
        do throws(SevError) {
            unsafe try tracker.setMigrationControl(sevpeb_shim_run_msr_data(run).pointee)
            unsafe sevpeb_shim_run_msr_error(run).pointee = 0
            return (true, nil)
        } catch {
            unsafe sevpeb_shim_run_msr_error(run).pointee = 1
            return (true, error)
        }
    }

    /// Fill one struct kvm_msr_filter_range for a VMM that keeps its own MSR
    /// filter: read+write, MSR_KVM_MIGRATION_CONTROL only, denied (so the
    /// access exits with KVM_MSR_EXIT_REASON_FILTER). `bitmap` gets one zero
    /// byte and must outlive the VMM's KVM_X86_SET_MSR_FILTER call.
    // SAFETY: range and bitmap are the caller's (checked non-NULL); bitmap is one byte, range one struct.
    public static func msrFilterRange(_ range: UnsafeMutablePointer<kvm_msr_filter_range>, _ bitmap: UnsafeMutablePointer<UInt8>) {
        unsafe bitmap.pointee = 0
        unsafe range.pointee = unsafe kvm_msr_filter_range(flags: UpstreamKVM.msrFilterReadWrite, nmsrs: 1,
                                             base: MigrationControl.msr, bitmap: bitmap)
    }
}
