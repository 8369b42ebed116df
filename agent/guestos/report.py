"""The readiness report every capture carries in its manifest (`readiness`): what the
source OS is, how it boots, how it names its disks and NICs, and for each finding what
conversion will do about it. Built by the agent's inspection (source/inspect/report.py),
sent in HELLO and read back by the receiver, coldclone-convert and coldclone-publish, through
agent.records (msgspec): one model, decoded with every field checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import BootLoader, Finding, Firmware, InitramfsDrivers, OsInfo, SourceOS
from .esp import EspLoaders
from .netconfig import BindingKind, NetworkConfig

REPORT_VERSION = 1


@dataclass
class DeviceName:
    """One fstab entry and the kind of name it uses (uuid, label, sd, cciss, lvm, md ...)."""

    mountpoint: str
    spec: str
    kind: str


@dataclass
class MacBinding:
    """Network configuration tied to the old NIC's MAC address."""

    path: str            # the file (udev rule, ifcfg, keyfile, interfaces)
    mac: str
    what: str            # udev-rule / ifcfg-HWADDR / nm-mac-address / interfaces-hwaddress /
                         # netplan-match / networkd-match


@dataclass
class ReadinessReport:
    """What inspection found; os_name None: no OS found on the disks (error says why)."""

    os_name: str | None = None
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None
    disk: str | None = None                   # the disk holding the root filesystem
    os: OsInfo | None = None
    boot_loader: BootLoader = BootLoader.UNKNOWN
    boot_loader_evidence: list[str] = field(default_factory=list)
    firmware: Firmware = Firmware.UNKNOWN
    firmware_evidence: list[str] = field(default_factory=list)
    root: DeviceName | None = None
    fstab: list[DeviceName] = field(default_factory=list)
    swap: list[str] = field(default_factory=list)
    resume: list[str] = field(default_factory=list)
    mac_bindings: list[MacBinding] = field(default_factory=list)
    network: NetworkConfig | None = None      # the interfaces, the primary, the bindings
    esp: EspLoaders | None = None             # the EFI system partition's boot loaders
    initramfs: InitramfsDrivers | None = None
    cloud_init: bool = False
    qemu_guest_agent: bool = False
    version: int = REPORT_VERSION

    def summary(self) -> list[str]:
        """A few lines for the headless console and the TUI's Done screen."""
        if not self.os_name:
            return ["readiness: no source OS found on the captured disks"
                    + (f" ({self.error})" if self.error else "")]
        out = [f"readiness: {self.os_name} on {self.disk or '?'}; firmware {self.firmware.value}, "
               f"boot loader {self.boot_loader.value}, cloud-init "
               f"{'yes' if self.cloud_init else 'no'}"]
        if self.root is not None:
            out.append(f"readiness: root {self.root.spec} ({self.root.kind})"
                       + (f", resume={', '.join(self.resume)}" if self.resume else ""))
        net = self.network
        if net is not None and net.primary:
            prim = net.primary_iface
            out.append(f"readiness: network: primary {prim.describe() if prim else net.primary}"
                       f" [{prim.style.value if prim else '?'}]"
                       + (f", {len(net.interfaces) - len(net.named(net.primary))} more configured"
                          if len(net.interfaces) > len(net.named(net.primary)) else ""))
        if self.esp is not None:
            out.append("readiness: ESP: " + ("; ".join(f"EFI/{d.name}: {', '.join(d.files)}" for d in self.esp.dirs)
                                             or "no EFI directory"))
        if self.initramfs is not None:
            ini = self.initramfs
            out.append(f"readiness: initramfs {ini.path}: " + (
                ini.error or ("virtio " + (", ".join(ini.present) or "none")
                              + (f"; missing {', '.join(ini.missing)}" if ini.missing else ""))))
        order = {"high": 0, "medium": 1, "low": 2}
        for f in sorted(self.findings, key=lambda f: (order.get(f.severity, 3), f.id)):
            out.append(f"readiness: [{f.severity}] {f.id}: "
                       + (f"conversion will {f.conversion}" if f.conversion else
                          "no automatic fix: " + f.fix))
        if not self.findings:
            out.append("readiness: no findings, the image should boot on KVM as is")
        return out


_WHAT = {BindingKind.UDEV_RULE: "udev-rule", BindingKind.IFCFG_HWADDR: "ifcfg-HWADDR",
         BindingKind.NM_MAC: "nm-mac-address", BindingKind.INTERFACES_HWADDRESS: "interfaces-hwaddress",
         BindingKind.NETPLAN_MATCH: "netplan-match", BindingKind.NETWORKD_MATCH: "networkd-match"}


def mac_bindings(src: SourceOS) -> list[MacBinding]:
    if src.network is None:
        return []
    return [MacBinding(b.path, b.mac, _WHAT[b.kind]) for b in src.network.bindings
            if b.mac and b.kind in _WHAT]


def from_source(src: SourceOS, disk: str | None) -> ReadinessReport:
    names = [DeviceName(e.mountpoint, e.spec, e.spec_kind) for e in src.fstab]
    root = next((n for n in names if n.mountpoint == "/"), None)
    return ReadinessReport(
        os_name=src.os.pretty_name or src.os.name or "unknown OS", findings=src.findings,
        disk=disk, os=src.os, boot_loader=src.boot_loader,
        boot_loader_evidence=src.boot_loader_evidence, firmware=src.firmware,
        firmware_evidence=src.firmware_evidence, root=root, fstab=names,
        swap=[e.spec for e in src.fstab if e.fstype == "swap"], resume=src.resume,
        mac_bindings=mac_bindings(src), network=src.network, esp=src.esp, initramfs=src.initramfs,
        cloud_init=src.cloud_init, qemu_guest_agent=src.qemu_guest_agent)
