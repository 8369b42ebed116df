"""Unreadable sectors on the TUI: the Progress screen counts them, the Done screen never calls
the capture a plain success and leaves with exit 7."""

from __future__ import annotations

import dataclasses

from agent.source.capture import events as E
from agent.errors import EXIT_UNREADABLE
from agent.manifest import Unreadable, UnreadableRange
from agent.source.tui.app import build_app
from tests.tui import recorded
from tests.tui.conftest import on_progress, replay
from tests.tui.test_screens import drive, shown


def bad_result():
    res = recorded.result()
    res.disks[0].unreadable = Unreadable(512, [UnreadableRange(2056, 8, 1052672, 4096),
                                               UnreadableRange(20600, 32, 10547200, 16384)])
    assert res.unreadable_sectors == 40
    return res


def test_progress_and_done_show_unreadable_sectors():
    from agent.source.tui.messages import CaptureEnded

    app = build_app(replay("megaraid_sas"), ascii_only=True, start_capture_worker=False)
    codes = []

    async def scenario(pilot):
        screen = await on_progress(app, pilot)
        events = recorded.events()
        last = max(i for i, ev in enumerate(events) if isinstance(ev, E.Progress))
        for i, ev in enumerate(events):
            if i == last:
                ev = dataclasses.replace(ev, unreadable_sectors=40)
            screen.apply(ev)
        await pilot.pause()
        from textual.widgets import Static

        assert "UNREADABLE 40 sectors" in str(screen.query_one("#prog-stats", Static).render())
        screen.post_message(CaptureEnded(result=bad_result()))
        text = await shown(pilot)
        assert type(app.screen).__name__ == "DoneScreen", type(app.screen)
        assert "VERIFIED WITH 40 UNREADABLE SECTORS" in text
        assert "COMPLETE AND VERIFIED" not in text
        assert "40 UNREADABLE sectors of 512 bytes in 2 ranges" in text
        app.exit = codes.append          # the shell key leaves the app with the capture's code
        await pilot.press("s")
        await pilot.pause()

    drive(app, scenario)
    assert codes == [EXIT_UNREADABLE]
