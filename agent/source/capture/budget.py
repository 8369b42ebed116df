"""How many bytes a disk's stream may hold between reading and sending (capture/stream.py)."""

from __future__ import annotations

import threading

# However small its chunks come out (SAME records against a held map, skipped free space), the
# reader is at most this many chunks ahead of the sender: 1 GiB of disk in 4 MiB chunks.
MAX_CHUNKS_AHEAD = 256


class ByteBudget:
    """A counting semaphore of bytes: the reader takes a chunk's size before it reads it, the
    chunk gives back what it no longer holds once processed (its read buffer, less its records)
    and the rest once sent. One chunk larger than the whole budget still goes, alone."""

    def __init__(self, limit: int, stop: threading.Event):
        self.limit = limit
        self.held = 0
        self.stop = stop
        self._cond = threading.Condition()

    def take(self, n: int) -> bool:
        """Wait until n bytes fit; False when the stream stopped meanwhile."""
        with self._cond:
            while self.held and self.held + n > self.limit:
                if self.stop.is_set():
                    return False
                self._cond.wait(0.1)
            self.held += n
            return not self.stop.is_set()

    def give(self, n: int) -> None:
        with self._cond:
            self.held = max(0, self.held - n)
            self._cond.notify_all()
