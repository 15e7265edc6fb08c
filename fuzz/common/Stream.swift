/// Class-backed byte sink: SaveSession takes its sink by value.
final class ByteBox { var bytes: [UInt8] = []; var failAfter = -1 }

struct BoxSink: ByteSink {
    let box: ByteBox
    mutating func write(_ p: UnsafeRawBufferPointer) throws(SevError) {
        if box.failAfter >= 0 && box.bytes.count + p.count > box.failAfter {
            throw SevError(EIO, "test sink: write error after \(box.bytes.count) bytes")
        }
        box.bytes.append(contentsOf: p)
    }
}

enum Stream {
    /// setup + complete of `t` as one byte string (two payloads).
    static func encodeFull(_ t: Tracker) -> [UInt8] {
        let box = ByteBox()
        do throws(SevError) {
            let s = try SaveSession.create()
            var sink = BoxSink(box: box)
            try s.setup(t, &sink)
            try s.complete(t, &sink)
            s.cleanup()
        } catch { fuzzFail("encode: \(error.message)") }
        return box.bytes
    }

    /// Load payloads from `bytes` into `t` until commit, error or the end.
    /// Returns (committed, error, payloads read).
    static func decode(_ t: Tracker, _ ls: LoadSession, _ bytes: [UInt8], maxPayloads: Int = 64) -> (Bool, SevError?, Int) {
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
