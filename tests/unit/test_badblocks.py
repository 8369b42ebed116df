"""Unreadable sectors: the retry/split logic on a real file that fails like a disk, and the
UNREADABLE record through the real receiver."""

import errno
import json
import os
import random

import pytest

from agent import protocol as P
from agent.source.capture.badblocks import BadRange, MediumError, ReadRecovery, read_exact
from agent.errors import SourceError
from tests.streams import disk_records
from tests.testbed.receiver import run_receiver

KiB, MiB = 1 << 10, 1 << 20
SECTOR = 512


class FailingFile:
    """A real file read the way the kernel reads a disk with bad sectors: a read that starts on a
    bad sector fails with EIO (ENODATA when asked), one that reaches a bad sector stops short
    before it (as a buffered read returns the bytes before the failing page). A `flaky` sector
    fails every read until it has been read on its own `flaky` times (a marginal sector the
    drive gets on a later try)."""

    def __init__(self, path: str, bad: set[int], flaky: dict[int, int] | None = None, err=errno.EIO):
        self.fd = os.open(path, os.O_RDONLY)
        self.bad = set(bad)
        self.flaky = dict(flaky or {})
        self.err = err
        self.reads = 0

    def _failing(self, sector: int) -> bool:
        if sector in self.bad:
            return True
        if self.flaky.get(sector, 0) > 0:
            return True
        return False

    def __call__(self, length: int, offset: int) -> bytes:
        self.reads += 1
        first, last = offset // SECTOR, (offset + length - 1) // SECTOR
        for s in range(first, last + 1):
            if self._failing(s):
                if s in self.flaky and length == SECTOR:
                    self.flaky[s] -= 1
                if s == first:
                    raise OSError(self.err, os.strerror(self.err))
                return os.pread(self.fd, (s - first) * SECTOR, offset)
        return os.pread(self.fd, length, offset)

    def close(self):
        os.close(self.fd)


@pytest.fixture
def disk(tmp_path):
    data = random.Random(14).randbytes(4 * MiB)
    path = tmp_path / "disk.img"
    path.write_bytes(data)
    return str(path), data


def expected(data: bytes, bad: set[int]) -> bytes:
    out = bytearray(data)
    for s in bad:
        out[s * SECTOR:(s + 1) * SECTOR] = bytes(SECTOR)
    return bytes(out)


def test_read_exact_stops_at_the_bad_sector(disk):
    path, data = disk
    f = FailingFile(path, {1000})
    with pytest.raises(MediumError) as e:
        read_exact(f, 0, 4 * MiB, path)
    # the short read is followed up, so the error names the bad sector's own byte
    assert e.value.offset == 1000 * SECTOR
    assert e.value.data == data[:1000 * SECTOR]


def test_recovery_maps_exactly_the_bad_sectors(disk):
    path, data = disk
    bad = {7, 8, 9, 10, 1000, 4095, 4096, 8191}     # runs, singles, a 64 KiB piece boundary, the end
    f = FailingFile(path, bad)
    rec = ReadRecovery(f, SECTOR, path)
    buf, ranges = rec.read(0, 4 * MiB)
    assert buf == expected(data, bad)
    assert ranges == [BadRange(7 * SECTOR, 4 * SECTOR), BadRange(1000 * SECTOR, SECTOR),
                      BadRange(4095 * SECTOR, 2 * SECTOR), BadRange(8191 * SECTOR, SECTOR)]
    assert sum(r.sectors(SECTOR) for r in ranges) == len(bad)
    # good 64 KiB pieces are read once; a failing piece is halved down to its bad sectors (a
    # few reads per level, 7 levels from 64 KiB to 512 bytes), each bad sector tried
    # 1 + SECTOR_RETRIES times: far fewer than 128 sector reads per failing piece
    failing_pieces = {s * SECTOR // (64 * KiB) for s in bad}
    assert f.reads <= 64 + len(failing_pieces) * 2 * 7 * 2 + len(bad) * 3
    f.close()


def test_recovery_of_a_sub_range_and_enodata(disk):
    path, data = disk
    f = FailingFile(path, {2050, 2051}, err=errno.ENODATA)
    buf, ranges = ReadRecovery(f, SECTOR, path).read(1 * MiB, 128 * KiB)
    assert buf == expected(data, {2050, 2051})[1 * MiB:1 * MiB + 128 * KiB]
    assert ranges == [BadRange(2050 * SECTOR, 2 * SECTOR)]


def test_a_sector_that_reads_on_retry_is_not_mapped(disk):
    path, data = disk
    f = FailingFile(path, set(), flaky={300: 2})       # reads on the third try: 1 + 2 retries
    buf, ranges = ReadRecovery(f, SECTOR, path, retries=2).read(0, 1 * MiB)
    assert buf == data[:1 * MiB] and ranges == []
    f2 = FailingFile(path, set(), flaky={300: 3})
    buf, ranges = ReadRecovery(f2, SECTOR, path, retries=2).read(0, 1 * MiB)
    assert ranges == [BadRange(300 * SECTOR, SECTOR)]


def test_time_budget_bounds_a_dying_disk(disk):
    """Every read costs 1 s on this disk; after the budget failing pieces are mapped whole."""
    path, data = disk
    bad = set(range(0, 8192, 64))        # a bad sector in every 32 KiB: every piece fails
    f = FailingFile(path, bad)
    clock = {"t": 0.0}

    def slow(length, offset):
        clock["t"] += 1.0
        return f(length, offset)

    rec = ReadRecovery(slow, SECTOR, path, budget_seconds=300, clock=lambda: clock["t"])
    buf, ranges = rec.read(0, 4 * MiB)
    assert rec.budget_spent_at is not None
    # bounded: the budget plus at most one piece's worth of reads past it
    assert rec.seconds <= 300 + 1 + 128 * 3
    assert f.reads < 1000            # sector by sector everywhere would be 64 x 128 x 3
    # every bad sector is inside a mapped range, and what was read is the disk's own bytes
    covered = {s for r in ranges for s in range(r.offset // SECTOR, r.end // SECTOR)}
    assert bad <= covered
    for s in range(8192):
        if s not in covered:
            assert buf[s * SECTOR:(s + 1) * SECTOR] == data[s * SECTOR:(s + 1) * SECTOR]
        else:
            assert buf[s * SECTOR:(s + 1) * SECTOR] == bytes(SECTOR)


def test_other_errors_and_the_end_of_the_device_stop(disk):
    path, _ = disk

    def gone(length, offset):
        raise OSError(errno.ENXIO, os.strerror(errno.ENXIO))

    with pytest.raises(SourceError, match="at byte 0 failed"):
        ReadRecovery(gone, SECTOR, path).read(0, 64 * KiB)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(SourceError, match="short read"):
            read_exact(lambda n, o: os.pread(fd, n, o), 4 * MiB - 512, 4096, path)
    finally:
        os.close(fd)


# ------------------------------------------------------------------- the receiver's end

def _stream(data: bytes, bad: list[tuple[int, int]], *, end_unreadable=None, sector=512) -> bytes:
    parts: list[bytes] = []
    w = P.StreamWriter(parts.append)
    w.hello(P.Hello(capture_id="bad-1", format="raw", agent_version="test", disks=("sda",)))
    w.disk(P.DiskHeader(name="sda", size=len(data), logical_sector_size=sector, mode="nonzero"))
    parts += [P.encode_unreadable(o, n) for o, n in bad]
    recs, digest = disk_records(data)
    parts += recs
    total = sum(n for _, n in bad)
    w.end(P.DiskEnd(digest, bytes_read=len(data),
                    unreadable_bytes=total if end_unreadable is None else end_unreadable))
    w.finish()
    return b"".join(parts)


def _zeroed(data: bytes, bad) -> bytes:
    out = bytearray(data)
    for o, n in bad:
        out[o:o + n] = bytes(n)
    return bytes(out)


def test_receiver_lists_unreadable_ranges(tmp_path):
    bad = [(4096, 1024), (5120, 512), (300 * KiB, 4096)]   # the first two touch: one range
    data = _zeroed(random.Random(1).randbytes(1 * MiB), bad)
    r = run_receiver(str(tmp_path), _stream(data, bad))
    assert r.returncode == 0, r.stderr
    m = json.load(open(tmp_path / "bad-1" / "manifest.json"))
    (d,) = m["disks"]
    assert d["unreadable"] == {"sector_size": 512, "sectors": 11, "bytes": 5632, "ranges": [
        {"start_sector": 8, "sectors": 3, "offset": 4096, "bytes": 1536},
        {"start_sector": 600, "sectors": 8, "offset": 300 * KiB, "bytes": 4096}]}
    assert m["totals"]["unreadable_sectors"] == 11
    assert open(tmp_path / "bad-1" / "sda.raw", "rb").read() == data
    assert d["digest"] == P.digest_file(str(tmp_path / "bad-1" / "sda.raw"))


def test_receiver_without_unreadable_lists_none(tmp_path):
    data = random.Random(2).randbytes(256 * KiB)
    r = run_receiver(str(tmp_path), _stream(data, []))
    assert r.returncode == 0, r.stderr
    m = json.load(open(tmp_path / "bad-1" / "manifest.json"))
    assert m["disks"][0]["unreadable"] == {"sector_size": 512, "sectors": 0, "bytes": 0, "ranges": []}
    assert m["totals"]["unreadable_sectors"] == 0


@pytest.mark.parametrize("bad,zero,end,what", [
    ([(4096, 1000)], True, None, "not aligned to its 512-byte sectors"),
    ([(8192, 512), (4096, 512)], True, None, "out of order"),
    ([(4096, 512)], False, None, "non-zero bytes in a range the agent declared unreadable"),
    ([(4096, 512)], True, 1024, "the agent counts 1024 unreadable bytes"),
])
def test_receiver_refuses_bad_unreadable_records(tmp_path, bad, zero, end, what):
    data = random.Random(3).randbytes(256 * KiB)
    if zero:
        data = _zeroed(data, bad)
    r = run_receiver(str(tmp_path), _stream(data, bad, end_unreadable=end))
    assert r.returncode == 1
    err = [x for x in r.replies if x.get("event") == "error"][-1]
    assert what in err["message"], err
    assert not os.path.exists(tmp_path / "bad-1")


def test_on_read_error_key_and_flag():
    from agent.choices import OnReadError
    from agent.source.config import CaptureConfig, from_cmdline
    from agent.errors import UsageError

    assert CaptureConfig().on_read_error == OnReadError.MAP
    cfg = from_cmdline("coldclone.server=file:///mnt/x coldclone.on_read_error=fail", baked_root="/nonexistent")
    assert cfg.on_read_error == OnReadError.FAIL
    with pytest.raises(UsageError, match=r"coldclone.on_read_error='skip' is not valid: use fail or map"):
        from_cmdline("coldclone.server=file:///mnt/x coldclone.on_read_error=skip", baked_root="/nonexistent")


def test_a_source_ending_inside_a_sector(tmp_path):
    """A regular file of 1000 bytes whose last (short) sector fails: mapped up to its end."""
    path = tmp_path / "odd.img"
    data = random.Random(5).randbytes(1000)
    path.write_bytes(data)
    f = FailingFile(str(path), {1})
    buf, ranges = ReadRecovery(f, SECTOR, str(path)).read(0, 1000)
    assert buf == data[:512] + bytes(488) and ranges == [BadRange(512, 488)]
    f.close()


def test_receiver_takes_an_unreadable_tail_shorter_than_a_sector(tmp_path):
    size = 128 * KiB + 1000
    bad = [(128 * KiB + 512, 488)]
    data = _zeroed(random.Random(6).randbytes(size), bad)
    r = run_receiver(str(tmp_path), _stream(data, bad))
    assert r.returncode == 0, r.stderr
    m = json.load(open(tmp_path / "bad-1" / "manifest.json"))
    assert m["disks"][0]["unreadable"]["ranges"] == [
        {"start_sector": 257, "sectors": 1, "offset": 128 * KiB + 512, "bytes": 488}]
    assert m["totals"]["unreadable_sectors"] == 1
