import CSevPEBShims
import Testing
@testable import SevPEB

/// Regressions found by the libFuzzer targets in fuzz/ (each names the
/// target and what it reported). The crashing inputs are also kept in
/// fuzz/corpus/<target>/ so the bounded fuzz runs replay them.
@Suite struct RegressionFuzz {
    /// fuzz/layout: setBitmap(0x6ff, 2^64-1 pages, 1 MiB source) returned
    /// -ERANGE where the header promises -ENOSPC: ceil(n/8) was computed as
    /// (n + 7) >> 3, which wraps for n > 2^64 - 8 to a tiny "need".
    @Test func bitmapNeedDoesNotWrap() throws {
        let t = try Tracker.create()
        try t.addSlot(base: 0, pages: 1000)
        var buf = [UInt8](repeating: 0, count: 16)
        for n in [UInt64.max, UInt64.max - 6, UInt64.max - 7] {
            #expect(throws: SevError.self) { try t.setBitmap(0x6ff, n, &buf, buf.count) }
            do { try t.setBitmap(0x6ff, n, &buf, buf.count) } catch { #expect(error.code == ENOSPC) }
            do { try t.getBitmap(0, n, &buf, buf.count) } catch { #expect(error.code == ENOSPC) }
        }
    }
}
