"""Which disks are offered for capture by default, and why the others are not.

Never a source: the medium the live system booted from, the target of a
local capture, optical drives, empty removable drives, zero-size devices,
loop / RAM / device-mapper devices (loop only unless include_loop: on a test
host loop devices are the sources), extra paths of a multipath LUN, md
arrays themselves (their member disks are captured instead), and disks the
running system has mounted read-write.
"""

from __future__ import annotations

import os

from . import rules
from .model import Inventory
from .mounts import Mount, live_medium_source, mount_of


def _device_index(inv: Inventory, snapshot: dict) -> dict[str, str]:
    """Every name a device may be given by (node, link, kernel name) -> disk name."""
    index: dict[str, str] = {}
    for d in inv.disks:
        for n in [d.dev_path, d.name, d.kernel_name, "/dev/" + d.name, *d.by_id, *d.by_path]:
            if n:
                index[n] = d.name
        for p in (d.partition_table.partitions if d.partition_table else []):
            if p.dev_path:
                index.setdefault(p.dev_path, d.name)
    # Partitions the table does not list (or no table read): sysfs nesting.
    by_sys = {d.sys_path: d.name for d in inv.disks if d.sys_path}
    for info in snapshot.get("block", []):
        if rules.is_partition(info):
            disk = by_sys.get(os.path.dirname(info.get("sys_path", "")))
            if disk:
                for n in [rules.dev_path(info), info.get("sys_name"), *rules.devlinks(info)]:
                    if n:
                        index.setdefault(n, disk)
    return index


def resolve_disk(spec: str, inv: Inventory, snapshot: dict, mounts: list[Mount],
                 resolve_paths: bool = False) -> str | None:
    """A device path, link, kernel name or a directory on it -> the disk's name."""
    index = _device_index(inv, snapshot)
    candidates = [spec]
    if not spec.startswith("/"):
        candidates.append("/dev/" + spec)
    if resolve_paths and spec.startswith("/") and os.path.exists(spec):
        candidates.append(os.path.realpath(spec))
    for c in candidates:
        if c in index:
            return index[c]
    if spec.startswith("/") and not spec.startswith("/dev/"):
        # A directory (the mount point of a target USB disk): its mount's device.
        m = mount_of(spec, mounts)
        if m is not None:
            return resolve_disk(m.source, inv, snapshot, [], resolve_paths)
    return None


def apply_policy(inv: Inventory, snapshot: dict, mounts: list[Mount], *,
                 include_loop: bool = False, target: str | None = None,
                 boot_device: str | None = None, resolve_paths: bool = False,
                 only: list[str] | None = None, allow_mounted: bool = False) -> None:
    """allow_mounted: the operator's override (coldclone.allow_mounted): a disk mounted
    read-write stays offered; the capture records the override in its manifest."""
    # Most specific reasons first: Disk.exclude keeps the first one given.
    live_spec = boot_device or live_medium_source(mounts)
    if live_spec:
        live = resolve_disk(live_spec, inv, snapshot, mounts, resolve_paths)
        inv.live_medium = live
        if live and inv.disk(live):
            inv.disk(live).exclude("the live system booted from it")
    if target:
        t = resolve_disk(target, inv, snapshot, mounts, resolve_paths)
        if t is None:
            inv.warnings.append(f"capture target {target} is not a known disk")
        elif inv.disk(t):
            inv.disk(t).exclude("capture target")

    live_dirs = [m.target for m in mounts if m.source == live_spec] if live_spec else []
    for m in mounts:
        if not m.source.startswith("/dev/"):
            continue
        name = resolve_disk(m.source, inv, snapshot, [], resolve_paths)
        disk = inv.disk(name) if name else None
        if disk is None:
            continue
        if not m.read_only:
            if not allow_mounted:
                disk.exclude(f"mounted read-write by the running system ({m.target})")
        elif disk.kind in ("loop", "dm"):
            # The live system's own squashfs loop / overlay: never a source.
            disk.exclude(f"part of the running live system (mounted at {m.target})")
    for d in inv.disks:
        backing = next((n[len("backing file "):] for n in d.notes
                        if n.startswith("backing file ")), None)
        if d.kind == "loop" and backing and any(
                backing.startswith(t.rstrip("/") + "/") for t in live_dirs):
            d.exclude("part of the running live system (image on the live medium)")

    mpath_taken = {}
    for mp in inv.multipaths:
        for p in mp.paths:
            mpath_taken[p] = mp

    for d in inv.disks:
        if d.kind == "cdrom":
            d.exclude("optical drive")
        elif d.kind == "floppy":
            d.exclude("floppy drive")
        elif d.kind == "ram":
            d.exclude("RAM disk")
        elif d.kind == "multipath":
            mp = next((m for m in inv.multipaths if m.map_name == d.name), None)
            d.exclude(f"multipath map; captured through path {mp.chosen}" if mp and mp.chosen
                      else "multipath map; its paths are captured")
        elif d.kind == "dm":
            d.exclude("device-mapper device; the disks under it are captured")
        elif d.kind == "md":
            arr = next((a for a in inv.raid_arrays if a.name == d.name), None)
            disks = sorted({m.disk for m in arr.members if m.disk}) if arr else []
            d.exclude("software RAID array; its member disks are captured"
                      + (f" ({', '.join(disks)})" if disks else ""))
        elif d.kind == "loop" and not include_loop:
            d.exclude("loop device (use --include-loop to offer it)")
        if d.size == 0:
            d.exclude("removable drive with no medium" if d.removable else "zero-size device")
        mp = mpath_taken.get(d.name)
        if mp is not None and d.name != mp.chosen:
            d.exclude(f"another path to multipath LUN {mp.wwid}; captured through {mp.chosen}")

    if only:
        # The operator's choice (disks=sda,md127 / --disks): md arrays stand for
        # their member disks, everything else not named is left out.
        chosen = set()
        for spec in only:
            name = resolve_disk(spec, inv, snapshot, mounts, resolve_paths)
            if name is None:
                inv.warnings.append(f"selected disk {spec} is not a known disk")
                continue
            arr = next((a for a in inv.raid_arrays if a.name == name), None)
            chosen.update(m.disk for m in arr.members if m.disk) if arr else chosen.add(name)
        for d in inv.disks:
            if d.name not in chosen:
                d.exclude("not among the selected disks")

    for arr in inv.raid_arrays:
        for m in arr.members:
            disk = inv.disk(m.disk) if m.disk else None
            if disk is not None:
                role = f"slot {m.slot}" if m.slot is not None else (m.state or "spare")
                disk.notes.append(f"member of {arr.name} ({arr.level}, {role}, via {m.device})")
