import Foundation
import Testing
@testable import SevPEB

/// docs/FORMAT.md's test vectors are generated here and must appear in the
/// document verbatim: the document cannot drift from the code.
enum Vectors {
    static func hexline(_ bytes: ArraySlice<UInt8>) -> String {
        bytes.map { b in
            let h = String(b, radix: 16)
            return h.count == 1 ? "0" + h : h
        }.joined(separator: " ")
    }

    /// Each payload of a stream, one record per line: offset, record name,
    /// then its bytes. Decoded in one session, as a destination would.
    static func annotate(_ payloads: [[UInt8]]) throws(SevError) -> [String] {
        var l = try LoadSession.create(layoutFromStream: true)
        var starts: [[(Int, String)]] = Array(repeating: [], count: payloads.count)
        l.observer = { p, at, r in starts[p].append((at, "\(r.record.name)")) }
        l.setup()
        let t = try Tracker.create()
        for p in payloads {
            var src = ArraySource(p)
            _ = try l.load(t, &src, version: 1)
        }
        var outs: [String] = []
        for (pi, payload) in payloads.enumerated() {
            var out = ""
            for (i, (at, name)) in starts[pi].enumerated() {
                let end = i + 1 < starts[pi].count ? starts[pi][i + 1].0 : payload.count
                var o = String(at, radix: 16)
                while o.count < 4 { o = "0" + o }
                out += "\(o)  \(name)\n"
                var k = at
                while k < end {
                    let e = min(end, k + 16)
                    out += "      \(hexline(payload[k..<e]))\n"
                    k = e
                }
            }
            outs.append(out)
        }
        return outs
    }

    /// The vectors: (title, payloads).
    static func all() throws(SevError) -> [(String, [[UInt8]])] {
        var r: [(String, [[UInt8]])] = []
        // Vector 1: one 256-page slot, 4 shared pages at gfn 0x10; setup then
        // completion with nothing changed.
        do {
            let t = try Tracker.create()
            try t.addSlot(base: 0, pages: 256)
            try t.setRange(0x10, 4, private: false)
            var s = try SaveSession.create()
            let ch = Channel()
            try ch.save { (k: inout ArraySink) throws(SevError) in try s.setup(t, &k) }
            try ch.save { (k: inout ArraySink) throws(SevError) in try s.complete(t, &k) }
            r.append(("Vector 1", ch.payloads))
        }
        // Vector 2: two slots (the second above 4 GiB), a whole shared chunk,
        // a dense pattern (BITS), migration-control ready; an iteration after
        // one page changed, then completion.
        do {
            let t = try Tracker.create()
            try t.addSlot(base: 0, pages: 0x8000)
            try t.addSlot(base: 0x100000, pages: 200)
            try t.setMigrationControl(1)
            try t.setRange(0x4000, 0x4000, private: false)
            var b: [UInt8] = (0..<25).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            try t.setBitmap(0x100000, 200, &b, b.count)
            var s = try SaveSession.create()
            let ch = Channel()
            try ch.save { (k: inout ArraySink) throws(SevError) in try s.setup(t, &k) }
            try t.setRange(0x4000, 1, private: true)
            try ch.save { (k: inout ArraySink) throws(SevError) in _ = try s.iterate(t, &k, budget: 0) }
            try ch.save { (k: inout ArraySink) throws(SevError) in try s.complete(t, &k) }
            r.append(("Vector 2", ch.payloads))
        }
        return r
    }

    static func render() throws(SevError) -> String {
        var out = ""
        for (title, ps) in try all() {
            let notes = try annotate(ps)
            for (i, p) in ps.enumerated() {
                out += "<!-- \(title), payload \(i + 1) of \(ps.count): \(p.count) bytes -->\n```\n"
                out += notes[i]
                out += "```\n"
            }
        }
        return out
    }
}

@Suite struct FormatDocTests {
    @Test func vectorsInFormatDocMatchTheCode() throws {
        let expected = try Vectors.render()
        let path = #filePath.replacingOccurrences(of: "Tests/SevPEBTests/FormatDocTests.swift", with: "docs/FORMAT.md")
        let doc = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        if !doc.contains(expected) {
            print("---- expected test vectors for docs/FORMAT.md ----\n\(expected)---- end ----")
        }
        #expect(doc.contains(expected), "docs/FORMAT.md test vectors differ from what the encoder writes (expected block printed above)")
    }

    @Test func vectorsDecode() throws {
        for (title, ps) in try Vectors.all() {
            let t = try Tracker.create()
            var l = try LoadSession.create(layoutFromStream: true)
            l.setup()
            var committed = false
            for p in ps { var s = ArraySource(p); committed = try l.load(t, &s, version: 1) }
            #expect(committed, "\(title)")
        }
    }
}
