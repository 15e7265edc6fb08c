import SevPEB

/// Draws a tracker's state as an SVG picture of guest physical memory:
/// a to-scale overview strip of the GPA space, then one band per memslot
/// (each at its own scale, holes between them labelled), private and shared
/// in two colours, shared runs too narrow to see widened to `minRunPx` and
/// marked with a triangle, and a list of the largest shared runs.
public struct MemoryMapSVG {
    public var width = 1200.0
    public var minRunPx = 2.0
    public var maxSlotRows = 24
    public var maxListedRuns = 8
    public var title = "SEV guest memory: private / shared pages"
    public var subtitle: String? = nil

    static let privateColor = "#4c72b0"
    static let sharedColor = "#e8702a"
    static let sparseColor = "#f6c39c"
    static let holeColor = "#9a9a9a"
    static let ink = "#222222"

    public init() {}

    let left = 190.0
    var right: Double { width - 40 }
    var barW: Double { right - left }

    /// A horizontal stretch of a band holding shared pages.
    struct Span {
        var x0: Double, x1: Double
        var runs: Int
        /// GFNs from the first run's start to the last run's end.
        var g0: UInt64, g1: UInt64
        /// Wider than a widened single run and under half shared: drawn in
        /// the "scattered" shade rather than solid shared.
        var sparse = false
    }

    /// Pixel spans of the shared pages of [base, base+pages) on a bar of `w`
    /// pixels, narrow runs widened to minRunPx, overlapping spans merged.
    /// Walks at most about one run per pixel column: once a column is
    /// marked, it skips to the next.
    func sharedSpans(_ t: Tracker, base: UInt64, pages: UInt64, w: Double) -> [Span] {
        var spans: [Span] = []
        var from = base
        let end = base + pages
        let scale = w / Double(pages)
        while from < end, let r = t.nextSharedRun(from: from), r.gfn < end {
            let a = r.gfn, e = min(r.gfn + r.pages, end)
            var x0 = Double(a - base) * scale, x1 = Double(e - base) * scale
            if x1 - x0 < minRunPx {
                let mid = (x0 + x1) / 2
                x1 = min(w, max(0, mid - minRunPx / 2) + minRunPx); x0 = x1 - minRunPx
            }
            if let last = spans.last, x0 <= last.x1 {
                spans[spans.count - 1].x1 = max(last.x1, x1)
                spans[spans.count - 1].runs += 1
                spans[spans.count - 1].g1 = e
            } else {
                // A run found after a skip may have started earlier in the
                // skipped pixel column: start the span at that column.
                let colStart = base + UInt64(max(0, x0.rounded(.down) / scale))
                spans.append(Span(x0: x0, x1: x1, runs: 1, g0: min(a, max(colStart, spans.last?.g1 ?? base)), g1: e))
            }
            // Next pixel column after this run's end.
            let col = (Double(e - base) * scale).rounded(.up)
            let nextByPixel = base + UInt64(min(Double(pages), col / scale))
            from = max(e, nextByPixel)
        }
        for i in spans.indices where spans[i].runs > 1 && spans[i].x1 - spans[i].x0 > 2 * minRunPx {
            let g0 = spans[i].g0, g1 = spans[i].g1
            if let n = try? t.countShared(g0, g1 - g0) { spans[i].sparse = n * 2 < g1 - g0 }
        }
        return spans
    }

    public func render(_ t: Tracker) -> String {
        let slots = t.slotList
        let sum = t.summary()
        let (topRuns, totalRuns) = largestRuns(t, count: maxListedRuns)
        var s: [String] = []
        var y = 0.0
        func text(_ x: Double, _ y: Double, _ str: String, size: Double = 13, anchor: String = "start",
                  weight: String = "normal", fill: String = MemoryMapSVG.ink, style: String = "normal") {
            s.append("<text x=\"\(f(x))\" y=\"\(f(y))\" font-size=\"\(f(size))\" text-anchor=\"\(anchor)\" font-weight=\"\(weight)\" font-style=\"\(style)\" fill=\"\(fill)\">\(esc(str))</text>")
        }
        func rect(_ x: Double, _ y: Double, _ w: Double, _ h: Double, _ fill: String, stroke: String? = nil, extra: String = "") {
            s.append("<rect x=\"\(f(x))\" y=\"\(f(y))\" width=\"\(f(max(w, 0)))\" height=\"\(f(h))\" fill=\"\(fill)\"" + (stroke.map { " stroke=\"\($0)\" stroke-width=\"1\"" } ?? "") + extra + "/>")
        }

        // Title.
        y = 34
        text(20, y, title, size: 20, weight: "bold")
        y += 22
        let pct = sum.pages == 0 ? 0 : Double(sum.shared) / Double(sum.pages) * 100
        text(20, y, subtitle ?? "digest \(hex(sum.digest))  ·  \(slots.count) memslot\(slots.count == 1 ? "" : "s"), \(humanPages(sum.pages)) of RAM  ·  shared: \(humanPages(sum.shared)) (\(formatPercent(pct))) in \(totalRuns) run\(totalRuns == 1 ? "" : "s")", size: 14)
        // Legend.
        y += 26
        rect(20, y - 12, 16, 16, MemoryMapSVG.privateColor)
        text(42, y + 1, "private (encrypted, the default)")
        rect(280, y - 12, 16, 16, MemoryMapSVG.sharedColor)
        text(302, y + 1, "shared (unencrypted)")
        rect(480, y - 12, 16, 16, MemoryMapSVG.sparseColor)
        text(502, y + 1, "scattered small shared runs (under half the pages)")
        s.append(marker(884, y - 10))
        text(896, y + 1, "run under \(f(minRunPx)) px, drawn \(f(minRunPx)) px wide")
        y += 30

        if slots.isEmpty {
            text(20, y + 10, "no memslots", size: 14, style: "italic")
            return wrap(s, height: y + 40)
        }

        // Overview: the whole GPA range to scale.
        let gEnd = slots.last!.base + slots.last!.pages
        text(20, y + 14, "GPA space", size: 13, weight: "bold")
        text(20, y + 30, "(to scale)", size: 12, fill: "#555")
        let oy = y
        rect(left, oy, barW, 24, "#f4f4f4", stroke: "#cccccc")
        let os = barW / Double(gEnd)
        for sl in slots {
            let x0 = left + Double(sl.base) * os
            let w = max(Double(sl.pages) * os, 3)
            rect(x0, oy, w, 24, MemoryMapSVG.privateColor)
            for sp in sharedSpans(t, base: sl.base, pages: sl.pages, w: w) {
                rect(x0 + sp.x0, oy, sp.x1 - sp.x0, 24, sp.sparse ? MemoryMapSVG.sparseColor : MemoryMapSVG.sharedColor)
            }
        }
        // Holes in the overview: hatched labels.
        var prevEnd: UInt64 = 0
        for sl in slots {
            if sl.base > prevEnd {
                let x0 = left + Double(prevEnd) * os, x1 = left + Double(sl.base) * os
                if x1 - x0 > 30 { text((x0 + x1) / 2, oy + 16, "hole", size: 11, anchor: "middle", fill: MemoryMapSVG.holeColor, style: "italic") }
            }
            prevEnd = sl.base + sl.pages
        }
        for (gpa, label) in ticks(end: gEnd << 12, count: 6) {
            let x = left + Double(gpa >> 12) * os
            s.append("<line x1=\"\(f(x))\" y1=\"\(f(oy + 24))\" x2=\"\(f(x))\" y2=\"\(f(oy + 29))\" stroke=\"#666\"/>")
            text(x, oy + 41, label, size: 11, anchor: "middle", fill: "#444")
        }
        y = oy + 70

        // One band per memslot.
        let bandH = 30.0
        prevEnd = slots.first!.base
        for (i, sl) in slots.prefix(maxSlotRows).enumerated() {
            if i > 0 && sl.base > prevEnd {
                text(left, y + 4, "hole  [\(humanGPA(prevEnd << 12)), \(humanGPA(sl.base << 12)))  \(humanPages(sl.base - prevEnd)): no memory", size: 12, fill: MemoryMapSVG.holeColor, style: "italic")
                s.append("<line x1=\"\(f(left))\" y1=\"\(f(y + 12))\" x2=\"\(f(right))\" y2=\"\(f(y + 12))\" stroke=\"\(MemoryMapSVG.holeColor)\" stroke-dasharray=\"6 5\"/>")
                y += 30
            }
            prevEnd = sl.base + sl.pages
            let shared = (try? t.countShared(sl.base, sl.pages)) ?? 0
            text(20, y + 13, "memslot \(i)", size: 14, weight: "bold")
            text(20, y + 29, "\(humanPages(sl.pages)), \(humanPages(shared)) shared", size: 11, fill: "#555")
            rect(left, y, barW, bandH, MemoryMapSVG.privateColor)
            for sp in sharedSpans(t, base: sl.base, pages: sl.pages, w: barW) {
                rect(left + sp.x0, y, sp.x1 - sp.x0, bandH, sp.sparse ? MemoryMapSVG.sparseColor : MemoryMapSVG.sharedColor)
                if sp.x1 - sp.x0 <= minRunPx * 2 { s.append(marker(left + (sp.x0 + sp.x1) / 2, y - 9)) }
                // Label wide solid spans with the shared pages in them.
                if !sp.sparse && sp.x1 - sp.x0 > 90, let n = try? t.countShared(sp.g0, sp.g1 - sp.g0) {
                    text(left + (sp.x0 + sp.x1) / 2, y + 20, "shared \(humanPages(n))", size: 12, anchor: "middle", weight: "bold", fill: "#ffffff")
                }
            }
            rect(left, y, barW, bandH, "none", stroke: "#333333")
            for (gpa, label) in ticks(start: sl.base << 12, end: (sl.base + sl.pages) << 12, count: 5) {
                let x = left + Double((gpa >> 12) - sl.base) / Double(sl.pages) * barW
                s.append("<line x1=\"\(f(x))\" y1=\"\(f(y + bandH))\" x2=\"\(f(x))\" y2=\"\(f(y + bandH + 5))\" stroke=\"#666\"/>")
                let anchor = x <= left + 1 ? "start" : (x >= right - 1 ? "end" : "middle")
                text(x, y + bandH + 17, label, size: 11, anchor: anchor, fill: "#444")
            }
            y += bandH + 40
        }
        if slots.count > maxSlotRows {
            text(left, y, "... \(slots.count - maxSlotRows) more memslots not drawn", size: 12, style: "italic")
            y += 24
        }

        // Largest shared runs.
        if !topRuns.isEmpty {
            text(20, y, totalRuns > topRuns.count ? "Largest shared runs (\(topRuns.count) of \(totalRuns))" : "Shared runs", size: 14, weight: "bold")
            y += 20
            for r in topRuns {
                rect(24, y - 10, 10, 10, MemoryMapSVG.sharedColor)
                text(42, y, "\(humanPages(r.pages)) at GPA \(hex(r.gfn << 12)) (\(humanGPA(r.gfn << 12))), gfn \(hex(r.gfn)) + \(r.pages) page\(r.pages == 1 ? "" : "s")", size: 12)
                y += 17
            }
        }
        return wrap(s, height: y + 16)
    }

    func marker(_ x: Double, _ y: Double) -> String {
        "<path d=\"M \(f(x - 4)) \(f(y)) L \(f(x + 4)) \(f(y)) L \(f(x)) \(f(y + 7)) Z\" fill=\"\(MemoryMapSVG.sharedColor)\"/>"
    }

    func wrap(_ body: [String], height: Double) -> String {
        var out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        out += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(f(width))\" height=\"\(f(height))\" viewBox=\"0 0 \(f(width)) \(f(height))\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n"
        out += "<rect x=\"0\" y=\"0\" width=\"\(f(width))\" height=\"\(f(height))\" fill=\"#ffffff\"/>\n"
        out += body.joined(separator: "\n")
        out += "\n</svg>\n"
        return out
    }

    /// The `count` largest shared runs (by size, then address) and the number of runs.
    func largestRuns(_ t: Tracker, count: Int) -> ([(gfn: UInt64, pages: UInt64)], Int) {
        var top: [(gfn: UInt64, pages: UInt64)] = []
        var n = 0
        var from: UInt64 = 0
        while let r = t.nextSharedRun(from: from) {
            n += 1
            top.append(r)
            if top.count > count * 4 {
                top.sort { $0.pages != $1.pages ? $0.pages > $1.pages : $0.gfn < $1.gfn }
                top.removeLast(top.count - count)
            }
            from = r.gfn + r.pages
        }
        top.sort { $0.pages != $1.pages ? $0.pages > $1.pages : $0.gfn < $1.gfn }
        return (Array(top.prefix(count)), n)
    }
}

/// "0", "512 MiB", "2 GiB", "1 TiB 2 GiB" -> concise GPA labels.
public func humanGPA(_ b: UInt64) -> String {
    if b == 0 { return "0" }
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    // Exact in the largest unit that divides it (1026 GiB, not "1 TiB").
    for u in stride(from: units.count - 1, through: 1, by: -1) {
        let m = UInt64(1) << UInt64(10 * u)
        if b % m == 0 && b / m < 10_000 { return "\(b / m) \(units[u])" }
    }
    return "~" + humanBytes(b)
}

/// About `count` round tick positions in [start, end] (bytes), with labels;
/// always includes start and end.
func ticks(start: UInt64 = 0, end: UInt64, count: Int) -> [(UInt64, String)] {
    let span = end - start
    var step: UInt64 = 4096
    let nice: [UInt64] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    outer: for p in stride(from: 12, through: 52, by: 10) {
        for m in nice {
            let st = m << UInt64(p)
            if span / st <= UInt64(count) { step = st; break outer }
        }
    }
    var out: [(UInt64, String)] = [(start, humanGPA(start))]
    var v = (start / step + 1) * step
    while v < end {
        // Keep labels apart from the ends.
        if v - start >= step / 2 && end - v >= step / 2 { out.append((v, humanGPA(v))) }
        v += step
    }
    out.append((end, humanGPA(end)))
    return out
}

@inline(__always) func f(_ v: Double) -> String {
    let r = (v * 10).rounded() / 10
    return r == r.rounded() ? String(Int(r)) : String(r)
}

func esc(_ s: String) -> String {
    var o = ""
    for c in s {
        switch c {
        case "&": o += "&amp;"
        case "<": o += "&lt;"
        case ">": o += "&gt;"
        case "\"": o += "&quot;"
        default: o.append(c)
        }
    }
    return o
}

extension String {
    func padding(_ n: Int) -> String { count >= n ? self + " " : self + String(repeating: " ", count: n - count) }
}
