"""The TUI on the guest's serial console: boot the ISO without coldclone.server, so the live
system autologins root on ttyS0 and starts `coldclone tui`; the inventory of the guest's
virtio disk must appear on the serial output (ANSI sequences stripped).

Run: pytest -m vm tests/vm/test_tui_serial.py -s   (prints the boot-to-TUI time)
"""
from __future__ import annotations

import re
import time

import pytest

from agent.runcmd import run

from . import vmboot
from .conftest import LOG_DIR, TIMEOUT

MiB = 1 << 20
# fw_cfg needs a non-empty string; coldclone.tui is a known word that changes nothing
CMDLINE = "coldclone.tui"

pytestmark = pytest.mark.vm

# CSI (colours, cursor moves), OSC and the few two-byte escapes textual writes
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[=>()][0-9A-Za-z]?")


def plain(text: str) -> str:
    return ANSI.sub("\n", text)


def test_tui_inventory_on_serial_console(tmp_path):
    why = vmboot.missing_prerequisites("bios")
    if why:
        pytest.skip(why)
    disk = str(tmp_path / "source.img")
    with open(disk, "wb") as f:
        f.truncate(96 * MiB)
    run(["parted", "-s", disk, "mklabel", "gpt", "mkpart", "primary", "ext4", "1MiB", "100%"])
    # The selection line ("Capture N disks, 96.0 MiB: ... vda"): discovery ran in the guest.
    args = dict(expect=" MiB: ", timeout=TIMEOUT, log_dir=LOG_DIR, until_exit=False,
                name="tui-serial", extra_args=["-drive", f"file={disk},if=none,id=src,format=raw",
                                               "-device", "virtio-blk-pci,drive=src,serial=CCTUI0001"])
    t0 = time.monotonic()
    res = vmboot.boot_any_accel("bios", CMDLINE, **args)
    wall = time.monotonic() - t0
    text = plain(res.console)
    print("\n" + res.summary())
    print(f"boot to TUI inventory on ttyS0: {res.marker_seconds or -1:.1f} s (wall {wall:.1f} s)")
    tail = "\n".join(l for l in text.splitlines()[-60:] if l.strip())
    assert res.found, f"no inventory on the serial console within {TIMEOUT:.0f}s:\n{tail}"
    assert "1 Inventory" in text, tail
    # (QEMU's empty floppy drive shows up too, as fd0: whatever discovery decides about it,
    # the virtio disk must be listed, selected and named in the selection line)
    assert re.search(r"Capture \d+ disks?, [\d.]+ MiB: (\S+, )*vda\b", text), tail
    assert re.search(r"\[x\]\s+vda\s+96.0M", text), tail
    assert "virtio" in text, tail
    assert "Next: target" in text, tail
    # The live medium (the ISO on the CD-ROM) is listed but never offered.
    assert re.search(r"-\s+sr0", text), tail
