import CSevPEBShims

/// The tracker's update gate (sevpeb_shims.h): single-word page updates
/// pass it without the mutex; a locked operation closes it (if open) and
/// waits for the updates in flight, so it never overlaps one; a locked
/// update reopens it when done.
/// Owns its C allocation (64-byte aligned, one cache line per counter).
@safe struct Gate: ~Copyable {
    // SAFETY: owned by this value alone; freed in deinit, never escapes.
    private let g: UnsafeMutablePointer<sevpeb_gate>

    // SAFETY: g comes from sevpeb_shim_gate_new (make()) and is owned by this value from here on.
    private init(_ g: UnsafeMutablePointer<sevpeb_gate>) { unsafe self.g = unsafe g }

    /// A new, open gate, or nil when the allocation fails.
    static func make() -> Gate? {
        guard let g = unsafe sevpeb_shim_gate_new() else { return nil }
        return unsafe Gate(g)
    }

    deinit { unsafe sevpeb_shim_gate_free(g) }

    /// Run `body` inside the gate, or return nil at once if it is closed.
    @inline(__always) func pass<R>(_ body: () -> R) -> R? {
        let token = unsafe sevpeb_shim_gate_enter(g)
        if token == 0 { return nil }
        defer { unsafe sevpeb_shim_gate_leave(g, token) }
        return body()
    }

    /// Run `body` with the gate closed (the caller holds the mutex); reopen
    /// it afterwards only if `reopen` (locked updates: the fast path's users
    /// want it open). Other locked operations leave it closed, so a run of
    /// them pays the closing fence and wait once, not per call.
    @inline(__always) func closed<R, E: Error>(reopen: Bool, _ body: () throws(E) -> R) throws(E) -> R {
        unsafe sevpeb_shim_gate_close(g)
        defer { if reopen { unsafe sevpeb_shim_gate_open(g) } }
        return try body()
    }

    /// Bytes of the gate, for memory accounting.
    static var bytes: Int { Int(sevpeb_shim_gate_size()) }
}
