import CSevPEB
import CSevPEBShims

// SAFETY: runs is checked for NULL and written only below max_runs entries, as the header requires the caller to provide.
@c @implementation
public func sevpeb_shared_runs(_ t: OpaquePointer?, _ from: UInt64, _ runs: UnsafeMutablePointer<sevpeb_run>!,
                               _ max: Int) -> Int64 {
    unsafe withHandle(t, Int64(-EINVAL)) { h in
        // size_t arrives as Int: a value above INT64_MAX is negative here.
        if max < 0 { setLastError(SevError(EINVAL, "max \(UInt(bitPattern: max)): above INT64_MAX")); return Int64(-EINVAL) }
        if max == 0 { return 0 }
        guard let runs = unsafe runs else { setLastError(SevError(EINVAL, "runs is NULL with max \(max)")); return Int64(-EINVAL) }
        return Int64(h.tracker.sharedRuns(from: from, max: max) { i, g, n in
            unsafe runs[i] = sevpeb_run(gfn: g, npages: n)
        })
    }
}
