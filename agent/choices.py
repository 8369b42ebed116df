"""The closed sets of values an operator picks from: one enum each.

StrEnum members compare equal to their text, so a manifest, a kernel command line word
and a CLI flag all read and write the plain words (`nonzero`, `zstd`, `qcow2`).
"""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    """Which blocks of a disk go on the wire."""
    USED = "used"          # only the blocks the filesystems use
    NONZERO = "nonzero"    # every block that is not all zeros (the default)
    FULL = "full"          # every byte


# What the capture engine can do in this version; the others are listed but refused.
CAPTURE_MODES: tuple[Mode, ...] = (Mode.NONZERO, Mode.FULL)

MODE_HELP = {
    Mode.USED: "filesystem used blocks only",
    Mode.NONZERO: "every block that is not all zeros (default)",
    Mode.FULL: "every byte, zeros included",
}


class Codec(StrEnum):
    ZSTD = "zstd"
    NONE = "none"


class ImageFormat(StrEnum):
    QCOW2 = "qcow2"
    RAW = "raw"


class OnDone(StrEnum):
    POWEROFF = "poweroff"
    REBOOT = "reboot"
    SHELL = "shell"


class IscsiMode(StrEnum):
    AUTO = "auto"
    OFF = "off"


def words(enum: type[StrEnum]) -> tuple[str, ...]:
    return tuple(m.value for m in enum)
