#!/bin/sh
# Idempotent set-up for a fresh Debian/Ubuntu machine, run as root by `make`:
# the system tools the agent, the receiver and the tests drive, then a venv.
set -eu
cd "$(dirname "$0")/.."

APT_PACKAGES="qemu-utils openssh-server openssh-client parted e2fsprogs dosfstools
 xfsprogs util-linux fdisk libparted-dev pkg-config gcc python3-venv python3-dev
 zstd pv tmux coreutils procps qemu-system-x86 ovmf tgt iproute2
 nfs-ganesha nfs-ganesha-vfs
 virt-v2v libguestfs-tools nbdkit libnbd-bin linux-image-amd64"

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
