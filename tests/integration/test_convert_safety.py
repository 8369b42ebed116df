"""coldclone-convert against what issue 19 found: it must never delete or overwrite evidence, and
fail cleanly on a full disk. Real parts: captures made by the real receiver,
no appliance: both cases end before one (the hostile guest files are in test_convert.py's
conversion, sharing its appliance), and a real full filesystem (tmpfs).
"""

import json
import os
import shutil
import subprocess
import time

import pytest

from agent.server.receive import receiver as receiver_mod
from agent.server.receive import store
from agent.runcmd import run
from tests.conftest import BIN, sha256_of
from tests.integration.test_convert import ROOT_UUID, TREE
from tests.testbed import guestdisk

pytestmark = pytest.mark.root
MiB = 1 << 20


def convert(capture, *args, timeout=900):
    return subprocess.run([os.path.join(BIN, "coldclone-convert"), capture, *args],
                          capture_output=True, text=True, timeout=timeout)


def files_of(path):
    return {n: sha256_of(os.path.join(path, n)) for n in sorted(os.listdir(path))}


def old_receiver_capture(root, capture_id, disks, monkeypatch):
    """A capture as a receiver from before the dotted-name rule wrote it (any valid name was
    a disk name then), for what the converter must do with one that exists."""
    with monkeypatch.context() as m:
        m.setattr(receiver_mod, "validate_disk_name", lambda name: store.validate_name(name, "disk name"))
        return guestdisk.make_capture(root, capture_id, disks)


def test_colliding_disk_names_are_refused_and_the_evidence_kept(root, tmp_path, monkeypatch):
    """Issue 19: disks `sda` and `sda.kvm` in one capture; converting removed sda.kvm.qcow2, the
    verified image of the second disk, even when the conversion failed. Now the receiver refuses
    the name (tests/unit/test_receiver_hardening.py) and the converter refuses such an old
    capture before it writes anything."""
    guestdisk.ext4_disk(str(tmp_path / "a.img"), TREE, uuid=ROOT_UUID)
    guestdisk.ext4_disk(str(tmp_path / "b.img"), {"data/payroll.csv": "a,b\n"})
    cap = old_receiver_capture(root, "collide01", {"sda": str(tmp_path / "a.img"),
                                                   "sda.kvm": str(tmp_path / "b.img")}, monkeypatch)
    before = files_of(cap)
    assert "sda.kvm.qcow2" in before            # the verified image of disk sda.kvm
    for engine in ("fixups", "virt-v2v"):
        t = time.monotonic()
        r = convert(cap, "--engine", engine)
        print(f"refused ({engine}) in {time.monotonic() - t:.1f} s")
        assert r.returncode == 2, r.stdout + r.stderr
        assert ("disk 'sda' would be converted to sda.kvm.qcow2, which is the verified image of disk "
                "'sda.kvm'") in r.stderr, r.stderr
        assert "nothing was done" in r.stderr
        assert files_of(cap) == before          # not a byte written, no conversion.log either


@pytest.fixture
def full_fs(tmp_path):
    """A small tmpfs of its own, filled to 100 % by the test."""
    mnt = tmp_path / "fixes-full"
    mnt.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "coldclone-fixes-full", str(mnt)])
    yield str(mnt)
    run(["umount", str(mnt)], check=False)


def fill(path):
    with open(os.path.join(path, "filler"), "wb") as f:
        try:
            while True:
                f.write(b"\xa5" * MiB)
                f.flush()
        except OSError:
            pass
    st = os.statvfs(path)
    assert st.f_bavail == 0


def test_full_disk_is_a_clear_error_and_leaves_everything_as_it_was(full_fs, tmp_path):
    """Issue 19: convert on a 100 % full disk ended in an unhandled OSError (and logging
    tracebacks). Now: a clear error naming the space needed and the path, exit 5, nothing
    half-written, and an earlier conversion's image is not removed (it was unlinked first)."""
    guestdisk.ext4_disk(str(tmp_path / "d.img"), TREE, size_mib=32, uuid=ROOT_UUID)
    cap = guestdisk.make_capture(full_fs, "full01", {"sda": str(tmp_path / "d.img")})
    # an earlier conversion's output (its bytes stand in for one)
    shutil.copy(os.path.join(cap, "sda.qcow2"), os.path.join(cap, "sda.kvm.qcow2"))
    fill(full_fs)
    before = files_of(cap)
    t = time.monotonic()
    r = convert(cap, "--engine", "fixups")
    print(f"refused on a full disk in {time.monotonic() - t:.1f} s")
    out = r.stdout + r.stderr
    assert r.returncode == 5, out
    assert "Traceback" not in out and "Logging error" not in out, out
    assert f"conversion failed: not enough space in {cap}: the conversion needs about" in r.stdout, out
    assert "0 B is free" in r.stdout and "free space on that filesystem" in r.stdout
    # the manifest could not be rewritten either, and says so; it is as it was
    assert "could not be recorded in" in r.stdout and "the manifest is as it was" in r.stdout
    after = files_of(cap)
    # conversion.log (empty: a tmpfs gives a new file no block) is the only new name
    assert {n: h for n, h in after.items() if n != "conversion.log"} == before, (before, after)
    assert "conversion" not in json.load(open(os.path.join(cap, "manifest.json")))
