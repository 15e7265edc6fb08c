import CSevPEBShims
import Synchronization

/// A page's (or a range's) state: the library's one spelling of private,
/// shared and mixed. The raw values are the C header's SEVPEB_PRIVATE,
/// SEVPEB_SHARED and SEVPEB_MIXED (pinned by TrackerTests).
public enum PageState: Int32 {
    case shared = 0
    case `private` = 1
    /// Some pages private, some shared (a sevpeb_set_bitmap update).
    case mixed = -1

    public init(private: Bool) { self = `private` ? .private : .shared }
}

/// Called after an update that changed pages: (opaque, gfn, npages, state),
/// state a `PageState` raw value (mixed: sevpeb_set_bitmap).
// SAFETY: the opaque argument is the C caller's value, handed back untouched.
public typealias ChangeCallback = @convention(c) (UnsafeMutableRawPointer?, UInt64, UInt64, Int32) -> Void

/// The page-state tracker: one bit per 4 KiB GFN of the VMM's memory slots,
/// 1 = private (default), 0 = shared.
///
/// Thread-safe: the thin locked shell over an `Engine` (Engine.swift). Every
/// operation takes the one short mutex, lends the engine to its body
/// (`locked`), and calls the change callback after it is released. Knows
/// nothing of streams or KVM. See Storage.swift for the storage layout and
/// its invariants.
@safe public final class Tracker {
    private let lock: Lock
    /// The engine's state; reached only through `locked`.
    // SAFETY: a Mem allocation made in create(), freed in deinit, reached only through locked().
    private let state: UnsafeMutablePointer<EngineState>
    /// Chunks with a dirty bit set (read without the lock for estimates);
    /// the engine's count, published by `locked` before it unlocks.
    let dirtyChunks = Atomic<Int>(0)
    let migrationControlValue = Atomic<UInt64>(0)
    let requireReadyFlag = Atomic<Bool>(false)

    /// Pages in one chunk (the most one chunk of `takeChunks` covers).
    public static let chunkPages = Geometry.chunkPages

    /// Bytes of the fixed part (this object, its mutex and its engine
    /// state), for accounting.
    static let fixedBytes = 128 + Lock.bytes + MemoryLayout<EngineState>.stride

    // SAFETY: state is the initialized EngineState create() just allocated; the tracker owns it from here.
    private init(lock: consuming Lock, state: UnsafeMutablePointer<EngineState>) {
        self.lock = lock
        unsafe self.state = unsafe state
    }

    /// A tracker with no slots. (A factory, not a throwing init: Embedded
    /// Swift 6.3 leaks objects whose throwing init fails.)
    public static func create() throws(SevError) -> Tracker {
        guard let m = Lock.make() else { throw .noMemory("tracker mutex") }
        let cap = EngineState.initialSlotCap
        guard let slots = unsafe Mem.calloc(cap, SlotRec.self) else { throw .noMemory("slot table") }
        guard let st = unsafe Mem.calloc(1, EngineState.self) else {
            unsafe Mem.free(slots)
            throw .noMemory("tracker state")
        }
        // SAFETY: st is fresh calloc'd memory for one EngineState (trivial fields).
        unsafe st.initialize(to: EngineState(slots: slots, slotCap: cap, memBytes: Mem.bytes(cap, SlotRec.self)))
        return unsafe Tracker(lock: m, state: st)
    }

    deinit {
        let e = unsafe Engine(lockedState: state, LockKey())   // last reference: no one else can lock
        for s in 0..<e.slotCount { unsafe e.freeSlotStorage(e.slots[s]) }
        unsafe Mem.free(e.slots)
        unsafe Mem.free(state)
    }

    // MARK: locking

    /// Proof that the lock is held: only `locked` (and deinit) make one, so
    /// only they can make an `Engine`.
    struct LockKey: ~Copyable { fileprivate init() {} }

    /// Run `body` with the lock held and the engine lent to it; publishes
    /// the engine's dirty-chunk count before unlocking.
    @inline(__always) func locked<R, E: Error>(_ body: (borrowing Engine) throws(E) -> R) throws(E) -> R {
        try lock.withLock { () throws(E) -> R in
            let e = unsafe Engine(lockedState: state, LockKey())
            defer { dirtyChunks.store(e.dirtyCount, ordering: .relaxed) }
            return try body(e)
        }
    }

    @inline(__always) func notify(_ gfn: UInt64, _ n: UInt64, _ state: Int32) {
        // Read the callback under the lock, call it without.
        let (cb, op) = unsafe locked { unsafe $0.pendingCallback }
        if let cb = unsafe cb { unsafe cb(op, gfn, n, state) }
    }

    /// The callback as read inside an operation's critical section (so a
    /// changing update takes the lock once).
    // SAFETY: the opaque value is the C caller's, never dereferenced.
    typealias PendingCallback = (ChangeCallback?, UnsafeMutableRawPointer?)

    // SAFETY: opaque is the C caller's value, handed back to cb, never dereferenced.
    public func setCallback(_ cb: ChangeCallback?, _ opaque: UnsafeMutableRawPointer?) {
        locked { unsafe $0.callback = unsafe cb; unsafe $0.callbackOpaque = unsafe opaque }
    }

    // MARK: page state

    /// Set [gfn, gfn+n) private (`value` true) or shared. Returns whether
    /// any page changed. On error nothing changed.
    @discardableResult @inline(__always)
    public func setRange(_ gfn: UInt64, _ n: UInt64, private value: Bool) throws(SevError) -> Bool {
        // The callback is read under the same lock as the update (not with a
        // second lock round trip: that was a third of a single-page update).
        var cb: PendingCallback = (nil, nil)
        let changed = try locked { (e) throws(SevError) -> Bool in
            let any = try e.setRange(gfn, n, private: value)
            if any { unsafe cb = unsafe e.pendingCallback }
            return any
        }
        if changed, let f = unsafe cb.0 { unsafe f(cb.1, gfn, n, PageState(private: value).rawValue) }
        return changed
    }

    /// State of one page: true = private.
    public func test(_ gfn: UInt64) throws(SevError) -> Bool {
        try locked { (e) throws(SevError) -> Bool in try e.test(gfn) }
    }

    /// Shared pages in [gfn, gfn+n).
    public func countShared(_ gfn: UInt64, _ n: UInt64) throws(SevError) -> UInt64 {
        try locked { (e) throws(SevError) -> UInt64 in try e.countShared(gfn, n) }
    }

    /// (pages in the layout, shared pages), from the cached summary.
    public func totals() -> (pages: UInt64, shared: UInt64) {
        locked {
            let r = $0.summary()
            return (r.pages, r.shared)
        }
    }

    /// The first maximal shared run ending after `from`, clipped to start at
    /// `from` or later; runs continue across slots that touch.
    public func nextSharedRun(from: UInt64) -> (gfn: UInt64, pages: UInt64)? {
        locked { $0.nextSharedRun(from: from) }
    }

    /// Copy [gfn, gfn+n) out as bits (1 = private) into dst (LSB-first bytes).
    // SAFETY: dst is valid for dstLen bytes (caller); ceil(n/8) <= dstLen is checked before the engine writes.
    public func getBitmap(_ gfn: UInt64, _ n: UInt64, _ dst: UnsafeMutablePointer<UInt8>, _ dstLen: Int) throws(SevError) {
        let need = (n &>> 3) &+ (n & 7 == 0 ? 0 : 1)   // ceil(n/8) without wrapping
        if n == 0 { throw .invalid("npages 0: must be > 0") }
        if UInt64(dstLen) < need { throw SevError(ENOSPC, "buffer of \(dstLen) bytes too small for \(n) pages (need \(need))") }
        try locked { (e) throws(SevError) in unsafe try e.getBitmap(gfn, n, dst) }
    }

    /// Set [gfn, gfn+n) to the exact bits of src (1 = private); src nil
    /// makes the range private. Returns whether anything changed.
    // SAFETY: src (if not nil) is valid for srcLen bytes (caller); ceil(n/8) <= srcLen is checked before the engine reads.
    @discardableResult
    public func setBitmap(_ gfn: UInt64, _ n: UInt64, _ src: UnsafePointer<UInt8>?, _ srcLen: Int) throws(SevError) -> Bool {
        guard let src = unsafe src else { return try setRange(gfn, n, private: true) }
        let need = (n &>> 3) &+ (n & 7 == 0 ? 0 : 1)   // ceil(n/8) without wrapping
        if n == 0 { throw .invalid("npages 0: must be > 0") }
        if UInt64(srcLen) < need { throw SevError(ENOSPC, "source of \(srcLen) bytes too small for \(n) pages (need \(need))") }
        let source = unsafe ByteBitSource(p: src, bytes: Int(need))
        let (changed, cb) = unsafe try locked { (e) throws(SevError) -> (Bool, PendingCallback) in
            unsafe (try e.setBitmap(gfn, n, source), e.pendingCallback)
        }
        if changed, let f = unsafe cb.0 { unsafe f(cb.1, gfn, n, PageState.mixed.rawValue) }
        return changed
    }

    /// Every page of the layout private (cold reboot); the layout stays.
    /// Reports one change per slot that had shared pages.
    public func reset() {
        var changedSlots: [(UInt64, UInt64)] = []
        locked { $0.reset(&changedSlots) }
        for (b, p) in changedSlots { notify(b, p, PageState.private.rawValue) }
    }

    // MARK: layout

    public struct Slot: Equatable {
        public var base: UInt64
        public var pages: UInt64
        public init(base: UInt64, pages: UInt64) { self.base = base; self.pages = pages }
    }

    public var slotList: [Slot] {
        locked { e in
            var r: [Slot] = []
            r.reserveCapacity(e.slotCount)
            for s in 0..<e.slotCount { unsafe r.append(Slot(base: e.slots[s].base, pages: e.slots[s].pages)) }
            return r
        }
    }

    /// Number of slots (sevpeb_slot_count).
    public var slotCount: Int { locked { $0.slotCount } }

    /// Slot `index` in ascending order, or nil past the last (sevpeb_slot_get).
    public func slot(at index: Int) -> Slot? {
        locked { e in unsafe index >= 0 && index < e.slotCount ? Slot(base: e.slots[index].base, pages: e.slots[index].pages) : nil }
    }

    public static let maxSlots = 32768
    public static let gfnLimit: UInt64 = 1 << 52

    static func checkSlotArgs(_ base: UInt64, _ pages: UInt64) throws(SevError) {
        if pages == 0 { throw .invalid("slot at gfn \(hex(base)): npages 0, must be > 0") }
        let (end, o) = base.addingReportingOverflow(pages)
        if o || end > Tracker.gfnLimit {
            throw .outOfRange("slot gfn \(hex(base)) + \(pages) pages ends beyond the GFN limit \(hex(Tracker.gfnLimit))")
        }
    }

    public func addSlot(base: UInt64, pages: UInt64) throws(SevError) {
        try locked { (e) throws(SevError) in try e.addSlot(base: base, pages: pages) }
    }

    public func removeSlot(base: UInt64) throws(SevError) {
        try locked { (e) throws(SevError) in try e.removeSlot(base: base) }
    }

    public func resizeSlot(base: UInt64, pages: UInt64) throws(SevError) {
        try locked { (e) throws(SevError) in try e.resizeSlot(base: base, pages: pages) }
    }

    // MARK: accounting

    public var memoryBytes: Int { locked { $0.memBytes &+ Tracker.fixedBytes } }
}

// SAFETY: every access to a Tracker's mutable state happens under its mutex
// (through `locked`, which alone makes an `Engine`), or through `Atomic`
// fields; the threading contract in include/sevpeb.h is built on that.
// Callbacks run without the lock.
extension Tracker: @unchecked Sendable {}
