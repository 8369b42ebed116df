#!/bin/bash
# Build the coldclone live ISO: Debian bookworm + live-boot (squashfs root, boot=live),
# the coldclone agent in a venv at /opt/coldclone, BIOS (isolinux) + UEFI (GRUB EFI),
# hybrid (CD and USB stick).
#
#   sudo livecd/build.sh              build livecd/build/coldclone.iso (+ vmlinuz, initrd.img)
#   sudo livecd/build.sh --relock     re-resolve pyproject.toml's dependencies into
#                                     livecd/requirements.lock first, then build
#   sudo livecd/build.sh --clean      drop the work tree and all caches first
#
# Idempotent. Caches under livecd/build/cache/ (override the build dir with COLDCLONE_BUILD=):
#   base-bookworm-amd64.tar.zst   the debootstrap'ed minbase rootfs
#   pkgs-<hash>.tar.zst           rootfs + Debian packages + initramfs (hash of the package
#                                 list, config/early/ and this script's STAGE2_REV)
#   apt-archives/, debootstrap/   downloaded .debs;   wheels-cp*/  Python wheels
# so a rebuild only re-installs the agent, re-applies rootfs/ and re-packs squashfs + ISO.
# Environment: MIRROR= / SECURITY_MIRROR= (default: taken from the host's apt sources),
#   SQUASHFS_COMP=zstd|xz (default zstd: fast build and boot; xz: smaller ISO).
#   IDENTITY=path/to/private_key  baked in as /etc/coldclone/identity (mode 0600), the default
#                                 for coldclone.identity=
#   HOSTKEY=SHA256:...            baked in as /etc/coldclone/hostkey, the default for
#                                 coldclone.hostkey= (a wave's servers: SHA256:a,SHA256:b)
set -euo pipefail

T0=$(date +%s)
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BUILD=${COLDCLONE_BUILD:-$HERE/build}
CACHE=$BUILD/cache
WORK=$BUILD/work
CHROOT=$WORK/chroot
ISOTREE=$WORK/iso
OUT_ISO=$BUILD/coldclone.iso
SUITE=bookworm
ARCH=amd64
VOLID=COLDCLONE
PIP_VERSION=26.3            # pip used (from its wheel, not installed) to fill the image's venv
STAGE2_REV=3                # bump to force a rebuild of the cached package stage
# zstd: much faster to build than xz here (30 s vs 340 s on 2 busy cores) and to unpack at
# boot; SQUASHFS_COMP=xz for a smaller ISO
case "${SQUASHFS_COMP:-zstd}" in
    xz) SQUASHFS_OPTS="-comp xz -Xbcj x86 -b 1M" ;;
    zstd) SQUASHFS_OPTS="-comp zstd -Xcompression-level 15 -b 1M" ;;
    *) echo "build.sh: SQUASHFS_COMP must be zstd or xz" >&2; exit 1 ;;
esac
CMDLINE="boot=live components quiet console=tty0 console=ttyS0,115200"
HOST_DEPS="debootstrap squashfs-tools xorriso isolinux syslinux-common grub-efi-amd64-bin
 grub-pc-bin grub-common mtools dosfstools zstd python3-venv python3-dev gcc pkg-config
 libparted-dev"

log() { printf '[build %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

RELOCK=0; CLEAN=0
for a in "$@"; do
    case "$a" in
        --relock) RELOCK=1 ;;
        --clean) CLEAN=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) die "unknown option: $a" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot, mounts)"
# one build at a time per build dir (tests and `make demo` may ask for the ISO concurrently)
mkdir -p "$BUILD"
exec 9>"$BUILD/.lock"
flock 9

# --- mirrors (the host's own, so the build works where only that mirror is reachable) ---
apt_uri() {  # $1: regex a URI must match; prints the matching http(s) URIs of the host's apt sources
    { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$1=="deb"';
      cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '$1=="URIs:"'; } |
        tr ' \t' '\n\n' | grep -E '^https?://' | grep -E "$1" || true
}
MIRROR=${MIRROR:-$(apt_uri '/debian/?$' | head -n1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-$(apt_uri '/debian-security/?$' | head -n1)}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# --- mounts: never leave one behind, never rm -rf through one ---
umount_under() {
    local m
    for m in $(awk '{print $2}' /proc/self/mounts | grep -E "^$1(/|$)" | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
}
cleanup() { umount_under "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

fresh_chroot() {  # $1: tarball to unpack
    umount_under "$WORK"
    rm -rf --one-file-system "$CHROOT"
    mkdir -p "$CHROOT"
    zstd -dc -T0 "$1" | tar -C "$CHROOT" --numeric-owner -xpf -
}
chroot_mount() {
    mount -t proc proc "$CHROOT/proc"
    mount -t sysfs sysfs "$CHROOT/sys"
    mount --bind /dev "$CHROOT/dev"
    mount --bind /dev/pts "$CHROOT/dev/pts"
    mkdir -p "$CACHE/apt-archives/partial" "$CHROOT/var/cache/apt/archives"
    mount --bind "$CACHE/apt-archives" "$CHROOT/var/cache/apt/archives"
}
in_chroot() {
    chroot "$CHROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true "$@"
}
pack() {  # $1: tarball to write from the chroot
    tar -C "$CHROOT" --numeric-owner --one-file-system -cpf - . | zstd -T0 -3 -q -o "$1.tmp"
    mv -f "$1.tmp" "$1"
}

# --- host build dependencies ---
missing=""
for p in $HOST_DEPS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    log "installing host build dependencies:$missing"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ "$CLEAN" = 1 ]; then
    log "--clean: removing $WORK and $CACHE"
    umount_under "$WORK"
    rm -rf --one-file-system "$WORK" "$CACHE"
fi
mkdir -p "$CACHE/debootstrap" "$CACHE/apt-archives/partial" "$WORK"

# --- host venv that builds the wheels (and resolves the lock) ---
HOSTPY=/usr/bin/python3
HOSTVENV=$CACHE/host-venv
if [ ! -x "$HOSTVENV/bin/pip" ]; then
    log "creating the wheel-building venv"
    $HOSTPY -m venv "$HOSTVENV"
    "$HOSTVENV/bin/pip" install -q "pip==$PIP_VERSION" "setuptools>=64" wheel
fi
LOCK=$HERE/requirements.lock
if [ "$RELOCK" = 1 ]; then
    log "re-resolving the agent's dependencies into $LOCK"
    rm -rf "$WORK/lockvenv"
    $HOSTPY -m venv "$WORK/lockvenv"
    deps=$($HOSTPY -c 'import tomllib,sys; print("\n".join(tomllib.load(open(sys.argv[1],"rb"))["project"]["dependencies"]))' "$REPO/pyproject.toml")
    # shellcheck disable=SC2086
    echo "$deps" | xargs -d '\n' "$WORK/lockvenv/bin/pip" install -q
    { sed -n '/^#/p' "$LOCK" 2>/dev/null || true
      "$WORK/lockvenv/bin/pip" freeze --exclude pip --exclude setuptools --exclude wheel; } > "$LOCK.new"
    mv -f "$LOCK.new" "$LOCK"
    rm -rf "$WORK/lockvenv"
fi
[ -s "$LOCK" ] || die "$LOCK is missing (run with --relock)"

# --- stage 1: debootstrap minbase (cached) ---
BASE_TAR=$CACHE/base-$SUITE-$ARCH.tar.zst
if [ ! -s "$BASE_TAR" ]; then
    log "stage 1: debootstrap $SUITE from $MIRROR"
    umount_under "$WORK"; rm -rf --one-file-system "$CHROOT"; mkdir -p "$CHROOT"
    debootstrap --variant=minbase --arch="$ARCH" --cache-dir="$CACHE/debootstrap" \
        "$SUITE" "$CHROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log: $WORK/debootstrap.log)"; }
    pack "$BASE_TAR"
    log "stage 1 done: $(du -h "$BASE_TAR" | cut -f1)"
else
    log "stage 1: cached $(basename "$BASE_TAR")"
fi

# --- stage 2: Debian packages + initramfs (cached by content hash) ---
PKGS=$(sed -e 's/#.*//' "$HERE/config/packages.list" | xargs)
KEY=$( { echo "$STAGE2_REV $SUITE $ARCH $MIRROR $SECURITY_MIRROR"; echo "$PKGS";
         (cd "$HERE/config/early" && find . -type f | LC_ALL=C sort | xargs sha256sum); } |
       sha256sum | cut -c1-16)
PKGS_TAR=$CACHE/pkgs-$KEY.tar.zst
if [ ! -s "$PKGS_TAR" ]; then
    log "stage 2: installing packages ($KEY)"
    fresh_chroot "$BASE_TAR"
    cp -a "$HERE/config/early/." "$CHROOT/"
    cat > "$CHROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
    printf '#!/bin/sh\nexit 101\n' > "$CHROOT/usr/sbin/policy-rc.d"; chmod 755 "$CHROOT/usr/sbin/policy-rc.d"
    cp -L /etc/resolv.conf "$CHROOT/etc/resolv.conf" 2>/dev/null || true
    # purge what debootstrap already unpacked that dpkg.cfg.d now excludes
    rm -rf "$CHROOT/usr/share/man" "$CHROOT/usr/share/info"
    find "$CHROOT/usr/share/doc" -type f ! -name copyright -delete 2>/dev/null || true
    chroot_mount
    in_chroot apt-get update -q >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log" >&2; die "apt-get update failed"; }
    # shellcheck disable=SC2086
    in_chroot apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold \
        $PKGS >>"$WORK/apt.log" 2>&1 ||
        { tail -n 40 "$WORK/apt.log" >&2; die "apt-get install failed (log: $WORK/apt.log)"; }
    in_chroot apt-get -y -q dist-upgrade >>"$WORK/apt.log" 2>&1 || true
    kver=$(ls "$CHROOT/lib/modules" | sort -V | tail -n1)
    has_live_boot() {  # (no `| grep -q` under pipefail: SIGPIPE would fail the pipeline)
        in_chroot lsinitramfs "/boot/initrd.img-$kver" > "$WORK/initrd.list" 2>/dev/null || true
        grep -q '^scripts/live$' "$WORK/initrd.list"
    }
    if ! has_live_boot; then
        log "stage 2: (re)building the initramfs with live-boot"
        in_chroot update-initramfs -c -k "$kver" >>"$WORK/apt.log" 2>&1 ||
            in_chroot update-initramfs -u -k "$kver" >>"$WORK/apt.log" 2>&1
    fi
    has_live_boot || die "the initramfs has no live-boot scripts"
    umount_under "$WORK"
    rm -f "$CHROOT/usr/sbin/policy-rc.d" "$CHROOT/etc/resolv.conf"
    rm -rf "$CHROOT/var/lib/apt/lists/"* "$CHROOT/var/cache/apt/"*.bin
    rm -f "$CACHE"/pkgs-*.tar.zst
    pack "$PKGS_TAR"
    log "stage 2 done: $(du -h "$PKGS_TAR" | cut -f1)"
else
    log "stage 2: cached $(basename "$PKGS_TAR")"
fi

# --- stage 3: the agent, our files, slimming, squashfs, ISO (always) ---
log "stage 3: unpacking the package stage"
fresh_chroot "$PKGS_TAR"
kver=$(ls "$CHROOT/lib/modules" | sort -V | tail -n1)

pyver=$(in_chroot python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
hostpyver=$($HOSTPY -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$pyver" = "$hostpyver" ] ||
    die "host python3 is $hostpyver but the image has $pyver: build on Debian $SUITE (wheels are built on the host)"
WHEELS=$CACHE/wheels-cp${pyver/./}
mkdir -p "$WHEELS"
log "stage 3: wheels for requirements.lock (+ pip $PIP_VERSION) into $(basename "$WHEELS")"
# offline first (everything cached), then from the index; pyparted is built here (libparted-dev)
if ! "$HOSTVENV/bin/pip" wheel -q --no-index --find-links "$WHEELS" -w "$WHEELS" -r "$LOCK" >/dev/null 2>&1; then
    "$HOSTVENV/bin/pip" wheel -q --find-links "$WHEELS" -w "$WHEELS" -r "$LOCK"
fi
if ! ls "$WHEELS"/pip-"$PIP_VERSION"-*.whl >/dev/null 2>&1; then
    "$HOSTVENV/bin/pip" download -q --no-deps -d "$WHEELS" "pip==$PIP_VERSION"
fi
PIPWHL=$(ls "$WHEELS"/pip-"$PIP_VERSION"-*.whl | head -n1)

log "stage 3: building the agent wheel from $REPO"
rm -rf "$WORK/src" "$WORK/agent-wheel"; mkdir -p "$WORK/src" "$WORK/agent-wheel"
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml agent \
    $(cd "$REPO" && ls -d README* LICENSE* 2>/dev/null) | tar -C "$WORK/src" -xf -
readme=$($HOSTPY -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"].get("readme",""))' "$REPO/pyproject.toml")
[ -z "$readme" ] || [ -e "$WORK/src/$readme" ] || echo "coldclone agent" > "$WORK/src/$readme"
# honour pyproject's [build-system] (isolated build); offline: the host venv's setuptools
"$HOSTVENV/bin/pip" wheel -q --no-deps -w "$WORK/agent-wheel" "$WORK/src" >/dev/null 2>"$WORK/agent-wheel.log" ||
    "$HOSTVENV/bin/pip" wheel -q --no-deps --no-build-isolation -w "$WORK/agent-wheel" "$WORK/src" >/dev/null ||
    { cat "$WORK/agent-wheel.log" >&2; die "could not build the agent wheel"; }
AGENTWHL=$(ls "$WORK/agent-wheel"/*.whl | head -n1)

log "stage 3: installing the agent venv at /opt/coldclone"
mkdir -p "$CHROOT/tmp/wheels"
cp "$WHEELS"/*.whl "$AGENTWHL" "$CHROOT/tmp/wheels/"
cp "$LOCK" "$CHROOT/tmp/requirements.lock"
chroot_mount
in_chroot python3 -m venv --without-pip /opt/coldclone
PIPRUN="/opt/coldclone/bin/python /tmp/wheels/$(basename "$PIPWHL")/pip"
in_chroot $PIPRUN install -q --no-index --no-cache-dir --disable-pip-version-check \
    --find-links /tmp/wheels -r /tmp/requirements.lock
in_chroot $PIPRUN install -q --no-index --no-cache-dir --disable-pip-version-check \
    --no-deps "/tmp/wheels/$(basename "$AGENTWHL")"
in_chroot $PIPRUN check --disable-pip-version-check >&2 || log "WARNING: pip check reports problems (above)"
# libnbd's Python bindings (python3-libnbd, built for this python3): the receiver of a local
# target writes its qcow2 through them; the venv gets those two files, not all of dist-packages
site=$(in_chroot /opt/coldclone/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
for f in "$CHROOT"/usr/lib/python3/dist-packages/nbd.py "$CHROOT"/usr/lib/python3/dist-packages/libnbdmod.cpython-*.so; do
    [ -e "$f" ] || die "python3-libnbd is missing from the image ($f)"
    ln -sf "${f#"$CHROOT"}" "$CHROOT$site/"
done
in_chroot /opt/coldclone/bin/python -c \
    'import agent, parted, pyudev, psutil, paramiko, textual, requests, zstandard, nbd, yaml' ||
    die "the agent venv does not import"
in_chroot /opt/coldclone/bin/python -m pip --version >/dev/null 2>&1 && die "pip leaked into the venv"
umount_under "$WORK"
rm -rf "$CHROOT/tmp/wheels" "$CHROOT/tmp/requirements.lock"

log "stage 3: live system configuration (livecd/rootfs/)"
cp -a --no-preserve=ownership "$HERE/rootfs/." "$CHROOT/"
mkdir -p "$CHROOT/usr/share/doc/coldclone"
[ -e "$REPO/docs/livecd.md" ] && cp "$REPO/docs/livecd.md" "$CHROOT/usr/share/doc/coldclone/"
cp "$LOCK" "$CHROOT/usr/share/doc/coldclone/requirements.lock"
mkdir -p "$CHROOT/etc/coldclone"
if [ -n "${IDENTITY:-}" ]; then
    [ -r "$IDENTITY" ] || die "IDENTITY=$IDENTITY: no such readable file"
    grep -q "PRIVATE KEY" "$IDENTITY" || die "IDENTITY=$IDENTITY does not look like a private key"
    install -m 0600 "$IDENTITY" "$CHROOT/etc/coldclone/identity"
    log "baked in the conversion-server identity (/etc/coldclone/identity)"
fi
if [ -n "${HOSTKEY:-}" ]; then
    # one pin, or a wave's servers' pins comma-separated (any one may match)
    for pin in $(printf '%s' "$HOSTKEY" | tr ',' ' '); do
        case "$pin" in SHA256:?*) ;; *) die "HOSTKEY: $pin must look like SHA256:... (ssh-keygen -lf the server's host key)";; esac
    done
    printf '%s\n' "$HOSTKEY" > "$CHROOT/etc/coldclone/hostkey"
    log "baked in the conversion server host key pin(s) $HOSTKEY"
fi
echo "LANG=C.UTF-8" > "$CHROOT/etc/default/locale"
echo "LANG=C.UTF-8" > "$CHROOT/etc/locale.conf"
: > "$CHROOT/etc/machine-id"; rm -f "$CHROOT/var/lib/dbus/machine-id"
: > "$CHROOT/etc/fstab"
in_chroot systemctl enable -q coldclone-fwcfg.service coldclone-smoke.service coldclone-headless.service
# nothing that scrubs, trims, checks or monitors the source server's disks on its own
in_chroot systemctl mask -q apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer lvm2-monitor.service mdmonitor.service \
    mdmonitor-oneshot.timer mdcheck_start.timer mdcheck_continue.timer 2>/dev/null || true
( cd "$CHROOT" && git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown ) > "$CHROOT/etc/coldclone-build"
{ echo "built=$(date -u +%FT%TZ)"; echo "kernel=$kver"; echo "suite=$SUITE"; } >> "$CHROOT/etc/coldclone-build"

log "stage 3: slimming"
rm -rf "$CHROOT/usr/share/man" "$CHROOT/usr/share/info" "$CHROOT/usr/share/lintian" \
       "$CHROOT/usr/share/linda" "$CHROOT/var/cache/debconf/"*-old "$CHROOT/var/lib/dpkg/"*-old
find "$CHROOT/usr/share/doc" -type f ! -name copyright ! -path '*/coldclone/*' -delete 2>/dev/null || true
find "$CHROOT/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
find "$CHROOT/var/log" -type f -exec truncate -s 0 {} +
rm -rf "$CHROOT/tmp/"* "$CHROOT/var/tmp/"* "$CHROOT/var/cache/apt/archives/"*.deb "$CHROOT/root/.cache"
M=$CHROOT/lib/modules/$kver/kernel
# hardware a server-capture live system never needs (storage, NIC, USB, HID stay)
rm -rf "$M/sound" "$M/drivers/media" "$M/drivers/net/wireless" "$M/net/wireless" \
       "$M/net/mac80211" "$M/drivers/bluetooth" "$M/net/bluetooth" "$M/drivers/staging" \
       "$M/drivers/gpu/drm/amd" "$M/drivers/gpu/drm/radeon" "$M/drivers/gpu/drm/nouveau" \
       "$M/drivers/gpu/drm/i915" "$M/drivers/iio" "$M/drivers/isdn" "$M/drivers/net/can" \
       "$M/net/can" "$M/drivers/nfc" "$M/net/nfc" "$M/drivers/input/joystick" \
       "$M/drivers/input/tablet" "$M/drivers/input/touchscreen" "$M/drivers/net/ieee802154" \
       "$M/net/ieee802154" "$M/drivers/infiniband/hw/hfi1" "$M/drivers/comedi"
in_chroot depmod -a "$kver"

log "stage 3: kernel + initrd"
rm -rf "$ISOTREE"; mkdir -p "$ISOTREE/live" "$ISOTREE/isolinux" "$ISOTREE/boot/grub" "$ISOTREE/EFI/boot" "$ISOTREE/.disk"
cp "$CHROOT/boot/vmlinuz-$kver" "$ISOTREE/live/vmlinuz"
cp "$CHROOT/boot/initrd.img-$kver" "$ISOTREE/live/initrd.img"
cp "$ISOTREE/live/vmlinuz" "$BUILD/vmlinuz.tmp" && mv -f "$BUILD/vmlinuz.tmp" "$BUILD/vmlinuz"
cp "$ISOTREE/live/initrd.img" "$BUILD/initrd.img.tmp" && mv -f "$BUILD/initrd.img.tmp" "$BUILD/initrd.img"
rm -f "$CHROOT/boot/"initrd.img* "$CHROOT/boot/"vmlinuz* "$CHROOT/initrd.img"* "$CHROOT/vmlinuz"*

log "stage 3: squashfs ($(du -sh --one-file-system "$CHROOT" | cut -f1) rootfs)"
rm -f "$ISOTREE/live/filesystem.squashfs"
# -e swallows every argument after it: keep it LAST
mksquashfs "$CHROOT" "$ISOTREE/live/filesystem.squashfs" -noappend -no-progress -quiet \
    $SQUASHFS_OPTS -processors "$(nproc)" \
    -wildcards -e 'proc/*' 'sys/*' 'dev/pts/*' 'run/*' 'tmp/*' 'var/cache/apt/archives/*.deb'

log "stage 3: boot loaders"
echo "coldclone live $(cat "$CHROOT/etc/coldclone-build" | head -n1) $SUITE $kver" > "$ISOTREE/.disk/info"
echo "coldclone live medium" > "$ISOTREE/.disk/coldclone-live"
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$ISOTREE/isolinux/"
sed "s|@CMDLINE@|$CMDLINE|g" "$HERE/iso/isolinux.cfg" > "$ISOTREE/isolinux/isolinux.cfg"
sed "s|@CMDLINE@|$CMDLINE|g" "$HERE/iso/grub.cfg" > "$ISOTREE/boot/grub/grub.cfg"
grub-mkstandalone -O x86_64-efi -o "$ISOTREE/EFI/boot/bootx64.efi" \
    --locales="" --themes="" --fonts="" \
    --modules="part_gpt part_msdos iso9660 fat search search_fs_file configfile normal linux echo test all_video serial terminal" \
    "boot/grub/grub.cfg=$HERE/iso/grub-embed.cfg"
efisize=$(( ( $(stat -c %s "$ISOTREE/EFI/boot/bootx64.efi") / 1024 ) + 1024 ))
rm -f "$ISOTREE/boot/grub/efiboot.img"
mkfs.vfat -C -n CCEFI "$ISOTREE/boot/grub/efiboot.img" "$efisize" >/dev/null
mmd -i "$ISOTREE/boot/grub/efiboot.img" ::/EFI ::/EFI/boot
mcopy -i "$ISOTREE/boot/grub/efiboot.img" "$ISOTREE/EFI/boot/bootx64.efi" ::/EFI/boot/bootx64.efi

log "stage 3: ISO"
xorriso -as mkisofs -quiet -iso-level 3 -full-iso9660-filenames -r -J -joliet-long \
    -volid "$VOLID" \
    -isohybrid-mbr /usr/lib/ISOLINUX/isohdpfx.bin \
    -eltorito-boot isolinux/isolinux.bin -eltorito-catalog isolinux/boot.cat \
    -no-emul-boot -boot-load-size 4 -boot-info-table \
    -eltorito-alt-boot -e boot/grub/efiboot.img -no-emul-boot -isohybrid-gpt-basdat \
    -output "$OUT_ISO.tmp" "$ISOTREE" 2>"$WORK/xorriso.log" ||
    { cat "$WORK/xorriso.log" >&2; die "xorriso failed"; }
mv -f "$OUT_ISO.tmp" "$OUT_ISO"
rm -rf --one-file-system "$CHROOT"

T1=$(date +%s)
size=$(stat -c %s "$OUT_ISO")
echo "coldclone ISO: $OUT_ISO"
echo "  size:   $(( size / 1048576 )) MiB ($size bytes); squashfs $(( $(stat -c %s "$ISOTREE/live/filesystem.squashfs") / 1048576 )) MiB, initrd $(( $(stat -c %s "$BUILD/initrd.img") / 1048576 )) MiB"
echo "  kernel: $kver ($BUILD/vmlinuz, $BUILD/initrd.img for QEMU -kernel/-initrd)"
echo "  build time: $(( T1 - T0 )) s"
