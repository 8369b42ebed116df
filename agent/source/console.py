"""The line-based rendering of a capture job's events, shared by `coldclone capture` and
`coldclone headless` (the TUI renders the same events on its screens).

Headless prefixes every line with `coldclone: ` (the live system fans them out to every
console and the log) and adds the machine-readable JSON blocks fleets and tests parse
(docs/cli.md); the CLI prints the estimate, progress and summary plainly.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import threading
import time

from .capture import events as E
from .discover.model import to_dict
from .discover.render import render
from .capture.session import CaptureResult
from .estimate.plan import CaptureEstimate
from .estimate.progress import EtaEstimator, Motion
from .estimate.rate import RateMeter
from .job import Captured, Estimated, Inspected, Inventoried, Note
from ..manifest import PublishRecord
from ..units import human_bytes as hb
from ..units import human_rate
from ..units import human_seconds as hs


def emit_json(tag: str, obj, out=None) -> None:
    """A JSON document between marker lines, pretty-printed so no line is long."""
    out = out or sys.stdout
    print(f"COLDCLONE-{tag}-JSON-BEGIN", file=out, flush=True)
    print(json.dumps(obj, indent=1, sort_keys=True, default=str), file=out, flush=True)
    print(f"COLDCLONE-{tag}-JSON-END", file=out, flush=True)


class ProgressPrinter:
    """Headless progress: a line every `interval` seconds, whatever the capture is doing.

    Call it with every event (it is run_capture's on_event); use `with printer.ticking():`
    around the capture so the cadence holds while the server verifies and converts.
    """

    def __init__(self, interval: float = 5.0, out=sys.stdout, estimate: CaptureEstimate | None = None,
                 prefix: str = ""):
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
        self.motion = Motion(time.monotonic())
        self._lock = threading.Lock()
        self.bottleneck = estimate.bottleneck if estimate is not None else None

    def __call__(self, ev) -> None:
        with self._lock:
            if isinstance(ev, E.CaptureStarted):
                self.t0 = time.monotonic()
                self.phase = "sending"
                self._p(f"capture {ev.capture_id} -> {ev.target}: {len(ev.disks)} disk(s), {hb(ev.total_bytes)}")
                for d in ev.disks:
                    self._p(f"  {d.path}: {hb(d.size)} {d.model}".rstrip())
                if self.estimate is not None:
                    self._p(f"  estimate: ~{hs(self.estimate.total_seconds)}, {self.bottleneck}")
            elif isinstance(ev, E.DiskStarted):
                self.phase = "sending"
                self._p(f"disk {ev.name} ({ev.path}, {hb(ev.size)}) started")
                self.motion.restart(time.monotonic())
            elif isinstance(ev, E.Progress):
                now = time.monotonic()
                self._ev = ev
                self.motion.update(now, ev.total_done, ev.wire_bytes)
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
            elif isinstance(ev, E.DiskResumed):
                self._p(ev.text())
            elif isinstance(ev, E.Reconnecting):
                self.phase = "reconnecting"
                self._p(f"reconnecting (attempt {ev.attempt}) in {ev.wait:.0f} s, {ev.left:.0f} s left: {ev.reason}")

    STALL_AFTER = Motion.STALL_AFTER

    def stalled_for(self, now: float) -> float:
        """Seconds nothing has moved while sending (0 when data flows or the server works)."""
        return self.motion.stalled_for(now) if self.phase == "sending" else 0.0

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left now: the last ETA less the time since it was computed. While nothing
        moves the countdown stops (the finish slips by the stall), instead of reaching 00:00."""
        if self._eta_value is None:
            return None
        now = time.monotonic() if now is None else now
        clock = self.motion.clock(now) if self.phase == "sending" else now
        return max(0.0, self._eta_value - max(0.0, clock - self._eta_at))

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
            "bottleneck": self.bottleneck, "stalled_for": self.stalled_for(now),
            "unreadable_sectors": ev.unreadable_sectors if ev else 0,
        }

    def _line(self, now: float) -> None:
        self.last = now
        ev = self._ev
        if ev is None:
            self._p(f"{self.phase}: {hs(now - self.t0)} elapsed")
            return
        dpct = 100.0 * ev.disk_done / max(ev.disk_size, 1)
        tpct = 100.0 * ev.total_done / max(ev.total_size, 1)
        eta = self.eta_seconds(now)
        tail = f" [{self.bottleneck}]" if self.bottleneck else ""
        if self.phase == "server":
            self._p(f"server verifying and converting: {hs(now - self.t0)} elapsed, ETA {hs(eta)}{tail}")
            return
        stalled = self.stalled_for(now)
        flow = (f"STALLED for {stalled:.0f} s: nothing read or sent (the source disk, the link or "
                f"the server is stuck)" if stalled else
                f"read {human_rate(self.read_rate.rate)} MB/s wire {human_rate(self.wire_rate.rate)} MB/s")
        bad = f" | UNREADABLE {ev.unreadable_sectors} sectors" if ev.unreadable_sectors else ""
        self._p(f"{ev.disk}: {dpct:5.1f}% | total {tpct:5.1f}% {hb(ev.total_done)}/{hb(ev.total_size)} | "
                f"{flow} | skipped {hb(ev.zero_bytes)}{bad} | elapsed {hs(now - self.t0)} ETA {hs(eta)}{tail}")

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


def print_summary(result: CaptureResult, out=sys.stdout, estimate: CaptureEstimate | None = None) -> None:
    el = max(result.elapsed, 1e-9)
    print(f"capture {result.capture_id} complete in {hs(result.elapsed)} ({result.elapsed:.1f} s): "
          f"{result.verdict()}", file=out)
    print(f"  where:   {result.location}", file=out)
    print(f"  read:    {hb(result.bytes_read)} at {result.bytes_read / el / 1e6:.1f} MB/s", file=out)
    print(f"  wire:    {hb(result.wire_bytes)} ({100.0 * result.wire_bytes / max(result.total_size, 1):.1f}% "
          f"of {hb(result.total_size)}), skipped {hb(result.zero_bytes)} of zeros", file=out)
    if estimate is not None:
        pred = estimate.total_seconds
        held = sum(d.resume.resumed_from for d in result.disks if d.resume is not None and not d.resume.restarted)
        if pred:
            # The estimate is made before the server says what it holds: for the whole capture.
            tail = f"; {hb(held)} were held from an earlier attempt" if held else ""
            print(f"  estimate: {pred:.1f} s predicted, {result.elapsed:.1f} s actual "
                  f"({100.0 * (result.elapsed - pred) / pred:+.0f}%{tail})", file=out)
    for d in result.disks:
        checks = ", ".join(k for k, v in d.verified.to_dict().items() if v)
        print(f"  {d.name}: {d.image} digest {d.digest[:16]}... verified ({checks})", file=out)
        bad = d.unreadable
        if bad.sectors:
            shown = ", ".join(f"{r.start_sector}+{r.sectors}" for r in bad.ranges[:8])
            more = f" and {len(bad.ranges) - 8} more ranges" if len(bad.ranges) > 8 else ""
            print(f"  {d.name}: {bad.sectors} UNREADABLE sectors of {bad.sector_size} bytes "
                  f"(zeros in the image; start+count: {shown}{more}; manifest.json lists them all)",
                  file=out)
    for line in result.conversion_lines():
        print(f"  {line}", file=out)


class JobConsole:
    """Call it with each event of a CaptureJob; close() when the job ends."""

    def __init__(self, progress_interval: float, *, prefix: str = "", machine_readable: bool = False,
                 out=None, notes=None):
        self.interval = progress_interval
        self.prefix = prefix
        self.machine_readable = machine_readable    # inventory + JSON blocks (headless)
        self.out = out or sys.stdout
        self.notes = notes or self.out
        self.estimate = None
        self.printer: ProgressPrinter | None = None
        self._ticking = contextlib.ExitStack()

    def say(self, text: str = "", out=None) -> None:
        for line in str(text).splitlines() or [""]:
            print(f"{self.prefix}{line}", file=out or self.out, flush=True)

    def __call__(self, ev) -> None:
        if isinstance(ev, Note):
            self.say(ev.text, self.notes)
        elif isinstance(ev, Inventoried):
            if not self.machine_readable:
                return
            if ev.inventory is not None:
                self.say(render(ev.inventory))
                emit_json("INVENTORY", to_dict(ev.inventory), self.out)
            if ev.sources:
                self.say("will capture: " + ", ".join(ev.sources))
        elif isinstance(ev, Inspected):
            self.say("\n".join(ev.report.summary()))
        elif isinstance(ev, Estimated):
            self.estimate = ev.estimate
            self.say("\n".join(ev.estimate.lines()))
            if self.machine_readable:
                emit_json("ESTIMATE", ev.estimate.to_dict(), self.out)
        elif isinstance(ev, Captured):
            self.close()
            summary = io.StringIO()
            print_summary(ev.result, out=summary, estimate=ev.estimate)
            self.say(summary.getvalue().rstrip("\n"))
            # the last word: what the cloud image will need (the manifest has it all), and
            # the Glance image when the conversion server published it already
            if ev.readiness is not None:
                self.say("\n".join(ev.readiness.summary()))
            pub = PublishRecord.from_manifest(ev.result.manifest)
            if pub is not None and pub.boot is not None:
                self.say(f"published to Glance ({pub.cloud}): image {pub.boot.image_id}"
                         + "".join(f", {i.disk} {i.image_id}" for i in pub.data))
        else:   # the capture's own progress events
            if isinstance(ev, E.CaptureStarted):
                self.printer = ProgressPrinter(self.interval, out=self.out, estimate=self.estimate,
                                               prefix=self.prefix)
                # lines keep coming while the server verifies and converts
                self._ticking.enter_context(self.printer.ticking())
            if self.printer is not None:
                self.printer(ev)

    def close(self) -> None:
        self._ticking.close()
