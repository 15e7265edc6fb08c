#!/usr/bin/env bash
# Bounded libFuzzer runs of every target (README test command: --seconds 30).
#
#   fuzz/run.sh [--seconds N] [--runs R] [--no-build] [target...]
#       build (fuzz/build.sh), then run each target for N seconds (default 60),
#       or until it made R executions if that comes first,
#       on a work copy of its committed corpus (fuzz/corpus/<target>/: seeds
#       from real encodings + every input that ever crashed, replayed first),
#       with the format dictionary fuzz/sevpeb.dict. Prints exec counts; exits
#       non-zero if any target found a crash, a leak, a timeout or a broken
#       differential check (the input is saved as fuzz/artifacts/<target>-*).
#
#   Long runs (hours; new corpus entries accumulate in fuzz/corpus-work/):
#       fuzz/run.sh --seconds 14400 --runs 10000000 decode roundtrip
#   (swiftc has no -sanitize=undefined: Swift traps on overflow and bounds by
#   itself, and the fuzzers run -O with those checks on; UBSan covers the C
#   side in Tests/c/stress.sh.)
#   fuzz/run.sh --negative-control
#       the targets must be able to fail: build `hypercall` against a library
#       whose lock-free update leaves the last page of its range unchanged
#       (-D SEVPEB_FAULT_FAST_PATH_DROP_PAGE) and fuzz it (at most 120 s,
#       seed 1); passes only if the target reports the difference.
#   Minimize a crash and keep it as a regression input:
#       fuzz/out/<t> -minimize_crash=1 -runs=10000 fuzz/artifacts/<t>-crash-...
#       cp <minimized> fuzz/corpus/<t>/regress-<what>
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=60
RUNS=-1
BUILD=1
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_EACH=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --negative-control) NEGATIVE=1; shift ;;
        -h|--help) sed -n 2,20p "$0"; exit 0 ;;
        *) targets+=("$1"); shift ;;
    esac
done
if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz/targets/*.swift; do targets+=("$(basename "$f" .swift)"); done
fi
OUT=${FUZZ_OUT:-fuzz/out}
if [ "${NEGATIVE:-0}" = 1 ]; then
    neg=$OUT/negative; mkdir -p "$OUT"
    FUZZ_SWIFTFLAGS="-D SEVPEB_FAULT_FAST_PATH_DROP_PAGE" FUZZ_OUT=$neg bash fuzz/build.sh hypercall >"$OUT/negative.build.log" 2>&1 ||
        { cat "$OUT/negative.build.log"; echo "fuzz: negative control build failed"; echo "0 passed, 1 failed"; exit 1; }
    rm -rf "$neg/work" && mkdir -p "$neg/artifacts" "$neg/work"
    SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 "$neg/hypercall" -seed=1 \
        -max_total_time=120 -max_len=8192 -dict=fuzz/sevpeb.dict -artifact_prefix="$neg/artifacts/" \
        "$neg/work" fuzz/corpus/hypercall >"$neg/run.log" 2>&1
    if [ $? -eq 0 ]; then
        echo "fuzz: negative control: hypercall fuzzed 120 s clean against a library whose lock-free"
        echo "fuzz: update drops a page: the target cannot see a wrong update"; echo "0 passed, 1 failed"; exit 1
    fi
    echo "fuzz: negative control detected after $(grep -oE '^#[0-9]+' "$neg/run.log" | tail -1 | tr -d '#') inputs:" \
        "$(grep -m1 -o 'Fatal error: .*' "$neg/run.log")"
    echo "1 passed, 0 failed"; exit 0
fi
if [ "$BUILD" = 1 ]; then
    FUZZ_OUT=$OUT bash fuzz/build.sh "${targets[@]}" || { echo "fuzz: build failed"; echo "0 passed, 1 failed"; exit 1; }
fi
export SWIFT_BACKTRACE=enable=no        # libFuzzer + ASan report crashes themselves
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
mkdir -p fuzz/artifacts fuzz/corpus-work
pass=0; fail=0
summary=()
for t in "${targets[@]}"; do
    work=fuzz/corpus-work/$t
    mkdir -p "$work" "fuzz/corpus/$t"
    log=fuzz/artifacts/$t.log
    "$OUT/$t" -max_total_time="$SECONDS_EACH" -runs="$RUNS" -max_len=8192 -timeout=20 -rss_limit_mb=3072 \
        -dict=fuzz/sevpeb.dict -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t-" \
        "$work" "fuzz/corpus/$t" >"$log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
    ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
    corp=$(ls "$work" | wc -l)
    if [ $rc -eq 0 ]; then
        pass=$((pass + 1)); st=ok
    else
        fail=$((fail + 1)); st="FAILED (rc $rc, see $log)"
        grep -E 'FUZZ CHECK FAILED|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|Fatal error|SUMMARY|Test unit written' "$log" | head -8
    fi
    secs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o '[0-9]* second' | grep -o '[0-9]*' || true)
    line=$(printf 'fuzz %-10s %8s execs in %ss (%s exec/s), cov %s, ft %s, corpus %s files (%s KiB on disk): %s' "$t" "${execs:-?}" \
        "${secs:-$SECONDS_EACH}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$corp" "$(du -sk "$work" | cut -f1)" "$st")
    echo "$line"; summary+=("$line")
done
echo "---"
printf '%s\n' "${summary[@]}"
echo "fuzz: $pass passed, $fail failed"
[ $fail -eq 0 ]
