import SevPEB

/// Draws a tracker's state as an SVG picture of guest physical memory:
/// a to-scale overview strip of the GPA space, then one band per memslot
/// (each at its own scale, holes between them labelled), and a list of the
/// largest shared runs.
///
/// Every band is cut into one bucket per pixel column. A bucket is drawn
/// private, with a shared bar rising from the bottom whose height is the
/// fraction of the bucket's pages that are shared (the axis at the right of
/// each band reads 0-100 %), so the shaded area of a band is its share of
/// shared pages: a guest with 6.5 % of its pages shared shows 6.5 % of the
/// band shaded, however scattered those pages are. Shared pages too few to
/// see at that scale still show in the thin strip above the band, which
/// marks every column holding at least one shared page.
public struct MemoryMapSVG {
    public var width = 1200.0
    public var maxSlotRows = 24
    public var maxListedRuns = 8
    public var title = "SEV guest memory: private / shared pages"
    public var subtitle: String? = nil

    static let privateColor = "#4c72b0"
    static let sharedColor = "#e8702a"
    static let holeColor = "#9a9a9a"
    static let ink = "#222222"

    public init() {}

    let left = 190.0
    var right: Double { width - 48 }
    var barW: Double { right - left }

    /// The pages of one bucket (pixel column) and how many of them are shared.
    struct Bucket: Equatable {
        var pages: UInt64
        var shared: UInt64
        var fraction: Double { pages == 0 ? 0 : Double(shared) / Double(pages) }
    }

    /// [base, base+pages) cut into `count` (at most `pages`) buckets of
    /// (nearly) equal page counts, each with its shared-page count.
    func buckets(_ t: Tracker, base: UInt64, pages: UInt64, count: Int) -> [Bucket] {
        let n = UInt64(max(1, min(UInt64(max(count, 1)), pages)))
        let q = pages / n, r = pages % n
        // Start of bucket i: i*pages/n without overflowing.
        func start(_ i: UInt64) -> UInt64 { base + q * i + (r * i) / n }
        var out: [Bucket] = []
        out.reserveCapacity(Int(n))
        for i in 0..<n {
            let g0 = start(i), g1 = start(i + 1)
            let shared = (try? t.countShared(g0, g1 - g0)) ?? 0
            out.append(Bucket(pages: g1 - g0, shared: shared))
        }
        return out
    }

    /// SVG elements of one band at (x, y), w x h pixels: private ground,
    /// shared bars by fraction (consecutive equal bars merged), the
    /// presence strip above it, and optionally the 0-100 % axis at its right.
    func band(_ t: Tracker, base: UInt64, pages: UInt64, x: Double, y: Double, w: Double, h: Double,
              axis: Bool) -> [String] {
        var s: [String] = []
        s.append("<rect class=\"band\" x=\"\(f(x))\" y=\"\(f(y))\" width=\"\(f(w))\" height=\"\(f(h))\" fill=\"\(MemoryMapSVG.privateColor)\"/>")
        let bs = buckets(t, base: base, pages: pages, count: Int(w.rounded(.up)))
        let bw = w / Double(bs.count)
        // Shared bars, heights to 0.1 px (what the SVG numbers carry).
        var i = 0
        while i < bs.count {
            let hpx = (bs[i].fraction * h * 10).rounded() / 10
            var j = i + 1
            while j < bs.count && (bs[j].fraction * h * 10).rounded() / 10 == hpx { j += 1 }
            if hpx > 0 {
                s.append("<rect class=\"shared\" x=\"\(f(x + Double(i) * bw))\" y=\"\(f(y + h - hpx))\" width=\"\(f(Double(j - i) * bw))\" height=\"\(f(hpx))\" fill=\"\(MemoryMapSVG.sharedColor)\"/>")
            }
            i = j
        }
        // Presence strip: columns with at least one shared page.
        i = 0
        while i < bs.count {
            if bs[i].shared == 0 { i += 1; continue }
            var j = i + 1
            while j < bs.count && bs[j].shared > 0 { j += 1 }
            s.append("<rect class=\"presence\" x=\"\(f(x + Double(i) * bw))\" y=\"\(f(y - 5))\" width=\"\(f(max(Double(j - i) * bw, 1)))\" height=\"3\" fill=\"\(MemoryMapSVG.sharedColor)\"/>")
            i = j
        }
        s.append("<rect x=\"\(f(x))\" y=\"\(f(y))\" width=\"\(f(w))\" height=\"\(f(h))\" fill=\"none\" stroke=\"#333333\" stroke-width=\"1\"/>")
        if axis {
            let ax = x + w
            for (v, label) in [(0.0, "0 %"), (0.5, "50 %"), (1.0, "100 %")] {
                let ty = y + h - v * h
                s.append("<line x1=\"\(f(ax))\" y1=\"\(f(ty))\" x2=\"\(f(ax + 4))\" y2=\"\(f(ty))\" stroke=\"#666\"/>")
                s.append("<text x=\"\(f(ax + 6))\" y=\"\(f(ty + 3.5))\" font-size=\"9\" text-anchor=\"start\" font-weight=\"normal\" font-style=\"normal\" fill=\"#444\">\(label)</text>")
            }
        }
        return s
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
        func percent(_ part: UInt64, _ whole: UInt64) -> String {
            formatPercent(whole == 0 ? 0 : Double(part) / Double(whole) * 100)
        }

        // Title.
        y = 34
        text(20, y, title, size: 20, weight: "bold")
        y += 22
        text(20, y, subtitle ?? "digest \(hex(sum.digest))  ·  \(slots.count) memslot\(slots.count == 1 ? "" : "s"), \(humanPages(sum.pages)) of RAM  ·  shared: \(humanPages(sum.shared)) (\(percent(sum.shared, sum.pages))) in \(totalRuns) run\(totalRuns == 1 ? "" : "s")", size: 14)
        // Legend.
        y += 26
        rect(20, y - 12, 16, 16, MemoryMapSVG.privateColor)
        text(42, y + 1, "private (encrypted, the default)")
        rect(270, y - 12, 16, 16, MemoryMapSVG.privateColor)
        rect(270, y - 4, 16, 8, MemoryMapSVG.sharedColor)
        text(292, y + 1, "shared (unencrypted): bar height = share of the pixel's pages that are shared (axis 0-100 %)")
        y += 22
        rect(20, y - 8, 16, 3, MemoryMapSVG.sharedColor)
        text(42, y + 1, "strip above a band: at least one shared page in that pixel column (also where too few to see)", size: 12, fill: "#444")
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
            s += band(t, base: sl.base, pages: sl.pages, x: x0, y: oy, w: w, h: 24, axis: false)
        }
        // Holes in the overview: labels.
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
            text(20, y + 28, "\(humanPages(sl.pages)), \(humanPages(shared)) shared", size: 11, fill: "#555")
            text(20, y + 42, "(\(percent(shared, sl.pages)) of its pages)", size: 11, fill: "#555")
            s += band(t, base: sl.base, pages: sl.pages, x: left, y: y, w: barW, h: bandH, axis: true)
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
