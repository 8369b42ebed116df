"""Inspect the OS installed on a discovered disk: find its root filesystem
(and a separate /boot), mount them read-only, and report."""

from __future__ import annotations

import contextlib
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


def _mounted_partition(fstab_text: str, disk: Disk, root: Partition, mountpoint: str) -> Partition | None:
    """The partition of this disk the OS mounts at `mountpoint` (/boot, /boot/efi)."""
    entry = next((e for e in parse_fstab(fstab_text) if e.mountpoint == mountpoint), None)
    if entry is None:
        return None
    for p in _candidates(disk):
        fs = p.filesystem
        if p is root or fs is None:
            continue
        spec = entry.spec
        if (spec.upper().startswith("UUID=") and (fs.uuid or "").lower() == spec[5:].strip("\"'").lower()) or (
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
                firmware = firmware_from_disk(disk)
                with contextlib.ExitStack() as stack:
                    # /boot and the EFI system partition, each read-only like the root
                    extra = {}
                    for mp in ("/boot", "/boot/efi"):
                        p = _mounted_partition(fstab_text, disk, part, mp)
                        if p is None:
                            continue
                        try:
                            extra[mp] = stack.enter_context(mounted_ro(p.dev_path, p.filesystem.type))
                        except (CommandError, SourceError) as e:
                            log.warning("%s (%s): not inspected: %s", p.dev_path, mp, e)
                    return inspect_tree(mnt, boot_root=extra.get("/boot"), esp_root=extra.get("/boot/efi"),
                                        devices=devices, disk_count=disk_count, disk_firmware=firmware)
        except SourceInUseError:
            raise   # the whole disk is in use: no other partition may be mounted either
        except (CommandError, SourceError) as e:
            # Not mountable, or cannot be made read-only: said, and the next one is tried.
            log.warning("%s: not inspected: %s", part.dev_path, e)
    return None
