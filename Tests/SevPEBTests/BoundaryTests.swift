import Foundation
import Testing

/// The layering rule of docs/ARCHITECTURE.md, checked on the sources:
/// Wire/ and KVM/ use the tracker's public API (declarations in Tracker/
/// marked `public` or `package`) plus Base/, never its internals.
///
/// What it enforces, per file of Wire/ and KVM/ (comments and string
/// literals removed first):
/// - no `extension Tracker` (an extension would see every internal member);
/// - no use of a type declared in Tracker/ without `public`/`package`
///   (`Geometry`, `Group`, `SlotRec`, ...);
/// - no `.member` access to a member declared in Tracker/ without
///   `public`/`package`, unless the same name is also declared public there
///   or in Base/, or declared in the checked folder itself (then the text
///   cannot tell which one is meant, and the check stays silent).
enum Boundary {
    static let declRegex = try! NSRegularExpression(pattern:
        #"^( *)((?:@[A-Za-z_]+(?:\([^)]*\))?\s+)*)((?:(?:private|fileprivate|internal|public|package|static|final|mutating|override|nonisolated|lazy)(?:\([a-z]+\))?\s+)*)(?:func|var|let|struct|enum|class|typealias|protocol)\s+([A-Za-z_][A-Za-z0-9_]*)"#,
        options: [.anchorsMatchLines])

    struct Decl { var name: String; var isAPI: Bool; var isType: Bool }

    static let caseRegex = try! NSRegularExpression(pattern: #"\bcase\s+([a-zA-Z_][A-Za-z0-9_]*(?:\s*,\s*[a-zA-Z_][A-Za-z0-9_]*)*)"#,
                                                    options: [.anchorsMatchLines])
    /// Enum case names: reachable wherever their enum is, so never internal
    /// by themselves (an internal enum is caught by its type name).
    static func cases(_ text: String) -> [String] {
        let ns = text as NSString
        return caseRegex.matches(in: text, range: NSRange(location: 0, length: ns.length)).flatMap { m in
            ns.substring(with: m.range(at: 1)).split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        }
    }

    static func declarations(_ text: String) -> [Decl] {
        let ns = text as NSString
        return declRegex.matches(in: text, range: NSRange(location: 0, length: ns.length)).compactMap { m in
            let indent = m.range(at: 1).length
            let mods = ns.substring(with: m.range(at: 3))
            let whole = ns.substring(with: m.range)
            let isType = whole.range(of: #"\b(struct|enum|class|typealias|protocol)\s"#, options: .regularExpression) != nil
            let isAPI = mods.contains("public") || mods.contains("package")
            // Internal declarations count at type-member depth only (deeper
            // ones are locals of a function body).
            if !isAPI && indent > 4 { return nil }
            return Decl(name: ns.substring(with: m.range(at: 4)), isAPI: isAPI, isType: isType)
        }
    }

    /// Source text without comments and string literals.
    static func code(_ text: String) -> String {
        var out = ""
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            var l = String(line)
            if let r = l.range(of: "//") { l = String(l[..<r.lowerBound]) }
            l = l.replacingOccurrences(of: #""([^"\\]|\\.)*""#, with: "\"\"", options: .regularExpression)
            out += l + "\n"
        }
        return out
    }

    /// Labels written in public declarations (parameters, tuple elements of
    /// a result): `summary().shared` is API even if a field `shared` is not.
    static func publicLabels(_ text: String) -> [String] {
        text.split(separator: "\n").filter { $0.contains("public ") || $0.contains("package ") }.flatMap { line in
            let l = String(line), ns = l as NSString
            let r = try! NSRegularExpression(pattern: #"[(,]\s*([a-zA-Z_][A-Za-z0-9_]*)\s*:"#)
            return r.matches(in: l, range: NSRange(location: 0, length: ns.length)).map { ns.substring(with: $0.range(at: 1)) }
        }
    }

    /// Violations of the rule for `files` (name, text), given the tracker's
    /// and the base layer's sources.
    static func violations(tracker: [String], base: [String], files: [(String, String)]) -> [String] {
        let trackerDecls = tracker.flatMap(declarations)
        let api = Set(trackerDecls.filter(\.isAPI).map(\.name))
            .union(base.flatMap(declarations).map(\.name))
            .union(tracker.flatMap(cases))
            .union(tracker.flatMap(publicLabels))
        let local = Set(files.flatMap { declarations($0.1) }.map(\.name))
            .union(files.flatMap { cases($0.1) })
        let internalTypes = Set(trackerDecls.filter { !$0.isAPI && $0.isType }.map(\.name)).subtracting(api)
        let internalMembers = Set(trackerDecls.filter { !$0.isAPI && !$0.isType }.map(\.name))
            .subtracting(api).subtracting(local)
        var found: [String] = []
        for (name, text) in files {
            let c = code(text)
            if c.range(of: #"\bextension\s+Tracker\b"#, options: .regularExpression) != nil {
                found.append("\(name): extends Tracker")
            }
            for t in internalTypes.sorted()
            where c.range(of: "\\b\(t)\\b", options: .regularExpression) != nil {
                found.append("\(name): uses tracker-internal type \(t)")
            }
            for m in internalMembers.sorted()
            where c.range(of: "\\.\(m)\\b", options: .regularExpression) != nil {
                found.append("\(name): uses tracker-internal member .\(m)")
            }
        }
        return found
    }

    static let sources = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Sources/SevPEB")

    static func read(_ folder: String) throws -> [(String, String)] {
        let dir = sources.appendingPathComponent(folder)
        return try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
            .filter { $0.hasSuffix(".swift") }
            .map { ("\(folder)/\($0)", try String(contentsOf: dir.appendingPathComponent($0), encoding: .utf8)) }
    }
}

@Suite struct BoundaryTests {
    @Test func wireAndKVMUseOnlyTheTrackersAPI() throws {
        let tracker = try Boundary.read("Tracker").map(\.1)
        let base = try Boundary.read("Base").map(\.1)
        for folder in ["Wire", "KVM"] {
            let v = Boundary.violations(tracker: tracker, base: base, files: try Boundary.read(folder))
            #expect(v.isEmpty, "\(folder) reaches into tracker internals:\n\(v.joined(separator: "\n"))")
        }
    }

    /// Negative control: the same check on offending snippets reports them.
    @Test func boundaryCheckCatchesOffenders() throws {
        let tracker = try Boundary.read("Tracker").map(\.1)
        let base = try Boundary.read("Base").map(\.1)
        let offenders: [(String, String)] = [
            ("geometry.swift", "let n = Geometry.chunkWords\n"),
            ("member.swift", "func f(_ t: Tracker) { t.locked { e in _ = e.firstSlotEndingAfter(0) } }\n"),
            ("ext.swift", "extension Tracker { func g() {} }\n"),
        ]
        for o in offenders {
            let v = Boundary.violations(tracker: tracker, base: base, files: [o])
            #expect(!v.isEmpty, "check missed \(o.0)")
        }
        // And comments or strings naming an internal are not uses.
        let clean = Boundary.violations(tracker: tracker, base: base,
                                        files: [("c.swift", "// Geometry.chunkWords\nlet s = \"Geometry\"\n")])
        #expect(clean.isEmpty, "\(clean)")
    }
}
