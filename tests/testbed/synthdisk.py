"""A synthetic source server disk, made the way an installer makes one.

Partition table (GPT or MBR) written by parted; /boot ext4, swap, root ext4
made by mkfs/mkswap; the root holds real files copied from this machine, an
/etc/fstab and os-release, and the remnants of deleted files (non-zero free
space, as on any disk that has lived a while).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field

from agent.runcmd import run
from .loop import LoopDevice

MiB = 1 << 20

# Where real files are copied from, in order, until the budget is met.
FILE_SOURCES = ["/usr/share/doc", "/usr/share/locale", "/usr/lib/python3", "/usr/share",
                "/usr/lib/x86_64-linux-gnu", "/usr/lib", "/usr/bin"]


@dataclass
class SynthDisk:
    image: str
    size: int
    table: str
    files_bytes: int = 0
    remnant_bytes: int = 0
    layout: list = field(default_factory=list)


def _copy_budget(dst: str, budget: int) -> int:
    copied = 0
    for src in FILE_SOURCES:
        if not os.path.isdir(src):
            continue
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            rel = os.path.relpath(dirpath, "/")
            for fn in sorted(filenames):
                sp = os.path.join(dirpath, fn)
                try:
                    if os.path.islink(sp) or not os.path.isfile(sp):
                        continue
                    size = os.path.getsize(sp)
                except OSError:
                    continue
                if copied + size > budget:
                    continue
                dp = os.path.join(dst, rel, fn)
                if os.path.exists(dp):
                    continue
                os.makedirs(os.path.dirname(dp), exist_ok=True)
                try:
                    shutil.copyfile(sp, dp)
                except OSError:
                    continue
                copied += size
                if copied >= budget * 0.98:
                    return copied
    return copied


def _random_file(path: str, nbytes: int) -> None:
    with open(path, "wb") as f:
        left = nbytes
        while left:
            n = min(left, 4 * MiB)
            f.write(os.urandom(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())


def build(image: str, size: int = 2048 * MiB, table: str = "gpt", files_mb: int = 300,
          remnant_mb: int = 64, swap_mb: int | None = None) -> SynthDisk:
    """Write a source server disk image at `image` (sparse file). swap_mb: the swap partition's
    size (default: as /boot's)."""
    if os.path.exists(image):
        os.unlink(image)
    with open(image, "wb") as f:
        f.truncate(size)
    label = "gpt" if table == "gpt" else "msdos"
    part_mb = max(32, min(256, size // MiB // 8))  # /boot and swap, each
    boot_end = 1 + part_mb
    swap_end = boot_end + (swap_mb or part_mb)
    run(["parted", "-s", "-a", "optimal", image, "mklabel", label,
         "mkpart", "primary", "ext4", "1MiB", f"{boot_end}MiB",
         "mkpart", "primary", "linux-swap", f"{boot_end}MiB", f"{swap_end}MiB",
         "mkpart", "primary", "ext4", f"{swap_end}MiB", "100%",
         "set", "1", "boot" if label == "msdos" else "legacy_boot", "on"])
    sd = SynthDisk(image, size, label)
    with LoopDevice(image) as loop:
        p1, p2, p3 = loop.parts[:3]
        run(["mkfs.ext4", "-q", "-L", "boot", "-E", "nodiscard", p1])
        run(["mkswap", "-L", "swap", p2])
        run(["mkfs.ext4", "-q", "-L", "root", "-E", "nodiscard", p3])
        uuids = {p: run(["blkid", "-p", "-s", "UUID", "-o", "value", p]).stdout.strip() for p in (p1, p2, p3)}
        mnt = tempfile.mkdtemp(prefix="coldclone-synth-")
        try:
            run(["mount", p3, mnt])
            try:
                os.makedirs(f"{mnt}/etc", exist_ok=True)
                os.makedirs(f"{mnt}/boot", exist_ok=True)
                with open(f"{mnt}/etc/fstab", "w") as f:
                    f.write(f"# /etc/fstab of a synthetic coldclone source server\n"
                            f"UUID={uuids[p3]}  /      ext4  errors=remount-ro  0 1\n"
                            f"UUID={uuids[p1]}  /boot  ext4  defaults           0 2\n"
                            f"UUID={uuids[p2]}  none   swap  sw                 0 0\n")
                with open(f"{mnt}/etc/os-release", "w") as f:
                    f.write('PRETTY_NAME="Synthetic Linux 1.0"\nNAME="Synthetic Linux"\nID=synthetic\nVERSION_ID="1.0"\n')
                with open(f"{mnt}/etc/hostname", "w") as f:
                    f.write("synthetic-source\n")
                sd.files_bytes = _copy_budget(mnt, files_mb * MiB)
                # Deleted-file remnants: written, synced, deleted. Their blocks stay
                # non-zero on the disk, as on any server that has lived a while.
                if remnant_mb:
                    _random_file(f"{mnt}/var-tmp-remnant", remnant_mb * MiB)
                    os.unlink(f"{mnt}/var-tmp-remnant")
                    sd.remnant_bytes = remnant_mb * MiB
            finally:
                run(["umount", mnt])
            run(["mount", p1, mnt])
            try:
                _random_file(f"{mnt}/vmlinuz-synthetic", 8 * MiB)
                os.makedirs(f"{mnt}/grub", exist_ok=True)
                with open(f"{mnt}/grub/grub.cfg", "w") as f:
                    f.write(f"menuentry 'Synthetic' {{ linux /vmlinuz-synthetic root=UUID={uuids[p3]} ro }}\n")
            finally:
                run(["umount", mnt])
        finally:
            os.rmdir(mnt)
        sd.layout = [("boot", "ext4", p1), ("swap", "swap", p2), ("root", "ext4", p3)]
    return sd


@contextlib.contextmanager
def on_loop(image: str, **layout):
    """Build a server disk image and attach it: yields (LoopDevice, SynthDisk)."""
    sd = build(image, **layout)
    with LoopDevice(image) as loop:
        yield loop, sd
