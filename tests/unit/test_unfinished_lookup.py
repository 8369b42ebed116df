"""Finding an unfinished capture again by its disks (a rebooted source server lost its made-up
capture id): the receiver answers a lookup from its resume journals, matching by WWID or serial
(proven) or by name and size only (offered, never taken unasked); --gc keeps what a dead
receiver held for resuming."""

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import time

import pytest

from agent import protocol as P
from agent.source.capture import lookup
from agent.server.receive.receiver import Receiver
from agent.server.receive.unfinished import find_unfinished, gc
from tests.unit.test_resume_journal import header, records, run, whole_digest

MiB = 1 << 20
SDA = P.DiskIdentity.of("sda", 8 * MiB, serial="S-0001", wwid="")


@pytest.fixture(scope="module")
def data():
    return os.urandom(3 * MiB) + bytes(2 * MiB) + os.urandom(3 * MiB)


def cut(root, data, cid="cap", serial="S-0001", n=5, wwid="", head=True):
    """A capture of one disk cut after n records: its journal holds n MiB. Its DISK header's
    source facts carry the digest of its first 64 KiB, as an agent sends them (head=False: as an
    agent from before heads were recorded did)."""
    src = {"name": "sda", "size": len(data), "serial": serial, "wwid": wwid}
    if head:
        src["head"] = head_of(data)
    blob = P.preamble() + P.Hello(capture_id=cid, agent_version="t", format="raw", disks=("sda",),
                                  resume=True).encode()
    blob += header(data, source=src).encode() + b"".join(records(data)[:n])
    rc, replies = run(root, blob + b"\x03\x00")
    assert rc == 1 and replies[-1]["code"] == "protocol"


def head_of(data: bytes) -> str:
    return hashlib.sha256(data[:P.DiskIdentity.HEAD_BYTES]).hexdigest()


def asks(ident: P.DiskIdentity, data: bytes) -> P.DiskIdentity:
    """The identity an agent asks about, with the digest of its disk's first 64 KiB."""
    return dataclasses.replace(ident, head=head_of(data))


def lookup_over_the_wire(root, wanted) -> tuple[int, list[dict]]:
    blob = P.preamble() + P.Hello(capture_id=None, agent_version="t", format="raw", probe=True,
                                  disks=tuple(w.name for w in wanted), unfinished_of=tuple(wanted)).encode()
    return run(root, blob + P.Abort("lookup done").encode())


def test_serial_match_is_proven_and_answered_over_the_wire(tmp_path, data):
    cut(tmp_path, data)
    before = sorted(os.listdir(tmp_path / "cap.partial"))
    rc, replies = lookup_over_the_wire(tmp_path, [asks(SDA, data)])
    assert rc == 0 and replies[0]["event"] == "ready" and replies[0]["probe"] is True
    found = P.decode_unfinished(replies[0]["unfinished"])
    assert [(u.capture_id, u.matched_by, u.proven, u.held, u.size, u.live) for u in found] == \
        [("cap", "serial", True, 5 * MiB, 8 * MiB, False)]
    assert found[0].disks[0].identity == SDA and not found[0].disks[0].complete
    assert lookup.to_take(found) is found[0]
    # A lookup changes nothing: the held capture, and no file of the lookup in the root.
    assert sorted(os.listdir(tmp_path / "cap.partial")) == before
    assert sorted(os.listdir(tmp_path)) == ["cap.partial"]


def test_wwid_decides_over_serial(tmp_path, data):
    cut(tmp_path, data, wwid="naa.600508b1001c", serial="S-0001")
    assert [u.matched_by for u in find_unfinished(str(tmp_path), (
        asks(P.DiskIdentity.of("sdb", 8 * MiB, serial="other", wwid="naa.600508b1001c"), data),))] == ["wwid"]
    assert find_unfinished(str(tmp_path), (
        asks(P.DiskIdentity.of("sda", 8 * MiB, serial="S-0001", wwid="naa.other"), data),)) == []


@pytest.mark.parametrize("wanted", [
    P.DiskIdentity.of("sda", 8 * MiB, serial="S-9999"),     # another disk
    P.DiskIdentity.of("sda", 16 * MiB, serial="S-0001"),    # same serial, another size
    P.DiskIdentity.of("sda", 8 * MiB),                      # no serial here, one in the journal
], ids=["other-serial", "other-size", "serial-on-one-side"])
def test_other_disks_find_nothing(tmp_path, data, wanted):
    cut(tmp_path, data)
    # (with the right first 64 KiB: the identity alone must keep them out)
    assert find_unfinished(str(tmp_path), (asks(wanted, data),)) == []


def test_disks_without_serial_match_by_name_and_size_and_are_not_taken(tmp_path, data):
    cut(tmp_path, data, serial="")
    found = find_unfinished(str(tmp_path), (dataclasses.replace(P.DiskIdentity.of("sda", 8 * MiB),
                                                                head=head_of(data)),))
    assert [(u.capture_id, u.matched_by, u.proven) for u in found] == [("cap", "name and size", False)]
    assert lookup.to_take(found) is None
    # Under another name (the kernel's order changed) its first 64 KiB still find it, as weakly:
    # offered, never taken on its own; with other first bytes nothing is found.
    renamed = find_unfinished(str(tmp_path), (dataclasses.replace(P.DiskIdentity.of("sdb", 8 * MiB),
                                                                  head=head_of(data)),))
    assert [(u.capture_id, u.matched_by, u.proven) for u in renamed] == [("cap", "name and size", False)]
    assert lookup.to_take(renamed) is None
    assert find_unfinished(str(tmp_path), (dataclasses.replace(P.DiskIdentity.of("sdb", 8 * MiB),
                                                               head=head_of(os.urandom(64 << 10))),)) == []
    assert "matched by disk name and size only" in lookup.describe(found[0])


def test_a_guessed_name_and_size_learns_nothing(tmp_path, data):
    """Another server's capture is listed only to an agent whose disk starts with the bytes the
    server holds: a name and a size alone (an agent key guessing sda and a common size) get no
    capture id to take over."""
    cut(tmp_path, data, serial="")
    assert find_unfinished(str(tmp_path), (P.DiskIdentity.of("sda", 8 * MiB),)) == []
    other = os.urandom(P.DiskIdentity.HEAD_BYTES)
    assert find_unfinished(str(tmp_path), (dataclasses.replace(P.DiskIdentity.of("sda", 8 * MiB),
                                                               head=head_of(other)),)) == []
    # A serial match whose first bytes differ (the disk changed, or the serial was guessed) is not
    # listed either, nor one that leaves its head out (a known serial is no proof on its own).
    cut(tmp_path, data, cid="ser")
    assert find_unfinished(str(tmp_path), (dataclasses.replace(SDA, head=head_of(other)),)) == []
    assert find_unfinished(str(tmp_path), (SDA,)) == []
    assert [u.capture_id for u in find_unfinished(str(tmp_path), (asks(SDA, data),))] == ["ser"]


def test_a_disk_whose_head_was_never_recorded_is_listed_only_by_serial(tmp_path, data):
    """A journal from an agent that sent no head (older than this receiver): nothing recorded to
    check a head against, so a name and a size are no proof; a serial still is."""
    cut(tmp_path, data, serial="", head=False)
    assert find_unfinished(str(tmp_path), (asks(P.DiskIdentity.of("sda", 8 * MiB), data),)) == []
    cut(tmp_path, data, cid="ser", head=False)
    assert [u.capture_id for u in find_unfinished(str(tmp_path), (asks(SDA, data),))] == ["ser"]


def test_a_head_is_recorded_before_a_byte_is_held(tmp_path, data):
    """The head digest comes with the DISK header: a capture cut before its first checkpoint is
    still checked (the old check read the held bytes, and had none to read)."""
    cut(tmp_path, data, serial="", n=0)
    assert find_unfinished(str(tmp_path), (asks(P.DiskIdentity.of("sda", 8 * MiB), os.urandom(MiB)),)) == []
    assert [(u.capture_id, u.proven) for u in find_unfinished(
        str(tmp_path), (asks(P.DiskIdentity.of("sda", 8 * MiB), data),))] == [("cap", False)]


def test_a_blank_start_without_a_serial_proves_nothing(tmp_path):
    """Issue 19: a disk whose first 64 KiB are zeros and that has no serial was listed to anyone
    sending the digest of 64 KiB of zeros (which anyone can compute) with its name and size."""
    blank = bytes(MiB) + os.urandom(7 * MiB)
    cut(tmp_path, blank, serial="")
    assert find_unfinished(str(tmp_path), (asks(P.DiskIdentity.of("sda", 8 * MiB), blank),)) == []
    # with a serial, the serial is the proof (and the zeros must still match)
    cut(tmp_path, blank, cid="ser")
    assert [u.capture_id for u in find_unfinished(str(tmp_path), (asks(SDA, blank),))] == ["ser"]
    assert find_unfinished(str(tmp_path), (asks(SDA, os.urandom(MiB)),)) == []


def test_every_journaled_disk_must_be_asked_for_and_newest_comes_first(tmp_path, data):
    cut(tmp_path, data, cid="old")
    time.sleep(0.05)
    cut(tmp_path, data, cid="new")
    found = find_unfinished(str(tmp_path), (asks(SDA, data), P.DiskIdentity.of("sdb", MiB, serial="S-0002")))
    assert [u.capture_id for u in found] == ["new", "old"]
    # A capture also holding a disk the agent does not name is not this capture.
    assert find_unfinished(str(tmp_path), (P.DiskIdentity.of("sdb", MiB, serial="S-0002"),)) == []


def test_aborted_and_complete_captures_are_not_offered(tmp_path, data):
    cut(tmp_path, data, cid="gone")
    # the agent resumes it, then gives up: ABORT drops the held bytes
    rc, _ = run(tmp_path, P.preamble() + P.Hello(capture_id="gone", agent_version="t", format="raw",
                                                 disks=("sda",), resume=True, identities=(asks(SDA, data),)
                                                 ).encode() + P.Abort("no").encode())
    assert rc == 1
    # a capture that completed
    blob = P.preamble() + P.Hello(capture_id="done", agent_version="t", format="raw", disks=("sda",)).encode()
    blob += header(data, source={"serial": "S-0001"}).encode() + b"".join(records(data))
    blob += P.DiskEnd(whole_digest(data)).encode() + P.encode_finish()
    assert run(tmp_path, blob)[0] == 0
    assert find_unfinished(str(tmp_path), (asks(SDA, data),)) == []


def test_lookup_is_described_for_the_operator(data):
    u = P.Unfinished("cap", (P.UnfinishedDisk(SDA, 5 * MiB),), updated=1000.0, matched_by="serial", live=True)
    line = lookup.describe(u, now=1000.0 + 300)
    assert line.startswith("cap: 5.0 MiB of 8.0 MiB held (sda 5.0 MiB), last written 5 min")
    assert "matched by WWID/serial" in line and "still open on the server" in line


@pytest.mark.parametrize("bad", [
    {"unfinished_of": "sda"},
    {"unfinished_of": [{"name": "sda"}]},
    {"unfinished_of": [{"name": "sda", "size": -1}]},
    {"unfinished_of": [{"name": "sda", "size": 1}] * (P.MAX_DISKS + 1)},
    {"unfinished_of": [{"name": "sda", "size": 1, "head": "../etc/passwd"}]},
])
def test_bad_lookups_are_refused_cleanly(tmp_path, bad):
    obj = {"capture_id": None, "agent_version": "t", "format": "raw", "disks": [], "probe": True, **bad}
    rc, replies = run(tmp_path, P.preamble() + P.encode_json(P.T_HELLO, obj))
    assert rc == 1 and replies[-1]["event"] == "error" and replies[-1]["code"] == "protocol"


def test_gc_keeps_what_a_dead_receiver_held_for_resuming(tmp_path, data):
    """A receiver killed mid-disk (after its journal's checkpoints): --gc ends the capture as
    the receiver would have, resumable, and the lookup and a resume still find every held byte."""
    src = {"name": "sda", "size": len(data), "serial": "S-0001"}
    blob = P.preamble() + P.Hello(capture_id="cap", agent_version="t", format="raw", disks=("sda",)).encode()
    blob += header(data, source=src).encode() + b"".join(records(data)[:5])
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys; from agent.server.receive.receiver import Receiver; from agent.server.receive import journal as J\n"
        "J.CHECKPOINT_SECONDS = 0.0\n"
        "Receiver(sys.argv[1], sys.stdout.buffer).run(sys.stdin.buffer)"), str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=os.getcwd())
    try:
        child.stdin.write(blob)
        child.stdin.flush()
        journal = tmp_path / "cap.partial" / "sda.journal"
        deadline = time.monotonic() + 30
        # (a checkpoint follows a DATA record: the last one ends at 3 MiB)
        while not (journal.exists() and f'"end": {3 * MiB}' in journal.read_text()):
            assert time.monotonic() < deadline, "no checkpoints"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
        child.stdin.close()
        child.stdout.close()
    states = gc(str(tmp_path))
    assert [(s.state, s.pid) for s in states] == [("dead", child.pid)]
    assert "resumable: 3145728 bytes held (sda 3145728)" in states[0].detail
    assert "coldclone capture --resume cap" in states[0].detail
    assert sorted(os.listdir(tmp_path / "cap.partial")) == ["failure.json", "sda.journal", "sda.raw"]
    failure = json.loads((tmp_path / "cap.partial" / "failure.json").read_text())
    assert failure["code"] == "receiver_died" and failure["resumable"] is True and failure["held"] == {"sda": 3 * MiB}
    assert [s.state for s in gc(str(tmp_path))] == ["failed"]
    assert [u.held for u in find_unfinished(str(tmp_path), (SDA,))] == [3 * MiB]
    # ... and the capture completes from there.
    blob = P.preamble() + P.Hello(capture_id="cap", agent_version="t", format="raw", disks=("sda",),
                                  resume=True, identities=(asks(SDA, data),)).encode()
    blob += header(data, source=src, resume_from=3 * MiB).encode() + b"".join(records(data, 3 * MiB))
    blob += P.DiskEnd(whole_digest(data)).encode() + P.encode_finish()
    out = io.BytesIO()
    assert Receiver(str(tmp_path), out).run(io.BytesIO(blob)) == 0, out.getvalue()
    assert (tmp_path / "cap" / "sda.raw").read_bytes() == data


def test_placeholder_serials_prove_nothing_and_case_does_not_matter(tmp_path, data):
    cut(tmp_path, data, cid="ph", serial="0000000000000000")
    cut(tmp_path, data, cid="up", serial="WD-WCC4N1234567")
    # the placeholder is no serial: only a disk without one matches it, by name and size
    assert [(u.capture_id, u.proven) for u in find_unfinished(str(tmp_path), (dataclasses.replace(P.DiskIdentity.of(
        "sda", 8 * MiB, serial="To be filled by O.E.M.", wwid=None), head=head_of(data)),))] == [("ph", False)]
    assert [(u.capture_id, u.matched_by) for u in find_unfinished(str(tmp_path), (asks(P.DiskIdentity.of(
        "sda", 8 * MiB, serial="wd-wcc4n1234567", wwid=None), data),))] == [("up", "serial")]
