import Foundation
import Testing
import CSevPEB
@testable import SevPEB
import SevPEBInspect

/// Every errno a C function returns is one its comment in include/sevpeb.h
/// lists: the header is parsed, each function is driven through its error
/// paths via the C ABI, and each returned errno is looked up in the list.
@Suite struct ErrnoContractTests {
    /// Every errno the library returns, by the one name table (SevPEBInspect).
    static let errnoValues: [String: Int32] = Dictionary(uniqueKeysWithValues:
        [EINVAL, ERANGE, EEXIST, ENOSPC, ENOMEM, ENOENT, EBUSY, EAGAIN, EPROTO, EBADMSG,
         EPROTONOSUPPORT, EMSGSIZE, EREMCHG, EILSEQ, ENODATA, EIO].map { (SevPEB.errnoName($0), $0) } + [("EPIPE", EPIPE)])

    /// function name -> errnos named (as -E...) in the comment just above
    /// its declaration, and whether it passes the callback's error through.
    static func parseHeader(_ text: String) -> [String: (errnos: Set<Int32>, passThrough: Bool)] {
        var out: [String: (Set<Int32>, Bool)] = [:]
        var comment = ""
        var inComment = false
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let l = line.trimmingCharacters(in: .whitespaces)
            if l.hasPrefix("/**") { inComment = true; comment = "" }
            if inComment {
                // One line of prose: "* " prefixes dropped, lines joined by spaces.
                comment += " " + (l.hasPrefix("* ") ? String(l.dropFirst(2)) : l)
                if l.hasSuffix("*/") { inComment = false }
                continue
            }
            if l.hasPrefix("SEVPEB_API"), let open = l.firstIndex(of: "(") {
                let name = String(l[..<open].split(separator: " ").last!.drop { $0 == "*" })
                var set = Set<Int32>()
                var rest = Substring(comment)
                while let r = rest.range(of: "-E") {
                    let tail = rest[r.upperBound...].prefix { $0.isUppercase }
                    if let v = errnoValues["E" + tail] { set.insert(v) }
                    rest = rest[r.upperBound...]
                }
                let pass = comment.contains("writer's error") || comment.contains("reader's error")
                out[name] = (set, pass)
                comment = ""
            } else if !l.isEmpty && !l.hasPrefix("*") && !l.hasPrefix("#") {
                comment = ""
            }
        }
        return out
    }

    static let header: String = {
        let path = #filePath.replacingOccurrences(of: "Tests/SevPEBTests/ErrnoContractTests.swift", with: "include/sevpeb.h")
        return (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    }()

    /// Injected by the test writer/reader: must come back unchanged.
    static let callbackErrno = EPIPE

    final class Bytes { var data: [UInt8] = []; var pos = 0; var failWrite = false }
    static let write: sevpeb_write_fn = { op, buf, len in
        let b = Unmanaged<Bytes>.fromOpaque(op!).takeUnretainedValue()
        if b.failWrite { return -ErrnoContractTests.callbackErrno }
        b.data.append(contentsOf: UnsafeBufferPointer(start: buf, count: len)); return 0
    }
    static let read: sevpeb_read_fn = { op, buf, len in
        let b = Unmanaged<Bytes>.fromOpaque(op!).takeUnretainedValue()
        if b.pos + len > b.data.count { return -ENODATA }
        for i in 0..<len { buf![i] = b.data[b.pos + i] }
        b.pos += len; return 0
    }

    /// Calls each function through its error paths; returns (function, errno)
    /// for every negative result.
    static func drive() -> [(String, Int32)] {
        var seen: [(String, Int32)] = []
        func rec<T: BinaryInteger>(_ f: String, _ r: T) { if r < 0 { seen.append((f, Int32(truncatingIfNeeded: -Int64(r)))) } }
        var t: OpaquePointer? = nil
        rec("sevpeb_tracker_create", sevpeb_tracker_create(1, &t))
        rec("sevpeb_tracker_create", sevpeb_tracker_create(0, nil))
        _ = sevpeb_tracker_create(0, &t)
        var u: OpaquePointer? = nil
        _ = sevpeb_tracker_create(0, &u)
        defer { sevpeb_tracker_destroy(t); sevpeb_tracker_destroy(u) }
        for (b, n): (UInt64, UInt64) in [(0, 0), (0, 1 << 53), (UInt64.max, 2), (0, 4096), (100, 10), (8192, 4096)] {
            rec("sevpeb_slot_add", sevpeb_slot_add(t, b, n)); rec("sevpeb_slot_add", sevpeb_slot_add(nil, b, n))
        }
        for (b, n): (UInt64, UInt64) in [(0, 0), (0, 1 << 53), (77, 10), (0, 9000), (0, 4096)] {
            rec("sevpeb_slot_resize", sevpeb_slot_resize(t, b, n)); rec("sevpeb_slot_resize", sevpeb_slot_resize(nil, b, n))
        }
        for l: [sevpeb_slot] in [[.init(base_gfn: 0, npages: 0)], [.init(base_gfn: 9, npages: 1), .init(base_gfn: 0, npages: 1)],
                                 [.init(base_gfn: 0, npages: 5), .init(base_gfn: 4, npages: 1)], [.init(base_gfn: 1 << 52, npages: 1)]] {
            rec("sevpeb_set_layout", sevpeb_set_layout(t, l, UInt32(l.count)))
        }
        rec("sevpeb_set_layout", sevpeb_set_layout(t, nil, 1)); rec("sevpeb_set_layout", sevpeb_set_layout(nil, nil, 0))
        rec("sevpeb_slot_remove", sevpeb_slot_remove(t, 77)); rec("sevpeb_slot_remove", sevpeb_slot_remove(nil, 0))
        rec("sevpeb_slot_count", sevpeb_slot_count(nil))
        var g: UInt64 = 0, n: UInt64 = 0
        rec("sevpeb_slot_get", sevpeb_slot_get(t, 9, &g, &n)); rec("sevpeb_slot_get", sevpeb_slot_get(t, 0, nil, &n))
        rec("sevpeb_slot_get", sevpeb_slot_get(nil, 0, &g, &n))
        let ranges: [(UInt64, UInt64)] = [(0, 0), (4000, 200), (UInt64.max, 2), (20000, 1), (5000, 5000)]
        for (a, k) in ranges {
            for s: Int32 in [0, 1, 2] { rec("sevpeb_set_range", sevpeb_set_range(t, a, k, s)) }
            rec("sevpeb_test", sevpeb_test(t, a &+ k))
            rec("sevpeb_count_shared", sevpeb_count_shared(t, a, k))
            var buf = [UInt8](repeating: 0, count: 1024)
            for len in [0, 1024] {
                rec("sevpeb_get_bitmap", sevpeb_get_bitmap(t, a, k, &buf, len))
                rec("sevpeb_set_bitmap", sevpeb_set_bitmap(t, a, k, buf, len))
                rec("sevpeb_set_bitmap", sevpeb_set_bitmap(t, a, k, nil, len))
            }
            rec("sevpeb_get_bitmap", sevpeb_get_bitmap(t, a, k, nil, 1024))
            var c: UInt64 = 0, gf = [UInt64](repeating: 0, count: 4)
            rec("sevpeb_count_differences", sevpeb_count_differences(t, u, a, k, &c, &gf, 4))
            rec("sevpeb_count_differences", sevpeb_count_differences(t, t, a, k, &c, nil, 4))
            rec("sevpeb_count_differences", sevpeb_count_differences(t, nil, a, k, &c, &gf, 4))
        }
        rec("sevpeb_test", sevpeb_test(nil, 0)); rec("sevpeb_count_shared", sevpeb_count_shared(nil, 0, 1))
        rec("sevpeb_totals", sevpeb_totals(t, nil, &n)); rec("sevpeb_totals", sevpeb_totals(nil, &g, &n))
        rec("sevpeb_next_shared_run", sevpeb_next_shared_run(t, 0, nil, &n))
        rec("sevpeb_next_shared_run", sevpeb_next_shared_run(nil, 0, &g, &n))
        rec("sevpeb_reset", sevpeb_reset(nil))
        rec("sevpeb_digest", sevpeb_digest(t, nil)); rec("sevpeb_digest", sevpeb_digest(nil, &g))
        rec("sevpeb_set_change_callback", sevpeb_set_change_callback(nil, nil, nil))
        rec("sevpeb_set_migration_control", sevpeb_set_migration_control(t, 2))
        rec("sevpeb_set_migration_control", sevpeb_set_migration_control(nil, 1))
        rec("sevpeb_set_require_ready", sevpeb_set_require_ready(nil, 1))
        rec("sevpeb_may_migrate", sevpeb_may_migrate(nil))
        // Save: not ready, writer failing, no session, busy.
        let out = Bytes()
        let op = Unmanaged.passUnretained(out).toOpaque()
        _ = sevpeb_set_require_ready(t, 1)
        rec("sevpeb_may_migrate", sevpeb_may_migrate(t))
        rec("sevpeb_save_setup", sevpeb_save_setup(t, write, op))
        _ = sevpeb_set_require_ready(t, 0)
        rec("sevpeb_save_iterate", sevpeb_save_iterate(t, write, op, 0))
        rec("sevpeb_save_complete", sevpeb_save_complete(t, write, op))
        rec("sevpeb_save_setup", sevpeb_save_setup(t, nil, op)); rec("sevpeb_save_setup", sevpeb_save_setup(nil, write, op))
        out.failWrite = true
        rec("sevpeb_save_setup", sevpeb_save_setup(t, write, op))
        out.failWrite = false
        rec("sevpeb_save_setup", sevpeb_save_setup(t, write, op))
        rec("sevpeb_save_setup", sevpeb_save_setup(t, write, op))   // busy
        _ = sevpeb_set_range(t, 10, 3, 0)
        out.failWrite = true
        rec("sevpeb_save_iterate", sevpeb_save_iterate(t, write, op, 0))
        rec("sevpeb_save_complete", sevpeb_save_complete(t, write, op))
        out.failWrite = false
        rec("sevpeb_save_iterate", sevpeb_save_iterate(t, nil, op, 0))
        out.data = []
        rec("sevpeb_save_complete", sevpeb_save_complete(t, write, op))
        var st = sevpeb_save_stats()
        rec("sevpeb_save_get_stats", sevpeb_save_get_stats(t, &st))   // size 0
        rec("sevpeb_save_get_stats", sevpeb_save_get_stats(nil, &st))
        sevpeb_save_cleanup(t)
        let end = out.data   // an END payload with FINAL
        // Load: every stream fault, into u (layout differs first).
        func load(_ bytes: [UInt8], version: UInt32 = 1, setup: Bool = true, into dst: OpaquePointer? = nil) {
            let d = dst ?? u
            if setup { rec("sevpeb_load_setup", sevpeb_load_setup(d)) }
            let src = Bytes(); src.data = bytes
            rec("sevpeb_load_state", sevpeb_load_state(d, read, Unmanaged.passUnretained(src).toOpaque(), version))
        }
        out.data = []; _ = sevpeb_save_setup(t, write, op)
        let start = out.data
        out.data = []; _ = sevpeb_save_complete(t, write, op); sevpeb_save_cleanup(t)
        let fin = out.data
        load(start)                                   // u has no slots: EREMCHG
        var k: UInt32 = 0                             // give u t's layout
        while sevpeb_slot_get(t, k, &g, &n) == 0 { _ = sevpeb_slot_add(u, g, n); k += 1 }
        load(start, version: 2)
        load(Array(start.prefix(10)))
        load([0xee] + start)
        var bad = start; bad[bad.count - 1] ^= 1; load(bad)
        load(end.isEmpty ? fin : end)                  // END without START
        load(start); load(fin, setup: false)          // committed
        load(fin, setup: false)                        // after the commit
        load(fin, version: 2, setup: false)
        load(start, into: nil); rec("sevpeb_load_state", sevpeb_load_state(u, nil, nil, 1))
        rec("sevpeb_load_state", sevpeb_load_state(nil, read, nil, 1))
        rec("sevpeb_load_setup", sevpeb_load_setup(nil))
        return seen
    }

    /// (function, errno) pairs the header does not allow.
    static func violations(_ doc: [String: (errnos: Set<Int32>, passThrough: Bool)], _ seen: [(String, Int32)]) -> [String] {
        seen.compactMap { f, e in
            guard let d = doc[f] else { return "\(f): not declared in the header" }
            if d.errnos.contains(e) || (d.passThrough && e == callbackErrno) { return nil }
            let name = SevPEB.errnoName(e)
            return "\(f) returned -\(name), its comment lists \(d.errnos.sorted())"
        }
    }

    @Test func everyReturnedErrnoIsDocumented() {
        let doc = Self.parseHeader(Self.header)
        #expect(doc.count > 40)
        let seen = Self.drive()
        let functions = Set(seen.map { $0.0 })
        let codes = Set(seen.map { $0.1 })
        #expect(functions.count >= 25)
        // The driver reaches the errors it is meant to reach.
        for e in [EINVAL, ERANGE, EEXIST, ENOENT, ENOSPC, EBUSY, EAGAIN, EPROTO, EBADMSG,
                  EPROTONOSUPPORT, EREMCHG, EILSEQ, ENODATA, EPIPE] {
            #expect(codes.contains(e), "driver never saw errno \(e)")
        }
        let v = Self.violations(doc, seen)
        #expect(v.isEmpty, "\(Set(v).sorted())")
    }

    /// Negative control: drop one documented errno from a comment and the
    /// check reports exactly that function.
    @Test func checkFlagsAnUndocumentedErrno() {
        let cut = Self.header.replacingOccurrences(of: "-EEXIST (overlaps an existing slot)", with: "(overlaps an existing slot)")
        #expect(cut != Self.header)
        let v = Self.violations(Self.parseHeader(cut), Self.drive())
        #expect(!v.isEmpty && v.allSatisfy { $0.hasPrefix("sevpeb_slot_add returned -EEXIST") })
    }
}
