"""Byte-level checks on disks and images shared by the demo, the benchmark and the tests."""

from __future__ import annotations

import hashlib
import os
import threading

MiB = 1 << 20


def sha256_of(path: str) -> str:
    """sha256 of a whole file or block device (to prove a source is unchanged)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(4 * MiB), b""):
            h.update(b)
    return h.hexdigest()


class SpacePoll:
    """The most bytes a capture's directory (`<id>.partial`, then `<id>`) held on the server
    while it ran: allocated blocks of its files, polled every 50 ms (one copy: the qcow2 and a
    journal; before issue 21 the raw file and the qcow2 made from it)."""

    def __init__(self, dirs: list[str]):
        self.dirs = dirs
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _held(self) -> int:
        total = 0
        for d in self.dirs:
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                continue
            for n in names:
                try:
                    total += os.stat(os.path.join(d, n), follow_symlinks=False).st_blocks * 512
                except FileNotFoundError:
                    pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._held())

    def __enter__(self) -> "SpacePoll":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._held())
