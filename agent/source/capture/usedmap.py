"""mode=used: which byte ranges of a disk to read and send, and why each one.

A disk's layout (partition table, MBR extended/logical, LVM physical volumes) is walked down to
its filesystems; partclone, the field's imaging tool, names each filesystem's used blocks
(`partclone.<fs> -D` writes a ddrescue domain mapfile: `+` used, `?` free). Free blocks of a
known filesystem, swap past its header page and PV extents no LV uses are not read: the stream
sends them as ZERO records, so the image has holes there and the disk digest covers exactly what
was sent. Everything else is sent as mode=nonzero would send it: partition tables, the MBR gap,
the BIOS boot partition and the ESP (boot loaders live in "free" space), LVM labels and metadata,
and any range whose content we cannot map (unknown or damaged filesystems, md members ...),
each with a note in the manifest.

Read-only: partclone and blkid see the source through read-only loop devices (`losetup -r`) over
a disk the guard has already set read-only; the LVM metadata is parsed from the PV's bytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import tempfile
import time
from dataclasses import dataclass, field
from enum import Enum

from ..discover.probe import parse_export, read_partition_table
from ...errors import CommandError, SourceError
from ...runcmd import run
from ...units import human_bytes
from . import lvmmeta

log = logging.getLogger("coldclone.usedmap")

# blkid's TYPE -> the partclone that maps it. Each of these is verified by
# tests/integration/test_used_mode.py (fsck and file-tree comparison of the image); other
# filesystems partclone knows (exfat, hfsplus, f2fs, minix ...) fall back to nonzero until a
# test proves their maps.
PARTCLONE = {
    "ext2": "partclone.extfs",
    "ext3": "partclone.extfs",
    "ext4": "partclone.extfs",
    "xfs": "partclone.xfs",
    "btrfs": "partclone.btrfs",
    "vfat": "partclone.fat",
    "ntfs": "partclone.ntfs",
}

# The swap header (label, UUID) is the first page; 64 KiB covers 64 KiB-page systems too.
SWAP_KEEP = 64 << 10

# Partitions sent whole whatever they hold: boot code lives in their "free" blocks.
ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
BIOS_BOOT_GUID = "21686148-6449-6e6f-744e-656564454649"
BOOT_MBR_IDS = ("0xef",)


class Why(str, Enum):
    DISK = "disk"                # mode nonzero/full: the whole disk, zero blocks decided by content
    LAYOUT = "layout"            # partition tables, gaps, LVM labels: outside any filesystem (sent)
    BOOT = "boot"                # ESP, BIOS boot partition (sent whole)
    USED = "used"                # blocks a filesystem uses, per partclone (sent)
    FALLBACK = "fallback"        # content we cannot map: sent as mode=nonzero would (sent)
    FREE = "free"                # free blocks of a known filesystem (not read)
    SWAP = "swap"                # swap space past its header page (not read)
    UNALLOCATED = "unallocated"  # PV extents that no LV uses (not read)

    @property
    def sent(self) -> bool:
        return self not in (Why.FREE, Why.SWAP, Why.UNALLOCATED)


# Where ranges overlap once aligned to the stream's blocks, sending wins over skipping
# (a block that is part used is read whole), and both over the layout default.
_PRIORITY = {Why.LAYOUT: 0, Why.DISK: 0, Why.FREE: 1, Why.SWAP: 1, Why.UNALLOCATED: 1,
             Why.USED: 2, Why.BOOT: 2, Why.FALLBACK: 2}


@dataclass(frozen=True)
class Extent:
    offset: int
    length: int
    why: Why

    @property
    def sent(self) -> bool:
        return self.why.sent

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass
class AreaMap:
    """One mapped area (a partition, an LV, the bare disk): what it holds and how it was mapped."""
    name: str                 # "partition 2", "LV vg0/root", "disk"
    offset: int               # bytes from the start of the disk
    size: int
    content: str              # blkid's TYPE (ext4, swap, LVM2_member ...), or "unknown"
    tool: str | None = None   # partclone.extfs ... for mapped filesystems
    used_bytes: int | None = None      # what the map calls used (before block alignment)
    skipped_bytes: int = 0             # not read, after block alignment (set by plan_disk)
    fallback: str = ""                 # why this area is sent as nonzero, when it is
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"name": self.name, "offset": self.offset, "size": self.size, "content": self.content,
                "tool": self.tool, "used_bytes": self.used_bytes, "skipped_bytes": self.skipped_bytes,
                "fallback": self.fallback or None, "notes": self.notes}


@dataclass
class UsedMap:
    size: int
    block_size: int
    extents: list[Extent]                      # sorted, contiguous, covering the disk
    areas: list[AreaMap] = field(default_factory=list)

    @property
    def read_bytes(self) -> int:
        return sum(e.length for e in self.extents if e.sent)

    @property
    def skipped_bytes(self) -> int:
        return self.size - self.read_bytes

    def as_dict(self) -> dict:
        """For the manifest: the per-area maps and totals (the extent list itself can be long)."""
        by_why: dict[str, int] = {}
        for e in self.extents:
            by_why[e.why.value] = by_why.get(e.why.value, 0) + e.length
        return {"block_size": self.block_size, "read_bytes": self.read_bytes,
                "skipped_bytes": self.skipped_bytes, "bytes_by_reason": by_why,
                "extents": len(self.extents), "areas": [a.as_dict() for a in self.areas]}


def whole_disk(size: int) -> list[Extent]:
    """The plan of mode nonzero and full: read everything."""
    return [Extent(0, size, Why.DISK)]


# ------------------------------------------------------------------ partclone's map

def parse_domain_map(text: str) -> list[tuple[int, int, str]]:
    """(pos, size, status) rows of a ddrescue mapfile; the current-position line is left out."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) == 2:          # "current_pos current_status"
            continue
        if len(parts) < 3:
            raise SourceError(f"partclone domain map: unexpected line {line!r}")
        try:
            rows.append((int(parts[0], 0), int(parts[1], 0), parts[2]))
        except ValueError:
            raise SourceError(f"partclone domain map: unexpected line {line!r}") from None
    return rows


@contextlib.contextmanager
def range_loop(path: str, offset: int, size: int):
    """A read-only loop device showing bytes [offset, offset+size) of path."""
    dev = run(["losetup", "-r", "-f", "--show", "--offset", str(offset), "--sizelimit", str(size),
               path], timeout=60).stdout.strip()
    try:
        yield dev
    finally:
        run(["losetup", "-d", dev], check=False, quiet=True, timeout=60)
        clear_loop_read_only(dev)


def clear_loop_read_only(dev: str) -> None:
    """losetup -r's read-only flag outlives the detach until the loop number is attached again,
    so a free loop looks read-only (/sys/block/loopN/ro) to whoever checks before attaching. A
    plain attach to a scratch file of ours, then a detach, resets it; if someone took the loop
    in between, their attach already did. A detach while something still holds the device is
    deferred: wait for the loop to be free first."""
    bound = f"/sys/block/{os.path.basename(dev)}/loop/backing_file"
    for _ in range(50):
        if not os.path.exists(bound):
            break
        time.sleep(0.1)
    with tempfile.NamedTemporaryFile(prefix="coldclone-loop-") as scratch:
        scratch.truncate(4096)
        if run(["losetup", dev, scratch.name], check=False, quiet=True, timeout=60).returncode == 0:
            run(["losetup", "-d", dev], check=False, quiet=True, timeout=60)


def partclone_map(path: str, offset: int, size: int, tool: str) -> list[tuple[int, int, str]]:
    """partclone's used/free rows for the filesystem in [offset, offset+size) of path, absolute."""
    with tempfile.TemporaryDirectory(prefix="coldclone-used-") as tmp, range_loop(path, offset, size) as dev:
        mapfile = os.path.join(tmp, "domain.map")
        # -L: partclone logs to /var/log/partclone.log by default; keep the log with the map.
        # -f 0: partclone's progress thread sleeps its refresh interval (2 s by default) and
        # the map waits for it to end: 2.0 s of a 0.03 s map of the bench's root filesystem,
        # paid per filesystem. With 0 it wakes every ~0.5 ms instead: 0.2 s of system time over
        # a 7.6 s map of an empty 2 TiB ext4, the same rows.
        run([tool, "-D", "-f", "0", "--offset_domain", str(offset), "-s", dev, "-O", mapfile,
             "-L", os.path.join(tmp, "partclone.log")], timeout=3600, quiet=True)
        with open(mapfile) as f:
            rows = parse_domain_map(f.read())
    if not rows:
        raise SourceError(f"{tool} wrote an empty map")
    return rows


# ext3/4 superblock (at byte 1024): s_feature_incompat at 0x60, RECOVER = the journal holds
# transactions not yet written home. btrfs superblock (at 64 KiB): log_root at byte 96.
EXT_SB, EXT_INCOMPAT, EXT_RECOVER = 1024, 0x60, 0x4
BTRFS_SB, BTRFS_LOG_ROOT = 64 << 10, 96


def pending_log(path: str, fd: int, offset: int, size: int, fstype: str) -> str:
    """Why the filesystem's own bitmaps cannot be trusted yet ("" when they can).

    A journal or log that still has to be replayed (a server that crashed or lost power) may
    point at blocks its on-disk bitmaps still call free: skipping those would lose the data
    the replay on the target writes home.
    """
    if fstype in ("ext3", "ext4"):
        (incompat,) = struct.unpack("<I", os.pread(fd, 4, offset + EXT_SB + EXT_INCOMPAT))
        return "its journal needs recovery" if incompat & EXT_RECOVER else ""
    if fstype == "btrfs":
        (log_root,) = struct.unpack("<Q", os.pread(fd, 8, offset + BTRFS_SB + BTRFS_LOG_ROOT))
        return "its log tree is not replayed" if log_root else ""
    if fstype == "xfs":
        with range_loop(path, offset, size) as dev:
            res = run(["xfs_logprint", "-t", dev], check=False, timeout=600, quiet=True)
        # xfs_logprint prints the log's state as "state: <CLEAN>" or "state: <DIRTY>".
        if res.returncode != 0 or "state: <CLEAN>" not in res.stdout:
            return "its log is dirty (or unreadable)"
    return ""


def blkid_type(path: str, offset: int, size: int) -> dict[str, str]:
    res = run(["blkid", "-p", "-o", "export", "--offset", str(offset), "--size", str(size), path],
              check=False, timeout=60, quiet=True)
    if res.returncode not in (0, 2):     # 2: nothing recognised
        raise CommandError(res.argv, res.returncode, res.stderr.strip())
    return parse_export(res.stdout)


# ------------------------------------------------------------------ walking the layout

Interval = tuple[int, int, Why]   # [start, end) in disk bytes


def _map_area(path: str, fd: int, area: AreaMap, out: list[Interval], areas: list[AreaMap],
              depth: int = 0) -> None:
    """Fill `out` with the labelled intervals of one area (partition, LV, bare disk)."""
    areas.append(area)
    start, end = area.offset, area.offset + area.size

    def fall_back(reason: str) -> None:
        area.fallback = reason
        out.append((start, end, Why.FALLBACK))

    try:
        info = blkid_type(path, start, area.size)
    except (CommandError, OSError) as e:
        return fall_back(f"blkid failed: {e}")
    fstype = info.get("TYPE", "")
    area.content = fstype or "unknown"
    if fstype in PARTCLONE:
        area.tool = PARTCLONE[fstype]
        try:
            pending = pending_log(path, fd, start, area.size, fstype)
        except (CommandError, OSError, struct.error) as e:
            pending = f"its journal state is unreadable ({e})"
        if pending:
            return fall_back(f"{fstype}: {pending}; sent as nonzero (its free-space bitmaps may "
                             f"not yet show blocks the replay writes)")
        try:
            rows = partclone_map(path, start, area.size, area.tool)
        except (CommandError, SourceError, OSError) as e:
            return fall_back(f"{area.tool} could not map it (damaged?): {e}")
        used = 0
        for pos, length, status in rows:
            lo, hi = max(pos, start), min(pos + length, end)
            if lo >= hi:
                continue
            if status == "+":
                used += hi - lo
                out.append((lo, hi, Why.USED))
            elif status == "?":
                out.append((lo, hi, Why.FREE))
            # any other status (bad areas): left to the layout default, i.e. sent
        area.used_bytes = used
        return
    if fstype == "swap":
        area.used_bytes = min(SWAP_KEEP, area.size)
        out.append((start, start + area.used_bytes, Why.USED))
        out.append((start + area.used_bytes, end, Why.SWAP))
        return
    if fstype == "LVM2_member" and depth == 0:
        try:
            pv = lvmmeta.read_pv(fd, start)
        except (SourceError, OSError) as e:
            return fall_back(f"LVM metadata unreadable: {e}")
        area.notes.append(f"LVM PV of VG {pv.vg}: {pv.pe_count} extents of {human_bytes(pv.extent_size)}")
        data_end = min(end, start + pv.extent_offset(pv.pe_count))
        for first, count in pv.free_extents():
            lo = start + pv.extent_offset(first)
            out.append((lo, min(lo + count * pv.extent_size, data_end), Why.UNALLOCATED))
        for lv in pv.lvs:
            name = f"LV {pv.vg}/{lv.name}"
            if not lv.segments:
                continue
            if lv.whole_here and len(lv.segments) == 1:
                seg = lv.segments[0]
                lo = start + pv.extent_offset(seg.pe_first)
                _map_area(path, fd, AreaMap(name, lo, seg.pe_count * pv.extent_size, "unknown"),
                          out, areas, depth + 1)
                continue
            why = ("; ".join(lv.other) if lv.other else
                   f"in {len(lv.segments)} pieces on the PV (mapping it needs it assembled)")
            for seg in lv.segments:
                lo = start + pv.extent_offset(seg.pe_first)
                sub = AreaMap(name, lo, seg.pe_count * pv.extent_size, "unknown",
                              fallback=f"LV {why}: sent as nonzero")
                areas.append(sub)
                out.append((lo, lo + sub.size, Why.FALLBACK))
        return
    if fstype == "linux_raid_member":
        return fall_back("md RAID member: sent as nonzero (md layouts are not mapped)")
    if fstype == "swsuspend":
        return fall_back("swap holding a hibernation image: sent as nonzero")
    return fall_back(f"{'filesystem ' + fstype if fstype else 'no filesystem recognised'}: "
                     f"no used-block map, sent as nonzero")


def _is_boot(part) -> bool:
    tid = (part.type_id or "").lower()
    return (tid in (ESP_GUID, BIOS_BOOT_GUID) or tid in BOOT_MBR_IDS
            or "esp" in part.flags or "bios_grub" in part.flags)


def paint(size: int, block_size: int, intervals: list[Interval]) -> list[Extent]:
    """The disk cut into block-aligned extents from labelled byte intervals.

    Skipped intervals shrink to whole blocks inside them, sent ones grow to whole blocks
    around them; where they meet, sending wins; what no interval covers is LAYOUT (sent).
    """
    events: list[tuple[int, int, Why]] = []
    for lo, hi, why in intervals:
        if why.sent:
            lo, hi = lo - lo % block_size, min(size, -(-hi // block_size) * block_size)
        else:
            lo = -(-lo // block_size) * block_size
            hi = hi if hi >= size else hi - hi % block_size
        lo, hi = max(0, lo), min(size, hi)
        if lo < hi:
            events += [(lo, 1, why), (hi, -1, why)]
    events.sort(key=lambda e: e[0])
    active: dict[Why, int] = {}
    out: list[Extent] = []
    pos, i = 0, 0
    while pos < size:
        while i < len(events) and events[i][0] <= pos:
            _, d, why = events[i]
            active[why] = active.get(why, 0) + d
            i += 1
        nxt = events[i][0] if i < len(events) else size
        live = [w for w, n in active.items() if n > 0]
        why = max(live, key=_PRIORITY.__getitem__) if live else Why.LAYOUT
        if out and out[-1].why == why:
            out[-1] = Extent(out[-1].offset, nxt - out[-1].offset, why)
        else:
            out.append(Extent(pos, nxt - pos, why))
        pos = nxt
    return out


# Maps kept for reuse inside maps_reused(); None outside it (every call maps afresh).
_reused: dict | None = None


@contextlib.contextmanager
def maps_reused():
    """Within one capture job, the map the estimate built serves the capture too.

    Profiled on the bench workload, mode=used mapped each disk twice (estimate, then capture):
    2 s of partclone each time. Inside one job the source is cold (its OS is stopped, the guard
    holds it read-only) and the two uses are seconds apart, so the second map would be the
    same; outside this scope (tests that rewrite a disk between captures, the TUI's separate
    steps) every call maps afresh. Keyed by path, size, block size and the device number."""
    global _reused
    prev, _reused = _reused, {}
    try:
        yield
    finally:
        _reused = prev


def maps_are_reused() -> bool:
    """Inside maps_reused(): a map built now (by the estimate) is the capture's map too."""
    return _reused is not None


def plan_disk(path: str, size: int, block_size: int) -> UsedMap:
    """The used-mode plan of one source disk (opened read-only); reused inside maps_reused()."""
    if _reused is None:
        return _plan_disk(path, size, block_size)
    try:
        rdev = os.stat(path).st_rdev
    except OSError:
        rdev = None
    key = (path, size, block_size, rdev)
    umap = _reused.get(key)
    if umap is None:
        umap = _reused[key] = _plan_disk(path, size, block_size)
    else:
        log.info("used map of %s: the one built for the estimate", path)
    return umap


def _plan_disk(path: str, size: int, block_size: int) -> UsedMap:
    try:
        table = read_partition_table(path)
    except Exception as e:   # a damaged label: map the disk as a whole, which falls back
        log.warning("partition table of %s unreadable: %s", path, e)
        table = None
    intervals: list[Interval] = []
    areas: list[AreaMap] = []
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if table is None:
            _map_area(path, fd, AreaMap("disk", 0, size, "unknown"), intervals, areas)
        else:
            for part in table.partitions:
                if part.type == "extended":
                    continue  # a container: its EBRs are layout, its logical partitions come next
                name = f"partition {part.number}"
                if _is_boot(part):
                    areas.append(AreaMap(name, part.start, part.size, "boot",
                                         notes=["ESP / BIOS boot partition: sent whole"]))
                    intervals.append((part.start, part.start + part.size, Why.BOOT))
                    continue
                _map_area(path, fd, AreaMap(name, part.start, part.size, "unknown"), intervals, areas)
    finally:
        os.close(fd)
    extents = paint(size, block_size, intervals)
    for a in areas:
        a.skipped_bytes = sum(max(0, min(e.end, a.offset + a.size) - max(e.offset, a.offset))
                              for e in extents if not e.sent)
    umap = UsedMap(size, block_size, extents, areas)
    log.info("used map of %s: read %d of %d bytes in %d extents", path, umap.read_bytes, size, len(extents))
    return umap
