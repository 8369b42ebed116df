"""What the screens say about disks, estimates and results: plain strings, no textual.

Kept out of the widgets so the wording can be tested (and read) on its own and
so every screen describes a disk the same way.
"""

from __future__ import annotations

from ..discover.policy import member_note
from ..discover.render import clip, human_size
from ..units import human_bytes, human_seconds

def controller_label(disk, inv) -> str:
    ctrl = inv.controller(disk.controller)
    if ctrl is None:
        return {"md": "software", "loop": "loop", "multipath": "dm-multipath"}.get(disk.kind, "-")
    return ctrl.driver or ctrl.id


def raid_memberships(disk, inv) -> list[tuple[str, str, int | None, str]]:
    """(array, level, slot, via device) for every md array this disk holds a member of."""
    out = []
    for a in inv.raid_arrays:
        for m in a.members:
            if m.disk == disk.name:
                out.append((a.name, a.level, m.slot, m.device))
    return out


def iscsi_origin(disk, inv) -> tuple[object, int] | None:
    for s in inv.iscsi_sessions:
        for lun, name in s.luns.items():
            if name == disk.name:
                return s, int(lun)
    return None


def origin(disk, inv) -> str:
    """One short phrase: where the disk comes from (the table's 'What' column)."""
    if disk.kind == "raid-logical-drive":
        return "HW RAID LD"
    if disk.kind == "md":
        arr = next((a for a in inv.raid_arrays if a.name == disk.name), None)
        return f"md {arr.level}" if arr else "md array"
    if disk.kind == "multipath":
        return "multipath"
    if len(disk.paths) > 1:
        return f"{len(disk.paths)} paths"
    members = raid_memberships(disk, inv)
    if members:
        return "in " + ",".join(sorted({m[0] for m in members}))
    if disk.transport == "iscsi":
        got = iscsi_origin(disk, inv)
        return f"iSCSI LUN {got[1]}" if got else "iSCSI"
    if disk.transport == "fc":
        lun = next((n.rsplit("LUN", 1)[1].strip() for n in disk.notes if "LUN" in n), None)
        return f"FC LUN {lun}" if lun else "FC"
    if disk.transport == "usb":
        return disk.link.label if disk.link else "USB"
    if disk.kind == "cdrom":
        return "optical"
    return disk.transport if disk.transport != "unknown" else disk.kind


def filesystems(disk) -> str:
    if disk.partition_table:
        types = [p.filesystem.type for p in disk.partition_table.partitions if p.filesystem]
        if types:
            seen = []
            for t in types:
                t = "LVM" if t == "LVM2_member" else "raid" if t == "linux_raid_member" else t
                if t not in seen:
                    seen.append(t)
            return ",".join(seen)
        return disk.partition_table.type
    if disk.filesystem:
        return "LVM" if disk.filesystem.type == "LVM2_member" else disk.filesystem.type
    return "-"


def disk_row(disk, inv, selected: bool) -> tuple[str, ...]:
    """The inventory table's row: mark, name, size, model, controller, what, filesystems."""
    mark = "[x]" if selected else "[ ]" if disk.capture_default or selected else " - "
    return (mark, clip(disk.name, 13), human_size(disk.size), clip(disk.model, 16),
            clip(controller_label(disk, inv), 16), clip(origin(disk, inv), 11), clip(filesystems(disk), 12))


def disk_details(disk, inv, selected: bool) -> list[str]:
    """Everything about one disk, for the details pane (fits 78 columns)."""
    lines = [f"{disk.dev_path or disk.name}: {human_size(disk.size)}"
             f" {disk.vendor + ' ' if disk.vendor and disk.vendor not in (disk.model or '') else ''}"
             f"{disk.model or ''}".rstrip()
             + (f", serial {disk.serial}" if disk.serial else "")]
    if selected:
        lines.append("WILL BE CAPTURED (whole disk, every partition)")
    elif disk.capture_default:
        lines.append("not selected (space selects it)")
    else:
        lines.append(f"not captured: {disk.exclude_reason or 'deselected'}")
    ctrl = inv.controller(disk.controller)
    if ctrl is not None:
        kind = "hardware RAID controller" if ctrl.kind == "hardware-raid" else f"{ctrl.kind} controller"
        lines.append(f"controller: {ctrl.driver or ctrl.id} ({kind}"
                     + (f", PCI {ctrl.pci_id} at {ctrl.pci_slot}" if ctrl.pci_id else "") + ")")
    for name, level, slot, via in raid_memberships(disk, inv):
        lines.append(f"software RAID: member of {name} ({level}, "
                     f"{'slot ' + str(slot) if slot is not None else 'spare'}, via {via})")
    if disk.kind == "md":
        arr = next((a for a in inv.raid_arrays if a.name == disk.name), None)
        if arr:
            members = ", ".join(f"{m.device}" for m in arr.members)
            lines.append(f"md {arr.level} metadata {arr.metadata_version}, {arr.state}, "
                         f"degraded {arr.degraded}: {members}")
    got = iscsi_origin(disk, inv)
    if got:
        sess, lun = got
        lines.append(f"iSCSI LUN {lun} of {sess.target} via {sess.portal}")
    if disk.link:
        lines.append(f"link: {disk.link.label} ({disk.link.name})")
    if len(disk.paths) > 1:
        lines.append(f"paths: {', '.join(p.name for p in disk.paths)} (one disk; captured once, "
                     f"through {disk.name})")
    # Memberships are said above, with more detail: leave out the notes that say them.
    said = {member_note(a, m) for a in inv.raid_arrays for m in a.members
            if inv.resolve(m.disk) is disk}
    for note in disk.notes:
        if note not in said and not (got and note.startswith("iSCSI ")):
            lines.append(note)
    table = disk.partition_table
    if table:
        lines.append(f"{table.type} partition table:")
        for p in table.partitions:
            fs = p.filesystem
            lines.append(f"  {p.number:>2} {human_size(p.size):>7} {clip(fs.type if fs else '', 17):<17} "
                         f"{clip(fs.label if fs else '', 14):<14} {','.join(p.flags)}".rstrip())
    elif disk.filesystem:
        fs = disk.filesystem
        lines.append(f"filesystem {fs.type}" + (f" label {fs.label}" if fs.label else ""))
    return lines


def selection_summary(disks) -> str:
    total = sum(d.size for d in disks)
    if not disks:
        return "Nothing selected: select the disks to capture with space"
    return f"Capture {len(disks)} disk{'s' if len(disks) != 1 else ''}, {human_bytes(total)}: " + \
        ", ".join(d.name for d in disks)


def finding_line(f) -> str:
    return f"[{f.severity.upper()}] {f.title}"


# ---------------------------------------------------------------- estimate
def _get(obj, *names, default=None):
    for n in names:
        if isinstance(obj, dict) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    return default


def estimate_rows(est) -> list[tuple[str, str, str, str, str, str]]:
    """Per disk: name, size, to read, to send, time, bottleneck."""
    rows = []
    for d in _get(est, "disks", "per_disk", default=[]) or []:
        name = _get(d, "name", "path", "disk", default="?")
        rows.append((clip(str(name).removeprefix("/dev/"), 12), human_bytes(_get(d, "size", default=0) or 0),
                     human_bytes(_get(d, "bytes_to_read", default=0) or 0),
                     human_bytes(_get(d, "bytes_to_send", default=0) or 0),
                     human_seconds(_get(d, "seconds")), clip(str(_get(d, "bottleneck", default="-")), 12)))
    return rows


def estimate_total(est) -> list[str]:
    total = _get(est, "total_seconds", "seconds")
    finish = _get(est, "finish_time")
    if isinstance(finish, str) and len(finish) >= 16 and finish[10] == "T":
        finish = finish[11:16]   # ISO 8601 local time
    elif hasattr(finish, "strftime"):
        finish = finish.strftime("%H:%M")
    elif isinstance(finish, (int, float)):
        import time as _t

        finish = _t.strftime("%H:%M", _t.localtime(finish))
    bottleneck = _get(est, "bottleneck", default="-")
    out = [f"Total: about {human_seconds(total)} of downtime"
           + (f", done around {finish}" if finish else "")]
    out.append(f"Bottleneck: {bottleneck}")
    return out


# ---------------------------------------------------------------- result
def result_lines(result) -> list[str]:
    el = max(result.elapsed, 1e-9)
    out = [f"Capture {result.capture_id}: complete in {human_seconds(result.elapsed)}",
           f"Where: {result.location}",
           f"Read {human_bytes(result.bytes_read)} at {result.bytes_read / el / 1e6:.1f} MB/s; "
           f"sent {human_bytes(result.wire_bytes)}; skipped {human_bytes(result.zero_bytes)} of zeros"]
    for d in result.disks:
        checks = ", ".join(k for k, v in (d.get("verified") or {}).items() if v)
        out.append(f"{d.get('name')}: {d.get('image')}")
        out.append(f"  digest {str(d.get('digest', ''))[:32]}... verified: {checks or 'no'}")
    out += result.conversion_lines()
    return out
