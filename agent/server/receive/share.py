"""A cap on the total rate of a conversion server's sessions (`coldclone-receive --bwlimit`).

sshd starts one receiver per session, so the cap is shared through the root: every receiver
holds a lock file in `<root>/.coldclone-sessions/` for its life, counts the files whose lock is
held (the live sessions) once a second, and reads its stream at the cap divided by that count,
through the one token bucket (agent/bwlimit.py). A receiver that reads slower fills its pipe,
sshd stops reading the socket, and TCP slows the agent down: the wave's total stays under the
cap whatever each agent's own `bwlimit=` says. A killed receiver's lock goes with it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from typing import BinaryIO

from ...bwlimit import TokenBucket, human_rate

log = logging.getLogger("coldclone.receive")

SESSIONS_DIR = ".coldclone-sessions"
REFRESH_SECONDS = 1.0


class SessionShare:
    """This receiver's share of the root's cap: the cap over the live sessions, itself included."""

    def __init__(self, root: str, total: int, *, clock=time.monotonic):
        self.total = total
        self.clock = clock
        rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                os.mkdir(SESSIONS_DIR, 0o750, dir_fd=rfd)
            except FileExistsError:
                pass
            self.dfd = os.open(SESSIONS_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                               dir_fd=rfd)
        finally:
            os.close(rfd)
        self.name = f"{time.time_ns():020d}-{os.getpid()}"
        self.fd = os.open(self.name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640,
                          dir_fd=self.dfd)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.sessions = 1
        self._at = float("-inf")

    def count(self) -> int:
        """Live sessions of the root; the files of dead ones are removed on the way."""
        n = 0
        for name in os.listdir(self.dfd):
            if name == self.name:
                n += 1
                continue
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dfd)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                n += 1               # its receiver holds it: a live session
            else:
                try:
                    os.unlink(name, dir_fd=self.dfd)    # a receiver that died (kill -9)
                except OSError:
                    pass
            finally:
                os.close(fd)
        return max(n, 1)

    def rate(self) -> float:
        now = self.clock()
        if now - self._at >= REFRESH_SECONDS:
            self._at = now
            n = self.count()
            if n != self.sessions:
                log.info("%d session(s) share the cap of %s: %s each", n, human_rate(self.total),
                         human_rate(self.total / n))
            self.sessions = n
        return self.total / self.sessions

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.unlink(self.name, dir_fd=self.dfd)
            except OSError:
                pass
            os.close(self.fd)
            os.close(self.dfd)
            self.fd = -1


class ThrottledStream:
    """The receiver's input read at this session's share of the cap."""

    def __init__(self, stream: BinaryIO, share: SessionShare):
        self.stream = stream
        self.share = share
        self.bucket = TokenBucket(share.rate())

    def read(self, n: int) -> bytes:
        rate = self.share.rate()
        if rate != self.bucket.rate:
            self.bucket.set_rate(rate)
        data = self.stream.read(min(n, int(self.bucket.burst)))
        if data:
            self.bucket.take(len(data))
        return data
