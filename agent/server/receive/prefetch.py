"""Read the next records while the current one is checked and written.

Profiled on the bench workload (docs/performance.md), the single-threaded receiver spent about
half the stream phase waiting on stdin and the other half decompressing, hashing and writing:
while it did one, the pipe from sshd stayed full, sshd's channel window closed and the agent's
sender stalled, so agent and receiver took turns instead of running together. A reader thread
drains the stream into a queue bounded in bytes; the record loop takes records from it in
stream order. Reads (os.read), zstd and sha256 release the GIL, so the two overlap.

The queue holds at most BUDGET payload bytes (always at least one record), so memory stays
bounded whatever record sizes the stream declares. The reader stops after FINISH or ABORT
(nothing follows them, and the stream's byte count must not include a read past them).
Errors of the reader (a truncated or corrupt stream) come out of the queue in their place, after
every record read before them.
"""

from __future__ import annotations

import collections
import threading

from ... import protocol as P

BUDGET = 32 << 20
# The main thread waits in slices: a signal (the idle alarm, SIGHUP) then gets its handler run
# promptly in the main thread, whichever thread the kernel delivered it to.
WAIT_SLICE = 0.2


class Prefetch:
    def __init__(self, reader: P.Reader, budget: int = BUDGET):
        self.reader = reader
        self.budget = budget
        self._items: collections.deque = collections.deque()   # (record | None, exception | None)
        self._bytes = 0
        self._cv = threading.Condition()
        self._stop = False
        self._t = threading.Thread(target=self._run, name="cc-prefetch", daemon=True)

    def __enter__(self) -> "Prefetch":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        # A reader blocked in read() stays blocked until the stream ends: it is a daemon and holds
        # nothing but the stream, so it is not waited for.

    def _run(self) -> None:
        while True:
            try:
                rec = self.reader.read()
                item = (rec, None)
            except BaseException as e:  # handed to the record loop, in stream order
                rec, item = None, (None, e)
            size = len(rec.payload) if rec is not None else 0
            with self._cv:
                while self._items and self._bytes + size > self.budget and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                self._items.append(item)
                self._bytes += size
                self._cv.notify_all()
            if rec is None or rec.type in (P.T_FINISH, P.T_ABORT):
                return

    def read(self) -> P.Record:
        """The next record in stream order (or the reader's error, raised here)."""
        with self._cv:
            while not self._items:
                self._cv.wait(WAIT_SLICE)
            rec, err = self._items.popleft()
            if rec is not None:
                self._bytes -= len(rec.payload)
            self._cv.notify_all()
        if err is not None:
            raise err
        return rec
