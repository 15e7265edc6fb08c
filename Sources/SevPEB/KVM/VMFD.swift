import CSevPEBShims

/// An error number from a system call, typed (swift-system's `Errno`): a
/// struct, so any value the kernel returns fits; the statics name the ones
/// the KVM layer documents.
public struct Errno: RawRepresentable, Error, Hashable {
    /// The positive C errno value.
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// Bad file descriptor. The corresponding C error is `EBADF`.
    public static var badFileDescriptor: Errno { Errno(rawValue: EBADF) }
    /// Invalid argument. The corresponding C error is `EINVAL`.
    public static var invalidArgument: Errno { Errno(rawValue: EINVAL) }
    /// Inappropriate ioctl for device: the fd does not know the request (not a
    /// KVM VM fd, or a kernel without this ioctl). The corresponding C error is `ENOTTY`.
    public static var notTTY: Errno { Errno(rawValue: ENOTTY) }
    /// Bad address (the kernel could not copy an argument). The corresponding C error is `EFAULT`.
    public static var badAddress: Errno { Errno(rawValue: EFAULT) }
    /// Out of memory. The corresponding C error is `ENOMEM`.
    public static var noMemory: Errno { Errno(rawValue: ENOMEM) }
    /// Not supported by this kernel or VM type. The corresponding C error is `EOPNOTSUPP`.
    public static var notSupported: Errno { Errno(rawValue: EOPNOTSUPP) }
    /// Resource busy. The corresponding C error is `EBUSY`.
    public static var busy: Errno { Errno(rawValue: EBUSY) }
    /// Operation not permitted. The corresponding C error is `EPERM`.
    public static var notPermitted: Errno { Errno(rawValue: EPERM) }
}

/// A KVM VM file descriptor that the VMM owns (swift-system's
/// `FileDescriptor`, not kvm-ioctls' owning `VmFd`): sevpeb never closes it.
/// You are responsible for keeping the fd open while sevpeb may use it, in
/// the same way as you manage a raw C file handle; QEMU's `kvm_state->vmfd`
/// lives as long as the machine.
public struct VMFD: RawRepresentable, Hashable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    // MARK: the only callers of libc ioctl (through the CSevPEBShims shims)

    /// `_IO` request, no argument. Returns the non-negative result.
    @inline(__always)
    func ioctl(_ req: IoctlRequest) throws(Errno) -> Int32 {
        try valueOrErrno { sevpeb_shim_ioctl_none(rawValue, req.rawValue) }
    }

    /// Request whose argument is an integer passed by value (KVM_CHECK_EXTENSION).
    @inline(__always)
    func ioctl(_ req: IoctlRequest, value: UInt) throws(Errno) -> Int32 {
        try valueOrErrno { sevpeb_shim_ioctl_val(rawValue, req.rawValue, value) }
    }

    /// `_IOW` request: the kernel reads `*arg` (and whatever it points to).
    /// - Safety: pointers inside `arg` must be valid for the sizes the ioctl
    ///   documents for the duration of the call.
    @inline(__always)
    func ioctl<T>(_ req: IoctlRequest, writing arg: inout T) throws(Errno) -> Int32 {
        let fd = rawValue
        // SAFETY: `arg` is a live, correctly sized T (the request's size field
        // is MemoryLayout<T>.size, see IoctlNumbers.swift); the kernel reads
        // at most that many bytes from it.
        return try valueOrErrno { unsafe withUnsafeMutablePointer(to: &arg) { unsafe sevpeb_shim_ioctl_ptr(fd, req.rawValue, $0) } }
    }

    @inline(__always)
    func valueOrErrno(_ body: () -> Int32) throws(Errno) -> Int32 {
        // Checked before the syscall, with the errno the kernel would return.
        if rawValue < 0 { throw .badFileDescriptor }
        let r = body()
        if r < 0 { throw Errno(rawValue: -r) }
        return r
    }

    // MARK: VM ioctls

    /// Ask whether an extension is available on this VM.
    ///
    /// Kernel: KVM_CHECK_EXTENSION (`_IO(KVMIO, 0x03)`), api.rst 4.4: "The API
    /// allows the application to query about extensions to the core kvm API.
    /// ... Based on their initialization different VMs may have different
    /// capabilities. It is thus encouraged to use the vm ioctl to query for
    /// capabilities." Returns 0 for an unsupported extension, otherwise a
    /// positive, extension-specific value (a bitmask for
    /// KVM_CAP_EXIT_HYPERCALL and KVM_CAP_MEMORY_ATTRIBUTES).
    /// - Throws: `EBADF` (not an fd), `ENOTTY` (not a KVM fd).
    ///
    /// The corresponding C ioctl is `KVM_CHECK_EXTENSION`.
    public func checkExtension(_ cap: KVMCap) throws(Errno) -> Int32 {
        try ioctl(KVMIoctl.checkExtension, value: UInt(cap.rawValue))
    }

    /// `checkExtension` for a capability number `KVMCap` does not list
    /// (kvm-ioctls' `check_extension_raw`). Never used for the seed
    /// dialects: those have no capability and are never probed.
    public func checkExtension(raw cap: UInt) throws(Errno) -> Int32 {
        try ioctl(KVMIoctl.checkExtension, value: cap)
    }

    /// Enable a VM capability with its first argument.
    ///
    /// Kernel: KVM_ENABLE_CAP (`_IOW(KVMIO, 0xa3, struct kvm_enable_cap)`),
    /// api.rst 4.37/7: "Not all extensions are enabled by default. Using this
    /// ioctl the application can enable an extension." `args[0]` is the
    /// capability's argument (a mask for KVM_CAP_EXIT_HYPERCALL and
    /// KVM_CAP_X86_USER_SPACE_MSR); `flags` must be 0.
    /// - Throws: `EINVAL` (unknown cap or argument not accepted, e.g. a
    ///   hypercall mask that is not a subset of CHECK_EXTENSION's), `EBADF`, `ENOTTY`.
    ///
    /// The corresponding C ioctl is `KVM_ENABLE_CAP`.
    public func enableCap(_ cap: KVMCap, _ arg0: UInt64) throws(Errno) {
        var c = kvm_enable_cap()
        c.cap = cap.rawValue
        c.args.0 = arg0
        _ = try ioctl(KVMIoctl.enableCap, writing: &c)
    }

    /// Replace the VM's MSR filter.
    ///
    /// Kernel: KVM_X86_SET_MSR_FILTER (`_IOW(KVMIO, 0xc6, struct kvm_msr_filter)`,
    /// Linux 5.10, KVM_CAP_X86_MSR_FILTER), api.rst: "This ioctl allows user
    /// space to define up to 16 bitmaps of MSR ranges to deny guest MSR
    /// accesses that would normally be allowed by KVM. ... If an MSR access
    /// is denied by user space, KVM will ... exit to user space with
    /// KVM_EXIT_X86_RDMSR/WRMSR if KVM_MSR_EXIT_REASON_FILTER is enabled"
    /// (a bitmap bit of 0 denies). The new filter replaces the previous one.
    /// - Safety: every range's `bitmap` must point at `(nmsrs + 7) / 8` readable bytes.
    /// - Throws: `EINVAL` (bad flags or ranges), `EBADF`, `ENOTTY` (kernel < 5.10).
    ///
    /// The corresponding C ioctl is `KVM_X86_SET_MSR_FILTER`.
    public func setMSRFilter(_ filter: inout kvm_msr_filter) throws(Errno) {
        _ = try ioctl(KVMIoctl.x86SetMSRFilter, writing: &filter)
    }

    /// Set the attributes of a GPA range to exactly `attributes`.
    ///
    /// Kernel: KVM_SET_MEMORY_ATTRIBUTES (`_IOW(KVMIO, 0xd2, struct
    /// kvm_memory_attributes)`, Linux 6.8, docs/SOURCES.md §3.6), api.rst 4.141:
    /// "KVM_SET_MEMORY_ATTRIBUTES allows userspace to set memory attributes
    /// for a range of guest physical memory." `address` and `size` must be
    /// page aligned and `size` non-zero; `attributes` must be a subset of
    /// KVM_CHECK_EXTENSION(KVM_CAP_MEMORY_ATTRIBUTES); `flags` must be 0.
    /// KVM_MEMORY_ATTRIBUTE_PRIVATE (1 << 3) marks the range private
    /// (backed by guest_memfd).
    /// - Throws: `EINVAL` (alignment, size, unsupported attribute), `ENOMEM`,
    ///   `EBADF`, `ENOTTY` (kernel < 6.8 or VM type without attributes).
    ///
    /// The corresponding C ioctl is `KVM_SET_MEMORY_ATTRIBUTES`.
    public func setMemoryAttributes(address: UInt64, size: UInt64, attributes: UInt64) throws(Errno) {
        var a = sevpeb_kvm_memory_attributes(address: address, size: size, attributes: attributes, flags: 0)
        _ = try ioctl(KVMIoctl.setMemoryAttributes, writing: &a)
    }
}
