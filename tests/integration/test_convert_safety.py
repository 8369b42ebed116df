"""coldclone-convert against what issue 19 found: it must never delete or overwrite evidence,
never hold a guest's file whole in memory, never die on a hostile file name, and fail cleanly
on a full disk. Real parts: captures made by the real receiver, a real libguestfs appliance
(one launch, for the hostile guest), a real full filesystem (tmpfs).

Budget: one appliance launch (~30-60 s under TCG); the other cases end before any appliance.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from agent.server.receive import receiver as receiver_mod
from agent.server.receive import store
from agent.runcmd import run
from tests.conftest import BIN, REPO, sha256_of
from tests.integration.test_convert import IFCFG, MAC, ROOT_UUID, TREE
from tests.testbed import guestdisk
from tests.testbed.guestdisk import Link, Sparse

pytestmark = pytest.mark.root
MiB = 1 << 20


def convert(capture, *args, timeout=900):
    return subprocess.run([os.path.join(BIN, "coldclone-convert"), capture, *args],
                          capture_output=True, text=True, timeout=timeout)


# The converter's own peak RSS: VmHWM, the high-water mark of the memory of the process that
# runs it, made fresh at its exec (ru_maxrss would carry pytest's own from before the exec);
# not its children's, qemu-img or the guestfish server, whose memory does not follow the guest.
MEASURE = ("import sys\n"
           "from agent.server.convert.cli import main\n"
           "rc = main(sys.argv[1:])\n"
           "hwm = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
           "print(f'CONVERTER-VMHWM-KIB {hwm}')\n"
           "sys.exit(rc)\n")


def convert_measured(capture, *args, timeout=900):
    r = subprocess.run([sys.executable, "-c", MEASURE, capture, *args], capture_output=True, text=True,
                       timeout=timeout, cwd=REPO)
    line = next(l for l in r.stdout.splitlines() if l.startswith("CONVERTER-VMHWM-KIB "))
    return r, int(line.split()[1]) * 1024


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


HOSTILE = {
    **TREE,
    # where the fix-ups expect small configuration files: sparse, costing the disk nothing
    "etc/default/grub": Sparse(200 * MiB),
    "etc/sysconfig/network-scripts/ifcfg-eth1": Sparse(300 * MiB),
    # file names with a newline: glob-expand printed them on two lines, and the second half
    # (a relative path) made guestfish fail and exit, the conversion after it
    "etc/sysconfig/network-scripts/ifcfg-eth2\nrelative": IFCFG.replace("eth0", "eth2"),
    "etc/systemd/system/multi-user.target.wants/smartd.service\nssh.service":
        Link("/lib/systemd/system/ssh.service"),
    # and the ordinary ones beside them, fixed as usual
    "etc/systemd/system/multi-user.target.wants/smartd.service": Link("/lib/systemd/system/smartd.service"),
    "etc/rc3.d/S20gpm": Link("../init.d/gpm"),
    "etc/rc3.d/K20gpm": Link("../init.d/gpm"),
}


def test_hostile_guest_files_are_skipped_and_said_with_memory_bounded(root, tmp_path):
    """Issue 19: two sparse files of 200 and 300 MiB where the converter expects configuration
    files drove it to 643 MB RSS, and a file name with a newline killed guestfish. Now the
    oversized files and the odd names are left alone and said, the rest is fixed, and the
    converter's memory does not follow the guest's files."""
    guestdisk.ext4_disk(str(tmp_path / "h.img"), HOSTILE, size_mib=64, uuid=ROOT_UUID)
    cap = guestdisk.make_capture(root, "hostile01", {"sda": str(tmp_path / "h.img")})
    evidence = sha256_of(os.path.join(cap, "sda.qcow2"))
    t = time.monotonic()
    # --overlay: the converted image is staged in the run's directory and moved beside the
    # evidence, so its backing file must be named from there (checked below)
    r, rss = convert_measured(cap, "--engine", "fixups", "--overlay")
    took = time.monotonic() - t
    print(r.stdout, r.stderr[-3000:], f"converter peak RSS {rss / MiB:.0f} MiB, {took:.1f} s", sep="\n")
    assert r.returncode == 0, r.stdout + r.stderr
    c = json.load(open(os.path.join(cap, "manifest.json")))["conversion"]
    assert c["result"] == "converted"
    warnings = "\n".join(c["warnings"])
    for path, size in (("/etc/default/grub", "200.0 MiB"),
                       ("/etc/sysconfig/network-scripts/ifcfg-eth1", "300.0 MiB")):
        assert f"{path} left alone: {size}, more than the 4.0 MiB a configuration file may hold" in warnings
    assert ("'/etc/sysconfig/network-scripts/ifcfg-eth2\\nrelative' left alone: its name holds a "
            "control character") in warnings, warnings
    assert "'/etc/systemd/system/multi-user.target.wants/smartd.service\\nssh.service' left alone" in warnings
    # the ordinary files were fixed, the hardware services' links removed (S only, not K)
    kinds = sorted((f["kind"], f["path"]) for f in c["fixes"])
    assert ("ifcfg-hwaddr", "/etc/sysconfig/network-scripts/ifcfg-eth0") in kinds
    assert ("fstab-device-name", "/etc/fstab") in kinds
    assert [p for k, p in kinds if k == "hardware-service-disabled"] == [
        "/etc/rc3.d/S20gpm", "/etc/systemd/system/multi-user.target.wants/smartd.service"]
    kvm = os.path.join(cap, "sda.kvm.qcow2")
    info = json.loads(run(["qemu-img", "info", "--output=json", kvm]).stdout)
    assert (info["backing-filename"], info["backing-filename-format"]) == ("sda.qcow2", "qcow2")
    assert sorted(os.listdir(cap)) == ["conversion.log", "manifest.json", "sda.kvm.qcow2", "sda.qcow2"]
    ifcfg = guestdisk.read_ext4_file(kvm, "/etc/sysconfig/network-scripts/ifcfg-eth0", str(tmp_path))
    assert f"# coldclone-convert: MAC of the old hardware: HWADDR={MAC.upper()}" in ifcfg
    # the file with the odd name is as it was, and so is the evidence
    odd = guestdisk.read_ext4_file(kvm, '"/etc/sysconfig/network-scripts/ifcfg-eth2\nrelative"', str(tmp_path))
    assert odd == IFCFG.replace("eth0", "eth2")
    assert sha256_of(os.path.join(cap, "sda.qcow2")) == evidence
    # 624 MiB with the old converter and these two files; 25 MiB for a guest without them
    assert rss < 96 * MiB, rss
