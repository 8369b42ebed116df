"""How the source OS boots: boot loader, BIOS or UEFI, resume=, and whether its
initramfs can find a virtio disk. These decide what the image needs in the
cloud (hw_firmware_type, a rebuilt initramfs, device names on the kernel line).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
from dataclasses import dataclass, field

from . import files, grub
from .fstab import classify_spec
from .model import BootLoader, Firmware, FstabEntry, InitramfsDrivers
from ..units import human_bytes

# GPT partition type GUIDs (lower case, as blkid prints them)
ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
BIOS_BOOT_GUID = "21686148-6449-6e6f-744e-656564454649"

# What a virtio guest needs in its initramfs to find its root disk and its NIC.
VIRTIO_DRIVERS = ("virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net")

# An initramfs is a few tens of MB compressed; stop reading past this many bytes of
# uncompressed archive rather than spend minutes on a damaged file.
MAX_CPIO_BYTES = 1 << 30


def boot_file(root: str, boot_root: str | None, rel: str) -> tuple[str, str] | None:
    """(path as the source OS names it, real path) of boot/<...>, on a separate /boot too."""
    if boot_root is not None and rel.startswith("boot/"):
        real = files.resolve(boot_root, rel[len("boot/"):])
        if real and os.path.lexists(real):
            return "/" + rel, real
    real = files.resolve(root, rel)
    if real and os.path.lexists(real):
        return "/" + rel, real
    return None


def boot_loader(root: str, boot_root: str | None) -> tuple[BootLoader, list[str]]:
    """Which boot loader configuration the OS keeps (the first that exists wins)."""
    for loader, rels in (
            (BootLoader.GRUB2, ("boot/grub2/grub.cfg", "boot/grub/grub.cfg")),
            (BootLoader.GRUB_LEGACY, ("boot/grub/grub.conf", "boot/grub/menu.lst")),
            (BootLoader.EXTLINUX, ("boot/extlinux/extlinux.conf", "boot/syslinux/syslinux.cfg",
                                   "boot/extlinux.conf")),
            (BootLoader.SYSTEMD_BOOT, ("boot/loader/loader.conf", "boot/loader/entries"))):
        found = [hit[0] for rel in rels if (hit := boot_file(root, boot_root, rel))]
        if found:
            return loader, found
    return BootLoader.UNKNOWN, []


@dataclass
class FirmwareVerdict:
    firmware: Firmware
    evidence: list[str] = field(default_factory=list)
    hybrid: bool = False       # a GPT disk with both an ESP and a BIOS boot partition


def firmware_from_tree(fstab: list[FstabEntry]) -> FirmwareVerdict:
    """An OS that mounts an ESP on /boot/efi was installed for UEFI."""
    esp = next((e for e in fstab if e.mountpoint in ("/boot/efi", "/efi")), None)
    if esp is not None:
        return FirmwareVerdict(Firmware.UEFI, [f"/etc/fstab:{esp.line}: {esp.spec} "
                                               f"{esp.mountpoint} {esp.fstype}"])
    return FirmwareVerdict(Firmware.UNKNOWN)


def firmware_from_disk(disk) -> FirmwareVerdict:
    """From the partition table discovery read: an EFI system partition means UEFI; a GPT
    disk with a BIOS boot partition, or an MBR disk without an ESP, means BIOS."""
    table = disk.partition_table if disk is not None else None
    if table is None:
        return FirmwareVerdict(Firmware.UNKNOWN)
    esp = bios = None
    for p in table.partitions:
        tid = (p.type_id or "").lower()
        if tid in (ESP_GUID, "0xef") or "esp" in p.flags:
            esp = p
        if tid == BIOS_BOOT_GUID or "bios_grub" in p.flags:
            bios = p
    name = disk.dev_path or disk.name
    if esp is not None and bios is None:
        return FirmwareVerdict(Firmware.UEFI, [f"{name}: {table.type} partition {esp.number} "
                                               f"is an EFI system partition"])
    if bios is not None and esp is None:
        return FirmwareVerdict(Firmware.BIOS, [f"{name}: GPT partition {bios.number} is a BIOS "
                                               f"boot partition"])
    if esp is None and table.type in ("msdos", "dos"):
        return FirmwareVerdict(Firmware.BIOS, [f"{name}: MBR partition table without an EFI "
                                               f"system partition"])
    if esp is not None:
        return FirmwareVerdict(Firmware.UNKNOWN, [f"{name}: {table.type} partition table with "
                                                  f"both an ESP and a BIOS boot partition"],
                               hybrid=True)
    return FirmwareVerdict(Firmware.UNKNOWN, [f"{name}: {table.type} partition table without "
                                              f"an ESP"])


def decide_firmware(tree: FirmwareVerdict, disk: FirmwareVerdict) -> FirmwareVerdict:
    """The disk's verdict, unless it cannot tell: then the OS's fstab. A hybrid disk whose OS
    mounts no ESP boots through grub-pc, i.e. BIOS."""
    fw = disk.firmware if disk.firmware is not Firmware.UNKNOWN else tree.firmware
    if fw is Firmware.UNKNOWN and disk.hybrid:
        fw = Firmware.BIOS
    return FirmwareVerdict(fw, disk.evidence + tree.evidence)


def resume_devices(root: str, boot_root: str | None) -> list[tuple[str, str]]:
    """(file, device) of resume= on kernel lines and RESUME= of initramfs-tools."""
    out = grub.read_kernel_args(root, boot_root, "resume")
    for rel in ("etc/initramfs-tools/conf.d/resume", "etc/uswsusp.conf"):
        text = files.read_text(root, rel) or ""
        for raw in text.splitlines():
            m = re.match(r"\s*(?:RESUME|resume device)\s*[=:]\s*[\"']?([^\"'\s#]+)", raw)
            if m and m.group(1).lower() not in ("none", "auto"):
                out.append(("/" + rel, m.group(1)))
    return out


def hardware_resume(resume: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(f, r) for f, r in resume if classify_spec(r) in ("cciss", "hd", "sd", "nvme", "by-id")]


# ---- initramfs ------------------------------------------------------------------------

def _version_key(text: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


INITRAMFS_PATTERNS = ("initrd.img-{}", "initramfs-{}.img", "initrd-{}.img", "initrd-{}")


def newest_initramfs_name(names: list[str]) -> tuple[str, str] | None:
    """(kernel version, file name) of the newest kernel's initramfs among /boot's entries."""
    versions = sorted((n[len("vmlinuz-"):] for n in names if n.startswith("vmlinuz-")),
                      key=_version_key, reverse=True)
    have = set(names)
    for ver in versions:
        for pattern in INITRAMFS_PATTERNS:
            if pattern.format(ver) in have:
                return ver, pattern.format(ver)
    return None


def newest_initramfs(root: str, boot_root: str | None) -> tuple[str, str, str] | None:
    """(kernel version, path as the OS names it, real path) of the newest kernel's initramfs."""
    names = files.listdir(boot_root, ".") if boot_root else files.listdir(root, "boot")
    versions = sorted((n[len("vmlinuz-"):] for n in names if n.startswith("vmlinuz-")),
                      key=_version_key, reverse=True)
    for ver in versions:
        for pattern in INITRAMFS_PATTERNS:
            hit = boot_file(root, boot_root, "boot/" + pattern.format(ver))
            if hit and os.path.isfile(hit[1]):
                return ver, hit[0], hit[1]
    return None


class _Reader:
    """read(n) over a file object, counting bytes, refusing to run past MAX_CPIO_BYTES."""

    def __init__(self, f):
        self.f, self.pos = f, 0

    def read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.f.read(min(n - len(out), 1 << 20))
            if not chunk:
                break
            out += chunk
        self.pos += len(out)
        if self.pos > MAX_CPIO_BYTES:
            raise ValueError(f"more than {human_bytes(MAX_CPIO_BYTES)} of archive")
        return bytes(out)

    def skip(self, n: int) -> None:
        while n > 0:
            got = len(self.read(min(n, 1 << 20)))
            if got == 0:
                raise ValueError("archive truncated")
            n -= got


def _cpio_names(r: _Reader) -> tuple[list[str], bool]:
    """Names of one newc cpio archive; True when the stream goes on after its trailer."""
    names = []
    while True:
        head = r.read(110)
        if len(head) < 110:
            return names, False
        if head[:6] not in (b"070701", b"070702"):
            raise ValueError(f"not a newc cpio header at byte {r.pos - 110}")
        size = int(head[54:62], 16)
        namesize = int(head[94:102], 16)
        name = r.read(namesize)[:-1].decode("utf-8", "replace")
        r.skip((-(110 + namesize)) % 4)
        if name == "TRAILER!!!":
            return names, True
        names.append(name)
        r.skip(size + (-size) % 4)


def _open_compressed(f, magic: bytes):
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=f)
    if magic.startswith(b"\xfd7zXZ\x00") or magic.startswith(b"\x5d\x00\x00"):
        return lzma.LZMAFile(f)
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(f)
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    return None


def initramfs_names(path: str) -> list[str]:
    """Every file name in an initramfs: early uncompressed archives (microcode) followed by
    the compressed main archive, as the kernel unpacks them."""
    names: list[str] = []
    with open(path, "rb") as f:
        while True:
            start = f.tell()
            magic = f.read(6)
            if not magic:
                return names
            if magic.startswith(b"0707"):
                f.seek(start)
                r = _Reader(f)
                more, go_on = _cpio_names(r)
                names += more
                f.seek(start + r.pos)
                # archives are padded with zeros to the next 512-byte boundary or so
                while (b := f.read(1)) == b"\x00":
                    pass
                if not b or not go_on:
                    return names
                f.seek(-1, os.SEEK_CUR)
                continue
            f.seek(start)
            stream = _open_compressed(f, magic)
            if stream is None:
                raise ValueError(f"unknown data at byte {start} (magic {magic.hex()})")
            with stream:
                r = _Reader(stream)
                while True:
                    more, go_on = _cpio_names(r)
                    names += more
                    if not go_on:
                        return names
                    # padding between concatenated archives inside the compressed stream
                    while (b := r.read(1)) == b"\x00":
                        pass
                    if not b:
                        return names
                    pos, r = r.pos - 1, _Reader(_Prepend(b, stream))
                    r.pos = pos


class _Prepend:
    def __init__(self, head: bytes, f):
        self.head, self.f = head, f

    def read(self, n: int) -> bytes:
        if self.head:
            out, self.head = self.head[:n], self.head[n:]
            return out
        return self.f.read(n)


def virtio_drivers(root: str, boot_root: str | None) -> InitramfsDrivers | None:
    """Which virtio drivers the newest kernel can use at boot: modules in its initramfs,
    or built into the kernel (modules.builtin). None when there is no initramfs to look at."""
    found = newest_initramfs(root, boot_root)
    if found is None:
        return None
    ver, shown, real = found
    builtin = files.read_text(root, f"lib/modules/{ver}/modules.builtin") or ""
    return drivers_of_file(real, shown, builtin)


def drivers_of_file(real: str, shown: str, builtin: str) -> InitramfsDrivers:
    """The virtio drivers of the initramfs at `real` (named `shown` in the OS), with the
    kernel's modules.builtin text: what the agent reads in a mounted tree and the conversion
    in a file downloaded from its appliance."""
    try:
        names = initramfs_names(real)
    except (OSError, ValueError, EOFError, lzma.LZMAError) as e:
        return InitramfsDrivers(path=shown, error=f"could not list its files: {e}")
    except Exception as e:  # zstandard raises its own ZstdError
        return InitramfsDrivers(path=shown, error=f"could not list its files: {e}")
    if not names:
        return InitramfsDrivers(path=shown, error="it holds no files (an empty or placeholder file)")
    have = {re.sub(r"\.ko(\.\w+)?$", "", os.path.basename(n)).replace("-", "_")
            for n in names + builtin.splitlines() if ".ko" in n}
    present = [d for d in VIRTIO_DRIVERS if d in have]
    return InitramfsDrivers(path=shown, present=present,
                            missing=[d for d in VIRTIO_DRIVERS if d not in have])


def lacks_virtio_disk(ini: InitramfsDrivers) -> bool:
    """No way to reach a virtio disk at boot: neither virtio_blk nor virtio_scsi, or no
    virtio_pci under them (the readiness finding `initramfs-virtio`, and what the fixups
    engine rebuilds)."""
    if ini.error:
        return False
    needed = [d for d in ("virtio_blk", "virtio_scsi") if d in ini.missing]
    return len(needed) == 2 or "virtio_pci" in ini.missing
