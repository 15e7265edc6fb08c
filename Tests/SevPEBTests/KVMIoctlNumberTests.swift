import CSevPEBShims
import Testing
@testable import SevPEB

/// Every ioctl number in KVM/IoctlNumbers.swift, pinned to the literal hex in
/// docs/SOURCES.md (sections 2.1, 3.6, 3.8) and, where the Debian 6.1
/// <linux/kvm.h> has the ioctl, to the system header's own macro (the way
/// vmm-sys-util's test_ioctl_macros pins its computed numbers).
/// The ioctls the tests use to make their own VMs: test-only, so not in the
/// library's API (KVM/IoctlNumbers.swift).
extension KVMIoctl {
    /// KVM_CREATE_VM, `_IO(KVMIO, 0x01)` = 0xAE01.
    static let createVM = IoctlRequest.io(kvmio, 0x01)
    /// KVM_GET_VCPU_MMAP_SIZE, `_IO(KVMIO, 0x04)` = 0xAE04.
    static let getVCPUMmapSize = IoctlRequest.io(kvmio, 0x04)
    /// KVM_CREATE_VCPU, `_IO(KVMIO, 0x41)` = 0xAE41.
    static let createVCPU = IoctlRequest.io(kvmio, 0x41)
    /// KVM_SET_USER_MEMORY_REGION, `_IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)` = 0x4020AE46.
    static let setUserMemoryRegion = IoctlRequest.iow(kvmio, 0x46, kvm_userspace_memory_region.self)
}

@Suite struct KVMIoctlNumberTests {
    @Test func upstreamNumbers() {
        #expect(KVMIoctl.createVM.rawValue == 0xAE01)
        #expect(KVMIoctl.checkExtension.rawValue == 0xAE03)
        #expect(KVMIoctl.getVCPUMmapSize.rawValue == 0xAE04)
        #expect(KVMIoctl.createVCPU.rawValue == 0xAE41)
        #expect(KVMIoctl.setUserMemoryRegion.rawValue == 0x4020_AE46)
        #expect(KVMIoctl.enableCap.rawValue == 0x4068_AEA3)
        #expect(KVMIoctl.x86SetMSRFilter.rawValue == 0x4188_AEC6)
        #expect(KVMIoctl.setMemoryAttributes.rawValue == 0x4020_AED2)   // docs/SOURCES.md §3.6
    }

    @Test func upstreamNumbersMatchTheSystemHeader() {
        #expect(KVMIoctl.createVM.rawValue == sevpeb_shim_sys_KVM_CREATE_VM())
        #expect(KVMIoctl.checkExtension.rawValue == sevpeb_shim_sys_KVM_CHECK_EXTENSION())
        #expect(KVMIoctl.getVCPUMmapSize.rawValue == sevpeb_shim_sys_KVM_GET_VCPU_MMAP_SIZE())
        #expect(KVMIoctl.createVCPU.rawValue == sevpeb_shim_sys_KVM_CREATE_VCPU())
        #expect(KVMIoctl.setUserMemoryRegion.rawValue == sevpeb_shim_sys_KVM_SET_USER_MEMORY_REGION())
        #expect(KVMIoctl.enableCap.rawValue == sevpeb_shim_sys_KVM_ENABLE_CAP())
        #expect(KVMIoctl.x86SetMSRFilter.rawValue == sevpeb_shim_sys_KVM_X86_SET_MSR_FILTER())
    }

    @Test func seedNumbersFromDomainMd() {
        // docs/SOURCES.md §2.1: v6
        #expect(SeedIoctl.v6Get.rawValue == 0x4018_AEC5)
        #expect(SeedIoctl.v6Set.rawValue == 0x4018_AEC6)
        #expect(SeedIoctl.v6Reset.rawValue == 0x0000_AEC7)
        // v7-v9: same struct, GET 0xc6, SET 0xc7
        #expect(SeedIoctl.v7Get.rawValue == 0x4018_AEC6)
        #expect(SeedIoctl.v7Set.rawValue == 0x4018_AEC7)
        #expect(MemoryLayout<sevpeb_kvm_page_enc_bitmap>.size == 24)
        #expect(MemoryLayout<sevpeb_kvm_memory_attributes>.size == 32)
    }

    /// docs/SOURCES.md §3.8: the seed numbers collide with upstream ioctls.
    @Test func collisionTable() {
        #expect(SeedIoctl.v6Reset.rawValue == sevpeb_shim_sys_KVM_RESET_DIRTY_RINGS())   // bit-identical
        #expect(SeedIoctl.v6Set.nr == KVMIoctl.x86SetMSRFilter.nr)                       // same nr 0xc6,
        #expect(SeedIoctl.v6Set.size != KVMIoctl.x86SetMSRFilter.size)                   // other size
        #expect(SeedIoctl.v7Get.rawValue == SeedIoctl.v6Set.rawValue)                   // v7 GET = v6 SET
        #expect(SeedIoctl.v6Get.nr == UInt8(truncatingIfNeeded: sevpeb_shim_sys_KVM_S390_PV_COMMAND()))
        #expect(SeedIoctl.v6Get.rawValue != sevpeb_shim_sys_KVM_S390_PV_COMMAND())       // _IOWR there
    }

    @Test func fieldsDecode() {
        let r = KVMIoctl.x86SetMSRFilter
        #expect(r.type == 0xAE && r.nr == 0xc6 && r.size == 0x188 && r.direction == .write)
        #expect(SeedIoctl.v6Reset.direction == .none && SeedIoctl.v6Reset.size == 0)
        #expect(MemoryLayout<kvm_msr_filter>.size == 0x188)
        #expect(MemoryLayout<kvm_enable_cap>.size == 0x68)
    }

    @Test func capabilityAndFeatureNumbers() {
        #expect(KVMCap.exitHypercall.rawValue == 201)
        #expect(KVMCap.x86UserSpaceMSR.rawValue == 188)
        #expect(KVMCap.x86MSRFilter.rawValue == 189)
        #expect(KVMCap.memoryAttributes.rawValue == 233)
        #expect(UpstreamKVM.hypercallExitMapGPARange == 0x1000)
        #expect(UpstreamKVM.featureHCMapGPARange == 16 && UpstreamKVM.featureMigrationControl == 17)
        #expect(MigrationControl.msr == 0x4b56_4d08)
        #expect(MemoryAttributes.privateBit == 8)
    }
}
