"""The kill -9 matrix of a disk's finish (issue 19): the receiver dies at each step between the last
byte and the rename of `<id>.partial` to `<id>`, and the next `coldclone capture --resume` ends in
a verified capture equal to the source, every time, without sending the disk again.

Real parts: the sshd forced command, a loop device, the agent. Each kill is at an exact point:
strace's fault injection (tests/testbed/killpoint.py) kills the receiver on entering the syscall
that starts the step, or holds the step while the test kills the receiver's process tree (a
crash takes qemu-img with it)."""

import json
import os
import shutil
import signal
import sys
import threading
import time

import pytest

from agent.devnames import stream_name
from agent.runcmd import run
from tests.conftest import BIN, ssh_args
from tests.testbed.files import sha256_of
from tests.testbed.loop import LoopDevice
from tests.testbed.procs import Spooled
from tests.testbed.receiver import REPO
from tests.testbed.sshd import Sshd

pytestmark = pytest.mark.root
MiB = 1 << 20
SIZE = 48 * MiB
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def kill_sshd(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("kill-sshd"))
    os.chmod(workdir, 0o755)
    spec = os.path.join(workdir, "killspec.json")
    s = Sshd(workdir=workdir, wrapper=f"{sys.executable} {REPO}/tests/testbed/killpoint.py {spec}")
    s.spec = spec
    s.start()
    yield s
    s.stop()
    shutil.rmtree(s.workdir, ignore_errors=True)
    print("\nfinish kill matrix: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMES.items()))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """40 MiB of incompressible data and 8 MiB of zeros (ZERO records: holes in the image)."""
    img = tmp_path_factory.mktemp("kill-src") / "src.img"
    with open(img, "wb") as f:
        f.write(os.urandom(SIZE - 8 * MiB))
        f.truncate(SIZE)
    with LoopDevice(str(img)) as loop:
        yield loop


def capture(s, rx_dir, dev, *args) -> Spooled:
    return Spooled([os.path.join(BIN, "coldclone"), "capture", "--disk", dev, *ssh_args(s, rx_dir),
                    "--compress", "none", "--progress-interval", "5", *args])


def set_spec(s, spec: dict | None) -> None:
    with open(s.spec, "w") as f:
        json.dump(spec or {}, f)
    os.chmod(s.spec, 0o644)


def kill_with(name: str, marker: bytes):
    """While the receiver is held in a qemu-img step: kill the qemu-img running it and its parent,
    the receiver (a crash takes both). Returns the watcher thread."""
    def watch():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = open(f"/proc/{pid}/cmdline", "rb").read()
                    ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if cmd.startswith(b"qemu-img\0" + marker) and name.encode() in cmd:
                    for p in (ppid, int(pid)):
                        try:
                            os.kill(p, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    return
            time.sleep(0.01)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def steps(cid: str, disk: str, rx_dir: str) -> dict[str, dict]:
    """Where each step of the finish starts, as the receiver does it (relative names: inside the
    capture directory's fd; absolute: qemu-img, given the path)."""
    tmp_abs = os.path.join(rx_dir, f"{cid}.partial", f".{disk}.qcow2.tmp")
    return {
        # qemu-img convert writing the qcow2 (held 4 s at each open, then killed with the receiver)
        "convert": {"syscalls": "openat", "path": tmp_abs, "delay": 1.5, "watch": b"convert"},
        # qemu-img compare of the two images
        "compare": {"syscalls": "openat", "path": tmp_abs, "delay": 1.5, "watch": b"compare"},
        # the flush of the qcow2 to disk (the receiver opens it to fsync it)
        "flush": {"syscalls": "openat", "path": f".{disk}.qcow2.tmp"},
        # the verified qcow2 renamed into place
        "image rename": {"syscalls": "renameat,renameat2,rename", "path": f".{disk}.qcow2.tmp"},
        # marked complete in its journal, the raw copy not yet removed
        "raw removal": {"syscalls": "unlinkat,unlink", "path": f"{disk}.raw"},
        # FINISH: manifest.json being written
        "manifest": {"syscalls": "openat", "path": ".manifest.json.tmp"},
        # FINISH: the rename that marks the capture complete
        "rename": {"syscalls": "renameat,renameat2,rename", "path": f"{cid}.partial"},
        # after the rename: the resume journals removed from the complete capture
        "journal removal": {"syscalls": "unlinkat,unlink", "path": f"{disk}.journal"},
    }


STEPS = ["convert", "compare", "flush", "image rename", "raw removal", "manifest", "rename", "journal removal"]


@pytest.mark.parametrize("step", STEPS)
def test_a_receiver_killed_in_the_finish_resumes_to_a_verified_capture(kill_sshd, source, tmp_path, step):
    s = kill_sshd
    rx_dir = os.path.join(s.receiver_root, step.replace(" ", "-"))
    os.makedirs(rx_dir)
    shutil.chown(rx_dir, s.user)
    disk = stream_name(os.path.basename(source.dev))
    cid = "k-" + step.replace(" ", "-")
    spec = steps(cid, disk, rx_dir)[step]
    before = sha256_of(source.dev)
    t0 = time.monotonic()
    set_spec(s, {k: v for k, v in spec.items() if k != "watch"})
    watcher = kill_with(f".{disk}.qcow2.tmp", spec["watch"]) if "watch" in spec else None
    try:
        first = capture(s, rx_dir, source.dev, "--capture-id", cid, "--reconnect", "0")
        out, err = first.communicate(timeout=300)
    finally:
        set_spec(s, None)
    if watcher is not None:
        watcher.join(5)
    assert first.returncode != 0, f"the receiver was not killed at {step}: {out}{err}"
    partial = os.path.join(rx_dir, f"{cid}.partial")
    left = sorted(os.listdir(partial)) if os.path.isdir(partial) else sorted(os.listdir(os.path.join(rx_dir, cid)))

    second = capture(s, rx_dir, source.dev, "--resume", cid)
    out2, err2 = second.communicate(timeout=300)
    final = os.path.join(rx_dir, cid)
    if step == "journal removal":
        # Killed after the rename: the capture was complete already. The resume says so (and
        # clears the journal left in it); nothing is sent again.
        assert second.returncode != 0 and "is already complete" in out2 + err2, out2 + err2
    else:
        assert second.returncode == 0, f"resume after a kill at {step} (it left {left}): {out2}{err2}"
    assert not os.path.exists(partial)
    assert sorted(os.listdir(final)) == sorted(["manifest.json", f"{disk}.qcow2"]), (step, left)
    manifest = json.load(open(os.path.join(final, "manifest.json")))
    entry = manifest["disks"][0]
    assert entry["verified"] == {"record_digests": True, "disk_digest": True, "readback_digest": True,
                                 "qemu_img_compare": True}
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", source.dev, os.path.join(final, entry["image"])])
    assert sha256_of(source.dev) == before
    if step != "journal removal":
        # straight to verification: the whole disk was held, not one byte of it sent again
        assert entry["resume"]["resumed_from"] == SIZE and entry["received"]["data_bytes"] == 0, entry
    TIMES[step] = time.monotonic() - t0
