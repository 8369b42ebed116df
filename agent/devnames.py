"""Kernel names and /dev paths: sysfs writes '!' where /dev has '/' (cciss!c0d0 <-> /dev/cciss/c0d0);
and which serials and WWNs really name a disk."""

import os
import re
from typing import List, Optional

# Standard library only, Python 3.6 syntax: the `coldclone sync` file carries this module.


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


def partition_names(name: str, sysfs: str = SYS_BLOCK) -> List[str]:
    """Kernel names of the partitions the kernel knows for a whole-disk device."""
    sysdir = os.path.join(sysfs, name)
    try:
        entries = sorted(os.listdir(sysdir))
    except OSError:
        return []
    return [e for e in entries if os.path.exists(os.path.join(sysdir, e, "partition"))]


def partitions_of(path: str) -> List[str]:
    """/dev paths of the partitions the kernel knows for a whole-disk device."""
    return [p for p in (dev_path(n) for n in partition_names(kernel_name(path))) if os.path.exists(p)]


def stream_name(kernel_name: str) -> str:
    """A disk's id as the stream, the estimate and the image file name it, file-name safe and
    with no '.' (the receiver derives its file names by appending '.suffix'):
    cciss!c0d0 -> cciss-c0d0."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", kernel_name)


# Serials that name no disk: what cheap bridges, enclosures and unset firmware report.
PLACEHOLDER_SERIALS = {"none", "null", "n/a", "na", "unknown", "default", "default string",
                       "to be filled by o.e.m.", "not specified", "serial", "0123456789",
                       "123456789", "1234567890", "1234567890abcdef", "0123456789abcdef"}


def real_identifier(value: Optional[str]) -> Optional[str]:
    """`value` lower-cased, or None when it names nothing: empty, a placeholder, or one
    character repeated (0000..., ffff..., also after a 0x / naa. prefix)."""
    v = (value or "").strip().lower()
    if v in PLACEHOLDER_SERIALS:
        return None
    body = re.sub(r"^(0x|naa\.|eui\.|t10\.)", "", v)
    body = re.sub(r"[\s_.:-]", "", body)
    if len(body) < 4 or len(set(body)) == 1:
        return None
    return v
