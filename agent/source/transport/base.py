"""What every transport gives the capture session: send bytes, read the receiver's replies."""

from __future__ import annotations

import logging
import queue
import threading
from typing import BinaryIO

from ... import protocol as P

log = logging.getLogger("coldclone.transport")


class ReplyPump:
    """Reads the receiver's JSON-line replies on a thread into a queue.

    A None in the queue means the receiver closed its output (exited).
    """

    def __init__(self, stream: BinaryIO, name: str = "cc-replies"):
        self.queue: queue.Queue = queue.Queue()
        self._t = threading.Thread(target=self._run, args=(stream,), name=name, daemon=True)
        self._t.start()

    def _run(self, stream: BinaryIO) -> None:
        try:
            for line in iter(stream.readline, b""):
                msg = P.parse_reply(line)
                log.debug("receiver: %s", msg)
                self.queue.put(msg)
        except Exception as e:  # connection torn down under us
            log.debug("reply stream ended: %s", e)
        finally:
            self.queue.put(None)


class Connection:
    """Base of the transports. Subclasses set self.pump and implement the I/O."""

    description = ""
    pump: ReplyPump

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def close_write(self) -> None:
        raise NotImplementedError

    def stderr_text(self) -> str:
        return ""

    def exit_status(self, timeout: float = 10.0) -> int | None:
        return None

    def dead_link_after(self, seconds: float) -> None:
        """Fail sends once data has gone unacknowledged this long (a network link; local
        transports have none)."""

    def close(self) -> None:
        raise NotImplementedError
