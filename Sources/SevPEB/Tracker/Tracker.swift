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
/// (`locked`), and calls the change callback after it is released; except
/// the hypercall-sized update that changes one word of a mixed chunk (or
/// finds a uniform chunk already in that state), which takes no mutex: it
/// passes the update gate (Gate.swift) and changes the word with one atomic
/// RMW, then the chunk's dirty bit (`fastSetRange`). Every locked operation
/// closes the gate first, so the engine never sees a fast update in flight.
/// Knows nothing of streams or KVM. See Storage.swift for the storage
/// layout and its invariants.
///
/// A handle, not a Swift class: the mutex, the atomics and the engine state
/// live in `Mem` memory (so making one reports out of memory instead of
/// trapping, as a class instance's allocation would). Copies share the one
/// tracker; `destroy()` ends it (the C ABI's sevpeb_tracker_destroy, or the
/// owner of a scratch tracker).
@safe public struct Tracker: Equatable {
    /// The lock and the lock-free words; `state` is reached only through `locked`.
    struct Core: ~Copyable {
        let lock: Lock
        let gate: Gate
        /// Chunks with a dirty bit set (read without the lock for
        /// estimates); the engine's count, published by `locked` before it
        /// unlocks.
        let dirtyChunks = Atomic<Int>(0)
        /// What fast updates did since the last locked operation, which
        /// folds it into the engine: chunks they marked dirty, and whether
        /// any page changed (the engine's state generation).
        let fastDirty = Atomic<Int>(0)
        let fastChanged = Atomic<Bool>(false)
        let migrationControlValue = Atomic<UInt64>(0)
        let requireReadyFlag = Atomic<Bool>(false)
    }
    // SAFETY: a Mem.create allocation made in create(), destroyed in destroy() (the handle's owner calls it once, after its last use).
    let core: UnsafeMutablePointer<Core>
    // SAFETY: a Mem allocation made in create(), freed in destroy(), reached only through locked().
    private let state: UnsafeMutablePointer<EngineState>

    /// Whether both handles name the same tracker.
    public static func == (a: Tracker, b: Tracker) -> Bool { unsafe a.core == b.core }

    /// Pages in one chunk (the most one chunk of `takeChunks` covers).
    public static let chunkPages = Geometry.chunkPages

    /// Bytes of the fixed part (the core, its mutex and the engine state),
    /// for accounting.
    static let fixedBytes = MemoryLayout<Core>.stride + Lock.bytes + Gate.bytes + MemoryLayout<EngineState>.stride

    // SAFETY: core and state are the initialized allocations create() just made; the tracker owns them from here.
    private init(core: UnsafeMutablePointer<Core>, state: UnsafeMutablePointer<EngineState>) {
        unsafe self.core = unsafe core
        unsafe self.state = unsafe state
    }

    /// A tracker with no slots; every allocation's failure is ENOMEM.
    public static func create() throws(SevError) -> Tracker {
        guard let m = Lock.make() else { throw .noMemory("out of memory allocating the tracker mutex") }
        guard let gate = Gate.make() else { throw .noMemory("out of memory allocating the tracker's update gate") }
        guard let core = unsafe Mem.create(Core(lock: m, gate: gate)) else { throw .noMemory("out of memory allocating the tracker") }
        let cap = EngineState.initialSlotCap
        guard let slots = unsafe Mem.calloc(cap, SlotRec.self) else {
            unsafe Mem.destroy(core)
            throw .noMemory("out of memory allocating the slot table")
        }
        guard let st = unsafe Mem.calloc(1, EngineState.self) else {
            unsafe Mem.free(slots)
            unsafe Mem.destroy(core)
            throw .noMemory("out of memory allocating the tracker state")
        }
        // SAFETY: st is fresh calloc'd memory for one EngineState (trivial fields).
        unsafe st.initialize(to: EngineState(slots: slots, slotCap: cap, memBytes: Mem.bytes(cap, SlotRec.self)))
        return unsafe Tracker(core: core, state: st)
    }

    /// Free the tracker and everything it holds. No other call on it (or on
    /// any copy of this handle) may run or follow.
    public func destroy() {
        let e = unsafe Engine(lockedState: state, LockKey())   // the last use: no one else can lock
        for s in 0..<e.slotCount { unsafe e.freeSlotStorage(e.slots[s]) }
        unsafe Mem.free(e.slots)
        unsafe Mem.free(state)
        unsafe Mem.destroy(core)
    }

    // MARK: locking

    /// Proof that the lock is held: only `locked` (and destroy) make one, so
    /// only they can make an `Engine`.
    struct LockKey: ~Copyable { fileprivate init() {} }

    /// Run `body` with the lock held and the update gate closed (no fast
    /// update in flight) and the engine lent to it; folds in what fast
    /// updates did since the last locked operation, and publishes the
    /// engine's dirty-chunk count before it reopens the gate and unlocks.
    /// `reopenGate`: a page-state update (the fast path's users want the
    /// gate open again; other operations leave it closed: Gate.swift).
    @inline(__always) func locked<R, E: Error>(reopenGate: Bool = false, _ body: (borrowing Engine) throws(E) -> R) throws(E) -> R {
        try unsafe core.pointee.lock.withLock { () throws(E) -> R in
            try unsafe core.pointee.gate.closed(reopen: reopenGate) { () throws(E) -> R in
                let e = unsafe Engine(lockedState: state, LockKey())
                foldFastUpdates(e)
                defer { unsafe core.pointee.dirtyChunks.store(e.dirtyCount, ordering: .relaxed) }
                return try body(e)
            }
        }
    }

    /// Open the update gate now (under the mutex), as the next locked update
    /// would: for the fuzzers and tests, whose checks between updates are
    /// locked operations that leave it closed, so that their updates take
    /// the lock-free path too.
    package func openUpdateGate() {
        locked(reopenGate: true) { _ in }
    }

    /// With the gate closed: the fast updates' dirty chunks into the
    /// engine's count, their changes into its state generation (so the
    /// cached summary and digest are recomputed).
    @inline(__always) func foldFastUpdates(_ e: borrowing Engine) {
        let c = unsafe core
        if unsafe c.pointee.fastChanged.load(ordering: .relaxed) {
            unsafe c.pointee.fastChanged.store(false, ordering: .relaxed)
            e.stateGeneration &+= 1
        }
        let d = unsafe c.pointee.fastDirty.load(ordering: .relaxed)
        if d != 0 {
            unsafe c.pointee.fastDirty.store(0, ordering: .relaxed)
            e.dirtyCount &+= d
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
        if let (changed, cb) = unsafe fastSetRange(gfn, n, private: value) {
            if changed, let f = unsafe cb.0 { unsafe f(cb.1, gfn, n, PageState(private: value).rawValue) }
            return changed
        }
        // The callback is read under the same lock as the update (not with a
        // second lock round trip: that was a third of a single-page update).
        var cb: PendingCallback = (nil, nil)
        let changed = try locked(reopenGate: true) { (e) throws(SevError) -> Bool in
            let any = try e.setRange(gfn, n, private: value)
            if any { unsafe cb = unsafe e.pendingCallback }
            return any
        }
        if changed, let f = unsafe cb.0 { unsafe f(cb.1, gfn, n, PageState(private: value).rawValue) }
        return changed
    }

    /// The update fast path, without the mutex: inside the gate, a range in
    /// one word of a mixed chunk (not the whole chunk, which turns uniform)
    /// is one atomic RMW of that word, then the chunk's dirty bit, its cached
    /// hash and the group's hash invalidated (each RMW only when the bit is
    /// not already in that state); a range inside one chunk that is uniform
    /// with the value already changes nothing. Returns (changed, callback),
    /// or nil for the locked path: the gate is closed, or the update needs
    /// it (a uniform chunk turning mixed allocates a block, a whole chunk or
    /// several, validation and its messages).
    ///
    /// Inside the gate no locked operation runs, so everything but those
    /// words stays as the last one left it: the slot table, groups, `mixed`
    /// and `shared`, the block arrays and the callback are read plainly; the
    /// words other fast updates change are accessed atomically only.
    @inline(__always)
    func fastSetRange(_ gfn: UInt64, _ n: UInt64, private value: Bool) -> (Bool, PendingCallback)? {
        let st = unsafe state
        let c = unsafe core
        return unsafe c.pointee.gate.pass { () -> (Bool, PendingCallback)? in
            guard let (sl, g, ch, a) = unsafe fastLocate(st, gfn) else { return nil }
            // In one chunk of this slot (n > 0, no page past the chunk or the slot).
            guard n != 0 && n <= UInt64(Geometry.chunkPages &- a) && n <= sl.end &- gfn else { return nil }
            let bit = ch & 63
            let m: UInt64 = 1 &<< bit
            let mixed = unsafe g.pointee.mixed
            if mixed & m == 0 {
                // Uniform: already `value` on every page means no change.
                if unsafe (g.pointee.shared & m == 0) == value { return (false, (nil, nil)) }
                return nil
            }
            let b = a &+ Int(truncatingIfNeeded: n)
            // One word, and not the whole chunk (that one turns uniform).
            guard (a &>> 6) == ((b &- 1) &>> 6) && (a != 0 || b != Geometry.chunkLen(ch, sl.pages)) else { return nil }
            // SAFETY: the chunk is mixed, so its rank indexes a live block of blockWords words; a >> 6 < chunkWords.
            let w = unsafe g.pointee.blocks![(mixed & (m &- 1)).nonzeroBitCount]! + (a &>> 6)
            #if SEVPEB_FAULT_FAST_PATH_DROP_PAGE   // fuzz/run.sh --negative-control builds with it: hypercall must fail
            let bm = Bits.mask(a & 63, ((b &- 1) & 63))
            #else
            let bm = Bits.mask(a & 63, ((b &- 1) & 63) &+ 1)
            #endif
            let old = unsafe value ? sevpeb_shim_fetch_or64(w, bm) : sevpeb_shim_fetch_and64(w, ~bm)
            if old & bm == (value ? bm : 0) { return (false, (nil, nil)) }
            // The chunk's dirty bit (an RMW only for the first change since the
            // encoder took it), then its cached hash and the group's.
            let dirty = unsafe Group.field(g, Group.dirtyOffset, UInt64.self)
            let hashOK = unsafe Group.field(g, Group.hashOKOffset, UInt64.self)
            let hashValid = unsafe Group.field(g, Group.hashValidOffset, Bool.self)
            #if !SEVPEB_FAULT_FAST_PATH_NO_DIRTY   // Tests/c/stress.sh's negative control builds with it: hammer must fail
            if unsafe sevpeb_shim_load64(dirty) & m == 0 && sevpeb_shim_fetch_or64(dirty, m) & m == 0 {
                unsafe c.pointee.fastDirty.wrappingAdd(1, ordering: .relaxed)
            }
            #endif
            if unsafe sevpeb_shim_load64(hashOK) & m != 0 { _ = unsafe sevpeb_shim_fetch_and64(hashOK, ~m) }
            if unsafe sevpeb_shim_load_bool(hashValid) { unsafe sevpeb_shim_store_bool(hashValid, false) }
            if unsafe !c.pointee.fastChanged.load(ordering: .relaxed) { unsafe c.pointee.fastChanged.store(true, ordering: .relaxed) }
            return unsafe (true, (st.pointee.callback, st.pointee.callbackOpaque))
        } ?? nil
    }

    /// Inside the gate: page gfn's slot, group, chunk (in the slot) and
    /// page in the chunk; nil if no slot holds it. The slot the last locked
    /// lookup found is tried first (read only: locked operations write the
    /// hint, with the gate closed), then a binary search.
    // SAFETY: st is this tracker's state, read inside its gate (see fastSetRange).
    @inline(__always)
    func fastLocate(_ st: UnsafeMutablePointer<EngineState>, _ gfn: UInt64) -> (SlotRec, UnsafeMutablePointer<Group>, UInt64, Int)? {
        let count = unsafe st.pointee.slotCount
        var s = unsafe st.pointee.slotHint
        if unsafe !(s < count && gfn >= st.pointee.slots[s].base && gfn &- st.pointee.slots[s].base < st.pointee.slots[s].pages) {
            s = unsafe st.pointee.firstSlotEndingAfter(gfn)
            guard unsafe s < count && st.pointee.slots[s].base <= gfn else { return nil }
        }
        let sl = unsafe st.pointee.slots[s]
        let rel = gfn &- sl.base
        let ch = rel &>> UInt64(Geometry.chunkShift)
        let g = unsafe sl.groups + Int(truncatingIfNeeded: ch &>> UInt64(Geometry.groupShift))
        return unsafe (sl, g, ch, Int(truncatingIfNeeded: rel & UInt64(Geometry.chunkPages &- 1)))
    }

    /// State of one page: true = private. Takes no mutex when the gate is
    /// open (the word is read atomically: fast updates may be changing it).
    public func test(_ gfn: UInt64) throws(SevError) -> Bool {
        let st = unsafe state
        let r = unsafe core.pointee.gate.pass { () -> Bool? in
            guard let (_, g, ch, a) = unsafe fastLocate(st, gfn) else { return nil }
            let bit = ch & 63
            let mixed = unsafe g.pointee.mixed
            if mixed & (1 &<< bit) == 0 { return unsafe g.pointee.shared & (1 &<< bit) == 0 }
            // SAFETY: the chunk is mixed, so its rank indexes a live block; a >> 6 < chunkWords.
            let w = unsafe g.pointee.blocks![(mixed & ((1 &<< bit) &- 1)).nonzeroBitCount]! + (a &>> 6)
            return unsafe (sevpeb_shim_load64(w) &>> UInt64(a & 63)) & 1 != 0
        }
        if let v = r ?? nil { return v }
        return try locked { (e) throws(SevError) -> Bool in try e.test(gfn) }
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
        let (changed, cb) = unsafe try locked(reopenGate: true) { (e) throws(SevError) -> (Bool, PendingCallback) in
            unsafe (try e.setBitmap(gfn, n, source), e.pendingCallback)
        }
        if changed, let f = unsafe cb.0 { unsafe f(cb.1, gfn, n, PageState.mixed.rawValue) }
        return changed
    }

    /// Every page of the layout private (cold reboot), in one lock hold;
    /// the layout stays. Then one change report per slot that had shared
    /// pages, each found under the lock and made outside it. Allocates
    /// nothing, so it cannot fail: the slots to report are marked in the
    /// slot table itself.
    public func reset() {
        var cb: PendingCallback = (nil, nil)
        let marked = locked { e in
            unsafe cb = unsafe e.pendingCallback
            return unsafe e.reset(mark: cb.0 != nil)
        }
        guard marked, let f = unsafe cb.0 else { return }
        var from: UInt64 = 0
        while let (base, pages) = locked({ $0.takeResetReport(from: from) }) {
            unsafe f(cb.1, base, pages, PageState.private.rawValue)
            from = base &+ 1
        }
    }

    // MARK: layout

    public struct Slot: Equatable {
        public var base: UInt64
        public var pages: UInt64
        public init(base: UInt64, pages: UInt64) { self.base = base; self.pages = pages }
    }

    /// The layout as a Swift array (for Swift callers; the library's own
    /// paths use `slotCopy`, which reports out of memory instead of trapping).
    public var slotList: [Slot] {
        locked { e in
            var r: [Slot] = []
            r.reserveCapacity(e.slotCount)
            for s in 0..<e.slotCount { unsafe r.append(Slot(base: e.slots[s].base, pages: e.slots[s].pages)) }
            return r
        }
    }

    /// The layout copied out under the lock into `Mem` memory.
    package func slotCopy() throws(SevError) -> MemList<Slot> {
        var r = MemList<Slot>()
        try locked { (e) throws(SevError) in
            if !r.reserve(e.slotCount) { throw .noMemory("out of memory allocating a copy of the layout") }
            for s in 0..<e.slotCount { _ = unsafe r.append(Slot(base: e.slots[s].base, pages: e.slots[s].pages)) }
        }
        return r
    }

    /// The layout as maximal stretches [start, end) of slots that touch.
    package func stretches() throws(SevError) -> MemList<(UInt64, UInt64)> {
        var r = MemList<(UInt64, UInt64)>()
        try locked { (e) throws(SevError) in
            if !r.reserve(e.slotCount) { throw .noMemory("out of memory allocating the stretches of the layout") }
            var s = 0
            while s < e.slotCount {
                let start = unsafe e.slots[s].base
                var end = unsafe start &+ e.slots[s].pages
                s &+= 1
                while unsafe s < e.slotCount && e.slots[s].base == end {
                    unsafe end &+= e.slots[s].pages
                    s &+= 1
                }
                _ = r.append((start, end))   // reserved above: cannot fail
            }
        }
        return r
    }

    /// End of the highest slot (0 for no slots).
    package var layoutEnd: UInt64 {
        locked { e in unsafe e.slotCount == 0 ? 0 : e.slots[e.slotCount &- 1].base &+ e.slots[e.slotCount &- 1].pages }
    }

    /// Whether `other` has the same layout (under both locks, in adopt's
    /// order: `other` first).
    package func sameLayout(as other: Tracker) -> Bool {
        other.locked { o in locked { e in e.sameLayout(o) } }
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

extension Engine {
    /// An engine over a state no other thread can reach (a layout change
    /// built aside by `setLayout`, not yet part of any tracker): no lock
    /// guards it because none is needed.
    // SAFETY: p is a private EngineState of the caller, reachable by no other thread.
    static func unshared(_ p: UnsafeMutablePointer<EngineState>) -> Engine {
        unsafe Engine(lockedState: p, Tracker.LockKey())
    }
}

// SAFETY: every access to a Tracker's mutable state happens under its mutex
// (through `locked`, which alone makes an `Engine`), or through `Atomic`
// fields; the threading contract in include/sevpeb.h is built on that.
// Callbacks run without the lock.
extension Tracker: @unchecked Sendable {}
