import CSevPEB
import CSevPEBShims

/// What a `sevpeb_tracker *` points at: the tracker, its two migration
/// sessions and its KVM binding. Kept alive by an unmanaged retain from
/// create to destroy.
final class Handle {
    let tracker: Tracker
    let save: SaveSession
    let load: LoadSession
    let kvm: KVMBinding
    private init(_ t: Tracker, _ s: SaveSession, _ l: LoadSession, _ k: KVMBinding) {
        tracker = t; save = s; load = l; kvm = k
    }
    static func create() throws(SevError) -> Handle {
        Handle(try Tracker.create(), try SaveSession.create(), try LoadSession.create(), try KVMBinding.create())
    }
}

/// Borrow the handle without retain/release (the caller owns it).
// SAFETY: h is a handle sevpeb_tracker_create returned (the header makes a bad one undefined behaviour); borrowed without retain for the call, the caller keeps its reference.
@inline(__always) func withHandle<R>(_ h: OpaquePointer?, _ fail: R, _ body: (Handle) -> R) -> R {
    guard let h = unsafe h else {
        setLastError(SevError(EINVAL, "tracker handle is NULL"))
        return fail
    }
    return unsafe Unmanaged<Handle>.fromOpaque(UnsafeRawPointer(h))._withUnsafeGuaranteedRef(body)
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
