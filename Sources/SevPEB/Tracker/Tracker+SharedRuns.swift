/// Batch enumeration of shared runs (sevpeb_shared_runs): the loop of
/// `nextSharedRun`, under one lock round trip for up to `max` runs.
extension Tracker {
    /// Store up to `max` consecutive maximal shared runs from `from` into
    /// `gfns`/`pages` (one consistent snapshot). Returns how many were stored;
    /// fewer than `max` means there are no more.
    public func sharedRuns(from: UInt64, max: Int, _ store: (Int, UInt64, UInt64) -> Void) -> Int {
        withLock { () -> Int in
            if slotCount == 0 { return 0 }
            var n = 0
            var at = from
            while n < max {
                guard let start = findPage(from: at, value: false, stopAtHole: false) else { break }
                var end: UInt64
                if let p = findPage(from: start, value: true, stopAtHole: true) {
                    end = p
                } else {
                    var s = slotIndex(containing: start)!
                    while s &+ 1 < slotCount && slots![s &+ 1].base == slots![s].end { s &+= 1 }
                    end = slots![s].end
                }
                store(n, start, end &- start)
                n &+= 1
                at = end
            }
            return n
        }
    }
}
