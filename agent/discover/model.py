"""What discovery reports: plain dataclasses the TUI, the headless runner and the
manifest all share. Nothing here knows about pyudev or sysfs.

Sizes and offsets are bytes everywhere, so nobody has to guess a sector size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Values of Disk.transport; the estimator maps them to expected throughput.
TRANSPORTS = ("sata", "sas", "scsi", "nvme", "virtio", "usb", "iscsi", "fc", "unknown")

# Values of Controller.kind.
CONTROLLER_KINDS = ("hardware-raid", "hba", "ahci", "nvme", "usb", "virtio", "iscsi", "unknown")

# Values of Disk.kind: what the block device is, independent of how it is attached.
DISK_KINDS = ("disk", "raid-logical-drive", "md", "multipath", "dm", "loop", "cdrom", "floppy", "ram")


@dataclass
class Filesystem:
    type: str
    label: str | None = None
    uuid: str | None = None


@dataclass
class Partition:
    number: int
    dev_path: str | None
    start: int                # bytes from the start of the disk
    size: int                 # bytes
    type: str                 # primary / logical / extended (msdos), normal (gpt)
    type_id: str | None = None  # msdos id as blkid prints it ("0x83", "0xf") or GPT type GUID
    flags: list[str] = field(default_factory=list)
    name: str | None = None   # GPT partition name
    uuid: str | None = None   # GPT PARTUUID or msdos "<disk id>-<nn>"
    filesystem: Filesystem | None = None


@dataclass
class PartitionTable:
    type: str                 # gpt / msdos / ...
    uuid: str | None = None
    partitions: list[Partition] = field(default_factory=list)
    source: str = "parted"    # parted / blkid / udev: which probe produced it


@dataclass
class Controller:
    id: str                   # PCI slot, or a synthetic id ("iscsi", "platform")
    driver: str | None
    kind: str
    pci_id: str | None = None     # vendor:device, e.g. "1000:005d"
    pci_slot: str | None = None   # e.g. "0000:02:00.0"
    scsi_hosts: list[str] = field(default_factory=list)


@dataclass
class Link:
    """How fast bytes can leave through one attachment (for the estimator)."""

    kind: str                 # usb / sata / nic
    name: str                 # usb device (2-1.2), ata port (ata1), interface (eth0)
    speed_mbps: int | None
    label: str                # "USB 2.0", "SATA 3.0 Gbps", "1000 Mb/s"


@dataclass
class Disk:
    name: str                 # /dev-relative name: sda, cciss/c0d0, md0
    dev_path: str | None
    kernel_name: str          # sysfs name, e.g. cciss!c0d0 (fstab fix-ups need it)
    kind: str
    transport: str
    size: int
    logical_sector_size: int = 512
    physical_sector_size: int = 512
    model: str | None = None
    vendor: str | None = None
    serial: str | None = None
    wwn: str | None = None
    rotational: bool | None = None
    removable: bool = False
    read_only: bool = False
    by_id: list[str] = field(default_factory=list)
    by_path: list[str] = field(default_factory=list)
    controller: str | None = None     # Controller.id
    link: Link | None = None
    sys_path: str = ""
    partition_table: PartitionTable | None = None
    filesystem: Filesystem | None = None   # a filesystem on the whole disk
    capture_default: bool = True
    exclude_reason: str | None = None
    notes: list[str] = field(default_factory=list)

    def exclude(self, reason: str) -> None:
        # First reason wins: it is the most specific one the policy found.
        if self.capture_default:
            self.capture_default = False
            self.exclude_reason = reason


@dataclass
class RaidMember:
    slot: int | None          # None: spare or failed
    device: str               # partition or disk name, e.g. sda1
    disk: str | None          # the whole disk holding it, e.g. sda
    state: str | None = None  # in_sync, faulty, spare ...


@dataclass
class RaidArray:
    name: str                 # md0, or md/boot's kernel name md127
    dev_path: str | None
    level: str
    metadata_version: str | None
    state: str | None
    degraded: int
    raid_disks: int | None
    uuid: str | None
    members: list[RaidMember] = field(default_factory=list)   # by slot, spares last
    missing_slots: list[int] = field(default_factory=list)


@dataclass
class IscsiSession:
    session: str              # session1
    target: str               # IQN
    portal: str | None        # 192.168.10.20:3260
    tpgt: int | None
    initiator: str | None
    luns: dict[int, str] = field(default_factory=dict)   # LUN -> disk name


@dataclass
class Multipath:
    wwid: str
    paths: list[str]          # disk names of every path
    chosen: str               # the one path that is captured
    map_name: str | None = None   # dm-multipath map (mpatha) when one is assembled


@dataclass
class Nic:
    name: str
    mac: str | None
    driver: str | None
    speed_mbps: int | None
    operstate: str | None


@dataclass
class Inventory:
    disks: list[Disk] = field(default_factory=list)
    controllers: list[Controller] = field(default_factory=list)
    raid_arrays: list[RaidArray] = field(default_factory=list)
    iscsi_sessions: list[IscsiSession] = field(default_factory=list)
    multipaths: list[Multipath] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)
    live_medium: str | None = None    # the disk the live system booted from
    warnings: list[str] = field(default_factory=list)

    def disk(self, name: str) -> Disk | None:
        for d in self.disks:
            if name in (d.name, d.kernel_name, d.dev_path):
                return d
        return None

    def controller(self, cid: str | None) -> Controller | None:
        for c in self.controllers:
            if c.id == cid:
                return c
        return None

    def capture_set(self) -> list[Disk]:
        return [d for d in self.disks if d.capture_default]


def to_dict(obj):
    """Dataclasses -> JSON-ready dicts (dict keys become strings, as JSON wants)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj
