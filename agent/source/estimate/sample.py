"""What a disk holds, from samples: share of non-zero blocks, how well it compresses, CPU cost.

Samples are stratified: the disk is cut into N equal strata and one sample is
read at a random (seeded) place in each. Evenly spaced samples alias with
regular on-disk layouts (ext4 puts bitmaps and inode tables at the start of
every 128 MiB block group) and used to over- or under-count data badly.

Each sample goes through the same work the capture does per chunk
(agent.source.capture.stream: zero test and sha256 per block, zstd per data run), so
the CPU cost per byte is measured, not guessed.
"""

from __future__ import annotations

import bisect
import itertools
import os
import random
import time
from dataclasses import dataclass, field, fields

import zstandard

from ... import protocol as P
from ...estimate_model import SampleFacts
from ..capture.badblocks import MEDIUM_ERRNOS
from ..capture.stream import _cpu_idle   # the machine's busy time, as zstd:auto reads it

MiB = 1 << 20


@dataclass
class ContentSample(SampleFacts):
    """SampleFacts and the sampled buffers themselves: the calibration probe runs them through the
    capture's own processing and sends them, so it measures CPU and link together on this disk's
    content."""

    buffers: list = field(default_factory=list, repr=False)

    def facts(self) -> SampleFacts:
        """What the estimate keeps of it (the buffers stay here)."""
        return SampleFacts(**{f.name: getattr(self, f.name) for f in fields(SampleFacts)})


def sample_content(path: str, *, mode: str = "nonzero", samples: int = 256, sample_size: int = 256 << 10,
                   codec: str = "zstd", level: int = 1, block_size: int = P.DEFAULT_BLOCK_SIZE,
                   keep_bytes: int = 64 * MiB, seed: int = 0,
                   ranges: list[tuple[int, int]] | None = None) -> ContentSample:
    """Read `samples` x `sample_size` bytes spread over the disk and measure what the capture would do.

    `ranges` (offset, length): only what the capture will read (mode=used: the used map's sent
    extents); the strata are cut over those ranges laid end to end, and the fractions and CPU
    cost are still per byte of the whole disk.
    """
    t0 = time.monotonic()
    skip_zero = mode != "full"
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        spans = ranges if ranges is not None else [(0, size)]
        starts = list(itertools.accumulate((ln for _, ln in spans), initial=0))
        covered = starts[-1]
        sample_size = max(block_size, sample_size - sample_size % block_size)
        n = max(1, min(samples, covered // sample_size))
        stratum = covered / n
        data = raw = payload_total = kept = 0
        cpu = 0.0
        buffers = []
        for i in range(n):
            lo = int(i * stratum)
            span = max(0, int(stratum) - sample_size)
            v = lo + (rng.randrange(span + 1) if span else 0)
            # From the ranges laid end to end back to the disk, never past the range's end.
            k = max(0, bisect.bisect_right(starts, v) - 1)
            if k >= len(spans):
                continue
            r_off, r_len = spans[k]
            off = r_off + (v - starts[k])
            off -= off % block_size
            length = min(sample_size, size - off, r_off + r_len - off)
            if length <= 0:
                continue
            try:
                buf = os.pread(fd, length, off)
            except OSError as e:
                # An unreadable sector is the capture's business (on_read_error): the estimate
                # is advice and samples elsewhere.
                if e.errno in MEDIUM_ERRNOS:
                    continue
                raise
            c0 = time.thread_time()
            for ext in P.split_extents(buf, off, block_size, skip_zero=skip_zero):
                if ext.zero:
                    continue
                data += ext.length
                out = cctx.compress(ext.data) if codec == "zstd" else b""
                # Incompressible runs go as they are, as in the capture.
                payload_total += len(out) if codec == "zstd" and len(out) < ext.length else ext.length
            cpu += time.thread_time() - c0
            if kept < keep_bytes and len(buf) % block_size == 0:
                buffers.append(buf)
                kept += len(buf)
            raw += len(buf)
    finally:
        os.close(fd)
    share = covered / size if size else 1.0
    return ContentSample(
        size=size, samples=n, sampled_bytes=raw,
        nonzero_fraction=share * data / raw if raw else 0.0,
        compress_ratio=payload_total / data if data else 1.0,
        cpu_per_byte=share * cpu / raw if raw else 0.0,
        sample_seconds=time.monotonic() - t0,
        read_fraction=share,
        buffers=buffers)


def measure_read_rate(path: str, seconds: float, *, chunk: int = 4 * MiB,
                      segments: int = 16) -> tuple[float, int, float, float]:
    """Sequential read rate of the source (bytes/s) over `seconds`, in a few places of the disk;
    (rate, bytes read, this process's CPU seconds per byte, CPU share).

    Spinning disks read their outer tracks about twice as fast as the inner ones, so the
    time is split over `segments` places. Cached pages are dropped first (fadvise), so a
    region the sampler just read does not count at memory speed.

    The CPU share is how many of the machine's cores were busy meanwhile (0..1): a real disk's
    reads wait for the device (near 0), a loop device over a cached file or a RAM disk copies
    memory and keeps a core busy (near 1), in the kernel threads this process's CPU does not
    count. The estimate needs it when the receiver shares this machine (plan.py).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    got = 0
    spent = 0.0
    t = os.times()
    c0 = t.user + t.system
    idle0, total0 = _cpu_idle()
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        for k in range(segments):
            off = int(size * (2 * k + 1) / (2 * segments))
            off -= off % chunk
            try:
                os.posix_fadvise(fd, off, int(seconds * 4000 * MiB / segments), os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds / segments and off < size:
                try:
                    b = os.pread(fd, min(chunk, size - off), off)
                except OSError as e:
                    if e.errno in MEDIUM_ERRNOS:   # a bad sector: time the next segment instead
                        break
                    raise
                if not b:
                    break
                got += len(b)
                off += len(b)
            spent += time.monotonic() - t0
    finally:
        os.close(fd)
    t = os.times()
    cpu = t.user + t.system - c0
    idle1, total1 = _cpu_idle()
    ticks = total1 - total0
    busy_cores = (ticks - (idle1 - idle0)) / ticks * (os.cpu_count() or 1) if ticks > 0 else 0.0
    return (got / spent if spent > 0 else 0.0), got, (cpu / got if got else 0.0), min(1.0, max(0.0, busy_cores))

