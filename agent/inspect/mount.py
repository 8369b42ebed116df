"""Mounting a source filesystem read-only, the only way coldclone mounts one.

ext3/ext4 get `noload` and xfs `norecovery`: a plain `ro` mount still replays
the journal, which writes to the source disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile

from ..errors import CommandError
from ..runcmd import run

log = logging.getLogger("coldclone.inspect")

MOUNTABLE = ("ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "reiserfs", "jfs")


def ro_options(fstype: str) -> str:
    # ext2 has no journal, and the ext2 driver rejects "noload": plain ro.
    if fstype in ("ext3", "ext4"):
        return "ro,noload"
    if fstype == "xfs":
        return "ro,norecovery"
    if fstype == "btrfs":
        return "ro,nologreplay"
    return "ro"


@contextlib.contextmanager
def mounted_ro(device: str, fstype: str, *, timeout: float = 60):
    """Mount device read-only on a fresh temporary directory; always unmount."""
    mnt = tempfile.mkdtemp(prefix="coldclone-src-")
    mounted = False
    try:
        run(["mount", "-t", fstype, "-o", ro_options(fstype), device, mnt], timeout=timeout,
            hint="the source filesystem could not be mounted read-only")
        mounted = True
        yield mnt
    finally:
        if mounted:
            try:
                run(["umount", mnt], timeout=timeout)
            except CommandError:
                # Busy (a shell cd'ed into it): detach lazily rather than leak it.
                log.warning("umount %s failed; detaching lazily", mnt)
                run(["umount", "-l", mnt], check=False, timeout=timeout)
        with contextlib.suppress(OSError):
            os.rmdir(mnt)
