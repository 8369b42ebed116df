"""The wire format shared by the agent and `coldclone-receive` (docs/protocol.md).

A stream is a preamble (magic + version) followed by framed records:

    record  := type:u8  length:u32be  body[length]

    HELLO  (1) JSON: capture_id, agent_version, requested_root, format, source facts
    DISK   (2) JSON: name, size, sector_size, block_size, codec, source facts
    DATA   (3) offset:u64 length:u32 codec:u8 digest:32s  payload
    ZERO   (4) offset:u64 length:u64
    END    (5) digest:32s  JSON agent-side stats of the disk
    FINISH (6) JSON: {} (the capture is complete; the receiver finalizes)
    ABORT  (7) JSON: reason (the agent gives up; the receiver discards)
    UNREADABLE (8) offset:u64 length:u64 (source bytes that could not be read)
    NOOP   (9) JSON: {} (version 2: the agent is alive, busy re-checking a source before resuming)

Within a disk, DATA and ZERO records cover [0, size) exactly, in order, and
are aligned to the disk's block_size (except at the very end of the disk).

UNREADABLE marks a range the agent could not read from the source (on_read_error=map). It is
not an extent of its own: it comes before the DATA/ZERO records that cover its bytes, which
carry zeros there (the agent zero-fills what it could not read), so the image holds zeros (a
hole where a whole block was unreadable) and the digests below cover those zeros: the image
verifies against exactly what the agent hashed. Ranges are aligned to the disk's logical sector
size (but for the end of a disk whose size is not whole sectors), in disk order, never overlapping; the receiver checks their bytes arrive as zeros and
lists every range in the manifest.

Digests (see BlockTree): every block of block_size bytes has a sha256; a
DATA record's digest is sha256 over the digests of its blocks; the disk's
digest is sha256 over a small header and every block digest in order. An
all-zero block's digest is a constant, so a mostly-empty disk is verified
without hashing its zeros, and the disk digest does not depend on how the
agent chose to split the stream (full vs non-zero mode give the same value).

The receiver answers with JSON lines on its stdout (see Reply*).
"""

from __future__ import annotations

import hashlib
import json
import struct
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Annotated, Any, BinaryIO, Iterator, NamedTuple, TypeVar

import msgspec

from . import records
from .devnames import real_identifier
from .estimate_model import CaptureEstimate
from .guestos.report import ReadinessReport

from .wire import (  # noqa: F401  (the framing, re-exported: one wire for both programs)
    CODEC_NAMES, CODEC_NONE, CODEC_ZLIB, CODEC_ZSTD, DATA_HEAD, DEFAULT_BLOCK_SIZE, DEFAULT_CHUNK_SIZE,
    DIGEST_ALGO, FRAME, HELD_MAP_LINE, MAGIC, MAX_SAME, MAX_DATA, MAX_GRID_SEGMENTS, MAX_JSON, PREAMBLE, READ_VERSIONS,
    READBACK_STEP, SAME_BODY, T_ABORT, T_DATA, T_DISK, T_END, T_FINISH, T_HELLO, T_NOOP, T_SAME, T_UNREADABLE,
    T_ZERO, TYPE_NAMES, UNREADABLE_BODY, VERSION, ZERO_BODY, BlockTree, Extent, HeldMap, ProtocolError, Same,
    StreamCut, block_digests, capture_names, delta_extents, dumps, encode_data, encode_end, encode_finish, encode_json,
    encode_same, encode_unreadable, encode_zero, frame, grid_for, preamble, record_digest, segment_digest,
    split_extents, zero_block_digest, zero_digest_batches, zero_digests, zlib_payload,
)

B = TypeVar("B")


def digest_file(path: str, block_size: int = DEFAULT_BLOCK_SIZE, chunk: int = DEFAULT_CHUNK_SIZE) -> str:
    """The disk digest of a raw file or block device, computed as the stream computes it.

    Lets anyone re-verify an image or a source disk against a manifest. Holes
    of a sparse file are taken as zeros without reading them (SEEK_DATA).
    """
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        tree = BlockTree(size, block_size)
        feed_range(fd, tree, size, is_file=os.path.isfile(path), chunk=chunk, what=path)
        return tree.digest().hex()
    finally:
        os.close(fd)


def feed_range(fd: int, tree: BlockTree, end: int, *, is_file: bool, chunk: int = DEFAULT_CHUNK_SIZE,
               what: str = "the file", reader=None) -> None:
    """Feed tree the block digests of fd's bytes from tree.pos to end (block-aligned, or the
    disk's end): digest_file, the receiver rebuilding a resumed disk's tree from its image and
    reading it back, and the agent re-checking a source against a resume journal all read this
    way. reader: instead of fd, an image (the receiver's qcow2 through qemu) with
    `data_at(offset, size)` (where the next non-zero bytes may be) and `pread(n, offset)`."""
    import os

    size = tree.size
    off = tree.pos
    while off < end:
        stop = min(off + chunk, end)
        if reader is not None:
            data_at = reader.data_at(off, size)
        else:
            try:
                data_at = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole from here on; EINVAL: no SEEK_DATA here
                data_at = size if is_file else off
        hole_end = min(data_at - data_at % tree.block_size, end)
        if hole_end > off:
            tree.add_zero(off, hole_end - off)
            off = hole_end
            continue
        buf = reader.pread(stop - off, off) if reader is not None else os.pread(fd, stop - off, off)
        if len(buf) != stop - off:
            raise OSError(f"short read of {what} at byte {off}")
        for ext in split_extents(buf, off, tree.block_size):
            if ext.zero:
                tree.add_zero(ext.offset, ext.length)
            else:
                tree.add_digests(ext.offset, ext.length, ext.digests)
        off = stop


# ------------------------------------------------------------------- JSON
# One way to write JSON on the wire and on disk: NaN and Infinity are not JSON (a manifest holding
# them is unreadable elsewhere), so they are refused when written and when read.

MAX_JSON_DEPTH = 32
# Sanity limits on a disk, checked in its header before anything is allocated or hashed: a DISK of
# 2^62 bytes with one ZERO record would otherwise keep a receiver hashing zero digests for days.
MAX_DISK_SIZE = 1 << 50          # 1 PiB
MAX_DISKS = 256                 # disks named in one lookup or READY.unfinished capture
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
MAX_BLOCKS = 1 << 32             # whole-disk digest over at most 2^32 block digests (128 GiB of hashing)
U63 = (1 << 63) - 1


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _depth_ok(obj) -> bool:
    """No deeper than MAX_JSON_DEPTH, checked without recursion (the input chose the depth)."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > MAX_JSON_DEPTH:
            return False
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return True


def loads_object(body: bytes | str, what: str) -> dict:
    """A JSON object from the wire, or a ProtocolError naming what is wrong with it."""
    try:
        obj = json.loads(body, parse_constant=_no_constant) if body else {}
    except RecursionError:
        raise ProtocolError(f"{what} is nested too deeply (more than {MAX_JSON_DEPTH} levels)") from None
    except ValueError as e:  # UnicodeDecodeError is a ValueError too
        raise ProtocolError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    if not _depth_ok(obj):
        raise ProtocolError(f"{what} is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    return obj


# ------------------------------------------------------ typed metadata
# Each JSON body is one frozen dataclass, declared once with its limits (the types below), written
# with records.encode and read with records.decode_fields: a wrong type or range is a
# ProtocolError naming the record and the field. A field at its default is left out when written
# (what older writers left out stays out; an older reader takes a missing field as its default).
# Unknown keys are ignored, so a newer agent may add fields without a version bump. What msgspec
# cannot say (a power of two, a bound that is another field) is checked after decoding.

Str = Annotated[str, msgspec.Meta(max_length=4096)]
Count = Annotated[int, msgspec.Meta(ge=0, le=U63)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
DiskSize = Annotated[int, msgspec.Meta(ge=1, le=MAX_DISK_SIZE)]
BlockSize = Annotated[int, msgspec.Meta(ge=512, le=MAX_DATA)]
SectorSize = Annotated[int, msgspec.Meta(ge=1, le=1 << 20)]
Slots = Annotated[int, msgspec.Meta(ge=0, le=1 << 20)]
Facts = dict[str, Any]       # free-form facts (the source's, the agent's stats): JSON, kept as is
WAVE_LABEL = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Body:
    """A JSON body of the wire (each a frozen dataclass)."""

    def to_json(self) -> dict:
        return records.encode(self, omit_defaults=True)


def _decode(obj: object, model: type[B], what: str) -> B:
    return records.decode_fields(obj, model, what, ProtocolError)


class ImageFormat:
    QCOW2 = "qcow2"
    RAW = "raw"
    ALL = (QCOW2, RAW)


def space_needed(data_bytes: int, image_format: str) -> int:
    """Bytes a conversion server needs free to receive `data_bytes` of non-zero data: one image,
    written as it arrives (a qcow2 is the data plus its metadata: 1/64 is generous for 64 KiB
    clusters). The receiver refuses a disk that does not fit (its preflight; `--keep-raw` adds
    the raw copy it makes after the last byte); an agent choosing among servers leaves out one
    that cannot hold its capture."""
    if image_format == ImageFormat.QCOW2:
        return data_bytes + data_bytes // 64 + (1 << 20)
    return data_bytes


@dataclass(frozen=True)
class ServerLoad(Body):
    """How busy a conversion server is, as a probe's READY tells an agent choosing where to
    capture (READY.load): its free space, the captures it receives now, its conversions."""

    free_bytes: Count
    running: Slots = 0             # captures being received (a live `.partial`)
    converting: Slots = 0          # conversions running
    queued: Slots = 0              # conversions waiting for a slot (--max-conversions)
    max_conversions: Slots = 0
    bwlimit: Annotated[int, msgspec.Meta(ge=1, le=U63)] | None = None   # the sessions' total rate cap (bytes/s)
    name: Str = ""                 # the server's name (its host name)

    @classmethod
    def decode(cls, obj: dict) -> "ServerLoad | None":
        """READY.load; None from a receiver that does not say (it predates waves)."""
        return _decode(obj, cls, "READY load") if obj else None


@dataclass(frozen=True)
class DiskIdentity(Body):
    """A source disk as a conversion server can recognise it again (HELLO.unfinished_of; the
    receiver reads the same facts from each DISK header's `source` in its resume journals).

    The WWID and the serial prove which physical disk it is; a disk that has neither (a loop
    device, many hardware-RAID volumes) is only its name and size, which another server booted
    from the same ISO may share: such a match is offered to an operator, never taken on its own.
    """

    name: Str
    size: DiskSize
    serial: Str = ""
    wwid: Str = ""
    # sha256 (hex) of the disk's first HEAD_BYTES: the receiver lists a capture only when the first
    # bytes it holds of the disk are these (when it holds them), so an agent key cannot learn and
    # then take over another server's capture by guessing a disk name and size
    head: Annotated[str, msgspec.Meta(pattern=r"^([0-9a-f]{64})?$", description="a sha256 in hex")] = ""

    WEAK = "name and size"
    HEAD_BYTES = 64 << 10

    @classmethod
    def zero_head(cls, size: int) -> str:
        """The `head` of a disk whose first bytes are all zeros: anyone can compute it, so it
        proves nothing about which disk it is."""
        return hashlib.sha256(bytes(min(cls.HEAD_BYTES, size))).hexdigest()

    def describe(self) -> str:
        return f"{self.size} bytes, WWID {self.wwid or 'none'}, serial {self.serial or 'none'}"

    @classmethod
    def of(cls, name: str, size: int, serial: str | None = None, wwid: str | None = None) -> "DiskIdentity":
        """From a disk's raw facts: placeholder serials and WWNs (0000..., "To be filled by O.E.M.")
        prove nothing and are dropped, and case does not matter."""
        return cls(name, size, serial=real_identifier(serial) or "", wwid=real_identifier(wwid) or "")

    def known(self) -> "DiskIdentity":
        """This identity as `of` would make it (what an agent sent, as the receiver compares it)."""
        return DiskIdentity(self.name, self.size, real_identifier(self.serial) or "",
                            real_identifier(self.wwid) or "", self.head)

    def matched_by(self, other: "DiskIdentity") -> str | None:
        """How `other` is this same disk ("wwid", "serial", WEAK), or None when it is not."""
        if self.size != other.size:
            return None
        if self.wwid and other.wwid:
            return "wwid" if self.wwid == other.wwid else None
        if self.serial and other.serial:
            return "serial" if self.serial == other.serial else None
        if self.wwid or other.wwid or self.serial or other.serial:
            return None    # one side has a hardware identity and the other not: not the same disk
        return self.WEAK if self.name == other.name else None


Identities = Annotated[tuple[DiskIdentity, ...], msgspec.Meta(max_length=MAX_DISKS)]


@dataclass(frozen=True)
class Hello(Body):
    capture_id: Str | None = None    # None only in a probe
    agent_version: Str = ""
    format: Str = ImageFormat.QCOW2
    source: Facts = field(default_factory=dict)    # free-form source facts, for the manifest
    disks: tuple[str, ...] = ()
    probe: bool = False
    # Advice for the manifest, typed (agent.records): the agent's estimate and its inspection of
    # the source OS. One that does not decode is left out, not a refused capture: `dropped` says why.
    estimate: CaptureEstimate | None = None
    readiness: ReadinessReport | None = None
    # Continue an unfinished capture of this id if the receiver holds one (READY.held says what it
    # has); without it an existing capture id is refused.
    resume: bool = False
    # A lookup (with probe): which unfinished captures of these disks the receiver holds; READY
    # answers with `unfinished` and the agent ends the session (ABORT) without sending a disk.
    unfinished_of: Identities = ()
    dropped: tuple[str, ...] = ()    # set by decode (never taken from the wire)
    # The migration wave the capture belongs to (coldclone.wave=): into the manifest and status.
    wave: Annotated[str, msgspec.Meta(pattern=WAVE_LABEL, description=(
        "a label of letters, digits, '.', '_' and '-' (at most 64)"))] | None = None
    # A capture: each disk's identity (with `head`), the proof a resume must give before the
    # receiver touches or drops a disk it holds (receive/identity.py).
    identities: Identities = ()
    # Two-phase migrations (docs/two-phase.md). `warm`: a sync from the running source; the
    # capture stays updatable after FINISH (manifest `phase: warm`). `delta`: the agent sends a
    # disk the receiver holds from a warm sync as only what differs (SAME records for the rest):
    # the receiver sends its held maps (HELD_MAP replies) before READY.
    warm: bool = False
    delta: bool = False

    ADVICE = (("estimate", CaptureEstimate), ("readiness", ReadinessReport))

    def encode(self) -> bytes:
        return encode_json(T_HELLO, self.to_json())

    @classmethod
    def decode(cls, obj: dict) -> "Hello":
        advice: dict = {}
        dropped: list[str] = []
        for key, model in cls.ADVICE:
            v = obj.get(key)
            if v is None:
                continue
            if not isinstance(v, dict):
                raise ProtocolError(f"HELLO: field {key!r} must be a JSON object, got {v!r:.80}")
            try:
                advice[key] = records.decode(v, model, f"HELLO {key}")
            except records.RecordError as e:
                dropped.append(str(e))
        hello = _decode({k: v for k, v in obj.items() if k not in ("estimate", "readiness", "dropped")},
                        cls, "HELLO")
        if hello.capture_id is None and not hello.probe:
            raise ProtocolError("HELLO: field 'capture_id' is missing")
        return replace(
            hello, unfinished_of=tuple(d.known() for d in hello.unfinished_of),
            identities=tuple(d.known() for d in hello.identities), dropped=tuple(dropped), **advice)


@dataclass(frozen=True)
class DiskHeader(Body):
    name: Str
    size: DiskSize
    block_size: BlockSize = DEFAULT_BLOCK_SIZE
    logical_sector_size: SectorSize | None = None
    physical_sector_size: SectorSize | None = None
    mode: Str | None = None
    codec: Str | None = None
    source: Facts = field(default_factory=dict)
    # The agent's estimate of the non-zero bytes it will send (None: unknown): the receiver checks
    # before accepting the disk that its filesystem has room for them as raw data plus the image.
    data_bytes_estimate: Annotated[int, msgspec.Meta(ge=0, le=MAX_DISK_SIZE)] | None = None
    # Resuming: the records start at this byte, the end of what the receiver holds (READY.held);
    # 0 with restart_reason: the held copy is dropped and the disk is sent again from the start.
    resume_from: Count = 0
    restart_reason: Str | None = None
    # Against the held map of a warm capture: SAME records may cover ranges, DATA and ZERO
    # overwrite what is held (a ZERO writes zeros). With resume_from 0 only.
    delta: bool = False

    def encode(self) -> bytes:
        return encode_json(T_DISK, self.to_json())

    @classmethod
    def decode(cls, obj: dict) -> "DiskHeader":
        h = _decode(obj, cls, "DISK")
        bs = h.block_size
        if bs & (bs - 1):
            raise ProtocolError(f"DISK {h.name}: block size {bs} is not a power of two")
        if -(-h.size // bs) > MAX_BLOCKS:
            raise ProtocolError(
                f"DISK {h.name}: {h.size} bytes in blocks of {bs} is more than {MAX_BLOCKS} blocks; "
                f"use a larger block size")
        if h.resume_from > h.size:
            raise ProtocolError(f"DISK: field 'resume_from' must be an integer from 0 to {h.size}, "
                                f"got {h.resume_from}")
        return h


@dataclass(frozen=True)
class DiskEnd(Body):
    """END: the agent's whole-disk digest (binary, before the JSON) and its own counts for the disk."""

    digest: bytes = b""
    bytes_read: Count | None = None
    data_bytes: Count | None = None
    zero_bytes: Count | None = None
    payload_bytes: Count | None = None
    wire_bytes: Count | None = None
    data_records: Count | None = None
    zero_records: Count | None = None
    read_seconds: Seconds | None = None
    elapsed: Seconds | None = None
    skipped_bytes: Count | None = None     # mode=used: free space never read (holes in the image)
    map_seconds: Seconds | None = None     # mode=used: building the used-block map
    used_map: Facts | None = None          # mode=used: per area what was read and why (manifest)
    unreadable_bytes: Count | None = None  # on_read_error=map: bytes sent as UNREADABLE (zeros)
    recovery_seconds: Seconds | None = None  # on_read_error=map: time spent re-reading failed ranges
    zstd_levels: Facts | None = None       # zstd:auto: chunks compressed at each level ({"1": n, "3": m})
    # DISK.delta: what the agent found the receiver already held (SAME records) and what it sent
    same_bytes: Count | None = None
    same_records: Count | None = None
    segments_sent: Count | None = None     # held-map segments that differed from the source

    def stats(self) -> dict:
        """The counts the agent gave, for the manifest (absent ones left out)."""
        out = self.to_json()
        out.pop("digest", None)
        return out

    def encode(self) -> bytes:
        return encode_end(self.digest, self.stats())

    @classmethod
    def decode(cls, digest: bytes, obj: dict) -> "DiskEnd":
        return replace(_decode({k: v for k, v in obj.items() if k != "digest"}, cls, "END"),
                                       digest=digest)


@dataclass(frozen=True)
class UnfinishedDisk:
    """A disk of an unfinished capture: its identity, and what is held of it."""

    identity: DiskIdentity
    held: int                 # bytes below the journal's last checkpoint
    complete: bool = False    # verified in an earlier attempt


@dataclass(frozen=True)
class ListedDisk(DiskIdentity):
    """An UnfinishedDisk as READY.unfinished writes it: the identity's fields and these two."""

    held: Count = 0
    complete: bool = False

    @classmethod
    def of(cls, d: UnfinishedDisk) -> "ListedDisk":
        return cls(**asdict(d.identity), held=d.held, complete=d.complete)

    def unfinished(self) -> UnfinishedDisk:
        return UnfinishedDisk(self.known(), self.held, self.complete)


@dataclass(frozen=True)
class WarmFacts(Body):
    """A warm capture's last syncs, for the cutover's estimate: how fast the source changes."""

    syncs: Count = 0
    last_sync: Seconds = 0.0         # when the last sync was stored (seconds since the epoch)
    changed_bytes: Count = 0         # what the last sync found changed (segments sent x grid)
    interval: Seconds = 0.0          # seconds between the last two syncs (0: only one)

    def change_rate(self) -> float | None:
        """Bytes per second the source changed between the last two syncs (None: one sync only)."""
        return self.changed_bytes / self.interval if self.interval > 0 and self.syncs > 1 else None


@dataclass(frozen=True)
class Unfinished(Body):
    """An unfinished capture a receiver holds of the disks an agent asked about (READY.unfinished
    of a lookup, keyed by capture id): every disk it journaled is one of them."""

    capture_id: Str
    disks: tuple[UnfinishedDisk, ...] = ()     # on the wire: ListedDisk objects
    updated: Seconds = 0.0           # when its journals last changed (seconds since the epoch)
    matched_by: Str = DiskIdentity.WEAK   # the weakest of its disks' matches
    live: bool = False      # a receiver still holds it (a cut session not yet timed out)
    # A warm capture (stored syncs, updatable): a cutover of it sends only what changed.
    warm: WarmFacts | None = None

    @property
    def proven(self) -> bool:
        """Matched by WWID or serial on every disk: this server's own disks, safe to take unasked."""
        return self.matched_by != DiskIdentity.WEAK

    @property
    def held(self) -> int:
        return sum(d.held for d in self.disks)

    @property
    def size(self) -> int:
        return sum(d.identity.size for d in self.disks)

    def to_json(self) -> dict:
        obj = records.encode(replace(self, disks=()), omit_defaults=True)
        del obj["capture_id"]    # the key READY.unfinished lists it under
        return {**obj, "disks": [ListedDisk.of(d).to_json() for d in self.disks]}

    @classmethod
    def decode(cls, capture_id: str, obj: object) -> "Unfinished":
        what = f"READY unfinished capture {capture_id!r:.40}"
        if not isinstance(obj, dict) or not isinstance(obj.get("disks"), list):
            raise ProtocolError(f"{what} is not a JSON object with a list of disks")
        u = _decode({**obj, "capture_id": capture_id, "disks": ()}, cls, what)
        disks = []
        for i, d in enumerate(obj["disks"][:MAX_DISKS]):
            listed = _decode(d, ListedDisk, f"{what} disk {i}")
            if listed.held > listed.size:
                raise ProtocolError(f"{what} disk {i}: field 'held' must be an integer from 0 to "
                                    f"{listed.size}, got {listed.held}")
            disks.append(listed.unfinished())
        return replace(u, disks=tuple(disks))


def decode_unfinished(obj: dict) -> list[Unfinished]:
    """READY.unfinished: capture id -> Unfinished, newest first."""
    out = [Unfinished.decode(cid, v) for cid, v in obj.items()]
    return sorted(out, key=lambda u: u.updated, reverse=True)


class Segment(NamedTuple):
    """One checkpoint of a receiver's resume journal (on the wire [end, digest]): it holds every
    byte below `end`, and `digest` (hex) is BlockTree.cut_segment() over the blocks since the
    previous checkpoint."""

    end: DiskSize
    digest: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{64}$", description="64 hex digits")]


@dataclass(frozen=True)
class HeldDisk(Body):
    """What a receiver holds of one disk of an unfinished capture (READY.held, keyed by name)."""

    name: Str
    size: DiskSize
    block_size: BlockSize
    mode: Str | None = None
    segments: tuple[Segment, ...] = ()
    complete: bool = False          # verified and converted in an earlier attempt
    digest: Str | None = None       # its whole-disk digest, when complete
    # Held whole from a warm sync, with a map of `grid`-byte segments (HELD_MAP replies before
    # READY) when the agent asked for delta: DISK.delta sends only what differs.
    grid: Annotated[int, msgspec.Meta(ge=0, le=1 << 40)] = 0
    # Which of the agent's disks (HELLO.identities) proved to be this one: the kernel may name it
    # otherwise today (sdb under the ISO, sda under the server's own OS). Its DISK keeps `name`,
    # the capture's name for it (wire.capture_names). Empty: the same name.
    agent_name: Str = ""

    @property
    def held(self) -> int:
        return self.segments[-1].end if self.segments else 0


def decode_held(obj: dict) -> dict[str, HeldDisk]:
    """READY.held: disk name -> HeldDisk."""
    out = {}
    for name, v in obj.items():
        what = f"READY held disk {name!r:.40}"
        if not isinstance(v, dict):
            raise ProtocolError(f"{what} is not a JSON object")
        held = _decode({**v, "name": name}, HeldDisk, what)
        ends = [s.end for s in held.segments]
        if ends != sorted(set(ends)) or (ends and ends[-1] > held.size):
            raise ProtocolError(f"{what}: segment ends must increase within the disk's {held.size} bytes, "
                                f"got {ends[:8]!r:.80}")
        out[name] = held
    return out


@dataclass(frozen=True)
class Abort(Body):
    reason: Str = "no reason given"

    def encode(self) -> bytes:
        return encode_json(T_ABORT, Abort(self.reason[:2000]).to_json())

    @classmethod
    def decode(cls, obj: dict) -> "Abort":
        return _decode(obj, cls, "ABORT")


class StreamWriter:
    """The one writer of a stream's framing records (capture, calibration probe, tests).

    DATA and ZERO records come from capture.stream (encode_data / encode_zero); this writes
    the preamble and the metadata records around them through `send`.
    """

    def __init__(self, send):
        self.send = send

    def hello(self, hello: Hello) -> None:
        self.send(preamble() + hello.encode())

    def disk(self, header: DiskHeader) -> None:
        self.send(header.encode())

    def end(self, end: DiskEnd) -> None:
        self.send(end.encode())

    def finish(self) -> None:
        self.send(encode_finish())

    def abort(self, reason: str) -> None:
        self.send(Abort(reason).encode())

    def noop(self) -> None:
        """Keeps the receiver's idle timeout from ending a session that is busy on the agent's side."""
        self.send(encode_json(T_NOOP, {}))


# ----------------------------------------------------------------- decode


@dataclass
class Record:
    type: int
    # JSON records: the decoded object as sent (the typed models decode it: Hello.decode ...)
    meta: dict | None = None
    # DATA / ZERO / UNREADABLE / SAME
    offset: int = 0
    length: int = 0
    codec: int = CODEC_NONE
    digest: bytes = b""
    payload: bytes = b""
    wire_bytes: int = 0

    @property
    def name(self) -> str:
        return TYPE_NAMES.get(self.type, f"type {self.type}")


class Reader:
    """Decodes records from a byte stream, keeping count of bytes consumed."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.consumed = 0

    def _read(self, n: int, what: str) -> bytes:
        chunks = []
        want = n
        while want:
            b = self.stream.read(want)
            if not b:
                got = n - want
                raise StreamCut(
                    f"stream truncated: needed {n} bytes for {what}, got {got} "
                    f"(after {self.consumed + got} bytes in total); the connection was cut "
                    f"or the agent stopped"
                )
            chunks.append(b)
            want -= len(b)
        data = b"".join(chunks) if len(chunks) != 1 else chunks[0]
        self.consumed += n
        return data

    def read_preamble(self) -> int:
        magic, version, flags = PREAMBLE.unpack(self._read(PREAMBLE.size, "preamble"))
        if magic != MAGIC:
            raise ProtocolError(f"not a coldclone stream (magic {magic!r})")
        if version not in READ_VERSIONS:
            raise ProtocolError(
                f"protocol version {version} from the agent, this receiver speaks "
                f"{' and '.join(map(str, READ_VERSIONS))}: use matching coldclone versions on both ends"
            )
        if flags:
            raise ProtocolError(
                f"preamble flags {flags:#06x} set, but every flag is reserved in protocol version "
                f"{VERSION}: use matching coldclone versions on both ends")
        return version

    def read(self) -> Record:
        start = self.consumed
        rtype, length = FRAME.unpack(self._read(FRAME.size, "record header"))
        if rtype not in TYPE_NAMES:
            raise ProtocolError(f"unknown record type {rtype} at stream byte {start} (corrupt stream)")
        if rtype == T_DATA:
            if not DATA_HEAD.size < length <= DATA_HEAD.size + MAX_DATA:
                raise ProtocolError(f"DATA record of {length} bytes at stream byte {start} (corrupt stream)")
            offset, dlen, codec, digest = DATA_HEAD.unpack(self._read(DATA_HEAD.size, "DATA header"))
            payload = self._read(length - DATA_HEAD.size, f"DATA payload at disk offset {offset}")
            if codec not in CODEC_NAMES:
                raise ProtocolError(f"unknown codec {codec} in DATA record at disk offset {offset}")
            if dlen > MAX_DATA:
                raise ProtocolError(f"DATA record claims {dlen} bytes at disk offset {offset}")
            return Record(T_DATA, offset=offset, length=dlen, codec=codec, digest=digest,
                          payload=payload, wire_bytes=self.consumed - start)
        if rtype == T_UNREADABLE:
            if length != UNREADABLE_BODY.size:
                raise ProtocolError(f"UNREADABLE record of {length} bytes at stream byte {start}")
            offset, ulen = UNREADABLE_BODY.unpack(self._read(length, "UNREADABLE record"))
            return Record(T_UNREADABLE, offset=offset, length=ulen, wire_bytes=self.consumed - start)
        if rtype == T_SAME:
            if length != SAME_BODY.size:
                raise ProtocolError(f"SAME record of {length} bytes at stream byte {start}")
            offset, slen, digest = SAME_BODY.unpack(self._read(length, "SAME record"))
            return Record(T_SAME, offset=offset, length=slen, digest=digest, wire_bytes=self.consumed - start)
        if rtype == T_ZERO:
            if length != ZERO_BODY.size:
                raise ProtocolError(f"ZERO record of {length} bytes at stream byte {start}")
            offset, zlen = ZERO_BODY.unpack(self._read(length, "ZERO record"))
            return Record(T_ZERO, offset=offset, length=zlen, wire_bytes=self.consumed - start)
        if length > MAX_JSON + 32:
            raise ProtocolError(f"{TYPE_NAMES[rtype]} record of {length} bytes (corrupt stream)")
        body = self._read(length, f"{TYPE_NAMES[rtype]} record")
        digest = b""
        if rtype == T_END:
            digest, body = body[:32], body[32:]
            if len(digest) != 32:
                raise ProtocolError("END record without a digest")
        meta = loads_object(body, f"{TYPE_NAMES[rtype]} record")
        return Record(rtype, meta=meta, digest=digest, wire_bytes=self.consumed - start)

    def __iter__(self) -> Iterator[Record]:
        while True:
            yield self.read()


# ---------------------------------------------------------------- replies
# The receiver's answers: one JSON object per line on its stdout.


class Event:
    READY = "ready"
    DISK_OK = "disk_ok"
    COMPLETE = "complete"
    ERROR = "error"
    PROBE = "probe"
    HELD_MAP = "held_map"   # before READY of a delta resume: part of a held disk's map
    NOISE = "noise"      # a line that is not a reply (a shell's complaint, a banner)


@dataclass(frozen=True)
class Reply:
    """One reply line. Which fields an event carries: docs/protocol.md, "Replies"."""

    event: Str
    capture_id: Str | None = None
    path: Str | None = None
    receiver_version: Str | None = None
    protocol: Count | None = None
    probe: bool = False
    name: Str | None = None
    digest: Str | None = None
    image: Str | None = None
    counts: Facts = field(default_factory=dict)
    timings: Facts = field(default_factory=dict)
    manifest: Facts = field(default_factory=dict)
    code: Str | None = None
    message: Str | None = None
    bytes: Count | None = None
    covered: Count | None = None
    seconds: Seconds | None = None
    sync_seconds: Seconds | None = None
    readback_bytes: Count | None = None
    readback_seconds: Seconds | None = None
    text: Str | None = None
    held: Facts = field(default_factory=dict)        # READY of a resumed capture: decode_held() reads it
    unfinished: Facts = field(default_factory=dict)  # READY of a lookup: decode_unfinished() reads it
    load: Facts = field(default_factory=dict)        # READY of a probe: ServerLoad.decode() reads it
    # complete, when the receiver queues a conversion (--convert): where each converted image
    # will be, so the agent's summary can say it (the conversion runs after the session ends)
    converted_images: tuple[str, ...] = ()
    # held_map: segments `start`.. of disk `name`'s map, `digests` their sha256s in hex
    start: Count | None = None
    grid: Count | None = None
    digests: Annotated[str, msgspec.Meta(max_length=64 * HELD_MAP_LINE, pattern=r"^[0-9a-f]*$")] | None = None

    # The fields each event carries on the wire (None included: `capture_id: null` is an answer).
    FIELDS = {
        Event.READY: ("capture_id", "path", "receiver_version", "protocol", "probe", "held", "unfinished",
                      "load"),
        Event.DISK_OK: ("name", "digest", "image", "counts", "timings"),
        Event.COMPLETE: ("path", "manifest", "converted_images"),
        Event.ERROR: ("code", "message", "path"),
        Event.PROBE: ("bytes", "covered", "counts", "seconds", "sync_seconds", "readback_bytes",
                      "readback_seconds"),
        Event.HELD_MAP: ("name", "start", "grid", "digests"),
        Event.NOISE: ("text",),
    }
    # Only a probe's / a resumed capture's / a converting receiver's reply says these (an old agent
    # ignores the keys): left out when empty.
    ONLY_WHEN_SET = ("probe", "held", "unfinished", "load", "converted_images")

    def to_json(self) -> dict:
        # getattr, not records.encode: msgspec leaves a decoded dataclass's simple defaults out of
        # its __dict__, and to_builtins writes only what is there
        out = {"event": self.event}
        for k in self.FIELDS.get(self.event, ()):
            v = getattr(self, k)
            if v or k not in self.ONLY_WHEN_SET:
                out[k] = list(v) if isinstance(v, tuple) else v
        return out

    def encode(self) -> bytes:
        return (dumps(self.to_json(), sort_keys=True) + "\n").encode()

    @classmethod
    def decode(cls, line: bytes) -> "Reply":
        """A reply line; a line that is not a reply object comes back as Event.NOISE with its text."""
        try:
            return cls.from_json(loads_object(line, "reply"))
        except ProtocolError:
            return cls(Event.NOISE, text=line.decode(errors="replace").strip()[:2000])

    @classmethod
    def from_json(cls, obj: dict) -> "Reply":
        """The typed reply of a decoded line (as the transport's pump queues them)."""
        try:
            return _decode(obj, cls, f"reply {obj.get('event')!r:.40}")
        except ProtocolError as e:
            return cls(Event.NOISE, text=f"{e}: {dumps(obj)[:300]}")


def parse_reply(line: bytes) -> dict:
    """A reply line as the JSON object it is (the transport's pump queues these)."""
    return Reply.decode(line).to_json()
