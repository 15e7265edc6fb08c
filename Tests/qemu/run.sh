#!/usr/bin/env bash
# Tests/qemu/run.sh - QEMU-level tests of the sev-page-enc-bitmap object (TCG).
#
# Builds (or reuses) the patched QEMU with scripts/build-qemu.sh, then runs
# Tests/qemu/test_qemu.py against it. Extra arguments are test names.
# Prints "N passed, N failed" last and exits non-zero on failure.
#
# Environment: SEVPEB_CACHE (as build-qemu.sh); SEVPEB_QEMU_ENV=FILE to use
# an existing env file (QEMU=, QEMU_FW_DIRS=, QEMU_ANALYZE_MIGRATION=) and
# skip the build.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
rc=0
if [ $# -eq 0 ]; then
    # KVM's guest interface under TCG (patch 0014): ~6 s
    "$PY" "$HERE/tcg_hypercall.py" "$(. "$SEVPEB_QEMU_ENV"; echo "$QEMU")" || rc=1
fi
"$PY" "$HERE/test_qemu.py" --env "$SEVPEB_QEMU_ENV" "$@" || rc=1
exit $rc
