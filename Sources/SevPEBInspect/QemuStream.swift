import SevPEB

/// A reader for a saved QEMU 10.0 migration stream (`migrate file:...`),
/// enough to find and check the sev-page-enc-bitmap sections in it.
///
/// Stream grammar (migration/savevm.c, migration/ram.c; research
/// docs/SOURCES.md §Q1):
///
///   be32 0x5145564d "QEVM" | be32 3
///   0x07 configuration: be32 len | machine name; then subsections, each
///        0x05 | u8 len | name | be32 version | data:
///          configuration/target-page-bits  be32
///          configuration/capabilities      be32 count | count x (u8 len, name)
///          configuration/uuid              16 bytes
///   then, repeated:
///   0x08 COMMAND  be16 cmd | be16 len | len bytes
///   0x01 START / 0x04 FULL  be32 section_id | u8 len | idstr | be32 instance | be32 version | payload
///   0x02 PART  / 0x03 END   be32 section_id | payload
///        each section optionally followed by its footer 0x7e | be32 section_id
///   0x00 EOF, then 0x06 | be32 len | vmdesc JSON
///
/// Payloads are self-delimiting only to their owner: "ram" is parsed by its
/// records (below), ours by LoadSession; any other START/PART/END section
/// cannot be skipped. QEMU writes every iterable section's END before the
/// first non-iterable FULL section, so parsing stops at the first FULL after
/// our END.
public enum QemuVM {
    public static let fileMagic: UInt32 = 0x5145_564d
    public static let fileVersion: UInt32 = 3
    public static let eof: UInt8 = 0x00
    public static let sectionStart: UInt8 = 0x01
    public static let sectionPart: UInt8 = 0x02
    public static let sectionEnd: UInt8 = 0x03
    public static let sectionFull: UInt8 = 0x04
    public static let subsection: UInt8 = 0x05
    public static let vmdescription: UInt8 = 0x06
    public static let configuration: UInt8 = 0x07
    public static let command: UInt8 = 0x08
    public static let footer: UInt8 = 0x7e

    public static func sectionTypeName(_ t: UInt8) -> String {
        switch t {
        case sectionStart: return "START"
        case sectionPart: return "PART"
        case sectionEnd: return "END"
        case sectionFull: return "FULL"
        default: return hex(UInt64(t))
        }
    }
    public static func commandName(_ c: UInt16) -> String {
        let names = ["INVALID", "OPEN_RETURN_PATH", "PING", "POSTCOPY_ADVISE", "POSTCOPY_LISTEN",
                     "POSTCOPY_RUN", "POSTCOPY_RAM_DISCARD", "PACKAGED", "ENABLE_COLO",
                     "POSTCOPY_RESUME", "RECV_BITMAP", "SWITCHOVER_START"]
        return Int(c) < names.count ? names[Int(c)] : "command \(c)"
    }
}

/// RAM record flags (migration/ram.h), in the low bits of each be64 address.
public enum RamFlag {
    public static let zero: UInt64 = 0x002
    public static let memSize: UInt64 = 0x004
    public static let page: UInt64 = 0x008
    public static let eos: UInt64 = 0x010
    public static let cont: UInt64 = 0x020
    public static let xbzrle: UInt64 = 0x040
    public static let hook: UInt64 = 0x080
    public static let multifdFlush: UInt64 = 0x200
}

/// A stream-level failure: the message names where and what.
public struct InspectError: Error, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ m: String) { message = m }
    public var description: String { message }
}

/// One section as it appeared in the stream.
public struct SectionRecord {
    public var type: UInt8
    public var id: UInt32
    public var idstr: String
    public var instance: UInt32
    public var version: UInt32
    /// Offset of the section's type byte.
    public var offset: Int
    /// Payload bytes (between header and footer).
    public var payloadBytes: Int
    /// Header + payload + footer.
    public var totalBytes: Int
}

/// Everything `sevpeb inspect` learned from a stream.
public struct StreamReport {
    public var machine = ""
    public var targetPageBits: UInt32? = nil
    public var capabilities: [String] = []
    public var uuid: [UInt8]? = nil
    public var commands: [(offset: Int, cmd: UInt16, len: UInt16)] = []
    public var sections: [SectionRecord] = []
    /// RAM blocks from MEM_SIZE (idstr, bytes), and page records read.
    public var ramBlocks: [(name: String, bytes: UInt64)] = []
    public var ramPages = 0
    public var ramZeroPages = 0
    /// Our sections: the state once committed; bytes per START/PART/END.
    var oursOwner: OwnedTracker? = nil
    public var ours: Tracker? { oursOwner?.tracker }
    public var ourBytes: [UInt8: Int] = [:]
    public var ourCounts: [UInt8: Int] = [:]
    public var ourCommitted = false
    public var ourFinal: (digest: UInt64, pages: UInt64, shared: UInt64)? = nil
    /// Where and why parsing stopped without an error.
    public var stop: (offset: Int, reason: String)? = nil
    public var bytesRead = 0
}

/// Parses a whole stream held in memory.
public final class QemuStreamParser {
    let b: [UInt8]
    var pos = 0
    public private(set) var report = StreamReport()
    /// section_id -> (idstr, instance, version) from START/FULL
    var known: [UInt32: (idstr: String, instance: UInt32, version: UInt32)] = [:]
    var ramBlockLengths: [String: UInt64] = [:]
    var lastRamBlock: String? = nil
    var ignoreShared = false
    var load: LoadSessionBox? = nil
    var ourTracker: OwnedTracker? = nil
    var ourEndSeen = false

    public init(_ bytes: [UInt8]) { b = bytes }

    // MARK: primitive reads

    func need(_ n: Int, _ what: String) throws(InspectError) {
        if n > b.count - pos {
            throw InspectError("stream truncated at offset \(b.count): \(what) at offset \(pos) needs \(n) bytes, \(b.count - pos) left")
        }
    }
    func u8(_ what: String) throws(InspectError) -> UInt8 {
        try need(1, what); defer { pos += 1 }; return b[pos]
    }
    func be16(_ what: String) throws(InspectError) -> UInt16 {
        try need(2, what); defer { pos += 2 }
        return UInt16(b[pos]) << 8 | UInt16(b[pos + 1])
    }
    func be32(_ what: String) throws(InspectError) -> UInt32 {
        try need(4, what); var v: UInt32 = 0
        for i in 0..<4 { v = v << 8 | UInt32(b[pos + i]) }
        pos += 4; return v
    }
    func be64(_ what: String) throws(InspectError) -> UInt64 {
        try need(8, what); var v: UInt64 = 0
        for i in 0..<8 { v = v << 8 | UInt64(b[pos + i]) }
        pos += 8; return v
    }
    func bytes(_ n: Int, _ what: String) throws(InspectError) -> ArraySlice<UInt8> {
        try need(n, what); defer { pos += n }; return b[pos..<(pos + n)]
    }
    func counted(_ what: String) throws(InspectError) -> String {
        let n = Int(try u8("\(what) length"))
        return String(decoding: try bytes(n, what), as: UTF8.self)
    }

    // MARK: the stream

    /// Parses until the first FULL section after our END, EOF, or an error.
    /// `report` keeps what was learned even when this throws.
    public func parse() throws(InspectError) {
        defer { report.bytesRead = pos }
        let magic = try be32("file magic")
        if magic != QemuVM.fileMagic {
            throw InspectError("file header: magic \(hex(UInt64(magic))) (expected \(hex(UInt64(QemuVM.fileMagic))) \"QEVM\"): not a QEMU migration stream")
        }
        let version = try be32("file version")
        if version != QemuVM.fileVersion {
            throw InspectError("file header: version \(version) (expected \(QemuVM.fileVersion))")
        }
        let at = pos
        let c = try u8("configuration section")
        if c != QemuVM.configuration {
            throw InspectError("offset \(at): \(hex(UInt64(c))) where the configuration section (0x07) belongs")
        }
        try parseConfiguration()
        while true {
            let at = pos
            let t = try u8("section type")
            switch t {
            case QemuVM.eof:
                try parseTrailer()
                report.stop = (at, "end of stream (EOF marker)")
                return
            case QemuVM.command:
                let cmd = try be16("command number"), len = try be16("command length")
                _ = try bytes(Int(len), "\(QemuVM.commandName(cmd)) command data")
                report.commands.append((at, cmd, len))
            case QemuVM.sectionStart, QemuVM.sectionFull:
                let id = try be32("section id")
                let idstr = try counted("section idstr")
                let inst = try be32("section instance"), ver = try be32("section version")
                if t == QemuVM.sectionFull {
                    if ourEndSeen {
                        pos = at
                        report.stop = (at, "FULL section '\(idstr)' (id \(id)): non-iterable device state follows; every sev-page-enc-bitmap section has been read")
                        return
                    }
                    if load == nil {
                        throw InspectError("offset \(at): FULL section '\(idstr)' instance \(inst) (id \(id)) reached with no sev-page-enc-bitmap section before it: the source did not send one (no sev-page-enc-bitmap object?)")
                    }
                    throw InspectError("offset \(at): FULL section '\(idstr)' instance \(inst) (id \(id)) before the sev-page-enc-bitmap END section: device state cannot be skipped without its description")
                }
                if known[id] != nil {
                    throw InspectError("offset \(at): START section '\(idstr)' reuses section id \(id) of '\(known[id]!.idstr)'")
                }
                known[id] = (idstr, inst, ver)
                try parseSection(t, id: id, idstr: idstr, instance: inst, version: ver, at: at)
            case QemuVM.sectionPart, QemuVM.sectionEnd:
                let id = try be32("section id")
                guard let k = known[id] else {
                    throw InspectError("offset \(at): \(QemuVM.sectionTypeName(t)) section id \(id) without a START")
                }
                try parseSection(t, id: id, idstr: k.idstr, instance: k.instance, version: k.version, at: at)
            default:
                throw InspectError("offset \(at): unknown section type \(hex(UInt64(t)))")
            }
        }
    }

    func parseConfiguration() throws(InspectError) {
        let len = try be32("configuration machine name length")
        if len > 256 { throw InspectError("configuration: machine name length \(len) (expected at most 256)") }
        report.machine = String(decoding: try bytes(Int(len), "configuration machine name"), as: UTF8.self)
        while pos < b.count && b[pos] == QemuVM.subsection {
            let at = pos
            pos += 1
            let name = try counted("configuration subsection name")
            let ver = try be32("subsection version")
            if ver != 1 { throw InspectError("offset \(at): subsection '\(name)' version \(ver) (expected 1)") }
            switch name {
            case "configuration/target-page-bits":
                report.targetPageBits = try be32("target-page-bits")
            case "configuration/capabilities":
                let n = try be32("capability count")
                if n > 64 { throw InspectError("offset \(at): capability count \(n) (expected at most 64)") }
                for _ in 0..<n { report.capabilities.append(try counted("capability name")) }
            case "configuration/uuid":
                report.uuid = Array(try bytes(16, "uuid"))
            default:
                throw InspectError("offset \(at): unknown configuration subsection '\(name)'")
            }
        }
        if report.capabilities.contains("mapped-ram") {
            throw InspectError("configuration: capability mapped-ram: RAM pages are at fixed file offsets, not in the stream; not supported")
        }
        ignoreShared = report.capabilities.contains("x-ignore-shared")
        if let bits = report.targetPageBits, bits != 12 {
            throw InspectError("configuration: target-page-bits \(bits) (expected 12)")
        }
    }

    /// The vmdesc trailer after EOF (optional).
    func parseTrailer() throws(InspectError) {
        if pos == b.count { return }
        let at = pos
        let t = try u8("vmdesc marker")
        if t != QemuVM.vmdescription { throw InspectError("offset \(at): \(hex(UInt64(t))) after EOF (expected 0x06 vmdesc)") }
        let n = try be32("vmdesc length")
        _ = try bytes(Int(n), "vmdesc JSON")
    }

    func parseSection(_ t: UInt8, id: UInt32, idstr: String, instance: UInt32, version: UInt32, at: Int) throws(InspectError) {
        let payloadAt = pos
        if idstr == Wire.idstr {
            if instance != 0 { throw InspectError("offset \(at): \(Wire.idstr) instance \(instance) (expected 0)") }
            if t == QemuVM.sectionFull { throw InspectError("offset \(at): \(Wire.idstr) as a FULL section (expected START/PART/END)") }
            try parseOurs(t, version: version, at: at)
        } else if idstr == "ram" {
            if version != 4 { throw InspectError("offset \(at): RAM section version \(version) (expected 4)") }
            try parseRam(at: at, id: id)
        } else {
            throw InspectError("offset \(at): \(QemuVM.sectionTypeName(t)) section '\(idstr)' instance \(instance) (id \(id)): iterable section of unknown format, cannot be skipped")
        }
        let payloadBytes = pos - payloadAt
        // Footer (send-section-footer, on by default).
        if pos < b.count && b[pos] == QemuVM.footer {
            let fat = pos
            pos += 1
            let fid = try be32("section footer id")
            if fid != id {
                throw InspectError("offset \(fat): footer of section '\(idstr)' (id \(id)) carries section id \(fid)")
            }
        }
        report.sections.append(SectionRecord(type: t, id: id, idstr: idstr, instance: instance, version: version,
                                             offset: at, payloadBytes: payloadBytes, totalBytes: pos - at))
    }

    // MARK: our section

    func parseOurs(_ t: UInt8, version: UInt32, at: Int) throws(InspectError) {
        let name = QemuVM.sectionTypeName(t)
        if ourEndSeen { throw InspectError("offset \(at): \(Wire.idstr) \(name) section after its END") }
        if t == QemuVM.sectionStart {
            if load != nil { throw InspectError("offset \(at): second \(Wire.idstr) START section") }
            do throws(SevError) {
                var l = try LoadSession.create(layoutFromStream: true)
                l.setup()
                load = LoadSessionBox(l)
                ourTracker = try OwnedTracker.create()
            } catch { throw InspectError("offset \(at): \(describe(error))") }
        }
        guard let l = load, let owner = ourTracker else {
            throw InspectError("offset \(at): \(Wire.idstr) \(name) section before its START")
        }
        var final: (UInt64, UInt64, UInt64)? = nil
        let tr = owner.tracker
        l.session.observer = { _, _, rec in if case let .final(d, p, sh) = rec { final = (d, p, sh) } }
        defer { l.session.observer = nil }
        let start = pos
        var src = ArraySource(b, offset: pos)
        let committed: Bool
        do throws(SevError) {
            committed = try l.session.load(tr, &src, version: version)
        } catch {
            if let f = final { report.ourFinal = (f.0, f.1, f.2) }
            throw InspectError("offset \(at): \(Wire.idstr) \(name) section payload at offset \(start): \(describe(error))")
        }
        pos = src.offset
        if let f = final { report.ourFinal = (f.0, f.1, f.2) }
        report.ourBytes[t, default: 0] += pos - start
        report.ourCounts[t, default: 0] += 1
        if t == QemuVM.sectionEnd {
            if !committed {
                throw InspectError("offset \(at): \(Wire.idstr) END section payload ends without a FINAL record")
            }
            ourEndSeen = true
            report.ourCommitted = true
            report.oursOwner = owner
        } else if committed {
            throw InspectError("offset \(at): \(Wire.idstr) \(name) section carries FINAL (expected only in END)")
        }
    }

    // MARK: RAM (ram_load_precopy)

    func parseRam(at: Int, id: UInt32) throws(InspectError) {
        while true {
            let rat = pos
            let word = try be64("RAM record address")
            let flags = word & 0xfff
            let addr = word & ~0xfff
            switch flags & ~RamFlag.cont {
            case RamFlag.memSize:
                var total = addr
                while total > 0 {
                    let name = try counted("RAM block name")
                    let len = try be64("RAM block '\(name)' length")
                    if ignoreShared { _ = try be64("RAM block '\(name)' address (x-ignore-shared)") }
                    if len > total {
                        throw InspectError("offset \(rat): RAM MEM_SIZE: block '\(name)' length \(hex(len)) exceeds the \(hex(total)) bytes left of the total")
                    }
                    ramBlockLengths[name] = len
                    report.ramBlocks.append((name, len))
                    total -= len
                }
            case RamFlag.zero, RamFlag.page:
                let block: String
                if flags & RamFlag.cont != 0 {
                    guard let lb = lastRamBlock else {
                        throw InspectError("offset \(rat): RAM page record with CONTINUE but no block named before")
                    }
                    block = lb
                } else {
                    block = try counted("RAM page block name")
                }
                guard let blen = ramBlockLengths[block] else {
                    throw InspectError("offset \(rat): RAM page record for unknown block '\(block)'")
                }
                if addr >= blen {
                    throw InspectError("offset \(rat): RAM page offset \(hex(addr)) beyond block '\(block)' of \(hex(blen)) bytes")
                }
                lastRamBlock = block
                if flags & RamFlag.zero != 0 {
                    let z = try u8("RAM zero page byte")
                    if z != 0 { throw InspectError("offset \(rat): RAM zero page with fill byte \(hex(UInt64(z))) (expected 0)") }
                    report.ramZeroPages += 1
                } else {
                    _ = try bytes(4096, "RAM page data")
                    report.ramPages += 1
                }
            case RamFlag.multifdFlush:
                break
            case RamFlag.eos:
                return
            default:
                var names: [String] = []
                if flags & RamFlag.xbzrle != 0 { names.append("XBZRLE") }
                if flags & RamFlag.hook != 0 { names.append("HOOK (RDMA)") }
                let what = names.isEmpty ? "" : " (" + names.joined(separator: ", ") + ")"
                throw InspectError("offset \(rat): RAM record flags \(hex(flags))\(what) not supported (section id \(id) at offset \(at))")
            }
        }
    }
}

// MARK: the report as text

extension StreamReport {
    /// The text `sevpeb inspect` prints (state lines via stateReport).
    public func lines(maxRuns: Int) -> [String] {
        var out: [String] = []
        out.append("QEMU stream: machine '\(machine)'" + (targetPageBits.map { ", target-page-bits \($0)" } ?? "")
                   + (capabilities.isEmpty ? "" : ", capabilities " + capabilities.joined(separator: ",")))
        if let u = uuid { out.append("  uuid \(u.map { String($0, radix: 16) }.joined())") }
        for c in commands { out.append("  offset \(c.offset): COMMAND \(QemuVM.commandName(c.cmd)) (\(c.len) bytes)") }
        // Sections grouped by (idstr, type), in order of first appearance.
        var keys: [String] = []
        var agg: [String: (n: Int, payload: Int, total: Int)] = [:]
        for s in sections {
            let k = "\(s.idstr) \(QemuVM.sectionTypeName(s.type))"
            if agg[k] == nil { keys.append(k); agg[k] = (0, 0, 0) }
            agg[k]!.n += 1; agg[k]!.payload += s.payloadBytes; agg[k]!.total += s.totalBytes
        }
        out.append("sections read: \(sections.count)")
        for k in keys {
            let a = agg[k]!
            out.append("  \(k) x\(a.n): \(a.payload) payload bytes, \(a.total) with framing")
        }
        if !ramBlocks.isEmpty {
            out.append("RAM: " + ramBlocks.map { "\($0.name) \(humanBytes($0.bytes))" }.joined(separator: ", ")
                       + "; \(ramPages) pages, \(ramZeroPages) zero pages")
        }
        if let s = stop { out.append("stopped at offset \(s.offset): \(s.reason)") }
        out.append("\(Wire.idstr): " + (ourCounts.isEmpty ? "not in the stream" :
            [QemuVM.sectionStart, QemuVM.sectionPart, QemuVM.sectionEnd].compactMap { t -> String? in
                guard let n = ourCounts[t] else { return nil }
                return "\(QemuVM.sectionTypeName(t)) x\(n) \(ourBytes[t]!) bytes"
            }.joined(separator: ", ")))
        let mine = sections.filter { $0.idstr == Wire.idstr }
        for sec in mine.prefix(12) {
            out.append("  \(QemuVM.sectionTypeName(sec.type)) (id \(sec.id)) at offset \(sec.offset): \(sec.payloadBytes) payload bytes, \(sec.totalBytes) with framing")
        }
        if mine.count > 12 { out.append("  ... \(mine.count - 12) more sections") }
        if let t = ours {
            out += stateReport(t, maxRuns: maxRuns)
        }
        if let f = ourFinal {
            out.append("FINAL: digest \(hex(f.digest)), \(f.pages) pages, \(f.shared) shared: "
                       + (ourCommitted ? "verified against the received state" : "NOT verified"))
        }
        return out
    }
}
