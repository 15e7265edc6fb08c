import Foundation
import Testing
@testable import SevPEB
import SevPEBTestSupport

/// Many vCPU threads update while the migration thread encodes and a
/// destination decodes: the destination must equal the source's final state.
/// Run under TSan by the test command (`--sanitize=thread --filter Concurrency`).
@Suite struct ConcurrencyTests {
    @Test(arguments: [1, 2, 3])
    func updatersWhileEncoding(seed: UInt64) throws {
        let src = try Tracker.create()
        try src.addSlot(base: 0, pages: 1 << 20)
        try src.addSlot(base: 1 << 21, pages: 1 << 18)
        let dst = try sameLayout(src)
        var s = try SaveSession.create(), l = try LoadSession.create()
        let ch = Channel()
        try ch.save { (k: inout ArraySink) throws(SevError) in try s.setup(src, &k) }
        let group = DispatchGroup()
        for th in 0..<8 {
            group.enter()
            Thread {
                var rng = SeededRNG(seed: seed &* 100 &+ UInt64(th))
                for i in 0..<4000 {
                    let base: UInt64 = rng.next() & 1 == 0 ? 0 : 1 << 21
                    let limit: UInt64 = base == 0 ? 1 << 20 : 1 << 18
                    let gfn = base + rng.next() % (limit - 600)
                    switch rng.next() % 6 {
                    case 0: _ = try? src.setRange(gfn, 1 + rng.next() % 500, private: rng.next() & 1 == 0)
                    case 1: _ = src.mapGPARangeRet(gpa: gfn << 12, npages: 1, attrs: (rng.next() & 1) << 4)
                    case 2: var b = [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: 8)
                            _ = try? src.setBitmap(gfn, 64, &b, 8)
                    case 3: _ = try? src.countShared(gfn, 300)
                    case 4: _ = src.nextSharedRun(from: gfn)
                    default: _ = src.digest()
                    }
                }
                group.leave()
            }.start()
        }
        // The migration thread: iterate while the updaters run.
        var iterations = 0
        while group.wait(timeout: .now()) == .timedOut && iterations < 10_000 {
            try ch.save { (k: inout ArraySink) throws(SevError) in _ = try s.iterate(src, &k, budget: 4096) }
            iterations += 1
        }
        group.wait()
        try ch.save { (k: inout ArraySink) throws(SevError) in try s.complete(src, &k) }   // "VM stopped"
        l.setup()
        let r = try ch.load(into: dst, &l)
        #expect(r.last == true)
        #expect(dst.digest() == src.digest())
        #expect(dst.totals() == src.totals())
        #expect(dst.allRuns.count == src.allRuns.count)
        #expect(src.checkInvariants() == nil && dst.checkInvariants() == nil)
    }
}
