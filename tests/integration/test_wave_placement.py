"""Agents spread over two conversion servers (each set up by `coldclone-server init`, one agents'
key for both, two pins), over real sshds on 127.0.0.1: the least busy server takes a capture, a
server without room for it is left for the other, and a server lost mid-capture is left after
--failover seconds: the capture moves to the other and finishes there, identical to its source,
while what the lost one held stays there, resumable (and the merged view says where it got done).

The host-side twin of tests/vm/test_wave.py, cheap enough for every run.
"""

import json
import os
import shutil
import signal
import tempfile
import time
import urllib.request

import pytest

from agent.runcmd import run
from tests.conftest import BIN, sha256_of
from tests.integration.test_resume import same_image
from tests.testbed.convserver import ConversionServer, remove_user
from tests.testbed.loop import LoopDevice
from tests.testbed.procs import Spooled, free_port

pytestmark = pytest.mark.root
MiB = 1 << 20


@pytest.fixture(scope="module")
def servers():
    """A (its root a 48 MiB tmpfs: real ENOSPC) and B, one agents' key for both."""
    work = tempfile.mkdtemp(prefix="ccw-place-", dir="/var/tmp")
    os.chmod(work, 0o755)
    for u in ("ccw-pa", "ccw-pb"):
        remove_user(u)
    a = ConversionServer("ccw-pa", "ccw-pa", os.path.join(work, "a"))
    b = ConversionServer("ccw-pb", "ccw-pb", os.path.join(work, "b"))
    os.makedirs(a.root)
    run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "ccw-pa", a.root])
    try:
        a.set_up()
        b.set_up("--identity", a.init.identity)
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()
        run(["umount", a.root], check=False)
        for u in ("ccw-pa", "ccw-pb"):
            remove_user(u)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("place")
    sizes = {"small": 4 * MiB, "big": 48 * MiB, "busy": 16 * MiB, "lost": 12 * MiB}
    for name, size in sizes.items():
        with open(d / name, "wb") as f:
            f.write(os.urandom(size))
    loops = {name: LoopDevice(str(d / name)) for name in sizes}
    for lp in loops.values():
        lp.__enter__()
    yield {name: lp.dev for name, lp in loops.items()}
    for lp in loops.values():
        lp.__exit__(None, None, None)


def capture(servers, dev, cid, *args) -> Spooled:
    """`coldclone capture` to these servers (in this order), with their pins and the one key."""
    to = []
    for s in servers:
        to += ["--to", s.url(), "--hostkey", s.init.hostkey]
    return Spooled([os.path.join(BIN, "coldclone"), "capture", "--disk", dev, *to, "--identity", servers[0].init.identity,
                    "--compress", "none", "--calibrate", "0",
                    "--capture-id", cid, "--progress-interval", "1", *args])


def finished(p: Spooled) -> str:
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, (out + err)[-4000:]
    return out + err


def where(srv, cid):
    return os.path.join(srv.root, cid)


def wait_streaming(srv, cid, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(s["capture_id"] == cid and s["state"] == "streaming" and s["done"] for s in srv.status()):
            return
        time.sleep(0.2)
    raise AssertionError(f"{cid} is not streaming on {srv.name}: {srv.status()}")


def test_least_busy_takes_it_and_a_full_server_is_left(servers, sources):
    a, b = servers
    # b is busy with a slow capture that can go only there (a minute at least: stopped at the end)
    busy = capture([b], sources["busy"], "pl-busy", "--bwlimit", "2mbit")
    try:
        busy_elsewhere(servers, sources, busy)
    finally:
        busy.send_signal(signal.SIGINT)      # the operator stops it: b discards it
        busy.communicate(timeout=60)


def busy_elsewhere(servers, sources, busy):
    a, b = servers
    wait_streaming(b, "pl-busy")
    text = finished(capture(servers, sources["small"], "pl-small"))
    assert f"capturing to {a.url()} (the least busy)" in text, text
    assert f"conversion server {b.url()}: 1 capture(s) running" in text, text
    same_image(sources["small"], a.root, "pl-small",
               json.load(open(os.path.join(where(a, "pl-small"), "manifest.json")))["disks"][0])
    # 48 MiB of data (and its qcow2) does not fit a's 48 MiB: b takes it, busy or not
    text = finished(capture(servers, sources["big"], "pl-big"))
    assert busy.poll() is None, "the busy capture ended too soon for this test"
    assert f"capturing to {b.url()} (the capture needs about" in text, text
    assert not os.path.exists(where(a, "pl-big.partial")) and os.path.isdir(where(b, "pl-big"))


def test_a_server_lost_mid_capture_is_left_after_failover(servers, sources, tmp_path):
    a, b = servers
    before = sha256_of(sources["lost"])
    p = capture(servers, sources["lost"], "pl-lost", "--bwlimit", "16mbit", "--failover", "3")
    try:
        lost_mid_capture(servers, sources, p, before)
    finally:
        if p.poll() is None:       # a failed assertion must not leave it reconnecting for 10 minutes
            p.kill()
            p.wait()


def lost_mid_capture(servers, sources, p, before):
    a, b = servers
    deadline = time.monotonic() + 60
    while not any(os.path.isdir(where(s, "pl-lost.partial")) for s in servers):
        assert time.monotonic() < deadline and p.poll() is None, "".join(p.communicate())[-3000:]
        time.sleep(0.1)
    first, other = (a, b) if os.path.isdir(where(a, "pl-lost.partial")) else (b, a)
    wait_streaming(first, "pl-lost")
    time.sleep(1.0)
    assert first.kill() >= 1        # its receiver (and sshd's sh -c around it)
    text = finished(p)
    assert f"{first.url()} is not reachable for" in text, text
    assert f"the capture moves to {other.url()} (starting there anew; what it had stays on {first.url()}" in text
    m = json.load(open(os.path.join(where(other, "pl-lost"), "manifest.json")))
    same_image(sources["lost"], other.root, "pl-lost", m["disks"][0])
    assert sha256_of(sources["lost"]) == before
    first.start()          # the lost server is back: what it held is there, resumable
    [held] = [s for s in first.status() if s["capture_id"] == "pl-lost"]
    assert held["state"] == "resumable" and 0 < held["done"] < 12 * MiB, held
    # the page merges both servers: the copy on the lost one is superseded
    port_a, port_b = free_port(), free_port()
    web_b = other.start_web(port_b)
    web_a = first.start_web(port_a, peers=(web_b,))
    with urllib.request.urlopen(f"{web_a}/api/status", timeout=10) as r:
        merged = json.load(r)
    copies = {s["conversion_server"]: s for s in merged if s["capture_id"] == "pl-lost"}
    assert copies[other.name]["state"] == "verified" and copies[other.name]["superseded_by"] is None
    assert copies[first.name]["state"] == "resumable" and copies[first.name]["superseded_by"] == other.name
