"""While the capture runs: per-disk and overall progress, smoothed rates, an ETA that converges.

The ETA has two sources:
- with the pre-capture estimate (agent.estimate.plan), the model's time for the
  work still to do, scaled by how the model has done so far (the ratio of real
  to modelled time for the work already done, trusted more as work piles up);
- without one, the bytes still to read at a smoothed rate whose smoothing
  window grows with the elapsed time (quick at first, steady later).
Either way the figure settles as the capture proceeds instead of jumping with
every run of zero blocks.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

from .rate import RateMeter, human_bytes as hb, human_seconds as hs

MB = 1_000_000


class AdaptiveRate:
    """Exponentially smoothed rate whose half-life is a share of the time elapsed (bounded)."""

    def __init__(self, share: float = 0.25, lo: float = 3.0, hi: float = 120.0):
        self.share, self.lo, self.hi = share, lo, hi
        self.rate: float | None = None
        self._t0: float | None = None
        self._last: tuple[float, float] | None = None

    def update(self, t: float, value: float) -> float | None:
        if self._last is None:
            self._t0, self._last = t, (t, value)
            return self.rate
        lt, lv = self._last
        dt = t - lt
        if dt <= 0:
            return self.rate
        inst = (value - lv) / dt
        hl = min(self.hi, max(self.lo, self.share * (t - self._t0)))
        if self.rate is None:
            self.rate = inst
        else:
            a = 1 - 0.5 ** (dt / hl)
            self.rate += a * (inst - self.rate)
        self._last = (t, value)
        return self.rate


class EtaEstimator:
    """Seconds left, from progress samples; see the module docstring.

    `plan` is a CaptureEstimate or its to_dict(); its per-disk sizes, bytes to send,
    stage seconds give the model. Call update() with every Progress event's figures.
    """

    PRIOR_SECONDS = 10.0   # how much modelled work the estimate's own scale (1.0) weighs

    def __init__(self, plan=None):
        self.plan = plan.to_dict() if hasattr(plan, "to_dict") else plan
        self.rate = AdaptiveRate()
        self.t_start: float | None = None
        self.k_num = 0.0     # real seconds spent on modelled work
        self.k_den = 0.0     # modelled seconds of that work
        self._last: tuple | None = None
        self._disk_index: dict[str, int] = {}
        if self.plan:
            for i, d in enumerate(self.plan.get("disks", [])):
                self._disk_index[d.get("name", "")] = i
                self._disk_index[d.get("path", "")] = i

    # ------------------------------------------------------------ the model
    def _disk_model(self, i: int) -> tuple[float, float, float]:
        """(modelled stream seconds per disk byte, per wire byte limit, server seconds) of disk i."""
        d = self.plan["disks"][i]
        st = d.get("stages", {})
        size = max(d.get("size", 1), 1)
        return (max(st.get("read", 0.0), st.get("cpu", 0.0)) / size,
                max(st.get("link", 0.0), st.get("write", 0.0)) / max(d.get("bytes_to_send", 1), 1),
                st.get("server", 0.0))

    def _work(self, i: int, disk_bytes: float, wire_bytes: float) -> float:
        per_byte, per_wire, _ = self._disk_model(i)
        return max(disk_bytes * per_byte, wire_bytes * per_wire)

    def _remaining_model(self, i: int, disk_done: int, disk_size: int) -> float:
        """Modelled seconds for the rest of disk i and all later disks, server work included."""
        disks = self.plan["disks"]
        left = 0.0
        for j in range(i, len(disks)):
            d = disks[j]
            frac_left = 1.0 if j > i else max(0.0, (disk_size - disk_done) / max(disk_size, 1))
            stream = max(d["stages"].get("read", 0.0), d["stages"].get("cpu", 0.0),
                         d["stages"].get("link", 0.0), d["stages"].get("write", 0.0))
            left += stream * frac_left + self._disk_model(j)[2]
        return left

    # --------------------------------------------------------------- update
    def update(self, t: float, disk: str, disk_done: int, disk_size: int, total_done: int, total_size: int,
               wire_bytes: int) -> float | None:
        if self.t_start is None:
            self.t_start = t
        self.rate.update(t, total_done)
        i = self._disk_index.get(disk) if self.plan else None
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


class ProgressPrinter:
    """Headless progress: a line every `interval` seconds, whatever the capture is doing.

    Call it with every event (it is run_capture's on_event); use `with printer.ticking():`
    around the capture so the cadence holds while the server verifies and converts.
    """

    def __init__(self, interval: float = 5.0, out=sys.stdout, estimate=None, prefix: str = ""):
        self.interval = interval
        self.out = out
        self.prefix = prefix
        self.estimate = estimate
        self.last = 0.0
        self.read_rate = RateMeter()
        self.wire_rate = RateMeter()
        self.eta = EtaEstimator(estimate)
        self.t0 = time.monotonic()
        self.phase = "starting"
        self._ev = None
        self._eta_value: float | None = None
        self._eta_at = 0.0
        self._lock = threading.Lock()
        self.bottleneck = getattr(estimate, "bottleneck", None) or (
            estimate.get("bottleneck") if isinstance(estimate, dict) else None)

    def __call__(self, ev) -> None:
        from ..capture import events as E

        with self._lock:
            if isinstance(ev, E.CaptureStarted):
                self.t0 = time.monotonic()
                self.phase = "sending"
                self._p(f"capture {ev.capture_id} -> {ev.target}: {len(ev.disks)} disk(s), {hb(ev.total_bytes)}")
                for d in ev.disks:
                    self._p(f"  {d.path}: {hb(d.size)} {d.model}".rstrip())
                if self.estimate is not None:
                    total = getattr(self.estimate, "total_seconds", None)
                    if total is None and isinstance(self.estimate, dict):
                        total = self.estimate.get("total_seconds")
                    self._p(f"  estimate: ~{hs(total)}, {self.bottleneck}")
            elif isinstance(ev, E.DiskStarted):
                self.phase = "sending"
                self._p(f"disk {ev.name} ({ev.path}, {hb(ev.size)}) started")
            elif isinstance(ev, E.Progress):
                now = time.monotonic()
                self._ev = ev
                self.read_rate.update(now, ev.total_done)
                self.wire_rate.update(now, ev.wire_bytes)
                self._eta_value = self.eta.update(now, ev.disk, ev.disk_done, ev.disk_size, ev.total_done,
                                                  ev.total_size, ev.wire_bytes)
                self._eta_at = now
                if now - self.last >= self.interval:
                    self._line(now)
            elif isinstance(ev, E.DiskFinished):
                self._p(f"disk {ev.name} sent: digest {ev.digest[:16]}...")
                self.phase = "server"
            elif isinstance(ev, E.ServerNote):
                self.phase = "server"
                self._p(ev.text)

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left now: the last ETA less the time since it was computed."""
        if self._eta_value is None:
            return None
        now = time.monotonic() if now is None else now
        return max(0.0, self._eta_value - (now - self._eta_at))

    def status(self, now: float | None = None) -> dict:
        """What the progress line says, as data (for the TUI)."""
        now = time.monotonic() if now is None else now
        ev = self._ev
        return {
            "phase": self.phase, "elapsed": now - self.t0, "eta": self.eta_seconds(now),
            "disk": ev.disk if ev else None,
            "disk_done": ev.disk_done if ev else 0, "disk_size": ev.disk_size if ev else 0,
            "total_done": ev.total_done if ev else 0, "total_size": ev.total_size if ev else 0,
            "read_rate": self.read_rate.rate, "wire_rate": self.wire_rate.rate,
            "wire_bytes": ev.wire_bytes if ev else 0, "zero_bytes": ev.zero_bytes if ev else 0,
            "bottleneck": self.bottleneck,
        }

    def _line(self, now: float) -> None:
        self.last = now
        ev = self._ev
        if ev is None:
            self._p(f"{self.phase}: {hs(now - self.t0)} elapsed")
            return
        rate = lambda x: "--" if x is None else f"{x / MB:.1f}"
        dpct = 100.0 * ev.disk_done / max(ev.disk_size, 1)
        tpct = 100.0 * ev.total_done / max(ev.total_size, 1)
        eta = self.eta_seconds(now)
        tail = f" [{self.bottleneck}]" if self.bottleneck else ""
        if self.phase == "server":
            self._p(f"server verifying and converting: {hs(now - self.t0)} elapsed, ETA {hs(eta)}{tail}")
            return
        self._p(f"{ev.disk}: {dpct:5.1f}% | total {tpct:5.1f}% {hb(ev.total_done)}/{hb(ev.total_size)} | "
                f"read {rate(self.read_rate.rate)} MB/s wire {rate(self.wire_rate.rate)} MB/s | "
                f"skipped {hb(ev.zero_bytes)} | elapsed {hs(now - self.t0)} ETA {hs(eta)}{tail}")

    def tick(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self.last >= self.interval and self.phase != "starting":
                self._line(now)

    @contextlib.contextmanager
    def ticking(self):
        """A steady cadence: a line every interval even when no event comes (server phase)."""
        stop = threading.Event()

        def run():
            while not stop.wait(min(1.0, self.interval)):
                self.tick()

        t = threading.Thread(target=run, name="cc-progress", daemon=True)
        t.start()
        try:
            yield self
        finally:
            stop.set()
            t.join(2)

    def _p(self, line: str) -> None:
        print(self.prefix + line, file=self.out, flush=True)


def print_summary(result, out=sys.stdout, estimate=None) -> None:
    el = max(result.elapsed, 1e-9)
    print(f"capture {result.capture_id} complete in {hs(result.elapsed)} ({result.elapsed:.1f} s)", file=out)
    print(f"  where:   {result.location}", file=out)
    print(f"  read:    {hb(result.bytes_read)} at {result.bytes_read / el / 1e6:.1f} MB/s", file=out)
    print(f"  wire:    {hb(result.wire_bytes)} ({100.0 * result.wire_bytes / max(result.total_size, 1):.1f}% "
          f"of {hb(result.total_size)}), skipped {hb(result.zero_bytes)} of zeros", file=out)
    if estimate is not None:
        pred = getattr(estimate, "total_seconds", None)
        if pred is None and isinstance(estimate, dict):
            pred = estimate.get("total_seconds")
        if pred:
            print(f"  estimate: {pred:.1f} s predicted, {result.elapsed:.1f} s actual "
                  f"({100.0 * (result.elapsed - pred) / pred:+.0f}%)", file=out)
    for d in result.disks:
        checks = ", ".join(k for k, v in d.get("verified", {}).items() if v)
        print(f"  {d['name']}: {d['image']} digest {d['digest'][:16]}... verified ({checks})", file=out)
