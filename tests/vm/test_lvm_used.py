"""mode=used on a source whose root filesystem lives on an LVM logical volume, in the live ISO.

The host kernel here has no device-mapper, so the source is made where lvm2 really runs: in the
guest, by a pre hook, on a blank virtio disk (MBR: /boot ext4, then an LVM PV with VG ccsyn and
LV root, ext4, holding a copy of real trees of the live system and a deleted random file; old
random bytes left where the VG allocates nothing). The hook deactivates the VG, then the same
boot captures the disk headless in mode=used to the host's sshd. The ISO's lvmlocal.conf
activates nothing by itself, so the VG stays inactive while the agent reads the PV.

On the host, without device-mapper, the LV is found in the image's own bytes: the PV's metadata
(agent/source/capture/lvmmeta.py) gives the LV's extents, and a read-only loop device with --offset and
--sizelimit shows them as a block device for e2fsck and a read-only mount.

A second test makes the source a bootable Debian 12 on LVM and boots the captured image
(see the section "the stretch" below). Both sources are made and captured in one boot of the ISO
(one pre hook, `coldclone.disks=vda,vdb`): a boot of the ISO under TCG is the expensive part.

Run: pytest -m vm tests/vm/test_lvm_used.py -s   (boot, hook and capture times are printed)
"""
from __future__ import annotations

import os

import pytest

from agent.source.capture import lvmmeta
from agent.source.capture.usedmap import Why, plan_disk, range_loop
from agent.runcmd import run
from tests.testbed import guestdisk, useddisk
from tests.testbed.loop import LoopDevice

from . import guest, vmboot
from .conftest import TIMEOUT, Capture, _capture_boot, _skip_unless_ready

pytestmark = [pytest.mark.vm, pytest.mark.root]

MiB = 1 << 20
SERIAL = "cc-lvm"
DISK_MB = 512
SYN_VG, LV = "ccsyn", "root"  # the synthetic source's VG (the bootable one's is VG, below)
ROOT_MB = 320            # LV root: PV extents 0..79; the VG leaves the rest of the PV unallocated
OLD_DATA_AT_MB = 448     # random bytes at the disk's last 64 MiB: inside the unallocated extents
OLD_DATA_MB = 64
DELETED_MB = 48          # written into the LV's filesystem, then deleted: free blocks, not sent

# Runs in the guest before discovery. The trees copied are real files of the live system
# (about 28 MB: python3.11's library, /etc, /usr/share/doc), not synthetic ones.
SYN_HOOK = f"""
d=/dev/disk/by-id/virtio-{SERIAL}
for i in $(seq 1 50); do [ -e "$d" ] && break; sleep 0.2; done
dd if=/dev/urandom of="$d" bs=1M seek={OLD_DATA_AT_MB} count={OLD_DATA_MB} conv=fsync status=none
parted -s "$d" mklabel msdos mkpart primary ext4 1MiB 65MiB mkpart primary 65MiB 100% set 2 lvm on
udevadm settle
for i in $(seq 1 50); do [ -e "$d-part2" ] && break; sleep 0.2; done
mkfs.ext4 -q -L ccboot -E nodiscard "$d-part1"
mkdir -p /run/cc-boot /run/cc-root
mount "$d-part1" /run/cc-boot
cp -a /boot/. /etc/os-release /etc/hostname /run/cc-boot/
umount /run/cc-boot
# The ISO's lvmlocal.conf forbids metadata writes (metadata_read_only, for the source's sake);
# this hook builds the test's own source, so it lifts that for its own commands only.
echo "cc-lvm: metadata_read_only: $(lvmconfig --type current global/metadata_read_only 2>&1 || true)"
rw="--config global{{metadata_read_only=0}}"
pvcreate $rw -y "$d-part2"
vgcreate $rw -y {SYN_VG} "$d-part2"
lvcreate $rw -y -Wn --activate y -L {ROOT_MB}M -n {LV} {SYN_VG}
udevadm settle
mkfs.ext4 -q -L ccroot -E nodiscard /dev/mapper/{SYN_VG}-{LV}
mount /dev/mapper/{SYN_VG}-{LV} /run/cc-root
mkdir -p /run/cc-root/usr/lib /run/cc-root/usr/share
cp -a /etc /run/cc-root/
cp -a /usr/lib/python3.11 /run/cc-root/usr/lib/
cp -a /usr/share/doc /run/cc-root/usr/share/
head -c {DELETED_MB}M /dev/urandom > /run/cc-root/deleted.bin
sync
rm /run/cc-root/deleted.bin
umount /run/cc-root
vgchange $rw -an {SYN_VG}
sync
pvs -o pv_name,vg_name,pe_start,pv_pe_count
lvs -o lv_name,seg_pe_ranges {SYN_VG}
echo "cc-lvm: source ready"
"""


def _area(disk: dict, name: str) -> dict:
    areas = disk["agent"]["used_map"]["areas"]
    found = [a for a in areas if a["name"] == name]
    assert found, f"no area {name!r} in the manifest: {[a['name'] for a in areas]}"
    return found[0]


def _lv_range(image: str, pv_offset: int, lv_name: str) -> tuple[int, int]:
    """(offset in the disk image, size) of a linear one-segment LV, from the metadata of the PV
    that starts at byte pv_offset of the image (no loop partitions: their scan can lag)."""
    fd = os.open(image, os.O_RDONLY)
    try:
        pv = lvmmeta.read_pv(fd, pv_offset)
    finally:
        os.close(fd)
    (lv,) = [v for v in pv.lvs if v.name == lv_name]
    assert lv.whole_here and len(lv.segments) == 1, f"LV {lv_name} is not one linear segment: {lv}"
    seg = lv.segments[0]
    return pv_offset + pv.extent_offset(seg.pe_first), seg.pe_count * pv.extent_size


def headless_succeeded(cap, ready_line: str):
    """The boot ended in time, the pre hook built the source (its line), the capture succeeded."""
    run_, con = cap.run, cap.run.console
    assert not run_.boot.timed_out, f"no result within {TIMEOUT:.0f} s:\n{run_.explain()}"
    assert ready_line in con.text, f"the pre hook did not finish:\n{run_.explain()}"
    assert con.ok, f"the headless run did not succeed:\n{run_.explain()}"
    return run_


def test_boot_kernel_append(lvm_capture):
    """QEMU -kernel/-initrd/-append, the path the tests use to pass any kernel command line:
    proven by the LVM capture's own boot."""
    print("\n  " + guest.assert_boot_path(lvm_capture.run, "kernel"))


def test_lvm_root_captured_in_used_mode(lvm_capture, tmp_path):
    cap = lvm_capture
    run_ = headless_succeeded(cap, "cc-lvm: source ready")
    assert run_.boot.exited and run_.boot.exit_code == 0, run_.explain()
    src = cap.disks[SERIAL].image
    m = cap.manifest()
    assert m["status"] == "complete"
    disk = guest.manifest_disk(m, cap.guest_name(SERIAL))
    assert disk["mode"] == "used"
    assert disk["format"] == "qcow2" and disk["verified"]["qemu_img_check"]
    assert disk["size"] == DISK_MB * MiB

    # The LVM mapping was used: the PV is read through its metadata (no nonzero fallback), the
    # root LV through partclone's map, the unallocated extents (old random data) not at all.
    pva = _area(disk, "partition 2")
    assert pva["content"] == "LVM2_member" and not pva["fallback"], pva
    assert any(f"VG {SYN_VG}" in n for n in pva["notes"]), pva
    root = _area(disk, f"LV {SYN_VG}/{LV}")
    assert root["content"] == "ext4" and root["tool"] == "partclone.extfs" and not root["fallback"], root
    assert 0 < root["used_bytes"] < root["size"] == ROOT_MB * MiB, root
    assert root["skipped_bytes"] > DELETED_MB * MiB, root          # the deleted file stayed home
    umap_m = disk["agent"]["used_map"]
    assert umap_m["bytes_by_reason"].get(Why.UNALLOCATED.value, 0) >= OLD_DATA_MB * MiB, umap_m
    assert disk["agent"]["bytes_read"] < (DISK_MB - OLD_DATA_MB - DELETED_MB) * MiB, disk["agent"]

    qcow2 = os.path.join(cap.cap_dir, disk["image"])
    raw = useddisk.to_raw(qcow2, str(tmp_path))
    with LoopDevice(src, read_only=True) as sloop:
        # The host's agent maps the source as the guest's did (same skipped bytes), and every
        # extent it sends equals the source while every skipped one is a hole in the image.
        umap = plan_disk(sloop.dev, disk["size"], umap_m["block_size"])
        assert umap.skipped_bytes == disk["agent"]["skipped_bytes"], (umap.as_dict(), umap_m)
        assert any(e.why == Why.UNALLOCATED for e in umap.extents), umap.extents
        useddisk.assert_extents(sloop.dev, raw, umap)

    # The filesystems by byte ranges of the image files (read-only range loops), where the
    # manifest's areas put the partitions and the PV's metadata puts the LV.
    boot = _area(disk, "partition 1")
    off, size = _lv_range(raw, pva["offset"], LV)
    assert (off, size) == _lv_range(src, pva["offset"], LV)     # the metadata came along unchanged
    assert (off, size) == (root["offset"], root["size"])
    with range_loop(raw, off, size) as iroot, range_loop(src, off, size) as sroot:
        run(useddisk.CHECK["ext4"] + [iroot])               # e2fsck -fn: clean, exit 0
        with useddisk.file_tree(sroot, "ext4") as a, useddisk.file_tree(iroot, "ext4") as b:
            ta, tb = useddisk.tree_digest(a), useddisk.tree_digest(b)
    # /boot is not an LV: it must come whole and clean too
    with range_loop(raw, boot["offset"], boot["size"]) as iboot, \
            range_loop(src, boot["offset"], boot["size"]) as sboot:
        run(useddisk.CHECK["ext4"] + [iboot])
        with useddisk.file_tree(sboot, "ext4") as a, useddisk.file_tree(iboot, "ext4") as b:
            ba, bb = useddisk.tree_digest(a), useddisk.tree_digest(b)
    assert len(ta) > 1000 and ta == tb, f"{len(ta)} entries in the source's LV, {len(tb)} in the image's"
    assert ba and ba == bb
    print(f"\n{run_.times()}\n  {disk['name']}: {DISK_MB} MiB, read {disk['agent']['bytes_read'] >> 20} MiB, "
          f"skipped {disk['agent']['skipped_bytes'] >> 20} MiB (unallocated "
          f"{umap_m['bytes_by_reason'].get(Why.UNALLOCATED.value, 0) >> 20} MiB, LV free "
          f"{root['skipped_bytes'] >> 20} MiB); LV root {len(ta)} entries equal, e2fsck clean")


# ---------------------------------------------------------------- the stretch: it boots
# A real Debian 12 with root on LV ccvm/root: tests/testbed/debian_disk.sh (lvm) builds on the
# host the disk (MBR, GRUB, /boot with an initramfs carrying lvm2's hook, partition 2 typed LVM
# but empty) and the root filesystem as a separate image; the guest's pre hook, with lvm2, makes
# the PV, VG and LV and copies the root filesystem into the LV. Then the same boot captures
# the disk in mode=used, and the host boots the captured qcow2 to its login prompt.
DEB_CACHE = os.environ.get("COLDCLONE_CONVERT_CACHE", "/var/tmp/coldclone-convert")
BASE = os.path.join(vmboot.BUILD, "cache", "base-bookworm-amd64.tar.zst")
BOOT_SERIAL, ROOTFS_SERIAL = "cc-lvmboot", "cc-rootfs"

VG = "ccvm"      # root=/dev/mapper/ccvm-root in the disk debian_disk.sh (lvm) builds
BOOT_HOOK = f"""
d=/dev/disk/by-id/virtio-{BOOT_SERIAL} r=/dev/disk/by-id/virtio-{ROOTFS_SERIAL}
for i in $(seq 1 50); do [ -e "$d-part2" ] && [ -e "$r" ] && break; sleep 0.2; done
rw="--config global{{metadata_read_only=0}}"
pvcreate $rw -y "$d-part2"
vgcreate $rw -y {VG} "$d-part2"
lvcreate $rw -y -Wn --activate y -L 1536M -n {LV} {VG}
udevadm settle
dd if="$r" of=/dev/mapper/{VG}-{LV} bs=4M conv=fsync status=none
vgchange $rw -an {VG}
sync
echo "cc-lvm: bootable source ready"
"""


@pytest.fixture(scope="module")
def lvm_capture(vm_workdir, vm_server) -> Capture:
    """The kernel boot path (the fastest under TCG), one boot for both sources: the pre hook
    builds the synthetic LVM source and the bootable one, the headless run captures both in
    mode=used."""
    _skip_unless_ready("kernel")
    if not os.path.isfile(BASE):
        pytest.skip(f"{BASE} missing: build the live ISO once (make iso) for its debootstrap cache")
    cached = guestdisk.debian_disk(BASE, DEB_CACHE, "bios", "lvm")
    src = os.path.join(vm_workdir, "lvm-boot-src.img")
    run(["cp", "--sparse=always", cached, src])           # the guest writes the LVM into the copy
    disks = [guest.SourceDisk(src, BOOT_SERIAL),
             guest.blank_disk(os.path.join(vm_workdir, "lvm-src.img"), serial=SERIAL, size_mb=DISK_MB),
             guest.SourceDisk(cached + ".rootfs", ROOTFS_SERIAL)]   # only read by the hook
    hook = os.path.join(vm_workdir, "lvm-pre.sh")
    with open(hook, "w") as f:
        f.write("#!/bin/sh\nset -eu\n" + SYN_HOOK + BOOT_HOOK)
    fw, pre = guest.fwcfg_file("pre", hook)
    # disks=vda,vdb: the two sources (virtio disks in the order given); the root filesystem
    # image is not captured
    return _capture_boot("kernel", "vm-lvm-used", disks, vm_server,
                         extra_cmdline=f"coldclone.pre={pre} coldclone.mode=used coldclone.disks=vda,vdb",
                         extra_args=fw)


def test_lvm_root_captured_in_used_mode_boots(lvm_capture, tmp_path):
    """Debian 12 on LV ccvm/root, captured in mode=used: the image boots to its login prompt."""
    from tests.testbed.bootlogin import boot_to_login
    cap = lvm_capture
    run_ = headless_succeeded(cap, "cc-lvm: bootable source ready")
    m = cap.manifest()
    assert m["status"] == "complete"
    names = sorted(d["name"] for d in m["disks"])
    assert names == sorted([cap.guest_name(BOOT_SERIAL), cap.guest_name(SERIAL)])
    disk = guest.manifest_disk(m, cap.guest_name(BOOT_SERIAL))
    assert disk["mode"] == "used"
    assert not _area(disk, "partition 2")["fallback"]
    root = _area(disk, f"LV {VG}/{LV}")
    assert root["tool"] == "partclone.extfs" and not root["fallback"] and root["skipped_bytes"] > 0, root
    qcow2 = os.path.join(cap.cap_dir, disk["image"])
    # root= and fstab name only /dev/mapper/ccvm-root: a login prompt means the image's own
    # initramfs found the PV, activated the LV and mounted it (else it stops in its shell).
    seconds = boot_to_login(qcow2, str(tmp_path / "serial.log"), timeout=600)
    print(f"\n{run_.times()}\n  {disk['name']}: read {disk['agent']['bytes_read'] >> 20} MiB, skipped "
          f"{disk['agent']['skipped_bytes'] >> 20} MiB; the captured image booted to login: in {seconds:.0f} s")
