#!/bin/bash
# Stage the build inputs of kickstart/coldclone-live.ks into /var/tmp/coldclone-ks on a
# RHEL-family build host (the same release as the image: the wheels are built here for its
# python3.11 and glibc). The kickstart's %post --nochroot copies them into the image.
#
#   sudo kickstart/stage.sh [--identity KEY] [--hostkey SHA256:...]
#
# Needs: python3.11 python3.11-devel gcc parted-devel pkgconf-pkg-config (pyparted is compiled
# here, so no compiler goes into the image) and PyPI for the pinned wheels.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
STAGE=${STAGE:-/var/tmp/coldclone-ks}
PY=${PYTHON:-python3.11}
PIP_VERSION=$(sed -n 's/^PIP_VERSION=\([0-9.]*\).*/\1/p' "$REPO/livecd/build.sh")
IDENTITY="" HOSTKEY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --identity) IDENTITY=$2; shift 2 ;;
        --hostkey) HOSTKEY=$2; shift 2 ;;
        *) echo "usage: $0 [--identity KEY] [--hostkey SHA256:...]" >&2; exit 2 ;;
    esac
done
die() { echo "stage.sh: $*" >&2; exit 1; }
command -v "$PY" >/dev/null || die "$PY not found: dnf install python3.11 python3.11-devel gcc parted-devel pkgconf-pkg-config"
[ -n "$PIP_VERSION" ] || die "cannot read PIP_VERSION from livecd/build.sh"

rm -rf "$STAGE"
mkdir -p "$STAGE/wheels/deps" "$STAGE/wheels/agent" "$STAGE/wheels/pip" "$STAGE/docs"
venv=$(mktemp -d /var/tmp/coldclone-ks-venv.XXXXXX)
trap 'rm -rf "$venv"' EXIT
"$PY" -m venv "$venv"
"$venv/bin/pip" install -q "pip==$PIP_VERSION" "setuptools>=64" wheel
echo "stage.sh: wheels for livecd/requirements.lock"
"$venv/bin/pip" wheel -q -w "$STAGE/wheels/deps" -r "$REPO/livecd/requirements.lock"
"$venv/bin/pip" download -q --no-deps -d "$STAGE/wheels/pip" "pip==$PIP_VERSION"
echo "stage.sh: the agent wheel"
src=$venv/src
mkdir -p "$src"
# the working tree, as livecd/build.sh takes it
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml agent \
    $(cd "$REPO" && ls -d README* LICENSE* 2>/dev/null) | tar -C "$src" -xf -
"$venv/bin/pip" wheel -q --no-deps -w "$STAGE/wheels/agent" "$src"
cp "$REPO/livecd/requirements.lock" "$STAGE/requirements.lock"
cp -a "$REPO/livecd/rootfs" "$STAGE/rootfs"
cp -a "$REPO/livecd/config/early" "$STAGE/early"
cp "$REPO/docs/livecd.md" "$REPO/docs/kickstart.md" "$STAGE/docs/" 2>/dev/null || true
{ git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown
  echo "built=$(date -u +%FT%TZ)"; echo "kickstart=1"; } > "$STAGE/build-info"
if [ -n "$IDENTITY" ]; then
    grep -q "PRIVATE KEY" "$IDENTITY" || die "--identity $IDENTITY does not look like a private key"
    install -m 0600 "$IDENTITY" "$STAGE/identity"
fi
if [ -n "$HOSTKEY" ]; then
    case "$HOSTKEY" in SHA256:?*) ;; *) die "--hostkey must look like SHA256:... (ssh-keygen -lf the server's host key)" ;; esac
    printf '%s\n' "$HOSTKEY" > "$STAGE/hostkey"
fi
echo "stage.sh: staged in $STAGE ($(du -sh "$STAGE" | cut -f1))"
