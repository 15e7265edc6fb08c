#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SevPEB

/// The `sevpeb` tool's logic over payload files: a payload file is what QEMU
/// carries in the sev-page-enc-bitmap section, payloads back to back (START,
/// then PART..., then END). Everything here returns values or throws
/// `SevError`; printing and exit codes belong to the tool.

// MARK: errors

/// "-EILSEQ (stream digest or count mismatch): FINAL at offset 3: ..."
public func describe(_ e: SevError) -> String {
    "-\(errnoName(e.code)) (\(ErrorClass.name(e.code))): \(e.message)"
}

// MARK: numbers and sizes

/// Parses "4096", "0x1000", or with a binary suffix "4K", "2M", "1G", "1T"
/// (bytes to pages is the caller's business). nil if malformed or overflowing.
public func parseNumber(_ s: String) -> UInt64? {
    var t = Substring(s.lowercased())
    if t.hasPrefix("0x") { return UInt64(t.dropFirst(2), radix: 16) }
    var shift: UInt64 = 0
    switch t.last {
    case "k": shift = 10
    case "m": shift = 20
    case "g": shift = 30
    case "t": shift = 40
    default: break
    }
    if shift != 0 { t = t.dropLast() }
    guard let v = UInt64(t, radix: 10) else { return nil }
    let (r, o) = v.multipliedReportingOverflow(by: 1 << shift)
    return o ? nil : r
}

/// "GFN:NPAGES" (each decimal, 0x hex or with a K/M/G/T multiplier).
public func parseSpan(_ s: String) -> (gfn: UInt64, pages: UInt64)? {
    let parts = s.split(separator: ":", omittingEmptySubsequences: false)
    guard parts.count == 2, let a = parseNumber(String(parts[0])), let b = parseNumber(String(parts[1])) else { return nil }
    return (a, b)
}

/// Human size of a byte count: "1 GiB", "2.5 MiB", "4 KiB", "12 B".
public func humanBytes(_ b: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    var u = 0
    var v = Double(b)
    while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
    if u == 0 { return "\(b) B" }
    if v == v.rounded() { return "\(Int(v)) \(units[u])" }
    let r = (v * 10).rounded() / 10
    return r == r.rounded() ? "\(Int(r)) \(units[u])" : "\(r) \(units[u])"
}

/// Human size of a page count.
public func humanPages(_ p: UInt64) -> String {
    p >= 1 << 52 ? "\(p) pages" : humanBytes(p << 12)
}

/// GPA of a GFN, human: "0x40000000 (1 GiB)".
public func gpaLabel(_ gfn: UInt64) -> String {
    let gpa = gfn << 12
    return hex(gpa) + (gpa == 0 ? "" : " (\(humanGPA(gpa)))")
}

// MARK: building a state

/// SplitMix64: the same generator the library's tests use, so the typical
/// guest built here is bit-for-bit the one in WireTests.
public struct SplitMix64: RandomNumberGenerator {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The standard "typical 1 TiB guest" (docs/FORMAT.md §7, WireTests):
/// memslots [0, 2 GiB) and [4 GiB, 1 TiB + 2 GiB); shared: a 1 GiB bounce
/// buffer in low memory (not chunk aligned), 64 per-vCPU pages one per MiB
/// in a 64 MiB region, 16 single pages uniformly over the guest's RAM.
public func buildTypicalGuest(_ t: Tracker) throws(SevError) {
    let gib: UInt64 = 1 << 18
    try t.addSlot(base: 0, pages: 2 * gib)
    try t.addSlot(base: 4 * gib, pages: 1022 * gib)
    _ = try t.setRange(gib - 1234, gib, private: false)
    for i in 0..<64 { _ = try t.setRange(4 * gib + 0x5000 + UInt64(i) * 256, 1, private: false) }
    var rng = SplitMix64(seed: 16)
    for _ in 0..<16 {
        let r = rng.next() % (1024 * gib)
        _ = try t.setRange(r < 2 * gib ? r : 4 * gib + (r - 2 * gib), 1, private: false)
    }
}

/// A state from `--slot`, `--shared` and `--control` arguments.
public func buildState(slots: [(gfn: UInt64, pages: UInt64)], shared: [(gfn: UInt64, pages: UInt64)],
                       control: UInt64?) throws(SevError) -> Tracker {
    let t = try Tracker.create()
    for s in slots { try t.addSlot(base: s.gfn, pages: s.pages) }
    for r in shared { _ = try t.setRange(r.gfn, r.pages, private: false) }
    if let c = control { try t.setMigrationControl(c) }
    return t
}

// MARK: encode

public struct EncodedPayloads {
    public var start: [UInt8]
    public var end: [UInt8]
    public var file: [UInt8] { start + end }
}

/// What QEMU would carry for a migration with nothing changing: the START
/// payload (save_setup) then the END payload (save_live_complete_precopy).
public func encodePayloads(_ t: Tracker) throws(SevError) -> EncodedPayloads {
    var s = try SaveSession.create()
    defer { s.cleanup() }
    var a = ArraySink(), b = ArraySink()
    try s.setup(t, &a)
    try s.complete(t, &b)
    return EncodedPayloads(start: a.bytes, end: b.bytes)
}

// MARK: decode / dump

/// One record as LoadSession's observer reported it.
public struct RecordEvent: Equatable {
    public var payload: Int
    public var offset: Int        // in the payload
    public var fileOffset: Int    // in the file (payload start + offset)
    public var record: Wire.Record
    public var a: UInt64, b: UInt64, c: UInt64

    public init(payload: Int, offset: Int, fileOffset: Int, record: Wire.Record, a: UInt64, b: UInt64, c: UInt64) {
        self.payload = payload; self.offset = offset; self.fileOffset = fileOffset
        self.record = record; self.a = a; self.b = b; self.c = c
    }

    /// From the decoder's labelled record (a, b, c: its fields in wire order).
    public init(payload: Int, offset: Int, fileOffset: Int, _ r: DecodedRecord) {
        var f: (UInt64, UInt64, UInt64)
        switch r {
        case let .header(v, ps, fl): f = (v, ps, fl)
        case let .layout(n): f = (n, 0, 0)
        case let .control(v): f = (v, 0, 0)
        case let .fill(g, n, st): f = (g, n, st)
        case let .bits(g, n): f = (g, n, 0)
        case let .runs(g, n, nr): f = (g, n, nr)
        case let .final(d, p, sh): f = (d, p, sh)
        case let .end(ck, pb): f = (ck, pb, 0)
        }
        self.init(payload: payload, offset: offset, fileOffset: fileOffset, record: r.record, a: f.0, b: f.1, c: f.2)
    }

    /// "FILL gfn=0x3ffb2e npages=0x40000 state=0x0 (shared)"
    public var text: String {
        let name = "\(record.name)"
        switch record {
        case .header: return "\(name) version=\(hex(a)) page_shift=\(hex(b)) flags=\(hex(c))"
        case .layout: return "\(name) nslots=\(hex(a))"
        case .control: return "\(name) value=\(hex(a))\(a & 1 == 1 ? " (migration ready)" : "")"
        case .fill: return "\(name) gfn=\(hex(a)) npages=\(hex(b)) state=\(hex(c)) (\(c == 1 ? "private" : "shared"))"
        case .bits: return "\(name) gfn=\(hex(a)) npages=\(hex(b))"
        case .runs: return "\(name) gfn=\(hex(a)) npages=\(hex(b)) nruns=\(hex(c))"
        case .final: return "\(name) digest=\(hex(a)) total_pages=\(hex(b)) shared_pages=\(hex(c))"
        case .end: return "\(name) check=\(hex(a)) payload_bytes=\(hex(b))"
        }
    }
}

/// The outcome of reading a payload file: the records seen, where each
/// payload lay, and either the committed tracker or the error.
/// A tracker owned by a Swift object and destroyed with it: the tools keep
/// their trackers in these (a `Tracker` is a handle the C ABI destroys
/// explicitly).
public final class OwnedTracker {
    public let tracker: Tracker
    public init(_ t: Tracker) { tracker = t }
    public static func create() throws(SevError) -> OwnedTracker { OwnedTracker(try Tracker.create()) }
    deinit { tracker.destroy() }
}

/// A load session held by a Swift object (for parsers that keep one across calls).
final class LoadSessionBox {
    var session: LoadSession
    init(_ s: consuming LoadSession) { session = s }
}

public struct DecodeResult {
    let owner: OwnedTracker
    public var tracker: Tracker { owner.tracker }
    /// (file offset, length) of each payload read completely.
    public var payloads: [(offset: Int, bytes: Int)] = []
    public var records: [RecordEvent] = []
    public var committed = false
    public var error: SevError? = nil
    /// Control value carried by the stream (applied at commit).
    public var control: UInt64 { tracker.migrationControl }
}

/// Reads payloads back to back from `bytes[from...]` until one commits
/// (FINAL checked), with the layout taken from the stream. Never throws:
/// the error, if any, is in the result together with everything read before.
/// With `stopAtCommit` false, bytes after the committing payload are an error.
public func decodePayloads(_ bytes: [UInt8], from: Int = 0, recordEvents: Bool = true) -> DecodeResult {
    let owner: OwnedTracker
    var l: LoadSession
    do throws(SevError) {
        owner = try OwnedTracker.create()
        l = try LoadSession.create(layoutFromStream: true)
    } catch {
        fatalError("sevpeb: out of memory: \(error.message)")
    }
    let t = owner.tracker
    var r = DecodeResult(owner: owner)
    l.setup()
    var start = from
    var events: [RecordEvent] = []
    if recordEvents {
        l.observer = { p, off, rec in
            events.append(RecordEvent(payload: p, offset: off, fileOffset: start + off, rec))
        }
    }
    defer { l.observer = nil }
    do throws(SevError) {
        while true {
            if start >= bytes.count {
                throw SevError(ENODATA, start == from
                    ? "empty input: no payload"
                    : "input ends after \(r.payloads.count) payload(s) (\(start - from) bytes) without a FINAL record")
            }
            var src = ArraySource(bytes, offset: start)
            let done = try l.load(t, &src, version: Wire.sectionVersion)
            r.payloads.append((start, src.offset - start))
            start = src.offset
            if done {
                if start != bytes.count {
                    throw SevError(EBADMSG, "\(bytes.count - start) bytes after the payload that committed (payload \(r.payloads.count - 1) ends at offset \(start))")
                }
                r.committed = true
                break
            }
        }
    } catch {
        r.error = error
    }
    r.records = events
    return r
}

// MARK: reports

/// Shared runs of a tracker (ascending).
public func sharedRuns(_ t: Tracker, limit: Int = .max) -> (runs: [(gfn: UInt64, pages: UInt64)], total: Int) {
    var runs: [(gfn: UInt64, pages: UInt64)] = []
    var n = 0
    var from: UInt64 = 0
    while let run = t.nextSharedRun(from: from) {
        if runs.count < limit { runs.append(run) }
        n += 1
        from = run.gfn &+ run.pages
    }
    return (runs, n)
}

/// The lines `sevpeb decode` / `inspect` print about a state: layout,
/// shared runs (up to `maxRuns`), totals and digest.
public func stateReport(_ t: Tracker, maxRuns: Int) -> [String] {
    var out: [String] = []
    let slots = t.slotList
    out.append("layout: \(slots.count) memslot\(slots.count == 1 ? "" : "s")")
    for (i, s) in slots.enumerated() {
        out.append("  slot \(i): gfn \(hex(s.base)) + \(hex(s.pages)) pages  [\(gpaLabel(s.base)), \(gpaLabel(s.base + s.pages)))  \(humanPages(s.pages))")
    }
    let (runs, total) = sharedRuns(t, limit: maxRuns)
    out.append("shared runs: \(total)")
    for r in runs {
        out.append("  gfn \(hex(r.gfn)) + \(hex(r.pages))  at \(gpaLabel(r.gfn))  \(humanPages(r.pages))")
    }
    if total > runs.count { out.append("  ... \(total - runs.count) more (--all to list every run)") }
    let sum = t.summary()
    let pct = sum.pages == 0 ? 0 : Double(sum.shared) / Double(sum.pages) * 100
    out.append("pages: \(sum.pages) total (\(humanPages(sum.pages))), \(sum.shared) shared (\(humanPages(sum.shared)), \(formatPercent(pct))), \(sum.pages - sum.shared) private")
    out.append("control: \(hex(t.migrationControl))")
    out.append("digest: \(hex(sum.digest))")
    return out
}

func formatPercent(_ p: Double) -> String {
    if p == 0 { return "0%" }
    if p < 0.001 { return "<0.001%" }
    let r = (p * 1000).rounded() / 1000
    return "\(r)%"
}
