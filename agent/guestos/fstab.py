"""/etc/fstab: which devices the OS expects, and by what names."""

from __future__ import annotations

import re

from .model import FstabEntry


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def classify_spec(spec: str) -> str:
    """How an fstab entry names its device; only some names survive a move to KVM."""
    s = spec.strip()
    upper = s.upper()
    for prefix, kind in (("UUID=", "uuid"), ("LABEL=", "label"), ("PARTUUID=", "partuuid"),
                         ("PARTLABEL=", "partlabel")):
        if upper.startswith(prefix):
            return kind
    if s.startswith("/dev/disk/by-uuid/"):
        return "uuid"
    if s.startswith("/dev/disk/by-label/"):
        return "label"
    if s.startswith(("/dev/disk/by-id/", "/dev/disk/by-path/")):
        return "by-id"
    if s.startswith(("/dev/cciss/", "/dev/ida/", "/dev/rd/")):
        return "cciss"
    if re.match(r"/dev/(sd|xvd)[a-z]+\d*$", s):
        return "sd"
    if re.match(r"/dev/hd[a-z]+\d*$", s):
        return "hd"
    if re.match(r"/dev/vd[a-z]+\d*$", s):
        return "vd"
    if re.match(r"/dev/nvme\d+n\d+(p\d+)?$", s):
        return "nvme"
    if re.match(r"/dev/md/?\w+$", s):
        return "md"
    if s.startswith("/dev/mapper/"):
        return "mapper"
    if re.match(r"/dev/[^/]+/[^/]+$", s):
        return "lvm"     # /dev/VG/LV
    if re.match(r"[^/\s]+:/", s) or s.startswith("//"):
        return "nfs"     # host:/export, or //server/share (cifs)
    return "other"


def parse_fstab(text: str) -> list[FstabEntry]:
    entries = []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        # Trailing comments are not fstab syntax, but admins write them anyway.
        line = re.split(r"\s+#", line, maxsplit=1)[0]
        fields = line.split()
        if len(fields) < 3:
            continue      # a broken line: mount(8) skips it too
        spec, mountpoint, fstype = (_unescape(f) for f in fields[:3])
        options = fields[3].split(",") if len(fields) > 3 else ["defaults"]

        def num(i):
            try:
                return int(fields[i])
            except (IndexError, ValueError):
                return 0

        entries.append(FstabEntry(spec=spec, mountpoint=mountpoint, fstype=fstype,
                                  options=options, dump=num(4), passno=num(5), line=no,
                                  spec_kind=classify_spec(spec)))
    return entries


def disk_of_spec(spec: str) -> str | None:
    """/dev/cciss/c0d0p1 -> /dev/cciss/c0d0; /dev/sda1 -> /dev/sda; others None."""
    for pattern in (r"(/dev/(?:cciss|ida|rd)/c\d+d\d+)(?:p\d+)?$",
                    r"(/dev/(?:sd|hd|vd|xvd)[a-z]+)\d*$",
                    r"(/dev/nvme\d+n\d+)(?:p\d+)?$"):
        m = re.match(pattern, spec)
        if m:
            return m.group(1)
    return None


def partition_number(spec: str) -> int | None:
    """/dev/cciss/c0d0p2 -> 2, /dev/sda1 -> 1, /dev/nvme0n1p3 -> 3; whole disks None."""
    for pattern in (r"/dev/(?:cciss|ida|rd)/c\d+d\d+p(\d+)$",
                    r"/dev/(?:sd|hd|vd|xvd)[a-z]+(\d+)$",
                    r"/dev/nvme\d+n\d+p(\d+)$"):
        m = re.match(pattern, spec)
        if m:
            return int(m.group(1))
    return None
