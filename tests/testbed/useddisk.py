"""Source disks for mode=used: one filesystem each, with files and deleted random data in its
free space, inside a real partition table (GPT, or MBR with the filesystem in a logical
partition), beside a BIOS boot partition, a swap partition holding old pages and a partition
of bytes no tool recognises. And the read-only ways to look at a filesystem's file tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass

from agent.runcmd import run
from .loop import LoopDevice
from .synthdisk import _copy_budget, _random_file

MiB = 1 << 20

MKFS = {
    "ext2": ["mkfs.ext2", "-q", "-F", "-E", "nodiscard"],
    "ext3": ["mkfs.ext3", "-q", "-F", "-E", "nodiscard"],
    "ext4": ["mkfs.ext4", "-q", "-F", "-E", "nodiscard"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-K"],
    "btrfs": ["mkfs.btrfs", "-q", "-f", "--nodiscard"],
    "vfat": ["mkfs.vfat", "-F", "32"],
    "ntfs": ["mkntfs", "-q", "-F", "-Q"],
}
# Read-only mounts that replay nothing (the house rule for sources).
# ext2 has no journal to skip; xfs refuses a second mount of the same UUID (the image's) without nouuid.
RO_OPTS = {"ext2": "ro", "ext3": "ro,noload", "ext4": "ro,noload", "xfs": "ro,norecovery,nouuid",
           "btrfs": "ro,rescue=nologreplay"}
CHECK = {
    "ext2": ["e2fsck", "-fn"], "ext3": ["e2fsck", "-fn"], "ext4": ["e2fsck", "-fn"],
    "xfs": ["xfs_repair", "-n"], "btrfs": ["btrfs", "check", "--readonly"],
    "vfat": ["fsck.vfat", "-n"], "ntfs": ["ntfsfix", "-n"],
}
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


@dataclass
class UsedDisk:
    image: str
    size: int
    table: str
    fs: str
    fs_part: int           # partition number holding the filesystem
    swap_part: int
    unknown_part: int
    boot_part: int | None  # BIOS boot partition (GPT)
    files_bytes: int = 0
    deleted_bytes: int = 0


def build(image: str, fs: str, table: str, size: int = 320 * MiB, files_mb: int = 24,
          deleted_mb: int = 64) -> UsedDisk:
    if os.path.exists(image):
        os.unlink(image)
    with open(image, "wb") as f:
        f.truncate(size)
    if table == "gpt":
        run(["parted", "-s", image, "mklabel", "gpt",
             "mkpart", "bios", "1MiB", "2MiB", "set", "1", "bios_grub", "on",
             "mkpart", "swap", "linux-swap", "2MiB", "34MiB",
             "mkpart", "junk", "34MiB", "42MiB",
             "mkpart", "data", "42MiB", "100%"])
        d = UsedDisk(image, size, table, fs, fs_part=4, swap_part=2, unknown_part=3, boot_part=1)
    else:
        run(["parted", "-s", image, "mklabel", "msdos",
             "mkpart", "primary", "linux-swap", "1MiB", "33MiB",
             "mkpart", "extended", "33MiB", "100%",
             "mkpart", "logical", "34MiB", "42MiB",
             "mkpart", "logical", "43MiB", "100%"])
        d = UsedDisk(image, size, table, fs, fs_part=6, swap_part=1, unknown_part=5, boot_part=None)
    with LoopDevice(image) as loop:
        part = {int(p.rsplit("p", 1)[1]): p for p in loop.parts}
        if d.boot_part:
            _random_file(part[d.boot_part], 1 * MiB)           # a boot loader's core image
        run(["mkswap", "-L", "swap", part[d.swap_part]])
        with open(part[d.swap_part], "r+b") as f:               # pages swapped out long ago
            f.seek(1 * MiB)
            f.write(os.urandom(8 * MiB))
        _random_file(part[d.unknown_part], 8 * MiB)             # nothing blkid knows
        dev = part[d.fs_part]
        run(MKFS[fs] + [dev])
        d.files_bytes, d.deleted_bytes = populate(dev, fs, files_mb, deleted_mb)
    return d


def populate(dev: str, fs: str, files_mb: int, deleted_mb: int) -> tuple[int, int]:
    """Real files, then `deleted_mb` of random data written, synced and deleted."""
    if fs == "vfat":
        return _populate_vfat(dev, files_mb, deleted_mb)
    mnt = tempfile.mkdtemp(prefix="coldclone-used-")
    try:
        if fs == "ntfs":
            run(["ntfs-3g", dev, mnt])
        else:
            run(["mount", dev, mnt])
        try:
            if fs != "ntfs":
                os.symlink("usr/share/doc", os.path.join(mnt, "doc-link"))
            copied = _copy_budget(mnt, files_mb * MiB)
            _random_file(os.path.join(mnt, "deleted"), deleted_mb * MiB)
            os.sync()
            os.unlink(os.path.join(mnt, "deleted"))
        finally:
            run(["umount", mnt])
    finally:
        os.rmdir(mnt)
    return copied, deleted_mb * MiB


def _populate_vfat(dev: str, files_mb: int, deleted_mb: int) -> tuple[int, int]:
    # No vfat in this kernel: mtools writes the filesystem itself.
    stage = tempfile.mkdtemp(prefix="coldclone-used-")
    try:
        copied = _copy_budget(stage, files_mb * MiB)
        run(["mcopy", "-s", "-m", "-i", dev, os.path.join(stage, "usr"), "::/"], env=MTOOLS_ENV)
        _random_file(os.path.join(stage, "deleted"), deleted_mb * MiB)
        run(["mcopy", "-i", dev, os.path.join(stage, "deleted"), "::/deleted"], env=MTOOLS_ENV)
        run(["mdel", "-i", dev, "::/deleted"], env=MTOOLS_ENV)
    finally:
        shutil.rmtree(stage)
    return copied, deleted_mb * MiB


@contextlib.contextmanager
def read_only(dev: str):
    """The block device set read-only for the duration. Afterwards our own flag (BLKROSET) is
    always cleared: it outlives a detach, and a loop attached with -r reports read-only through
    its driver flag anyway, so clearing ours never makes a read-only attach writable."""
    run(["blockdev", "--setro", dev])
    try:
        yield dev
    finally:
        run(["blockdev", "--setrw", dev])


def to_raw(qcow2: str, directory: str) -> str:
    """The received qcow2 as a raw image in directory (offsets then match the source's)."""
    raw = os.path.join(directory, os.path.basename(qcow2) + ".raw")
    run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow2, raw])
    return raw


def assert_extents(src_dev: str, raw: str, umap) -> None:
    """Sent extents equal the source, byte for byte; skipped ones are zeros (holes) in the image.
    umap: the agent's UsedMap of the source (agent.source.capture.usedmap.plan_disk)."""
    with open(src_dev, "rb") as s, open(raw, "rb") as i:
        for e in umap.extents:
            off = e.offset
            while off < e.end:
                n = min(4 * MiB, e.end - off)
                got = os.pread(i.fileno(), n, off)
                if e.sent:
                    assert got == os.pread(s.fileno(), n, off), f"{e} differs at {off}"
                else:
                    assert got == bytes(n), f"skipped {e} not a hole at {off}"
                off += n


@contextlib.contextmanager
def file_tree(dev: str, fs: str):
    """A directory showing the filesystem on dev, read-only (dev is set read-only first)."""
    with read_only(dev):
        tmp = tempfile.mkdtemp(prefix="coldclone-tree-")
        try:
            if fs == "vfat":
                run(["mcopy", "-s", "-m", "-n", "-i", dev, "::/", tmp + "/"], env=MTOOLS_ENV)
                yield tmp
            elif fs == "ntfs":
                run(["ntfs-3g", "-o", "ro", dev, tmp])
                try:
                    yield tmp
                finally:
                    run(["umount", tmp])
            else:
                run(["mount", "-o", RO_OPTS[fs], dev, tmp])
                try:
                    yield tmp
                finally:
                    run(["umount", tmp])
        finally:
            shutil.rmtree(tmp) if fs == "vfat" else os.rmdir(tmp)


def tree_digest(root: str, extracted: bool = False) -> dict[str, tuple]:
    """Every entry under root: kind, mode, owner, size, mtime and content digest or link target.

    extracted: root is a copy made by mcopy (vfat), whose directories are new: their own
    metadata is the copy's, so only their names count."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for b in iter(lambda: f.read(1 << 20), b""):
                        h.update(b)
                what = h.hexdigest()
            else:
                what = ""
            if extracted and stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
                continue
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        st.st_size if not stat.S_ISDIR(st.st_mode) else 0, st.st_mtime_ns, what)
    return out


# ------------------------------------------------------------------ LVM

LVM_CONFIG = "backup { backup = 0 archive = 0 } devices { obtain_device_list_from_udev = 0 }"
EXTENT = 4 * MiB


@dataclass
class LvmDisk:
    image: str
    size: int
    pv_part: int               # partition number of the PV
    pe_start: int              # bytes from the PV's start to extent 0
    lvs: dict                  # name -> [(first PE, count), ...] in LV order
    gap: tuple[int, int]       # (first PE, count) left unallocated, holding stale random data
    files_bytes: int = 0
    deleted_bytes: int = 0

    def lv_range(self, name: str) -> tuple[int, int]:
        """(offset in the PV, size) of a one-segment LV."""
        ((first, count),) = self.lvs[name]
        return self.pe_start + first * EXTENT, count * EXTENT


def _lvm(argv: list[str], pv: str) -> str:
    return run(argv + ["--devices", pv, "--config", LVM_CONFIG],
               env={**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}).stdout


def _lv_text(name: str, segs: list[tuple[int, int]]) -> str:
    body, le = [], 0
    for i, (first, count) in enumerate(segs, 1):
        body.append(f'segment{i} {{ start_extent = {le} extent_count = {count} type = "striped" '
                    f'stripe_count = 1 stripes = [ "pv0", {first} ] }}')
        le += count
    uid = hashlib.sha256(name.encode()).hexdigest()[:32]
    uid = "-".join([uid[:6], uid[6:10], uid[10:14], uid[14:18], uid[18:22], uid[22:26], uid[26:32]])
    return (f'{name} {{ id = "{uid}" status = ["READ", "WRITE", "VISIBLE"] flags = [] '
            f'segment_count = {len(segs)} ' + " ".join(body) + " }")


@contextlib.contextmanager
def writable_range(dev: str, offset: int, size: int):
    loop = run(["losetup", "-f", "--show", "--offset", str(offset), "--sizelimit", str(size), dev]).stdout.strip()
    try:
        yield loop
    finally:
        run(["losetup", "-d", loop], check=False)


def build_lvm(image: str, size: int = 448 * MiB, files_mb: int = 24, deleted_mb: int = 64) -> LvmDisk:
    """GPT: BIOS boot, /boot ext4, an LVM PV (VG ccvg) with root (ext4, one segment), swap and
    var (two segments: needs assembling, so it falls back) and an unallocated gap of old data.

    There is no device-mapper here: the LVs are written into the VG metadata with vgcfgrestore
    (real lvm2 writes its own format) and their filesystems made through loop devices over
    their extents.
    """
    if os.path.exists(image):
        os.unlink(image)
    with open(image, "wb") as f:
        f.truncate(size)
    run(["parted", "-s", image, "mklabel", "gpt",
         "mkpart", "bios", "1MiB", "2MiB", "set", "1", "bios_grub", "on",
         "mkpart", "boot", "ext4", "2MiB", "66MiB",
         "mkpart", "lvm", "66MiB", "100%", "set", "3", "lvm", "on"])
    lvs = {"root": [(4, 80)], "swap": [(84, 4)], "var": [(88, 2), (91, 2)]}
    d = LvmDisk(image, size, pv_part=3, pe_start=0, lvs=lvs, gap=(0, 4))
    with LoopDevice(image) as loop:
        part = {int(p.rsplit("p", 1)[1]): p for p in loop.parts}
        _random_file(part[1], 1 * MiB)
        run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", part[2]])
        pv = part[3]
        _lvm(["pvcreate", "-ff", "-y", "--dataalignment", "1m", pv], pv)
        _lvm(["vgcreate", "-s", "4m", "ccvg", pv], pv)
        with tempfile.TemporaryDirectory() as tmp:
            meta = os.path.join(tmp, "vg")
            _lvm(["vgcfgbackup", "-f", meta, "ccvg"], pv)
            text = open(meta).read()
            cut = text.rindex("}")
            lv_text = "logical_volumes { " + " ".join(_lv_text(n, s) for n, s in lvs.items()) + " }\n"
            with open(meta, "w") as f:
                f.write(text[:cut] + lv_text + text[cut:])
            _lvm(["vgcfgrestore", "-f", meta, "ccvg"], pv)
        d.pe_start = int(_lvm(["pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pe_start", pv],
                              pv).split()[0])
        # Stale data in the gap (an LV removed long ago).
        with open(pv, "r+b") as f:
            f.seek(d.pe_start + d.gap[0] * EXTENT)
            f.write(os.urandom(d.gap[1] * EXTENT))
        off, ln = d.lv_range("root")
        with writable_range(pv, off, ln) as root:
            run(MKFS["ext4"] + [root])
            d.files_bytes, d.deleted_bytes = populate(root, "ext4", files_mb, deleted_mb)
        off, ln = d.lv_range("swap")
        with writable_range(pv, off, ln) as swap:
            run(["mkswap", "-L", "lvswap", swap])
        for first, count in lvs["var"]:
            with open(pv, "r+b") as f:
                f.seek(d.pe_start + first * EXTENT)
                f.write(os.urandom(count * EXTENT))
    return d
