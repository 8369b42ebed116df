"""Reading facts from the devices themselves (blkid, pyparted, mdadm).

These are the fallbacks for what a full udev database would have told us,
and the only source of partition tables with exact geometry. Everything here
only reads: blkid -p opens O_RDONLY; pyparted never commits and its
exception handler never answers "Fix" (which would rewrite a GPT).

Unit tests on recorded machines use NoProbes: the devices do not exist here.
"""

from __future__ import annotations

import logging
import os
import uuid as uuidlib

from ...errors import CommandError
from ...runcmd import run
from .model import Filesystem, Partition, PartitionTable
from .rules import decode_udev_enc

log = logging.getLogger("coldclone.discover")

# MBR partition ids that make a partition an extended one (a container).
MSDOS_EXTENDED_IDS = (0x05, 0x0F, 0x85)


def parse_export(text: str) -> dict[str, str]:
    """KEY=value lines, as `blkid -o export` and `mdadm --export` print them."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def filesystem_from(values: dict[str, str], prefix: str = "") -> Filesystem | None:
    """A Filesystem from blkid keys (prefix "") or udev keys (prefix "ID_FS_")."""
    fstype = values.get(prefix + "TYPE")
    if not fstype:
        return None
    label = values.get(prefix + "LABEL")
    if prefix and values.get(prefix + "LABEL_ENC"):
        label = decode_udev_enc(values[prefix + "LABEL_ENC"])
    return Filesystem(type=fstype, label=label or None, uuid=values.get(prefix + "UUID") or None)


class NoProbes:
    """Probes for recorded machines: nothing can be opened, every answer is 'unknown'."""

    def blkid(self, dev_path: str) -> dict[str, str] | None:
        return None

    def partition_table(self, dev_path: str) -> PartitionTable | None:
        return None

    def mdadm_detail(self, dev_path: str) -> dict[str, str] | None:
        return None


class Probes(NoProbes):
    """Probes for the running machine."""

    def blkid(self, dev_path: str) -> dict[str, str] | None:
        if not os.path.exists(dev_path):
            return None
        # -p: probe the device itself, never blkid's cache (stale after a dd).
        res = run(["blkid", "-p", "-o", "export", dev_path], check=False, timeout=30,
                  quiet=True)
        if res.returncode not in (0, 2):   # 2: nothing recognised, a fine answer
            log.warning("blkid %s: exit %d: %s", dev_path, res.returncode, res.stderr.strip())
            return None
        return parse_export(res.stdout)

    def partition_table(self, dev_path: str) -> PartitionTable | None:
        if not os.path.exists(dev_path):
            return None
        try:
            return read_partition_table(dev_path)
        except Exception as e:  # a damaged label must not stop discovery
            log.warning("partition table of %s unreadable: %s", dev_path, e)
            return None

    def mdadm_detail(self, dev_path: str) -> dict[str, str] | None:
        try:
            res = run(["mdadm", "--detail", "--export", dev_path], check=False, timeout=30)
        except CommandError as e:   # mdadm not installed: sysfs had to be enough
            log.info("%s", e)
            return None
        return parse_export(res.stdout) if res.returncode == 0 else None


# libparted's option bits (PedExceptionOption); pyparted exports only some.
_FIX, _YES, _NO, _OK, _RETRY, _IGNORE, _CANCEL = 1, 2, 4, 8, 16, 32, 64


def _never_fix(exc_type, options, message):
    import _ped

    # libparted asks before "fixing" things (a GPT backup header not at the
    # end of a grown disk). Fixing writes; on a source disk we only ignore
    # warnings, and give up on errors: "Ignore" after a read error (a device
    # detached mid-scan) lets libparted go on with a buffer it never filled.
    log.info("libparted: %s", str(message).strip())
    if exc_type in (_ped.EXCEPTION_TYPE_INFORMATION, _ped.EXCEPTION_TYPE_WARNING):
        if options & _IGNORE:
            return _ped.EXCEPTION_RESOLVE_IGNORE
        if options & _NO:
            return _ped.EXCEPTION_RESOLVE_NO
        if options & _OK:
            return _ped.EXCEPTION_RESOLVE_OK
    if options & _CANCEL:
        return _ped.EXCEPTION_RESOLVE_CANCEL
    if options & _NO:
        return _ped.EXCEPTION_RESOLVE_NO
    return _ped.EXCEPTION_RESOLVE_UNHANDLED


def _type_id(part, table_type: str) -> str | None:
    try:
        if table_type == "gpt":
            raw = part.type_uuid
            return str(uuidlib.UUID(bytes=bytes(raw))) if raw else None
        if table_type == "msdos":
            return f"0x{part.type_id:x}"   # as blkid and udev print it
    except Exception:   # older libparted without type ids
        return None
    return None


def read_partition_table(dev_path: str) -> PartitionTable | None:
    import _ped
    import parted

    _ped.register_exn_handler(_never_fix)
    device = None
    try:
        device = parted.getDevice(dev_path)
        try:
            disk = parted.newDisk(device)
        except (parted.DiskLabelException, parted.DiskException, _ped.DiskLabelException,
                _ped.IOException):
            return None          # no label: a whole-disk filesystem, or empty
        if disk.type == "loop":
            return None          # parted's "loop" label means "no table, bare filesystem"
        sector = device.sectorSize
        parts = []
        for p in disk.partitions:
            if p.type & parted.PARTITION_EXTENDED:
                ptype = "extended"
            elif p.type & parted.PARTITION_LOGICAL:
                ptype = "logical"
            else:
                ptype = "primary"
            flags = [f.strip() for f in p.getFlagsAsString().split(",") if f.strip()]
            name = p.name if disk.supportsFeature(parted.DISK_TYPE_PARTITION_NAME) else None
            parts.append(Partition(
                number=p.number,
                dev_path=p.path,
                start=p.geometry.start * sector,
                size=p.geometry.length * sector,
                type=ptype,
                type_id=_type_id(p, disk.type),
                flags=flags,
                name=name or None,
            ))
        parts.sort(key=lambda q: q.number)
        return PartitionTable(type=disk.type, partitions=parts, source="parted")
    finally:
        # libparted keeps every device it opened, size included, for the process's lifetime:
        # the same path read again after the device changed size (a loop device reused, a LUN
        # grown, a disk swapped) would read a GPT backup header past the stale end and crash.
        if device is not None:
            device.removeFromCache()
        _ped.clear_exn_handler()
