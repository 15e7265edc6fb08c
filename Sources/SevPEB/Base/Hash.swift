import CSevPEBHash

/// XXH3 (xxHash, 64-bit variant, seed 0, Yann Collet), streaming over bytes:
/// the state digest (over little-endian words) and the per-payload checksum
/// (over the payload bytes), docs/FORMAT.md. The implementation is Debian's
/// libxxhash-dev compiled inline into the archive (Sources/CSevPEBHash);
/// checked against python-xxhash's values in the tests.
public struct XXH3 {
    var state = spbhash_state()

    public init() { unsafe spbhash_reset(&state) }

    /// Feed one 64-bit word as its 8 little-endian bytes.
    @inline(__always) public mutating func add(_ w: UInt64) { unsafe spbhash_update_le64(&state, w) }

    /// Feed `count` words from memory (as little-endian bytes).
    // SAFETY: p is valid for `count` words (a chunk block or hash list the caller owns).
    public mutating func add(words p: UnsafePointer<UInt64>, count: Int) {
        #if _endian(little)
        unsafe spbhash_update(&state, p, count &* 8)
        #else
        for i in 0..<count { add(p[i]) }
        #endif
    }

    /// Feed bytes.
    // SAFETY: p is valid for `count` bytes (caller-owned buffer), read only.
    public mutating func update(_ p: UnsafeRawPointer, _ count: Int) { unsafe spbhash_update(&state, p, count) }

    /// The hash of everything fed so far.
    public mutating func finish() -> UInt64 { unsafe spbhash_digest(&state) }

    /// One-shot hash of whole words (as little-endian bytes).
    // SAFETY: p is valid for `count` words (a chunk block under the tracker lock).
    public static func hash(words p: UnsafePointer<UInt64>, count: Int) -> UInt64 {
        #if _endian(little)
        return unsafe spbhash_bytes(p, count &* 8)
        #else
        var x = XXH3()
        x.add(words: p, count: count)
        return x.finish()
        #endif
    }

    /// One-shot hash of bytes.
    // SAFETY: p is valid for `count` bytes (caller-owned buffer), read only.
    public static func hash(bytes p: UnsafeRawPointer, count: Int) -> UInt64 { unsafe spbhash_bytes(p, count) }
}
