"""The receiver's resume journal, on hand-made streams: a cut stream keeps what it held, a resumed
stream completes with the same image and digest, and a held copy that no longer matches its
journal is refused instead of spliced."""

import dataclasses
import hashlib
import io
import json
import os

import pytest

from agent import protocol as P
from agent.server.receive import journal as J
from agent.server.receive.receiver import Receiver
from agent.server.receive.unfinished import gc

MiB = 1 << 20
BS = P.DEFAULT_BLOCK_SIZE


@pytest.fixture(scope="module")
def data():
    return os.urandom(3 * MiB) + bytes(2 * MiB) + os.urandom(3 * MiB)


def records(data: bytes, start: int = 0, chunk: int = MiB) -> list[bytes]:
    """DATA/ZERO records of data[start:], one chunk at a time (as stream_disk sends them)."""
    out = []
    for off in range(start, len(data), chunk):
        for ext in P.split_extents(data[off:off + chunk], off, BS):
            if ext.zero:
                out.append(P.encode_zero(ext.offset, ext.length))
            else:
                out.append(P.encode_data(ext.offset, ext.length, P.CODEC_NONE, P.record_digest(ext.digests),
                                         bytes(ext.data)))
    return out


def whole_digest(data: bytes) -> bytes:
    tree = P.BlockTree(len(data), BS)
    P.feed_range(_memfd(data), tree, len(data), is_file=True)
    return tree.digest()


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("src")
    os.write(fd, data)
    return fd


def head_of(data: bytes) -> str:
    return hashlib.sha256(data[:P.DiskIdentity.HEAD_BYTES]).hexdigest()


def ident(data: bytes, name: str = "sda", **kw) -> P.DiskIdentity:
    """A disk as an agent identifies it in HELLO (with the digest of its first 64 KiB)."""
    return dataclasses.replace(P.DiskIdentity.of(name, len(data), **kw), head=head_of(data))


def header(data, name="sda", **kw) -> P.DiskHeader:
    """A DISK header as an agent sends it: its source facts carry the disk's head digest."""
    kw.setdefault("source", {"head": head_of(data)})
    return P.DiskHeader(name=name, size=len(data), block_size=BS, mode="nonzero", **kw)


def run(root, blob: bytes) -> tuple[int, list[dict]]:
    out = io.BytesIO()
    rc = Receiver(str(root), out).run(io.BytesIO(blob))
    return rc, [json.loads(line) for line in out.getvalue().splitlines()]


def hello(data, resume=True) -> bytes:
    return P.preamble() + P.Hello(capture_id="cap", agent_version="t", format="raw", disks=("sda",),
                                  resume=resume, identities=(ident(data),)).encode()


def cut_after(data, n_records: int) -> bytes:
    return hello(data) + header(data).encode() + b"".join(records(data)[:n_records])


def test_cut_stream_keeps_a_journal_and_resume_completes(tmp_path, data):
    rc, replies = run(tmp_path, cut_after(data, 5) + b"\x03\x00")   # and half a record header
    assert rc == 1 and replies[-1]["code"] == "protocol"
    partial = tmp_path / "cap.partial"
    assert sorted(os.listdir(partial)) == ["failure.json", "sda.journal", "sda.raw"]
    failure = json.loads((partial / "failure.json").read_text())
    assert failure["resumable"] is True and failure["held"] == {"sda": 5 * MiB}

    # The second attempt: READY says what is held, the rest follows.
    blob = hello(data) + header(data, resume_from=5 * MiB).encode() + b"".join(records(data, 5 * MiB))
    blob += P.DiskEnd(whole_digest(data)).encode() + P.encode_finish()
    out = io.BytesIO()
    rx = Receiver(str(tmp_path), out)
    assert rx.run(io.BytesIO(blob)) == 0, out.getvalue()
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    held = P.decode_held(replies[0]["held"])["sda"]
    assert held.held == 5 * MiB and held.size == len(data) and not held.complete
    assert replies[-1]["event"] == "complete"
    assert sorted(os.listdir(tmp_path / "cap")) == ["manifest.json", "sda.raw"]
    assert (tmp_path / "cap" / "sda.raw").read_bytes() == data
    entry = json.loads((tmp_path / "cap" / "manifest.json").read_text())["disks"][0]
    assert entry["digest"] == whole_digest(data).hex()
    assert entry["resume"] == {"resumed_from": 5 * MiB, "data_bytes_before": 3 * MiB, "restarted": None}
    # Only what was missing came the second time: 3 MiB of data past the held 5 MiB.
    assert entry["received"]["data_bytes"] == 3 * MiB


def test_bytes_past_the_last_checkpoint_are_cut_off(tmp_path, data):
    """Data written after the last checkpoint (a receiver killed mid-segment) is not vouched for:
    a resume from the checkpoint whose stream says ZERO there must not keep it."""
    run(tmp_path, cut_after(data, 5))
    raw = tmp_path / "cap.partial" / "sda.raw"
    with open(raw, "r+b") as f:             # as if bytes past 5 MiB had landed before a kill -9
        f.seek(5 * MiB)
        f.write(b"\xff" * MiB)
    blob = hello(data) + header(data, resume_from=5 * MiB).encode() + b"".join(records(data, 5 * MiB))
    blob += P.DiskEnd(whole_digest(data)).encode() + P.encode_finish()
    rc, replies = run(tmp_path, blob)
    assert rc == 0, replies
    assert (tmp_path / "cap" / "sda.raw").read_bytes() == data


def test_torn_last_journal_line_is_ignored(tmp_path, data):
    run(tmp_path, cut_after(data, 3))
    jpath = tmp_path / "cap.partial" / "sda.journal"
    with open(jpath, "ab") as f:
        f.write(b'{"end": 99999')             # a crash in the middle of an append
    rc, replies = run(tmp_path, hello(data) + P.Abort("look only").encode())
    assert P.decode_held(replies[0]["held"])["sda"].held == 3 * MiB


def test_held_copy_that_changed_on_the_server_is_refused(tmp_path, data):
    run(tmp_path, cut_after(data, 5))
    with open(tmp_path / "cap.partial" / "sda.raw", "r+b") as f:
        f.seek(MiB)
        f.write(b"\x00" * 4096)
    blob = hello(data) + header(data, resume_from=5 * MiB).encode() + b"".join(records(data, 5 * MiB))
    rc, replies = run(tmp_path, blob)
    assert rc == 1 and replies[-1]["code"] == "journal"
    assert "does not match its resume journal in bytes 0-" in replies[-1]["message"]


def test_restart_from_zero_drops_the_held_copy(tmp_path, data):
    run(tmp_path, cut_after(data, 5))
    # changed past its first 64 KiB (a changed start is another disk to the receiver: refused)
    new = data[:P.DiskIdentity.HEAD_BYTES] + os.urandom(len(data) - P.DiskIdentity.HEAD_BYTES)
    blob = hello(data) + header(new, restart_reason="the source changed").encode() + b"".join(records(new))
    blob += P.DiskEnd(whole_digest(new)).encode() + P.encode_finish()
    rc, replies = run(tmp_path, blob)
    assert rc == 0, replies
    assert (tmp_path / "cap" / "sda.raw").read_bytes() == new
    entry = json.loads((tmp_path / "cap" / "manifest.json").read_text())["disks"][0]
    assert entry["resume"]["restarted"] == "the source changed" and entry["resume"]["resumed_from"] == 0


def test_resume_from_a_byte_not_held_is_refused(tmp_path, data):
    run(tmp_path, cut_after(data, 5))
    rc, replies = run(tmp_path, hello(data) + header(data, resume_from=6 * MiB).encode())
    assert rc == 1 and replies[-1]["code"] == "protocol"
    assert "holds its bytes below 5242880" in replies[-1]["message"]


def test_abort_discards_the_held_copy(tmp_path, data):
    run(tmp_path, cut_after(data, 5))
    rc, replies = run(tmp_path, hello(data) + P.Abort("operator said no").encode())
    assert replies[-1]["code"] == "aborted"
    assert os.listdir(tmp_path / "cap.partial") == ["failure.json"]


def test_without_resume_an_unfinished_capture_is_refused(tmp_path, data):
    run(tmp_path, cut_after(data, 5))
    rc, replies = run(tmp_path, hello(data, resume=False))
    assert replies[-1]["code"] == "exists"
    assert "sda.journal" in os.listdir(tmp_path / "cap.partial")


def test_a_version_1_stream_is_still_received(tmp_path, data):
    """An older agent (protocol 1, no resume keys) against this receiver."""
    v1 = P.PREAMBLE.pack(P.MAGIC, 1, 0) + P.Hello(capture_id="old", agent_version="0.9", format="raw",
                                                  disks=("sda",)).encode()
    blob = v1 + header(data).encode() + b"".join(records(data))
    blob += P.DiskEnd(whole_digest(data)).encode() + P.encode_finish()
    rc, replies = run(tmp_path, blob)
    assert rc == 0, replies
    assert "held" not in replies[0]
    assert (tmp_path / "old" / "sda.raw").read_bytes() == data


def test_journal_with_a_damaged_line_names_it(tmp_path, data):
    run(tmp_path, cut_after(data, 5))
    jpath = tmp_path / "cap.partial" / "sda.journal"
    lines = jpath.read_bytes().split(b"\n")
    lines[1] = b'{"end": "soon"}'
    jpath.write_bytes(b"\n".join(lines))
    rc, replies = run(tmp_path, hello(data))
    assert replies[-1]["code"] == "journal" and "line 2 is damaged" in replies[-1]["message"]
    assert J.SUFFIX == ".journal"


def test_a_disk_verified_before_the_cut_is_not_sent_again(tmp_path, data):
    """Two disks: sda verified and converted, sdb cut. The resume sends sda's END only (its digest
    must match the verified image's) and the rest of sdb."""
    small = os.urandom(2 * MiB)
    two = P.preamble() + P.Hello(capture_id="cap", agent_version="t", format="qcow2", disks=("sda", "sdb"),
                                 resume=True, identities=(ident(small), ident(data, "sdb"))).encode()
    first = (two + header(small).encode()
             + b"".join(records(small)) + P.DiskEnd(whole_digest(small)).encode()
             + header(data, "sdb").encode()
             + b"".join(records(data)[:4]))
    rc, replies = run(tmp_path, first)
    assert rc == 1 and [r["event"] for r in replies] == ["ready", "disk_ok", "error"]
    # (no raw copy: sdb is held in its qcow2, written directly)
    assert sorted(os.listdir(tmp_path / "cap.partial")) == ["failure.json", "sda.journal", "sda.qcow2",
                                                            "sdb.journal", "sdb.qcow2"]
    second = (two + header(small, resume_from=len(small)).encode()
              + P.DiskEnd(whole_digest(small)).encode()
              + header(data, "sdb", resume_from=4 * MiB).encode()
              + b"".join(records(data, 4 * MiB)) + P.DiskEnd(whole_digest(data)).encode() + P.encode_finish())
    rc, replies = run(tmp_path, second)
    assert rc == 0, replies
    held = P.decode_held(replies[0]["held"])
    assert held["sda"].complete and held["sda"].digest == whole_digest(small).hex() and held["sdb"].held == 4 * MiB
    m = json.loads((tmp_path / "cap" / "manifest.json").read_text())
    sda, sdb = m["disks"]
    assert sda["resume"]["verified_earlier"] is True and sda["received"]["data_bytes"] == 0
    assert sdb["resume"]["resumed_from"] == 4 * MiB and sdb["received"]["data_bytes"] == len(data) - 5 * MiB
    assert sorted(os.listdir(tmp_path / "cap")) == ["manifest.json", "sda.qcow2", "sdb.qcow2"]


def test_a_resume_that_leaves_out_a_held_disk_is_refused_before_any_data(tmp_path, data):
    """Refused at HELLO, not at FINISH (after all the other data, and discarding everything held):
    what is held stays, byte for byte, for the resume that sends every disk."""
    run(tmp_path, cut_after(data, 5))
    partial = tmp_path / "cap.partial"
    before = {n: (partial / n).read_bytes() for n in sorted(os.listdir(partial))}
    other = P.preamble() + P.Hello(capture_id="cap", agent_version="t", format="raw", disks=("sdb",),
                                   resume=True).encode()
    rc, replies = run(tmp_path, other + P.DiskHeader(name="sdb", size=len(data), block_size=BS,
                                                     mode="nonzero").encode())
    assert rc == 1 and [r["event"] for r in replies] == ["error"] and replies[0]["code"] == "usage"
    assert replies[0]["message"] == ("refused: capture cap holds disk sda from an earlier attempt, which this "
                                     "resume does not send (it sends sdb): resume with every disk of the "
                                     "capture, or start a new capture (a new id)")
    assert {n: (partial / n).read_bytes() for n in sorted(os.listdir(partial))} == before
    assert [st.state for st in gc(str(tmp_path), clean=False)] == ["failed"]   # not a dead receiver's
    blob = hello(data) + header(data, resume_from=5 * MiB).encode() + b"".join(records(data, 5 * MiB))
    rc, replies = run(tmp_path, blob + P.DiskEnd(whole_digest(data)).encode() + P.encode_finish())
    assert rc == 0, replies
    assert (tmp_path / "cap" / "sda.raw").read_bytes() == data
