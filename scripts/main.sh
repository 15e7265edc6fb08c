#!/usr/bin/env bash
# The main job (README): on a fresh Debian bookworm machine, install what is
# needed, build the library and the patched QEMU (or reuse the cache), run
# every cross-host migration trial scenario, and print the report (also
# written as Markdown + PNG pictures under trials/out/).
#
#   bash scripts/main.sh                 10 ping-pong migrations
#   SEVPEB_COUNT=50 bash scripts/main.sh
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
COUNT=${SEVPEB_COUNT:-10}

step "set-up: Debian and PyPI packages" bash -c 'source scripts/lib.sh; install_base_deps && install_py_deps'
step "library: Embedded-Swift archive, installed with header and sevpeb.pc" \
    make install PREFIX="$SEVPEB_PREFIX"
step "patched QEMU 10.0: build or reuse from $SEVPEB_CACHE" \
    bash scripts/build-qemu.sh
step "cross-host migration trials: all scenarios (6 driven by the guest agent on 4 vCPUs), ping-pong x$COUNT" \
    "$PYVENV/bin/python" trials/run.py --full --count "$COUNT"
summary
