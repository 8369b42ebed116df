"""A source disk with real unreadable sectors (EIO from the kernel: tests/testbed/eio.py),
captured over the real sshd: mapped (the default) or refused (on_read_error=fail)."""

import errno
import json
import mmap
import os
import random

import pytest

from agent.source.capture.guard import get_ro
from agent.errors import EXIT_SOURCE, EXIT_UNREADABLE
from agent.runcmd import run
from tests.conftest import coldclone, ssh_args
from tests.testbed.eio import SECTOR, bad_disk

pytestmark = pytest.mark.root
MiB = 1 << 20
# 4 KiB blocks made unreadable: one alone, two adjacent across a 64 KiB piece boundary, one in a
# 4 MiB chunk of its own far on, and the disk's very last block.
BAD_BLOCKS = [257, 2575, 2576, 9000, 16383]


def readable_sectors(dev: str, size: int) -> tuple[bytes, list[int]]:
    """Every sector of the device read on its own (O_DIRECT): the bytes (zeros where a read
    fails) and the sectors that fail with EIO."""
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 1 * MiB)
    out, bad = bytearray(size), []
    try:
        for off in range(0, size, 1 * MiB):
            try:
                os.preadv(fd, [buf], off)
                out[off:off + MiB] = buf[:MiB]
                continue
            except OSError as e:
                assert e.errno == errno.EIO
            for s in range(off, off + MiB, SECTOR):
                try:
                    os.preadv(fd, [memoryview(buf)[:SECTOR]], s)
                    out[s:s + SECTOR] = buf[:SECTOR]
                except OSError as e:
                    assert e.errno == errno.EIO
                    bad.append(s // SECTOR)
    finally:
        os.close(fd)
        buf.close()
    return bytes(out), bad


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    content = random.Random(14).randbytes(64 * MiB)
    with bad_disk(str(tmp_path_factory.mktemp("eio")), content, BAD_BLOCKS) as d:
        # the testbed's own promise: real EIO exactly on those sectors, every other one reads
        got, bad = readable_sectors(d.dev, d.size)
        assert bad == list(d.bad_sectors)
        assert got == d.expected_image()
        yield d


def test_unreadable_sectors_are_mapped(sshd, rx_dir, disk, tmp_path):
    r = coldclone("capture", "--disk", disk.dev, *ssh_args(sshd, rx_dir), "--capture-id", "bad-1",
                  "--calibrate", "0", "--progress-interval", "0.5", timeout=600)
    assert r.returncode == EXIT_UNREADABLE, (r.returncode, r.stdout, r.stderr)
    n = len(disk.bad_sectors)
    assert f"verified with {n} unreadable sectors" in r.stdout
    assert "UNREADABLE" in r.stdout
    cap = os.path.join(rx_dir, "bad-1")
    m = json.load(open(os.path.join(cap, "manifest.json")))
    (d,) = m["disks"]
    # exactly the sectors the kernel refuses, as merged ranges
    listed = [s for rg in d["unreadable"]["ranges"]
              for s in range(rg["start_sector"], rg["start_sector"] + rg["sectors"])]
    assert listed == list(disk.bad_sectors)
    assert all(rg["bytes"] == rg["sectors"] * SECTOR and rg["offset"] == rg["start_sector"] * SECTOR
               for rg in d["unreadable"]["ranges"])
    assert len(d["unreadable"]["ranges"]) == 4            # 2575 and 2576 touch: one range
    assert d["unreadable"]["sectors"] == n and m["totals"]["unreadable_sectors"] == n
    assert d["agent"]["unreadable_bytes"] == n * SECTOR
    assert d["verified"]["qemu_img_check"] and d["verified"]["disk_digest"]
    # the image is the source byte for byte outside the bad sectors, zeros inside them
    expected = tmp_path / "expected.raw"
    expected.write_bytes(disk.expected_image())
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(expected),
         os.path.join(cap, os.path.basename(disk.dev) + ".qcow2")])
    # the source is unchanged: every sector that read before reads the same, the bad ones still fail
    got, bad = readable_sectors(disk.dev, disk.size)
    assert bad == list(disk.bad_sectors) and got == disk.expected_image()
    assert not get_ro(disk.dev)


def test_on_read_error_fail_names_the_sector(sshd, rx_dir, disk):
    r = coldclone("capture", "--disk", disk.dev, *ssh_args(sshd, rx_dir), "--capture-id", "bad-2",
                  "--calibrate", "0", "--on-read-error", "fail", timeout=600)
    assert r.returncode == EXIT_SOURCE, (r.returncode, r.stdout, r.stderr)
    first = disk.bad_sectors[0]
    assert f"read error on {disk.dev} at byte {first * SECTOR} (sector {first})" in r.stderr
    assert "on_read_error=map" in r.stderr
    assert not os.path.exists(os.path.join(rx_dir, "bad-2"))
    assert not get_ro(disk.dev)


def test_headless_default_maps_and_says_so(sshd, rx_dir, disk):
    from tests.integration.test_headless import headless, server_words

    name = os.path.basename(disk.dev)
    # calibrate: the estimate's read timing and content sampling meet the bad sectors too
    r = headless(server_words(sshd, rx_dir, disks=name, capture_id="hl-bad", calibrate="2"), timeout=600)
    n = len(disk.bad_sectors)
    assert r.returncode == EXIT_UNREADABLE, r.stdout + r.stderr
    assert f"COLDCLONE-HEADLESS-UNREADABLE exit=7 capture_id=hl-bad unreadable_sectors={n} " in r.stdout
    assert "COLDCLONE-HEADLESS-OK" not in r.stdout
    assert "coldclone: capture hl-bad complete in" in r.stdout
    assert f"verified with {n} unreadable sectors" in r.stdout
    assert "on_read_error=map" in r.stdout      # the configuration line says which policy ran
    m = json.load(open(os.path.join(rx_dir, "hl-bad", "manifest.json")))
    assert m["totals"]["unreadable_sectors"] == n
