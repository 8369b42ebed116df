"""Nothing coldclone does writes to a source (issue 13): inspection of crashed filesystems
leaves every byte as it was, and a source in use for writing is refused by name."""

import json
import os
import subprocess
import sys

import pytest

from agent.source.capture.guard import get_ro
from agent.source.capture.inuse import SourceInUseError
from agent.source.inspect.mount import mounted_ro
from agent.runcmd import run
from tests.conftest import coldclone, sha256_of, ssh_args
from tests.testbed import dirtyfs, synthdisk
from tests.testbed.loop import mounted_rw as loop_mounted_rw

pytestmark = pytest.mark.root


def inspect_cli(dev):
    return coldclone("discover", "--include-loop", "--inspect", "--disks", os.path.basename(dev),
                     timeout=300)


# Each filesystem as a crash leaves it, and how to tell it still needs its recovery:
# - ext4 with inodes on its orphan list (the recipe: orphan cleanup on a read-only mount
#   of a writable device wrote 432 bytes of the source);
# - xfs with a dirty log;
# - btrfs with an unreplayed log tree (issue 19: `nologreplay` is `rescue=nologreplay` since
#   Linux 5.9 and newer kernels refuse the old name, so a btrfs source was never inspected;
#   the kernel's current form first, the old one as a fallback).
CRASHED = {
    "ext4-orphans": (dirtyfs.orphan_ext4, dirtyfs.ext4_needs_recovery),
    "xfs-dirty-log": (dirtyfs.dirty_xfs, dirtyfs.xfs_log_is_dirty),
    "btrfs-log-tree": (dirtyfs.dirty_btrfs, dirtyfs.btrfs_log_pending),
}


@pytest.mark.parametrize("case", list(CRASHED))
def test_inspecting_a_crashed_filesystem_changes_nothing(tmp_path, case):
    """With the disk read-only in the kernel first and a mount that replays nothing, the OS
    is inspected and not a byte of the source changes: its recovery is still to do."""
    build, needs_recovery = CRASHED[case]
    with build(str(tmp_path / f"{case}.img")) as loop:
        part = loop.parts[0]
        assert needs_recovery(part)
        disk_before, part_before = sha256_of(loop.dev), sha256_of(part)
        r = inspect_cli(loop.dev)
        assert r.returncode == 0, r.stderr
        # it was really inspected: the report comes from the filesystem's /etc/fstab
        assert "fstab-device-names" in r.stdout, r.stdout + r.stderr
        assert sha256_of(part) == part_before
        assert sha256_of(loop.dev) == disk_before
        assert needs_recovery(part)
        # and the guard gave the devices back as they were
        assert not get_ro(loop.dev) and not get_ro(part)


# --- a source in use for writing is refused (unless the operator overrides it) ------------

MiB = 1 << 20


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    """A small source server disk: /boot ext4 (p1), swap (p2), root ext4 (p3)."""
    img = str(tmp_path_factory.mktemp("safety") / "small.img")
    with synthdisk.on_loop(img, size=256 * MiB, table="gpt", files_mb=8, remnant_mb=0) as (loop, _):
        yield loop


def mounted_rw(dev, where):
    # commit=600: the idle filesystem does not write its journal while a test runs
    return loop_mounted_rw(dev, where, options="rw,commit=600")


def assert_untouched(loop):
    """Refused before the guard: nothing was set read-only."""
    assert not get_ro(loop.dev) and not any(get_ro(p) for p in loop.parts)


def test_rw_mounted_source_is_refused_naming_the_mount(sshd, rx_dir, small_disk, tmp_path):
    root = small_disk.parts[2]
    with mounted_rw(root, tmp_path / "live-root") as mnt:
        r = coldclone("capture", "--disk", small_disk.dev, *ssh_args(sshd, rx_dir), "--capture-id", "mounted")
        assert r.returncode == 4, r.stderr
        assert f"refusing to capture {small_disk.dev}: {root} is mounted read-write at {mnt}: " \
               f"unmount it (umount {mnt})" in r.stderr
        assert "--allow-mounted-source" in r.stderr and "coldclone.allow_mounted=1" in r.stderr
        assert os.listdir(rx_dir) == [], "refused before anything was sent"
        assert_untouched(small_disk)
        # Inspection of any partition of that disk is refused the same way, before mounting.
        with pytest.raises(SourceInUseError) as e:
            with mounted_ro(small_disk.parts[0], "ext4"):
                pass
        assert f"{root} is mounted read-write at {mnt}" in str(e.value)
        assert_untouched(small_disk)


def test_rw_mount_in_another_mount_namespace_is_refused(sshd, rx_dir, small_disk, tmp_path):
    """A container's mounts are not in ours: every namespace is scanned."""
    where = tmp_path / "in-container"
    where.mkdir()
    ns = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           f"mount -o rw,commit=600 {small_disk.parts[0]} {where} && echo up && exec sleep 120"],
                          stdout=subprocess.PIPE, text=True)
    try:
        assert ns.stdout.readline().strip() == "up"
        assert str(where) not in open("/proc/self/mounts").read()     # not visible here
        r = coldclone("capture", "--disk", small_disk.dev, *ssh_args(sshd, rx_dir), "--capture-id", "ns")
        assert r.returncode == 4, r.stderr
        assert f"{small_disk.parts[0]} is mounted read-write at {where} in the mount namespace of pid " in r.stderr
        assert_untouched(small_disk)
    finally:
        ns.kill()
        ns.wait()


def test_source_held_open_for_writing_is_refused_naming_the_process(sshd, rx_dir, small_disk):
    holder = subprocess.Popen([sys.executable, "-c",
                               "import os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
                               "print('open', flush=True); time.sleep(120)", small_disk.parts[1]],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        comm = open(f"/proc/{holder.pid}/comm").read().strip()
        r = coldclone("capture", "--disk", small_disk.dev, *ssh_args(sshd, rx_dir), "--capture-id", "held")
        assert r.returncode == 4, r.stderr
        assert f"{small_disk.parts[1]} is open for writing by pid {holder.pid} ({comm}): " \
               f"stop that process (kill {holder.pid})" in r.stderr
        assert os.listdir(rx_dir) == []
        assert_untouched(small_disk)
    finally:
        holder.kill()
        holder.wait()


def test_override_captures_and_the_manifest_says_so(sshd, rx_dir, small_disk, tmp_path):
    root = small_disk.parts[2]
    with mounted_rw(root, tmp_path / "live-root") as mnt:
        r = coldclone("capture", "--disk", small_disk.dev, *ssh_args(sshd, rx_dir), "--capture-id", "ovr",
                      "--allow-mounted-source")
        assert r.returncode == 0, r.stderr
        assert f"{root} is mounted read-write at {mnt}: captured anyway (--allow-mounted-source)" in r.stderr
    m = json.load(open(os.path.join(rx_dir, "ovr", "manifest.json")))
    assert m["source"]["allow_mounted_source"] == {"in_use": [f"{root} is mounted read-write at {mnt}"]}
    assert_untouched(small_disk)


def test_source_swap_in_use_is_refused(sshd, rx_dir, small_disk):
    """A live system that turned on the source's swap partition writes to it at any time."""
    swap = small_disk.parts[1]
    run(["swapon", swap])
    try:
        r = coldclone("capture", "--disk", small_disk.dev, *ssh_args(sshd, rx_dir), "--capture-id", "swap")
        assert r.returncode == 4, r.stderr
        assert f"{swap} is in use as swap: turn it off (swapoff {swap})" in r.stderr
        assert os.listdir(rx_dir) == []
        assert_untouched(small_disk)
    finally:
        run(["swapoff", swap], check=False)


def test_inspection_of_a_disk_in_use_says_why(small_disk):
    """discover --inspect names the writer instead of a bare "no operating system found".
    (A disk mounted read-write here is already left out by discovery; a writer it cannot
    see is a process holding the disk open.)"""
    holder = subprocess.Popen([sys.executable, "-c",
                               "import os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
                               "print('open', flush=True); time.sleep(120)", small_disk.dev],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        r = coldclone("discover", "--include-loop", "--inspect", "--disks", os.path.basename(small_disk.dev))
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 0, r.stderr
    assert f"coldclone discover: {os.path.basename(small_disk.dev)} not inspected: refusing to inspect " \
           f"{small_disk.parts[0]}: {small_disk.dev} is open for writing by pid {holder.pid}" in r.stderr
    assert_untouched(small_disk)
