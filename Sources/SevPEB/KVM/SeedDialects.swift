import CSevPEBShims

// The seed's out-of-tree kernel dialects (docs/SOURCES.md §2), behind the
// `KVMDialect` the VMM picks in sevpeb_kvm_bind. Nothing here runs unless the
// binding's dialect is .seedV6 or .seedV7to9, so an upstream VM never sees
// 0x4018AEC5/0x4018AEC6/0xAEC7/0x4018AEC7.
//
// On top of either dialect sevpeb offers what Steve Rutherford asked for on
// 2020-04-10 (docs/SOURCES.md §2.8): one "set exact values / reset" call, GET of
// any range, the kernel's size, and the opt-in itself (the bind). It hides
// each dialect's quirks:
//   v6 SET only clears bits, and scans its source from index start_gfn
//      (right only for start_gfn == 0): sevpeb always SETs from GFN 0 over a
//      buffer composed from a GET, and when a bit must go 0 -> 1 it RESETs
//      first, then clears.
//   v7-v9 SET copies whole 64-bit words to BIT_WORD(start_gfn): sevpeb widens
//      every SET to 64-aligned words and first GETs the edge words, so the
//      neighbours are written back unchanged.
// Both kernels kmalloc ALIGN(num_pages, 64) / 8 bytes per GET/SET, so GETs
// and v7-v9 SETs go in pieces of `seedChunkPages`. A v6 SET cannot be split
// (its start must be 0): beyond 2^25 pages (128 GiB) the v6 kernel itself may
// fail it with ENOMEM (our reading of kmalloc's limit).
//
// Read-modify-write sequences (v6 GET+RESET+SET, v7-v9 edge GET+SET) are not
// atomic against the guest's in-kernel hypercall: push/set/reset with the
// vCPUs stopped (destination before start, reboot). GET is safe any time.

/// Pages per seed GET / v7-v9 SET ioctl (256 KiB of bits; a multiple of 64).
let seedChunkPages: UInt64 = 1 << 21

extension KVMBinding {
    // MARK: raw ioctls (one each)

    /// KVM_GET_PAGE_ENC_BITMAP: bit i of dst = gfn + i, 1 = encrypted.
    ///
    /// Kernel (v6 09/14; v8/v9 unchanged but numbered 0xc6): "The encrypted
    /// VMs have concept of private and shared pages ... The ioctl can be used
    /// to get page encryption bitmap." Any start_gfn; pages beyond the
    /// kernel's bitmap read as 1; copies ceil(num_pages / 8) bytes and keeps
    /// the bits of the user's last byte above num_pages. Errors: ENOTTY (not
    /// an SEV guest), ENOMEM, EFAULT.
    ///
    /// The corresponding C ioctl is `KVM_GET_PAGE_ENC_BITMAP` (v6 0x4018AEC5, v7-v9 0x4018AEC6).
    // SAFETY: dst is valid for ceil(n/8) bytes (callers size it); the kernel writes within the range the ioctl names.
    func seedRawGet(_ fd: VMFD, _ d: SeedDialect, _ gfn: UInt64, _ n: UInt64, _ dst: UnsafeMutableRawPointer) throws(SevError) {
        var arg = unsafe sevpeb_kvm_page_enc_bitmap()
        unsafe arg.start_gfn = gfn
        unsafe arg.num_pages = n
        unsafe arg.enc_bitmap = unsafe dst
        let req: IoctlRequest
        switch d {
        case .v6: req = SeedIoctl.v6Get
        case .v7to9: req = SeedIoctl.v7Get
        }
        do throws(Errno) { _ = unsafe try fd.ioctl(req, writing: &arg) } catch {
            throw kvmError(error, "KVM_GET_PAGE_ENC_BITMAP(\(d.dialect.name), gfn \(hex(gfn)), \(n) pages)")
        }
    }

    /// KVM_SET_PAGE_ENC_BITMAP.
    ///
    /// Kernel v6 (11/14, nr 0xc6): copies ALIGN(num_pages, 64) / 8 bytes,
    /// grows the bitmap to gfn_end, then `i = gfn_start;
    /// for_each_clear_bit_from(i, bitmap, gfn_end - gfn_start)
    /// clear_bit(i + gfn_start, page_enc_bmap)` — only clears.
    /// Kernel v7-v9 (v8 11/18, nr 0xc7): NULL enc_bitmap => bitmap_fill of the
    /// whole bitmap; else grows to gfn_end and `bitmap_copy(page_enc_bmap +
    /// BIT_WORD(gfn_start), bitmap, gfn_end - gfn_start)` — whole words.
    /// Errors: ENOTTY, ENOMEM, EFAULT.
    ///
    /// The corresponding C ioctl is `KVM_SET_PAGE_ENC_BITMAP` (v6 0x4018AEC6, v7-v9 0x4018AEC7).
    // SAFETY: src (if not NULL) is valid for ceil(n/8) bytes (callers size it); the kernel only reads it.
    func seedRawSet(_ fd: VMFD, _ d: SeedDialect, _ gfn: UInt64, _ n: UInt64, _ src: UnsafeMutableRawPointer?) throws(SevError) {
        var arg = unsafe sevpeb_kvm_page_enc_bitmap()
        unsafe arg.start_gfn = gfn
        unsafe arg.num_pages = n
        unsafe arg.enc_bitmap = unsafe src
        let req: IoctlRequest
        switch d {
        case .v6: req = SeedIoctl.v6Set
        case .v7to9: req = SeedIoctl.v7Set
        }
        do throws(Errno) { _ = unsafe try fd.ioctl(req, writing: &arg) } catch {
            throw kvmError(error, unsafe "KVM_SET_PAGE_ENC_BITMAP(\(d.dialect.name), gfn \(hex(gfn)), \(n) pages\(src == nil ? ", NULL" : ""))")
        }
    }

    /// Reset the whole kernel bitmap to encrypted.
    ///
    /// Kernel v6 (12/14): KVM_PAGE_ENC_BITMAP_RESET `_IO(KVMIO, 0xc7)`, "used
    /// to reset the guest's page encryption bitmap during guest reboot";
    /// v7-v9: KVM_SET_PAGE_ENC_BITMAP with enc_bitmap NULL ("special case of
    /// resetting the complete bitmap").
    ///
    /// 0xAEC7 is also upstream KVM_RESET_DIRTY_RINGS (Linux 5.11): before
    /// issuing it, the v6 path asks KVM_CHECK_EXTENSION for
    /// KVM_CAP_DIRTY_LOG_RING (192) and KVM_CAP_DIRTY_LOG_RING_ACQ_REL (223)
    /// and refuses with EOPNOTSUPP if either is there — the v6 kernel (5.6)
    /// has neither, so such a kernel is not v6 and would reset dirty rings.
    func seedRawReset(_ fd: VMFD, _ d: SeedDialect) throws(SevError) {
        switch d {
        case .v6:
            for cap in [KVMCap.dirtyLogRing, KVMCap.dirtyLogRingAcqRel] {
                let n: Int32
                do throws(Errno) { n = try fd.checkExtension(cap) } catch {
                    throw kvmError(error, "KVM_CHECK_EXTENSION(\(cap.name)) before KVM_PAGE_ENC_BITMAP_RESET(seed v6)")
                }
                if n != 0 {
                    throw SevError(EOPNOTSUPP, "KVM_PAGE_ENC_BITMAP_RESET(seed v6) refused: this kernel has \(cap.name) (\(n)), so 0xAEC7 is KVM_RESET_DIRTY_RINGS here, not the v6 reset")
                }
            }
            do throws(Errno) { _ = try fd.ioctl(SeedIoctl.v6Reset) } catch {
                throw kvmError(error, "KVM_PAGE_ENC_BITMAP_RESET(seed v6)")
            }
        case .v7to9:
            unsafe try seedRawSet(fd, d, 0, 0, nil)
        }
    }

    /// The binding, which must be a seed dialect (EOPNOTSUPP for upstream).
    func requireSeed(_ what: String) throws(SevError) -> (fd: VMFD, seed: SeedDialect) {
        let b = try require(what)
        guard let seed = b.dialect.seed else {
            throw SevError(EOPNOTSUPP, "\(what): the VM is bound with the upstream dialect, whose kernel keeps no page-encryption bitmap")
        }
        return (b.fd, seed)
    }

    // MARK: Steve Rutherford's API on either dialect

    /// GET of any range from the kernel's bitmap into dst (LSB-first bytes,
    /// 1 = private; bits of the last byte above n kept), in pieces.
    /// - Throws: EINVAL (n == 0, overflow), ENOSPC (dstLen < ceil(n/8)),
    ///   EBADF, EOPNOTSUPP (upstream), ioctl errnos.
    // SAFETY: dst is valid for dstLen bytes (C caller, checked non-NULL); ceil(n/8) <= dstLen is checked before it is written.
    public func kernelGetBitmap(_ gfn: UInt64, _ n: UInt64, _ dst: UnsafeMutablePointer<UInt8>, _ dstLen: Int) throws(SevError) {
        try locked { () throws(SevError) in
            let b = try requireSeed("kernel GET_PAGE_ENC_BITMAP")
            try checkSeedRange(gfn, n)
            let need = (n &+ 7) >> 3
            if UInt64(dstLen) < need { throw SevError(ENOSPC, "buffer of \(dstLen) bytes too small for \(n) pages (need \(need))") }
            unsafe try getChunked(b.fd, b.seed, gfn, n, dst)
        }
    }

    /// Set the kernel's bits for [gfn, gfn + n) to exactly `src` (LSB-first,
    /// 1 = private); `src` nil makes the range private. Other GFNs keep their
    /// kernel state (v6: up to the layout's end and what sevpeb has written;
    /// see the file comment).
    // SAFETY: src (if not nil) is valid for srcLen bytes (C caller); ceil(n/8) <= srcLen is checked before it is read.
    public func kernelSetBitmap(_ tracker: Tracker, _ gfn: UInt64, _ n: UInt64, _ src: UnsafePointer<UInt8>?, _ srcLen: Int) throws(SevError) {
        try locked { () throws(SevError) in
            let b = try requireSeed("kernel SET_PAGE_ENC_BITMAP")
            try checkSeedRange(gfn, n)
            let need = (n &+ 7) >> 3
            if unsafe src != nil, UInt64(srcLen) < need {
                throw SevError(ENOSPC, "source of \(srcLen) bytes too small for \(n) pages (need \(need))")
            }
            var range = MemList<(UInt64, UInt64)>()
            if !range.append((gfn, gfn &+ n)) { throw .noMemory("out of memory allocating a one-range list") }
            try writeExact(b.fd, b.seed, tracker, range) { (scratch, _, _) throws(SevError) in
                if let src = unsafe src {
                    _ = unsafe try scratch.setBitmap(gfn, n, src, Int(need))
                } else {
                    _ = try scratch.setRange(gfn, n, private: true)
                }
            }
        }
    }

    /// Make the whole kernel bitmap private (cold reboot). Upstream: nothing
    /// to do (returns normally).
    public func resetKernel() throws(SevError) {
        try locked { () throws(SevError) in
            let b = try require("reset the kernel bitmap")
            guard let seed = b.dialect.seed else { return }
            try seedRawReset(b.fd, seed)
        }
    }

    /// Pages the kernel's bitmap covers: v7-v9 size it at
    /// KVM_SET_USER_MEMORY_REGION to the highest memslot end (v8 12/18), which
    /// is the tracker layout's end when the layout mirrors the memslots; v6
    /// grows it lazily with every hypercall and SET, so only what sevpeb
    /// itself has written is known (0 before the first set/push).
    public func kernelBitmapSize(_ tracker: Tracker) throws(SevError) -> UInt64 {
        try locked { () throws(SevError) -> UInt64 in
            switch try requireSeed("kernel bitmap size").seed {
            case .v6: return v6Covered
            case .v7to9: return tracker.layoutEnd
            }
        }
    }

    // MARK: sync points

    /// Source: pull the kernel's bits for every slot into the tracker (before
    /// each encode: every iteration and at completion). Changed pages reach
    /// the change callback as usual. Upstream: nothing to pull.
    /// - Returns: whether any tracker page changed.
    public func syncFromKernel(_ tracker: Tracker) throws(SevError) -> Bool {
        try locked { () throws(SevError) -> Bool in
            let b = try require("sync from the kernel")
            guard let seed = b.dialect.seed else { return false }
            guard let buf = unsafe Mem.calloc(Int(seedChunkPages >> 3), UInt8.self) else { throw .noMemory("out of memory allocating the sync buffer") }
            defer { unsafe Mem.free(buf) }
            var changed = false
            let layout = try tracker.stretches()
            for i in 0..<layout.count {
                let (start, end) = layout[i]
                var cs = start
                while cs < end {
                    let len = min(seedChunkPages, end &- cs)
                    unsafe try seedRawGet(b.fd, seed, cs, len, buf)
                    if unsafe try tracker.setBitmap(cs, len, buf, Int((len &+ 7) >> 3)) { changed = true }
                    cs &+= len
                }
            }
            return changed
        }
    }

    /// Destination: push the tracker's state (after a successful load) into
    /// the kernel's bitmap, exactly, for every slot. Upstream: nothing to
    /// push (guest_memfd VMs: `applyMemoryAttributes`).
    public func pushToKernel(_ tracker: Tracker) throws(SevError) {
        try locked { () throws(SevError) in
            let b = try require("push to the kernel")
            guard let seed = b.dialect.seed else { return }
            let ranges = try tracker.stretches()
            if ranges.count == 0 { return }
            guard let tmp = unsafe Mem.calloc(Int(seedChunkPages >> 3), UInt8.self) else { throw .noMemory("out of memory allocating the push buffer") }
            defer { unsafe Mem.free(tmp) }
            try writeExact(b.fd, seed, tracker, ranges) { (scratch, gfn, n) throws(SevError) in
                // The tracker's bits into the scratch bitmap, a piece at a time
                var off: UInt64 = 0
                while off < n {
                    let len = min(seedChunkPages, n &- off)
                    unsafe try tracker.getBitmap(gfn &+ off, len, tmp, Int(seedChunkPages >> 3))
                    _ = unsafe try scratch.setBitmap(gfn &+ off, len, tmp, Int(seedChunkPages >> 3))
                    off &+= len
                }
            }
        }
    }

    // MARK: quirk hiding

    func checkSeedRange(_ gfn: UInt64, _ n: UInt64) throws(SevError) {
        if n == 0 { throw SevError(EINVAL, "npages 0: must be > 0") }
        let (end, o) = gfn.addingReportingOverflow(n)
        if o || end > Tracker.gfnLimit {
            throw SevError(ERANGE, "gfn \(hex(gfn)) + \(n) pages beyond GFN limit \(hex(Tracker.gfnLimit))")
        }
    }

    // SAFETY: dst is valid for ceil(n/8) bytes; each piece is written at its own byte offset within that.
    func getChunked(_ fd: VMFD, _ d: SeedDialect, _ gfn: UInt64, _ n: UInt64, _ dst: UnsafeMutablePointer<UInt8>) throws(SevError) {
        var off: UInt64 = 0
        while off < n {
            let len = min(seedChunkPages, n &- off)
            unsafe try seedRawGet(fd, d, gfn &+ off, len, dst + Int(off >> 3))
            off &+= len
        }
    }

    /// The new state of [gfn, gfn + n) written into `scratch`, a tracker
    /// with one slot covering the range (so bits at any offset go through
    /// the tracker's public setBitmap / setRange, never by hand).
    typealias Fill = (_ scratch: Tracker, _ gfn: UInt64, _ n: UInt64) throws(SevError) -> Void

    /// Write exact bits for each range [start, end).
    func writeExact(_ fd: VMFD, _ d: SeedDialect, _ tracker: Tracker, _ ranges: borrowing MemList<(UInt64, UInt64)>,
                    _ fill: Fill) throws(SevError) {
        switch d {
        case .v6:
            try writeV6(fd, tracker, ranges, fill)
        case .v7to9:
            for i in 0..<ranges.count { try writeV7(fd, ranges[i].0, ranges[i].1 &- ranges[i].0, fill) }
        }
    }

    /// A tracker with one slot [base, base + pages), all private; the
    /// caller destroys it.
    func scratchBitmap(_ base: UInt64, _ pages: UInt64) throws(SevError) -> Tracker {
        let t = try Tracker.create()
        do throws(SevError) { try t.addSlot(base: base, pages: pages) } catch {
            t.destroy()
            throw error
        }
        return t
    }

    /// v7-v9: widen to 64-aligned words; GET the edge pieces first so the
    /// neighbours' bits go back unchanged; then SET piece by piece.
    func writeV7(_ fd: VMFD, _ gfn: UInt64, _ n: UInt64, _ fill: Fill) throws(SevError) {
        let end = gfn &+ n
        let a = gfn & ~63
        let z = (end &+ 63) & ~63
        let bufBytes = Int(seedChunkPages >> 3)
        guard let buf = unsafe Mem.calloc(bufBytes, UInt8.self) else { throw .noMemory("out of memory allocating the SET buffer") }
        defer { unsafe Mem.free(buf) }
        let scratch = try scratchBitmap(a, z &- a)
        defer { scratch.destroy() }
        var cs = a
        while cs < z {
            let ce = min(cs &+ seedChunkPages, z)
            if cs < gfn || ce > end {
                unsafe try seedRawGet(fd, .v7to9, cs, ce &- cs, buf)
                _ = unsafe try scratch.setBitmap(cs, ce &- cs, buf, bufBytes)
            }
            cs = ce
        }
        try fill(scratch, gfn, n)
        cs = a
        while cs < z {
            let ce = min(cs &+ seedChunkPages, z)
            unsafe try scratch.getBitmap(cs, ce &- cs, buf, bufBytes)
            unsafe try seedRawSet(fd, .v7to9, cs, ce &- cs, buf)
            cs = ce
        }
    }

    /// v6: compose [0, total) from a GET, overlay the new bits; RESET first if
    /// any bit must go 0 -> 1; then one SET from GFN 0 (which only clears).
    func writeV6(_ fd: VMFD, _ tracker: Tracker, _ ranges: borrowing MemList<(UInt64, UInt64)>, _ fill: Fill) throws(SevError) {
        var total = max(tracker.layoutEnd, v6Covered)
        for i in 0..<ranges.count { total = max(total, ranges[i].1) }
        // The kernel copies ALIGN(total, 64) / 8 bytes: whole words
        let bytes = Int((total &+ 63) >> 6) &* 8
        guard let old = unsafe Mem.calloc(bytes, UInt8.self) else { throw .noMemory("out of memory allocating the v6 bitmap") }
        defer { unsafe Mem.free(old) }
        guard let new = unsafe Mem.calloc(bytes, UInt8.self) else { throw .noMemory("out of memory allocating the v6 bitmap") }
        defer { unsafe Mem.free(new) }
        unsafe old.update(repeating: 0xff, count: bytes)
        unsafe try getChunked(fd, .v6, 0, total, old)
        unsafe new.update(from: old, count: bytes)
        let scratch = try scratchBitmap(0, total)
        defer { scratch.destroy() }
        _ = unsafe try scratch.setBitmap(0, total, old, bytes)
        for i in 0..<ranges.count { try fill(scratch, ranges[i].0, ranges[i].1 &- ranges[i].0) }
        unsafe try scratch.getBitmap(0, total, new, bytes)
        var needReset = false, differs = false
        for i in 0..<bytes {
            if unsafe new[i] & ~old[i] != 0 { needReset = true }
            if unsafe new[i] != old[i] { differs = true }
        }
        if !differs { return }
        if needReset { try seedRawReset(fd, .v6) }
        // SAFETY: new is the Mem buffer of `bytes` = ceil(total/8) bytes that the SET of total pages reads.
        unsafe try seedRawSet(fd, .v6, 0, total, UnsafeMutableRawPointer(new))
        v6Covered = max(v6Covered, total)
    }
}
