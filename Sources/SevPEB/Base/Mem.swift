import CSevPEBShims

/// Raw allocation that reports failure instead of trapping (Swift's
/// `allocate(capacity:)` aborts when malloc fails), and counts bytes.
enum Mem {
    // SAFETY: fresh zeroed memory of count * stride bytes (overflow checked), bound to T once; T is trivial (no deinit, no references).
    static func calloc<T>(_ count: Int, _ type: T.Type) -> UnsafeMutablePointer<T>? {
        if count <= 0 { return nil }
        let (bytes, o) = count.multipliedReportingOverflow(by: MemoryLayout<T>.stride)
        if o || bytes > Int(1) << 40 { return nil }
        guard let raw = unsafe CSevPEBShims.calloc(1, bytes) else { return nil }
        return unsafe raw.bindMemory(to: T.self, capacity: count)
    }
    // SAFETY: p came from Mem.calloc and is not used after this call (callers drop or replace it).
    static func free<T>(_ p: UnsafeMutablePointer<T>?) {
        if let p = unsafe p { unsafe CSevPEBShims.free(UnsafeMutableRawPointer(p)) }
    }
    static func bytes<T>(_ count: Int, _ type: T.Type) -> Int { count &* MemoryLayout<T>.stride }

    /// `v` moved into a fresh allocation, or nil (and `v` dropped) when out
    /// of memory: the library's objects live here instead of in Swift class
    /// instances, whose allocation traps when malloc fails.
    // SAFETY: the allocation is fresh, sized and aligned for one T (calloc aligns to 16); v is moved in exactly once.
    static func create<T: ~Copyable>(_ v: consuming T) -> UnsafeMutablePointer<T>? {
        guard MemoryLayout<T>.alignment <= 16, let raw = unsafe CSevPEBShims.calloc(1, MemoryLayout<T>.stride) else { return nil }
        let p = unsafe raw.bindMemory(to: T.self, capacity: 1)
        unsafe p.initialize(to: v)
        return unsafe p
    }

    /// Deinitialize (running its deinit) and free a value from `create`.
    // SAFETY: p came from create and is not used after this call.
    static func destroy<T: ~Copyable>(_ p: UnsafeMutablePointer<T>) {
        unsafe p.deinitialize(count: 1)
        unsafe CSevPEBShims.free(UnsafeMutableRawPointer(p))
    }
}

/// A growable list of trivial values in `Mem` memory: `append` reports an
/// allocation failure (false) instead of trapping as a Swift array would.
/// Owned by value; freed with its owner.
@safe package struct MemList<T>: ~Copyable {
    // SAFETY: nil or a Mem allocation of `cap` T, the first `count` initialized (T is trivial); freed in deinit only.
    private var base: UnsafeMutablePointer<T>? = nil
    package private(set) var count = 0
    private var cap = 0

    package init() {}
    deinit { unsafe Mem.free(base) }

    /// Make room for `n` values in all; false when out of memory.
    package mutating func reserve(_ n: Int) -> Bool {
        if n <= cap { return true }
        guard let nb = unsafe Mem.calloc(n, T.self) else { return false }
        // SAFETY: nb holds n >= count values; the old buffer's first count are initialized and trivial.
        if let old = unsafe base { unsafe nb.update(from: old, count: count); unsafe Mem.free(old) }
        unsafe base = unsafe nb
        cap = n
        return true
    }

    /// Append `v`; false (and nothing appended) when out of memory.
    package mutating func append(_ v: T) -> Bool {
        if count == cap && !reserve(cap < 8 ? 8 : cap &* 2) { return false }
        guard let b = unsafe base else { return false }
        // SAFETY: count < cap after reserve, so the slot lies in the allocation.
        unsafe b[count] = v
        count &+= 1
        return true
    }

    /// The values as a buffer, for the time of `body`.
    // SAFETY: the first count values of base are initialized; the view is valid for body only.
    package func withBuffer<R, E: Error>(_ body: (UnsafeBufferPointer<T>) throws(E) -> R) throws(E) -> R {
        unsafe try body(UnsafeBufferPointer(start: base, count: count))
    }

    /// Value `i` (0 ..< count).
    package subscript(i: Int) -> T {
        // SAFETY: callers index below count, so base is non-nil and the value initialized.
        unsafe base.unsafelyUnwrapped[i]
    }
}
