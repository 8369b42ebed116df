"""Turn one source disk into protocol records: read, split zero/data, hash, compress.

Reading is sequential in one thread (old spinning disks hate seeks);
hashing and compression of each chunk run in a small pool (hashlib and
zstandard release the GIL, so two cores are really used); the caller's
thread sends the results in disk order.

What is read is one plan of extents: the whole disk for modes nonzero and full, the used-block
map for mode=used (agent.source.capture.usedmap), whose skipped extents go as ZERO records unread.

A read that fails with a medium error either stops the capture (on_read_error=fail) or is
re-read in pieces, failing ones halved down to the sector, by agent.source.capture.badblocks (map):
the sectors that do not read are zero-filled, announced in UNREADABLE records ahead of the
chunk's records, and counted.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import zstandard

from ... import protocol as P
from ...choices import CAPTURE_MODES as MODES
from ...choices import OnReadError
from ...errors import CancelledError, SourceError, UsageError
from ...units import human_bytes
from .badblocks import BadRange, DirectReader, MediumError, ReadRecovery, read_exact
from .budget import MAX_CHUNKS_AHEAD, ByteBudget
from .source import SourceDisk
from .usedmap import Extent, UsedMap, plan_disk, whole_disk

log = logging.getLogger("coldclone.stream")


AUTO = 0     # StreamOptions.level: adaptive (zstd:auto)


def parse_compress(text: str) -> tuple[str, int]:
    """The one reading of a compression setting: zstd, zstd:LEVEL (1-19), zstd:auto or none (the
    CLI's --compress, the kernel command line's coldclone.compress=). Level AUTO: adaptive."""
    if text == "none":
        return "none", 0
    codec, _, level = text.partition(":")
    if level == "auto" and codec == "zstd":
        return "zstd", AUTO
    if codec != "zstd" or (level and not level.isdigit()):
        raise UsageError(f"compression {text!r}: use zstd, zstd:LEVEL (1-19), zstd:auto or none")
    StreamOptions(codec="zstd", level=int(level or 1)).validate()
    return "zstd", int(level or 1)


@dataclass
class StreamOptions:
    mode: str = "nonzero"              # used | nonzero | full
    chunk_size: int = P.DEFAULT_CHUNK_SIZE
    block_size: int = P.DEFAULT_BLOCK_SIZE
    codec: str = "zstd"                # zstd | none
    level: int = 1
    workers: int = 2
    on_read_error: OnReadError = OnReadError.MAP

    def codec_label(self) -> str:
        """How the DISK header and the manifest name the compression: none, zstd:LEVEL or zstd:auto."""
        if self.codec == "none":
            return "none"
        return "zstd:auto" if self.level == AUTO else f"zstd:{self.level}"

    def validate(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"mode {self.mode!r}: choose used (only the blocks filesystems use), "
                             f"nonzero (skip all-zero blocks) or full (every byte)")
        bs = self.block_size
        if bs < 4096 or bs & (bs - 1):
            raise UsageError(f"block size {bs}: must be a power of two of at least 4096")
        if self.chunk_size < bs or self.chunk_size % bs or self.chunk_size > P.MAX_DATA:
            raise UsageError(
                f"chunk size {self.chunk_size}: must be a multiple of the block size {bs} "
                f"and at most {human_bytes(P.MAX_DATA)}"
            )
        if self.codec not in ("zstd", "none"):
            raise UsageError(f"compression {self.codec!r}: choose zstd or none")
        if self.codec == "zstd" and not (1 <= self.level <= 19 or self.level == AUTO):
            raise UsageError(f"zstd level {self.level}: choose 1 (fast) to 19 (small), or auto")


@dataclass
class DiskStats:
    bytes_read: int = 0
    data_bytes: int = 0      # uncompressed bytes sent in DATA records
    zero_bytes: int = 0      # bytes sent as ZERO records (never read onto the wire)
    payload_bytes: int = 0   # DATA payload bytes after compression
    wire_bytes: int = 0      # every stream byte of this disk, framing included
    data_records: int = 0
    zero_records: int = 0
    skipped_bytes: int = 0   # mode=used: bytes never read (free blocks, swap, unallocated PV extents)
    read_seconds: float = 0.0
    map_seconds: float = 0.0  # mode=used: building the used-block map
    elapsed: float = 0.0
    unreadable_bytes: int = 0     # on_read_error=map: zero-filled because the source could not read them
    recovery_seconds: float = 0.0  # on_read_error=map: re-reading failed ranges piece by piece
    # A delta against a warm capture (docs/two-phase.md): what the receiver held already (SAME)
    # and how many of its held-map segments differed and went as DATA. None: not a delta.
    same_bytes: int | None = None
    same_records: int | None = None
    segments_sent: int | None = None
    used_map: UsedMap | None = None
    unreadable: list[BadRange] = field(default_factory=list)   # the ranges, in disk order
    zstd_levels: dict[str, int] = field(default_factory=dict)  # zstd:auto: chunks compressed per level

    def unreadable_sectors(self, sector_size: int) -> int:
        return sum(r.sectors(max(sector_size, 1)) for r in self.unreadable)

    def as_dict(self) -> dict:
        # The ranges go on the wire as UNREADABLE records (the receiver lists them), not in END.
        out = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()
               if k not in ("used_map", "unreadable", "zstd_levels") and v is not None}
        if self.zstd_levels:
            out["zstd_levels"] = dict(self.zstd_levels)
        if self.used_map is not None:
            out["used_map"] = self.used_map.as_dict()   # the receiver keeps it in the manifest
        return out


@dataclass
class _Chunk:
    offset: int
    length: int
    wire: bytes = b""
    tree: list = field(default_factory=list)  # (offset, length, zero, digests)
    data_bytes: int = 0
    zero_bytes: int = 0
    payload_bytes: int = 0
    data_records: int = 0
    zero_records: int = 0
    skipped_bytes: int = 0
    unreadable: list[BadRange] = field(default_factory=list)
    level: int = 0             # the zstd level its DATA records were compressed at (0: none were)
    same_bytes: int = 0
    same_records: int = 0
    segments_sent: int = 0
    budgeted: bool = False     # read into memory: its records count against the ByteBudget until sent


class _Codec:
    """zstd (or none) for the chunk workers; `level` may change between chunks (zstd:auto)."""

    def __init__(self, codec: str, level: int):
        self.codec = codec
        self.level = AUTO_LEVELS[0] if level == AUTO else level
        self._local = threading.local()

    def compress(self, data: memoryview, level: int | None = None) -> tuple[int, bytes]:
        if self.codec == "none":
            return P.CODEC_NONE, bytes(data)
        level = level or self.level
        cs = getattr(self._local, "cs", None)
        if cs is None:
            cs = self._local.cs = {}
        c = cs.get(level)
        if c is None:
            c = cs[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
        out = c.compress(data)
        # Incompressible data goes as it is: never pay the expansion.
        if len(out) >= len(data):
            return P.CODEC_NONE, bytes(data)
        return P.CODEC_ZSTD, out


# zstd:auto steps through these. Measured on a root filesystem's data (docs/performance.md):
# levels 1 / 3 / 4 give 137.7 / 122.1 / 120.9 MB for 384 MiB at 1.7 / 2.9 / 3.1 s of one core;
# level 2 costs more than 3 here, and 6 costs 13x level 1 for 5 % fewer bytes.
AUTO_LEVELS = (1, 3, 4)


def _cpu_idle() -> tuple[float, float]:
    """(idle, total) jiffies of the whole machine, from /proc/stat (idle + iowait count as idle)."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    return fields[3] + (fields[4] if len(fields) > 4 else 0.0), sum(fields[:8])


class LevelControl:
    """zstd:auto: spend idle CPU on fewer bytes when the link is the limit.

    Every WINDOW seconds the sending thread says how long it waited for the next chunk (the
    workers are the limit), how long sends took (the link or the server is), and what each chunk
    compressed to at its level. The level goes one step up when sends took most of the window
    while the machine had CPU to spare (at least IDLE_TO_RAISE of it idle: on a loopback or a busy
    box the "send" time is CPU, and a higher level would only take it from the sender), and one
    step down as soon as the sender waited for chunks. A level that does not make this data at
    least PAYS smaller than the one below it (measured in the last RECENT seconds: random-looking
    text can come out larger at level 3 than at 1) is left, and not tried again meanwhile.
    It never leaves AUTO_LEVELS; chunks already compressed ahead of the sender keep their level.
    """

    WINDOW = 1.0
    SEND_BOUND = 0.7       # share of the window spent in sends: the link is the limit
    WORKER_BOUND = 0.1     # share spent waiting for chunks: the workers are the limit
    IDLE_TO_RAISE = 0.4
    PAYS = 0.97            # a level must give at most 97 % of the bytes of the one below
    RECENT = 30.0          # seconds a level's measured ratio speaks for the data

    def __init__(self, codec: _Codec, now: float, cpu: Callable[[], tuple[float, float]] = _cpu_idle):
        self.codec = codec
        self.cpu = cpu
        self.step = 0
        self.ratios: dict[int, tuple[float, float]] = {}    # level -> (payload / data, when)
        self._reset(now)

    def _reset(self, now: float) -> None:
        self.t0, self.wait_chunks, self.wait_send = now, 0.0, 0.0
        self.sizes: dict[int, list[int]] = {}    # level -> [data bytes, payload bytes] this window
        try:
            self.cpu0 = self.cpu()
        except (OSError, ValueError, IndexError):
            self.cpu0 = None

    def _pays(self, up: int, down: int, now: float) -> bool:
        """Whether level `up` makes the data smaller enough than `down` (unknown: worth a try)."""
        ru, rd = self.ratios.get(up), self.ratios.get(down)
        if ru is None or rd is None or now - ru[1] > self.RECENT or now - rd[1] > self.RECENT:
            return True
        return ru[0] <= self.PAYS * rd[0]

    def account(self, now: float, wait_chunks: float, wait_send: float, level: int = 0,
                data_bytes: int = 0, payload_bytes: int = 0) -> None:
        self.wait_chunks += wait_chunks
        self.wait_send += wait_send
        if level and data_bytes:
            sz = self.sizes.setdefault(level, [0, 0])
            sz[0] += data_bytes
            sz[1] += payload_bytes
        span = now - self.t0
        if span < self.WINDOW:
            return
        for lv, (d, p) in self.sizes.items():
            self.ratios[lv] = (p / d, now)
        idle = None
        if self.cpu0 is not None:
            try:
                i1, t1 = self.cpu()
                idle = (i1 - self.cpu0[0]) / max(t1 - self.cpu0[1], 1e-9)
            except (OSError, ValueError, IndexError):
                idle = None
        here = AUTO_LEVELS[self.step]
        if self.step > 0 and (self.wait_chunks > self.WORKER_BOUND * span
                              or not self._pays(here, AUTO_LEVELS[self.step - 1], now)):
            self.step -= 1
        elif (self.wait_send > self.SEND_BOUND * span and idle is not None and idle >= self.IDLE_TO_RAISE
              and self.step < len(AUTO_LEVELS) - 1 and self._pays(AUTO_LEVELS[self.step + 1], here, now)):
            self.step += 1
        self.codec.level = AUTO_LEVELS[self.step]
        self._reset(now)


def _skipped(ext: Extent, held: P.HeldMap | None = None, block_size: int = P.DEFAULT_BLOCK_SIZE) -> _Chunk:
    """A range mode=used does not read: sent as a ZERO record, a hole in the image (against a
    held map: SAME where the held copy is zeros there already)."""
    if held is not None:
        ch = _Chunk(ext.offset, ext.length, skipped_bytes=ext.length)
        ch.wire = b"".join(_delta_parts(ch, [P.Extent(ext.offset, ext.length, True)], held, block_size,
                                        lambda e: None))
        return ch
    ch = _Chunk(ext.offset, ext.length, wire=P.encode_zero(ext.offset, ext.length),
                zero_bytes=ext.length, zero_records=1, skipped_bytes=ext.length)
    ch.tree.append((ext.offset, ext.length, True, None))
    return ch


def _zero_part(ch: _Chunk, ext: P.Extent) -> bytes:
    """A ZERO record for an all-zero extent, counted in its chunk."""
    ch.zero_bytes += ext.length
    ch.zero_records += 1
    ch.tree.append((ext.offset, ext.length, True, None))
    return P.encode_zero(ext.offset, ext.length)


def _delta_parts(ch: _Chunk, extents: list, held: P.HeldMap, block_size: int, data_part) -> list[bytes]:
    """A chunk's extents against the receiver's held map: SAME for the segments it holds as the
    source has them, the rest as ever (data_part encodes a data extent)."""
    parts = []
    segments = set()
    for item in P.delta_extents(extents, held, block_size):
        if isinstance(item, P.Same):
            parts.append(item.encode(block_size))
            ch.same_bytes += item.length
            ch.same_records += 1
            ch.tree.append((item.offset, item.length, item.zero, None if item.zero else item.digests))
            continue
        if item.zero:
            parts.append(_zero_part(ch, item))
        else:
            # what crossed the link: a ZERO over held data costs 21 bytes whatever its length
            segments.update(range(item.offset // held.grid, (item.end - 1) // held.grid + 1))
            parts.append(data_part(item))
    ch.segments_sent += len(segments)
    return parts


def _process(buf: bytes, offset: int, opts: StreamOptions, codec: _Codec,
             unreadable: list[BadRange] | None = None, held: P.HeldMap | None = None) -> _Chunk:
    ch = _Chunk(offset, len(buf), unreadable=list(unreadable or ()), budgeted=True)
    # Announced before the records that carry their (zero-filled) bytes: protocol.py, UNREADABLE.
    parts = [P.encode_unreadable(r.offset, r.length) for r in ch.unreadable]
    extents = P.split_extents(buf, offset, opts.block_size, skip_zero=opts.mode != "full")

    def data_part(ext: P.Extent) -> bytes:
        ch.level = ch.level or codec.level     # one level for the whole chunk
        c, payload = codec.compress(ext.data, ch.level)
        ch.data_bytes += ext.length
        ch.payload_bytes += len(payload)
        ch.data_records += 1
        ch.tree.append((ext.offset, ext.length, False, ext.digests))
        return P.encode_data(ext.offset, ext.length, c, P.record_digest(ext.digests), payload)

    if held is not None:
        ch.wire = b"".join(parts + _delta_parts(ch, extents, held, opts.block_size, data_part))
        return ch
    for ext in extents:
        if ext.zero:
            parts.append(_zero_part(ch, ext))
        else:
            parts.append(data_part(ext))
    ch.wire = b"".join(parts)
    return ch


def stream_disk(
    src: SourceDisk,
    send: Callable[[bytes], None],
    opts: StreamOptions,
    on_chunk: Callable[[int, DiskStats], None] | None = None,
    cancel: threading.Event | None = None,
    resume: "P.BlockTree | None" = None,
    held: P.HeldMap | None = None,
) -> tuple[bytes, DiskStats]:
    """Send the DISK body records for src through send(); return (disk digest, stats).

    The caller sends the DISK header before and the END record after. resume: a tree already fed
    with the bytes below resume.pos (agent.source.capture.resume checked them against the receiver's
    journal); only the rest of the disk is read and sent. held: the receiver's held map of a warm
    copy (the DISK header says delta): every segment is read and compared, and only those whose
    digest differs are sent (docs/two-phase.md).
    """
    stats = DiskStats()
    if held is not None:
        stats.same_bytes = stats.same_records = stats.segments_sent = 0
    tree = resume or P.BlockTree(src.size, opts.block_size)
    codec = _Codec(opts.codec, opts.level)
    t0 = time.monotonic()
    if opts.mode == "used":
        stats.used_map = plan_disk(src.path, src.size, opts.block_size)
        plan = stats.used_map.extents
        stats.map_seconds = time.monotonic() - t0
    else:
        plan = whole_disk(src.size)
    if tree.pos:
        # Resuming: only what lies past the held bytes.
        plan = [e if e.offset >= tree.pos else Extent(tree.pos, e.end - tree.pos, e.why)
                for e in plan if e.end > tree.pos]
    try:
        fd = os.open(src.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SourceError(f"cannot open {src.path} read-only: {e.strerror}") from None

    def sequential() -> None:
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass

    sequential()

    def pread(n: int, off: int) -> bytes:
        return os.pread(fd, n, off)

    sector = max(src.logical_sector_size, 512)
    recovery: ReadRecovery | None = None     # made at the first medium error (map)
    direct: DirectReader | None = None
    # What is read ahead of the link is bounded by bytes held, not by chunks: a chunk holds its
    # read buffer until it is processed, then its records until they are sent (budget.py). 8 x 4
    # MiB as before when every chunk is data (16 deep measured up to 232 MB agent RSS on the
    # bench workload when the link stalls; goal 200 MB), but against a held map an unchanged
    # chunk shrinks to a SAME record of a few bytes once compared, so the reader runs on while
    # the link sends a cluster of changed segments: reading and sending overlap (make bench's
    # cutover rows: they took turns, 0.41x of a cold capture at 200 Mbit/s).
    stop = threading.Event()
    budget = ByteBudget(max(4, opts.workers * 4) * opts.chunk_size, stop)
    # and by count, so a long run of tiny chunks (SAME, skipped free space) stays bounded too
    inflight: queue.Queue = queue.Queue(maxsize=MAX_CHUNKS_AHEAD)

    def reader(pool: ThreadPoolExecutor) -> None:
        try:
            for ext in plan:
                if stop.is_set():
                    break
                if ext.sent:
                    read_extent(pool, ext)
                else:
                    done: Future = Future()
                    done.set_result(_skipped(ext, held, opts.block_size))
                    inflight.put(done)
        except BaseException as e:  # handed to the sending thread, which raises it
            fut: Future = Future()
            fut.set_exception(e)
            inflight.put(fut)
            return
        inflight.put(None)

    def read_extent(pool: ThreadPoolExecutor, ext: Extent) -> None:
        nonlocal recovery, direct
        off = ext.offset
        while off < ext.end and not stop.is_set():
            n = min(opts.chunk_size, ext.end - off)
            if not budget.take(n):
                break           # stopped while waiting for the link
            r0 = time.monotonic()
            bad: list[BadRange] = []
            try:
                buf = read_exact(pread, off, n, src.path)
            except MediumError as e:
                if opts.on_read_error != OnReadError.MAP:
                    raise SourceError(
                        f"read error on {src.path} at byte {e.offset} (sector {e.offset // sector}): "
                        f"{e.err.strerror}. The disk has unreadable sectors; check `dmesg` and the "
                        f"controller's logs for a failing drive. To capture the rest and map the "
                        f"unreadable sectors as zeros, use on_read_error=map "
                        f"(--on-read-error map, coldclone.on_read_error=map)"
                    ) from None
                if recovery is None:
                    direct = DirectReader(src.path, fd)
                    recovery = ReadRecovery(direct, sector, src.path)
                # Only what failed is re-read: the bytes before the error came back already.
                good = len(e.data) - len(e.data) % sector
                rest, bad = recovery.read(off + good, n - good)
                buf = e.data[:good] + rest
                stats.recovery_seconds = recovery.seconds
                # The kernel cuts a file's readahead window to a quarter at each read error
                # (shrink_readahead_size_eio): a few errors and the rest of the disk would read
                # page by page, 10-30x slower (measured). SEQUENTIAL sets it again.
                sequential()
                if bad:
                    log.warning("%s: %d unreadable sector(s) in the %d KiB from byte %d (zero-filled)",
                                src.path, sum(r.sectors(sector) for r in bad), n >> 10, off)
                else:
                    log.warning("%s: read error at byte %d, read on a retry", src.path, e.offset)
            stats.read_seconds += time.monotonic() - r0
            stats.bytes_read += n
            fut = pool.submit(_process, buf, off, opts, codec, bad, held)
            # once processed, only its records stay held (until the sender sends them)
            fut.add_done_callback(lambda f, n=n: budget.give(n - len(f.result().wire)) if not f.exception()
                                  else budget.give(n))
            inflight.put(fut)
            off += n

    with ThreadPoolExecutor(max_workers=opts.workers, thread_name_prefix="cc-chunk") as pool:
        rt = threading.Thread(target=reader, args=(pool,), name="cc-reader", daemon=True)
        rt.start()
        control = LevelControl(codec, time.monotonic()) if opts.codec == "zstd" and opts.level == AUTO else None
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    raise CancelledError("capture cancelled by the operator")
                w0 = time.monotonic()
                fut = inflight.get()
                if fut is None:
                    break
                ch: _Chunk = fut.result()
                w1 = time.monotonic()
                for off, length, zero, digests in ch.tree:
                    if zero:
                        tree.add_zero(off, length)
                    else:
                        tree.add_digests(off, length, digests)
                send(ch.wire)
                if ch.budgeted:
                    budget.give(len(ch.wire))
                if control is not None:
                    control.account(time.monotonic(), w1 - w0, time.monotonic() - w1, ch.level,
                                    ch.data_bytes, ch.payload_bytes)
                    if ch.level:
                        stats.zstd_levels[str(ch.level)] = stats.zstd_levels.get(str(ch.level), 0) + 1
                stats.data_bytes += ch.data_bytes
                stats.zero_bytes += ch.zero_bytes
                stats.payload_bytes += ch.payload_bytes
                stats.wire_bytes += len(ch.wire)
                stats.data_records += ch.data_records
                stats.zero_records += ch.zero_records
                stats.skipped_bytes += ch.skipped_bytes
                if held is not None:
                    stats.same_bytes += ch.same_bytes
                    stats.same_records += ch.same_records
                    stats.segments_sent += ch.segments_sent
                stats.unreadable += ch.unreadable
                stats.unreadable_bytes += sum(r.length for r in ch.unreadable)
                if on_chunk:
                    on_chunk(ch.offset + ch.length, stats)
        finally:
            stop.set()
            # Unblock the reader if it waits on a full queue, then let it end.
            while rt.is_alive():
                try:
                    inflight.get_nowait()
                except queue.Empty:
                    rt.join(0.05)
            if direct is not None:
                direct.close()
            os.close(fd)
    stats.elapsed = time.monotonic() - t0
    return tree.digest(), stats
