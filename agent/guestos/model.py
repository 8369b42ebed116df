"""What inspection finds in a source OS, and the readiness report built from it."""

from __future__ import annotations

import enum
import re
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
    path: str = "/etc/network/interfaces"
    # every option line in order, repeated keys (up, post-up ...) included: (line, key, value)
    option_lines: list[tuple[int, str, str]] = field(default_factory=list, compare=False)


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


# --- the network (guestos.netconfig reads it, every configuration style into one model) ----

PRIMARY_NAME = "eth0"          # the first virtio NIC's name under net.ifnames=0
NAMES_ARG = "net.ifnames=0"


class NetStyle(str, enum.Enum):
    IFUPDOWN = "ifupdown"
    IFCFG = "ifcfg"
    NM = "networkmanager"
    NETPLAN = "netplan"
    NETWORKD = "systemd-networkd"


class IfaceKind(str, enum.Enum):
    ETHERNET = "ethernet"
    BOND = "bond"
    VLAN = "vlan"
    BRIDGE = "bridge"
    OTHER = "other"           # team, infiniband, tunnels ...: not mapped (a finding says so)


class BindingKind(str, enum.Enum):
    """How a configuration is tied to the old NIC. Each breaks on a virtio NIC with a new MAC
    in another slot, and each has its readiness finding (readiness.BINDING_FINDINGS)."""

    UDEV_RULE = "udev-rule"                   # 70-persistent-net.rules: MAC -> name
    IFCFG_HWADDR = "ifcfg-hwaddr"             # HWADDR= / MACADDR=
    NM_MAC = "nm-mac-address"                 # [ethernet] mac-address=
    INTERFACES_HWADDRESS = "interfaces-hwaddress"   # ifupdown forces the old MAC
    NETPLAN_MATCH = "netplan-match"           # match: macaddress (+ set-name)
    NETWORKD_MATCH = "networkd-match"         # .link / .network [Match] MACAddress=
    HARDWARE_NAME = "hardware-name"           # eno1, ens3, enp3s0f0, em1, p2p1: slot-derived


# Names the kernel never gives: derived from the firmware's onboard index (eno, em), the PCI
# slot (ens, pXpY), the bus path (enp..s..) or the MAC (enx); a virtio NIC in another slot gets
# another one.
HARDWARE_NAME = re.compile(r"^(en[osx][0-9a-f]+\w*|enp\d+s\d+\w*|em\d+\w*|p\d+p\d+\w*|ib\d+|wl\w+)$")


@dataclass
class Binding:
    kind: BindingKind
    path: str
    line: int | None
    mac: str | None             # the old MAC it names (lowercase), if any
    name: str | None            # the interface name it gives or is configured under
    evidence: str


@dataclass
class Iface:
    """One interface configuration (a stanza, an ifcfg file, a keyfile, a netplan or
    networkd entry)."""

    name: str                   # the interface it configures (the connection id if it names none)
    style: NetStyle
    path: str
    line: int | None = None
    kind: IfaceKind = IfaceKind.ETHERNET
    method: str = "none"        # dhcp / static / manual / none
    addresses: list[str] = field(default_factory=list)    # 10.0.2.77/24
    gateway: str | None = None
    dns: list[str] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)       # static routes besides the default
    onboot: bool = True
    members: list[str] = field(default_factory=list)      # a bond's slaves, a bridge's ports
    parent: str | None = None   # a VLAN's device
    vlan_id: int | None = None
    master: str | None = None   # the bond/bridge this interface belongs to
    mac: str | None = None      # the MAC the configuration is bound to
    named: bool = True          # False: it matches any NIC (an NM connection with no
                                # interface-name, a netplan match by driver ...)

    @property
    def static(self) -> bool:
        return self.method == "static" and bool(self.addresses)

    def describe(self) -> str:
        """ens3 (static 10.0.2.77/24 via 10.0.2.2, DNS 10.0.2.3)"""
        if self.static:
            how = "static " + ", ".join(self.addresses) + (f" via {self.gateway}" if self.gateway else "")
        else:
            how = {"dhcp": "DHCP", "manual": "no address", "none": "no address"}.get(self.method, self.method)
        extra = []
        if self.kind is not IfaceKind.ETHERNET:
            extra.append(self.kind.value + (f" over {', '.join(self.members)}" if self.members else "")
                         + (f" on {self.parent}" if self.parent else ""))
        if self.dns:
            extra.append("DNS " + ", ".join(self.dns))
        return f"{self.name} ({how}{''.join('; ' + e for e in extra)})"


@dataclass
class NetworkConfig:
    """What the source OS configures, and which interface carries the default route."""

    interfaces: list[Iface] = field(default_factory=list)
    bindings: list[Binding] = field(default_factory=list)
    kernel_args: list[str] = field(default_factory=list)   # net.ifnames=/biosdevname= seen
    naming_rules: bool = False          # udev's predictable-name rules are installed
    nameservers: list[str] = field(default_factory=list)   # /etc/resolv.conf
    styles: list[NetStyle] = field(default_factory=list)
    primary: str | None = None          # the name of the primary interface
    primary_why: str = ""
    problems: list[str] = field(default_factory=list)      # what cannot be mapped, and why

    @property
    def predictable_names(self) -> bool:
        """Will the guest give NICs slot-derived names: its udev has the rules (systemd 197 and
        later: RHEL 7, Debian 9, Ubuntu 16.04 ...) and no net.ifnames=0 on the kernel line?
        Older systems keep the kernel's ethN."""
        return self.naming_rules and NAMES_ARG not in self.kernel_args

    def named(self, name: str) -> list[Iface]:
        return [i for i in self.interfaces if i.name == name]

    @property
    def primary_iface(self) -> Iface | None:
        return next(iter(self.named(self.primary)), None) if self.primary else None


# --- the EFI system partition (guestos.esp) -----------------------------------------------------

ESP_MOUNT = "/boot/efi"


@dataclass
class EspDir:
    name: str                       # the directory under EFI/ (debian, redhat, BOOT ...)
    files: list[str] = field(default_factory=list)

    def find(self, name: str) -> str | None:
        """A file by name, as FAT does it: case-insensitively."""
        return next((f for f in self.files if f.lower() == name.lower()), None)


@dataclass
class EspLoaders:
    """What the ESP holds: each EFI/ directory's files, and the digests of the loaders."""

    mount: str = ESP_MOUNT
    dirs: list[EspDir] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)    # EFI/x/file -> sha256
    error: str | None = None

    def dir(self, name: str) -> EspDir | None:
        return next((d for d in self.dirs if d.name.lower() == name.lower()), None)

    @property
    def removable(self) -> str | None:
        """The removable-media loader's path (EFI/BOOT/BOOTX64.EFI as spelled on the disk)."""
        d = self.dir("BOOT")
        hit = d.find("BOOTX64.EFI") if d else None
        return f"EFI/{d.name}/{hit}" if hit else None


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
    network: NetworkConfig | None = None                       # every style, as one model
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
    esp: EspLoaders | None = None                              # the EFI system partition's loaders
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
        net = self.network
        if net is not None and net.primary_iface is not None:
            out += textwrap.wrap(f"Network: primary {net.primary_iface.describe()} [{net.primary_iface.style.value}]"
                                 + "".join(f"; {i.describe()}" for i in net.interfaces if i.name != net.primary),
                                 width, subsequent_indent="    ")
        if self.esp is not None:
            out += textwrap.wrap("ESP: " + ("; ".join(f"EFI/{d.name}: {', '.join(d.files)}" for d in self.esp.dirs)
                                            or "no EFI directory"), width, subsequent_indent="    ")
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


