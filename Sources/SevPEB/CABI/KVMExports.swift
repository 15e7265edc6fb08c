import CSevPEB
import CSevPEBShims

// The KVM section of include/sevpeb.h. Thin: validate, call the KVM layer
// (Sources/SevPEB/KVM), map errors. Nothing here traps.

@c @implementation
public func sevpeb_kvm_bind(_ t: OpaquePointer?, _ fd: Int32, _ dialect: UInt32) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        cCall { () throws(SevError) -> Int32 in
            guard let d = KVMDialect(rawValue: dialect) else {
                throw SevError(EINVAL, "dialect \(dialect): not SEVPEB_KVM_UPSTREAM (0), SEVPEB_KVM_SEED_V6 (6) or SEVPEB_KVM_SEED_V7_V9 (7)")
            }
            try h.kvm.bind(fd: VMFD(rawValue: fd), dialect: d)
            return 0
        }
    }
}

@c @implementation
public func sevpeb_kvm_unbind(_ t: OpaquePointer?) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in h.kvm.unbind(); return 0 }
}

@c @implementation
public func sevpeb_kvm_enable_hypercall_exit(_ t: OpaquePointer?) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in cCall { () throws(SevError) -> Int32 in _ = try h.kvm.enableHypercallExit(); return 0 } }
}

// SAFETY: run is checked for NULL; it is the vCPU's mmap'ed kvm_run, valid while the VMM handles this exit (header).
@c @implementation
public func sevpeb_kvm_handle_hypercall(_ t: OpaquePointer?, _ run: UnsafeMutablePointer<kvm_run>?) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        guard let run = unsafe run else { setLastError(SevError(EINVAL, "run is NULL")); return -EINVAL }
        let (handled, err) = unsafe KVMExits.handleHypercall(run, h.tracker)
        if let err { setLastError(err) }
        return handled ? 1 : 0
    }
}

@c @implementation
public func sevpeb_kvm_install_msr_filter(_ t: OpaquePointer?, _ flags: UInt32) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        cCall { () throws(SevError) -> Int32 in
            if flags & ~UInt32(SEVPEB_KVM_MSR_FILTER_BY_VMM) != 0 {
                throw SevError(EINVAL, "flags \(hex(UInt64(flags))): only SEVPEB_KVM_MSR_FILTER_BY_VMM (1) is defined")
            }
            try h.kvm.installMSRFilter(byVMM: flags != 0)
            return 0
        }
    }
}

// SAFETY: range and bitmap are checked for NULL; one range struct and one bitmap byte are written, as the header documents.
@c @implementation
public func sevpeb_kvm_msr_filter_range(_ range: UnsafeMutablePointer<kvm_msr_filter_range>?, _ bitmap: UnsafeMutablePointer<UInt8>?) -> Int32 {
    guard let range = unsafe range, let bitmap = unsafe bitmap else {
        setLastError(SevError(EINVAL, "range or bitmap pointer is NULL"))
        return -EINVAL
    }
    unsafe KVMExits.msrFilterRange(range, bitmap)
    return 0
}

// SAFETY: run is checked for NULL; it is the vCPU's mmap'ed kvm_run, valid while the VMM handles this exit (header).
@c @implementation
public func sevpeb_kvm_handle_msr_exit(_ t: OpaquePointer?, _ run: UnsafeMutablePointer<kvm_run>?) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        guard let run = unsafe run else { setLastError(SevError(EINVAL, "run is NULL")); return -EINVAL }
        let (handled, err) = unsafe KVMExits.handleMSRExit(run, h.tracker)
        if let err { setLastError(err) }
        return handled ? 1 : 0
    }
}

// SAFETY: eax is checked for NULL and written once.
@c @implementation
public func sevpeb_kvm_cpuid_features(_ t: OpaquePointer?, _ eax: UnsafeMutablePointer<UInt32>?) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        cCall { () throws(SevError) -> Int32 in
            guard let eax = unsafe eax else { throw SevError(EINVAL, "eax pointer is NULL") }
            unsafe eax.pointee = h.kvm.cpuidFeatures()
            return 0
        }
    }
}

@c @implementation
public func sevpeb_kvm_may_migrate(_ t: OpaquePointer?) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        if let why = h.kvm.migrationRefusal(h.tracker) { setLastError(why); return 0 }
        return 1
    }
}

@c @implementation
public func sevpeb_kvm_apply_memory_attributes(_ t: OpaquePointer?) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        cCall { () throws(SevError) -> Int32 in
            Int32(clamping: try h.kvm.applyMemoryAttributes(h.tracker))
        }
    }
}

// SAFETY: dst is checked for NULL and written within ceil(npages/8) bytes, checked against len first.
@c @implementation
public func sevpeb_kvm_kernel_get_bitmap(_ t: OpaquePointer?, _ gfn: UInt64, _ npages: UInt64,
                                         _ dst: UnsafeMutablePointer<UInt8>?, _ len: Int) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        cCall { () throws(SevError) -> Int32 in
            guard let dst = unsafe dst else { throw SevError(EINVAL, "dst is NULL") }
            unsafe try h.kvm.kernelGetBitmap(gfn, npages, dst, len)
            return 0
        }
    }
}

// SAFETY: src may be NULL (all private); otherwise read within ceil(npages/8) bytes, checked against len first (kernelSetBitmap).
@c @implementation
public func sevpeb_kvm_kernel_set_bitmap(_ t: OpaquePointer?, _ gfn: UInt64, _ npages: UInt64,
                                         _ src: UnsafePointer<UInt8>?, _ len: Int) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        cCall { () throws(SevError) -> Int32 in
            unsafe try h.kvm.kernelSetBitmap(h.tracker, gfn, npages, src, len)
            return 0
        }
    }
}

// SAFETY: npages is checked for NULL and written once.
@c @implementation
public func sevpeb_kvm_kernel_bitmap_size(_ t: OpaquePointer?, _ npages: UnsafeMutablePointer<UInt64>?) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        cCall { () throws(SevError) -> Int32 in
            guard let npages = unsafe npages else { throw SevError(EINVAL, "npages pointer is NULL") }
            unsafe npages.pointee = try h.kvm.kernelBitmapSize(h.tracker)
            return 0
        }
    }
}

@c @implementation
public func sevpeb_kvm_sync_from_kernel(_ t: OpaquePointer?) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in cCall { () throws(SevError) -> Int32 in try h.kvm.syncFromKernel(h.tracker) ? 1 : 0 } }
}

@c @implementation
public func sevpeb_kvm_push_to_kernel(_ t: OpaquePointer?) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in cCall { () throws(SevError) -> Int32 in try h.kvm.pushToKernel(h.tracker); return 0 } }
}

@c @implementation
public func sevpeb_kvm_reset_kernel(_ t: OpaquePointer?) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in cCall { () throws(SevError) -> Int32 in try h.kvm.resetKernel(); return 0 } }
}
