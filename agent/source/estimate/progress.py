"""While the capture runs: per-disk and overall progress, smoothed rates, an ETA that converges.

CaptureProgress is the one model of it: the capture's events in, ProgressFigures out; the
console's progress lines and the TUI's Progress screen render the same figures.

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

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ..capture import events as E
from .plan import CaptureEstimate, DiskEstimate
from .rate import RateMeter


# The stages that run while the disk streams (the estimate's `server` and `map` come after and before).
STREAM_STAGES = ("read", "cpu", "link", "write", "shared")


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
        return (max(st.get("read", 0.0), st.get("cpu", 0.0), st.get("shared", 0.0)) / max(d.size, 1),
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
            stream = max(st.get(k, 0.0) for k in STREAM_STAGES)
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


# ----------------------------------------------------------- the one progress model

@dataclass(frozen=True)
class DiskFigures:
    """One disk's bar: its bytes done of its size and where it is (waiting, reading, sent,
    verifying)."""

    name: str
    size: int
    done: int = 0
    state: str = "waiting"

    @property
    def fraction(self) -> float:
        return self.done / self.size if self.size else 1.0


@dataclass(frozen=True)
class ProgressFigures:
    """Every figure a front end shows while a capture runs, computed once by CaptureProgress:
    the console's lines and the TUI's Progress screen only render it."""

    phase: str                       # starting / sending / server / reconnecting
    elapsed: float                   # seconds since the capture started
    eta: float | None                # seconds left (None: not known yet)
    disk: str | None = None          # the disk being sent
    disk_done: int = 0
    disk_size: int = 0
    total_done: int = 0
    total_size: int = 0
    read_rate: float | None = None   # bytes/s read from the source disks
    wire_rate: float | None = None   # bytes/s of stream handed to the transport
    wire_bytes: int = 0
    zero_bytes: int = 0
    unreadable_sectors: int = 0
    stalled_for: float = 0.0         # > 0: nothing read or sent for this long while sending
    bottleneck: str | None = None    # the estimate's
    reconnecting: E.Reconnecting | None = None
    disks: tuple[DiskFigures, ...] = ()
    moved: bool = False              # a Progress event has come: the byte figures mean something

    @property
    def disk_percent(self) -> float:
        return 100.0 * self.disk_done / max(self.disk_size, 1)

    @property
    def total_percent(self) -> float:
        return 100.0 * self.total_done / max(self.total_size, 1)


class CaptureProgress:
    """The capture's events in, ProgressFigures out: the one model of a running capture.

    Feed it every event of run_capture (update(); thread-safe, so a TUI worker thread may feed
    it while the screen reads figures()); ask figures() whenever a line or a frame is drawn.
    Times come from `clock` (time.monotonic), read when an event arrives and when figures are
    asked for, so a stall shows without any event."""

    RATE_HALF_LIFE = 5.0    # s: the live MB/s figures; the ETA has its own adaptive smoothing

    def __init__(self, estimate: CaptureEstimate | None = None, clock: Callable[[], float] | None = None):
        self.estimate = estimate
        self.clock = clock = clock or time.monotonic
        self._lock = threading.Lock()
        now = clock()
        self._t0 = now
        self._phase = "starting"
        self._ev: E.Progress | None = None
        self._read = RateMeter(self.RATE_HALF_LIFE)
        self._wire = RateMeter(self.RATE_HALF_LIFE)
        self._eta = EtaEstimator(estimate)
        self._eta_value: float | None = None
        self._eta_at = now
        self._motion = Motion(now)
        self._reconnecting: E.Reconnecting | None = None
        self._disks: dict[str, DiskFigures] = {}

    def expect(self, disks: list[tuple[str, int]]) -> None:
        """The disks to show before the capture says which it sends (a screen's bars)."""
        with self._lock:
            for name, size in disks:
                self._disks.setdefault(name, DiskFigures(name, size))

    def _set_disk(self, name: str, **change) -> None:
        d = self._disks.get(name)
        if d is not None:
            self._disks[name] = dataclasses.replace(d, **change)

    def update(self, ev) -> None:
        with self._lock:
            now = self.clock()
            if isinstance(ev, E.CaptureStarted):
                self._t0, self._phase = now, "sending"
                for d in ev.disks:
                    self._disks.setdefault(d.name, DiskFigures(d.name, d.size))
            elif isinstance(ev, E.DiskStarted):
                self._phase, self._reconnecting = "sending", None
                self._disks.setdefault(ev.name, DiskFigures(ev.name, ev.size))
                self._set_disk(ev.name, state="reading")
                self._motion.restart(now)
            elif isinstance(ev, E.Progress):
                self._phase, self._reconnecting = "sending", None
                self._ev = ev
                self._set_disk(ev.disk, done=ev.disk_done)
                self._motion.update(now, ev.total_done, ev.wire_bytes)
                self._read.update(now, ev.bytes_read)
                self._wire.update(now, ev.wire_bytes)
                self._eta_value = self._eta.update(now, ev.disk, ev.disk_done, ev.disk_size, ev.total_done,
                                                   ev.total_size, ev.wire_bytes)
                self._eta_at = now
            elif isinstance(ev, E.DiskFinished):
                self._phase = "server"
                d = self._disks.get(ev.name)
                if d is not None:
                    self._set_disk(ev.name, done=d.size, state="sent")
            elif isinstance(ev, E.ServerNote):
                self._phase = "server"
                for name in self._disks:
                    self._set_disk(name, state="verifying")
            elif isinstance(ev, E.Reconnecting):
                self._phase, self._reconnecting = "reconnecting", ev

    def figures(self, now: float | None = None) -> ProgressFigures:
        with self._lock:
            now = self.clock() if now is None else now
            ev = self._ev
            sending = self._phase == "sending"
            eta = None
            if self._eta_value is not None:
                # The countdown stops while nothing moves (the finish slips by the stall)
                # instead of reaching 00:00.
                clock = self._motion.clock(now) if sending else now
                eta = max(0.0, self._eta_value - max(0.0, clock - self._eta_at))
            return ProgressFigures(
                phase=self._phase, elapsed=max(0.0, now - self._t0), eta=eta,
                disk=ev.disk if ev else None, disk_done=ev.disk_done if ev else 0,
                disk_size=ev.disk_size if ev else 0, total_done=ev.total_done if ev else 0,
                total_size=ev.total_size if ev else 0, read_rate=self._read.rate, wire_rate=self._wire.rate,
                wire_bytes=ev.wire_bytes if ev else 0, zero_bytes=ev.zero_bytes if ev else 0,
                unreadable_sectors=ev.unreadable_sectors if ev else 0,
                stalled_for=self._motion.stalled_for(now) if sending else 0.0,
                bottleneck=self.estimate.bottleneck if self.estimate is not None else None,
                reconnecting=self._reconnecting, disks=tuple(self._disks.values()), moved=ev is not None)


# The wording both front ends use for the flow figures.
def stalled_text(seconds: float) -> str:
    return (f"STALLED for {seconds:.0f} s: nothing read or sent (the source disk, the link or the "
            f"server is stuck)")


def reconnecting_text(r: E.Reconnecting) -> str:
    return f"RECONNECTING (attempt {r.attempt}, {r.left:.0f} s left): {r.reason}"
