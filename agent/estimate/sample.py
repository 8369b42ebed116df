"""A quick pre-capture estimate from evenly spread samples of the disk.

Reads N samples (default 64 x 1 MiB) spread over the disk, and from them
predicts the share of non-zero blocks, the zstd ratio of that data, and the
sequential read rate; from those, the bytes to read and to send under a mode,
and the time. Link speeds, calibration against the target and per-transport
models come on top of this (agent/estimate, issue 6).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import zstandard

from .. import protocol as P


@dataclass
class Estimate:
    disk: str
    size: int
    mode: str
    samples: int
    nonzero_fraction: float
    compress_ratio: float      # compressed / raw, of the non-zero data
    read_rate: float           # bytes/s, measured sequential read
    bytes_to_read: int
    bytes_to_send: int
    seconds: float
    bottleneck: str

    def lines(self) -> list[str]:
        from .rate import human_bytes as hb, human_seconds as hs

        return [
            f"{self.disk}: {hb(self.size)}, ~{100 * self.nonzero_fraction:.0f}% non-zero "
            f"(from {self.samples} samples), data compresses to ~{100 * self.compress_ratio:.0f}%",
            f"  read {hb(self.bytes_to_read)} at ~{self.read_rate / 1e6:.0f} MB/s, send ~{hb(self.bytes_to_send)}: "
            f"about {hs(self.seconds)} ({self.bottleneck})",
        ]


def sample_disk(path: str, mode: str = "nonzero", samples: int = 64, sample_size: int = 1 << 20,
                level: int = 1, block_size: int = P.DEFAULT_BLOCK_SIZE, read_probe: float = 2.0,
                link_rate: float | None = None, workers: int = 2) -> Estimate:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        n = max(1, min(samples, size // sample_size or 1))
        step = max(size // n, sample_size)
        nonzero = raw = comp = 0
        cpu = 0.0
        cctx = zstandard.ZstdCompressor(level=level)
        for i in range(n):
            off = min(i * step, max(size - sample_size, 0))
            off -= off % block_size
            buf = os.pread(fd, min(sample_size, size - off), off)
            # Time the same work the capture does per chunk: zero test, sha256, zstd.
            c0 = time.thread_time()
            for ext in P.split_extents(buf, off, block_size):
                if not ext.zero:
                    nonzero += ext.length
                    c = len(cctx.compress(ext.data))
                    comp += min(c, ext.length)
            cpu += time.thread_time() - c0
            raw += len(buf)
        frac = nonzero / raw if raw else 0.0
        ratio = comp / nonzero if nonzero else 1.0
        # Sequential read rate: read from the middle for a bounded time.
        t0 = time.monotonic()
        got, off = 0, (size // 2) - (size // 2) % (4 << 20)
        while time.monotonic() - t0 < read_probe and off + got < size:
            b = os.pread(fd, min(4 << 20, size - off - got), off + got)
            if not b:
                break
            got += len(b)
        rate = got / max(time.monotonic() - t0, 1e-6)
    finally:
        os.close(fd)
    if mode == "full":
        # Zero blocks are sent too, as zstd frames of a few hundred bytes per 4 MiB.
        to_send = int(size * (frac * ratio + (1 - frac) * 0.001))
    else:
        to_send = int(size * frac * ratio)
    t_read = size / rate if rate else float("inf")
    # CPU seconds per sampled byte, spread over the hashing/compression workers
    # (two here; the capture's reader and sender take the rest of a core).
    t_cpu = (cpu / raw) * size / max(1, min(workers, os.cpu_count() or 1)) if raw else 0.0
    t_link = to_send / link_rate if link_rate else 0.0
    times = {"reading the source disk": t_read, "hashing and compression (CPU)": t_cpu,
             "the network link": t_link}
    bottleneck = max(times, key=times.get)
    return Estimate(os.path.basename(path), size, mode, n, frac, ratio, rate, size, to_send,
                    times[bottleneck], "limited by " + bottleneck)
