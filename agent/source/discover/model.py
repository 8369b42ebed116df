"""What discovery reports: plain dataclasses the TUI, the headless runner and the
manifest all share. Nothing here knows about pyudev or sysfs.

Sizes and offsets are bytes everywhere, so nobody has to guess a sector size.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from dataclasses import dataclass, field

from ... import devnames
from ...manifest import SourceMachine

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


class Why(str, enum.Enum):
    """Why the policy leaves a disk out of the default capture set: the code programs test,
    with the human text (Disk.exclude_reason) beside it. Values are stable (the manifest)."""

    LIVE_MEDIUM = "live-medium"           # the live system booted from it
    CAPTURE_TARGET = "capture-target"     # the images are written onto it
    MOUNTED_RW = "mounted-rw"             # the running system writes to it
    LIVE_SYSTEM = "live-system"           # the live system's own squashfs loop / overlay
    OPTICAL = "optical"
    FLOPPY = "floppy"
    RAM = "ram"
    MULTIPATH_MAP = "multipath-map"       # captured through one of its paths instead
    DEVICE_MAPPER = "device-mapper"       # the disks under it are captured
    MD_ARRAY = "md-array"                 # its member disks are captured
    LOOP = "loop"                         # loop devices only on request
    NO_MEDIUM = "no-medium"
    ZERO_SIZE = "zero-size"
    NOT_SELECTED = "not-selected"         # the operator chose other disks
    EXCLUDED = "excluded"                 # the operator excluded it by name

    def part_of_live_system(self) -> bool:
        return self in (Why.LIVE_MEDIUM, Why.LIVE_SYSTEM)


@dataclass
class DiskPath:
    """One way to reach a disk: a LUN seen through two HBAs has two paths (sdb, sdc)."""

    name: str                 # sdb
    dev_path: str | None
    kernel_name: str
    controller: str | None = None     # Controller.id of the HBA this path goes through
    by_id: list[str] = field(default_factory=list)
    by_path: list[str] = field(default_factory=list)
    sys_path: str = ""

    def names(self) -> list[str]:
        return [n for n in (self.name, self.kernel_name, self.dev_path, *self.by_id,
                            *self.by_path) if n]


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
    exclude_reason: str | None = None      # the human text of exclude_code
    notes: list[str] = field(default_factory=list)
    exclude_code: Why | None = None
    # Every path to this disk when it is reached through more than one (multipath, with or
    # without a dm map); the disk itself is captured through paths[0], its own name.
    paths: list[DiskPath] = field(default_factory=list)
    backing_file: str | None = None        # a loop device's image file

    @property
    def id(self) -> str:
        """The disk's stable id, as the stream, the estimate and the image file name it:
        cciss!c0d0 -> cciss-c0d0 (file-name safe)."""
        return devnames.stream_name(self.kernel_name)

    def names(self) -> list[str]:
        """Every name this disk answers to, its other paths' names included."""
        own = [self.name, self.kernel_name, self.dev_path, "/dev/" + self.name, self.id,
               *self.by_id, *self.by_path]
        parts = [p.dev_path for p in (self.partition_table.partitions
                                      if self.partition_table else [])]
        return [n for n in own + parts + [n for p in self.paths for n in p.names()] if n]

    def exclude(self, code: Why, reason: str) -> None:
        # First reason wins: it is the most specific one the policy found.
        if self.capture_default:
            self.capture_default = False
            self.exclude_code = code
            self.exclude_reason = reason


@dataclass
class RaidMember:
    slot: int | None          # None: spare or failed
    device: str               # partition or disk name, e.g. sda1
    # The whole disk holding it (the manifest names it: sda); None when discovery saw no disk.
    disk: Disk | None = field(metadata={"ref": True})
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
    # LUN -> the disk it is (the manifest names it)
    luns: dict[int, Disk] = field(default_factory=dict, metadata={"ref": True})


@dataclass
class Multipath:
    """One LUN reached through several paths: the Disk (captured once, through its first
    path) and the dm-multipath map when one is assembled. Both are references to disks of
    the inventory; the manifest names them."""

    wwid: str
    disk: Disk = field(metadata={"ref": True})
    map: Disk | None = field(default=None, metadata={"ref": True})

    @property
    def paths(self) -> list[str]:
        return [p.name for p in self.disk.paths]

    @property
    def chosen(self) -> str:
        """The path the LUN is captured through: the Disk's own name."""
        return self.disk.name


@dataclass
class Nic:
    """One network interface: what discovery records in the inventory, and what the network
    set-up (coldclone.ip=, the TUI's network screen, iSCSI's borrowed address) chooses from."""

    name: str
    mac: str | None
    driver: str | None = None
    pci_slot: str | None = None       # the NIC's PCI function (0000:00:03.0); None: USB, virtual
    speed_mbps: int | None = None
    operstate: str | None = None
    carrier: bool | None = None                               # None: the kernel does not say
    addresses: list[str] = field(default_factory=list)       # "10.0.2.15/24"
    # udev's predictable names for it (ID_NET_NAME_ONBOARD/SLOT/PATH/MAC: eno1, ens3, enp0s3,
    # enx...): what the source OS calls this NIC when it uses them; empty without udevd
    udev_names: list[str] = field(default_factory=list)

    @property
    def up(self) -> bool:
        return self.operstate == "up" or bool(self.carrier)

    @property
    def ipv4(self) -> list[str]:
        return [a for a in self.addresses if ":" not in a]

    @property
    def label(self) -> str:
        speed = f"{self.speed_mbps} Mb/s" if self.speed_mbps else "no link" if self.carrier is False else "-"
        return f"{self.name} {self.mac or '-'} {speed} {self.operstate or '-'}"


@dataclass
class Inventory:
    disks: list[Disk] = field(default_factory=list)
    controllers: list[Controller] = field(default_factory=list)
    raid_arrays: list[RaidArray] = field(default_factory=list)
    iscsi_sessions: list[IscsiSession] = field(default_factory=list)
    multipaths: list[Multipath] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)
    machine: SourceMachine | None = None   # CPUs and memory (the launch plan's flavor follows them)
    live_medium: str | None = None    # the disk the live system booted from
    warnings: list[str] = field(default_factory=list)
    # Names in the operator's disks= that are no disk here (also said in warnings).
    unknown_selected: list[str] = field(default_factory=list)
    # Device nodes discovery saw that no Disk lists (partitions the table does not hold, the
    # partitions of a multipath disk's other paths) -> the name of their disk.
    aliases: dict[str, str] = field(default_factory=dict, compare=False, repr=False,
                                    metadata={"internal": True})
    # Taken from the running machine (not a recording): links in /dev may be followed.
    live: bool = field(default=False, compare=False, repr=False, metadata={"internal": True})

    def resolve(self, spec: str | None) -> Disk | None:
        """The disk that `spec` names: sda, /dev/sda, cciss/c0d0, cciss!c0d0, cciss-c0d0,
        /dev/cciss/c0d0, a /dev/disk/by-id|by-path link (or by-id/...), a partition, or any
        path of a multipath disk. The one answer to "which disk is this" in the agent."""
        if not spec:
            return None
        index: dict[str, Disk] = {}
        for d in self.disks:
            for n in d.names():
                index.setdefault(n, d)
        for n, owner in self.aliases.items():
            if owner in index:
                index.setdefault(n, index[owner])
        candidates = [spec]
        if not spec.startswith("/"):
            candidates += ["/dev/" + spec, "/dev/disk/" + spec]
        for c in candidates:
            if c in index:
                return index[c]
        # A link this inventory does not list (udev made it after discovery, or a symlink of
        # the operator's own): on the running machine it points at a node we know.
        if self.live and spec.startswith("/dev/") and os.path.islink(spec):
            return index.get(os.path.realpath(spec))
        return None

    def disk(self, name: str | None) -> Disk | None:
        """The same answer as resolve()."""
        return self.resolve(name)

    def controller(self, cid: str | None) -> Controller | None:
        for c in self.controllers:
            if c.id == cid:
                return c
        return None

    def capture_set(self) -> list[Disk]:
        return [d for d in self.disks if d.capture_default]


def _ref(value):
    """A reference to a disk (or a dict of them) as the disk's name."""
    if isinstance(value, dict):
        return {str(k): v.name for k, v in value.items()}
    return value.name if value is not None else None


def to_dict(obj):
    """Dataclasses -> JSON-ready dicts (dict keys become strings, as JSON wants). A field
    marked as a reference to another disk becomes that disk's name; internal indexes stay out."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get("internal"):
                continue
            out[f.name] = _ref(value) if f.metadata.get("ref") else to_dict(value)
        return out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj
