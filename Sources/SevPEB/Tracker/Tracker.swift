import CSevPEBShims
import Synchronization

/// Called after an update that changed pages: (opaque, gfn, npages, state),
/// state 1 = private, 0 = shared, -1 = mixed (sevpeb_set_bitmap).
public typealias ChangeCallback = @convention(c) (UnsafeMutableRawPointer?, UInt64, UInt64, Int32) -> Void

/// The page-state tracker: one bit per 4 KiB GFN of the VMM's memory slots,
/// 1 = private (default), 0 = shared.
///
/// Thread-safe: one short mutex guards every operation; callbacks run after
/// it is released. Knows nothing of streams or KVM. See Storage.swift for the
/// storage layout and its invariants.
public final class Tracker {
    let lock: Lock
    var slots: UnsafeMutablePointer<SlotRec>? = nil
    var slotCount = 0
    var slotCap = 0
    var memBytes = 0
    /// Chunks with a dirty bit set (read without the lock for estimates).
    let dirtyChunks = Atomic<Int>(0)
    /// Bumped on every layout change (the encoder re-sends the layout).
    var layoutGeneration: UInt64 = 0 {
        didSet { stateGeneration &+= 1 }
    }
    /// Bumped on every change of state or layout: the whole-state summary
    /// (digest, page counts) is cached against it, so a digest with nothing
    /// changed since the last one is O(1) whatever the guest size.
    var stateGeneration: UInt64 = 1
    var summaryCache: (gen: UInt64, digest: UInt64, pages: UInt64, shared: UInt64) = (0, 0, 0, 0)
    let migrationControlValue = Atomic<UInt64>(0)
    let requireReadyFlag = Atomic<Bool>(false)
    var callback: ChangeCallback? = nil
    var callbackOpaque: UnsafeMutableRawPointer? = nil

    /// Words a buffer passed to `takeNextChunk` must hold: one chunk's bits
    /// plus one spare word. Wire sizes its scratch from this, not from the
    /// storage geometry.
    public static let chunkBufferWords = Geometry.blockWords
    /// Pages in one chunk (the most `takeNextChunk` returns at once).
    public static let chunkPages = Geometry.chunkPages

    /// Bytes of the fixed part (this object and its mutex), for accounting.
    static let fixedBytes = 128 + Lock.bytes

    private init(lock: consuming Lock) {
        self.lock = lock
    }

    /// A tracker with no slots. (A factory, not a throwing init: Embedded
    /// Swift 6.3 leaks objects whose throwing init fails.)
    public static func create() throws(SevError) -> Tracker {
        guard let m = Lock.make() else { throw .noMemory("tracker mutex") }
        return Tracker(lock: m)
    }

    deinit {
        for s in 0..<slotCount { freeSlotStorage(slots![s]) }
        Mem.free(slots)
    }

    // MARK: locking

    @inline(__always) func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        try lock.withLock(body)
    }

    @inline(__always) func notify(_ gfn: UInt64, _ n: UInt64, _ state: Int32) {
        // Read the callback under the lock, call it without.
        let (cb, op) = withLock { (callback, callbackOpaque) }
        if let cb { cb(op, gfn, n, state) }
    }

    /// The callback as read inside an operation's critical section (so a
    /// changing update takes the lock once).
    typealias PendingCallback = (ChangeCallback?, UnsafeMutableRawPointer?)

    public func setCallback(_ cb: ChangeCallback?, _ opaque: UnsafeMutableRawPointer?) {
        withLock { callback = cb; callbackOpaque = opaque }
    }

    // MARK: slot lookup (lock held)

    /// Index of the first slot whose end is above `gfn` (slotCount if none).
    @inline(__always) func firstSlotEndingAfter(_ gfn: UInt64) -> Int {
        guard let sl = slots else { return 0 }
        var lo = 0, hi = slotCount
        while lo < hi {
            let mid = (lo &+ hi) &>> 1
            if sl[mid].end <= gfn { lo = mid &+ 1 } else { hi = mid }
        }
        return lo
    }

    /// Index of the slot containing `gfn`, or nil.
    @inline(__always) func slotIndex(containing gfn: UInt64) -> Int? {
        if slotCount == 0 { return nil }
        let i = firstSlotEndingAfter(gfn)
        if i < slotCount && slots![i].base <= gfn { return i }
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
        while slots![s].end < end {
            let next = s &+ 1
            if next >= slotCount || slots![next].base != slots![s].end {
                throw .outOfRange("gfn range \(hex(gfn))..\(hex(end)) outside the memory layout (hole at gfn \(hex(slots![s].end)))")
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
            let sl = slots![s]
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

    // MARK: chunk primitives (lock held)

    @inline(__always) func group(_ s: Int, _ c: UInt64) -> UnsafeMutablePointer<Group> {
        slots![s].groups + Int(truncatingIfNeeded: c &>> UInt64(Geometry.groupShift))
    }

    /// nil if mixed; otherwise true = uniform private, false = uniform shared.
    @inline(__always) func uniformValue(_ g: UnsafeMutablePointer<Group>, _ bit: UInt64) -> Bool? {
        let m: UInt64 = 1 &<< bit
        if g.pointee.mixed & m != 0 { return nil }
        return g.pointee.shared & m == 0
    }

    /// Index of chunk `bit`'s block in the group's compact block array.
    @inline(__always) func rank(_ mixed: UInt64, _ bit: UInt64) -> Int {
        (mixed & ((1 &<< bit) &- 1)).nonzeroBitCount
    }

    @inline(__always) func block(_ g: UnsafeMutablePointer<Group>, _ bit: UInt64) -> UnsafeMutablePointer<UInt64> {
        g.pointee.blocks![rank(g.pointee.mixed, bit)]!
    }

    /// Free every block of a group and its array (state handled by the caller).
    func freeGroupBlocks(_ g: UnsafeMutablePointer<Group>) {
        let n = g.pointee.mixed.nonzeroBitCount
        for i in 0..<n {
            Mem.free(g.pointee.blocks![i])
            memBytes &-= Mem.bytes(Geometry.blockWords, UInt64.self)
        }
        g.pointee.mixed = 0
        freeBlockArray(g)
    }

    /// Record that chunk `bit` of group `g` changed.
    @inline(__always) func markChanged(_ g: UnsafeMutablePointer<Group>, _ bit: UInt64) {
        let m: UInt64 = 1 &<< bit
        if g.pointee.dirty & m == 0 {
            g.pointee.dirty |= m
            dirtyChunks.wrappingAdd(1, ordering: .relaxed)
        }
        g.pointee.hashOK &= ~m
        g.pointee.hashValid = false
        stateGeneration &+= 1
    }

    /// Give a uniform chunk a block holding the same state. The page state
    /// does not change, so a failure part-way through an operation leaves
    /// the state intact. Returns false when out of memory.
    func materialize(_ s: Int, _ c: UInt64) -> Bool {
        let g = group(s, c)
        let bit = c & 63
        guard let value = uniformValue(g, bit) else { return true }
        let count = g.pointee.mixed.nonzeroBitCount
        if count &+ 1 > Int(g.pointee.blockCap) {
            // Grow the compact array: by one while small, then by half.
            let newCap = count < 8 ? count &+ 1 : min(Geometry.chunksPerGroup, count &+ count / 2)
            guard let arr = Mem.calloc(newCap, UnsafeMutablePointer<UInt64>?.self) else { return false }
            if let old = g.pointee.blocks {
                arr.update(from: old, count: count)
                Mem.free(old)
            }
            memBytes &+= Mem.bytes(newCap &- Int(g.pointee.blockCap), UnsafeMutablePointer<UInt64>?.self)
            g.pointee.blocks = arr
            g.pointee.blockCap = UInt8(newCap)
        }
        guard let blk = Mem.calloc(Geometry.blockWords, UInt64.self) else {
            if g.pointee.mixed == 0 { freeBlockArray(g) }
            return false
        }
        memBytes &+= Mem.bytes(Geometry.blockWords, UInt64.self)
        let len = Geometry.chunkLen(c, slots![s].pages)
        if value { Bits.fill(blk, from: 0, to: len, value: true) }
        let r = rank(g.pointee.mixed, bit)
        let arr = g.pointee.blocks!
        var i = count
        while i > r { arr[i] = arr[i &- 1]; i &-= 1 }
        arr[r] = blk
        g.pointee.mixed |= 1 &<< bit
        g.pointee.shared &= ~(1 &<< bit)
        g.pointee.hashOK &= ~(1 &<< bit)
        return true
    }

    func freeBlockArray(_ g: UnsafeMutablePointer<Group>) {
        if let arr = g.pointee.blocks {
            Mem.free(arr)
            memBytes &-= Mem.bytes(Int(g.pointee.blockCap), UnsafeMutablePointer<UInt64>?.self)
            g.pointee.blocks = nil
            g.pointee.blockCap = 0
        }
    }

    /// Make chunk `bit` uniform with `value` (freeing its block).
    func setUniform(_ g: UnsafeMutablePointer<Group>, _ bit: UInt64, _ value: Bool) {
        let m: UInt64 = 1 &<< bit
        if g.pointee.mixed & m != 0 {
            let count = g.pointee.mixed.nonzeroBitCount
            let r = rank(g.pointee.mixed, bit)
            let arr = g.pointee.blocks!
            Mem.free(arr[r])
            memBytes &-= Mem.bytes(Geometry.blockWords, UInt64.self)
            var i = r
            while i &+ 1 < count { arr[i] = arr[i &+ 1]; i &+= 1 }
            arr[count &- 1] = nil
            g.pointee.mixed &= ~m
            g.pointee.hashOK &= ~m   // the cached hash went with the block
            if g.pointee.mixed == 0 { freeBlockArray(g) }
        }
        if value { g.pointee.shared &= ~m } else { g.pointee.shared |= m }
    }

    /// Set pages [a, b) of chunk c of slot s to `value`. Needs a block if the
    /// chunk is uniform with the other value and [a, b) is partial: the caller
    /// materialized it. Returns whether anything changed.
    @inline(__always)
    func setChunkRange(_ s: Int, _ c: UInt64, _ a: Int, _ b: Int, _ value: Bool) -> Bool {
        let g = group(s, c)
        let bit = c & 63
        let len = Geometry.chunkLen(c, slots![s].pages)
        let whole = a == 0 && b == len
        var changed: Bool
        if let u = uniformValue(g, bit) {
            if u == value { return false }
            if whole { setUniform(g, bit, value) } else {
                // materialized by the caller's first pass
                Bits.fill(block(g, bit), from: a, to: b, value: value)
            }
            changed = true
        } else {
            if whole {
                // A mixed chunk can already hold `value` on every page (a
                // shrink cut its other pages, or partial updates filled it):
                // then making it uniform changes no page.
                let ones = Bits.countOnes(block(g, bit), from: 0, to: len)
                changed = ones != (value ? len : 0)
                setUniform(g, bit, value)
            } else {
                changed = Bits.fill(block(g, bit), from: a, to: b, value: value)
            }
        }
        if changed { markChanged(g, bit) }
        return changed
    }

    /// Does setting [a, b) of the chunk to `value` need a block it lacks?
    @inline(__always)
    func needsBlock(_ s: Int, _ c: UInt64, _ a: Int, _ b: Int, _ value: Bool) -> Bool {
        let g = group(s, c)
        guard let u = uniformValue(g, c & 63) else { return false }
        return u != value && !(a == 0 && b == Geometry.chunkLen(c, slots![s].pages))
    }

    // MARK: page state

    /// Set [gfn, gfn+n) private (`value` true) or shared. Returns whether
    /// any page changed. On error nothing changed.
    @discardableResult
    public func setRange(_ gfn: UInt64, _ n: UInt64, private value: Bool) throws(SevError) -> Bool {
        // The callback is read under the same lock as the update (not with a
        // second lock round trip: that was a third of a single-page update).
        var cb: ChangeCallback? = nil
        var cbOpaque: UnsafeMutableRawPointer? = nil
        let changed = try withLock { () throws(SevError) -> Bool in
            let any = try setRangeLocked(gfn, n, private: value)
            if any { cb = callback; cbOpaque = callbackOpaque }
            return any
        }
        if changed, let cb { cb(cbOpaque, gfn, n, value ? 1 : 0) }
        return changed
    }

    /// setRange's work; needs the lock, calls no callback.
    func setRangeLocked(_ gfn: UInt64, _ n: UInt64, private value: Bool) throws(SevError) -> Bool {
        // A range inside one slot needs only the slot lookup; checkRange
        // (holes, overflow, messages) handles the rest.
        let s0: Int
        if n != 0, let s = slotIndex(containing: gfn), n <= slots![s].end &- gfn { s0 = s }
        else { s0 = try checkRange(gfn, n) }
        var any = false
        let sl = slots![s0]
        let rel = gfn &- sl.base
        let c = rel &>> UInt64(Geometry.chunkShift)
        if n <= UInt64(Geometry.chunkPages) && (rel &+ n &- 1) &>> UInt64(Geometry.chunkShift) == c
            && n <= sl.pages &- rel {
            // Fast path: one chunk of one slot (every hypercall-sized update).
            let a = Int(truncatingIfNeeded: rel & UInt64(Geometry.chunkPages &- 1))
            let b = a &+ Int(truncatingIfNeeded: n)
            if needsBlock(s0, c, a, b, value) && !materialize(s0, c) {
                throw .noMemory("a 2 KiB chunk block for gfn \(hex(gfn))")
            }
            any = setChunkRange(s0, c, a, b, value)
        } else {
            // Pass 1: blocks for partial chunks (at most the first and last).
            var oom = false
            forEachSegment(gfn, n, s0) { s, c, a, b, _ in
                if !oom && needsBlock(s, c, a, b, value) && !materialize(s, c) { oom = true }
            }
            if oom { throw .noMemory("a 2 KiB chunk block for gfn \(hex(gfn))") }
            forEachSegment(gfn, n, s0) { s, c, a, b, _ in
                if setChunkRange(s, c, a, b, value) { any = true }
            }
        }
        return any
    }

    /// State of one page: true = private.
    public func test(_ gfn: UInt64) throws(SevError) -> Bool {
        try withLock { () throws(SevError) -> Bool in
            guard let s = slotIndex(containing: gfn) else {
                throw .outOfRange("gfn \(hex(gfn)) outside the memory layout")
            }
            let rel = gfn &- slots![s].base
            let c = rel &>> UInt64(Geometry.chunkShift)
            let g = group(s, c)
            if let u = uniformValue(g, c & 63) { return u }
            return Bits.test(block(g, c & 63), Int(truncatingIfNeeded: rel & UInt64(Geometry.chunkPages &- 1)))
        }
    }

    /// Shared pages in [gfn, gfn+n).
    public func countShared(_ gfn: UInt64, _ n: UInt64) throws(SevError) -> UInt64 {
        try withLock { () throws(SevError) -> UInt64 in
            let s0 = try checkRange(gfn, n)
            var total: UInt64 = 0
            forEachSegment(gfn, n, s0) { s, c, a, b, _ in
                let g = group(s, c)
                if let u = uniformValue(g, c & 63) {
                    if !u { total &+= UInt64(b &- a) }
                } else {
                    total &+= UInt64(b &- a &- Bits.countOnes(block(g, c & 63), from: a, to: b))
                }
            }
            return total
        }
    }

    /// (pages in the layout, shared pages), from the cached summary.
    public func totals() -> (pages: UInt64, shared: UInt64) {
        withLock {
            let r = summaryLocked()
            return (r.pages, r.shared)
        }
    }

    /// First page at or after `from` (within slot s onwards) whose state is
    /// `value`, stopping at a hole if `stopAtHole`; nil if none.
    func findPage(from: UInt64, value: Bool, stopAtHole: Bool) -> UInt64? {
        var s = firstSlotEndingAfter(from)
        var cur = from
        var prevEnd: UInt64? = nil
        while s < slotCount {
            let sl = slots![s]
            if stopAtHole, let pe = prevEnd, pe != sl.base { return nil }
            if cur < sl.base {
                if stopAtHole && prevEnd == nil { return nil }
                cur = sl.base
            }
            var rel = cur &- sl.base
            while rel < sl.pages {
                let c = rel &>> UInt64(Geometry.chunkShift)
                let g = group(s, c)
                let bit = c & 63
                let cStart = c &<< UInt64(Geometry.chunkShift)
                let len = Geometry.chunkLen(c, sl.pages)
                // Skip whole groups quickly when they cannot match.
                if bit == 0 && rel == cStart {
                    let candidates = value ? ~(g.pointee.shared) | g.pointee.mixed
                                           : g.pointee.shared | g.pointee.mixed
                    let chunksInGroup = min(UInt64(Geometry.chunksPerGroup), Geometry.chunks(sl.pages) &- c)
                    let live = chunksInGroup == 64 ? ~UInt64(0) : ((1 &<< chunksInGroup) &- 1)
                    if candidates & live == 0 {
                        rel = (c &+ chunksInGroup) &<< UInt64(Geometry.chunkShift)
                        continue
                    }
                }
                let a = Int(truncatingIfNeeded: rel &- cStart)
                if let u = uniformValue(g, bit) {
                    if u == value { return sl.base &+ rel }
                } else {
                    let i = Bits.find(block(g, bit), value: value, from: a, to: len)
                    if i < len { return sl.base &+ cStart &+ UInt64(i) }
                }
                rel = cStart &+ UInt64(len)
            }
            prevEnd = sl.end
            cur = sl.end
            s &+= 1
        }
        return nil
    }

    /// The first maximal shared run ending after `from`, clipped to start at
    /// `from` or later; runs continue across slots that touch.
    public func nextSharedRun(from: UInt64) -> (gfn: UInt64, pages: UInt64)? {
        withLock { nextSharedRunLocked(from: from) }
    }

    /// nextSharedRun's work; needs the lock.
    func nextSharedRunLocked(from: UInt64) -> (gfn: UInt64, pages: UInt64)? {
        if slotCount == 0 { return nil }
        guard let start = findPage(from: from, value: false, stopAtHole: false) else { return nil }
        // The run ends at the first private page or the first hole.
        var end: UInt64
        if let p = findPage(from: start, value: true, stopAtHole: true) {
            end = p
        } else {
            // No private page before a hole or the end: the run ends at the
            // end of the touching slots.
            var s = slotIndex(containing: start)!
            while s &+ 1 < slotCount && slots![s &+ 1].base == slots![s].end { s &+= 1 }
            end = slots![s].end
        }
        return (start, end &- start)
    }

    /// Copy [gfn, gfn+n) out as bits (1 = private) into dst (LSB-first bytes).
    public func getBitmap(_ gfn: UInt64, _ n: UInt64, _ dst: UnsafeMutablePointer<UInt8>, _ dstLen: Int) throws(SevError) {
        let need = (n &>> 3) &+ (n & 7 == 0 ? 0 : 1)   // ceil(n/8) without wrapping
        if n == 0 { throw .invalid("npages 0: must be > 0") }
        if UInt64(dstLen) < need { throw SevError(ENOSPC, "buffer of \(dstLen) bytes too small for \(n) pages (need \(need))") }
        try withLock { () throws(SevError) in
            let s0 = try checkRange(gfn, n)
            var sink = ByteBitSink(dst)
            forEachSegment(gfn, n, s0) { s, c, a, b, _ in
                let g = group(s, c)
                if let u = uniformValue(g, c & 63) {
                    sink.appendRepeated(u, b &- a)
                } else {
                    sink.appendBits(UnsafePointer(block(g, c & 63)), from: a, to: b)
                }
            }
            sink.finish()
        }
    }

    /// Set [gfn, gfn+n) to the exact bits of src (1 = private); src nil
    /// makes the range private. Returns whether anything changed.
    @discardableResult
    public func setBitmap(_ gfn: UInt64, _ n: UInt64, _ src: UnsafePointer<UInt8>?, _ srcLen: Int) throws(SevError) -> Bool {
        guard let src else { return try setRange(gfn, n, private: true) }
        let need = (n &>> 3) &+ (n & 7 == 0 ? 0 : 1)   // ceil(n/8) without wrapping
        if n == 0 { throw .invalid("npages 0: must be > 0") }
        if UInt64(srcLen) < need { throw SevError(ENOSPC, "source of \(srcLen) bytes too small for \(n) pages (need \(need))") }
        let source = ByteBitSource(p: src, bytes: Int(need))
        let (changed, cb) = try withLock { () throws(SevError) -> (Bool, PendingCallback) in
            let s0 = try checkRange(gfn, n)
            // Pass 1: blocks for every chunk whose new content is mixed or
            // partial-and-different, so pass 2 cannot fail half-way.
            var oom = false
            forEachSegment(gfn, n, s0) { s, c, a, b, off in
                if oom { return }
                let g = group(s, c)
                guard let u = uniformValue(g, c & 63) else { return }
                let len = Geometry.chunkLen(c, slots![s].pages)
                let whole = a == 0 && b == len
                let uniformNew = sourceUniform(source, Int(off), b &- a)
                if let v = uniformNew, whole || v == u { return }
                if !materialize(s, c) { oom = true }
            }
            if oom { throw .noMemory("chunk blocks for gfn \(hex(gfn)) + \(n) pages") }
            var any = false
            forEachSegment(gfn, n, s0) { s, c, a, b, off in
                let g = group(s, c)
                let bit = c & 63
                let len = Geometry.chunkLen(c, slots![s].pages)
                if let u = uniformValue(g, bit) {
                    // Uniform now: the new content is uniform too (pass 1).
                    let newV = sourceUniform(source, Int(off), b &- a) != false
                    if newV != u {
                        if a == 0 && b == len { setUniform(g, bit, newV) }
                        else { Bits.fill(block(g, bit), from: a, to: b, value: newV) }
                        markChanged(g, bit)
                        any = true
                    }
                    return
                }
                let w = block(g, bit)
                var diff: UInt64 = 0
                var i = a
                var o = Int(off)
                if i & 63 == 0 && o & 7 == 0 {
                    // Word-aligned on both sides (every chunk of a BITS record
                    // and of a slot-aligned SET): whole words straight from the bytes.
                    while b &- i >= 64 {
                        let v = UInt64(littleEndian: UnsafeRawPointer(source.p + (o &>> 3)).loadUnaligned(as: UInt64.self))
                        let wi = i &>> 6
                        diff |= w[wi] ^ v
                        w[wi] = v
                        i &+= 64; o &+= 64
                    }
                }
                while i < b {
                    let lo = i & 63
                    let k = min(64 &- lo, b &- i)
                    let m = Bits.mask(lo, lo &+ k)
                    let bitsIn = (source.read64(at: o) &<< UInt64(lo)) & m
                    let wi = i &>> 6
                    let old = w[wi]
                    let new = (old & ~m) | bitsIn
                    diff |= old ^ new
                    w[wi] = new
                    i &+= k; o &+= k
                }
                if diff != 0 { markChanged(g, bit); any = true }
            }
            return (any, (callback, callbackOpaque))
        }
        if changed, let f = cb.0 { f(cb.1, gfn, n, -1) }
        return changed
    }

    /// Whether bits [at, at+n) of src are all ones (true), all zeros (false)
    /// or mixed (nil); stops at the first word that shows both.
    @inline(__always) func sourceUniform(_ src: ByteBitSource, _ at: Int, _ n: Int) -> Bool? {
        var anyOne = false, anyZero = false, i = 0
        while i < n {
            let k = min(64, n &- i)
            let m: UInt64 = k == 64 ? ~0 : ((1 as UInt64) &<< UInt64(k)) &- 1
            let v = src.read64(at: at &+ i) & m
            if v != 0 { anyOne = true }
            if v != m { anyZero = true }
            if anyOne && anyZero { return nil }
            i &+= k
        }
        return anyOne
    }

    /// Every page of the layout private (cold reboot); the layout stays.
    /// Reports one change per slot that had shared pages.
    public func reset() {
        var changedSlots: [(UInt64, UInt64)] = []
        withLock {
            for s in 0..<slotCount {
                let sl = slots![s]
                var any = false
                for gi in 0..<sl.groupCount {
                    let g = sl.groups + gi
                    var touched = g.pointee.shared | g.pointee.mixed
                    while touched != 0 {
                        let bit = UInt64(touched.trailingZeroBitCount)
                        touched &= touched &- 1
                        // A mixed block can hold no shared page (after a
                        // shrink or partial updates): no page changes then.
                        let c = UInt64(gi) &<< 6 | bit
                        let len = Geometry.chunkLen(c, sl.pages)
                        let wasPrivate = g.pointee.mixed & (1 &<< bit) != 0
                            && Bits.countOnes(block(g, bit), from: 0, to: len) == len
                        setUniform(g, bit, true)
                        if !wasPrivate { markChanged(g, bit); any = true }
                    }
                }
                if any { changedSlots.append((sl.base, sl.pages)) }
            }
        }
        for (b, p) in changedSlots { notify(b, p, 1) }
    }

    // MARK: layout

    public struct Slot: Equatable {
        public var base: UInt64
        public var pages: UInt64
        public init(base: UInt64, pages: UInt64) { self.base = base; self.pages = pages }
    }

    public var slotList: [Slot] {
        withLock {
            var r: [Slot] = []
            r.reserveCapacity(slotCount)
            for s in 0..<slotCount { r.append(Slot(base: slots![s].base, pages: slots![s].pages)) }
            return r
        }
    }

    public static let maxSlots = 32768
    public static let gfnLimit: UInt64 = 1 << 52

    func checkSlotArgs(_ base: UInt64, _ pages: UInt64) throws(SevError) {
        if pages == 0 { throw .invalid("slot at gfn \(hex(base)): npages 0, must be > 0") }
        let (end, o) = base.addingReportingOverflow(pages)
        if o || end > Tracker.gfnLimit {
            throw .outOfRange("slot gfn \(hex(base)) + \(pages) pages ends beyond the GFN limit \(hex(Tracker.gfnLimit))")
        }
    }

    public func addSlot(base: UInt64, pages: UInt64) throws(SevError) {
        try withLock { () throws(SevError) in try addSlotLocked(base: base, pages: pages) }
    }

    /// addSlot's work; needs the lock.
    func addSlotLocked(base: UInt64, pages: UInt64) throws(SevError) {
        try checkSlotArgs(base, pages)
        let i = firstSlotEndingAfter(base)
        if i < slotCount && slots![i].base < base &+ pages {
            let o = slots![i]
            throw SevError(EEXIST, "slot gfn \(hex(base))..\(hex(base &+ pages)) overlaps slot \(hex(o.base))..\(hex(o.end))")
        }
        if slotCount >= Tracker.maxSlots { throw SevError(ENOSPC, "slot table full (\(Tracker.maxSlots) slots)") }
        let ng = Int(truncatingIfNeeded: Geometry.groups(pages))
        guard let groups = Mem.calloc(ng, Group.self) else { throw .noMemory("\(ng) groups for slot \(hex(base))") }
        if slotCount == slotCap {
            let newCap = max(8, slotCap &* 2)
            guard let ns = Mem.calloc(newCap, SlotRec.self) else {
                Mem.free(groups)
                throw .noMemory("slot table")
            }
            if let old = slots {
                ns.update(from: old, count: slotCount)
                Mem.free(old)
            }
            memBytes &+= Mem.bytes(newCap &- slotCap, SlotRec.self)
            slots = ns
            slotCap = newCap
        }
        memBytes &+= Mem.bytes(ng, Group.self)
        var j = slotCount
        while j > i { slots![j] = slots![j &- 1]; j &-= 1 }
        slots![i] = SlotRec(base: base, pages: pages, groups: groups, groupCount: ng)
        slotCount &+= 1
        // New pages are private; mark them changed so that a destination
        // that saw an earlier slot at this base is told.
        markAllChanged(i, fromChunk: 0)
        layoutGeneration &+= 1
    }

    func markAllChanged(_ s: Int, fromChunk c0: UInt64) {
        let sl = slots![s]
        let nch = Geometry.chunks(sl.pages)
        var c = c0
        while c < nch {
            let g = group(s, c)
            let bit = c & 63
            let upto = min(nch, (c | 63) &+ 1)
            let cnt = upto &- c
            let m: UInt64 = cnt == 64 ? ~0 : (((1 as UInt64) &<< cnt) &- 1) &<< bit
            let newDirty = m & ~g.pointee.dirty
            g.pointee.dirty |= m
            g.pointee.hashOK &= ~m
            g.pointee.hashValid = false
            dirtyChunks.wrappingAdd(newDirty.nonzeroBitCount, ordering: .relaxed)
            c = upto
        }
    }

    func freeSlotStorage(_ sl: SlotRec) {
        for gi in 0..<sl.groupCount {
            let g = sl.groups + gi
            freeGroupBlocks(g)
            dirtyChunks.wrappingAdd(-g.pointee.dirty.nonzeroBitCount, ordering: .relaxed)
        }
        Mem.free(sl.groups)
        memBytes &-= Mem.bytes(sl.groupCount, Group.self)
    }

    public func removeSlot(base: UInt64) throws(SevError) {
        try withLock { () throws(SevError) in try removeSlotLocked(base: base) }
    }

    /// removeSlot's work; needs the lock.
    func removeSlotLocked(base: UInt64) throws(SevError) {
        guard let i = slotIndex(containing: base), slots![i].base == base else {
            throw SevError(ENOENT, "no slot starts at gfn \(hex(base))")
        }
        freeSlotStorage(slots![i])
        var j = i
        while j &+ 1 < slotCount { slots![j] = slots![j &+ 1]; j &+= 1 }
        slotCount &-= 1
        layoutGeneration &+= 1
    }

    public func resizeSlot(base: UInt64, pages: UInt64) throws(SevError) {
        try withLock { () throws(SevError) in try resizeSlotLocked(base: base, pages: pages) }
    }

    /// resizeSlot's work; needs the lock.
    func resizeSlotLocked(base: UInt64, pages: UInt64) throws(SevError) {
        try checkSlotArgs(base, pages)
        guard let i = slotIndex(containing: base), slots![i].base == base else {
            throw SevError(ENOENT, "no slot starts at gfn \(hex(base))")
        }
        let old = slots![i]
        if pages == old.pages { return }
        if i &+ 1 < slotCount && base &+ pages > slots![i &+ 1].base {
            let o = slots![i &+ 1]
            throw SevError(EEXIST, "slot \(hex(base)) grown to \(pages) pages overlaps slot \(hex(o.base))..\(hex(o.end))")
        }
        let newChunks = Geometry.chunks(pages)
        let ng = Int(truncatingIfNeeded: Geometry.groups(pages))
        // The old boundary chunk keeps its block; its pages beyond the old
        // end become private (grow) or are cut (shrink).
        let boundary = (min(old.pages, pages) &- 1) &>> UInt64(Geometry.chunkShift)
        if pages > old.pages {
            // Growing a partial chunk that is uniform shared needs a block.
            let g = group(i, boundary)
            if old.pages & UInt64(Geometry.chunkPages &- 1) != 0,
               let u = uniformValue(g, boundary & 63), !u,
               !materialize(i, boundary) {
                throw .noMemory("chunk block for slot \(hex(base)) resize")
            }
        }
        var groups = old.groups
        if ng != old.groupCount {
            guard let ngp = Mem.calloc(ng, Group.self) else { throw .noMemory("\(ng) groups for slot \(hex(base)) resize") }
            // Free storage of groups that disappear.
            if ng < old.groupCount {
                for gi in ng..<old.groupCount {
                    let g = old.groups + gi
                    freeGroupBlocks(g)
                    dirtyChunks.wrappingAdd(-g.pointee.dirty.nonzeroBitCount, ordering: .relaxed)
                }
            }
            ngp.update(from: old.groups, count: min(ng, old.groupCount))
            Mem.free(old.groups)
            memBytes &+= Mem.bytes(ng, Group.self) &- Mem.bytes(old.groupCount, Group.self)
            groups = ngp
        }
        slots![i].groups = groups
        slots![i].groupCount = ng
        slots![i].pages = pages
        if pages < old.pages {
            // Drop chunks past the new end within the last group.
            let lastG = group(i, newChunks &- 1)
            let live = newChunks & 63 == 0 ? ~UInt64(0) : ((1 &<< (newChunks & 63)) &- 1)
            // Their blocks are the highest ranks of the compact array.
            let keep = (lastG.pointee.mixed & live).nonzeroBitCount
            let had = lastG.pointee.mixed.nonzeroBitCount
            for r in keep..<had {
                Mem.free(lastG.pointee.blocks![r]); memBytes &-= Mem.bytes(Geometry.blockWords, UInt64.self)
                lastG.pointee.blocks![r] = nil
            }
            dirtyChunks.wrappingAdd(-(lastG.pointee.dirty & ~live).nonzeroBitCount, ordering: .relaxed)
            lastG.pointee.mixed &= live; lastG.pointee.shared &= live
            lastG.pointee.dirty &= live; lastG.pointee.hashOK &= live
            if lastG.pointee.mixed == 0 { freeBlockArray(lastG) }
            // Zero the padding of the new boundary chunk.
            let bg = group(i, boundary)
            if bg.pointee.mixed & (1 &<< (boundary & 63)) != 0 {
                let len = Geometry.chunkLen(boundary, pages)
                Bits.fill(block(bg, boundary & 63), from: len, to: Geometry.chunkPages, value: false)
            }
        } else {
            let bg = group(i, boundary)
            if bg.pointee.mixed & (1 &<< (boundary & 63)) != 0 {
                let from = Geometry.chunkLen(boundary, old.pages)
                let to = Geometry.chunkLen(boundary, pages)
                Bits.fill(block(bg, boundary & 63), from: from, to: to, value: true)
            }
        }
        markAllChanged(i, fromChunk: boundary)
        layoutGeneration &+= 1
    }

    // MARK: accounting

    public var memoryBytes: Int { withLock { memBytes &+ Tracker.fixedBytes } }
}

// SAFETY: every access to a Tracker's mutable state happens under its mutex
// (`lock`), or through `Atomic` fields; the threading contract in
// include/sevpeb.h is built on that. Callbacks run without the lock.
extension Tracker: @unchecked Sendable {}
