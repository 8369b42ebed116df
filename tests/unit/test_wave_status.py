"""The wave's arithmetic over CaptureStatus lists (agent/server/admin/status.py, page.py): a capture
that moved to another server counts once, the totals and the projected end of a wave, failures
first, and an agent's text kept as text on the page. The integration and VM tests read real roots;
these pin down the sums on lists shaped as `status --json` prints them."""

import json

import pytest

from agent import protocol as P
from agent.server.admin import page
from agent.records import RecordError
from agent.server.admin.status import CaptureStatus, State, dumps, merge, ordered, text_lines, totals

NOW = 1_750_000_000.0
MB = 1_000_000


def st(cid, state, server="ccw-a", wave="w1", size=100 * MB, done=0, rate=None, eta=None, stalled=False,
       host=None, reason=None, updated=NOW - 10):
    return CaptureStatus(cid, State(state), wave, host or f"src-{cid}", server, f"/srv/{cid}", size=size,
                         done=done, rate=rate, eta_seconds=eta, stalled=stalled, reason=reason, updated=updated)


def test_a_capture_that_moved_counts_once_where_it_got_done():
    lost = st("g", "resumable", server="ccw-a", done=40 * MB)
    done = st("g", "verified", server="ccw-b", done=100 * MB)
    other = st("s1", "streaming", server="ccw-a", done=50 * MB, rate=2 * MB, eta=25)
    merged = merge([lost, done, other])
    assert merged[0].superseded_by == "ccw-b" and merged[1].superseded_by is None
    [t] = totals(merged, NOW)
    assert (t.captures, t.done, t.streaming, t.moved, t.size) == (2, 1, 1, 150 * MB, 200 * MB)
    assert t.projected_end == NOW + 25
    # not done anywhere yet: the copy that got further counts (the one streaming after a move),
    # and among equals the newest
    moving = merge([st("x", "resumable", server="ccw-a"), st("x", "streaming", server="ccw-b")])
    assert [s.superseded_by for s in moving] == ["ccw-b", None]
    [t] = totals(moving, NOW)
    assert t.captures == 1 and t.streaming == 1 and t.resumable == 0
    twice = merge([st("y", "failed", server="ccw-a", updated=NOW - 50), st("y", "failed", server="ccw-b")])
    assert [s.superseded_by for s in twice] == ["ccw-b", None]


def test_projected_end_is_the_slowest_running_capture_and_unknown_when_one_waits():
    running = [st("a", "streaming", done=10 * MB, rate=MB, eta=90), st("b", "streaming", done=10 * MB, rate=MB, eta=30)]
    [t] = totals(running, NOW)
    assert t.projected_end == NOW + 90 and t.rate == 2 * MB
    assert "projected end" in t.line(NOW) and "(in 2 min)" in t.line(NOW)
    [t] = totals(running + [st("c", "resumable", done=5 * MB)], NOW)
    assert t.projected_end is None and "1 waiting to resume" in t.line(NOW)
    [t] = totals([st("a", "verified", done=100 * MB, updated=NOW - 60), st("b", "published", done=100 * MB)], NOW)
    assert t.finished == NOW - 10 and "servers done 2 of 2" in t.line(NOW) and "finished" in t.line(NOW)


def test_waves_apart_and_failures_first():
    xs = [st("a", "verified", wave="w2"), st("b", "failed", wave="w1", reason="disk full"),
          st("c", "streaming", wave="w1", rate=MB, eta=5, done=MB), st("d", "streaming", wave=None, stalled=True),
          st("e", "converted", wave="w1")]
    assert [s.capture_id for s in ordered(xs)][:2] == ["d", "b"]        # stalled and failed lead
    assert [t.wave for t in totals(xs, NOW)] == ["w1", "w2", None]
    lines = text_lines(xs, NOW)
    assert "src-d" in lines[0] and lines[1].startswith("failed") and "src-b" in lines[1], lines
    assert any(line.startswith("wave w1: servers done 1 of 3, failed 1") for line in lines), lines


def test_status_json_round_trips_and_refuses_what_is_not_a_status():
    s = st("a", "streaming", done=3, rate=2.5, eta=7.25)
    back = CaptureStatus.load(json.loads(dumps([s]))[0])
    assert back == s
    for bad, says in (({"capture_id": "a", "state": "exploded"}, r"Invalid enum value 'exploded' - at \$\.state"),
                      ({"state": "verified"}, "missing required field capture_id"),
                      ({"capture_id": "a", "state": "verified", "done": -1}, r"Expected int >= 0 - at \$\.done"),
                      ([], "Expected object, got array")):
        with pytest.raises(RecordError, match=says):
            CaptureStatus.load(bad)


def test_the_page_keeps_an_agents_text_as_text():
    evil = '<script>alert(1)</script>'
    html = page.page([st("a", "failed", host=evil, reason=f"refused {evil}")], {"http://b:8023": "timed out <x>"},
                     "coldclone wave", 3, NOW)
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "timed out &lt;x&gt;" in html
    assert 'src="/page.js"' in html and "http" not in html.replace("http://b:8023", "")
