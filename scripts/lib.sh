# Shared by scripts/test.sh and scripts/main.sh: set-up on a fresh Debian
# bookworm machine of this kind (root, Debian mirror + PyPI reachable).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export SEVPEB_CACHE=${SEVPEB_CACHE:-/var/cache/sevpeb}
export SEVPEB_PREFIX=${SEVPEB_PREFIX:-$SEVPEB_CACHE/prefix}
mkdir -p "$SEVPEB_CACHE"

log() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# Debian packages every part needs (QEMU's own build deps are installed by
# scripts/build-qemu.sh; guest assets by the trial harness).
install_base_deps() {
    local pkgs=(build-essential pkg-config libxxhash-dev python3 python3-venv python3-pip iproute2 binutils gdb valgrind
                librsvg2-bin curl ca-certificates)
    local missing=()
    for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if ((${#missing[@]})); then
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    command -v swift >/dev/null || { echo "swift not on PATH (expected the machine's Swift 6.3.1)"; return 1; }
}

# Python packages for the harnesses, in a venv kept in the cache.
PYVENV=$SEVPEB_CACHE/pyvenv
install_py_deps() {
    if [ ! -x "$PYVENV/bin/python" ]; then
        /usr/bin/python3 -m venv "$PYVENV" || return 1
    fi
    "$PYVENV/bin/pip" install -q --disable-pip-version-check qemu.qmp matplotlib xxhash >/dev/null || return 1
}

# Build the Embedded archive and install header, archive and .pc.
install_library() {
    make -C "$ROOT" install PREFIX="$SEVPEB_PREFIX" >/dev/null
}

# Step runner: run a named step, record pass/fail and its time.
STEPS_PASSED=0; STEPS_FAILED=0; STEP_LOG=()
step() {
    local name=$1; shift
    log "$name"
    local t0=$SECONDS
    if "$@"; then
        STEPS_PASSED=$((STEPS_PASSED + 1)); STEP_LOG+=("PASS  $name ($((SECONDS - t0)) s)")
    else
        STEPS_FAILED=$((STEPS_FAILED + 1)); STEP_LOG+=("FAIL  $name ($((SECONDS - t0)) s)")
    fi
}
summary() {
    log "summary"
    printf '%s\n' "${STEP_LOG[@]}"
    echo "$STEPS_PASSED passed, $STEPS_FAILED failed"
    [ "$STEPS_FAILED" -eq 0 ]
}
