import CSevPEBShims
let fuzzTarget = "decode"
// Fuzz target: the migration section decoder on hostile bytes.
//
// Input: byte 0 picks the destination's layout (OpDriver.layouts), byte 1
// seeds its state before the load, the rest is the stream: one or more
// payloads, loaded one per LoadSession.load call (part by part) until a
// commit, an error or the end.
//
// Checks: nothing traps; a load that fails or does not commit leaves the
// destination exactly as it was (layout, every page, digest, control) and
// poisons the session; a committed state satisfies the invariants and
// survives decode(encode(state)) unchanged.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDecode(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var inp = FuzzInput(data, size)
    guard let dst = try? Tracker.create() else { return 0 }
    defer { dst.destroy() }
    var ls: LoadSession
    do throws(SevError) { ls = try LoadSession.create() } catch { return 0 }
    // The layout straight into the tracker (no per-page model: the layout
    // target checks addSlot; a 2^20-page model cost a 1 MiB memset per input).
    let layout = OpDriver.layouts[inp.pick(OpDriver.layouts.count)]
    for (b, p) in layout {
        do throws(SevError) { try dst.addSlot(base: b, pages: p) } catch { fuzzFail("layout add: \(error.message)") }
    }
    let pre = inp.u8()
    if pre != 0 && !layout.isEmpty {
        var rng = SplitMix(state: UInt64(pre))
        for _ in 0..<Int(pre % 8) {
            let (base, pages) = layout[Int(rng.next() % UInt64(layout.count))]
            let off = rng.next() % pages
            let n = 1 + rng.next() % (pages - off)
            _ = try? dst.setRange(base + off, min(n, 40_000), private: false)
        }
        if pre & 0x80 != 0 { try? dst.setMigrationControl(1) }
    }
    let before = RawState(dst)
    let stream = inp.rest()
    ls.setup()
    let (committed, error, _) = Stream.decode(dst, &ls, stream)
    if !committed {
        if RawState(dst) != before { fuzzFail("decode without commit (\(error?.message ?? "stream ended")) changed the destination") }
        if let v = dst.fuzzInvariantViolation() { fuzzFail("after a failed decode: \(v)") }
        if error != nil {
            var again = ArraySource(stream)
            do throws(SevError) {
                _ = try ls.load(dst, &again, version: 1)
                fuzzFail("a failed session accepted another section")
            } catch { if error.code != EBADMSG { fuzzFail("poisoned session: errno \(error.code)") } }
        }
        return 0
    }
    if let v = dst.fuzzInvariantViolation() { fuzzFail("after commit: \(v)") }
    if dst.slotList != before.slots { fuzzFail("commit changed the layout") }
    if dst.pendingChunks != 0 { fuzzFail("committed state has \(dst.pendingChunks) dirty chunks") }
    // decode(encode(state)) == state, into a fresh tracker with the same layout.
    let state = RawState(dst)
    guard let again = try? Tracker.create() else { return 0 }
    defer { again.destroy() }
    var ls2: LoadSession
    do throws(SevError) { ls2 = try LoadSession.create() } catch { return 0 }
    for s in state.slots {
        do throws(SevError) { try again.addSlot(base: s.base, pages: s.pages) } catch { fuzzFail("re-add: \(error.message)") }
    }
    ls2.setup()
    let (ok, e2, _) = Stream.decode(again, &ls2, Stream.encodeFull(dst))
    if !ok { fuzzFail("re-encoded committed state does not decode: \(e2?.message ?? "no commit")") }
    if RawState(again) != state { fuzzFail("decode(encode(committed state)) differs from it") }
    if let v = again.fuzzInvariantViolation() { fuzzFail("after re-decode: \(v)") }
    return 0
}
