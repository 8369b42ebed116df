"""The cloud-readiness report: what in the source OS will bite once the image
boots as a KVM / OpenStack instance (new disks named /dev/vdX, new NICs with
new MACs, one disk per Glance image, metadata from cloud-init), each with the
concrete fix."""

from __future__ import annotations

import re

from . import fstab as fstabmod
from . import lvm
from .model import Finding, SourceOS

# What coldclone-convert (virt-v2v plus our libguestfs fix-ups) does about a finding, in
# words that follow "conversion will". Findings not listed need a person's decision.
CONVERSION = {
    "fstab-device-names": "rewrite these fstab entries to UUID= names",
    "bootloader-root-device": "rewrite root= on the kernel lines to UUID=",
    "grub-device-map": "rewrite device.map for the virtio disk (hd0) /dev/vda",
    "resume-device": "rewrite resume= to the swap partition's UUID=",
    "persistent-net-rules": "remove the MAC-bound udev net rules",
    "ifcfg-hwaddr": "remove the HWADDR= lines",
    "nm-mac-address": "remove mac-address= from the NetworkManager connections",
    "interfaces-hwaddress": "remove the hwaddress lines",
    "initramfs-virtio": "rebuild the initramfs with the virtio drivers (virt-v2v)",
}

# Interface names that only exist on the old hardware (biosdevname / systemd
# names of onboard or PCI-slot NICs); a virtio NIC gets eth0 / ens3 / enp1s0.
HW_NIC_NAME = re.compile(r"^(em\d+|p\d+p\d+|eno\d+\w*|enp\d+s\d+f\d+\w*|ens\d+f\d+\w*|ib\d+)$")

HARDWARE_KINDS = {"cciss": "an HP Smart Array (cciss) name", "hd": "an IDE name",
                  "sd": "a SCSI/SATA name", "nvme": "an NVMe name",
                  "by-id": "a name made of the hardware's serial or bus path"}


def _ev(path: str, line: int | None, text: str) -> str:
    return f"{path}:{line}: {text}" if line else f"{path}: {text}"


def fstab_findings(src: SourceOS, devices: dict[str, str]) -> list[Finding]:
    out = []
    hw = [e for e in src.fstab if e.spec_kind in HARDWARE_KINDS]
    if hw:
        fixes, evidence = [], []
        for e in hw:
            evidence.append(_ev("/etc/fstab", e.line, f"{e.spec} {e.mountpoint} {e.fstype}"))
            new = devices.get(e.spec)
            fixes.append(f"line {e.line}: {e.spec} -> {new or 'UUID=<blkid of it>'}")
        severe = any(e.spec_kind != "sd" for e in hw)
        out.append(Finding(
            id="fstab-device-names", severity="high" if severe else "medium",
            title="fstab names disks by hardware-specific device names",
            detail="Under KVM the disks are /dev/vda, /dev/vdb ... (virtio-blk); names like "
                   + ", ".join(sorted({HARDWARE_KINDS[e.spec_kind] for e in hw}))
                   + " no longer exist, so the mounts fail at boot and the system stops in "
                     "an emergency shell.",
            fix="In /etc/fstab use UUID= (or LABEL=) names: " + "; ".join(fixes) + ".",
            evidence=evidence))
    return out


def boot_findings(src: SourceOS, roots: list[tuple[str, str]], devmap_path: str | None,
                  devices: dict[str, str]) -> list[Finding]:
    out = []
    bad_roots = [(f, r) for f, r in roots
                 if fstabmod.classify_spec(r) in ("cciss", "hd", "sd", "nvme", "by-id")]
    if bad_roots:
        fixes = sorted({f"root={r} -> root={devices.get(r, 'UUID=<uuid of />')}"
                        for _, r in bad_roots})
        out.append(Finding(
            id="bootloader-root-device", severity="high",
            title="the kernel command line names the root disk by a hardware name",
            detail="The kernel looks for its root filesystem under a name the virtual disk "
                   "will not have and panics (\"unable to mount root fs\").",
            fix="In the boot loader configuration (and /etc/default/grub, then regenerate "
                "grub.cfg) use " + "; ".join(fixes) + ".",
            evidence=[_ev(f, None, f"root={r}") for f, r in bad_roots]))
    hw_map = {k: v for k, v in src.device_map.items()
              if fstabmod.classify_spec(v) in ("cciss", "hd", "sd", "nvme", "by-id")}
    if hw_map:
        out.append(Finding(
            id="grub-device-map", severity="medium",
            title="grub's device.map maps BIOS disks to hardware device names",
            detail="grub-install and kernel updates (grubby, grub2-mkconfig) read device.map; "
                   "with names that no longer exist they fail or write the boot loader to "
                   "the wrong disk.",
            fix=f"Rewrite {devmap_path} as \"(hd0) /dev/vda\" (one line per disk, in boot "
                f"order) or delete it so grub probes the disks again.",
            evidence=[_ev(devmap_path or "device.map", None, f"{k} {v}")
                      for k, v in sorted(hw_map.items())]))
    return out


def storage_findings(src: SourceOS, disk_count: int | None) -> list[Finding]:
    out = []
    root = next((e for e in src.fstab if e.mountpoint == "/"), None)
    root_vg = lvm.vg_of_entry(root) if root else None
    if root_vg:
        out.append(Finding(
            id="lvm-root", severity="medium",
            title=f"the root filesystem is on LVM (volume group {root_vg})",
            detail="Cloud images are grown by growing the last partition; an LVM root "
                   "needs the PV, the LV and the filesystem extended too, and cloud-init's "
                   "growpart alone does not do it. A VG of the same name on the conversion "
                   "host also confuses tools that mount the image there.",
            fix=f"After first boot on a larger disk: growpart /dev/vda <n>; pvresize "
                f"/dev/vda<n>; lvextend -r -l +100%FREE /dev/{root_vg}/<root LV> (or a "
                f"cloud-init runcmd doing the same). Keep lvm2 in the initramfs.",
            evidence=[_ev("/etc/fstab", root.line, f"{root.spec} /")]))
    swaps = [e for e in src.fstab if e.fstype == "swap" and e.spec_kind not in ("other",)]
    if swaps:
        out.append(Finding(
            id="swap-partition", severity="low",
            title="swap space lives on the system disk",
            detail="The swap partition is copied into the image and into every instance "
                   "made from it; if it is named by device it also stalls the boot.",
            fix="Keep it named by UUID=, or drop the fstab line (and the partition) and use "
                "a flavor with a swap disk or a swap file instead.",
            evidence=[_ev("/etc/fstab", e.line, f"{e.spec} swap") for e in swaps]))
    boot = next((e for e in src.fstab if e.mountpoint == "/boot"), None)
    if boot:
        out.append(Finding(
            id="separate-boot", severity="low",
            title="/boot is a separate filesystem",
            detail="Fine under KVM, as long as the image contains the /boot partition and "
                   "the boot loader area in front of it; a whole-disk capture does.",
            fix="Capture the whole disk (the default); do not capture only the root "
                "partition.",
            evidence=[_ev("/etc/fstab", boot.line, f"{boot.spec} /boot {boot.fstype}")]))
    disks = set()
    for e in src.fstab:
        d = fstabmod.disk_of_spec(e.spec)
        if d:
            disks.add(d)
    md = [e for e in src.fstab if e.spec_kind == "md"]
    count = max(len(disks), disk_count or 0)
    if count > 1:
        out.append(Finding(
            id="multiple-disks", severity="medium",
            title=f"the system uses {count} disks",
            detail="A Glance image is one disk. Instances built from it see only the boot "
                   "disk; filesystems on the others fail to mount.",
            fix="Upload the boot disk as the image and the other disks as Cinder volumes, "
                "attached in the same order before first boot; or mark their fstab entries "
                "nofail.",
            evidence=sorted(disks)))
    if md:
        out.append(Finding(
            id="md-raid", severity="medium",
            title="filesystems on Linux software RAID (md)",
            detail="Each captured member disk holds one half (or one stripe) of the array; "
                   "the instance needs every member attached, in slot order, or the array "
                   "starts degraded or not at all.",
            fix="Attach all member images, in the order the inventory lists them; after "
                "migration consider moving the data to a plain virtual disk (the cloud "
                "storage is redundant already).",
            evidence=[_ev("/etc/fstab", e.line, f"{e.spec} {e.mountpoint}") for e in md]))
    nfs = [e for e in src.fstab if e.spec_kind == "nfs" or e.fstype.startswith("nfs")]
    if nfs:
        out.append(Finding(
            id="network-filesystems", severity="low",
            title="fstab mounts network filesystems",
            detail="The instance must reach these servers from its tenant network, or the "
                   "boot waits for them.",
            fix="Check routing/firewalls from the cloud network, or add nofail,_netdev.",
            evidence=[_ev("/etc/fstab", e.line, f"{e.spec} {e.mountpoint}") for e in nfs]))
    return out


def network_findings(src: SourceOS) -> list[Finding]:
    out = []
    bound = [c for c in src.ifcfg if c.hwaddr]
    if bound:
        out.append(Finding(
            id="ifcfg-hwaddr", severity="high",
            title="network configuration is bound to the old MAC addresses (HWADDR)",
            detail="The virtual NIC has a new MAC; ifup refuses a config whose HWADDR does "
                   "not match (\"Device eth0 has different MAC address than expected\"), so "
                   "the instance comes up without network.",
            fix="Delete the HWADDR= line (and UUID= if NetworkManager manages it) from "
                + ", ".join(c.path for c in bound) + ".",
            evidence=[_ev(c.path, None, f"HWADDR={c.hwaddr}") for c in bound]))
    pinned = [r for r in src.net_rules if r.mac]
    if pinned:
        out.append(Finding(
            id="persistent-net-rules", severity="high",
            title="udev pins interface names to the old MAC addresses",
            detail="70-persistent-net.rules keeps eth0 for the old NIC, so the virtual NIC "
                   "becomes eth1 (or higher) and none of the eth0 configuration applies.",
            fix="Delete /etc/udev/rules.d/70-persistent-net.rules; on RHEL/CentOS 6 also "
                "stop it being regenerated: ln -s /dev/null "
                "/etc/udev/rules.d/75-persistent-net-generator.rules.",
            evidence=[_ev("/etc/udev/rules.d/70-persistent-net.rules", r.line,
                          f"{r.mac} -> {r.name}") for r in pinned]))
    nm_bound = [c for c in src.nm_connections if c.mac_address]
    if nm_bound:
        out.append(Finding(
            id="nm-mac-address", severity="high",
            title="NetworkManager connections are bound to the old MAC addresses",
            detail="A connection with mac-address= only activates on that NIC; the virtual "
                   "NIC gets no configuration.",
            fix="Remove mac-address= from the [ethernet] section of "
                + ", ".join(c.path for c in nm_bound) + ".",
            evidence=[_ev(c.path, None, f"mac-address={c.mac_address}") for c in nm_bound]))
    hwaddress = [i for i in src.interfaces if "hwaddress" in i.options]
    if hwaddress:
        out.append(Finding(
            id="interfaces-hwaddress", severity="medium",
            title="/etc/network/interfaces forces the old MAC address (hwaddress)",
            detail="ifup sets the physical server's MAC on the virtual NIC: OpenStack port "
                   "security drops its traffic, and the MAC clashes with the original server.",
            fix="Delete the hwaddress lines from /etc/network/interfaces.",
            evidence=[_ev("/etc/network/interfaces", i.line,
                          f"iface {i.name}: hwaddress {i.options['hwaddress']}")
                      for i in hwaddress]))
    names = sorted({c.device for c in src.ifcfg if c.device and HW_NIC_NAME.match(c.device)}
                   | {i.name for i in src.interfaces if HW_NIC_NAME.match(i.name)}
                   | {c.interface_name for c in src.nm_connections
                      if c.interface_name and HW_NIC_NAME.match(c.interface_name)})
    if names:
        out.append(Finding(
            id="hardware-nic-names", severity="medium",
            title="network configuration uses NIC names of the physical server",
            detail=f"Names like {', '.join(names)} belong to onboard/PCI-slot NICs; the virtio NIC "
                   "will be eth0 (older systems) or ens3/enp1s0, so no configuration "
                   "matches it.",
            fix="Rename the configuration to the name the VM's NIC gets (eth0 or ens3), "
                "or let cloud-init write the network configuration.",
            evidence=names))
    static = ([c.path for c in src.ifcfg
               if c.bootproto in ("none", "static") and c.values.get("IPADDR")]
              + [f"/etc/network/interfaces: {i.name}" for i in src.interfaces
                 if i.method == "static"]
              + [c.path for c in src.nm_connections if c.ipv4_method == "manual"])
    if static:
        out.append(Finding(
            id="static-ip", severity="medium",
            title="static IP configuration",
            detail="OpenStack hands out addresses by DHCP; a static address works only if "
                   "the Neutron port has exactly that fixed IP on a subnet with the same "
                   "gateway, otherwise the instance is unreachable.",
            fix="Switch to DHCP (BOOTPROTO=dhcp / iface ... inet dhcp / ipv4.method=auto), "
                "or create the Neutron port with the same fixed IP.",
            evidence=static))
    return out


def resume_findings(resume: list[tuple[str, str]], devices: dict[str, str]) -> list[Finding]:
    bad = [(f, r) for f, r in resume
           if fstabmod.classify_spec(r) in ("cciss", "hd", "sd", "nvme", "by-id")]
    if not bad:
        return []
    fixes = sorted({f"resume={r} -> resume={devices.get(r, 'UUID=<uuid of the swap>')}"
                    for _, r in bad})
    return [Finding(
        id="resume-device", severity="high",
        title="resume= names the swap partition by a hardware name",
        detail="The initramfs waits for the resume device before mounting root; a name "
               "the virtual disk does not have stalls the boot (\"Gave up waiting for "
               "suspend/resume device\") or drops it to a shell.",
        fix="Use UUID= for resume (kernel line, /etc/default/grub and "
            "/etc/initramfs-tools/conf.d/resume, then update-initramfs): " + "; ".join(fixes) + ".",
        evidence=[_ev(f, None, f"resume={r}") for f, r in bad])]


def initramfs_findings(src: SourceOS) -> list[Finding] | None:
    """From the initramfs's own file list; None when it could not be read (then the
    release-based guess in platform_findings stands)."""
    ini = src.initramfs
    if ini is None or ini.error:
        return None
    needed = [d for d in ("virtio_blk", "virtio_scsi") if d in ini.missing]
    if len(needed) < 2 and "virtio_pci" not in ini.missing:
        return []
    return [Finding(
        id="initramfs-virtio", severity="high",
        title=f"the initramfs {ini.path} has no virtio disk driver",
        detail="The kernel cannot find its root disk on a virtio-blk/virtio-scsi controller "
               "and stops in the initramfs (\"ALERT! ... does not exist\").",
        fix="Rebuild it with the virtio drivers (Debian: add virtio_pci virtio_blk "
            "virtio_scsi virtio_net to /etc/initramfs-tools/modules, update-initramfs -u; "
            "RHEL: dracut -f --add-drivers \"virtio_pci virtio_blk virtio_scsi virtio_net\").",
        evidence=[f"{ini.path}: present {', '.join(ini.present) or 'none'}; missing "
                  f"{', '.join(ini.missing)}"])]


def platform_findings(src: SourceOS) -> list[Finding]:
    out = []
    if not src.cloud_init:
        install = {"redhat": "yum install cloud-init", "debian": "apt-get install cloud-init",
                   "suse": "zypper install cloud-init"}.get(src.os.family or "",
                                                            "install the cloud-init package")
        out.append(Finding(
            id="no-cloud-init", severity="medium",
            title="cloud-init is not installed",
            detail="Without cloud-init the instance ignores the cloud's metadata: no SSH key "
                   "injection, hostname, network config or root filesystem growth.",
            fix=f"Install it before capture ({install}) or into the image on the conversion "
                f"server: virt-customize -a image.qcow2 --install cloud-init.",
            evidence=src.cloud_init_evidence or ["no /usr/bin/cloud-init, no cloudinit module"]))
    major = src.os.major
    from_file = initramfs_findings(src)
    if from_file is not None:
        out += from_file
    elif src.os.family == "redhat" and major is not None and major <= 7:
        cmd = ("mkinitrd --with=virtio_pci --with=virtio_blk --with=virtio_net -f "
               "/boot/initrd-$(uname -r).img $(uname -r)" if major <= 5 else
               "dracut -f --add-drivers \"virtio_pci virtio_blk virtio_scsi virtio_net\" "
               "/boot/initramfs-$(uname -r).img $(uname -r)")
        out.append(Finding(
            id="initramfs-virtio", severity="high",
            title=f"the initramfs of {src.os.pretty_name or 'this RHEL release'} was built "
                  "for the physical hardware",
            detail="Host-only initramfs images carry the RAID/HBA driver of the old server "
                   "but not virtio; the kernel cannot find its root disk and panics.",
            fix=f"Before capture (or in a chroot of the image): {cmd}.",
            evidence=[f"{src.os.source}: {src.os.pretty_name}"]))
    return out


def iscsi_findings(src: SourceOS, node_records: list[str]) -> list[Finding]:
    out = []
    init = src.iscsi_initiator
    if init and init.name:
        out.append(Finding(
            id="iscsi-identity", severity="medium" if node_records else "low",
            title="the OS has a software iSCSI identity"
                  + (f" and {len(node_records)} node record(s)" if node_records else ""),
            detail="The instance boots with the physical server's InitiatorName"
                   + (" and logs in to the same LUNs at startup; two hosts writing one LUN "
                      "destroys its data" if node_records else
                      "; if it ever logs in to the array it is indistinguishable from the "
                      "original server"),
            fix="If the LUNs were captured, remove the node records in the image "
                "(iscsiadm -m node -o delete, or delete /var/lib/iscsi/nodes) and disable "
                "iscsi/iscsid; otherwise give the VM its own InitiatorName "
                "(iscsi-iname > /etc/iscsi/initiatorname.iscsi) and adjust the array's ACLs.",
            evidence=[f"/etc/iscsi/initiatorname.iscsi: InitiatorName={init.name}"]
                     + node_records[:5]))
    if src.iscsid and src.iscsid.secrets:
        out.append(Finding(
            id="iscsi-chap-secrets", severity="low",
            title="iscsid.conf holds CHAP credentials",
            detail="They are copied into every instance made from the image.",
            fix="Remove the auth.username/auth.password lines from /etc/iscsi/iscsid.conf "
                "in the image unless the VM needs the SAN.",
            evidence=[f"/etc/iscsi/iscsid.conf: {k} = {v}"
                      for k, v in sorted(src.iscsid.secrets.items())]))
    return out


def build_findings(src: SourceOS, *, roots: list[tuple[str, str]] | None = None,
                   devmap_path: str | None = None, devices: dict[str, str] | None = None,
                   disk_count: int | None = None,
                   node_records: list[str] | None = None,
                   resume: list[tuple[str, str]] | None = None) -> list[Finding]:
    devices = devices or {}
    out = (fstab_findings(src, devices)
           + boot_findings(src, roots or [], devmap_path, devices)
           + resume_findings(resume or [], devices)
           + storage_findings(src, disk_count)
           + network_findings(src)
           + iscsi_findings(src, node_records or [])
           + platform_findings(src))
    for f in out:
        f.conversion = CONVERSION.get(f.id)
    return out
