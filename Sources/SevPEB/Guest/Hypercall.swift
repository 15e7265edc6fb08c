import CSevPEBShims
import Synchronization

/// KVM_HC_MAP_GPA_RANGE (Linux 5.14, commit 0dbb11230437; docs/SOURCES.md §3.1):
/// a0 = gpa of the first page (4 KiB aligned), a1 = number of 4 KiB pages
/// (> 0, no overflow), a2 = attributes: bits 3:0 preferred page size
/// (0 = 4K, 1 = 2M, 2 = 1G; a hint only: a 4 KiB-aligned range is not
/// refused for it), bit 4 encrypted, bits 63:5 reserved (must be zero).
/// KVM checks alignment, npages and overflow itself but not the attributes
/// or that the range is RAM: this does all of it.
public enum MapGPARange {
    public static let nr: UInt64 = 12
    public static let pageSizeMask: UInt64 = 0xf
    public static let encrypted: UInt64 = 1 << 4
    public static let reservedMask: UInt64 = ~0x1f
    /// KVM_EINVAL (include/uapi/linux/kvm_para.h) = EINVAL.
    public static let kvmEINVAL: Int64 = 22
}

extension Tracker {
    /// Decode and apply one MAP_GPA_RANGE. Throws (with nothing changed) on
    /// any malformed or out-of-RAM request; `ret(...)` maps to the guest value.
    public func mapGPARange(gpa: UInt64, npages: UInt64, attrs: UInt64) throws(SevError) {
        if gpa & 0xfff != 0 {
            throw .invalid("MAP_GPA_RANGE gpa \(hex(gpa)) not 4 KiB aligned")
        }
        if npages == 0 { throw .invalid("MAP_GPA_RANGE npages 0 at gpa \(hex(gpa)): must be > 0") }
        if attrs & MapGPARange.reservedMask != 0 {
            throw .invalid("MAP_GPA_RANGE attrs \(hex(attrs)): reserved bits 63:5 set (\(hex(attrs & MapGPARange.reservedMask)))")
        }
        let size = attrs & MapGPARange.pageSizeMask
        if size > 2 {
            throw .invalid("MAP_GPA_RANGE attrs \(hex(attrs)): page size field \(size) (bits 3:0) not 0 (4K), 1 (2M) or 2 (1G)")
        }
        let gfn = gpa &>> 12
        if gfn.addingReportingOverflow(npages).overflow {
            throw .invalid("MAP_GPA_RANGE gpa \(hex(gpa)) + \(npages) pages overflows")
        }
        try setRange(gfn, npages, private: attrs & MapGPARange.encrypted != 0)
    }

    /// The value for run->hypercall.ret: 0, or -KVM_EINVAL.
    public func mapGPARangeRet(gpa: UInt64, npages: UInt64, attrs: UInt64) -> (ret: Int64, error: SevError?) {
        do throws(SevError) {
            try mapGPARange(gpa: gpa, npages: npages, attrs: attrs)
            return (0, nil)
        } catch {
            return (-MapGPARange.kvmEINVAL, error)
        }
    }
}

/// MSR_KVM_MIGRATION_CONTROL (0x4b564d08; bit 0 KVM_MIGRATION_READY) as the
/// guest last wrote it, and whether an outgoing migration requires it.
public enum MigrationControl {
    public static let msr: UInt32 = 0x4b56_4d08
    public static let ready: UInt64 = 1
}

extension Tracker {
    public func setMigrationControl(_ v: UInt64) throws(SevError) {
        if v & ~MigrationControl.ready != 0 {
            throw .invalid("MSR_KVM_MIGRATION_CONTROL value \(hex(v)): reserved bits set (only bit 0 is defined)")
        }
        unsafe core.pointee.migrationControlValue.store(v, ordering: .releasing)
    }
    public var migrationControl: UInt64 { unsafe core.pointee.migrationControlValue.load(ordering: .acquiring) }

    public func setRequireReady(_ on: Bool) { unsafe core.pointee.requireReadyFlag.store(on, ordering: .releasing) }
    public var requireReady: Bool { unsafe core.pointee.requireReadyFlag.load(ordering: .acquiring) }

    /// Why an outgoing migration may not start now, or nil if it may.
    public func migrationRefusal() -> SevError? {
        if requireReady && migrationControl & MigrationControl.ready == 0 {
            return SevError(EAGAIN, "guest has not declared itself migration-ready (MSR_KVM_MIGRATION_CONTROL = \(hex(migrationControl)), bit 0 clear)")
        }
        return nil
    }
}
