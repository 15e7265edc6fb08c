# Tests/qemu/env.sh - sourced by run.sh and run-kvm.sh: sets SEVPEB_QEMU_ENV
# (building or reusing the patched QEMU with scripts/build-qemu.sh unless the
# caller gave an env file) and PY, the venv scripts/lib.sh fills
# (install_py_deps; the QMP client is qemu.qmp).
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${SEVPEB_CACHE:-/var/cache/sevpeb}

if [ -z "${SEVPEB_QEMU_ENV:-}" ]; then
    "$REPO/scripts/build-qemu.sh" >/dev/null
    SEVPEB_QEMU_ENV=$CACHE/current.env
fi
PY=$CACHE/pyvenv/bin/python
[ -x "$PY" ] || { echo "no $PY: run scripts/lib.sh's install_py_deps first" >&2; exit 1; }
