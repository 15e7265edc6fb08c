#!/usr/bin/env bash
# bench/run.sh - the sevpeb performance suite, one command (issue 6).
#
#   bench/run.sh            full suite (~1-2 minutes on 2 cores), regenerates docs/PERFORMANCE.md
#   bench/run.sh --quick    smoke run (< 1 minute): same measurements, fewer repetitions and
#                           sizes; writes bench/out/ only (docs/PERFORMANCE.md is left alone
#                           unless --write-doc is also given)
#
# Steps:
#   1. QEMU source: $SEVPEB_CACHE (default /var/cache/sevpeb, shared with
#      scripts/build-qemu.sh): an extracted tree-*/src if there is one, else
#      debsrc/qemu_10.0.*.orig.tar.xz, else `apt-get source --download-only
#      qemu/trixie` into debsrc/ (as build-qemu.sh does). Only util/bitmap.c,
#      util/bitops.c and include/qemu/*.h are extracted, into bench/out/qemu/;
#      nothing of QEMU is committed.
#   2. The shipped archive: make install PREFIX=bench/out/prefix (own scratch
#      paths: .build-embedded-bench, bench/out/lib).
#   3. The harness: gcc -O2 bench/bench.c + QEMU's bitmap code (gcc -O2), linked
#      with libsevpeb.a through pkg-config.
#   4. Wall-clock suite -> bench/out/results.json; callgrind instruction counts
#      -> bench/out/callgrind.json (skipped if valgrind is missing).
#   5. bench/report.py -> docs/PERFORMANCE.md (machine description, every figure
#      against its goal and peer, before/after against the committed run in
#      bench/baseline/phase1/ (issue 13), trials/out/ figures if present).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
CACHE=${SEVPEB_CACHE:-/var/cache/sevpeb}
OUTD=bench/out
QUICK=
WRITE_DOC=1
for a in "$@"; do
    case "$a" in
        --quick) QUICK=--quick; WRITE_DOC= ;;
        --write-doc) WRITE_DOC=1 ;;
        *) echo "usage: bench/run.sh [--quick] [--write-doc]" >&2; exit 2 ;;
    esac
done
[ -n "$QUICK" ] && [[ " $* " == *" --write-doc "* ]] && WRITE_DOC=1
T0=$EPOCHREALTIME
log() { printf '[bench %6.1fs] %s\n' "$(awk "BEGIN { print $EPOCHREALTIME - $T0 }")" "$*" >&2; }
mkdir -p "$OUTD"

# ---------------------------------------------------------------- 1. QEMU source
Q=$OUTD/qemu
need_files=(util/bitmap.c util/bitops.c include/qemu/bitmap.h include/qemu/bitops.h
            include/qemu/host-utils.h include/qemu/atomic.h include/qemu/compiler.h)
have_q() { for f in "${need_files[@]}"; do [ -f "$Q/$f" ] || return 1; done; }
if ! have_q; then
    rm -rf "$Q" && mkdir -p "$Q"
    TREE=$(ls -d "$CACHE"/tree-*/src 2>/dev/null | head -1 || true)
    if [ -n "$TREE" ] && [ -f "$TREE/util/bitmap.c" ]; then
        log "QEMU source: $TREE"
        (cd "$TREE" && cp --parents util/bitmap.c util/bitops.c include/qemu/*.h "$REPO/$Q/")
    else
        ORIG=$(ls "$CACHE"/debsrc/qemu_10.0.*.orig.tar.xz 2>/dev/null | sort -V | tail -1 || true)
        if [ -z "$ORIG" ]; then
            log "fetching the QEMU source with apt-get source (into $CACHE/debsrc)"
            mkdir -p "$CACHE/debsrc"
            (cd "$CACHE/debsrc" && apt-get source -qq --download-only qemu/trixie >/dev/null) ||
                { echo "bench: apt-get source qemu/trixie failed (needs a trixie deb-src entry; scripts/build-qemu.sh adds one)" >&2; exit 1; }
            ORIG=$(ls "$CACHE"/debsrc/qemu_10.0.*.orig.tar.xz | sort -V | tail -1)
        fi
        log "QEMU source: $ORIG"
        tar -xJf "$ORIG" -C "$Q" --strip-components=1 --wildcards \
            '*/util/bitmap.c' '*/util/bitops.c' '*/include/qemu/*.h'
    fi
    have_q || { echo "bench: QEMU bitmap sources missing under $Q" >&2; exit 1; }
fi

# ---------------------------------------------------------------- 2. the archive
PREFIX=$REPO/$OUTD/prefix
log "building and installing libsevpeb.a (make install PREFIX=$PREFIX)"
make --no-print-directory install PREFIX="$PREFIX" EMB=.build-embedded-bench OUT="$OUTD/lib" >"$OUTD/make.log" 2>&1 ||
    { tail -30 "$OUTD/make.log" >&2; exit 1; }

# ---------------------------------------------------------------- 3. the harness
CC=${CC:-gcc}
QFLAGS=(-O2 -I bench/compat -I "$Q/include" -I bench $(pkg-config --cflags glib-2.0))
mkdir -p "$OUTD/obj"
"$CC" "${QFLAGS[@]}" -c "$Q/util/bitmap.c" -o "$OUTD/obj/bitmap.o"
"$CC" "${QFLAGS[@]}" -c "$Q/util/bitops.c" -o "$OUTD/obj/bitops.o"
"$CC" "${QFLAGS[@]}" -c bench/qemu_peer.c -o "$OUTD/obj/qemu_peer.o"
PC="env PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig pkg-config"
"$CC" -std=gnu11 -O2 -g -Wall -Wextra -pthread -I bench bench/bench.c \
    "$OUTD/obj/bitmap.o" "$OUTD/obj/bitops.o" "$OUTD/obj/qemu_peer.o" \
    $($PC --cflags --libs sevpeb) -o "$OUTD/bench"
log "harness built: $OUTD/bench"

# ---------------------------------------------------------------- 4. run
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "wall-clock suite ${QUICK:-(full)}"
"$OUTD/bench" $QUICK --json "$OUTD/results.json" | tee "$OUTD/bench.log"

if command -v valgrind >/dev/null; then
    log "callgrind instruction counts"
    rm -f "$OUTD"/callgrind.out.*
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUTD/callgrind.out.%p" \
        "$OUTD/bench" --ic >"$OUTD/callgrind.log" 2>&1 || { tail -20 "$OUTD/callgrind.log" >&2; exit 1; }
    python3 bench/report.py --parse-callgrind "$OUTD" >"$OUTD/callgrind.json"
else
    log "valgrind not installed: no instruction counts"
    rm -f "$OUTD/callgrind.json"
fi

# ---------------------------------------------------------------- 5. report
{
    echo "{"
    echo "\"date\": \"$(date -u +%Y-%m-%dT%H:%MZ)\","
    echo "\"commit\": \"$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- Sources include 2>/dev/null || echo +dirty)\","
    echo "\"kernel\": \"$(uname -sr)\","
    echo "\"os\": \"$(. /etc/os-release && echo "$PRETTY_NAME")\","
    echo "\"cpu\": \"$(lscpu | sed -n 's/^Model name: *//p' | head -1)\","
    echo "\"cpus\": \"$(nproc)\","
    echo "\"hypervisor\": \"$(lscpu | sed -n 's/^Hypervisor vendor: *//p' | head -1)\","
    echo "\"mem\": \"$(free -g | awk '/^Mem:/ {print $2 " GiB"}')\","
    echo "\"load\": \"$LOAD_BEFORE at start, $(cut -d' ' -f1-3 /proc/loadavg) at end (1/5/15 min)\","
    echo "\"gcc\": \"$("$CC" --version | head -1)\","
    echo "\"swift\": \"$(swift --version 2>&1 | head -1)\","
    echo "\"valgrind\": \"$(valgrind --version 2>/dev/null || echo none)\","
    echo "\"qemu_source\": \"$(ls "$CACHE"/debsrc/qemu_10.0.*.dsc 2>/dev/null | sort -V | tail -1 | xargs -r basename)\","
    echo "\"lscpu_flags\": \"$(lscpu | sed -n 's/^Flags: *//p' | tr ' ' '\n' | grep -E '^(popcnt|bmi1|bmi2|avx2|avx512f|erms|fsrm)$' | tr '\n' ' ')\""
    echo "}"
} >"$OUTD/machine.json"
if [ -n "$WRITE_DOC" ]; then
    python3 bench/report.py --out docs/PERFORMANCE.md "$OUTD"
    log "wrote docs/PERFORMANCE.md"
else
    python3 bench/report.py --out "$OUTD/PERFORMANCE.md" "$OUTD"
    log "wrote $OUTD/PERFORMANCE.md (quick run; docs/PERFORMANCE.md unchanged)"
fi
log "done"
