"""Typed progress events the core posts to its front ends (headless lines, TUI messages)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CaptureStarted:
    capture_id: str
    target: str
    disks: list  # list[SourceDisk]
    total_bytes: int


@dataclass
class DiskStarted:
    name: str
    path: str
    size: int


@dataclass
class Progress:
    disk: str
    disk_done: int       # bytes of this disk processed (read and sent or skipped)
    disk_size: int
    total_done: int
    total_size: int
    bytes_read: int      # from the source, all disks so far
    wire_bytes: int      # stream bytes handed to the transport, all disks so far
    zero_bytes: int      # skipped as ZERO records, all disks so far
    elapsed: float
    unreadable_sectors: int = 0   # on_read_error=map: mapped as zeros, all disks so far


@dataclass
class DiskFinished:
    name: str
    digest: str
    stats: dict = field(default_factory=dict)


@dataclass
class ServerNote:
    text: str


@dataclass
class CaptureFinished:
    result: object  # CaptureResult


@dataclass
class DiskResumed:
    """A held copy on the receiver was checked against the source: sending starts at `start`
    (restart_reason set: the held copy was dropped and the disk is sent from byte 0)."""
    name: str
    start: int
    size: int
    checked_bytes: int
    seconds: float
    restart_reason: str | None = None

    def text(self) -> str:
        """The one wording of it, for the console and the TUI."""
        if self.restart_reason:
            return f"disk {self.name}: sent again from byte 0: {self.restart_reason}"
        if self.start >= self.size:
            # A disk that arrived whole before the cut (verified, or only its END was missing).
            return (f"disk {self.name}: the server holds all {self.size} bytes; the source matches them "
                    f"(checked {self.checked_bytes} bytes in {self.seconds:.1f} s): nothing left to send")
        return (f"disk {self.name}: the server holds {self.start} of {self.size} bytes; the source matches them "
                f"(checked {self.checked_bytes} bytes in {self.seconds:.1f} s): sending the rest")


@dataclass
class Reconnecting:
    """The session to the conversion server dropped; the next attempt starts in `wait` seconds."""
    attempt: int
    reason: str
    wait: float
    left: float          # seconds of the reconnect budget left
