"""Inspect the OS installed on a discovered disk: find its root filesystem
(and a separate /boot), mount them read-only, and report."""

from __future__ import annotations

import logging

from ..capture.inuse import SourceInUseError
from ..discover.model import Disk, Inventory, Partition
from ...errors import CommandError, SourceError
from ...guestos.boot import firmware_from_disk
from ...guestos.fstab import disk_of_spec, parse_fstab, partition_number
from ...guestos.files import read_text
from ...guestos.model import SourceOS
from .mount import MOUNTABLE, mounted_ro
from ...guestos.tree import inspect_tree, looks_like_root

log = logging.getLogger("coldclone.inspect")


def _candidates(disk: Disk) -> list[Partition]:
    if disk.partition_table is None:
        return []
    return [p for p in disk.partition_table.partitions
            if p.filesystem and p.filesystem.type in MOUNTABLE and p.dev_path]


def _replacements(fstab_text: str, disk: Disk) -> dict[str, str]:
    """Hardware names in fstab -> UUID=... of the partition with the same number.

    Only for names on the same disk as the root entry: that is the disk we
    inspected, so partition N there is partition N here.
    """
    entries = parse_fstab(fstab_text)
    root = next((e for e in entries if e.mountpoint == "/"), None)
    root_disk = disk_of_spec(root.spec) if root else None
    parts = {p.number: p for p in (disk.partition_table.partitions
                                   if disk.partition_table else [])}
    out = {}
    for e in entries:
        if root_disk is None or disk_of_spec(e.spec) != root_disk:
            continue
        p = parts.get(partition_number(e.spec))
        if p and p.filesystem and p.filesystem.uuid:
            out[e.spec] = f"UUID={p.filesystem.uuid}"
    return out


def _boot_partition(fstab_text: str, disk: Disk, root: Partition) -> Partition | None:
    entry = next((e for e in parse_fstab(fstab_text) if e.mountpoint == "/boot"), None)
    if entry is None:
        return None
    for p in _candidates(disk):
        fs = p.filesystem
        if p is root or fs is None:
            continue
        spec = entry.spec
        if (spec.upper().startswith("UUID=") and fs.uuid == spec[5:].strip("\"'")) or (
                spec.upper().startswith("LABEL=") and fs.label == spec[6:].strip("\"'")) or (
                partition_number(spec) == p.number):
            return p
    return None


def inspect_disk(disk: Disk, inventory: Inventory | None = None) -> SourceOS | None:
    """The OS on disk, or None when no partition holds a root filesystem.

    SourceInUseError when the disk is mounted read-write or open for writing: it is not
    inspected at all (the front end shows why)."""
    disk_count = None
    if inventory is not None:
        disk_count = len(inventory.capture_set())
    for part in _candidates(disk):
        try:
            with mounted_ro(part.dev_path, part.filesystem.type) as mnt:
                if not looks_like_root(mnt):
                    continue
                fstab_text = read_text(mnt, "etc/fstab") or ""
                devices = _replacements(fstab_text, disk)
                boot = _boot_partition(fstab_text, disk, part)
                firmware = firmware_from_disk(disk)
                if boot is None:
                    return inspect_tree(mnt, devices=devices, disk_count=disk_count,
                                        disk_firmware=firmware)
                with mounted_ro(boot.dev_path, boot.filesystem.type) as boot_mnt:
                    return inspect_tree(mnt, boot_root=boot_mnt, devices=devices,
                                        disk_count=disk_count, disk_firmware=firmware)
        except SourceInUseError:
            raise   # the whole disk is in use: no other partition may be mounted either
        except (CommandError, SourceError) as e:
            # Not mountable, or cannot be made read-only: said, and the next one is tried.
            log.warning("%s: not inspected: %s", part.dev_path, e)
    return None
