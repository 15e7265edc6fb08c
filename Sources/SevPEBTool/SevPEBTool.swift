import ArgumentParser
import Foundation
import SevPEB
import SevPEBInspect

/// `sevpeb`: encode, decode and dump sev-page-enc-bitmap payload files, and
/// inspect saved QEMU migration streams. The logic is in SevPEBInspect; this
/// file parses arguments, reads and writes files, prints, and sets the exit code.
@main
struct SevPEBCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sevpeb",
        abstract: "SEV page-encryption bitmap: migration payload files and QEMU streams.",
        subcommands: [Encode.self, Decode.self, Dump.self, Inspect.self])
}

func fail(_ what: String, _ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("sevpeb: \(what) failed: \(message)\n".utf8))
    return ExitCode(1)
}

func readFile(_ path: String) throws -> [UInt8] {
    guard let d = FileManager.default.contents(atPath: path) else {
        throw fail("reading \(path)", "cannot read the file")
    }
    return [UInt8](d)
}

struct Encode: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Build a state and write its START + END payloads to a file.",
        discussion: "Numbers are decimal, 0x hex, or with a K/M/G/T multiplier (counts, not bytes: 1G pages = 4 TiB).")

    @Option(name: .customLong("slot"), help: ArgumentHelp("A memslot: first GFN and page count.", valueName: "BASE_GFN:NPAGES"))
    var slots: [String] = []
    @Option(name: .customLong("shared"), help: ArgumentHelp("Pages to mark shared.", valueName: "GFN:NPAGES"))
    var shared: [String] = []
    @Option(help: "MSR_KVM_MIGRATION_CONTROL value (0 or 1).")
    var control: String? = nil
    @Flag(name: .customLong("typical-1tib"), help: "The standard typical 1 TiB guest (docs/FORMAT.md §7).")
    var typical = false
    @Option(name: .shortAndLong, help: "Output payload file.")
    var output: String

    func validate() throws {
        if typical && !(slots.isEmpty && shared.isEmpty) {
            throw ValidationError("--typical-1tib builds its own layout; drop --slot/--shared")
        }
        if !typical && slots.isEmpty { throw ValidationError("give at least one --slot, or --typical-1tib") }
        for s in slots + shared where parseSpan(s) == nil {
            throw ValidationError("'\(s)': expected GFN:NPAGES")
        }
        if let c = control, parseNumber(c) == nil { throw ValidationError("--control '\(c)': not a number") }
    }

    func run() throws {
        let t: Tracker
        do throws(SevError) {
            if typical {
                t = try Tracker.create()
                try buildTypicalGuest(t)
                if let c = control { try t.setMigrationControl(parseNumber(c)!) }
            } else {
                t = try buildState(slots: slots.map { parseSpan($0)! }, shared: shared.map { parseSpan($0)! },
                                   control: control.map { parseNumber($0)! })
            }
        } catch { throw fail("building the state", describe(error)) }
        let p: EncodedPayloads
        do throws(SevError) { p = try encodePayloads(t) } catch { throw fail("encode", describe(error)) }
        do { try Data(p.file).write(to: URL(fileURLWithPath: output)) }
        catch { throw fail("writing \(output)", "\(error.localizedDescription)") }
        let sum = t.summary()
        print("START payload: \(p.start.count) bytes")
        print("END payload: \(p.end.count) bytes")
        print("wrote \(output): \(p.file.count) bytes")
        print("pages: \(sum.pages) total, \(sum.shared) shared")
        print("digest: \(hex(sum.digest))")
    }
}

struct Decode: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read payloads back to back until one commits (FINAL); verify and print the state.")
    @Argument(help: "Payload file (e.g. from `sevpeb encode`).") var file: String
    @Flag(help: "List every shared run (default: the first 20).") var all = false
    @Option(help: "Write the guest memory map as SVG.") var svg: String? = nil

    func run() throws {
        let bytes = try readFile(file)
        let r = decodePayloads(bytes, recordEvents: false)
        if let e = r.error { throw fail("decode", describe(e)) }
        if let bad = r.tracker.checkInvariants() { throw fail("decode", "state invariant: \(bad)") }
        let names = r.payloads.enumerated().map { i, p in
            "\(i == 0 ? "START" : i == r.payloads.count - 1 ? "END" : "PART") \(p.bytes)"
        }
        print("payloads: \(r.payloads.count) (\(names.joined(separator: ", ")) bytes)")
        for l in stateReport(r.tracker, maxRuns: all ? .max : 20) { print(l) }
        print("bytes: \(bytes.count)")
        print("verified: FINAL digest, page counts and payload checksums match the received state")
        if let out = svg { try writeSVG(r.tracker, title: "SEV guest memory map: \(file)", to: out) }
    }
}

struct Dump: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List a payload file record by record (payload, offset, record, fields in hex).")
    @Argument(help: "Payload file.") var file: String

    func run() throws {
        let bytes = try readFile(file)
        let r = decodePayloads(bytes)
        print("payload  offset  file-offset  record")
        for e in r.records {
            print(String(e.payload).leftPad(7) + "  " + String(e.offset).leftPad(6) + "  " + String(e.fileOffset).leftPad(11) + "  " + e.text)
        }
        if let e = r.error { throw fail("dump", describe(e)) }
        print("\(r.records.count) records in \(r.payloads.count) payloads, \(bytes.count) bytes; committed")
    }
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read a saved QEMU migration stream (migrate file:...) and check its sev-page-enc-bitmap sections.")
    @Argument(help: "Migration stream file.") var file: String
    @Option(help: "Write the guest memory map as SVG.") var svg: String? = nil
    @Flag(help: "List every shared run (default: the first 20).") var all = false

    func run() throws {
        let bytes = try readFile(file)
        let p = QemuStreamParser(bytes)
        var failure: InspectError? = nil
        do throws(InspectError) { try p.parse() } catch { failure = error }
        for l in p.report.lines(maxRuns: all ? .max : 20) { print(l) }
        print("bytes read: \(p.report.bytesRead) of \(bytes.count)")
        if let e = failure { throw fail("inspect", e.message) }
        guard let t = p.report.ours else {
            throw fail("inspect", "no \(Wire.idstr) section in the stream")
        }
        if let out = svg { try writeSVG(t, title: "SEV guest memory map: \(p.report.machine)", to: out) }
    }
}

func writeSVG(_ t: Tracker, title: String, to out: String) throws {
    var m = MemoryMapSVG()
    m.title = title
    do { try Data(m.render(t).utf8).write(to: URL(fileURLWithPath: out)) }
    catch { throw fail("writing \(out)", "\(error.localizedDescription)") }
    print("wrote \(out)")
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
