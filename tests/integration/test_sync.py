"""`coldclone sync` over the real sshd into the real receiver, from loop disks with real data: the
first sync stores a warm capture equal to the disk; 7 changed 4 KiB blocks send 7 segments; a sync
killed half way is continued by running it again; another server's disk never lands in a capture;
a disk whose first 64 KiB or size changed starts a new capture; a wrong host key sends nothing.

One module, one receiver root (a directory of the session's sshd), each disk its own loop device.
The first sync runs the self-contained file under the oldest python3 with `-I -S` (no
site-packages: the standard library only), the others the installed `coldclone sync`.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from agent.runcmd import run
from agent.sync.build import write_sync_file
from tests.conftest import BIN, sha256_of
from tests.testbed.loop import LoopDevice, mounted_rw
from tests.testbed.procs import Spooled
from tests.testbed.resume import wait_image
from tests.unit.test_sync_file import oldest_python3

pytestmark = pytest.mark.root
MiB = 1 << 20
GRID = 64 << 10           # wire.grid_for of these small disks: the block size
SAME_FRAME = 5 + 48       # a SAME record on the wire


@pytest.fixture(scope="module")
def rx(sshd, tmp_path_factory):
    """The module's receiver root (inside the sshd's forced root), the sync file, a work dir."""
    d = os.path.join(sshd.receiver_root, "sync-tests")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    shutil.chown(d, sshd.user)
    work = tmp_path_factory.mktemp("sync")
    sync_file = str(work / "coldclone")
    write_sync_file(sync_file)
    yield {"dir": d, "work": work, "file": sync_file, "sshd": sshd}
    shutil.rmtree(d, ignore_errors=True)


def sync_argv(rx, dev, *extra, hostkey=None, zipapp=False):
    s = rx["sshd"]
    head = [oldest_python3(), "-I", "-S", rx["file"], "sync"] if zipapp else [os.path.join(BIN, "coldclone"), "sync"]
    return head + ["--disk", dev, "--to", f"ssh://{s.user}@127.0.0.1:{s.port}{rx['dir']}",
                   "--identity", s.client_key, "--hostkey", hostkey or s.fingerprint, *extra]


def sync(rx, dev, *extra, expect=0, **kw):
    t0 = time.monotonic()
    p = subprocess.run(sync_argv(rx, dev, *extra, **kw), capture_output=True, text=True, timeout=300)
    assert p.returncode == expect, p.stdout + p.stderr
    p.seconds = time.monotonic() - t0
    m = re.search(r"^capture_id=(\S+)$", p.stdout, re.M)
    p.capture_id = m.group(1) if m else None
    return p


def manifest(rx, cid):
    with open(os.path.join(rx["dir"], cid, "manifest.json")) as f:
        return json.load(f)


def same_image(rx, dev, cid):
    entry = manifest(rx, cid)["disks"][0]
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", dev, os.path.join(rx["dir"], cid, entry["image"])])


def capture_digest(rx, cid):
    """Every file of a stored capture, hashed: unchanged means untouched."""
    d = os.path.join(rx["dir"], cid)
    return {n: sha256_of(os.path.join(d, n)) for n in sorted(os.listdir(d))}


def write_at(dev, offset, data):
    fd = os.open(dev, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def disk_a(rx):
    """64 MiB with an ext4 filesystem and files (a server's disk), synced once by the sync file."""
    img = rx["work"] / "a.img"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    run(["mkfs.ext4", "-q", "-F", "-L", "synca", str(img)])
    with LoopDevice(str(img)) as loop:
        with mounted_rw(loop.dev) as mnt:
            os.makedirs(os.path.join(mnt, "var/log"))
            for i in range(12):
                with open(os.path.join(mnt, f"data{i}.bin"), "wb") as f:
                    f.write(os.urandom(MiB + 4096 * i))
            with open(os.path.join(mnt, "var/log/app.log"), "w") as f:
                f.writelines(f"line {i} of the application's log\n" for i in range(50000))
        first = sync(rx, loop.dev, zipapp=True)
        yield loop, first


def test_first_sync_is_stored_warm_and_equals_the_disk(rx, disk_a):
    loop, first = disk_a
    assert first.capture_id and "a new capture" in first.stderr
    m = manifest(rx, first.capture_id)
    assert m["phase"] == "warm" and len(m["syncs"]) == 1
    assert m["syncs"][0]["bytes_read"] == 64 * MiB
    same_image(rx, loop.dev, first.capture_id)
    print(f"\nfirst sync (sync file, {oldest_python3()} -I -S): 64 MiB ext4 in {first.seconds:.1f} s, "
          f"{m['syncs'][0]['bytes_sent']} bytes sent")


def test_seven_changed_blocks_send_seven_segments(rx, disk_a):
    loop, first = disk_a
    n = 7
    for i in range(n):                          # one 4 KiB block in each of 7 segments, past the head
        write_at(loop.dev, (i + 1) * 8 * MiB + 4096 * (3 * i + 1), os.urandom(4096))
    # After a reboot the kernel may name the disk otherwise: here another loop device of the same
    # file (no WWID or serial: its first 64 KiB find it); the capture keeps its name for the disk.
    with LoopDevice(loop.image) as other:
        assert other.dev != loop.dev
        second = sync(rx, other.dev)
    assert f"{other.dev} is disk {os.path.basename(loop.dev)} of capture {first.capture_id}" in second.stderr
    assert second.capture_id == first.capture_id
    assert f"continuing warm capture {first.capture_id}" in second.stderr
    m = manifest(rx, first.capture_id)
    assert m["phase"] == "warm" and len(m["syncs"]) == 2
    last = m["syncs"][-1]
    framing = 4096 + (64 * MiB // GRID) * SAME_FRAME    # JSON records + a SAME per block at worst
    assert last["segments_changed"] == n, last
    assert last["bytes_sent"] <= n * GRID + framing, last
    same_image(rx, loop.dev, first.capture_id)
    print(f"\nsecond sync after {n} changed 4 KiB blocks: {last['segments_changed']} segments, "
          f"{last['bytes_sent']} bytes sent (bound {n * GRID + framing}), {second.seconds:.1f} s")


def test_a_sync_killed_half_way_is_continued_by_running_it_again(rx):
    size = 192 * MiB
    img = rx["work"] / "b.img"
    with open(img, "wb") as f:
        for _ in range(size // (16 * MiB)):
            f.write(os.urandom(16 * MiB))
    with LoopDevice(str(img)) as loop:
        before = sha256_of(loop.dev)
        first = Spooled(sync_argv(rx, loop.dev, "--bwlimit", "40M"))
        deadline = time.monotonic() + 60
        cid = None
        while cid is None and time.monotonic() < deadline:
            cid = next((n[:-len(".partial")] for n in os.listdir(rx["dir"]) if n.endswith(".partial")), None)
            time.sleep(0.05)
        assert cid, "the first sync never opened its capture"
        wait_image(first, rx["dir"], cid, 100 * MiB)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        assert not os.path.exists(os.path.join(rx["dir"], cid, "manifest.json"))

        again = sync(rx, loop.dev, "--bwlimit", "200M")     # the flag parses; the sync completes
        assert again.capture_id == cid, again.stderr
        assert f"capture {cid}, cut before it was stored" in again.stderr
        m = manifest(rx, cid)
        assert m["phase"] == "warm"
        # what the cut sync had stored is not sent again: the receiver's map of it came back SAME
        held = m["disks"][0]["received"]["same_bytes"]
        assert held >= 64 * MiB, m["disks"][0]["received"]
        assert m["syncs"][-1]["bytes_sent"] <= size - held + MiB, m["syncs"]
        same_image(rx, loop.dev, cid)
        assert sha256_of(loop.dev) == before
        print(f"\nsync killed at >= 100 MiB of 192 MiB, run again: {held >> 20} MiB held (SAME), "
              f"{m['syncs'][-1]['bytes_sent'] >> 20} MiB sent, {again.seconds:.1f} s")


def test_another_servers_disk_never_lands_in_a_capture(rx, disk_a):
    _, first = disk_a
    img = rx["work"] / "c.img"
    img.write_bytes(os.urandom(64 * MiB))        # same size as A: only the content tells them apart
    held = capture_digest(rx, first.capture_id)
    with LoopDevice(str(img)) as loop:
        p = sync(rx, loop.dev, "--capture-id", first.capture_id, expect=5)
        assert "conversion server" in p.stderr and p.capture_id is None
        assert capture_digest(rx, first.capture_id) == held
        # its own sync finds no capture of it and makes its own
        own = sync(rx, loop.dev)
        assert own.capture_id != first.capture_id and "a new capture" in own.stderr
        same_image(rx, loop.dev, own.capture_id)
    assert capture_digest(rx, first.capture_id) == held


def test_a_disk_whose_head_or_size_changed_starts_a_new_capture(rx):
    img = rx["work"] / "d.img"
    img.write_bytes(os.urandom(8 * MiB))
    with LoopDevice(str(img)) as loop:
        one = sync(rx, loop.dev)
        held = capture_digest(rx, one.capture_id)
        write_at(loop.dev, 0, os.urandom(64 << 10))          # a new partition table / boot sector
        two = sync(rx, loop.dev)
        assert two.capture_id != one.capture_id
        assert "holds no warm capture" in two.stderr and "a new capture" in two.stderr
        sent = manifest(rx, two.capture_id)["syncs"][0]
        assert sent["segments_changed"] == 8 * MiB // GRID        # everything sent
        same_image(rx, loop.dev, two.capture_id)
        with open(img, "ab") as f:
            f.write(os.urandom(4 * MiB))
        run(["losetup", "-c", loop.dev])
        three = sync(rx, loop.dev)
        assert three.capture_id not in (one.capture_id, two.capture_id) and "a new capture" in three.stderr
        same_image(rx, loop.dev, three.capture_id)
    assert capture_digest(rx, one.capture_id) == held


def test_a_wrong_host_key_sends_nothing(rx, disk_a):
    loop, _ = disk_a
    log = os.path.join(rx["sshd"].workdir, "sshd.log")
    accepted = open(log).read().count("Accepted publickey")
    listing = sorted(os.listdir(rx["dir"]))
    wrong = "SHA256:" + "x" * 43
    p = sync(rx, loop.dev, hostkey=wrong, expect=3)
    assert "HOST KEY MISMATCH" in p.stderr and rx["sshd"].fingerprint in p.stderr and "Nothing was sent" in p.stderr
    assert sorted(os.listdir(rx["dir"])) == listing
    assert open(log).read().count("Accepted publickey") == accepted
