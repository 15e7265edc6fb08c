import CSevPEB
import CSevPEBShims

// The C ABI (include/sevpeb.h). Each entry point validates its arguments,
// calls the Swift layer and maps errors; nothing here traps.

@c @implementation
public func sevpeb_version_number() -> UInt32 { UInt32(SEVPEB_VERSION_MAJOR * 10000 + SEVPEB_VERSION_MINOR * 100 + SEVPEB_VERSION_PATCH) }

// SAFETY: a pointer to a static string literal, valid for the life of the program.
@c @implementation
public func sevpeb_version_string() -> UnsafePointer<CChar>! {
    unsafe sevpeb_shim_version_string()
}

// SAFETY: a StaticString of ErrorClass: static, NUL-terminated UTF-8, valid for the life of the program.
@c @implementation
public func sevpeb_strerror(_ err: Int32) -> UnsafePointer<CChar>! {
    unsafe UnsafeRawPointer(ErrorClass.name(err).utf8Start).assumingMemoryBound(to: CChar.self)
}

// SAFETY: the thread-local error buffer of the shims, NUL-terminated, valid until the next call on this thread (header).
@c @implementation
public func sevpeb_last_error() -> UnsafePointer<CChar>! {
    unsafe UnsafePointer(spbshim_errbuf())
}

// SAFETY: out is checked for NULL; the handle is a Mem.create allocation, destroyed by sevpeb_tracker_destroy only.
@c @implementation
public func sevpeb_tracker_create(_ flags: UInt32, _ out: UnsafeMutablePointer<OpaquePointer?>!) -> Int32 {
    cCall { () throws(SevError) -> Int32 in
        guard let out = unsafe out else { throw SevError(EINVAL, "out pointer is NULL") }
        if flags != 0 { throw SevError(EINVAL, "flags \(hex(UInt64(flags))): must be 0") }
        unsafe out.pointee = unsafe OpaquePointer(try Handle.create())
        return 0
    }
}

// SAFETY: t is a handle from sevpeb_tracker_create (NULL is ignored), not used after this call (header).
@c @implementation
public func sevpeb_tracker_destroy(_ t: OpaquePointer?) {
    guard let t = unsafe t else { return }
    unsafe Mem.destroy(UnsafeMutablePointer<Handle>(t))
}

@c @implementation
public func sevpeb_slot_add(_ t: OpaquePointer?, _ base: UInt64, _ npages: UInt64) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in cCall { () throws(SevError) -> Int32 in try h.tracker.addSlot(base: base, pages: npages); return 0 } }
}

@c @implementation
public func sevpeb_slot_remove(_ t: OpaquePointer?, _ base: UInt64) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in cCall { () throws(SevError) -> Int32 in try h.tracker.removeSlot(base: base); return 0 } }
}

@c @implementation
public func sevpeb_slot_resize(_ t: OpaquePointer?, _ base: UInt64, _ npages: UInt64) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in cCall { () throws(SevError) -> Int32 in try h.tracker.resizeSlot(base: base, pages: npages); return 0 } }
}

// SAFETY: slots is checked for NULL when count > 0 and read below count entries only, as the header requires.
@c @implementation
public func sevpeb_set_layout(_ t: OpaquePointer?, _ slots: UnsafePointer<sevpeb_slot>?, _ count: UInt32) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        cCall { () throws(SevError) -> Int32 in
            if unsafe count > 0 && slots == nil { throw SevError(EINVAL, "slots is NULL with count \(count)") }
            if count > UInt32(Tracker.maxSlots) {
                throw SevError(ENOSPC, "layout of \(count) slots exceeds \(Tracker.maxSlots)")
            }
            // A view of the caller's array, not a copy: nothing to allocate.
            let list = unsafe UnsafeBufferPointer(start: count > 0 ? slots : nil, count: Int(count)).lazy
                .map { Tracker.Slot(base: $0.base_gfn, pages: $0.npages) }
            unsafe try h.tracker.setLayout(slots: list, keepShared: true)
            return 0
        }
    }
}

@c @implementation
public func sevpeb_slot_count(_ t: OpaquePointer?) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in Int32(truncatingIfNeeded: h.tracker.slotCount) }
}

// SAFETY: base and npages are checked for NULL and written once each.
@c @implementation
public func sevpeb_slot_get(_ t: OpaquePointer?, _ index: UInt32, _ base: UnsafeMutablePointer<UInt64>!,
                            _ npages: UnsafeMutablePointer<UInt64>!) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        cCall { () throws(SevError) -> Int32 in
            guard let base = unsafe base, let npages = unsafe npages else { throw SevError(EINVAL, "base_gfn or npages pointer is NULL") }
            let r = h.tracker.slot(at: Int(index))
            guard let r else { throw SevError(ENOENT, "slot index \(index) not below the slot count") }
            unsafe base.pointee = r.base; unsafe npages.pointee = r.pages
            return 0
        }
    }
}

@c @implementation
public func sevpeb_set_range(_ t: OpaquePointer?, _ gfn: UInt64, _ npages: UInt64, _ state: Int32) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        cCall { () throws(SevError) -> Int32 in
            guard let s = PageState(rawValue: state), s != .mixed else {
                throw SevError(EINVAL, "state \(state): must be 0 (shared) or 1 (private)")
            }
            try h.tracker.setRange(gfn, npages, private: s == .private)
            return 0
        }
    }
}

@c @implementation
public func sevpeb_test(_ t: OpaquePointer?, _ gfn: UInt64) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in cCall { () throws(SevError) -> Int32 in try h.tracker.test(gfn) ? 1 : 0 } }
}

@c @implementation
public func sevpeb_count_shared(_ t: OpaquePointer?, _ gfn: UInt64, _ npages: UInt64) -> Int64 {
    unsafe withHandle(t, Int64(-EINVAL)) { h in
        do throws(SevError) { return Int64(bitPattern: try h.tracker.countShared(gfn, npages)) } catch {
            setLastError(error); return Int64(error.negativeErrno)
        }
    }
}

// SAFETY: pages and shared are checked for NULL and written once each.
@c @implementation
public func sevpeb_totals(_ t: OpaquePointer?, _ pages: UnsafeMutablePointer<UInt64>!, _ shared: UnsafeMutablePointer<UInt64>!) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        cCall { () throws(SevError) -> Int32 in
            guard let pages = unsafe pages, let shared = unsafe shared else { throw SevError(EINVAL, "pages or shared pointer is NULL") }
            let r = h.tracker.totals()
            unsafe pages.pointee = r.pages; unsafe shared.pointee = r.shared
            return 0
        }
    }
}

// SAFETY: gfn and npages are checked for NULL and written once each.
@c @implementation
public func sevpeb_next_shared_run(_ t: OpaquePointer?, _ from: UInt64, _ gfn: UnsafeMutablePointer<UInt64>!,
                                   _ npages: UnsafeMutablePointer<UInt64>!) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        cCall { () throws(SevError) -> Int32 in
            guard let gfn = unsafe gfn, let npages = unsafe npages else { throw SevError(EINVAL, "gfn or npages pointer is NULL") }
            guard let r = h.tracker.nextSharedRun(from: from) else { return 0 }
            unsafe gfn.pointee = r.gfn; unsafe npages.pointee = r.pages
            return 1
        }
    }
}

// SAFETY: dst is checked for NULL and written within ceil(npages/8) bytes, checked against len first.
@c @implementation
public func sevpeb_get_bitmap(_ t: OpaquePointer?, _ gfn: UInt64, _ npages: UInt64,
                              _ dst: UnsafeMutablePointer<UInt8>!, _ len: Int) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        cCall { () throws(SevError) -> Int32 in
            guard let dst = unsafe dst else { throw SevError(EINVAL, "dst is NULL") }
            unsafe try h.tracker.getBitmap(gfn, npages, dst, len)
            return 0
        }
    }
}

// SAFETY: src may be NULL (all private); otherwise read within ceil(npages/8) bytes, checked against len first.
@c @implementation
public func sevpeb_set_bitmap(_ t: OpaquePointer?, _ gfn: UInt64, _ npages: UInt64,
                              _ src: UnsafePointer<UInt8>?, _ len: Int) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        cCall { () throws(SevError) -> Int32 in
            unsafe try h.tracker.setBitmap(gfn, npages, src, len)
            return 0
        }
    }
}

@c @implementation
public func sevpeb_reset(_ t: OpaquePointer?) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in h.tracker.reset(); return 0 }
}

// SAFETY: out is checked for NULL and written once.
@c @implementation
public func sevpeb_digest(_ t: OpaquePointer?, _ out: UnsafeMutablePointer<UInt64>!) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        cCall { () throws(SevError) -> Int32 in
            guard let out = unsafe out else { throw SevError(EINVAL, "digest pointer is NULL") }
            unsafe out.pointee = h.tracker.digest()
            return 0
        }
    }
}

@c @implementation
public func sevpeb_memory_bytes(_ t: OpaquePointer?) -> UInt64 {
    unsafe withHandle(t, 0) { h in UInt64(h.tracker.memoryBytes) }
}

// SAFETY: opaque is the caller's value, handed back to its callback, never dereferenced here.
@c @implementation
public func sevpeb_set_change_callback(_ t: OpaquePointer?, _ fn: sevpeb_change_fn?, _ opaque: UnsafeMutableRawPointer?) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in unsafe h.tracker.setCallback(fn, opaque); return 0 }
}

@c @implementation
public func sevpeb_map_gpa_range(_ t: OpaquePointer?, _ gpa: UInt64, _ npages: UInt64, _ attrs: UInt64) -> Int64 {
    unsafe withHandle(t, -MapGPARange.kvmEINVAL) { h in
        let (ret, err) = h.tracker.mapGPARangeRet(gpa: gpa, npages: npages, attrs: attrs)
        if let err { setLastError(err) }
        return ret
    }
}

@c @implementation
public func sevpeb_set_migration_control(_ t: OpaquePointer?, _ value: UInt64) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in cCall { () throws(SevError) -> Int32 in try h.tracker.setMigrationControl(value); return 0 } }
}

@c @implementation
public func sevpeb_get_migration_control(_ t: OpaquePointer?) -> UInt64 {
    unsafe withHandle(t, 0) { h in h.tracker.migrationControl }
}

@c @implementation
public func sevpeb_set_require_ready(_ t: OpaquePointer?, _ require: Int32) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in h.tracker.setRequireReady(require != 0); return 0 }
}

@c @implementation
public func sevpeb_may_migrate(_ t: OpaquePointer?) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        if let why = h.tracker.migrationRefusal() { setLastError(why); return 0 }
        return 1
    }
}

// SAFETY: opaque is the caller's value, handed back to its write callback, never dereferenced here.
@c @implementation
public func sevpeb_save_setup(_ t: OpaquePointer?, _ write: sevpeb_write_fn?, _ opaque: UnsafeMutableRawPointer?) -> Int32 {
    unsafe withSave(t, -EINVAL) { tracker, save in
        cCall { () throws(SevError) -> Int32 in
            guard let write = unsafe write else { throw SevError(EINVAL, "write callback is NULL") }
            var w = unsafe CWriter(fn: write, opaque: opaque)
            try save.setup(tracker, &w)
            return 0
        }
    }
}

// SAFETY: opaque is the caller's value, handed back to its write callback, never dereferenced here.
@c @implementation
public func sevpeb_save_iterate(_ t: OpaquePointer?, _ write: sevpeb_write_fn?, _ opaque: UnsafeMutableRawPointer?,
                                _ maxBytes: UInt64) -> Int32 {
    unsafe withSave(t, -EINVAL) { tracker, save in
        cCall { () throws(SevError) -> Int32 in
            guard let write = unsafe write else { throw SevError(EINVAL, "write callback is NULL") }
            var w = unsafe CWriter(fn: write, opaque: opaque)
            return try save.iterate(tracker, &w, budget: maxBytes) ? 1 : 0
        }
    }
}

@c @implementation
public func sevpeb_save_pending(_ t: OpaquePointer?) -> UInt64 {
    unsafe withHandle(t, 0) { h in unsafe h.save.pointee.pendingBytes(h.tracker) }
}

// SAFETY: opaque is the caller's value, handed back to its write callback, never dereferenced here.
@c @implementation
public func sevpeb_save_complete(_ t: OpaquePointer?, _ write: sevpeb_write_fn?, _ opaque: UnsafeMutableRawPointer?) -> Int32 {
    unsafe withSave(t, -EINVAL) { tracker, save in
        cCall { () throws(SevError) -> Int32 in
            guard let write = unsafe write else { throw SevError(EINVAL, "write callback is NULL") }
            var w = unsafe CWriter(fn: write, opaque: opaque)
            try save.complete(tracker, &w)
            return 0
        }
    }
}

@c @implementation
public func sevpeb_save_cleanup(_ t: OpaquePointer?) {
    unsafe withSave(t, ()) { _, save in save.cleanup() }
}

// SAFETY: st is checked for NULL and written once.
@c @implementation
public func sevpeb_save_get_stats(_ t: OpaquePointer?, _ st: UnsafeMutablePointer<sevpeb_save_stats>!) -> Int32 {
    unsafe withHandle(t, -EINVAL) { h in
        cCall { () throws(SevError) -> Int32 in
            guard let st = unsafe st else { throw SevError(EINVAL, "stats pointer is NULL") }
            let size = unsafe Int(st.pointee.size)
            if size < MemoryLayout<sevpeb_save_stats>.size {
                throw SevError(EINVAL, "stats size \(size) smaller than \(MemoryLayout<sevpeb_save_stats>.size)")
            }
            var s = sevpeb_save_stats()
            s.size = UInt32(MemoryLayout<sevpeb_save_stats>.size)
            s.iterations = unsafe h.save.pointee.iterations
            s.setup_bytes = unsafe h.save.pointee.setupBytes
            s.iterate_bytes = unsafe h.save.pointee.iterateBytes
            s.last_iterate_bytes = unsafe h.save.pointee.lastIterateBytes
            s.complete_bytes = unsafe h.save.pointee.completeBytes
            s.records = unsafe h.save.pointee.records
            unsafe st.pointee = s
            return 0
        }
    }
}

@c @implementation
public func sevpeb_load_setup(_ t: OpaquePointer?) -> Int32 {
    unsafe withLoad(t, -EINVAL) { _, load in load.setup(); return 0 }
}

// SAFETY: opaque is the caller's value, handed back to its read callback, never dereferenced here.
@c @implementation
public func sevpeb_load_state(_ t: OpaquePointer?, _ read: sevpeb_read_fn?, _ opaque: UnsafeMutableRawPointer?,
                              _ version: UInt32) -> Int32 {
    unsafe withLoad(t, -EINVAL) { tracker, load in
        cCall { () throws(SevError) -> Int32 in
            guard let read = unsafe read else { throw SevError(EINVAL, "read callback is NULL") }
            var r = unsafe CReader(fn: read, opaque: opaque)
            return try load.load(tracker, &r, version: version) ? 1 : 0
        }
    }
}

@c @implementation
public func sevpeb_load_cleanup(_ t: OpaquePointer?) {
    unsafe withLoad(t, ()) { _, load in load.cleanup() }
}
