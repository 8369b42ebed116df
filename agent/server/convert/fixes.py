"""The fix-ups virt-v2v does not make, as pure functions on file text.

Each takes the text of one guest file (and, for device names, the guest's volumes) and returns
a FixResult: the new text, one Fix per change, and warnings for what it saw but left alone.
Lines are edited in place: comments, spacing and the lines we do not touch stay as they were,
so a diff of the guest file shows exactly the listed fixes.

Why these: under KVM virtio the disks are /dev/vdX and the NICs have new MACs, so
 - device names of the old hardware (sdX, hdX, cciss, mpath) in fstab, crypttab, the kernel's
   root=/resume= and the initramfs resume config no longer exist: the boot stops in the
   initramfs ("ALERT! /dev/sda3 does not exist") or in an emergency shell;
 - a udev rule, an ifcfg HWADDR or a NetworkManager mac-address bound to the old MAC renames
   the NIC (eth1) or leaves it unconfigured: the instance boots without network;
 - agents of the old box's hardware (IPMI, vendor health daemons, console mouse) fail or hang.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from ...guestos import fstab as fstabmod
from .model import Fix, FixKind, FixResult, Volume

MARK = "coldclone-convert"


# --- device names -> the guest's volumes ------------------------------------------------------

def _letters_index(letters: str) -> int:
    """sd a -> 0, z -> 25, aa -> 26 (the kernel's own sd naming)."""
    n = 0
    for ch in letters:
        n = n * 26 + (ord(ch) - ord("a") + 1)
    return n - 1


_SLOT_PATTERNS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"/dev/(?:sd|hd|xvd|vd)([a-z]+)(\d*)$"), "letters"),
    (re.compile(r"/dev/(?:cciss|ida|rd)/c0d(\d+)(?:p(\d+))?$"), "number"),
    # mpatha1 (RHEL 7+), mpathap1 (RHEL 6), mpatha-part1 (SUSE); a separator only before digits.
    (re.compile(r"/dev/mapper/mpath([a-z]+?)(?:(?:p|-part|_part)?(\d+))?$"), "letters"),
    (re.compile(r"/dev/nvme(\d+)n1(?:p(\d+))?$"), "number"),
)


def device_slot(name: str) -> tuple[int, int | None] | None:
    """(disk index, partition number or None) a hardware device name stands for.

    /dev/sda2 -> (0, 2); /dev/hdb -> (1, None); /dev/cciss/c0d1p3 -> (1, 3);
    /dev/mapper/mpathb1 -> (1, 1); /dev/nvme0n1p2 -> (0, 2). The disk index is the disk's
    position in the source OS's naming order, which is the order the capture holds its disks
    in. Names that do not stand for a disk by position (UUID=, LABEL=, /dev/md0, LVM) -> None.
    """
    for pattern, kind in _SLOT_PATTERNS:
        m = pattern.match(name.strip())
        if not m:
            continue
        disk = _letters_index(m.group(1)) if kind == "letters" else int(m.group(1))
        part = int(m.group(2)) if m.group(2) else None
        return disk, part
    return None


# fstab spec kinds (inspect.fstab.classify_spec) that name the old hardware by position.
POSITIONAL_KINDS = ("sd", "hd", "cciss", "nvme", "vd")


def is_positional(name: str) -> bool:
    if fstabmod.classify_spec(name) in POSITIONAL_KINDS:
        return True
    return name.startswith("/dev/mapper/mpath") and device_slot(name) is not None


@dataclass(frozen=True)
class DeviceMap:
    """The guest's volumes, found by the positions old device names stand for."""

    volumes: tuple[Volume, ...]

    def lookup(self, name: str) -> Volume | None:
        slot = device_slot(name)
        if slot is None:
            return None
        return next((v for v in self.volumes if (v.disk_index, v.partition) == slot), None)

    def uuid_name(self, name: str, expect_fstype: str | None = None) -> tuple[str | None, str]:
        """("UUID=...", "") for a positional name, or (None, why not)."""
        vol = self.lookup(name)
        if vol is None:
            return None, f"{name} matches no filesystem of the captured disks"
        if vol.fstype == "linux_raid_member":
            return None, f"{name} is an md RAID member; name the array (/dev/md*) instead"
        if not vol.uuid:
            return None, f"{name} ({vol.device}, {vol.fstype or 'no filesystem'}) has no UUID"
        if expect_fstype and expect_fstype not in ("auto", "none") and expect_fstype != vol.fstype:
            # A wrong disk order would point the mount at another filesystem: refuse to guess.
            return None, (f"{name} should hold {expect_fstype} but the filesystem at that position "
                          f"({vol.device}) is {vol.fstype}")
        return f"UUID={vol.uuid}", ""


_FIRST_FIELD = re.compile(r"^(\s*)(\S+)")
_SECOND_FIELD = re.compile(r"^(\s*\S+\s+)(\S+)")


def _content_lines(text: str):
    """(1-based number, line with its ending, line without) for every non-comment line."""
    for no, line in enumerate(text.splitlines(keepends=True), 1):
        bare = line.rstrip("\r\n")
        if not bare.strip() or bare.lstrip().startswith("#"):
            yield no, line, None
        else:
            yield no, line, bare


def _rewrite_field(text: str, path: str, dmap: DeviceMap, field_re: re.Pattern, kind: FixKind,
                   fstype_field: int | None, what: str) -> FixResult:
    out, res = [], FixResult(text)
    for no, line, bare in _content_lines(text):
        m = field_re.match(bare) if bare is not None else None
        if not m:
            out.append(line)
            continue
        name = m.group(2)
        if not is_positional(name):
            out.append(line)
            continue
        fields = bare.split()
        fstype = fields[fstype_field] if fstype_field is not None and len(fields) > fstype_field else None
        new, why_not = dmap.uuid_name(name, fstype)
        if new is None:
            res.warnings.append(f"{path}:{no}: left {name} as it is: {why_not}")
            out.append(line)
            continue
        new_line = line[:m.start(2)] + new + line[m.end(2):]
        out.append(new_line)
        res.fixes.append(Fix(kind, path, no, bare, new_line.rstrip("\r\n"),
                             f"{what} {name} does not exist under KVM virtio (disks are /dev/vdX)"))
    res.text = "".join(out)
    return res


def fix_fstab(text: str, dmap: DeviceMap, path: str = "/etc/fstab") -> FixResult:
    """Device fields by old hardware names -> UUID= (checked against the fstab's fstype)."""
    return _rewrite_field(text, path, dmap, _FIRST_FIELD, FixKind.FSTAB_DEVICE, 2, "the mount's device")


def fix_crypttab(text: str, dmap: DeviceMap, path: str = "/etc/crypttab") -> FixResult:
    """The source device (second field) of each crypttab line -> UUID=."""
    return _rewrite_field(text, path, dmap, _SECOND_FIELD, FixKind.CRYPTTAB_DEVICE, None,
                          "the encrypted volume's device")


# Lines that carry a kernel command line: grub2 grub.cfg (linux/linux16/linuxefi), GRUB legacy
# menu.lst / grub.conf (kernel), /etc/default/grub (GRUB_CMDLINE_LINUX*), and the initramfs'
# own resume setting (RESUME=, Debian's /etc/initramfs-tools/conf.d/resume).
_KERNEL_LINE = re.compile(r"^\s*(kernel|linux|linux16|linuxefi|GRUB_CMDLINE_LINUX\w*\s*=)")
_KERNEL_ARG = re.compile(r"(?<![\w-])(root|resume)=([^\s\"']+)")
_RESUME_VAR = re.compile(r"^(\s*RESUME\s*=\s*[\"']?)([^\s\"']+)")


def fix_kernel_args(text: str, dmap: DeviceMap, path: str) -> FixResult:
    """root= and resume= on kernel lines, and RESUME= lines, by old hardware names -> UUID=."""
    out, res = [], FixResult(text)
    for no, line, bare in _content_lines(text):
        if bare is None:
            out.append(line)
            continue
        if _KERNEL_LINE.match(bare):
            matches = [(m.start(2), m.end(2), m.group(1), m.group(2)) for m in _KERNEL_ARG.finditer(line)]
        else:
            m = _RESUME_VAR.match(bare)
            matches = [(m.start(2), m.end(2), "resume", m.group(2))] if m else []
        new_line, line_fixes = line, []
        # Right to left, so the offsets of the earlier matches stay valid.
        for start, end, key, name in reversed(matches):
            if not is_positional(name):
                continue
            new, why_not = dmap.uuid_name(name, "swap" if key == "resume" else None)
            if new is None:
                res.warnings.append(f"{path}:{no}: left {key}={name} as it is: {why_not}")
                continue
            new_line = new_line[:start] + new + new_line[end:]
            kind = FixKind.KERNEL_ROOT if key == "root" else FixKind.KERNEL_RESUME
            line_fixes.insert(0, Fix(kind, path, no, f"{key}={name}", f"{key}={new}",
                                     f"the kernel looks for {name}, which does not exist under KVM virtio"))
        res.fixes += line_fixes
        out.append(new_line)
    res.text = "".join(out)
    return res


# --- MAC bindings ------------------------------------------------------------------------------

def _disable(line: str, why: str) -> str:
    ending = line[len(line.rstrip("\r\n")):]
    return f"# {MARK}: {why}: {line.rstrip(chr(13) + chr(10))}{ending or ''}"


_RULE_MAC = re.compile(r'ATTRS?\{address\}\s*==\s*"([^"]+)"')


def _disable_lines(text: str, path: str, kind: FixKind, match: Callable[[str], re.Match | None],
                   note: str, why: Callable[[re.Match], str]) -> FixResult:
    """Comment out every content line `match` accepts, with `note` in the comment and why(match)
    as the fix's reason: one way for every setting that binds a guest to the old hardware."""
    out, res = [], FixResult(text)
    for no, line, bare in _content_lines(text):
        m = match(bare) if bare is not None else None
        if not m:
            out.append(line)
            continue
        new_line = _disable(line, note)
        out.append(new_line)
        res.fixes.append(Fix(kind, path, no, bare, new_line.rstrip("\r\n"), why(m)))
    res.text = "".join(out)
    return res


def fix_net_rules(text: str, path: str = "/etc/udev/rules.d/70-persistent-net.rules") -> FixResult:
    """Comment out udev rules that pin an interface name to a MAC of the old hardware.

    In the cloud the NIC has a new MAC: the old rule no longer matches, the persistent-net
    generator adds eth1 for the new one, and the config for eth0 is never used.
    """
    def naming_rule(bare: str) -> re.Match | None:
        m = _RULE_MAC.search(bare)
        return m if m and re.search(r"\bNAME\s*:?=", bare) else None

    return _disable_lines(text, path, FixKind.NET_RULE_MAC, naming_rule, "bound to the old MAC",
                          lambda m: f"names a NIC by the old MAC {m.group(1).lower()}; the cloud's NIC has another")


_IFCFG_MAC = re.compile(r"^\s*(?:export\s+)?(HWADDR|MACADDR)\s*=")


def fix_ifcfg(text: str, path: str) -> FixResult:
    """Comment out HWADDR= (binds the config to the old NIC) and MACADDR= (would force the old MAC
    onto the new NIC, which the cloud's port security drops) in an ifcfg file."""
    return _disable_lines(text, path, FixKind.IFCFG_MAC, _IFCFG_MAC.match, "MAC of the old hardware",
                          lambda m: "binds this configuration to the old NIC's MAC" if m.group(1) == "HWADDR"
                          else "would set the old MAC on the cloud's NIC")


_HWADDRESS = re.compile(r"^\s*hwaddress\s+(?:ether\s+)?(\S+)")


def fix_interfaces(text: str, path: str) -> FixResult:
    """Comment out `hwaddress` in an ifupdown file: ifup would set the physical server's MAC on the
    cloud's NIC, whose traffic port security then drops (and the MAC clashes with the original)."""
    return _disable_lines(text, path, FixKind.INTERFACES_MAC, _HWADDRESS.match, "MAC of the old hardware",
                          lambda m: f"would set the old MAC {m.group(1).lower()} on the cloud's NIC")


def _disk_letters(index: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa (the inverse of _letters_index)."""
    out = ""
    index += 1
    while index:
        index, r = divmod(index - 1, 26)
        out = chr(ord("a") + r) + out
    return out


_DEVICE_MAP_LINE = re.compile(r"^(\s*\([^)]+\)\s+)(\S+)")


def fix_device_map(text: str, path: str) -> FixResult:
    """grub's device.map: a BIOS drive mapped to an old hardware name (/dev/sda, /dev/cciss/c0d0)
    -> the virtio disk at the same position (/dev/vda): grub-install and kernel updates (grubby,
    grub2-mkconfig) read it and fail or write the boot loader to the wrong disk. A whole-disk name
    that stands for no position (by-id) is commented out, so grub probes that disk again."""
    out, res = [], FixResult(text)
    for no, line, bare in _content_lines(text):
        m = _DEVICE_MAP_LINE.match(bare) if bare is not None else None
        name = m.group(2) if m else ""
        if not m or not (is_positional(name) or name.startswith("/dev/disk/by-id/")) or name.startswith("/dev/vd"):
            out.append(line)
            continue
        slot = device_slot(name)
        if slot is not None and slot[1] is None:
            new_line = line[:m.start(2)] + "/dev/vd" + _disk_letters(slot[0]) + line[m.end(2):]
            why = f"{name} does not exist under KVM virtio; the disk at its position is /dev/vd{_disk_letters(slot[0])}"
        else:
            new_line = _disable(line, "a disk name of the old hardware")
            why = f"{name} names no disk under KVM virtio; grub probes the disks instead"
        out.append(new_line)
        res.fixes.append(Fix(FixKind.GRUB_DEVICE_MAP, path, no, bare, new_line.rstrip("\r\n"), why))
    res.text = "".join(out)
    return res


_INI_SECTION = re.compile(r"^\s*\[([^\]]+)\]")
_NM_MAC = re.compile(r"^\s*mac-address\s*=")


def ini_lines(text: str):
    """(1-based number, line with its ending, line without or None for a comment or a blank
    line, the section it is in, whether it is that section's [header]) for every line of an
    INI-style file: NetworkManager keyfiles, systemd-networkd units."""
    section = None
    for no, line, bare in _content_lines(text):
        sm = _INI_SECTION.match(bare) if bare is not None else None
        if sm:
            section = sm.group(1).strip()
        yield no, line, bare, section, sm is not None


def fix_nm_keyfile(text: str, path: str) -> FixResult:
    """Comment out mac-address= of the [ethernet] (or old [802-3-ethernet]) section of a
    NetworkManager keyfile: NM will not activate the connection on a NIC with another MAC."""
    out, res = [], FixResult(text)
    for no, line, bare, section, header in ini_lines(text):
        if bare is not None and not header and section in ("ethernet", "802-3-ethernet") and _NM_MAC.match(bare):
            new_line = _disable(line, "MAC of the old hardware")
            out.append(new_line)
            res.fixes.append(Fix(FixKind.NM_MAC, path, no, bare, new_line.rstrip("\r\n"),
                                 "NetworkManager activates this connection only on the old NIC's MAC"))
            continue
        out.append(line)
    res.text = "".join(out)
    return res


# --- services of the old hardware ----------------------------------------------------------------

# Units that only make sense on the physical box, and why each one goes. Matched on the unit's
# base name (foo.service, or a SysV S??foo link), so both init systems are covered.
HARDWARE_SERVICES: dict[str, str] = {
    "gpm": "console mouse daemon: a cloud instance has no local console mouse",
    "ipmievd": "IPMI event daemon: a KVM guest has no BMC, it fails at every boot",
    "ipmi": "IPMI driver service: no BMC in a KVM guest",
    "openipmi": "IPMI driver service: no BMC in a KVM guest",
    "hp-health": "HP ProLiant health agent: needs the iLO/Smart Array hardware",
    "hp-asrd": "HP automatic server recovery: would reboot the instance when it finds no iLO",
    "hp-snmp-agents": "HP SNMP hardware agents: no ProLiant hardware in a KVM guest",
    "hpsmhd": "HP System Management Homepage: ProLiant-only",
    "dataeng": "Dell OpenManage data engine: needs the PowerEdge hardware",
    "dsm_om_connsvc": "Dell OpenManage web service: PowerEdge-only",
    "dsm_sa_datamgrd": "Dell OpenManage data manager: PowerEdge-only",
    "dsm_sa_eventmgrd": "Dell OpenManage event manager: PowerEdge-only",
    "instsvcdrv": "Dell OpenManage device drivers: PowerEdge-only",
    "smartd": "SMART disk monitor: virtio disks have no SMART data, it fails at start",
    "lm_sensors": "hardware sensors: a KVM guest has none",
    "mcelog": "machine-check logger of the physical CPUs: the host handles them under KVM",
}


def unit_base(link_name: str) -> str:
    """foo.service -> foo; S20foo / K80foo (SysV rc links) -> foo."""
    name = link_name
    if name.endswith(".service"):
        name = name[: -len(".service")]
    m = re.match(r"^[SK]\d\d(.+)$", name)
    return m.group(1) if m else name


def hardware_service_links(links: list[str]) -> list[Fix]:
    """Which of these enablement links (paths of /etc/systemd/system/*.wants/* and
    /etc/rc?.d/S* in the guest) start a service of the old hardware; one Fix each (remove it)."""
    out = []
    for path in sorted(links):
        base = path.rsplit("/", 1)[-1]
        if "/rc" in path and not base.startswith("S"):
            continue    # K links stop a service: harmless, and removing them changes nothing
        why = HARDWARE_SERVICES.get(unit_base(base))
        if why:
            out.append(Fix(FixKind.HARDWARE_SERVICE, path, None, path, "(link removed)", why))
    return out
