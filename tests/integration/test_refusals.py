"""Bad input gets a specific error, and no image is ever marked complete."""

import io
import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest
import zstandard

from agent import protocol as P
from tests.testbed.loop import LoopDevice
from tests.testbed.sshd import Sshd
from agent.source.transport.ssh import SshConnection
from agent.source.transport.url import parse_target
from tests.conftest import coldclone, ssh_args
from tests.streams import capture_stream

pytestmark = pytest.mark.root
MiB = 1 << 20


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    """A real 8 MiB source disk for the tests that must fail before reading it."""
    img = tmp_path_factory.mktemp("small") / "small.img"
    with open(img, "wb") as f:
        f.truncate(8 * MiB)
    with LoopDevice(str(img)) as loop:
        yield loop.dev


def raw_session(sshd, path=""):
    url = parse_target(f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{path}")
    return SshConnection(url, identity=sshd.client_key, known_hosts=sshd.known_hosts)


def send_and_collect(sshd, path, blob, close=True, timeout=60):
    conn = raw_session(sshd, path)
    try:
        try:
            conn.send(blob)
        except BrokenPipeError:
            pass
        if close:
            conn.close_write()
        replies = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = conn.pump.queue.get(timeout=timeout)
            if msg is None:
                break
            replies.append(msg)
        return replies, conn.exit_status()
    finally:
        conn.close()


def record_offsets(blob):
    """(stream offset, record) for every record after the preamble."""
    r = P.Reader(io.BytesIO(blob))
    r.read_preamble()
    while r.consumed < len(blob):
        start = r.consumed
        yield start, r.read()


def record_ends(blob):
    r = P.Reader(io.BytesIO(blob))
    r.read_preamble()
    while r.consumed < len(blob):
        rec = r.read()
        yield r.consumed, rec


def the_error(replies):
    errs = [r for r in replies if r.get("event") == "error"]
    assert len(errs) == 1, replies
    assert not any(r.get("event") == "complete" for r in replies)
    return errs[0]


def assert_nothing_complete(rx_dir, capture_id):
    """Only `<id>.partial` with failure.json may remain, and no image in it."""
    assert not os.path.exists(os.path.join(rx_dir, capture_id))
    partial = os.path.join(rx_dir, capture_id + ".partial")
    if os.path.exists(partial):
        assert os.listdir(partial) == ["failure.json"], os.listdir(partial)
        return json.load(open(os.path.join(partial, "failure.json")))
    return None


def disk_bytes(size=4 * MiB):
    data = bytearray(size)
    data[MiB:MiB + 300000] = os.urandom(300000)
    data[3 * MiB:3 * MiB + 70000] = b"coldclone" * 7777 + b"x" * 7
    return bytes(data)


def test_good_handmade_stream_is_accepted(sshd, rx_dir):
    """The baseline for the corruption tests: the same stream, unflipped, completes."""
    replies, status = send_and_collect(sshd, rx_dir, capture_stream("good", {"sda": disk_bytes()}))
    assert [r["event"] for r in replies] == ["ready", "disk_ok", "complete"], replies
    assert status == 0
    assert sorted(os.listdir(os.path.join(rx_dir, "good"))) == ["manifest.json", "sda.qcow2"]


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_flipped_byte_in_data_record(sshd, rx_dir, codec):
    compress = None if codec == "none" else zstandard.ZstdCompressor(level=1).compress
    blob = bytearray(capture_stream("flip", {"sda": disk_bytes()}, compress=compress))
    # Flip one bit in the middle of the first DATA payload.
    pos = None
    for start, rec in record_offsets(bytes(blob)):
        if rec.type == P.T_DATA:
            pos = start + P.FRAME.size + P.DATA_HEAD.size + len(rec.payload) // 2
            break
    blob[pos] ^= 0x40
    replies, status = send_and_collect(sshd, rx_dir, bytes(blob))
    err = the_error(replies)
    assert err["code"] == "corrupt"
    assert "disk sda at byte 1048576" in err["message"]
    assert ("digest mismatch" in err["message"]) or ("cannot be decompressed" in err["message"])
    assert status != 0
    failure = assert_nothing_complete(rx_dir, "flip")
    assert failure["code"] == "corrupt"


def test_truncated_stream(sshd, rx_dir):
    blob = capture_stream("trunc", {"sda": disk_bytes()})
    replies, status = send_and_collect(sshd, rx_dir, blob[: len(blob) * 2 // 3])
    err = the_error(replies)
    assert err["code"] == "protocol"
    assert "truncated" in err["message"] and "disk sda" in err["message"]
    assert status != 0
    # A cut stream is an interruption, not a refusal: nothing is complete, and what arrived stays
    # with its resume journal (tests/unit/test_resume_journal.py resumes it).
    assert not os.path.exists(os.path.join(rx_dir, "trunc"))
    partial = os.path.join(rx_dir, "trunc.partial")
    assert sorted(os.listdir(partial)) == ["failure.json", "sda.journal", "sda.qcow2"]
    assert json.load(open(os.path.join(partial, "failure.json")))["resumable"] is True


def test_agent_abort_discards_partial(sshd, rx_dir):
    blob = capture_stream("abrt", {"sda": disk_bytes()})
    # Stop after the second DATA record, then ABORT as the agent does on a read error.
    cut = [end for end, rec in record_ends(blob) if rec.type == P.T_DATA][1]
    blob2 = blob[:cut] + P.encode_json(P.T_ABORT, {"reason": "read error on /dev/sda at byte 5"})
    replies, status = send_and_collect(sshd, rx_dir, blob2)
    err = the_error(replies)
    assert err["code"] == "aborted" and "read error on /dev/sda" in err["message"]
    assert status != 0
    assert_nothing_complete(rx_dir, "abrt")


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/etc/evil", ".hidden", "..", "a b", "x" * 200])
def test_hostile_disk_names_refused(sshd, rx_dir, name):
    blob = capture_stream("names", {name: disk_bytes(MiB)})
    replies, _ = send_and_collect(sshd, rx_dir, blob)
    err = the_error(replies)
    assert err["code"] == "bad_name" and "refused disk name" in err["message"]
    assert_nothing_complete(rx_dir, "names")
    parent = os.path.dirname(rx_dir)
    assert not os.path.exists(os.path.join(parent, "evil")) and not os.path.exists("/etc/evil")
    assert not os.path.exists(os.path.join(parent, "evil.raw"))


@pytest.mark.parametrize("cid", ["../up", "/abs", ".dot", "a/b"])
def test_hostile_capture_ids_refused(sshd, rx_dir, cid):
    replies, _ = send_and_collect(sshd, rx_dir, capture_stream(cid, {"sda": disk_bytes(MiB)}))
    err = the_error(replies)
    assert err["code"] == "bad_name" and "capture id" in err["message"]
    assert os.listdir(rx_dir) == []


def test_symlink_planted_in_root_is_not_followed(sshd, rx_dir):
    outside = tempfile.mkdtemp(prefix="coldclone-outside-")
    try:
        os.symlink(outside, os.path.join(rx_dir, "evil.partial"))
        replies, _ = send_and_collect(sshd, rx_dir, capture_stream("evil", {"sda": disk_bytes(MiB)}))
        err = the_error(replies)
        assert err["code"] == "exists"
        assert os.listdir(outside) == []
    finally:
        shutil.rmtree(outside)


def test_source_that_is_not_a_block_device(sshd, rx_dir):
    r = coldclone("capture", "--disk", "/dev/null", *ssh_args(sshd, rx_dir))
    assert r.returncode == 4 and "/dev/null is not a block device" in r.stderr
    assert os.listdir(rx_dir) == []


def test_requested_path_outside_forced_root_refused(sshd, tmp_path):
    img = tmp_path / "d.img"
    with open(img, "wb") as f:
        f.truncate(MiB)
    before = sorted(os.listdir("/etc"))
    with LoopDevice(str(img)) as loop:
        r = coldclone("capture", "--disk", loop.dev, *ssh_args(sshd, "/etc"))
    assert r.returncode == 5, r.stderr
    assert f"confined to {os.path.realpath(sshd.receiver_root)}" in r.stderr
    assert sorted(os.listdir("/etc")) == before


def test_unknown_host_key(sshd, rx_dir, tmp_path, small_disk):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    r = coldclone("capture", "--disk", small_disk, "--to", f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{rx_dir}",
                  "--identity", sshd.client_key, "--known-hosts", str(empty))
    assert r.returncode == 3, r.stderr
    assert "unknown host key" in r.stderr
    assert sshd.fingerprint in r.stderr and f"--hostkey {sshd.fingerprint}" in r.stderr
    assert os.listdir(rx_dir) == []


def test_changed_host_key(sshd, rx_dir, tmp_path, small_disk):
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kt, b64 = open(f"{other}.pub").read().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {kt} {b64}\n")
    r = coldclone("capture", "--disk", small_disk, "--to", f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{rx_dir}",
                  "--identity", sshd.client_key, "--known-hosts", str(kh))
    assert r.returncode == 3, r.stderr
    assert "HOST KEY CHANGED" in r.stderr and sshd.fingerprint in r.stderr
    assert "Nothing was sent" in r.stderr
    assert os.listdir(rx_dir) == []


def test_pinned_host_key_mismatch_and_match(sshd, rx_dir, tmp_path):
    img = tmp_path / "d.img"
    with open(img, "wb") as f:
        f.truncate(8 * MiB)
        f.write(b"boot sector")
    with LoopDevice(str(img)) as loop:
        wrong = "SHA256:" + "A" * 43
        r = coldclone("capture", "--disk", loop.dev, "--to", f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{rx_dir}",
                      "--identity", sshd.client_key, "--hostkey", wrong, "--known-hosts", sshd.known_hosts)
        assert r.returncode == 3 and "HOST KEY MISMATCH" in r.stderr and sshd.fingerprint in r.stderr
        assert os.listdir(rx_dir) == []
        # The pin wins over known_hosts; an empty known_hosts does not matter then.
        r = coldclone("capture", "--disk", loop.dev, "--to", f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{rx_dir}",
                      "--identity", sshd.client_key, "--hostkey", sshd.fingerprint, "--known-hosts", "/dev/null",
                      "--capture-id", "pinned")
        assert r.returncode == 0, r.stderr
        assert os.path.exists(os.path.join(rx_dir, "pinned", "manifest.json"))


def test_key_not_authorized(sshd, rx_dir, tmp_path, small_disk):
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    r = coldclone("capture", "--disk", small_disk, "--to", f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{rx_dir}",
                  "--identity", str(stranger), "--known-hosts", sshd.known_hosts)
    assert r.returncode == 3 and "refused key" in r.stderr and "authorized_keys" in r.stderr


def test_nothing_listening(tmp_path, small_disk):
    from tests.testbed.procs import free_port

    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    r = coldclone("capture", "--disk", small_disk, "--to", f"ssh://u@127.0.0.1:{free_port()}/x",
                  "--identity", str(key), "--hostkey", "SHA256:" + "x" * 43)
    assert r.returncode == 3 and "cannot connect to 127.0.0.1" in r.stderr


def test_missing_identity_and_malformed_pin_are_usage_errors(small_disk):
    """Said before anything connects: the CLI flags are checked by the kernel keys' parsers."""
    from tests.testbed.procs import free_port

    r = coldclone("capture", "--disk", small_disk, "--to", f"ssh://u@127.0.0.1:{free_port()}/x",
                  "--identity", "/nonexistent", "--hostkey", "SHA256:" + "x" * 43)
    assert r.returncode == 2 and "identity /nonexistent: no such file" in r.stderr, r.stderr
    r = coldclone("capture", "--disk", small_disk, "--to", f"ssh://u@127.0.0.1:{free_port()}/x",
                  "--identity", "/nonexistent", "--hostkey", "SHA256:x")
    assert r.returncode == 2 and "not a SHA256 fingerprint" in r.stderr, r.stderr


def test_usage_errors_exit_2(small_disk):
    r = coldclone("capture", "--disk", small_disk, "--to", "ftp://x/y")
    assert r.returncode == 2 and "ssh://user@host" in r.stderr
    r = coldclone("capture", "--disk", small_disk, "--to", "ssh://u:secret@h/x", "--identity", "k")
    assert r.returncode == 2 and "never put a password" in r.stderr and "secret" not in r.stderr
    r = coldclone("capture", "--disk", small_disk, "--to", "file:///tmp", "--compress", "lz4")
    assert r.returncode == 2 and "zstd" in r.stderr


@pytest.fixture
def tmpfs():
    mounts = []

    def make(opts):
        d = tempfile.mkdtemp(prefix="coldclone-tmpfs-", dir="/tmp")
        os.chmod(d, 0o755)
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", d], check=True)
        mounts.append(d)
        return d

    yield make
    for d in mounts:
        subprocess.run(["umount", "-l", d], check=False)
        os.rmdir(d)


def test_receiver_root_not_writable(tmpfs, tmp_path):
    root = tmpfs("ro,mode=0777,size=8m")
    img = tmp_path / "d.img"
    with open(img, "wb") as f:
        f.truncate(8 * MiB)
    with Sshd(receiver_root=root) as s, LoopDevice(str(img)) as loop:
        r = coldclone("capture", "--disk", loop.dev, *ssh_args(s))
        shutil.rmtree(s.workdir, ignore_errors=True)
    assert r.returncode == 5, r.stderr
    assert "read-only" in r.stderr or "not writable" in r.stderr
    assert root in r.stderr


def test_server_disk_runs_full(tmpfs, tmp_path):
    root = tmpfs("size=16m,mode=0755")
    img = tmp_path / "d.img"
    with open(img, "wb") as f:
        f.truncate(128 * MiB)
        f.seek(10 * MiB)
        f.write(os.urandom(48 * MiB))
    with Sshd(receiver_root=root) as s, LoopDevice(str(img)) as loop:
        r = coldclone("capture", "--disk", loop.dev, *ssh_args(s), "--capture-id", "full-disk")
        shutil.rmtree(s.workdir, ignore_errors=True)
    assert r.returncode == 5, r.stderr
    assert "disk full" in r.stderr and "loop" in r.stderr
    failure = assert_nothing_complete(root, "full-disk")
    assert failure and failure["code"] == "disk_full"
    # The half-written image was removed: the space is given back.
    assert os.statvfs(root).f_bfree * os.statvfs(root).f_frsize > 15 * MiB
