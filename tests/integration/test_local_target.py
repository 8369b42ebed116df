"""Capture to a local target disk (a loop device standing in for a USB / e-SATA disk).

The target is formatted only with the operator's confirmation, mounted, and
receives images through the same receiver as over SSH; the qcow2 equals the
source byte for byte, and the calibration probe leaves nothing on it.
"""

import json
import os

import pytest

from agent import protocol as P
from agent.errors import UsageError
from agent.runcmd import run
from tests.testbed import synthdisk
from tests.testbed.loop import LoopDevice
from agent.source.transport import localdisk
from tests.conftest import coldclone, sha256_of

pytestmark = pytest.mark.root
MiB = 1 << 20


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    img = str(tmp_path_factory.mktemp("src") / "server.img")
    with synthdisk.on_loop(img, size=384 * MiB, table="msdos", files_mb=40, remnant_mb=16) as pair:
        yield pair


@pytest.fixture
def usb_disk(tmp_path):
    img = str(tmp_path / "usb-disk.img")
    with open(img, "wb") as f:
        f.truncate(1024 * MiB)
    with LoopDevice(img) as loop:
        yield loop.dev
        for p in loop.parts:
            run(["umount", p], check=False, quiet=True)


def test_prepare_needs_confirmation_and_never_takes_a_source(usb_disk, source):
    src, _ = source
    with pytest.raises(UsageError, match="holds no filesystem"):
        localdisk.prepare(usb_disk)
    with pytest.raises(UsageError, match="needs its own name as confirmation"):
        localdisk.prepare(usb_disk, format_confirm="/dev/sdz")
    with pytest.raises(UsageError, match="also a source disk"):
        localdisk.prepare(src.dev, format_confirm=src.dev, sources=[src.dev])
    # Nothing was written to the target by the refusals.
    assert run(["blkid", "-p", usb_disk], check=False).returncode != 0


def test_capture_to_local_disk_equals_source(usb_disk, source):
    src, sd = source
    before = sha256_of(src.dev)
    with localdisk.prepare(usb_disk, format_confirm=usb_disk, sources=[src.dev]) as tgt:
        assert tgt.formatted and tgt.device == usb_disk + "p1"
        assert run(["blkid", "-p", "-s", "TYPE", "-o", "value", tgt.device]).stdout.strip() == "ext4"
        r = coldclone("capture", "--disk", src.dev, "--to", tgt.url, "--capture-id", "local-1")
        assert r.returncode == 0, r.stderr
        cap = os.path.join(tgt.path, "local-1")
        image = os.path.basename(src.dev) + ".qcow2"
        assert sorted(os.listdir(cap)) == [image, "manifest.json"]
        run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", src.dev, os.path.join(cap, image)])
        m = json.load(open(os.path.join(cap, "manifest.json")))
        assert m["status"] == "complete"
        assert m["disks"][0]["digest"] == P.digest_file(src.dev)
        assert m["disks"][0]["verified"]["qemu_img_check"]
        mountpoint = tgt.mountpoint
    assert not os.path.ismount(mountpoint), "prepare()'s mount must be undone by close()"
    assert sha256_of(src.dev) == before

    # The same disk again, without formatting: its filesystem is reused and the capture is still there.
    with localdisk.prepare(usb_disk) as tgt:
        assert not tgt.formatted
        assert os.listdir(tgt.path) == ["local-1"]


def test_estimate_probe_and_manifest_on_local_target(usb_disk, source):
    """Calibrating against the local target leaves nothing there; the estimate lands in the manifest."""
    from agent.source.capture.session import CaptureRequest, run_capture
    from agent.source.capture.stream import StreamOptions
    from agent.source.estimate.plan import estimate_capture
    from agent.source.transport.open import open_target

    src, _ = source
    with localdisk.prepare(usb_disk, format_confirm=usb_disk, fstype="xfs", sources=[src.dev]) as tgt:
        with open_target(tgt.url) as target:
            est = estimate_capture(None, [src.dev], tgt.url, "nonzero", calibrate_seconds=2.0,
                                   connect=target.connect, local_path=target.local_path)
            assert est.calibrated, est.notes
            assert est.calibration.probe.wire_bytes > 0
            assert os.listdir(tgt.path) == [], "the probe must leave nothing on the target"
            print("\n".join(est.lines()))
            res = run_capture(CaptureRequest([src.dev], target.connect, StreamOptions(), capture_id="local-est",
                                             image_format="raw", estimate=est))
        m = json.load(open(os.path.join(tgt.path, "local-est", "manifest.json")))
        assert m["estimate"]["total_seconds"] == est.total_seconds
        assert m["estimate_vs_actual"]["predicted_seconds"] == m["estimate"]["total_seconds"]
        assert m["estimate_vs_actual"]["actual_seconds"] > 0
        raw = os.path.join(tgt.path, "local-est", m["disks"][0]["image"])
        run(["qemu-img", "compare", "-f", "raw", "-F", "raw", src.dev, raw])
        print(f"estimate {est.total_seconds:.1f} s, capture {res.elapsed:.1f} s")
