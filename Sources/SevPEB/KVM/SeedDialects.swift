import CSevPEBShims

// The seed's out-of-tree kernel dialects (domain.md §2), behind the
// `KVMDialect` the VMM picks in sevpeb_kvm_bind. Nothing here runs unless the
// binding's dialect is .seedV6 or .seedV7to9, so an upstream VM never sees
// 0x4018AEC5/0x4018AEC6/0xAEC7/0x4018AEC7.
//
// On top of either dialect sevpeb offers what Steve Rutherford asked for on
// 2020-04-10 (domain.md §2.8): one "set exact values / reset" call, GET of
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
    func seedRawGet(_ fd: VMFD, _ d: KVMDialect, _ gfn: UInt64, _ n: UInt64, _ dst: UnsafeMutableRawPointer) throws(SevError) {
        var arg = sevpeb_kvm_page_enc_bitmap()
        arg.start_gfn = gfn
        arg.num_pages = n
        arg.enc_bitmap = dst
        let req = d == .seedV6 ? SeedIoctl.v6Get : SeedIoctl.v7Get
        do throws(Errno) { _ = try fd.ioctl(req, writing: &arg) } catch {
            throw kvmError(error, "KVM_GET_PAGE_ENC_BITMAP(\(d.name), gfn \(hex(gfn)), \(n) pages)")
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
    func seedRawSet(_ fd: VMFD, _ d: KVMDialect, _ gfn: UInt64, _ n: UInt64, _ src: UnsafeMutableRawPointer?) throws(SevError) {
        var arg = sevpeb_kvm_page_enc_bitmap()
        arg.start_gfn = gfn
        arg.num_pages = n
        arg.enc_bitmap = src
        let req = d == .seedV6 ? SeedIoctl.v6Set : SeedIoctl.v7Set
        do throws(Errno) { _ = try fd.ioctl(req, writing: &arg) } catch {
            throw kvmError(error, "KVM_SET_PAGE_ENC_BITMAP(\(d.name), gfn \(hex(gfn)), \(n) pages\(src == nil ? ", NULL" : ""))")
        }
    }

    /// Reset the whole kernel bitmap to encrypted.
    ///
    /// Kernel v6 (12/14): KVM_PAGE_ENC_BITMAP_RESET `_IO(KVMIO, 0xc7)`, "used
    /// to reset the guest's page encryption bitmap during guest reboot";
    /// v7-v9: KVM_SET_PAGE_ENC_BITMAP with enc_bitmap NULL ("special case of
    /// resetting the complete bitmap").
    func seedRawReset(_ fd: VMFD, _ d: KVMDialect) throws(SevError) {
        if d == .seedV6 {
            do throws(Errno) { _ = try fd.ioctl(SeedIoctl.v6Reset) } catch {
                throw kvmError(error, "KVM_PAGE_ENC_BITMAP_RESET(seed v6)")
            }
        } else {
            try seedRawSet(fd, d, 0, 0, nil)
        }
    }

    func requireSeed(_ what: String) throws(SevError) -> (fd: VMFD, dialect: KVMDialect) {
        let b = try require(what)
        if b.dialect == .upstream {
            throw SevError(EOPNOTSUPP, "\(what): the VM is bound with the upstream dialect, whose kernel keeps no page-encryption bitmap")
        }
        return b
    }

    // MARK: Steve Rutherford's API on either dialect

    /// GET of any range from the kernel's bitmap into dst (LSB-first bytes,
    /// 1 = private; bits of the last byte above n kept), in pieces.
    /// - Throws: EINVAL (n == 0, overflow), ENOSPC (dstLen < ceil(n/8)),
    ///   EBADF, EOPNOTSUPP (upstream), ioctl errnos.
    public func kernelGetBitmap(_ gfn: UInt64, _ n: UInt64, _ dst: UnsafeMutablePointer<UInt8>, _ dstLen: Int) throws(SevError) {
        try locked { () throws(SevError) in
            let b = try requireSeed("kernel GET_PAGE_ENC_BITMAP")
            try checkSeedRange(gfn, n)
            let need = (n &+ 7) >> 3
            if UInt64(dstLen) < need { throw SevError(ENOSPC, "buffer of \(dstLen) bytes too small for \(n) pages (need \(need))") }
            try getChunked(b.fd, b.dialect, gfn, n, dst)
        }
    }

    /// Set the kernel's bits for [gfn, gfn + n) to exactly `src` (LSB-first,
    /// 1 = private); `src` nil makes the range private. Other GFNs keep their
    /// kernel state (v6: up to the layout's end and what sevpeb has written;
    /// see the file comment).
    public func kernelSetBitmap(_ tracker: Tracker, _ gfn: UInt64, _ n: UInt64, _ src: UnsafePointer<UInt8>?, _ srcLen: Int) throws(SevError) {
        try locked { () throws(SevError) in
            let b = try requireSeed("kernel SET_PAGE_ENC_BITMAP")
            try checkSeedRange(gfn, n)
            let need = (n &+ 7) >> 3
            if let src {
                if UInt64(srcLen) < need { throw SevError(ENOSPC, "source of \(srcLen) bytes too small for \(n) pages (need \(need))") }
                try writeExact(b.fd, b.dialect, tracker, [(gfn, n)]) { (dst, dstBit, g, count) throws(SevError) in
                    copyBits(src, g &- gfn, dst, dstBit, count)
                }
            } else {
                try writeExact(b.fd, b.dialect, tracker, [(gfn, n)]) { (dst, dstBit, _, count) throws(SevError) in
                    fillBits(dst, dstBit, count, true)
                }
            }
        }
    }

    /// Make the whole kernel bitmap private (cold reboot). Upstream: nothing
    /// to do (returns normally).
    public func resetKernel() throws(SevError) {
        try locked { () throws(SevError) in
            let b = try require("reset the kernel bitmap")
            if b.dialect == .upstream { return }
            try seedRawReset(b.fd, b.dialect)
        }
    }

    /// Pages the kernel's bitmap covers: v7-v9 size it at
    /// KVM_SET_USER_MEMORY_REGION to the highest memslot end (v8 12/18), which
    /// is the tracker layout's end when the layout mirrors the memslots; v6
    /// grows it lazily with every hypercall and SET, so only what sevpeb
    /// itself has written is known (0 before the first set/push).
    public func kernelBitmapSize(_ tracker: Tracker) throws(SevError) -> UInt64 {
        try locked { () throws(SevError) -> UInt64 in
            let b = try requireSeed("kernel bitmap size")
            if b.dialect == .seedV6 { return v6Covered }
            return layoutEnd(tracker.slotList)
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
            if b.dialect == .upstream { return false }
            guard let buf = Mem.calloc(Int(seedChunkPages >> 3), UInt8.self) else { throw .noMemory("sync buffer") }
            defer { Mem.free(buf) }
            var changed = false
            for (start, end) in stretches(tracker.slotList) {
                var cs = start
                while cs < end {
                    let len = min(seedChunkPages, end &- cs)
                    try seedRawGet(b.fd, b.dialect, cs, len, buf)
                    if try tracker.setBitmap(cs, len, buf, Int((len &+ 7) >> 3)) { changed = true }
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
            if b.dialect == .upstream { return }
            let ranges = stretches(tracker.slotList).map { ($0.0, $0.1 &- $0.0) }
            if ranges.isEmpty { return }
            try writeExact(b.fd, b.dialect, tracker, ranges) { (dst, dstBit, g, count) throws(SevError) in
                try copyFromTracker(tracker, g, count, dst, dstBit)
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

    func getChunked(_ fd: VMFD, _ d: KVMDialect, _ gfn: UInt64, _ n: UInt64, _ dst: UnsafeMutablePointer<UInt8>) throws(SevError) {
        var off: UInt64 = 0
        while off < n {
            let len = min(seedChunkPages, n &- off)
            try seedRawGet(fd, d, gfn &+ off, len, dst + Int(off >> 3))
            off &+= len
        }
    }

    /// Write exact bits for each range: `fill(dst, dstBit, gfn, count)` puts
    /// the new state of [gfn, gfn + count) at bit dstBit of dst.
    func writeExact(_ fd: VMFD, _ d: KVMDialect, _ tracker: Tracker, _ ranges: [(UInt64, UInt64)],
                    _ fill: (UnsafeMutablePointer<UInt8>, UInt64, UInt64, UInt64) throws(SevError) -> Void) throws(SevError) {
        if d == .seedV6 {
            try writeV6(fd, tracker, ranges, fill)
        } else {
            for (gfn, n) in ranges { try writeV7(fd, d, gfn, n, fill) }
        }
    }

    /// v7-v9: widen to 64-aligned words; GET the edge words first so the
    /// neighbours' bits go back unchanged.
    func writeV7(_ fd: VMFD, _ d: KVMDialect, _ gfn: UInt64, _ n: UInt64,
                 _ fill: (UnsafeMutablePointer<UInt8>, UInt64, UInt64, UInt64) throws(SevError) -> Void) throws(SevError) {
        let end = gfn &+ n
        let a = gfn & ~63
        let z = (end &+ 63) & ~63
        guard let buf = Mem.calloc(Int(seedChunkPages >> 3), UInt8.self) else { throw .noMemory("SET buffer") }
        defer { Mem.free(buf) }
        var cs = a
        while cs < z {
            let ce = min(cs &+ seedChunkPages, z)
            let len = ce &- cs
            if cs < gfn || ce > end { try seedRawGet(fd, d, cs, len, buf) }
            let lo = max(cs, gfn), hi = min(ce, end)
            try fill(buf, lo &- cs, lo, hi &- lo)
            try seedRawSet(fd, d, cs, len, buf)
            cs = ce
        }
    }

    /// v6: compose [0, total) from a GET, overlay the new bits; RESET first if
    /// any bit must go 0 -> 1; then one SET from GFN 0 (which only clears).
    func writeV6(_ fd: VMFD, _ tracker: Tracker, _ ranges: [(UInt64, UInt64)],
                 _ fill: (UnsafeMutablePointer<UInt8>, UInt64, UInt64, UInt64) throws(SevError) -> Void) throws(SevError) {
        var total = max(layoutEnd(tracker.slotList), v6Covered)
        for (g, n) in ranges { total = max(total, g &+ n) }
        let words = Int((total &+ 63) >> 6)
        guard let old = Mem.calloc(words, UInt64.self) else { throw .noMemory("v6 bitmap of \(total) pages") }
        defer { Mem.free(old) }
        guard let new = Mem.calloc(words, UInt64.self) else { throw .noMemory("v6 bitmap of \(total) pages") }
        defer { Mem.free(new) }
        let oldBytes = UnsafeMutableRawPointer(old).assumingMemoryBound(to: UInt8.self)
        let newBytes = UnsafeMutableRawPointer(new).assumingMemoryBound(to: UInt8.self)
        for i in 0..<words { old[i] = ~0 }
        try getChunked(fd, .seedV6, 0, total, oldBytes)
        for i in 0..<words { new[i] = old[i] }
        for (g, n) in ranges { try fill(newBytes, g, g, n) }
        var needReset = false, differs = false
        for i in 0..<words {
            if new[i] & ~old[i] != 0 { needReset = true }
            if new[i] != old[i] { differs = true }
        }
        if !differs { return }
        if needReset { try seedRawReset(fd, .seedV6) }
        try seedRawSet(fd, .seedV6, 0, total, UnsafeMutableRawPointer(new))
        v6Covered = max(v6Covered, total)
    }
}

/// End of the highest slot (0 for no slots).
func layoutEnd(_ slots: [Tracker.Slot]) -> UInt64 {
    var e: UInt64 = 0
    for s in slots { e = max(e, s.base &+ s.pages) }
    return e
}

/// The tracker's bits for [gfn, gfn + count) at bit dstBit of dst (through
/// Tracker.getBitmap, the same call sevpeb_get_bitmap makes).
func copyFromTracker(_ tracker: Tracker, _ gfn: UInt64, _ count: UInt64,
                     _ dst: UnsafeMutablePointer<UInt8>, _ dstBit: UInt64) throws(SevError) {
    if dstBit & 7 == 0 {
        try tracker.getBitmap(gfn, count, dst + Int(dstBit >> 3), Int((count &+ 7) >> 3))
        return
    }
    let piece = seedChunkPages
    guard let tmp = Mem.calloc(Int(piece >> 3), UInt8.self) else { throw .noMemory("bit copy buffer") }
    defer { Mem.free(tmp) }
    var off: UInt64 = 0
    while off < count {
        let len = min(piece, count &- off)
        try tracker.getBitmap(gfn &+ off, len, tmp, Int(piece >> 3))
        copyBits(tmp, 0, dst, dstBit &+ off, len)
        off &+= len
    }
}

/// Copy `count` bits (LSB-first bytes) from bit srcBit of src to bit dstBit
/// of dst; other bits of dst are kept.
func copyBits(_ src: UnsafePointer<UInt8>, _ srcBit: UInt64, _ dst: UnsafeMutablePointer<UInt8>,
              _ dstBit: UInt64, _ count: UInt64) {
    var i: UInt64 = 0
    while i < count {
        let s = srcBit &+ i, d = dstBit &+ i
        let dOff = d & 7
        let k = min(8 &- dOff, count &- i)
        let sByte = Int(s >> 3), sOff = s & 7
        var v = UInt16(src[sByte]) &>> UInt16(sOff)
        if sOff &+ k > 8 { v |= UInt16(src[sByte &+ 1]) &<< UInt16(8 &- sOff) }
        let m = UInt8(truncatingIfNeeded: (UInt16(1) &<< UInt16(k)) &- 1)
        let dByte = Int(d >> 3)
        dst[dByte] = (dst[dByte] & ~(m &<< UInt8(dOff))) | ((UInt8(truncatingIfNeeded: v) & m) &<< UInt8(dOff))
        i &+= k
    }
}

/// Set `count` bits from bit dstBit of dst to `value`.
func fillBits(_ dst: UnsafeMutablePointer<UInt8>, _ dstBit: UInt64, _ count: UInt64, _ value: Bool) {
    var i: UInt64 = 0
    while i < count {
        let d = dstBit &+ i
        let dOff = d & 7
        let k = min(8 &- dOff, count &- i)
        let m = UInt8(truncatingIfNeeded: ((UInt16(1) &<< UInt16(k)) &- 1) &<< UInt16(dOff))
        let dByte = Int(d >> 3)
        dst[dByte] = value ? dst[dByte] | m : dst[dByte] & ~m
        i &+= k
    }
}
