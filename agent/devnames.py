"""Kernel names and /dev paths: sysfs writes '!' where /dev has '/' (cciss!c0d0 <-> /dev/cciss/c0d0)."""

from __future__ import annotations

import os
import re


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


SYS_BLOCK = "/sys/class/block"


def partition_names(name: str, sysfs: str = SYS_BLOCK) -> list[str]:
    """Kernel names of the partitions the kernel knows for a whole-disk device."""
    sysdir = os.path.join(sysfs, name)
    try:
        entries = sorted(os.listdir(sysdir))
    except OSError:
        return []
    return [e for e in entries if os.path.exists(os.path.join(sysdir, e, "partition"))]


def partitions_of(path: str) -> list[str]:
    """/dev paths of the partitions the kernel knows for a whole-disk device."""
    return [p for p in (dev_path(n) for n in partition_names(kernel_name(path))) if os.path.exists(p)]


def stream_name(kernel_name: str) -> str:
    """A disk's id as the stream, the estimate and the image file name it, file-name safe:
    cciss!c0d0 -> cciss-c0d0."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", kernel_name)
