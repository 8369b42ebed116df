"""The whole flow driven through the screens with the keyboard (textual Pilot): a real loop
device with a real partition table and filesystems, discovered on this machine, captured to
a real OpenSSH sshd on 127.0.0.1 whose host key the operator confirms on the Target screen;
the qcow2 the receiver wrote must equal the loop device (qemu-img compare)."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from agent.runcmd import run
from tests.testbed import synthdisk
from tests.testbed.loop import LoopDevice
from agent.source.tui.app import build_app
from agent.source.tui.services import Services
from tests.conftest import BIN, sha256_of, ssh_args
from tests.testbed.resume import wait_image
from tests.testbed.procs import Spooled, kill_receivers

pytestmark = pytest.mark.root
MiB = 1 << 20


@pytest.fixture(scope="module")
def loop_disk(tmp_path_factory):
    img = str(tmp_path_factory.mktemp("tui-src") / "server.img")
    with synthdisk.on_loop(img, size=256 * MiB, table="gpt", files_mb=24, remnant_mb=8) as (loop, _):
        yield loop


def real_app(dev: str, capture_id: str, calibrate: float = 0.0, compress: str | None = None, **over):
    """The app on this machine, the disk `dev` (a loop device) preselected, a fixed capture id."""
    services = Services.real(include_loop=True, only=[dev], cmdline="", **over)
    services.config.calibrate = calibrate
    if compress is not None:
        services.config.compress = compress
    services.capture_id = lambda: capture_id
    return build_app(services, ascii_only=True)


async def wait_for(pilot, cond, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; "
                                 f"screen {type(pilot.app.screen).__name__}")
        await pilot.pause(0.1)
    # Let the callbacks the change queued run (a new screen's Header fills its title in an
    # awaited watcher): an app that exits in the same tick as a screen push makes Textual's
    # Header query its already-removed children (NoMatches 'HeaderTitle', seen in CI).
    await pilot.pause()


async def type_into(pilot, wid: str, text: str) -> None:
    w = pilot.app.screen.query_one(f"#{wid}")
    w.value = ""
    w.focus()
    await pilot.press(*text) if text else None


async def drive_to_capture(pilot, sshd, rx_dir, loop_dev):
    from agent.source.tui.screens.progress import ProgressScreen

    await drive_to_estimate(pilot, sshd, rx_dir, loop_dev)
    await pilot.press("s")
    await pilot.pause()
    await pilot.press("y")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, ProgressScreen), 5, "the Progress screen")


async def drive_to_estimate(pilot, sshd, rx_dir, loop_dev):
    from agent.source.tui.screens.estimate import EstimateScreen
    from agent.source.tui.screens.target import TargetScreen

    app = pilot.app
    await wait_for(pilot, lambda: app.plan.inventory is not None, 60, "discovery")
    name = os.path.basename(loop_dev)
    assert app.plan.selected == [name], app.plan.selected
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, TargetScreen), 5, "the Target screen")
    await type_into(pilot, "host", "127.0.0.1")
    await type_into(pilot, "port", str(sshd.port))
    await type_into(pilot, "user", sshd.user)
    await type_into(pilot, "path", rx_dir)
    await type_into(pilot, "identity", sshd.client_key)
    # Next is refused before a test, and the first test only shows the host key.
    await pilot.press("ctrl+n")
    assert isinstance(app.screen, TargetScreen)
    await pilot.press("ctrl+t")
    await wait_for(pilot, lambda: app.screen.key_info is not None, 20, "the host key")
    assert app.screen.key_info.fingerprint == sshd.fingerprint
    assert app.plan.target_ok is None
    await pilot.press("ctrl+y")          # the operator compared it: it matches
    await wait_for(pilot, lambda: app.plan.target_ok, 30, "the SSH test")
    assert app.plan.target.hostkey == [sshd.fingerprint]
    await pilot.press("ctrl+n")
    await wait_for(pilot, lambda: isinstance(app.screen, EstimateScreen), 5, "the Estimate screen")
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def test_capture_through_the_screens(sshd, rx_dir, loop_disk):
    from agent.source.tui.screens.done import DoneScreen

    before = sha256_of(loop_disk.dev)
    app = real_app(loop_disk.dev, "tui-pilot-1", calibrate=1.0)

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await drive_to_capture(pilot, sshd, rx_dir, loop_disk.dev)
            await wait_for(pilot, lambda: isinstance(app.screen, DoneScreen), 300, "the Done screen")
            text = str(app.screen.query_one("#done-text").render())
            assert "CAPTURE COMPLETE" in str(app.screen.query_one("#done-verdict").render())
            assert "tui-pilot-1" in text and "qemu_img_check" in text
            await pilot.press("s")       # shell: the app exits

    asyncio.run(scenario())
    assert app.plan.error is None, app.plan.error
    result = app.plan.result
    cap = os.path.join(rx_dir, "tui-pilot-1")
    image = os.path.join(cap, os.path.basename(loop_disk.dev) + ".qcow2")
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", loop_disk.dev, image])
    assert sha256_of(loop_disk.dev) == before
    manifest = json.load(open(os.path.join(cap, "manifest.json")))
    assert manifest["status"] == "complete"
    # The inventory the operator saw and the estimate go into the manifest.
    name = os.path.basename(loop_disk.dev)
    assert name in [d["name"] for d in manifest["source"]["inventory"]["disks"]]
    assert [d["name"] for d in manifest["estimate"]["disks"]] == [name], manifest["estimate"]
    assert manifest["estimate_vs_actual"]["actual_seconds"] > 0, manifest["estimate_vs_actual"]
    assert result.disks[0].verified.qemu_img_check is True


def test_cancel_through_the_screens_leaves_the_server_clean(sshd, rx_dir, tmp_path):
    from agent.source.tui.screens.done import DoneScreen

    img = str(tmp_path / "big.img")
    with open(img, "wb") as f:
        f.truncate(768 * MiB)
        # Incompressible data: the capture takes long enough to be cancelled midway.
        for i in range(0, 768, 4):
            f.seek(i * MiB)
            f.write(os.urandom(2 * MiB))
    with LoopDevice(img) as loop:
        # zstd:19 makes the capture slow on purpose (0.75 s per 4 MiB chunk of random data, ~35 s
        # for the disk): at level 1 it sent the 384 MiB and was verified before the cancel,
        # pressed right after the first progress figures, took effect (seen once in CI).
        app = real_app(loop.dev, "tui-cancel-1", compress="zstd:19")

        async def scenario():
            async with app.run_test(size=(80, 24)) as pilot:
                await drive_to_capture(pilot, sshd, rx_dir, loop.dev)
                screen = app.screen
                await wait_for(pilot, lambda: screen.progress.figures().moved, 60, "progress")
                await pilot.press("c")
                await pilot.pause()
                await pilot.press("y")
                await wait_for(pilot, lambda: isinstance(app.screen, DoneScreen), 120, "the Done screen")
                assert "CAPTURE NOT DONE" in str(app.screen.query_one("#done-verdict").render())

        asyncio.run(scenario())
    assert app.plan.result is None
    assert app.plan.exit_code == 6, app.plan.error
    assert "cancelled" in app.plan.error
    # Nothing is marked complete, and the receiver discarded the half-written image: only
    # the failure record stays in the .partial directory.
    assert not os.path.exists(os.path.join(rx_dir, "tui-cancel-1"))
    partial = os.path.join(rx_dir, "tui-cancel-1.partial")
    assert os.listdir(partial) == ["failure.json"], os.listdir(partial)
    assert json.load(open(os.path.join(partial, "failure.json")))["code"] == "aborted"


def test_capture_to_a_local_target_disk_through_the_screens(tmp_path, loop_disk):
    """The Local USB/eSATA disk choice: the disk is picked in the list, mounted by
    agent.source.transport.localdisk.prepare (its ext4 kept, not formatted), the images land in
    coldclone/ on it, and the disk is unmounted when the TUI exits."""
    from agent.source.transport.localdisk import TargetDisk
    from agent.source.tui.screens.done import DoneScreen
    from agent.source.tui.screens.estimate import EstimateScreen
    from agent.source.tui.screens.progress import ProgressScreen
    from agent.source.tui.screens.target import TargetScreen

    before = sha256_of(loop_disk.dev)
    timg = str(tmp_path / "usb-target.img")
    with open(timg, "wb") as f:
        f.truncate(512 * MiB)
    run(["mkfs.ext4", "-q", "-L", "images", timg])
    with LoopDevice(timg) as target:
        usb = TargetDisk(os.path.basename(target.dev), target.dev, 512 * MiB, "Expansion Desk", "USB 3.0",
                         [(target.dev, "ext4", "images")], target.dev)
        app = real_app(loop_disk.dev, "tui-usb-1", local_disks=lambda inv: [usb])
        seen = {}

        async def scenario():
            async with app.run_test(size=(80, 24)) as pilot:
                await wait_for(pilot, lambda: app.plan.inventory is not None, 60, "discovery")
                await pilot.press("enter")
                await wait_for(pilot, lambda: isinstance(app.screen, TargetScreen), 5, "Target")
                app.screen.query_one("#kind").focus()
                await pilot.press("right", "enter")
                await pilot.pause()
                await pilot.press("ctrl+t")
                await wait_for(pilot, lambda: app.plan.target_ok, 30, "the target disk test")
                assert app.plan.target.local_disk == target.dev
                assert app.plan.target_ok.startswith("writable: ")
                await pilot.press("ctrl+n")
                await wait_for(pilot, lambda: isinstance(app.screen, EstimateScreen), 5, "Estimate")
                await app.workers.wait_for_complete()
                await pilot.press("s")
                await pilot.pause()
                await pilot.press("y")
                await wait_for(pilot, lambda: isinstance(app.screen, (ProgressScreen, DoneScreen)), 5, "Progress")
                await wait_for(pilot, lambda: isinstance(app.screen, DoneScreen), 300, "Done")
                assert app.plan.result is not None, app.plan.error
                images = os.path.join(app.plan.prepared.path, "tui-usb-1")
                seen["mount"] = app.plan.prepared.mountpoint
                run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", loop_disk.dev,
                     os.path.join(images, os.path.basename(loop_disk.dev) + ".qcow2")])
                await pilot.press("s")

        asyncio.run(scenario())
        mounts = [line.split() for line in open("/proc/mounts").read().splitlines()]
        # (by field: /dev/loop1 is a prefix of the other tests' /dev/loop12)
        assert not [m for m in mounts if m[1] == seen["mount"] or m[0] == target.dev], \
            "target disk left mounted"
    assert sha256_of(loop_disk.dev) == before


@pytest.fixture(scope="module")
def debian_disk(tmp_path_factory):
    from tests.testbed import sourceos
    from tests.testbed.loop import attached

    img = sourceos.debian_uefi(str(tmp_path_factory.mktemp("tui-deb") / "debian12-uefi.img"))
    with attached(img) as dev:
        yield dev


def test_tui_capture_carries_the_readiness_report(sshd, rx_dir, debian_disk):
    """The TUI's capture puts the inventory's readiness report into the manifest, and the Done
    screen says what it found (firmware, boot loader, what conversion will do)."""
    from agent.source.tui.screens.done import DoneScreen

    app = real_app(debian_disk, "tui-readiness-1", calibrate=1.0)
    texts = []

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await drive_to_capture(pilot, sshd, rx_dir, debian_disk)
            await wait_for(pilot, lambda: isinstance(app.screen, DoneScreen), 300, "the Done screen")
            texts.append(str(app.screen.query_one("#done-text").render()))
            await pilot.press("s")

    asyncio.run(scenario())
    assert app.plan.error is None, app.plan.error
    manifest = json.load(open(os.path.join(rx_dir, "tui-readiness-1", "manifest.json")))
    ready = manifest["readiness"]
    assert ready["os_name"] == "Debian GNU/Linux 12 (bookworm)"
    assert (ready["firmware"], ready["boot_loader"]) == ("uefi", "grub2")
    assert ready["disk"] == os.path.basename(debian_disk)
    assert "firmware uefi, boot loader grub2, root /dev/sda2 (sd)" in texts[0]
    assert "conversion will rewrite resume=" in texts[0]


def test_resume_offered_and_taken_through_the_screens(sshd, rx_dir, tmp_path):
    """A capture cut at half (the conversion server's receiver died, the agent gave up): the next
    run through the screens finds it on the server, offers it on the Estimate screen and, when
    the operator takes it, sends only what is missing."""
    from agent.source.tui.screens.done import DoneScreen

    size = 256 * MiB
    img = str(tmp_path / "src.img")
    with open(img, "wb") as f:
        for _ in range(size // (16 * MiB)):
            f.write(os.urandom(16 * MiB))      # incompressible: every byte is DATA
    with LoopDevice(img) as loop:
        before = sha256_of(loop.dev)
        name = os.path.basename(loop.dev)
        first = Spooled([os.path.join(BIN, "coldclone"), "capture", "--disk", loop.dev, *ssh_args(sshd, rx_dir),
                         "--capture-id", "tui-cut-1", "--reconnect", "0", "--compress", "none"])
        wait_image(first, rx_dir, "tui-cut-1", size // 2, disk=name)
        assert kill_receivers(sshd.receiver_root) >= 1
        first.communicate(timeout=120)
        assert first.returncode != 0

        app = real_app(loop.dev, "tui-new-capture")

        async def scenario():
            async with app.run_test(size=(80, 24)) as pilot:
                await drive_to_estimate(pilot, sshd, rx_dir, loop.dev)
                await wait_for(pilot, lambda: app.plan.unfinished, 60, "the resume offer")
                offer = str(app.screen.query_one("#est-resume").render())
                # A loop device has no serial: the match is by name and size, offered, never taken unasked.
                assert "tui-cut-1" in offer and "name and size only" in offer, offer
                await pilot.press("r")
                await pilot.pause()
                await pilot.press("y")
                await wait_for(pilot, lambda: isinstance(app.screen, DoneScreen), 300, "the Done screen")
                assert "CAPTURE COMPLETE" in str(app.screen.query_one("#done-verdict").render())
                await pilot.press("s")

        asyncio.run(scenario())
        assert app.plan.error is None, app.plan.error
        cap = os.path.join(rx_dir, "tui-cut-1")
        entry = json.load(open(os.path.join(cap, "manifest.json")))["disks"][0]
        run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", loop.dev, os.path.join(cap, entry["image"])])
        assert sha256_of(loop.dev) == before
        held = entry["resume"]["resumed_from"]
        # what the receiver had journaled when it died (checkpoints every 64 MiB or 2 s)
        assert held >= 64 * MiB and entry["resume"]["restarted"] is None, entry["resume"]
        assert entry["received"]["data_bytes"] == size - held
        assert not os.path.exists(os.path.join(rx_dir, "tui-new-capture"))
