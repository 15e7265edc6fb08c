import Foundation
import Testing

/// Every raw-pointer site in Sources/SevPEB carries a one-line
/// `// SAFETY:` comment saying why it is sound (docs/ARCHITECTURE.md,
/// "Rules of the house"). Runs with the boundary check (`swift test`).
///
/// A site is a line whose code (comments and string literals removed)
/// names an unsafe pointer type or API: `Unsafe[Mutable][Raw][Buffer]Pointer`,
/// `withUnsafe…`, `assumingMemoryBound`, `bindMemory`, `load(as:`,
/// `loadUnaligned(as:`, `storeBytes`, `OpaquePointer(`. It is covered when a
/// `SAFETY:` comment is on the line itself, in the comment lines directly
/// above it, or in the comment lines directly above the function (or
/// init, deinit, var, let, subscript) that encloses it: one comment may
/// speak for one declaration, never for a whole type or file.
enum Safety {
    static let site = try! NSRegularExpression(pattern:
        #"Unsafe(Mutable)?(Raw)?(Buffer)?Pointer|withUnsafe|assumingMemoryBound|bindMemory|\.load(Unaligned)?\((as|fromByteOffset):|storeBytes|OpaquePointer\("#)
    static let decl = try! NSRegularExpression(pattern:
        #"^\s*(@[A-Za-z_]+(\([^)]*\))?\s+)*((private|fileprivate|internal|public|package|static|final|mutating|nonmutating|override|consuming|borrowing)\s+)*(func|init|deinit|var|let|subscript)\b"#)
    /// Folders whose sites are not checked yet, and why.
    static let excluded: [String] = []

    static func matches(_ r: NSRegularExpression, _ s: String) -> Bool {
        r.firstMatch(in: s, range: NSRange(location: 0, length: (s as NSString).length)) != nil
    }

    /// The code part of a line: no comment, no string literal contents, no
    /// pointer type named only for its size (`Unsafe…Pointer<T>?.self`).
    static func code(_ line: String) -> String {
        var l = line.replacingOccurrences(of: #""([^"\\]|\\.)*""#, with: "\"\"", options: .regularExpression)
        l = l.replacingOccurrences(of: #"Unsafe[A-Za-z]*Pointer<[^>]*>\??\.self"#, with: "T.self", options: .regularExpression)
        if let r = l.range(of: "//") { l = String(l[..<r.lowerBound]) }
        return l
    }

    static func indent(_ s: String) -> Int { s.prefix { $0 == " " }.count }

    /// Whether the comment lines directly above line i mention SAFETY.
    static func commentAbove(_ lines: [String], _ i: Int) -> Bool {
        var j = i - 1
        while j >= 0 {
            let t = lines[j].trimmingCharacters(in: .whitespaces)
            if t.hasPrefix("//") {
                if t.contains("SAFETY:") { return true }
            } else if !t.hasPrefix("@") {
                return false
            }
            j -= 1
        }
        return false
    }

    /// Line numbers (1-based) of uncovered sites in `text`.
    static func uncovered(_ text: String) -> [Int] {
        let lines = text.components(separatedBy: "\n")
        var out: [Int] = []
        for (i, line) in lines.enumerated() where matches(site, code(line)) {
            if line.contains("// SAFETY:") || commentAbove(lines, i) { continue }
            // The enclosing declaration: the nearest line above with less
            // indentation that declares a function or property.
            var covered = false
            var depth = indent(line)
            var j = i
            while j >= 0 {
                let l = lines[j]
                let c = code(l)
                if !c.trimmingCharacters(in: .whitespaces).isEmpty && (j == i || indent(l) < depth) {
                    if j != i && matches(decl, c) {
                        covered = commentAbove(lines, j)
                        break
                    }
                    if j != i { depth = indent(l) }
                    if depth == 0 { break }
                }
                j -= 1
            }
            if !covered { out.append(i + 1) }
        }
        return out
    }

    static var sourceRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Sources/SevPEB")
    }

    /// "Folder/File.swift:line: code" for each uncovered site of Sources/SevPEB.
    static func report() throws -> (sites: Int, missing: [String]) {
        let root = sourceRoot
        let files = FileManager.default.enumerator(atPath: root.path)!.compactMap { $0 as? String }
            .filter { $0.hasSuffix(".swift") && !excluded.contains(where: $0.hasPrefix) }.sorted()
        var sites = 0
        var missing: [String] = []
        for f in files {
            let text = try String(contentsOf: root.appendingPathComponent(f), encoding: .utf8)
            let lines = text.components(separatedBy: "\n")
            sites += lines.filter { matches(site, code($0)) }.count
            for n in uncovered(text) { missing.append("\(f):\(n): \(lines[n - 1].trimmingCharacters(in: .whitespaces))") }
        }
        return (sites, missing)
    }
}

@Suite struct SafetyCommentTests {
    @Test func everyRawPointerSiteHasASafetyComment() throws {
        let r = try Safety.report()
        #expect(r.sites > 50, "found only \(r.sites) sites: is the source root right?")
        #expect(r.missing.isEmpty, "\(r.missing.count) of \(r.sites) raw-pointer sites lack a // SAFETY: comment:\n\(r.missing.joined(separator: "\n"))")
    }

    /// Negative control: the check flags a site without a comment, and each
    /// way of covering one is accepted.
    @Test func checkFlagsAnUncommentedSite() {
        let bare = """
        func f(_ p: UnsafeMutableRawPointer) {
            let q = p.assumingMemoryBound(to: UInt8.self)
            q.pointee = 1
        }
        """
        #expect(Safety.uncovered(bare) == [1, 2])
        let commentedFunc = "// SAFETY: p is valid for one byte.\n" + bare
        #expect(Safety.uncovered(commentedFunc) == [])
        let commentedLine = """
        struct S {
            // SAFETY: p is valid for one byte.
            var p: UnsafeMutablePointer<UInt8>
            func f() {
                let r = UnsafeRawPointer(p)   // SAFETY: same memory, read only
                let s = UnsafeRawPointer(p)
                _ = (r, s)
            }
        }
        """
        #expect(Safety.uncovered(commentedLine) == [6])
        // A string or a comment naming the type is not a site.
        #expect(Safety.uncovered("let s = \"UnsafePointer\" // UnsafePointer\n") == [])
    }
}
