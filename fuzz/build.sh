#!/usr/bin/env bash
# Build the libFuzzer targets: ordinary (non-Embedded) Swift over the library
# sources + fuzz/common + one fuzz/targets/<name>.swift, compiled as one module
# (so the checks can read internal state), with -sanitize=fuzzer,address
# (SANITIZE=fuzzer for no ASan; swiftc rejects -sanitize=undefined).
#   fuzz/build.sh [target...]      -> fuzz/out/<target>   (default: every target)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${FUZZ_OUT:-fuzz/out}
SANITIZE=${SANITIZE:-fuzzer,address}
mkdir -p "$OUT"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz/targets/*.swift; do targets+=("$(basename "$f" .swift)"); done
fi
# Build from a snapshot of the sources (library and fuzz/), so edits made
# meanwhile cannot break the compile half-way.
SRC="$OUT/src"
rm -rf "$SRC" && mkdir -p "$SRC"
cp -r Sources/SevPEB Sources/CSevPEBShims Sources/CSevPEBHash "$SRC/"
cp -r fuzz/common "$SRC/fuzzcommon" && cp -r fuzz/targets "$SRC/fuzztargets"
mkdir -p "$SRC/shared" && cp Tests/SevPEBTestSupport/LayoutReference.swift "$SRC/shared/"
# inspect's sources join the library's module in the qemustream target (they
# use the library's one hex and errnoName, so nothing needs renaming)
cp -r Sources/SevPEBInspect "$SRC/"
mkdir -p "$SRC/CSevPEB/include"
cp include/sevpeb.h Sources/CSevPEB/include/module.modulemap "$SRC/CSevPEB/include/"
# sevpeb_shims.h includes the header as ../../../include/sevpeb.h (the repo
# layout): give the snapshot the same shape.
mkdir -p "$OUT/include" && cp include/sevpeb.h "$OUT/include/"
csan=${SANITIZE/fuzzer/fuzzer-no-link}
clang -O2 -g -fsanitize="$csan" -I "$SRC/CSevPEBShims/include" -c "$SRC/CSevPEBShims/shims.c" -o "$OUT/shims.o"
msan=${SANITIZE/fuzzer,/}; msan=${msan/fuzzer/}
# The reference model's byte loops: the oracle, not the code under test, fed
# only buffers the harness sized: -O2 without coverage or ASan, so that they
# vectorize (with ASan they were a quarter of the roundtrip target's time).
clang -O2 -g -I "$SRC/fuzzcommon/include" -c "$SRC/fuzzcommon/fuzz_model.c" -o "$OUT/fuzz_model.o"
# ... checked against one-bit-at-a-time loops before any target uses it.
clang -O1 -g -fsanitize=address -I "$SRC/fuzzcommon/include" "$SRC/fuzzcommon/fuzz_model_check.c" "$SRC/fuzzcommon/fuzz_model.c" \
    -o "$OUT/fuzz_model_check" 2> >(grep -v 'Cannot export local symbol' >&2)
"$OUT/fuzz_model_check" || { echo "fuzz: the reference model's bit loops are wrong (fuzz/common/fuzz_model.c)" >&2; exit 1; }
# XXH3 (libxxhash-dev, inline): ASan, but no coverage (a library, not our code).
clang -O2 -g ${msan:+-fsanitize=$msan} -I "$SRC/CSevPEBHash/include" -c "$SRC/CSevPEBHash/hash.c" -o "$OUT/hash.o"
# The C loops the Swift side calls (copy-out's shifted copy): ASan, no coverage.
clang -O2 -g ${msan:+-fsanitize=$msan} -I "$SRC/CSevPEBHash/include" -c "$SRC/CSevPEBHash/bits.c" -o "$OUT/bits.o"
# The seed target links the ioctl interposer's v6/v8 kernel models and their
# bulk comparison, kvmodel_diff (no coverage: the oracle).
clang -O2 -g ${msan:+-fsanitize=$msan} -c Tests/c/kvm_interposer.c -o "$OUT/kvm_interposer.o"
mapfile -t lib < <(find "$SRC/SevPEB" -name '*.swift' | sort)
for t in "${targets[@]}"; do
    extra=()
    case $t in
        seed) extra=(-I "$SRC/fuzzcommon/kvmodel" "$OUT/kvm_interposer.o" -ldl) ;;
        qemustream) extra=("$SRC"/SevPEBInspect/*.swift) ;;  # their `import SevPEB` is this module
        setlayout) extra=("$SRC/shared/LayoutReference.swift") ;;  # shared with LayoutTests
    esac
    swiftc -parse-as-library -module-name SevPEB -package-name sevpeb -O -g -sanitize="$SANITIZE" ${FUZZ_SWIFTFLAGS:-} \
        -I "$SRC/CSevPEBShims/include" -I "$SRC/CSevPEBHash/include" -I "$SRC/CSevPEB/include" -I "$SRC/fuzzcommon/include" \
        "${lib[@]}" "$SRC"/fuzzcommon/*.swift "$SRC/fuzztargets/$t.swift" "$OUT/shims.o" "$OUT/hash.o" "$OUT/bits.o" "$OUT/fuzz_model.o" "${extra[@]}" \
        -o "$OUT/$t" 2> >(grep -v -e 'ld.gold: warning: Cannot export local symbol' -e 'ignoring import' >&2)
    echo "built $OUT/$t"
done
