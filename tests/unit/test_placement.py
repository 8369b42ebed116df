"""Where a capture goes when the agent has several conversion servers (capture/placement.py): the
order it tries them in, and how it moves on when the one it has stops answering or is full.
The servers' answers are the typed READY models a receiver sends (its `load`, its unfinished
captures); the connections are stand-ins that fail or succeed as a server would."""

import pytest

from agent import protocol as P
from agent.errors import ConnectionError_, ServerError
from agent.source.capture import lookup
from agent.source.capture.placement import Placement, Server, rank

GB = 10 ** 9


def server(url, *, running=0, free=100 * GB, unfinished=(), error=None, connect=None):
    s = Server(url, connect or (lambda: f"conn:{url}"))
    if error is not None:
        s.error = error
    else:
        s.answer = lookup.Answer(list(unfinished), P.ServerLoad(free_bytes=free, running=running))
    return s


def held(cid, updated=100.0):
    ident = P.DiskIdentity("vda", 1 << 30, serial="S1")
    return P.Unfinished(cid, (P.UnfinishedDisk(ident, 1 << 29),), updated, matched_by="serial")


def urls(order):
    return [s.url for s in order]


def test_the_least_busy_first():
    a = server("ssh://cc@a/", running=2)
    b = server("ssh://cc@b/", running=0, free=10 * GB)
    c = server("ssh://cc@c/", running=1, free=50 * GB)
    assert urls(rank([a, b, c], "src", None)) == ["ssh://cc@b/", "ssh://cc@c/", "ssh://cc@a/"]


def test_equally_busy_servers_take_sources_in_proportion_to_their_room():
    """Sources that start together see the same loads: each goes first to a server for a share of
    them proportional to its free space, not all to the roomiest (what the first design did: a
    wave bench run put all four sources on one server)."""
    b = server("ssh://cc@b/", free=10 * GB)
    c = server("ssh://cc@c/", free=50 * GB)
    firsts = [rank([b, c], f"disk-{n}", None)[0].url for n in range(600)]
    share = firsts.count("ssh://cc@b/") / len(firsts)
    assert 0.10 < share < 0.24, share        # 1/6 expected


def test_a_server_holding_these_disks_comes_first_however_busy():
    a = server("ssh://cc@a/", running=0)
    b = server("ssh://cc@b/", running=5, unfinished=[held("web-01")])
    assert urls(rank([a, b], "src", None)) == ["ssh://cc@b/", "ssh://cc@a/"]


def test_full_and_down_servers_go_last():
    full = server("ssh://cc@full/", running=0, free=1 * GB)
    down = server("ssh://cc@down/", error="connection refused")
    busy = server("ssh://cc@busy/", running=3, free=90 * GB)
    assert urls(rank([down, full, busy], "src", need=5 * GB)) == [
        "ssh://cc@busy/", "ssh://cc@full/", "ssh://cc@down/"]


def test_equal_servers_spread_the_sources():
    """Sources starting together see the same loads: the rendezvous hash gives each its own
    order, so they do not all take the first server."""
    servers = [server(f"ssh://cc@s{i}/") for i in range(2)]
    firsts = {rank(servers, f"host-{n}|/dev/sda", None)[0].url for n in range(40)}
    assert firsts == {"ssh://cc@s0/", "ssh://cc@s1/"}
    # ... and the same source always the same order
    assert urls(rank(servers, "host-7|/dev/sda", None)) == urls(rank(servers, "host-7|/dev/sda", None))


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def flaky(state):
    def connect():
        if state["down"]:
            raise ConnectionError_("cannot connect: Connection refused")
        return "conn"
    return connect


def test_before_anything_was_sent_a_down_server_is_left_at_once():
    said = []
    a = Server("ssh://cc@a/", flaky({"down": True}))
    b = Server("ssh://cc@b/", flaky({"down": False}))
    p = Placement([a, b], failover=60, say=said.append)
    assert p.connect() == "conn" and p.current is b
    assert "ssh://cc@a/ is not reachable" in said[0] and "moves to ssh://cc@b/" in said[0]


def test_a_server_that_goes_down_mid_capture_is_waited_for_then_left():
    clock, said = Clock(), []
    sa, sb = {"down": False}, {"down": False}
    a, b = Server("ssh://cc@a/", flaky(sa)), Server("ssh://cc@b/", flaky(sb))
    p = Placement([a, b], failover=60, say=said.append, clock=clock)
    p.connect()
    sa["down"] = True
    for t in (1, 3, 7, 15, 31, 59):      # the reconnect loop's backoff: still waiting for a
        clock.t = t
        with pytest.raises(ConnectionError_):
            p.connect()
        assert p.current is a
    clock.t = 61
    assert p.connect() == "conn" and p.current is b
    assert "ssh://cc@a/ is not reachable for 60 s" in said[-1]     # since the first failed attempt (t=1)
    assert "starting there anew; what it had stays on ssh://cc@a/, resumable" in said[-1]


def test_a_server_back_within_the_failover_time_keeps_the_capture():
    clock = Clock()
    sa = {"down": False}
    a, b = Server("ssh://cc@a/", flaky(sa)), Server("ssh://cc@b/", flaky({"down": False}))
    p = Placement([a, b], failover=60, clock=clock)
    p.connect()
    sa["down"] = True
    clock.t = 30
    with pytest.raises(ConnectionError_):
        p.connect()
    sa["down"] = False
    clock.t = 45
    assert p.connect() == "conn" and p.current is a
    sa["down"] = True         # down again later: the wait starts over
    clock.t = 100
    with pytest.raises(ConnectionError_):
        p.connect()
    assert p.current is a


def test_a_full_server_is_left_at_once_other_refusals_are_not():
    said = []
    a, b = Server("ssh://cc@a/", flaky({"down": False})), Server("ssh://cc@b/", flaky({"down": False}))
    p = Placement([a, b], failover=60, say=said.append)
    p.connect()
    assert not p.moves_on(ServerError("digest mismatch", code="corrupt"))
    assert p.current is a
    assert p.moves_on(ServerError("not enough space", code="disk_full"))
    assert p.current is b and "has no room for this capture" in said[-1]
    # one server alone: nowhere to go
    assert not Placement([a], failover=60).moves_on(ServerError("full", code="disk_full"))
