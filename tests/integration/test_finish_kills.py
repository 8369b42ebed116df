"""The kill -9 matrix of a disk's finish (issue 19, over issue 21's finish): the receiver dies at each
step between the last byte and the rename of `<id>.partial` to `<id>` (flush, close of the image,
qemu-img check, marking it complete, manifest, rename, and the journals' removal after it), and the
next `coldclone capture --resume` ends in a verified capture equal to the source, every time,
without sending the disk again (from the flush on, the whole disk is held).

Real parts: the sshd forced command, a loop device, the agent, qemu-nbd. Each kill is at an exact
point: strace's fault injection (tests/testbed/killpoint.py) kills the receiver on entering the
syscall that starts the step, or holds a child's step (qemu-nbd's flush, qemu-img check) while
the test kills the child and the receiver (a crash takes both)."""

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


def _procs():
    """(pid, ppid, argv bytes) of every process."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read()
                ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            yield int(pid), ppid, cmd


def _in_syscall(pid: int, nr: int) -> bool:
    """A thread of pid is inside syscall nr (held there by strace's delay)."""
    try:
        return any(open(f"/proc/{pid}/task/{t}/syscall").read().split()[:1] == [str(nr)]
                   for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return False


def kill_when(found) -> threading.Thread:
    """While the receiver is held in a step its child does (qemu-img check, qemu-nbd's flush): kill
    the child and its parent, the receiver, at once (a crash takes both). found(pid, argv, proc) says
    which child; the watcher gives up after 120 s."""
    def watch():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for pid, ppid, cmd in _procs():
                if found(pid, cmd):
                    for p in (ppid, pid):
                        try:
                            os.kill(p, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    return
            time.sleep(0.01)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


FDATASYNC = 75    # x86_64


def steps(cid: str, disk: str, rx_dir: str) -> dict[str, dict]:
    """Where each step of a disk's finish starts, as the receiver does it (relative names: inside
    the capture directory's fd; absolute: what a child is given)."""
    image = os.path.join(rx_dir, f"{cid}.partial", f"{disk}.qcow2")

    def nbd_flush_after_the_data(pid, cmd):
        # qemu-nbd inside the flush, once every byte of data is in the image (the ZERO records
        # that end the disk write nothing): the END's flush, or a checkpoint's just before it
        return (cmd.startswith(b"qemu-nbd\0") and disk.encode() in cmd and _in_syscall(pid, FDATASYNC)
                and os.path.exists(image) and os.stat(image).st_blocks * 512 >= DATA)

    return {
        # END: the image flushed (qemu-nbd's fdatasync held 1.5 s), before the journal's last checkpoint
        "flush": {"syscalls": "fdatasync", "path": image, "delay": 1.5, "watch": nbd_flush_after_the_data},
        # the image closed: qemu-nbd stopped (SIGTERM), every byte checkpointed and read back
        "close": {"syscalls": "kill"},
        # qemu-img check of the closed qcow2 (its open of the image held 1.5 s)
        "check": {"syscalls": "openat", "path": image, "delay": 1.5,
                  "watch": lambda pid, cmd: cmd.startswith(b"qemu-img\0check") and disk.encode() in cmd},
        # checked, about to be marked complete in its journal (the receiver stats the image first)
        "mark complete": {"syscalls": "newfstatat,statx,stat,lstat", "path": f"{disk}.qcow2"},
        # FINISH: manifest.json being written
        "manifest": {"syscalls": "openat", "path": ".manifest.json.tmp"},
        # FINISH: the rename that marks the capture complete
        "rename": {"syscalls": "renameat,renameat2,rename", "path": f"{cid}.partial"},
        # after the rename: the resume journals removed from the complete capture
        "journal removal": {"syscalls": "unlinkat,unlink", "path": f"{disk}.journal"},
    }


STEPS = ["flush", "close", "check", "mark complete", "manifest", "rename", "journal removal"]
DATA = SIZE - 8 * MiB


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
    watcher = kill_when(spec["watch"]) if "watch" in spec else None
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
                                 "qemu_img_check": True}
    # one image, nothing else: no raw copy, no socket, no temp file left behind
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", source.dev, os.path.join(final, entry["image"])])
    assert sha256_of(source.dev) == before
    if step == "flush":
        # killed before the last checkpoint: what the one before it vouched for is kept, the rest
        # (the tail after it) is sent again
        assert 0 < entry["resume"]["resumed_from"] <= SIZE, entry
    elif step != "journal removal":
        # straight to verification: the whole disk was held, not one byte of it sent again
        assert entry["resume"]["resumed_from"] == SIZE and entry["received"]["data_bytes"] == 0, entry
    TIMES[step] = time.monotonic() - t0
