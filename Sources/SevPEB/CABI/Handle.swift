import CSevPEB
import CSevPEBShims

/// What a `sevpeb_tracker *` points at: the tracker, its two migration
/// sessions and its KVM binding, in `Mem` allocations from create to
/// destroy. No Swift class instance: their allocation traps when malloc
/// fails, and every allocation of the library must be able to report
/// ENOMEM instead. The handle itself is never modified after create (any
/// number of threads read it at once); each session is its own allocation,
/// so the one thread running save_* (or load_*) modifies only that.
@safe struct Handle: ~Copyable {
    let tracker: Tracker
    // SAFETY: a Mem.create allocation owned by this handle, destroyed in its deinit; modified only by the save_* calls (withSave).
    let save: UnsafeMutablePointer<SaveSession>
    // SAFETY: a Mem.create allocation owned by this handle, destroyed in its deinit; modified only by the load_* calls (withLoad).
    let load: UnsafeMutablePointer<LoadSession>
    let kvm: KVMBinding

    deinit {
        unsafe Mem.destroy(save)
        unsafe Mem.destroy(load)
        tracker.destroy()
    }

    /// A new handle; any allocation's failure is ENOMEM with nothing leaked.
    // SAFETY: returns a Mem.create allocation owned by the caller until sevpeb_tracker_destroy hands it to Mem.destroy.
    static func create() throws(SevError) -> UnsafeMutablePointer<Handle> {
        let t = try Tracker.create()
        var save: UnsafeMutablePointer<SaveSession>? = nil
        var load: UnsafeMutablePointer<LoadSession>? = nil
        let h: Handle
        do throws(SevError) {
            guard let s = unsafe Mem.create(try SaveSession.create()) else { throw .noMemory("out of memory allocating the save session") }
            unsafe save = unsafe s
            guard let l = unsafe Mem.create(try LoadSession.create()) else { throw .noMemory("out of memory allocating the load session") }
            unsafe load = unsafe l
            h = unsafe Handle(tracker: t, save: s, load: l, kvm: try KVMBinding.create())
        } catch {
            if let s = unsafe save { unsafe Mem.destroy(s) }
            if let l = unsafe load { unsafe Mem.destroy(l) }
            t.destroy()
            throw error
        }
        // From here h owns all three: if this allocation fails, dropping h frees them.
        guard let p = unsafe Mem.create(h) else { throw .noMemory("out of memory allocating the tracker handle") }
        return unsafe p
    }
}

/// Borrow the handle for the call (the caller owns it; any number of
/// threads may borrow it at once, as the header's threading rules allow).
// SAFETY: h is a handle sevpeb_tracker_create returned (the header makes a bad one undefined behaviour), live until sevpeb_tracker_destroy.
@inline(__always) func withHandle<R>(_ h: OpaquePointer?, _ fail: R, _ body: (borrowing Handle) -> R) -> R {
    guard let h = unsafe h else {
        setLastError(SevError(EINVAL, "tracker handle is NULL"))
        return fail
    }
    return unsafe body(UnsafeMutablePointer<Handle>(h).pointee)
}

/// The tracker and one migration session (`session` picks it from the
/// handle), the session mutable: the handle is only read (the pointer to
/// the session), then only the session is modified.
// SAFETY: as withHandle; the session's calls are serialised by the header, so no two threads hold it at once.
@inline(__always) func withSession<S: ~Copyable, R>(_ h: OpaquePointer?, _ fail: R,
                                                    _ session: (borrowing Handle) -> UnsafeMutablePointer<S>,
                                                    _ body: (Tracker, inout S) -> R) -> R {
    guard let h = unsafe h else {
        setLastError(SevError(EINVAL, "tracker handle is NULL"))
        return fail
    }
    let p = unsafe UnsafeMutablePointer<Handle>(h)
    let s = unsafe session(p.pointee)
    return unsafe body(p.pointee.tracker, &s.pointee)
}

/// The save_* calls: one thread at a time (they may overlap the load_*
/// calls, which reach only the other session).
@inline(__always) func withSave<R>(_ h: OpaquePointer?, _ fail: R, _ body: (Tracker, inout SaveSession) -> R) -> R {
    unsafe withSession(h, fail, { unsafe $0.save }, body)
}

/// The load_* calls: one thread at a time.
@inline(__always) func withLoad<R>(_ h: OpaquePointer?, _ fail: R, _ body: (Tracker, inout LoadSession) -> R) -> R {
    unsafe withSession(h, fail, { unsafe $0.load }, body)
}

/// Store `e` as the calling thread's sevpeb_last_error() text.
func setLastError(_ e: SevError) {
    let buf = unsafe spbshim_errbuf()!
    var n = 0
    let cap = Int(SEVPEB_SHIM_ERRBUF) &- 1
    for b in e.message.utf8 {
        if n >= cap { break }
        unsafe buf[n] = CChar(bitPattern: b)
        n &+= 1
    }
    unsafe buf[n] = 0
}

/// Run `body`; map a thrown error to -errno and the thread's message.
@inline(__always) func cCall(_ body: () throws(SevError) -> Int32) -> Int32 {
    do throws(SevError) { return try body() } catch {
        setLastError(error)
        return error.negativeErrno
    }
}

/// Writes through the caller's sevpeb_write_fn.
@safe struct CWriter: ByteSink {
    let fn: sevpeb_write_fn
    // SAFETY: the caller's opaque value, passed back to its callback untouched, never dereferenced here.
    let opaque: UnsafeMutableRawPointer?
    // SAFETY: p is our own output buffer of p.count bytes; the callback reads it for the call only (header: sevpeb_write_fn).
    mutating func write(_ p: UnsafeRawBufferPointer) throws(SevError) {
        guard let base = p.baseAddress, p.count > 0 else { return }
        let r = unsafe fn(opaque, base.assumingMemoryBound(to: UInt8.self), p.count)
        if r < 0 { throw SevError(-r, "write callback failed with \(r) writing \(p.count) bytes") }
    }
}

/// Reads through the caller's sevpeb_read_fn.
@safe struct CReader: ByteSource {
    let fn: sevpeb_read_fn
    // SAFETY: the caller's opaque value, passed back to its callback untouched, never dereferenced here.
    let opaque: UnsafeMutableRawPointer?
    var consumed = 0
    // SAFETY: p is our own scratch of p.count bytes; the callback fills at most p.count of them (header: sevpeb_read_fn).
    mutating func read(_ p: UnsafeMutableRawBufferPointer) throws(SevError) {
        guard let base = p.baseAddress, p.count > 0 else { return }
        let r = unsafe fn(opaque, base.assumingMemoryBound(to: UInt8.self), p.count)
        if r < 0 {
            if -r == ENODATA {
                throw SevError(ENODATA, "stream truncated: \(p.count) bytes missing after \(consumed) bytes of this section")
            }
            throw SevError(-r, "read callback failed with \(r) after \(consumed) bytes of this section")
        }
        consumed &+= p.count
    }
}
