"""Shared boots of the headless VM tests.

Every TCG boot costs about a minute of a 2-core machine, so the scenarios share boots: one
BIOS boot captures the OS-like disk; one UEFI boot captures the OS-like disk AND an md RAID1
built in the guest by a pre hook AND a megasas logical drive AND two USB disks (EHCI, xHCI).
tests/vm/test_headless.py and tests/vm/test_guest_discovery.py assert on them.
Knobs: COLDCLONE_VM_TIMEOUT (per boot, default 480 s), COLDCLONE_VM_LOGS (serial logs),
COLDCLONE_VM_KEEP=1 (keep images, receiver root and logs).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field

import pytest

from . import guest, vmboot

TIMEOUT = float(os.environ.get("COLDCLONE_VM_TIMEOUT", 480))
LOG_DIR = os.environ.get("COLDCLONE_VM_LOGS", os.path.join(vmboot.BUILD, "vm-logs"))
KEEP = bool(os.environ.get("COLDCLONE_VM_KEEP"))

# The pre hook of the UEFI boot: the host kernel here has no md, so the RAID1 is created in
# the guest, from the two blank virtio disks (by serial), before discovery; a filesystem with
# files on it; then read-only, so nothing writes the members after the capture read them.
MD_PRE_HOOK = """#!/bin/sh
set -eu
a=/dev/disk/by-id/virtio-cc-md-a b=/dev/disk/by-id/virtio-cc-md-b
for i in $(seq 1 50); do [ -e "$a" ] && [ -e "$b" ] && break; sleep 0.2; done
mdadm --create /dev/md0 --run --assume-clean --level=1 --raid-devices=2 --metadata=1.2 \\
      --name=ccraid "$a" "$b"
mdadm --wait /dev/md0 || true
mkfs.ext4 -q -L ccdata -E nodiscard /dev/md0
mkdir -p /run/cc-md
mount /dev/md0 /run/cc-md
cp -a /etc/os-release /etc/hostname /run/cc-md/
head -c 3000000 /dev/urandom > /run/cc-md/random.bin
sha256sum /run/cc-md/random.bin
umount /run/cc-md
sync
mdadm --readonly /dev/md0
cat /proc/mdstat
"""


def _skip_unless_ready(mode: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices for the source images, sshd)")
    why = vmboot.missing_prerequisites(mode)
    if why:
        pytest.skip(why)
    for tool in ("qemu-img", "sshd", "parted", "mkfs.ext4"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            pytest.skip(f"{tool} not installed")


@dataclass
class Capture:
    """One headless boot that captured to the host's sshd, and everything to judge it by."""

    run: guest.Run
    capture_id: str
    rx_dir: str
    disks: dict[str, guest.SourceDisk] = field(default_factory=dict)   # serial -> source

    @property
    def cap_dir(self) -> str:
        return os.path.join(self.rx_dir, self.capture_id)

    def manifest(self) -> dict:
        return guest.manifest(self.rx_dir, self.capture_id)

    @property
    def inventory(self) -> dict:
        """The agent's inventory: from the serial console, else from the manifest."""
        con = self.run.console
        if con.inventory:
            return con.inventory
        if con.ok:
            inv = self.manifest()["source"].get("inventory")
            if inv:
                return inv
        raise AssertionError(f"no inventory: {con.inventory_problem}\n{self.run.explain()}")

    def guest_name(self, serial: str) -> str:
        """The guest's name of a source disk."""
        return guest.inventory_disk_by_serial(self.inventory, serial)["name"]


@pytest.fixture(scope="session")
def vm_workdir():
    d = tempfile.mkdtemp(prefix="coldclone-vmtest-", dir="/var/tmp")
    os.chmod(d, 0o755)
    yield d
    if not KEEP:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def vm_server(vm_workdir):
    if os.geteuid() != 0:
        pytest.skip("needs root (sshd)")
    s = guest.HostServer(workdir=os.path.join(vm_workdir, "server")).start()
    yield s
    s.stop()


def _capture_boot(mode: str, name: str, disks: list[guest.SourceDisk], server: guest.HostServer,
                  extra_cmdline: str = "", extra_args: list[str] | None = None) -> Capture:
    rx = server.new_dir(name)
    fw, identity = guest.fwcfg_file("identity", server.identity)
    cmdline = guest.headless_cmdline(server, rx, name, identity, extra_cmdline)
    run = guest.boot_headless(mode, cmdline, extra_args=fw + guest.disk_args(disks) + (extra_args or []),
                              timeout=TIMEOUT, name=name, log_dir=LOG_DIR)
    print(f"\n{run.times()}")
    return Capture(run=run, capture_id=name, rx_dir=rx, disks={d.serial: d for d in disks})


@pytest.fixture(scope="session")
def bios_capture(vm_workdir, vm_server) -> Capture:
    """SeaBIOS/isolinux (QEMU's i440fx machine, as it comes): the GPT OS-like disk, all disks."""
    _skip_unless_ready("bios")
    disks = [guest.os_disk(f"{vm_workdir}/bios-os.img", serial="cc-os", table="gpt")]
    return _capture_boot("bios", "vm-bios", disks, vm_server)


@pytest.fixture(scope="session")
def uefi_capture(vm_workdir, vm_server) -> Capture:
    """OVMF/GRUB EFI (q35): the MBR OS-like disk, an md RAID1 made in the guest by a pre hook,
    a megasas logical drive, USB disks on EHCI and xHCI; all disks captured."""
    _skip_unless_ready("uefi")
    d = vm_workdir
    disks = [guest.os_disk(f"{d}/uefi-os.img", serial="cc-os", table="msdos"),
             guest.blank_disk(f"{d}/md-a.img", serial="cc-md-a", size_mb=64),
             guest.blank_disk(f"{d}/md-b.img", serial="cc-md-b", size_mb=64),
             guest.pattern_disk(f"{d}/raid-ld.img", serial="cc-raid-ld", size_mb=32, bus="megasas"),
             guest.pattern_disk(f"{d}/usb2.img", serial="cc-usb2", size_mb=16, bus="usb-ehci"),
             guest.pattern_disk(f"{d}/usb3.img", serial="cc-usb3", size_mb=16, bus="usb-xhci")]
    hook = os.path.join(d, "md-pre.sh")
    with open(hook, "w") as f:
        f.write(MD_PRE_HOOK)
    fw, pre = guest.fwcfg_file("pre", hook)
    return _capture_boot("uefi", "vm-uefi", disks, vm_server, extra_cmdline=f"coldclone.pre={pre}",
                         extra_args=fw)


@pytest.fixture(scope="session")
def ready_kernel():
    _skip_unless_ready("kernel")
