#!/usr/bin/env bash
# scripts/build-qemu.sh - build QEMU 10.0.x (Debian trixie source) with the
# sevpeb series from qemu-patches/, linked against this repository's library.
#
# Usage: scripts/build-qemu.sh            (as root, on Debian 12 bookworm)
#
# Environment:
#   SEVPEB_CACHE       cache directory, outside the clone (default /var/cache/sevpeb)
#   SEVPEB_LIB         auto (default: link the library if the repo has a Makefile),
#                      yes (require it), no (build stock QEMU + the series without it)
#   SEVPEB_LIB_REV     build the library from this git revision of the repository
#                      (e.g. HEAD: committed sources only, exported into the cache)
#                      instead of the working tree
#   SEVPEB_QEMU_VERSION  Debian source version to ask for first
#                      (default 1:10.0.13+ds-0+deb13u1; falls back to qemu/trixie)
#   JOBS               parallel build jobs (default: nproc)
#
# Cache layout ($SEVPEB_CACHE):
#   debsrc/            the Debian source package (.dsc, .orig.tar.xz, .debian.tar.xz)
#   venv/              python venv with meson 1.5.0 (QEMU 10.0 needs >= 1.5; bookworm has 1.0.1)
#   fw/                Debian's seabios package, extracted (firmware for -L)
#   tree-<srckey>/     source (Debian patches + our series, a throwaway git repo),
#                      build-sevpeb/ or build-nolib/, and prefix/ (the installed
#                      library); srckey hashes the
#                      series, this script and the Debian source version
#   out/<key>/         a finished build: qemu-system-x86_64, optionrom/, analyze-migration.py;
#                      key = srckey + hash of the library sources
#   current.env        QEMU=, QEMU_FW_DIRS=, ... of the last successful run
#
# A key hit reuses out/<key>. A change to the library only re-installs it and
# relinks (the library is a static archive); a change to the series or to this
# script re-extracts the source and re-runs configure + ninja.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${SEVPEB_CACHE:-/var/cache/sevpeb}
SEVPEB_LIB=${SEVPEB_LIB:-auto}
QEMU_VERSION_WANTED=${SEVPEB_QEMU_VERSION:-1:10.0.13+ds-0+deb13u1}
JOBS=${JOBS:-$(nproc)}
MESON_VERSION=1.5.0
PYCOTAP_VERSION=1.3.1

APT_PACKAGES=(gcc make libc6-dev dpkg-dev xz-utils git ca-certificates
              ninja-build pkg-config libglib2.0-dev libfdt-dev libslirp-dev
              flex bison python3 python3-venv lib32gcc-12-dev)

T0=$EPOCHREALTIME
log() { printf '[build-qemu %6.1fs] %s\n' "$(awk "BEGIN { print $EPOCHREALTIME - $T0 }")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get)"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -w 3600 9 || die "timed out waiting for $CACHE/.lock"

hash_paths() {
    # Content hash of the files under the given repository paths (names included).
    (cd "$REPO" && for p in "$@"; do [ -e "$p" ] && find "$p" -type f \
        ! -name '*.pyc' ! -path '*/__pycache__/*' ! -path '*/.build*' -print; done) |
        LC_ALL=C sort | (cd "$REPO" && xargs -r sha256sum) | sha256sum | cut -c1-16
}

# --------------------------------------------------------------------------
# Host packages and the trixie deb-src entry

APT_UPDATED=
apt_update() {
    [ -n "$APT_UPDATED" ] && return 0
    log "apt-get update"
    apt-get update -qq >/dev/null
    APT_UPDATED=1
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt_update
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

ensure_trixie_src() {
    local f has=
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        grep -qE '^deb-src .* trixie ' "$f" && has=1
        grep -q '^Types:.*deb-src' "$f" && grep -qE '^Suites:.* trixie( |$)' "$f" && has=1
    done
    if [ -z "$has" ]; then
        log "adding deb-src for trixie (/etc/apt/sources.list.d/sevpeb-trixie-src.sources)"
        cat >/etc/apt/sources.list.d/sevpeb-trixie-src.sources <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        APT_UPDATED=
        apt_update
    fi
}

# --------------------------------------------------------------------------
# Debian source package (downloaded once)

mkdir -p "$CACHE/debsrc"
DSC=$(ls "$CACHE"/debsrc/qemu_10.0.*.dsc 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$DSC" ]; then
    ensure_trixie_src
    log "fetching qemu source ($QEMU_VERSION_WANTED, else qemu/trixie)"
    (cd "$CACHE/debsrc" &&
        { apt-get source -qq --download-only "qemu=$QEMU_VERSION_WANTED" 2>/dev/null ||
          apt-get source -qq --download-only qemu/trixie; }) >/dev/null
    DSC=$(ls "$CACHE"/debsrc/qemu_10.0.*.dsc 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$DSC" ] || die "no qemu 10.0.x source package in trixie (got: $(ls "$CACHE/debsrc"))"
fi
DEB_VERSION=$(sed -n 's/^Version: //p' "$DSC")
log "qemu source $DEB_VERSION"

# --------------------------------------------------------------------------
# meson venv (downloaded once)

VENV=$CACHE/venv
if ! "$VENV/bin/python3" -c "import mesonbuild.coredata as c; assert c.version == '$MESON_VERSION'" 2>/dev/null; then
    log "creating meson $MESON_VERSION venv"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        "meson==$MESON_VERSION" "pycotap==$PYCOTAP_VERSION"
fi

# --------------------------------------------------------------------------
# firmware: Debian's seabios, extracted

FW=$CACHE/fw
if [ ! -f "$FW/usr/share/seabios/bios-256k.bin" ]; then
    apt_update
    log "fetching seabios"
    rm -rf "$FW" "$CACHE/debs" && mkdir -p "$FW" "$CACHE/debs"
    (cd "$CACHE/debs" && apt-get download -qq seabios >/dev/null)
    dpkg-deb -x "$CACHE"/debs/seabios_*.deb "$FW"
fi

# --------------------------------------------------------------------------
# keys

SERIES_KEY=$(hash_paths qemu-patches scripts/build-qemu.sh)
SRCKEY=$(printf '%s %s\n' "$SERIES_KEY" "$DEB_VERSION" | sha256sum | cut -c1-16)
LIB_PRESENT=
case "$SEVPEB_LIB" in
    no) ;;
    yes) LIB_PRESENT=1 ;;
    auto) [ -f "$REPO/Makefile" ] && LIB_PRESENT=1 ;;
    *) die "SEVPEB_LIB must be auto, yes or no" ;;
esac
LIBDIR=$REPO
if [ -n "$LIB_PRESENT" ] && [ -n "${SEVPEB_LIB_REV:-}" ]; then
    LIBKEY=$(git -C "$REPO" rev-parse "$SEVPEB_LIB_REV:Sources" "$SEVPEB_LIB_REV:include" \
                 "$SEVPEB_LIB_REV:Makefile" "$SEVPEB_LIB_REV:Package.swift" | sha256sum | cut -c1-16) ||
        die "cannot resolve SEVPEB_LIB_REV=$SEVPEB_LIB_REV"
    LIBDIR=$CACHE/libsrc
elif [ -n "$LIB_PRESENT" ]; then
    LIBKEY=$(hash_paths Sources include Makefile Package.swift)
else
    LIBKEY=nolib
fi
KEY=$SRCKEY-$LIBKEY
OUT=$CACHE/out/$KEY

write_env() {
    local fwdirs="$FW/usr/share/seabios:$OUT/optionrom"
    cat >"$CACHE/current.env.tmp" <<EOF
# written by $REPO/scripts/build-qemu.sh
QEMU=$OUT/qemu-system-x86_64
QEMU_FW_DIRS=$fwdirs
QEMU_ANALYZE_MIGRATION=$OUT/analyze-migration.py
QEMU_SRC=$CACHE/tree-$SRCKEY/src
QEMU_DEB_VERSION=$DEB_VERSION
QEMU_BUILD_KEY=$KEY
SEVPEB_LINKED=$( [ -n "$LIB_PRESENT" ] && echo 1 || echo 0 )
EOF
    mv "$CACHE/current.env.tmp" "$CACHE/current.env"
    cp "$CACHE/current.env" "$OUT/build.env"
    log "QEMU=$OUT/qemu-system-x86_64"
    log "QEMU_FW_DIRS=$fwdirs"
    log "env file: $CACHE/current.env"
    echo "$OUT/qemu-system-x86_64"
}

if [ -x "$OUT/qemu-system-x86_64" ] && [ -f "$OUT/.complete" ]; then
    log "cache hit ($KEY)"
    write_env
    exit 0
fi
log "cache miss ($KEY)"

# --------------------------------------------------------------------------
# source tree: Debian source + our series, as a throwaway git repository

TREE=$CACHE/tree-$SRCKEY
SRC=$TREE/src
# One build directory per variant, so that switching SEVPEB_LIB keeps both
BUILD=$TREE/build-$( [ -n "$LIB_PRESENT" ] && echo sevpeb || echo nolib )
PREFIX=$TREE/prefix
if [ ! -f "$TREE/.patched" ]; then
    rm -rf "$TREE" && mkdir -p "$TREE"
    log "extracting $(basename "$DSC") (with Debian's patches)"
    dpkg-source -q -x "$DSC" "$SRC" >/dev/null 2>&1 || die "dpkg-source -x failed"
    git -C "$SRC" init -q
    git -C "$SRC" add -A -f .
    git -C "$SRC" -c user.name=sevpeb -c user.email=dev@sevpeb.invalid \
        commit -q --no-verify -m "Debian qemu $DEB_VERSION"
    if [ -f "$REPO/qemu-patches/series" ]; then
        while read -r patch; do
            case "$patch" in ''|'#'*) continue ;; esac
            log "applying $patch"
            git -C "$SRC" -c user.name=sevpeb -c user.email=dev@sevpeb.invalid \
                am -q --whitespace=nowarn "$REPO/qemu-patches/$patch" ||
                { git -C "$SRC" am --abort || true; die "$patch does not apply to $DEB_VERSION"; }
        done <"$REPO/qemu-patches/series"
    fi
    touch "$TREE/.patched"
fi
HAS_OPTION=
grep -q "option('sevpeb'" "$SRC/meson_options.txt" && HAS_OPTION=1

# --------------------------------------------------------------------------
# library

if [ -n "$LIB_PRESENT" ]; then
    if [ "$(cat "$TREE/.libkey" 2>/dev/null)" != "$LIBKEY" ]; then
        if [ "$LIBDIR" != "$REPO" ]; then
            log "exporting the library sources at $SEVPEB_LIB_REV"
            mkdir -p "$LIBDIR"
            rm -rf "$LIBDIR/Sources" "$LIBDIR/include"
            git -C "$REPO" archive "$SEVPEB_LIB_REV" Sources include Makefile Package.swift |
                tar -x -C "$LIBDIR"
        fi
        log "installing the sevpeb library into $PREFIX"
        make -C "$LIBDIR" install PREFIX="$PREFIX" >&2
        [ -f "$PREFIX/lib/pkgconfig/sevpeb.pc" ] || die "make install did not produce $PREFIX/lib/pkgconfig/sevpeb.pc"
        # The archive is a link input ninja does not track: force the relink.
        rm -f "$BUILD/qemu-system-x86_64"
        echo "$LIBKEY" >"$TREE/.libkey"
    fi
fi

# --------------------------------------------------------------------------
# configure + build

CONFIG_ARGS=(--python="$VENV/bin/python3" --target-list=x86_64-softmmu
             --without-default-features --enable-tcg --enable-kvm --enable-slirp
             --enable-fdt=system --disable-docs --disable-download
             --disable-install-blobs --enable-werror)
if [ -n "$HAS_OPTION" ]; then
    if [ -n "$LIB_PRESENT" ]; then CONFIG_ARGS+=(-Dsevpeb=enabled); else CONFIG_ARGS+=(-Dsevpeb=disabled); fi
fi
CONFIG_STAMP="${CONFIG_ARGS[*]}"
if [ ! -f "$BUILD/build.ninja" ] || [ "$(cat "$BUILD/.configured" 2>/dev/null)" != "$CONFIG_STAMP" ]; then
    rm -rf "$BUILD" && mkdir -p "$BUILD"
    log "configure ${CONFIG_ARGS[*]}"
    (cd "$BUILD" && PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}" \
        "$SRC/configure" "${CONFIG_ARGS[@]}" >configure.log 2>&1) ||
        { tail -30 "$BUILD/configure.log" >&2; die "configure failed (log: $BUILD/configure.log)"; }
    echo "$CONFIG_STAMP" >"$BUILD/.configured"
fi
log "ninja qemu-system-x86_64"
(cd "$BUILD" && PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" ninja -j"$JOBS" qemu-system-x86_64 >ninja.log 2>&1) ||
    { grep -B2 -A20 -m3 'error' "$BUILD/ninja.log" >&2 || tail -40 "$BUILD/ninja.log" >&2;
      die "build failed (log: $BUILD/ninja.log)"; }
log "option ROMs"
make -s -C "$BUILD/pc-bios/optionrom" >/dev/null 2>&1 || die "make -C $BUILD/pc-bios/optionrom failed"

# --------------------------------------------------------------------------
# publish

rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp/optionrom"
cp "$BUILD/qemu-system-x86_64" "$OUT.tmp/"
cp "$BUILD"/pc-bios/optionrom/*.bin "$OUT.tmp/optionrom/"
cp "$SRC/scripts/analyze-migration.py" "$OUT.tmp/"
git -C "$SRC" log --oneline >"$OUT.tmp/series.log"
touch "$OUT.tmp/.complete"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
touch "$TREE"
# keep the newest few finished builds and the trees they came from
ls -1dt "$CACHE"/out/*/ 2>/dev/null | tail -n +6 | xargs -r rm -rf
ls -1dt "$CACHE"/tree-*/ 2>/dev/null | tail -n +4 | xargs -r rm -rf
log "built $("$OUT/qemu-system-x86_64" --version | head -1)"
write_env
