"""Resumable captures over the real sshd: a capture cut at ~50 % (receiver killed, agent killed)
finishes with `--resume` or by reconnecting on its own, without sending again what had arrived;
a source that changed in between is sent again from byte 0, never spliced."""

import hashlib
import json
import os
import signal
import subprocess
import time

import pytest

from agent.server.receive.journal import CHECKPOINT_BYTES
from agent.runcmd import run
from tests.conftest import BIN, ssh_args
from tests.testbed.loop import LoopDevice
from tests.testbed.netns import ShapedServer
from tests.testbed.procs import Spooled, kill_receivers
from tests.testbed.resume import image_bytes, wait_image

pytestmark = pytest.mark.root
MiB = 1 << 20
SIZE = 384 * MiB
CHUNK = 4 * MiB
# What may arrive twice: the receiver's unjournaled tail (at most one checkpoint interval of data)
# plus the chunk being written when it died.
WINDOW = CHECKPOINT_BYTES + CHUNK


@pytest.fixture(scope="module")
def source_img(tmp_path_factory):
    """384 MiB of incompressible data (every byte is DATA: the counts are exact)."""
    img = tmp_path_factory.mktemp("resume") / "src.img"
    with open(img, "wb") as f:
        for _ in range(SIZE // (16 * MiB)):
            f.write(os.urandom(16 * MiB))
    return str(img)


@pytest.fixture
def source(source_img):
    with LoopDevice(source_img) as loop:
        yield loop


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(8 * MiB):
            h.update(b)
    return h.hexdigest()


def capture(sshd, rx_dir, dev, *args) -> subprocess.Popen:
    return Spooled([os.path.join(BIN, "coldclone"), "capture", "--disk", dev, *ssh_args(sshd, rx_dir),
                             "--compress", "none", "--progress-interval", "0.5", *args])


def resumed(source, rx_dir, cid, before) -> tuple[dict, int]:
    """The resumed capture's disk entry and the byte it resumed from; its image equals the
    source, which is unchanged."""
    entry = manifest_of(rx_dir, cid)["disks"][0]
    same_image(source.dev, rx_dir, cid, entry)
    assert sha256_of(source.dev) == before
    return entry, entry["resume"]["resumed_from"]


def kill_receiver(sshd):
    """The receiver and its sshd session die at once (the conversion server's side is gone)."""
    assert kill_receivers(sshd.receiver_root) >= 1


def manifest_of(rx_dir, cid) -> dict:
    return json.load(open(os.path.join(rx_dir, cid, "manifest.json")))


def same_image(dev, rx_dir, cid, entry):
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", dev, os.path.join(rx_dir, cid, entry["image"])])


def test_receiver_killed_at_half_then_resume(sshd, rx_dir, source):
    before = sha256_of(source.dev)
    t0 = time.monotonic()
    first = capture(sshd, rx_dir, source.dev, "--capture-id", "rk", "--reconnect", "0")
    wait_image(first, rx_dir, "rk", SIZE // 2)
    kill_receiver(sshd)
    out, err = first.communicate(timeout=120)
    t_first = time.monotonic() - t0
    assert first.returncode in (3, 5), err
    arrived_first = image_bytes(rx_dir, "rk")
    assert not os.path.exists(os.path.join(rx_dir, "rk"))

    t0 = time.monotonic()
    second = capture(sshd, rx_dir, source.dev, "--resume", "rk")
    out, err = second.communicate(timeout=300)
    t_second = time.monotonic() - t0
    assert second.returncode == 0, err
    assert "the source matches them" in out + err
    entry, held = resumed(source, rx_dir, "rk", before)
    again = entry["received"]["data_bytes"]
    assert entry["resume"]["restarted"] is None
    assert held >= SIZE // 2 - WINDOW and again == SIZE - held
    # Both attempts together: the disk's data plus at most one in-flight window.
    assert arrived_first + again <= SIZE + WINDOW, (arrived_first, again)
    print(f"\nresume after receiver kill: {arrived_first >> 20} MiB arrived, {held >> 20} MiB held, "
          f"{again >> 20} MiB sent again ({(arrived_first + again - SIZE) >> 20} MiB twice); "
          f"{t_first:.1f} s + {t_second:.1f} s")


def test_agent_killed_at_half_then_a_new_agent_resumes(sshd, rx_dir, source):
    before = sha256_of(source.dev)
    first = capture(sshd, rx_dir, source.dev, "--capture-id", "ak")
    wait_image(first, rx_dir, "ak", SIZE // 2)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    # The receiver sees the stream cut: it journals what it holds and leaves failure.json.
    failure = os.path.join(rx_dir, "ak.partial", "failure.json")
    deadline = time.monotonic() + 30
    while not os.path.exists(failure) and time.monotonic() < deadline:
        time.sleep(0.1)
    rec = json.load(open(failure))
    assert rec["resumable"] is True, rec
    arrived_first = image_bytes(rx_dir, "ak")

    second = capture(sshd, rx_dir, source.dev, "--resume", "ak")
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    entry, held = resumed(source, rx_dir, "ak", before)
    # The cut was seen by the receiver: it checkpointed every whole record it had.
    assert held == rec["held"][entry["name"]] and arrived_first - held <= CHUNK
    assert entry["received"]["data_bytes"] == SIZE - held
    print(f"\nresume after agent kill: {arrived_first >> 20} MiB arrived, {held >> 20} MiB held")


def test_changed_source_is_sent_again_not_spliced(sshd, rx_dir, source):
    first = capture(sshd, rx_dir, source.dev, "--capture-id", "chg", "--reconnect", "0")
    wait_image(first, rx_dir, "chg", SIZE // 2)
    kill_receiver(sshd)
    first.communicate(timeout=120)
    assert first.returncode != 0
    # The source changes between the attempts (e.g. it was booted into its own OS): 4 KiB at 1 MiB.
    with open(source.dev, "r+b") as f:
        f.seek(MiB)
        f.write(os.urandom(4096))
        f.flush()
        os.fsync(f.fileno())
    now = sha256_of(source.dev)
    second = capture(sshd, rx_dir, source.dev, "--resume", "chg")
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert "sent again from byte 0: the source changed" in out + err
    entry = manifest_of(rx_dir, "chg")["disks"][0]
    assert entry["resume"]["resumed_from"] == 0
    assert entry["resume"]["restarted"].startswith("the source changed since the held copy was received: bytes 0-")
    assert entry["received"]["data_bytes"] == SIZE
    same_image(source.dev, rx_dir, "chg", entry)
    assert sha256_of(source.dev) == now


def test_receiver_restart_is_survived_in_process(sshd, rx_dir, source):
    """The server side dies mid-capture (as in a receiver restart); the agent reconnects by itself."""
    before = sha256_of(source.dev)
    proc = capture(sshd, rx_dir, source.dev, "--capture-id", "rc", "--reconnect", "60")
    wait_image(proc, rx_dir, "rc", SIZE // 2)
    kill_receiver(sshd)
    arrived_first = image_bytes(rx_dir, "rc")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "reconnecting (attempt 1)" in out + err
    entry, held = resumed(source, rx_dir, "rc", before)
    assert held > 0 and entry["received"]["data_bytes"] == SIZE - held
    assert arrived_first + entry["received"]["data_bytes"] <= SIZE + WINDOW


def test_link_down_longer_than_the_session_then_reconnect(source):
    """The link to the server (sshd in a network namespace, 200 Mbit/s) goes down at ~50 % for
    longer than either end waits: the receiver's session ends (--idle-timeout 5), the agent's
    unacknowledged data times out (--stall-timeout 5); the agent reconnects once the link is back
    and resumes in-process."""
    before = sha256_of(source.dev)
    with ShapedServer(200, receiver_args="--idle-timeout 5") as srv:
        root = srv.sshd.receiver_root
        proc = Spooled(
            [os.path.join(BIN, "coldclone"), "capture", "--disk", source.dev, "--to", srv.url(root),
             "--identity", srv.sshd.client_key, "--known-hosts", srv.sshd.known_hosts, "--compress", "none",
             "--progress-interval", "0.5", "--capture-id", "ln", "--reconnect", "120", "--stall-timeout", "5",
             "--timeout", "3"])
        wait_image(proc, root, "ln", SIZE // 2)
        run(["ip", "link", "set", srv.host_if, "down"])
        t_down = time.monotonic()
        try:
            # Until the receiver has given up on its session (its failure.json), and a while more.
            failure = os.path.join(root, "ln.partial", "failure.json")
            while not os.path.exists(failure) and time.monotonic() - t_down < 60:
                time.sleep(0.2)
            assert os.path.exists(failure), "the receiver never ended its session"
            time.sleep(max(0.0, 12 - (time.monotonic() - t_down)))
        finally:
            run(["ip", "link", "set", srv.host_if, "up"])
        down = time.monotonic() - t_down
        arrived_first = image_bytes(root, "ln")
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "reconnecting (attempt 1)" in out + err
        entry = manifest_of(root, "ln")["disks"][0]
        same_image(source.dev, root, "ln", entry)
        held = entry["resume"]["resumed_from"]
        again = entry["received"]["data_bytes"]
        assert held > 0 and again == SIZE - held
        assert arrived_first + again <= SIZE + WINDOW, (arrived_first, again)
    assert sha256_of(source.dev) == before
    print(f"\nlink down {down:.0f} s at {arrived_first >> 20} MiB: {held >> 20} MiB held, {again >> 20} MiB sent after")
