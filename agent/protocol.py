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
from dataclasses import dataclass, field, replace
from typing import BinaryIO, Iterator

from . import records
from .devnames import real_identifier
from .estimate_model import CaptureEstimate
from .guestos.report import ReadinessReport

MAGIC = b"COLDCLN\x00"
# 2: HELLO.resume, DISK.resume_from / restart_reason and READY.held (resumable captures). A
# version 2 receiver still reads version 1 streams: an older agent keeps working against it.
VERSION = 2
READ_VERSIONS = (1, 2)
PREAMBLE = struct.Struct(">8sHH")  # magic, version, flags (reserved, 0)

T_HELLO, T_DISK, T_DATA, T_ZERO, T_END, T_FINISH, T_ABORT, T_UNREADABLE, T_NOOP = range(1, 10)
TYPE_NAMES = {
    T_HELLO: "HELLO", T_DISK: "DISK", T_DATA: "DATA", T_ZERO: "ZERO",
    T_END: "END", T_FINISH: "FINISH", T_ABORT: "ABORT", T_UNREADABLE: "UNREADABLE", T_NOOP: "NOOP",
}

FRAME = struct.Struct(">BI")
DATA_HEAD = struct.Struct(">QIB32s")
ZERO_BODY = struct.Struct(">QQ")
UNREADABLE_BODY = struct.Struct(">QQ")

CODEC_NONE = 0
CODEC_ZSTD = 1
CODEC_NAMES = {CODEC_NONE: "none", CODEC_ZSTD: "zstd"}

# Bounds a receiver enforces before allocating anything: a corrupt length
# field must produce a clear error, not a 4 GiB allocation.
MAX_JSON = 1 << 20
MAX_DATA = 64 << 20
DEFAULT_BLOCK_SIZE = 64 << 10
DEFAULT_CHUNK_SIZE = 4 << 20
# The receiver reads each raw file back as it is written, in steps of this much
# (receive/readback.py): at END at most this much is left to read back.
READBACK_STEP = 32 << 20

DIGEST_ALGO = "sha256-blocktree-v1"


class ProtocolError(Exception):
    """The stream is malformed (truncated, corrupt framing, out-of-order records)."""


class StreamCut(ProtocolError):
    """The stream ended in the middle (the agent stopped, the connection was cut): every record
    before the cut was whole, so what the receiver holds can be resumed."""


# ---------------------------------------------------------------- digests

_zero_digest_cache: dict[int, bytes] = {}


def zero_block_digest(length: int) -> bytes:
    d = _zero_digest_cache.get(length)
    if d is None:
        d = hashlib.sha256(bytes(length)).digest()
        _zero_digest_cache[length] = d
    return d


def block_digests(buf, block_size: int) -> list[bytes]:
    """sha256 of each block of buf (the last may be short)."""
    mv = memoryview(buf)
    return [hashlib.sha256(mv[i:i + block_size]).digest() for i in range(0, len(mv), block_size)]


def record_digest(digests: list[bytes]) -> bytes:
    return hashlib.sha256(b"".join(digests)).digest()


class BlockTree:
    """The whole-disk digest, fed block digests in disk order."""

    def __init__(self, size: int, block_size: int):
        self.size = size
        self.block_size = block_size
        self.pos = 0
        self._h = hashlib.sha256(DIGEST_ALGO.encode() + struct.pack(">QQ", size, block_size))
        # sha256 over the block digests fed since the last cut_segment(): the receiver's resume
        # journal records one per checkpoint, and a resuming agent checks its source against them.
        self._seg = hashlib.sha256()

    def _update(self, digests: bytes) -> None:
        self._h.update(digests)
        self._seg.update(digests)

    def copy(self) -> "BlockTree":
        """An independent tree at the same point (hash states copied)."""
        t = BlockTree.__new__(BlockTree)
        t.size, t.block_size, t.pos = self.size, self.block_size, self.pos
        t._h, t._seg = self._h.copy(), self._seg.copy()
        return t

    def cut_segment(self) -> bytes:
        """The digest of the blocks fed since the last cut (or the start); starts the next one."""
        d = self._seg.digest()
        self._seg = hashlib.sha256()
        return d

    def add_digests(self, offset: int, length: int, digests: list[bytes]) -> None:
        self._expect(offset, length)
        if len(digests) != -(-length // self.block_size):
            raise ProtocolError(f"extent {offset}+{length} has {len(digests)} block digests")
        self._update(b"".join(digests))
        self.pos += length

    def add_zero(self, offset: int, length: int) -> None:
        self._expect(offset, length)
        bs = self.block_size
        # _expect guarantees alignment, so only the disk's last block is short.
        n_full, tail = divmod(length, bs)
        z = zero_block_digest(bs)
        # A run of the constant, in bounded batches: a 2 TB empty disk is 32M
        # blocks; never build that in one bytes object.
        while n_full:
            k = min(n_full, 1 << 15)
            self._update(z * k)
            n_full -= k
        if tail:
            self._update(zero_block_digest(tail))
        end = offset + length
        self.pos = end

    def _expect(self, offset: int, length: int) -> None:
        if offset != self.pos:
            raise ProtocolError(f"extent at offset {offset} but expected {self.pos} (gap or overlap)")
        if length <= 0 or offset + length > self.size:
            raise ProtocolError(f"extent {offset}+{length} outside disk of {self.size} bytes")
        if offset % self.block_size or ((offset + length) % self.block_size and offset + length != self.size):
            raise ProtocolError(f"extent {offset}+{length} not aligned to block size {self.block_size}")

    def digest(self) -> bytes:
        if self.pos != self.size:
            raise ProtocolError(f"disk digest asked at {self.pos} of {self.size} bytes")
        return self._h.digest()


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


# --------------------------------------------------------------- extents


@dataclass
class Extent:
    offset: int
    length: int
    zero: bool
    data: memoryview | None = None
    digests: list[bytes] = field(default_factory=list)


_ZERO_CACHE: dict[int, bytes] = {}


def _zeros(n: int) -> bytes:
    z = _ZERO_CACHE.get(n)
    if z is None:
        z = _ZERO_CACHE[n] = bytes(n)
    return z


def split_extents(buf, offset: int, block_size: int, skip_zero: bool = True) -> list[Extent]:
    """Split a block-aligned buffer into runs of all-zero and data blocks.

    Data blocks get their sha256 here, once; the same digests serve the
    record digest and the whole-disk tree.
    """
    if not isinstance(buf, bytes):
        buf = bytes(buf)
    n = len(buf)
    # Zero tests compare bytes with bytes (memcmp): comparing a memoryview
    # is element by element and 50x slower.
    if skip_zero and n in _ZERO_CACHE and buf == _ZERO_CACHE[n]:
        return [Extent(offset, n, True)]
    if skip_zero and n >= 1 << 20 and buf == _zeros(n):
        return [Extent(offset, n, True)]
    mv = memoryview(buf)
    zero = _zeros(block_size)
    out: list[Extent] = []
    for i in range(0, n, block_size):
        end = min(i + block_size, n)
        is_zero = skip_zero and buf[i:end] == (zero if end - i == block_size else _zeros(end - i))
        if out and out[-1].zero == is_zero:
            ext = out[-1]
            ext.length += end - i
        else:
            ext = Extent(offset + i, end - i, is_zero)
            out.append(ext)
        if not is_zero:
            ext.digests.append(hashlib.sha256(mv[i:end]).digest())
    for ext in out:
        if not ext.zero:
            start = ext.offset - offset
            ext.data = mv[start:start + ext.length]
    return out


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


def dumps(obj, **kw) -> str:
    """json.dumps as everything in coldclone writes it (wire, manifest, failure records)."""
    return json.dumps(obj, allow_nan=False, **kw)


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


class JsonFields:
    """Typed reads of one decoded JSON object; each wrong type or range is a ProtocolError."""

    def __init__(self, obj: dict, what: str):
        self.obj = obj
        self.what = what

    def _bad(self, key: str, want: str):
        return ProtocolError(f"{self.what}: field {key!r} must be {want}, got {self.obj[key]!r:.80}")

    def present(self, key: str) -> bool:
        return self.obj.get(key) is not None

    def str(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        if not self.present(key):
            if required:
                raise ProtocolError(f"{self.what}: field {key!r} is missing")
            return default
        v = self.obj[key]
        if not isinstance(v, str) or len(v) > 4096:
            raise self._bad(key, "a string (at most 4096 characters)")
        return v

    def int(self, key: str, lo: int = 0, hi: int = U63, default: int | None = None,
            required: bool = False) -> int | None:
        if not self.present(key):
            if required:
                raise ProtocolError(f"{self.what}: field {key!r} is missing")
            return default
        v = self.obj[key]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self._bad(key, f"an integer from {lo} to {hi}")
        return v

    def float(self, key: str, default: float | None = None) -> float | None:
        if not self.present(key):
            return default
        v = self.obj[key]
        # NaN/Infinity never get here (loads_object refuses them); negatives make no sense in counts.
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise self._bad(key, "a non-negative number")
        return float(v)

    def bool(self, key: str, default: bool = False) -> bool:
        if not self.present(key):
            return default
        v = self.obj[key]
        if not isinstance(v, bool):
            raise self._bad(key, "true or false")
        return v

    def mapping(self, key: str) -> dict:
        """A free-form JSON object (source facts, an estimate): JSON already validated, kept as is."""
        if not self.present(key):
            return {}
        v = self.obj[key]
        if not isinstance(v, dict):
            raise self._bad(key, "a JSON object")
        return v

    def objects(self, key: str) -> list[dict]:
        """A list of JSON objects (each then read with its own JsonFields); [] when absent."""
        if not self.present(key):
            return []
        v = self.obj[key]
        if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
            raise self._bad(key, "a list of objects")
        return v

    def str_list(self, key: str) -> tuple[str, ...]:
        if not self.present(key):
            return ()
        v = self.obj[key]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self._bad(key, "a list of strings")
        return tuple(v)


# ----------------------------------------------------------------- encode


def preamble() -> bytes:
    return PREAMBLE.pack(MAGIC, VERSION, 0)


def frame(rtype: int, body: bytes) -> bytes:
    return FRAME.pack(rtype, len(body)) + body


def encode_json(rtype: int, obj: dict) -> bytes:
    return frame(rtype, dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def encode_data(offset: int, length: int, codec: int, digest: bytes, payload: bytes) -> bytes:
    head = DATA_HEAD.pack(offset, length, codec, digest)
    return FRAME.pack(T_DATA, len(head) + len(payload)) + head + payload


def encode_zero(offset: int, length: int) -> bytes:
    return frame(T_ZERO, ZERO_BODY.pack(offset, length))


def encode_unreadable(offset: int, length: int) -> bytes:
    return frame(T_UNREADABLE, UNREADABLE_BODY.pack(offset, length))


def encode_end(digest: bytes, stats: dict) -> bytes:
    return frame(T_END, digest + dumps(stats, sort_keys=True).encode())


# ------------------------------------------------------ typed metadata
# Each JSON record has one frozen model with one encoder (to_json/encode) and one decoder
# (decode), which checks every field's type and range. Unknown keys are ignored, so a newer agent
# may add fields without a version bump.


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
class ServerLoad:
    """How busy a conversion server is, as a probe's READY tells an agent choosing where to
    capture (READY.load): its free space, the captures it receives now, its conversions."""

    free_bytes: int
    running: int = 0               # captures being received (a live `.partial`)
    converting: int = 0            # conversions running
    queued: int = 0                # conversions waiting for a slot (--max-conversions)
    max_conversions: int = 0
    bwlimit: int | None = None     # the total rate of its sessions is capped to this (bytes/s)
    name: str = ""                 # the server's name (its host name)

    def to_json(self) -> dict:
        return {"free_bytes": self.free_bytes, "running": self.running, "converting": self.converting,
                "queued": self.queued, "max_conversions": self.max_conversions, "bwlimit": self.bwlimit,
                "name": self.name}

    @classmethod
    def decode(cls, obj: dict) -> "ServerLoad | None":
        """READY.load; None from a receiver that does not say (it predates waves)."""
        if not obj:
            return None
        f = JsonFields(obj, "READY load")
        return cls(free_bytes=f.int("free_bytes", required=True), running=f.int("running", 0, 1 << 20, 0),
                   converting=f.int("converting", 0, 1 << 20, 0), queued=f.int("queued", 0, 1 << 20, 0),
                   max_conversions=f.int("max_conversions", 0, 1 << 20, 0), bwlimit=f.int("bwlimit", 1),
                   name=f.str("name", "") or "")


@dataclass(frozen=True)
class Hello:
    capture_id: str | None
    agent_version: str = ""
    format: str = ImageFormat.QCOW2
    source: dict = field(default_factory=dict)     # free-form source facts, for the manifest
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
    unfinished_of: tuple[DiskIdentity, ...] = ()
    dropped: tuple[str, ...] = field(default=(), compare=False)
    # The migration wave the capture belongs to (coldclone.wave=): into the manifest and status.
    wave: str | None = None
    # A capture: each disk's identity (with `head`), the proof a resume must give before the
    # receiver touches or drops a disk it holds (receive/identity.py).
    identities: tuple[DiskIdentity, ...] = ()

    def to_json(self) -> dict:
        obj = {"capture_id": self.capture_id, "agent_version": self.agent_version, "format": self.format,
               "source": self.source, "disks": list(self.disks)}
        if self.probe:
            obj["probe"] = True
        if self.unfinished_of:
            obj["unfinished_of"] = [d.to_json() for d in self.unfinished_of]
        if self.identities:
            obj["identities"] = [d.to_json() for d in self.identities]
        if self.resume:
            obj["resume"] = True
        if self.estimate is not None:
            obj["estimate"] = records.encode(self.estimate)
        if self.readiness is not None:
            obj["readiness"] = records.encode(self.readiness)
        if self.wave is not None:
            obj["wave"] = self.wave
        return obj

    def encode(self) -> bytes:
        return encode_json(T_HELLO, self.to_json())

    @classmethod
    def decode(cls, obj: dict) -> "Hello":
        f = JsonFields(obj, "HELLO")
        probe = f.bool("probe")
        fmt = f.str("format", ImageFormat.QCOW2)
        dropped: list[str] = []

        def advice(key: str, model):
            if not f.present(key):
                return None
            try:
                return records.decode(f.mapping(key), model, f"HELLO {key}")
            except records.RecordError as e:
                dropped.append(str(e))
                return None

        return cls(capture_id=f.str("capture_id", required=not probe), agent_version=f.str("agent_version", ""),
                   format=fmt, source=f.mapping("source"), disks=f.str_list("disks"), probe=probe,
                   estimate=advice("estimate", CaptureEstimate), readiness=advice("readiness", ReadinessReport),
                   resume=f.bool("resume"), unfinished_of=cls._identities(obj, "unfinished_of"),
                   dropped=tuple(dropped), wave=cls._wave(f.str("wave")),
                   identities=cls._identities(obj, "identities"))

    @staticmethod
    def _wave(v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", v):
            raise ProtocolError(f"HELLO: field 'wave' must be a label of letters, digits, '.', '_' "
                                f"and '-' (at most 64), got {v!r:.80}")
        return v

    @staticmethod
    def _identities(obj: dict, key: str) -> tuple[DiskIdentity, ...]:
        v = obj.get(key)
        if v is None:
            return ()
        if not isinstance(v, list) or len(v) > MAX_DISKS:
            raise ProtocolError(f"HELLO: field {key!r} must be a list of at most {MAX_DISKS} disks")
        return tuple(DiskIdentity.decode(d, f"HELLO {key} disk {i}") for i, d in enumerate(v))


@dataclass(frozen=True)
class DiskHeader:
    name: str
    size: int
    block_size: int = DEFAULT_BLOCK_SIZE
    logical_sector_size: int | None = None
    physical_sector_size: int | None = None
    mode: str | None = None
    codec: str | None = None
    source: dict = field(default_factory=dict)
    # The agent's estimate of the non-zero bytes it will send (None: unknown): the receiver checks
    # before accepting the disk that its filesystem has room for them as raw data plus the image.
    data_bytes_estimate: int | None = None
    # Resuming: the records start at this byte, the end of what the receiver holds (READY.held);
    # 0 with restart_reason: the held copy is dropped and the disk is sent again from the start.
    resume_from: int = 0
    restart_reason: str | None = None

    def to_json(self) -> dict:
        obj = {"name": self.name, "size": self.size, "block_size": self.block_size,
               "logical_sector_size": self.logical_sector_size,
               "physical_sector_size": self.physical_sector_size, "mode": self.mode, "codec": self.codec,
               "source": self.source}
        if self.data_bytes_estimate is not None:
            obj["data_bytes_estimate"] = self.data_bytes_estimate
        if self.resume_from:
            obj["resume_from"] = self.resume_from
        if self.restart_reason is not None:
            obj["restart_reason"] = self.restart_reason
        return obj

    def encode(self) -> bytes:
        return encode_json(T_DISK, self.to_json())

    @classmethod
    def decode(cls, obj: dict) -> "DiskHeader":
        f = JsonFields(obj, "DISK")
        name = f.str("name", required=True)
        size = f.int("size", 1, MAX_DISK_SIZE, required=True)
        bs = f.int("block_size", 512, MAX_DATA, default=DEFAULT_BLOCK_SIZE)
        if bs & (bs - 1):
            raise ProtocolError(f"DISK {name}: block size {bs} is not a power of two")
        if -(-size // bs) > MAX_BLOCKS:
            raise ProtocolError(
                f"DISK {name}: {size} bytes in blocks of {bs} is more than {MAX_BLOCKS} blocks; "
                f"use a larger block size")
        return cls(name=name, size=size, block_size=bs,
                   logical_sector_size=f.int("logical_sector_size", 1, 1 << 20),
                   physical_sector_size=f.int("physical_sector_size", 1, 1 << 20),
                   mode=f.str("mode"), codec=f.str("codec"), source=f.mapping("source"),
                   data_bytes_estimate=f.int("data_bytes_estimate", 0, MAX_DISK_SIZE),
                   resume_from=f.int("resume_from", 0, size, default=0),
                   restart_reason=f.str("restart_reason"))


@dataclass(frozen=True)
class DiskEnd:
    """END: the agent's whole-disk digest and its own counts for the disk."""

    digest: bytes
    bytes_read: int | None = None
    data_bytes: int | None = None
    zero_bytes: int | None = None
    payload_bytes: int | None = None
    wire_bytes: int | None = None
    data_records: int | None = None
    zero_records: int | None = None
    read_seconds: float | None = None
    elapsed: float | None = None
    skipped_bytes: int | None = None     # mode=used: free space never read (holes in the image)
    map_seconds: float | None = None     # mode=used: building the used-block map
    used_map: dict | None = None         # mode=used: per area what was read and why (manifest)
    unreadable_bytes: int | None = None  # on_read_error=map: bytes sent as UNREADABLE (zeros)
    recovery_seconds: float | None = None  # on_read_error=map: time spent re-reading failed ranges
    zstd_levels: dict | None = None      # zstd:auto: chunks compressed at each level ({"1": n, "3": m})

    INTS = ("bytes_read", "data_bytes", "zero_bytes", "payload_bytes", "wire_bytes", "data_records",
            "zero_records", "skipped_bytes", "unreadable_bytes")
    FLOATS = ("read_seconds", "elapsed", "map_seconds", "recovery_seconds")
    MAPPINGS = ("used_map", "zstd_levels")

    def stats(self) -> dict:
        """The counts the agent gave, for the manifest (absent ones left out)."""
        return {k: getattr(self, k) for k in self.INTS + self.FLOATS + self.MAPPINGS
                if getattr(self, k) is not None}

    def encode(self) -> bytes:
        return encode_end(self.digest, self.stats())

    @classmethod
    def decode(cls, digest: bytes, obj: dict) -> "DiskEnd":
        f = JsonFields(obj, "END")
        return cls(digest, **{k: f.int(k) for k in cls.INTS}, **{k: f.float(k) for k in cls.FLOATS},
                   **{k: (f.mapping(k) if f.present(k) else None) for k in cls.MAPPINGS})


@dataclass(frozen=True)
class DiskIdentity:
    """A source disk as a conversion server can recognise it again (HELLO.unfinished_of; the
    receiver reads the same facts from each DISK header's `source` in its resume journals).

    The WWID and the serial prove which physical disk it is; a disk that has neither (a loop
    device, many hardware-RAID volumes) is only its name and size, which another server booted
    from the same ISO may share: such a match is offered to an operator, never taken on its own.
    """

    name: str
    size: int
    serial: str = ""
    wwid: str = ""
    # sha256 (hex) of the disk's first HEAD_BYTES: the receiver lists a capture only when the first
    # bytes it holds of the disk are these (when it holds them), so an agent key cannot learn and
    # then take over another server's capture by guessing a disk name and size
    head: str = ""

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

    def to_json(self) -> dict:
        obj = {"name": self.name, "size": self.size, "serial": self.serial, "wwid": self.wwid}
        if self.head:
            obj["head"] = self.head
        return obj

    @classmethod
    def decode(cls, obj: object, what: str) -> "DiskIdentity":
        if not isinstance(obj, dict):
            raise ProtocolError(f"{what} is not a JSON object")
        f = JsonFields(obj, what)
        head = f.str("head", "") or ""
        if head and not HEX_DIGEST.fullmatch(head):
            raise ProtocolError(f"{what}: field 'head' must be a sha256 in hex")
        return replace(cls.of(f.str("name", required=True), f.int("size", 1, MAX_DISK_SIZE, required=True),
                              serial=f.str("serial"), wwid=f.str("wwid")), head=head)

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


@dataclass(frozen=True)
class UnfinishedDisk:
    identity: DiskIdentity
    held: int               # bytes below the journal's last checkpoint
    complete: bool = False  # verified in an earlier attempt


@dataclass(frozen=True)
class Unfinished:
    """An unfinished capture a receiver holds of the disks an agent asked about (READY.unfinished
    of a lookup): every disk it journaled is one of them."""

    capture_id: str
    disks: tuple[UnfinishedDisk, ...]
    updated: float          # when its journals last changed (seconds since the epoch)
    matched_by: str         # the weakest of its disks' matches
    live: bool = False      # a receiver still holds it (a cut session not yet timed out)

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
        return {"updated": self.updated, "matched_by": self.matched_by, "live": self.live,
                "disks": [{**d.identity.to_json(), "held": d.held, "complete": d.complete} for d in self.disks]}

    @classmethod
    def decode(cls, capture_id: str, obj: object) -> "Unfinished":
        what = f"READY unfinished capture {capture_id!r:.40}"
        if not isinstance(obj, dict) or not isinstance(obj.get("disks"), list):
            raise ProtocolError(f"{what} is not a JSON object with a list of disks")
        f = JsonFields(obj, what)
        disks = []
        for i, d in enumerate(obj["disks"][:MAX_DISKS]):
            ident = DiskIdentity.decode(d, f"{what} disk {i}")
            df = JsonFields(d, f"{what} disk {i}")
            disks.append(UnfinishedDisk(ident, df.int("held", 0, ident.size, default=0), df.bool("complete")))
        return cls(capture_id=capture_id, disks=tuple(disks), updated=f.float("updated", 0.0),
                   matched_by=f.str("matched_by", DiskIdentity.WEAK), live=f.bool("live"))


def decode_unfinished(obj: dict) -> list[Unfinished]:
    """READY.unfinished: capture id -> Unfinished, newest first."""
    out = [Unfinished.decode(cid, v) for cid, v in obj.items()]
    return sorted(out, key=lambda u: u.updated, reverse=True)


@dataclass(frozen=True)
class Segment:
    """One checkpoint of a receiver's resume journal: it holds every byte below `end`, and
    `digest` is BlockTree.cut_segment() over the blocks since the previous checkpoint."""

    end: int
    digest: bytes


@dataclass(frozen=True)
class HeldDisk:
    """What a receiver holds of one disk of an unfinished capture (READY.held)."""

    name: str
    size: int
    block_size: int
    mode: str | None
    segments: tuple[Segment, ...] = ()
    complete: bool = False          # verified and converted in an earlier attempt
    digest: str | None = None       # its whole-disk digest, when complete

    @property
    def held(self) -> int:
        return self.segments[-1].end if self.segments else 0

    def to_json(self) -> dict:
        return {"size": self.size, "block_size": self.block_size, "mode": self.mode,
                "segments": [[s.end, s.digest.hex()] for s in self.segments],
                "complete": self.complete, "digest": self.digest}

    @classmethod
    def decode(cls, name: str, obj: dict) -> "HeldDisk":
        f = JsonFields(obj, f"READY held disk {name!r:.40}")
        size = f.int("size", 1, MAX_DISK_SIZE, required=True)
        segs, last = [], 0
        for item in obj.get("segments") or []:
            ok = (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)
                  and not isinstance(item[0], bool) and last < item[0] <= size and isinstance(item[1], str)
                  and len(item[1]) == 64)
            try:
                digest = bytes.fromhex(item[1]) if ok else b""
            except ValueError:
                ok = False
            if not ok:
                raise ProtocolError(f"READY held disk {name!r:.40}: bad segment {item!r:.80} "
                                    f"(want [end, 64 hex digits], ends increasing within the disk)")
            segs.append(Segment(item[0], digest))
            last = item[0]
        return cls(name=name, size=size, block_size=f.int("block_size", 512, MAX_DATA, required=True),
                   mode=f.str("mode"), segments=tuple(segs), complete=f.bool("complete"),
                   digest=f.str("digest"))


def decode_held(obj: dict) -> dict[str, HeldDisk]:
    """READY.held: disk name -> HeldDisk."""
    out = {}
    for name, v in obj.items():
        if not isinstance(v, dict):
            raise ProtocolError(f"READY held disk {name!r:.40} is not a JSON object")
        out[name] = HeldDisk.decode(name, v)
    return out


@dataclass(frozen=True)
class Abort:
    reason: str = "no reason given"

    def encode(self) -> bytes:
        return encode_json(T_ABORT, {"reason": self.reason[:2000]})

    @classmethod
    def decode(cls, obj: dict) -> "Abort":
        return cls(JsonFields(obj, "ABORT").str("reason", "no reason given"))


def encode_finish() -> bytes:
    return encode_json(T_FINISH, {})


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
    # DATA / ZERO / UNREADABLE
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
    NOISE = "noise"      # a line that is not a reply (a shell's complaint, a banner)


@dataclass(frozen=True)
class Reply:
    """One reply line. Which fields an event carries: docs/protocol.md, "Replies"."""

    event: str
    capture_id: str | None = None
    path: str | None = None
    receiver_version: str | None = None
    protocol: int | None = None
    probe: bool = False
    name: str | None = None
    digest: str | None = None
    image: str | None = None
    counts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    code: str | None = None
    message: str | None = None
    bytes: int | None = None
    covered: int | None = None
    seconds: float | None = None
    sync_seconds: float | None = None
    readback_bytes: int | None = None
    readback_seconds: float | None = None
    text: str | None = None
    held: dict = field(default_factory=dict)      # READY of a resumed capture: decode_held() reads it
    unfinished: dict = field(default_factory=dict)  # READY of a lookup: decode_unfinished() reads it
    load: dict = field(default_factory=dict)        # READY of a probe: ServerLoad.decode() reads it
    # complete, when the receiver queues a conversion (--convert): where each converted image
    # will be, so the agent's summary can say it (the conversion runs after the session ends)
    converted_images: tuple[str, ...] = ()

    # The fields each event carries on the wire (None included: `capture_id: null` is an answer).
    FIELDS = {
        Event.READY: ("capture_id", "path", "receiver_version", "protocol", "probe", "held", "unfinished",
                      "load"),
        Event.DISK_OK: ("name", "digest", "image", "counts", "timings"),
        Event.COMPLETE: ("path", "manifest", "converted_images"),
        Event.ERROR: ("code", "message", "path"),
        Event.PROBE: ("bytes", "covered", "counts", "seconds", "sync_seconds", "readback_bytes",
                      "readback_seconds"),
        Event.NOISE: ("text",),
    }
    _STR = ("capture_id", "path", "receiver_version", "name", "digest", "image", "code", "message", "text")
    _INT = ("protocol", "bytes", "covered", "readback_bytes")
    _FLOAT = ("seconds", "sync_seconds", "readback_seconds")
    _MAP = ("counts", "timings", "manifest", "held", "unfinished", "load")
    _LIST = ("converted_images",)

    def to_json(self) -> dict:
        obj = {"event": self.event}
        for k in self.FIELDS.get(self.event, ()):
            v = getattr(self, k)
            if k in ("probe", "held", "unfinished", "load") and not v:
                continue   # only a probe's / a resumed capture's ready says so (an old agent ignores the key)
            if k in self._LIST:
                if not v:
                    continue   # only a converting receiver says so (an old agent ignores the key)
                v = list(v)
            obj[k] = v
        return obj

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
            f = JsonFields(obj, f"reply {obj.get('event')!r:.40}")
            vals = {k: f.str(k) for k in cls._STR}
            vals.update({k: f.int(k) for k in cls._INT})
            vals.update({k: f.float(k) for k in cls._FLOAT})
            vals.update({k: f.mapping(k) for k in cls._MAP})
            vals.update({k: f.str_list(k) for k in cls._LIST})
            return cls(event=f.str("event", required=True), probe=f.bool("probe"), **vals)
        except ProtocolError as e:
            return cls(Event.NOISE, text=f"{e}: {dumps(obj)[:300]}")


def parse_reply(line: bytes) -> dict:
    """A reply line as the JSON object it is (the transport's pump queues these)."""
    return Reply.decode(line).to_json()
