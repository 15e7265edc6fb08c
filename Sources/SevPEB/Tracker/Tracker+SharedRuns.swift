/// Batch enumeration of shared runs (sevpeb_shared_runs): the loop of
/// `nextSharedRun`, under one lock round trip for up to `max` runs.
extension Tracker {
    /// Store up to `max` consecutive maximal shared runs from `from` into
    /// `gfns`/`pages` (one consistent snapshot). Returns how many were stored;
    /// fewer than `max` means there are no more.
    public func sharedRuns(from: UInt64, max: Int, _ store: (Int, UInt64, UInt64) -> Void) -> Int {
        locked { e -> Int in
            var n = 0
            var at = from
            while n < max, let r = e.nextSharedRun(from: at) {
                store(n, r.gfn, r.pages)
                n &+= 1
                at = r.gfn &+ r.pages
            }
            return n
        }
    }
}
