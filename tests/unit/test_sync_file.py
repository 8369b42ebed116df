"""The self-contained `coldclone sync` file: Python 3.6 syntax and the standard library only, runnable
with site-packages disabled, writing records the receiver's own models decode, pinning host keys by
the fingerprint `ssh-keygen -lf` prints, and naming disks exactly as the ISO agent does."""

import ast
import base64
import glob
import hashlib
import io
import os
import re
import subprocess
import sys
import zipfile
import zlib

import pytest

from agent import protocol as P
from agent.sync import build, session as S
from agent.sync.disk import SyncDisk
from agent.sync.ssh import fingerprint, parse_keyscan, parse_target
from agent.errors import UsageError
from agent.runcmd import run

ALLOWED_AGENT = {"agent", "agent.wire", "agent.bwlimit", "agent.errors", "agent.devnames"}


def oldest_python3() -> str:
    """The oldest python3.X interpreter on this machine (the sync file must run on the oldest)."""
    found = []
    for p in glob.glob("/usr/bin/python3.*") + glob.glob("/usr/local/bin/python3.*"):
        m = re.fullmatch(r".*/python3\.(\d+)", p)
        if m and os.access(p, os.X_OK):
            found.append((int(m.group(1)), p))
    return min(found)[1] if found else "/usr/bin/python3"


@pytest.fixture(scope="module")
def sync_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("syncfile") / "coldclone"
    digest = build.write_sync_file(str(out))
    return str(out), digest


def members(path):
    with open(path, "rb") as f:
        data = f.read()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n: z.read(n).decode() for n in z.namelist()}


def test_every_module_of_the_file_is_python_3_6_and_standard_library_only(sync_file):
    path, digest = sync_file
    with open(path, "rb") as f:
        data = f.read()
    assert data.startswith(b"#!/usr/bin/env python3\n")
    assert hashlib.sha256(data).hexdigest() == digest
    files = members(path)
    assert {"__main__.py", "agent/__init__.py", "agent/wire.py", "agent/bwlimit.py", "agent/errors.py",
            "agent/devnames.py", "agent/sync/cli.py", "agent/sync/session.py", "agent/sync/ssh.py",
            "agent/sync/disk.py"} <= set(files)
    stdlib = sys.stdlib_module_names
    for name, src in files.items():
        tree = ast.parse(src, filename=name, feature_version=(3, 6))
        pkg = name[:-3].replace("/", ".").rsplit(".", 1)[0] if "/" in name else ""
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                pytest.fail(f"{name}: from __future__ import {node.names[0].name} (not in Python 3.6)")
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")
                    if name.endswith("__init__.py"):
                        parts = name[:-len("/__init__.py")].split("/")
                    up = parts[:len(parts) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                mods = [base]
            else:
                continue
            for m in mods:
                if m.split(".")[0] in stdlib:
                    continue
                assert m in ALLOWED_AGENT or m.startswith("agent.sync"), f"{name} imports {m}"


def test_the_file_runs_under_the_oldest_python3_without_site_packages(sync_file):
    path, _ = sync_file
    py = oldest_python3()
    p = subprocess.run([py, "-I", "-S", path, "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "--disk DEV" in p.stdout and "--hostkey" in p.stdout and "--bwlimit" in p.stdout
    # a usage error is said, with exit 2 (agent/errors.py), before anything is touched
    p = subprocess.run([py, "-I", "-S", path, "sync", "--disk", "/dev/null", "--to", "ssh://u@h/",
                        "--identity", path, "--hostkey", "SHA256:" + "A" * 43, "--bwlimit", "10"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--bwlimit='10': give the unit" in p.stderr, p.stderr
    p = subprocess.run([py, "-I", "-S", path, "capture"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "this file only syncs" in p.stderr


def test_the_file_is_the_same_bytes_every_time(sync_file, tmp_path):
    _, digest = sync_file
    assert build.write_sync_file(str(tmp_path / "again")) == digest
    assert os.stat(tmp_path / "again").st_mode & 0o777 == 0o755


def test_server_command_writes_the_file_and_prints_its_sha256(tmp_path):
    out = tmp_path / "coldclone"
    p = subprocess.run([os.path.join(os.path.dirname(sys.executable), "coldclone-server"), "sync-file",
                        "--output", str(out)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"sha256={hashlib.sha256(out.read_bytes()).hexdigest()}" in p.stdout.splitlines()
    p = subprocess.run([os.path.join(os.path.dirname(sys.executable), "coldclone-server"), "sync-file",
                        "--output", str(tmp_path / "nowhere" / "x")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "does not exist" in p.stderr


def _disk():
    return SyncDisk("/dev/sdz", "cciss!c0d0", 10 << 20, 512, 4096, model="M", serial="  S3R1AL-0042 ",
                    wwid="naa.5000c500a1b2c3d4", rotational=False, head="ab" * 32)


def _records(blob):
    reader = P.Reader(io.BytesIO(blob))
    assert reader.read_preamble() == P.VERSION
    out = []
    while reader.consumed < len(blob):
        out.append(reader.read())
    return out


def test_hello_disk_and_end_decode_with_the_receivers_models(tmp_path):
    d = _disk()
    blob = P.preamble() + P.encode_json(P.T_HELLO, S.hello("cap-1", [d], resume=True))
    blob += P.encode_json(P.T_DISK, S.disk_header(d, delta=True))
    # a real disk's records: a file stands in for the device (the reader only preads)
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(3 << 20) + bytes(5 << 20) + os.urandom(2 << 20))
    d.path = str(img)
    sent = []
    digest, st = S.DiskSender(d, sent.append).run()
    blob2 = b"".join(sent)
    hello_rec, disk_rec = _records(blob)
    hello = P.Hello.decode(hello_rec.meta)
    assert (hello.capture_id, hello.warm, hello.delta, hello.resume, hello.format) == ("cap-1", True, True, True, "qcow2")
    assert hello.disks == ("cciss-c0d0",)
    assert hello.identities == (P.DiskIdentity("cciss-c0d0", 10 << 20, "s3r1al-0042", "naa.5000c500a1b2c3d4",
                                               "ab" * 32),)
    h = P.DiskHeader.decode(disk_rec.meta)
    assert (h.name, h.size, h.block_size, h.mode, h.codec, h.delta, h.resume_from) == \
        ("cciss-c0d0", 10 << 20, 65536, "nonzero", "zlib", True, 0)
    assert (h.logical_sector_size, h.physical_sector_size) == (512, 4096)
    assert h.source["head"] == "ab" * 32 and h.source["serial"] == "  S3R1AL-0042 "
    recs = _records(P.preamble() + blob2)
    assert recs[0].type == P.T_DISK
    end_rec = recs[-1]
    assert end_rec.type == P.T_END
    end = P.DiskEnd.decode(end_rec.digest, end_rec.meta)
    assert end.digest == digest == bytes.fromhex(P.digest_file(str(img)))
    assert (end.bytes_read, end.data_bytes, end.zero_bytes) == (10 << 20, 5 << 20, 5 << 20)
    assert end.wire_bytes == len(blob2) - end_rec.wire_bytes     # every byte of the disk before END
    assert end.same_bytes is None and end.segments_sent is None     # not a delta disk
    # the records cover the disk in order and their payloads inflate to its bytes
    tree = P.BlockTree(10 << 20, 65536)
    image = bytearray(10 << 20)
    for r in recs[1:-1]:
        if r.type == P.T_DATA:
            data = zlib.decompress(r.payload) if r.codec == P.CODEC_ZLIB else r.payload
            image[r.offset:r.offset + r.length] = data
            tree.add_digests(r.offset, r.length, P.block_digests(data, 65536))
        else:
            assert r.type == P.T_ZERO
            tree.add_zero(r.offset, r.length)
    assert tree.digest() == digest and bytes(image) == img.read_bytes()
    assert P.Hello.decode(_records(P.preamble() + P.encode_json(P.T_HELLO, S.lookup_hello([d])))[0].meta).probe


def test_a_delta_disk_sends_only_the_segments_that_differ(tmp_path):
    """Against a held map of the disk before 3 blocks changed: 3 segments go as DATA, the rest as
    SAME, and END's counts say so (DiskEnd decodes them)."""
    size = 8 << 20
    before = bytearray(os.urandom(size))
    before[2 << 20:4 << 20] = bytes(2 << 20)
    after = bytearray(before)
    for off in (65536 * 3 + 100, 65536 * 40, size - 4096):
        after[off:off + 4096] = os.urandom(4096)
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(after))
    grid = P.grid_for(size, 65536)
    held_map = P.HeldMap(size, 65536, grid, b"".join(
        P.segment_digest(P.block_digests(bytes(before[i:i + grid]), 65536)) for i in range(0, size, grid)))
    d = SyncDisk(str(img), "loop9", size, 512, 512, head="00" * 32)
    sent = []
    held = {"size": size, "block_size": 65536, "grid": grid, "segments": []}
    digest, st = S.DiskSender(d, sent.append, held=held, held_map=held_map).run()
    recs = _records(P.preamble() + b"".join(sent))
    assert P.DiskHeader.decode(recs[0].meta).delta
    data = [r for r in recs if r.type == P.T_DATA]
    assert sum(r.length for r in data) == 3 * 65536
    end = P.DiskEnd.decode(recs[-1].digest, recs[-1].meta)
    assert (end.segments_sent, end.data_bytes, end.same_bytes) == (3, 3 * 65536, size - 3 * 65536)
    assert end.digest == digest == bytes.fromhex(P.digest_file(str(img)))
    assert st.wire_bytes == len(b"".join(sent)) and st.wire_bytes < 3 * 65536 + 4096


@pytest.mark.parametrize("ktype", ["ed25519", "rsa", "ecdsa"])
def test_fingerprints_are_what_ssh_keygen_prints(tmp_path, ktype):
    key = tmp_path / ktype
    run(["ssh-keygen", "-q", "-t", ktype, "-N", "", "-f", str(key)])
    pub = (tmp_path / f"{ktype}.pub").read_text().split()
    want = run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(key) + ".pub"]).stdout.split()[1]
    ((kt, b64, fp),) = parse_keyscan(f"# 127.0.0.1:22 SSH-2.0-OpenSSH\n127.0.0.1 {pub[0]} {pub[1]}\n")
    assert (kt, b64) == (pub[0], pub[1])
    assert fp == fingerprint(base64.b64decode(pub[1])) == want


def test_targets():
    t = parse_target("ssh://coldclone@10.0.0.5:2222/srv/x")
    assert (t.user, t.host, t.port, t.path, t.known_hosts_name) == ("coldclone", "10.0.0.5", 2222, "/srv/x",
                                                                      "[10.0.0.5]:2222")
    assert parse_target("ssh://u@host/").known_hosts_name == "host"
    for bad, said in (("http://u@h/", "scheme 'http'"), ("ssh://h/", "give the user"),
                      ("ssh://u:pw@h/", "never put a password"), ("ssh://u@h:99999/", "port")):
        with pytest.raises(UsageError, match=said):
            parse_target(bad)


def test_a_new_capture_id_is_host_utc_time_and_4_hex():
    assert re.fullmatch(r"[A-Za-z0-9_-]+-\d{8}T\d{6}-[0-9a-f]{4}", S.new_capture_id())


def test_pick_takes_a_proven_warm_capture_and_never_a_weak_match_of_disks_with_a_serial():
    d = _disk()
    entry = {"disks": [{"name": d.name, "size": d.size}], "updated": 10.0}
    found = {"old": {**entry, "matched_by": "serial"},
             "warm": {**entry, "matched_by": "serial", "warm": {"syncs": 2}, "updated": 5.0},
             "weak": {**entry, "matched_by": "name and size", "warm": {"syncs": 1}, "updated": 20.0}}
    assert S.pick(found, [d])[0] == "warm"
    assert S.pick({"weak": found["weak"]}, [d])[0] is None
    assert S.pick({"old": found["old"]}, [d])[0] == "old"       # a cut first sync is continued
    other = {**found["warm"], "disks": [{"name": "sdb", "size": 1}]}
    assert S.pick({"x": other}, [d])[0] is None


@pytest.mark.root
def test_identity_of_a_loop_device_is_the_iso_agents(tmp_path):
    from agent.source.capture.source import probe
    from agent.sync.disk import probe as sync_probe
    from tests.testbed.loop import LoopDevice

    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(1 << 20) + bytes(3 << 20))
    with LoopDevice(str(img)) as loop:
        agent_disk = probe(loop.dev).read_head()
        mine = sync_probe(loop.dev).read_head()
        ident = agent_disk.identity()
        assert mine.identity() == {"name": ident.name, "size": ident.size, "serial": ident.serial,
                                   "wwid": ident.wwid, "head": ident.head}
        assert P.DiskIdentity(**mine.identity()) == ident
        assert mine.facts() == agent_disk.facts()
