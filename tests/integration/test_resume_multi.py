"""Resumable captures of two disks in one capture, over the real sshd: a cut in the second disk
(receiver killed, agent killed, or the receiver restarted under a reconnecting agent) does not send
the first (verified) disk again; a cut in the first resumes it and sends the second whole; a second
disk whose source changed in between is sent again from byte 0, the first is not; a resume that
leaves out a held disk is refused before any data and loses nothing; an agent killed while the
receiver's syncs are slow (strace) still leaves a complete failure record.

Two loop devices over files of incompressible data, `--compress none`: every byte is DATA, so
the receiver's counts are exact."""

import json
import os
import signal
import time

import pytest

from agent.devnames import stream_name
from tests.integration.test_resume import CHUNK, WINDOW, capture, kill_receiver, manifest_of, same_image, sha256_of
from agent.server.receive.unfinished import gc
from tests.testbed.loop import LoopDevice
from tests.testbed.procs import receiver_pids, slow_syscall, stop_process
from tests.testbed.resume import image_bytes, wait_image

pytestmark = pytest.mark.root
MiB = 1 << 20
SIZE_A = 192 * MiB
SIZE_B = 256 * MiB


@pytest.fixture(scope="module")
def source_imgs(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume-multi")
    imgs = []
    for name, size in (("a.img", SIZE_A), ("b.img", SIZE_B)):
        with open(d / name, "wb") as f:
            for _ in range(size // (16 * MiB)):
                f.write(os.urandom(16 * MiB))
        imgs.append(str(d / name))
    return imgs


@pytest.fixture
def sources(source_imgs):
    with LoopDevice(source_imgs[0]) as a, LoopDevice(source_imgs[1]) as b:
        yield a, b


def disk_name(loop: LoopDevice) -> str:
    return stream_name(os.path.basename(loop.dev))


def capture_two(sshd, rx_dir, a, b, *args):
    """One `coldclone capture --disk A --disk B`."""
    return capture(sshd, rx_dir, a.dev, "--disk", b.dev, *args)


def entries(rx_dir, cid, a, b) -> tuple[dict, dict]:
    """The manifest entries of disk A and disk B, in the order they were sent."""
    disks = manifest_of(rx_dir, cid)["disks"]
    assert [d["name"] for d in disks] == [disk_name(a), disk_name(b)]
    return disks[0], disks[1]


def resume(sshd, rx_dir, cid, a, b) -> tuple[str, float]:
    """A new agent process: `--resume cid`, which must succeed; its output and seconds."""
    t0 = time.monotonic()
    proc = capture_two(sshd, rx_dir, a, b, "--resume", cid)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out + err, time.monotonic() - t0


def wait_failure(rx_dir, cid) -> tuple[dict, float]:
    """The receiver's failure.json once it has seen the stream cut (it journals what it holds),
    and how long that took."""
    failure = os.path.join(rx_dir, f"{cid}.partial", "failure.json")
    t0 = time.monotonic()
    while not os.path.exists(failure) and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    assert os.path.exists(failure), "the receiver wrote no failure.json within 30 s of the cut"
    return json.load(open(failure)), time.monotonic() - t0


def journal_lines(rx_dir, cid, disk) -> list[dict]:
    """The receiver's resume journal of a disk (agent/server/receive/journal.py: JSON lines)."""
    with open(os.path.join(rx_dir, f"{cid}.partial", disk + ".journal")) as f:
        return [json.loads(line) for line in f]


def assert_verified_earlier(entry: dict, size: int):
    """A disk verified and converted in the first attempt: the resumed one sent none of its data
    (the agent read its source again only to prove the digest unchanged)."""
    assert entry["resume"] == {"resumed_from": size, "data_bytes_before": size, "restarted": None,
                               "verified_earlier": True}, entry["resume"]
    assert entry["received"]["data_bytes"] == 0, entry["received"]


def test_receiver_killed_in_the_second_disk_then_resume(sshd, rx_dir, sources):
    a, b = sources
    before = (sha256_of(a.dev), sha256_of(b.dev))
    t0 = time.monotonic()
    first = capture_two(sshd, rx_dir, a, b, "--capture-id", "rk2", "--reconnect", "0")
    wait_image(first, rx_dir, "rk2", SIZE_B // 2, disk=disk_name(b))
    kill_receiver(sshd)
    out, err = first.communicate(timeout=120)
    t_first = time.monotonic() - t0
    assert first.returncode in (3, 5), err
    arrived_b = image_bytes(rx_dir, "rk2", disk_name(b))
    # Disk A was verified before the cut: its journal ends with the mark that says so (its
    # manifest entry), and its image is the one copy (no raw file beside it).
    assert "complete" in journal_lines(rx_dir, "rk2", disk_name(a))[-1]
    partial = os.path.join(rx_dir, "rk2.partial")
    assert os.path.exists(os.path.join(partial, disk_name(a) + ".qcow2"))
    assert not os.path.exists(os.path.join(partial, disk_name(a) + ".raw"))

    text, t_second = resume(sshd, rx_dir, "rk2", a, b)
    assert (f"disk {disk_name(a)}: the server holds all {SIZE_A} bytes; the source matches them "
            f"(checked {SIZE_A} bytes in ") in text and "nothing left to send" in text
    ea, eb = entries(rx_dir, "rk2", a, b)
    same_image(a.dev, rx_dir, "rk2", ea)
    same_image(b.dev, rx_dir, "rk2", eb)
    assert (sha256_of(a.dev), sha256_of(b.dev)) == before
    assert_verified_earlier(ea, SIZE_A)
    held = eb["resume"]["resumed_from"]
    again = eb["received"]["data_bytes"]
    assert eb["resume"]["restarted"] is None and "verified_earlier" not in eb["resume"]
    assert held >= SIZE_B // 2 - WINDOW and again == SIZE_B - held
    assert eb["resume"]["data_bytes_before"] == held
    assert f"disk {disk_name(b)}: the server holds {held} of {SIZE_B} bytes; the source matches them" in text
    # Both attempts together: both disks' data plus at most one in-flight window (all in B).
    sent = SIZE_A + arrived_b + ea["received"]["data_bytes"] + again
    assert sent <= SIZE_A + SIZE_B + WINDOW, (arrived_b, held, again)
    print(f"\nreceiver kill in disk 2 of 2: {(SIZE_A + arrived_b) >> 20} MiB arrived "
          f"({SIZE_A >> 20} + {arrived_b >> 20}), {(SIZE_A + held) >> 20} MiB held, {again >> 20} MiB sent again "
          f"({(sent - SIZE_A - SIZE_B) >> 20} MiB twice); {t_first:.1f} s + {t_second:.1f} s")


def test_agent_killed_in_the_first_disk_then_a_new_agent_resumes(sshd, rx_dir, sources):
    a, b = sources
    before = (sha256_of(a.dev), sha256_of(b.dev))
    t0 = time.monotonic()
    first = capture_two(sshd, rx_dir, a, b, "--capture-id", "ak2")
    wait_image(first, rx_dir, "ak2", SIZE_A // 2, disk=disk_name(a))
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    t_first = time.monotonic() - t0
    rec, t_seen = wait_failure(rx_dir, "ak2")
    assert rec["resumable"] is True, rec
    # Nothing of B was sent: the receiver holds only A.
    assert set(rec["held"]) == {disk_name(a)}, rec
    arrived_a = image_bytes(rx_dir, "ak2", disk_name(a))

    text, t_second = resume(sshd, rx_dir, "ak2", a, b)
    assert f"disk {disk_name(a)}: the server holds" in text and "the source matches them" in text
    ea, eb = entries(rx_dir, "ak2", a, b)
    same_image(a.dev, rx_dir, "ak2", ea)
    same_image(b.dev, rx_dir, "ak2", eb)
    assert (sha256_of(a.dev), sha256_of(b.dev)) == before
    held = ea["resume"]["resumed_from"]
    # The cut was seen by the receiver: it checkpointed every whole record it had.
    assert held == rec["held"][disk_name(a)] and arrived_a - held <= CHUNK
    assert ea["resume"]["restarted"] is None and ea["received"]["data_bytes"] == SIZE_A - held
    # B is new to the receiver: sent whole, in one go (no resume facts).
    assert "resume" not in eb and eb["received"]["data_bytes"] == SIZE_B
    print(f"\nagent kill in disk 1 of 2: {arrived_a >> 20} MiB arrived, {held >> 20} MiB held, "
          f"{(SIZE_A - held) >> 20} + {SIZE_B >> 20} MiB sent after; {t_first:.1f} s + {t_second:.1f} s "
          f"(the cut seen in {t_seen:.2f} s)")


def test_changed_second_source_is_sent_again_the_first_is_not(sshd, rx_dir, sources):
    a, b = sources
    t0 = time.monotonic()
    first = capture_two(sshd, rx_dir, a, b, "--capture-id", "chg2", "--reconnect", "0")
    wait_image(first, rx_dir, "chg2", SIZE_B // 2, disk=disk_name(b))
    kill_receiver(sshd)
    first.communicate(timeout=120)
    t_first = time.monotonic() - t0
    assert first.returncode != 0
    arrived_b = image_bytes(rx_dir, "chg2", disk_name(b))
    # B's source changes between the attempts: 1 MiB of new data at 1 MiB (the agent that set it
    # read-only has ended and restored it). Past its first 64 KiB: a disk whose start changed is
    # another disk to the receiver, and the resume is refused (tests/unit/test_resume_proof.py).
    with open(b.dev, "r+b") as f:
        f.seek(MiB)
        f.write(os.urandom(MiB))
        f.flush()
        os.fsync(f.fileno())
    now = (sha256_of(a.dev), sha256_of(b.dev))

    text, t_second = resume(sshd, rx_dir, "chg2", a, b)
    assert f"disk {disk_name(b)}: sent again from byte 0: the source changed" in text
    ea, eb = entries(rx_dir, "chg2", a, b)
    same_image(a.dev, rx_dir, "chg2", ea)
    same_image(b.dev, rx_dir, "chg2", eb)
    assert (sha256_of(a.dev), sha256_of(b.dev)) == now
    assert_verified_earlier(ea, SIZE_A)
    assert eb["resume"]["resumed_from"] == 0
    # The first checkpoint's segment holds byte 0: it is the one found different.
    assert eb["resume"]["restarted"].startswith("the source changed since the held copy was received: bytes 0-")
    assert eb["received"]["data_bytes"] == SIZE_B
    print(f"\nchanged disk 2 of 2: {(SIZE_A + arrived_b) >> 20} MiB arrived, {SIZE_B >> 20} MiB of disk 2 "
          f"sent again, 0 of disk 1; {t_first:.1f} s + {t_second:.1f} s")


def test_a_resume_without_a_held_disk_is_refused_and_keeps_what_is_held(sshd, rx_dir, sources):
    """`--resume` with one `--disk` of the two the capture holds: refused before any data is
    sent, naming the disk left out; what the server holds stays, and the full resume then
    sends neither the verified first disk nor the held part of the second again."""
    a, b = sources
    first = capture_two(sshd, rx_dir, a, b, "--capture-id", "sub", "--reconnect", "0")
    wait_image(first, rx_dir, "sub", SIZE_B // 2, disk=disk_name(b))
    kill_receiver(sshd)
    first.communicate(timeout=120)
    assert first.returncode != 0
    journal_b = journal_lines(rx_dir, "sub", disk_name(b))

    t0 = time.monotonic()
    only_b = capture(sshd, rx_dir, b.dev, "--resume", "sub")
    out, err = only_b.communicate(timeout=120)
    t_refused = time.monotonic() - t0
    assert only_b.returncode == 5, err      # a refusal of the conversion server
    assert (f"holds disk {disk_name(a)} from an earlier attempt, which this resume does not send "
            f"(it sends {disk_name(b)}): resume with every disk of the capture") in err, err
    # Nothing of B was sent (its journal did not move) and nothing held was dropped.
    assert journal_lines(rx_dir, "sub", disk_name(b)) == journal_b
    assert "complete" in journal_lines(rx_dir, "sub", disk_name(a))[-1]

    text, _ = resume(sshd, rx_dir, "sub", a, b)
    ea, eb = entries(rx_dir, "sub", a, b)
    same_image(a.dev, rx_dir, "sub", ea)
    same_image(b.dev, rx_dir, "sub", eb)
    assert_verified_earlier(ea, SIZE_A)
    assert eb["resume"]["resumed_from"] == journal_b[-1]["end"] > 0
    print(f"\nresume without a held disk: refused in {t_refused:.1f} s; then "
          f"{eb['resume']['resumed_from'] >> 20} MiB of disk 2 held, 0 of disk 1 sent again")


def test_receiver_restart_in_the_second_disk_is_survived_in_process(sshd, rx_dir, sources):
    """The server side dies in the second disk; the same agent reconnects (--reconnect) and
    resumes both: the first from its verified image, the second from what is held."""
    a, b = sources
    before = (sha256_of(a.dev), sha256_of(b.dev))
    t0 = time.monotonic()
    proc = capture_two(sshd, rx_dir, a, b, "--capture-id", "rc2", "--reconnect", "60")
    wait_image(proc, rx_dir, "rc2", SIZE_B // 2, disk=disk_name(b))
    kill_receiver(sshd)
    arrived_b = image_bytes(rx_dir, "rc2", disk_name(b))
    out, err = proc.communicate(timeout=300)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, err
    assert "reconnecting (attempt 1)" in out + err
    ea, eb = entries(rx_dir, "rc2", a, b)
    same_image(a.dev, rx_dir, "rc2", ea)
    same_image(b.dev, rx_dir, "rc2", eb)
    assert (sha256_of(a.dev), sha256_of(b.dev)) == before
    assert_verified_earlier(ea, SIZE_A)
    held = eb["resume"]["resumed_from"]
    again = eb["received"]["data_bytes"]
    assert held >= SIZE_B // 2 - WINDOW and again == SIZE_B - held
    assert arrived_b + again <= SIZE_B + WINDOW, (arrived_b, held, again)
    print(f"\nreceiver restart in disk 2 of 2, in process: {(SIZE_A + arrived_b) >> 20} MiB arrived, "
          f"{(SIZE_A + held) >> 20} MiB held, {again >> 20} MiB sent after the reconnect; {seconds:.1f} s")


def test_agent_killed_in_the_second_disk_then_a_new_agent_resumes(sshd, rx_dir, sources):
    """The receiver sees the cut in the second disk: its failure.json holds the first whole and
    the second up to the last whole record; a new agent sends only the rest of the second."""
    a, b = sources
    before = (sha256_of(a.dev), sha256_of(b.dev))
    first = capture_two(sshd, rx_dir, a, b, "--capture-id", "ak2b")
    wait_image(first, rx_dir, "ak2b", SIZE_B // 2, disk=disk_name(b))
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    rec, t_seen = wait_failure(rx_dir, "ak2b")
    assert rec["resumable"] is True and rec["disks_verified"] == [disk_name(a)], rec
    assert rec["held"][disk_name(a)] == SIZE_A, rec
    arrived_b = image_bytes(rx_dir, "ak2b", disk_name(b))

    text, t_second = resume(sshd, rx_dir, "ak2b", a, b)
    ea, eb = entries(rx_dir, "ak2b", a, b)
    same_image(a.dev, rx_dir, "ak2b", ea)
    same_image(b.dev, rx_dir, "ak2b", eb)
    assert (sha256_of(a.dev), sha256_of(b.dev)) == before
    assert_verified_earlier(ea, SIZE_A)
    held = eb["resume"]["resumed_from"]
    assert held == rec["held"][disk_name(b)] and arrived_b - held <= CHUNK
    assert eb["received"]["data_bytes"] == SIZE_B - held
    print(f"\nagent kill in disk 2 of 2: {(SIZE_A + arrived_b) >> 20} MiB arrived, {(SIZE_A + held) >> 20} MiB "
          f"held, {(SIZE_B - held) >> 20} MiB sent after; {t_second:.1f} s to resume "
          f"(the cut seen in {t_seen:.2f} s)")


def test_agent_killed_while_the_receivers_syncs_are_slow(sshd, rx_dir, sources):
    """The cut is recorded whole even when the session's end (sshd closes the receiver's stdout,
    a SIGHUP within a second) comes while the receiver still syncs its last checkpoint: every
    fdatasync of the receiver is made to take 3 s. failure.json is written, the lock is gone
    (the capture is `failed`, not a dead receiver's that --gc would clean), and it resumes."""
    a, b = sources
    first = capture_two(sshd, rx_dir, a, b, "--capture-id", "slow")
    wait_image(first, rx_dir, "slow", SIZE_A // 4, disk=disk_name(a))
    strace = slow_syscall(receiver_pids(sshd.receiver_root), "fdatasync", 3)
    try:
        wait_image(first, rx_dir, "slow", SIZE_A // 2, disk=disk_name(a))
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        rec, t_seen = wait_failure(rx_dir, "slow")
    finally:
        stop_process(strace)
    assert rec["resumable"] is True and rec["code"] == "protocol", rec
    assert ".coldclone-receive.lock" not in os.listdir(os.path.join(rx_dir, "slow.partial"))
    assert [st.state for st in gc(rx_dir, clean=False)] == ["failed"]

    resume(sshd, rx_dir, "slow", a, b)
    ea, eb = entries(rx_dir, "slow", a, b)
    same_image(a.dev, rx_dir, "slow", ea)
    same_image(b.dev, rx_dir, "slow", eb)
    assert ea["resume"]["resumed_from"] == rec["held"][disk_name(a)] > 0
    print(f"\nagent kill with 3 s fdatasyncs: failure.json after {t_seen:.1f} s, "
          f"{rec['held'][disk_name(a)] >> 20} MiB held")
