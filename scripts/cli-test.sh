#!/usr/bin/env bash
# The `sevpeb` CLI end to end: encode -> decode -> dump on the typical 1 TiB
# guest (decode's digest must equal encode's), hostile files, inspect refusing
# a non-stream. Prints "N passed, N failed"; exits non-zero on any failure.
#
#   bash scripts/cli-test.sh                       builds with swift build (.build)
#   SEVPEB_SCRATCH=.build-cli bash scripts/cli-test.sh
#   SEVPEB_CLI=/path/to/sevpeb bash scripts/cli-test.sh   (no build)
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ -z "${SEVPEB_CLI:-}" ]; then
    scratch=${SEVPEB_SCRATCH:-.build}
    swift build --product sevpeb --scratch-path "$scratch" >/dev/null || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }
    SEVPEB_CLI=$(swift build --product sevpeb --scratch-path "$scratch" --show-bin-path)/sevpeb
fi
B=$SEVPEB_CLI
W=$(mktemp -d /tmp/sevpeb-cli.XXXXXX)
trap 'rm -rf "$W"' EXIT
pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; [ -n "${2:-}" ] && sed 's/^/     | /' <<<"$2"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name" "${OUT:-}"; fi; }

# flip FILE OFFSET: xor one byte with 0x01
flip() { python3 - "$1" "$2" <<'PY'
import sys; p, o = sys.argv[1], int(sys.argv[2])
b = bytearray(open(p, 'rb').read()); b[o] ^= 1; open(p, 'wb').write(b)
PY
}

# 1. encode the typical guest
OUT=$("$B" encode --typical-1tib -o "$W/typ.bin" 2>&1); rc=$?
check "encode --typical-1tib exits 0" test $rc -eq 0
check "encode: START payload 746 bytes, END 30" grep -q "^START payload: 746 bytes" <<<"$OUT"
enc_digest=$(grep '^digest: ' <<<"$OUT")
check "encode prints a digest line" test -n "$enc_digest"
check "payload file is START + END (776 bytes)" test "$(stat -c %s "$W/typ.bin")" -eq 776

# 2. decode it
OUT=$("$B" decode "$W/typ.bin" --svg "$W/typ.svg" 2>&1); rc=$?
check "decode exits 0" test $rc -eq 0
dec_digest=$(grep '^digest: ' <<<"$OUT")
check "decode digest line == encode digest line ($enc_digest)" test "$dec_digest" = "$enc_digest"
check "decode: 2 memslots, 81 shared runs, 268435456 pages" \
    bash -c 'grep -q "^layout: 2 memslots" <<<"$1" && grep -q "^shared runs: 81" <<<"$1" && grep -q "^pages: 268435456 total" <<<"$1"' _ "$OUT"
check "decode: verified line" grep -q "^verified: " <<<"$OUT"
check "decode: shared runs capped at 20 without --all" grep -q "61 more (--all" <<<"$OUT"
OUT=$("$B" decode --all "$W/typ.bin" 2>&1)
check "decode --all lists all 81 runs" test "$(grep -c '^  gfn ' <<<"$OUT")" -eq 81
check "decode --svg wrote an SVG" grep -q "</svg>" "$W/typ.svg"
if command -v rsvg-convert >/dev/null; then
    check "the SVG renders (rsvg-convert)" rsvg-convert "$W/typ.svg" -o "$W/typ.png"
fi

# 3. dump it
OUT=$("$B" dump "$W/typ.bin" 2>&1); rc=$?
check "dump exits 0" test $rc -eq 0
check "dump: 27 records in 2 payloads, committed" grep -q "^27 records in 2 payloads, 776 bytes; committed" <<<"$OUT"
check "dump: FINAL carries the digest" grep -q "FINAL digest=${enc_digest#digest: } " <<<"$OUT"
check "dump: first record is HEADER at offset 0" grep -qE "^ +0 +0 +0  HEADER version=0x2 page_shift=0xc flags=0x0" <<<"$OUT"

# 4. hostile files: exact library messages, non-zero exit
cp "$W/typ.bin" "$W/digest.bin"; flip "$W/digest.bin" $((746 + 3))
OUT=$("$B" decode "$W/digest.bin" 2>&1); rc=$?
check "decode of a corrupted FINAL digest exits non-zero" test $rc -ne 0
check "  ... with -EILSEQ naming FINAL and both digests" \
    grep -qE "^sevpeb: decode failed: -EILSEQ \(stream digest or count mismatch\): FINAL at offset 0: digest 0x[0-9a-f]+ from the source, ${enc_digest#digest: } over the received state$" <<<"$OUT"
head -c 760 "$W/typ.bin" > "$W/trunc.bin"
OUT=$("$B" decode "$W/trunc.bin" 2>&1); rc=$?
check "decode of a truncated file: -ENODATA, non-zero" \
    bash -c '[ $1 -ne 0 ] && grep -q "^sevpeb: decode failed: -ENODATA (stream truncated): " <<<"$2"' _ $rc "$OUT"
cp "$W/typ.bin" "$W/check.bin"; flip "$W/check.bin" 200
OUT=$("$B" dump "$W/check.bin" 2>&1); rc=$?
check "dump of a corrupted record still lists what came before and reports the error" \
    bash -c '[ $1 -ne 0 ] && grep -q "HEADER" <<<"$2" && grep -q "^sevpeb: dump failed: -E" <<<"$2"' _ $rc "$OUT"
head -c 746 "$W/typ.bin" > "$W/start.bin"
OUT=$("$B" decode "$W/start.bin" 2>&1); rc=$?
check "decode of START alone: no FINAL" \
    bash -c '[ $1 -ne 0 ] && grep -q "without a FINAL record" <<<"$2"' _ $rc "$OUT"

# 5. explicit slots and shared ranges round trip
OUT=$("$B" encode --slot 0:0xa0 --slot 0x100:0x7f00 --shared 0x10:3 --shared 0x200:0x1000 --control 1 -o "$W/small.bin" 2>&1)
d1=$(grep '^digest: ' <<<"$OUT")
OUT=$("$B" decode "$W/small.bin" 2>&1)
check "encode --slot/--shared/--control -> decode: same digest, control 0x1" \
    bash -c '[ -n "$1" ] && grep -qx "$1" <<<"$2" && grep -qx "control: 0x1" <<<"$2"' _ "$d1" "$OUT"
OUT=$("$B" encode --slot 0:16 --shared 8:16 -o "$W/x.bin" 2>&1); rc=$?
check "encode refuses a shared range outside the layout (-ERANGE)" \
    bash -c '[ $1 -ne 0 ] && grep -q -- "-ERANGE" <<<"$2"' _ $rc "$OUT"

# 6. inspect refuses what is not a QEMU stream
OUT=$("$B" inspect "$W/typ.bin" 2>&1); rc=$?
check "inspect of a payload file: not a QEMU migration stream" \
    bash -c '[ $1 -ne 0 ] && grep -q "not a QEMU migration stream" <<<"$2"' _ $rc "$OUT"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
