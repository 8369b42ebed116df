"""A source disk as the sync file sees it: the same facts and the same identity as the ISO agent.

The receiver proves a disk by what the ISO agent reports of it (agent/source/capture/source.py
probe / read_head / identity): its stream name (devnames.stream_name of the kernel name), size
(BLKGETSIZE64), WWID and serial from sysfs (device/wwid or wwid, device/serial or serial; a
placeholder dropped by devnames.real_identifier) and `head`, the sha256 of its first 64 KiB. A
warm capture is found again, and later cut over from the ISO, only if both programs compute
exactly these; tests/unit/test_sync_file.py checks them against the agent's on a loop device.

The disk is read while the running OS uses it (crash-inconsistent: a head start, which the
cutover from the ISO makes exact), at low I/O and CPU priority, and without filling the page
cache (POSIX_FADV_DONTNEED behind each chunk).

Standard library only, Python 3.6 syntax.
"""

import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import platform
import stat
import struct
import subprocess

from .. import devnames
from ..errors import SourceError

log = logging.getLogger("coldclone.sync")

BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268
BLKPBSZGET = 0x127B
HEAD_BYTES = 64 << 10       # protocol.DiskIdentity.HEAD_BYTES


def _ioctl_int(fd, req, fmt):
    return struct.unpack(fmt, fcntl.ioctl(fd, req, struct.pack(fmt, 0)))[0]


def _sysfs(kernel_name, rel):
    """A sysfs attribute as agent.source.discover.udevdb.read_attr reads it ("" when missing)."""
    try:
        with open(os.path.join("/sys/class/block", kernel_name, rel), "rb") as f:
            data = f.read(4096)
    except OSError:
        return ""
    return data.decode("utf-8", "replace").strip()


def read_facts(kernel_name, fd):
    """Size, sector sizes and sysfs facts of an open block device: the one reading of a disk's
    facts, used by the sync file and by the ISO agent (agent/source/capture/source.py), so both
    give the receiver the same identity. OSError from the kernel is the caller's to word."""
    rot = _sysfs(kernel_name, "queue/rotational")
    return {"size": _ioctl_int(fd, BLKGETSIZE64, "Q"), "logical_sector_size": _ioctl_int(fd, BLKSSZGET, "i"),
            "physical_sector_size": _ioctl_int(fd, BLKPBSZGET, "I"),
            "model": _sysfs(kernel_name, "device/model"),
            "serial": _sysfs(kernel_name, "device/serial") or _sysfs(kernel_name, "serial"),
            "wwid": _sysfs(kernel_name, "device/wwid") or _sysfs(kernel_name, "wwid"),
            "rotational": (rot == "1") if rot else None}


def head_digest(path, size):
    """`head`: the sha256 (hex) of a disk's first 64 KiB, a plain read-only read (OSError: the caller's)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(fd, min(HEAD_BYTES, size), 0)
    finally:
        os.close(fd)
    return hashlib.sha256(data).hexdigest()


class SyncDisk(object):
    """One source disk: its facts (the DISK header's `source`, as SourceDisk.facts() writes them)
    and its identity (HELLO.identities, as SourceDisk.identity() makes it)."""

    def __init__(self, path, kernel_name, size, logical_sector_size, physical_sector_size,
                 model="", serial="", wwid="", rotational=None, head=""):
        self.path = path
        self.kernel_name = kernel_name
        self.name = devnames.stream_name(kernel_name)
        self.size = size
        self.logical_sector_size = logical_sector_size
        self.physical_sector_size = physical_sector_size
        self.model = model
        self.serial = serial
        self.wwid = wwid
        self.rotational = rotational
        self.head = head

    def facts(self):
        return {"path": self.path, "kernel_name": self.kernel_name, "name": self.name, "size": self.size,
                "logical_sector_size": self.logical_sector_size,
                "physical_sector_size": self.physical_sector_size, "model": self.model,
                "serial": self.serial, "wwid": self.wwid, "rotational": self.rotational, "head": self.head}

    def identity(self):
        """{name, size, serial, wwid, head}: protocol.DiskIdentity's fields (placeholders dropped)."""
        return {"name": self.name, "size": self.size,
                "serial": devnames.real_identifier(self.serial) or "",
                "wwid": devnames.real_identifier(self.wwid) or "", "head": self.head}

    @property
    def proven(self):
        """Has a WWID or serial: a capture of it is found by that, not by name and size."""
        ident = self.identity()
        return bool(ident["wwid"] or ident["serial"])

    def read_head(self):
        try:
            self.head = head_digest(self.path, self.size)
        except OSError as e:
            raise SourceError("cannot read the first bytes of %s: %s" % (self.path, e.strerror)) from None
        return self


def probe(path):
    """A source block device's facts, from the kernel (ioctls) and sysfs, read-only."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise SourceError("source disk %s: %s; name a whole disk such as /dev/sda (lsblk lists them)"
                          % (path, e.strerror)) from None
    if not stat.S_ISBLK(st.st_mode):
        raise SourceError("source %s is not a block device (a sync reads whole disks such as /dev/sda)" % path)
    kname = devnames.kernel_name(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        hint = " (run the sync as root)" if e.errno in (errno.EACCES, errno.EPERM) else ""
        raise SourceError("cannot open source %s read-only: %s%s" % (path, e.strerror, hint)) from None
    try:
        facts = read_facts(kname, fd)
    except OSError as e:
        raise SourceError("cannot query %s: %s" % (path, e.strerror)) from None
    finally:
        os.close(fd)
    if facts["size"] == 0:
        raise SourceError("source %s has size 0 (a removed disk or an empty reader?); nothing to sync" % path)
    return SyncDisk(path, kname, **facts)


class Reader(object):
    """Reads a disk in chunks, leaving no trace in the page cache of the running server."""

    def __init__(self, disk):
        self.disk = disk
        try:
            self.fd = os.open(disk.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SourceError("cannot open %s read-only: %s" % (disk.path, e.strerror)) from None

    def read(self, offset, length):
        try:
            buf = os.pread(self.fd, length, offset)
        except OSError as e:
            raise SourceError("read error on %s at byte %d: %s; check `dmesg` (a sync does not map bad "
                              "sectors: the cutover from the ISO does)" % (self.disk.path, offset, e.strerror)) from None
        if len(buf) != length:
            raise SourceError("short read of %s at byte %d (%d of %d bytes): did the disk shrink or go away?"
                              % (self.disk.path, offset, len(buf), length))
        try:
            os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_DONTNEED)
        except (AttributeError, OSError):
            pass
        return buf

    def close(self):
        os.close(self.fd)


# ioprio_set(2): no wrapper in the standard library. Syscall numbers per architecture.
IOPRIO_SET = {"x86_64": 251, "amd64": 251, "i386": 289, "i686": 289, "aarch64": 30, "arm64": 30,
              "armv7l": 314, "ppc64le": 273, "ppc64": 273, "s390x": 282, "riscv64": 30}
IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASS_BE = 2
IOPRIO_CLASS_SHIFT = 13
# Best effort, level 7: the lowest priority that still moves. The idle class would be lower, but
# on a server that is never idle it starves the sync for good.
LOW_IOPRIO = (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | 7


def lower_priority():
    """This process's disk and CPU priority as low as a sync needs: its reads yield to the
    server's own work. Returns how (for the log)."""
    how = []
    nr = IOPRIO_SET.get(platform.machine())
    done = False
    if nr is not None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            done = libc.syscall(nr, IOPRIO_WHO_PROCESS, 0, LOW_IOPRIO) == 0
        except (OSError, AttributeError):
            done = False
    if done:
        how.append("I/O best-effort 7 (ioprio_set)")
    else:
        try:
            code = subprocess.call(["ionice", "-c2", "-n7", "-p", str(os.getpid())],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            code = -1
        how.append("I/O best-effort 7 (ionice)" if code == 0 else "I/O priority unchanged (no ioprio_set, no ionice)")
    try:
        os.nice(10)
        how.append("nice 10")
    except OSError:
        pass
    log.info("priority: %s", ", ".join(how))
    return how
