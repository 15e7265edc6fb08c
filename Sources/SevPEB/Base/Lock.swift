import CSevPEBShims

/// A pthread mutex, owned by value: created by `make()`, destroyed with its
/// owner, held only for the extent of a `withLock` body.
///
/// Why not Synchronization's `Mutex`: it is not available in Embedded Swift
/// 6.3.1 (the archive's build), so the project wraps pthread itself. The
/// mutex lives on the heap (pthread needs a stable address; a Swift value
/// may move).
@safe struct Lock: ~Copyable {
    // SAFETY: owned by this value alone; freed in deinit, never escapes.
    private let m: UnsafeMutablePointer<pthread_mutex_t>

    // SAFETY: m comes from sevpeb_shim_mutex_new (make()) and is owned by this value from here on.
    private init(_ m: UnsafeMutablePointer<pthread_mutex_t>) { unsafe self.m = unsafe m }

    /// A new lock, or nil when the allocation fails. (A factory, not a
    /// failable init: the caller reports the failure in its own words.)
    static func make() -> Lock? {
        guard let m = unsafe sevpeb_shim_mutex_new() else { return nil }
        return unsafe Lock(m)
    }

    deinit { unsafe sevpeb_shim_mutex_free(m) }

    /// Run `body` with the mutex held.
    @inline(__always) func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        unsafe sevpeb_shim_mutex_lock(m)
        defer { unsafe sevpeb_shim_mutex_unlock(m) }
        return try body()
    }

    /// Bytes of the mutex, for memory accounting.
    static var bytes: Int { Int(sevpeb_shim_mutex_size()) }
}
