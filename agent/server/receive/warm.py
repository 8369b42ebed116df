"""What a receiver keeps to take a disk as a delta: warm captures (docs/two-phase.md).

A warm sync (HELLO.warm, `coldclone sync` on the running source) stores a capture like any other,
plus `<disk>.blocks`: the 32-byte digest of every block of what the image holds, in disk order
(0.05 % of the disk: 32 bytes per 64 KiB block). A later session that sends deltas (HELLO.delta:
the next sync, or the cutover from the ISO) gets a map of those digests per grid segment
(wire.grid_for) in HELD_MAP replies, and sends only the segments whose source digest differs;
for the rest it sends SAME, and the receiver feeds the whole-disk digest with the block digests
stored here (checked against the agent's digest of the range). The read-back still reads the
whole image and must match the whole-disk digest: the digests stored here only save sending,
they never stand in for the bytes.

While a delta session rewrites a warm capture it lives in `<id>.partial` with its last manifest
renamed to `warm.json` (so nothing takes it for complete, and `--gc` keeps it); FINISH writes the
new manifest (phase `warm` after a sync, `cutover` after the ISO's cold phase) and renames it back.

Crash safety of the block digests: before a delta disk's records write past `<disk>.delta`'s last
window, the image is flushed, the digests are fsynced and a line {"from", "to"} is appended
(fsynced): after a crash only the digests of [from, to) can disagree with the image, and they are
invalidated when the capture is opened again (those segments are then sent). A digest of 32 zero
bytes is never a sha256 of anything sent: it marks a block as not held.

The same file is how far the delta disk has come, for `coldclone-server status` (a delta disk has
no resume journal, whose checkpoints say it for a disk sent whole): its first line names the disk
with the capture's facts ({"disk", "size", "capture", "t"}), a line {"at", "t"} follows every
PROGRESS_SECONDS while records arrive (SAME ranges too: the cutover's time goes in reading them),
and {"verified", "t"} ends it when the disk is verified (nothing to invalidate from then on). These
lines are not fsynced: they only inform.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass

from ... import protocol as P
from ... import records
from ...errors import ServerError
from ...manifest import MANIFEST, Manifest, ManifestDisk, Phase
from .store import CaptureDir, Store, validate_capture_id

log = logging.getLogger("coldclone.receive")

WARM = "warm.json"
INVALID = bytes(32)
# How far a delta disk's writes may run ahead of the last flush: one fsynced line per this much of
# the disk (a 2 TB disk: 8000 lines), and after a crash at most this much is sent again.
WINDOW = 256 << 20
# How often a delta disk says how far it has come (the resume journal's CHECKPOINT_SECONDS).
PROGRESS_SECONDS = 2.0


def blocks_name(disk: str) -> str:
    return disk + ".blocks"


def intent_name(disk: str) -> str:
    return disk + ".delta"


class BlockDigests:
    """`<disk>.blocks`: the digest of each block held, 32 bytes per block, in disk order."""

    def __init__(self, fd: int, size: int, block_size: int, path: str):
        self.fd, self.size, self.block_size, self.path = fd, size, block_size, path
        self.blocks = -(-size // block_size)

    @classmethod
    def create(cls, cap: CaptureDir, disk: str, size: int, block_size: int) -> "BlockDigests":
        name = blocks_name(disk)
        cap.unlink(name)     # a disk sent again from 0: its old digests go
        fd = cap.create(name)
        try:
            os.ftruncate(fd, 32 * -(-size // block_size))     # all INVALID (a sparse file of zeros)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, size, block_size, cap.file_path(name))

    @classmethod
    def open(cls, cap: CaptureDir, disk: str, size: int, block_size: int) -> "BlockDigests":
        name = blocks_name(disk)
        fd = cap.open_file(name)
        self = cls(fd, size, block_size, cap.file_path(name))
        have = os.fstat(fd).st_size
        if have != 32 * self.blocks:
            os.close(fd)
            raise ServerError(f"{self.path} holds {have} bytes, not the {32 * self.blocks} of a {size}-byte "
                              f"disk in blocks of {block_size}; start a new capture (a new id)", code="journal")
        return self

    @staticmethod
    def exists(cap: CaptureDir, disk: str) -> bool:
        return os.path.lexists(cap.file_path(blocks_name(disk)))

    def put(self, offset: int, digests: bytes) -> None:
        os.pwrite(self.fd, digests, offset // self.block_size * 32)

    def put_zero(self, offset: int, length: int) -> None:
        at = offset // self.block_size * 32
        for batch in P.zero_digest_batches(length, self.block_size):
            os.pwrite(self.fd, batch, at)
            at += len(batch)

    def get(self, offset: int, length: int) -> list[bytes]:
        bs = self.block_size
        first, n = offset // bs, -(-length // bs)
        raw = os.pread(self.fd, 32 * n, first * 32)
        if len(raw) != 32 * n:
            raise ServerError(f"{self.path} is shorter than its disk; send the disk whole", code="journal")
        return [raw[i:i + 32] for i in range(0, len(raw), 32)]

    def invalidate(self, start: int, end: int) -> None:
        """Mark the blocks of [start, end) as not held (their segments will be sent)."""
        bs = self.block_size
        first, last = start // bs, min(self.blocks, -(-end // bs))
        i = first
        while i < last:
            n = min(last - i, 1 << 15)
            os.pwrite(self.fd, INVALID * n, i * 32)
            i += n

    def held_map(self, grid: int) -> bytes:
        """One wire.segment_digest per `grid` bytes: sha256 over the segment's block digests."""
        per = grid // self.block_size
        out = bytearray()
        step = per * max(1, (4 << 20) // (32 * per))      # whole segments, about 4 MiB of digests a read
        for i in range(0, self.blocks, step):
            raw = os.pread(self.fd, 32 * min(step, self.blocks - i), 32 * i)
            for j in range(0, len(raw), 32 * per):
                out += hashlib.sha256(raw[j:j + 32 * per]).digest()
        return bytes(out)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class TeeTree(P.BlockTree):
    """A BlockTree that also stores every block digest it is fed into `<disk>.blocks`."""

    blocks: BlockDigests

    @classmethod
    def wrap(cls, tree: P.BlockTree, blocks: BlockDigests) -> "TeeTree":
        t = cls.__new__(cls)
        t.__dict__.update(tree.copy().__dict__)
        t.blocks = blocks
        return t

    @classmethod
    def new(cls, size: int, block_size: int, blocks: BlockDigests) -> "TeeTree":
        return cls.wrap(P.BlockTree(size, block_size), blocks)

    def add_digests(self, offset: int, length: int, digests: list[bytes]) -> None:
        super().add_digests(offset, length, digests)
        self.blocks.put(offset, b"".join(digests))

    def add_zero(self, offset: int, length: int) -> None:
        super().add_zero(offset, length)
        self.blocks.put_zero(offset, length)

    def add_same(self, offset: int, length: int, digests: list[bytes]) -> None:
        """A SAME range: the digests are the stored ones already."""
        P.BlockTree.add_digests(self, offset, length, digests)


class Intent:
    """`<disk>.delta`: how far a delta disk's writes may be ahead of what is on stable storage,
    and how far its records have come."""

    def __init__(self, cap: CaptureDir, disk: str, flush, size: int, capture: dict | None):
        self.cap, self.disk, self.flush = cap, disk, flush
        self.to = 0
        self.fd = os.open(intent_name(disk), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                          0o640, dir_fd=cap.fd)
        self.said = time.time()
        self._line({"disk": disk, "size": size, "capture": capture, "t": self.said})

    def _line(self, obj: dict) -> None:
        os.write(self.fd, (json.dumps(obj) + "\n").encode())

    def before(self, offset: int, end: int) -> None:
        """Called before bytes of [offset, end) are written."""
        if end <= self.to:
            return
        self.flush()                  # everything written below `offset` is on stable storage
        self.to = end + WINDOW
        self._line({"from": offset, "to": self.to})
        os.fsync(self.fd)

    def progress(self, at: int, last: bool = False) -> None:
        """Every record: the disk's records have come up to byte `at` (said every PROGRESS_SECONDS,
        and at END: `last`)."""
        now = time.time()
        if last or now - self.said >= PROGRESS_SECONDS:
            self.said = now
            self._line({"at": at, "t": now})

    def done(self) -> None:
        """The disk is verified and flushed: nothing to invalidate any more (the file stays, for
        status, until FINISH or the next session's recover)."""
        self._line({"verified": True, "t": time.time()})
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _read_intent(cap: CaptureDir, name: str) -> str:
    """All of a `<disk>.delta` (its last window may follow days of progress lines)."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cap.fd)
    with os.fdopen(fd, "rb") as f:
        return f.read().decode(errors="replace")


def _intent_files(cap: CaptureDir) -> list[str]:
    return [n for n in sorted(os.listdir(cap.fd)) if n.endswith(".delta") and not n.startswith(".")]


def remove_intents(cap: CaptureDir) -> None:
    """FINISH: the delta disks' files have nothing left to say (every disk is verified)."""
    for name in _intent_files(cap):
        cap.unlink(name)


@dataclass(frozen=True)
class DeltaProgress:
    """What a delta disk's `<disk>.delta` says of its way, for status (`progress_of`)."""

    disk: str
    size: int
    capture: dict | None
    created: float
    points: tuple[tuple[int, float], ...]     # (byte the records came to, when)
    verified: bool

    @property
    def at(self) -> int:
        return self.size if self.verified else (self.points[-1][0] if self.points else 0)


def progress_of(cap: CaptureDir) -> dict[str, DeltaProgress]:
    """The delta disks of a `.partial` and how far each has come (a damaged file: left out)."""
    out = {}
    for name in _intent_files(cap):
        try:
            text = _read_intent(cap, name)
        except FileNotFoundError:
            continue        # gone meanwhile (a session's FINISH or recover)
        p = _progress(text)
        if p is not None and intent_name(p.disk) == name:
            out[p.disk] = p
    return out


def _progress(text: str) -> DeltaProgress | None:
    head, points, verified = None, [], False
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        t = obj.get("t")
        t = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) and t >= 0 else None
        if head is None:
            disk, size, capture = obj.get("disk"), obj.get("size"), obj.get("capture")
            if not (isinstance(disk, str) and isinstance(size, int) and not isinstance(size, bool) and size > 0
                    and t is not None):
                return None
            head = (disk, size, capture if isinstance(capture, dict) else None, t)
        elif isinstance(obj.get("at"), int) and not isinstance(obj["at"], bool) and t is not None:
            points.append((min(max(obj["at"], 0), head[1]), t))
        elif obj.get("verified") is True:
            verified = True
    if head is None:
        return None
    return DeltaProgress(head[0], head[1], head[2], head[3], tuple(points), verified)


def recover(cap: CaptureDir, disk: str, blocks: BlockDigests) -> tuple[int, int] | None:
    """After a delta session that did not end: invalidate the digests of the window its last
    intent line named (the only ones that may disagree with the image). The range, or None."""
    name = intent_name(disk)
    if not os.path.lexists(cap.file_path(name)):
        return None
    text = _read_intent(cap, name)
    window, named = None, False
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue    # a torn last line: the one before it stands
        if not isinstance(obj, dict):
            continue
        if "from" in obj:
            try:
                window = (int(obj["from"]), int(obj["to"]))
            except (ValueError, KeyError, TypeError):
                continue
        elif obj.get("verified") is True:
            window = None       # verified and flushed after its last window
        elif "disk" in obj:
            named = True
    if window is None and not named and text.strip():
        window = (0, blocks.size)   # damaged (not even its first line): everything goes
    if window is not None:
        blocks.invalidate(*window)
        blocks.sync()
        log.info("disk %s: a delta session was cut; the block digests of bytes %d-%d are sent again",
                 disk, *window)
    cap.unlink(name)
    return window


@dataclass
class DeltaHeld:
    """A disk a delta session may send as a delta: its image and its stored block digests."""

    name: str
    size: int
    block_size: int
    mode: str | None
    image: str            # the image's file name
    valid_to: int          # the stored digests vouch for the image below this byte
    source: dict

    def header(self) -> P.DiskHeader:
        """Its facts as a DISK header (the identity proof reads them so)."""
        return P.DiskHeader(name=self.name, size=self.size, block_size=self.block_size, mode=self.mode,
                            source=self.source)

    def held(self) -> P.HeldDisk:
        return P.HeldDisk(name=self.name, size=self.size, block_size=self.block_size, mode=self.mode,
                          grid=P.grid_for(self.size, self.block_size))

    @classmethod
    def of(cls, d: ManifestDisk) -> "DeltaHeld":
        return cls(d.name, d.size, d.block_size, d.mode, d.image, d.size, dict(d.source))


def held_map_replies(name: str, grid: int, digests: bytes) -> list[P.Reply]:
    """A disk's map as HELD_MAP reply lines, in order."""
    per = P.HELD_MAP_LINE * 32
    return [P.Reply(P.Event.HELD_MAP, name=name, grid=grid, start=i // 32, digests=digests[i:i + per].hex())
            for i in range(0, len(digests), per)]


def warm_manifest(path: str) -> Manifest | None:
    """The manifest of a warm capture at `path` (a complete one's manifest.json), None for any other."""
    try:
        with open(path, "rb") as f:
            doc = P.loads_object(f.read(64 << 20), MANIFEST)
        m = Manifest.load(doc, path)
    except (OSError, P.ProtocolError, records.RecordError, ServerError):
        return None
    return m if m.phase == Phase.WARM else None


def is_warm(store: Store, capture_id: str) -> bool:
    validate_capture_id(capture_id)
    return warm_manifest(os.path.join(store.root, capture_id, MANIFEST)) is not None


def reopen(store: Store, capture_id: str) -> CaptureDir:
    """A complete warm capture, to be updated: locked, renamed `<id>.partial`, its manifest set aside
    as warm.json. A concurrent session finds the `.partial` locked (`busy`)."""
    cap = store.open_capture(capture_id)
    try:
        cap.take_over()
        os.rename(capture_id, capture_id + ".partial", src_dir_fd=store.fd, dst_dir_fd=store.fd)
        cap.staging = capture_id + ".partial"
        os.rename(MANIFEST, WARM, src_dir_fd=cap.fd, dst_dir_fd=cap.fd)
        os.fsync(cap.fd)
        os.fsync(store.fd)
    except FileNotFoundError:
        cap.close()
        raise ServerError(f"capture {capture_id} changed while it was being opened (another session?); "
                          f"try again", code="busy") from None
    except BaseException:
        cap.close()
        raise
    return cap


def load_warm(cap: CaptureDir) -> Manifest | None:
    """A `.partial`'s warm.json: the warm capture a delta session is updating."""
    if not os.path.lexists(cap.file_path(WARM)):
        return None
    m = warm_manifest(cap.file_path(WARM))
    if m is None:
        raise ServerError(f"{cap.file_path(WARM)} cannot be read as a warm capture's manifest; "
                          f"look at it, or start a new capture (a new id)", code="journal")
    return m


class DeltaDisk:
    """A disk being sent as a delta: its write window, and which held-map segments it rewrote."""

    def __init__(self, intent: Intent, grid: int):
        self.intent = intent
        self.grid = grid
        self.segments = 0          # held-map segments sent as DATA (they differed from the source)
        self._last = -1            # the last segment counted (records come in disk order)
        self.same_bytes = 0
        self.same_records = 0

    def writing(self, offset: int, length: int, data: bool) -> None:
        """Before DATA (data) or ZERO bytes of [offset, offset + length) are written. Segments count
        what crossed the link as data: a ZERO over held bytes is a few bytes whatever its length."""
        self.intent.before(offset, offset + length)
        if not data:
            return
        first, last = offset // self.grid, (offset + length - 1) // self.grid
        if last > self._last:
            self.segments += last - max(first, self._last + 1) + 1
            self._last = last
