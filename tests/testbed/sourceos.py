"""Small installed-OS disks for readiness and publish tests: real partition tables and
filesystems on an image file, with the files inspection reads (no kernel that boots:
the VM tier builds those with debootstrap).

debian_uefi(): GPT with an EFI system partition, / and swap named by /dev/sdX in fstab,
GRUB's root= and resume= by /dev/sdX, a MAC-bound udev rule and NetworkManager keyfile,
and an initramfs built for the SATA server (ahci, no virtio_blk), as the field study's
Debian server that stopped in the initramfs under virtio.
"""

from __future__ import annotations

import gzip
import io
import os

from agent.runcmd import run
from tests.testbed.loop import attached

from .loop import mounted_rw

MiB = 1 << 20
KVER = "6.1.0-13-amd64"
ESP_UUID = "7E3A-1B2C"
ROOT_UUID = "0d0e0b1a-0000-4000-8000-00000000c0de"
SWAP_UUID = "0d0e0b1a-0000-4000-8000-00000000517a"
MAC = "b0:26:28:aa:bb:01"


def cpio_newc(files: dict[str, bytes]) -> bytes:
    """A newc cpio archive (what the kernel unpacks as an initramfs), directories implied."""
    out = io.BytesIO()

    def entry(name: str, data: bytes, mode: int) -> None:
        raw = name.encode() + b"\0"
        head = "070701" + "".join(f"{v:08x}" for v in (
            0, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0))
        out.write(head.encode() + raw + b"\0" * ((-(110 + len(raw))) % 4))
        out.write(data + b"\0" * ((-len(data)) % 4))

    dirs = sorted({"/".join(n.split("/")[:i]) for n in files for i in range(1, n.count("/") + 1)})
    for d in dirs:
        entry(d, b"", 0o040755)
    for name, data in files.items():
        entry(name, data, 0o100644)
    entry("TRAILER!!!", b"", 0)
    return out.getvalue()


def sata_initramfs() -> bytes:
    """Early microcode archive (uncompressed) + the main archive gzip'ed, as Debian writes it."""
    early = cpio_newc({"kernel/x86/microcode/GenuineIntel.bin": b"\x01" * 64})
    early += b"\0" * ((-len(early)) % 512)
    mods = f"usr/lib/modules/{KVER}/kernel/drivers"
    main = cpio_newc({
        "init": b"#!/bin/sh\n",
        f"{mods}/ata/ahci.ko": b"\x7fELF ahci",
        f"{mods}/ata/libahci.ko": b"\x7fELF libahci",
        f"{mods}/net/virtio_net.ko": b"\x7fELF virtio_net",
        f"{mods}/scsi/sd_mod.ko": b"\x7fELF sd_mod",
    })
    return early + gzip.compress(main)


TREE = {
    "etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
                      'VERSION_ID="12"\nVERSION="12 (bookworm)"\nID=debian\n',
    "etc/debian_version": "12.2\n",
    "etc/fstab": "# /etc/fstab: static file system information.\n"
                 "/dev/sda2   /          ext4  errors=remount-ro  0  1\n"
                 f"UUID={ESP_UUID}  /boot/efi  vfat  umask=0077  0  1\n"
                 "/dev/sda3   none       swap  sw  0  0\n",
    "boot/grub/grub.cfg": "set root='hd0,gpt2'\nmenuentry 'Debian GNU/Linux' {\n"
                          f"    linux /boot/vmlinuz-{KVER} root=/dev/sda2 ro quiet resume=/dev/sda3\n"
                          f"    initrd /boot/initrd.img-{KVER}\n}}\n",
    "etc/default/grub": 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n',
    "etc/initramfs-tools/conf.d/resume": "RESUME=/dev/sda3\n",
    "etc/udev/rules.d/70-persistent-net.rules":
        f'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{{address}}=="{MAC}", '
        f'ATTR{{type}}=="1", KERNEL=="eth*", NAME="eth0"\n',
    "etc/NetworkManager/system-connections/eth0.nmconnection":
        f"[connection]\nid=eth0\ntype=ethernet\ninterface-name=eth0\n\n[ethernet]\n"
        f"mac-address={MAC.upper()}\n\n[ipv4]\nmethod=auto\n",
    "usr/bin/qemu-ga": "#!/bin/sh\n",
    f"boot/vmlinuz-{KVER}": "",
}


def debian_uefi(image: str, size: int = 96 * MiB) -> str:
    """Write the disk image (GPT: 1 ESP 16 MiB, 2 root ext4, 3 swap 8 MiB); return its path."""
    with open(image, "wb") as f:
        f.truncate(size)
    end = size // MiB - 1
    run(["parted", "-s", image, "unit", "MiB", "mklabel", "gpt",
         "mkpart", "EFI", "fat32", "1", "17", "set", "1", "esp", "on",
         "mkpart", "root", "ext4", "17", str(end - 8),
         "mkpart", "swap", "linux-swap", str(end - 8), str(end)], timeout=60)
    with attached(image) as dev:
        # A loop number another test left read-only (BLKROSET on its partitions) may come
        # back to us: building the image needs the partitions writable.
        for node in [dev] + [f"{dev}p{n}" for n in (1, 2, 3)]:
            run(["blockdev", "--setrw", node], check=False, quiet=True)
        run(["mkfs.vfat", "-i", ESP_UUID.replace("-", ""), f"{dev}p1"], timeout=60)
        run(["mkfs.ext4", "-q", "-F", "-U", ROOT_UUID, f"{dev}p2"], timeout=60)
        run(["mkswap", "-U", SWAP_UUID, f"{dev}p3"], timeout=60)
        with mounted_rw(f"{dev}p2") as root:
            for rel, text in TREE.items():
                path = os.path.join(root, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
            os.chmod(os.path.join(root, "usr/bin/qemu-ga"), 0o755)
            os.makedirs(os.path.join(root, "boot/efi"), exist_ok=True)
            with open(os.path.join(root, f"boot/initrd.img-{KVER}"), "wb") as f:
                f.write(sata_initramfs())
    return image
