"""The one inspection every capture runs: the captured disks' filesystems mounted read-only
until one holds an OS, and the readiness report built from it (guestos/report.py)."""

from __future__ import annotations

import logging

from ...errors import ColdcloneError
from ...guestos.report import ReadinessReport, from_source
from .disk import inspect_disk

log = logging.getLogger("coldclone.inspect")


def inspect_for_capture(inv) -> ReadinessReport:
    """inspect_inventory for a capture about to start: advice like the estimate, so a
    failure to inspect is reported in the report, never raised."""
    try:
        return inspect_inventory(inv)
    except ColdcloneError as e:
        return ReadinessReport(error=f"inspection failed: {e}")
    except Exception as e:  # a bug in inspection must not stop a capture
        log.exception("inspection failed")
        return ReadinessReport(error=f"inspection failed (internal error: {e!r})")


def inspect_inventory(inv) -> ReadinessReport:
    """Mount each captured disk's filesystems read-only until one holds an OS; its report.

    The one inspection every capture runs (headless, `coldclone capture`, the TUI)."""
    errors = []
    for d in inv.capture_set():
        if d.partition_table is None and d.filesystem is None:
            continue
        try:
            src = inspect_disk(d, inv)
        except ColdcloneError as e:
            errors.append(f"{d.name}: {e}")
            continue
        if src is not None:
            return from_source(src, d.name)
    return ReadinessReport(error="; ".join(errors) or None)
