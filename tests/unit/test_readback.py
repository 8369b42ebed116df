"""The read-back digest follows the writes (receive/readback.py): the same digest as hashing the
finished file, a wrong byte on the server's disk caught at END, and a failure that loses nothing."""

import io
import json
import os
import subprocess
import threading
import time

import pytest

from agent import protocol as P
from agent.server.receive import readback as R
from agent.server.receive.disk_image import Qcow2Image, RawImage, discard_from, stored
from agent.server.receive.receiver import Receiver
from tests.streams import capture_stream

BS = P.DEFAULT_BLOCK_SIZE
MiB = 1 << 20


def disk_bytes(size: int, seed: int = 7) -> bytes:
    """Data with zero runs (holes in the image) between random blocks."""
    rnd = bytearray(os.urandom(size))
    for off in range(0, size, 5 * BS):
        rnd[off:off + 2 * BS] = bytes(len(rnd[off:off + 2 * BS]))
    return bytes(rnd)


def write_following(tmp_path, data: bytes, step: int, monkeypatch, read_step: int = 4 * MiB):
    """Write data into a sparse file in steps, telling a Readback after each, as the receiver does."""
    monkeypatch.setattr(R, "STEP", read_step)
    path = str(tmp_path / "sda.raw")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, len(data))
    rb = R.Readback(RawImage(os.dup(fd), path), path, len(data), BS)
    for off in range(0, len(data), step):
        chunk = data[off:off + step]
        if any(chunk):
            os.pwrite(fd, chunk, off)
        rb.written(min(off + step, len(data)))
    return fd, path, rb


def test_the_digest_is_the_finished_files_digest(tmp_path, monkeypatch):
    data = disk_bytes(24 * MiB + 3 * BS + 512)    # a short last block
    fd, path, rb = write_following(tmp_path, data, 3 * MiB, monkeypatch)
    try:
        assert rb.digest() == P.digest_file(path, BS)
    finally:
        rb.close()
        os.close(fd)


def test_it_reads_while_the_stream_runs_not_only_at_the_end(tmp_path, monkeypatch):
    data = disk_bytes(32 * MiB)
    fd, path, rb = write_following(tmp_path, data[:24 * MiB] + bytes(8 * MiB), 4 * MiB, monkeypatch)
    try:
        t_end = time.monotonic() + 10
        while rb._tree.pos < 16 * MiB and time.monotonic() < t_end:
            time.sleep(0.01)
        # everything written so far but the last step is read back before END
        assert rb._tree.pos >= 16 * MiB
    finally:
        rb.close()
        os.close(fd)


def test_a_byte_the_server_stored_wrong_is_caught_at_end(tmp_path, monkeypatch):
    """What the receiver hashed on arrival is right; the file holds one byte else (a stray write,
    a bad disk): the read-back disagrees with the stream's digest, and the receiver refuses."""
    data = disk_bytes(8 * MiB)
    real_pwrite = Qcow2Image.pwrite

    wrong = 5 * MiB + 3 * BS + 100      # in a block of random data (zero runs are every 5 blocks)

    def bad_pwrite(self, buf, off):
        # the qcow2 stores what it was given, then one byte of it changes under qemu
        real_pwrite(self, buf, off)
        if off <= wrong < off + len(buf):
            real_pwrite(self, bytes([buf[wrong - off] ^ 0xFF]), wrong)

    monkeypatch.setattr(Qcow2Image, "pwrite", bad_pwrite)
    out = io.BytesIO()
    root = str(tmp_path / "rx")
    os.mkdir(root)
    status = Receiver(root, out).run(io.BytesIO(capture_stream("bad", {"sda": data})))
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    errors = [r for r in replies if r["event"] == "error"]
    assert status != 0 and errors, replies
    assert errors[0]["code"] == "io"
    assert "read back" in errors[0]["message"] and "does not match what was received" in errors[0]["message"]
    assert not any(r["event"] == "disk_ok" for r in replies)
    assert not os.path.exists(os.path.join(root, "bad", "sda.qcow2"))
    assert json.load(open(os.path.join(root, "bad.partial", "failure.json")))["code"] == "io"


def test_a_good_capture_is_verified_with_the_followed_read_back(tmp_path):
    data = disk_bytes(6 * MiB + BS)
    out = io.BytesIO()
    root = str(tmp_path / "rx")
    os.mkdir(root)
    assert Receiver(root, out).run(io.BytesIO(capture_stream("good", {"sda": data, "sdb": data[::-1]}))) == 0
    m = json.load(open(os.path.join(root, "good", "manifest.json")))
    assert [d["verified"]["readback_digest"] for d in m["disks"]] == [True, True]
    assert not [t for t in threading.enumerate() if t.name == "cc-readback"]


def test_a_read_error_is_the_digests_error(tmp_path, monkeypatch):
    """An EIO of the server's disk while reading back comes out of digest(), as the read-back
    after END raised it (the receiver names it as an I/O error of the server)."""
    def eio(*a, **k):
        raise OSError(5, "Input/output error")
    data = disk_bytes(8 * MiB)
    monkeypatch.setattr(R.P, "feed_range", eio)
    fd, path, rb = write_following(tmp_path, data, 2 * MiB, monkeypatch, read_step=2 * MiB)
    try:
        with pytest.raises(OSError, match="Input/output error"):
            rb.digest()
    finally:
        rb.close()
        os.close(fd)


def test_close_mid_stream_ends_the_thread_promptly(tmp_path, monkeypatch):
    data = disk_bytes(64 * MiB)
    fd, path, rb = write_following(tmp_path, data, 8 * MiB, monkeypatch, read_step=1 * MiB)
    t = time.monotonic()
    rb.close()
    os.close(fd)
    assert time.monotonic() - t < 5
    assert not [t for t in threading.enumerate() if t.name == "cc-readback"]


def test_a_qcow2s_unallocated_clusters_are_skipped_and_digest_as_zeros(tmp_path):
    """The read-back asks qemu's block status (libnbd, base:allocation) where data is, so a
    mostly empty qcow2 is not read in full; what it skips digests exactly as reading it would."""
    MiB = 1 << 20
    size = 64 * MiB
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    img = Qcow2Image.create(str(tmp_path), fd, "sda.qcow2", size)
    try:
        blob = os.urandom(MiB)
        img.pwrite(blob, 32 * MiB)
        img.write_zeroes(40 * MiB, MiB)          # zeroed: unallocated, reported as zeros
        img.flush()
        r = img.reader()
        assert r.data_at(0, size) == 32 * MiB        # the first 32 MiB are skipped
        assert r.data_at(32 * MiB + 4096, size) == 32 * MiB + 4096
        assert r.data_at(33 * MiB, size) == size     # nothing stored after the data
        skipped = P.BlockTree(size, P.DEFAULT_BLOCK_SIZE)
        P.feed_range(-1, skipped, size, is_file=True, reader=r)
        read_all = P.BlockTree(size, P.DEFAULT_BLOCK_SIZE)     # every byte read through qemu
        P.feed_range(-1, read_all, size, is_file=True,
                     reader=type("All", (), {"data_at": staticmethod(lambda o, s: o), "pread": r.pread})())
        zeros = P.BlockTree(size, P.DEFAULT_BLOCK_SIZE)
        zeros.add_zero(0, size)
        assert skipped.digest() == read_all.digest() != zeros.digest()
    finally:
        img.close()
        os.close(fd)


def test_a_resumes_discard_zeroes_exactly_the_qcow2s_stored_ranges_past_the_checkpoint(tmp_path):
    """What a killed receiver wrote past its checkpoint is found by the same block status as the
    read-back's (data_at / data_end) and unallocated; before it, nothing is touched, and nothing
    unallocated gets metadata (qemu-img map, a second reader of the same image, agrees)."""
    size = 64 * MiB
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    img = Qcow2Image.create(str(tmp_path), fd, "sda.qcow2", size)
    try:
        kept, late_a, late_b = os.urandom(2 * MiB), os.urandom(MiB), os.urandom(3 * MiB)
        img.pwrite(kept, 4 * MiB)                 # before the checkpoint
        img.pwrite(late_a, 20 * MiB)              # after it
        img.pwrite(late_b, 40 * MiB)
        img.write_zeroes(41 * MiB, MiB)           # a zeroed hole inside the last range
        img.flush()
        assert stored(img, 0, size) == [(4 * MiB, 6 * MiB), (20 * MiB, 21 * MiB), (40 * MiB, 41 * MiB),
                                         (42 * MiB, 43 * MiB)]
        assert stored(img, 5 * MiB, size) == [(5 * MiB, 6 * MiB), (20 * MiB, 21 * MiB), (40 * MiB, 41 * MiB),
                                               (42 * MiB, 43 * MiB)]
        discard_from(img, 16 * MiB, size)
        img.flush()
        assert stored(img, 0, size) == [(4 * MiB, 6 * MiB)]
        assert img.pread(2 * MiB, 4 * MiB) == kept
        assert img.pread(size - 8 * MiB, 8 * MiB) == bytes(size - 8 * MiB)
    finally:
        img.close()
        os.close(fd)
    out = subprocess.run(["qemu-img", "map", "--output=json", str(tmp_path / "sda.qcow2")],
                         capture_output=True, text=True, check=True).stdout
    data = [(e["start"], e["start"] + e["length"]) for e in json.loads(out) if e["data"] and not e["zero"]]
    assert data == [(4 * MiB, 6 * MiB)]
