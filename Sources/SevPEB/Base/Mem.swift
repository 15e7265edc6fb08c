import CSevPEBShims

/// Raw allocation that reports failure instead of trapping (Swift's
/// `allocate(capacity:)` aborts when malloc fails), and counts bytes.
enum Mem {
    // SAFETY: fresh zeroed memory of count * stride bytes (overflow checked), bound to T once; T is trivial (no deinit, no references).
    static func calloc<T>(_ count: Int, _ type: T.Type) -> UnsafeMutablePointer<T>? {
        if count <= 0 { return nil }
        let (bytes, o) = count.multipliedReportingOverflow(by: MemoryLayout<T>.stride)
        if o || bytes > Int(1) << 40 { return nil }
        guard let raw = CSevPEBShims.calloc(1, bytes) else { return nil }
        return raw.bindMemory(to: T.self, capacity: count)
    }
    // SAFETY: p came from Mem.calloc and is not used after this call (callers drop or replace it).
    static func free<T>(_ p: UnsafeMutablePointer<T>?) {
        if let p { CSevPEBShims.free(UnsafeMutableRawPointer(p)) }
    }
    static func bytes<T>(_ count: Int, _ type: T.Type) -> Int { count &* MemoryLayout<T>.stride }
}
