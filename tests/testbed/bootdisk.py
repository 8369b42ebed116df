"""A disk that proves in a second that a firmware boots it through a given controller.

Its MBR (16-bit code assembled here with GNU as, and one partition) prints a banner on the first
serial port, reads the disk's *last* sector through the BIOS (int 13h, extended read, on the
drive the BIOS booted) and prints what is there: a marker line the test chose. So the line on
the serial console says three things at once: the firmware found the disk on that controller
(SeaBIOS boots an LSI 53C895A SCSI disk through its own LSI driver, an IDE disk through the
ATA one), it read the first sector, and it read the end of the disk through the same
controller. A whole OS boot would prove the same in minutes under TCG; this takes ~1 s.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

from agent.runcmd import run
from tests.testbed.procs import stop_process

SECTOR = 512

BOOT_SECTOR = """
    .code16
    .globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x7c00, %sp
    sti
    mov %dl, drive          # the BIOS's number of the drive it booted
    mov $banner, %si
    call print
    mov $dap, %si
    mov $0x42, %ah          # extended read, LBA in the packet below
    mov drive, %dl
    int $0x13
    jc fail
    mov $0x8000, %si
    call print
    jmp halt
fail:
    mov $failed, %si
    call print
halt:
    cli
    hlt
    jmp halt
print:                      # the NUL-terminated string at %si to COM1
    lodsb
    test %al, %al
    jz 1f
    mov $0x3f8, %dx
    out %al, %dx
    jmp print
1:  ret
banner: .asciz "COLDCLONE-BOOTSECTOR\\r\\n"
failed: .asciz "COLDCLONE-READ-FAILED\\r\\n"
drive:  .byte 0
    .balign 4
dap:                        # disk address packet: 1 sector at LBA to 0000:8000
    .byte 0x10, 0
    .word 1
    .word 0x8000, 0
    .quad {lba}
    .org 446                # one primary partition (as every real disk has: Glance's format
    .byte 0x80, 0xfe, 0xff, 0xff    # inspector refuses an MBR with none), bootable, LBA only
    .byte 0x83, 0xfe, 0xff, 0xff
    .long 2048, {part_sectors}
    .org 510
    .word 0xaa55
"""


def boot_sector(lba: int) -> bytes:
    """The 512 bytes of the boot sector that prints the sector at `lba` (the disk's last: its
    one partition runs from 1 MiB to just before it)."""
    with tempfile.TemporaryDirectory(prefix="bootsector-") as d:
        src, obj, out = (os.path.join(d, n) for n in ("bs.S", "bs.o", "bs.bin"))
        with open(src, "w") as f:
            f.write(BOOT_SECTOR.format(lba=lba, part_sectors=lba - 2048))
        run(["as", "--32", "-o", obj, src])
        run(["ld", "-m", "elf_i386", "-Ttext=0x7c00", "--oformat=binary", "-o", out, obj])
        with open(out, "rb") as f:
            code = f.read()
    assert len(code) == SECTOR and code[-2:] == b"\x55\xaa", len(code)
    return code


def bootable_disk(path: str, size: int, tag: str) -> str:
    """A raw disk of `size` bytes (sparse but for its first and last sector) whose boot prints
    `COLDCLONE-MARKER <tag>`; returns that line."""
    assert size % SECTOR == 0
    marker = f"COLDCLONE-MARKER {tag}"
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(boot_sector(size // SECTOR - 1))
        f.seek(size - SECTOR)
        f.write((marker + "\r\n").encode() + b"\0")
    return marker


# How a disk is attached: QEMU's LSI 53C895A SCSI HBA (what VMware's lsiLogic is), or IDE.
CONTROLLERS = {
    "lsi53c895a": lambda img, fmt: ["-device", "lsi53c895a,id=scsi0", "-device", "scsi-hd,bus=scsi0.0,drive=d0",
                                    "-drive", f"if=none,id=d0,format={fmt},file={img},snapshot=on"],
    "ide": lambda img, fmt: ["-drive", f"if=ide,index=0,media=disk,format={fmt},file={img},snapshot=on"],
}


def boot_output(image: str, fmt: str, controller: str, until: str, timeout: float = 120) -> str:
    """Boot `image` (SeaBIOS, TCG, no other disk) with the disk on `controller` and return the
    serial console once it shows `until` (or at the timeout)."""
    with tempfile.TemporaryDirectory(prefix="bootdisk-") as d:
        serial = os.path.join(d, "serial.log")
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "32", "-nodefaults", "-display", "none",
                "-no-reboot", "-serial", f"file:{serial}", *CONTROLLERS[controller](image, fmt)]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        text = ""
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if os.path.exists(serial):
                    with open(serial, errors="replace") as f:
                        text = f.read()
                    if until in text:
                        break
                time.sleep(0.1)
        finally:
            stop_process(proc)
        if proc.returncode not in (0, None) and until not in text:
            text += proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        return text
