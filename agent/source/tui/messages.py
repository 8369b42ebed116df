"""Typed messages the capture worker posts to the Progress screen (thread-safe)."""

from __future__ import annotations

from textual.message import Message


class CaptureEvent(Message):
    """One event of agent.source.capture.events (CaptureStarted, DiskStarted, Progress ...)."""

    def __init__(self, event) -> None:
        super().__init__()
        self.event = event


class CaptureEnded(Message):
    """The worker is done: a result, or an error with its exit code."""

    def __init__(self, result=None, error: str | None = None, exit_code: int = 0,
                 cancelled: bool = False) -> None:
        super().__init__()
        self.result = result
        self.error = error
        self.exit_code = exit_code
        self.cancelled = cancelled
