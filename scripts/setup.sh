#!/bin/sh
# Idempotent set-up for a fresh Debian/Ubuntu machine, run as root by `make`:
# the system tools the agent, the receiver and the tests drive, then a venv.
set -eu
cd "$(dirname "$0")/.."

APT_PACKAGES="qemu-utils openssh-server openssh-client parted e2fsprogs dosfstools
 xfsprogs util-linux fdisk libparted-dev pkg-config gcc python3-venv python3-dev
 zstd pv tmux coreutils procps qemu-system-x86 ovmf tgt iproute2
 nfs-ganesha nfs-ganesha-vfs partclone ntfs-3g btrfs-progs lvm2 mtools
 virt-v2v libguestfs-tools nbdkit libnbd-bin python3-libnbd linux-image-amd64 strace binutils
 chromium chromium-driver"

missing=""
for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup: these Debian packages are missing:$missing" >&2
        echo "setup: run 'make setup' as root (or apt-get install them) and try again" >&2
        exit 1
    fi
    echo "setup: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The venv is built from the distribution's python3 (not a per-user pyenv):
# the receiver runs as an unprivileged user under sshd and must be able to
# execute this interpreter.
PY=/usr/bin/python3
stamp=.venv/.coldclone-stamp
if [ ! -x .venv/bin/python ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: building .venv"
    $PY -m venv .venv
    log=.venv/setup.log
    if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[test]'; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "setup: pip install failed (log above, also in $log)" >&2
        exit 1
    fi
    touch "$stamp"
fi
# The receiver writes its qcow2 through qemu-nbd with libnbd's Python bindings, which Debian
# builds for this very python3 (python3-libnbd): the venv gets those two files, not the whole of
# dist-packages (livecd/build.sh does the same for the ISO's /opt/coldclone).
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
for f in /usr/lib/python3/dist-packages/nbd.py /usr/lib/python3/dist-packages/libnbdmod.cpython-*.so; do
    ln -sf "$f" "$site/"
done
.venv/bin/python -c 'import nbd' || { echo "setup: libnbd's Python bindings do not import in .venv" >&2; exit 1; }

# The test Glance (tests/testbed/glance.py): glance-api from PyPI under uWSGI, in a venv of
# its own, because glance pulls dozens of oslo libraries and eventlet that must not leak
# into ours. Pinned, so CI runs the Glance the tests were written against; the stamp is
# written last, so an interrupted build is redone. Cold ~2.5 min (uWSGI compiles), warm 0 s.
GLANCE_VENV=${COLDCLONE_GLANCE_VENV:-/var/tmp/coldclone-glance-venv}
GLANCE_PINS="glance==33.0.0 uWSGI==2.0.31"
if [ "$(cat "$GLANCE_VENV/.coldclone-stamp" 2>/dev/null)" != "$GLANCE_PINS" ]; then
    echo "setup: building the test Glance venv in $GLANCE_VENV ($GLANCE_PINS)"
    rm -rf "$GLANCE_VENV"
    $PY -m venv "$GLANCE_VENV"
    log="$GLANCE_VENV/setup.log"
    if ! "$GLANCE_VENV/bin/pip" install -q $GLANCE_PINS >"$log" 2>&1; then
        cat "$log" >&2
        echo "setup: pip install of the test Glance failed (log above, also in $log)" >&2
        exit 1
    fi
    echo "$GLANCE_PINS" > "$GLANCE_VENV/.coldclone-stamp"
fi
