"""Mounting a source filesystem read-only, the only way coldclone mounts one.

ext3/ext4 get `noload`, xfs `norecovery` and btrfs `rescue=nologreplay`: a plain
`ro` mount still replays the journal (the log tree), which writes to the source disk. Even then a read-only mount of a
*writable* device is not enough (ext4 still runs orphan cleanup, writing the
superblock and inodes), so the device's whole tree is set read-only in the
kernel first (the shared guard) and a device that is not read-only is never
mounted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile

from ..capture import inuse
from ..capture.guard import ReadOnlyGuard, device_tree, get_ro
from ...errors import CommandError, SourceError
from ...runcmd import run

log = logging.getLogger("coldclone.inspect")

MOUNTABLE = ("ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "reiserfs", "jfs")


def ro_options(fstype: str) -> tuple[str, ...]:
    """The read-only mount options for a filesystem type, in the order to try them: each a
    mount that replays nothing, the later ones for kernels that reject the earlier ones."""
    # ext2 has no journal, and the ext2 driver rejects "noload": plain ro.
    if fstype in ("ext3", "ext4"):
        return ("ro,noload",)
    if fstype == "xfs":
        return ("ro,norecovery",)
    if fstype == "btrfs":
        # Linux 5.9 moved `nologreplay` under `rescue=`, and newer kernels reject the old name
        # ("btrfs: Unknown parameter 'nologreplay'"); kernels before 5.9 know only the old one.
        return ("ro,rescue=nologreplay", "ro,nologreplay")
    return ("ro",)


@contextlib.contextmanager
def mounted_ro(device: str, fstype: str, *, timeout: float = 60):
    """Mount device read-only on a fresh temporary directory; always unmount.

    Refused (SourceError) when the device's disk is mounted read-write or open for writing
    anywhere (the inspection would read a moving filesystem), or cannot be made read-only.
    """
    inuse.check(device_tree([device]), what=f"inspect {device}")
    # Not exclusive: inspecting a disk that another coldclone is capturing is harmless,
    # and the shared guard keeps the disk read-only until both are done.
    with ReadOnlyGuard([device], exclusive=False):
        try:
            ro = get_ro(device)
        except OSError as e:
            raise SourceError(f"cannot query {device}: {e.strerror}") from None
        if not ro:
            raise SourceError(f"refusing to mount {device}: it is not read-only in the kernel "
                              f"(a read-only mount of a writable device still writes to it)")
        with _mount(device, fstype, timeout) as mnt:
            yield mnt


@contextlib.contextmanager
def _mount(device: str, fstype: str, timeout: float):
    mnt = tempfile.mkdtemp(prefix="coldclone-src-")
    mounted = False
    try:
        first = None
        for options in ro_options(fstype):
            # A kernel that does not know an option refuses the mount and mounts nothing: the
            # next form is tried. Every form is read-only and replays nothing.
            res = run(["mount", "-t", fstype, "-o", options, device, mnt], check=False, timeout=timeout)
            if res.returncode == 0:
                break
            first = first or res
        else:
            # Said with the first (current) form's answer: a later form's "bad option" would
            # hide what is really wrong (a damaged filesystem ...).
            raise CommandError(first.argv, first.returncode, first.stderr,
                               "the source filesystem could not be mounted read-only")
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
