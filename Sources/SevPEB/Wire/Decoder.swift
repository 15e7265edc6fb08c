import CSevPEBShims

/// The destination side: reads payloads into a staging tracker and commits
/// it to the live tracker only when FINAL's digest, counts and layout check.
/// Any error leaves the live tracker untouched and poisons the session
/// until the next `setup()` (docs/FORMAT.md, "Validation").
///
/// A non-copyable value (no class instance, whose allocation would trap
/// when out of memory): the C ABI keeps it inside the tracker's handle.
@safe public struct LoadSession: ~Copyable {
    var staging: Tracker? = nil
    var sawHeader = false
    var sawLayout = false
    var finished = false
    var failed = false
    var control: UInt64 = 0
    var controlSeen = false
    /// Offset in the current payload, for messages.
    var offset = 0
    /// End GFN of the last state record in this payload (records ascend).
    var lastEnd: UInt64 = 0
    var anyState = false
    /// Checksum of the current payload's bytes so far.
    var check = XXH3()
    // SAFETY: both buffers are owned by this session (freed in deinit) and
    // sized for the largest record (Wire.maxRecordPages bits).
    let scratch: UnsafeMutablePointer<UInt8>
    /// RUNS are expanded here as words (Bits works on UInt64), then stored
    /// into `scratch` as little-endian bytes: no memory is rebound.
    // SAFETY: owned by this session (freed in deinit), Wire.maxRecordPages / 64 words.
    let runWords: UnsafeMutablePointer<UInt64>
    /// Called after each record is read and checked (tools: `sevpeb dump`):
    /// payload index, record offset in the payload, and the record's fields.
    public var observer: ((_ payload: Int, _ offset: Int, _ record: DecodedRecord) -> Void)? = nil
    /// Tools only (`sevpeb decode`): take the layout from the stream instead
    /// of checking it against the live tracker's; the live tracker's layout
    /// is replaced at commit. A VMM never sets this. Fixed at creation.
    public let layoutFromStream: Bool
    /// With `layoutFromStream`: the most pages a stream-declared layout may
    /// hold (the staging tracker allocates per-chunk state for all of them;
    /// a VMM's staging is bounded by its own layout instead). 2^32 pages =
    /// 16 TiB of guest memory; a hostile stream declaring more is EMSGSIZE.
    public static let streamLayoutPageLimit: UInt64 = 1 << 32
    public private(set) var payloads = 0
    public private(set) var bytes: UInt64 = 0

    // SAFETY: takes ownership of the two buffers create() allocated for this session.
    private init(scratch: UnsafeMutablePointer<UInt8>, runWords: UnsafeMutablePointer<UInt64>, layoutFromStream: Bool) {
        unsafe self.scratch = unsafe scratch; unsafe self.runWords = unsafe runWords; self.layoutFromStream = layoutFromStream
    }
    public static func create(layoutFromStream: Bool = false) throws(SevError) -> LoadSession {
        guard let s = unsafe Mem.calloc(Int(Wire.maxRecordPages) / 8 &+ 16, UInt8.self) else { throw .noMemory("out of memory allocating the decoder buffer") }
        guard let w = unsafe Mem.calloc(Int(Wire.maxRecordPages) / 64 &+ 2, UInt64.self) else {
            unsafe Mem.free(s); throw .noMemory("out of memory allocating the decoder run buffer")
        }
        return unsafe LoadSession(scratch: s, runWords: w, layoutFromStream: layoutFromStream)
    }
    deinit {
        if let st = staging { st.destroy() }
        unsafe Mem.free(scratch); unsafe Mem.free(runWords)
    }

    /// Free the staging tracker, if any.
    mutating func dropStaging() {
        if let st = staging { st.destroy() }
        staging = nil
    }

    public mutating func setup() {
        dropStaging(); sawHeader = false; sawLayout = false; finished = false; failed = false
        controlSeen = false; control = 0; payloads = 0; bytes = 0
    }

    /// Read one payload (through END_OF_PAYLOAD). Returns true when it ended
    /// with a FINAL that checked and the state was committed into `live`.
    public mutating func load<R: ByteSource>(_ live: Tracker, _ src: inout R, version: UInt32) throws(SevError) -> Bool {
        if failed { throw SevError(EBADMSG, "incoming stream already failed; no further sections accepted") }
        do throws(SevError) {
            if version != Wire.sectionVersion {
                throw SevError(EPROTONOSUPPORT, "section version \(version) not supported (expected \(Wire.sectionVersion))")
            }
            if finished { throw SevError(EBADMSG, "section after the FINAL record") }
            offset = 0
            lastEnd = 0; anyState = false; check = XXH3()
            payloads &+= 1
            var committed = false
            while true {
                let at = offset
                let type = try u8(&src)
                guard let r = Wire.Record(rawValue: type) else {
                    throw SevError(EBADMSG, "unknown record type \(hex(UInt64(type))) at payload offset \(at)")
                }
                if !sawHeader && r != .header {
                    throw SevError(EBADMSG, "record \(r.name) at offset \(at) before HEADER")
                }
                if finished && r != .end {
                    throw SevError(EBADMSG, "record \(r.name) at offset \(at) after FINAL")
                }
                switch r {
                case .end:
                    let want = UInt32(truncatingIfNeeded: check.finish())
                    var v: UInt32 = 0
                    // SAFETY: p covers v's 4 bytes for the duration of the closure.
                    unsafe try withUnsafeMutableBytes(of: &v) { (p) throws(SevError) in unsafe try src.read(p) }
                    offset &+= 4
                    let got = UInt32(bigEndian: v)
                    if got != want {
                        throw SevError(EILSEQ, "END_OF_PAYLOAD at offset \(at): payload checksum \(hex(UInt64(got))) read, \(hex(UInt64(want))) computed over the \(at &+ 1) payload bytes")
                    }
                    bytes &+= UInt64(offset)
                    emit(at, .end, UInt64(got), UInt64(offset), 0)
                    if committed {
                        // FINAL checked and this payload's checksum too: commit.
                        try live.adopt(staging!)
                        if controlSeen { try live.setMigrationControl(control) }
                        dropStaging()
                    }
                    return committed
                case .header: try readHeader(&src, at)
                case .layout: try readLayout(live, &src, at)
                case .control:
                    let v = try be64(&src)
                    if v & ~MigrationControl.ready != 0 {
                        throw SevError(EBADMSG, "CONTROL at offset \(at): value \(hex(v)) has reserved bits set")
                    }
                    control = v; controlSeen = true
                    emit(at, .control, v, 0, 0)
                case .fill, .bits, .runs:
                    guard let st = staging, sawLayout else {
                        throw SevError(EBADMSG, "record \(r.name) at offset \(at) before LAYOUT")
                    }
                    try readState(r, st, &src, at)
                case .final:
                    try readFinal(live, &src, at)
                    committed = true
                    finished = true
                }
            }
        } catch {
            failed = true
            dropStaging()
            throw error
        }
    }

    public mutating func cleanup() { dropStaging() }

    @inline(__always) func emit(_ at: Int, _ r: Wire.Record, _ a: UInt64, _ b: UInt64, _ c: UInt64) {
        if let o = observer { o(payloads &- 1, at, DecodedRecord(r, a, b, c)) }
    }

    // MARK: records

    mutating func readHeader<R: ByteSource>(_ src: inout R, _ at: Int) throws(SevError) {
        if sawHeader { throw SevError(EBADMSG, "second HEADER at offset \(at)") }
        if offset != 1 || payloads != 1 { throw SevError(EBADMSG, "HEADER at offset \(at) of payload \(payloads): must open the first payload") }
        let m = try be32(&src)
        if m != Wire.magic { throw SevError(EBADMSG, "HEADER magic \(hex(UInt64(m))) (expected \(hex(UInt64(Wire.magic))) \"SVPB\")") }
        let v = try be16(&src)
        if v == 1 { throw SevError(EPROTONOSUPPORT, "format version 1 not supported (this library reads version \(Wire.version) only; version 1 used XXH64 checksums and digest, version 2 uses XXH3: migrate between sevpeb builds of the same format version)") }
        if v != Wire.version { throw SevError(EPROTONOSUPPORT, "format version \(v) not supported (this library reads version \(Wire.version))") }
        let ps = try u8(&src)
        if ps != Wire.pageShift { throw SevError(EBADMSG, "HEADER page_shift \(ps) (expected \(Wire.pageShift): 4 KiB pages)") }
        let fl = try u8(&src)
        if fl != 0 { throw SevError(EBADMSG, "HEADER flags \(hex(UInt64(fl))): reserved, must be 0") }
        sawHeader = true
        emit(at, .header, UInt64(v), UInt64(ps), UInt64(fl))
    }

    mutating func readLayout<R: ByteSource>(_ live: Tracker, _ src: inout R, _ at: Int) throws(SevError) {
        let n = try be32(&src)
        if n > Wire.maxSlots { throw SevError(EMSGSIZE, "LAYOUT at offset \(at): nslots \(n) over the limit \(Wire.maxSlots)") }
        let mine = try live.slotCopy()
        var declared = MemList<Tracker.Slot>()
        if !declared.reserve(Int(n)) { throw .noMemory("out of memory allocating the slots of a LAYOUT record") }
        var prevEnd: UInt64 = 0
        var total: UInt64 = 0
        for i in 0..<Int(n) {
            let base = try be64(&src), pages = try be64(&src)
            let (end, o) = base.addingReportingOverflow(pages)
            if pages == 0 || o || end > Tracker.gfnLimit {
                throw SevError(EBADMSG, "LAYOUT slot \(i): gfn \(hex(base)) + \(pages) pages invalid (empty or beyond \(hex(Tracker.gfnLimit)))")
            }
            if i > 0 && base < prevEnd {
                throw SevError(EBADMSG, "LAYOUT slot \(i) at gfn \(hex(base)) overlaps or precedes the previous slot ending at \(hex(prevEnd))")
            }
            prevEnd = end
            total &+= pages   // no wrap: the slots are disjoint and below gfnLimit (2^52)
            if layoutFromStream && total > LoadSession.streamLayoutPageLimit {
                throw SevError(EMSGSIZE, "LAYOUT slot \(i) at gfn \(hex(base)): the layout declares \(total) pages so far, over the \(LoadSession.streamLayoutPageLimit) pages (16 TiB) a stream-declared layout may hold")
            }
            let s = Tracker.Slot(base: base, pages: pages)
            // Mid-migration the source's layout may be a transient one (a slot
            // not yet grown, a DIMM not yet plugged): each declared slot must
            // fit inside a destination slot, which also bounds the staging
            // memory. FINAL requires the layouts to be equal.
            if !layoutFromStream, unsafe !mine.withBuffer({ unsafe $0.contains(where: { $0.base <= base && end <= $0.base &+ $0.pages }) }) {
                throw SevError(EREMCHG, "LAYOUT slot \(i) gfn \(hex(base)) + \(pages) pages does not fit in any destination slot (\(describe(mine)))")
            }
            _ = declared.append(s)   // reserved above: cannot fail
        }
        if staging == nil { staging = try Tracker.create() }
        unsafe try declared.withBuffer { (d) throws(SevError) in unsafe try staging!.setLayout(slots: d, keepShared: false) }
        sawLayout = true
        emit(at, .layout, UInt64(n), 0, 0)
    }

    func describe(_ slots: borrowing MemList<Tracker.Slot>) -> String {
        var s = "destination has \(slots.count) slots"
        for i in 0..<min(slots.count, 4) { s += (i == 0 ? ": " : ", ") + "\(hex(slots[i].base))+\(slots[i].pages)" }
        if slots.count > 4 { s += ", ..." }
        return s
    }

    /// State records in one payload must ascend without overlapping, so a
    /// corrupted length cannot be masked by a later record.
    mutating func checkOrder(_ what: StaticString, _ at: Int, _ gfn: UInt64, _ n: UInt64) throws(SevError) {
        if anyState && gfn < lastEnd {
            throw SevError(EBADMSG, "\(what) at offset \(at): gfn \(hex(gfn)) overlaps or precedes the previous record ending at \(hex(lastEnd))")
        }
        let (e, o) = gfn.addingReportingOverflow(n)
        if o { throw SevError(ERANGE, "\(what) at offset \(at): gfn \(hex(gfn)) + \(n) pages overflows") }
        lastEnd = e; anyState = true
    }

    mutating func readState<R: ByteSource>(_ r: Wire.Record, _ st: Tracker, _ src: inout R, _ at: Int) throws(SevError) {
        let gfn = try be64(&src)
        switch r {
        case .fill:
            let n = try be64(&src)
            let v = try u8(&src)
            if v > 1 { throw SevError(EBADMSG, "FILL at offset \(at): state \(v) (expected 0 shared or 1 private)") }
            // FORMAT.md: npages > 0; a malformed record is EBADMSG (the
            // tracker's own EINVAL for an empty range is an API error).
            if n == 0 { throw SevError(EBADMSG, "FILL at offset \(at): npages 0 (expected > 0)") }
            try checkOrder("FILL", at, gfn, n)
            _ = try wrapRange(at, "FILL") { () throws(SevError) -> Bool in try st.setRange(gfn, n, private: v == 1) }
            emit(at, .fill, gfn, n, UInt64(v))
        case .bits:
            let n = try be32(&src)
            if n == 0 || n > Wire.maxRecordPages {
                throw SevError(EMSGSIZE, "BITS at offset \(at): npages \(n) (expected 1..\(Wire.maxRecordPages))")
            }
            try checkOrder("BITS", at, gfn, UInt64(n))
            let nb = Int((n &+ 7) &>> 3)
            // A whole chunk (what a source sends): read straight into its block.
            // (Errors are the record's own, already labelled; the staging
            // tracker is dropped on any.)
            // SAFETY: blk is the chunk's block of chunkWords words (>= nb bytes: n is one chunk), lent for the closure.
            let direct = unsafe try st.receiveChunk(gfn, UInt64(n)) { (blk) throws(SevError) in
                unsafe try readBits(&src, UnsafeMutableRawPointer(blk), nb, n, at)
                #if _endian(big)
                for i in 0..<((nb &+ 7) &>> 3) { blk[i] = UInt64(littleEndian: blk[i]) }
                #endif
            }
            if !direct {
                // SAFETY: nb <= maxRecordPages / 8, scratch's size.
                unsafe try readBits(&src, UnsafeMutableRawPointer(scratch), nb, n, at)
                _ = try wrapRange(at, "BITS") { () throws(SevError) -> Bool in unsafe try st.setBitmap(gfn, UInt64(n), scratch, nb) }
            }
            emit(at, .bits, gfn, UInt64(n), 0)
        case .runs:
            let n = try be32(&src)
            if n == 0 || n > Wire.maxRecordPages {
                throw SevError(EMSGSIZE, "RUNS at offset \(at): npages \(n) (expected 1..\(Wire.maxRecordPages))")
            }
            try checkOrder("RUNS", at, gfn, UInt64(n))
            let nr = try be32(&src)
            if nr == 0 || nr > n / 2 &+ 1 {
                throw SevError(EMSGSIZE, "RUNS at offset \(at): nruns \(nr) (expected 1..\(n / 2 &+ 1) for \(n) pages)")
            }
            let direct = unsafe try st.receiveChunk(gfn, UInt64(n)) { (blk) throws(SevError) in
                unsafe Bits.fill(blk, from: 0, to: Int(n), value: true)
                unsafe try readRuns(&src, blk, nr, n, at)
            }
            if !direct {
                // Build the bits in runWords: private, then the shared runs.
                let nb = Int((n &+ 7) &>> 3)
                let words = unsafe runWords
                let nw = (Int(n) &+ 63) &>> 6
                for i in 0..<nw { unsafe words[i] = 0 }
                unsafe Bits.fill(words, from: 0, to: Int(n), value: true)
                unsafe try readRuns(&src, words, nr, n, at)
                // LSB-first bytes = little-endian words: store them as such into
                // the byte buffer (any host byte order).
                // SAFETY: nw * 8 <= maxRecordPages / 8 < scratch's size; storeBytes
                // writes a trivial value into raw bytes without rebinding them.
                let raw = unsafe UnsafeMutableRawPointer(scratch)
                // SAFETY: as above: i * 8 + 8 <= nw * 8 bytes of scratch.
                for i in 0..<nw { unsafe raw.storeBytes(of: words[i].littleEndian, toByteOffset: i &* 8, as: UInt64.self) }
                _ = try wrapRange(at, "RUNS") { () throws(SevError) -> Bool in unsafe try st.setBitmap(gfn, UInt64(n), scratch, nb) }
            }
            emit(at, .runs, gfn, UInt64(n), UInt64(nr))
        default: break
        }
    }

    /// Re-label tracker range errors with the record and its offset.
    func wrapRange<T>(_ at: Int, _ what: String, _ body: () throws(SevError) -> T) throws(SevError) -> T {
        do throws(SevError) { return try body() } catch {
            if error.code == ENOMEM { throw error }   // its text must not allocate (SevError.noMemory)
            throw SevError(error.code, "\(what) at offset \(at): \(error.message)")
        }
    }

    /// A BITS record's nb bytes into `dst`, checksummed while in cache;
    /// padding bits above npages must be zero.
    // SAFETY: dst holds at least nb bytes (the caller's block or scratch); nb >= 1.
    mutating func readBits<R: ByteSource>(_ src: inout R, _ dst: UnsafeMutableRawPointer, _ nb: Int,
                                 _ n: UInt32, _ at: Int) throws(SevError) {
        unsafe try src.read(UnsafeMutableRawBufferPointer(start: dst, count: nb)); offset &+= nb
        unsafe check.update(dst, nb)
        let last = unsafe dst.load(fromByteOffset: nb &- 1, as: UInt8.self)
        if n & 7 != 0 && last &>> UInt8(n & 7) != 0 {
            throw SevError(EBADMSG, "BITS at offset \(at): padding bits above npages \(n) not zero (last byte \(hex(UInt64(last))))")
        }
    }

    /// A RUNS record's nr runs, cleared (made shared) in `words`.
    // SAFETY: words holds ceil(n/64) words; runs are checked to lie below n before each fill.
    mutating func readRuns<R: ByteSource>(_ src: inout R, _ words: UnsafeMutablePointer<UInt64>, _ nr: UInt32,
                                 _ n: UInt32, _ at: Int) throws(SevError) {
        var next = 0
        for k in 0..<Int(nr) {
            let off = Int(try be16(&src)), len = Int(try be16(&src)) &+ 1
            if off < next || off &+ len > Int(n) || (k > 0 && off == next) {
                throw SevError(EBADMSG, "RUNS at offset \(at): run \(k) [\(off), +\(len)) not ascending, touching the previous run or beyond npages \(n)")
            }
            unsafe Bits.fill(words, from: off, to: off &+ len, value: false)
            next = off &+ len
        }
    }

    mutating func readFinal<R: ByteSource>(_ live: Tracker, _ src: inout R, _ at: Int) throws(SevError) {
        let digest = try be64(&src), pages = try be64(&src), shared = try be64(&src)
        guard let st = staging, sawLayout else { throw SevError(EBADMSG, "FINAL at offset \(at) before LAYOUT") }
        let (d, myPages, myShared) = st.summary()
        if myPages != pages || myShared != shared {
            throw SevError(EILSEQ, "FINAL at offset \(at): source counts \(pages) pages / \(shared) shared, received state has \(myPages) / \(myShared)")
        }
        emit(at, .final, digest, pages, shared)
        if d != digest {
            throw SevError(EILSEQ, "FINAL at offset \(at): digest \(hex(digest)) from the source, \(hex(d)) over the received state")
        }
        // The layout must equal the destination's; committed at END_OF_PAYLOAD.
        if layoutFromStream {
            let received = try st.slotCopy()
            unsafe try received.withBuffer { (r) throws(SevError) in unsafe try live.setLayout(slots: r, keepShared: false) }
        }
        if !live.sameLayout(as: st) {
            throw SevError(EREMCHG, "FINAL at offset \(at): received layout (\(st.slotCount) slots) differs from the destination's (\(describe(try live.slotCopy())))")
        }
    }

    // MARK: primitive reads

    // SAFETY: p covers v's bytes for the duration of the closure (u8, be16, be32, be64 alike).
    @inline(__always) mutating func u8<R: ByteSource>(_ src: inout R) throws(SevError) -> UInt8 {
        var v: UInt8 = 0
        unsafe try withUnsafeMutableBytes(of: &v) { (p) throws(SevError) in unsafe try src.read(p); unsafe check.update(p.baseAddress!, 1) }
        offset &+= 1
        return v
    }
    // SAFETY: as u8.
    @inline(__always) mutating func be16<R: ByteSource>(_ src: inout R) throws(SevError) -> UInt16 {
        var v: UInt16 = 0
        unsafe try withUnsafeMutableBytes(of: &v) { (p) throws(SevError) in unsafe try src.read(p); unsafe check.update(p.baseAddress!, 2) }
        offset &+= 2
        return UInt16(bigEndian: v)
    }
    // SAFETY: as u8.
    @inline(__always) mutating func be32<R: ByteSource>(_ src: inout R) throws(SevError) -> UInt32 {
        var v: UInt32 = 0
        unsafe try withUnsafeMutableBytes(of: &v) { (p) throws(SevError) in unsafe try src.read(p); unsafe check.update(p.baseAddress!, 4) }
        offset &+= 4
        return UInt32(bigEndian: v)
    }
    // SAFETY: as u8.
    @inline(__always) mutating func be64<R: ByteSource>(_ src: inout R) throws(SevError) -> UInt64 {
        var v: UInt64 = 0
        unsafe try withUnsafeMutableBytes(of: &v) { (p) throws(SevError) in unsafe try src.read(p); unsafe check.update(p.baseAddress!, 8) }
        offset &+= 8
        return UInt64(bigEndian: v)
    }
}

/// One record as the decoder read it, with its fields named (the observer's
/// argument).
public enum DecodedRecord: Equatable {
    case header(version: UInt64, pageShift: UInt64, flags: UInt64)
    case layout(slots: UInt64)
    case control(value: UInt64)
    case fill(gfn: UInt64, npages: UInt64, state: UInt64)
    case bits(gfn: UInt64, npages: UInt64)
    case runs(gfn: UInt64, npages: UInt64, runs: UInt64)
    case final(digest: UInt64, pages: UInt64, shared: UInt64)
    case end(checksum: UInt64, payloadBytes: UInt64)

    init(_ r: Wire.Record, _ a: UInt64, _ b: UInt64, _ c: UInt64) {
        switch r {
        case .header: self = .header(version: a, pageShift: b, flags: c)
        case .layout: self = .layout(slots: a)
        case .control: self = .control(value: a)
        case .fill: self = .fill(gfn: a, npages: b, state: c)
        case .bits: self = .bits(gfn: a, npages: b)
        case .runs: self = .runs(gfn: a, npages: b, runs: c)
        case .final: self = .final(digest: a, pages: b, shared: c)
        case .end: self = .end(checksum: a, payloadBytes: b)
        }
    }

    /// The record type.
    public var record: Wire.Record {
        switch self {
        case .header: return .header
        case .layout: return .layout
        case .control: return .control
        case .fill: return .fill
        case .bits: return .bits
        case .runs: return .runs
        case .final: return .final
        case .end: return .end
        }
    }
}
