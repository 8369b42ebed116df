"""Typed records of a conversion: the guest's volumes, each fix applied, and the result that
goes into the `conversion` section of manifest.json."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ...choices import ConvertEngine, ConvertNetwork


class FixKind(str, enum.Enum):
    FSTAB_DEVICE = "fstab-device-name"          # /dev/sda2 / ... -> UUID=...
    CRYPTTAB_DEVICE = "crypttab-device-name"
    KERNEL_ROOT = "kernel-root-device"          # root=/dev/sda2 on a kernel line
    KERNEL_RESUME = "kernel-resume-device"      # resume=/dev/sda3 (kernel line or initramfs conf)
    NET_RULE_MAC = "udev-net-rule-mac"          # 70-persistent-net.rules pins a name to a MAC
    IFCFG_MAC = "ifcfg-hwaddr"                  # HWADDR= / MACADDR= in ifcfg-*
    NM_MAC = "networkmanager-mac-address"       # mac-address= in a keyfile
    INTERFACES_MAC = "interfaces-hwaddress"     # hwaddress in /etc/network/interfaces
    GRUB_DEVICE_MAP = "grub-device-map"         # (hd0) /dev/sda in grub's device.map
    HARDWARE_SERVICE = "hardware-service-disabled"
    # the network mapping (netmap.py): the primary interface on the first virtio NIC
    NET_KERNEL_ARG = "kernel-net-ifnames"       # net.ifnames=0 on a kernel line
    NET_RENAME = "network-primary-renamed"      # the primary's configuration moved to eth0
    NET_DHCP = "network-primary-dhcp"           # --network dhcp: static settings -> DHCP
    NET_FLATTEN = "network-bond-vlan-flattened"  # a bond/VLAN/bridge made the plain interface
    NET_MEMBER_DISABLED = "network-member-disabled"   # its member/parent NICs' configurations
    NET_DISABLED = "network-interface-disabled"  # another interface's configuration disabled
    NETPLAN_MAC = "netplan-mac-match"           # match: macaddress / set-name removed
    NETWORKD_MAC = "networkd-mac-match"         # a .link/.network MACAddress= match removed
    # a host-only initramfs (engine fixups): the virtio drivers added, the initramfs rebuilt
    INITRAMFS_MODULES = "initramfs-virtio-modules"
    INITRAMFS_REBUILT = "initramfs-rebuilt"
    # UEFI: the guest's own loader at the removable-media path a fresh NVRAM boots
    UEFI_REMOVABLE = "uefi-removable-loader"


class Outcome(str, enum.Enum):
    CONVERTED = "converted"
    NOT_CONVERTED = "not_converted"     # the guest is not something we can convert (no OS ...)
    FAILED = "failed"                   # a tool broke; the message says which and why


class CopyMethod(str, enum.Enum):
    COPY = "copy"                       # qemu-img convert: a standalone qcow2
    OVERLAY = "overlay"                 # qcow2 overlay backed by the evidence (read-only)
    VIRT_V2V = "virt-v2v"               # written by virt-v2v -o local


@dataclass(frozen=True)
class Volume:
    """A filesystem (or swap) of the guest as the libguestfs appliance sees it."""

    device: str          # appliance name, /dev/sda2
    disk_index: int      # position of its disk in the capture (0 = first disk)
    partition: int | None
    fstype: str          # ext4, xfs, swap, linux_raid_member ...
    uuid: str


@dataclass(frozen=True)
class Fix:
    kind: FixKind
    path: str                 # the guest file changed (or the unit link removed)
    line: int | None          # 1-based line in the file before the change
    before: str
    after: str
    why: str

    def render(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{self.kind.value}: {where}: {self.before.strip()!r} -> {self.after.strip()!r}"


@dataclass
class FixResult:
    """What a pure fix function returns: the new file text, the fixes, and what it left alone."""

    text: str
    fixes: list[Fix] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.fixes)


@dataclass
class GuestOS:
    root: str                 # appliance device of the root filesystem
    type: str                 # linux / windows ...
    distro: str
    product: str
    major: int
    minor: int
    mountpoints: list[tuple[str, str]]    # (mountpoint, appliance device), as the guest's fstab says


@dataclass
class ImageOut:
    disk: str                 # the capture's disk name
    evidence: str             # its verified image (untouched)
    image: str                # the converted image beside it
    method: CopyMethod
    bytes_allocated: int = 0


@dataclass
class NetworkMapping:
    """The manifest's `conversion.network`: what the guest's network became."""

    policy: ConvertNetwork
    primary: str | None = None          # the source's primary interface (the default route)
    style: str | None = None            # ifupdown / ifcfg / networkmanager / netplan / systemd-networkd
    name: str | None = None             # its name on the instance (the first virtio NIC)
    method: str | None = None           # dhcp / static, after the policy
    addresses: list[str] = field(default_factory=list)
    gateway: str | None = None
    dns: list[str] = field(default_factory=list)
    flattened: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class Conversion:
    """The manifest's `conversion` section (written and read through agent.records)."""

    result: Outcome
    message: str
    engine: ConvertEngine
    engine_versions: dict[str, str]
    accel: str                # kvm / tcg: how the libguestfs appliance (and virt-v2v) ran
    accel_reason: str
    started: str
    finished: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    os: GuestOS | None = None
    images: list[ImageOut] = field(default_factory=list)
    fixes: list[Fix] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    network: NetworkMapping | None = None


@dataclass(frozen=True)
class Verdict:
    """What a conversion came to, as the manifest's `conversion` section says it (what
    `coldclone-server status` shows): read with CaptureDirectory.section("conversion",
    Verdict), the rest of the section (the whole of it is Conversion) is not looked at."""

    result: Outcome
    message: str = ""
    finished: str = ""


# The readiness finding (agent/inspect/readiness.py, CONVERSION) that each kind of fix answers.
# None: no finding predicts it (the converter found it on its own). The agent's prediction
# before the capture and what the conversion server did must agree: prediction_gaps says where
# they do not.
FINDING_OF_FIX: dict[FixKind, str | None] = {
    FixKind.FSTAB_DEVICE: "fstab-device-names",
    FixKind.CRYPTTAB_DEVICE: None,
    FixKind.KERNEL_ROOT: "bootloader-root-device",
    FixKind.KERNEL_RESUME: "resume-device",
    FixKind.NET_RULE_MAC: "persistent-net-rules",
    FixKind.IFCFG_MAC: "ifcfg-hwaddr",
    FixKind.NM_MAC: "nm-mac-address",
    FixKind.INTERFACES_MAC: "interfaces-hwaddress",
    FixKind.GRUB_DEVICE_MAP: "grub-device-map",
    FixKind.HARDWARE_SERVICE: None,
    FixKind.NET_KERNEL_ARG: "primary-nic",
    FixKind.NET_RENAME: "primary-nic",
    FixKind.NET_DHCP: "static-ip",
    FixKind.NET_FLATTEN: "nic-bond-vlan",
    FixKind.NET_MEMBER_DISABLED: "nic-bond-vlan",
    FixKind.NET_DISABLED: "secondary-nics",
    FixKind.NETPLAN_MAC: "netplan-mac-match",
    FixKind.NETWORKD_MAC: "networkd-mac-match",
    FixKind.INITRAMFS_MODULES: "initramfs-virtio",
    FixKind.INITRAMFS_REBUILT: "initramfs-virtio",
    FixKind.UEFI_REMOVABLE: "uefi-removable-loader",
}
# Findings the engine answers as a whole rather than by a fix of ours (no Fix record).
FINDING_OF_ENGINE: dict[str, ConvertEngine] = {"initramfs-virtio": ConvertEngine.VIRT_V2V}
# Findings a --network policy answers by leaving things as they are: with keep, the primary's
# static address is kept on purpose (the finding said so), no fix is made.
FINDING_OF_POLICY: dict[str, ConvertNetwork] = {"static-ip": ConvertNetwork.KEEP}


@dataclass(frozen=True)
class PredictionGaps:
    unanswered: tuple[str, ...]       # findings promised a conversion that nothing carried out
    unpredicted: tuple[Fix, ...]      # fixes applied that no finding predicted

    @property
    def agree(self) -> bool:
        return not self.unanswered and not self.unpredicted


def prediction_gaps(promised: list[str], engine: ConvertEngine, fixes: list[Fix],
                    network: ConvertNetwork = ConvertNetwork.DHCP) -> PredictionGaps:
    """``promised``: the ids of the readiness findings that say what conversion will do."""
    answered = {FINDING_OF_FIX[f.kind] for f in fixes} | {
        fid for fid, eng in FINDING_OF_ENGINE.items() if eng is engine} | {
        fid for fid, pol in FINDING_OF_POLICY.items() if pol is network}
    return PredictionGaps(
        unanswered=tuple(fid for fid in promised if fid not in answered),
        unpredicted=tuple(f for f in fixes if FINDING_OF_FIX[f.kind] not in promised))
