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

Within a disk, DATA and ZERO records cover [0, size) exactly, in order, and
are aligned to the disk's block_size (except at the very end of the disk).

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
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

MAGIC = b"COLDCLN\x00"
VERSION = 1
PREAMBLE = struct.Struct(">8sHH")  # magic, version, flags (reserved, 0)

T_HELLO, T_DISK, T_DATA, T_ZERO, T_END, T_FINISH, T_ABORT = range(1, 8)
TYPE_NAMES = {
    T_HELLO: "HELLO", T_DISK: "DISK", T_DATA: "DATA", T_ZERO: "ZERO",
    T_END: "END", T_FINISH: "FINISH", T_ABORT: "ABORT",
}

FRAME = struct.Struct(">BI")
DATA_HEAD = struct.Struct(">QIB32s")
ZERO_BODY = struct.Struct(">QQ")

CODEC_NONE = 0
CODEC_ZSTD = 1
CODEC_NAMES = {CODEC_NONE: "none", CODEC_ZSTD: "zstd"}

# Bounds a receiver enforces before allocating anything: a corrupt length
# field must produce a clear error, not a 4 GiB allocation.
MAX_JSON = 1 << 20
MAX_DATA = 64 << 20
DEFAULT_BLOCK_SIZE = 64 << 10
DEFAULT_CHUNK_SIZE = 4 << 20

DIGEST_ALGO = "sha256-blocktree-v1"


class ProtocolError(Exception):
    """The stream is malformed (truncated, corrupt framing, out-of-order records)."""


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

    def add_digests(self, offset: int, length: int, digests: list[bytes]) -> None:
        self._expect(offset, length)
        if len(digests) != -(-length // self.block_size):
            raise ProtocolError(f"extent {offset}+{length} has {len(digests)} block digests")
        self._h.update(b"".join(digests))
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
            self._h.update(z * k)
            n_full -= k
        if tail:
            self._h.update(zero_block_digest(tail))
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
        off = 0
        while off < size:
            end = min(off + chunk, size)
            try:
                data_at = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole from here on; EINVAL: no SEEK_DATA here
                data_at = size if os.path.isfile(path) else off
            hole_end = min(data_at - data_at % block_size, size)
            if hole_end > off:
                tree.add_zero(off, hole_end - off)
                off = hole_end
                continue
            buf = os.pread(fd, end - off, off)
            if len(buf) != end - off:
                raise OSError(f"short read of {path} at byte {off}")
            for ext in split_extents(buf, off, block_size):
                if ext.zero:
                    tree.add_zero(ext.offset, ext.length)
                else:
                    tree.add_digests(ext.offset, ext.length, ext.digests)
            off = end
        return tree.digest().hex()
    finally:
        os.close(fd)


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


# ----------------------------------------------------------------- encode


def preamble() -> bytes:
    return PREAMBLE.pack(MAGIC, VERSION, 0)


def frame(rtype: int, body: bytes) -> bytes:
    return FRAME.pack(rtype, len(body)) + body


def encode_json(rtype: int, obj: dict) -> bytes:
    return frame(rtype, json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def encode_data(offset: int, length: int, codec: int, digest: bytes, payload: bytes) -> bytes:
    head = DATA_HEAD.pack(offset, length, codec, digest)
    return FRAME.pack(T_DATA, len(head) + len(payload)) + head + payload


def encode_zero(offset: int, length: int) -> bytes:
    return frame(T_ZERO, ZERO_BODY.pack(offset, length))


def encode_end(digest: bytes, stats: dict) -> bytes:
    return frame(T_END, digest + json.dumps(stats, sort_keys=True).encode())


# ----------------------------------------------------------------- decode


@dataclass
class Record:
    type: int
    # JSON records
    meta: dict | None = None
    # DATA / ZERO
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
                raise ProtocolError(
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
        magic, version, _flags = PREAMBLE.unpack(self._read(PREAMBLE.size, "preamble"))
        if magic != MAGIC:
            raise ProtocolError(f"not a coldclone stream (magic {magic!r})")
        if version != VERSION:
            raise ProtocolError(
                f"protocol version {version} from the agent, this receiver speaks {VERSION}: "
                f"use matching coldclone versions on both ends"
            )
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
        try:
            meta = json.loads(body) if body else {}
        except ValueError as e:
            raise ProtocolError(f"{TYPE_NAMES[rtype]} record is not valid JSON: {e}") from None
        if not isinstance(meta, dict):
            raise ProtocolError(f"{TYPE_NAMES[rtype]} record is not a JSON object")
        return Record(rtype, meta=meta, digest=digest, wire_bytes=self.consumed - start)

    def __iter__(self) -> Iterator[Record]:
        while True:
            yield self.read()


# ---------------------------------------------------------------- replies
# The receiver's answers: one JSON object per line on its stdout.


def reply(event: str, **fields) -> bytes:
    return (json.dumps({"event": event, **fields}, sort_keys=True) + "\n").encode()


def parse_reply(line: bytes) -> dict:
    try:
        obj = json.loads(line)
    except ValueError:
        return {"event": "noise", "text": line.decode(errors="replace").strip()}
    return obj if isinstance(obj, dict) else {"event": "noise", "text": str(obj)}
