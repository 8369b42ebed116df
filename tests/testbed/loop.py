"""Loop devices with their partitions visible (the host kernel may not scan them itself)."""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
import time

from agent.source.capture.usedmap import clear_loop_read_only
from agent.runcmd import run


def attach(image: str, read_only: bool = False) -> str:
    argv = ["losetup", "-f", "--show"] + (["-r"] if read_only else []) + [image]
    dev = run(argv).stdout.strip()
    if not read_only:
        # A loop device's own read-only flag (BLKROSET) outlives its detach: a killed run
        # (a guard's kill -9 test) leaves it set, and the next image on that loop would be
        # read-only. losetup resets only the driver's flag, so clear ours.
        run(["blockdev", "--setrw", dev])
    # parted may already have added some partitions (BLKPG): -u updates those,
    # -a adds the rest (MBR logical partitions among them).
    run(["partx", "-u", dev], check=False)
    run(["partx", "-a", dev], check=False)
    return dev


def partitions(dev: str) -> list[str]:
    return sorted(glob.glob(dev + "p[0-9]*"), key=lambda p: int(p.rsplit("p", 1)[1]))


def detach(dev: str, read_only: bool = False) -> None:
    run(["partx", "-d", dev], check=False, quiet=True)
    for _ in range(50):
        if run(["losetup", "-d", dev], check=False, quiet=True).returncode == 0:
            if read_only:
                clear_loop_read_only(dev)   # losetup -r's flag outlives the detach
            return
        time.sleep(0.1)


class LoopDevice:
    def __init__(self, image: str, read_only: bool = False):
        self.image = image
        self.read_only = read_only
        self.dev = ""

    def __enter__(self) -> "LoopDevice":
        self.dev = attach(self.image, self.read_only)
        return self

    @property
    def parts(self) -> list[str]:
        return partitions(self.dev)

    def __exit__(self, *exc) -> None:
        if self.dev and os.path.exists(self.dev):
            detach(self.dev, self.read_only)


@contextlib.contextmanager
def attached(image, read_only: bool = False):
    """`with attached(img) as dev:` the /dev/loopN path, detached afterwards whatever happens."""
    with LoopDevice(str(image), read_only) as loop:
        yield loop.dev


@contextlib.contextmanager
def mounted_rw(dev: str, where: str | None = None, options: str = "rw"):
    """Mount read-write, for building a test image (or, in a test, for the mount coldclone
    must refuse). The code under test never mounts a source read-write. `where`: a directory
    to mount on (made if missing); default a fresh temporary one, removed afterwards."""
    mnt = str(where) if where is not None else tempfile.mkdtemp(prefix="coldclone-build-")
    os.makedirs(mnt, exist_ok=True)
    run(["mount", "-o", options, dev, mnt], timeout=60)
    try:
        yield mnt
    finally:
        run(["umount", mnt], check=False, timeout=60)
        if where is None:
            os.rmdir(mnt)
