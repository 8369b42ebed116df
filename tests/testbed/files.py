"""Byte-level checks on disks and images shared by the demo, the benchmark and the tests."""

from __future__ import annotations

import hashlib

MiB = 1 << 20


def sha256_of(path: str) -> str:
    """sha256 of a whole file or block device (to prove a source is unchanged)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(4 * MiB), b""):
            h.update(b)
    return h.hexdigest()
