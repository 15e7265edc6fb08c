#!/usr/bin/env bash
# Issue 7's C-level robustness runs, one command (README test command):
#   1. Tests/c/stress.c against the installed Embedded archive (the shipped
#      artifact, gcc -O2): STRESS_RUNS randomized migrations (default 1000),
#      8 updater threads + VMM thread + migration thread + decoding destination.
#   2. The same program under ThreadSanitizer, linked against a TSan-
#      instrumented build of the library sources (ordinary Swift, swiftc
#      -sanitize=thread): STRESS_TSAN_RUNS runs (default 1000).
#   3. Tests/c/hammer.c (the update fast path: 8 threads on one chunk's words
#      while the encoder runs) against the archive and under TSan, and its
#      negative control (a library whose fast path skips the dirty bit fails).
#   4. Tests/c/abuse.c against the installed archive under ASan + LSan + UBSan:
#      create/destroy cycles, every error path, writers/readers failing at
#      every offset, truncation and corruption at every byte.
#   Tests/c/stress.sh [runs]     PREFIX=... (default $SEVPEB_PREFIX or a temp prefix)
set -uo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-${STRESS_RUNS:-1000}}
TSAN_RUNS=${STRESS_TSAN_RUNS:-$RUNS}
PREFIX=${PREFIX:-${SEVPEB_PREFIX:-/tmp/sevpeb-stress-prefix}}
OUT=${STRESS_OUT:-out-stress}
mkdir -p "$OUT"
pass=0; fail=0
result() { if [ "$1" -eq 0 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "stress.sh: $2 FAILED (rc $1)"; fi; }

make --no-print-directory install PREFIX="$PREFIX" >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; echo "0 passed, 1 failed"; exit 1; }
PC="$(PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig pkg-config --cflags --libs sevpeb)"
CFLAGS="-std=gnu11 -g -Wall -Wextra -Werror -pthread"

echo "== stress: $RUNS runs against the installed archive"
gcc $CFLAGS -O2 Tests/c/stress.c -o "$OUT/stress" $PC && "$OUT/stress" "$RUNS"
result $? "stress (archive)"

echo "== stress under TSan: $TSAN_RUNS runs, library built with -sanitize=thread"
T="$OUT/tsan"; rm -rf "$T"; mkdir -p "$T/src/CSevPEB/include"
cp -r Sources/SevPEB Sources/CSevPEBShims Sources/CSevPEBHash "$T/src/"
cp include/sevpeb.h Sources/CSevPEB/include/module.modulemap "$T/src/CSevPEB/include/"
# sevpeb_shims.h includes the header as ../../../include/sevpeb.h (the repo layout)
mkdir -p "$T/include" && cp include/sevpeb.h "$T/include/"
mapfile -t lib < <(find "$T/src/SevPEB" -name '*.swift' | sort)
clang -O1 -g -fsanitize=thread -I "$T/src/CSevPEBShims/include" -c "$T/src/CSevPEBShims/shims.c" -o "$T/shims.o" &&
clang -O2 -g -fsanitize=thread -I "$T/src/CSevPEBHash/include" -c "$T/src/CSevPEBHash/hash.c" -o "$T/hash.o" &&
clang -O2 -g -fsanitize=thread -I "$T/src/CSevPEBHash/include" -c "$T/src/CSevPEBHash/bits.c" -o "$T/bits.o" &&
# tsan_link PROGRAM.c OUTPUT [swiftc flags]: the program against the TSan build of the library
tsan_link() {
    local prog=$1 exe=$2; shift 2
    clang -std=gnu11 -O1 -g -fsanitize=thread -I include -c "$prog" -o "$exe.o" &&
    swiftc -parse-as-library -module-name SevPEB -package-name sevpeb -O -g -sanitize=thread "$@" \
        -I "$T/src/CSevPEBShims/include" -I "$T/src/CSevPEBHash/include" -I "$T/src/CSevPEB/include" "${lib[@]}" \
        "$T/shims.o" "$T/hash.o" "$T/bits.o" "$exe.o" \
        -o "$exe" 2> >(grep -v 'ld.gold: warning: Cannot export local symbol' >&2)
}
tsan_link Tests/c/stress.c "$T/stress-tsan" &&
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" "$T/stress-tsan" "$TSAN_RUNS"
result $? "stress (TSan)"

# The update fast path (no mutex) under contention: 8 threads on one chunk's
# words with the encoder beside them; then the same under TSan; then the
# negative control: a library built so that a fast update does not mark its
# chunk dirty must fail (the destination misses the update).
echo "== hammer: 8 threads on the words of one chunk, encoder beside them (archive, then TSan)"
gcc $CFLAGS -O2 Tests/c/hammer.c -o "$OUT/hammer" $PC && "$OUT/hammer" "${HAMMER_ROUNDS:-20}" 1000000
result $? "hammer (archive)"
tsan_link Tests/c/hammer.c "$T/hammer-tsan" && TSAN_OPTIONS="halt_on_error=1" "$T/hammer-tsan" 5 100000
result $? "hammer (TSan)"
if tsan_link Tests/c/hammer.c "$T/hammer-fault" -D SEVPEB_FAULT_FAST_PATH_NO_DIRTY; then
    if "$T/hammer-fault" 3 20000 >"$T/hammer-fault.log" 2>&1; then
        echo "stress.sh: the hammer passed against a library whose fast path skips the dirty bit: it cannot fail"; result 1 "hammer negative control"
    else
        echo "negative control: fast path without the dirty bit -> $(grep -c 'destination\|commit\|digests' "$T/hammer-fault.log") detections, e.g.:"
        grep -m1 -E 'destination|commit|digests' "$T/hammer-fault.log"
        result 0 "hammer negative control"
    fi
else result 1 "hammer negative control (build)"; fi

echo "== C ABI under ASan + LSan + UBSan: error paths, failing callbacks, corruption"
gcc $CFLAGS -O1 -fsanitize=address,undefined -fno-sanitize-recover=all Tests/c/abuse.c -o "$OUT/abuse" $PC &&
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 "$OUT/abuse"
result $? "abuse (ASan/LSan/UBSan)"

echo "== stress under ASan + UBSan (100 runs)"
gcc $CFLAGS -O1 -fsanitize=address,undefined -fno-sanitize-recover=all Tests/c/stress.c -o "$OUT/stress-asan" $PC &&
ASAN_OPTIONS=detect_leaks=1 "$OUT/stress-asan" 100
result $? "stress (ASan)"

echo "stress.sh: $pass passed, $fail failed"
[ $fail -eq 0 ]
