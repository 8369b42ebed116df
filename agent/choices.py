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


# What the capture engine can do, in the order the TUI offers them.
CAPTURE_MODES: tuple[Mode, ...] = (Mode.USED, Mode.NONZERO, Mode.FULL)

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


class DiskFormat(StrEnum):
    """The disk format of a published image in Glance (coldclone-publish --disk-format)."""
    QCOW2 = "qcow2"        # KVM's own; the smallest upload
    RAW = "raw"            # Ceph RBD: cloned copy-on-write
    VMDK = "vmdk"          # VMware: monolithicSparse (Glance's vmware_disktype=sparse)


class VmdkAdapter(StrEnum):
    """The controller Nova's VMware driver attaches a VMDK on (--adapter, vmware_adaptertype)."""
    IDE = "ide"
    LSI_LOGIC = "lsiLogic"
    LSI_LOGIC_SAS = "lsiLogicsas"
    PARAVIRTUAL = "paraVirtual"


class OnDone(StrEnum):
    POWEROFF = "poweroff"
    REBOOT = "reboot"
    SHELL = "shell"


class OnReadError(StrEnum):
    """What a capture does when the source disk cannot read a sector (EIO)."""
    FAIL = "fail"          # stop the capture, naming the device and the sector (exit 4)
    MAP = "map"            # zero-fill and record the unreadable sectors, carry on (exit 7)


class ConvertEngine(StrEnum):
    """How coldclone-convert makes a captured server boot on KVM virtio (coldclone-receive
    --convert-engine names it too: the receiver starts the converter as a command)."""
    VIRT_V2V = "virt-v2v"  # virt-v2v, then our fix-ups for what it leaves
    FIXUPS = "fixups"      # our libguestfs fix-ups alone (fast; no driver injection)


class ConvertNetwork(StrEnum):
    """What the converted guest's primary interface keeps of its addresses (coldclone-convert
    --network, and coldclone-receive --network beside --convert; the first is the default)."""
    DHCP = "dhcp"          # DHCP on the cloud's network (Neutron's default)
    KEEP = "keep"          # the static addresses, routes and DNS, for a port with that fixed IP


class IscsiMode(StrEnum):
    AUTO = "auto"
    OFF = "off"


def words(enum: type[StrEnum]) -> tuple[str, ...]:
    return tuple(m.value for m in enum)
