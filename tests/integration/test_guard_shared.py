"""One guard for the whole device tree, shared by every coldclone process (issue 13 items 3-4):
concurrent captures of a disk and its partition, kill -9 leftovers, SIGTERM/SIGHUP/SIGINT."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from agent.source.capture.guard import GUARD_DIR, ReadOnlyGuard, devno, get_ro, set_ro
from agent.runcmd import run
from tests.conftest import BIN, sha256_of, ssh_args
from tests.testbed.resume import image_bytes
from tests.testbed.procs import Spooled
from tests.testbed.loop import LoopDevice
from tests.testbed.privaterun import PrivateRun

pytestmark = pytest.mark.root
MiB = 1 << 20


@pytest.fixture(scope="module")
def busy_disk(tmp_path_factory):
    """384 MiB GPT disk whose partition 1 (320 MiB) is incompressible data: long enough to act
    while both a disk capture and a partition capture are reading."""
    img = str(tmp_path_factory.mktemp("shared") / "disk.img")
    with open(img, "wb") as f:
        f.truncate(384 * MiB)
    run(["parted", "-s", img, "mklabel", "gpt", "mkpart", "p1", "1MiB", "321MiB"])
    with open(img, "r+b") as f:
        f.seek(MiB)
        for _ in range(20):
            f.write(os.urandom(16 * MiB))
    with LoopDevice(img) as loop:
        assert len(loop.parts) == 1
        yield loop


@pytest.fixture(scope="module")
def private():
    """The tests that kill a guard and read who swept it keep their records to themselves
    (tests/testbed/privaterun.py says why)."""
    with PrivateRun() as ns:
        yield ns


def tree(loop):
    return [loop.dev] + loop.parts


def records_for(loop, guard_dir=GUARD_DIR):
    nums = {"%d-%d" % devno(d) for d in tree(loop)}
    if not os.path.isdir(guard_dir):
        return []
    return [n for n in os.listdir(guard_dir) if n.startswith("dev-") and n[4:-5] in nums]


def start_capture(sshd, rx_dir, dev, cid, *extra, ns=None):
    # --calibrate 0: these tests time overlapping captures; the estimate's 3 s probe of the
    # server would only delay when each capture takes its guard.
    argv = ns.argv if ns else (lambda a: a)
    return Spooled(argv([os.path.join(BIN, "coldclone"), "capture", "--disk", dev, *ssh_args(sshd, rx_dir),
                             "--capture-id", cid, "--progress-interval", "0.5", "--calibrate", "0", *extra]))


def wait_streaming(proc, partial, at_least=32 * MiB, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if image_bytes(os.path.dirname(partial), os.path.basename(partial)[:-len(".partial")]) >= at_least:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("capture never started streaming")


def owners(dev):
    """Pids of the coldclone processes guarding dev now, from the shared record."""
    path = os.path.join(GUARD_DIR, "dev-%d-%d.json" % devno(dev))
    try:
        with open(path) as f:
            return {o["pid"] for o in json.load(f)["owners"]}
    except FileNotFoundError:
        return set()


def try_write(part, head):
    """Write the partition's own first 4 KiB back over it: harmless if it ever succeeded."""
    return subprocess.run(["dd", f"if={head}", f"of={part}", "bs=4096", "count=1", "conv=notrunc,fsync"],
                          capture_output=True, text=True)


def test_disk_and_partition_captured_at_once(sshd, rx_dir, busy_disk, tmp_path):
    """The whole-disk capture ends first; the partition capture is still reading: the partition
    must stay read-only until it ends too (the per-device guard made it writable)."""
    part = busy_disk.parts[0]
    head = tmp_path / "head"
    with open(part, "rb") as f:
        head.write_bytes(f.read(4096))
    disk_sha, part_sha = sha256_of(busy_disk.dev), sha256_of(part)
    assert not any(get_ro(d) for d in tree(busy_disk))
    whole = start_capture(sshd, rx_dir, busy_disk.dev, "whole")
    wait_streaming(whole, os.path.join(rx_dir, "whole.partial"))
    single = start_capture(sshd, rx_dir, part, "single")
    wait_streaming(single, os.path.join(rx_dir, "single.partial"), at_least=MiB)
    attempts = []   # (pids guarding the partition throughout the write, dd result)
    while whole.poll() is None or single.poll() is None:
        before = owners(part)
        r = try_write(part, head)
        attempts.append((before & owners(part), r))
        time.sleep(0.2)
    w_out, w_err = whole.communicate()
    s_out, s_err = single.communicate()
    assert whole.returncode == 0, w_err
    assert single.returncode == 0, s_err
    for held, r in attempts:
        if held:
            assert r.returncode != 0 and "Operation not permitted" in r.stderr, (held, r.stderr)
    # the case that broke before: the disk capture done, the partition capture still reading
    assert any(held == {single.pid} for held, _ in attempts), "no write tried after the disk capture ended"
    assert any(held == {whole.pid, single.pid} for held, _ in attempts), "no write tried during both"
    for cid in ("whole", "single"):
        m = json.load(open(os.path.join(rx_dir, cid, "manifest.json")))
        (disk,) = m["disks"]
        assert all(disk["verified"].values()), disk["verified"]
    assert sha256_of(busy_disk.dev) == disk_sha and sha256_of(part) == part_sha
    # afterwards: the original state, and no record left
    assert not any(get_ro(d) for d in tree(busy_disk))
    assert records_for(busy_disk) == []
    assert "stays read-only: still used by coldclone pid" in w_err + s_err


def release(ns):
    """`coldclone release` in the private registry."""
    return subprocess.run(ns.argv([os.path.join(BIN, "coldclone"), "release"]), capture_output=True,
                          text=True, timeout=60)


def test_kill9_leftovers_restored_by_coldclone_release(sshd, rx_dir, busy_disk, private):
    proc = start_capture(sshd, rx_dir, busy_disk.dev, "killed", ns=private)
    wait_streaming(proc, os.path.join(rx_dir, "killed.partial"))
    proc.kill()
    proc.wait()
    # What a kill -9 leaves: the devices read-only, the record naming the dead pid.
    assert all(get_ro(d) for d in tree(busy_disk))
    assert len(records_for(busy_disk, private.guard_dir)) == len(tree(busy_disk))
    assert records_for(busy_disk) == []                # (in the private registry only)
    r = release(private)
    assert r.returncode == 0, r.stderr
    assert f"coldclone: {busy_disk.dev} restored to read-write (left by coldclone pid {proc.pid}, " \
           f"which is gone)" in r.stdout
    # a partition of a loop disk that is still attached is restored, not taken for a detached loop
    for part in busy_disk.parts:
        assert f"coldclone: {part} restored to read-write" in r.stdout
    assert "detached meanwhile" not in r.stdout
    assert not any(get_ro(d) for d in tree(busy_disk))
    assert records_for(busy_disk, private.guard_dir) == []
    # done once: a second release has nothing to say about this disk
    assert busy_disk.dev not in release(private).stdout


def guard_in_child(dev, ns):
    """A real second process holding the guard, as a capture would."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child = subprocess.Popen(ns.argv([sys.executable, "-c",
                              "import sys, time; from agent.source.capture.guard import ReadOnlyGuard; "
                              "g = ReadOnlyGuard([sys.argv[1]]).__enter__(); print('on', flush=True); "
                              "time.sleep(120)", dev], cwd=repo), stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "on"
    return child


def test_kill9_leftovers_restored_by_the_next_run(busy_disk, private):
    """Before: the next capture saw the leftover read-only flag as the device's own state and
    kept the disk read-only for good."""
    child = guard_in_child(busy_disk.dev, private)
    child.kill()
    child.wait()
    assert get_ro(busy_disk.dev)
    # the next run
    with ReadOnlyGuard([busy_disk.dev], guard_dir=private.guard_dir, lock_dir=private.lock_dir):
        assert all(get_ro(d) for d in tree(busy_disk))
    assert not any(get_ro(d) for d in tree(busy_disk))
    assert records_for(busy_disk, private.guard_dir) == []


def test_kill9_of_a_device_read_only_before_stays_read_only(busy_disk, private):
    set_ro(busy_disk.dev, True)
    try:
        child = guard_in_child(busy_disk.dev, private)
        child.kill()
        child.wait()
        r = release(private)
        assert f"{busy_disk.dev} left read-only (it was read-only before)" in r.stdout
        assert get_ro(busy_disk.dev)
        assert records_for(busy_disk, private.guard_dir) == []
    finally:
        set_ro(busy_disk.dev, False)
    # the partition was read-only only through its disk: no flag of ours is left on it
    assert not get_ro(busy_disk.parts[0])


def test_release_leaves_a_running_capture_alone(busy_disk, private):
    child = guard_in_child(busy_disk.dev, private)
    try:
        r = release(private)
        assert f"{busy_disk.dev} left read-only: coldclone pid {child.pid} is still using it" in r.stdout
        assert get_ro(busy_disk.dev)
    finally:
        child.terminate()
        child.wait()
    assert f"coldclone: {busy_disk.dev} restored to read-write (left by coldclone pid {child.pid}" \
           in release(private).stdout
    assert not get_ro(busy_disk.dev)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_mid_capture_aborts_and_releases(sshd, rx_dir, busy_disk, sig):
    name = signal.Signals(sig).name
    cid = f"sig-{name.lower()}"
    proc = start_capture(sshd, rx_dir, busy_disk.dev, cid)
    partial = os.path.join(rx_dir, f"{cid}.partial")
    wait_streaming(proc, partial)
    assert get_ro(busy_disk.dev)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 6, err
    assert f"coldclone: error: capture cancelled by {name}: ABORT sent to the conversion server" in err
    # the receiver was told: only its failure record is left
    assert os.listdir(rx_dir) == [f"{cid}.partial"]
    assert os.listdir(partial) == ["failure.json"]
    assert json.load(open(os.path.join(partial, "failure.json")))["code"] == "aborted"
    assert not any(get_ro(d) for d in tree(busy_disk))
    assert records_for(busy_disk) == []


def test_headless_sigterm_mid_capture_aborts_and_releases(sshd, rx_dir, busy_disk):
    """systemctl stop of the live system's unit: the same clean stop as `coldclone capture`."""
    words = {"server": f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{rx_dir}", "identity": sshd.client_key,
             "hostkey": sshd.fingerprint, "calibrate": "0", "progress": "1", "iscsi": "off",
             "disks": os.path.basename(busy_disk.dev), "capture_id": "hl-term"}
    cmdline = " ".join(f"coldclone.{k}={v}" for k, v in words.items())
    proc = Spooled([os.path.join(BIN, "coldclone"), "headless", "--include-loop", "--baked-root",
                             "/nonexistent", "--cmdline", f"boot=live quiet {cmdline}"])
    partial = os.path.join(rx_dir, "hl-term.partial")
    wait_streaming(proc, partial)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 6, out + err
    assert "COLDCLONE-HEADLESS-FAILED exit=6: capture cancelled by SIGTERM: ABORT sent to the conversion " \
           "server" in out
    assert os.listdir(partial) == ["failure.json"]
    assert json.load(open(os.path.join(partial, "failure.json")))["code"] == "aborted"
    assert not any(get_ro(d) for d in tree(busy_disk))
    assert records_for(busy_disk) == []


def test_guard_says_one_line_per_disk_tree(busy_disk, caplog, private):
    """make demo printed 24 guard lines (each partition set read-only and restored, twice): at the
    default level the guard says one line per disk tree when it takes it and one when it gives it
    back; each device's own line is at -v (debug); a guard nested in one this process already
    holds (inspection mounting /boot inside /) says nothing at the default level."""
    import logging

    caplog.set_level(logging.DEBUG, logger="coldclone.guard")
    # (private: the registry's other users would add the lines of their killed guards' sweeps)
    dirs = {"guard_dir": private.guard_dir, "lock_dir": private.lock_dir}
    with ReadOnlyGuard([busy_disk.dev], **dirs):
        with ReadOnlyGuard([busy_disk.parts[0]], exclusive=False, **dirs):
            assert all(get_ro(d) for d in tree(busy_disk))
    assert not any(get_ro(d) for d in tree(busy_disk))
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "coldclone.guard"]
    names = ", ".join(os.path.basename(d) for d in tree(busy_disk))
    assert [m for lvl, m in said if lvl >= logging.INFO] == [
        f"{busy_disk.dev}: 2 devices ({names}) set read-only in the kernel (were read-write)",
        f"{busy_disk.dev}: 2 devices ({names}) back to the read-only state they had before"]
    per_device = [m for lvl, m in said if lvl == logging.DEBUG]
    assert len(per_device) == 2 * 2 + 2 * 2, per_device     # each device: set, shared, stays, restored
    assert f"{busy_disk.parts[0]} restored to read-write" in per_device
