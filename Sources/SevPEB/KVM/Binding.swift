import CSevPEBShims
import Synchronization

/// Which kernel ABI a VM fd speaks for page-encryption state. The VMM picks
/// it; sevpeb never guesses and never probes the seed numbers (docs/SOURCES.md
/// §3.8: they now belong to other upstream ioctls).
public enum KVMDialect: UInt32 {
    /// Merged Linux (5.14+): the guest's KVM_HC_MAP_GPA_RANGE reaches the VMM
    /// as KVM_EXIT_HYPERCALL, readiness is MSR_KVM_MIGRATION_CONTROL through
    /// an MSR filter, guest_memfd VMs take KVM_SET_MEMORY_ATTRIBUTES. The
    /// kernel keeps no bitmap; the tracker is the truth.
    case upstream = 0
    /// Out-of-tree v6 (March 2020): the kernel keeps the bitmap; GET 0xc5,
    /// SET 0xc6 (clears bits only), RESET 0xc7 (docs/SOURCES.md §2.1, §2.5).
    case seedV6 = 6
    /// Out-of-tree v7-v9 (April-December 2020): GET 0xc6, SET 0xc7 writes
    /// exact values in whole 64-bit words, SET with a NULL bitmap resets.
    case seedV7to9 = 7

    var name: String {
        switch self {
        case .upstream: return "upstream"
        case .seedV6: return "seed v6"
        case .seedV7to9: return "seed v7-v9"
        }
    }

    /// The seed dialect, or nil for upstream. Exhaustive: a new dialect does
    /// not compile until it says whether it is a seed one and which.
    var seed: SeedDialect? {
        switch self {
        case .upstream: return nil
        case .seedV6: return .v6
        case .seedV7to9: return .v7to9
        }
    }
}

/// The seed dialects (the kernel keeps the bitmap). Every dispatch on them
/// is a `switch` without `default`.
enum SeedDialect {
    case v6, v7to9

    var dialect: KVMDialect {
        switch self {
        case .v6: return .seedV6
        case .v7to9: return .seedV7to9
        }
    }
}

/// The KVM side of one tracker: which VM fd it is bound to, in which
/// dialect, and what has been set up on it.
///
/// Thread safety: control-plane calls (bind, enable, install, sync, push,
/// reset, apply) serialize on one mutex, so e.g. a v6 reset-then-clear is
/// never interleaved with another push. The exit handlers
/// (`handleHypercall`, `handleMSRExit`) do not touch the binding at all and
/// the status queries read one atomic word (fd, dialect and set-up state
/// together, so a reader never sees the fd of one binding with the state of
/// another), so vCPU threads never wait for a sync.
///
/// A non-copyable value (no class instance, whose allocation would trap when
/// out of memory): the C ABI keeps it inside the tracker's handle.
public struct KVMBinding: ~Copyable {
    private let lock: Lock
    /// 0 = unbound; else bits 0-31 the fd, 32-39 the dialect's raw value,
    /// 40-47 `State`.
    let word = Atomic<UInt64>(0)
    /// v6: the highest GFN end this library has written through SET, so the
    /// kernel's lazily grown bitmap is known to cover at least this.
    /// (Read and written under the lock; atomic so that the binding's
    /// methods can share it without `mutating`.)
    let v6CoveredWord = Atomic<UInt64>(0)
    var v6Covered: UInt64 {
        get { v6CoveredWord.load(ordering: .relaxed) }
        nonmutating set { v6CoveredWord.store(newValue, ordering: .relaxed) }
    }

    struct State: OptionSet {
        let rawValue: UInt32
        static let bound = State(rawValue: 1)
        static let hypercallExit = State(rawValue: 2)
        static let msrFilterInstalled = State(rawValue: 4)
        static let msrFilterByVMM = State(rawValue: 8)
    }

    private init(_ m: consuming Lock) { lock = m }

    /// A binding to nothing. (A factory: Embedded Swift 6.3 leaks objects
    /// whose throwing init fails.)
    public static func create() throws(SevError) -> KVMBinding {
        guard let m = Lock.make() else { throw .noMemory("out of memory allocating the KVM binding mutex") }
        return KVMBinding(m)
    }

    @inline(__always) func locked<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        try lock.withLock(body)
    }

    /// One consistent reading of the binding.
    struct Snapshot {
        let fd: VMFD
        let dialect: KVMDialect
        let state: State
    }

    static func pack(_ fd: VMFD, _ d: KVMDialect, _ s: State) -> UInt64 {
        UInt64(UInt32(bitPattern: fd.rawValue)) | UInt64(d.rawValue & 0xff) << 32 | UInt64(s.rawValue & 0xff) << 40
    }

    /// Record more set-up state (the binding's lock held).
    func insert(_ s: State) { _ = word.bitwiseOr(UInt64(s.rawValue & 0xff) << 40, ordering: .acquiringAndReleasing) }

    /// The binding (fd, dialect, state) from one atomic load, or nil.
    var snapshot: Snapshot? {
        let w = word.load(ordering: .acquiring)
        let s = State(rawValue: UInt32(truncatingIfNeeded: w >> 40) & 0xff)
        guard s.contains(.bound), let d = KVMDialect(rawValue: UInt32(truncatingIfNeeded: w >> 32) & 0xff) else { return nil }
        return Snapshot(fd: VMFD(rawValue: Int32(bitPattern: UInt32(truncatingIfNeeded: w))), dialect: d, state: s)
    }

    /// The bound VM fd and dialect, or nil.
    public var binding: (fd: VMFD, dialect: KVMDialect)? {
        guard let b = snapshot else { return nil }
        return (b.fd, b.dialect)
    }

    /// The binding, or EBADF naming what the caller tried to do.
    func require(_ what: String) throws(SevError) -> Snapshot {
        guard let b = snapshot else { throw SevError(EBADF, "\(what): no VM fd bound (call sevpeb_kvm_bind first)") }
        return b
    }

    /// Bind to the VMM's VM fd in `dialect`.
    ///
    /// Upstream: probes KVM_CHECK_EXTENSION(KVM_CAP_EXIT_HYPERCALL) once, which
    /// also proves the fd is a KVM fd (ENOTTY otherwise). Seed dialects issue
    /// no ioctl here: they have no capability to probe, and probing their
    /// numbers would run other upstream ioctls.
    /// - Throws: EBADF (fd < 0 or not open), ENOTTY (not a KVM fd), EBUSY
    ///   (already bound; unbind first), EINVAL (unknown dialect).
    public func bind(fd: VMFD, dialect: KVMDialect) throws(SevError) {
        try locked { () throws(SevError) in
            if let b = snapshot {
                throw SevError(EBUSY, "already bound to VM fd \(b.fd.rawValue); call sevpeb_kvm_unbind first")
            }
            if fd.rawValue < 0 { throw SevError(EBADF, "VM fd \(fd.rawValue) is negative") }
            if dialect.seed == nil {
                do throws(Errno) { _ = try fd.checkExtension(.exitHypercall) } catch {
                    throw kvmError(error, "KVM_CHECK_EXTENSION(KVM_CAP_EXIT_HYPERCALL) on fd \(fd.rawValue)")
                }
            }
            v6Covered = 0
            word.store(Self.pack(fd, dialect, .bound), ordering: .releasing)
        }
    }

    /// Forget the VM fd (not closed: the VMM owns it) and what was set up on
    /// it. KVM keeps whatever was enabled; the CPUID answer becomes 0.
    public func unbind() {
        locked {
            word.store(0, ordering: .releasing)
            v6Covered = 0
        }
    }
}

/// An ioctl failure as a SevError naming the call: "<what>: errno 22 (EINVAL)".
func kvmError(_ e: Errno, _ what: String) -> SevError {
    SevError(e.rawValue, "\(what) failed: errno \(e.rawValue) (\(errnoSymbol(e.rawValue).map { "\($0)" } ?? "?"))")
}

