"""What the operator has decided so far: one object the screens fill in turn."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..discover.model import Why
from .services import Readiness, TargetChoice


@dataclass
class CapturePlan:
    inventory: Any = None                     # agent.source.discover.model.Inventory
    selected: list[str] = field(default_factory=list)   # disk names, inventory order
    readiness: Readiness | None = None
    target: TargetChoice | None = None
    target_ok: str | None = None              # the successful test's message
    mode: str = "nonzero"
    estimate: Any = None                      # CaptureEstimate
    iscsi: Any = None                         # IscsiAttachment (logged in)
    prepared: Any = None                      # localdisk.PreparedTarget (mounted target disk)
    capture_id: str | None = None             # fixed when the operator resumes (or starts anew)
    unfinished: list = field(default_factory=list)   # protocol.Unfinished of these disks on the server
    result: Any = None                        # CaptureResult
    error: str | None = None
    exit_code: int = 0

    def disks(self) -> list:
        if self.inventory is None:
            return []
        return [d for d in self.inventory.disks if d.name in self.selected]

    def disk_paths(self) -> list[str]:
        return [d.dev_path or f"/dev/{d.name}" for d in self.disks()]

    def exclude_target_disk(self) -> None:
        """The chosen target disk is never a source: out of the inventory's capture set and
        out of the selection, as discovery does for a target given up front."""
        if self.inventory is None or not (self.target and self.target.local_disk):
            return
        d = self.inventory.resolve(self.target.local_disk)
        if d is not None:
            d.exclude(Why.CAPTURE_TARGET, "capture target")
            if d.name in self.selected:
                self.selected.remove(d.name)

    def reset_selection(self) -> None:
        self.selected = [d.name for d in self.inventory.capture_set()] if self.inventory else []
