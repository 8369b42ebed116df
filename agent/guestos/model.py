"""What inspection finds in a source OS, and the readiness report built from it."""

from __future__ import annotations

import enum
import textwrap
from dataclasses import dataclass, field

MASK = "****"


class Secret:
    """A CHAP password or similar: printed, logged and serialised as ****.

    The iSCSI login needs the real value (reveal()); nothing else should.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    def to_record(self) -> str:
        """How agent.records writes it: masked."""
        return MASK

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass
class OsInfo:
    id: str | None = None            # rhel, centos, debian ...
    version_id: str | None = None    # "6.10", "12"
    name: str | None = None
    pretty_name: str | None = None
    family: str | None = None        # redhat / debian / suse / unknown
    source: str | None = None        # the file it came from

    @property
    def major(self) -> int | None:
        try:
            return int((self.version_id or "").split(".")[0])
        except ValueError:
            return None


@dataclass
class FstabEntry:
    spec: str
    mountpoint: str
    fstype: str
    options: list[str]
    dump: int = 0
    passno: int = 0
    line: int = 0
    spec_kind: str = "other"   # uuid label partuuid partlabel cciss sd hd vd nvme md
                               # mapper lvm nfs other


@dataclass
class IfcfgFile:
    path: str
    device: str | None
    values: dict[str, str]

    @property
    def hwaddr(self) -> str | None:
        return self.values.get("HWADDR") or None

    @property
    def bootproto(self) -> str:
        return (self.values.get("BOOTPROTO") or "none").strip().lower()


@dataclass
class DebianIface:
    name: str
    family: str               # inet / inet6
    method: str               # dhcp / static / manual / loopback
    options: dict[str, str] = field(default_factory=dict)
    auto: bool = False
    line: int = 0


@dataclass
class NmConnection:
    path: str
    id: str | None
    type: str | None
    interface_name: str | None
    mac_address: str | None
    ipv4_method: str | None


@dataclass
class NetRule:
    """One line of 70-persistent-net.rules: a MAC pinned to a name."""

    mac: str | None
    name: str
    line: int


@dataclass
class IscsiInitiator:
    name: str | None = None
    alias: str | None = None


@dataclass
class IscsidConf:
    settings: dict[str, str] = field(default_factory=dict)   # secrets left out
    secrets: dict[str, Secret] = field(default_factory=dict)

    @property
    def chap(self) -> bool:
        return any(v.strip().upper() == "CHAP" for k, v in self.settings.items()
                   if k.endswith("authmethod"))


@dataclass
class Finding:
    id: str
    severity: str            # high: will not boot / no network; medium; low: good to know
    title: str
    detail: str              # what will bite in a KVM / OpenStack cloud
    fix: str                 # the concrete change
    evidence: list[str] = field(default_factory=list)   # file:line - text
    # What coldclone-convert does about it on the conversion server (None: a person must
    # decide, e.g. which disks become Cinder volumes).
    conversion: str | None = None


class Firmware(str, enum.Enum):
    """How the source boots: decides hw_firmware_type (and q35) of the Glance image."""

    BIOS = "bios"
    UEFI = "uefi"
    UNKNOWN = "unknown"


class BootLoader(str, enum.Enum):
    GRUB2 = "grub2"
    GRUB_LEGACY = "grub-legacy"     # RHEL/CentOS 5-6 grub.conf / menu.lst
    EXTLINUX = "extlinux"
    SYSTEMD_BOOT = "systemd-boot"
    UNKNOWN = "unknown"


@dataclass
class InitramfsDrivers:
    """The virtio drivers an initramfs carries (as modules or built into the kernel)."""

    path: str                                   # /boot/initrd.img-6.1.0-13-amd64
    present: list[str] = field(default_factory=list)   # virtio_blk, virtio_scsi ...
    missing: list[str] = field(default_factory=list)
    error: str | None = None                    # why the file list could not be read


@dataclass
class SourceOS:
    root: str = ""
    os: OsInfo = field(default_factory=OsInfo)
    fstab: list[FstabEntry] = field(default_factory=list)
    lvm_vgs: list[str] = field(default_factory=list)
    ifcfg: list[IfcfgFile] = field(default_factory=list)
    interfaces: list[DebianIface] = field(default_factory=list)
    nm_connections: list[NmConnection] = field(default_factory=list)
    net_rules: list[NetRule] = field(default_factory=list)
    iscsi_initiator: IscsiInitiator | None = None
    iscsid: IscsidConf | None = None
    device_map: dict[str, str] = field(default_factory=dict)   # (hd0) -> /dev/cciss/c0d0
    kernel_roots: list[str] = field(default_factory=list)      # root= of boot entries
    cloud_init: bool = False
    cloud_init_evidence: list[str] = field(default_factory=list)
    boot_loader: BootLoader = BootLoader.UNKNOWN
    boot_loader_evidence: list[str] = field(default_factory=list)
    firmware: Firmware = Firmware.UNKNOWN
    firmware_evidence: list[str] = field(default_factory=list)
    resume: list[str] = field(default_factory=list)            # resume= / RESUME= values
    initramfs: InitramfsDrivers | None = None                  # newest kernel's initramfs
    qemu_guest_agent: bool = False
    findings: list[Finding] = field(default_factory=list)

    def finding(self, fid: str) -> Finding | None:
        return next((f for f in self.findings if f.id == fid), None)

    def render(self, width: int = 80) -> str:
        out = textwrap.wrap(f"OS: {self.os.pretty_name or self.os.name or 'unknown'}"
                            f" ({self.os.source or 'no release file'})", width,
                            subsequent_indent="    ")
        out += textwrap.wrap(f"Boot: {self.boot_loader.value}, firmware {self.firmware.value}"
                             + (f", resume={', '.join(self.resume)}" if self.resume else ""),
                             width, subsequent_indent="    ")
        if self.initramfs is not None:
            ini = self.initramfs
            out += textwrap.wrap(f"Initramfs {ini.path}: " + (
                ini.error or "virtio " + (", ".join(ini.present) or "none")
                + (f" (missing {', '.join(ini.missing)})" if ini.missing else "")),
                width, subsequent_indent="    ")
        if self.iscsi_initiator and self.iscsi_initiator.name:
            out.append(f"iSCSI initiator: {self.iscsi_initiator.name}"[:width])
        if self.iscsid and self.iscsid.secrets:
            out += textwrap.wrap("iscsid.conf CHAP: " + ", ".join(
                f"{k} = {v}" for k, v in sorted(self.iscsid.secrets.items())), width,
                subsequent_indent="    ")
        if not self.findings:
            out.append("No findings: the image should boot as is.")
        order = {"high": 0, "medium": 1, "low": 2}
        for f in sorted(self.findings, key=lambda f: (order.get(f.severity, 3), f.id)):
            out.append("")
            out += textwrap.wrap(f"[{f.severity.upper()}] {f.id}: {f.title}", width,
                                 subsequent_indent="  ")
            for label, text in (("why", f.detail), ("fix", f.fix)):
                out += textwrap.wrap(f"{label}: {text}", width, initial_indent="  ",
                                     subsequent_indent="       ")
            for e in f.evidence:
                out.append(("  - " + e)[:width])
        return "\n".join(out) + "\n"


