"""The wire format: encode/decode round trips, digests, and malformed streams."""

import io
import os
import random

import pytest
from hypothesis import given, settings, strategies as st

from agent import protocol as P

BS = 4096


def encode_disk(data: bytes, block_size=BS, skip_zero=True, compress=None) -> tuple[bytes, bytes]:
    """Encode one disk's body records as the agent does; return (stream bytes, disk digest)."""
    tree = P.BlockTree(len(data), block_size)
    out = []
    for ext in P.split_extents(data, 0, block_size, skip_zero=skip_zero):
        if ext.zero:
            out.append(P.encode_zero(ext.offset, ext.length))
            tree.add_zero(ext.offset, ext.length)
        else:
            payload = bytes(ext.data) if compress is None else compress(bytes(ext.data))
            codec = P.CODEC_NONE if compress is None else P.CODEC_ZSTD
            out.append(P.encode_data(ext.offset, ext.length, codec, P.record_digest(ext.digests), payload))
            tree.add_digests(ext.offset, ext.length, ext.digests)
    return b"".join(out), tree.digest()


def decode_disk(stream: bytes, size: int, block_size=BS) -> tuple[bytes, bytes]:
    """Decode body records back into bytes, verifying as the receiver does."""
    import zstandard

    r = P.Reader(io.BytesIO(stream))
    img = bytearray(size)
    tree = P.BlockTree(size, block_size)
    while tree.pos < size:
        rec = r.read()
        if rec.type == P.T_ZERO:
            tree.add_zero(rec.offset, rec.length)
        else:
            assert rec.type == P.T_DATA
            data = rec.payload if rec.codec == P.CODEC_NONE else zstandard.ZstdDecompressor().decompress(rec.payload)
            digests = P.block_digests(data, block_size)
            assert P.record_digest(digests) == rec.digest
            tree.add_digests(rec.offset, rec.length, digests)
            img[rec.offset:rec.offset + rec.length] = data
    assert r.consumed == len(stream)
    return bytes(img), tree.digest()


# Random disks: a size (not always block aligned) and random extents of data.
disk_strategy = st.integers(min_value=1, max_value=40 * BS + 511).flatmap(
    lambda size: st.tuples(
        st.just(size),
        st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 3 * BS), st.integers(1, 255)), max_size=8),
    )
)


def build(size, extents):
    buf = bytearray(size)
    for off, length, val in extents:
        end = min(size, off + length)
        buf[off:end] = bytes([val]) * (end - off)
    return bytes(buf)


@settings(max_examples=200, deadline=None)
@given(disk_strategy)
def test_round_trip_random_extents(disk):
    data = build(*disk)
    stream, digest = encode_disk(data)
    back, digest2 = decode_disk(stream, len(data))
    assert back == data
    assert digest == digest2


@settings(max_examples=100, deadline=None)
@given(disk_strategy)
def test_disk_digest_independent_of_plan(disk):
    """full mode (every block as DATA) and non-zero mode give the same disk digest."""
    data = build(*disk)
    _, d_nonzero = encode_disk(data, skip_zero=True)
    _, d_full = encode_disk(data, skip_zero=False)
    assert d_nonzero == d_full


@settings(max_examples=50, deadline=None)
@given(disk_strategy)
def test_round_trip_zstd(disk):
    import zstandard

    data = build(*disk)
    stream, digest = encode_disk(data, compress=zstandard.ZstdCompressor(level=1).compress)
    back, digest2 = decode_disk(stream, len(data))
    assert back == data and digest == digest2


def test_digest_file_matches_stream_digest(tmp_path):
    rnd = random.Random(7)
    size = 300 * BS + 100
    data = bytearray(size)
    for _ in range(20):
        off = rnd.randrange(size)
        data[off:off + 5000] = rnd.randbytes(min(5000, size - off))
    p = tmp_path / "img"
    p.write_bytes(bytes(data))
    _, digest = encode_disk(bytes(data))
    assert P.digest_file(str(p), BS, chunk=16 * BS) == digest.hex()


def test_digest_file_sparse_holes_taken_as_zeros(tmp_path):
    """A sparse file's holes are not read, and the digest equals the dense file's."""
    p = tmp_path / "sparse"
    with open(p, "wb") as f:
        f.truncate(64 << 20)
        f.seek(10 << 20)
        f.write(b"x" * 70000)
    dense = tmp_path / "dense"
    dense.write_bytes(p.read_bytes())
    assert os.stat(p).st_blocks * 512 < 1 << 20
    assert P.digest_file(str(p)) == P.digest_file(str(dense))


def test_huge_sparse_disk_digest_from_constants(tmp_path):
    """64 GiB, one data block at the very end: the tree built from zero-block
    constants equals the digest of the real (sparse) file, short last block included."""
    size = (64 << 30) + 12345
    tail = b"end of disk" * 100
    p = tmp_path / "huge"
    with open(p, "wb") as f:
        f.truncate(size)
        f.seek(size - len(tail))
        f.write(tail)
    bs = P.DEFAULT_BLOCK_SIZE
    last = size - size % bs
    tree = P.BlockTree(size, bs)
    tree.add_zero(0, last)
    block = bytes(size - last - len(tail)) + tail
    tree.add_digests(last, size - last, P.block_digests(block, bs))
    assert P.digest_file(str(p)) == tree.digest().hex()


def test_flipped_byte_detected():
    data = os.urandom(8 * BS)
    stream, _ = encode_disk(data)
    bad = bytearray(stream)
    bad[-10] ^= 0x01
    r = P.Reader(io.BytesIO(bytes(bad)))
    rec = r.read()
    assert P.record_digest(P.block_digests(rec.payload, BS)) != rec.digest


def test_truncated_stream_names_what_is_missing():
    data = os.urandom(4 * BS)
    stream, _ = encode_disk(data)
    r = P.Reader(io.BytesIO(stream[: len(stream) // 2]))
    with pytest.raises(P.ProtocolError, match="truncated.*DATA payload at disk offset 0"):
        r.read()


def test_gap_and_overlap_and_misalignment_refused():
    tree = P.BlockTree(10 * BS, BS)
    with pytest.raises(P.ProtocolError, match="expected 0"):
        tree.add_zero(BS, BS)
    tree.add_zero(0, BS)
    with pytest.raises(P.ProtocolError, match="not aligned"):
        tree.add_zero(BS, 100)
    with pytest.raises(P.ProtocolError, match="outside disk"):
        tree.add_zero(BS, 20 * BS)
    with pytest.raises(P.ProtocolError, match="digest asked"):
        tree.digest()


@pytest.mark.parametrize("blob,match", [
    (b"NOTCOLD\x00\x00\x01\x00\x00", "not a coldclone stream"),
    (P.PREAMBLE.pack(P.MAGIC, 99, 0), "protocol version 99"),
])
def test_bad_preamble(blob, match):
    with pytest.raises(P.ProtocolError, match=match):
        P.Reader(io.BytesIO(blob)).read_preamble()


def test_absurd_lengths_refused_before_allocation():
    with pytest.raises(P.ProtocolError, match="corrupt"):
        P.Reader(io.BytesIO(P.FRAME.pack(P.T_DATA, 0xFFFFFFFF))).read()
    with pytest.raises(P.ProtocolError, match="unknown record type"):
        P.Reader(io.BytesIO(P.FRAME.pack(42, 0))).read()
    with pytest.raises(P.ProtocolError, match="not valid JSON"):
        P.Reader(io.BytesIO(P.frame(P.T_HELLO, b"{nope"))).read()


def test_json_records_round_trip():
    hello = {"capture_id": "x-1", "disks": ["sda"], "format": "qcow2"}
    end_stats = {"bytes_read": 5}
    blob = P.encode_json(P.T_HELLO, hello) + P.encode_end(b"\x07" * 32, end_stats) + P.encode_json(P.T_FINISH, {})
    r = P.Reader(io.BytesIO(blob))
    a, b, c = r.read(), r.read(), r.read()
    assert (a.type, a.meta) == (P.T_HELLO, hello)
    assert (b.type, b.digest, b.meta) == (P.T_END, b"\x07" * 32, end_stats)
    assert c.type == P.T_FINISH
    assert r.consumed == len(blob)
