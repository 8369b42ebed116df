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


def stream_name(kernel_name: str) -> str:
    """A disk's id as the stream, the estimate and the image file name it, file-name safe:
    cciss!c0d0 -> cciss-c0d0."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", kernel_name)
