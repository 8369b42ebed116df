"""Capture of real loop devices to a real sshd on 127.0.0.1 through the forced-command receiver."""

import errno
import json
import os
import random

import pytest

from agent import protocol as P
from agent.source.capture.guard import ReadOnlyGuard, get_ro
from agent.runcmd import run
from tests.testbed import synthdisk
from tests.testbed.loop import LoopDevice
from tests.conftest import coldclone, sha256_of, ssh_args

pytestmark = pytest.mark.root
MiB = 1 << 20


@pytest.fixture(scope="module")
def source_disk(tmp_path_factory):
    """A source server disk: GPT, /boot ext4, swap, root ext4 with real files and deleted remnants."""
    img = str(tmp_path_factory.mktemp("src") / "server.img")
    with synthdisk.on_loop(img, size=512 * MiB, table="gpt", files_mb=60, remnant_mb=16) as pair:
        yield pair


def test_capture_over_ssh_equals_source(sshd, rx_dir, source_disk):
    loop, sd = source_disk
    before = sha256_of(loop.dev)
    assert not get_ro(loop.dev)
    r = coldclone("capture", "--disk", loop.dev, *ssh_args(sshd, rx_dir), "--capture-id", "srv-1")
    assert r.returncode == 0, r.stderr
    cap = os.path.join(rx_dir, "srv-1")
    image = os.path.basename(loop.dev) + ".qcow2"
    assert sorted(os.listdir(cap)) == [image, "manifest.json"]
    qcow2 = os.path.join(cap, image)
    # The image is exactly the disk, and the disk is exactly as it was.
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", loop.dev, qcow2])
    assert sha256_of(loop.dev) == before
    assert not get_ro(loop.dev), "guard must restore the device's read-write state"
    m = json.load(open(os.path.join(cap, "manifest.json")))
    assert m["status"] == "complete" and m["capture_id"] == "srv-1"
    (disk,) = m["disks"]
    assert disk["size"] == sd.size
    assert disk["digest"] == P.digest_file(loop.dev)
    assert disk["verified"] == {"record_digests": True, "disk_digest": True, "readback_digest": True,
                                "qemu_img_check": True}
    rec = disk["received"]
    assert rec["data_bytes"] + rec["zero_bytes"] == sd.size
    # Real files and deleted remnants are data; most of the disk is zeros.
    assert rec["data_bytes"] >= sd.files_bytes * 0.9 + sd.remnant_bytes
    assert disk["agent"]["bytes_read"] == sd.size
    assert "complete" in r.stdout and "verified" in r.stdout


def test_guard_blocks_writes_while_on(source_disk):
    loop, _ = source_disk
    part = loop.parts[0]
    with ReadOnlyGuard([loop.dev]) as g:
        assert loop.dev in g.guarded and part in g.guarded
        for dev in (loop.dev, part):
            assert get_ro(dev)
            with pytest.raises(OSError) as e:
                fd = os.open(dev, os.O_WRONLY)
                try:
                    os.write(fd, b"\0" * 4096)
                finally:
                    os.close(fd)
            assert e.value.errno in (errno.EPERM, errno.EROFS, errno.EACCES)
    assert not get_ro(loop.dev) and not get_ro(part)


def test_one_capture_at_a_time_per_disk(source_disk, tmp_path):
    """A second guard on the same disk (another console's TUI) is refused by name, even through
    another path to the same device, and cannot spoil the first guard's restore."""
    from agent.errors import SourceError

    loop, _ = source_disk
    alias = tmp_path / "by-id-link"
    alias.symlink_to(loop.dev)
    with ReadOnlyGuard([loop.dev]):
        for path in (loop.dev, str(alias)):
            with pytest.raises(SourceError) as e:
                with ReadOnlyGuard([path]):
                    pass
            assert f"is being captured by another coldclone (pid {os.getpid()}" in str(e.value)
        assert get_ro(loop.dev)
    assert not get_ro(loop.dev) and not get_ro(loop.parts[0])
    with ReadOnlyGuard([loop.dev]):   # released: free again
        assert get_ro(loop.dev)
    assert not get_ro(loop.dev)


def test_guard_leaves_read_only_device_read_only(source_disk):
    loop, _ = source_disk
    from agent.source.capture.guard import set_ro

    set_ro(loop.dev, True)
    try:
        with ReadOnlyGuard([loop.dev]):
            pass
        assert get_ro(loop.dev)
    finally:
        set_ro(loop.dev, False)


def test_mostly_empty_2gib_disk_sends_only_what_was_written(sshd, rx_dir, tmp_path):
    """Known random regions in a 2 GiB disk: the manifest counts exactly the blocks they touch."""
    size = 2048 * MiB
    img = tmp_path / "empty.img"
    rnd = random.Random(42)
    regions = [(5 * MiB, 8 * MiB), (700 * MiB + 12345, 3 * MiB), (2047 * MiB, MiB - 4096), (1500 * MiB, 4096)]
    with open(img, "wb") as f:
        f.truncate(size)
        for off, n in regions:
            f.seek(off)
            f.write(rnd.randbytes(n))
    bs = P.DEFAULT_BLOCK_SIZE
    touched = set()
    for off, n in regions:
        touched.update(range(off // bs, (off + n - 1) // bs + 1))
    expect_data = len(touched) * bs
    with LoopDevice(str(img)) as loop:
        r = coldclone("capture", "--disk", loop.dev, *ssh_args(sshd, rx_dir), "--capture-id", "empty")
        assert r.returncode == 0, r.stderr
        cap = os.path.join(rx_dir, "empty")
        m = json.load(open(os.path.join(cap, "manifest.json")))
        run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", loop.dev, os.path.join(cap, m["disks"][0]["image"])])
    rec = m["disks"][0]["received"]
    assert rec["data_bytes"] == expect_data
    assert rec["zero_bytes"] == size - expect_data
    # Random data does not compress: it travels as it is, plus small framing.
    written = sum(n for _, n in regions)
    assert written <= rec["payload_bytes"] <= expect_data
    assert rec["wire_bytes"] < expect_data + 64 * 1024
    assert rec["wire_bytes"] < size / 100
    assert m["totals"]["stream_bytes"] < expect_data + 128 * 1024


def test_full_mode_sends_every_block_with_same_digest(sshd, rx_dir, source_disk):
    loop, sd = source_disk
    r = coldclone("capture", "--disk", loop.dev, *ssh_args(sshd, rx_dir), "--capture-id", "full",
                  "--mode", "full", "--compress", "none", "--format", "raw")
    assert r.returncode == 0, r.stderr
    m = json.load(open(os.path.join(rx_dir, "full", "manifest.json")))
    d = m["disks"][0]
    assert d["received"]["zero_bytes"] == 0 and d["received"]["data_bytes"] == sd.size
    assert d["received"]["payload_bytes"] == sd.size
    assert d["digest"] == P.digest_file(loop.dev)
    run(["cmp", loop.dev, os.path.join(rx_dir, "full", d["image"])])


def test_two_disks_in_one_capture(sshd, rx_dir, tmp_path, source_disk):
    loop, _ = source_disk
    img2 = tmp_path / "second.img"
    with open(img2, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(MiB)
        f.write(os.urandom(MiB))
    with LoopDevice(str(img2)) as loop2:
        r = coldclone("capture", "--disk", loop.dev, "--disk", loop2.dev, *ssh_args(sshd, rx_dir),
                      "--capture-id", "two")
        assert r.returncode == 0, r.stderr
        m = json.load(open(os.path.join(rx_dir, "two", "manifest.json")))
        assert [d["source"]["path"] for d in m["disks"]] == [loop.dev, loop2.dev]
        for d, dev in zip(m["disks"], (loop.dev, loop2.dev)):
            run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", dev, os.path.join(rx_dir, "two", d["image"])])


def test_rsa_identity_and_raw_format(sshd, rx_dir, tmp_path):
    img = tmp_path / "small.img"
    with open(img, "wb") as f:
        f.truncate(16 * MiB)
        f.seek(3 * MiB)
        f.write(os.urandom(2 * MiB))
    with LoopDevice(str(img)) as loop:
        r = coldclone("capture", "--disk", loop.dev, "--to", f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{rx_dir}",
                      "--identity", sshd.client_rsa_key, "--hostkey", sshd.fingerprint,
                      "--capture-id", "rsa", "--format", "raw")
        assert r.returncode == 0, r.stderr
        raw = os.path.join(rx_dir, "rsa", os.path.basename(loop.dev) + ".raw")
        run(["cmp", loop.dev, raw])
    # The raw image is sparse: the zero blocks were never written.
    assert os.stat(raw).st_blocks * 512 < 3 * MiB
