"""Is a source in use for writing? Refuse to capture or inspect it if so.

BLKROSET does not stop a writer that already holds the device: a filesystem
mounted read-write (in any mount namespace: a container's mounts are not in
ours) keeps writing through its superblock, and a process that opened the
device O_WRONLY/O_RDWR before the guard went on keeps its write access. A
capture of such a disk is not a consistent image, so it is refused by name
unless the operator overrides it explicitly (and the manifest then says so).

The parsing functions are pure, so recorded /proc text drives the unit tests.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import stat
from dataclasses import dataclass

from ...errors import SourceError

log = logging.getLogger("coldclone.inuse")

OVERRIDE_HINT = ("or, to capture it anyway knowing the image may be inconsistent, pass "
                 "--allow-mounted-source (coldclone.allow_mounted=1 on the kernel command line)")


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/PID/mountinfo (proc(5))."""

    major: int
    minor: int
    mountpoint: str
    mount_rw: bool       # the per-mount option (rw / ro)
    fstype: str
    source: str
    super_rw: bool       # the filesystem's own option: rw means the kernel may write the device

    @property
    def writable(self) -> bool:
        # Either being rw lets the kernel write the device (journal, orphan cleanup, atime).
        return self.mount_rw or self.super_rw


def _unescape(field: str) -> str:
    # Spaces, tabs, newlines and backslashes in paths appear as \040, \011, \012, \134.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    out = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            major, minor = (int(x) for x in fields[2].split(":"))
            opts = fields[5].split(",")
            fstype, source, superopts = fields[sep + 1], fields[sep + 2], fields[sep + 3].split(",")
        except (ValueError, IndexError):
            continue   # not a mountinfo line; the kernel's format is fixed, so skip it
        out.append(MountEntry(major, minor, _unescape(fields[4]), "rw" in opts, fstype,
                              _unescape(source), "rw" in superopts))
    return out


def parse_fdinfo_flags(text: str) -> int:
    """The open flags of /proc/PID/fdinfo/FD (octal in the file)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return int(value.strip(), 8)
    raise ValueError("no flags: line in fdinfo")


def parse_swaps(text: str) -> list[str]:
    """The devices and files in use as swap, from /proc/swaps (paths octal-escaped as in
    mountinfo): the kernel writes to them at any time."""
    out = []
    for line in text.splitlines()[1:]:   # the first line is the column header
        fields = line.split()
        if fields:
            out.append(_unescape(fields[0]))
    return out


def opened_for_write(flags: int) -> bool:
    return flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)


class Use(enum.Enum):
    MOUNTED_RW = "mounted read-write"
    OPEN_FOR_WRITE = "open for writing"
    SWAP = "in use as swap"


@dataclass(frozen=True)
class InUse:
    use: Use
    device: str
    mountpoint: str = ""   # MOUNTED_RW
    ns_pid: int = 0        # MOUNTED_RW: a process in that mount namespace (0: our own)
    pid: int = 0           # OPEN_FOR_WRITE
    comm: str = ""

    def describe(self) -> str:
        if self.use is Use.MOUNTED_RW:
            where = "" if self.ns_pid == 0 else f" in the mount namespace of pid {self.ns_pid}"
            return f"{self.device} is mounted read-write at {self.mountpoint}{where}"
        if self.use is Use.SWAP:
            return f"{self.device} is in use as swap"
        return f"{self.device} is open for writing by pid {self.pid} ({self.comm})"

    def remedy(self) -> str:
        if self.use is Use.MOUNTED_RW:
            return f"unmount it (umount {self.mountpoint})"
        if self.use is Use.SWAP:
            return f"turn it off (swapoff {self.device})"
        return f"stop that process (kill {self.pid})"


class SourceInUseError(SourceError):
    def __init__(self, findings: list[InUse], what: str):
        self.findings = findings
        lines = "; ".join(f"{f.describe()}: {f.remedy()}" for f in findings)
        super().__init__(f"refusing to {what}: {lines}; {OVERRIDE_HINT}")


def _read(path: str) -> str | None:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None   # the process ended meanwhile, or is a kernel thread


def _pids(proc: str) -> list[int]:
    return sorted(int(n) for n in os.listdir(proc) if n.isdigit())


def _rdev_of(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def scan(devices: list[str], *, proc: str = "/proc") -> list[InUse]:
    """Every read-write mount (any mount namespace), swap and write-open of the devices."""
    wanted: dict[int, str] = {}
    for d in devices:
        rdev = _rdev_of(d)
        if rdev is not None:
            wanted[rdev] = d
    found: list[InUse] = []
    for path in parse_swaps(_read(f"{proc}/swaps") or ""):
        rdev = _rdev_of(path)
        if rdev in wanted:
            found.append(InUse(Use.SWAP, wanted[rdev]))
    seen_ns: set[str] = set()
    mounts_seen: set[tuple[str, str]] = set()
    me = os.getpid()
    # Our own namespace first (ns_pid 0: named without a namespace), then every other one;
    # a mount propagated into several namespaces is reported once.
    for pid in [me] + _pids(proc):
        try:
            ns = os.readlink(f"{proc}/{pid}/ns/mnt")
        except OSError:
            ns = f"pid-{pid}"
        if ns not in seen_ns:
            text = _read(f"{proc}/{pid}/mountinfo")
            if text is not None:
                seen_ns.add(ns)
                for m in parse_mountinfo(text):
                    if not m.writable:
                        continue
                    # btrfs reports an anonymous device number: the source path tells.
                    rdev = os.makedev(m.major, m.minor)
                    if rdev not in wanted and m.source.startswith("/dev/"):
                        rdev = _rdev_of(m.source) or rdev
                    if rdev in wanted and (wanted[rdev], m.mountpoint) not in mounts_seen:
                        mounts_seen.add((wanted[rdev], m.mountpoint))
                        found.append(InUse(Use.MOUNTED_RW, wanted[rdev], mountpoint=m.mountpoint,
                                           ns_pid=0 if pid == me else pid))
        if pid == me:
            continue
        fddir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fddir)
        except OSError:
            continue
        for fd in fds:
            rdev = _rdev_of(f"{fddir}/{fd}")
            if rdev not in wanted:
                continue
            info = _read(f"{proc}/{pid}/fdinfo/{fd}")
            try:
                if info is None or not opened_for_write(parse_fdinfo_flags(info)):
                    continue
            except ValueError:
                continue
            comm = (_read(f"{proc}/{pid}/comm") or "?").strip()
            f = InUse(Use.OPEN_FOR_WRITE, wanted[rdev], pid=pid, comm=comm)
            if f not in found:
                found.append(f)
    return found


def check(devices: list[str], *, what: str, allow: bool = False) -> list[InUse]:
    """Refuse (SourceInUseError) when any device is written to; with allow, return what was
    found so the caller can record the override."""
    return check_found(scan(devices), what=what, allow=allow)


def check_found(found: list[InUse], *, what: str, allow: bool) -> list[InUse]:
    if found and not allow:
        raise SourceInUseError(found, what)
    for f in found:
        log.warning("%s: captured anyway (--allow-mounted-source)", f.describe())
    return found
