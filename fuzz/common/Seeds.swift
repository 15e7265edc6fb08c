import Glibc

/// Seed corpus generation from real encodings. With SEVPEB_FUZZ_GEN=<dir>,
/// a fuzz binary writes its target's seeds into <dir> and exits (run by
/// fuzz/gen-corpus.sh; the files are committed under fuzz/corpus/<target>/).
@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> Int32 {
    guard let dir = getenv("SEVPEB_FUZZ_GEN") else { return 0 }
    let d = String(cString: dir)
    var n = 0
    for (name, bytes) in Seeds.make(fuzzTarget) {
        let path = d + "/" + name
        guard let f = fopen(path, "wb") else { print("cannot write \(path)"); exit(1) }
        _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
        fclose(f)
        n += 1
    }
    print("\(fuzzTarget): wrote \(n) seeds to \(d)")
    exit(0)
}

enum Seeds {
    static func make(_ target: String) -> [(String, [UInt8])] {
        switch target {
        case "decode": return decodeSeeds()
        default:
            // Op-sequence targets: a layout choice plus op bytes.
            var out: [(String, [UInt8])] = []
            var rng = SplitMix(state: 0x5eed)
            for k in 0..<OpDriver.layouts.count {
                var b: [UInt8] = [UInt8(k)]
                if target == "roundtrip" { b = [UInt8(k & 3), UInt8(k), 4] }
                for _ in 0..<(48 + 16 * k) { b.append(UInt8(truncatingIfNeeded: rng.next())) }
                out.append(("seed-\(k)", b))
            }
            return out
        }
    }

    /// Streams produced by the real encoder for every table layout and a few
    /// states: one-shot (setup + complete) and live (setup, updates,
    /// budgeted iterates, complete), prefixed by [layout, pre-state byte].
    static func decodeSeeds() -> [(String, [UInt8])] {
        var out: [(String, [UInt8])] = []
        for k in 0..<OpDriver.layouts.count {
            for variant in 0..<3 {
                guard let t = try? Tracker.create() else { continue }
                defer { t.destroy() }
                guard var ss = try? SaveSession.create() else { continue }
                for (b, p) in OpDriver.layouts[k] { try? t.addSlot(base: b, pages: p) }
                var rng = SplitMix(state: UInt64(k * 10 + variant))
                func scramble(_ count: Int) {
                    let sl = t.slotList
                    if sl.isEmpty { return }
                    for _ in 0..<count {
                        let s = sl[Int(rng.next() % UInt64(sl.count))]
                        let off = rng.next() % s.pages
                        let n = 1 + rng.next() % min(s.pages - off, rng.next() & 1 == 0 ? 40 : 30000)
                        _ = try? t.setRange(s.base + off, n, private: rng.next() & 3 == 0)
                    }
                }
                if variant > 0 { scramble(variant * 12) }
                if variant == 2 { try? t.setMigrationControl(1) }
                var sink = FuzzSink()
                do throws(SevError) {
                    try ss.setup(t, &sink)
                    if variant == 2 {
                        for _ in 0..<3 {
                            scramble(5)
                            _ = try ss.iterate(t, &sink, budget: 64)
                        }
                    }
                    try ss.complete(t, &sink)
                } catch { fuzzFail("seed encode: \(error.message)") }
                out.append(("stream-l\(k)-v\(variant)", [UInt8(k), UInt8(variant == 1 ? 3 : 0)] + sink.bytes))
            }
        }
        return out
    }
}
