"""From device dicts to an Inventory: disks, partitions, controllers, md arrays,
iSCSI sessions, multipath groups, NICs, then the capture policy.

`discover()` is the entry point for the running machine; `from_snapshot()`
runs the very same code on a recorded machine.
"""

from __future__ import annotations

import logging
import os
import re

from ... import devnames
from . import machine
from . import mounts as mountsmod
from . import rules
from . import snapshot as snap
from .helpers import build_disk
from .model import (
    Controller,
    Disk,
    DiskPath,
    Filesystem,
    Inventory,
    IscsiSession,
    Multipath,
    Nic,
    Partition,
    PartitionTable,
    RaidArray,
    RaidMember,
)
from .policy import apply_policy
from .probe import MSDOS_EXTENDED_IDS, NoProbes, Probes, filesystem_from

log = logging.getLogger("coldclone.discover")


def _has_udev_db(info: dict) -> bool:
    # Without udevd only the kernel's uevent keys are there (DEVNAME, MAJOR ...).
    return any(k.startswith(("ID_", "DEVLINKS")) for k in rules.props(info))


class Context:
    """What helpers share while building: controllers, iSCSI sessions, warnings."""

    def __init__(self):
        self.controllers: dict[str, Controller] = {}
        self.sessions: dict[str, IscsiSession] = {}
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def controller_for(self, info: dict) -> Controller | None:
        if rules.is_loop(info) or rules.is_ram(info) or rules.is_md(info) or rules.is_dm(info):
            return None
        pci = rules.pci_parent(info)
        host = rules.scsi_host_parent(info)
        hostname = host["sys_name"] if host else None
        if pci is not None:
            pattrs = pci.get("attrs") or {}
            driver = pci.get("driver") or rules.host_driver(info)
            cid = pci["sys_name"]
            vendor, device = pattrs.get("vendor"), pattrs.get("device")
            pci_id = (f"{vendor.replace('0x', '')}:{device.replace('0x', '')}"
                      if vendor and device else None)
            ctrl = self.controllers.get(cid)
            if ctrl is None:
                ctrl = Controller(id=cid, driver=driver, kind=rules.controller_kind(driver),
                                  pci_id=pci_id, pci_slot=cid)
                if ctrl.kind == "unknown":
                    # e.g. a HBA driver we do not list: the scsi host's name may know better
                    ctrl.kind = rules.controller_kind(rules.host_driver(info))
                self.controllers[cid] = ctrl
        else:
            driver = rules.host_driver(info)
            if driver is None:
                return None
            # Software iSCSI and other hosts on no PCI function: one per driver.
            cid = driver
            ctrl = self.controllers.setdefault(
                cid, Controller(id=cid, driver=driver, kind=rules.controller_kind(driver)))
        if hostname and hostname not in ctrl.scsi_hosts:
            ctrl.scsi_hosts.append(hostname)
            ctrl.scsi_hosts.sort(key=lambda h: rules.int_or(h[4:], 0))
        return ctrl

    def add_iscsi_lun(self, info: dict, disk: Disk) -> None:
        sess = rules.iscsi_session_parent(info)
        addr = rules.scsi_address(info)
        lun = addr[3] if addr else None
        target = portal = initiator = None
        tpgt = None
        if sess is not None:
            a = sess.get("attrs") or {}
            target = a.get("iscsi_session/targetname")
            initiator = a.get("iscsi_session/initiatorname")
            tpgt = rules.int_or(a.get("iscsi_session/tpgt"))
            host = a.get("iscsi_connection/persistent_address") or a.get(
                "iscsi_connection/address")
            port = a.get("iscsi_connection/persistent_port") or a.get("iscsi_connection/port")
            if host:
                portal = f"[{host}]:{port or 3260}" if ":" in host else f"{host}:{port or 3260}"
        # ID_PATH has it all when the sysfs session facts are missing:
        # ip-192.168.10.20:3260-iscsi-iqn.2003-01.org...:sn.x-lun-1
        m = re.match(r"ip-(.+?)-iscsi-(.+)-lun-(\d+)$", rules.props(info).get("ID_PATH", ""))
        if m:
            portal = portal or m.group(1)
            target = target or m.group(2)
            lun = lun if lun is not None else int(m.group(3))
        key = sess["sys_name"] if sess else f"{target}@{portal}"
        s = self.sessions.get(key)
        if s is None:
            s = self.sessions[key] = IscsiSession(session=sess["sys_name"] if sess else "",
                                                  target=target or "", portal=portal,
                                                  tpgt=tpgt, initiator=initiator)
        if lun is not None:
            s.luns[lun] = disk
        disk.notes.append(f"iSCSI {target} LUN {lun}")


class Populator:
    def __init__(self, snapshot: dict, probes=None):
        self.snapshot = snapshot
        self.probes = probes or NoProbes()
        self.ctx = Context()
        self.infos = [i for i in snapshot.get("block", []) if not rules.is_hidden(i)]
        self.by_name = {i["sys_name"]: i for i in self.infos}

    # --- partitions ---------------------------------------------------------

    def partition_infos(self, disk_info: dict) -> list[dict]:
        """Partition devices of a disk: they live in the disk's sysfs directory."""
        base = disk_info.get("sys_path", "").rstrip("/") + "/"
        out = [i for i in self.infos
               if rules.is_partition(i) and i.get("sys_path", "").startswith(base)]
        return sorted(out, key=lambda i: rules.int_or(
            rules.attr(i, "partition") or rules.props(i).get("PARTN"), 0))

    def filesystem(self, info: dict) -> tuple[Filesystem | None, dict]:
        if _has_udev_db(info):
            return filesystem_from(rules.props(info), "ID_FS_"), rules.props(info)
        values = self.probes.blkid(rules.dev_path(info) or "") or {}
        return filesystem_from(values), values

    def partition_table(self, info: dict, disk: Disk) -> PartitionTable | None:
        parts = self.partition_infos(info)
        pinfo = {}      # partition number -> (info, filesystem, probe values)
        for p in parts:
            fs, values = self.filesystem(p)
            num = rules.int_or(rules.attr(p, "partition") or values.get("PART_ENTRY_NUMBER")
                               or rules.props(p).get("PARTN"))
            if num is not None:
                pinfo[num] = (p, fs, values)
        table = self.probes.partition_table(disk.dev_path or "")
        if table is None and parts:
            table = self._table_from_udev(info, pinfo)
        if table is None:
            return None
        disk_values = rules.props(info) if _has_udev_db(info) else {}
        for part in table.partitions:
            if part.number in pinfo:
                p, fs, values = pinfo[part.number]
                part.filesystem = fs
                part.dev_path = rules.dev_path(p) or part.dev_path
                part.uuid = values.get("PART_ENTRY_UUID") or values.get(
                    "ID_PART_ENTRY_UUID") or part.uuid
                if part.type_id is None:
                    part.type_id = values.get("PART_ENTRY_TYPE") or values.get(
                        "ID_PART_ENTRY_TYPE")
            elif part.dev_path and os.path.exists(part.dev_path):
                # The kernel has not been told about the partition (no udev,
                # no partx) but parted found it: probe through parted's path.
                values = self.probes.blkid(part.dev_path) or {}
                part.filesystem = filesystem_from(values)
        table.uuid = table.uuid or disk_values.get("ID_PART_TABLE_UUID")
        if table.uuid is None:
            values = self.probes.blkid(disk.dev_path or "") or {}
            table.uuid = values.get("PTUUID")
        return table

    def _table_from_udev(self, info: dict, pinfo: dict) -> PartitionTable | None:
        ptype = rules.props(info).get("ID_PART_TABLE_TYPE")
        if ptype is None:
            for _, _, values in pinfo.values():
                ptype = values.get("ID_PART_ENTRY_SCHEME") or values.get("PART_ENTRY_SCHEME")
                if ptype:
                    break
        ptype = {"dos": "msdos"}.get(ptype or "", ptype or "unknown")
        parts = []
        for num, (p, _, values) in sorted(pinfo.items()):
            v = {k.removeprefix("ID_"): val for k, val in values.items()}
            type_id = v.get("PART_ENTRY_TYPE")
            kind = "primary"
            if ptype == "msdos":
                if type_id and rules.int_or(type_id) in MSDOS_EXTENDED_IDS:
                    kind = "extended"
                elif num >= 5:
                    kind = "logical"
            name = v.get("PART_ENTRY_NAME")
            if name:
                name = rules.decode_udev_enc(name)
            parts.append(Partition(
                number=num,
                dev_path=rules.dev_path(p),
                # sysfs start/size count 512-byte units, whatever the sector size
                start=rules.int_or(rules.attr(p, "start"), 0) * 512,
                size=rules.int_or(rules.attr(p, "size"), 0) * 512,
                type=kind,
                type_id=type_id,
                flags=_flags(ptype, v.get("PART_ENTRY_FLAGS")),
                name=name or None,
            ))
        return PartitionTable(type=ptype, uuid=rules.props(info).get("ID_PART_TABLE_UUID"),
                              partitions=parts, source="udev")

    # --- the whole inventory ------------------------------------------------------

    def run(self) -> Inventory:
        inv = Inventory()
        disk_infos = {}
        for info in self.infos:
            if rules.is_partition(info):
                continue
            if rules.is_loop(info) and rules.int_or((info.get("attrs") or {}).get("size"), 0) == 0:
                continue   # an unattached loop device: no disk at all, only noise on 80x24
            disk = build_disk(info, self.ctx)
            disk_infos[disk.name] = info
            try:
                if not (rules.is_cdrom(info) or rules.is_ram(info) or rules.is_floppy(info)) and disk.size > 0:
                    disk.partition_table = self.partition_table(info, disk)
                    if disk.partition_table is None:
                        disk.filesystem, _ = self.filesystem(info)
            except Exception as e:
                log.warning("%s: layout unreadable: %s", disk.name, e)
                self.ctx.warn(f"{disk.name}: partition table unreadable ({e})")
            inv.disks.append(disk)
        inv.disks.sort(key=_disk_sort_key)
        inv.controllers = sorted(self.ctx.controllers.values(), key=lambda c: c.id)
        inv.iscsi_sessions = sorted(self.ctx.sessions.values(),
                                    key=lambda s: (s.session, s.target))
        by_display = {d.name: d for d in inv.disks}
        inv.raid_arrays = [self.raid_array(i, by_display) for i in self.infos if rules.is_md(i)
                           and not rules.is_partition(i)]
        inv.multipaths = self.group_paths(inv, disk_infos)
        inv.aliases = self.partition_aliases()
        inv.nics = self.nics()
        inv.machine = machine.from_snapshot(self.snapshot.get("host"))
        inv.warnings = self.ctx.warnings
        return inv

    def disk_of_partition(self, name: str) -> str | None:
        """sda1 -> sda; cciss!c0d0p1 -> cciss/c0d0 (display names)."""
        info = self.by_name.get(name)
        if info is None:
            return None
        if not rules.is_partition(info):
            return rules.display_name(info)
        parent = os.path.dirname(info.get("sys_path", ""))
        for i in self.infos:
            if i.get("sys_path") == parent:
                return rules.display_name(i)
        return None

    def raid_array(self, info: dict, disks: dict[str, Disk]) -> RaidArray:
        """disks: the inventory's disks by name, for the members' references."""
        p, a = rules.props(info), info.get("attrs") or {}

        def disk_of(kname: str) -> Disk | None:
            return disks.get(self.disk_of_partition(kname) or "")

        members: list[RaidMember] = []
        for key, value in a.items():
            m = re.fullmatch(r"md/dev-(.+)/slot", key)
            if m:
                dev = m.group(1)
                members.append(RaidMember(slot=rules.int_or(value), device=_disp(dev),
                                          disk=disk_of(dev),
                                          state=a.get(f"md/dev-{dev}/state")))
        if not members:
            for key, value in p.items():
                m = re.fullmatch(r"MD_DEVICE_(.+)_ROLE", key)
                if m:
                    dev = os.path.basename(p.get(f"MD_DEVICE_{m.group(1)}_DEV", m.group(1)))
                    kname = dev.replace("/", "!")
                    members.append(RaidMember(slot=rules.int_or(value), device=dev,
                                              disk=disk_of(kname),
                                              state="spare" if value == "spare" else None))
        detail = None
        if not members:
            detail = self.probes.mdadm_detail(rules.dev_path(info) or "") or {}
            for key, value in detail.items():
                m = re.fullmatch(r"MD_DEVICE_(.+)_ROLE", key)
                if m:
                    dev = os.path.basename(detail.get(f"MD_DEVICE_{m.group(1)}_DEV", m.group(1)))
                    members.append(RaidMember(slot=rules.int_or(value), device=dev,
                                              disk=disk_of(dev.replace("/", "!"))))
        if not members:
            # Order unknown: at least name the members, so they are captured.
            for dev in info.get("slaves") or []:
                members.append(RaidMember(slot=None, device=_disp(dev),
                                          disk=disk_of(dev)))
        members.sort(key=lambda m: (m.slot is None, m.slot if m.slot is not None else 0,
                                    m.device))
        raid_disks = rules.int_or(a.get("md/raid_disks") or p.get("MD_DEVICES"))
        taken = {m.slot for m in members if m.slot is not None}
        missing = [s for s in range(raid_disks or 0) if s not in taken]
        degraded = rules.int_or(a.get("md/degraded"))
        if degraded is None:
            degraded = len(missing)
        return RaidArray(
            name=rules.display_name(info),
            dev_path=rules.dev_path(info),
            level=a.get("md/level") or p.get("MD_LEVEL") or (detail or {}).get("MD_LEVEL", ""),
            metadata_version=a.get("md/metadata_version") or p.get("MD_METADATA"),
            state=a.get("md/array_state"),
            degraded=degraded,
            raid_disks=raid_disks,
            uuid=p.get("MD_UUID") or (detail or {}).get("MD_UUID"),
            members=members,
            missing_slots=missing,
        )

    def group_paths(self, inv: Inventory, disk_infos: dict) -> list[Multipath]:
        """Paths that reach one LUN become one Disk, captured once through its first path,
        the others listed as its paths (Disk.paths) and gone from inv.disks.

        The live system runs no multipathd, so most multipath LUNs come without a dm map: the
        slaves of a map are one LUN, and so are disks with the same identity (path_identity:
        a real WWN, or a real serial with the same model, and the same size either way).
        """
        groups: dict[str, list[Disk]] = {}
        wwids: dict[str, str] = {}
        maps: dict[str, Disk] = {}
        alias: dict[str, str] = {}          # a path's identity -> the group of its map
        for disk in inv.disks:
            if disk.kind != "multipath":
                continue
            wwid = rules.dm_uuid(disk_infos[disk.name]).removeprefix("mpath-")
            key = "map " + wwid
            maps[key], wwids[key] = disk, wwid
            group = groups.setdefault(key, [])
            for slave in disk_infos[disk.name].get("slaves") or []:
                path = next((d for d in inv.disks if d.name == _disp(slave)), None)
                if path is not None and path not in group:
                    group.append(path)
                    ident = path_identity(path)
                    if ident:
                        alias[ident] = key
        in_map = {d.name for group in groups.values() for d in group}
        for disk in inv.disks:
            ident = None if disk.name in in_map else path_identity(disk)
            if ident:
                key = alias.get(ident, ident)
                groups.setdefault(key, []).append(disk)
                wwids.setdefault(key, rules.multipath_key(disk_infos[disk.name])
                                 or disk.wwn or disk.serial or ident)
        out, merged = [], {}
        for key, paths in groups.items():
            if not paths or (len(paths) < 2 and key not in maps):
                continue
            paths.sort(key=_disk_sort_key)
            disk = paths[0]
            disk.paths = [DiskPath(name=p.name, dev_path=p.dev_path, kernel_name=p.kernel_name,
                                   controller=p.controller, by_id=list(p.by_id),
                                   by_path=list(p.by_path), sys_path=p.sys_path)
                          for p in paths]
            for other in paths[1:]:
                inv.disks.remove(other)
                merged[other.name] = disk
            out.append(Multipath(wwid=wwids[key], disk=disk, map=maps.get(key)))
        # Relations name the one Disk, not a path that is no disk of its own any more.
        for s in inv.iscsi_sessions:
            s.luns = {lun: merged.get(d.name, d) for lun, d in s.luns.items()}
        for arr in inv.raid_arrays:
            for m in arr.members:
                if m.disk is not None:
                    m.disk = merged.get(m.disk.name, m.disk)
        return sorted(out, key=lambda m: m.wwid)

    def partition_aliases(self) -> dict[str, str]:
        """Names of partition devices -> their disk's name, for the partitions no partition
        table lists (not read, or the table of a multipath disk's other path)."""
        out: dict[str, str] = {}
        for info in self.infos:
            if rules.is_partition(info):
                disk = self.disk_of_partition(info["sys_name"])
                if disk:
                    for n in [rules.dev_path(info), info.get("sys_name"), *rules.devlinks(info)]:
                        if n:
                            out.setdefault(n, disk)
        return out

    def nics(self) -> list[Nic]:
        out = []
        for n in self.snapshot.get("net", []):
            a = n.get("attrs") or {}
            if a.get("type") == "772" or n.get("sys_name") == "lo":   # loopback
                continue
            speed = rules.int_or(a.get("speed"))
            carrier = a.get("carrier")
            props = n.get("properties") or {}
            out.append(Nic(name=n["sys_name"], mac=a.get("address"), driver=n.get("driver"),
                           pci_slot=rules.nic_pci_slot(n.get("sys_path") or ""),
                           speed_mbps=speed if speed and speed > 0 else None,
                           operstate=a.get("operstate"),
                           carrier=None if carrier is None else carrier == "1",
                           udev_names=list(dict.fromkeys(
                               props[k] for k in ("ID_NET_NAME_ONBOARD", "ID_NET_NAME_SLOT", "ID_NET_NAME_PATH",
                                                  "ID_NET_NAME_MAC") if props.get(k)))))
        return sorted(out, key=lambda x: x.name)


def _flags(table_type: str, value: str | None) -> list[str]:
    """udev's hex ID_PART_ENTRY_FLAGS as the flag names parted would print."""
    bits = rules.int_or(value)
    if not bits:
        return []
    if table_type == "msdos":
        return ["boot"] if bits & 0x80 else []
    out = []
    if bits & 0x1:
        out.append("hidden")          # GPT "required partition"
    if bits & 0x4:
        out.append("legacy_boot")
    return out


def _disp(kname: str) -> str:
    return devnames.display(kname)


def _name_sort_key(name: str):
    """Natural order as the kernel assigns names: sdb < sdz < sdaa, nvme2n1 < nvme10n1."""
    m = re.match(r"(sd|vd|hd|xvd)([a-z]+)(.*)$", name)
    if m:
        name = f"{m.group(1)}{len(m.group(2)):02d}{m.group(2)}{m.group(3)}"
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|\D+", name)]


def path_identity(disk: Disk) -> str | None:
    """What makes two block devices one disk (two paths to it), or None: never grouped.

    A real WWN, or a real serial with the same model; the same size either way. Empty,
    all-zero and placeholder values never group (devnames.real_identifier), and USB disks
    never do: USB-SATA bridges report made-up or shared serials, and USB has no multipath.
    Only whole disks and hardware-RAID logical drives are paths; md, dm, loop are not.
    """
    if disk.kind not in ("disk", "raid-logical-drive") or disk.transport == "usb" or disk.size <= 0:
        return None
    wwn = devnames.real_identifier(disk.wwn)
    if wwn:
        return f"wwn {wwn} size {disk.size}"
    serial = devnames.real_identifier(disk.serial)
    if serial and disk.model:
        return f"serial {serial} model {disk.model} size {disk.size}"
    return None


def _disk_sort_key(disk: Disk):
    return _name_sort_key(disk.name)


def from_snapshot(snapshot: dict, *, probes=None, include_loop: bool = False,
                  target: str | None = None, boot_device: str | None = None,
                  resolve_paths: bool = False, only: list[str] | None = None,
                  allow_mounted: bool = False) -> Inventory:
    inv = Populator(snapshot, probes).run()
    apply_policy(inv, snapshot, mountsmod.parse_mounts(snapshot.get("mounts", "")),
                 include_loop=include_loop, target=target, boot_device=boot_device,
                 resolve_paths=resolve_paths, only=only, allow_mounted=allow_mounted)
    return inv


def discover(*, include_loop: bool = False, target: str | None = None,
             boot_device: str | None = None, only: list[str] | None = None,
             allow_mounted: bool = False) -> Inventory:
    """Inventory of the running machine."""
    return from_snapshot(snap.take(), probes=Probes(), include_loop=include_loop,
                         target=target, boot_device=boot_device, resolve_paths=True,
                         only=only, allow_mounted=allow_mounted)
