"""`coldclone-server status --root DIR --json`: each capture's state, read from what the receiver
leaves (manifests, journals, failure files, its locks), while real captures run into a real sshd.

One capture of 32 MiB of incompressible data, paced by the agent's own bwlimit (2 MB/s) so it
can be watched: streaming (rate, ETA, its wave and source), stalled (the agent stopped with
SIGSTOP: its journal stops moving), resumable (the receiver killed -9: what is held), verified
(resumed to the end); a second one stopped by the operator: failed, with the reason. The
conversion queue's states (queued, converting) come from the queue's own locks: two converters
hold slots of a root with --max-conversions 1.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import BIN, ssh_args
from tests.integration.test_resume import kill_receiver, same_image
from tests.testbed.loop import LoopDevice
from tests.testbed.procs import Spooled

pytestmark = pytest.mark.root
MiB = 1 << 20
SIZE = 32 * MiB


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    img = tmp_path_factory.mktemp("status") / "src.img"
    with open(img, "wb") as f:
        f.write(os.urandom(SIZE))
    with LoopDevice(str(img)) as loop:
        yield loop


def status(root, *args) -> list[dict]:
    r = subprocess.run([os.path.join(BIN, "coldclone-server"), "status", "--root", root, "--json", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def one(root, cid, *args) -> dict:
    found = [s for s in status(root, *args) if s["capture_id"] == cid]
    assert len(found) == 1, status(root, *args)
    return found[0]


def until(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)


def capture(sshd, rx_dir, dev, *args):
    return Spooled([os.path.join(BIN, "coldclone"), "capture", "--disk", dev, *ssh_args(sshd, rx_dir),
                    "--compress", "none", "--calibrate", "0", "--progress-interval", "1", *args])


def test_states_of_a_capture_as_it_goes(sshd, rx_dir, source):
    t0 = time.monotonic()
    proc = capture(sshd, rx_dir, source.dev, "--capture-id", "st-1", "--wave", "wave-7", "--bwlimit", "16mbit",
                   "--reconnect", "0")
    st = until("streaming with a rate", lambda: (s := [x for x in status(rx_dir) if x["capture_id"] == "st-1"])
               and s[0]["state"] == "streaming" and s[0]["rate"] and s[0]["done"] > 4 * MiB and s[0])
    assert (st["wave"], st["server"], st["size"]) == ("wave-7", socket.gethostname(), SIZE)
    assert not st["stalled"] and 0 < st["done"] < SIZE
    # the agent's cap (2 MB/s) is what the journal's checkpoints show
    assert 1.0e6 < st["rate"] < 2.6e6, st
    assert st["eta_seconds"] == pytest.approx((SIZE - st["done"]) / st["rate"], rel=0.01)

    os.kill(proc.pid, signal.SIGSTOP)           # the agent stops sending (a hung source, a cut cable)
    try:
        st = until("stalled", lambda: (s := one(rx_dir, "st-1", "--stall", "2"))["stalled"] and s, timeout=30)
        assert st["state"] == "streaming" and "STALLED" in st["detail"] and st["eta_seconds"] is None
        assert not one(rx_dir, "st-1")["stalled"] or time.monotonic() - t0 > 30   # default: 30 s
    finally:
        os.kill(proc.pid, signal.SIGCONT)

    kill_receiver(sshd)                          # the receiver dies: the agent (--reconnect 0) gives up
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    st = until("resumable", lambda: (s := one(rx_dir, "st-1"))["state"] == "resumable" and s)
    assert 0 < st["done"] < SIZE and "held" in st["detail"], st

    again = capture(sshd, rx_dir, source.dev, "--resume", "st-1", "--wave", "wave-7")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    st = one(rx_dir, "st-1")
    assert (st["state"], st["done"], st["size"], st["wave"]) == ("verified", SIZE, SIZE, "wave-7")
    same_image(source.dev, rx_dir, "st-1", json.load(open(os.path.join(rx_dir, "st-1", "manifest.json")))["disks"][0])

    stop = capture(sshd, rx_dir, source.dev, "--capture-id", "st-2", "--bwlimit", "16mbit", "--resume", "off")
    until("st-2 streaming", lambda: any(x["capture_id"] == "st-2" and x["done"] for x in status(rx_dir)))
    stop.send_signal(signal.SIGINT)             # the operator cancels: the receiver discards it
    stop.communicate(timeout=60)
    st = until("failed", lambda: (s := one(rx_dir, "st-2"))["state"] == "failed" and s)
    assert "aborted" in st["reason"] and st["wave"] is None

    text = subprocess.run([os.path.join(BIN, "coldclone-server"), "status", "--root", rx_dir],
                          capture_output=True, text=True).stdout
    lines = text.splitlines()
    assert lines[0].startswith("failed") and "st-2" in lines[0], text       # failures first
    assert any(line.startswith("verified") and "st-1" in line for line in lines), text
    assert "wave wave-7: servers done 1 of 1, failed 0" in text, text


QUEUE_HOLDER = """
import sys, time
from agent.server.receive.convqueue import conversion_slot
root, capture, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
with conversion_slot(root, capture, limit, poll=0.1) as slot:
    print("slot", slot, flush=True)
    sys.stdin.readline()        # converting until told to stop
"""


def test_conversion_queue_states(sshd, rx_dir, source):
    """Three complete captures, converters of a root with one slot: the first converts, the other
    two wait in the order they came; status says so, and the next one takes the slot when it frees."""
    ids = ["q-1", "q-2", "q-3"]
    for cid in ids:
        p = capture(sshd, rx_dir, source.dev, "--capture-id", cid)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    holders = []
    try:
        for cid in ids:
            h = subprocess.Popen([sys.executable, "-c", QUEUE_HOLDER, rx_dir, os.path.join(rx_dir, cid), "1"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            holders.append(h)
            if cid == "q-1":
                assert h.stdout.readline().strip() == "slot 0"
            time.sleep(0.3)          # an order of arrival
        until("queued", lambda: [one(rx_dir, c)["state"] for c in ids] == ["converting", "queued", "queued"])
        assert "1 in line" in one(rx_dir, "q-2")["detail"] and "2 in line" in one(rx_dir, "q-3")["detail"]
        assert "slot 1 of 1" in one(rx_dir, "q-1")["detail"]
        holders[0].stdin.write("\n")
        holders[0].stdin.flush()
        holders[0].wait(10)
        assert holders[1].stdout.readline().strip() == "slot 0"      # first come, first served
        until("next", lambda: [one(rx_dir, c)["state"] for c in ids] == ["verified", "converting", "queued"])
    finally:
        for h in holders:
            h.kill()
            h.wait()
    assert [one(rx_dir, c)["state"] for c in ids] == ["verified"] * 3      # a killed converter leaves nothing
