"""A held disk the kernel names otherwise today (receive/identity.py `pair`, wire.capture_names):
the server's own OS called the disk sda when it synced warm, and the ISO, booted from a USB stick
that took sda, calls it sdb (CI met exactly this). The receiver finds each held disk among the
agent's disks by its proof (WWID, serial, or the first 64 KiB of a disk with neither), never by
its name alone; the capture keeps its name for the disk; two disks that prove to be one, or a
disk that is none of them, are refused with what to do."""

import dataclasses
import json
import os

import pytest

from agent import protocol as P
from agent.server.receive import identity
from tests.testbed.receiver import run_receiver
from tests.unit.test_resume_journal import ident
from tests.unit.test_warm_receiver import delta, held_map, warm_sync, whole

MiB = 1 << 20
BS = P.DEFAULT_BLOCK_SIZE


@pytest.fixture(scope="module")
def data():
    return os.urandom(2 * MiB) + bytes(MiB) + os.urandom(MiB)


def named(i: P.DiskIdentity, name: str) -> P.DiskIdentity:
    return dataclasses.replace(i, name=name)


def test_the_same_name_first_then_the_disk_that_proves_it(data):
    other = os.urandom(len(data))
    a, b = ident(data, serial="SER-A"), ident(other, name="sdb", serial="SER-B")
    # the same names: nothing renamed
    p = identity.pair([a, b], [a, b])
    assert (p.names, p.wrong, p.renamed) == ({"sda": "sda", "sdb": "sdb"}, [], {})
    # swapped by the kernel: each found by its serial
    p = identity.pair([a, b], [named(a, "sdb"), named(b, "sda")])
    assert (p.names, p.how, p.wrong) == ({"sda": "sdb", "sdb": "sda"}, {"sda": "serial", "sdb": "serial"}, [])
    # a disk with neither WWID nor serial: its first 64 KiB prove it under another name (a weak match)
    w = ident(data)
    p = identity.pair([w], [ident(other), named(w, "sdc")])
    assert (p.names, p.how, p.wrong) == ({"sda": "sdc"}, {"sda": P.DiskIdentity.WEAK}, [])


def test_no_proof_or_two_proofs_are_refused_with_the_reason(data):
    a = ident(data, serial="SER-A")
    # not among the agent's disks: named, without the held values
    p = identity.pair([a], [ident(os.urandom(len(data)), name="sdb", serial="SER-B")])
    assert p.names == {} and p.wrong == ["disk sda: none of this agent's disks (sdb) is it "
                                         "(not by WWID, serial or first 64 KiB)"]
    assert "SER-A" not in p.wrong[0]
    # two of the agent's disks are it (one LUN's two paths): which one is not guessed
    p = identity.pair([a], [named(a, "sdb"), named(a, "sdc")])
    assert p.names == {} and "sdb and sdc" in p.wrong[0] and "only one" in p.wrong[0]
    # a blank disk without serial proves nothing under any name
    z = ident(bytes(len(data)))
    p = identity.pair([z], [named(z, "sdb")])
    assert p.names == {} and p.wrong
    # an agent that sends no identities at all (an older agent)
    assert "update the ISO" in identity.pair([a], []).wrong[0]


def test_capture_names_keep_the_held_name_and_never_collide():
    # the held sda is the agent's sdb; the agent's own sda is another disk: it gets a free name
    assert P.capture_names(["sda", "sdb"], {"sda": "sdb"}) == {"sda": "sda-2", "sdb": "sda"}
    assert P.capture_names(["sda", "sdb"], {"sda": "", "sdb": ""}) == {"sda": "sda", "sdb": "sdb"}
    assert P.capture_names(["sdb", "sda"], {"sda": "sdb", "sdb": "sda"}) == {"sdb": "sda", "sda": "sdb"}
    assert P.capture_names(["sdc"], {}) == {"sdc": "sdc"}
    assert P.capture_names(["sda", "sdb", "sdc"], {"sda": "sdc", "sda-2": "sdb"}) == \
        {"sdc": "sda", "sdb": "sda-2", "sda": "sda-3"}


def test_a_warm_capture_is_cut_over_from_a_disk_the_kernel_names_otherwise(tmp_path, data):
    """The receiver's side of what CI met: warm sync of sda (serial S), cutover from the ISO's sdb."""
    root = str(tmp_path)
    warm_sync(root, data)                       # as sda, identified by its head (no serial)
    sdb = named(ident(data), "sdb")
    hello = P.preamble() + P.Hello(capture_id="w", agent_version="t", format="qcow2", disks=("sdb",),
                                   resume=True, delta=True, identities=(sdb,)).encode()
    probe = run_receiver(root, hello + P.Abort("only the map").encode())
    ready = next(r for r in probe.replies if r["event"] == "ready")
    assert ready["held"]["sda"]["agent_name"] == "sdb", ready
    held = held_map(probe.replies, len(data))
    changed = bytearray(data)
    changed[3 * MiB + 4096:3 * MiB + 8192] = os.urandom(4096)
    body, digest, segs = delta(bytes(changed), held)
    assert segs == 1
    # its DISK carries the capture's name, its source the facts of today's sdb
    header = P.DiskHeader(name="sda", size=len(data), block_size=BS, mode="nonzero", delta=True,
                          source={"name": "sdb", "head": sdb.head}).encode()
    res = run_receiver(root, hello + header + body + P.DiskEnd(digest, bytes_read=len(data)).encode()
                       + P.encode_finish())
    assert res.returncode == 0, (res.replies, res.stderr)
    (d,) = res.replies[-1]["manifest"]["disks"]
    assert (d["name"], d["image"], d["digest"]) == ("sda", "sda.qcow2", digest.hex())
    assert json.load(open(tmp_path / "w" / "manifest.json"))["disks"][0]["source"]["name"] == "sdb"
    assert sorted(os.listdir(tmp_path / "w")) == ["manifest.json", "sda.blocks", "sda.qcow2"]


def test_a_disk_that_is_none_of_the_held_ones_is_refused_before_anything_changes(tmp_path, data):
    root = str(tmp_path)
    warm_sync(root, data)
    before = {n: open(tmp_path / "w" / n, "rb").read() for n in os.listdir(tmp_path / "w")}
    stranger = ident(os.urandom(len(data)), name="sdb")
    hello = P.preamble() + P.Hello(capture_id="w", agent_version="t", format="qcow2", disks=("sdb",),
                                   resume=True, delta=True, identities=(stranger,)).encode()
    res = run_receiver(root, hello)
    assert res.error["code"] == "usage" and "does not send" in res.error["message"], res.error
    assert {n: open(tmp_path / "w" / n, "rb").read() for n in os.listdir(tmp_path / "w")} == before


def test_a_new_disk_that_bears_a_held_disks_name_is_stored_beside_it(tmp_path, data):
    """The server's own sda (serial S-1) was synced warm; under the ISO it is sdb, and the ISO's
    sda is another disk (serial S-2): the capture keeps sda for the synced disk and stores the
    other as sda-2 (the names the agent's wire.capture_names gives), neither overwriting the other."""
    root = str(tmp_path)
    other = os.urandom(len(data))
    mine = ident(data, serial="S-1")
    body, digest = whole(data)
    first = (P.preamble() + P.Hello(capture_id="w", agent_version="t", format="qcow2", disks=("sda",), warm=True,
                                    identities=(mine,)).encode()
             + P.DiskHeader(name="sda", size=len(data), block_size=BS, mode="nonzero",
                            source={"name": "sda", "serial": "S-1", "head": mine.head}).encode()
             + body + P.DiskEnd(digest).encode() + P.encode_finish())
    assert run_receiver(root, first).returncode == 0
    now = (named(mine, "sdb"), ident(other, serial="S-2"))       # ident names it sda
    hello = P.preamble() + P.Hello(capture_id="w", agent_version="t", format="qcow2", disks=("sda", "sdb"),
                                   resume=True, delta=True, identities=now).encode()
    probe = run_receiver(root, hello + P.Abort("only the map").encode())
    ready = next(r for r in probe.replies if r["event"] == "ready")
    assert {n: h["agent_name"] for n, h in ready["held"].items()} == {"sda": "sdb"}
    as_named = P.capture_names(["sda", "sdb"], {"sda": "sdb"})
    assert as_named == {"sda": "sda-2", "sdb": "sda"}
    same, digest1, segs = delta(data, held_map(probe.replies, len(data)))
    assert segs == 0
    body2, digest2 = whole(other)
    res = run_receiver(root, hello
                       + P.DiskHeader(name=as_named["sdb"], size=len(data), block_size=BS, mode="nonzero", delta=True,
                                      source={"name": "sdb", "serial": "S-1", "head": mine.head}).encode()
                       + same + P.DiskEnd(digest1, bytes_read=len(data)).encode()
                       + P.DiskHeader(name=as_named["sda"], size=len(other), block_size=BS, mode="nonzero",
                                      source={"name": "sda", "serial": "S-2", "head": now[1].head}).encode()
                       + body2 + P.DiskEnd(digest2).encode() + P.encode_finish())
    assert res.returncode == 0, (res.replies, res.stderr)
    disks = {d["name"]: d for d in res.replies[-1]["manifest"]["disks"]}
    assert {n: (d["digest"], d["source"]["name"]) for n, d in disks.items()} == {
        "sda": (digest.hex(), "sdb"), "sda-2": (digest2.hex(), "sda")}
    assert all(all(d["verified"].values()) for d in disks.values())


def test_a_cut_cutover_lists_the_held_disk_by_its_name_in_the_capture(tmp_path, data):
    """`coldclone-server status` and the wave page list a capture's disks from the facts its
    receiver records (failure.json, journals): the warm sda that the ISO calls sdb is listed as
    sda, the name its image and manifest entry have, not the agent's sdb."""
    root = str(tmp_path)
    warm_sync(root, data)
    sdb = named(ident(data), "sdb")
    hello = P.preamble() + P.Hello(capture_id="w", agent_version="t", format="qcow2", disks=("sdb",),
                                   resume=True, delta=True, identities=(sdb,)).encode()
    header = P.DiskHeader(name="sda", size=len(data), block_size=BS, mode="nonzero", delta=True,
                          source={"name": "sdb", "head": sdb.head}).encode()
    res = run_receiver(root, hello + header)          # cut after the DISK
    assert res.returncode == 1 and res.error["code"] == "protocol", res.replies
    with open(tmp_path / "w.partial" / "failure.json") as f:
        assert json.load(f)["disks"] == ["sda"]
