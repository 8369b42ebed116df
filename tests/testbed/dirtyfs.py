"""Source filesystems as a crash leaves them, for the "inspection never writes" tests.

Each builder makes a GPT image with one partition holding a minimal source OS tree
(/etc/fstab, /etc/os-release) and leaves the filesystem needing recovery: a plain
read-only mount of a *writable* device would then write to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct

from agent.runcmd import run

from .loop import LoopDevice, mounted_rw

MiB = 1 << 20


def _gpt_image(image: str, size_mb: int, part_mb: int, fs: str) -> None:
    with open(image, "wb") as f:
        f.truncate(size_mb * MiB)
    run(["parted", "-s", image, "mklabel", "gpt", "mkpart", "p1", fs, "1MiB", f"{1 + part_mb}MiB"])


@contextlib.contextmanager
def _fresh(image: str):
    """The finished image on a new loop device, so udev probes what is on it now
    (discovery reads filesystem types from udev)."""
    with LoopDevice(image) as loop:
        run(["udevadm", "settle", "--timeout=10"], check=False, timeout=30)
        yield loop


def _os_tree(mnt: str, files: int) -> None:
    os.makedirs(os.path.join(mnt, "etc"))
    with open(os.path.join(mnt, "etc/fstab"), "w") as f:
        f.write("/dev/sda1 / ext4 defaults 0 1\n")
    with open(os.path.join(mnt, "etc/os-release"), "w") as f:
        f.write("ID=debian\n")
    for i in range(files):
        with open(os.path.join(mnt, f"f{i}"), "wb") as f:
            f.write(os.urandom(MiB))


@contextlib.contextmanager
def orphan_ext4(image: str):
    """The issue's recipe: an ext4 with one orphan inode on its orphan list and
    needs_recovery set, as a crash leaves it while a process held a deleted file.
    Yields the LoopDevice (partition 1 holds the filesystem)."""
    _gpt_image(image, 256, 96, "ext4")
    with LoopDevice(image) as loop:
        part = loop.parts[0]
        run(["mkfs.ext4", "-q", "-F", part])
        with mounted_rw(part) as mnt:
            _os_tree(mnt, 40)
        out = run(["debugfs", "-R", "stat /f5", part]).stdout
        ino = next(line.split()[1] for line in out.splitlines() if line.startswith("Inode:"))
        for req in ("unlink /f5", f"sif <{ino}> links_count 0", f"ssv last_orphan {ino}",
                    "feature needs_recovery"):
            run(["debugfs", "-w", "-R", req, part])
    with _fresh(image) as loop:
        yield loop


@contextlib.contextmanager
def dirty_xfs(image: str):
    """An xfs shut down with files written and not checkpointed: its log is dirty
    (xfs_logprint would replay it). Yields the LoopDevice."""
    # mkfs.xfs refuses filesystems under 300 MiB.
    _gpt_image(image, 384, 320, "xfs")
    with LoopDevice(image) as loop:
        part = loop.parts[0]
        run(["mkfs.xfs", "-q", "-f", part])
        with mounted_rw(part) as mnt:
            _os_tree(mnt, 0)
            # Freezing checkpoints the log: the OS tree is in place on disk (a norecovery
            # mount shows only what is), as on a server that ran for a while.
            run(["xfs_freeze", "-f", mnt])
            run(["xfs_freeze", "-u", mnt])
            for i in range(8):
                with open(os.path.join(mnt, f"f{i}"), "wb") as f:
                    f.write(os.urandom(MiB))
            # The new files' metadata reaches the log, then the filesystem stops dead: the
            # log is left dirty, exactly as after a power cut.
            run(["xfs_io", "-x", "-c", "fsync", "-c", "shutdown -f", os.path.join(mnt, "f7")])
    with _fresh(image) as loop:
        yield loop


@contextlib.contextmanager
def dirty_btrfs(image: str):
    """A btrfs whose log tree holds an fsync'ed file not yet committed: the image as a power
    cut leaves it (the superblock's log_root set), which any mount that is not
    `rescue=nologreplay` (`nologreplay` before Linux 5.9) replays, writing to the device.
    Yields the LoopDevice."""
    _gpt_image(image, 256, 200, "btrfs")
    crashed = image + ".crashed"
    with LoopDevice(image) as loop:
        part = loop.parts[0]
        run(["mkfs.btrfs", "-q", "-f", part])
        # commit=300: no transaction commit while we work, so the fsync below goes to the log
        with mounted_rw(part, options="rw,commit=300") as mnt:
            _os_tree(mnt, 0)
            run(["sync", "-f", mnt])      # the OS tree is committed, as on a server that ran a while
            with open(os.path.join(mnt, "f0"), "wb") as f:
                f.write(os.urandom(MiB))
                f.flush()
                os.fsync(f.fileno())      # into the log tree only
            # The image as it is on "disk" now, mounted and uncommitted: what a power cut leaves
            # (the loop device writes through the image file's page cache, so a copy sees it).
            shutil.copyfile(image, crashed)
    os.replace(crashed, image)
    with _fresh(image) as loop:
        yield loop


BTRFS_SB, BTRFS_LOG_ROOT = 64 << 10, 96


def btrfs_log_pending(part: str) -> bool:
    """The superblock's log_root is set: a log tree is there to replay."""
    with open(part, "rb") as f:
        f.seek(BTRFS_SB + BTRFS_LOG_ROOT)
        return struct.unpack("<Q", f.read(8))[0] != 0


def xfs_log_is_dirty(part: str) -> bool:
    """xfs_repair -n (which writes nothing) says so when the log holds unreplayed changes."""
    r = run(["xfs_repair", "-n", part], check=False, timeout=120)
    return "valuable metadata changes in a log" in r.stdout + r.stderr


def ext4_needs_recovery(part: str) -> bool:
    out = run(["dumpe2fs", "-h", part], check=False, timeout=60).stdout
    return any(line.startswith("Filesystem features:") and "needs_recovery" in line
               for line in out.splitlines())
