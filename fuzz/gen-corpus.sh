#!/usr/bin/env bash
# Regenerate the seed corpus (fuzz/corpus/<target>/seed-* and stream-*) from
# real encodings: each fuzz binary writes its own seeds when SEVPEB_FUZZ_GEN
# is set. Regression inputs (regress-*) are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${FUZZ_OUT:-fuzz/out}
for f in fuzz/targets/*.swift; do
    t=$(basename "$f" .swift)
    bash fuzz/build.sh "$t" >/dev/null
    mkdir -p "fuzz/corpus/$t"
    rm -f fuzz/corpus/"$t"/seed-* fuzz/corpus/"$t"/stream-*
    SWIFT_BACKTRACE=enable=no SEVPEB_FUZZ_GEN="fuzz/corpus/$t" "$OUT/$t"
done
du -sh fuzz/corpus
