"""Kernel names and /dev paths: sysfs writes '!' where /dev has '/' (cciss!c0d0 <-> /dev/cciss/c0d0)."""

from __future__ import annotations

import os


def dev_path(kernel_name: str) -> str:
    return "/dev/" + kernel_name.replace("!", "/")


def display(kernel_name: str) -> str:
    return kernel_name.replace("!", "/")


def kernel_name(path: str) -> str:
    """Kernel name of a device node, following symlinks (/dev/disk/by-id/...)."""
    real = os.path.realpath(path)
    if real.startswith("/dev/"):
        return real[len("/dev/"):].replace("/", "!")
    return os.path.basename(real)


def partitions_of(path: str) -> list[str]:
    """/dev paths of the partitions the kernel knows for a whole-disk device."""
    sysdir = f"/sys/class/block/{kernel_name(path)}"
    out = []
    try:
        entries = sorted(os.listdir(sysdir))
    except OSError:
        return out
    for entry in entries:
        if os.path.exists(os.path.join(sysdir, entry, "partition")):
            dev = dev_path(entry)
            if os.path.exists(dev):
                out.append(dev)
    return out
