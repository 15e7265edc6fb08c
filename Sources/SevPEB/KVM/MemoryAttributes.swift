import CSevPEBShims

/// KVM per-page memory attributes (Linux 6.8, docs/SOURCES.md §3.6).
public enum MemoryAttributes {
    /// KVM_MEMORY_ATTRIBUTE_PRIVATE (1 << 3).
    public static let privateBit: UInt64 = SEVPEB_KVM_MEMORY_ATTRIBUTE_PRIVATE
}

extension KVMBinding {
    /// Apply the tracker's state to a guest_memfd VM's memory attributes (the
    /// destination after a successful load): private pages get
    /// KVM_MEMORY_ATTRIBUTE_PRIVATE, shared pages 0.
    ///
    /// Kernel: KVM_CHECK_EXTENSION(KVM_CAP_MEMORY_ATTRIBUTES) "returns the
    /// supported attribute mask" (must contain PRIVATE), then
    /// KVM_SET_MEMORY_ATTRIBUTES per run (see `VMFD.setMemoryAttributes`).
    /// Runs are coalesced: within each stretch of touching slots, one ioctl
    /// per maximal private run and one per maximal shared run (a stretch
    /// with no shared page costs one ioctl). GFNs between stretches (holes,
    /// MMIO) are left alone. Not atomic across runs: call with vCPUs stopped.
    /// - Returns: the number of KVM_SET_MEMORY_ATTRIBUTES ioctls issued.
    /// - Throws: EBADF (not bound), EOPNOTSUPP (seed dialect, or the VM
    ///   reports no PRIVATE attribute: not a guest_memfd VM type / kernel <
    ///   6.8), the ioctl's errno (state of later runs then unchanged).
    public func applyMemoryAttributes(_ tracker: Tracker) throws(SevError) -> Int {
        try locked { () throws(SevError) -> Int in
            let b = try require("apply memory attributes")
            if b.dialect.seed != nil {
                throw SevError(EOPNOTSUPP, "memory attributes are upstream ABI; VM is bound with the \(b.dialect.name) dialect")
            }
            let mask: UInt64
            do throws(Errno) { mask = UInt64(try b.fd.checkExtension(.memoryAttributes)) } catch {
                throw kvmError(error, "KVM_CHECK_EXTENSION(KVM_CAP_MEMORY_ATTRIBUTES)")
            }
            if mask & MemoryAttributes.privateBit == 0 {
                throw SevError(EOPNOTSUPP, "VM reports memory attribute mask \(hex(mask)): no KVM_MEMORY_ATTRIBUTE_PRIVATE (not a guest_memfd VM, or Linux < 6.8)")
            }
            var ioctls = 0
            func emit(_ gfn: UInt64, _ n: UInt64, _ priv: Bool) throws(SevError) {
                if n == 0 { return }
                do throws(Errno) {
                    try b.fd.setMemoryAttributes(address: gfn << 12, size: n << 12,
                                                 attributes: priv ? MemoryAttributes.privateBit : 0)
                } catch {
                    throw kvmError(error, "KVM_SET_MEMORY_ATTRIBUTES(gpa \(hex(gfn << 12)), \(n) pages, \(priv ? "PRIVATE" : "0"))")
                }
                ioctls &+= 1
            }
            let layout = try tracker.stretches()
            for i in 0..<layout.count {
                let (start, end) = layout[i]
                var cur = start
                while cur < end {
                    guard let run = tracker.nextSharedRun(from: cur), run.gfn < end else {
                        try emit(cur, end &- cur, true)
                        break
                    }
                    try emit(cur, run.gfn &- cur, true)
                    let runEnd = min(run.gfn &+ run.pages, end)
                    try emit(run.gfn, runEnd &- run.gfn, false)
                    cur = runEnd
                }
            }
            return ioctls
        }
    }
}
