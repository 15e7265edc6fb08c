import CSevPEBShims

/// Buffers records and hands them to a sink in large writes.
struct RecordWriter<S: ByteSink> {
    var sink: S
    let buf: UnsafeMutablePointer<UInt8>
    let cap: Int
    var used = 0
    var total: UInt64 = 0
    var records: UInt64 = 0
    /// Checksum of the payload so far (bytes of buf below `hashed` are in it).
    var check = XXH3()
    var hashed = 0

    init(sink: S, buf: UnsafeMutablePointer<UInt8>, cap: Int) {
        self.sink = sink; self.buf = buf; self.cap = cap
    }

    mutating func flush() throws(SevError) {
        if used > 0 {
            check.update(buf + hashed, used &- hashed)
            try sink.write(UnsafeRawBufferPointer(start: buf, count: used))
            used = 0
            hashed = 0
        }
    }

    /// END_OF_PAYLOAD: the type byte, then the low 32 bits of XXH3-64 over
    /// every payload byte up to and including that type byte; then flush.
    mutating func endPayload() throws(SevError) {
        try begin(.end, body: Wire.Record.end.fixedBodyBytes)
        check.update(buf + hashed, used &- hashed)
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
    @inline(__always) mutating func u8(_ v: UInt8) { buf[used] = v; used &+= 1; total &+= 1 }
    @inline(__always) mutating func be16(_ v: UInt16) {
        UnsafeMutableRawPointer(buf + used).storeBytes(of: v.bigEndian, as: UInt16.self); used &+= 2; total &+= 2
    }
    @inline(__always) mutating func be32(_ v: UInt32) {
        UnsafeMutableRawPointer(buf + used).storeBytes(of: v.bigEndian, as: UInt32.self); used &+= 4; total &+= 4
    }
    @inline(__always) mutating func be64(_ v: UInt64) {
        UnsafeMutableRawPointer(buf + used).storeBytes(of: v.bigEndian, as: UInt64.self); used &+= 8; total &+= 8
    }
    @inline(__always) mutating func begin(_ r: Wire.Record, body: Int) throws(SevError) {
        try reserve(1 &+ body)
        u8(r.rawValue)
        records &+= 1
    }
}

/// The source side of a migration: what has been sent, and the encoders for
/// setup / iterate / complete (docs/FORMAT.md, "Live migration").
public final class SaveSession {
    public private(set) var active = false
    var cursor: UInt64 = 0
    var sentLayoutGeneration: UInt64 = 0
    var sentControl: UInt64 = 0
    let scratch: UnsafeMutablePointer<UInt64>
    let out: UnsafeMutablePointer<UInt8>
    static let outCap = 16384

    public private(set) var iterations: UInt32 = 0
    public private(set) var setupBytes: UInt64 = 0
    public private(set) var iterateBytes: UInt64 = 0
    public private(set) var lastIterateBytes: UInt64 = 0
    public private(set) var completeBytes: UInt64 = 0
    public private(set) var records: UInt64 = 0

    private init(scratch: UnsafeMutablePointer<UInt64>, out: UnsafeMutablePointer<UInt8>) {
        self.scratch = scratch; self.out = out
    }
    public static func create() throws(SevError) -> SaveSession {
        guard let s = Mem.calloc(Tracker.chunkBufferWords, UInt64.self) else { throw .noMemory("encoder scratch") }
        guard let o = Mem.calloc(outCap, UInt8.self) else { Mem.free(s); throw .noMemory("encoder buffer") }
        return SaveSession(scratch: s, out: o)
    }
    deinit { Mem.free(scratch); Mem.free(out) }

    /// Begin: write HEADER, LAYOUT, CONTROL and every chunk that is not
    /// uniformly private (the destination starts all private).
    public func setup<S: ByteSink>(_ t: Tracker, _ sink: inout S) throws(SevError) {
        if active { throw SevError(EBUSY, "an outgoing migration is already active") }
        if let why = t.migrationRefusal() { throw why }
        iterations = 0; setupBytes = 0; iterateBytes = 0; lastIterateBytes = 0; completeBytes = 0; records = 0
        var w = RecordWriter(sink: sink, buf: out, cap: SaveSession.outCap)
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
    public func iterate<S: ByteSink>(_ t: Tracker, _ sink: inout S, budget: UInt64) throws(SevError) -> Bool {
        guard active else { throw SevError(EPROTO, "save_iterate without an active save_setup") }
        var w = RecordWriter(sink: sink, buf: out, cap: SaveSession.outCap)
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
    public func complete<S: ByteSink>(_ t: Tracker, _ sink: inout S) throws(SevError) {
        guard active else { throw SevError(EPROTO, "save_complete without an active save_setup") }
        var w = RecordWriter(sink: sink, buf: out, cap: SaveSession.outCap)
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

    public func cleanup() { active = false; cursor = 0 }

    /// Bytes still to send, estimated (no lock): ~32 bytes a changed chunk.
    public func pendingBytes(_ t: Tracker) -> UInt64 {
        guard active else { return 0 }
        return UInt64(t.pendingChunks) &* 32
    }

    // MARK: records

    func writeLayout<S>(_ t: Tracker, _ w: inout RecordWriter<S>) throws(SevError) {
        // Read the generation before the list: a change in between makes the
        // next payload send the layout again.
        let gen = t.currentLayoutGeneration
        let slots = t.slotList
        try w.begin(.layout, body: Wire.Record.layout.fixedBodyBytes)
        w.be32(UInt32(truncatingIfNeeded: slots.count))
        for s in slots {
            try w.reserve(16)
            w.be64(s.base); w.be64(s.pages)
        }
        sentLayoutGeneration = gen
    }

    func writeControl<S>(_ t: Tracker, _ w: inout RecordWriter<S>, force: Bool) throws(SevError) {
        let v = t.migrationControl
        if !force && v == sentControl { return }
        try w.begin(.control, body: Wire.Record.control.fixedBodyBytes)
        w.be64(v)
        sentControl = v
    }

    /// Send chunks from `cursor` on; returns true if it reached the end,
    /// false if the budget stopped it (cursor kept for the next call).
    func writeChunks<S>(_ t: Tracker, _ w: inout RecordWriter<S>, mode: Tracker.TakeMode,
                        budget: UInt64) throws(SevError) -> Bool {
        var fill: (gfn: UInt64, n: UInt64, v: Bool)? = nil
        let start = w.total
        while true {
            guard let snap = t.takeNextChunk(from: cursor, mode: mode, into: scratch,
                                             layoutGeneration: sentLayoutGeneration) else {
                if let f = fill { try writeFill(&w, f.gfn, f.n, f.v) }
                cursor = 0
                return true
            }
            if snap.layoutChanged {
                // The layout changed while this payload was being written
                // (hot-plug from the VMM's thread): what was taken so far
                // belongs to the layout already declared; declare the new one
                // before any record taken under it.
                if let f = fill { try writeFill(&w, f.gfn, f.n, f.v); fill = nil }
                try writeLayout(t, &w)
                continue
            }
            cursor = snap.gfn &+ UInt64(snap.pages)
            switch snap.kind {
            case .allPrivate where mode == .nonPrivate:
                // A mixed chunk that turned out all private when taken: the
                // destination of a full send starts private, nothing to send.
                continue
            case .allPrivate, .allShared:
                let v = snap.kind == .allPrivate
                if var f = fill, f.v == v, f.gfn &+ f.n == snap.gfn {
                    f.n &+= UInt64(snap.pages); fill = f
                } else {
                    if let f = fill { try writeFill(&w, f.gfn, f.n, f.v) }
                    fill = (snap.gfn, UInt64(snap.pages), v)
                }
            case .mixed:
                if let f = fill { try writeFill(&w, f.gfn, f.n, f.v); fill = nil }
                try writeMixed(&w, snap.gfn, snap.pages, scratch)
            }
            if budget != 0 && w.total &- start >= budget {
                if let f = fill { try writeFill(&w, f.gfn, f.n, f.v) }
                return false
            }
        }
    }

    func writeFill<S>(_ w: inout RecordWriter<S>, _ gfn: UInt64, _ n: UInt64, _ v: Bool) throws(SevError) {
        try w.begin(.fill, body: Wire.Record.fill.fixedBodyBytes)
        w.be64(gfn); w.be64(n); w.u8(v ? 1 : 0)
    }

    /// BITS or RUNS, whichever is smaller.
    func writeMixed<S>(_ w: inout RecordWriter<S>, _ gfn: UInt64, _ n: Int,
                       _ bits: UnsafeMutablePointer<UInt64>) throws(SevError) {
        let rawBytes = (n &+ 7) &>> 3
        // RUNS only when smaller than BITS: stop counting past that (random
        // bits have ~16 runs a word, so this reads a few words, not 256).
        let runs = Bits.zeroRuns(bits, bits: n, limit: rawBytes &>> 2)
        if runs &* 4 &+ 4 < rawBytes {
            try w.begin(.runs, body: Wire.Record.runs.fixedBodyBytes &+ runs &* 4)
            w.be64(gfn); w.be32(UInt32(n)); w.be32(UInt32(runs))
            var i = 0
            while i < n {
                let s = Bits.find(bits, value: false, from: i, to: n)
                if s >= n { break }
                let e = Bits.find(bits, value: true, from: s, to: n)
                w.be16(UInt16(truncatingIfNeeded: s)); w.be16(UInt16(truncatingIfNeeded: e &- s &- 1))
                i = e
            }
        } else {
            try w.begin(.bits, body: Wire.Record.bits.fixedBodyBytes &+ rawBytes)
            w.be64(gfn); w.be32(UInt32(n))
            let full = rawBytes &>> 3
            for k in 0..<full {
                UnsafeMutableRawPointer(w.buf + w.used).storeBytes(of: bits[k].littleEndian, as: UInt64.self)
                w.used &+= 8
            }
            var rest = rawBytes &- full &* 8
            var v = full < Tracker.chunkPages >> 6 ? bits[full] : 0
            while rest > 0 { w.buf[w.used] = UInt8(truncatingIfNeeded: v); v &>>= 8; w.used &+= 1; rest &-= 1 }
            w.total &+= UInt64(rawBytes)
        }
    }
}
