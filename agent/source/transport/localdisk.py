"""A local USB or e-SATA disk as the capture target, chosen by the operator.

    candidates(inventory, sources)       disks that may receive images (never a source, never the
                                         live medium, never a disk the running system uses)
    prepare(dev, format_confirm=...)     mount its filesystem (format it first only when the operator
                                         confirmed by naming the device), return where images go

The capture then goes to open_target("file://" + prepared.path): the same
receiver as over SSH runs on this machine, so the qcow2/raw output, the
manifest and the digests are identical.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from ...devnames import partitions_of
from ..discover.model import Inventory, Why
from ..discover.probe import Probes
from ...errors import CommandError, UsageError
from ...runcmd import run
from ...units import human_bytes
from .mountpoint import make_mountpoint, mounted_at, unmount

log = logging.getLogger("coldclone.localdisk")

FORMATS = ("ext4", "xfs")
# Filesystems we write images onto as they are. FAT cannot hold a file over 4 GiB.
WRITABLE_FS = ("ext4", "ext3", "ext2", "xfs", "btrfs")
IMAGES_DIR = "coldclone"


@dataclass
class TargetDisk:
    name: str
    dev_path: str
    size: int
    model: str
    link: str                      # "USB 3.0", "SATA 6.0 Gbps", ""
    filesystems: list = field(default_factory=list)   # (device, fstype, label)
    usable: str | None = None      # a device holding a filesystem we can write to, if any

    def describe(self) -> str:
        fs = ", ".join(f"{d} {t}{' ' + repr(lbl) if lbl else ''}" for d, t, lbl in self.filesystems) or "no filesystem"
        return f"{self.dev_path}: {human_bytes(self.size)} {self.model} via {self.link or 'unknown link'} ({fs})"


def _filesystems(disk) -> list[tuple[str, str, str | None]]:
    out = []
    if disk.filesystem is not None and disk.dev_path:
        out.append((disk.dev_path, disk.filesystem.type, disk.filesystem.label))
    if disk.partition_table is not None:
        for p in disk.partition_table.partitions:
            if p.filesystem is not None and p.dev_path:
                out.append((p.dev_path, p.filesystem.type, p.filesystem.label))
    return out


def candidates(inventory, sources: list[str] | None = None) -> list[TargetDisk]:
    """Disks the operator may pick as the target: removable, USB or SATA-attached whole disks.

    Never one of `sources` (default: the disks discovery offers for capture), never the
    live medium or a disk the live system runs from. A disk the operator already mounted
    read-write (say at /mnt/target) stays a candidate: that is what a target looks like.
    """
    if sources is None:
        sources = [d.dev_path or d.name for d in inventory.capture_set()]
    src = {os.path.realpath(s) for s in sources if s.startswith("/")} | set(sources)
    out = []
    for d in inventory.disks:
        if d.kind != "disk" or not d.dev_path or d.read_only or d.size <= 0:
            continue
        if d.name == inventory.live_medium or (d.exclude_code and d.exclude_code.part_of_live_system()):
            continue
        if d.dev_path in src or d.name in src or os.path.realpath(d.dev_path) in src:
            continue
        link = d.link.kind if d.link else ""
        if not (d.removable or d.transport == "usb" or link in ("usb", "sata")):
            continue
        fss = _filesystems(d)
        usable = next((dev for dev, t, _ in fss if t in WRITABLE_FS), None)
        out.append(TargetDisk(d.name, d.dev_path, d.size, " ".join(filter(None, [d.vendor, d.model])),
                              d.link.label if d.link else "", fss, usable))
    return out


@dataclass
class PreparedTarget:
    device: str            # the filesystem's device
    mountpoint: str
    path: str              # where the receiver writes: <mountpoint>/coldclone
    formatted: bool
    _unmount: Callable[[], None] | None = None

    @property
    def url(self) -> str:
        return "file://" + self.path

    def close(self) -> None:
        if self._unmount:
            self._unmount()
            self._unmount = None

    def __enter__(self) -> "PreparedTarget":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _partition_node(dev: str, number: int = 1) -> str:
    sep = "p" if dev[-1].isdigit() else ""
    return f"{dev}{sep}{number}"


def format_disk(dev: str, fstype: str, label: str = "coldclone") -> str:
    """GPT with one partition over the whole disk, and a filesystem on it; return the partition."""
    if fstype not in FORMATS:
        raise UsageError(f"filesystem {fstype!r}: choose ext4 or xfs")
    run(["wipefs", "-a", dev], check=False)
    run(["parted", "-s", "-a", "optimal", dev, "mklabel", "gpt", "mkpart", label, fstype, "1MiB", "100%"])
    # The kernel may not re-read the table itself (a disk in use elsewhere, loop devices): tell it.
    run(["partx", "-u", dev], check=False, quiet=True)
    run(["partx", "-a", dev], check=False, quiet=True)
    part = _partition_node(dev)
    for _ in range(50):
        if os.path.exists(part):
            break
        time.sleep(0.1)
    else:
        raise UsageError(f"formatted {dev} but its partition {part} did not appear; unplug and replug the disk")
    if fstype == "ext4":
        # No lazy init: the first capture must not race the background inode table zeroing.
        run(["mkfs.ext4", "-q", "-F", "-L", label, "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", part])
    else:
        run(["mkfs.xfs", "-q", "-f", "-L", label, part])
    return part


def prepare(dev: str, *, format_confirm: str | None = None, fstype: str = "ext4",
            inventory: Inventory | None = None, sources: list[str] = ()) -> PreparedTarget:
    """Make `dev` (a whole disk) ready to receive images; return where they go.

    Formatting destroys what the disk holds, so it happens only when the operator
    confirmed it by passing the device's own name as `format_confirm` (the TUI asks
    them to type it). Without it, an
    existing ext4/xfs/btrfs filesystem on the disk is mounted (or used where it is
    already mounted) and nothing on it is touched but the `coldclone/` directory.
    """
    if not os.path.exists(dev):
        raise UsageError(f"target disk {dev} does not exist; pick one from `coldclone discover`")
    real = os.path.realpath(dev)
    if any(os.path.realpath(s) == real for s in sources):
        raise UsageError(f"target disk {dev} is also a source disk: the images cannot go onto a disk being captured")
    if inventory is not None:
        d = inventory.resolve(dev) or inventory.resolve(real)
        if d is not None and (d.name == inventory.live_medium or d.exclude_code == Why.LIVE_MEDIUM):
            raise UsageError(f"target disk {dev} is the live medium this system booted from; pick another disk")
    formatted = False
    if format_confirm is not None:
        if os.path.realpath(format_confirm) != real:
            raise UsageError(f"formatting {dev} needs its own name as confirmation (got {format_confirm!r}); "
                             f"everything on {dev} will be erased")
        busy = [p for p in [dev] + partitions_of(dev) if mounted_at(p)]
        if busy:
            raise UsageError(f"will not format {dev}: {', '.join(busy)} is mounted (at {mounted_at(busy[0])}); "
                             f"unmount it first")
        part = format_disk(dev, fstype)
        formatted = True
    else:
        part = _find_filesystem(dev)
    where = mounted_at(part)
    undo = None      # only a mount made here is undone by close()
    if where is None:
        where = make_mountpoint("target-")
        try:
            run(["mount", "-o", "rw,noatime", part, where])
        except CommandError:
            os.rmdir(where)
            raise

        def undo(where=where) -> None:
            unmount(where, f"the target disk {dev}")
    path = os.path.join(where, IMAGES_DIR)
    os.makedirs(path, exist_ok=True)
    log.info("target disk %s: images go to %s%s", dev, path, " (formatted)" if formatted else "")
    return PreparedTarget(part, where, path, formatted, undo)


def _find_filesystem(dev: str) -> str:
    found = []
    for cand in partitions_of(dev) + [dev]:
        t = (Probes().blkid(cand) or {}).get("TYPE")
        if t:
            found.append((cand, t))
            if t in WRITABLE_FS:
                return cand
    if found:
        kinds = ", ".join(f"{d} {t}" for d, t in found)
        hint = " (FAT cannot hold an image over 4 GiB)" if any(t in ("vfat", "exfat") for _, t in found) else ""
        raise UsageError(f"target disk {dev} has no filesystem coldclone writes to ({kinds}){hint}; "
                         f"format it (ext4 or xfs), confirming with the device name {dev}")
    raise UsageError(f"target disk {dev} holds no filesystem; format it (ext4 or xfs), confirming "
                     f"with the device name {dev}")
