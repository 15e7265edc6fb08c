import CSevPEB
import CSevPEBShims

// sevpeb_count_differences (include/sevpeb.h): compare two trackers.

// SAFETY: count is checked for NULL; gfns is written below max_gfns only (countDifferences refuses NULL with max_gfns > 0).
@c @implementation
public func sevpeb_count_differences(_ a: OpaquePointer?, _ b: OpaquePointer?, _ gfn: UInt64, _ npages: UInt64,
                                     _ count: UnsafeMutablePointer<UInt64>!, _ gfns: UnsafeMutablePointer<UInt64>!,
                                     _ maxGfns: Int) -> Int32 {
    guard let b = unsafe b else {
        setLastError(SevError(EINVAL, "second tracker handle is NULL"))
        return -EINVAL
    }
    return unsafe withHandle(a, Int32(-EINVAL)) { (ha: borrowing Handle) -> Int32 in
        unsafe withHandle(b, Int32(-EINVAL)) { (hb: borrowing Handle) -> Int32 in
            cCall { () throws(SevError) -> Int32 in
                guard let count = unsafe count else { throw SevError(EINVAL, "count pointer is NULL") }
                if maxGfns < 0 { throw SevError(EINVAL, "max_gfns \(maxGfns) too large") }
                let r = unsafe try ha.tracker.countDifferences(hb.tracker, gfn, npages, gfns, maxGfns)
                unsafe count.pointee = r.count
                return Int32(truncatingIfNeeded: r.stored)
            }
        }
    }
}
