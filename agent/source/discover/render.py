"""The inventory as text for a console: every line fits 80 columns."""

from __future__ import annotations

import textwrap

from .model import Disk, Inventory
from ...units import human_bytes

WIDTH = 80


def clip(text: str | None, width: int) -> str:
    text = text or "-"
    return text if len(text) <= width else text[: width - 1] + "~"


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent + "  ")


def _disk_lines(d: Disk, inv: Inventory) -> list[str]:
    ctrl = inv.controller(d.controller)
    ctrl_text = ctrl.driver if ctrl and ctrl.driver else (d.controller or "-")
    capture = "yes" if d.capture_default else "no"
    lines = [f"{clip(d.name, 14):<14} {human_bytes(d.size, short=True):>7} {clip(d.transport, 7):<7} "
             f"{clip(d.kind, 9):<9} {clip(d.model, 20):<20} {clip(ctrl_text, 12):<12} "
             f"{capture:<3}".rstrip()]
    if not d.capture_default and d.exclude_reason:
        lines += _wrap(f"not captured: {d.exclude_reason}", "    ")
    if d.link:
        lines.append(f"    link: {d.link.label} ({d.link.name})")
    if len(d.paths) > 1:
        lines += _wrap(f"paths: {path_list(d, inv)}; captured once, through {d.name}", "    ")
    for note in d.notes:
        lines += _wrap(note, "    ")
    table = d.partition_table
    if table:
        lines.append(f"    {table.type} partition table"
                     + (f" {table.uuid}" if table.uuid else ""))
        for p in table.partitions:
            fs = p.filesystem
            lines.append(
                f"    {p.number:>3} {human_bytes(p.start, short=True):>7} {human_bytes(p.size, short=True):>7} "
                f"{clip(p.type, 8):<8} {clip(fs.type if fs else '', 11):<11} "
                f"{clip(fs.label if fs else '', 12):<12} {clip(','.join(p.flags), 14)}"
                .rstrip())
    elif d.filesystem:
        lines.append(f"    filesystem {d.filesystem.type}"
                     + (f" label {d.filesystem.label}" if d.filesystem.label else "")
                     + (f" UUID {d.filesystem.uuid}" if d.filesystem.uuid else ""))
    return lines


def path_list(d: Disk, inv: Inventory) -> str:
    """sdb (0000:05:00.0 qla2xxx), sdc (0000:05:00.1 qla2xxx): each path and its HBA."""
    out = []
    for p in d.paths:
        ctrl = inv.controller(p.controller)
        via = " ".join(filter(None, [p.controller, ctrl.driver if ctrl else None]))
        out.append(f"{p.name} ({via})" if via else p.name)
    return ", ".join(out)


def render(inv: Inventory) -> str:
    out = ["DISK             SIZE BUS     KIND      MODEL                CONTROLLER   "
           "CAP".rstrip()]
    for d in inv.disks:
        out += _disk_lines(d, inv)
    if inv.controllers:
        out += ["", "CONTROLLER    DRIVER         KIND           PCI ID     SCSI HOSTS"]
        for c in inv.controllers:
            out.append(f"{clip(c.id, 13):<13} {clip(c.driver, 14):<14} {c.kind:<14} "
                       f"{clip(c.pci_id, 10):<10} {clip(' '.join(c.scsi_hosts), 25)}"
                       .rstrip())
    for a in inv.raid_arrays:
        out += [""]
        out += _wrap(f"md {a.name}: {a.level}, metadata {a.metadata_version}, "
                     f"state {a.state}, degraded {a.degraded}, {a.raid_disks} slots", "")
        for m in a.members:
            slot = f"slot {m.slot}" if m.slot is not None else "spare"
            out.append(f"    {slot:<8} {m.device:<16} on {m.disk.name if m.disk else '?':<12} {m.state or ''}"
                       .rstrip())
        for s in a.missing_slots:
            out.append(f"    slot {s:<3}  (missing)")
    for s in inv.iscsi_sessions:
        out += [""] + _wrap(f"iSCSI {s.session} {s.target} via {s.portal}", "")
        for lun, disk in sorted(s.luns.items()):
            out.append(f"    LUN {lun}: {disk.name}")
    for m in inv.multipaths:
        out += [""] + _wrap(f"multipath {m.wwid}" + (f" ({m.map.name})" if m.map else "")
                            + f": paths {', '.join(m.paths)}; captured via {m.disk.name}", "")
    if inv.nics:
        out += ["", "NIC          MAC                SPEED       DRIVER     PCI          STATE"]
        for n in inv.nics:
            speed = f"{n.speed_mbps} Mb/s" if n.speed_mbps else "-"
            out.append(f"{clip(n.name, 12):<12} {clip(n.mac, 18):<18} {speed:<11} "
                       f"{clip(n.driver, 10):<10} {clip(n.pci_slot or '-', 12):<12} {n.operstate or '-'}".rstrip())
    if inv.live_medium:
        out += ["", f"live medium: {inv.live_medium}"]
    for w in inv.warnings:
        out += _wrap(f"warning: {w}", "")
    return "\n".join(line[:WIDTH] for line in out) + "\n"
