"""Live throughput and ETA: an exponentially smoothed rate over time, not over samples,
so the figure means the same whether progress comes every 10 ms or every 10 s."""

from __future__ import annotations

import math


class RateMeter:
    def __init__(self, half_life: float = 10.0):
        self.half_life = half_life
        self.rate: float | None = None
        self._last_t: float | None = None
        self._last_v = 0

    def update(self, t: float, value: int) -> float | None:
        if self._last_t is None:
            self._last_t, self._last_v = t, value
            return self.rate
        dt = t - self._last_t
        if dt <= 0:
            return self.rate
        inst = (value - self._last_v) / dt
        if self.rate is None:
            self.rate = inst
        else:
            a = 1 - math.pow(0.5, dt / self.half_life)
            self.rate += a * (inst - self.rate)
        self._last_t, self._last_v = t, value
        return self.rate

    def eta(self, remaining: int) -> float | None:
        if not self.rate or self.rate <= 0:
            return None
        return remaining / self.rate


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(s: float | None) -> str:
    if s is None or s != s:
        return "--:--"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"
