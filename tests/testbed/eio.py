"""A block device with real unreadable sectors, on a host without device-mapper or NBD.

The disk is a loop device over a file on btrfs; the btrfs itself is on a loop device over an
image file. btrfs checksums every 4 KiB data block and, with a single copy of the data, answers
a block whose checksum does not match with EIO. So: write the disk's content, find where chosen
4 KiB blocks of the file sit in the btrfs image (FIEMAP gives btrfs logical addresses,
btrfs-map-logical the byte in the image), flip bytes there while unmounted, mount again: every
read of those blocks through the loop device fails with a real EIO from the kernel, every other
sector reads. A 512-byte-sector loop device then has exactly 8 unreadable sectors per block.

Other candidates on this host (kernel 6.18): a loop device over a file truncated after the
attach does give EIO past the file's new end (buffered and O_DIRECT), but only as one range to
the end of the disk, never at chosen sectors in the middle; /dev/fuse is there (fuse module
loaded) but would need a userspace filesystem process and Python bindings; no device-mapper,
no NBD, no scsi_debug.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import re
import struct
from dataclasses import dataclass

from agent.runcmd import run
from tests.testbed.loop import attach, detach, mounted_rw

BLOCK = 4096
SECTOR = 512
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_HEAD = struct.Struct("=QQLLLL")          # start, length, flags, mapped, count, reserved
FIEMAP_EXTENT = struct.Struct("=QQQQQLLLL")     # logical, physical, length, 2 reserved, flags, 3 reserved
FIEMAP_FLAG_SYNC = 1


@dataclass(frozen=True)
class BadDisk:
    dev: str                 # the loop device with the unreadable sectors
    size: int
    bad_sectors: tuple[int, ...]   # 512-byte sectors that fail with EIO, sorted
    content: bytes           # what was written (the unreadable sectors' old bytes included)

    def expected_image(self) -> bytes:
        """The content with the unreadable sectors as zeros: what a mapped capture must hold."""
        out = bytearray(self.content)
        for s in self.bad_sectors:
            out[s * SECTOR:(s + 1) * SECTOR] = bytes(SECTOR)
        return bytes(out)


def fiemap(path: str) -> list[tuple[int, int, int]]:
    """(file offset, physical offset, length) of each extent of a file (FS_IOC_FIEMAP)."""
    n = 256
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = array.array("B", FIEMAP_HEAD.pack(0, (1 << 64) - 1, FIEMAP_FLAG_SYNC, 0, n, 0)
                          + bytes(FIEMAP_EXTENT.size * n))
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
    finally:
        os.close(fd)
    mapped = FIEMAP_HEAD.unpack_from(buf, 0)[3]
    out = []
    for i in range(mapped):
        logical, physical, length, *_ = FIEMAP_EXTENT.unpack_from(buf, FIEMAP_HEAD.size + i * FIEMAP_EXTENT.size)
        out.append((logical, physical, length))
    return out


def btrfs_physical(image: str, logical: int) -> int:
    """The byte of the btrfs image holding btrfs logical address `logical` (first mirror)."""
    out = run(["btrfs-map-logical", "-l", str(logical), "-b", str(BLOCK), image]).stdout
    m = re.search(r"mirror 1 logical \d+ physical (\d+)", out)
    if not m:
        raise RuntimeError(f"btrfs-map-logical gave no mapping for {logical}: {out!r}")
    return int(m.group(1))


@contextlib.contextmanager
def bad_disk(workdir: str, content: bytes, bad_blocks: list[int]):
    """A loop device holding `content`, whose 4 KiB blocks `bad_blocks` fail with EIO."""
    assert len(content) % BLOCK == 0
    fs_img = os.path.join(workdir, "btrfs.img")
    mnt = os.path.join(workdir, "mnt")
    with open(fs_img, "wb") as f:
        f.truncate(len(content) + (160 << 20))   # btrfs's own metadata and system chunks
    run(["mkfs.btrfs", "-q", "-f", fs_img])
    fs_dev = attach(fs_img)
    src_dev = None
    try:
        disk_file = os.path.join(mnt, "disk.img")
        with mounted_rw(fs_dev, mnt, options="rw,noatime"):
            with open(disk_file, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
            extents = fiemap(disk_file)
        targets = []
        for b in bad_blocks:
            off = b * BLOCK
            ext = next(e for e in extents if e[0] <= off < e[0] + e[2])
            targets.append(btrfs_physical(fs_img, ext[1] + off - ext[0]))
        # Unmounted: flip the first bytes of each block in the image, under btrfs's checksum.
        with open(fs_img, "r+b") as f:
            for phys in targets:
                f.seek(phys)
                old = f.read(16)
                f.seek(phys)
                f.write(bytes(x ^ 0xFF for x in old))
        with mounted_rw(fs_dev, mnt, options="rw,noatime"):
            src_dev = attach(disk_file)
            try:
                bad = tuple(sorted(s for b in bad_blocks for s in range(b * 8, b * 8 + 8)))
                yield BadDisk(src_dev, len(content), bad, content)
            finally:
                detach(src_dev)
    finally:
        detach(fs_dev)
