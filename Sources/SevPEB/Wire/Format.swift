import CSevPEBShims

/// The sevpeb migration section payload, format version 2.
/// docs/FORMAT.md is the specification; this file mirrors it.
///
/// A payload (one QEMU START / PART / END / FULL section) is a sequence of
/// records, each a type byte and a fixed-layout body of big-endian integers,
/// ending with END_OF_PAYLOAD:
///
///   0x01 HEADER   be32 magic "SVPB" | be16 version (2) | u8 page_shift (12) | u8 flags (0)
///   0x02 LAYOUT   be32 nslots (<= 32768) | nslots x (be64 base_gfn, be64 npages)
///   0x03 CONTROL  be64 MSR_KVM_MIGRATION_CONTROL value (bit 0 only)
///   0x10 FILL     be64 gfn | be64 npages (> 0) | u8 state (0 shared, 1 private)
///   0x11 BITS     be64 gfn | be32 npages (1..65536) | ceil(npages/8) bytes,
///                 bit i = byte i/8 bit i%8 (LSB first), 1 = private; bits >= npages zero
///   0x12 RUNS     be64 gfn | be32 npages (1..65536) | be32 nruns (1..npages/2+1) |
///                 nruns x (be16 offset, be16 length-1): shared runs, ascending, not
///                 touching; the rest of [gfn, gfn+npages) is private
///   0x20 FINAL    be64 digest | be64 total_pages | be64 shared_pages
///   0xFF END_OF_PAYLOAD be32 check: low 32 bits of XXH3-64 over every payload byte up
///                 to and including this record's type byte
public enum Wire {
    public static let magic: UInt32 = 0x5356_5042   // "SVPB"
    public static let version: UInt16 = 2
    public static let pageShift: UInt8 = 12
    public static let sectionVersion: UInt32 = 1
    public static let idstr = "sev-page-enc-bitmap"

    public static let maxSlots = UInt32(Tracker.maxSlots)
    /// Largest npages of one BITS or RUNS record (8 KiB of bits).
    public static let maxRecordPages: UInt32 = 1 << 16

    public enum Record: UInt8 {
        case header = 0x01
        case layout = 0x02
        case control = 0x03
        case fill = 0x10
        case bits = 0x11
        case runs = 0x12
        case final = 0x20
        case end = 0xFF

        public var name: StaticString {
            switch self {
            case .header: return "HEADER"
            case .layout: return "LAYOUT"
            case .control: return "CONTROL"
            case .fill: return "FILL"
            case .bits: return "BITS"
            case .runs: return "RUNS"
            case .final: return "FINAL"
            case .end: return "END_OF_PAYLOAD"
            }
        }

        /// Bytes of the record's fixed fields after the type byte (the
        /// table above); LAYOUT, BITS and RUNS add their variable part.
        /// The encoder sizes every record from here.
        public var fixedBodyBytes: Int {
            switch self {
            case .header: return 8      // be32 magic, be16 version, u8 page_shift, u8 flags
            case .layout: return 4      // be32 count (+ 16 per slot)
            case .control: return 8     // be64 value
            case .fill: return 17       // be64 gfn, be64 npages, u8 value
            case .bits: return 12       // be64 gfn, be32 npages (+ bit bytes)
            case .runs: return 16       // be64 gfn, be32 npages, be32 nruns (+ 4 per run)
            case .final: return 24      // be64 digest, be64 pages, be64 shared
            case .end: return 4         // be32 check
            }
        }
    }

    /// Bytes of a FINAL record, type byte included.
    public static let finalBytes = 1 + Record.final.fixedBodyBytes
    /// Bytes of one LAYOUT slot entry (be64 base_gfn, be64 npages).
    public static let layoutSlotBytes = 16
    /// Bytes of one RUNS entry (be16 offset, be16 length-1).
    public static let runBytes = 4
    /// Bytes of a BITS record for `npages` pages, type byte included.
    @inline(__always) public static func bitsRecordBytes(pages: Int) -> Int {
        1 &+ Record.bits.fixedBodyBytes &+ ((pages &+ 7) &>> 3)
    }
    /// Bytes of a RUNS record with `runs` runs, type byte included.
    @inline(__always) public static func runsRecordBytes(runs: Int) -> Int {
        1 &+ Record.runs.fixedBodyBytes &+ runs &* runBytes
    }
}

/// Where encoded bytes go. Generic (not an existential) so it works in
/// Embedded Swift.
public protocol ByteSink {
    // SAFETY: p is valid for the duration of the call only; a sink copies what it keeps.
    mutating func write(_ p: UnsafeRawBufferPointer) throws(SevError)
}

/// Where decoded bytes come from: fills the buffer exactly or throws.
public protocol ByteSource {
    // SAFETY: p is valid for the duration of the call only; a source fills exactly p.count bytes or throws.
    mutating func read(_ p: UnsafeMutableRawBufferPointer) throws(SevError)
}

/// A growable byte array sink (tests, CLI).
public struct ArraySink: ByteSink {
    public var bytes: [UInt8] = []
    public init() {}
    // SAFETY: copies p into the array during the call (the ByteSink contract).
    public mutating func write(_ p: UnsafeRawBufferPointer) throws(SevError) {
        unsafe bytes.append(contentsOf: p)
    }
}

/// Reads from an array; running out is -ENODATA (truncation).
public struct ArraySource: ByteSource {
    public let bytes: [UInt8]
    public var offset = 0
    public init(_ bytes: [UInt8], offset: Int = 0) { self.bytes = bytes; self.offset = offset }
    // SAFETY: p.count bytes are checked to remain at offset before the copy into p.
    public mutating func read(_ p: UnsafeMutableRawBufferPointer) throws(SevError) {
        if p.count > bytes.count &- offset {
            throw SevError(ENODATA, "stream truncated at offset \(bytes.count): needed \(p.count) more bytes at offset \(offset)")
        }
        unsafe bytes.withUnsafeBytes { src in
            unsafe p.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[offset..<(offset &+ p.count)]))
        }
        offset &+= p.count
    }
}
