"""Pre-capture estimates built by hand, for the tests of what consumes them (ETA, console)."""

from __future__ import annotations

import os

from agent.estimate_model import CaptureEstimate, DiskEstimate


def one_disk_plan(path: str, size: int, bytes_to_send: int, stages: dict[str, float], *,
                  name: str | None = None, total_seconds: float = 0.0, bottleneck: str = "") -> CaptureEstimate:
    """A CaptureEstimate of one disk whose model is `stages` (stage key -> seconds)."""
    disk = DiskEstimate(path=path, name=name or os.path.basename(path), size=size, bytes_to_read=size,
                        bytes_to_send=bytes_to_send, data_bytes=bytes_to_send,
                        seconds=max(stages.values(), default=0.0), bottleneck="link", stages=stages)
    return CaptureEstimate(mode="nonzero", target=None, link=None, link_rate=None, link_rate_source="",
                           disks=[disk], total_seconds=total_seconds,
                           finish_time="2026-11-29T12:00:00", bottleneck=bottleneck)
