"""The conversion queue of a receiver root: at most N conversions run at once, the others wait
their turn, first come first served.

A virt-v2v conversion wants about one core and 2 GB of memory, and a wave brings captures
faster than one conversion at a time can take them; all of them at once would starve the
receivers. So `coldclone-convert` takes a slot of its root before it starts its appliance:

    <root>/.coldclone-convert/slot-K       held (flock) by the conversion running in slot K
    <root>/.coldclone-convert/wait-<ns>    held by a conversion waiting since <ns> (its place)

Each file holds an Entry (agent.records JSON) saying which capture and how many slots the root has. The locks are the
state: a killed converter lets go of its file with its life, so `coldclone-server status`
(queued, converting) and READY.load can never show a conversion that is not there.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from ... import records

log = logging.getLogger("coldclone.convert")

QUEUE_DIR = ".coldclone-convert"
GiB = 1 << 30
# What one virt-v2v appliance takes (about one core and 2 GB), and what the receivers and the
# system keep for themselves.
CONVERSION_MEMORY = 2 * GiB
RESERVED_MEMORY = 2 * GiB


def default_max_conversions(cpus: int | None = None, memory: int | None = None) -> int:
    """As many conversions as the machine holds next to its receivers: a core and 2 GB each,
    one core and 2 GB kept back; at least one."""
    cpus = cpus or os.cpu_count() or 1
    if memory is None:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(cpus - 1, (memory - RESERVED_MEMORY) // CONVERSION_MEMORY))


@dataclass(frozen=True)
class Entry:
    capture: str          # the capture directory's path
    slot: int | None      # the slot it runs in; None while it waits
    since: float          # when it took the slot or joined the queue (epoch seconds)
    limit: int            # the root's --max-conversions as that converter knew it
    pid: int


@dataclass(frozen=True)
class Snapshot:
    running: tuple[Entry, ...]
    waiting: tuple[Entry, ...]    # in queue order

    @property
    def limit(self) -> int:
        return max((e.limit for e in self.running + self.waiting), default=0)

    def of(self, capture: str) -> tuple[str, int] | None:
        """("converting", slot) or ("queued", 1-based place), or None: nothing for this capture."""
        capture = os.path.realpath(capture)
        for e in self.running:
            if e.capture == capture:
                return "converting", e.slot or 0
        for i, e in enumerate(self.waiting, 1):
            if e.capture == capture:
                return "queued", i
        return None


def _open_dir(root: str, create: bool) -> int | None:
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if create:
            try:
                os.mkdir(QUEUE_DIR, 0o750, dir_fd=rfd)
            except FileExistsError:
                pass
        try:
            return os.open(QUEUE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=rfd)
        except FileNotFoundError:
            return None
    finally:
        os.close(rfd)


def _held(dfd: int, name: str) -> Entry | None:
    """The Entry of a queue file whose holder lives, else None (free, not ours, or a holder
    that could not write its record: a full disk)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            # held exclusively: someone converts or waits; what it wrote says who
            try:
                return records.loads(os.pread(fd, 8192, 0), Entry, name)
            except ValueError:      # RecordError, or not JSON (empty: its record was not written)
                return None
        return None          # we got the lock: nobody holds it
    finally:
        os.close(fd)


def snapshot(root: str) -> Snapshot:
    """Who converts and who waits in root, now."""
    try:
        dfd = _open_dir(root, create=False)
    except OSError:
        return Snapshot((), ())
    if dfd is None:
        return Snapshot((), ())
    running, waiting = [], []
    try:
        for name in sorted(os.listdir(dfd)):
            if not name.startswith(("slot-", "wait-")):
                continue
            e = _held(dfd, name)
            if e is not None:
                (running if name.startswith("slot-") else waiting).append(e)
    finally:
        os.close(dfd)
    # wait-<ns> names sort in arrival order
    return Snapshot(tuple(running), tuple(waiting))


def _claim(dfd: int, name: str, entry: Entry | None) -> int | None:
    """Hold a queue file exclusively and write our entry into it; None when another holds it.
    The lock is the state; the entry only tells status who holds it, so a record that cannot be
    written (a full disk: the conversion then says so itself) does not stop the queue."""
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640, dir_fd=dfd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    if entry is not None:
        try:
            os.pwrite(fd, records.dumps(entry).encode(), 0)
        except OSError as e:
            log.warning("conversion queue: %s cannot say who holds it (%s)", name, e.strerror)
    return fd


def _sweep(dfd: int) -> None:
    """Remove the wait files of converters that died waiting (nobody holds them)."""
    for name in os.listdir(dfd):
        if not name.startswith("wait-"):
            continue
        fd = _claim(dfd, name, None)
        if fd is not None:
            try:
                os.unlink(name, dir_fd=dfd)
            except OSError:
                pass
            os.close(fd)


def _release(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.close(fd)


@contextmanager
def conversion_slot(root: str, capture: str, limit: int, poll: float = 0.5) -> Iterator[int]:
    """Wait for a free slot of root (at most `limit` run at once, first come first served) and
    hold it while the block runs; yields the slot's number."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    dfd = _open_dir(root, create=True)
    _sweep(dfd)
    capture = os.path.realpath(capture)
    queued = time.time()
    wait_name = f"wait-{time.time_ns():020d}-{os.getpid()}"
    wait_fd = _claim(dfd, wait_name, Entry(capture, None, queued, limit, os.getpid()))
    slot_fd = None
    try:
        said = False
        while True:
            snap = snapshot(root)
            ahead = [e for e in snap.waiting if e.since < queued or
                     (e.since == queued and e.pid < os.getpid())]
            # Only the first in line takes a free slot (first come, first served).
            if not ahead:
                for k in range(limit):
                    slot_fd = _claim(dfd, f"slot-{k}", Entry(capture, k, time.time(), limit, os.getpid()))
                    if slot_fd is not None:
                        break
                if slot_fd is not None:
                    break
            if not said:
                log.info("waiting for a conversion slot of %s (%d running, %d ahead in the queue, %d at once)",
                         root, len(snap.running), len(ahead), limit)
                said = True
            time.sleep(poll)
        _release(wait_fd)
        wait_fd = None
        try:
            os.unlink(wait_name, dir_fd=dfd)
        except OSError:
            pass
        log.info("conversion of %s in slot %d of %d", capture, k, limit)
        yield k
    finally:
        if slot_fd is not None:
            _release(slot_fd)
        if wait_fd is not None:
            _release(wait_fd)
            try:
                os.unlink(wait_name, dir_fd=dfd)
            except OSError:
                pass
        os.close(dfd)
