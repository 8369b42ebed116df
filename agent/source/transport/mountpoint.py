"""Mount points the agent makes for a target (an NFS export, a USB/e-SATA disk), and their
removal: one place, so both targets create, report and clean up the same way."""

from __future__ import annotations

import logging
import os
import tempfile
import time

from ..discover.mounts import parse_mounts, read_proc_mounts
from ...errors import UsageError
from ...runcmd import run

log = logging.getLogger("coldclone.mount")

MOUNT_BASE = "/run/coldclone"


def make_mountpoint(prefix: str) -> str:
    try:
        os.makedirs(MOUNT_BASE, exist_ok=True)
        return tempfile.mkdtemp(prefix=prefix, dir=MOUNT_BASE)
    except OSError as e:
        raise UsageError(f"cannot make a mount point under {MOUNT_BASE}: {e.strerror}; "
                         f"is /run writable (run coldclone as root)?") from None


def unmount(where: str, what: str) -> None:
    """sync, umount (retried while something still holds it), then a lazy umount with a warning:
    a target left mounted must be said, never silent. The empty mount point is removed."""
    run(["sync"], check=False, quiet=True)
    for _ in range(10):
        if run(["umount", where], check=False, quiet=True).returncode == 0:
            break
        time.sleep(0.5)
    else:
        log.warning("%s at %s is still busy after 5 s: detached lazily (umount -l); it is "
                    "released when the last file on it is closed", what, where)
        run(["umount", "-l", where], check=False)
    try:
        os.rmdir(where)
    except OSError:
        pass


def mounted_at(dev: str) -> str | None:
    """Where dev is mounted now, if anywhere."""
    real = os.path.realpath(dev)
    for m in parse_mounts(read_proc_mounts("/proc/self/mounts")):
        if m.source.startswith("/") and os.path.realpath(m.source) == real:
            return m.target
    return None
