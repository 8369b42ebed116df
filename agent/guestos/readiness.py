"""The cloud-readiness report: what in the source OS will bite once the image
boots as a KVM / OpenStack instance (new disks named /dev/vdX, new NICs with
new MACs, one disk per Glance image, metadata from cloud-init), each with the
concrete fix."""

from __future__ import annotations

from . import fstab as fstabmod
from . import boot, esp as espmod, lvm, netconfig
from .model import Finding, Firmware, SourceOS

# What coldclone-convert (virt-v2v plus our libguestfs fix-ups) does about a finding, in
# words that follow "conversion will". Findings not listed need a person's decision.
CONVERSION = {
    "fstab-device-names": "rewrite these fstab entries to UUID= names",
    "bootloader-root-device": "rewrite root= on the kernel lines to UUID=",
    "grub-device-map": "rewrite device.map for the virtio disk (hd0) /dev/vda",
    "resume-device": "rewrite resume= to the swap partition's UUID=",
    "initramfs-virtio": "rebuild the initramfs with the virtio drivers (virt-v2v; with --engine "
                        "fixups the guest's own update-initramfs or dracut, or refuse)",
}

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
    """One finding per binding to the old NIC, one for the primary interface's name, its
    static address, a bond/VLAN/bridge under it, the other interfaces, and each thing that
    cannot be mapped: from netconfig.plan(), the plan coldclone-convert carries out."""
    cfg = src.network
    if cfg is None:
        return []
    p = netconfig.plan(cfg)
    prim = p.primary
    out = []

    def role(name: str | None) -> str:
        if prim is not None and name == prim.name:
            return f"the primary interface {prim.describe()}"
        if name in p.members:
            return f"{name}, under the primary interface {prim.name}"
        if name in p.secondaries:
            return f"{next(iter(cfg.named(name))).describe()}, a secondary interface"
        return name or "an interface configuration"

    def after(name: str | None) -> str:
        if prim is not None and name == prim.name:
            return f"; its configuration goes to the first virtio NIC as {p.new_name}"
        if name in p.disabled:
            return f"; {name}'s configuration is disabled"
        return ""

    for b in cfg.bindings:
        what = BINDING_FINDINGS.get(b.kind)
        if what is None:
            continue
        fid, severity, title, detail, fix, conv = what
        mac = b.mac or "?"
        out.append(Finding(
            id=fid, severity=severity, title=title.format(mac=mac, name=b.name or "?") + f": {role(b.name)}",
            detail=detail, fix=fix.format(path=b.path, mac=mac, name=b.name or "?"),
            evidence=[_ev(b.path, b.line, b.evidence)], conversion=conv + after(b.name)))
    if prim is not None and (p.rename or p.kernel_arg):
        how = [b for b in cfg.bindings if b.name == prim.name and b.kind in (
            netconfig.BindingKind.UDEV_RULE, netconfig.BindingKind.HARDWARE_NAME,
            netconfig.BindingKind.NETPLAN_MATCH, netconfig.BindingKind.NETWORKD_MATCH)]
        if any(b.kind is netconfig.BindingKind.HARDWARE_NAME for b in how):
            why = (f"{prim.name} is the name udev derives from the old NIC's PCI slot or onboard index; "
                   f"a virtio NIC in another slot gets another one (ens5, enp1s0)")
        elif how:
            why = (f"{prim.name} is given by a rule matching the old NIC's MAC ({how[0].mac}); without it "
                   f"the virtio NIC gets its slot name (ens3, enp1s0)")
        else:
            why = (f"nothing makes the virtio NIC {prim.name}: with predictable names it gets its slot's "
                   f"name (ens3, enp1s0)")
        steps = ([f"put {netconfig.NAMES_ARG} on the kernel lines (the first virtio NIC is then "
                  f"{p.new_name} whatever its PCI slot)"] if p.kernel_arg else [])
        if p.rename:
            steps.append(f"move {prim.name}'s configuration ({prim.path}) to {p.new_name}")
        out.append(Finding(
            id="primary-nic", severity="high",
            title=f"the primary interface {prim.name} will not exist on the cloud's NIC",
            detail=f"{prim.describe()} carries the server's network ({cfg.primary_why}). {why}, "
                   f"so the instance boots without network.",
            fix="; ".join(s[0].upper() + s[1:] if i == 0 else s for i, s in enumerate(steps)) + ".",
            evidence=[_ev(prim.path, prim.line, prim.describe())],
            conversion=" and ".join(steps) + _policy_words(prim, p.new_name)))
    if prim is not None and prim.static:
        out.append(Finding(
            id="static-ip", severity="medium",
            title=f"the primary interface has a static address ({', '.join(prim.addresses)})",
            detail="OpenStack hands out addresses by DHCP; a static address works only on a Neutron "
                   "port with exactly that fixed IP on a subnet with the same gateway, otherwise "
                   "the instance is unreachable.",
            fix="Create the Neutron port with the same fixed IP, or switch the interface to DHCP.",
            evidence=[_ev(prim.path, prim.line, prim.describe())],
            conversion=f"keep it with --network keep (for a port with the fixed IP {prim.addresses[0].split('/')[0]}), "
                       f"or switch {p.new_name} to DHCP with --network dhcp (the default)"))
    if p.flattened:
        out.append(Finding(
            id="nic-bond-vlan", severity="medium",
            title=f"the primary interface is a {' over '.join(_kind_of(cfg, n) + ' ' + n for n in p.flattened)} "
                  f"on the old NICs",
            detail="Bonds, VLANs and bridges are made of the physical server's NICs and switch ports; "
                   "an instance has one virtio NIC on an untagged Neutron network.",
            fix=f"Configure the addresses of {prim.name} on the instance's NIC, without the "
                f"bond/VLAN/bridge.",
            evidence=[_ev(i.path, i.line, i.describe()) for n in p.flattened + p.members for i in cfg.named(n)],
            conversion=f"make {prim.name} the plain {p.new_name} with its addresses and disable "
                       f"{', '.join(p.members) or 'the members'}"))
    if p.secondaries:
        ifs = [next(iter(cfg.named(n))) for n in p.secondaries]
        out.append(Finding(
            id="secondary-nics", severity="medium",
            title=f"{len(ifs)} more interface(s) configured for NICs of the old server: "
                  f"{', '.join(p.secondaries)}",
            detail="A new instance has one NIC; configurations for NICs it does not have fail at "
                   "boot or hold up network-online.target.",
            fix="Attach a Neutron port per network and configure each on the instance.",
            evidence=[_ev(i.path, i.line, i.describe()) for i in ifs],
            conversion="disable their configuration, with a note in each file"))
    for problem in p.problems:
        out.append(Finding(
            id="network-unmapped", severity="high",
            title="a network setting conversion cannot map",
            detail=problem, fix="Configure it on the instance by hand (from the cloud console), or "
                                "change it on the source before the capture.",
            evidence=[problem.split(": ", 1)[0]]))
    return out


def _kind_of(cfg: netconfig.NetworkConfig, name: str) -> str:
    return next((i.kind.value for i in cfg.named(name)), "interface")


def _policy_words(prim: netconfig.Iface, new_name: str) -> str:
    if prim.static:
        return (f"; with --network keep {new_name} keeps {', '.join(prim.addresses)}"
                + (f" via {prim.gateway}" if prim.gateway else "")
                + (f" (DNS {', '.join(prim.dns)})" if prim.dns else "")
                + ", with --network dhcp (the default) it uses DHCP")
    return f"; {new_name} uses {'DHCP' if prim.method == 'dhcp' else prim.method}"


# Each kind of binding to the old NIC: (finding id, severity, title, detail, fix, conversion).
BINDING_FINDINGS = {
    netconfig.BindingKind.UDEV_RULE: (
        "persistent-net-rules", "high", "udev names the NIC with MAC {mac} {name}",
        "70-persistent-net.rules keeps the name for the old NIC; the virtual NIC has another MAC, "
        "so it gets another name and none of the old name's configuration applies.",
        "Delete the rule from {path}; on RHEL/CentOS 6 also stop it being regenerated: ln -s "
        "/dev/null /etc/udev/rules.d/75-persistent-net-generator.rules.",
        "comment the rule out"),
    netconfig.BindingKind.IFCFG_HWADDR: (
        "ifcfg-hwaddr", "high", "{name}'s ifcfg is bound to the old MAC {mac} (HWADDR)",
        "The virtual NIC has a new MAC; ifup refuses a config whose HWADDR does not match "
        "(\"Device eth0 has different MAC address than expected\").",
        "Delete the HWADDR= line (and UUID= if NetworkManager manages it) from {path}.",
        "comment HWADDR= out"),
    netconfig.BindingKind.NM_MAC: (
        "nm-mac-address", "high", "the NetworkManager connection {name} is bound to the old MAC {mac}",
        "A connection with mac-address= only activates on that NIC; the virtual NIC gets no "
        "configuration.",
        "Remove mac-address= from the [ethernet] section of {path}.",
        "comment mac-address= out"),
    netconfig.BindingKind.INTERFACES_HWADDRESS: (
        "interfaces-hwaddress", "medium", "/etc/network/interfaces forces the old MAC {mac} on {name}",
        "ifup sets the physical server's MAC on the virtual NIC: OpenStack port security drops "
        "its traffic, and the MAC clashes with the original server.",
        "Delete the hwaddress line of {name} from {path}.",
        "comment the hwaddress line out"),
    netconfig.BindingKind.NETPLAN_MATCH: (
        "netplan-mac-match", "high", "netplan matches {name} by the old MAC {mac}",
        "A netplan entry with match: macaddress applies only to that NIC (and set-name renames "
        "only it); the virtual NIC has another MAC and gets no configuration.",
        "Remove match: and set-name: from the entry in {path}.",
        "remove the match and set-name"),
    netconfig.BindingKind.NETWORKD_MATCH: (
        "networkd-mac-match", "high", "systemd-networkd matches {name} by the old MAC {mac}",
        "A .link or .network file matching MACAddress= applies only to the old NIC: the "
        "virtual NIC is neither named nor configured by it.",
        "Drop the MACAddress= match from {path} (a .link that only named the old NIC: delete it).",
        "comment the MAC match out"),
}


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
    if not boot.lacks_virtio_disk(ini):
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


def _win(path: str) -> str:
    return "\\" + path.replace("/", "\\")


def esp_findings(src: SourceOS) -> list[Finding]:
    """What a fresh UEFI firmware (a new instance's empty NVRAM) boots from this ESP."""
    esp = src.esp
    if esp is None:
        return []
    plan = espmod.removable_plan(esp, [src.os.id] if src.os.id else [])
    listing = [f"{esp.mount}/EFI/{d.name}: {', '.join(d.files)}" for d in esp.dirs]
    uefi = src.firmware is Firmware.UEFI
    if plan.copies:
        copies = "; ".join(f"{_win(a)} to {_win(b)}" for a, b in plan.copies)
        return [Finding(
            id="uefi-removable-loader", severity="high" if uefi else "low",
            title="a fresh UEFI firmware finds " + ("another boot loader" if plan.set_aside else "no boot loader")
                  + " on this disk",
            detail=f"The OS boots {_win(plan.source + '/' + plan.loader)} through a boot entry in the "
                   f"server's own NVRAM; a new instance starts with an empty NVRAM and its firmware boots "
                   f"only the removable-media path {_win(espmod.REMOVABLE)}, where it finds {plan.found}."
                   + ("" if uefi else " (This server boots by BIOS: this matters only on a UEFI flavor.)"),
            fix=f"Copy {copies} (grub-install --removable does it for GRUB).",
            evidence=listing,
            conversion=f"copy {copies}" + (f", setting the loader found there aside as {_win(plan.set_aside)}"
                                           if plan.set_aside else ""))]
    if plan.problem and uefi and not esp.removable:
        return [Finding(
            id="uefi-loader-unknown", severity="high",
            title="a fresh UEFI firmware finds no boot loader, and which one to use is unclear",
            detail=plan.problem + f"; a new instance's firmware boots only {_win(espmod.REMOVABLE)}, "
                                  f"which does not exist.",
            fix=f"Copy the OS's own loader to {_win(espmod.REMOVABLE)} before the capture.",
            evidence=listing)]
    return []


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
           + esp_findings(src)
           + iscsi_findings(src, node_records or [])
           + platform_findings(src))
    for f in out:
        # network findings say what conversion does to their interface themselves
        f.conversion = f.conversion or CONVERSION.get(f.id)
    return out


# Every finding id whose finding says what conversion does (a "conversion will ..." text): the
# fixed texts above, the network findings (each writes its own) and the UEFI loader's.
NETWORK_CONVERTED = ("primary-nic", "static-ip", "nic-bond-vlan", "secondary-nics", "uefi-removable-loader")
CONVERTED_FINDINGS = frozenset(CONVERSION) | frozenset(NETWORK_CONVERTED) | frozenset(
    f[0] for f in BINDING_FINDINGS.values())
