#!/usr/bin/env bash
# The whole test suite (README's test command; .ci/run calls exactly this).
# Installs what it needs on a fresh Debian bookworm machine, then runs every
# step, continuing past failures so one run shows them all. QEMU is built
# (or reused) in $SEVPEB_CACHE, outside the clone.
#
#   bash scripts/test.sh            everything
#   SEVPEB_FUZZ_SECONDS=600 bash scripts/test.sh   longer fuzzing
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
FUZZ_SECONDS=${SEVPEB_FUZZ_SECONDS:-30}  # 9 targets: 4.5 min of fuzzing + their builds

step "set-up: Debian and PyPI packages" bash -c 'source scripts/lib.sh; install_base_deps && install_py_deps'
step "swift test (unit, model-based property tests, round trips, hostile input)" \
    swift test
step "Embedded archive + C ABI test through pkg-config (plain, ASan+UBSan)" \
    make check PREFIX="$SEVPEB_PREFIX"
step "TSan: concurrency tests (swift test --sanitize=thread)" \
    swift test --sanitize=thread --scratch-path .build-tsan --filter Concurrency
step "KVM layer: real /dev/kvm (VM level) and seed-dialect kernel model behind an ioctl interposer" \
    make kvm-check PREFIX="$SEVPEB_PREFIX"
step "allocation failures: each library allocation failing in turn (plain + random, ASan+LSan)" \
    make alloc-check PREFIX="$SEVPEB_PREFIX"
step "CLI: encode / decode / dump" \
    bash scripts/cli-test.sh
step "fuzzing: bounded libFuzzer runs (${FUZZ_SECONDS} s per target)" \
    bash fuzz/run.sh --seconds "$FUZZ_SECONDS"
step "fuzzing: negative control (hypercall against a library whose lock-free update drops a page must fail)" \
    bash fuzz/run.sh --negative-control
step "concurrency stress: 1000 randomized migrations, 8+ updater threads (TSan)" \
    bash Tests/c/stress.sh
step "patched QEMU: build or reuse from the cache" \
    bash scripts/build-qemu.sh
# After the QEMU build: it adds the trixie deb-src entry the bench's QEMU peer source comes from.
step "benchmarks still run (quick mode; figures, not goals)" \
    bash bench/run.sh --quick
step "QEMU-level tests (TCG): file/TCP migration, reset, hotplug, hostile streams, inspector" \
    bash Tests/qemu/run.sh
step "QEMU-level tests (-accel kvm): upstream cap + MSR filter, seed v6/v8 kernel models, v6 -> v8 migration" \
    bash Tests/qemu/run-kvm.sh
step "QMP client (qemu.qmp): self-test against a scripted server" \
    "$PYVENV/bin/python" trials/selftest_qmp.py
step "trials leak check: negative control (a leaked temp file, QEMU process, namespace must be named)" \
    "$PYVENV/bin/python" trials/selftest_leaks.py
step "cross-host trials: quick subset (network namespaces)" \
    "$PYVENV/bin/python" trials/run.py --quick
summary
