import CSevPEBShims

/// Geometry of the lazy storage.
///
/// A slot's pages are cut into *chunks* of 2^14 pages (64 MiB of guest,
/// 2 KiB of bits), aligned to the slot's base; 64 chunks make a *group*
/// (2^20 pages, 4 GiB). A chunk is either uniform (private or shared: no
/// storage, one bit in its group) or mixed (a 2 KiB block of bits).
///
/// Invariants (checked by `Tracker.checkInvariants`):
/// - a group's `mixed` bit c is set iff `blocks[c]` is non-nil;
/// - `shared` bits are only set where `mixed` is clear;
/// - bits for chunks past the slot's last chunk are clear in every mask;
/// - block bits at or above the chunk's length are zero (padding);
/// - `blocks` holds popcount(mixed) blocks in chunk order, and is nil when
///   `mixed == 0`.
enum Geometry {
    static let chunkShift = 14
    static let chunkPages = 1 << chunkShift            // 16384 pages
    static let chunkWords = chunkPages >> 6           // 256 words = 2 KiB
    static let blockWords = chunkWords + 1            // + cached chunk hash
    static let groupShift = 6
    static let chunksPerGroup = 1 << groupShift       // 64
    static let groupPages = UInt64(1) << UInt64(chunkShift + groupShift)  // 2^20 pages

    @inline(__always) static func chunks(_ pages: UInt64) -> UInt64 {
        (pages &+ UInt64(chunkPages &- 1)) &>> UInt64(chunkShift)
    }
    @inline(__always) static func groups(_ pages: UInt64) -> UInt64 {
        (chunks(pages) &+ UInt64(chunksPerGroup &- 1)) &>> UInt64(groupShift)
    }
    /// Length in pages of chunk `c` of a slot of `pages` pages.
    @inline(__always) static func chunkLen(_ c: UInt64, _ pages: UInt64) -> Int {
        let start = c &<< UInt64(chunkShift)
        let rest = pages &- start
        return rest >= UInt64(chunkPages) ? chunkPages : Int(truncatingIfNeeded: rest)
    }
}

/// Per-group bookkeeping: 64 chunks.
@safe struct Group {
    var shared: UInt64 = 0   // uniform chunks that are shared
    var mixed: UInt64 = 0    // chunks with a block
    var dirty: UInt64 = 0    // changed since last taken by the encoder
    var hashOK: UInt64 = 0   // mixed chunks whose cached hash (block word 256) is current
    /// Blocks of the mixed chunks, in chunk order: the block of chunk c is
    /// at index popcount(mixed & (1 << c) - 1) ("rank"). Compact, so a group
    /// with one mixed chunk costs one pointer, not 64.
    // SAFETY: a Mem array of blockCap entries, popcount(mixed) of them non-nil Mem blocks of blockWords words; owned by the group.
    var blocks: UnsafeMutablePointer<UnsafeMutablePointer<UInt64>?>? = nil
    var hash: UInt64 = 0     // cached group hash, valid iff hashValid
    var sharedPages: UInt32 = 0 // cached shared pages in the group, valid iff hashValid
    var hashValid = false
    var blockCap: UInt8 = 0  // capacity of `blocks`

    /// Byte offsets of the fields the update fast path changes atomically
    /// (Tracker.fastSetRange: reached by address, not as Swift properties,
    /// whose `&` access would be a formal modify of the whole group).
    /// Declaration order; pinned against MemoryLayout by TrackerTests.
    static let dirtyOffset = 16
    static let hashOKOffset = 24
    static let hashValidOffset = 52

    /// The address of a field at `offset` of group g.
    // SAFETY: g is a live group; offset is one of the offsets above, of a field of type T.
    @inline(__always) static func field<T>(_ g: UnsafeMutablePointer<Group>, _ offset: Int, _ type: T.Type) -> UnsafeMutablePointer<T> {
        unsafe (UnsafeMutableRawPointer(g) + offset).assumingMemoryBound(to: T.self)
    }
}

/// One memory slot: [base, base + pages).
@safe struct SlotRec {
    var base: UInt64
    var pages: UInt64
    // SAFETY: a Mem array of groupCount groups, owned by the slot record, freed with the slot.
    var groups: UnsafeMutablePointer<Group>
    var groupCount: Int
    /// Set by a reset that changed this slot, cleared when the reset
    /// reports it (Tracker.reset: the reports need no allocation).
    var resetReport = false
    var end: UInt64 { base &+ pages }
}
