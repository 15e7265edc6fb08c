import Foundation
import CSevPEBShims
import Testing
@testable import SevPEB
import SevPEBTestSupport
import SevPEBInspect

/// Builds QEMU migration stream bytes (docs/SOURCES.md §Q1) for the
/// inspector tests.
struct StreamBuilder {
    var b: [UInt8] = []
    mutating func u8(_ v: UInt8) { b.append(v) }
    mutating func be16(_ v: UInt16) { b += [UInt8(v >> 8), UInt8(v & 0xff)] }
    mutating func be32(_ v: UInt32) { for s in stride(from: 24, through: 0, by: -8) { b.append(UInt8(truncatingIfNeeded: v >> UInt32(s))) } }
    mutating func be64(_ v: UInt64) { for s in stride(from: 56, through: 0, by: -8) { b.append(UInt8(truncatingIfNeeded: v >> UInt64(s))) } }
    mutating func counted(_ s: String) { u8(UInt8(s.utf8.count)); b += Array(s.utf8) }

    mutating func header(machine: String = "pc-q35-10.0", magic: UInt32 = 0x5145_564d) {
        be32(magic); be32(3)
        u8(0x07); be32(UInt32(machine.utf8.count)); b += Array(machine.utf8)
        u8(0x05); counted("configuration/capabilities"); be32(1); be32(1); counted("x-ignore-shared")
        u8(0x05); counted("configuration/uuid"); be32(1); b += (0..<16).map { UInt8($0) }
    }
    mutating func command(_ c: UInt16, _ data: [UInt8] = []) { u8(0x08); be16(c); be16(UInt16(data.count)); b += data }
    mutating func start(_ type: UInt8 = 0x01, id: UInt32, _ idstr: String, instance: UInt32 = 0, version: UInt32) {
        u8(type); be32(id); counted(idstr); be32(instance); be32(version)
    }
    mutating func part(_ type: UInt8, id: UInt32) { u8(type); be32(id) }
    mutating func footer(_ id: UInt32) { u8(0x7e); be32(id) }
}

/// The synthetic stream: header, config, command, RAM START (MEM_SIZE, pages,
/// EOS), our START, RAM PART, SWITCHOVER_START, our END, RAM END, a FULL
/// device section. Returns the bytes and the offsets the tests check.
func syntheticStream(_ p: EncodedPayloads, ourEndPayload: [UInt8]? = nil, ramFlags: UInt64 = 0x08) -> (bytes: [UInt8], full: Int, ramPage: Int, ourEnd: Int) {
    var s = StreamBuilder()
    s.header()
    s.command(1)                                   // OPEN_RETURN_PATH
    s.start(id: 1, "ram", version: 4)
    s.be64(0x11000 | 0x04)                         // MEM_SIZE: total bytes
    s.counted("pc.ram"); s.be64(0x10000); s.be64(0)         // x-ignore-shared: + be64 addr
    s.counted("pc.bios"); s.be64(0x1000); s.be64(0xfffff000)
    s.be64(0x3000 | ramFlags); s.counted("pc.ram")          // PAGE, named block
    let ramPage = s.b.count
    s.b += [UInt8](repeating: 0xab, count: 4096)
    s.be64(0x4000 | 0x02 | 0x20); s.u8(0)         // ZERO, CONTINUE (pc.ram)
    s.be64(0x10)                                   // EOS
    s.footer(1)
    s.start(id: 2, Wire.idstr, version: 1)
    s.b += p.start
    s.footer(2)
    s.part(0x02, id: 1)
    s.be64(0x0 | 0x02); s.counted("pc.bios"); s.u8(0)
    s.be64(0x200)                                  // MULTIFD_FLUSH
    s.be64(0x10)
    s.footer(1)
    s.command(11)                                  // SWITCHOVER_START
    let ourEnd = s.b.count
    s.part(0x03, id: 2)
    s.b += ourEndPayload ?? p.end
    s.footer(2)
    s.part(0x03, id: 1)
    s.be64(0x10)
    s.footer(1)
    let full = s.b.count
    s.start(0x04, id: 3, "timer", version: 2)
    s.be64(0x1234); s.footer(3)
    s.u8(0x00)
    return (s.b, full, ramPage, ourEnd)
}

func smallGuest() throws(SevError) -> Tracker {
    try buildState(slots: [(0, 0xa0), (0x100, 0x7f00)], shared: [(0x10, 3), (0x200, 0x1000), (0x5000, 1)], control: 1)
}

func inspect(_ bytes: [UInt8]) -> (QemuStreamParser, InspectError?) {
    let p = QemuStreamParser(bytes)
    do throws(InspectError) { try p.parse() } catch { return (p, error) }
    return (p, nil)
}

@Suite struct CLITests {
    // MARK: payload files

    @Test func encodeDecodeTypicalGuest() throws {
        let t = try Tracker.create()
        try buildTypicalGuest(t)
        // Bit for bit the state WireTests uses.
        let ref = try Tracker.create()
        try typicalGuest(ref)
        #expect(t.digest() == ref.digest())
        let p = try encodePayloads(t)
        #expect(p.start.count == 746 && p.end.count == 30)
        let r = decodePayloads(p.file)
        #expect(r.error == nil)
        #expect(r.committed)
        #expect(r.payloads.map { $0.bytes } == [746, 30])
        #expect(r.tracker.digest() == t.digest())
        #expect(r.tracker.slotList == t.slotList)
        #expect(sharedRuns(r.tracker).total == 81)
        let lines = stateReport(r.tracker, maxRuns: 2)
        #expect(lines.contains("digest: \(SevPEB.hex(t.digest()))"))
        #expect(lines.contains("  ... 79 more (--all to list every run)"))
        #expect(lines.contains("  slot 1: gfn 0x100000 + 0xff80000 pages  [0x100000000 (4 GiB), 0x10080000000 (1026 GiB))  1022 GiB"))
    }

    @Test func decodeErrorsNameTheFieldAndValue() throws {
        let t = try smallGuest()
        let p = try encodePayloads(t)
        // Digest byte flipped in END's FINAL (payload offset 1 + 2).
        var bad = p.file
        bad[p.start.count + 3] ^= 0x01
        let d = t.digest()
        let r = decodePayloads(bad)
        let e = try #require(r.error)
        #expect(describe(e) == "-EILSEQ (stream digest or count mismatch): FINAL at offset 0: digest \(SevPEB.hex(d ^ (1 << 40))) from the source, \(SevPEB.hex(d)) over the received state")
        #expect(!r.committed)
        // Truncation at 0, n-2, half of each payload: never commits, always ENODATA or a checksum error.
        for n in [0, p.file.count - 2, p.start.count / 2, p.start.count, p.start.count + p.end.count / 2] {
            let r = decodePayloads(Array(p.file.prefix(n)))
            #expect(r.error?.code == ENODATA, "prefix \(n): \(r.error.map(describe) ?? "no error")")
            #expect(!r.committed)
        }
        #expect(describe(decodePayloads([]).error!) == "-ENODATA (stream truncated): empty input: no payload")
        #expect(decodePayloads(p.start).error!.message == "input ends after 1 payload(s) (\(p.start.count) bytes) without a FINAL record")
        #expect(decodePayloads(p.file + [0]).error!.message == "1 bytes after the payload that committed (payload 1 ends at offset \(p.file.count))")
    }

    @Test func dumpListsEveryRecord() throws {
        let t = try smallGuest()
        let p = try encodePayloads(t)
        let r = decodePayloads(p.file)
        let text = r.records.map { "\($0.payload) \($0.offset) \($0.fileOffset) \($0.text)" }
        #expect(text.first == "0 0 0 HEADER version=0x2 page_shift=0xc flags=0x0")
        #expect(text[1] == "0 9 9 LAYOUT nslots=0x2")
        #expect(text[2] == "0 46 46 CONTROL value=0x1 (migration ready)")
        #expect(Array(text[3...5]) == ["0 55 55 RUNS gfn=0x0 npages=0xa0 nruns=0x1",
                                       "0 76 76 RUNS gfn=0x100 npages=0x4000 nruns=0x1",
                                       "0 97 97 RUNS gfn=0x4100 npages=0x3f00 nruns=0x1"])
        #expect(text[text.count - 2] == "1 0 \(p.start.count) FINAL digest=\(SevPEB.hex(t.digest())) total_pages=0x7fa0 shared_pages=0x1004")
        #expect(text.last!.hasPrefix("1 25 \(p.start.count + 25) END_OF_PAYLOAD check=0x"))
        // A corrupt record: the listing stops before it, with the library's message.
        var bad = p.file
        bad[9 + 1 + 4 + 8 + 6] ^= 0x80   // LAYOUT slot 0 npages 0xa0 -> 0x80a0
        let rb = decodePayloads(bad)
        #expect(rb.records.count == 1)
        #expect(describe(rb.error!) == "-EBADMSG (malformed stream record): LAYOUT slot 1 at gfn 0x100 overlaps or precedes the previous slot ending at 0x80a0")
    }

    @Test func numbers() {
        #expect(parseNumber("0x1f") == 31)
        #expect(parseNumber("2G") == 2 << 30)
        #expect(parseNumber("12") == 12)
        #expect(parseNumber("x") == nil)
        #expect(parseNumber("99999999999999T") == nil)
        #expect(parseSpan("0x100:16K")! == (0x100, 16384))
        #expect(parseSpan("1:2:3") == nil)
        #expect(humanPages(1 << 18) == "1 GiB")
        #expect(humanGPA(1026 << 30) == "1026 GiB")
        #expect(humanGPA(0x3fb2e000) == "~1019.2 MiB")
    }

    // MARK: QEMU streams

    @Test func inspectSyntheticStream() throws {
        let t = try smallGuest()
        let p = try encodePayloads(t)
        let s = syntheticStream(p)
        let (parser, err) = inspect(s.bytes)
        #expect(err == nil, "\(err?.message ?? "")")
        let r = parser.report
        #expect(r.machine == "pc-q35-10.0")
        #expect(r.capabilities == ["x-ignore-shared"])
        #expect(r.uuid == (0..<16).map { UInt8($0) })
        #expect(r.commands.map { $0.cmd } == [1, 11])
        #expect(r.ramBlocks.map { $0.name } == ["pc.ram", "pc.bios"])
        #expect(r.ramPages == 1 && r.ramZeroPages == 2)
        #expect(r.sections.map { "\($0.idstr)/\($0.type)" } == ["ram/1", "\(Wire.idstr)/1", "ram/2", "\(Wire.idstr)/3", "ram/3"])
        #expect(r.stop?.offset == s.full)
        #expect(r.stop?.reason == "FULL section 'timer' (id 3): non-iterable device state follows; every sev-page-enc-bitmap section has been read")
        #expect(r.ourBytes[0x01] == p.start.count && r.ourBytes[0x03] == p.end.count)
        #expect(r.ourCommitted)
        #expect(r.ourFinal?.digest == t.digest())
        let got = try #require(r.ours)
        #expect(got.digest() == t.digest() && got.slotList == t.slotList && got.migrationControl == 1)
        let text = r.lines(maxRuns: 10)
        #expect(text.contains("sev-page-enc-bitmap: START x1 \(p.start.count) bytes, END x1 \(p.end.count) bytes"))
        #expect(text.contains("FINAL: digest \(SevPEB.hex(t.digest())), 32672 pages, 4100 shared: verified against the received state"))
        #expect(text.contains("  ram START x1: \(r.sections[0].payloadBytes) payload bytes, \(r.sections[0].totalBytes) with framing"))
    }

    @Test func inspectErrorsAreExact() throws {
        let t = try smallGuest()
        let p = try encodePayloads(t)
        let s = syntheticStream(p)

        // Truncated in the middle of a RAM page.
        let cut = s.ramPage + 100
        #expect(inspect(Array(s.bytes.prefix(cut))).1?.message ==
                "stream truncated at offset \(cut): RAM page data at offset \(s.ramPage) needs 4096 bytes, 100 left")
        // Not a stream.
        var m = StreamBuilder(); m.header(magic: 0x5145_564e)
        #expect(inspect(m.b).1?.message == "file header: magic 0x5145564e (expected 0x5145564d \"QEVM\"): not a QEMU migration stream")
        // XBZRLE pages are refused by name.
        let x = syntheticStream(p, ramFlags: 0x40)
        let ramStart = 4 + 4 + 1 + 4 + 11 + (1 + 1 + 26 + 4 + 4 + 1 + 15) + (1 + 1 + 18 + 4 + 16) + 5
        let rec = ramStart + 1 + 4 + 1 + 3 + 4 + 4 + 8 + (1 + 6 + 16) + (1 + 7 + 16)
        #expect(inspect(x.bytes).1?.message == "offset \(rec): RAM record flags 0x40 (XBZRLE) not supported (section id 1 at offset \(ramStart))")
        // Our END with its FINAL digest corrupted: the library's message, with where.
        var end = p.end
        end[1] ^= 0x80
        let c = syntheticStream(p, ourEndPayload: end)
        let d = t.digest()
        #expect(inspect(c.bytes).1?.message == "offset \(c.ourEnd): sev-page-enc-bitmap END section payload at offset \(c.ourEnd + 5): -EILSEQ (stream digest or count mismatch): FINAL at offset 0: digest \(SevPEB.hex(d ^ (1 << 63))) from the source, \(SevPEB.hex(d)) over the received state")
        // A footer naming another section.
        var f = s.bytes
        f[s.full - 1] = 9   // RAM END's footer id
        #expect(inspect(f).1?.message == "offset \(s.full - 5): footer of section 'ram' (id 1) carries section id 9")
        // A device FULL section before our END, and in a stream without ours.
        var q = StreamBuilder(); q.header()
        q.start(id: 2, Wire.idstr, version: 1); q.b += p.start; q.footer(2)
        q.start(0x04, id: 7, "apic", version: 3)
        #expect(inspect(q.b).1?.message == "offset \(q.b.count - 18): FULL section 'apic' instance 0 (id 7) before the sev-page-enc-bitmap END section: device state cannot be skipped without its description")
        var n = StreamBuilder(); n.header(); n.start(0x04, id: 7, "apic", version: 3)
        #expect(inspect(n.b).1?.message == "offset \(n.b.count - 18): FULL section 'apic' instance 0 (id 7) reached with no sev-page-enc-bitmap section before it: the source did not send one (no sev-page-enc-bitmap object?)")
        // PART for a section never started.
        var u = StreamBuilder(); u.header(); u.part(0x02, id: 4)
        #expect(inspect(u.b).1?.message == "offset \(u.b.count - 5): PART section id 4 without a START")
        // Unknown iterable section.
        var v = StreamBuilder(); v.header(); v.start(id: 4, "dirty-bitmap", version: 1)
        #expect(inspect(v.b).1?.message == "offset \(v.b.count - 26): START section 'dirty-bitmap' instance 0 (id 4): iterable section of unknown format, cannot be skipped")
    }

    @Test func inspectEveryTruncationFails() throws {
        let t = try smallGuest()
        let p = try encodePayloads(t)
        let s = syntheticStream(p)
        // Every prefix short of the FULL section is an error, never a crash
        // or a committed state.
        for n in 0..<s.full {
            let (parser, err) = inspect(Array(s.bytes.prefix(n)))
            #expect(err != nil, "prefix \(n) parsed")
            #expect(parser.report.ours == nil || n >= s.ourEnd)
            if err == nil { break }
        }
    }

    // MARK: SVG

    @Test func svgShowsSlotsHolesAndSinglePages() throws {
        let t = try Tracker.create()
        try buildTypicalGuest(t)
        let svg = MemoryMapSVG().render(t)
        #expect(svg.hasPrefix("<?xml"))
        #expect(svg.hasSuffix("</svg>\n"))
        #expect(svg.contains(">memslot 0<") && svg.contains(">memslot 1<"))
        #expect(svg.contains("hole  [2 GiB, 4 GiB)  2 GiB: no memory"))
        #expect(svg.contains(">2 GiB, 1 GiB shared<") && svg.contains(">(50.0% of its pages)<"))
        #expect(svg.contains("digest \(SevPEB.hex(t.digest()))"))
        #expect(svg.contains("in 81 runs"))
        // Single shared pages in the 1022 GiB slot are marked in the strip above the band
        // (their bars are to scale: MemoryMapSVGTests).
        let markers = svg.components(separatedBy: "<rect class=\"presence\"").count - 1
        #expect(markers >= 10)
        #expect(!svg.contains("width=\"0\""))
        // Bounded output even for a worst-case state (alternating pages).
        let w = try buildState(slots: [(0, 1 << 20)], shared: [], control: nil)
        for g in stride(from: UInt64(0), to: 1 << 20, by: 2) { _ = try w.setRange(g, 1, private: false) }
        let big = MemoryMapSVG().render(w)
        #expect(big.utf8.count < 200_000)
        #expect(big.contains(">4 GiB, 2 GiB shared<") && big.contains(">(50.0% of its pages)<"))
    }
}

/// The qemustream fuzzer's finding (fuzz/corpus/qemustream/regress-layout-140M-groups):
/// a 226-byte stream whose LAYOUT declares a slot of 2^47 pages made `sevpeb inspect`
/// try to allocate ~8 GB of chunk state. A stream-declared layout is now capped at
/// LoadSession.streamLayoutPageLimit pages, with a named error.
@Suite struct StreamLayoutLimitTests {
    @Test func hostileLayoutIsRefusedByName() throws {
        let path = #filePath.replacingOccurrences(of: "Tests/SevPEBTests/CLITests.swift",
                                                  with: "fuzz/corpus/qemustream/regress-layout-140M-groups")
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        let (_, err) = inspect(bytes)
        let msg = err.map { "\($0)" } ?? ""
        #expect(msg.contains("LAYOUT slot 0") && msg.contains("a stream-declared layout may hold"), "\(msg)")
    }

    /// The limit, exactly: a layout of limit pages decodes; one page more is EMSGSIZE.
    @Test func limitIsExact() throws {
        for (pages, ok) in [(LoadSession.streamLayoutPageLimit, true), (LoadSession.streamLayoutPageLimit + 1, false)] {
            var w = StreamBuilder()
            w.u8(0x01); w.be32(0x5356_5042); w.be16(2); w.u8(12); w.u8(0)   // HEADER "SVPB" v2
            w.u8(0x02); w.be32(1); w.be64(0); w.be64(pages)                   // LAYOUT: one slot
            var l = try LoadSession.create(layoutFromStream: true)
            l.setup()
            let live = try Tracker.create()
            var src = ArraySource(w.b)
            var code: Int32 = 0
            do throws(SevError) { _ = try l.load(live, &src, version: Wire.sectionVersion) } catch { code = error.code }
            // Accepted: the payload then ends without END_OF_PAYLOAD (truncated), not EMSGSIZE.
            #expect(ok ? code != EMSGSIZE : code == EMSGSIZE, "pages \(pages): errno \(code)")
        }
    }
}
