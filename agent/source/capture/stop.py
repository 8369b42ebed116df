"""Stopping a capture from outside: Ctrl-C, `systemctl stop` (SIGTERM), a console hang-up.

Each of them stops the capture the same clean way: the stream ends at the next record
boundary, the receiver gets ABORT (and discards the partial capture), the read-only guard
is released, and the operator reads one line naming the signal. A second signal stops at
once (KeyboardInterrupt), still through the same ABORT and guard release.
"""

from __future__ import annotations

import signal
import threading

from ...errors import CancelledError
from .session import CaptureCancelled

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopOnSignal:
    """Context manager installing the handlers (main thread only) and restoring the old ones."""

    def __init__(self, cancel: threading.Event, on_first=None):
        self.cancel = cancel
        self.on_first = on_first      # called with the signal's name on the first signal
        self.signame: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.cancel.is_set():
            raise KeyboardInterrupt
        self.signame = signal.Signals(signum).name
        self.cancel.set()
        if self.on_first is not None:
            self.on_first(self.signame)

    def __enter__(self) -> "StopOnSignal":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def error(self, cause: BaseException) -> CancelledError:
        """What to tell the operator once the capture has stopped because of the signal."""
        server = ("ABORT sent to the conversion server (it discards the partial capture) and "
                  if isinstance(cause, CaptureCancelled) and cause.aborted_on_server else "")
        return CancelledError(
            f"capture cancelled by {self.signame}: {server}the source disks are back in the "
            f"read-only state they had before; capture again to start over")
