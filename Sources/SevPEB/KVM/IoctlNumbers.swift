import CSevPEBShims

// Every ioctl request number sevpeb (or its tests) issues, computed from its
// _IOC parts and the size of its argument struct, after rust-vmm
// kvm-ioctls' kvm_ioctls.rs. This is the only file that holds ioctl numbers;
// Tests/SevPEBTests/KVMIoctlNumberTests.swift pins each one to the literal
// hex in docs/SOURCES.md and to the system <linux/kvm.h> where it has it.
//
// Several numbers in the 0xc5..0xc9 block were used by the out-of-tree SEV
// migration series and now belong to other upstream ioctls (docs/SOURCES.md §3.8):
// 0xAEC7 is KVM_RESET_DIRTY_RINGS, 0x4018AEC6/0x4188AEC6 differ only in the
// size field. The seed numbers are therefore internal to the KVM layer and
// reachable only through a `SeedDialect` the VMM picked explicitly.

/// An ioctl request number: `dir << 30 | size << 16 | type << 8 | nr`
/// (include/uapi/asm-generic/ioctl.h, the x86 layout).
public struct IoctlRequest: RawRepresentable, Hashable, Sendable {
    public let rawValue: UInt

    public init(rawValue: UInt) { self.rawValue = rawValue }

    /// The direction field, as the kernel sees it (_IOC_WRITE: userspace writes
    /// the argument, the kernel reads it).
    public enum Direction: UInt {
        case none = 0, write = 1, read = 2, readWrite = 3
    }

    /// `_IOC(dir, type, nr, size)`.
    @inline(__always)
    static func ioc(_ dir: Direction, _ type: UInt, _ nr: UInt, _ size: Int) -> IoctlRequest {
        IoctlRequest(rawValue: dir.rawValue << 30 | UInt(size) << 16 | type << 8 | nr)
    }
    /// `_IO(type, nr)`.
    static func io(_ type: UInt, _ nr: UInt) -> IoctlRequest { ioc(.none, type, nr, 0) }
    /// `_IOW(type, nr, T)`.
    static func iow<T>(_ type: UInt, _ nr: UInt, _: T.Type) -> IoctlRequest {
        ioc(.write, type, nr, MemoryLayout<T>.size)
    }

    /// `_IOC_NR`.
    public var nr: UInt8 { UInt8(truncatingIfNeeded: rawValue) }
    /// `_IOC_TYPE`.
    public var type: UInt8 { UInt8(truncatingIfNeeded: rawValue >> 8) }
    /// `_IOC_SIZE`.
    public var size: Int { Int(truncatingIfNeeded: (rawValue >> 16) & 0x3fff) }
    /// `_IOC_DIR`.
    public var direction: Direction { Direction(rawValue: (rawValue >> 30) & 3)! }
}

/// KVM ioctls, grouped by the fd they are issued on (kvm_ioctls.rs order).
public enum KVMIoctl {
    /// `KVMIO` (include/uapi/linux/kvm.h).
    public static let kvmio: UInt = 0xAE

    // The ioctls the tests use to create their own VMs (KVM_CREATE_VM,
    // KVM_CREATE_VCPU, ...) live with the tests (KVMIoctlNumberTests.swift),
    // not in this API.

    // Ioctls for /dev/kvm and VM fds.

    /// KVM_CHECK_EXTENSION, `_IO(KVMIO, 0x03)` = 0xAE03. On a VM fd with
    /// KVM_CAP_CHECK_EXTENSION_VM (every kernel sevpeb's upstream path needs).
    public static let checkExtension = IoctlRequest.io(kvmio, 0x03)

    // Ioctls for VM fds.

    /// KVM_ENABLE_CAP, `_IOW(KVMIO, 0xa3, struct kvm_enable_cap)` = 0x4068AEA3.
    public static let enableCap = IoctlRequest.iow(kvmio, 0xa3, kvm_enable_cap.self)
    /* Available with KVM_CAP_X86_MSR_FILTER (Linux 5.10). Shares nr 0xc6 with the
       seed v6 SET and v7-v9 GET; only the size field (0x188 vs 0x18) differs. */
    /// KVM_X86_SET_MSR_FILTER, `_IOW(KVMIO, 0xc6, struct kvm_msr_filter)` = 0x4188AEC6.
    public static let x86SetMSRFilter = IoctlRequest.iow(kvmio, 0xc6, kvm_msr_filter.self)
    /* Available with KVM_CAP_MEMORY_ATTRIBUTES (Linux 6.8; docs/SOURCES.md §3.6). */
    /// KVM_SET_MEMORY_ATTRIBUTES, `_IOW(KVMIO, 0xd2, struct kvm_memory_attributes)` = 0x4020AED2.
    public static let setMemoryAttributes = IoctlRequest.iow(kvmio, 0xd2, sevpeb_kvm_memory_attributes.self)
}

/// The out-of-tree seed dialects' ioctls (docs/SOURCES.md §2.1). Internal: only
/// SeedDialects.swift issues them, and only for a VM bound with that dialect.
enum SeedIoctl {
    /* seed v6 dialect (March 2020), out-of-tree: opt-in only */
    /// v6 KVM_GET_PAGE_ENC_BITMAP, `_IOW(KVMIO, 0xc5, struct kvm_page_enc_bitmap)` = 0x4018AEC5.
    static let v6Get = unsafe IoctlRequest.iow(KVMIoctl.kvmio, 0xc5, sevpeb_kvm_page_enc_bitmap.self)
    /// v6 KVM_SET_PAGE_ENC_BITMAP, `_IOW(KVMIO, 0xc6, struct kvm_page_enc_bitmap)` = 0x4018AEC6.
    static let v6Set = unsafe IoctlRequest.iow(KVMIoctl.kvmio, 0xc6, sevpeb_kvm_page_enc_bitmap.self)
    /// v6 KVM_PAGE_ENC_BITMAP_RESET, `_IO(KVMIO, 0xc7)` = 0x0000AEC7 — bit-identical
    /// to upstream KVM_RESET_DIRTY_RINGS.
    static let v6Reset = IoctlRequest.io(KVMIoctl.kvmio, 0xc7)

    /* seed v7-v9 dialect (April-December 2020), out-of-tree: opt-in only */
    /// v7-v9 KVM_GET_PAGE_ENC_BITMAP, `_IOW(KVMIO, 0xc6, struct kvm_page_enc_bitmap)` = 0x4018AEC6.
    static let v7Get = unsafe IoctlRequest.iow(KVMIoctl.kvmio, 0xc6, sevpeb_kvm_page_enc_bitmap.self)
    /// v7-v9 KVM_SET_PAGE_ENC_BITMAP, `_IOW(KVMIO, 0xc7, struct kvm_page_enc_bitmap)` = 0x4018AEC7.
    static let v7Set = unsafe IoctlRequest.iow(KVMIoctl.kvmio, 0xc7, sevpeb_kvm_page_enc_bitmap.self)
}

/// Capabilities sevpeb checks or enables: the argument of KVM_CHECK_EXTENSION
/// and KVM_ENABLE_CAP (kvm-ioctls' `Cap`). `VMFD.checkExtension(raw:)` is the
/// escape hatch for numbers not listed.
public enum KVMCap: UInt32 {
    /// KVM_CAP_X86_USER_SPACE_MSR 188 (Linux 5.10).
    case x86UserSpaceMSR = 188
    /// KVM_CAP_X86_MSR_FILTER 189 (Linux 5.10).
    case x86MSRFilter = 189
    /// KVM_CAP_DIRTY_LOG_RING 192 (Linux 5.11): where it exists, 0xAEC7 is
    /// KVM_RESET_DIRTY_RINGS, so the v6 RESET is refused.
    case dirtyLogRing = 192
    /// KVM_CAP_EXIT_HYPERCALL 201 (Linux 5.14; docs/SOURCES.md §3.2). CHECK_EXTENSION
    /// returns the mask of hypercalls that may exit.
    case exitHypercall = 201
    /// KVM_CAP_MEMORY_ATTRIBUTES 233 (Linux 6.8; docs/SOURCES.md §3.6). CHECK_EXTENSION
    /// returns the supported attribute mask.
    case memoryAttributes = 233
    /// KVM_CAP_DIRTY_LOG_RING_ACQ_REL 223 (Linux 6.0): the other dirty-ring
    /// capability (see dirtyLogRing).
    case dirtyLogRingAcqRel = 223

    /// The capability's name in <linux/kvm.h>.
    var name: String {
        switch self {
        case .x86UserSpaceMSR: return "KVM_CAP_X86_USER_SPACE_MSR"
        case .x86MSRFilter: return "KVM_CAP_X86_MSR_FILTER"
        case .dirtyLogRing: return "KVM_CAP_DIRTY_LOG_RING"
        case .exitHypercall: return "KVM_CAP_EXIT_HYPERCALL"
        case .memoryAttributes: return "KVM_CAP_MEMORY_ATTRIBUTES"
        case .dirtyLogRingAcqRel: return "KVM_CAP_DIRTY_LOG_RING_ACQ_REL"
        }
    }
}
