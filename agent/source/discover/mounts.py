"""/proc/mounts as data: which device is mounted where, and whether a path is on NFS."""

from __future__ import annotations

import re
from dataclasses import dataclass

NFS_TYPES = ("nfs", "nfs4")

# Where live systems keep the medium they booted from (Debian live-boot,
# older live-boot, dracut dmsquash-live, casper, Knoppix).
LIVE_MEDIUM_MOUNTPOINTS = (
    "/run/live/medium", "/lib/live/mount/medium", "/run/initramfs/live",
    "/cdrom", "/mnt-system", "/run/archiso/bootmnt",
)


@dataclass
class Mount:
    source: str
    target: str
    fstype: str
    options: list[str]

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def _unescape(field: str) -> str:
    # The kernel octal-escapes space, tab, newline and backslash in /proc/mounts.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        mounts.append(Mount(_unescape(parts[0]), _unescape(parts[1]), parts[2],
                            parts[3].split(",")))
    return mounts


def read_proc_mounts(path: str = "/proc/mounts") -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount that holds path (longest mount-point prefix; later mounts win)."""
    path = "/" + path.strip("/")
    best = None
    for m in mounts:
        t = m.target.rstrip("/") or "/"
        if path == t or t == "/" or path.startswith(t + "/"):
            if best is None or len(t) >= len(best.target.rstrip("/") or "/"):
                best = m
    return best


def is_on_nfs(path: str, mounts: list[Mount]) -> bool:
    m = mount_of(path, mounts)
    return m is not None and m.fstype.split(".")[0] in NFS_TYPES


def live_medium_source(mounts: list[Mount]) -> str | None:
    """The device the live system booted from, when it is mounted where live systems put it."""
    for m in mounts:
        if m.target in LIVE_MEDIUM_MOUNTPOINTS and m.source.startswith("/dev/"):
            return m.source
    return None


def path_is_on_nfs(path: str) -> bool:
    """For the estimator: a capture written to this path crosses the network."""
    import os

    return is_on_nfs(os.path.realpath(path), parse_mounts(read_proc_mounts()))
