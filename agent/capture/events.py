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
