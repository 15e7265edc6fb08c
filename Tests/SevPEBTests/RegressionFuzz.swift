import CSevPEBShims
import Testing
@testable import SevPEB
import SevPEBTestSupport

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

    /// Tests/c/stress.c (hot-plug from the VMM thread during save_iterate):
    /// the destination failed with "FILL ...: gfn range outside the memory
    /// layout". A slot added while a PART was being written had its chunks
    /// taken into that PART after the LAYOUT it started with, so the
    /// destination saw state for a slot it had not been told about.
    @Test func slotAddedDuringIterateIsDeclaredBeforeItsRecords() throws {
        let src = try Tracker.create(), dst = try Tracker.create()
        try src.addSlot(base: 0, pages: 40 * 16384)
        try dst.addSlot(base: 0, pages: 40 * 16384)
        var ss = try SaveSession.create(), ls = try LoadSession.create()
        ls.setup()
        let start = HookBox()
        var hk1 = HookSink(sink: start); try ss.setup(src, &hk1)
        var r0 = ArraySource(start.bytes)
        #expect(try ls.load(dst, &r0, version: 1) == false)
        // Many mixed chunks, so the PART flushes its 16 KiB buffer several times.
        var rng = SeededRNG(seed: 7)
        var noise = [UInt8](repeating: 0, count: 2048)
        for c in 0..<40 {
            for k in noise.indices { noise[k] = UInt8(truncatingIfNeeded: rng.next()) }
            try src.setBitmap(UInt64(c) * 16384, 16384, noise, noise.count)
        }
        let part = HookBox()
        // At the first flush the VMM hot-plugs a slot above everything
        // (destination first, as its own memory map would have it).
        part.onWrite = {
            part.onWrite = nil
            try? dst.addSlot(base: 1 << 30, pages: 100)
            try? src.addSlot(base: 1 << 30, pages: 100)
        }
        var hk2 = HookSink(sink: part); _ = try ss.iterate(src, &hk2, budget: 0)
        var r1 = ArraySource(part.bytes)
        #expect(throws: Never.self) { _ = try ls.load(dst, &r1, version: 1) }
        let end = HookBox()
        var hk3 = HookSink(sink: end); try ss.complete(src, &hk3)
        var r2 = ArraySource(end.bytes)
        var committed = false
        #expect(throws: Never.self) { committed = try ls.load(dst, &r2, version: 1) }
        #expect(committed)
        #expect(dst.digest() == src.digest())
        #expect(dst.slotList == src.slotList)
    }

    /// fuzz/roundtrip: "slot 0 group 0: hashOK on a uniform chunk". A
    /// mixed chunk whose block had become all private, hashed by a digest,
    /// was made uniform by the encoder's take (setUniform) with its cached
    /// hash still marked valid (latent: a later materialize cleared it).
    @Test func takeOfCollapsedBlockClearsItsHashMark() throws {
        let t = try Tracker.create()
        try t.addSlot(base: 0, pages: 16384)
        try t.setRange(5, 3, private: false)
        try t.setRange(5, 3, private: true)     // block of all ones, still mixed
        _ = t.digest()                          // caches the block's hash
        var ss = try SaveSession.create()
        var hk4 = HookSink(sink: HookBox()); try ss.setup(t, &hk4)
        var hk5 = HookSink(sink: HookBox()); _ = try ss.iterate(t, &hk5, budget: 0)
        #expect(t.checkInvariants() == nil)
    }
}

/// A recording sink whose `onWrite` runs before each write reaches it.
final class HookBox {
    var bytes: [UInt8] = []
    var onWrite: (() -> Void)? = nil
}

struct HookSink: ByteSink {
    let sink: HookBox
    mutating func write(_ p: UnsafeRawBufferPointer) throws(SevError) {
        sink.onWrite?()
        sink.bytes.append(contentsOf: p)
    }
}
