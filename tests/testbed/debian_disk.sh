#!/bin/sh
# A small but real bootable Debian disk, as a physical server's disk looks to coldclone-convert:
# BIOS/MBR, / (ext4) and swap named /dev/sda1 and /dev/sda2 in fstab and on the kernel's root=,
# a 70-persistent-net.rules pinning eth0 to a MAC, ifupdown DHCP on eth0. Used to measure a whole
# virt-v2v run (slow under TCG: not in the default test run).
#
# usage: debian_disk.sh OUT.raw BASE_TARBALL   (BASE_TARBALL: a debootstrap minbase .tar.zst,
#        e.g. livecd/build/cache/base-bookworm-amd64.tar.zst). Run as root. Cached: an existing
#        OUT.raw is kept.
set -eu
out=$1; base=$2
[ -s "$out" ] && { echo "cached: $out"; exit 0; }
work=$(mktemp -d /var/tmp/debdisk.XXXXXX)
mnt=$work/mnt; mkdir -p "$mnt"
tmp=$out.tmp
truncate -s 2G "$tmp"
parted -s "$tmp" mklabel msdos mkpart primary ext4 1MiB 1800MiB mkpart primary linux-swap 1800MiB 100% set 1 boot on
loop=$(losetup --show -f "$tmp")
# The host kernel may not scan loop partitions itself (as tests/testbed/loop.py does).
partx -u "$loop" 2>/dev/null || true; partx -a "$loop" 2>/dev/null || true
cleanup() {
    for m in dev/pts dev proc sys ""; do umount "$mnt/$m" 2>/dev/null || true; done
    losetup -d "$loop" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkfs.ext4 -q "${loop}p1"
mkswap -q "${loop}p2"
mount "${loop}p1" "$mnt"
zstd -dc "$base" | tar -C "$mnt" -xpf -
for m in dev dev/pts proc sys; do mount --bind "/$m" "$mnt/$m"; done
cp /etc/resolv.conf "$mnt/etc/resolv.conf"
in_chroot() { chroot "$mnt" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive "$@"; }
in_chroot apt-get update -qq
in_chroot apt-get install -y -qq --no-install-recommends linux-image-amd64 grub-pc systemd-sysv \
    ifupdown isc-dhcp-client udev >/dev/null
cat > "$mnt/etc/fstab" <<EOF
# /etc/fstab as the installer of a physical server wrote it, by SATA names
/dev/sda1  /     ext4  errors=remount-ro  0 1
/dev/sda2  none  swap  sw                 0 0
EOF
mkdir -p "$mnt/etc/udev/rules.d" "$mnt/etc/network"
cat > "$mnt/etc/udev/rules.d/70-persistent-net.rules" <<'EOF'
# PCI device 0x8086:0x10d3 (e1000e)
SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="52:54:00:12:34:99", ATTR{type}=="1", KERNEL=="eth*", NAME="eth0"
EOF
printf 'auto lo\niface lo inet loopback\nauto eth0\niface eth0 inet dhcp\n' > "$mnt/etc/network/interfaces"
echo coldclone-debian > "$mnt/etc/hostname"
echo 'GRUB_CMDLINE_LINUX="console=ttyS0 net.ifnames=0"' >> "$mnt/etc/default/grub"
echo 'GRUB_DISABLE_LINUX_UUID=true' >> "$mnt/etc/default/grub"
echo 'GRUB_TERMINAL=serial' >> "$mnt/etc/default/grub"
in_chroot grub-install --target=i386-pc "$loop" >/dev/null 2>&1
in_chroot update-grub >/dev/null 2>&1
# grub-mkconfig saw the loop device; a real server's config names its SATA disk.
sed -i "s#root=${loop}p1#root=/dev/sda1#g" "$mnt/boot/grub/grub.cfg"
grep -q 'root=/dev/sda1' "$mnt/boot/grub/grub.cfg"
in_chroot apt-get clean
rm -f "$mnt/etc/resolv.conf"
sync
cleanup
trap - EXIT
mv "$tmp" "$out"
echo "built: $out"
