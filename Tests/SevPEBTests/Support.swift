import CSevPEBShims
@testable import SevPEB

func errno(of body: () throws(SevError) -> Void) -> Int32 {
    do throws(SevError) { try body(); return 0 } catch { return error.code }
}

/// Collects each payload separately.
final class Channel {
    var payloads: [[UInt8]] = []
    func save(_ body: (inout ArraySink) throws(SevError) -> Void) throws(SevError) {
        var sink = ArraySink()
        try body(&sink)
        payloads.append(sink.bytes)
    }
    /// Load every payload in order; returns the load results.
    func load(into t: Tracker, _ l: inout LoadSession) throws(SevError) -> [Bool] {
        var r: [Bool] = []
        for p in payloads {
            var src = ArraySource(p)
            r.append(try l.load(t, &src, version: 1))
            if src.offset != p.count { throw SevError(EBADMSG, "payload not fully consumed: \(src.offset) of \(p.count)") }
        }
        return r
    }
}
