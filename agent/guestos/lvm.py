"""LVM in the source OS: from fstab names and /etc/lvm's metadata backups."""

from __future__ import annotations

import re

from . import files
from .model import FstabEntry


def split_mapper_name(name: str) -> tuple[str, str] | None:
    """'vg_rhel6-lv_root' -> ('vg_rhel6', 'lv_root'); a '-' inside a name is '--'."""
    m = re.match(r"((?:[^-]|--)+)-((?:[^-]|--)+)$", name)
    if not m:
        return None
    return m.group(1).replace("--", "-"), m.group(2).replace("--", "-")


def vg_of_entry(entry: FstabEntry) -> str | None:
    if entry.spec_kind == "mapper":
        parts = split_mapper_name(entry.spec[len("/dev/mapper/"):])
        return parts[0] if parts else None
    if entry.spec_kind == "lvm":
        return entry.spec.split("/")[2]
    return None


def read_vgs(root: str) -> list[str]:
    """VG names from /etc/lvm/backup (one file per VG, named after it)."""
    vgs = []
    for name in files.listdir(root, "etc/lvm/backup"):
        text = files.read_text(root, f"etc/lvm/backup/{name}") or ""
        m = re.search(r"^(\S+)\s*\{", text, re.M)
        vgs.append(m.group(1) if m else name)
    return sorted(set(vgs))
