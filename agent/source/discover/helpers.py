"""Device-type helpers, tried in priority order (blivet's populator helpers style).

Each helper says whether it recognises a device (`match(info)`) and builds
the Disk for it (`build(info, ctx)`). The last one, GenericDiskHelper,
matches everything, so a device nobody recognises still shows up as a plain
disk instead of crashing discovery.
"""

from __future__ import annotations

import logging

from . import rules
from .model import Disk, Link

log = logging.getLogger("coldclone.discover")


class DeviceHelper:
    priority = 0
    kind = "disk"

    @staticmethod
    def match(info: dict) -> bool:
        raise NotImplementedError

    def transport(self, info: dict) -> str:
        return rules.transport_of(info)

    def build(self, info: dict, ctx) -> Disk:
        links = rules.devlinks(info)
        attrs = info.get("attrs") or {}
        rot = attrs.get("queue/rotational")
        disk = Disk(
            name=rules.display_name(info),
            dev_path=rules.dev_path(info),
            kernel_name=rules.kernel_name(info),
            kind=self.kind,
            transport=self.transport(info),
            # sysfs "size" is in 512-byte units whatever the sector size.
            size=rules.int_or(attrs.get("size"), 0) * 512,
            logical_sector_size=rules.int_or(attrs.get("queue/logical_block_size"), 512),
            physical_sector_size=rules.int_or(attrs.get("queue/physical_block_size"), 512),
            model=rules.model(info),
            vendor=rules.vendor(info),
            serial=rules.serial(info),
            wwn=rules.wwn(info),
            rotational=None if rot is None else rot == "1",
            removable=attrs.get("removable") == "1",
            read_only=attrs.get("ro") == "1",
            by_id=[x for x in links if x.startswith("/dev/disk/by-id/")],
            by_path=[x for x in links if x.startswith("/dev/disk/by-path/")],
            sys_path=info.get("sys_path", ""),
        )
        controller = ctx.controller_for(info)
        disk.controller = controller.id if controller else None
        disk.link = self.link(info)
        return disk

    def link(self, info: dict) -> Link | None:
        usb = rules.parent_with(info, "usb", "usb_device")
        if usb is not None:
            mbps = rules.int_or((usb.get("attrs") or {}).get("speed"))
            return Link("usb", usb["sys_name"], mbps, rules.usb_speed_label(mbps))
        ata = rules.ata_port_parent(info)
        if ata is not None:
            spd = (ata.get("attrs") or {}).get("ata_link/sata_spd")
            mbps = rules.sata_speed_mbps(spd)
            label = f"SATA {spd}" if mbps else "SATA (link speed unknown)"
            return Link("sata", ata["sys_name"], mbps, label)
        return None


class MultipathMapHelper(DeviceHelper):
    priority = 100
    kind = "multipath"

    @staticmethod
    def match(info):
        return rules.is_multipath_map(info)

    def transport(self, info):
        return "unknown"

    def build(self, info, ctx):
        disk = super().build(info, ctx)
        disk.name = f"mapper/{rules.dm_name(info)}" if rules.dm_name(info) else disk.name
        return disk


class DmHelper(DeviceHelper):
    priority = 90
    kind = "dm"

    @staticmethod
    def match(info):
        return rules.is_dm(info)

    def transport(self, info):
        return "unknown"


class MdHelper(DeviceHelper):
    priority = 90
    kind = "md"

    @staticmethod
    def match(info):
        return rules.is_md(info)

    def transport(self, info):
        return "unknown"


class LoopHelper(DeviceHelper):
    priority = 80
    kind = "loop"

    @staticmethod
    def match(info):
        return rules.is_loop(info)

    def transport(self, info):
        return "unknown"

    def build(self, info, ctx):
        disk = super().build(info, ctx)
        backing = rules.attr(info, "loop/backing_file")
        if backing:
            disk.backing_file = backing
            disk.notes.append(f"backing file {backing}")
        return disk


class RamHelper(DeviceHelper):
    priority = 80
    kind = "ram"

    @staticmethod
    def match(info):
        return rules.is_ram(info)

    def transport(self, info):
        return "unknown"


class FloppyHelper(DeviceHelper):
    priority = 75
    kind = "floppy"

    @staticmethod
    def match(info):
        return rules.is_floppy(info)

    def transport(self, info):
        return "floppy"


class CdromHelper(DeviceHelper):
    priority = 70
    kind = "cdrom"

    @staticmethod
    def match(info):
        return rules.is_cdrom(info)


class HwRaidLogicalDriveHelper(DeviceHelper):
    """cciss and SCSI-attached RAID volumes: one Disk, its controller named."""

    priority = 60
    kind = "raid-logical-drive"

    @staticmethod
    def match(info):
        return rules.is_cciss(info) or rules.is_hw_raid_logical_drive(info)

    def build(self, info, ctx):
        disk = super().build(info, ctx)
        drv = rules.hw_raid_driver(info)
        level = rules.parent_attr(info, "raid_level")
        note = f"logical drive of {drv} ({rules.HW_RAID_DRIVERS.get(drv, drv)})"
        if level and level.upper() != "N/A":
            note += f", {level}"
        disk.notes.append(note)
        return disk


class IscsiLunHelper(DeviceHelper):
    priority = 50

    @staticmethod
    def match(info):
        return rules.is_iscsi(info) and rules.is_disk(info)

    def build(self, info, ctx):
        disk = super().build(info, ctx)
        ctx.add_iscsi_lun(info, disk)
        return disk


class FcLunHelper(DeviceHelper):
    priority = 50

    @staticmethod
    def match(info):
        return rules.is_fc(info) and rules.is_disk(info)

    def build(self, info, ctx):
        disk = super().build(info, ctx)
        rport = rules.fc_rport_parent(info)
        addr = rules.scsi_address(info)
        if rport is not None:
            wwpn = (rport.get("attrs") or {}).get("fc_remote_ports/port_name")
            if wwpn:
                disk.notes.append(f"FC target {wwpn}" + (f" LUN {addr[3]}" if addr else ""))
        return disk


class UsbDiskHelper(DeviceHelper):
    priority = 45

    @staticmethod
    def match(info):
        return rules.is_usb(info)


class NvmeHelper(DeviceHelper):
    priority = 40

    @staticmethod
    def match(info):
        return rules.is_nvme(info)


class VirtioHelper(DeviceHelper):
    priority = 40

    @staticmethod
    def match(info):
        return rules.is_virtio(info)


class SataHelper(DeviceHelper):
    priority = 30

    @staticmethod
    def match(info):
        return rules.is_ata(info)


class SasHelper(DeviceHelper):
    priority = 30

    @staticmethod
    def match(info):
        return rules.is_sas(info)


class ScsiDiskHelper(DeviceHelper):
    priority = 20

    @staticmethod
    def match(info):
        return rules.is_scsi(info)


class GenericDiskHelper(DeviceHelper):
    priority = -1

    @staticmethod
    def match(info):
        return True

    def transport(self, info):
        try:
            return rules.transport_of(info)
        except Exception:
            return "unknown"

    def build(self, info, ctx):
        try:
            return super().build(info, ctx)
        except Exception as e:
            # Last resort: the bare minimum from names and size, so the operator
            # still sees (and can choose) the device.
            log.warning("%s: partial facts only: %s", info.get("sys_name"), e)
            return Disk(
                name=rules.display_name(info),
                dev_path=rules.dev_path(info),
                kernel_name=rules.kernel_name(info),
                kind="disk",
                transport="unknown",
                size=rules.int_or((info.get("attrs") or {}).get("size"), 0) * 512,
                sys_path=info.get("sys_path", ""),
            )


HELPERS = sorted(
    (MultipathMapHelper, DmHelper, MdHelper, LoopHelper, RamHelper, FloppyHelper, CdromHelper,
     HwRaidLogicalDriveHelper, IscsiLunHelper, FcLunHelper, UsbDiskHelper, NvmeHelper,
     VirtioHelper, SataHelper, SasHelper, ScsiDiskHelper, GenericDiskHelper),
    key=lambda h: -h.priority,
)


def helper_for(info: dict) -> DeviceHelper:
    for cls in HELPERS:
        try:
            if cls.match(info):
                return cls()
        except Exception as e:   # a predicate tripping on odd data: try the next one
            log.debug("%s.match(%s): %s", cls.__name__, info.get("sys_name"), e)
    return GenericDiskHelper()


def build_disk(info: dict, ctx) -> Disk:
    helper = helper_for(info)
    try:
        return helper.build(info, ctx)
    except Exception as e:
        log.warning("%s failed on %s (%s); using a generic disk", type(helper).__name__,
                    info.get("sys_name"), e)
        ctx.warn(f"{rules.display_name(info)}: {type(helper).__name__} failed ({e}); "
                 "shown as a generic disk")
        return GenericDiskHelper().build(info, ctx)
