"""The receiver's resume journal: which bytes of a disk it holds, durably, so a capture cut at any
point (agent killed, receiver killed, session dropped, server rebooted) continues where it stopped.

One file per disk in the capture's `.partial` directory, `<disk>.journal`, JSON lines:

    {"journal": "coldclone-resume", "version": 1, "disk": <DISK header as sent>, "t": <epoch s>,
     "capture": {"wave": ..., "hostname": ..., "disks": [...], "size": ...}}
    {"end": 67108864, "digest": "<hex>", "data_bytes": 67108864, "t": <epoch s>}   a checkpoint
    ...
    {"complete": <the disk's manifest entry>}                          verified and converted

A checkpoint says: every byte below `end` is in the disk's image (`<disk>.qcow2`, or `<disk>.raw`
for format raw) and on stable storage (the image is flushed before the line is appended, and the line is fsync'ed before the next write counts),
`digest` is BlockTree.cut_segment() over the blocks since the previous checkpoint, and
`data_bytes` counts the DATA bytes received for the disk up to there, over every attempt, and
`t` says when (`coldclone-server status` reads a running capture's rate, ETA and stalls from the
checkpoints, and its wave and source from `capture`, the HELLO's facts).
Checkpoints come every CHECKPOINT_BYTES of data or CHECKPOINT_SECONDS, whichever is first, and
when a session ends without an ABORT, so at most that much is received twice after a kill -9.

Lines are appended whole with one write(); after a crash only the last line can be torn, and a
torn last line is ignored (the checkpoint before it still holds). A restart of the disk (the
source changed) replaces the file in one rename.

The whole-disk digest resumes by re-reading the held part of the image once (protocol.feed_range)
rather than journaling every block digest: the read also proves that the bytes on disk are the
ones the journal vouches for (each segment's digest is checked), and it is a local sequential read
of data the END read-back reads again anyway.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ... import protocol as P
from ... import records
from ...errors import ServerError
from .store import CaptureDir, validate_name

SUFFIX = ".journal"
MAGIC = "coldclone-resume"
VERSION = 1
CHECKPOINT_BYTES = 64 << 20
CHECKPOINT_SECONDS = 2.0


def journal_name(disk: str) -> str:
    return validate_name(disk, "disk name") + SUFFIX


@dataclass(frozen=True)
class Checkpoint:
    """One journal line after the header: every byte below `end` is held (agent.records)."""

    end: int
    digest: str          # hex sha256 of the segment's block digests (BlockTree.cut_segment)
    data_bytes: int
    t: float = 0.0       # when it was written (epoch seconds; 0: a journal from before it was kept)


@dataclass
class DiskJournal:
    cap: CaptureDir
    name: str
    header: P.DiskHeader
    checkpoints: list[Checkpoint]
    complete: dict | None = None     # the manifest entry of a disk verified in an earlier attempt
    capture: dict | None = None      # the capture's facts from its HELLO (wave, source host, disks)
    created: float = 0.0             # when the disk started from byte 0 (epoch seconds; 0: not kept)
    fd: int = -1
    last_time: float = 0.0

    @property
    def held(self) -> int:
        return self.checkpoints[-1].end if self.checkpoints else 0

    @property
    def held_data_bytes(self) -> int:
        return self.checkpoints[-1].data_bytes if self.checkpoints else 0

    def to_held(self) -> P.HeldDisk:
        h = self.header
        return P.HeldDisk(name=h.name, size=h.size, block_size=h.block_size, mode=h.mode,
                          segments=tuple(P.Segment(c.end, bytes.fromhex(c.digest)) for c in self.checkpoints),
                          complete=self.complete is not None,
                          digest=self.complete.get("digest") if self.complete else None)

    # ------------------------------------------------------------ writing

    @classmethod
    def create(cls, cap: CaptureDir, header: P.DiskHeader, capture: dict | None = None) -> "DiskJournal":
        """A new journal for a disk starting at byte 0 (replaces any earlier one in one rename)."""
        name = journal_name(header.name)
        created = time.time()
        first = {"journal": MAGIC, "version": VERSION, "disk": header.to_json(), "t": round(created, 3)}
        if capture is not None:
            first["capture"] = capture
        cap.write_atomic(name, (P.dumps(first, sort_keys=True) + "\n").encode())
        j = cls(cap, name, header, [], capture=capture, created=created)
        j._open()
        return j

    def _open(self) -> None:
        self.fd = os.open(self.name, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.cap.fd)
        self.last_time = time.monotonic()

    def _append(self, obj: dict) -> None:
        line = (P.dumps(obj, sort_keys=True) + "\n").encode()
        # One write of a whole line in O_APPEND: a crash tears at most this last line.
        if os.write(self.fd, line) != len(line):
            raise OSError(f"short write to {self.name}")
        os.fsync(self.fd)

    def due(self, data_bytes: int) -> bool:
        return (data_bytes - self.held_data_bytes >= CHECKPOINT_BYTES
                or time.monotonic() - self.last_time >= CHECKPOINT_SECONDS)

    def checkpoint(self, image, tree: P.BlockTree, data_bytes: int) -> None:
        """Record that every byte below tree.pos is held: the image (its data and, for a qcow2,
        its metadata) reaches the disk first (disk_image: flush)."""
        if tree.pos <= self.held:
            self.last_time = time.monotonic()
            return
        image.flush()
        cp = Checkpoint(tree.pos, tree.cut_segment().hex(), data_bytes, round(time.time(), 3))
        self._append(records.encode(cp))
        self.checkpoints.append(cp)
        self.last_time = time.monotonic()

    def mark_complete(self, entry: dict) -> None:
        self._append({"complete": entry})
        self.complete = entry

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # ------------------------------------------------------------ reading

    @classmethod
    def load(cls, cap: CaptureDir, file_name: str) -> "DiskJournal":
        """A journal as a crashed or failed receiver left it; a clear error if it is not one."""
        path = cap.file_path(file_name)

        def bad(why: str) -> ServerError:
            return ServerError(
                f"resume journal {path} {why}: this capture cannot be resumed; start a new capture "
                f"(a new id) and remove {cap.path}", code="journal")

        try:
            fd = os.open(file_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cap.fd)
        except OSError as e:
            raise bad(f"cannot be opened ({e.strerror})") from None
        try:
            if os.fstat(fd).st_size > 256 << 20:
                raise bad("is larger than any journal coldclone writes")
            chunks = []
            while b := os.read(fd, 1 << 20):
                chunks.append(b)
        finally:
            os.close(fd)
        lines = b"".join(chunks).split(b"\n")
        # The last element is what follows the last newline: empty, or a line torn by a crash.
        lines = lines[:-1]
        if not lines:
            raise bad("is empty")
        try:
            first = P.loads_object(lines[0], "journal header")
            if first.get("journal") != MAGIC or first.get("version") != VERSION:
                raise bad(f"is not a version {VERSION} coldclone resume journal")
            header = P.DiskHeader.decode(P.JsonFields(first, "journal header").mapping("disk"))
            capture = P.JsonFields(first, "journal header").mapping("capture") or None
            created = P.JsonFields(first, "journal header").float("t", 0.0)
        except P.ProtocolError as e:
            raise bad(f"has a bad header ({e})") from None
        if header.name + SUFFIX != file_name:
            raise bad(f"belongs to disk {header.name!r}")
        j = cls(cap, file_name, header, [], capture=capture, created=created)
        for n, line in enumerate(lines[1:], 2):
            try:
                obj = P.loads_object(line, f"journal line {n}")
                if "complete" in obj:
                    j.complete = P.JsonFields(obj, f"journal line {n}").mapping("complete")
                    continue
                cp = records.decode(obj, Checkpoint, f"journal line {n}")
                if not j.held < cp.end <= header.size or cp.data_bytes < 0:
                    raise P.ProtocolError(f"journal line {n}: end {cp.end} is not after {j.held} and within "
                                          f"the disk's {header.size} bytes")
                if len(bytes.fromhex(cp.digest)) != 32:
                    raise P.ProtocolError(f"journal line {n}: digest is not 32 bytes")
                j.checkpoints.append(cp)
            except (P.ProtocolError, ValueError) as e:
                raise bad(f"line {n} is damaged ({e})") from None
        if j.complete is not None and j.held != header.size:
            raise bad("says the disk is complete but does not hold all of it")
        return j

    def reopen(self) -> None:
        """Continue appending to a loaded journal."""
        self._open()


def _journal_files(cap: CaptureDir) -> list[str]:
    return [n for n in sorted(os.listdir(cap.fd)) if n.endswith(SUFFIX) and not n.startswith(".")]


def load_all(cap: CaptureDir) -> dict[str, DiskJournal]:
    """Every disk journal of an unfinished capture, by disk name."""
    out = {}
    for name in _journal_files(cap):
        j = DiskJournal.load(cap, name)
        out[j.header.name] = j
    return out


def remove_all(cap: CaptureDir) -> list[str]:
    """Drop the journals (an ABORT, or the capture is complete): nothing left to resume."""
    gone = _journal_files(cap)
    for name in gone:
        cap.unlink(name)
    return gone


def rebuild_tree(image, journal: DiskJournal, path: str) -> P.BlockTree:
    """The disk's BlockTree at the journal's last checkpoint, read from its image (disk_image),
    each segment's digest checked: the bytes on this disk are the ones the journal vouches for,
    or an error."""
    h = journal.header
    tree = P.BlockTree(h.size, h.block_size)
    start = 0
    for cp in journal.checkpoints:
        P.feed_range(-1, tree, cp.end, is_file=True, what=path, reader=image)
        if tree.cut_segment().hex() != cp.digest:
            raise ServerError(
                f"disk {h.name}: the held image {path} does not match its resume journal in bytes "
                f"{start}-{cp.end} (the conversion server's disk lost or changed data); this capture "
                f"cannot be resumed: start a new capture (a new id)", code="journal")
        start = cp.end
    return tree
