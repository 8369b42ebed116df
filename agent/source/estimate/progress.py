"""While the capture runs: per-disk and overall progress, smoothed rates, an ETA that converges.

The ETA has two sources:
- with the pre-capture estimate (agent.source.estimate.plan), the model's time for the
  work still to do, scaled by how the model has done so far (the ratio of real
  to modelled time for the work already done, trusted more as work piles up);
- without one, the bytes still to read at a smoothed rate whose smoothing
  window grows with the elapsed time (quick at first, steady later).
Either way the figure settles as the capture proceeds instead of jumping with
every run of zero blocks.
"""

from __future__ import annotations

from .plan import CaptureEstimate, DiskEstimate
from .rate import RateMeter


class EtaEstimator:
    """Seconds left, from progress samples; see the module docstring.

    `plan`: the CaptureEstimate (or None); its per-disk sizes, bytes to send and stage
    seconds give the model. Call update() with every Progress event's figures.
    """

    PRIOR_SECONDS = 10.0   # how much modelled work the estimate's own scale (1.0) weighs

    def __init__(self, plan: CaptureEstimate | None = None):
        self.disks: list[DiskEstimate] = plan.disks if plan is not None else []
        self.rate = RateMeter.adaptive()
        self.t_start: float | None = None
        self.k_num = 0.0     # real seconds spent on modelled work
        self.k_den = 0.0     # modelled seconds of that work
        self._last: tuple | None = None
        self._disk_index: dict[str, int] = {}
        for i, d in enumerate(self.disks):
            self._disk_index[d.name] = i
            self._disk_index[d.path] = i

    # ------------------------------------------------------------ the model
    def _disk_model(self, i: int) -> tuple[float, float, float]:
        """(modelled stream seconds per disk byte, per wire byte limit, server seconds) of disk i."""
        d = self.disks[i]
        st = d.stages
        return (max(st.get("read", 0.0), st.get("cpu", 0.0)) / max(d.size, 1),
                max(st.get("link", 0.0), st.get("write", 0.0)) / max(d.bytes_to_send, 1),
                st.get("server", 0.0))

    def _work(self, i: int, disk_bytes: float, wire_bytes: float) -> float:
        per_byte, per_wire, _ = self._disk_model(i)
        return max(disk_bytes * per_byte, wire_bytes * per_wire)

    def _remaining_model(self, i: int, disk_done: int, disk_size: int) -> float:
        """Modelled seconds for the rest of disk i and all later disks, server work included."""
        left = 0.0
        for j in range(i, len(self.disks)):
            st = self.disks[j].stages
            frac_left = 1.0 if j > i else max(0.0, (disk_size - disk_done) / max(disk_size, 1))
            stream = max(st.get("read", 0.0), st.get("cpu", 0.0), st.get("link", 0.0), st.get("write", 0.0))
            left += stream * frac_left + self._disk_model(j)[2]
        return left

    # --------------------------------------------------------------- update
    def update(self, t: float, disk: str, disk_done: int, disk_size: int, total_done: int, total_size: int,
               wire_bytes: int) -> float | None:
        if self.t_start is None:
            self.t_start = t
        self.rate.update(t, total_done)
        i = self._disk_index.get(disk)
        if i is not None and self._last is not None and self._last[1] == i:
            lt, _, ld, lw = self._last
            work = self._work(i, disk_done - ld, wire_bytes - lw)
            if work > 0 or t > lt:
                self.k_num += t - lt
                self.k_den += work
        if i is not None:
            self._last = (t, i, disk_done, wire_bytes)
        if i is not None:
            k = (self.PRIOR_SECONDS + self.k_num) / (self.PRIOR_SECONDS + self.k_den)
            return k * self._remaining_model(i, disk_done, disk_size)
        if not self.rate.rate or self.rate.rate <= 0:
            return None
        return (total_size - total_done) / self.rate.rate


class Motion:
    """When a byte was last read or sent: "stalled for N s" after STALL_AFTER seconds without one,
    and the clock an ETA counts down by, which stops meanwhile (the finish slips by the stall
    instead of the ETA reaching 00:00). One rule for the console lines and the TUI."""

    STALL_AFTER = 10.0

    def __init__(self, now: float):
        self.at = now
        self._last = (0, 0)

    def restart(self, now: float) -> None:
        """A new disk starts: waiting for its first bytes is not a stall yet."""
        self.at = now

    def update(self, now: float, read: int, sent: int) -> None:
        if (read, sent) != self._last:
            self._last, self.at = (read, sent), now

    def stalled_for(self, now: float) -> float:
        idle = now - self.at
        return idle if idle >= self.STALL_AFTER else 0.0

    def clock(self, now: float) -> float:
        return min(now, self.at + self.STALL_AFTER)
