"""The one rate smoother: an exponentially smoothed rate over time, not over samples, so the
figure means the same whether progress comes every 10 ms or every 10 s.

With `share` the half-life grows with the time elapsed (a share of it, between `half_life`
and `max_half_life`): quick at first, steady later, which is what an ETA needs. Without it
the half-life is fixed, which is what a live "MB/s" display needs.
"""

from __future__ import annotations


class RateMeter:
    def __init__(self, half_life: float = 10.0, *, share: float = 0.0, max_half_life: float | None = None):
        self.half_life, self.share, self.max_half_life = half_life, share, max_half_life
        self.rate: float | None = None
        self._t0: float | None = None
        self._last_t: float | None = None
        self._last_v = 0.0

    @classmethod
    def adaptive(cls, share: float = 0.25, lo: float = 3.0, hi: float = 120.0) -> "RateMeter":
        """The ETA's smoother: half-life a quarter of the elapsed time, 3 s to 2 min."""
        return cls(lo, share=share, max_half_life=hi)

    def _hl(self, t: float) -> float:
        hl = max(self.half_life, self.share * (t - self._t0))
        return min(hl, self.max_half_life) if self.max_half_life else hl

    def update(self, t: float, value: float) -> float | None:
        if self._last_t is None:
            self._t0 = self._last_t = t
            self._last_v = value
            return self.rate
        dt = t - self._last_t
        if dt <= 0:
            return self.rate
        inst = (value - self._last_v) / dt
        if self.rate is None:
            self.rate = inst
        else:
            a = 1 - 0.5 ** (dt / self._hl(t))
            self.rate += a * (inst - self.rate)
        self._last_t, self._last_v = t, value
        return self.rate

    def eta(self, remaining: float) -> float | None:
        if not self.rate or self.rate <= 0:
            return None
        return remaining / self.rate
