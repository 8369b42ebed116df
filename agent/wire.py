"""The stream's framing and digests: standard library only, Python 3.6 syntax.

Two programs write this wire: the agent (`agent.protocol` re-exports everything here beside the
typed JSON bodies) and the self-contained `coldclone sync` file that runs on a source server's own
running OS, where only python3 >= 3.6 and its standard library can be assumed (agent/sync/). So
this module has no third-party import, no `from __future__ import annotations`, no dataclasses and
no walrus; tests/unit/test_sync_file.py parses it with feature_version=(3, 6).

The record layout is described in agent/protocol.py and docs/protocol.md. What the two-phase
migration adds (docs/two-phase.md):

    SAME (10) offset:u64 length:u64 digest:32s   (delta disks only) the receiver's held bytes in
              this range are the source's: `digest` is sha256 over the source's block digests of
              the range (record_digest), which the receiver checks against the block digests it
              stored for what it holds, and feeds to the whole-disk digest.

and the zlib codec (2), which the sync file uses (the standard library has no zstd).
"""

import hashlib
import json
import struct
import zlib

MAGIC = b"COLDCLN\x00"
# 2: HELLO.resume, DISK.resume_from / restart_reason and READY.held (resumable captures). A
# version 2 receiver still reads version 1 streams: an older agent keeps working against it.
# SAME and the zlib codec are only sent to a receiver that offered a held map (READY), so they
# need no new version.
VERSION = 2
READ_VERSIONS = (1, 2)
PREAMBLE = struct.Struct(">8sHH")  # magic, version, flags (reserved, 0)

T_HELLO, T_DISK, T_DATA, T_ZERO, T_END, T_FINISH, T_ABORT, T_UNREADABLE, T_NOOP, T_SAME = range(1, 11)
TYPE_NAMES = {
    T_HELLO: "HELLO", T_DISK: "DISK", T_DATA: "DATA", T_ZERO: "ZERO",
    T_END: "END", T_FINISH: "FINISH", T_ABORT: "ABORT", T_UNREADABLE: "UNREADABLE", T_NOOP: "NOOP",
    T_SAME: "SAME",
}

FRAME = struct.Struct(">BI")
DATA_HEAD = struct.Struct(">QIB32s")
ZERO_BODY = struct.Struct(">QQ")
UNREADABLE_BODY = struct.Struct(">QQ")
SAME_BODY = struct.Struct(">QQ32s")

CODEC_NONE = 0
CODEC_ZSTD = 1
CODEC_ZLIB = 2
CODEC_NAMES = {CODEC_NONE: "none", CODEC_ZSTD: "zstd", CODEC_ZLIB: "zlib"}

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

# The held map a receiver sends for a delta disk: one digest per segment of `grid` bytes, at most
# this many segments (the agent keeps the map in memory: 32 bytes each, 128 MiB at most). The grid
# is the block size (64 KiB) up to a 256 GiB disk, then the least power of two that keeps to it
# (docs/two-phase.md: why this granularity).
MAX_GRID_SEGMENTS = 1 << 22
# Digests per held-map reply line (hex: 256 KiB a line).
HELD_MAP_LINE = 4096
# A SAME record covers at most this much: the receiver reads the block digests of the range into
# memory (32 bytes per block: 512 KiB for 1 GiB of 64 KiB blocks).
MAX_SAME = 1 << 30


class ProtocolError(Exception):
    """The stream is malformed (truncated, corrupt framing, out-of-order records)."""


class StreamCut(ProtocolError):
    """The stream ended in the middle (the agent stopped, the connection was cut): every record
    before the cut was whole, so what the receiver holds can be resumed."""


# ---------------------------------------------------------------- digests

_zero_digest_cache = {}


def zero_block_digest(length):
    d = _zero_digest_cache.get(length)
    if d is None:
        d = hashlib.sha256(bytes(length)).digest()
        _zero_digest_cache[length] = d
    return d


def block_digests(buf, block_size):
    """sha256 of each block of buf (the last may be short)."""
    mv = memoryview(buf)
    return [hashlib.sha256(mv[i:i + block_size]).digest() for i in range(0, len(mv), block_size)]


def record_digest(digests):
    return hashlib.sha256(b"".join(digests)).digest()


def zero_digest_batches(length, block_size):
    """The block digests of `length` zero bytes (block-aligned: only a disk's last block is
    short), concatenated, in bounded batches: a 2 TB empty disk is 32M blocks, never built in one
    bytes object."""
    n_full, tail = divmod(length, block_size)
    z = zero_block_digest(block_size)
    while n_full:
        k = min(n_full, 1 << 15)
        yield z * k
        n_full -= k
    if tail:
        yield zero_block_digest(tail)


def zero_digests(offset, length, block_size):
    """The block digests of `length` zero bytes from `offset` (block-aligned; only the disk's
    last block is short)."""
    n_full, tail = divmod(length, block_size)
    out = [zero_block_digest(block_size)] * n_full
    if tail:
        out.append(zero_block_digest(tail))
    return out


class BlockTree:
    """The whole-disk digest, fed block digests in disk order."""

    def __init__(self, size, block_size):
        self.size = size
        self.block_size = block_size
        self.pos = 0
        self._h = hashlib.sha256(DIGEST_ALGO.encode() + struct.pack(">QQ", size, block_size))
        # sha256 over the block digests fed since the last cut_segment(): the receiver's resume
        # journal records one per checkpoint, and a resuming agent checks its source against them.
        self._seg = hashlib.sha256()

    def _update(self, digests):
        self._h.update(digests)
        self._seg.update(digests)

    def copy(self):
        """An independent tree at the same point (hash states copied)."""
        t = BlockTree.__new__(BlockTree)
        t.size, t.block_size, t.pos = self.size, self.block_size, self.pos
        t._h, t._seg = self._h.copy(), self._seg.copy()
        return t

    def cut_segment(self):
        """The digest of the blocks fed since the last cut (or the start); starts the next one."""
        d = self._seg.digest()
        self._seg = hashlib.sha256()
        return d

    def add_digests(self, offset, length, digests):
        self._expect(offset, length)
        if len(digests) != -(-length // self.block_size):
            raise ProtocolError("extent %d+%d has %d block digests" % (offset, length, len(digests)))
        self._update(b"".join(digests))
        self.pos += length

    def add_zero(self, offset, length):
        self._expect(offset, length)     # aligned: only the disk's last block is short
        for batch in zero_digest_batches(length, self.block_size):
            self._update(batch)
        self.pos = offset + length

    def _expect(self, offset, length):
        if offset != self.pos:
            raise ProtocolError("extent at offset %d but expected %d (gap or overlap)" % (offset, self.pos))
        if length <= 0 or offset + length > self.size:
            raise ProtocolError("extent %d+%d outside disk of %d bytes" % (offset, length, self.size))
        if offset % self.block_size or ((offset + length) % self.block_size and offset + length != self.size):
            raise ProtocolError("extent %d+%d not aligned to block size %d" % (offset, length, self.block_size))

    def digest(self):
        if self.pos != self.size:
            raise ProtocolError("disk digest asked at %d of %d bytes" % (self.pos, self.size))
        return self._h.digest()


# --------------------------------------------------------------- extents


class Extent:
    """A run of all-zero or data blocks of a buffer (data: a view and each block's digest)."""

    __slots__ = ("offset", "length", "zero", "data", "digests")

    def __init__(self, offset, length, zero, data=None, digests=None):
        self.offset = offset
        self.length = length
        self.zero = zero
        self.data = data
        self.digests = digests if digests is not None else []

    @property
    def end(self):
        return self.offset + self.length

    def __repr__(self):
        return "Extent(%d, %d, zero=%s)" % (self.offset, self.length, self.zero)


_ZERO_CACHE = {}


def _zeros(n):
    z = _ZERO_CACHE.get(n)
    if z is None:
        z = _ZERO_CACHE[n] = bytes(n)
    return z


def split_extents(buf, offset, block_size, skip_zero=True):
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
    out = []
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


# ------------------------------------------------------------- held disks


def capture_names(local, held):
    """local: this agent's disk names; held: READY's held disks, {name in the capture: this agent's
    name for that disk (HeldDisk.agent_name, else the same)}. -> {local name: the name its DISK
    carries in this capture}.

    The kernel names disks in the order it finds them: the disk the server's own OS called sda
    may be sdb under the ISO. A held disk keeps the capture's name (its image, its journal, the
    manifest); any other disk its own, unless that is a held disk's name, then with a suffix."""
    mine = dict((a or h, h) for h, a in held.items())
    out = {}
    for n in local:
        if n in mine:
            out[n] = mine[n]
    taken = set(held) | set(out.values())
    for n in local:
        if n in out:
            continue
        name, k = n, 2
        while name in taken:
            name, k = "%s-%d" % (n, k), k + 1
        out[n] = name
        taken.add(name)
    return out


# ------------------------------------------------------------- held maps


def grid_for(size, block_size):
    """The held map's segment size for a disk: the block size, or the least power-of-two multiple
    of it that keeps the map within MAX_GRID_SEGMENTS segments."""
    grid = block_size
    while -(-size // grid) > MAX_GRID_SEGMENTS:
        grid *= 2
    return grid


def segment_digest(digests):
    """A held-map entry: sha256 over the block digests of one grid segment (one definition for the
    receiver's map and the agent's comparison)."""
    return hashlib.sha256(b"".join(digests)).digest()


class HeldMap:
    """What a receiver holds of a disk, as one digest per `grid` bytes (READY's held map)."""

    def __init__(self, size, block_size, grid, digests):
        if grid % block_size or grid < block_size:
            raise ProtocolError("held map grid %d is not a multiple of the block size %d" % (grid, block_size))
        n = -(-size // grid)
        if len(digests) != 32 * n:
            raise ProtocolError("held map of %d bytes for %d segments of a %d-byte disk"
                                % (len(digests), n, size))
        self.size = size
        self.block_size = block_size
        self.grid = grid
        self.digests = digests

    def digest(self, index):
        return self.digests[32 * index:32 * index + 32]


class Same:
    """A range the receiver already holds as the source has it (a SAME record): data blocks with
    their digests, or (zero=True) all-zero blocks, whose digests are a constant."""

    __slots__ = ("offset", "length", "digests", "zero")
    same = True

    def __init__(self, offset, length, digests=None, zero=False):
        self.offset = offset
        self.length = length
        self.digests = digests if digests is not None else []
        self.zero = zero

    @property
    def end(self):
        return self.offset + self.length

    def digest(self, block_size):
        """The SAME record's digest: sha256 over the range's block digests (record_digest)."""
        if not self.zero:
            return record_digest(self.digests)
        h = hashlib.sha256()
        for batch in zero_digest_batches(self.length, block_size):
            h.update(batch)
        return h.digest()

    def feed(self, tree):
        """Into the sender's whole-disk digest."""
        if self.zero:
            tree.add_zero(self.offset, self.length)
        else:
            tree.add_digests(self.offset, self.length, self.digests)

    def encode(self, block_size):
        return encode_same(self.offset, self.length, self.digest(block_size))


def delta_extents(extents, held, block_size):
    """Split a chunk's extents (in disk order, block-aligned) against a held map: every grid
    segment wholly inside one extent whose source digest is the held one becomes part of a Same
    run; the rest stays a zero or data Extent (slices of the given ones). Segments that straddle
    two extents are sent (rare: extents of mode=used's plan are block-aligned, and the grid is the
    block size on disks up to 256 GiB)."""
    grid = held.grid
    per = grid // block_size
    out = []

    def emit(item):
        last = out[-1] if out else None
        if isinstance(item, Same) and isinstance(last, Same) and last.end == item.offset \
                and last.zero == item.zero and last.length + item.length <= MAX_SAME:
            last.length += item.length
            last.digests.extend(item.digests)
        elif isinstance(item, Extent) and isinstance(last, Extent) and last.zero and item.zero \
                and last.end == item.offset:
            last.length += item.length
        else:
            out.append(item)

    for ext in extents:
        pos = ext.offset
        end = ext.end
        while pos < end:
            seg = pos // grid
            seg_start = seg * grid
            seg_end = min(seg_start + grid, held.size)
            if seg_start == pos and seg_end <= end:
                first = (pos - ext.offset) // block_size
                if ext.zero:
                    digests = zero_digests(pos, seg_end - pos, block_size)
                else:
                    digests = ext.digests[first:first + per]
                if segment_digest(digests) == held.digest(seg):
                    emit(Same(pos, seg_end - pos, None if ext.zero else list(digests), zero=ext.zero))
                    pos = seg_end
                    continue
                stop = seg_end
            else:
                stop = min(end, seg_start + grid)
            emit(_slice(ext, pos, stop, block_size))
            pos = stop
    return out


def _slice(ext, start, stop, block_size):
    if ext.zero:
        return Extent(start, stop - start, True)
    a = (start - ext.offset) // block_size
    b = -(-(stop - ext.offset) // block_size)
    lo = start - ext.offset
    return Extent(start, stop - start, False, ext.data[lo:lo + stop - start], ext.digests[a:b])


# ------------------------------------------------------------------- JSON


def dumps(obj, **kw):
    """json.dumps as everything in coldclone writes it (wire, manifest, failure records)."""
    return json.dumps(obj, allow_nan=False, **kw)


# ----------------------------------------------------------------- encode


def preamble():
    return PREAMBLE.pack(MAGIC, VERSION, 0)


def frame(rtype, body):
    return FRAME.pack(rtype, len(body)) + body


def encode_json(rtype, obj):
    return frame(rtype, dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def encode_data(offset, length, codec, digest, payload):
    head = DATA_HEAD.pack(offset, length, codec, digest)
    return FRAME.pack(T_DATA, len(head) + len(payload)) + head + payload


def encode_zero(offset, length):
    return frame(T_ZERO, ZERO_BODY.pack(offset, length))


def encode_unreadable(offset, length):
    return frame(T_UNREADABLE, UNREADABLE_BODY.pack(offset, length))


def encode_same(offset, length, digest):
    return frame(T_SAME, SAME_BODY.pack(offset, length, digest))


def encode_end(digest, stats):
    return frame(T_END, digest + dumps(stats, sort_keys=True).encode())


def encode_finish():
    return encode_json(T_FINISH, {})


def zlib_payload(data):
    """The sync file's compression: (codec, payload); incompressible data goes as it is."""
    out = zlib.compress(bytes(data), 1)
    if len(out) >= len(data):
        return CODEC_NONE, bytes(data)
    return CODEC_ZLIB, out
