"""Issue 19, the receiver side, on hand-made streams against the real receiver: a disk held whole
but not yet marked complete resumes straight to verification (it hung forever); a resume proves
it comes from the server whose disks are held before anything held is touched (a capture id was
enough to take a capture over); `--gc` finishes a verified capture instead of deleting it and
never stops with a traceback on what it finds in a dead `.partial`."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from agent import protocol as P
from agent.server.receive.unfinished import gc
from tests.testbed.receiver import run_receiver
from tests.unit.test_resume_journal import header, ident, records, run, whole_digest

MiB = 1 << 20


@pytest.fixture(scope="module")
def data():
    return os.urandom(3 * MiB) + bytes(2 * MiB) + os.urandom(3 * MiB)


def hello(cid="cap", fmt="raw", identities=(), resume=True) -> bytes:
    return P.preamble() + P.Hello(capture_id=cid, agent_version="t", format=fmt, disks=("sda",), resume=resume,
                                  identities=tuple(identities)).encode()


def held_files(root, cid="cap") -> dict[str, bytes]:
    partial = os.path.join(root, f"{cid}.partial")
    return {n: open(os.path.join(partial, n), "rb").read() for n in sorted(os.listdir(partial))}


def cut_whole(root, data, fmt="raw", cid="cap", **kw):
    """Every record of the disk arrived, then the stream was cut before END: the receiver's last
    checkpoint holds the whole disk, not marked complete (what a kill after the last byte leaves)."""
    blob = hello(cid, fmt, (ident(data, **kw),)) + header(data, source=_source(data, **kw)).encode()
    rc, replies = run(root, blob + b"".join(records(data)))
    assert rc == 1 and replies[-1]["code"] == "protocol"
    failure = json.loads(open(os.path.join(root, f"{cid}.partial", "failure.json")).read())
    assert failure["held"] == {"sda": len(data)}


def _source(data, **kw) -> dict:
    i = ident(data, **kw)
    return {"serial": i.serial, "wwid": i.wwid, "head": i.head}


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_a_disk_held_whole_but_not_complete_resumes_to_verification(tmp_path, data, fmt):
    """The read-back of such a disk started at its end and waited for a write that never came;
    END waited for it: the resume hung (the agent's idle timeout, a reconnect, the same again)."""
    cut_whole(str(tmp_path), data, fmt)
    blob = (hello("cap", fmt, (ident(data),)) + header(data, resume_from=len(data)).encode()
            + P.DiskEnd(whole_digest(data)).encode() + P.encode_finish())
    res = run_receiver(str(tmp_path), blob, timeout=60)
    assert res.returncode == 0, (res.replies, res.stderr)
    assert [r["event"] for r in res.replies] == ["ready", "disk_ok", "complete"]
    entry = res.replies[-1]["manifest"]["disks"][0]
    assert entry["resume"]["resumed_from"] == len(data) and entry["received"]["data_bytes"] == 0
    assert entry["verified"]["readback_digest"] is True
    if fmt == "raw":
        assert (tmp_path / "cap" / "sda.raw").read_bytes() == data
    assert sorted(os.listdir(tmp_path / "cap")) == ["manifest.json", f"sda.{fmt}"]


def test_another_servers_resume_is_refused_and_changes_nothing(tmp_path, data):
    """Same capture id, same disk name and size, another disk (its first 64 KiB differ): refused
    before READY, every held byte as it was; the server it belongs to then completes it."""
    root = str(tmp_path)
    run(root, hello("cap", "raw", (ident(data),)) + header(data).encode() + b"".join(records(data)[:5]))
    before = held_files(root)
    other = os.urandom(len(data))
    for identities in [(ident(other),), (), (dataclasses.replace(ident(data), head=""),)]:
        # another disk; an agent that sends no identity; one that leaves its head out
        blob = hello("cap", "raw", identities) + header(other, restart_reason="the source changed").encode()
        rc, replies = run(root, blob + b"".join(records(other)) + P.DiskEnd(whole_digest(other)).encode())
        assert rc == 1 and [r["event"] for r in replies] == ["error"], replies
        assert replies[0]["code"] == "refused" and "disk sda:" in replies[0]["message"], replies
        assert "nothing was changed" in replies[0]["message"]
        assert held_files(root) == before
    blob = (hello("cap", "raw", (ident(data),)) + header(data, resume_from=5 * MiB).encode()
            + b"".join(records(data, 5 * MiB)) + P.DiskEnd(whole_digest(data)).encode() + P.encode_finish())
    rc, replies = run(root, blob)
    assert rc == 0, replies
    assert (tmp_path / "cap" / "sda.raw").read_bytes() == data


def test_two_servers_with_one_capture_id_and_different_serials(tmp_path, data):
    """Issue 19: the second server started with the first one's --capture-id (resume=auto) wiped
    its held copy as "the source changed", although the journal's serial differed."""
    root = str(tmp_path)
    run(root, hello("cap", "raw", (ident(data, serial="S-0001"),))
        + header(data, source=_source(data, serial="S-0001")).encode() + b"".join(records(data)[:5]))
    before = held_files(root)
    second = ident(data, serial="S-0002")       # even with the same bytes at its start
    rc, replies = run(root, hello("cap", "raw", (second,))
                      + header(data, source=_source(data, serial="S-0002")).encode())
    assert rc == 1 and replies[-1]["code"] == "refused"
    assert "another disk (8388608 bytes, WWID none, serial s-0002) than the one held" in replies[-1]["message"]
    assert held_files(root) == before


def test_a_restart_from_zero_must_come_with_the_held_disks_identity(tmp_path, data):
    """HELLO proves the identity, and the DISK header that drops the held copy must say the same."""
    root = str(tmp_path)
    run(root, hello("cap", "raw", (ident(data, serial="S-0001"),))
        + header(data, source=_source(data, serial="S-0001")).encode() + b"".join(records(data)[:5]))
    before = held_files(root)
    rc, replies = run(root, hello("cap", "raw", (ident(data, serial="S-0001"),))
                      + header(data, source=_source(data, serial="S-0009"), restart_reason="x").encode()
                      + b"".join(records(data)))
    assert rc == 1 and [r["event"] for r in replies] == ["ready", "error"]
    assert replies[-1]["code"] == "refused" and "the held copy is kept" in replies[-1]["message"]
    after = held_files(root)
    assert json.loads(after.pop("failure.json"))["resumable"] is True
    before.pop("failure.json")
    assert after == before


def test_a_blank_disk_without_serial_cannot_be_resumed_by_anyone(tmp_path):
    """First 64 KiB of zeros and no serial: nothing proves whose disk it is, so no one continues
    or drops it (the operator starts a new capture, or removes it on the server)."""
    root = str(tmp_path)
    blank = bytes(MiB) + os.urandom(7 * MiB)
    run(root, hello("cap", "raw", (ident(blank),)) + header(blank).encode() + b"".join(records(blank)[:5]))
    before = held_files(root)
    rc, replies = run(root, hello("cap", "raw", (ident(blank),)) + header(blank, resume_from=5 * MiB).encode())
    assert rc == 1 and replies[-1]["code"] == "refused"
    assert "no WWID, no serial, and its first 64 KiB are all zeros" in replies[-1]["message"]
    assert held_files(root) == before


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_gc_finishes_a_verified_capture_cut_before_its_rename(tmp_path, data):
    """A receiver that died after FINISH had written manifest.json, before the rename: --gc
    deleted its verified images (its journals were already gone); now it finishes it."""
    root = str(tmp_path)
    blob = (hello("cap", "qcow2", (ident(data),), resume=False) + header(data).encode() + b"".join(records(data))
            + P.DiskEnd(whole_digest(data)).encode() + P.encode_finish())
    assert run(root, blob)[0] == 0
    os.rename(tmp_path / "cap", tmp_path / "cap.partial")     # as it was just before the rename
    (tmp_path / "cap.partial" / ".coldclone-receive.lock").write_text(f"{_dead_pid()}\n")
    image = (tmp_path / "cap.partial" / "sda.qcow2").read_bytes()
    states = gc(root)
    assert [s.state for s in states] == ["dead"] and "finished: renamed to" in states[0].detail, states
    assert sorted(os.listdir(tmp_path)) == ["cap"]
    assert sorted(os.listdir(tmp_path / "cap")) == ["manifest.json", "sda.qcow2"]
    assert (tmp_path / "cap" / "sda.qcow2").read_bytes() == image


def test_gc_survives_a_subdirectory_and_never_follows_a_symlinked_lock(tmp_path, data):
    root = str(tmp_path)
    (tmp_path / "sub.partial" / "nested").mkdir(parents=True)
    (tmp_path / "sub.partial" / "nested" / "keep").write_text("x")
    (tmp_path / "sub.partial" / "junk.raw").write_text("x")
    (tmp_path / "sub.partial" / ".coldclone-receive.lock").write_text(f"{_dead_pid()}\n")
    target = tmp_path / "elsewhere"
    target.write_text("12345\n")
    (tmp_path / "link.partial").mkdir()
    os.symlink(target, tmp_path / "link.partial" / ".coldclone-receive.lock")
    states = {os.path.basename(s.path): s for s in gc(root)}
    assert states["sub.partial"].state == "dead"
    assert "left nested/ (not made by a receiver: remove it by hand)" in states["sub.partial"].detail
    assert sorted(os.listdir(tmp_path / "sub.partial")) == ["failure.json", "nested"]
    assert (tmp_path / "sub.partial" / "nested" / "keep").read_text() == "x"
    assert states["link.partial"].state == "unknown"
    assert "not followed, left as it is" in states["link.partial"].detail
    assert target.read_text() == "12345\n" and os.path.islink(tmp_path / "link.partial" / ".coldclone-receive.lock")
    # and the command itself says so, exit 0, no traceback
    out = subprocess.run([sys.executable, "-m", "agent.server.receive.cli", "--root", root, "--gc"],
                         capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                              if k != "SSH_ORIGINAL_COMMAND"})
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "link.partial" in out.stdout
