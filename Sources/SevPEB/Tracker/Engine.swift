import CSevPEBShims

/// A tracker's mutable state: the slot table and everything the lock guards.
/// Lives in `Mem`-allocated memory owned by its `Tracker`; reached only
/// through an `Engine`, which only `Tracker.locked` makes.
@safe struct EngineState {
    /// The slot table, ascending by base: `slotCap` entries, the first
    /// `slotCount` used. Never nil (allocated with the tracker).
    // SAFETY: a Mem table of slotCap entries, slotCount of them initialized; freed with the tracker.
    var slots: UnsafeMutablePointer<SlotRec>
    var slotCount = 0
    var slotCap: Int
    var memBytes: Int
    /// Chunks with a dirty bit set; `Tracker.locked` publishes it to the
    /// atomic `dirtyChunks` before it unlocks.
    var dirtyCount = 0
    /// Bumped on every layout change (the encoder re-sends the layout).
    var layoutGeneration: UInt64 = 0
    /// Bumped on every change of state or layout: the whole-state summary
    /// (digest, page counts) is cached against it, so a digest with nothing
    /// changed since the last one is O(1) whatever the guest size.
    var stateGeneration: UInt64 = 1
    var summaryCache: (gen: UInt64, digest: UInt64, pages: UInt64, shared: UInt64) = (0, 0, 0, 0)
    /// The slot the last lookup found (a hint: checked against slotCount and
    /// the slot's bounds before use, so a layout change cannot make it lie).
    /// Page-state calls come in runs in one slot (the boot storm's DMA
    /// area): a hit skips the binary search.
    var slotHint = 0
    var callback: ChangeCallback? = nil
    // SAFETY: the C caller's value, handed back to its callback, never dereferenced.
    var callbackOpaque: UnsafeMutableRawPointer? = nil

    /// Slots the table holds when the tracker is created.
    static let initialSlotCap = 8

    /// Index of the first slot whose end is above `gfn` (slotCount if none).
    @inline(__always) func firstSlotEndingAfter(_ gfn: UInt64) -> Int {
        let sl = unsafe slots
        var lo = 0, hi = slotCount
        while lo < hi {
            let mid = (lo &+ hi) &>> 1
            if unsafe sl[mid].end <= gfn { lo = mid &+ 1 } else { hi = mid }
        }
        return lo
    }
}

/// The lock-held storage engine (BitCollections' `_UnsafeHandle`, QEMU's
/// `_locked` functions): every operation on slots, chunks and caches is a
/// method here. An `Engine` is made only by `Tracker.locked` (its
/// initializer is private to Tracker.swift) and lent to the body for the
/// time the lock is held; it is `~Copyable`, so it cannot be kept.
@safe struct Engine: ~Copyable {
    // SAFETY: points at the tracker's EngineState, alive while the tracker is; lent only under its lock.
    let p: UnsafeMutablePointer<EngineState>

    // SAFETY: p is the tracker's EngineState; the LockKey proves the caller holds its lock.
    init(lockedState p: UnsafeMutablePointer<EngineState>, _ key: consuming Tracker.LockKey) { unsafe self.p = unsafe p }

    // SAFETY: the table as stored in EngineState (see there).
    var slots: UnsafeMutablePointer<SlotRec> {
        get { unsafe p.pointee.slots } nonmutating set { unsafe p.pointee.slots = unsafe newValue }
    }
    var slotCount: Int { get { unsafe p.pointee.slotCount } nonmutating set { unsafe p.pointee.slotCount = newValue } }
    var slotCap: Int { get { unsafe p.pointee.slotCap } nonmutating set { unsafe p.pointee.slotCap = newValue } }
    var memBytes: Int { get { unsafe p.pointee.memBytes } nonmutating set { unsafe p.pointee.memBytes = newValue } }
    var dirtyCount: Int { get { unsafe p.pointee.dirtyCount } nonmutating set { unsafe p.pointee.dirtyCount = newValue } }
    var layoutGeneration: UInt64 {
        get { unsafe p.pointee.layoutGeneration }
        nonmutating set { unsafe p.pointee.layoutGeneration = newValue; unsafe p.pointee.stateGeneration &+= 1 }
    }
    var stateGeneration: UInt64 {
        get { unsafe p.pointee.stateGeneration } nonmutating set { unsafe p.pointee.stateGeneration = newValue }
    }
    var summaryCache: (gen: UInt64, digest: UInt64, pages: UInt64, shared: UInt64) {
        get { unsafe p.pointee.summaryCache } nonmutating set { unsafe p.pointee.summaryCache = newValue }
    }
    var callback: ChangeCallback? { get { unsafe p.pointee.callback } nonmutating set { unsafe p.pointee.callback = unsafe newValue } }
    // SAFETY: the C caller's value, never dereferenced.
    var callbackOpaque: UnsafeMutableRawPointer? {
        get { unsafe p.pointee.callbackOpaque } nonmutating set { unsafe p.pointee.callbackOpaque = unsafe newValue }
    }
    /// The callback as read inside an operation's critical section.
    var pendingCallback: Tracker.PendingCallback { unsafe (callback, callbackOpaque) }

    // MARK: slot lookup

    /// Index of the first slot whose end is above `gfn` (slotCount if none).
    @inline(__always) func firstSlotEndingAfter(_ gfn: UInt64) -> Int { unsafe p.pointee.firstSlotEndingAfter(gfn) }

    /// Index of the slot containing `gfn`, or nil.
    @inline(__always) func slotIndex(containing gfn: UInt64) -> Int? {
        let h = unsafe p.pointee.slotHint
        if h < slotCount {
            let sl = unsafe slots[h]
            if gfn >= sl.base && gfn &- sl.base < sl.pages { return h }
        }
        if slotCount == 0 { return nil }
        let i = firstSlotEndingAfter(gfn)
        if unsafe i < slotCount && slots[i].base <= gfn { unsafe p.pointee.slotHint = i; return i }
        return nil
    }

    /// Validates [gfn, gfn+n) lies in slots that touch; returns the first slot.
    func checkRange(_ gfn: UInt64, _ n: UInt64) throws(SevError) -> Int {
        if n == 0 { throw .invalid("npages 0 at gfn \(hex(gfn)): must be > 0") }
        let (end, o) = gfn.addingReportingOverflow(n)
        if o { throw .outOfRange("gfn \(hex(gfn)) + \(n) pages overflows 64 bits") }
        guard let s0 = slotIndex(containing: gfn) else {
            throw .outOfRange("gfn range \(hex(gfn))..\(hex(end)) outside the memory layout (gfn \(hex(gfn)) is in no slot)")
        }
        var s = s0
        while unsafe slots[s].end < end {
            let next = s &+ 1
            if unsafe next >= slotCount || slots[next].base != slots[s].end {
                throw .outOfRange(unsafe "gfn range \(hex(gfn))..\(hex(end)) outside the memory layout (hole at gfn \(hex(slots[s].end)))")
            }
            s = next
        }
        return s0
    }

    /// Visit [gfn, gfn+n) (already validated, starting in slot s0) as chunk
    /// segments: (slot, chunk, from, to) with page offsets within the chunk,
    /// plus the segment's offset from gfn.
    @inline(__always)
    func forEachSegment(_ gfn: UInt64, _ n: UInt64, _ s0: Int,
                        _ body: (Int, UInt64, Int, Int, UInt64) -> Void) {
        var s = s0
        var cur = gfn
        let end = gfn &+ n
        while cur < end {
            let sl = unsafe slots[s]
            let segEnd = min(end, sl.end)
            var rel = cur &- sl.base
            let relEnd = segEnd &- sl.base
            while rel < relEnd {
                let c = rel &>> UInt64(Geometry.chunkShift)
                let cStart = c &<< UInt64(Geometry.chunkShift)
                let a = Int(truncatingIfNeeded: rel &- cStart)
                let cEnd = min(relEnd, cStart &+ UInt64(Geometry.chunkPages))
                let b = Int(truncatingIfNeeded: cEnd &- cStart)
                body(s, c, a, b, (sl.base &+ rel) &- gfn)
                rel = cEnd
            }
            cur = segEnd
            s &+= 1
        }
    }

    // MARK: chunk primitives

    // SAFETY: s < slotCount and c is a chunk of slot s, so the group index is below the slot's groupCount.
    @inline(__always) func group(_ s: Int, _ c: UInt64) -> UnsafeMutablePointer<Group> {
        // SAFETY: c is a chunk of slot s, so its group index is below groupCount.
        unsafe slots[s].groups + Int(truncatingIfNeeded: c &>> UInt64(Geometry.groupShift))
    }

    /// nil if mixed; otherwise true = uniform private, false = uniform shared.
    // SAFETY: g comes from group(), a live group of this engine, read under the lock.
    @inline(__always) func uniformValue(_ g: UnsafeMutablePointer<Group>, _ bit: UInt64) -> Bool? {
        let m: UInt64 = 1 &<< bit
        if unsafe g.pointee.mixed & m != 0 { return nil }
        return unsafe g.pointee.shared & m == 0
    }

    /// Index of chunk `bit`'s block in the group's compact block array.
    @inline(__always) func rank(_ mixed: UInt64, _ bit: UInt64) -> Int {
        (mixed & ((1 &<< bit) &- 1)).nonzeroBitCount
    }

    // SAFETY: chunk `bit` is mixed (callers check), so its rank indexes a non-nil block of the group's compact array.
    @inline(__always) func block(_ g: UnsafeMutablePointer<Group>, _ bit: UInt64) -> UnsafeMutablePointer<UInt64> {
        unsafe g.pointee.blocks![rank(g.pointee.mixed, bit)]!
    }

    /// Free every block of a group and its array (state handled by the caller).
    // SAFETY: the array holds popcount(mixed) blocks (Storage.swift invariant); each freed once, then the array.
    func freeGroupBlocks(_ g: UnsafeMutablePointer<Group>) {
        let n = unsafe g.pointee.mixed.nonzeroBitCount
        for i in 0..<n {
            unsafe Mem.free(g.pointee.blocks![i])
            memBytes &-= Mem.bytes(Geometry.blockWords, UInt64.self)
        }
        unsafe g.pointee.mixed = 0
        unsafe freeBlockArray(g)
    }

    /// Record that chunk `bit` of group `g` changed.
    // SAFETY: g comes from group(), a live group of this engine, written under the lock.
    @inline(__always) func markChanged(_ g: UnsafeMutablePointer<Group>, _ bit: UInt64) {
        let m: UInt64 = 1 &<< bit
        if unsafe g.pointee.dirty & m == 0 {
            unsafe g.pointee.dirty |= m
            dirtyCount &+= 1
        }
        unsafe g.pointee.hashOK &= ~m
        unsafe g.pointee.hashValid = false
        stateGeneration &+= 1
    }

    /// Give a uniform chunk a block holding the same state. The page state
    /// does not change, so a failure part-way through an operation leaves
    /// the state intact. Returns false when out of memory.
    // SAFETY: arrays and blocks are fresh Mem allocations checked for nil; the array is shifted within its capacity (count + 1 <= blockCap).
    func materialize(_ s: Int, _ c: UInt64) -> Bool {
        let g = unsafe group(s, c)
        let bit = c & 63
        guard let value = unsafe uniformValue(g, bit) else { return true }
        let count = unsafe g.pointee.mixed.nonzeroBitCount
        if unsafe count &+ 1 > Int(g.pointee.blockCap) {
            // Grow the compact array: by one while small, then by half.
            let newCap = count < 8 ? count &+ 1 : min(Geometry.chunksPerGroup, count &+ count / 2)
            guard let arr = unsafe Mem.calloc(newCap, UnsafeMutablePointer<UInt64>?.self) else { return false }
            if let old = unsafe g.pointee.blocks {
                unsafe arr.update(from: old, count: count)
                unsafe Mem.free(old)
            }
            unsafe memBytes &+= Mem.bytes(newCap &- Int(g.pointee.blockCap), UnsafeMutablePointer<UInt64>?.self)
            unsafe g.pointee.blocks = unsafe arr
            unsafe g.pointee.blockCap = UInt8(newCap)
        }
        guard let blk = unsafe Mem.calloc(Geometry.blockWords, UInt64.self) else {
            if unsafe g.pointee.mixed == 0 { unsafe freeBlockArray(g) }
            return false
        }
        memBytes &+= Mem.bytes(Geometry.blockWords, UInt64.self)
        let len = unsafe Geometry.chunkLen(c, slots[s].pages)
        if value { unsafe Bits.fill(blk, from: 0, to: len, value: true) }
        let r = unsafe rank(g.pointee.mixed, bit)
        let arr = unsafe g.pointee.blocks!
        var i = count
        while i > r { unsafe arr[i] = unsafe arr[i &- 1]; i &-= 1 }
        unsafe arr[r] = unsafe blk
        unsafe g.pointee.mixed |= 1 &<< bit
        unsafe g.pointee.shared &= ~(1 &<< bit)
        unsafe g.pointee.hashOK &= ~(1 &<< bit)
        return true
    }

    // SAFETY: g comes from group(); the array is freed once and its pointer cleared.
    func freeBlockArray(_ g: UnsafeMutablePointer<Group>) {
        if let arr = unsafe g.pointee.blocks {
            unsafe Mem.free(arr)
            unsafe memBytes &-= Mem.bytes(Int(g.pointee.blockCap), UnsafeMutablePointer<UInt64>?.self)
            unsafe g.pointee.blocks = nil
            unsafe g.pointee.blockCap = 0
        }
    }

    /// Make chunk `bit` uniform with `value` (freeing its block).
    // SAFETY: g comes from group(); the block at rank r exists because the chunk is mixed; the array shifts within count entries.
    func setUniform(_ g: UnsafeMutablePointer<Group>, _ bit: UInt64, _ value: Bool) {
        let m: UInt64 = 1 &<< bit
        if unsafe g.pointee.mixed & m != 0 {
            let count = unsafe g.pointee.mixed.nonzeroBitCount
            let r = unsafe rank(g.pointee.mixed, bit)
            let arr = unsafe g.pointee.blocks!
            unsafe Mem.free(arr[r])
            memBytes &-= Mem.bytes(Geometry.blockWords, UInt64.self)
            var i = r
            while i &+ 1 < count { unsafe arr[i] = unsafe arr[i &+ 1]; i &+= 1 }
            unsafe arr[count &- 1] = nil
            unsafe g.pointee.mixed &= ~m
            unsafe g.pointee.hashOK &= ~m   // the cached hash went with the block
            if unsafe g.pointee.mixed == 0 { unsafe freeBlockArray(g) }
        }
        if value { unsafe g.pointee.shared &= ~m } else { unsafe g.pointee.shared |= m }
    }

    /// Set pages [a, b) of chunk c of slot s to `value`. Needs a block if the
    /// chunk is uniform with the other value and [a, b) is partial: the caller
    /// materialized it. Returns whether anything changed.
    @inline(__always)
    func setChunkRange(_ s: Int, _ c: UInt64, _ a: Int, _ b: Int, _ value: Bool) -> Bool {
        let g = unsafe group(s, c)
        let bit = c & 63
        let len = unsafe Geometry.chunkLen(c, slots[s].pages)
        let whole = a == 0 && b == len
        var changed: Bool
        if let u = unsafe uniformValue(g, bit) {
            if u == value { return false }
            if whole { unsafe setUniform(g, bit, value) } else {
                // materialized by the caller's first pass
                unsafe Bits.fill(block(g, bit), from: a, to: b, value: value)
            }
            changed = true
        } else {
            if whole {
                // A mixed chunk can already hold `value` on every page (a
                // shrink cut its other pages, or partial updates filled it):
                // then making it uniform changes no page.
                let ones = unsafe Bits.countOnes(block(g, bit), from: 0, to: len)
                changed = ones != (value ? len : 0)
                unsafe setUniform(g, bit, value)
            } else {
                changed = unsafe Bits.fill(block(g, bit), from: a, to: b, value: value)
            }
        }
        if changed { unsafe markChanged(g, bit) }
        return changed
    }

    /// Does setting [a, b) of the chunk to `value` need a block it lacks?
    @inline(__always)
    func needsBlock(_ s: Int, _ c: UInt64, _ a: Int, _ b: Int, _ value: Bool) -> Bool {
        let g = unsafe group(s, c)
        guard let u = unsafe uniformValue(g, c & 63) else { return false }
        return unsafe u != value && !(a == 0 && b == Geometry.chunkLen(c, slots[s].pages))
    }
}
