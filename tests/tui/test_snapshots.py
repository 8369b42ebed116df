"""Every screen pinned at 80x24 (pytest-textual-snapshot) on recorded machines:
hardware RAID (cciss, megaraid_sas), md, iSCSI, and a USB target disk.

ASCII drawing (ascii_only=True) throughout: it is what a serial console gets, and the
glyph choice is process-wide. Update after an intended change: pytest tests/tui --snapshot-update
"""

from __future__ import annotations

from agent.source.iscsi.sourceconfig import read_source_config
from agent.source.tui.app import build_app
from agent.source.transport.localdisk import TargetDisk
from agent.source.tui.services import TargetChoice
from tests.tui import recorded
from tests.tui.conftest import ISCSI_TREES, replay, settle

SIZE = (80, 24)
SSH = TargetChoice("ssh", recorded.TARGET, identity="/etc/coldclone/identity",
                   hostkey=["SHA256:q8mJbJ3Vt1Zb0nHnT3mYpWb3dX7Yc2yYk1o9gVZ6u4E"])


def app_for(services, **kw):
    return build_app(services, ascii_only=True, **kw)


def test_inventory_cciss_hw_raid_with_readiness(snap_compare):
    """HP Smart Array (cciss) logical drives, the source OS (RHEL 6) inspected: its findings."""
    app = app_for(replay("cciss", sourceos="rhel6-cciss"))
    assert snap_compare(app, terminal_size=SIZE, run_before=settle)


def test_inventory_megaraid_details(snap_compare):
    app = app_for(replay("megaraid_sas"))
    assert snap_compare(app, terminal_size=SIZE, run_before=settle)


def test_inventory_md_members(snap_compare):
    """md arrays are not captured themselves; the cursor on a member shows its slots."""
    app = app_for(replay("md", sourceos="debian7-lvm"))

    async def run_before(pilot):
        await settle(pilot)
        for _ in range(4):
            await pilot.press("down")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_inventory_iscsi_luns(snap_compare):
    app = app_for(replay("iscsi"))

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("down", "down")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_inventory_usb_target_deselect(snap_compare):
    """usb3: the mounted target disk is refused; one disk deselected by the operator."""
    app = app_for(replay("usb3"))

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("down", "space", "down")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_iscsi_identity_from_source_os(snap_compare):
    ident = read_source_config(str(ISCSI_TREES / "rhel7"), device="/dev/sda2")
    app = app_for(replay("iscsi", identities=[ident]))

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("i")
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_target_ssh_host_key_to_confirm(snap_compare):
    app = app_for(replay("megaraid_sas"))

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("enter")
        await pilot.pause()
        await pilot.press(*"10.0.0.5")
        await pilot.press("tab", "tab", "tab", *"srv/coldclone", "ctrl+t")
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_target_local_disk(snap_compare):
    def local_disks(inv):
        # what localdisk.candidates makes of the recorded machine's USB disks
        return [TargetDisk(d.name, d.dev_path, d.size, d.model or "", d.link.label if d.link else "")
                for d in inv.disks if d.transport == "usb" and d.kind == "disk"]

    app = app_for(replay("usb3", local_disks=local_disks))

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("enter")
        await pilot.pause()
        app.screen.query_one("#kind").focus()
        await pilot.press("right", "enter")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_estimate(snap_compare):
    app = app_for(replay("megaraid_sas", estimate=recorded.estimate()))

    async def run_before(pilot):
        await settle(pilot)
        from agent.source.tui.screens.estimate import EstimateScreen

        app.plan.target, app.plan.target_ok = SSH, "SSH OK"
        await app.push_screen(EstimateScreen())
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_estimate_confirm(snap_compare):
    app = app_for(replay("megaraid_sas", estimate=recorded.estimate()))

    async def run_before(pilot):
        await settle(pilot)
        from agent.source.tui.screens.estimate import EstimateScreen

        app.plan.target, app.plan.target_ok = SSH, "SSH OK"
        await app.push_screen(EstimateScreen())
        await settle(pilot)
        await pilot.press("s")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def _offer(press: str | None):
    found = recorded.unfinished()
    app = app_for(replay("megaraid_sas", estimate=recorded.estimate(),
                         find_unfinished=lambda choice, paths: found))

    async def run_before(pilot):
        await settle(pilot)
        from agent.source.tui.screens.estimate import EstimateScreen

        app.plan.target, app.plan.target_ok = SSH, "SSH OK"
        await app.push_screen(EstimateScreen())
        await settle(pilot)
        if press:
            await pilot.press(press)
            await pilot.pause()

    return app, run_before


def test_estimate_offers_to_resume_an_unfinished_capture(snap_compare):
    """The source server was rebooted mid-capture: the server holds its unfinished capture."""
    app, run_before = _offer(None)
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_estimate_with_a_warm_capture_shows_the_cutover(snap_compare):
    """The server holds a warm capture of these disks (three syncs): the predicted cutover shows
    next to the cold estimate (mode=used: the reading of the used blocks is its floor)."""
    found = recorded.warm_unfinished()
    app = app_for(replay("megaraid_sas", estimate=recorded.used_estimate(),
                         find_unfinished=lambda choice, paths: found))

    async def run_before(pilot):
        await settle(pilot)
        from agent.source.tui.screens.estimate import EstimateScreen

        app.plan.target, app.plan.target_ok, app.plan.mode = SSH, "SSH OK", "used"
        await app.push_screen(EstimateScreen())
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_estimate_resume_confirm(snap_compare):
    app, run_before = _offer("r")
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


async def _progress(app, pilot):
    from agent.source.tui.screens.progress import ProgressScreen

    await settle(pilot)
    app.plan.target, app.plan.target_ok = SSH, "SSH OK"
    clock = recorded.ReplayClock()
    screen = ProgressScreen(clock=clock)
    app.switch_to_progress(screen)
    await pilot.pause()
    recorded.replay_into(screen.apply, clock)
    await pilot.pause()


def test_progress(snap_compare):
    app = app_for(replay("megaraid_sas"), start_capture_worker=False)
    assert snap_compare(app, terminal_size=SIZE, run_before=lambda pilot: _progress(app, pilot))


def test_progress_cancel_asks(snap_compare):
    app = app_for(replay("megaraid_sas"), start_capture_worker=False)

    async def run_before(pilot):
        await _progress(app, pilot)
        await pilot.press("c")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_done(snap_compare):
    app = app_for(replay("cciss", sourceos="rhel6-cciss"), start_capture_worker=False)

    async def run_before(pilot):
        from agent.source.tui.screens.done import DoneScreen

        await settle(pilot)
        app.plan.target, app.plan.result = SSH, recorded.result()
        app.switch_screen(DoneScreen())
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_done_published(snap_compare):
    """A capture whose manifest came back with a publish section: the Glance image id is said."""
    app = app_for(replay("cciss", sourceos="rhel6-cciss"), start_capture_worker=False)

    async def run_before(pilot):
        from agent.manifest import ImageRole, PublishedImage, PublishRecord
        from agent.source.tui.screens.done import DoneScreen

        await settle(pilot)
        res = recorded.result()
        res.publish = PublishRecord(cloud="dc2", disk_format="qcow2", published="2026-11-23T15:10:00Z", images=[
            PublishedImage(disk="sda", image_id="5b1e7c1e-9f3d-4c7e-a1b2-0c0ffee00042", disk_format="qcow2",
                           role=ImageRole.BOOT, position=0, image_name="srv01-20261123T130000-ab12-sda-kvm",
                           image_file="sda.kvm.qcow2", image_kind="converted",
                           checksum="9e107d9d372bb6826bd81d3542a419d6", os_hash_algo="sha512",
                           os_hash_value="00" * 64, size=1 << 30)])
        app.plan.target, app.plan.result = SSH, res
        app.switch_screen(DoneScreen())
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_done_cancelled(snap_compare):
    app = app_for(replay("megaraid_sas"), start_capture_worker=False)

    async def run_before(pilot):
        from agent.source.tui.screens.done import DoneScreen

        await settle(pilot)
        app.plan.target, app.plan.capture_id = SSH, "srv01-20261123T130000-ab12"
        app.plan.error = ("cancelled by the operator; the conversion server was told to discard "
                          "the partial capture")
        app.plan.exit_code = 6
        app.switch_screen(DoneScreen())
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_network(snap_compare):
    app = app_for(replay("megaraid_sas"))

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("n")
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
