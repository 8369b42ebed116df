"""Reading a source disk that has unreadable sectors (on_read_error=map).

A chunk read that fails with a medium error is read again in 64 KiB pieces, and each failing
piece is halved until the halves read or are single sectors, ddrescue-style: what reads is kept,
what does not is zero-filled and recorded as a BadRange. Two bounds keep a dying disk from stalling a capture forever: a few retries per sector,
and a time budget per disk for all recovery reads; once the budget is spent, a failing piece is
mapped whole without splitting it further (coarser, but the capture ends).

The recovery reads go through O_DIRECT when the device allows it: buffered reads of a block
device go through the page cache a whole page (4 KiB) at a time, so one bad 512-byte sector would
fail its seven good neighbours too; O_DIRECT reads exactly the logical sector asked for.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import time
from dataclasses import dataclass
from typing import Callable

from ...errors import SourceError

log = logging.getLogger("coldclone.badblocks")

# The errors a disk gives for sectors it cannot read: EIO from most drivers (and btrfs/loop),
# ENODATA for BLK_STS_MEDIUM (a SCSI/ATA "unrecovered read error" since Linux 4.13). Anything
# else (EBADF, ENXIO: the device went away) is not a bad sector and stops the capture.
MEDIUM_ERRNOS = (errno.EIO, errno.ENODATA)

# First split of a failing chunk: 64 KiB pieces, so a chunk with one bad sector costs 64 reads
# of pieces plus about 2 x 7 reads of halves down to the sector (512-byte sectors), not 8192
# sector reads of a 4 MiB chunk.
PIECE_SIZE = 64 << 10
# Extra reads of a failing sector before it is mapped: a marginal sector sometimes reads on a
# second try, but the drive has already retried internally behind each EIO (seconds each on a
# desktop drive), so more tries mostly cost time.
SECTOR_RETRIES = 2
# Seconds of recovery reads per disk. A dying disk can take seconds per failing sector; this caps
# the extra downtime it can add (the operator sees "unreadable" counts grow in the progress
# lines meanwhile). After it, whatever fails is mapped whole, without halving it further.
RECOVERY_BUDGET_SECONDS = 600.0

Pread = Callable[[int, int], bytes]     # (length, offset) -> bytes, as os.pread without the fd


@dataclass(frozen=True)
class BadRange:
    """Bytes [offset, offset + length) of a disk that could not be read (sector-aligned)."""
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length

    def sectors(self, sector_size: int) -> int:
        """Sectors it touches (a short last sector of a disk counts as one)."""
        return -(-self.length // sector_size)


class MediumError(Exception):
    """A read failed with a medium error at `offset` (after `data`, the bytes read before it)."""

    def __init__(self, offset: int, err: OSError, data: bytes = b""):
        super().__init__(f"medium error at byte {offset}: {err.strerror}")
        self.offset = offset
        self.err = err
        self.data = data


def read_exact(pread: Pread, offset: int, length: int, path: str) -> bytes:
    """length bytes from offset. A read that stops short (a buffered read returns the bytes
    before a bad page) goes on from where it stopped, so a bad sector raises MediumError at
    its own offset; end of device before `length` is a SourceError."""
    parts: list[bytes] = []
    done = 0
    while done < length:
        try:
            buf = pread(length - done, offset + done)
        except OSError as e:
            if e.errno in MEDIUM_ERRNOS:
                raise MediumError(offset + done, e, b"".join(parts)) from None
            raise SourceError(f"read of {path} at byte {offset + done} failed: {e.strerror}") from None
        if not buf:
            raise SourceError(
                f"short read on {path} at byte {offset + done}: the device ended before the "
                f"{offset + length} bytes it reported (did it shrink or go away?)")
        parts.append(buf)
        done += len(buf)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class ReadRecovery:
    """Reads a range that failed in pieces, halving failing pieces down to the sector; one per
    disk (it keeps the disk's time budget and the count of what it did)."""

    def __init__(self, pread: Pread, sector_size: int, path: str, *, piece_size: int = PIECE_SIZE,
                 retries: int = SECTOR_RETRIES, budget_seconds: float = RECOVERY_BUDGET_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        if sector_size <= 0 or piece_size % sector_size:
            raise ValueError(f"piece size {piece_size} is not a multiple of the sector size {sector_size}")
        self.pread = pread
        self.sector = sector_size
        self.path = path
        self.piece = piece_size
        self.retries = retries
        self.budget = budget_seconds
        self.clock = clock
        self.seconds = 0.0          # spent in recovery so far (this disk)
        self.reads = 0              # recovery reads issued
        self.budget_spent_at: int | None = None   # disk offset where the budget ran out

    def exhausted(self) -> bool:
        return self.seconds >= self.budget

    def read(self, offset: int, length: int) -> tuple[bytes, list[BadRange]]:
        """length bytes from offset (sector-aligned; the length too, but for the tail of a
        source whose size is not whole sectors): what reads, zeros where nothing does, and the
        ranges that did not read (merged, in order)."""
        if offset % self.sector:
            raise ValueError(f"range {offset}+{length} is not aligned to the sector size {self.sector}")
        out = bytearray(length)
        bad: list[BadRange] = []
        t0 = self.clock()
        try:
            for p_off in range(offset, offset + length, self.piece):
                self._piece(out, offset, bad, t0, p_off, min(self.piece, offset + length - p_off))
        finally:
            self.seconds += self.clock() - t0
        return bytes(out), bad

    def _piece(self, out: bytearray, base: int, bad: list[BadRange], t0: float, off: int, n: int) -> None:
        """Read [off, off + n) into out (which starts at disk byte base); halve what fails."""
        # Ranges in disk order, as a stack: the lower half is pushed last so it is read first.
        todo = [(off, n)]
        while todo:
            off, n = todo.pop()
            data = self._try(off, n)
            if n <= self.sector:
                for _ in range(self.retries):
                    if data is not None or self._over_budget(t0, off):
                        break
                    data = self._try(off, n)
            if data is not None:
                out[off - base:off - base + n] = data
            elif n <= self.sector or self._over_budget(t0, off):
                _add(bad, off, n)
            else:
                half = (n // 2 + self.sector - 1) // self.sector * self.sector
                todo += [(off + half, n - half), (off, half)]

    def _over_budget(self, t0: float, where: int) -> bool:
        if self.seconds + (self.clock() - t0) < self.budget:
            return False
        if self.budget_spent_at is None:
            self.budget_spent_at = where
            log.warning("%s: read-error recovery budget of %.0f s spent at byte %d; from here on a "
                        "failing piece (at most %d KiB) is mapped whole, not halved down to the sector",
                        self.path, self.budget, where, self.piece >> 10)
        return True

    def _try(self, offset: int, length: int) -> bytes | None:
        self.reads += 1
        try:
            return read_exact(self.pread, offset, length, self.path)
        except MediumError:
            return None


def _add(bad: list[BadRange], offset: int, length: int) -> None:
    """Append, merging with the previous range when they touch."""
    if bad and bad[-1].end == offset:
        bad[-1] = BadRange(bad[-1].offset, bad[-1].length + length)
    else:
        bad.append(BadRange(offset, length))


class DirectReader:
    """pread through O_DIRECT on a second descriptor (exact sectors, no page cache), falling back
    to the buffered descriptor where O_DIRECT is refused (a regular file on tmpfs, say)."""

    def __init__(self, path: str, buffered_fd: int, max_len: int = PIECE_SIZE):
        self.buffered_fd = buffered_fd
        self.fd = -1
        # O_DIRECT wants a buffer aligned to the logical block size: an anonymous mmap is
        # page-aligned, which covers every sector size up to 4 KiB.
        self.buf = mmap.mmap(-1, max(max_len, mmap.PAGESIZE))
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as e:
            log.info("%s: no O_DIRECT (%s); recovery reads are buffered", path, e.strerror)

    def __call__(self, length: int, offset: int) -> bytes:
        if self.fd >= 0 and length <= len(self.buf):
            try:
                got = os.preadv(self.fd, [memoryview(self.buf)[:length]], offset)
                return bytes(self.buf[:got])
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                # EINVAL: this range or device does not take O_DIRECT; read buffered.
        return os.pread(self.buffered_fd, length, offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.buf.close()
