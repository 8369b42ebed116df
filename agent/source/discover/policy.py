"""Which disks are offered for capture by default, and why the others are not.

Never a source: the medium the live system booted from, the target of a
local capture, optical drives, empty removable drives, zero-size devices,
loop / RAM / device-mapper devices (loop only unless include_loop: on a test
host loop devices are the sources), multipath maps (the LUN is one Disk,
captured through one of its paths; see populate.Populator.group_paths), md
arrays themselves (their member disks are captured instead), and disks the
running system has mounted read-write.
"""

from __future__ import annotations

from .model import Disk, Inventory, RaidArray, RaidMember, Why
from .mounts import Mount, live_medium_source, mount_of


def resolve_disk(spec: str, inv: Inventory, mounts: list[Mount]) -> Disk | None:
    """Inventory.resolve, plus a directory on a disk (the mount point of a target USB disk)."""
    disk = inv.resolve(spec)
    if disk is None and spec.startswith("/") and not spec.startswith("/dev/"):
        m = mount_of(spec, mounts)
        if m is not None:
            return inv.resolve(m.source)
    return disk


def member_note(arr: RaidArray, m: RaidMember) -> str:
    """The note a member disk of an md array carries (the TUI says it in its own words)."""
    role = f"slot {m.slot}" if m.slot is not None else (m.state or "spare")
    return f"member of {arr.name} ({arr.level}, {role}, via {m.device})"


def apply_policy(inv: Inventory, snapshot: dict, mounts: list[Mount], *,
                 include_loop: bool = False, target: str | None = None,
                 boot_device: str | None = None, resolve_paths: bool = False,
                 only: list[str] | None = None, allow_mounted: bool = False) -> None:
    """allow_mounted: the operator's override (coldclone.allow_mounted): a disk mounted
    read-write stays offered; the capture records the override in its manifest."""
    # resolve_paths: the inventory is the running machine's, its /dev links may be followed.
    inv.live = inv.live or resolve_paths
    # Most specific reasons first: Disk.exclude keeps the first one given.
    live_spec = boot_device or live_medium_source(mounts)
    if live_spec:
        live = resolve_disk(live_spec, inv, mounts)
        inv.live_medium = live.name if live else None
        if live:
            live.exclude(Why.LIVE_MEDIUM, "the live system booted from it")
    if target:
        t = resolve_disk(target, inv, mounts)
        if t is None:
            inv.warnings.append(f"capture target {target} is not a known disk")
        else:
            t.exclude(Why.CAPTURE_TARGET, "capture target")

    live_dirs = [m.target for m in mounts if m.source == live_spec] if live_spec else []
    for m in mounts:
        if not m.source.startswith("/dev/"):
            continue
        disk = inv.resolve(m.source)
        if disk is None:
            continue
        if not m.read_only:
            if not allow_mounted:
                disk.exclude(Why.MOUNTED_RW, f"mounted read-write by the running system ({m.target})")
        elif disk.kind in ("loop", "dm"):
            # The live system's own squashfs loop / overlay: never a source.
            disk.exclude(Why.LIVE_SYSTEM, f"part of the running live system (mounted at {m.target})")
    for d in inv.disks:
        if d.kind == "loop" and d.backing_file and any(
                d.backing_file.startswith(t.rstrip("/") + "/") for t in live_dirs):
            d.exclude(Why.LIVE_SYSTEM, "part of the running live system (image on the live medium)")

    for d in inv.disks:
        if d.kind == "cdrom":
            d.exclude(Why.OPTICAL, "optical drive")
        elif d.kind == "floppy":
            d.exclude(Why.FLOPPY, "floppy drive")
        elif d.kind == "ram":
            d.exclude(Why.RAM, "RAM disk")
        elif d.kind == "multipath":
            mp = next((m for m in inv.multipaths if m.map is d), None)
            d.exclude(Why.MULTIPATH_MAP, f"multipath map; captured through path {mp.disk.name}"
                      if mp else "multipath map; its paths are captured")
        elif d.kind == "dm":
            d.exclude(Why.DEVICE_MAPPER, "device-mapper device; the disks under it are captured")
        elif d.kind == "md":
            arr = next((a for a in inv.raid_arrays if a.name == d.name), None)
            disks = sorted({m.disk.name for m in arr.members if m.disk}) if arr else []
            d.exclude(Why.MD_ARRAY, "software RAID array; its member disks are captured"
                      + (f" ({', '.join(disks)})" if disks else ""))
        elif d.kind == "loop" and not include_loop:
            d.exclude(Why.LOOP, "loop device (use --include-loop to offer it)")
        if d.size == 0:
            d.exclude(*((Why.NO_MEDIUM, "removable drive with no medium") if d.removable
                        else (Why.ZERO_SIZE, "zero-size device")))

    if only:
        # The operator's choice (disks=sda,md127 / --disks): md arrays stand for
        # their member disks, everything else not named is left out.
        chosen = set()
        for spec in only:
            disk = resolve_disk(spec, inv, mounts)
            if disk is None:
                inv.unknown_selected.append(spec)
                inv.warnings.append(f"selected disk {spec} is not a known disk")
                continue
            arr = next((a for a in inv.raid_arrays if a.name == disk.name), None)
            chosen.update(m.disk.name for m in arr.members if m.disk) if arr else chosen.add(disk.name)
        for d in inv.disks:
            if d.name not in chosen:
                d.exclude(Why.NOT_SELECTED, "not among the selected disks")

    for arr in inv.raid_arrays:
        for m in arr.members:
            if m.disk is not None:
                m.disk.notes.append(member_note(arr, m))
