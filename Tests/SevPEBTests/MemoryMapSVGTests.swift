import Foundation
import Testing
@testable import SevPEB
@testable import SevPEBInspect

/// The memory map picture is drawn to scale: the shaded (shared) area of
/// each band is the share of its pages that are shared. The picture this
/// replaced widened every shared run to 2 px, so a 256 MiB guest with 6.5 %
/// of its pages shared in scattered single pages showed about half its band
/// shared; `sharedAreaMatchesSharedPages` measures that and would fail on it.
///
/// SEVPEB_SVG_OUT=<dir> writes the pictures (for a look with rsvg-convert).
@Suite struct MemoryMapSVGTests {
    /// One band: its rectangle and the shared bars drawn inside it.
    struct Band { var x, y, w, h: Double; var sharedArea = 0.0; var fraction: Double { sharedArea / (w * h) } }

    static func attr(_ tag: Substring, _ name: String) -> Double {
        guard let r = tag.range(of: " \(name)=\"") else { return .nan }
        let rest = tag[r.upperBound...]
        return Double(rest[..<rest.firstIndex(of: "\"")!]) ?? .nan
    }

    /// The bands of an SVG (overview strips included) with the shared area inside each.
    static func bands(_ svg: String) -> (bands: [Band], presence: Int) {
        var bands: [Band] = [], shared: [(Double, Double, Double, Double)] = [], presence = 0
        for line in svg.split(separator: "\n") {
            if line.hasPrefix("<rect class=\"band\"") {
                bands.append(Band(x: attr(line, "x"), y: attr(line, "y"), w: attr(line, "width"), h: attr(line, "height")))
            } else if line.hasPrefix("<rect class=\"shared\"") {
                shared.append((attr(line, "x"), attr(line, "y"), attr(line, "width"), attr(line, "height")))
            } else if line.hasPrefix("<rect class=\"presence\"") {
                presence += 1
            }
        }
        for (x, y, w, h) in shared {
            guard let i = bands.firstIndex(where: { x >= $0.x - 0.05 && x + w <= $0.x + $0.w + 0.05
                                                    && y >= $0.y - 0.05 && y + h <= $0.y + $0.h + 0.05 }) else {
                Issue.record("shared bar outside every band: \(x) \(y) \(w) \(h)"); continue
            }
            bands[i].sharedArea += w * h
        }
        return (bands, presence)
    }

    static func write(_ svg: String, _ name: String) {
        guard let dir = ProcessInfo.processInfo.environment["SEVPEB_SVG_OUT"] else { return }
        try? Data(svg.utf8).write(to: URL(fileURLWithPath: dir).appendingPathComponent(name + ".svg"))
    }

    /// 256 MiB in one slot: a 16 MiB bounce buffer and 164 scattered single
    /// pages shared, (4096 + 164) / 65536 = 6.5 %.
    static func sixPointFive() throws -> Tracker {
        let t = try Tracker.create()
        try t.addSlot(base: 0, pages: 65536)
        try t.setRange(0x3000, 4096, private: false)
        var g: UInt64 = 0x4100
        for _ in 0..<164 { try t.setRange(g, 1, private: false); g += 290 }
        return t
    }

    @Test func sharedAreaMatchesSharedPages() throws {
        let t = try Self.sixPointFive()
        #expect(try t.countShared(0, 65536) == 4260)
        let svg = MemoryMapSVG().render(t)
        Self.write(svg, "six-point-five")
        let (bands, presence) = Self.bands(svg)
        #expect(bands.count == 2)   // overview + memslot 0
        for b in bands {
            // 6.5 %, within rounding to 0.1 px per column; the old drawing gave ~45 %.
            #expect(abs(b.fraction - 0.065) < 0.005, "band at y \(b.y): \(b.fraction * 100) % shaded for 6.5 % shared")
        }
        #expect(presence >= 2)   // single pages still marked
        #expect(svg.contains(">256 MiB, 16.6 MiB shared<") && svg.contains(">(6.5% of its pages)<"))
    }

    @Test func allPrivateAllSharedAndCheckerboard() throws {
        let priv = try buildState(slots: [(0, 65536)], shared: [], control: nil)
        let all = try buildState(slots: [(0, 65536)], shared: [(0, 65536)], control: nil)
        let board = try buildState(slots: [(0, 65536)], shared: [], control: nil)
        for g in stride(from: UInt64(0), to: 65536, by: 2) { try board.setRange(g, 1, private: false) }
        for (t, want, name) in [(priv, 0.0, "all-private"), (all, 1.0, "all-shared"), (board, 0.5, "checkerboard")] {
            let svg = MemoryMapSVG().render(t)
            Self.write(svg, name)
            let (bands, presence) = Self.bands(svg)
            #expect(bands.count == 2)
            for b in bands { #expect(abs(b.fraction - want) < 0.005, "\(name): \(b.fraction * 100) % shaded") }
            #expect((presence == 0) == (want == 0), "\(name): presence strips \(presence)")
        }
    }

    @Test func typicalTerabyteGuest() throws {
        let t = try Tracker.create()
        try buildTypicalGuest(t)
        let svg = MemoryMapSVG().render(t)
        Self.write(svg, "typical-1tib")
        let (bands, presence) = Self.bands(svg)
        // Overview (2 slots) + 2 memslot bands, each shaded by its own share.
        #expect(bands.count == 4)
        for (b, slot) in zip(bands.suffix(2), t.slotList) {
            let want = Double(try t.countShared(slot.base, slot.pages)) / Double(slot.pages)
            #expect(abs(b.fraction - want) < 0.005, "slot \(slot.base): \(b.fraction) vs \(want)")
        }
        #expect(presence >= 10)   // the single pages of the 1022 GiB slot are marked
        #expect(svg.contains("0 %") && svg.contains("100 %"))
    }
}
