import CSevPEBShims

/// Buffers records and hands them to a sink in large writes.
@safe struct RecordWriter<S: ByteSink> {
    var sink: S
    // SAFETY: the session's output buffer of cap bytes (SaveSession.out), which outlives the writer.
    let buf: UnsafeMutablePointer<UInt8>
    let cap: Int
    var used = 0
    var total: UInt64 = 0
    var records: UInt64 = 0
    /// Checksum of the payload so far (bytes of buf below `hashed` are in it).
    var check = XXH3()
    var hashed = 0

    // SAFETY: buf holds cap bytes and outlives the writer (the caller's session buffer).
    init(sink: S, buf: UnsafeMutablePointer<UInt8>, cap: Int) {
        self.sink = sink; unsafe self.buf = unsafe buf; self.cap = cap
    }

    // SAFETY: bytes [0, used) of buf are written records, used <= cap.
    mutating func flush() throws(SevError) {
        if used > 0 {
            unsafe check.update(buf + hashed, used &- hashed)
            unsafe try sink.write(UnsafeRawBufferPointer(start: buf, count: used))
            used = 0
            hashed = 0
        }
    }

    /// END_OF_PAYLOAD: the type byte, then the low 32 bits of XXH3-64 over
    /// every payload byte up to and including that type byte; then flush.
    mutating func endPayload() throws(SevError) {
        try begin(.end, body: Wire.Record.end.fixedBodyBytes)
        unsafe check.update(buf + hashed, used &- hashed)
        hashed = used
        let c = UInt32(truncatingIfNeeded: check.finish())
        be32(c)
        hashed = used
        try flush()
    }
    /// Make room for `n` more bytes (n <= cap).
    @inline(__always) mutating func reserve(_ n: Int) throws(SevError) {
        if used &+ n > cap { try flush() }
    }
    @inline(__always) mutating func u8(_ v: UInt8) { unsafe buf[used] = v; used &+= 1; total &+= 1 }
    // SAFETY: be16/be32/be64 store at buf + used inside the room reserve() or chunkRoom made; storeBytes
    // writes a trivial value into raw bytes without rebinding them.
    @inline(__always) mutating func be16(_ v: UInt16) {
        unsafe UnsafeMutableRawPointer(buf + used).storeBytes(of: v.bigEndian, as: UInt16.self); used &+= 2; total &+= 2
    }
    // SAFETY: as be16.
    @inline(__always) mutating func be32(_ v: UInt32) {
        unsafe UnsafeMutableRawPointer(buf + used).storeBytes(of: v.bigEndian, as: UInt32.self); used &+= 4; total &+= 4
    }
    // SAFETY: as be16.
    @inline(__always) mutating func be64(_ v: UInt64) {
        unsafe UnsafeMutableRawPointer(buf + used).storeBytes(of: v.bigEndian, as: UInt64.self); used &+= 8; total &+= 8
    }
    @inline(__always) mutating func begin(_ r: Wire.Record, body: Int) throws(SevError) {
        try reserve(1 &+ body)
        put(r)
    }
    /// The type byte of a record whose room the caller made sure of (the
    /// chunk writer, which runs under the tracker's lock and cannot flush).
    @inline(__always) mutating func put(_ r: Wire.Record) {
        u8(r.rawValue)
        records &+= 1
    }
    /// Bytes left in the buffer before a flush.
    var room: Int { cap &- used }
}

/// The source side of a migration: what has been sent, and the encoders for
/// setup / iterate / complete (docs/FORMAT.md, "Live migration"). A
/// non-copyable value (no class instance, whose allocation would trap when
/// out of memory): the C ABI keeps it inside the tracker's handle.
@safe public struct SaveSession: ~Copyable {
    public private(set) var active = false
    /// Where the next chunk pass resumes, and what the destination was last
    /// sent: the session's own state, written by its encoders only.
    private(set) var cursor: UInt64 = 0
    private(set) var sentLayoutGeneration: UInt64 = 0
    private(set) var sentControl: UInt64 = 0
    // SAFETY: outCap bytes from Mem.calloc in create(), freed in deinit, used only by this session.
    let out: UnsafeMutablePointer<UInt8>
    static let outCap = 16384
    /// Room the chunk writer needs before taking one more chunk: a pending
    /// FILL, then the chunk's BITS record (RUNS is only used when smaller).
    static let chunkRoom = 1 &+ Wire.Record.fill.fixedBodyBytes &+ Wire.bitsRecordBytes(pages: Tracker.chunkPages)

    public private(set) var iterations: UInt32 = 0
    public private(set) var setupBytes: UInt64 = 0
    public private(set) var iterateBytes: UInt64 = 0
    public private(set) var lastIterateBytes: UInt64 = 0
    public private(set) var completeBytes: UInt64 = 0
    public private(set) var records: UInt64 = 0

    // SAFETY: takes ownership of create()'s outCap-byte buffer.
    private init(out: UnsafeMutablePointer<UInt8>) {
        unsafe self.out = unsafe out
    }
    public static func create() throws(SevError) -> SaveSession {
        guard let o = unsafe Mem.calloc(outCap, UInt8.self) else { throw .noMemory("out of memory allocating the encoder buffer") }
        return unsafe SaveSession(out: o)
    }
    deinit { unsafe Mem.free(out) }

    /// Begin: write HEADER, LAYOUT, CONTROL and every chunk that is not
    /// uniformly private (the destination starts all private).
    public mutating func setup<S: ByteSink>(_ t: Tracker, _ sink: inout S) throws(SevError) {
        if active { throw SevError(EBUSY, "an outgoing migration is already active") }
        if let why = t.migrationRefusal() { throw why }
        iterations = 0; setupBytes = 0; iterateBytes = 0; lastIterateBytes = 0; completeBytes = 0; records = 0
        var w = unsafe RecordWriter(sink: sink, buf: out, cap: SaveSession.outCap)
        defer { sink = w.sink }   // the sink's state after the call, error or not
        try w.begin(.header, body: Wire.Record.header.fixedBodyBytes)
        w.be32(Wire.magic); w.be16(Wire.version); w.u8(Wire.pageShift); w.u8(0)
        try writeLayout(t, &w)
        try writeControl(t, &w, force: true)
        cursor = 0
        _ = try writeChunks(t, &w, mode: .nonPrivate, budget: 0)
        cursor = 0
        try w.endPayload()
        setupBytes = w.total
        records &+= w.records
        active = true
    }

    /// One PART payload: what changed since last sent, up to ~budget bytes
    /// (0 = unlimited). Returns true when nothing is left to send.
    public mutating func iterate<S: ByteSink>(_ t: Tracker, _ sink: inout S, budget: UInt64) throws(SevError) -> Bool {
        guard active else { throw SevError(EPROTO, "save_iterate without an active save_setup") }
        var w = unsafe RecordWriter(sink: sink, buf: out, cap: SaveSession.outCap)
        defer { sink = w.sink }   // the sink's state after the call, error or not
        if t.currentLayoutGeneration != sentLayoutGeneration { try writeLayout(t, &w) }
        try writeControl(t, &w, force: false)
        // One ascending pass per payload (the decoder requires ascending,
        // non-overlapping state records): from where the last payload stopped
        // to the end. Chunks dirtied behind the cursor go in the next payload.
        let finished = try writeChunks(t, &w, mode: .dirty, budget: budget)
        try w.endPayload()
        iterations &+= 1
        lastIterateBytes = w.total
        iterateBytes &+= w.total
        records &+= w.records
        let done = finished && t.pendingChunks == 0
        if done { t.refreshDigestCache() }   // so completion only hashes what changes later
        return done
    }

    /// The END payload: everything unsent, then FINAL. With nothing changed
    /// since the last iterate: FINAL + END_OF_PAYLOAD = 26 bytes.
    public mutating func complete<S: ByteSink>(_ t: Tracker, _ sink: inout S) throws(SevError) {
        guard active else { throw SevError(EPROTO, "save_complete without an active save_setup") }
        var w = unsafe RecordWriter(sink: sink, buf: out, cap: SaveSession.outCap)
        defer { sink = w.sink }   // the sink's state after the call, error or not
        if t.currentLayoutGeneration != sentLayoutGeneration { try writeLayout(t, &w) }
        try writeControl(t, &w, force: false)
        if t.pendingChunks > 0 {
            cursor = 0
            _ = try writeChunks(t, &w, mode: .dirty, budget: 0)
        }
        let sum = t.summary()
        try w.begin(.final, body: Wire.Record.final.fixedBodyBytes)
        w.be64(sum.digest); w.be64(sum.pages); w.be64(sum.shared)
        try w.endPayload()
        completeBytes = w.total
        records &+= w.records
    }

    public mutating func cleanup() { active = false; cursor = 0 }

    /// Bytes still to send, estimated (no lock): ~32 bytes a changed chunk.
    public func pendingBytes(_ t: Tracker) -> UInt64 {
        guard active else { return 0 }
        return UInt64(t.pendingChunks) &* 32
    }

    // MARK: records

    mutating func writeLayout<S>(_ t: Tracker, _ w: inout RecordWriter<S>) throws(SevError) {
        // Read the generation before the list: a change in between makes the
        // next payload send the layout again.
        let gen = t.currentLayoutGeneration
        let slots = try t.slotCopy()
        try w.begin(.layout, body: Wire.Record.layout.fixedBodyBytes)
        w.be32(UInt32(truncatingIfNeeded: slots.count))
        for i in 0..<slots.count {
            try w.reserve(Wire.layoutSlotBytes)
            w.be64(slots[i].base); w.be64(slots[i].pages)
        }
        sentLayoutGeneration = gen
    }

    mutating func writeControl<S>(_ t: Tracker, _ w: inout RecordWriter<S>, force: Bool) throws(SevError) {
        let v = t.migrationControl
        if !force && v == sentControl { return }
        try w.begin(.control, body: Wire.Record.control.fixedBodyBytes)
        w.be64(v)
        sentControl = v
    }

    /// Send chunks from `cursor` on; returns true if it reached the end,
    /// false if the budget stopped it (cursor kept for the next call).
    ///
    /// Chunks are taken in batches, one lock round trip each, as many as
    /// the buffer has room for: each record is written straight from the
    /// chunk's block into the buffer (no snapshot copy) and hashed when the
    /// buffer is flushed, while it is still in cache.
    mutating func writeChunks<S>(_ t: Tracker, _ w: inout RecordWriter<S>, mode: Tracker.TakeMode,
                        budget: UInt64) throws(SevError) -> Bool {
        var fill = PendingFill()
        let start = w.total
        while true {
            if w.room < SaveSession.chunkRoom { try w.flush() }
            var overBudget = false
            var cur = cursor
            let end = unsafe t.takeChunks(from: cur, mode: mode, layoutGeneration: sentLayoutGeneration) { snap, bits in
                cur = snap.gfn &+ UInt64(snap.pages)
                switch snap.kind {
                case .allPrivate where mode == .nonPrivate:
                    // A mixed chunk that turned out all private when taken: the
                    // destination of a full send starts private, nothing to send.
                    break
                case .allPrivate, .allShared:
                    let v = snap.kind == .allPrivate
                    if fill.pages != 0 && fill.value == v && fill.gfn &+ fill.pages == snap.gfn {
                        fill.pages &+= UInt64(snap.pages)
                    } else {
                        fill.write(&w)
                        fill = PendingFill(gfn: snap.gfn, pages: UInt64(snap.pages), value: v)
                    }
                case .mixed:
                    fill.write(&w)
                    unsafe writeMixed(&w, snap.gfn, snap.pages, bits!)
                }
                if budget != 0 && w.total &- start >= budget { overBudget = true; return false }
                return w.room >= SaveSession.chunkRoom
            }
            cursor = cur
            switch end {
            case .layoutChanged:
                // The layout changed while this payload was being written
                // (hot-plug from the VMM's thread): what was taken so far
                // belongs to the layout already declared; declare the new one
                // before any record taken under it.
                try w.reserve(SaveSession.chunkRoom); fill.write(&w)
                try writeLayout(t, &w)
            case .end:
                try w.reserve(SaveSession.chunkRoom); fill.write(&w)
                cursor = 0
                return true
            case .stopped:
                if overBudget {
                    try w.reserve(SaveSession.chunkRoom); fill.write(&w)
                    return false
                }
            }
        }
    }

    /// A FILL being extended over consecutive uniform chunks (pages 0: none).
    struct PendingFill {
        var gfn: UInt64 = 0
        var pages: UInt64 = 0
        var value = false
        /// Write it (room for one FILL ensured by the caller) and clear it.
        mutating func write<S>(_ w: inout RecordWriter<S>) {
            if pages == 0 { return }
            w.put(.fill)
            w.be64(gfn); w.be64(pages); w.u8(value ? 1 : 0)
            pages = 0
        }
    }

    /// BITS or RUNS, whichever is smaller, straight from the chunk's block
    /// (room ensured by the caller: `chunkRoom`).
    // SAFETY: bits is the chunk's block (ceil(n/64) words, valid under the tracker's lock during the take);
    // the caller reserved chunkRoom bytes at w.buf + w.used, so the copy of ceil(n/8) bytes fits.
    mutating func writeMixed<S>(_ w: inout RecordWriter<S>, _ gfn: UInt64, _ n: Int,
                       _ bits: UnsafePointer<UInt64>) {
        let bitsBytes = Wire.bitsRecordBytes(pages: n)
        // RUNS only when smaller than BITS: stop counting past that (random
        // bits have ~16 runs a word, so this reads a few words, not 256).
        let limit = (bitsBytes &- Wire.runsRecordBytes(runs: 0)) / Wire.runBytes
        let runs = unsafe Bits.zeroRuns(bits, bits: n, limit: limit)
        if Wire.runsRecordBytes(runs: runs) < bitsBytes {
            w.put(.runs)
            w.be64(gfn); w.be32(UInt32(n)); w.be32(UInt32(runs))
            var i = 0
            while i < n {
                let s = unsafe Bits.find(bits, value: false, from: i, to: n)
                if s >= n { break }
                let e = unsafe Bits.find(bits, value: true, from: s, to: n)
                w.be16(UInt16(truncatingIfNeeded: s)); w.be16(UInt16(truncatingIfNeeded: e &- s &- 1))
                i = e
            }
        } else {
            w.put(.bits)
            w.be64(gfn); w.be32(UInt32(n))
            // LSB-first bytes are the block's words in little-endian order;
            // bits at or above n are zero in the block (Storage.swift).
            let rawBytes = (n &+ 7) &>> 3
            #if _endian(little)
            unsafe UnsafeMutableRawPointer(w.buf + w.used).copyMemory(from: bits, byteCount: rawBytes)
            #else
            var k = 0
            while k < rawBytes {
                w.buf[w.used &+ k] = UInt8(truncatingIfNeeded: bits[k &>> 3] &>> UInt64((k & 7) &* 8))
                k &+= 1
            }
            #endif
            w.used &+= rawBytes
            w.total &+= UInt64(rawBytes)
        }
    }
}
