"""What the agent knows about one source disk at capture time."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import asdict, dataclass

from ... import devnames
from ... import protocol as P
from ...devnames import stream_name
from ...errors import SourceError
from ...sync.disk import head_digest, read_facts

BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268
BLKPBSZGET = 0x127B


@dataclass
class SourceDisk:
    path: str            # as the operator named it, e.g. /dev/cciss/c0d0
    kernel_name: str     # as sysfs names it, e.g. cciss!c0d0
    name: str            # as the stream and the image file name it, e.g. cciss-c0d0
    size: int
    logical_sector_size: int
    physical_sector_size: int
    model: str = ""
    serial: str = ""
    wwid: str = ""
    rotational: bool | None = None
    # sha256 (hex) of the first 64 KiB (read_head): with the WWID and serial, what proves to a
    # receiver that a resume comes from the server it holds this disk of (receive/identity.py)
    head: str = ""

    def facts(self) -> dict:
        return asdict(self)

    def identity(self) -> P.DiskIdentity:
        """How a server recognises this disk in its resume journals (the DISK header's facts)."""
        ident = P.DiskIdentity.of(self.name, self.size, serial=self.serial, wwid=self.wwid)
        return P.DiskIdentity(ident.name, ident.size, ident.serial, ident.wwid, self.head)

    def read_head(self) -> "SourceDisk":
        """Fill in `head`: a plain read-only read of the first 64 KiB."""
        try:
            self.head = head_digest(self.path, self.size)
        except OSError as e:
            raise SourceError(f"cannot read the first bytes of {self.path}: {e.strerror}") from None
        return self


def probe(path: str) -> SourceDisk:
    """Facts of a source block device, from the kernel (ioctls) and sysfs."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise SourceError(f"source disk {path}: {e.strerror}; check the name with `coldclone discover`") from None
    if not stat.S_ISBLK(st.st_mode):
        raise SourceError(f"source {path} is not a block device (coldclone captures whole disks such as /dev/sda)")
    kernel_name = devnames.kernel_name(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.ENOMEDIUM):
            raise SourceError(f"cannot open source {path}: no medium in the drive (an empty card "
                              f"reader, floppy or virtual-media slot); leave it out with "
                              f"coldclone.exclude= / do not pass it with --disk") from None
        hint = " (run coldclone as root)" if e.errno in (errno.EACCES, errno.EPERM) else ""
        raise SourceError(f"cannot open source {path} read-only: {e.strerror}{hint}") from None
    try:
        # the one reading of a disk's facts, shared with the sync file (the same identity)
        facts = read_facts(kernel_name, fd)
    except OSError as e:
        raise SourceError(f"cannot query {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if facts["size"] == 0:
        raise SourceError(f"source {path} has size 0 (empty card reader or removed disk?); nothing to capture")
    return SourceDisk(path=path, kernel_name=kernel_name, name=stream_name(kernel_name), **facts)
