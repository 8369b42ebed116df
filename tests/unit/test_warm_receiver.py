"""The receiver's side of warm captures and deltas (issue 22, receive/warm.py), on hand-made
streams against the real receiver: a SAME whose digest is not the held blocks' is refused and
the warm capture kept (those blocks marked to be sent); another server's delta is refused before
anything changes (not even the directory's name); a crash's write window is invalidated when the
capture is opened again; `--gc` keeps a warm capture; a lookup lists it with its sync facts."""

import json
import os

import pytest

from agent import protocol as P
from agent.server.receive import warm as W
from agent.server.receive.unfinished import find_unfinished
from tests.testbed.receiver import finish, run_receiver, start_receiver
from tests.unit.test_resume_journal import ident

MiB = 1 << 20
BS = P.DEFAULT_BLOCK_SIZE


@pytest.fixture(scope="module")
def data():
    return os.urandom(2 * MiB) + bytes(MiB) + os.urandom(MiB)


def hello(data, cid="w", warm=True, resume=False, delta=False, **kw) -> bytes:
    return P.preamble() + P.Hello(capture_id=cid, agent_version="t", format="qcow2", disks=("sda",), warm=warm,
                                  resume=resume, delta=delta, identities=(ident(data, **kw),)).encode()


def header(data, delta=False, **kw) -> bytes:
    i = ident(data, **kw)
    return P.DiskHeader(name="sda", size=len(data), block_size=BS, mode="nonzero",
                        source={"serial": i.serial, "wwid": i.wwid, "head": i.head}, delta=delta).encode()


def whole(data) -> tuple[bytes, bytes]:
    tree = P.BlockTree(len(data), BS)
    out = []
    for ext in P.split_extents(data, 0, BS):
        if ext.zero:
            out.append(P.encode_zero(ext.offset, ext.length))
        else:
            out.append(P.encode_data(ext.offset, ext.length, P.CODEC_NONE, P.record_digest(ext.digests),
                                     bytes(ext.data)))
        (tree.add_zero(ext.offset, ext.length) if ext.zero else tree.add_digests(ext.offset, ext.length, ext.digests))
    return b"".join(out), tree.digest()


def delta(data, held: P.HeldMap) -> tuple[bytes, bytes, int]:
    """The agent's delta of `data` against a held map (wire.delta_extents, as stream.py and the
    sync file send it): records, digest, segments sent."""
    records, digest, segs = delta_records(data, held)
    return b"".join(records), digest, segs


def delta_records(data, held: P.HeldMap) -> tuple[list[bytes], bytes, int]:
    """delta(), its records one by one."""
    tree = P.BlockTree(len(data), BS)
    out, segs = [], 0
    for item in P.delta_extents(P.split_extents(data, 0, BS), held, BS):
        if isinstance(item, P.Same):
            out.append(item.encode(BS))
            item.feed(tree)
        elif item.zero:
            out.append(P.encode_zero(item.offset, item.length))
            tree.add_zero(item.offset, item.length)
        else:
            segs += -(-item.length // held.grid)
            out.append(P.encode_data(item.offset, item.length, P.CODEC_NONE, P.record_digest(item.digests),
                                     bytes(item.data)))
            tree.add_digests(item.offset, item.length, item.digests)
    return out, tree.digest(), segs


def warm_sync(root, data, cid="w"):
    body, digest = whole(data)
    res = run_receiver(root, hello(data, cid) + header(data) + body + P.DiskEnd(digest).encode() + P.encode_finish())
    assert res.returncode == 0, (res.replies, res.stderr)
    return res


def held_map(replies, size) -> P.HeldMap:
    parts = sorted((r["start"], r["digests"]) for r in replies if r["event"] == "held_map")
    grid = next(r["grid"] for r in replies if r["event"] == "held_map")
    return P.HeldMap(size, BS, grid, b"".join(bytes.fromhex(h) for _, h in parts))


def probe_map(root, data, cid="w") -> P.HeldMap:
    """The held map a delta session gets before READY (the session then ends: ABORT keeps a warm capture)."""
    res = run_receiver(root, hello(data, cid, resume=True, delta=True) + P.Abort("only the map").encode())
    assert res.replies[-2]["event"] == "ready", res.replies
    return held_map(res.replies, len(data))


def test_a_second_sync_sends_only_changed_segments_and_the_image_follows(tmp_path, data):
    root = str(tmp_path)
    warm_sync(root, data)
    m1 = json.load(open(tmp_path / "w" / "manifest.json"))
    assert m1["phase"] == "warm" and m1["syncs"][0]["segments_changed"] == len(data) // BS
    changed = bytearray(data)
    for off in (5 * 4096, 40 * BS + 8192, 3 * MiB - 4096):
        changed[off:off + 4096] = os.urandom(4096)
    changed = bytes(changed)
    held = probe_map(root, data)
    body, digest, segs = delta(changed, held)
    assert segs == 3
    res = run_receiver(root, hello(data, resume=True, delta=True) + header(data, delta=True) + body
                       + P.DiskEnd(digest, bytes_read=len(data)).encode() + P.encode_finish())
    assert res.returncode == 0, (res.replies, res.stderr)
    m = res.replies[-1]["manifest"]
    assert m["phase"] == "warm" and [s["segments_changed"] for s in m["syncs"]] == [len(data) // BS, 3]
    d = m["disks"][0]
    assert d["digest"] == digest.hex()
    assert d["received"]["data_bytes"] == 3 * BS and all(d["verified"].values())
    assert sorted(os.listdir(tmp_path / "w")) == ["manifest.json", "sda.blocks", "sda.qcow2"]


def test_a_same_that_is_not_what_is_held_is_refused_and_the_warm_capture_kept(tmp_path, data):
    root = str(tmp_path)
    warm_sync(root, data)
    held = probe_map(root, data)
    other = os.urandom(len(data))
    # an agent that claims the held bytes are its source's, with its own source's digests
    lie = P.encode_same(0, MiB, P.record_digest(P.block_digests(other[:MiB], BS)))
    res = run_receiver(root, hello(data, resume=True, delta=True) + header(data, delta=True) + lie)
    assert res.error["code"] == "corrupt" and "held" in res.error["message"], res.error
    part = tmp_path / "w.partial"
    assert sorted(os.listdir(part)) == ["failure.json", "sda.blocks", "sda.delta", "sda.qcow2", "warm.json"]
    assert json.load(open(part / "failure.json"))["resumable"] is True
    # those blocks are marked to be sent: the map now differs there, and only there
    again = probe_map(root, data)
    per = MiB // held.grid
    assert [i for i in range(len(data) // held.grid) if again.digest(i) != held.digest(i)] == list(range(per))


def test_another_servers_delta_is_refused_before_anything_changes(tmp_path, data):
    root = str(tmp_path)
    warm_sync(root, data)
    before = {n: open(tmp_path / "w" / n, "rb").read() for n in os.listdir(tmp_path / "w")}
    other = os.urandom(len(data))
    res = run_receiver(root, hello(other, resume=True, delta=True) + header(other, delta=True))
    assert res.error["code"] == "refused", res.error
    assert sorted(os.listdir(tmp_path)) == ["w"]
    assert {n: open(tmp_path / "w" / n, "rb").read() for n in os.listdir(tmp_path / "w")} == before


def test_a_crash_window_is_invalidated_when_the_capture_opens_again(tmp_path, data):
    root = str(tmp_path)
    warm_sync(root, data)
    held = probe_map(root, data)           # the session reopened it (w.partial) and was ended
    # what a receiver killed mid-delta leaves: its write windows, the last line torn
    with open(tmp_path / "w.partial" / W.intent_name("sda"), "w") as f:
        f.write(json.dumps({"from": 0, "to": MiB}) + "\n" + json.dumps({"from": MiB, "to": 2 * MiB}) + "\n{\"fro")
    again = probe_map(root, data)
    per = MiB // held.grid
    differ = [i for i in range(len(data) // held.grid) if again.digest(i) != held.digest(i)]
    assert differ == list(range(per, 2 * per)), differ     # the last whole line's window only
    assert not os.path.exists(tmp_path / "w.partial" / "sda.delta")


def test_lookup_lists_a_warm_capture_with_its_syncs(tmp_path, data):
    root = str(tmp_path)
    warm_sync(root, data)
    (u,) = find_unfinished(root, (ident(data),))
    assert u.capture_id == "w" and u.warm is not None and u.warm.syncs == 1 and u.warm.last_sync > 0
    assert find_unfinished(root, (ident(os.urandom(len(data))),)) == []


def test_status_follows_a_running_delta_disk_and_finish_leaves_no_progress_file(tmp_path, data):
    """A delta disk has no resume journal: `coldclone-server status` reads how far it has come, its
    rate and the capture's wave from `<disk>.delta` while the session runs (a cutover is the
    downtime the team watches)."""
    import time

    from agent.server.admin import status as S

    root = str(tmp_path)
    warm_sync(root, data)
    held = probe_map(root, data)
    changed = bytearray(data)
    changed[3 * MiB:3 * MiB + 4096] = os.urandom(4096)
    records, digest, segs = delta_records(bytes(changed), held)
    assert segs == 1 and len(records) >= 2
    hello_ = P.preamble() + P.Hello(capture_id="w", agent_version="t", format="qcow2", disks=("sda",), resume=True,
                                    delta=True, wave="wave-7", identities=(ident(data),)).encode()
    t0 = time.monotonic()
    proc = start_receiver(root)
    try:
        proc.stdin.write(hello_ + header(data, delta=True) + records[0])
        proc.stdin.flush()
        intent = tmp_path / "w.partial" / W.intent_name("sda")
        deadline = time.monotonic() + 30
        while not intent.exists():             # the disk is open: its first line is written
            assert time.monotonic() < deadline, "no delta disk"
            time.sleep(0.05)
        time.sleep(W.PROGRESS_SECONDS + 0.3)
        proc.stdin.write(records[1])           # the first record after PROGRESS_SECONDS says where it is
        proc.stdin.flush()
        while '"at"' not in intent.read_text():
            assert time.monotonic() < deadline, "no progress line"
            time.sleep(0.05)
        (st,) = S.scan(root)
        at = json.loads(intent.read_text().splitlines()[-1])["at"]
        assert 0 < at < len(data)
        assert (st.state, st.wave, st.size, st.done) == (S.State.STREAMING, "wave-7", len(data), at), st
        assert st.rate is not None and st.rate > 0 and st.eta_seconds is not None, st
        assert st.detail.startswith("disk sda at "), st.detail
        proc.stdin.write(b"".join(records[2:]) + P.DiskEnd(digest, bytes_read=len(data)).encode())
        proc.stdin.flush()
        while '"verified"' not in intent.read_text():
            assert time.monotonic() < deadline, "the disk was not verified"
            time.sleep(0.05)
        assert [json.loads(x).get("at") for x in intent.read_text().splitlines()[-2:]] == [len(data), None]
        (st,) = S.scan(root)
        assert (st.state, st.done, st.detail) == (S.State.STREAMING, len(data), "disk sda at 4.0 MiB of 4.0 MiB"), st
        proc.stdin.write(P.encode_finish())
        proc.stdin.close()
        res = finish(proc, t0, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert res.returncode == 0, (res.replies, res.stderr)
    assert sorted(os.listdir(tmp_path / "w")) == ["manifest.json", "sda.blocks", "sda.qcow2"]
    (st,) = S.scan(root)
    assert st.state == S.State.VERIFIED and st.wave == "wave-7", st


def test_a_delta_disks_progress_lines_invalidate_nothing(tmp_path, data):
    """Its first line, its progress lines and its verified line are not write windows: opened
    again, the capture keeps every digest; a file of nothing but damage still loses them all."""
    root = str(tmp_path)
    warm_sync(root, data)
    held = probe_map(root, data)
    intent = tmp_path / "w.partial" / W.intent_name("sda")
    lines = [{"disk": "sda", "size": len(data), "capture": {"wave": None}, "t": 1.0}, {"at": MiB, "t": 3.0},
             {"from": 0, "to": MiB}, {"at": 2 * MiB, "t": 5.0}, {"verified": True, "t": 6.0}]
    intent.write_text("".join(json.dumps(x) + "\n" for x in lines))
    again = probe_map(root, data)
    assert [again.digest(i) for i in range(len(data) // held.grid)] == \
        [held.digest(i) for i in range(len(data) // held.grid)]
    intent.write_text("".join(json.dumps(x) + "\n" for x in lines[:2]))      # named, nothing written
    again = probe_map(root, data)
    assert [again.digest(i) for i in range(len(data) // held.grid)] == \
        [held.digest(i) for i in range(len(data) // held.grid)]
    intent.write_text("{\"disk\": \"sd")                                    # torn: everything goes
    again = probe_map(root, data)
    assert all(again.digest(i) != held.digest(i) for i in range(len(data) // held.grid))
