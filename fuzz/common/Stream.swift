/// Class-backed byte sink: SaveSession takes its sink by value.
/// The fuzzers' sink, passed inout to the encoder: collects the bytes; with
/// failAfter >= 0, fails a write that would pass that many bytes.
struct FuzzSink: ByteSink {
    var bytes: [UInt8] = []
    var failAfter = -1
    mutating func write(_ p: UnsafeRawBufferPointer) throws(SevError) {
        if failAfter >= 0 && bytes.count + p.count > failAfter {
            throw SevError(EIO, "test sink: write error after \(bytes.count) bytes")
        }
        bytes.append(contentsOf: p)
    }
}

enum Stream {
    /// setup + complete of `t` as one byte string (two payloads).
    static func encodeFull(_ t: Tracker) -> [UInt8] {
        var sink = FuzzSink()
        do throws(SevError) {
            var s = try SaveSession.create()
            try s.setup(t, &sink)
            try s.complete(t, &sink)
            s.cleanup()
        } catch { fuzzFail("encode: \(error.message)") }
        return sink.bytes
    }

    /// Load payloads from `bytes` into `t` until commit, error or the end.
    /// Returns (committed, error, payloads read).
    static func decode(_ t: Tracker, _ ls: inout LoadSession, _ bytes: [UInt8], maxPayloads: Int = 64) -> (Bool, SevError?, Int) {
        var src = ArraySource(bytes)
        var n = 0
        while n < maxPayloads && src.offset < bytes.count {
            n += 1
            do throws(SevError) {
                if try ls.load(t, &src, version: Wire.sectionVersion) { return (true, nil, n) }
            } catch { return (false, error, n) }
        }
        return (false, nil, n)
    }
}

import CSevPEBShims
