"""A capture cut in the middle: by the network (server side gone) or by the operator (Ctrl-C)."""

import json
import os
import signal
import subprocess
import time

import pytest

from tests.testbed.procs import Spooled
from tests.testbed.loop import LoopDevice
from tests.conftest import BIN, ssh_args

pytestmark = pytest.mark.root
MiB = 1 << 20


@pytest.fixture(scope="module")
def busy_disk(tmp_path_factory):
    """768 MiB of incompressible data: long enough to interrupt mid-stream."""
    img = tmp_path_factory.mktemp("busy") / "busy.img"
    with open(img, "wb") as f:
        for _ in range(768 // 16):
            f.write(os.urandom(16 * MiB))
    with LoopDevice(str(img)) as loop:
        yield loop


def start_capture(sshd, rx_dir, dev, cid, *args):
    return Spooled([os.path.join(BIN, "coldclone"), "capture", "--disk", dev, *ssh_args(sshd, rx_dir),
                             "--capture-id", cid, "--progress-interval", "0.2", *args])


def wait_streaming(proc, partial, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.isdir(partial) and any(n.endswith(".qcow2") for n in os.listdir(partial)):
            image = [n for n in os.listdir(partial) if n.endswith(".qcow2")][0]
            if os.stat(os.path.join(partial, image)).st_blocks * 512 > 32 * MiB:
                return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("capture never started streaming")


def receiver_pids(rx_root):
    out = subprocess.run(["pgrep", "-f", f"coldclone-receive --root {rx_root}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_connection_cut_mid_capture(sshd, rx_dir, busy_disk):
    # Without reconnecting (the default reconnects and resumes: tests/integration/test_resume.py).
    proc = start_capture(sshd, rx_dir, busy_disk.dev, "cut", "--reconnect", "0")
    wait_streaming(proc, os.path.join(rx_dir, "cut.partial"))
    # The server side vanishes at once (as when the link or the server dies): the
    # sshd session process and the receiver under it are killed.
    for pid in receiver_pids(sshd.receiver_root):
        ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        os.kill(ppid, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode in (3, 5), err
    assert "connection to the conversion server lost" in err or "ended the session" in err
    assert not os.path.exists(os.path.join(rx_dir, "cut")), "nothing may be marked complete"
    assert "complete in" not in out


def test_operator_interrupt_discards_server_side(sshd, rx_dir, busy_disk):
    proc = start_capture(sshd, rx_dir, busy_disk.dev, "intr")
    partial = os.path.join(rx_dir, "intr.partial")
    wait_streaming(proc, partial)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 6, err
    assert "cancelled" in err
    assert not os.path.exists(os.path.join(rx_dir, "intr"))
    # The agent told the receiver, which removed the half-written image.
    assert os.listdir(partial) == ["failure.json"]
    failure = json.load(open(os.path.join(partial, "failure.json")))
    assert failure["code"] == "aborted"
    # The guard was released despite the interrupt.
    assert open(f"/sys/class/block/{os.path.basename(busy_disk.dev)}/ro").read().strip() == "0"
