"""The receiver against hostile and broken streams, run as the real `coldclone-receive` process:
a clean error reply and failure.json for every input that used to give a traceback, bounded
memory for zstd bombs, sanity limits refused at once, reserved names never capture ids."""

import json
import os

import pytest
import zstandard

from agent import protocol as P
from tests.streams import capture_stream, disk_records
from tests.testbed.receiver import run_receiver

MiB = 1 << 20
BS = P.DEFAULT_BLOCK_SIZE
RSS_LIMIT = 200 * MiB


def only_failure(root, capture_id):
    """Nothing complete; the .partial holds failure.json alone (no image, no temp file, no lock)."""
    assert not os.path.exists(os.path.join(root, capture_id))
    partial = os.path.join(root, capture_id + ".partial")
    assert os.listdir(partial) == ["failure.json"], os.listdir(partial)
    return json.load(open(os.path.join(partial, "failure.json")))


def clean(run, code):
    """One error reply with this code, no traceback anywhere, exit 1."""
    assert run.returncode == 1, (run.replies, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    err = run.error
    assert err["code"] == code, err
    assert run.replies[-1] == err
    return err


def first_disk_then(tail: bytes, capture_id="cap") -> bytes:
    """A capture whose first disk is sent whole and verified, then `tail` (the broken part)."""
    data = os.urandom(2 * BS) + bytes(2 * BS)
    parts = []
    w = P.StreamWriter(parts.append)
    w.hello(P.Hello(capture_id=capture_id, agent_version="t", format="qcow2", disks=("sda", "sdb")))
    w.disk(P.DiskHeader(name="sda", size=len(data)))
    recs, digest = disk_records(data)
    parts += recs
    w.end(P.DiskEnd(digest, bytes_read=len(data)))
    return b"".join(parts) + tail


def zero_disk_digest(size: int) -> bytes:
    tree = P.BlockTree(size, BS)
    tree.add_zero(0, size)
    return tree.digest()


def deep_json(depth: int) -> bytes:
    return b'{"source":' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("what,tail,code,match", [
    ("DISK size >= 2^64", P.frame(P.T_DISK, b'{"name":"sdb","size":18446744073709551616,"block_size":65536}'),
     "protocol", "field 'size' must be an integer"),
    ("DISK size 2^63", P.frame(P.T_DISK, b'{"name":"sdb","size":9223372036854775808,"block_size":65536}'),
     "protocol", "field 'size' must be an integer"),
    ("negative size", P.frame(P.T_DISK, b'{"name":"sdb","size":-4096,"block_size":65536}'), "protocol", "field 'size'"),
    ("200000-deep JSON", P.frame(P.T_DISK, deep_json(200000)), "protocol", "DISK record is nested too deeply"),
    ("deep JSON in range", P.frame(P.T_DISK, deep_json(5000)), "protocol", "nested too deeply"),
    ("NaN in the source facts", P.frame(P.T_DISK, b'{"name":"sdb","size":65536,"source":{"x":NaN}}'),
     "protocol", "NaN is not a JSON number"),
    ("non-numeric bytes_read",
     P.DiskHeader(name="sdb", size=BS).encode() + P.encode_zero(0, BS)
     + P.frame(P.T_END, zero_disk_digest(BS) + b'{"bytes_read":"lots"}'),
     "protocol", "field 'bytes_read' must be an integer"),
    ("Infinity in END", P.DiskHeader(name="sdb", size=BS).encode() + P.encode_zero(0, BS)
     + P.frame(P.T_END, zero_disk_digest(BS) + b'{"elapsed":Infinity}'), "protocol", "Infinity is not a JSON number"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 40 else "")
def test_traceback_inputs_give_a_clean_error_and_failure_json(tmp_path, what, tail, code, match):
    """Each of these used to end in a traceback with no reply and a verified qcow2 stranded in .partial."""
    run = run_receiver(str(tmp_path), first_disk_then(tail))
    err = clean(run, code)
    assert match in err["message"], err
    failure = only_failure(str(tmp_path), "cap")
    assert failure["code"] == code and match in failure["error"]
    assert failure["disks_verified"] == ["sda"]


@pytest.mark.parametrize("flags", [1, 0x8000])
def test_reserved_preamble_flags_refused(tmp_path, flags):
    blob = capture_stream("flags", {"sda": os.urandom(BS)})
    blob = P.PREAMBLE.pack(P.MAGIC, P.VERSION, flags) + blob[P.PREAMBLE.size:]
    run = run_receiver(str(tmp_path), blob)
    err = clean(run, "protocol")
    assert "preamble flags" in err["message"] and "reserved" in err["message"]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("probe", [False, True], ids=["capture", "probe"])
def test_huge_zero_record_refused_at_once(tmp_path, probe):
    """A DISK of 2^62 bytes with one ZERO record used to keep the receiver hashing for days
    (a probe on any filesystem; a capture where a 2^62-byte sparse file can be made)."""
    parts = []
    w = P.StreamWriter(parts.append)
    w.hello(P.Hello(capture_id=None if probe else "huge", probe=probe, disks=("sda",)))
    parts.append(P.encode_json(P.T_DISK, {"name": "sda", "size": 1 << 62, "block_size": 512}))
    parts.append(P.encode_zero(0, 1 << 62))
    w.end(P.DiskEnd(b"\0" * 32))
    w.finish()
    run = run_receiver(str(tmp_path), b"".join(parts), timeout=20)
    err = clean(run, "protocol")
    assert "field 'size' must be an integer from 1 to 1125899906842624" in err["message"]
    assert run.seconds < 10
    if probe:
        assert os.listdir(tmp_path) == []
    else:
        only_failure(str(tmp_path), "huge")
    print(f"2^62 ZERO record ({'probe' if probe else 'capture'}): refused in {run.seconds:.2f} s")


def test_too_many_blocks_refused(tmp_path):
    """Within the size limit but in tiny blocks: the block count bounds the hashing."""
    blob = P.preamble() + P.Hello(capture_id="blocks").encode() + P.encode_json(
        P.T_DISK, {"name": "sda", "size": 1 << 50, "block_size": 512})
    run = run_receiver(str(tmp_path), blob)
    err = clean(run, "protocol")
    assert "blocks; use a larger block size" in err["message"]


@pytest.fixture(scope="module")
def bombs():
    """Two 64 KiB zstd frames of 2 GiB of zeros: one declaring its size, one not."""
    out = {}
    for declared in (True, False):
        c = zstandard.ZstdCompressor(level=1, write_content_size=declared)
        o = c.compressobj(size=(2 << 30) if declared else -1)
        z = bytes(16 * MiB)
        out[declared] = b"".join([o.compress(z) for _ in range(128)] + [o.flush()])
        assert len(out[declared]) < 128 << 10
    return out


@pytest.mark.parametrize("declared", [True, False], ids=["declared-2GiB", "undeclared"])
@pytest.mark.parametrize("probe", [False, True], ids=["capture", "probe"])
def test_zstd_bomb_rss_bounded(tmp_path, bombs, declared, probe):
    payload = bombs[declared]
    length = 64 << 10        # what the record claims: one 64 KiB block
    parts = []
    w = P.StreamWriter(parts.append)
    w.hello(P.Hello(capture_id=None if probe else "bomb", probe=probe, format="raw", disks=("sda",)))
    w.disk(P.DiskHeader(name="sda", size=1 << 30))
    parts.append(P.encode_data(0, length, P.CODEC_ZSTD, P.record_digest([bytes(32)]), payload))
    w.finish()
    run = run_receiver(str(tmp_path), b"".join(parts), timeout=60)
    err = clean(run, "corrupt")
    assert "cannot be decompressed" in err["message"]
    if declared:
        assert "frame declares 2147483648 bytes" in err["message"]
    assert run.max_rss < RSS_LIMIT, f"peak RSS {run.max_rss >> 20} MiB"
    print(f"zstd bomb ({'declared' if declared else 'undeclared'}, {'probe' if probe else 'capture'}): "
          f"peak RSS {run.max_rss / MiB:.0f} MiB, {run.seconds:.2f} s")
    if probe:
        assert os.listdir(tmp_path) == []
    else:
        only_failure(str(tmp_path), "bomb")


@pytest.mark.parametrize("cid", ["manifest.json", "failure.json", "sda.qcow2", "sda.raw", "x.tmp", "victim.partial",
                                 "a.lock", "notes.json"])
def test_reserved_names_are_never_capture_ids(tmp_path, cid):
    run = run_receiver(str(tmp_path), capture_stream(cid, {"sda": os.urandom(BS)}))
    err = clean(run, "bad_name")
    assert "capture id" in err["message"]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["sda.kvm", "sda.convert-stage", "sda.raw", "sda.qcow2", "sda.journal", "a.b"])
def test_dotted_disk_names_are_refused(tmp_path, name):
    """Issue 19: with disks `sda` and `sda.kvm` in one capture, the verified sda.kvm.qcow2 of the
    second was where the converter writes the first's converted image (and removed it). A
    disk name holds no '.', so no name the server derives from one disk is another's."""
    run = run_receiver(str(tmp_path), capture_stream("dots", {"sda": os.urandom(BS), name: os.urandom(BS)}))
    err = clean(run, "bad_name")
    assert f"refused disk name {name!r}: a disk name may not contain '.'" in err["message"], err
    assert not os.path.exists(tmp_path / "dots")
    assert not [f for f in os.listdir(tmp_path / "dots.partial") if f.startswith(name)]


def test_root_inside_a_capture_refused(tmp_path):
    """Asked for (by the agent) or forced (by the key), a root inside a capture is refused."""
    good = run_receiver(str(tmp_path), capture_stream("victim", {"sda": os.urandom(BS)}))
    assert good.returncode == 0, good.replies
    os.makedirs(tmp_path / "other.partial")
    for root in (tmp_path / "victim", tmp_path / "other.partial"):
        run = run_receiver(str(root), capture_stream("nested", {"sda": os.urandom(BS)}))
        err = clean(run, "outside_root")
        assert "inside the capture directory" in err["message"]
    assert sorted(os.listdir(tmp_path / "victim")) == ["manifest.json", "sda.qcow2"]
    assert os.listdir(tmp_path / "other.partial") == []


def test_manifest_is_strict_json(tmp_path):
    """No NaN reaches manifest.json: the estimate the agent sends is checked when decoded."""
    blob = capture_stream("nan", {"sda": os.urandom(BS)})
    hello = P.Hello(capture_id="nan", format="qcow2", agent_version="t", disks=("sda",)).to_json()
    bad = json.dumps({**hello, "estimate": {"total_seconds": float("nan")}}).encode()
    r = P.Reader(__import__("io").BytesIO(blob))
    r.read_preamble()
    r.read()
    blob = P.preamble() + P.frame(P.T_HELLO, bad) + blob[r.consumed:]
    run = run_receiver(str(tmp_path), blob)
    err = clean(run, "protocol")
    assert "NaN is not a JSON number" in err["message"]


def test_same_id_race_reports_exists(tmp_path):
    """Two sessions racing for one capture id: the loser is told `exists`, never `root_unusable`."""
    import threading

    from agent.errors import ServerError
    from agent.server.receive.store import Store

    codes = []
    for i in range(40):
        stores = [Store(str(tmp_path)), Store(str(tmp_path))]
        go = threading.Barrier(2)
        made = []

        def take(store):
            go.wait()
            try:
                made.append(store.make_capture_dir(f"race-{i}"))
            except ServerError as e:
                codes.append(e.code)

        threads = [threading.Thread(target=take, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(made) == 1
        for cap in made:
            cap.unlock()
            cap.close()
        for s in stores:
            s.close()
    assert set(codes) == {"exists"} and len(codes) == 40
