"""What the screens refuse and how they degrade, driven with the keyboard (Pilot) on recorded
machines: the wrong capture must be hard, a missing part of the core a plain line."""

from __future__ import annotations

import asyncio
import re

from agent.source.iscsi.auto import IscsiAttachment
from agent.source.iscsi.sourceconfig import read_source_config
from agent.source.tui.app import build_app
from agent.source.tui.services import TargetChoice
from tests.tui.conftest import ISCSI_TREES, on_progress, replay, settle


def screen_text(app) -> str:
    """Everything drawn on the screen now (as the operator would read it)."""
    from rich.console import Console

    console = Console(record=True, width=80, file=open("/dev/null", "w"), color_system=None)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


async def shown(pilot) -> str:
    await pilot.pause()
    await pilot.pause()
    return screen_text(pilot.app)


def drive(app, scenario):
    async def go():
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await scenario(pilot)
    asyncio.run(go())


def test_refused_disks_cannot_be_selected_and_nothing_selected_goes_nowhere():
    app = build_app(replay("megaraid_sas"), ascii_only=True)

    async def scenario(pilot):
        assert app.plan.selected == ["sda", "sdb"]
        await pilot.press("down", "down", "space")          # sr0: the live medium
        assert app.plan.selected == ["sda", "sdb"]
        assert "sr0 cannot be captured: the live system booted from it" in await shown(pilot)
        await pilot.press("up", "space", "up", "space")
        assert app.plan.selected == []
        await pilot.press("enter")
        assert type(app.screen).__name__ == "InventoryScreen"
        assert "Select at least one disk" in await shown(pilot)
        await pilot.press("space", "enter")
        assert type(app.screen).__name__ == "TargetScreen"

    drive(app, scenario)


def test_target_next_needs_a_successful_test():
    app = build_app(replay("megaraid_sas"), ascii_only=True)

    async def scenario(pilot):
        await pilot.press("enter")
        await pilot.pause()
        await pilot.press("ctrl+n")
        assert type(app.screen).__name__ == "TargetScreen"
        assert "Test the connection first" in await shown(pilot)
        await pilot.press("ctrl+t")        # no host given
        await pilot.pause()
        assert "give the conversion server's host name" in await shown(pilot)

    drive(app, scenario)


def test_missing_estimate_is_one_line_and_the_capture_can_still_start():
    services = replay("megaraid_sas")
    services.estimate = None
    services.missing["estimate"] = "estimate is not available in this build (agent.source.estimate.plan)"
    app = build_app(services, ascii_only=True, start_capture_worker=False)

    async def scenario(pilot):
        from agent.source.tui.screens.estimate import EstimateScreen

        app.plan.target = TargetChoice("file", "file:///srv/images")
        app.plan.target_ok = "writable"
        await app.push_screen(EstimateScreen())
        await settle(pilot)
        text = " ".join((await shown(pilot)).split())     # wrapped lines joined
        assert "Estimate: estimate is not available in this build" in text
        assert "You can still start the capture" in text
        await pilot.press("s")
        await pilot.pause()
        assert "Capture 2 disk(s), 1.9 TiB?" in await shown(pilot)
        await pilot.press("enter")         # the default answer is No
        await pilot.pause()
        assert type(app.screen).__name__ == "EstimateScreen"

    drive(app, scenario)


def test_missing_iscsi_says_so():
    services = replay("iscsi")
    services.find_identities = services.iscsi_attach = None
    services.missing["iSCSI"] = "iSCSI is not available in this build (agent.source.iscsi.auto)"
    app = build_app(services, ascii_only=True)

    async def scenario(pilot):
        await pilot.press("i")
        await settle(pilot)
        assert "iSCSI is not available in this build" in await shown(pilot)

    drive(app, scenario)


def test_chap_secret_typed_by_hand_is_never_drawn_and_login_uses_it():
    ident = read_source_config(str(ISCSI_TREES / "rhel7"), device="/dev/sda2")
    calls = []

    def attach(identity, targets, ip, say):
        calls.append((identity, targets, ip))
        say("login refused by the array (recorded)")
        from agent.source.iscsi.errors import IscsiAuthError

        raise IscsiAuthError("CHAP authentication failed for iqn.2001-05.com.example:vol9 (recorded)")

    app = build_app(replay("iscsi", identities=[ident], iscsi_attach=attach), ascii_only=True)

    async def scenario(pilot):
        await pilot.press("i")
        await settle(pilot)
        for wid, text in (("add-portal", "10.9.9.9:3260"), ("add-iqn", "iqn.2001-05.com.example:vol9"),
                          ("add-user", "vol9user"), ("add-secret", "s3cr3tPassw0rd")):
            app.screen.query_one(f"#{wid}").focus()
            await pilot.press(*text)
        assert "s3cr3tPassw0rd" not in await shown(pilot)
        await pilot.press("ctrl+g")
        await pilot.pause()
        text = await shown(pilot)
        assert "iqn.2001-05.com.example:vol9" in text and "vol9user/****" in text
        assert "s3cr3tPassw0rd" not in text
        await pilot.press("ctrl+l")
        await settle(pilot)
        text = await shown(pilot)
        assert "login failed: CHAP authentication failed" in text
        assert "s3cr3tPassw0rd" not in text

    drive(app, scenario)
    (identity, targets, ip), = calls
    assert identity.initiator_name == "iqn.1994-05.com.redhat:db01-prod" and ip == "original"
    added = targets[-1]
    assert added.portal == "10.9.9.9:3260" and added.auth.password.reveal() == "s3cr3tPassw0rd"


def test_network_screen_checks_the_spec_before_applying():
    applied = []
    app = build_app(replay("megaraid_sas", apply_network=lambda text: applied.append(text) or
                           [f"eno1: address {text.split(':', 1)[1]}"]), ascii_only=True)

    async def scenario(pilot):
        await pilot.press("n")
        await settle(pilot)
        spec = app.screen.query_one("#ip-spec")
        spec.value = "eno1:192.168.10.21"
        await pilot.press("enter")
        await settle(pilot)
        assert "has no prefix length" in await shown(pilot)
        assert applied == []
        spec.value = "eno1:192.168.10.21/24,gw=192.168.10.1"
        await pilot.press("enter")
        await settle(pilot)
        assert applied == ["eno1:192.168.10.21/24,gw=192.168.10.1"]
        assert "eno1: address 192.168.10.21/24,gw=192.168.10.1" in await shown(pilot)

    drive(app, scenario)


def test_done_power_off_asks_first():
    services = replay("megaraid_sas")
    app = build_app(services, ascii_only=True, start_capture_worker=False)

    async def scenario(pilot):
        from agent.source.tui.screens.done import DoneScreen
        from tests.tui import recorded

        app.plan.result = recorded.result()
        app.switch_screen(DoneScreen())
        await pilot.pause()
        await pilot.press("p")
        await pilot.pause()
        assert "Power the server off now?" in await shown(pilot)
        await pilot.press("n")
        await pilot.pause()
        assert services.power == []
        await pilot.press("p", "y")
        await pilot.pause()

    drive(app, scenario)
    assert services.power == ["poweroff"]


def test_capture_ending_while_the_cancel_question_is_open_goes_to_done():
    from agent.source.tui.messages import CaptureEnded
    from tests.tui import recorded

    app = build_app(replay("megaraid_sas"), ascii_only=True, start_capture_worker=False)

    async def scenario(pilot):
        screen = await on_progress(app, pilot)
        await pilot.press("c")
        assert "Cancel the capture?" in await shown(pilot)
        screen.post_message(CaptureEnded(result=recorded.result()))
        text = await shown(pilot)
        assert type(app.screen).__name__ == "DoneScreen", type(app.screen)
        assert "CAPTURE COMPLETE AND VERIFIED" in text
        assert not screen.cancel.is_set()

    drive(app, scenario)


def logged_in(calls: list, call, identity) -> IscsiAttachment:
    """A login that records its call and, like the real one, hands back its attachment (no LUNs)."""
    calls.append(call)
    return IscsiAttachment(identity=identity)


def test_edit_a_source_target_keeps_its_recorded_chap():
    ident = read_source_config(str(ISCSI_TREES / "rhel7"), device="/dev/sda2")
    calls = []
    app = build_app(replay("iscsi", identities=[ident],
                           iscsi_attach=lambda i, targets, ip, say: logged_in(calls, targets, i)),
                    ascii_only=True)

    async def scenario(pilot):
        await pilot.press("i")
        await settle(pilot)
        app.screen.query_one("#targets").focus()
        await pilot.press("enter")           # edit the source's own target
        assert app.screen.query_one("#add-iqn").value == "iqn.1992-08.com.netapp:sn.4082367740"
        assert app.screen.query_one("#add-user").value == "db01chap"
        app.screen.query_one("#add-portal").value = "192.168.10.30:3260"   # the array moved
        await pilot.press("ctrl+g")
        text = await shown(pilot)
        assert "192.168.10.30:3260" in text and "db01chap/**** mutual" in text
        await pilot.press("ctrl+l")
        await settle(pilot)

    drive(app, scenario)
    (targets,) = calls
    assert [(t.iqn, t.portal) for t in targets] == [("iqn.1992-08.com.netapp:sn.4082367740", "192.168.10.30:3260")]
    assert targets[0].auth is ident.targets[0].auth        # the recorded secrets, untouched


def test_ctrl_c_asks_and_never_kills():
    app = build_app(replay("megaraid_sas"), ascii_only=True)

    async def scenario(pilot):
        await pilot.press("ctrl+c")
        assert "Leave coldclone for a shell?" in await shown(pilot)
        await pilot.press("n")
        assert type(app.screen).__name__ == "InventoryScreen"

    drive(app, scenario)


def test_no_source_identity_logs_in_as_the_live_system_to_a_typed_ipv6_target():
    from agent.source.iscsi.model import SourceIscsiConfig

    calls = []
    live = SourceIscsiConfig(root="(the live system's own name)", initiator_name="iqn.2026-11.live:cc")
    app = build_app(replay("iscsi", identities=[], live_identity=lambda: live,
                           iscsi_attach=lambda i, targets, ip, say: logged_in(calls, (i, targets), i)),
                    ascii_only=True)

    async def scenario(pilot):
        await pilot.press("i")
        await settle(pilot)
        assert "this live system's own initiator name" in await shown(pilot)
        for wid, text in (("add-portal", "[fe80::1]:3261"), ("add-iqn", "iqn.2001-05.com.example:v6")):
            app.screen.query_one(f"#{wid}").focus()
            await pilot.press(*text)
        await pilot.press("ctrl+g")
        await pilot.pause()
        assert "[fe80::1]:3261" in await shown(pilot)
        await pilot.press("ctrl+l")
        await settle(pilot)
        text = await shown(pilot)
        assert "logging in as this live system" in text and "iqn.2026-11.live:cc" in text, text

    drive(app, scenario)
    (identity, targets), = calls
    assert identity is live
    assert [(t.iqn, t.portal, t.auth) for t in targets] == [("iqn.2001-05.com.example:v6", "[fe80::1]:3261", None)]


def test_progress_says_stalled_and_reconnecting_instead_of_a_stale_rate():
    """Nothing read or sent for a while: the stats line says STALLED for N s (the console's rule,
    estimate.progress.Motion), a reconnect says so, and the rates come back with the data."""
    from agent.source.capture import events as E
    from tests.tui import recorded

    app = build_app(replay("megaraid_sas"), ascii_only=True, start_capture_worker=False)
    clock = recorded.ReplayClock()

    async def scenario(pilot):
        screen = await on_progress(app, pilot, clock)
        events = recorded.events()
        recorded.replay_into(screen.apply, clock, events)
        assert "MB/s" in await shown(pilot) and "STALLED" not in await shown(pilot)
        clock.advance(42.0)                  # the last byte moved 42 s ago
        await pilot.pause(1.2)               # the screen's own 1 s tick redraws it
        text = await shown(pilot)
        assert re.search(r"STALLED for 42 s: nothing read or sent", text), text
        screen.apply(E.Reconnecting(attempt=2, reason="connection lost", wait=4.0, left=580.0))
        assert "RECONNECTING (attempt 2, 580 s left): connection lost" in await shown(pilot)
        last = events[-1]
        clock.advance(18.0)
        screen.apply(E.Progress(last.disk, last.disk_done + 1 << 20, last.disk_size, last.total_done + 1 << 20,
                                last.total_size, last.bytes_read + 1 << 20, last.wire_bytes + 1 << 20,
                                last.zero_bytes, last.elapsed + 60))
        text = await shown(pilot)
        assert "MB/s" in text and "STALLED" not in text and "RECONNECTING" not in text
        # the server verifying after the last disk is not a stall
        screen.apply(E.DiskFinished(last.disk, "ab" * 32, {}))
        clock.advance(60.0)
        await pilot.pause(1.2)
        assert "STALLED" not in await shown(pilot)

    drive(app, scenario)


def test_console_and_tui_show_the_same_figures_for_one_recorded_capture():
    """One recorded capture fed to both front ends at the same times: the console's progress line
    and the TUI's Progress screen show the same read and wire MB/s, totals, elapsed and ETA (one
    model, estimate.progress.CaptureProgress; they used to smooth different byte counts)."""
    import dataclasses
    import io

    from agent.source.console import ProgressPrinter, progress_line
    from agent.units import human_bytes, human_rate, human_seconds
    from tests.tui import recorded

    est = recorded.estimate()
    console_clock = recorded.ReplayClock()
    printer = ProgressPrinter(5.0, out=io.StringIO(), estimate=est, clock=console_clock)
    recorded.replay_into(printer, console_clock)
    console = printer.figures()
    line = progress_line(console)

    app = build_app(replay("megaraid_sas"), ascii_only=True, start_capture_worker=False)
    app.plan.estimate = est
    tui_clock = recorded.ReplayClock()
    got = {}

    async def scenario(pilot):
        from textual.widgets import Static

        screen = await on_progress(app, pilot, tui_clock)
        recorded.replay_into(screen.apply, tui_clock)
        await pilot.pause()
        got["figures"] = screen.progress.figures()
        got["stats"] = str(screen.query_one("#prog-stats", Static).render())
        got["bars"] = {n: (b.done, b.state) for n, b in screen.bars.items()}

    drive(app, scenario)
    tui = got["figures"]
    # the same model state: every figure but the list of bars (the screen also knows the disks
    # the operator selected before the capture named them)
    assert dataclasses.replace(tui, disks=()) == dataclasses.replace(console, disks=())
    assert {d.name: d for d in console.disks} == {d.name: d for d in tui.disks if d.name in ("sda", "sdb")}
    assert got["bars"]["sda"] == (recorded.SDA, "sent") and got["bars"]["sdb"][1] == "reading"
    assert console.read_rate and console.wire_rate and console.eta is not None
    # and the same numbers drawn: the console's line and the screen's stats
    for shown_figure in (f"read {human_rate(console.read_rate)} MB/s", f"wire {human_rate(console.wire_rate)} MB/s",
                         f"{console.total_percent:5.1f}%", human_bytes(console.total_done),
                         f"elapsed {human_seconds(console.elapsed)}", f"ETA {human_seconds(console.eta)}"):
        assert shown_figure in line, (shown_figure, line)
        assert shown_figure.replace(" wire", "wire") in got["stats"].replace("  ", " "), (shown_figure, got["stats"])
