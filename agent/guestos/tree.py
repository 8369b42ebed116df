"""Inspect a source OS from its root directory (a mounted filesystem or a
plain tree): read-only, never following links out of the tree."""

from __future__ import annotations

from . import boot, cloudinit, esp, files, grub, iscsi, lvm, netconfig, network, osrelease, readiness
from .fstab import parse_fstab
from .model import Firmware, SourceOS


def looks_like_root(path: str) -> bool:
    return files.exists(path, "etc/fstab") and (
        files.exists(path, "etc/os-release") or files.exists(path, "etc/redhat-release")
        or files.exists(path, "usr/lib/os-release") or files.exists(path, "etc/debian_version")
        or files.exists(path, "sbin/init") or files.exists(path, "usr/sbin/init"))


def looks_like_boot(path: str) -> bool:
    return any(files.exists(path, rel) for rel in (
        "grub/grub.conf", "grub/menu.lst", "grub/grub.cfg", "grub2/grub.cfg",
        "grub/device.map", "grub2/device.map")) or any(
        n.startswith(("vmlinuz", "initrd", "initramfs")) for n in files.listdir(path, "."))


def iscsi_node_records(root: str) -> list[str]:
    out = []
    for rel in ("var/lib/iscsi/nodes", "etc/iscsi/nodes"):
        for target in files.listdir(root, rel):
            for portal in files.listdir(root, f"{rel}/{target}"):
                out.append(f"/{rel}/{target}/{portal}")
    return out


QEMU_GA = ("usr/bin/qemu-ga", "usr/sbin/qemu-ga")


def inspect_tree(root: str, *, boot_root: str | None = None, esp_root: str | None = None,
                 devices: dict[str, str] | None = None,
                 disk_count: int | None = None,
                 disk_firmware: boot.FirmwareVerdict | None = None) -> SourceOS:
    """Everything inspection knows about the OS under root, with its findings.

    boot_root: the separate /boot filesystem, mounted elsewhere; esp_root: the EFI system
    partition (/boot/efi), mounted elsewhere. devices: what
    to suggest instead of hardware names (/dev/cciss/c0d0p1 -> UUID=...).
    disk_count: how many disks discovery says the OS spans. disk_firmware: what the
    partition table says (boot.firmware_from_disk), which the OS's own files only refine.
    """
    src = SourceOS(root=root)
    src.os = osrelease.read_os(root)
    src.fstab = parse_fstab(files.read_text(root, "etc/fstab") or "")
    vgs = set(lvm.read_vgs(root))
    for e in src.fstab:
        vg = lvm.vg_of_entry(e)
        if vg:
            vgs.add(vg)
    src.lvm_vgs = sorted(vgs)
    src.ifcfg = network.read_ifcfg(root)
    src.interfaces = network.read_interfaces(root)
    src.nm_connections = network.read_nm(root)
    src.net_rules = network.read_net_rules(root)
    tree = network.TreeFiles(root, boot_root, esp_root)
    src.network = netconfig.read_network(tree)
    src.esp = esp.read_esp(tree)
    src.iscsi_initiator = iscsi.read_initiator(root)
    src.iscsid = iscsi.read_iscsid(root)
    src.device_map, devmap_path = grub.read_device_map(root, boot_root)
    roots = grub.read_kernel_roots(root, boot_root)
    src.kernel_roots = [r for _, r in roots]
    src.cloud_init, src.cloud_init_evidence = cloudinit.detect(root)
    src.boot_loader, src.boot_loader_evidence = boot.boot_loader(root, boot_root)
    fw = boot.decide_firmware(boot.firmware_from_tree(src.fstab),
                              disk_firmware or boot.FirmwareVerdict(Firmware.UNKNOWN))
    src.firmware, src.firmware_evidence = fw.firmware, fw.evidence
    resume = boot.resume_devices(root, boot_root)
    src.resume = list(dict.fromkeys(r for _, r in resume))
    src.initramfs = boot.virtio_drivers(root, boot_root)
    src.qemu_guest_agent = any(files.exists(root, rel) for rel in QEMU_GA)
    src.findings = readiness.build_findings(
        src, roots=roots, devmap_path=devmap_path, devices=devices, disk_count=disk_count,
        node_records=iscsi_node_records(root), resume=resume)
    return src
