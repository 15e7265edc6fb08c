#!/usr/bin/env bash
# Tests/qemu/run-kvm.sh - QEMU-level tests of the KVM path (-accel kvm):
# upstream cap + MSR filter + migration, the seed dialects against the kernel
# models of Tests/c/kvm_interposer.c, a seed dialect on a plain kernel.
# Skips with a message where /dev/kvm is absent.
#
# Builds (or reuses) the patched QEMU with scripts/build-qemu.sh, then runs
# Tests/qemu/test_kvm.py against it. Extra arguments are test names.
# Prints "N passed, N failed" last and exits non-zero on failure.
#
# Environment: as Tests/qemu/run.sh (SEVPEB_CACHE, SEVPEB_QEMU_ENV).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec "$PY" "$HERE/test_kvm.py" --env "$SEVPEB_QEMU_ENV" "$@"
