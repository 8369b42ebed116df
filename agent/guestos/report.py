"""The readiness report every capture carries in its manifest (`readiness`): what the
source OS is, how it boots, how it names its disks and NICs, and for each finding what
conversion will do about it. Built by the agent's inspection (source/inspect/report.py),
sent in HELLO and read back by the receiver, coldclone-convert and coldclone-publish, through
agent.records (msgspec): one model, decoded with every field checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import BootLoader, Finding, Firmware, InitramfsDrivers, OsInfo, SourceOS

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
    what: str            # udev-rule / ifcfg-HWADDR / nm-mac-address / interfaces-hwaddress


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


def mac_bindings(src: SourceOS) -> list[MacBinding]:
    out = [MacBinding("/etc/udev/rules.d/70-persistent-net.rules", r.mac, "udev-rule")
           for r in src.net_rules if r.mac]
    out += [MacBinding(c.path, c.hwaddr, "ifcfg-HWADDR") for c in src.ifcfg if c.hwaddr]
    out += [MacBinding(c.path, c.mac_address, "nm-mac-address")
            for c in src.nm_connections if c.mac_address]
    out += [MacBinding("/etc/network/interfaces", i.options["hwaddress"].split()[-1],
                       "interfaces-hwaddress")
            for i in src.interfaces if "hwaddress" in i.options]
    return out


def from_source(src: SourceOS, disk: str | None) -> ReadinessReport:
    names = [DeviceName(e.mountpoint, e.spec, e.spec_kind) for e in src.fstab]
    root = next((n for n in names if n.mountpoint == "/"), None)
    return ReadinessReport(
        os_name=src.os.pretty_name or src.os.name or "unknown OS", findings=src.findings,
        disk=disk, os=src.os, boot_loader=src.boot_loader,
        boot_loader_evidence=src.boot_loader_evidence, firmware=src.firmware,
        firmware_evidence=src.firmware_evidence, root=root, fstab=names,
        swap=[e.spec for e in src.fstab if e.fstype == "swap"], resume=src.resume,
        mac_bindings=mac_bindings(src), initramfs=src.initramfs, cloud_init=src.cloud_init,
        qemu_guest_agent=src.qemu_guest_agent)
