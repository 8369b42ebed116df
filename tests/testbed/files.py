"""Byte-level checks on disks and images shared by the demo, the benchmark and the tests."""

from __future__ import annotations

import hashlib
import os

MiB = 1 << 20


def sha256_of(path: str) -> str:
    """sha256 of a whole file or block device (to prove a source is unchanged)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(4 * MiB), b""):
            h.update(b)
    return h.hexdigest()


def partial_raw_bytes(partial: str) -> int:
    """Bytes that reached the raw image in a receiver's `<id>.partial` so far: its allocated
    size, since the receiver makes the file sparse at the disk's size and fills it in order
    (exact for a source without zeros). 0 while there is none."""
    raws = [n for n in os.listdir(partial) if n.endswith(".raw")] if os.path.isdir(partial) else []
    return os.stat(os.path.join(partial, raws[0])).st_blocks * 512 if raws else 0
