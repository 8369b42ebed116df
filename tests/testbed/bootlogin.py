"""Does a captured or converted image boot? QEMU (TCG) on virtio, a throw-away snapshot, until
the guest's getty prints `login:` on the serial console."""

from __future__ import annotations

import os
import subprocess
import time


def boot_to_login(image: str, log: str, timeout: float = 900, fmt: str = "qcow2") -> float:
    """Boot the image on virtio (as OpenStack does by default), a throw-away snapshot; seconds
    until `login:` on the serial console."""
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-display", "none", "-nodefaults",
            "-drive", f"file={image},if=virtio,format={fmt},snapshot=on",
            "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
            "-serial", f"file:{log}", "-no-reboot"]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while time.monotonic() - t0 < timeout:
            if proc.poll() is not None:
                break
            text = open(log, errors="replace").read() if os.path.exists(log) else ""
            if "login:" in text:
                return time.monotonic() - t0
            time.sleep(2)
    finally:
        proc.kill()
        proc.wait()
    tail = open(log, errors="replace").read()[-3000:] if os.path.exists(log) else ""
    raise AssertionError(f"no login prompt within {timeout} s on virtio; serial console:\n{tail}")
