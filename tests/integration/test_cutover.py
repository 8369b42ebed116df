"""The cutover of a warm capture (issue 22), with the real agent and the real receiver: after a
warm sync of a loop disk holding a real filesystem, N scattered 4 KiB blocks change; the cutover
(`coldclone capture --resume ID`) sends only the segments that differ, and the result is verified
like a cold capture and equals what a cold capture of the disk gives, byte for byte.

The warm sync here is the sync file's own code (agent/sync) when it is there; the receiver's side
is the same either way."""

import json
import os
import random

import pytest

from agent import protocol as P
from agent.runcmd import run
from agent.source.capture.usedmap import plan_disk
from tests.conftest import coldclone, sha256_of
from tests.testbed import useddisk
from tests.testbed.loop import LoopDevice
from tests.testbed.warmsync import warm_sync

pytestmark = [pytest.mark.root, pytest.mark.xdist_group("cutover")]
MiB = 1 << 20
N = 7


def manifest(root, cid) -> dict:
    return json.load(open(os.path.join(root, cid, "manifest.json")))


def capture(root, dev, cid, *args):
    r = coldclone("capture", "--disk", dev, "--to", f"file://{root}", "--capture-id", cid, *args)
    assert r.returncode == 0, r.stderr
    return manifest(root, cid)


def scatter(dev: str, mode: str, seed: int) -> list[int]:
    """N 4 KiB blocks of the disk rewritten at random offsets (in the used blocks for mode=used),
    each in another 64 KiB segment."""
    size = os.path.getsize(dev) if os.path.isfile(dev) else int(run(["blockdev", "--getsize64", dev]).stdout)
    rnd = random.Random(seed)
    if mode == "used":
        extents = [e for e in plan_disk(dev, size, P.DEFAULT_BLOCK_SIZE).extents if e.sent and e.length >= 64 << 10]
    offsets: set[int] = set()
    while len(offsets) < N:
        if mode == "used":
            e = rnd.choice(extents)
            off = e.offset + rnd.randrange(0, e.length - 4096, 4096)
        else:
            off = rnd.randrange(0, size - 4096, 4096)
        if off // (64 << 10) not in {o // (64 << 10) for o in offsets}:
            offsets.add(off)
    with open(dev, "r+b") as f:
        for off in sorted(offsets):
            f.seek(off)
            f.write(os.urandom(4096))
    return sorted(offsets)


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    d = useddisk.build(str(tmp_path_factory.mktemp("cutover") / "src.img"), "ext4", "gpt", size=256 * MiB)
    return d.image


@pytest.mark.parametrize("mode", ["nonzero", "used"])
def test_cutover_sends_only_the_changed_segments_and_equals_a_cold_capture(disk, tmp_path, mode):
    root = str(tmp_path / "rx")
    os.makedirs(root)
    img = str(tmp_path / "src.img")
    run(["cp", "--sparse=always", disk, img])
    with LoopDevice(img) as loop:
        cid = warm_sync(root, loop.dev)
        warm = manifest(root, cid)
        assert warm["phase"] == "warm" and len(warm["syncs"]) == 1
        # stored like any capture, plus its block digests; no journal, no write window left
        disk = os.path.basename(loop.dev)
        assert sorted(os.listdir(os.path.join(root, cid))) == [f"{disk}.blocks", f"{disk}.qcow2", "manifest.json"]
        scatter(loop.dev, mode, seed=22)
        before = sha256_of(loop.dev)

        if mode == "used":
            # The kernel may name the disk otherwise at the cutover (the server's own OS said sda,
            # the ISO, booted from a USB stick that took sda, says sdb): here another loop device
            # of the same file. A loop device has no WWID or serial: its first 64 KiB prove it.
            with LoopDevice(img) as other:
                assert other.dev != loop.dev
                m = capture(root, other.dev, cid, "--resume", cid, "--mode", mode)
                cold = capture(root, other.dev, "cold", "--mode", mode)
                assert sha256_of(other.dev) == before, "the source changed"
            assert m["disks"][0]["source"]["name"] == os.path.basename(other.dev)
        else:
            m = capture(root, loop.dev, cid, "--resume", cid, "--mode", mode)
            cold = capture(root, loop.dev, "cold", "--mode", mode)
        assert sha256_of(loop.dev) == before, "the source changed"

    (d,) = m["disks"]
    (c,) = cold["disks"]
    assert m["phase"] == "cutover" and m["syncs"] == warm["syncs"]
    # the capture keeps its name for the disk, whatever the kernel calls it now
    assert (d["name"], d["image"]) == (disk, f"{disk}.qcow2"), d
    # exactly what a cold capture of the disk now gives: the same digest, the same image bytes
    assert d["digest"] == c["digest"]
    assert all(d["verified"].values()), d["verified"]
    run(["qemu-img", "compare", os.path.join(root, cid, d["image"]), os.path.join(root, "cold", c["image"])])
    # only what changed crossed: N segments at most, plus framing (SAME records, ZERO over what the
    # warm copy held in free space, headers)
    cut = d["cutover"]
    assert 1 <= cut["segments_sent"] <= N, cut
    assert d["agent"]["segments_sent"] == cut["segments_sent"]
    assert cut["bytes_sent"] <= N * (64 << 10) + (64 << 10), (cut, c["received"]["wire_bytes"])
    assert cut["bytes_sent"] < c["received"]["wire_bytes"] / 20
    assert cut["bytes_read"] == c["agent"]["bytes_read"]
    assert d["received"]["same_bytes"] + d["received"]["data_bytes"] + d["received"]["zero_bytes"] == d["size"]
    # the cutover was predicted before (HELLO's estimate, from the lookup's warm facts: one sync, so
    # its changed bytes, capped at what is read), beside the measured seconds
    pred = m["estimate"]["cutover"]
    assert (pred["capture_id"], pred["syncs"], pred["bytes_to_read"]) == (cid, 1, cut["bytes_read"]), pred
    assert pred["changed_bytes"] == min(warm["syncs"][0]["bytes_changed"], cut["bytes_read"]), pred
    assert cold["estimate"].get("cutover") is None     # a new capture: no cutover predicted
    print(f"\ncutover ({mode}): {cut['segments_sent']} segments, {cut['bytes_sent']} bytes sent of "
          f"{c['received']['wire_bytes']} cold, {cut['seconds']} s")
