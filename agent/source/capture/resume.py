"""The agent's side of a resumed capture: is what the receiver holds still the source's content?

The receiver's READY lists, per disk, the checkpoints of its journal (protocol.HeldDisk: segment
ends and digests). Before sending anything of a held disk the agent reads the held part of the
source once and checks every segment's digest. The check is full, not sampled: the agent must read
those bytes anyway to compute the whole-disk digest for END (a BlockTree cannot be carried over
from another process), so checking all of them costs no extra read, and a sample could miss a
changed block and splice two versions of the disk into one image.

Same digests: the disk's records start at the end of the held part; stream_disk continues with
the tree fed here. Any difference (or a held copy of another size, block size or mode): the
disk is restarted from byte 0 and the DISK header says why (the manifest's `resume.restarted`).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ... import protocol as P
from ...errors import CancelledError, SourceError
from .source import SourceDisk
from .stream import StreamOptions
from .usedmap import plan_disk, whole_disk


@dataclass(frozen=True)
class DiskResume:
    """Where a disk's records start, and the tree of the bytes before that (None: from 0)."""

    start: int = 0
    tree: P.BlockTree | None = None
    restart_reason: str | None = None    # the receiver's held copy is dropped, and why
    checked_bytes: int = 0
    seconds: float = 0.0


def plan_resume(src: SourceDisk, opts: StreamOptions, held: P.HeldDisk | None,
                cancel: threading.Event | None = None, tick: Callable[[], None] | None = None) -> DiskResume:
    """tick: called after each segment (the session sends NOOPs through it while this reads)."""
    if held is None:
        return DiskResume()
    if (held.size, held.block_size, held.mode) != (src.size, opts.block_size, opts.mode):
        return DiskResume(restart_reason=(
            f"the held copy is {held.size} bytes in blocks of {held.block_size} (mode {held.mode}); "
            f"this capture is {src.size} bytes in blocks of {opts.block_size} (mode {opts.mode})"))
    if not held.segments:
        return DiskResume()
    t0 = time.monotonic()
    tree = P.BlockTree(src.size, opts.block_size)
    # mode=used sends the free space as ZERO records: its plan says what the held copy holds there.
    plan = plan_disk(src.path, src.size, opts.block_size).extents if opts.mode == "used" else whole_disk(src.size)
    try:
        fd = os.open(src.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SourceError(f"cannot open {src.path} read-only: {e.strerror}") from None
    try:
        start = 0
        for seg in held.segments:
            if cancel is not None and cancel.is_set():
                raise CancelledError("capture cancelled by the operator")
            if tick is not None:
                tick()
            for ext in plan:
                if ext.end <= tree.pos or ext.offset >= seg.end:
                    continue
                stop = min(ext.end, seg.end)
                if ext.sent:
                    try:
                        P.feed_range(fd, tree, stop, is_file=os.path.isfile(src.path), what=src.path)
                    except OSError as e:
                        raise SourceError(f"read error on {src.path} while checking the bytes the server "
                                          f"holds ({e}); check `dmesg`") from None
                else:
                    tree.add_zero(tree.pos, stop - tree.pos)
            if tree.cut_segment() != bytes.fromhex(seg.digest):
                return DiskResume(
                    restart_reason=f"the source changed since the held copy was received: bytes "
                                   f"{start}-{seg.end} differ", checked_bytes=seg.end,
                    seconds=time.monotonic() - t0)
            start = seg.end
    finally:
        os.close(fd)
    return DiskResume(start=held.held, tree=tree, checked_bytes=held.held, seconds=time.monotonic() - t0)
