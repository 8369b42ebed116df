"""What the screens say about disks, estimates and results: plain strings, no textual.

Kept out of the widgets so the wording can be tested (and read) on its own and
so every screen describes a disk the same way.
"""

from __future__ import annotations

from ... import protocol as P
from ..capture import lookup
from ..discover.policy import member_note
from ..discover.render import clip
from ..estimate.plan import CaptureEstimate
from ...units import human_bytes, human_minutes, human_seconds

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
            if m.disk is disk:
                out.append((a.name, a.level, m.slot, m.device))
    return out


def iscsi_origin(disk, inv) -> tuple[object, int] | None:
    for s in inv.iscsi_sessions:
        for lun, d in s.luns.items():
            if d is disk:
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
    return (mark, clip(disk.name, 13), human_bytes(disk.size, short=True), clip(disk.model, 16),
            clip(controller_label(disk, inv), 16), clip(origin(disk, inv), 11), clip(filesystems(disk), 12))


def disk_details(disk, inv, selected: bool) -> list[str]:
    """Everything about one disk, for the details pane (fits 78 columns)."""
    lines = [f"{disk.dev_path or disk.name}: {human_bytes(disk.size, short=True)}"
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
            if m.disk is disk}
    for note in disk.notes:
        if note not in said and not (got and note.startswith("iSCSI ")):
            lines.append(note)
    table = disk.partition_table
    if table:
        lines.append(f"{table.type} partition table:")
        for p in table.partitions:
            fs = p.filesystem
            lines.append(f"  {p.number:>2} {human_bytes(p.size, short=True):>7} {clip(fs.type if fs else '', 17):<17} "
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
def estimate_rows(est: CaptureEstimate) -> list[tuple[str, str, str, str, str, str]]:
    """Per disk: name, size, to read, to send, time, bottleneck."""
    return [(clip(d.name, 12), human_bytes(d.size), human_bytes(d.bytes_to_read),
             human_bytes(d.bytes_to_send), human_seconds(d.seconds), clip(d.bottleneck or "-", 12))
            for d in est.disks]


def estimate_total(est: CaptureEstimate) -> list[str]:
    # finish_time is ISO 8601 local time: the clock reading is what the operator needs
    finish = est.finish_time[11:16] if len(est.finish_time) >= 16 else est.finish_time
    return [f"Total: about {human_seconds(est.total_seconds)} of downtime"
            + (f", done around {finish}" if finish else ""),
            f"Bottleneck: {est.bottleneck or '-'}"] + cutover_total(est)


def cutover_total(est: CaptureEstimate) -> list[str]:
    """Next to the cold figure: the predicted cutover of the warm capture found for these disks."""
    c = est.cutover
    if c is None:
        return []
    return [f"Cutover of warm capture {c.capture_id}: about {human_seconds(c.seconds)} of downtime "
            f"({c.syncs} sync{'s' if c.syncs != 1 else ''}, the last {human_minutes(c.since_last_sync)} ago)",
            f"  read {human_bytes(c.bytes_to_read)} {human_seconds(c.read_seconds)}, send ~"
            f"{human_bytes(c.changed_bytes)} changed {human_seconds(c.send_seconds)}, "
            f"fixed {human_seconds(c.fixed_seconds)}"]


def unfinished_offer(found: list[P.Unfinished]) -> str:
    """The Estimate screen's offer when the server holds an unfinished capture of these disks."""
    lines = [f"Unfinished capture on the server: {lookup.describe(found[0])}.",
             "r resumes it (only what is missing is sent); s starts a new capture."]
    if len(found) > 1:
        lines.append(f"({len(found) - 1} older unfinished capture(s) of these disks are there too.)")
    return "\n".join(lines)


def resume_details(u: P.Unfinished) -> list[str]:
    """The confirmation before resuming: what is kept, what is checked, and how sure the match is."""
    out = [f"{d.identity.name}: verified ({human_bytes(d.identity.size)})" if d.complete else
           f"{d.identity.name}: {human_bytes(d.held)} of {human_bytes(d.identity.size)} held" for d in u.disks]
    out.append("Held bytes are checked against the disks first; a changed disk is sent again.")
    if not u.proven:
        out.append("These disks have no serial or WWN: only names and sizes match.")
        out.append("Resume only if this capture was started on this server.")
    out.append("The source disks are set read-only; nothing is written to them.")
    return out
