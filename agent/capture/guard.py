"""The read-only guard: source disks are sacred.

Before a single byte is read, every source block device and each of its
partitions is set read-only in the kernel (BLKROSET), so not even a stray
mount or another tool can write to it while we work. Each device's previous
state is remembered and restored on release; every change is logged.

One capture at a time per disk: a second guard on the same device (the TUI on
tty1 and on the serial console, say) would save "read-only" as the previous
state and restore the wrong one, so each disk is locked (flock, by device
number, so /dev/sda and a /dev/disk/by-id link are the same disk).
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import struct
from dataclasses import dataclass, field

from ..devnames import partitions_of
from ..errors import SourceError

log = logging.getLogger("coldclone.guard")

BLKROSET = 0x125D
BLKROGET = 0x125E
LOCK_DIR = "/run/coldclone/locks"


def get_ro(path: str) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = fcntl.ioctl(fd, BLKROGET, struct.pack("i", 0))
        return struct.unpack("i", buf)[0] != 0
    finally:
        os.close(fd)


def set_ro(path: str, ro: bool) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, BLKROSET, struct.pack("i", 1 if ro else 0))
    finally:
        os.close(fd)


@dataclass
class ReadOnlyGuard:
    """Context manager: set devices read-only, restore their previous state after."""

    devices: list[str]
    include_partitions: bool = True
    lock_dir: str = LOCK_DIR
    _saved: list[tuple[str, bool]] = field(default_factory=list)
    _locks: list[int] = field(default_factory=list)

    def __enter__(self) -> "ReadOnlyGuard":
        try:
            for dev in self.devices:
                self._lock(dev)
            targets = []
            for dev in self.devices:
                targets += [dev] + (partitions_of(dev) if self.include_partitions else [])
            # Read every previous state before changing any: a partition reports
            # read-only as soon as its disk is, and must not be left so afterwards.
            before = {path: self._state(path) for path in targets}
            for path in targets:
                self._guard_one(path, before[path])
        except BaseException:
            self.release()
            raise
        return self

    def _lock(self, dev: str) -> None:
        try:
            rdev = os.stat(dev).st_rdev
        except OSError:
            return  # _state() names the missing device
        os.makedirs(self.lock_dir, mode=0o700, exist_ok=True)
        lock = os.path.join(self.lock_dir, f"dev-{os.major(rdev)}-{os.minor(rdev)}.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SourceError(
                f"{dev} is being captured by another coldclone (pid {holder}, perhaps on another "
                f"console); wait for that capture to finish or cancel it there") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._locks.append(fd)

    def _state(self, path: str) -> bool:
        try:
            st = os.stat(path)
        except OSError as e:
            raise SourceError(f"source {path}: {e.strerror}; check the device name") from None
        if not stat.S_ISBLK(st.st_mode):
            raise SourceError(
                f"source {path} is not a block device; coldclone captures disks "
                f"(e.g. /dev/sda, /dev/md127, /dev/cciss/c0d0)"
            )
        try:
            return get_ro(path)
        except OSError as e:
            raise SourceError(f"cannot query {path}: {e.strerror}") from None

    def _guard_one(self, path: str, was: bool) -> None:
        try:
            set_ro(path, True)
            now = get_ro(path)
        except OSError as e:
            raise SourceError(
                f"cannot set {path} read-only in the kernel (BLKROSET: {e.strerror}); "
                f"refusing to read a source that is not write-protected (run as root)"
            ) from None
        if not now:
            raise SourceError(f"{path} did not become read-only (BLKROSET ignored); refusing to continue")
        self._saved.append((path, was))
        log.info("%s set read-only in the kernel (was %s)", path, "ro" if was else "rw")

    def release(self) -> None:
        while self._saved:
            path, was = self._saved.pop()
            if was:
                log.info("%s left read-only (it was read-only before)", path)
                continue
            try:
                set_ro(path, False)
                log.info("%s restored to read-write", path)
            except OSError as e:
                log.warning("could not restore %s to read-write: %s", path, e.strerror)
        while self._locks:
            os.close(self._locks.pop())   # closing drops the flock

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def guarded(self) -> list[str]:
        return [p for p, _ in self._saved]
