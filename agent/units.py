"""How sizes, rates and durations are written for an operator: one place for every front end
(console lines, the TUI, the estimate's own text). A leaf module: it imports nothing of ours."""

from __future__ import annotations

MB = 1_000_000


def human_bytes(n: float | None, short: bool = False) -> str:
    """Binary units with one decimal: 512 B, 1.5 GiB. `short` for narrow table columns
    (the inventory's): 512B, 1.5G, and 0 for an unknown or empty size."""
    if short and not n:
        return "0"
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            if short:
                return f"{n:.0f}B" if unit == "B" else f"{n:.1f}{unit[0]}"
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_seconds(s: float | None) -> str:
    """A clock-like duration: 00:42, 12:03, 1:02:03; --:-- when unknown."""
    if s is None or s != s:
        return "--:--"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def human_minutes(s: float) -> str:
    """A duration in the unit a person thinks in: 42 s, 12 min, 1.5 h."""
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def human_rate(bytes_per_second: float | None) -> str:
    """MB/s with one decimal, -- when not known yet."""
    return "--" if bytes_per_second is None else f"{bytes_per_second / MB:.1f}"
